"""Benchmarks: ``parley bench NAME`` writes ``bench/results/NAME.json`` and ``NAME.png``."""

from __future__ import annotations

import importlib
import inspect
import json
import time
from pathlib import Path

NAMES = ("dsp", "memory", "latency", "capacity")


def run_benchmarks(name: str, out_dir: Path, quick: bool = False) -> int:
    """Run one benchmark (or ``all``), printing a one-line summary of each."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for bench in NAMES if name == "all" else (name,):
        module = importlib.import_module(f"bench.{bench}")
        started = time.monotonic()
        print(f"== bench {bench} ...", flush=True)
        takes_quick = "quick" in inspect.signature(module.run).parameters
        kwargs = {"quick": quick} if takes_quick else {}
        result = module.run(out_dir, **kwargs)
        print(f"== bench {bench}: {time.monotonic() - started:.0f} s -> {out_dir / (bench + '.json')}")
        print(json.dumps(result.get("summary", {}), indent=1))
    return 0
