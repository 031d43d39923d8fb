"""How many threads torch may use: the CPUs this process really has (docs/design.md#threads).

torch sizes its intra-op pool from the machine's cores, not from what the process may run on or
what is free. On a shared runner, in a container with a CPU quota, or on a Ray node with several
actors, that oversubscribes the cores: OpenMP's threads spin at every barrier while the slowest
one waits for a core, and a merge runs many times slower. evohub counts instead:

- the affinity mask (``sched_getaffinity``) and the cgroup CPU quota (v2 ``cpu.max``, v1
  ``cpu.cfs_quota_us``), whichever is smaller;
- minus the cores other processes keep busy right now (CPU time outside this process over 0.1 s);
- divided among the workers the run starts.

``EVOHUB_THREADS`` (or a job's ``threads:``) overrides the count. (OpenMP's passive waits do not
help: on an idle 2-core machine they make a merge 1.8x slower, bench/README.md.)

    >>> fit_threads(workers=1) >= 1
    True
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def _quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs the cgroup quota allows (v2 ``cpu.max``, else v1), or None without a quota."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        return None


def available_cpus() -> int:
    """CPUs this process may run on: the affinity mask and the cgroup quota, the smaller."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = _quota()
    return max(1, min(cpus, math.floor(quota)) if quota else cpus)


def _sample() -> tuple[int, int, int]:
    """(all jiffies, idle jiffies, this process's jiffies) from /proc."""
    vals = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return sum(vals), vals[3] + vals[4], int(own[11]) + int(own[12])


def busy_elsewhere(cpus: int, window: float = 0.1) -> int:
    """Cores other processes keep busy now: CPU time spent outside this process over ``window``
    seconds (/proc/stat), at most all but one of ``cpus``; 0 where /proc is not there."""
    import time

    try:
        t0, i0, s0 = _sample()
        time.sleep(window)
        t1, i1, s1 = _sample()
    except (OSError, ValueError, IndexError):
        return 0
    total = t1 - t0
    if total <= 0:
        return 0
    machine = os.cpu_count() or cpus
    busy = ((total - (i1 - i0)) - (s1 - s0)) / total * machine
    return max(0, min(cpus - 1, round(busy)))


def fit_threads(workers: int = 1, override: int | None = None) -> int:
    """Intra-op threads for each of ``workers`` workers (``EVOHUB_THREADS`` or ``override`` first)."""
    env = os.environ.get("EVOHUB_THREADS")
    if override:
        return override
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    cpus = available_cpus()
    return max(1, (cpus - busy_elsewhere(cpus)) // max(1, workers))


def apply(workers: int = 1, override: int | None = None) -> int:
    """Set torch's intra-op threads to :func:`fit_threads`; returns the count."""
    import torch

    n = fit_threads(workers, override)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
