"""The trainer's log, one logger for every module: `HH:MM:SS LEVEL catsdogs-train: message` lines on stderr;
routine progress at INFO, what needs a look at WARNING, failures at ERROR. (Keras's epoch lines stay on stdout.)"""

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


def get() -> logging.Logger:
    logger = logging.getLogger(NAME)
    if not logger.handlers:
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s catsdogs-train: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger
