"""Give a process a fixed share of one core (a Linux CPU cgroup), for scaling runs.

On a 2-core machine the load generator needs a core of its own, so two uncapped workers
cannot show that a second worker doubles capacity: the callers starve first. Capping every
worker at the same fraction of a core makes the workers, not the machine, the limit:
N capped workers then hold N times one capped worker's calls if nothing they share
(placement, the registry, the port) is a bottleneck. The period is short (10 ms) so a
throttled worker is held back for less than a frame, not for most of a 100 ms period.

cgroup v2 (``cpu.max``) or v1 (``cpu.cfs_quota_us``); root only. :func:`available` says
why not when it cannot be done here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 10_000


def _base() -> tuple[Path, int] | None:
    """(where to make groups, cgroup version), or None."""
    if (ROOT / "cgroup.controllers").exists():
        return (ROOT, 2) if "cpu" in (ROOT / "cgroup.controllers").read_text().split() else None
    return (ROOT / "cpu", 1) if (ROOT / "cpu" / "cpu.cfs_quota_us").exists() else None


def available() -> str | None:
    """None when CPU caps can be set here, else why not."""
    if os.geteuid() != 0:
        return "CPU caps need root (cgroups)"
    if _base() is None:
        return "no writable cgroup cpu controller"
    return None


@contextlib.contextmanager
def capped(pids: list[int], cores: float, name: str) -> Iterator[None]:
    """Put each of ``pids`` (with its threads) in its own group capped at ``cores``."""
    base = _base()
    if base is None:
        raise RuntimeError("no cgroup cpu controller")
    root, version = base
    groups = []
    try:
        if version == 2:
            (root / "cgroup.subtree_control").write_text("+cpu")
        for i, pid in enumerate(pids):
            group = root / f"{name}-{os.getpid()}-{i}"
            group.mkdir()
            groups.append(group)
            quota = int(cores * PERIOD_US)
            if version == 2:
                (group / "cpu.max").write_text(f"{quota} {PERIOD_US}")
            else:
                (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
                (group / "cpu.cfs_quota_us").write_text(str(quota))
            (group / "cgroup.procs").write_text(str(pid))
        yield
    finally:
        for group in groups:
            for member in (group / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):  # gone already
                    (root / "cgroup.procs").write_text(member)
            group.rmdir()
