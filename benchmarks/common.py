"""Shared helpers for benchmarks: machine info, child-process measurement, tables, JSON."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
FLOWERS = SHARED / "data" / "flower_photos"
# The ImageNet MobileNetV2 that ships with floranet (torchvision's weights, converted; for floranet's
# mobilenet_v2). ../shared's older conversion (Keras's layout, normalisation folded in, Keras's padding)
# is for keras:mobilenet_v2 only.
MOBILENET_NOTOP = ROOT / "src" / "floranet" / "models" / "pretrained" / "mobilenet_v2_imagenet_notop.h5"
SHARED_MOBILENET_NOTOP = SHARED / "weights" / "mobilenet_v2_imagenet_tv_notop.weights.h5"
RESULTS = ROOT / "benchmarks" / "results"
# main when issue 16 was filed (stage 2 ran the whole model every epoch; predict imported TensorFlow): the
# baseline that bench_time_to_accuracy and bench_predict run beside this code.
BASELINE_REF = "c86ec50"
CLI = "import sys; from floranet.cli import main; sys.exit(main())"  # `floranet ...` for any src/ on PYTHONPATH


# What a suite run rewrites itself: changes there do not make the measured code "+dirty".
_NOT_CODE = (":(exclude)benchmarks/results", ":(exclude)benchmarks/README.md")


def git_commit(root: Path = ROOT) -> str | None:
    """The checkout's short commit, with "+dirty" where tracked files outside benchmarks/results and
    benchmarks/README.md differ from it (a suite run rewrites those itself); None outside a git checkout."""
    git = ["git", "-C", str(root)]
    try:
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        changed = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no", "--", ".", *_NOT_CODE],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if changed.stdout.strip() else "")


def machine_info() -> dict[str, Any]:
    """The CPU, its flags that decide floranet's auto policies, the versions that ran, and the code and UTC time
    of the measurement (``git_commit``, ``date_utc``; results written before these fields existed lack them)."""
    from floranet.utils import system

    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni")
    env = system.environment()
    return {
        "git_commit": git_commit(),
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu": env["cpu"],
        "cpu_model": env["cpu model"],
        "cores": os.cpu_count(),
        "usable_cores": system.usable_cpus(),  # affinity and cgroup quota: what the measurement could use
        "cpu_flags": [f for f in wanted if f in system.cpu_flags()],
        "native_bf16": system.native_bf16(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        **{k: env[k] for k in ("tensorflow", "keras", "numpy", "floranet")},
    }


def baseline_source(ref: str, work: Path) -> Path:
    """``ref``'s src/ unpacked into ``work`` (git archive: no checkout; the repository is untouched)."""
    import io
    import tarfile

    blob = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "src"], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(work, filter="data")
    return work / "src"


def run_measured(cmd: list[str], *, env: dict[str, str] | None = None, log: Path | None = None) -> dict[str, Any]:
    """Runs ``cmd`` as a child; returns wall seconds, exit code and the child's own peak RSS."""
    start = time.perf_counter()
    with open(log, "w") if log else contextlib.nullcontext(subprocess.DEVNULL) as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "wall_seconds": round(time.perf_counter() - start, 2),
        "returncode": proc.returncode,
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
    }


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths, strict=True)) + " |"  # noqa: E731
    out = [line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line([_fmt(r.get(c)) for c in columns]) for r in rows]
    return "\n".join(out)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return "" if v is None else str(v)


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (a count of runs or seeds that is divided by)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1. Received: {text}")
    return value


def control_noise(summary: list[dict[str, Any]]) -> float:
    """How far the fp32 controls of a precision benchmark (OpenVINO fp32 in place of TensorFlow fp32: the same
    features to 1e-6) moved validation accuracy, as the largest |mean| + sd in points: a low-precision change
    smaller than this is not told apart from training the head again."""
    controls = [s for s in summary if s["change"].startswith("OpenVINO fp32")]
    return round(max((abs(s["mean_points"]) + s["std_points"] for s in controls), default=0.0), 2)


def result_name(base: str, *variant: str) -> str:
    """The results file name of ``base`` run with ``variant`` options (none: ``base`` itself), safe as a file
    name: what is not a letter, digit, '.', '=' or '-' becomes '_' (a path given as a value has slashes)."""
    tail = "_".join(re.sub(r"[^\w.=-]+", "_", v).strip("_") for v in variant)
    return f"{base}_{tail}" if tail else base


def write_result(name: str, payload: dict[str, Any], command: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"command": command, "machine": machine_info(), **payload}, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def python() -> str:
    return sys.executable
