"""The page's logger: one JSON object per line on stdout (time, level, service, msg), as every
component logs. Streamlit re-runs app.py on each interaction but imports this module once, so
the handler is attached once."""

from __future__ import annotations

import json
import logging
import sys
import time

SERVICE = "coordinator"


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": SERVICE,
            "component": "page",
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def page_logger() -> logging.Logger:
    logger = logging.getLogger("coordinator.page")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(JsonLines())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger
