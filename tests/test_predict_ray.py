"""`floranet predict --engine ray`: a local Ray instance gives the rows, CSV and Parquet of local prediction."""

from __future__ import annotations

import csv
import re
import warnings
from pathlib import Path

import pytest

from floranet import inference as predict
from floranet.cli import main
from floranet.errors import ConfigError
from floranet.inference import formats
from floranet.inference import ray as predict_ray
from imagesets import make_image_folder

ray = pytest.importorskip("ray")
from ray.util.annotations import RayDeprecationWarning  # noqa: E402


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """15 files (12 good images, two text files named .jpg, one broken link) in a folder, one of its images again,
    and a path that does not exist."""
    root = tmp_path_factory.mktemp("ray-images")
    folder = make_image_folder(root / "imgs", classes=3, per_class=4, seed=3)
    (folder / "class_1" / "broken.jpg").write_text("not an image")
    (folder / "class_1" / "back\\slash.jpg").write_text("not an image")  # an error names it escaped (repr)
    (folder / "class_2" / "gone.jpg").symlink_to(root / "nowhere.jpg")  # Ray re-expanded it: 'no image'
    again = sorted((folder / "class_0").glob("*.jpg"))[0]  # twice: Ray kept one row per distinct path
    return [str(folder), str(again), str(root / "missing.jpg")]


def _assert_same_rows(got: list[predict.Prediction], want: list[predict.Prediction]) -> None:
    assert [r.file for r in got] == [r.file for r in want]
    for g, w in zip(got, want, strict=True):
        assert g.error == w.error
        assert [c for c, _ in g.top_k] == [c for c, _ in w.top_k]
        assert [p for _, p in g.top_k] == pytest.approx([p for _, p in w.top_k], abs=1e-5)
        assert g.low_confidence == w.low_confidence
        assert g.unknown == w.unknown
        assert (g.ood_score is None) == (w.ood_score is None)
        if g.ood_score is not None:
            assert g.ood_score == pytest.approx(w.ood_score, abs=1e-4)


def _csv_cells(path: Path) -> list[list[str]]:
    return list(csv.reader(path.read_text().splitlines()))


def test_ray_engine_gives_the_local_rows_and_csv(tiny_run: Path, inputs: list[str], tmp_path: Path) -> None:
    local = predict.load(tiny_run, batch_size=4).predict(inputs, top_k=2)
    # batch_size 4: four batches spread over two actors, each loading the model once.
    said: list[str] = []
    with warnings.catch_warnings(record=True) as seen:  # pyproject's filterwarnings ignores DeprecationWarning
        warnings.simplefilter("always", RayDeprecationWarning)
        rows = predict_ray.predict_with_ray(tiny_run, inputs, top_k=2, num_workers=2, batch_size=4, say=said.append)
    # Ray's deprecation warnings name the caller's line: map_batches(max_restarts=0) warned that ray_remote_args goes
    # in Ray 2.64 (then every --engine ray job fails).
    package = Path(predict_ray.__file__).parents[1]
    ours = [w for w in seen if issubclass(w.category, RayDeprecationWarning) and package in Path(w.filename).parents]
    assert not ours, [f"{w.filename}:{w.lineno}: {w.message}" for w in ours]
    assert not ray.is_initialized()  # the instance it started is shut down
    assert "2 worker(s)" in said[0]
    assert len(rows) == 17 and sum(r.error is not None for r in rows) == 4
    gone = next(r for r in rows if r.file.endswith("gone.jpg"))
    assert "is missing (no such file, or a broken symlink)" in (gone.error or "")
    assert rows[-1].file.endswith("missing.jpg") and "no such file" in (rows[-1].error or "")
    _assert_same_rows(rows, local)
    formats.write_predictions(local, "csv", tmp_path / "local.csv")
    formats.write_predictions(rows, None, tmp_path / "ray.csv")  # csv from the suffix
    # Byte-identical here; the model's last float digit may depend on batch company and thread count on
    # other CPUs, so compare probability cells as numbers and everything else as text.
    got, want = _csv_cells(tmp_path / "ray.csv"), _csv_cells(tmp_path / "local.csv")
    assert got[0] == want[0] and len(got) == len(want) == 18
    for g, w in zip(got[1:], want[1:], strict=True):
        # Cells 2 and 4: probabilities; 7: the unknown score (a z-scored distance: a few more digits move).
        assert [c for i, c in enumerate(g) if i not in (2, 4, 7)] == [c for i, c in enumerate(w) if i not in (2, 4, 7)]
        assert float(g[7] or "nan") == pytest.approx(float(w[7] or "nan"), abs=1e-4, nan_ok=True)
        assert [float(g[i] or "nan") for i in (2, 4)] == pytest.approx(
            [float(w[i] or "nan") for i in (2, 4)], abs=1e-5, nan_ok=True
        )


