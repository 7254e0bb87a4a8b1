"""What machine this is: CPU flags (for the runtime and precision policies) and package versions."""

from __future__ import annotations

import functools
import os
import platform
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
        "cores": str(os.cpu_count()),
        "native bf16": "yes (AVX512_BF16/AMX)" if native_bf16() else "no",
    }


def _cpuinfo_lines() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []
