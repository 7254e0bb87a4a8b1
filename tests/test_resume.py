"""--resume after an interruption at awkward moments, and after the data changed: the run completes as it began,
or is refused by name; nothing leaves a run that can never be resumed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pytest

from floranet import config
from floranet.errors import ConfigError, DatasetError, MissingDependencyError, ModelError
from floranet.rundir import RunDir
from floranet.training import checkpoint, prefix, stages, trainer
from floranet.utils.files import file_digest
from floranet.workflows import train
from imagesets import TINY_MODEL, make_image_folder

FAST = {**TINY_MODEL, "batch_size": 8}


class Killed(Exception):
    """Stands for a kill -9 at the end of an epoch (its checkpoint and state.json written)."""


def _settings(data: Path, out: Path, **more) -> config.TrainConfig:
    base = {"epochs": 3, "fine_tune_epochs": 3, "augment": "off", "audit": False, **FAST}
    return config.resolve(data_dir=str(data), out=str(out), **{**base, **more})


def _interrupted(monkeypatch, cfg: config.TrainConfig, stage: str, epochs: int) -> RunDir:
    """Trains ``cfg`` until ``stage`` has finished ``epochs`` epochs, then stops as a killed process would."""
    original = checkpoint.EpochCheckpoint.on_epoch_end

    def on_epoch_end(self, epoch, logs=None):
        original(self, epoch, logs)
        if self.stage == stage and epoch + 1 >= epochs:
            raise Killed

    with monkeypatch.context() as m:
        m.setattr(checkpoint.EpochCheckpoint, "on_epoch_end", on_epoch_end)
        with pytest.raises(Killed):
            train(cfg, progress=False, say=lambda _: None)
    return RunDir(cfg.out)


def _resume(cfg: config.TrainConfig) -> dict:
    train(cfg, resume=True, progress=False, say=lambda _: None)
    return json.loads((Path(cfg.out) / RunDir.STATE).read_text())


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "data", classes=3, per_class=8)


def test_a_view_without_its_rows_is_computed_again(data, tmp_path, monkeypatch) -> None:
    """A kill between a view's .npy and its .rows.npy made every later --resume fail (FileNotFoundError)."""
    cfg = _settings(data, tmp_path / "run")
    run = _interrupted(monkeypatch, cfg, "stage2", 1)
    rows = sorted((run / RunDir.FEATURES).glob("prefix-*/train-view-0.rows.npy"))
    assert rows
    rows[0].unlink()
    state = _resume(cfg)
    assert state["complete"] and state["stages"]["stage2"]["path"] == "prefix-cache"


def test_resume_when_images_changed_mid_fine_tuning_uses_new_views(data, tmp_path, monkeypatch) -> None:
    """A view's rows are positions in its subset: with one image gone they pointed past the end (IndexError on
    every later --resume), and an edited image kept its old cached outputs."""
    cfg = _settings(data, tmp_path / "run")
    run = _interrupted(monkeypatch, cfg, "stage2", 1)
    before = {p.name for p in (run / RunDir.FEATURES).glob("prefix-*") if not p.name.startswith(prefix.STAGE1)}
    train_file = next(r.path for r in run.split().rows if r.split == "train")
    (data / train_file).unlink()
    state = _resume(cfg)
    assert state["complete"] and len(state["history"]) == 6
    assert (run / RunDir.SPLIT).read_text().count(train_file) == 1  # the run's record is kept as it was
    assert before  # the views of the old image list were used, then replaced: none is left at the end
    assert not list((run / RunDir.FEATURES).glob("prefix-[!s]*"))


def test_resume_refuses_data_that_lost_a_class_and_keeps_the_run_resumable(data, tmp_path, monkeypatch) -> None:
    """With a class folder gone, --resume trained the 3-class checkpoint on shifted labels, rewrote split.csv and
    class_names.json, then failed on the head's shape, and the run could not be resumed even with the images back."""
    cfg = _settings(data, tmp_path / "run")
    run = _interrupted(monkeypatch, cfg, "stage1", 1)
    split_before = (run / RunDir.SPLIT).read_bytes()
    shutil.move(data / "class_1", tmp_path / "away")
    with pytest.raises(DatasetError, match=r"trained on 3 classes, and 'class_1' has no usable image"):
        _resume(cfg)
    assert (run / RunDir.SPLIT).read_bytes() == split_before and run.class_names() == ["class_0", "class_1", "class_2"]
    shutil.move(tmp_path / "away", data / "class_1")
    assert _resume(cfg)["complete"]