def test_cli_ray_engine_writes_parquet_like_local(
    tiny_run: Path,
    inputs: list[str],
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pyarrow.parquet as pq

    monkeypatch.chdir(Path(inputs[0]).parent)  # relative paths: rows and error messages name files as given
    relative = ["imgs", "missing.jpg"]
    out_ray, out_local = tmp_path / "ray.parquet", tmp_path / "local.parquet"
    assert (
        main(["predict", str(tiny_run), *relative, "--engine", "ray", "--workers", "1", "--output", str(out_ray)]) == 0
    )
    assert main(["predict", str(tiny_run), *relative, "--output", str(out_local)]) == 0
    said, err = capfd.readouterr()
    assert "16 row(s) written to" in said and "12 predicted, 4 with an error" in said
    # Ray's own C++ log lines on a normal run, such as "core_worker.cc:2465: Actor with class name: 'MapWorker(...)'
    # has constructor arguments in the object store and max_restarts > 0".
    assert not re.search(r"\] \w+\.(cc|h):\d+:", err), err
    got, want = pq.read_table(out_ray).to_pylist(), pq.read_table(out_local).to_pylist()
    assert list(got[0]) == [
        "file",
        "class_1",
        "probability_1",
        "class_2",
        "probability_2",
        "class_3",
        "probability_3",
        "low_confidence",
        "unknown",
        "ood_score",
        "error",
    ]
    assert [r["file"] for r in got] == [r["file"] for r in want]
    assert got[5]["file"] == "imgs/class_1/broken.jpg" and "'imgs/class_1/broken.jpg'" in got[5]["error"]
    assert "'imgs/class_1/back\\\\slash.jpg'" in got[4]["error"]  # named as given, not by its absolute path
    for g, w in zip(got, want, strict=True):
        assert {k: v for k, v in g.items() if "probability" not in k and k != "ood_score"} == {
            k: v for k, v in w.items() if "probability" not in k and k != "ood_score"
        }
        assert (g["ood_score"] is None) == (w["ood_score"] is None)
        for i in (1, 2, 3):
            assert (g[f"probability_{i}"] is None) == (w[f"probability_{i}"] is None)
            assert g[f"probability_{i}"] == pytest.approx(w[f"probability_{i}"], abs=1e-5)
    assert [r["error"] is not None for r in got].count(True) == 4


def test_bad_engine_and_ray_flags_without_ray_are_clear_errors(
    tiny_run: Path, inputs: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["predict", str(tiny_run), *inputs, "--engine", "spark"]) == 2
    assert "engine must be one of local, ray. Received: engine='spark'" in capsys.readouterr().err
    assert main(["predict", str(tiny_run), *inputs, "--workers", "2"]) == 2
    assert "need engine='ray'" in capsys.readouterr().err
    assert main(["predict", str(tiny_run), *inputs, "--format", "parquet"]) == 2
    assert "format='parquet' needs --output" in capsys.readouterr().err
    # A bad option fails in the driver with floranet's message, before Ray starts.
    assert main(["predict", str(tiny_run), *inputs, "--engine", "ray", "--low-confidence", "2"]) == 2
    assert "low_confidence must be in [0, 1]. Received: low_confidence=2.0" in capsys.readouterr().err
    assert not ray.is_initialized()


def test_an_address_nothing_answers_is_refused_at_once(tiny_run: Path, inputs: list[str]) -> None:
    """Ray retried an unreachable cluster for minutes, printing its own warnings, before its error (a mistyped
    --ray-address looked like a hang)."""
    import socket
    import time

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        start = time.monotonic()
        with pytest.raises(ConfigError, match=f"Cannot connect to a Ray cluster at {address}: nothing answers"):
            predict_ray.predict_with_ray(tiny_run, inputs, address=address)
        assert time.monotonic() - start < 30
    assert not ray.is_initialized()


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("nohost", "address must be host:port"),
        ("host:abc", "address must be host:port"),
        ("127.0.0.2", "address must be host:port"),
        ("127.0.0.1:99999", "address must be host:port"),
        ("ray://127.0.0.2", "has no port: Ray would connect to port 443 .* e.g. ray://127.0.0.2:10001"),
        # The dashboard's URL: Ray raised its 3-line ValueError; other schemes, "Module: http does not exist".
        ("http://127.0.0.1:8265", r"is a URL \(http://\).* e.g. 127.0.0.1:6379 .* e.g. ray://127.0.0.1:10001\. "),
        ("https://head.example/", r"is a URL \(https://\).* e.g. head.example:6379 .* ray://head.example:10001"),
        ("grpc://[::1]:6379", r"is a URL \(grpc://\).* e.g. \[::1\]:6379 .* ray://\[::1\]:10001"),
    ],
)
def test_an_address_of_no_form_ray_takes_is_named(address: str, why: str) -> None:
    """Ray raised a ValueError traceback for these ('Invalid address format'), and took 33 s to fail on a ray://
    address without a port (it connects to 443)."""
    with pytest.raises(ConfigError, match=f"{why}.*Received: address='{re.escape(address)}'"):
        predict_ray._check_reachable(address)


