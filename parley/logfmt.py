"""Log output: the classic text line, or one JSON object per line for log shippers.

In JSON each record carries ``call_id``/``session_id`` when the code logging it knows them:
from ``extra={...}``, from the context variables a call sets for its own tasks
(:func:`call_context`), or from the ``call 1a2b3c4d:`` prefix call logs start with. That way
Loki/Elasticsearch can filter one call's lines without every log call changing shape.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
from typing import Any

CALL_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("parley_call_id", default=None)
SESSION_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("parley_session_id", default=None)

TEXT_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
_CALL_PREFIX = re.compile(r"^call ([0-9a-f]{8})\b")


def call_context(call_id: str, session_id: str) -> contextvars.Context:
    """A fresh copy of the current context with the call's ids set, for one of its tasks.

    One copy per task: a Context may not be entered twice at once, and a task that sets a
    variable must not change it for its siblings.
    """
    ctx = contextvars.copy_context()
    ctx.run(CALL_ID.set, call_id)
    ctx.run(SESSION_ID.set, session_id)
    return ctx


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, process, ids, exception."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": message,
            "pid": record.process,
        }
        for key, var in (("call_id", CALL_ID), ("session_id", SESSION_ID)):
            value = getattr(record, key, None) or var.get()
            if value:
                out[key] = value
        if "call_id" not in out and (m := _CALL_PREFIX.match(message)):
            out["call_id"] = m.group(1)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure(level: str, fmt: str) -> None:
    """Root logging for a Parley process (``fmt`` = ``text`` | ``json``); noisy libraries quieted."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("aioice", "aiortc", "grpc"):
        logging.getLogger(name).setLevel(logging.WARNING)
