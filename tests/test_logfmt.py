"""PARLEY_LOG_FORMAT=json: one JSON object a line, with the call's ids where known."""

from __future__ import annotations

import asyncio
import json
import logging
import sys

from parley import logfmt


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("parley.test", logging.WARNING, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


def test_json_lines_carry_ids_from_extra_prefix_and_context() -> None:
    fmt = logfmt.JsonFormatter()
    plain = json.loads(fmt.format(record("loaded %d models", 3)))
    assert plain["msg"] == "loaded 3 models" and plain["level"] == "WARNING" and "call_id" not in plain
    assert json.loads(fmt.format(record("x", session_id="sess-1")))["session_id"] == "sess-1"
    assert json.loads(fmt.format(record("%s: hung up", "call 0a1b2c3d")))["call_id"] == "0a1b2c3d"

    async def inside_call() -> str:
        return fmt.format(record("reply failed"))

    async def main() -> str:
        return await asyncio.create_task(inside_call(), context=logfmt.call_context("deadbeef", "sess-2"))

    line = json.loads(asyncio.run(main()))
    assert (line["call_id"], line["session_id"]) == ("deadbeef", "sess-2")
    assert logfmt.CALL_ID.get() is None  # the ids stay inside the call's tasks


def test_exceptions_stay_inside_one_line() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        rec = logging.LogRecord("parley.test", logging.ERROR, __file__, 1, "failed", (), None)
        rec.exc_info = sys.exc_info()
    out = logfmt.JsonFormatter().format(rec)
    assert "\n" not in out and "RuntimeError: boom" in json.loads(out)["exc"]