def test_a_value_error_of_rays_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    class _Ray:
        @staticmethod
        def init(**kwargs: object) -> None:
            raise ValueError("Invalid address format: x")

    monkeypatch.setattr(predict_ray, "_check_reachable", lambda address: None)
    with pytest.raises(ConfigError, match="Cannot connect to a Ray cluster at x: Invalid address format: x"):
        predict_ray._init_ray(_Ray, "x", None, 1)


def test_a_multi_line_error_of_rays_reads_as_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray's line breaks showed as literal \\x0a in the CLI's (printable) message, followed by a doubled full stop."""

    class _Ray:
        @staticmethod
        def init(**kwargs: object) -> None:
            raise ValueError(
                "Invalid Ray address: 'x'. To fix this, either:\n  1. Unset RAY_ADDRESS, or\n  2. Set RAY_ADDRESS to "
                "the GCS address instead (e.g. <head_node_ip>:6379).\nSee the docs\n"
            )

    monkeypatch.setattr(predict_ray, "_check_reachable", lambda address: None)
    with pytest.raises(ConfigError) as caught:
        predict_ray._init_ray(_Ray, "x", None, 1)
    said = str(caught.value)
    assert "\n" not in said
    assert "either: 1. Unset RAY_ADDRESS, or 2. Set RAY_ADDRESS" in said
    assert "(e.g. <head_node_ip>:6379). See the docs. Is `ray start` running there" in said


def test_the_dashboards_url_is_refused_before_ray_starts(
    tiny_run: Path, inputs: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    assert main(["predict", str(tiny_run), inputs[1], "--engine", "ray"]) == 2
    err = capsys.readouterr().err
    assert "is a URL (http://), not a Ray cluster's address: give its GCS address, e.g. 127.0.0.1:6379" in err
    assert "\\x0a" not in err and "Invalid Ray address" not in err  # floranet's own check, not Ray's ValueError
    assert not ray.is_initialized()


def test_more_workers_than_this_machine_has_cores_are_refused(tiny_run: Path, inputs: list[str]) -> None:
    """A local instance was started with workers x cpus_per_worker CPUs, more than the machine has: the actors
    shared its cores, where the README promises they never oversubscribe them."""
    from floranet.utils.system import usable_cpus

    too_many = usable_cpus() + 1
    with pytest.raises(ConfigError, match=f"needs {too_many} CPUs but the Ray cluster has {too_many - 1}"):
        predict_ray.predict_with_ray(tiny_run, inputs, num_workers=too_many, batch_size=1)
    assert not ray.is_initialized()


def test_the_ray_instance_floranet_starts_reports_no_usage_stats(monkeypatch) -> None:
    """ray.init of a new local instance enables Ray's usage reporting (to usage-stats.ray.io) by default; the
    instance floranet starts for predict --engine ray has it off, unless the user turned it on."""
    import os

    seen: list[str | None] = []

    class FakeRay:
        def init(self, **kwargs) -> None:
            seen.append(os.environ.get("RAY_USAGE_STATS_ENABLED"))

    monkeypatch.delenv("RAY_USAGE_STATS_ENABLED", raising=False)
    predict_ray._init_ray(FakeRay(), None, None, 1)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "1")
    predict_ray._init_ray(FakeRay(), None, None, 1)
    assert seen == ["0", "1"]


def test_a_local_instance_gets_the_cpus_this_process_may_use(monkeypatch, tmp_path) -> None:
    """A local instance took os.cpu_count(): under `taskset -c 0` on 2 cores it started 2 actors (each loading the
    model, ~800 MB) on one core; a container's CPU quota was ignored too."""
    import os

    from floranet.utils import system

    seen: list[object] = []

    class FakeRay:
        def init(self, **kwargs) -> None:
            seen.append(kwargs["num_cpus"])

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setattr(system, "cgroup_cpu_quota", lambda: None)
    predict_ray._init_ray(FakeRay(), None, None, 1)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(system, "cgroup_cpu_quota", lambda: 3)  # docker --cpus 3
    predict_ray._init_ray(FakeRay(), None, None, 1)
    assert seen == [1, 3]


