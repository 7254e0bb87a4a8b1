"""Opening a run directory: a new run's first files, or the state of the run to resume, and the settings a resume
must keep (:func:`settings_changed`, which ``floranet compare`` also reads)."""

from __future__ import annotations

from typing import Any

from floranet.config import PRESETS, TrainConfig
from floranet.config.train import absolute_paths
from floranet.errors import ConfigError, ModelError
from floranet.models import weights
from floranet.rundir import RunDir
from floranet.training.checkpoint import RunState, recorded_weights


def open_run_dir(
    run: RunDir, config: TrainConfig, resume: bool, distribution: dict[str, Any] | None = None
) -> RunState:
    """A new run directory (config.yaml written), or the state of the run to resume.

    Args:
        run: The run directory.
        config: Its settings.
        resume: Continue the run there.
        distribution: How this process trains (``Distribution.identity()``), recorded for a new run and compared
            with the recorded one on a resume.

    Raises:
        ConfigError: Nothing to resume, a resume with other settings or another distribution, or a new run into a
            folder holding one.
        ModelError: The state of the run to resume is damaged.
    """
    if resume:
        if not run.exists(RunDir.CONFIG):
            raise ConfigError(f"Nothing to resume: {run.path} has no {RunDir.CONFIG}. Received: resume=True")
        check_resume_settings(run, config)
        state = RunState.load(run)
        state.check_epochs(run, {"stage1": config.epochs, "stage2": config.fine_tune_epochs})
        check_same_distribution(run, state, distribution)
        state.distribute = state.distribute or distribution  # a run from before it was recorded: from now on
        return state
    if run.exists(RunDir.STATE) and run.exists(RunDir.CONFIG):
        raise ConfigError(
            f"{run.path} already holds a run. Use --resume to continue it, or choose another "
            f"--out. Received: out={str(run.path)!r}"
        )
    run.check_new_output()  # a fresh state.json alone is a start killed before its config.yaml: begun again
    run.path.mkdir(parents=True, exist_ok=True)
    # What a resume must find there: the same weights file, and the same distribution.
    state = RunState(weights_sha256=weights.file_sha256(config.weights), distribute=distribution)
    # Before config.yaml: with it, what makes the folder a run (RunDir.is_run) from its first second, so one killed
    # at any point after is a run that --resume continues, not "a folder of yours" (config.yaml first left a gap).
    state.save(run)
    run.write_config(config)
    return state


def check_resume_settings(run: RunDir, config: TrainConfig) -> None:
    """Refuses to resume with other settings than the run's, each named with its saved and given value.

    Args:
        run: The run to resume.
        config: The settings given for it.

    Raises:
        ConfigError: Some differ.
    """
    changed = settings_changed(run, config)
    other_file = _weights_file_changed(run, config) if "weights" not in changed else None
    if changed or other_file:
        saved, given = _saved_settings(run), config.to_dict()
        shown = [f"{k} (saved {saved.get(k)!r}, given {given.get(k)!r})" for k in changed]
        shown += [other_file] if other_file else []
        raise ConfigError(
            f"--resume needs the settings of the run in {run.path}; these differ: {'; '.join(shown)}. Give the "
            f"settings the run was started with (its {RunDir.CONFIG}, e.g. --config {run / RunDir.CONFIG}), or "
            "start a new run with another --out."
        )


def check_same_distribution(run: RunDir, state: RunState, distribution: dict[str, Any] | None) -> None:
    """Refuses to resume a run on another distribution than it trained with (``distribute: auto`` decides again in
    each process: a multi-worker run resumed without its cluster went on alone, at the global batch of one replica
    with the learning rates scaled for two, and recorded the second strategy only).

    Raises:
        ConfigError: Naming both.
    """
    saved = state.distribute
    if saved is None or distribution is None or saved == distribution:
        return
    raise ConfigError(
        f"--resume needs the run in {run.path} to train as it began: it trained with {_how(saved)}, and this "
        f"process would train with {_how(distribution)}. The global batch and the learning rates depend on it: "
        "resume it on the same cluster (every worker with the same --workers or TF_CONFIG) or devices, or start a new "
        "run with another --out."
    )


def _how(distribution: dict[str, Any]) -> str:
    replicas, workers = distribution["replicas"], distribution["workers"]
    return (
        f"{distribution['strategy']} ({replicas} replica{'s' if replicas != 1 else ''} on {workers} "
        f"worker{'s' if workers != 1 else ''})"
    )


def _weights_file_changed(run: RunDir, config: TrainConfig) -> str | None:
    """How the ``--weights`` file differs from the one the run began with (same path, other content), or None
    (the same, or not known: no file, a run from before its sha256 was recorded, a damaged ``state.json``, a file
    not readable now, which the weights check says next)."""
    try:
        saved = recorded_weights(run.read_json(RunDir.STATE, {}))
    except ModelError:  # said by RunState.load, the resume's next step
        return None
    given = weights.file_sha256(config.weights)
    if saved is None or given is None or saved == given:
        return None
    return f"the content of the weights file {config.weights} (saved sha256 {saved[:16]}..., given {given[:16]}...)"


def settings_changed(run: RunDir, config: TrainConfig) -> list[str]:
    """The settings of ``config`` that differ from the run's ``config.yaml`` (what a resume must not change).

    Args:
        run: The run whose ``config.yaml`` is compared.
        config: The settings given.
    """
    saved = _saved_settings(run)
    return sorted(k for k, v in config.to_dict().items() if k not in _PLACE and saved.get(k) != v)


_PLACE = ("out", "workers", "worker_index")  # where the run is and who trains it, not what it trains


def _saved_settings(run: RunDir) -> dict[str, Any]:
    """The run's ``config.yaml`` as :meth:`TrainConfig.to_dict` gives a config's (``image_size: 32`` as [32, 32],
    ``weights: none`` as None); a setting it lacks (newer than the run) is its preset's value, what it used."""
    saved = absolute_paths(run.saved_settings())  # a run from before they were recorded so: relative to here
    values = {k: v for k, v in saved.items() if k not in _PLACE}
    try:
        return TrainConfig(**values).to_dict()
    except (ConfigError, TypeError, ValueError):  # a value this floranet refuses: compared as saved
        preset = str(saved.get("preset"))
        return {**TrainConfig(preset=preset if preset in PRESETS else TrainConfig.preset).to_dict(), **saved}
