"""The benchmark suite's bookkeeping: `make bench` can rebuild each committed result, and each result names its code."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import run_all  # noqa: E402


@pytest.mark.parametrize("name", ["accuracy", "accuracy_bundled"])
def test_run_all_reruns_the_command_each_accuracy_result_records(name: str) -> None:
    script, _ = run_all.SUITE[name]
    command = " ".join(["python", f"benchmarks/{script}", *map(shlex.quote, run_all.EXTRA_ARGS.get(name, []))])
    recorded = json.loads((BENCH / "results" / f"{name}.json").read_text())["command"]
    assert command == recorded.strip()
    assert f"--result {name}" in command  # the script's default file is accuracy_bundled


def test_the_before_audit_result_records_the_commit_that_reproduces_it() -> None:
    # Today's bench_time_to_accuracy.py with those --variant flags would write another file, and measure today's code.
    recorded = json.loads((BENCH / "results" / "time_to_accuracy_before_audit.json").read_text())["command"]
    checkout = "git worktree add ../floranet-b4e48d7 b4e48d7 && cd ../floranet-b4e48d7 && PYTHONPATH=src "
    assert recorded.startswith(checkout)
