"""Data-parallel training with ``tf.distribute``: one machine (MirroredStrategy) or several (MultiWorkerMirrored).

Settings (``TrainConfig``):

* ``distribute``: ``none`` (default strategy), ``mirrored`` (all visible GPUs, else all CPU devices of this
  machine), ``multi-worker`` (MultiWorkerMirroredStrategy; the cluster comes from ``TF_CONFIG``, or from
  ``workers`` + ``worker_index``, which set ``TF_CONFIG``), ``auto`` (multi-worker when ``TF_CONFIG`` names more
  than one worker, mirrored when there is more than one GPU, else none).
* ``batch_size`` is **per replica**: the global batch is ``batch_size x replicas``, and both learning rates are
  scaled linearly by the number of replicas (printed, and recorded in ``metrics.json`` under ``distribute``).

Data: every worker reads the same file list / feature arrays; ``tf.data`` auto-sharding with the ``DATA`` policy
gives each worker its part of every global batch.

Writes: only the chief (worker 0) writes the run directory. Other workers run in a scratch run directory beside
their backups (``OUT/backup/worker-<i>/run``), begun afresh by each start and removed at the end. For fault
tolerance every worker keeps a ``keras.callbacks.BackupAndRestore`` backup of each stage: the chief in
``RUN_DIR/backup/<stage>``, worker *i* in ``OUT/backup/worker-<i>/<stage>`` (its own ``--out``); they are removed
when the run completes. If a worker dies, restart **all** workers with the same command: every worker restores its
last backed-up epoch, and the chief continues its run directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from floranet.config import DISTRIBUTE_CHOICES, TrainConfig
from floranet.config.choices import cluster_hosts_problem
from floranet.errors import ConfigError
from floranet.rundir import RunDir
from floranet.training.checkpoint import RunState


@dataclass
class Distribution:
    """A strategy plus what the training loop needs to know about it."""

    strategy: Any
    is_chief: bool
    num_replicas: int
    kind: str = "none"  # none | mirrored | multi-worker
    num_workers: int = 1
    task_index: int = 0
    _tmp: Path | None = field(default=None, repr=False)

    @property
    def distributed(self) -> bool:
        return self.kind != "none"

    @property
    def multi_worker(self) -> bool:
        return self.kind == "multi-worker"

    def scope(self) -> Any:
        """The strategy's scope (nothing to enter without a strategy)."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def identity(self) -> dict[str, Any]:
        """What a resume must train with again (recorded in ``state.json``)."""
        return {"strategy": self.kind, "replicas": self.num_replicas, "workers": self.num_workers}

    def global_batch(self, batch_size: int) -> int:
        return batch_size * self.num_replicas

    def scale_lr(self, lr: float) -> float:
        return lr * self.num_replicas

    def describe(self, batch_size: int) -> dict[str, Any]:
        return {
            "strategy": self.kind,
            "replicas": self.num_replicas,
            "workers": self.num_workers,
            "per_replica_batch_size": batch_size,
            "global_batch_size": self.global_batch(batch_size),
            "learning_rate_scale": self.num_replicas,
        }

    # -- where to write -----------------------------------------------------------------------------------------
    def work_dir(self, out: Path) -> Path:
        """The run directory for the chief; for another worker a scratch run beside its backups, begun afresh by
        each start (a temporary folder of each start outlived a worker stopped with kill -9, as the README says to,
        holding its feature cache) and removed with them at the end."""
        if self.is_chief:
            return out
        if self._tmp is None:
            self._tmp = out / RunDir.BACKUP / f"worker-{self.task_index}" / "run"
            shutil.rmtree(self._tmp, ignore_errors=True)  # an earlier start's: its progress is in the backups
        return self._tmp

    def backup_dir(self, out: Path, stage: str) -> Path:
        base = out / RunDir.BACKUP
        return base / stage if self.is_chief else base / f"worker-{self.task_index}" / stage

    def backup(self, out: Path, stage: str) -> Any:
        """A BackupAndRestore callback (kept after fit, so a finished stage restores instantly on restart)."""
        import keras

        return keras.callbacks.BackupAndRestore(backup_dir=str(self.backup_dir(out, stage)), delete_checkpoint=False)

    def backup_epoch(self, out: Path, stage: str) -> int:
        meta = self.backup_dir(out, stage) / "training_metadata.json"
        try:
            return int(json.loads(meta.read_text(encoding="utf-8"))["epoch"])
        except (FileNotFoundError, ValueError, KeyError):
            return 0

    def finish(self, out: Path, stages: tuple[str, ...] = ("stage1", "stage2")) -> None:
        """Removes this worker's backups and scratch run (the run completed)."""
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        for stage in stages:
            shutil.rmtree(self.backup_dir(out, stage), ignore_errors=True)
        backups = out / RunDir.BACKUP
        for d in ((backups / f"worker-{self.task_index}") if not self.is_chief else None, backups):
            if d is not None:
                with contextlib.suppress(OSError):  # not empty (another worker's backup) or absent
                    d.rmdir()
        if not self.is_chief:
            with contextlib.suppress(OSError):
                out.rmdir()  # a non-chief --out that only ever held our backups

    # -- data ---------------------------------------------------------------------------------------------------
    @staticmethod
    def shard_options() -> Any:
        import tensorflow as tf

        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return options

    def prepare_dataset(self, ds: Any) -> Any:
        return ds.with_options(self.shard_options())

    def arrays_dataset(self, x: Any, y: Any, batch_size: int, *, shuffle: bool, seed: int) -> Any:
        """In-memory (features, labels) as a tf.data stream of global batches, sharded by DATA."""
        import tensorflow as tf

        ds = tf.data.Dataset.from_tensor_slices((x, y))
        if shuffle:
            ds = ds.shuffle(max(1, len(x)), seed=seed, reshuffle_each_iteration=True)
        return ds.batch(self.global_batch(batch_size)).with_options(self.shard_options())


