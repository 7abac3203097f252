"""The command-line side both Beam jobs share: flag checks, --help, logging, exit codes.

- Unknown or abbreviated flags are refused at launch with "did you mean ...?" and exit code 2 (argparse's convention
  for a usage error). Beam itself only warns about a flag it does not know and drops it, so a typo such as
  --image_sise would otherwise quietly run with the default.
- `--help` lists the job's own flags (with defaults and units) and names where Beam's flags are documented.
- Logs: our progress at INFO, warnings at WARNING; `--log_format json` emits one JSON object per line with
  `severity`, `message`, `job` and `run_id` (what Cloud Logging parses on GKE). Beam's harmless warnings that every
  worker repeats are dropped here, once, for both jobs.
"""

import argparse
import difflib
import logging
import sys

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, _BeamArgumentParser

from beam_pipelines import dask_compat, options
from trainer import logger

EXIT_USAGE = 2
# Harmless messages Beam repeats from every worker: they name nothing the user can act on.
_NOISE = ("Discarding unparseable args", "No semi_persistent_directory", "Discarding flag",
          "Resource module is not available")


class JobExit(SystemExit):
    """Ends a job with an exit code a scheduler can act on and a message saying what to do; `main` prints it."""

    code_number = 1

    def __init__(self, message: str):
        super().__init__(self.code_number)
        self.message = message

    def __str__(self):
        return self.message


class JobFailed(JobExit):
    """The job ran but its output must not be trusted as is (too many rejected files, counts that don't add up):
    exit code 1."""

    code_number = 1


class UsageError(JobExit):
    """A bad flag or value: exit code 2."""

    code_number = EXIT_USAGE


def _beam_parser() -> argparse.ArgumentParser:
    parser = _BeamArgumentParser(allow_abbrev=False)
    classes = {}
    for cls in PipelineOptions.__subclasses__():
        classes.setdefault(str(cls), cls)
    for cls in classes.values():
        cls._add_argparse_args(parser)
    return parser


def check_flags(argv, prog: str, *own_classes) -> None:
    """Raises UsageError for a flag neither the job nor Beam knows (with the closest known flag), for an abbreviated
    flag, or for a value given without its flag."""
    dask_compat.require_dask_options(argv)
    parser = _beam_parser()
    try:
        _, unknown = parser.parse_known_args(argv)
    except SystemExit:  # argparse printed why (a bad value of a known flag)
        raise UsageError(f"see the message above; run `{prog} --help` for every flag") from None
    flags = [arg.split("=", 1)[0] for arg in unknown if arg.startswith("-")]
    if flags:
        own = [option for cls in own_classes for option in _option_strings(cls)]
        known = own + [option for action in parser._actions for option in action.option_strings]
        hints = []
        for flag in flags:
            close = difflib.get_close_matches(flag, own, n=1) or difflib.get_close_matches(flag, known, n=1)
            hints.append(f"{flag} (did you mean {close[0]}?)" if close else flag)
        raise UsageError(f"unknown flag(s): {', '.join(hints)}; run `{prog} --help` for every flag")
    positional = [arg for arg in unknown if not arg.startswith("-")]
    if positional:
        raise UsageError(f"unexpected argument(s) {positional}: every value needs its flag, e.g. --input "
                         f"{positional[0]}")


def parse_job(argv, prog: str, own_options, make_config):
    """A Beam job's flags -> (PipelineOptions, its validated config, the runner's name); UsageError on any problem.
    The runner defaults to the DirectRunner (left unset, Beam 2.77 tries Prism, which needs a download)."""
    check_flags(argv, prog, options.JobOptions, own_options)
    pipeline_options = PipelineOptions(argv)
    standard = pipeline_options.view_as(StandardOptions)
    standard.runner = dask_compat.resolve_runner(standard.runner or "DirectRunner")
    try:
        config = make_config(pipeline_options)
    except ValueError as error:
        raise UsageError(str(error)) from None
    return pipeline_options, config, str(standard.runner)


def _option_strings(cls) -> list[str]:
    parser = argparse.ArgumentParser(add_help=False)
    cls._add_argparse_args(parser)
    return [option for action in parser._actions for option in action.option_strings]


def help_parser(prog: str, doc: str, option_classes) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Beam's own flags pass through: --runner (default DirectRunner; DataflowRunner, DaskRunner), "
               "--direct_running_mode multi_processing --direct_num_workers N, --project, --region, "
               "--temp_location, --setup_file, --sdk_container_image, --dask_client_address, ... "
               "Exit codes and how the job works: docs/SCORING.md, docs/PREPROCESS.md.")
    for cls in option_classes:
        cls._add_argparse_args(parser)
    parser.add_argument("--log_format", choices=("text", "json"), default="text",
                        help="text, or one JSON object per line (for Cloud Logging) (default: text)")
    return parser


def _not_noise(record: logging.LogRecord) -> bool:
    return not any(text in record.getMessage() for text in _NOISE)


def setup_logging(job: str, log_format: str = "text") -> None:
    """Our loggers at INFO, Beam's at WARNING (its workers' forwarded lines included), minus Beam's noise."""
    logger.CONTEXT["job"] = job
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(logger.JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_not_noise)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    # multi_processing workers send their records through this logger: let ours through, not Beam's INFO chatter.
    forwarded = logging.getLogger("apache_beam.runners.portability.local_job_service")
    forwarded.setLevel(logging.INFO)
    forwarded.addFilter(lambda record: record.levelno >= logging.WARNING or "catsdogs" in record.getMessage()
                        or "beam_pipelines" in record.getMessage())
    for noisy in ("google", "urllib3", "absl", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def split_log_format(argv: list) -> tuple[list, str]:
    """(argv without --log_format, its value): the console entry point's flag, read before Beam parses the rest."""
    argv, log_format = list(argv), "text"
    for index, arg in enumerate(argv):
        if arg.startswith("--log_format"):
            log_format = arg.split("=", 1)[1] if "=" in arg else (argv[index + 1] if index + 1 < len(argv) else "")
            del argv[index: index + (1 if "=" in arg else 2)]
            break
    if log_format not in ("text", "json"):
        raise UsageError(f"--log_format must be text or json (got {log_format!r})")
    return argv, log_format


def main(run, *, prog: str, doc: str, option_classes, argv=None) -> None:
    """Console entry point: --help, logging, then run(argv); usage errors exit 2 with their message."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        help_parser(prog, doc, option_classes).print_help()
        return
    try:
        argv, log_format = split_log_format(argv)
    except UsageError as error:
        print(f"error: {error.message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    setup_logging(prog, log_format)
    try:
        run(argv)
    except JobExit as error:
        print(error.message if error.message.startswith("error:") else f"error: {error.message}", file=sys.stderr)
        raise SystemExit(error.code_number) from None
