"""What machine this is: CPU flags (for the runtime and precision policies) and package versions."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """CPU feature flags from /proc/cpuinfo (empty elsewhere)."""
    for line in _cpuinfo_lines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_name() -> str:
    """The CPU's model name, or the platform's processor string."""
    for line in _cpuinfo_lines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_model_id() -> str:
    """The CPU's family and model numbers (x86 Linux), which tell apart generations sold under one name
    ("AMD EPYC" covers several); "" where /proc/cpuinfo does not say."""
    fields = {}
    for line in _cpuinfo_lines():
        key, _, value = line.partition(":")
        if key.strip() in ("cpu family", "model") and key.strip() not in fields:
            fields[key.strip()] = value.strip()
        if not line.strip() and fields:  # the first processor's block only
            break
    return f"family {fields['cpu family']}, model {fields['model']}" if len(fields) == 2 else ""


def usable_cpus() -> int:
    """The CPUs this process may use: its CPU affinity (``taskset``, a container's cpuset) and the cgroup CPU quota
    (``docker --cpus``, a Kubernetes limit), the smaller; ``os.cpu_count()`` where neither is known.

    A quota of 1.5 CPUs counts as 1: work sized by this count never asks for more than the process gets.
    """
    # No affinity call on macOS or Windows.
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota()
    return max(1, min(count, quota) if quota is not None else count)


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Whole CPUs the CPU quota of this process's cgroup, or of a cgroup above it, allows (the smallest), at least 1:
    cgroup v2's ``cpu.max``, or cgroup v1's ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (older hosts' Docker);
    None where no quota is set or there is no cgroup (macOS)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        lines = []
    # "0::/path" (v2); "4:cpu,cpuacct:/path" (v1, its controllers mounted at root/cpu,cpuacct or root/cpu).
    own = next((ln[3:] for ln in lines if ln.startswith("0::")), "/")
    v1 = next((ln.split(":", 2)[2] for ln in lines if "cpu" in (ln.split(":") + [""])[1].split(",")), "/")
    quotas = _quotas(root, own, _cpu_max)
    for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        quotas += _quotas(root / mount, v1, _cfs_quota)
    return min(quotas) if quotas else None


def _quotas(root: Path, own: str, read: Callable[[Path], int | None]) -> list[int]:
    """The quotas ``read`` finds in the cgroup ``own`` under ``root`` and in each cgroup above it."""
    folder = root / own.strip().lstrip("/")
    found: list[int] = []
    for where in (folder, *folder.parents):
        if where == root or root in where.parents:
            with contextlib.suppress(OSError, ValueError, ZeroDivisionError):
                quota = read(where)
                found += [quota] if quota is not None else []
    return found


def _cpu_max(folder: Path) -> int | None:
    quota, period = (folder / "cpu.max").read_text().split()[:2]
    return None if quota == "max" else max(1, int(quota) // int(period))


def _cfs_quota(folder: Path) -> int | None:
    quota = int((folder / "cpu.cfs_quota_us").read_text())  # -1: no quota
    return None if quota < 0 else max(1, quota // int((folder / "cpu.cfs_period_us").read_text()))


def native_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX512_BF16 or AMX)."""
    return bool(BF16_FLAGS & cpu_flags())


def package_version(dist: str) -> str | None:
    """An installed distribution's version, or None."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, str]:
    """Versions and machine, for reports and model cards (no heavy imports)."""
    from floranet import __version__

    tf = package_version("tensorflow-cpu") or package_version("tensorflow") or "not installed"
    return {
        "floranet": __version__,
        "python": platform.python_version(),
        "tensorflow": tf,
        "keras": package_version("keras") or "not installed",
        "numpy": package_version("numpy") or "?",
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu model": cpu_model_id() or "?",
        "cores": _cores(),
        "native bf16": "yes (AVX512_BF16/AMX)" if native_bf16() else "no",
    }


def _cores() -> str:
    """The cores this process may use, and the machine's where they differ: ``"2"``, ``"1 of 2"``."""
    usable, total = usable_cpus(), os.cpu_count()
    return str(usable) if usable == total else f"{usable} of {total}"


def _cpuinfo_lines() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []
