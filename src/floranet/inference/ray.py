"""Batch prediction over Ray: the same :class:`floranet.inference.Predictor`, on every core of a cluster.

The driver expands the inputs exactly as local prediction does and sends batches of paths to a pool of
actors; each actor loads the run once and reads the files itself, through floranet's own decode path, so
every row equals the local one. Needs ``pip install 'floranet[ray]'``. floranet starts no cluster of its own:
it connects to one started with ``ray start`` (``address`` or ``RAY_ADDRESS``) or starts a local Ray instance.

Threads: every actor reserves ``cpus_per_worker`` Ray CPUs (default 1) and limits TensorFlow's intra- and
inter-op thread pools and OpenVINO's to that many threads, so Ray never places more actors on a machine than
it has cores and N actors never run more than N × ``cpus_per_worker`` model threads.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from floranet import errors
from floranet.config import ENGINES, InferenceConfig, check_choice, is_port_text
from floranet.data.inputs import expand_inputs
from floranet.errors import ConfigError
from floranet.inference import predictor as predict
from floranet.inference.predictor import Prediction
from floranet.utils.optional import require
from floranet.utils.system import usable_cpus
from floranet.utils.text import quoted

_OBJECT_STORE_BYTES = 128 * 1024**2  # rows are paths and top-k results: a small object store is plenty
RAY_CLIENT_PORT = 10001  # the port of Ray's client server (ray://host:port) unless `ray start` is told another


def check_engine(engine: str, *, address: str | None = None, num_workers: int | None = None) -> None:
    """Raises ConfigError for an unknown engine, or Ray options given to the local engine."""
    check_choice("engine", engine, ENGINES)
    if engine == "local" and (address is not None or num_workers is not None):
        given = f"address={address!r}" if address is not None else f"workers={num_workers!r}"
        raise ConfigError(f"Ray address and workers need engine='ray'. Received: engine='local', {given}")


def predict_with_ray(
    run_dir: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    config: InferenceConfig | None = None,
    *,
    address: str | None = None,
    num_workers: int | None = None,
    cpus_per_worker: int = 1,
    say: Callable[[str], None] | None = None,
    **settings: Any,
) -> list[Prediction]:
    """Predicts every image named by ``inputs`` on Ray; the rows equal ``floranet.inference.load(...).predict(inputs)``.

    Args:
        run_dir: A finished run, at the same path on every machine of the cluster.
        inputs: Files, folders and globs, expanded here (on the driver) as local prediction does.
        config: How every actor runs the model (``batch_size`` is also the size of a Ray batch); or give
            its fields as keywords (``top_k=2``, ``runtime="openvino"``).
        address: A Ray cluster (``host:6379``); default ``RAY_ADDRESS``, else a local Ray instance.
        num_workers: Actors, each loading the model once. Default: one per ``cpus_per_worker`` CPUs of the
            cluster, and no more than there are batches.
        cpus_per_worker: Ray CPUs each actor reserves, and its TensorFlow thread count.
        say: Called with one line on where the job ran (the CLI prints it to stderr).

    Raises:
        MissingDependencyError: Ray is not installed.
        ConfigError: Bad ``num_workers``/``cpus_per_worker`` or settings.
        FloranetError: What :func:`floranet.inference.load` raises (here, or in an actor on another machine).
    """
    ray = require("ray", "engine='ray'")
    config = config or InferenceConfig(**settings)
    for name, value in (("num_workers", num_workers), ("cpus_per_worker", cpus_per_worker)):
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be at least 1. Received: {name}={value!r}")
    driver = predict.load(run_dir, config)  # a bad run or option fails here, not in actors
    run = Path(run_dir).absolute()
    files, missing = expand_inputs(inputs)
    rows: list[Prediction] = []
    if files:
        started_here = not ray.is_initialized()
        if started_here:
            _init_ray(ray, address or os.environ.get("RAY_ADDRESS"), num_workers, cpus_per_worker)
        try:
            rows = _run(ray, run, files, config, num_workers, cpus_per_worker, say, driver.compiled is None)
        finally:
            if started_here:
                ray.shutdown()  # stops a local instance; only disconnects from a cluster
    return predict.in_input_order(rows, missing)


def _init_ray(ray: Any, address: str | None, num_workers: int | None, cpus_per_worker: int) -> None:
    quiet = {
        "include_dashboard": False,
        "logging_level": logging.ERROR,
        "log_to_driver": False,
        "runtime_env": {"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2"}},
    }
    if address:
        _check_reachable(address)
        _connect(ray, address, quiet)
        return
    # "local" starts a fresh instance even if `ray start` runs on this machine; with the cores this process may use
    # only (os.cpu_count() counted every core of the machine under `taskset` or a container's CPU quota), so more
    # workers than fit are refused (below) rather than sharing cores.
    cpus = usable_cpus()
    # Ray reports a cluster's usage to usage-stats.ray.io unless told not to; this instance is floranet's own, and
    # floranet sends nothing unasked (RAY_USAGE_STATS_ENABLED=1 set by the user still wins).
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=cpus, object_store_memory=_OBJECT_STORE_BYTES, **quiet)


def _connect(ray: Any, address: str, quiet: dict[str, Any]) -> None:
    """``ray.init(address=...)``, one try: Ray tries a cluster ID 20 times, ~40 s each (its 5 s connect, 5 s pubsub
    and 30 s cluster-ID timeouts), where something accepts connections that never answers as Ray's GCS would; one
    try still waits ~40 s for a GCS that is starting. ``RAY_gcs_server_port_wait_time_s`` set by the user wins.

    Raises:
        ConfigError: No cluster answered, its auth token is not set up here, or Ray cannot use the address.
    """
    tries = "RAY_gcs_server_port_wait_time_s"  # Ray reads it at each init (in Python): its number of tries
    was = os.environ.get(tries)
    os.environ.setdefault(tries, "1")
    try:
        ray.init(address=address, **quiet)
    # No cluster there, its auth token is not set up here, or (ValueError) an address Ray cannot use.
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ConfigError(
            f"Cannot connect to a Ray cluster at {address}: {_one_line(e)}. Is `ray start` running there, is this its "
            f"{_port_hint(address)}, and, if it uses token authentication, is RAY_AUTH_MODE=token set here with its "
            f"~/.ray/auth_token? Received: address={address!r}"
        ) from e
    finally:
        if was is None:
            os.environ.pop(tries, None)


_LIST_ITEM = re.compile(r"(\d+[.)]|[-*]) ")


def _one_line(error: BaseException) -> str:
    """``error``'s text on one line, without its closing full stop: Ray's messages break into lines (its list of
    fixes), which the CLI's printable() shows as a literal ``\\x0a``."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [""]
    text = lines[0]
    for line in lines[1:]:  # "; " after an unpunctuated line, unless the next is an item of a list ("2. Set ...")
        text += (" " if text[-1:] in ".:;," or _LIST_ITEM.match(line) else "; ") + line
    return text.rstrip(".")