def _tf_config() -> dict[str, Any]:
    raw = os.environ.get("TF_CONFIG", "")
    if not raw:
        return {}
    try:
        tf_config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ConfigError(f"TF_CONFIG is not valid JSON: {e}. Received: TF_CONFIG={raw!r}") from None
    _check_tf_config(tf_config, raw)
    return dict(tf_config)


def _check_tf_config(tf_config: Any, raw: str) -> None:
    """Refuses a TF_CONFIG whose shape TensorFlow would reject with a traceback: an object with a ``cluster`` of
    host lists (``worker``, and ``chief`` if any) and a ``task`` whose type is in it and index in range.

    Raises:
        ConfigError: Naming what is wrong.
    """
    cluster = tf_config.get("cluster") if isinstance(tf_config, dict) else None
    task = tf_config.get("task") if isinstance(tf_config, dict) else None
    why = ""
    if not isinstance(cluster, dict) or not cluster:
        why = "it needs a 'cluster' object of host lists"
    elif not all(isinstance(v, list) and all(isinstance(h, str) for h in v) for v in cluster.values()):
        why = "each job of 'cluster' must be a list of 'host:port' strings"
    elif problem := cluster_hosts_problem([h for hosts in cluster.values() for h in hosts]):
        why = f"its hosts must be distinct host:port pairs, ports in [1, 65535]: {problem}"
    elif extra := sorted(set(cluster) - set(JOBS)):
        why = (
            "MultiWorkerMirroredStrategy trains with 'chief' and 'worker' jobs only, not "
            f"{', '.join(map(repr, extra))} (with a 'ps' job the workers wait for ever; an 'evaluator' task trains "
            "alone and writes nothing)"
        )
    elif len(cluster.get("chief", [])) > 1:
        why = "it may have one 'chief' at most"
    elif not isinstance(task, dict) or task.get("type") not in cluster:
        why = f"its 'task' must name a job of its cluster ({', '.join(cluster)}) as 'type'"
    elif not (isinstance(task.get("index"), int) and 0 <= task["index"] < len(cluster[task["type"]])):
        why = f"its task 'index' must be an int in [0, {len(cluster[task['type']])})"
    if why:
        raise ConfigError(f"TF_CONFIG is not a cluster TensorFlow can join: {why}. Received: TF_CONFIG={raw!r}")


