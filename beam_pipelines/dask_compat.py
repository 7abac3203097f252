"""What the DaskRunner (Beam 2.77) needs that other runners don't: the one place its quirks are handled.

The DaskRunner translates only Create, ParDo, GroupByKey and Flatten, drops whatever `finish_bundle` emits, reports no
metrics and recomputes side inputs in every consumer. The pipelines are written so that none of that matters (one
element per batch of files, every output written from `process`, counts carried as elements and combined with a
GroupByKey, no side inputs), which leaves two things: Beam knows the runner only by its full module path, and the
result holds a dask.distributed client that must be closed or the launcher never exits.
"""

DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"


def resolve_runner(name: str | None) -> str | None:
    """`DaskRunner` -> the full path Beam can load; any other name unchanged."""
    return DASK_RUNNER if name == "DaskRunner" else name


def is_dask(runner) -> bool:
    return "dask" in str(runner).lower()


def close(result) -> None:
    """Closes the DaskRunner's connection to its cluster; nothing for other runners."""
    client = getattr(result, "client", None)
    if client is not None:
        client.close()


def missing_dask(argv) -> str | None:
    """--dask_* flags are declared by the DaskRunner's module: imports it (when installed) so they parse; the problem
    when it is not installed, else None."""
    if any(arg.startswith("--dask") for arg in argv):
        try:
            import apache_beam.runners.dask.dask_runner  # noqa: F401 - registers DaskOptions
        except ImportError:
            return "--dask_* flags need apache-beam[dask]: pip install 'apache-beam[dask]'"
    return None
