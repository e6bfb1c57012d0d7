"""Benchmarks: ``parley bench NAME`` writes ``bench/results/NAME.json`` and ``NAME.png``."""

from __future__ import annotations

import importlib
import inspect
import json
import time
from pathlib import Path

NAMES = ("dsp", "dsp_hop", "memory", "latency", "capacity", "sip", "rooms", "turns", "fuzz", "churn", "bargein")


def run_benchmarks(name: str, out_dir: Path, quick: bool = False, parts: str | None = None) -> int:
    """Run one benchmark (or ``all``), printing a one-line summary of each.

    ``parts`` picks part of a benchmark's set (``turns``: ``real``, ``piper``); only a
    benchmark that has parts accepts it.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for bench in NAMES if name == "all" else (name,):
        module = importlib.import_module(f"bench.{bench}")
        params = inspect.signature(module.run).parameters
        if parts is not None and "parts" not in params:
            raise ValueError(f"bench {bench} has no parts to choose (--parts)")
        started = time.monotonic()
        print(f"== bench {bench} ...", flush=True)
        kwargs: dict[str, object] = {"quick": quick} if "quick" in params else {}
        if parts is not None:
            kwargs["parts"] = parts
        result = module.run(out_dir, **kwargs)
        print(f"== bench {bench}: {time.monotonic() - started:.0f} s -> {out_dir / (bench + '.json')}")
        print(json.dumps(result.get("summary", {}), indent=1))
    return 0
