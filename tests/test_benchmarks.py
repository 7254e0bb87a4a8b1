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


def test_machine_info_records_the_commit_and_utc_time_it_measured() -> None:
    import datetime

    import common

    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    info = common.machine_info()
    assert info["git_commit"] == common.git_commit()
    when = datetime.datetime.strptime(info["date_utc"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    assert before <= when <= datetime.datetime.now(datetime.UTC)


def test_git_commit_is_dirty_only_for_changed_code(tmp_path: Path) -> None:
    import shutil
    import subprocess

    import common

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    assert common.git_commit(tmp_path) is None  # not a git checkout
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "x.json").write_text("{}")
    (tmp_path / "code.py").write_text("x = 1\n")
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    (tmp_path / "untracked.txt").write_text("")
    (tmp_path / "benchmarks" / "results" / "x.json").write_text('{"new": 1}')  # a suite run rewrites results
    assert common.git_commit(tmp_path) == head
    (tmp_path / "code.py").write_text("x = 2\n")
    assert common.git_commit(tmp_path) == head + "+dirty"


def test_the_benchmarks_readme_claims_native_bf16_only_for_results_that_record_it() -> None:
    text = run_all.render()
    assert "Every result records the CPU flags and whether bf16 is native" not in text
    assert "Results\nfrom 2026-11-27 on also record the CPU's family" not in text
    older = [
        p.stem for p in (BENCH / "results").glob("*.json") if "native_bf16" not in json.loads(p.read_text())["machine"]
    ]
    assert all(name in text.split("## ")[1] for name in older)


def test_the_bf16_figures_say_which_change_is_a_seed_mean_and_which_one_run() -> None:
    r = json.loads((BENCH / "results" / "bf16.json").read_text())
    means = [abs(s["mean_points"]) for s in r["summary"] if s["change"].startswith("bf16")]
    one_run = abs(r["full_model"]["delta_points"])
    assert max(means) < one_run == r["max_mean_delta_points"]  # the headline figure is one run, not a mean
    section = run_all._low_precision(r)
    assert "Largest mean change" not in section
    assert f"the 5-seed means (at most {max(means):.2f}" in section
    assert f"one run (tutorial preset, seed 0: {one_run:.2f})" in section
    readme = " ".join((BENCH.parent / "README.md").read_text().split())
    assert f"by at most {max(means):.2f} points as a mean over 5 seeds" in readme
    assert f"{one_run:.2f} points on average" not in readme


def test_the_unknown_screen_states_the_trained_runs_auroc_rather_than_calling_them_higher() -> None:
    # Only the recommended preset's kNN and energy rows beat the screen's; the tutorial preset's are lower.
    results = {n: json.loads((BENCH / "results" / f"{n}.json").read_text()) for n in ("unknown", "unknown_screens")}
    tutorial = {m["method"]: m["mean_auroc"] for m in results["unknown"]["methods"]}
    screen = {m["method"]: m["mean_auroc"] for m in results["unknown_screens"]["rows"]}
    assert tutorial["knn (k=1)"] < screen["knn pooled (reference)"]
    text = run_all.render()
    assert "its kNN and energy rows are higher there" not in text
    assert f"{tutorial['knn (k=1)']} and {tutorial['energy']} with the tutorial preset" in text
