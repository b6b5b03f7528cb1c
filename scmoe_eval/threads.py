"""CPU thread count for a run: enough threads to use the cores, never more than are free.

torch's default is one intra-op thread per core of the machine. When other work shares those cores
(a laptop, a shared node, two runs at once), OpenMP threads wait on each other spinning and a small
model decodes many times slower than with one thread; an explicit OMP_NUM_THREADS always wins.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def physical_cores(cpuinfo: Path = Path("/proc/cpuinfo")) -> int:
    """Distinct (socket, core) pairs in /proc/cpuinfo; os.cpu_count() where that file says nothing."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    cores, socket, core = set(), None, None
    for line in text.splitlines() + [""]:
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "physical id":
            socket = value
        elif key == "core id":
            core = value
        elif not key and core is not None:  # a blank line ends one processor block
            cores.add((socket, core))
            socket, core = None, None
    return len(cores) or os.cpu_count() or 1


def cgroup_cpus(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The CPU quota of this container (cgroup v2 cpu.max or v1 cfs quota), rounded up; None if unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else max(1, math.ceil(quota / period))
    except (OSError, ValueError):
        return None


def default_threads(
    env: dict[str, str] | None = None, *, cores: int | None = None, usable: int | None = None,
    quota: int | None = None, load: float | None = None,
) -> tuple[int, str]:
    """(threads, why): OMP_NUM_THREADS when set; else the physical cores this process may use
    (affinity, container quota) minus those busy with other work at start (1-min load average), at least 1."""
    env = os.environ if env is None else env
    given = env.get("OMP_NUM_THREADS", "").strip()
    if given.isdigit() and int(given) > 0:
        return int(given), "OMP_NUM_THREADS"
    cores = physical_cores() if cores is None else cores
    if usable is None:
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    quota = cgroup_cpus() if quota is None else quota
    limit = min(cores, usable, quota or cores)
    load = os.getloadavg()[0] if load is None and hasattr(os, "getloadavg") else (load or 0.0)
    busy = min(int(load), limit - 1)
    why = f"{limit} usable physical cores" + (f", {busy} busy (load {load:.1f})" if busy else "")
    return max(1, limit - busy), why
