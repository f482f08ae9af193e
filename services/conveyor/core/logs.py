"""Logging setup for every process: readable text or one JSON object a line."""

import json
import logging
import sys
import time

from conveyor.core.settings import LogFormat, Settings
from conveyor.telemetry.logcontext import ContextFilter


class JsonFormatter(logging.Formatter):
    """One JSON object a line, with any `extra` fields merged in."""

    _RESERVED = frozenset(vars(logging.makeLogRecord({})).keys()) | {
        "message",
        "asctime",
        "context",
    }

    def format(self, record: logging.LogRecord) -> str:
        """Serialize `record`."""
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in self._RESERVED})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(settings: Settings) -> None:
    """Send the root logger to stderr in the configured format and level."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    if settings.log_format is LogFormat.JSON:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s%(context)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
