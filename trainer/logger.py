"""The trainer's log, one logger for every module: `HH:MM:SS LEVEL catsdogs-train: message` lines on stderr;
routine progress at INFO, what needs a look at WARNING, failures at ERROR. (Keras's epoch lines stay on stdout.)

`JsonFormatter` (one JSON object per line: `severity`, `message`, `job`, `run_id`, `time`; what Cloud Logging parses
on GKE) is shared with the Beam jobs' `--log_format json`.
"""

import json
import logging
import sys

NAME = "catsdogs.train"


class _CurrentStderr(logging.StreamHandler):
    """Writes to sys.stderr as it is when a line is logged, not as it was when the handler was made (pytest's
    capture replaces it for every test)."""

    def __init__(self):
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


CONTEXT = {"job": "", "run_id": ""}  # added to every JSON line; the job sets them when it knows them


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"severity": record.levelname, "message": record.getMessage(), "logger": record.name,
                 "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), **CONTEXT}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


TEXT_FORMAT = logging.Formatter("%(asctime)s %(levelname)s catsdogs-train: %(message)s", "%H:%M:%S")


def use_format(log_format: str, job: str = "catsdogs-train") -> None:
    """The trainer's log as text lines, or ("json") one JSON object per line."""
    CONTEXT["job"] = job
    for handler in get().handlers:
        handler.setFormatter(JsonFormatter() if log_format == "json" else TEXT_FORMAT)


def get() -> logging.Logger:
    logger = logging.getLogger(NAME)
    if not logger.handlers:
        handler = _CurrentStderr()
        handler.setFormatter(TEXT_FORMAT)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger
