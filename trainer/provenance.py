"""Which code made an artefact: recorded in metadata.json, model_info.json and scoring summaries.

Standard library only, so every job can import it cheaply.
"""

import datetime
import functools
import os
import subprocess
from importlib import metadata


@functools.cache
def code_version() -> str:
    """CATSDOGS_CODE_VERSION (set when the container image is built), else the git commit of the
    checkout (with -dirty for uncommitted changes), else the installed package version."""
    if os.environ.get("CATSDOGS_CODE_VERSION"):
        return os.environ["CATSDOGS_CODE_VERSION"]
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        described = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=here,
                                   capture_output=True, text=True, timeout=5, check=True)
        return described.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return "catsdogs-" + metadata.version("catsdogs")
    except metadata.PackageNotFoundError:
        return "unknown"


def utc_now() -> str:
    """An ISO 8601 UTC timestamp with seconds, e.g. 2026-11-25T10:44:57Z."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
