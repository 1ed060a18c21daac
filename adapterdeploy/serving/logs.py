"""Structured logs: one JSON object per line (or plain text), with the request id on every request line.

The access logger (``adapterdeploy.serving.access``) writes one line per request at INFO (health probes
and ``/metrics`` at DEBUG, so probes do not flood the log); fields travel as ``extra=`` and become JSON
keys. Secrets never reach a log call (the admin token is compared, never formatted).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

__all__ = ["ACCESS_LOGGER", "JsonFormatter", "configure_logging"]

ACCESS_LOGGER = "adapterdeploy.serving.access"
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", ...extra}``; exceptions as a string field (server side only)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str = "info", *, json_lines: bool = True) -> None:
    """Route adapterdeploy's and uvicorn's loggers to stderr in one format (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json_lines else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_adapterdeploy", False):
            root.removeHandler(old)
    handler._adapterdeploy = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    numeric = logging.getLevelName(level.upper())
    for name in ("adapterdeploy", "uvicorn", "uvicorn.error"):
        logging.getLogger(name).setLevel(numeric)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    # Our middleware writes the access line (with the request id); uvicorn's own stays off.
    logging.getLogger("uvicorn.access").handlers.clear()
    logging.getLogger("uvicorn.access").propagate = False