def test_resume_keeps_the_cached_fine_tuning_path_when_space_is_short(data, tmp_path, monkeypatch) -> None:
    """The budget was checked again on resume, counting the cache already on disk: stage 2 switched to the whole
    model and failed loading the top's checkpoint into it."""
    cfg = _settings(data, tmp_path / "run")
    _interrupted(monkeypatch, cfg, "stage2", 1)
    monkeypatch.setattr(prefix, "MAX_CACHE_BYTES", 1000)
    state = _resume(cfg)
    assert state["complete"] and state["stages"]["stage2"]["path"] == "prefix-cache"


def test_a_finished_stage_is_restored_as_it_ended(tmp_path) -> None:
    """Without early stopping a stage ends on its last epoch; a resumed run restored its best one instead."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    run = RunDir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    model.layers[0].set_weights([np.ones((2, 1)), np.ones(1)])
    model.save_weights(tmp_path / "checkpoints" / "best.weights.h5")
    model.layers[0].set_weights([np.full((2, 1), 7.0), np.full(1, 7.0)])
    model.save(tmp_path / "checkpoints" / "last.keras")
    st = checkpoint.StageState(3, "checkpoints/last.keras", 0.1, "checkpoints/best.weights.h5", 0, True)
    for patience, expected in ((0, 7.0), (2, 1.0)):
        ctx = SimpleNamespace(
            config=SimpleNamespace(early_stopping_patience=patience), dist=SimpleNamespace(multi_worker=False), run=run
        )
        model.layers[0].set_weights([np.zeros((2, 1)), np.zeros(1)])
        assert stages._restore_if_complete(model, st, ctx)
        assert float(model.layers[0].get_weights()[1][0]) == expected


def test_best_weights_are_named_by_epoch_so_a_kill_keeps_state_and_file_together(tmp_path, monkeypatch) -> None:
    """One fixed best-weights name was replaced before state.json: a kill between the two left the file of an epoch
    the state did not name as best."""
    run = RunDir(tmp_path)
    state = checkpoint.RunState()
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    callback = checkpoint.EpochCheckpoint(run, "stage1", state, model, 0)
    callback.on_epoch_end(0, {"val_loss": 1.0})
    first = state.stage("stage1").best_weights
    assert first == "checkpoints/stage1-best-epoch001.weights.h5" and (tmp_path / first).exists()
    monkeypatch.setattr(checkpoint.RunState, "save", lambda self, run: (_ for _ in ()).throw(Killed()))
    with pytest.raises(Killed):  # epoch 2 improves; killed before its state is saved
        callback.on_epoch_end(1, {"val_loss": 0.5})
    saved = json.loads((tmp_path / RunDir.STATE).read_text())["stages"]["stage1"]
    assert saved["best_weights"] == first and (tmp_path / first).exists()  # what the state names is still there
    monkeypatch.undo()
    state = checkpoint.RunState.load(run)  # the resumed process: epoch 2 again, then 3
    callback = checkpoint.EpochCheckpoint(run, "stage1", state, model, 0)
    callback.on_epoch_end(1, {"val_loss": 0.7})
    callback.on_epoch_end(2, {"val_loss": 0.2})
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["stage1-best-epoch003.weights.h5", "stage1-epoch003.keras"]  # superseded and stray files gone


def test_mlflow_is_checked_before_training(data, tmp_path, monkeypatch) -> None:
    """Without mlflow installed, train --mlflow trained, evaluated and reported, then exited with status 2."""
    import importlib

    def missing(name: str, what: str):
        raise MissingDependencyError(f"{what} needs {name}", package=name, extra="mlflow")

    monkeypatch.setattr(importlib.import_module("floranet.workflows.tracking"), "require", missing)
    with pytest.raises(MissingDependencyError):
        train(_settings(data, tmp_path / "run"), mlflow="", progress=False, say=lambda _: None)
    assert not (tmp_path / "run").exists()


def test_a_restarted_workers_out_with_its_backups_is_accepted(tmp_path) -> None:
    """A non-chief worker's --out holds only backup/worker-<i>/: the restarted job's worker was refused as "not a
    floranet run", and the chief waited for it forever."""
    out = tmp_path / "worker1"
    (out / "backup" / "worker-1" / "stage1").mkdir(parents=True)
    RunDir(out).check_new_output()
    (out / "backup" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty and not a floranet run"):
        RunDir(out).check_new_output()


def test_resuming_a_complete_multi_worker_run_is_refused(tmp_path) -> None:
    """Its backups are deleted at the end: every stage trained again from scratch, with wrong epoch numbers."""
    RunDir(tmp_path).write_json(RunDir.STATE, {"complete": True})
    chief = SimpleNamespace(multi_worker=True, is_chief=True)
    with pytest.raises(ConfigError, match="Nothing to resume: the multi-worker run .* is complete"):
        trainer._distributed_resume(chief, tmp_path, True, lambda _: None)
    assert trainer._distributed_resume(chief, tmp_path, False, lambda _: None) is False


def test_a_finished_run_is_not_resumed_but_one_killed_after_training_is(data, tmp_path, monkeypatch) -> None:
    """--resume on a finished run evaluated, fitted and audited it again and recorded the reload's near-zero time
    as its training time; a run whose training completed but whose report was cut short needs that last part."""
    import sys

    train_module = sys.modules["floranet.workflows.train"]  # the package's `train` is the function
    cfg = _settings(data, tmp_path / "run", epochs=1, fine_tune_epochs=1)
    train(cfg, progress=False, say=lambda _: None)
    metrics = (Path(cfg.out) / RunDir.METRICS).read_bytes()
    with pytest.raises(ConfigError, match=r"Nothing to resume: the run in .* is finished"):
        train(cfg, resume=True, progress=False, say=lambda _: None)
    assert (Path(cfg.out) / RunDir.METRICS).read_bytes() == metrics
    cut = _settings(data, tmp_path / "cut", epochs=1, fine_tune_epochs=1)
    with monkeypatch.context() as m:
        m.setattr(train_module, "build_report", lambda *a, **k: (_ for _ in ()).throw(Killed()))
        with pytest.raises(Killed):
            train(cut, progress=False, say=lambda _: None)
    assert json.loads((Path(cut.out) / RunDir.STATE).read_text())["complete"]
    train(cut, resume=True, progress=False, say=lambda _: None)
    assert "training" in json.loads((Path(cut.out) / RunDir.METRICS).read_text())["timings_s"]
    assert (Path(cut.out) / RunDir.REPORT).exists()


def test_a_damaged_state_or_a_lost_checkpoint_is_named_not_a_traceback(data, tmp_path, monkeypatch) -> None:
    """state.json was trusted as it stood: [] or a stage of the wrong shape was an AttributeError or TypeError
    traceback, and a checkpoint that state.json names but that was deleted either crashed (FileNotFoundError) or,
    for an unfinished stage, silently trained the remaining epochs from a fresh model."""
    from floranet.errors import ModelError

    cfg = _settings(data, tmp_path / "run", epochs=4, fine_tune_epochs=0)
    run = _interrupted(monkeypatch, cfg, "stage1", 2)
    good = (run / RunDir.STATE).read_text()
    state = json.loads(good)
    for damaged, needle in (
        ("[]", "state.json is damaged"),
        (json.dumps({**state, "stages": {"stage1": {**state["stages"]["stage1"], "bogus": 1}}}), "bogus"),
        (json.dumps({**state, "stages": {"stage1": {**state["stages"]["stage1"], "epochs_done": "2"}}}), "ints"),
        (json.dumps({**state, "complete": "yes"}), "complete must be true or false"),
        (json.dumps({**state, "seconds": -1}), "seconds must be a number of seconds"),
    ):
        (run / RunDir.STATE).write_text(damaged)
        with pytest.raises(ModelError, match=needle):
            _resume(cfg)
    (run / RunDir.STATE).write_text(good)
    (run / state["stages"]["stage1"]["checkpoint"]).unlink()
    with pytest.raises(ModelError, match=r"stage1-epoch002.keras is gone, and state.json names it for stage1"):
        _resume(cfg)


def test_resume_with_other_settings_is_refused_before_any_weights_are_fetched(data, tmp_path, monkeypatch) -> None:
    """`--resume` without the run's flags went for the default backbone's ImageNet weights first (a download, or
    an offline error about them), and its refusal named the settings but not their values."""
    import sys

    train_module = sys.modules["floranet.workflows.train"]
    cfg = _settings(data, tmp_path / "run", epochs=3, fine_tune_epochs=0)
    _interrupted(monkeypatch, cfg, "stage1", 1)

    def no_fetch(*args, **kwargs):
        raise AssertionError("weights were looked for before the settings were compared")

    monkeypatch.setattr(train_module.weights_lib, "ensure_available", no_fetch)
    plain = config.resolve(data_dir=str(data), out=cfg.out)  # the flags left out: resnet50, imagenet
    with pytest.raises(ConfigError, match=r"backbone \(saved 'resnet20', given 'resnet50'\)") as e:
        train(plain, resume=True, progress=False, say=lambda _: None)
    assert f"--config {Path(cfg.out) / RunDir.CONFIG}" in str(e.value)


def test_a_kill_while_the_data_files_are_written_leaves_a_run_that_resumes(data, tmp_path, monkeypatch) -> None:
    """split.csv was written before class_names.json: a kill between them left split.csv, which a resume takes for
    "the data files are written", and every resume then failed with "class_names.json is missing" (seen in CI)."""
    cfg = _settings(data, tmp_path / "run", epochs=1, fine_tune_epochs=0)
    with monkeypatch.context() as m:
        m.setattr(RunDir, "write_class_names", lambda self, names: (_ for _ in ()).throw(Killed()))
        with pytest.raises(Killed):
            train(cfg, progress=False, say=lambda _: None)
    assert not (Path(cfg.out) / RunDir.CLASS_NAMES).exists()
    assert _resume(cfg)["complete"]
    assert (Path(cfg.out) / RunDir.CLASS_NAMES).exists() and (Path(cfg.out) / RunDir.SPLIT).exists()


def test_a_resumed_runs_training_time_counts_the_processes_before_it(data, tmp_path, monkeypatch) -> None:
    """The model card and compare showed only the last process's training time for a resumed run."""
    cfg = _settings(data, tmp_path / "run", epochs=3, fine_tune_epochs=0)
    run = _interrupted(monkeypatch, cfg, "stage1", 2)
    state = json.loads((run / RunDir.STATE).read_text())
    assert state["seconds"] > 0  # the killed process's time up to its last epoch
    (run / RunDir.STATE).write_text(json.dumps({**state, "seconds": 5000.0}))  # as if it had taken that long
    _resume(cfg)
    timings = json.loads((run / RunDir.METRICS).read_text())["timings_s"]
    assert timings["earlier_processes"] == 5000.0
    assert 5000.0 < timings["training"] < 5000.0 + timings["total"]


def test_a_run_resumed_on_another_machine_says_each_ones_share_of_its_training_time(
    data, tmp_path, monkeypatch
) -> None:
    """A resumed run's training time (all its processes) was labelled with the last machine only: "5003 s on
    <this CPU>", 5000 s of which another CPU, maybe of the other kind, had taken."""
    from floranet.evaluation.modelcard import write_model_card

    cfg = _settings(data, tmp_path / "run", epochs=3, fine_tune_epochs=0)
    run = _interrupted(monkeypatch, cfg, "stage1", 2)
    state = json.loads((run / RunDir.STATE).read_text())
    assert state["machines"] == [{**checkpoint.this_machine(), "seconds": state["seconds"]}]
    other = {"cpu": "Imaginary CPU 9000", "cpu model": "family 1, model 2", "cores": "8", "native bf16": "no"}
    (run / RunDir.STATE).write_text(json.dumps({**state, "seconds": 5000.0, "machines": [{**other, "seconds": 5000}]}))
    _resume(cfg)
    metrics = json.loads((run / RunDir.METRICS).read_text())
    first, last = metrics["machines"]
    assert first == {**other, "seconds": 5000} and last["cpu"] == checkpoint.this_machine()["cpu"]
    assert 0 < last["seconds"] < metrics["timings_s"]["total"]
    card = write_model_card(run.path).read_text(encoding="utf-8")
    bf16 = ", native bf16" if last["native bf16"].startswith("yes") else ""
    this = f"{last['cpu']} \\({last['cpu model']}\\), {last['cores']} cores{bf16}"
    expected = "s in all, on 2 machines: 5000 s on Imaginary CPU 9000 \\(family 1, model 2\\), 8 cores; "
    assert expected + f"{last['seconds']:.0f} s on {this}" in card, card
    assert "<td>training time</td><td>" in (run / RunDir.REPORT).read_text(encoding="utf-8")
    # A state.json from before machines were recorded: its seconds were taken on a machine not recorded.
    done = {k: v for k, v in json.loads((run / RunDir.STATE).read_text()).items() if k != "machines"}
    (run / RunDir.STATE).write_text(json.dumps({**done, "seconds": 4000.0}))
    assert checkpoint.RunState.load(run).earlier_machines == [{"seconds": 4000.0}]
    (run / RunDir.STATE).write_text(json.dumps({**done, "machines": [{"cpu": 3, "seconds": 1}]}))
    with pytest.raises(ModelError, match=r"state.json is damaged \(each of machines must have seconds and text"):
        checkpoint.RunState.load(run)


def test_a_resume_after_files_went_missing_keeps_the_class_weights_the_run_began_with(data, tmp_path, monkeypatch):
    """`--class-weights auto` weighed the resumed epochs by the counts of the files left, not those the run began
    with (and the model card shows, from split.csv): one run, two sets of weights."""
    from floranet.training import data as run_data

    seen: list[dict[int, float] | None] = []
    real = run_data.class_weights
    monkeypatch.setattr(run_data, "class_weights", lambda *a: seen.append(real(*a)) or seen[-1])
    cfg = _settings(data, tmp_path / "run", epochs=3, fine_tune_epochs=0, class_weights="auto")
    run = _interrupted(monkeypatch, cfg, "stage1", 1)
    split = run.split()
    gone = [r.path for r in split.rows if r.split == "train" and r.label == split.class_names[0]][:3]
    for path in gone:  # a third of one class's training images, deleted between the two processes
        (data / path).unlink()
    _resume(cfg)
    assert len(seen) == 2 and seen[0] == seen[1] and len(set(seen[0].values())) == 1  # balanced at the start


def test_a_resumed_run_keeps_the_class_order_a_split_file_and_a_relabel_gave_it(tmp_path) -> None:
    """A --split-file's relabelled new class comes last in the run's class order; a resume re-read split.csv with
    its labels sorted, so every output meant another class (validation accuracy 100% → 0%)."""
    from floranet.data.split import make_split
    from floranet.training import data as run_data

    data = make_image_folder(tmp_path / "data", classes=2, per_class=6, names=["kiwi", "mango"])
    items = [(f"{c}/{p.name}", c, "") for c in ("kiwi", "mango") for p in sorted((data / c).iterdir())]
    make_split(items, val_split=0.34, seed=0).to_csv(tmp_path / "given.csv")
    kiwis = "".join(f"{path},apple\n" for path, label, _ in items if label == "kiwi")
    (tmp_path / "relabel.csv").write_text("path,new_label\n" + kiwis)
    lists = {"split_file": str(tmp_path / "given.csv"), "relabel": str(tmp_path / "relabel.csv")}
    cfg = _settings(data, tmp_path / "run", **lists)
    first = run_data.prepare(cfg, RunDir(cfg.out), resume=False, progress=False, say=lambda _: None)
    assert list(first.split.class_names) == ["mango", "apple"]
    again = run_data.prepare(cfg, RunDir(cfg.out), resume=True, progress=False, say=lambda _: None)
    assert list(again.split.class_names) == ["mango", "apple"]
    assert again.split.rows == first.split.rows


def test_a_refused_resume_leaves_no_folder_behind(tmp_path) -> None:
    # `train --resume --out runs/nope` on a folder that does not exist was refused, but the run's lock had made
    # runs/nope (and runs/) on the way, and left them empty.
    data = make_image_folder(tmp_path / "data", classes=2, per_class=4)
    cfg = config.resolve(data_dir=str(data), out=str(tmp_path / "runs" / "nope"), epochs=1, **TINY_MODEL)
    with pytest.raises(ConfigError, match="Nothing to resume"):
        train(cfg, resume=True, progress=False, say=lambda m: None)
    assert not (tmp_path / "runs").exists()


def test_a_damaged_checkpoint_is_named_not_a_traceback(data, tmp_path, monkeypatch) -> None:
    """A checkpoint cut short (a copy, a full disk) ended --resume in Keras's "File not found: filepath=... Please
    ensure the file is an accessible .keras zip file" for a file that exists, or h5py's "truncated file" OSError."""
    from floranet.errors import ModelError

    cfg = _settings(data, tmp_path / "run", epochs=3, fine_tune_epochs=2)
    run = _interrupted(monkeypatch, cfg, "stage2", 1)
    st = json.loads((run / RunDir.STATE).read_text())["stages"]
    for name in (st["stage2"]["checkpoint"], st["stage1"]["best_weights"], st["stage2"]["best_weights"]):
        good = (run / name).read_bytes()
        (run / name).write_bytes(good[:100])
        with pytest.raises(ModelError, match=rf"{name} is damaged .* cannot be resumed from it.* another --out"):
            _resume(cfg)
        (run / name).write_bytes(good)
    assert _resume(cfg)["complete"]


def test_impossible_values_in_state_json_are_refused_by_field(data, tmp_path, monkeypatch) -> None:
    """state.json's values were taken as they came: more epochs done than the stage has ("finished" after 1 of 3
    fine-tuning epochs, the card saying 3), "stages": [] as a fresh run, a checkpoint outside the run
    (../../../etc/passwd) handed to Keras; a field of a newer floranet read as damage."""
    from floranet.errors import ModelError

    cfg = _settings(data, tmp_path / "run", epochs=3, fine_tune_epochs=0)
    run = _interrupted(monkeypatch, cfg, "stage1", 1)
    good = (run / RunDir.STATE).read_text()
    state = json.loads(good)
    stage1 = state["stages"]["stage1"]
    for change, needle in (
        ({"stages": []}, r"state.json is damaged \(stages must be an object"),
        ({"stages": {"stage1": {**stage1, "epochs_done": 5}}}, r"stages.stage1.epochs_done is 5, over the 3 epochs"),
        ({"stages": {"stage1": {**stage1, "epochs_done": -1}}}, r"stage1: epochs_done and wait must be 0 or more"),
        ({"stages": {"stage1": {**stage1, "checkpoint": "../../../etc/passwd"}}}, r"checkpoint must name a file in"),
        ({"stages": {"stage1": {**stage1, "best_weights": "/etc/passwd"}}}, r"best_weights must name a file in"),
        ({"stages": {"stage1": {**stage1, "checkpoint": "checkpoints/../../x"}}}, r"checkpoint must name a file in"),
        ({"format": 99, "stages": {"stage1": {**stage1, "new": 1}}}, r"written by another floranet version"),
    ):
        (run / RunDir.STATE).write_text(json.dumps({**state, **change}))
        with pytest.raises(ModelError, match=needle):
            _resume(cfg)
    (run / RunDir.STATE).write_text(json.dumps({k: v for k, v in state.items() if k != "format"}))  # an older file
    assert _resume(cfg)["complete"]


def test_a_run_resumed_after_training_counts_its_evaluation_once(data, tmp_path, monkeypatch) -> None:
    """state.json's seconds were saved after the final evaluation: a run killed in its report and resumed counted
    the first evaluation in earlier_processes and its own again in training, and its total (this process alone,
    5.93 s) was under its training (11.74 s)."""
    import sys
    import time

    from floranet.training import outputs

    train_module = sys.modules["floranet.workflows.train"]
    cfg = _settings(data, tmp_path / "run", epochs=1, fine_tune_epochs=1)
    compile_ir = outputs.compile_model_ir

    def slow(*args, **kwargs):  # an evaluation of 2 s or more
        time.sleep(2.0)
        return compile_ir(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(outputs, "compile_model_ir", slow)
        m.setattr(train_module, "build_report", lambda *a, **k: (_ for _ in ()).throw(Killed()))
        with pytest.raises(Killed):
            train(cfg, progress=False, say=lambda _: None)
    first = json.loads((Path(cfg.out) / RunDir.METRICS).read_text())["timings_s"]  # fit's, evaluation written
    saved = json.loads((Path(cfg.out) / RunDir.STATE).read_text())["seconds"]
    assert first["evaluate"] >= 2.0 and saved <= first["total"] - first["evaluate"] + 0.1
    _resume(cfg)
    timings = json.loads((Path(cfg.out) / RunDir.METRICS).read_text())["timings_s"]
    assert timings["earlier_processes"] == saved
    assert timings["earlier_processes"] < timings["training"] <= timings["total"]


def test_the_card_counts_the_images_a_resumed_run_kept(data, tmp_path, monkeypatch) -> None:
    """A resume leaves out files gone since, and keeps split.csv as it was: the card's Data table (and its "Few
    validation images" line) still showed split.csv's counts (24/6 where metrics.json said 22/5)."""
    cfg = _settings(data, tmp_path / "run", epochs=2, fine_tune_epochs=1)
    run = _interrupted(monkeypatch, cfg, "stage1", 1)
    rows = [r for r in run.split().rows if r.label == "class_0"]
    written = {s: sum(r.split == s for r in rows) for s in ("train", "validation")}
    gone = [r for r in rows if r.split == "train"][:2] + [r for r in rows if r.split == "validation"][:1]
    for r in gone:
        (data / r.path).unlink()
    _resume(cfg)
    metrics = json.loads((run / RunDir.METRICS).read_text())
    assert metrics["split"]["classes"]["class_0"] == {"train": written["train"] - 2, "validation": 1}
    card = (run / "README.md").read_text(encoding="utf-8")
    assert f"| class\\_0 | {written['train'] - 2} | 1 |" in card  # _ escaped in Markdown
    assert "3 files listed in `split.csv` were missing or unusable when the run was resumed" in card


def test_the_readmes_resume_with_the_runs_config_works(data, tmp_path, monkeypatch) -> None:
    """README showed `--resume` alone, which a run started with flags is refused ("these differ: epochs (saved 3,
    given 5) ..."); it did not say to give the settings again. Its example, run as written, resumes such a run."""
    import shlex

    from floranet.cli import main

    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    line = next(x for x in readme.splitlines() if "--config runs/flowers/config.yaml --resume" in x)
    cfg = _settings(data, tmp_path / "run", epochs=2, fine_tune_epochs=1)
    run = _interrupted(monkeypatch, cfg, "stage1", 1)
    words = shlex.split(line.partition("#")[0])[1:]
    argv = [w.replace("DATA_DIR", str(data)).replace("runs/flowers", str(run.path)) for w in words]
    assert argv == ["train", str(data), "--out", str(run.path), "--config", str(run / RunDir.CONFIG), "--resume"]
    assert main(argv) == 0
    assert json.loads((run / RunDir.STATE).read_text())["complete"] and run.is_finished()


@pytest.mark.parametrize("fine_tune_cache", ["auto", "off"])
def test_a_tiny_run_says_no_alarming_keras_warnings(data, tmp_path, monkeypatch, fine_tune_cache) -> None:
    """Normal runs printed "Your input ran out of data; interrupting training" (stage 2's start scored, and each
    stage's first epoch, on a tf.data stream of unknown length) and "Skipping variable loading for optimizer 'adam_1',
    because it has 21 variables whereas the saved optimizer has 1" (stage 2's best was its start, saved before its
    optimizer was built)."""
    import warnings

    original = checkpoint.EpochCheckpoint.on_epoch_end

    def never_better(self, epoch, logs=None):  # stage 2 never improves on its start: that start is loaded at the end
        original(self, epoch, {**(logs or {}), "val_loss": 1e9} if self.stage == "stage2" else logs)

    monkeypatch.setattr(checkpoint.EpochCheckpoint, "on_epoch_end", never_better)
    cfg = _settings(data, tmp_path / "run", epochs=1, fine_tune_epochs=2, fine_tune_cache=fine_tune_cache)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(cfg, progress=False, say=lambda _: None)
    said = [str(w.message) for w in caught]
    assert not [m for m in said if "ran out of data" in m or "Skipping variable loading" in m], said
    stage2 = json.loads((Path(cfg.out) / RunDir.STATE).read_text())["stages"]["stage2"]
    assert stage2["path"] == ("full" if fine_tune_cache == "off" else "prefix-cache")
    assert stage2["best_weights"].endswith("stage2-best-epoch000.weights.h5")


def test_a_resume_with_another_weights_file_at_the_same_path_is_refused(data, tmp_path, monkeypatch) -> None:
    """--resume compared the --weights path only: with the file replaced, stage 1 used the new weights while the
    unknown answer was fitted on the old cache's features, and the resumed head went on on other features."""
    from floranet.models import backbones

    def weights_file(seed: int) -> bytes:
        keras.utils.set_random_seed(seed)
        backbones.get("resnet20").build(input_shape=(32, 32, 3), weights=None).save_weights(tmp_path / "x.weights.h5")
        return (tmp_path / "x.weights.h5").read_bytes()

    weights = tmp_path / "w.weights.h5"
    weights.write_bytes(weights_file(1))
    cfg = _settings(data, tmp_path / "run", weights=str(weights), fine_tune_epochs=0)
    run = _interrupted(monkeypatch, cfg, "stage1", 1)
    state = json.loads((run / RunDir.STATE).read_text())
    assert state["weights_sha256"] == file_digest(weights)
    weights.write_bytes(weights_file(2))  # same path, other bytes
    with pytest.raises(ConfigError, match=rf"these differ: the content of the weights file {weights} \(saved sha256"):
        train(cfg, resume=True, progress=False, say=lambda _: None)
    weights.write_bytes(weights_file(1))  # the file the run began with: resumed
    assert _resume(cfg)["complete"] is True


def test_a_resume_on_a_cpu_of_another_kind_says_and_records_stage_2s_change_of_precision(
    data, tmp_path, monkeypatch
) -> None:
    """Stage 2 begun in float32 on a CPU without native bf16 and resumed on one with it went on in mixed bf16
    without a word, and metrics.json and the card said the whole stage had trained in mixed bf16."""
    from floranet.inference import runtime

    cfg = _settings(data, tmp_path / "run", epochs=1, fine_tune_epochs=3)
    monkeypatch.setattr(runtime, "training_precision", lambda precision="auto": ("float32", "no native bf16"))
    run = _interrupted(monkeypatch, cfg, "stage2", 1)
    assert json.loads((run / RunDir.STATE).read_text())["stages"]["stage2"]["policy"] == "float32"
    monkeypatch.setattr(runtime, "training_precision", lambda precision="auto": ("mixed_bfloat16", "native bf16"))
    said: list[str] = []
    train(cfg, resume=True, progress=False, say=said.append)
    assert "Stage 2 trained 1 epoch(s) in float32 before this resume; this CPU continues it in mixed_bfloat16" in (
        "\n".join(said)
    )
    state = json.loads((run / RunDir.STATE).read_text())
    assert state["stages"]["stage2"]["policy"] == "float32, then mixed_bfloat16"
    metrics = json.loads((run / RunDir.METRICS).read_text())
    assert metrics["precision"]["fine_tune"] == "float32, then mixed_bfloat16"
    assert "fine_tune float32, then mixed_bfloat16" in (run / RunDir.MODEL_CARD).read_text()