@pytest.mark.parametrize(
    ("cpu_max", "want"), [("max 100000\n", None), ("200000 100000\n", 2), ("150000 100000", 1), ("5000 100000", 1)]
)
def test_the_cgroup_v2_cpu_quota_is_read(tmp_path, cpu_max: str, want: int | None) -> None:
    from floranet.utils import system

    (tmp_path / "cpu.max").write_text(cpu_max)  # the root of the cgroup tree: above any cgroup of this process
    assert system.cgroup_cpu_quota(tmp_path) == want
    (tmp_path / "cpu.max").unlink()
    assert system.cgroup_cpu_quota(tmp_path) is None  # no cgroup v2 here


@pytest.mark.parametrize(("quota", "want"), [("-1\n", None), ("200000\n", 2), ("150000", 1), ("5000", 1)])
@pytest.mark.parametrize("mount", ["cpu,cpuacct", "cpu"])
def test_the_cgroup_v1_cpu_quota_is_read(tmp_path, monkeypatch, mount: str, quota: str, want: int | None) -> None:
    """Docker on a cgroup v1 host (`--cpus 2`) writes cpu.cfs_quota_us, which was not read: the run said "2 cores"
    of a 64-core host and sized its threads for 64."""
    from floranet.utils import system

    real_read = Path.read_text
    own = "12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n" if mount == "cpu,cpuacct" else "3:cpuacct,cpu:/x\n"
    monkeypatch.setattr(Path, "read_text", lambda p, *a, **k: own if str(p) == "/proc/self/cgroup" else real_read(p))
    folder = tmp_path / mount / ("docker/abc" if mount == "cpu,cpuacct" else "")
    folder.mkdir(parents=True, exist_ok=True)
    (tmp_path / mount / "cpu.cfs_quota_us").write_text("-1\n")  # the mount's root: the host's, no quota
    (tmp_path / mount / "cpu.cfs_period_us").write_text("100000\n")
    (folder / "cpu.cfs_quota_us").write_text(quota)
    (folder / "cpu.cfs_period_us").write_text("100000\n")
    assert system.cgroup_cpu_quota(tmp_path) == want
    (folder / "cpu.cfs_period_us").write_text("0")  # damaged: not a quota
    assert system.cgroup_cpu_quota(tmp_path) is None


