"""What reaches the console at the default log level: wardgate's own lines and errors, not the
libraries' chatter. Third-party warnings (deprecations from transformers or torch, ONNX Runtime's
advice) and uvicorn's lifecycle messages go to the debug level, where `--log-level debug` shows
them; an error from anyone always shows."""

from __future__ import annotations

import logging
import os

# uvicorn's own loggers carry operator information (a bind failure, a protocol error): kept, except
# the lifecycle messages below, which the gateway's one start-up line replaces.
_KEPT_LOGGERS = ("uvicorn",)
_UVICORN_LIFECYCLE = (
    "Started server process", "Waiting for application startup.", "Application startup complete.",
    "Uvicorn running on", "Waiting for application shutdown.", "Application shutdown complete.",
    "Finished server process", "Shutting down",
)
# Log fields that carry what the operator configured (addresses, paths, names), not client text:
# personal-data masking must leave them alone (an upstream's address is not a person's).
OPERATOR_FIELDS = frozenset({"upstream", "listening", "first_request", "model_dir", "policy", "component"})


class LibraryChatterToDebug(logging.Filter):
    """A handler filter: records below ERROR from third-party loggers (and uvicorn's lifecycle
    messages) are demoted to DEBUG, and kept only when the configured level shows DEBUG."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.shows_debug = level <= logging.DEBUG

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR or not self._is_chatter(record):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return self.shows_debug

    @staticmethod
    def _is_chatter(record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] in _KEPT_LOGGERS:
            return isinstance(record.msg, str) and record.msg.startswith(_UVICORN_LIFECYCLE)
        return True


def quiet_libraries(level: int) -> None:
    """Python warnings become log records (then filtered as above); transformers, which prints
    through a handler of its own, keeps its warnings and its weight-loading progress bars to itself
    unless debugging. Both settings are read on first import, in this process or a child started
    later; an operator's own setting wins."""
    logging.captureWarnings(True)
    if level > logging.DEBUG:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