def _port_hint(address: str) -> str:
    if address.startswith("ray://"):
        return f"client server's port ({RAY_CLIENT_PORT} by default), not the dashboard's (8265)"
    return "GCS port (6379 by default), not the dashboard's (8265)"


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Refuses at once a ``host:port`` (or ``ray://host:port``) that nothing answers, or where something that is not
    Ray answers (the dashboard's port, a web server): Ray itself retries such an address for minutes, printing its
    own warnings, before failing; and an address of no form Ray takes, where Ray raised a ValueError traceback.

    Raises:
        ConfigError: ``address`` is not ``host:port``, ``ray://host:port``, ``auto`` or ``local``, nothing
            accepts a connection there within ``timeout`` seconds, or what does answers not as gRPC (Ray's GCS
            and client server) does within ``timeout`` seconds.
    """
    if address in ("auto", "local"):
        return
    scheme, sep, target = address.partition("://")
    if sep and scheme != "ray":  # http://: the dashboard's or an API server's; Ray raised a 3-line ValueError
        host = target.split("/")[0].rpartition(":")[0] or target.split("/")[0] or "HOST"
        raise ConfigError(
            f"address {address} is a URL ({scheme}://), not a Ray cluster's address: give its GCS address, e.g. "
            f"{host}:6379 (the --port of `ray start --head`), or its client server's, e.g. "
            f"ray://{host}:{RAY_CLIENT_PORT}. Received: address={address!r}"
        )
    host, colon, port = (target if sep else address).rpartition(":")
    if sep and not colon:  # Ray hands "host" to gRPC, which connects to port 443: never the client server
        raise ConfigError(
            f"address {address} has no port: Ray would connect to port 443 (gRPC's default), not to the cluster's "
            f"client server; give its port, e.g. ray://{target}:{RAY_CLIENT_PORT} (the default of `ray start --head`). "
            f"Received: address={address!r}"
        )
    if not (colon and is_port_text(port)):
        raise ConfigError(
            "address must be host:port (a `ray start --head` cluster, e.g. 10.0.0.5:6379), ray://host:port (its "
            f"client server, port {RAY_CLIENT_PORT} by default), auto or local. Received: address={address!r}"
        )
    try:
        conn = socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout)
    except OSError as e:
        raise ConfigError(
            f"Cannot connect to a Ray cluster at {address}: nothing answers at port {port} there ({e}). Is `ray start "
            f"--head` running on that machine, and is the port open? Received: address={address!r}"
        ) from None
    with conn:
        answer = _http2_answer(conn, timeout)
    if answer[3:4] != b"\x04" and os.environ.get("RAY_USE_TLS", "0").lower() not in ("1", "true"):
        said = f"answered {answer[:12]!r}" if answer else f"said nothing in {timeout:g} s"
        raise ConfigError(
            f"Cannot connect to a Ray cluster at {address}: something accepts connections at port {port} there, but "
            f"not as Ray does (asked over gRPC, it {said}). Is this the {_port_hint(address)}? "
            f"Received: address={address!r}"
        )


# HTTP/2's client preface and an empty SETTINGS frame: gRPC servers (Ray's GCS, its client server) answer with a
# SETTINGS frame of their own (its 4th byte, the frame type, is 4); a web server answers "HTTP/1.1 400 ...".
_HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _http2_answer(conn: socket.socket, timeout: float) -> bytes:
    """The first 9 bytes (a frame header) ``conn`` answers HTTP/2's hello with, fewer where it stops or
    ``timeout`` seconds pass."""
    answer = b""
    end = time.monotonic() + timeout
    try:
        conn.sendall(_HTTP2_HELLO)
        while len(answer) < 9 and (left := end - time.monotonic()) > 0:
            conn.settimeout(left)
            chunk = conn.recv(9 - len(answer))
            if not chunk:
                break
            answer += chunk
    except OSError:  # reset or timed out: what came so far
        pass
    return answer


def _run(
    ray: Any,
    run: Path,
    files: list[Path],
    config: InferenceConfig,
    num_workers: int | None,
    cpus_per_worker: int,
    say: Callable[[str], None] | None,
    tensorflow: bool = True,
) -> list[Prediction]:
    batch_size = config.batch_size
    cluster_cpus = int(ray.cluster_resources().get("CPU", 1))
    batches = math.ceil(len(files) / batch_size)
    # No more actors than batches: another would only load the model.
    workers = min(num_workers or max(1, cluster_cpus // cpus_per_worker), batches)
    if workers * cpus_per_worker > cluster_cpus:  # Ray would wait forever for the missing actors
        raise ConfigError(
            f"workers × cpus_per_worker needs {workers * cpus_per_worker} CPUs but the Ray cluster "
            f"has {cluster_cpus}. Received: workers={workers}, cpus_per_worker={cpus_per_worker}"
        )
    # One item per batch, cut as local prediction cuts its tf.data batches, so each image meets the model in
    # the same company: a batch of one image differs from a bigger batch in the last float digits.
    items = [
        {"start": s, "paths": [str(f.absolute()) for f in files[s : s + batch_size]]}
        for s in range(0, len(files), batch_size)
    ]
    # Ray Core's own actors, not restarted: an actor that dies (out of memory, its machine lost) fails the job with
    # Ray's error instead of being retried forever. Ray Data's map_batches takes max_restarts only through
    # **ray_remote_args, deprecated since Ray 2.60 (gone in 2.64) with no named replacement, and its default
    # (restarts without end) made Ray log, on every run, that a restart may not find the constructor arguments.
    actor = ray.remote(num_cpus=cpus_per_worker, max_restarts=0)(_Worker)
    settings = dataclasses.replace(config, threads=cpus_per_worker)
    actors = [actor.remote(str(run), len(files), settings, tensorflow) for _ in range(workers)]
    try:
        done = ray.util.ActorPool(actors).map_unordered(lambda a, item: a.predict.remote(item), items)
        out = sorted((row for columns in done for row in _rows(columns)), key=lambda r: int(r["index"]))
    except Exception as e:  # an actor could not load the run: Ray keeps only the text of floranet's error
        line = next((ln for ln in reversed(str(e).splitlines()) if ln.startswith("floranet.errors.")), None)
        if line is None:
            raise
        name, _, message = line.partition(": ")
        raise getattr(errors, name.rsplit(".", 1)[1], errors.FloranetError)(f"In a Ray worker: {message}") from e
    finally:
        for a in actors:  # their CPUs go back now, also in a Ray session the caller keeps
            ray.kill(a)
    if say:
        ran_on = ", ".join(sorted({str(r["ran_on"]) for r in out}))
        say(f"Ran on Ray: {workers} worker(s) × {cpus_per_worker} thread(s) of {cluster_cpus} CPUs; {ran_on}.")
    return [_prediction(files[int(r["index"])], r) for r in out]


def _rows(columns: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """A :meth:`_Worker.predict` answer (a list per column) as one dict per row."""
    return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]


def _prediction(file: Path, r: dict[str, Any]) -> Prediction:
    k = sum(1 for c in r if c.startswith("class_"))
    top = tuple((str(r[f"class_{i}"]), float(r[f"probability_{i}"])) for i in range(1, k + 1) if r[f"class_{i}"])
    # Name the file as the user did, as written plainly or quoted (a repr escapes a backslash or an odd byte).
    error = str(r["error"])
    absolute, given = str(file.absolute()), str(file)
    for there, here in ((absolute, given), (quoted(absolute)[1:-1], quoted(given)[1:-1])):
        error = error.replace(there, here)
    score = float(r["ood_score"])
    ood = None if math.isnan(score) else score
    return Prediction(str(file), top, bool(r["low_confidence"]), error or None, bool(r["unknown"]), ood)


class _Worker:
    """A Ray actor: loads the run once, then predicts ``{"start", "paths"}`` items, one row per path."""

    def __init__(self, run_dir: str, total: int, config: InferenceConfig, tensorflow: bool = True) -> None:
        # TensorFlow only where it runs (the driver's predictor had no compiled model to use): importing it only to
        # set its threads cost every actor of an OpenVINO job ~550 MB and ~5 s.
        if tensorflow or "tensorflow" in sys.modules:
            _limit_tensorflow_threads(config.threads)  # before TensorFlow runs anything
        # The model loads once per actor; runtime "auto" and the decode path are chosen per call for the
        # whole job (job_size), as local prediction chooses them for all files, so every row is the same.
        self.predictor = predict.load(run_dir, config)
        if self.predictor.compiled is None and not tensorflow:  # this machine chose model.keras (it has a GPU)
            _limit_tensorflow_threads(config.threads)
        self.total = total
        self.ran_on = ""
        self.k = min(config.top_k, len(self.predictor.class_names))

    def predict(self, item: dict[str, Any]) -> dict[str, list[Any]]:
        """The rows of ``item``'s paths, a list per column; ``index`` numbers them in the whole job."""
        paths = [str(p) for p in item["paths"]]
        # The files as the driver expanded them, one row each in order (a path given twice keeps both rows, and a
        # broken link its decode error, as locally).
        rows = self.predictor.file_rows(paths, top_k=self.k, job_size=self.total)
        if self.predictor.choice is not None:
            self.ran_on = f"{self.predictor.choice.runtime} {self.predictor.choice.precision}"
        start = int(item["start"])
        out: dict[str, list[Any]] = {"index": list(range(start, start + len(paths)))}
        for i in range(1, self.k + 1):
            out[f"class_{i}"] = [r.top_k[i - 1][0] if len(r.top_k) >= i else "" for r in rows]
            out[f"probability_{i}"] = [r.top_k[i - 1][1] if len(r.top_k) >= i else math.nan for r in rows]
        out["low_confidence"] = [r.low_confidence for r in rows]
        out["unknown"] = [r.unknown for r in rows]
        out["ood_score"] = [math.nan if r.ood_score is None else r.ood_score for r in rows]
        out["error"] = [r.error or "" for r in rows]
        out["ran_on"] = [self.ran_on] * len(paths)
        return out


def _limit_tensorflow_threads(threads: int | None) -> None:
    """TensorFlow's intra- and inter-op thread pools of this process: ``threads`` threads each (None: its own)."""
    import tensorflow as tf

    try:  # a reused worker process may have started TensorFlow already
        tf.config.threading.set_intra_op_parallelism_threads(threads or 0)
        tf.config.threading.set_inter_op_parallelism_threads(threads or 0)
    except RuntimeError:
        pass
