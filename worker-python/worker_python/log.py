"""JSON log lines on stdout: one object per line, service="worker-python"."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from gunicorn.glogging import Logger as GunicornLogger

from worker_python import SERVICE

LOGGER_NAME = "worker_python"
# Fields a caller may attach with `extra=`; anything else is not logged (keeps secrets out).
REQUEST_FIELDS = (
    "request_id",
    "op",
    "status",
    "ms",
    "bytes_in",
    "bytes_out",
    "method",
    "path",
    "code",
    "format",
    "pid",
    "port",
    "host",
    "inflight",
    "tls",
    "files",
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "service": SERVICE,
            "msg": record.getMessage(),
        }
        for field in REQUEST_FIELDS:
            if hasattr(record, field):
                line[field] = getattr(record, field)
        if record.exc_info:
            # one line: the exception type and message, not a multi-line traceback
            line["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
        return json.dumps(line, default=str)


def json_handler() -> logging.Handler:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    return handler


def setup_logging(level: str) -> logging.Logger:
    """Route our logger, Python warnings and anything else on the root logger to JSON stdout."""
    root = logging.getLogger()
    root.handlers[:] = [json_handler()]
    root.setLevel(level.upper())
    logging.captureWarnings(True)
    return logging.getLogger(LOGGER_NAME)


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


class GunicornJsonLogger(GunicornLogger):
    """gunicorn's own messages (start, stop, worker exits) as our JSON lines; no access log."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            log.handlers[:] = [json_handler()]
            log.propagate = False
        self.error_log.setLevel(cfg.loglevel.upper())

    def access(self, resp, req, environ, request_time) -> None:
        pass  # our app logs one line per request, with the request id