JOBS = ("chief", "worker")  # the jobs of a MultiWorkerMirroredStrategy cluster
RESOLVE_SECONDS = 10.0  # how long this worker's own host name may take to resolve


def _cluster_size(tf_config: dict[str, Any]) -> int:
    cluster = tf_config.get("cluster", {})
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def set_tf_config(workers: str, worker_index: int) -> dict[str, Any]:
    """Writes ``TF_CONFIG`` for worker ``worker_index`` of the comma-separated ``host:port`` list."""
    hosts = [w.strip() for w in workers.split(",") if w.strip()]
    tf_config = {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": int(worker_index)}}
    os.environ["TF_CONFIG"] = json.dumps(tf_config)
    return tf_config


def resolve_kind(config: TrainConfig) -> str:
    kind = config.distribute
    if kind != "auto":
        return kind
    if config.workers or _cluster_size(_tf_config()) > 1:
        return "multi-worker"
    import tensorflow as tf

    return "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "none"


def setup(config: TrainConfig) -> Distribution:
    """Creates the strategy. Call it before any other TensorFlow work (multi-worker needs that)."""
    import tensorflow as tf

    kind = resolve_kind(config)
    if kind == "none":
        return Distribution(tf.distribute.get_strategy(), True, 1, "none")
    if kind == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        cross = None if gpus else tf.distribute.ReductionToOneDevice(reduce_to_device=devices[0])
        strategy = tf.distribute.MirroredStrategy(devices=devices, cross_device_ops=cross)
        return Distribution(strategy, True, strategy.num_replicas_in_sync, "mirrored")
    if kind != "multi-worker":
        raise ConfigError(f"distribute must be one of {', '.join(DISTRIBUTE_CHOICES)}. Received: distribute={kind!r}")
    if config.workers:
        set_tf_config(config.workers, config.worker_index or 0)
    tf_config = _tf_config()
    if not tf_config.get("cluster"):
        raise ConfigError(
            "distribute=multi-worker needs TF_CONFIG, or workers and worker_index "
            "(--workers host:port,host:port --worker-index N)."
        )
    _check_own_host(config, tf_config)
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except tf.errors.OpError as e:  # UnknownError "Could not start gRPC server": its port is taken
        raise ConfigError(_no_server(config, tf_config, e)) from None
    _patch_keras_multi_worker_reduce()
    resolver = strategy.cluster_resolver
    task_type, task_id = resolver.task_type, resolver.task_id or 0
    jobs = resolver.cluster_spec().jobs
    is_chief = task_type in (None, "chief") or (task_type == "worker" and task_id == 0 and "chief" not in jobs)
    index = task_id + (1 if task_type == "worker" and "chief" in jobs else 0)
    return Distribution(
        strategy,
        is_chief,
        strategy.num_replicas_in_sync,
        "multi-worker",
        num_workers=_cluster_size(tf_config),
        task_index=index,
    )


def _check_own_host(config: TrainConfig, tf_config: dict[str, Any]) -> None:
    """Refuses a cluster whose entry for this worker does not resolve: TensorFlow waited for it for ever, ignoring
    SIGTERM. Only this worker's own: a peer's name may resolve only once the peer is up (as in Kubernetes).

    Raises:
        ConfigError: Its host name does not resolve, or not within :data:`RESOLVE_SECONDS`.
    """
    task, address = _this_worker(tf_config)
    answer: list[OSError | None] = []

    def look_up() -> None:
        try:
            socket.getaddrinfo(address.rpartition(":")[0].strip("[]"), None)
            answer.append(None)
        except OSError as e:
            answer.append(e)

    looking = threading.Thread(target=look_up, daemon=True)  # getaddrinfo has no timeout of its own
    looking.start()
    looking.join(RESOLVE_SECONDS)
    if answer and answer[0] is None:
        return
    why = f"does not resolve ({answer[0]})" if answer else f"did not resolve within {RESOLVE_SECONDS:g} s"
    raise ConfigError(
        f"This worker ({task['type']} {task['index']}) is {address} in its cluster, and that host name {why}: "
        "TensorFlow would wait for it for ever. Give this machine's host name or address there. "
        f"Received: {_received(config)}"
    )


def _this_worker(tf_config: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """This worker's task (type and index) and its ``host:port`` in the cluster."""
    task = tf_config["task"]
    return task, tf_config["cluster"][task["type"]][task["index"]]


def _received(config: TrainConfig) -> str:
    """Where the cluster came from, as the user gave it."""
    if config.workers:
        return f"workers={config.workers!r}, worker_index={config.worker_index!r}"
    return f"TF_CONFIG={os.environ.get('TF_CONFIG', '')!r}"


def _no_server(config: TrainConfig, tf_config: dict[str, Any], error: Any) -> str:
    """What to do when this worker's gRPC server does not start."""
    task, address = _this_worker(tf_config)
    received = _received(config)
    return (
        f"This worker ({task['type']} {task['index']}) could not start its gRPC server on {address}: "
        f"{getattr(error, 'message', '') or type(error).__name__}. Is port {address.rpartition(':')[2]} in use on "
        "this machine, perhaps by an earlier worker of this job still running? A worker waiting for its peers ignores "
        f"Ctrl-C and kill: stop it with kill -9, then run again. Received: {received}"
    )


def trim_history(state: RunState, stage: str, epoch: int) -> None:
    """Makes the chief's state agree with a BackupAndRestore backup taken after ``epoch`` epochs of ``stage``."""
    st = state.stage(stage)
    state.history = [h for h in state.history if not (h.get("stage") == stage and h.get("stage_epoch", 0) > epoch)]
    st.epochs_done = epoch
    st.complete = False


def prebuild(dist: Distribution, model: Any, dataset: Any) -> None:
    """Builds ``model``'s metrics, loss and optimizer from one local batch, before a multi-worker ``fit``.

    Keras 3.x on TensorFlow all-reduces the first *distributed* batch to build a model symbolically, which
    MultiWorkerMirroredStrategy cannot do for a tuple of per-replica values ("Attempt to convert a value
    (PerReplica...) to a Tensor"). Building from a local batch first, and skipping that step, avoids it.
    """
    if not dist.multi_worker:
        return
    batch = next(iter(dataset.take(1)))
    with dist.strategy.scope():
        model._symbolic_build(data_batch=batch)

    def _skip(iterator: Any = None, data_batch: Any = None) -> None:  # state is built: nothing left to build
        return None

    model._maybe_symbolic_build = _skip


def _patch_keras_multi_worker_reduce() -> None:
    """Keras 3.x reduces per-step metrics under MultiWorkerMirroredStrategy with ``reduce("MEAN", v, axis=0)``,
    which fails for scalars ("Invalid reduction dimension 0"). Use ``axis=None`` (a mean across workers)."""
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original = tf_trainer.reduce_per_replica
    if getattr(original, "_floranet", False):
        return

    def reduce_per_replica(values: Any, strategy: Any, reduction: str) -> Any:
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy):
            import tensorflow as tf

            return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    reduce_per_replica._floranet = True  # type: ignore[attr-defined]
    tf_trainer.reduce_per_replica = reduce_per_replica


LOCAL = Distribution(None, True, 1)  # no strategy: the single-process path