def test_an_address_where_a_web_server_answers_is_refused_at_once(tiny_run: Path, inputs: list[str]) -> None:
    """RAY_ADDRESS at a port that accepts connections but is not Ray's GCS (the dashboard's 8265, any web server):
    ray.init retried for minutes, printing Ray's GCS warnings (killed at 329 s and 534 s)."""
    import time

    from httpserver import serve

    with serve({}) as served:
        port = served.url.rsplit(":", 1)[1].split("/")[0]
        for address, hint in ((f"127.0.0.1:{port}", "GCS port"), (f"ray://127.0.0.1:{port}", "client server's port")):
            start = time.monotonic()
            why = f"but not as Ray does .*answered b'.*Is this the {hint} .*not the dashboard's"
            with pytest.raises(ConfigError, match=why):
                predict_ray.predict_with_ray(tiny_run, inputs, address=address)
            assert time.monotonic() - start < 30
    assert not ray.is_initialized()


def test_an_address_where_nothing_speaks_grpc_is_refused_within_the_timeout() -> None:
    import socket
    import threading
    import time

    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (the backlog), never answers
        start = time.monotonic()
        with pytest.raises(ConfigError, match="but not as Ray does .*said nothing in 0.5 s.*Is this the GCS port"):
            predict_ray._check_reachable(f"127.0.0.1:{silent.getsockname()[1]}", timeout=0.5)
        assert time.monotonic() - start < 5

    def answer_as_grpc(server: socket.socket) -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(100)
            conn.sendall(b"\x00\x00\x18\x04\x00\x00\x00\x00\x00")  # the SETTINGS frame Ray's GCS answers with

    with socket.create_server(("127.0.0.1", 0)) as grpc_like:
        threading.Thread(target=answer_as_grpc, args=(grpc_like,), daemon=True).start()
        predict_ray._check_reachable(f"127.0.0.1:{grpc_like.getsockname()[1]}", timeout=5)  # no error


def test_ray_init_of_a_cluster_is_tried_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray tried a cluster ID 20 times, ~40 s each, where something accepted connections but no GCS answered."""
    import os

    seen: list[str | None] = []
    tries = "RAY_gcs_server_port_wait_time_s"

    class _Ray:
        @staticmethod
        def init(**kwargs: object) -> None:
            seen.append(os.environ.get(tries))
            raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.5:8265")

    monkeypatch.setattr(predict_ray, "_check_reachable", lambda address: None)
    monkeypatch.delenv(tries, raising=False)
    with pytest.raises(ConfigError, match="running there, is this its GCS port .*dashboard's \\(8265\\)"):
        predict_ray._init_ray(_Ray, "10.0.0.5:8265", None, 1)
    assert tries not in os.environ  # put back as it was
    monkeypatch.setenv(tries, "30")  # the user's own wins
    with pytest.raises(ConfigError):
        predict_ray._init_ray(_Ray, "10.0.0.5:8265", None, 1)
    assert seen == ["1", "30"]


def test_an_actor_on_the_compiled_model_does_not_import_tensorflow(tiny_run: Path, inputs: list[str]) -> None:
    """Every actor imported TensorFlow only to set its thread counts, even where the run's compiled model runs on
    OpenVINO without it: ~550 MB and ~5 s more per actor."""
    import json
    import subprocess
    import sys

    image = str(sorted(Path(inputs[0]).glob("class_0/*.jpg"))[0])
    code = (
        "import sys, json\nimport numpy as np\nfrom floranet.config import InferenceConfig\n"
        "from floranet.inference import load\nfrom floranet.inference.ray import _Worker\n"
        f"driver = load({str(tiny_run)!r})\n"
        f"w = _Worker({str(tiny_run)!r}, 1, InferenceConfig(threads=1), tensorflow=driver.compiled is None)\n"
        f"out = w.predict({{'start': 0, 'paths': [{image!r}]}})\n"
        "print(json.dumps({'tf': 'tensorflow' in sys.modules, 'ran_on': w.ran_on, 'class': out['class_1'][0]}))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["tf"] is False and out["ran_on"].startswith("openvino") and out["class"]
