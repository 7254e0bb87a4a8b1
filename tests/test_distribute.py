"""Data-parallel training: MirroredStrategy on 2 logical CPUs, 2 local workers on loopback, kill-and-restart."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import pytest

from imagesets import make_image_folder

CHILD = str(Path(__file__).with_name("distributed_child.py"))
TINY = [
    "--backbone",
    "resnet20",
    "--weights",
    "none",
    "--image-size",
    "32",
    "--batch-size",
    "4",
    "--runtime",
    "tensorflow",
    "--precision",
    "fp32",
]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data"), classes=3, per_class=8)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_mirrored_strategy_on_two_logical_cpus(images, tmp_path) -> None:
    run = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable,
            CHILD,
            "2",
            "train",
            str(images),
            "--out",
            str(run),
            *TINY,
            "--epochs",
            "1",
            "--fine-tune-epochs",
            "1",
            "--distribute",
            "mirrored",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 replicas" in done.stdout and "global batch 8" in done.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["distribute"] == {
        "strategy": "mirrored",
        "replicas": 2,
        "workers": 1,
        "per_replica_batch_size": 4,
        "global_batch_size": 8,
        "learning_rate_scale": 2,
    }
    model = keras.saving.load_model(run / "model.keras")
    assert model.output_shape == (None, 3)


def _launch(
    images: Path, outs: list[Path], workers: str, epochs: int, env: dict | None = None
) -> list[subprocess.Popen]:
    procs = []
    for i, out in enumerate(outs):
        cmd = [
            sys.executable,
            "-m",
            "floranet.cli",
            "train",
            str(images),
            "--out",
            str(out),
            *TINY,
            "--epochs",
            str(epochs),
            "--fine-tune-epochs",
            "1",
            "--distribute",
            "multi-worker",
            "--workers",
            workers,
            "--worker-index",
            str(i),
        ]
        log = open(out.parent / f"worker{i}-{time.monotonic_ns()}.log", "w")  # noqa: SIM115
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env or ENV))
    return procs


def _wait_all(procs: list[subprocess.Popen], timeout: float = 480) -> list[int]:
    end = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(1, end - time.monotonic())))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(p.wait())
    return codes


@pytest.mark.slow
def test_two_workers_on_loopback_only_the_chief_writes(images, tmp_path) -> None:
    chief, other = tmp_path / "chief", tmp_path / "other"
    workers = ",".join(f"127.0.0.1:{p}" for p in _free_ports(2))
    codes = _wait_all(_launch(images, [chief, other], workers, epochs=2))
    logs = "\n".join(p.read_text()[-2000:] for p in tmp_path.glob("worker*.log"))
    assert codes == [0, 0], logs
    assert not other.exists() or not any(other.rglob("*")), "the non-chief wrote files"
    # It named its removed temporary folder as the run directory.
    (worker1,) = (p.read_text() for p in tmp_path.glob("worker1-*.log"))
    assert "this worker's share; the chief writes the run directory" in worker1 and "Run directory:" not in worker1
    assert not (chief / "backup").exists()
    metrics = json.loads((chief / "metrics.json").read_text())
    assert metrics["distribute"]["workers"] == 2 and metrics["distribute"]["replicas"] == 2
    two = {"strategy": "multi-worker", "replicas": 2, "workers": 2}
    assert json.loads((chief / "state.json").read_text())["distribute"] == two  # what a resume must train with
    # What the run used: config.yaml said 3 though early stopping is off in a multi-worker run.
    assert "early_stopping_patience: 0\n" in (chief / "config.yaml").read_text()
    history = (chief / "history.csv").read_text().splitlines()[1:]
    assert [h.split(",")[0] for h in history] == ["stage1", "stage1", "stage2"]
    model = keras.saving.load_model(chief / "model.keras")
    assert model.output_shape == (None, 3)


def _backup_epoch(chief: Path) -> int:
    try:
        return json.loads((chief / "backup" / "stage1" / "training_metadata.json").read_text())["epoch"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


@pytest.mark.slow
def test_kill_a_worker_then_restart_resumes_from_the_backup(images, tmp_path) -> None:
    chief, other = tmp_path / "chief", tmp_path / "other"
    workers = ",".join(f"127.0.0.1:{p}" for p in _free_ports(2))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**ENV, "TMPDIR": str(scratch)}
    procs = _launch(images, [chief, other], workers, epochs=12, env=env)
    end = time.monotonic() + 400
    while _backup_epoch(chief) < 2 and time.monotonic() < end and all(p.poll() is None for p in procs):
        time.sleep(0.05)
    reached = _backup_epoch(chief)
    os.kill(procs[1].pid, signal.SIGKILL)  # a worker dies ...
    os.kill(procs[0].pid, signal.SIGKILL)  # ... and the job is torn down (the chief would wait for it)
    for p in procs:
        p.wait()
    assert reached >= 2, "the run never backed up epoch 2"
    restored = _backup_epoch(chief)
    assert (other / "backup" / "worker-1" / "run").is_dir()  # the killed worker's scratch run, beside its backups
    procs = _launch(images, [chief, other], workers, epochs=12, env=env)  # the same command again
    codes = _wait_all(procs)
    logs = {p.name: p.read_text() for p in tmp_path.glob("worker*.log")}
    assert codes == [0, 0], "\n".join(v[-2000:] for v in logs.values())
    assert any(f"stage1: restoring the backup after epoch {restored}" in v for v in logs.values())
    history = (chief / "history.csv").read_text().splitlines()[1:]
    stage1 = [int(h.split(",")[2]) for h in history if h.startswith("stage1")]
    assert stage1 == list(range(1, 13))  # no epoch lost or repeated, and not restarted from 1
    assert json.loads((chief / "state.json").read_text())["complete"]
    assert keras.saving.load_model(chief / "model.keras").output_shape == (None, 3)
    # Each start of the worker made a temporary folder, and the killed one's outlived it, feature cache and all.
    assert not list(scratch.glob("floranet-worker*")) and not any(other.rglob("*"))


@pytest.mark.parametrize(
    ("tf_config", "why"),
    [
        ("[]", "it needs a 'cluster' object"),
        ('{"cluster": {"worker": "h:1,h:2"}, "task": {"type": "worker", "index": 0}}', "each job of 'cluster' must"),
        ('{"cluster": {"worker": ["h:1", "h:2"]}}', r"its 'task' must name a job of its cluster \(worker\)"),
        ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "ps", "index": 0}}', "its 'task' must name a job"),
        (
            '{"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": 5}}',
            r"its task 'index' must be an int in \[0, 1\)",
        ),
        (
            '{"cluster": {"chief": ["h:1"], "worker": ["h:1"]}, "task": {"type": "worker", "index": 0}}',
            "its hosts must be distinct host:port pairs, ports in .1, 65535.: 'h:1' is named twice",
        ),
        (
            '{"cluster": {"worker": ["h:99999"]}, "task": {"type": "worker", "index": 0}}',
            "its hosts .*'h:99999' has no port",
        ),
        (  # MultiWorkerMirroredStrategy waited for ever for the ps task, ignoring SIGTERM
            '{"cluster": {"worker": ["h:1"], "ps": ["h:2"]}, "task": {"type": "worker", "index": 0}}',
            "MultiWorkerMirroredStrategy trains with 'chief' and 'worker' jobs only, not 'ps'",
        ),
        (  # an evaluator trained alone, with no chief to write the run, and exited 0
            '{"cluster": {"worker": ["h:1"], "evaluator": ["h:2"]}, "task": {"type": "evaluator", "index": 0}}',
            ".*'chief' and 'worker' jobs only, not 'evaluator'",
        ),
        (
            '{"cluster": {"chief": ["h:1", "h:2"]}, "task": {"type": "chief", "index": 0}}',
            "it may have one 'chief' at most",
        ),
        ('{"cluster": {"worker": [":1"]}, "task": {"type": "worker", "index": 0}}', ".*':1' has no host before"),
    ],
    ids=[
        "not-an-object",
        "hosts-as-a-string",
        "no-task",
        "unknown-job",
        "index-out-of-range",
        "twice",
        "port",
        "parameter-server",
        "evaluator",
        "two-chiefs",
        "no-host",
    ],
)
def test_a_badly_shaped_tf_config_is_named_not_a_traceback(monkeypatch, tf_config, why) -> None:
    """Valid JSON of the wrong shape reached TensorFlow, which raised AttributeError, ValueError or TypeError."""
    from floranet.errors import ConfigError
    from floranet.training import distribute

    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ConfigError, match=f"TF_CONFIG is not a cluster TensorFlow can join: {why}"):
        distribute._tf_config()
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["h:1", "h:2"]}, "task": {"type": "worker", "index": 1}}')
    assert distribute._tf_config()["task"]["index"] == 1


@pytest.mark.parametrize(
    ("workers", "why"),
    [
        ("127.0.0.1:1, 127.0.0.1:1", "'127.0.0.1:1' is named twice"),  # the job hung, ignoring SIGTERM
        ("127.0.0.1:99999,127.0.0.1:2", "'127.0.0.1:99999' has no port in"),  # a gRPC traceback
        ("127.0.0.1:0,127.0.0.1:2", "'127.0.0.1:0' has no port in"),
        (":23456,127.0.0.1:2", "':23456' has no host before its port"),
    ],
)
def test_workers_on_one_port_or_without_a_port_are_refused(tmp_path, workers, why) -> None:
    from floranet.config import TrainConfig
    from floranet.errors import ConfigError

    with pytest.raises(ConfigError, match=f"workers must be .*host:port pairs.*{why}.*Received: workers="):
        TrainConfig(data_dir=tmp_path, out=tmp_path / "r", distribute="multi-worker", workers=workers, worker_index=0)


def test_a_port_in_use_is_named_not_a_grpc_traceback(images, tmp_path) -> None:
    """TensorFlow raised UnknownError 'Could not start gRPC server' (a traceback) when this worker's port was taken,
    as by an earlier worker still running. In a child process: a failed start leaves TensorFlow unusable there."""
    other = _free_ports(1)[0]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        workers = f"127.0.0.1:{port},127.0.0.1:{other}"
        cmd = [sys.executable, "-m", "floranet.cli", "train", str(images), "--out", str(tmp_path / "r"), *TINY]
        cmd += ["--distribute", "multi-worker", "--workers", workers, "--worker-index", "0"]
        done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"This worker (worker 0) could not start its gRPC server on 127.0.0.1:{port}" in done.stderr
    assert "stop it with kill -9" in done.stderr and "Traceback" not in done.stderr


def test_one_replica_is_announced_in_the_singular(tmp_path) -> None:
    from floranet.config import TrainConfig
    from floranet.training.distribute import Distribution
    from floranet.training.trainer import _announce_distribution

    lines: list[str] = []
    config = TrainConfig(data_dir=tmp_path, out=tmp_path / "run")
    _announce_distribution(Distribution(None, True, 1, "mirrored"), config, lines.append)
    assert "1 replica on 1 worker(s)" in lines[0], lines
    lines.clear()
    _announce_distribution(Distribution(None, True, 2, "mirrored"), config, lines.append)
    assert "2 replicas on 1 worker(s)" in lines[0], lines


def test_a_worker_whose_own_host_does_not_resolve_is_named_not_a_hang(tmp_path) -> None:
    """TensorFlow waited for ever for a worker whose own host name did not resolve (a typo), ignoring SIGTERM."""
    from floranet.config import TrainConfig
    from floranet.errors import ConfigError
    from floranet.training import distribute

    workers = "no-such-host.invalid:23478,127.0.0.1:23479"
    config = TrainConfig(
        data_dir=tmp_path, out=tmp_path / "r", distribute="multi-worker", workers=workers, worker_index=0
    )
    tf_config = distribute.set_tf_config(workers, 0)
    try:
        started = time.monotonic()
        with pytest.raises(
            ConfigError,
            match=r"This worker \(worker 0\) is no-such-host.invalid:23478 in its cluster, "
            r"and that host name (does not|did not) resolve.*Received: workers=",
        ):
            distribute._check_own_host(config, tf_config)
        assert time.monotonic() - started < distribute.RESOLVE_SECONDS + 5
        distribute._check_own_host(config, distribute.set_tf_config(workers, 1))  # a peer's name is not looked up
    finally:
        os.environ.pop("TF_CONFIG", None)


def _opened(tmp_path: Path, distribution: dict | None, *, resume: bool):
    from floranet.config import TrainConfig
    from floranet.rundir import RunDir
    from floranet.training.opening import open_run_dir

    config = TrainConfig(data_dir=tmp_path, out=tmp_path / "run", weights=None)
    return open_run_dir(RunDir(config.out), config, resume, distribution)


def test_a_run_resumed_on_another_distribution_is_refused(tmp_path) -> None:
    """``distribute: auto`` decides again in each process: a two-worker run resumed by its chief alone went on at one
    replica's global batch with the learning rate scaled for two, and recorded only the second strategy."""
    from floranet.errors import ConfigError, ModelError

    two = {"strategy": "multi-worker", "replicas": 2, "workers": 2}
    _opened(tmp_path, two, resume=False)
    assert json.loads((tmp_path / "run" / "state.json").read_text())["distribute"] == two
    assert _opened(tmp_path, dict(two), resume=True).distribute == two
    alone = {"strategy": "none", "replicas": 1, "workers": 1}
    with pytest.raises(
        ConfigError,
        match=r"trained with multi-worker \(2 replicas on 2 workers\), and this process "
        r"would train with none \(1 replica on 1 worker\)",
    ):
        _opened(tmp_path, alone, resume=True)
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    (tmp_path / "run" / "state.json").write_text(json.dumps({**state, "distribute": None}))  # from before the record
    assert _opened(tmp_path, alone, resume=True).distribute == alone  # recorded from now on
    (tmp_path / "run" / "state.json").write_text(json.dumps({**state, "distribute": {"strategy": "none"}}))
    with pytest.raises(ModelError, match="distribute must be null or an object of strategy, replicas and workers"):
        _opened(tmp_path, alone, resume=True)
