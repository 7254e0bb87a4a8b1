"""floranet compare: one split, the same recipe per backbone, a ranked table and page, skips with reasons."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from floranet.cli import main
from floranet.cli.compare import parse_weights
from floranet.config import CompareConfig, TrainConfig
from floranet.errors import ConfigError
from floranet.rundir import RunDir
from floranet.workflows.compare import compare
from imagesets import make_image_folder

SETTINGS = {"image_size": 32, "epochs": 2, "batch_size": 8}


def test_compare_trains_each_backbone_on_one_split_and_ranks_them(tmp_path: Path, capsys) -> None:
    data = make_image_folder(tmp_path / "data", classes=3, per_class=8)
    out = tmp_path / "cmp"
    argv = ["compare", str(data), "--backbones", "resnet20,resnet32,resnet56", "--out", str(out)]
    argv += ["--weights", "none", "--weights", "resnet56=imagenet", "--image-size", "32", "--epochs", "2"]
    argv += ["--batch-size", "8", "--runtime", "tensorflow", "--precision", "fp32"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| rank | backbone |" in printed and "skipped: no weights" in printed
    table = json.loads((out / "comparison.json").read_text())
    assert table["runtime"] == "tensorflow fp32" and table["settings"]["fine_tune"] is False
    ranked = table["ranking"]
    assert [e["backbone"] for e in ranked][2] == "resnet56" and ranked[2]["skipped"]
    done = ranked[:2]
    assert {e["backbone"] for e in done} == {"resnet20", "resnet32"}
    assert done[0]["accuracy"] >= done[1]["accuracy"]
    split = (out / "split.csv").read_text()
    for e in done:
        assert e["weights"] == "random (none)" and e["size_bytes"] > 0 and e["train_s"] > 0
        assert e["latency_ms_batch1"] > 0 and e["latency_ms_batch32"] > 0
        run = RunDir(e["run_dir"])
        assert (run / "split.csv").read_text() == split  # the same split for every run
        assert run.config().fine_tune_epochs == 0 and run.exists(RunDir.MODEL_CARD)
    page = (out / "comparison.html").read_text()
    assert "resnet20" in page and "skipped" in page and "http" not in page.replace("http-equiv", "")


def test_compare_settings_are_checked() -> None:
    from floranet.workflows import compare as compare_lib

    assert parse_weights(["a=x", "none"], ("a",)) == ({"a": "x"}, "none")
    with pytest.raises(ConfigError, match="backbones"):
        CompareConfig(data_dir="d", backbones=("a", "a"))
    with pytest.raises(ConfigError, match="weights may only name"):
        CompareConfig(data_dir="d", backbones=("a",), weights={"b": None})
    with pytest.raises(ConfigError, match="train must hold"):
        CompareConfig(data_dir="d", backbones=("a",), train={"backbone": "x"})
    assert CompareConfig(data_dir="d", backbones=("a", "b"), weights={"a": "none"}).weights_of("a") is None
    # compare has no --fine-tune-epochs: "epochs + fine_tune_epochs must be > 0" named a setting it cannot take
    with pytest.raises(ConfigError, match=r"epochs must be >= 1 without fine_tune \(--fine-tune\).*Received: epochs=0"):
        CompareConfig(data_dir="d", backbones=("a",), train={"epochs": 0})
    assert CompareConfig(data_dir="d", backbones=("a",), train={"epochs": 0}, fine_tune=True).fine_tune
    # Names as the registry reads them: RESNET20 is resnet20 (it trained twice, in two folders)
    with pytest.raises(ConfigError, match="distinct names"):
        CompareConfig(data_dir="d", backbones=("resnet20", " RESNET20"))
    # ... and compare refuses two names of one model before anything (efficientnetb0 is efficientnet_b0: the
    # registry strips underscores to find the Keras model), naming both; "d" is not even looked at.
    for pair in (("efficientnet_b0", "efficientnetb0"), ("keras:efficientnet_b0", "EfficientNetB0")):
        with pytest.raises(ConfigError, match=f"'{pair[0]}' and '{pair[1]}' are both keras.applications.effic"):
            compare(CompareConfig(data_dir="d", backbones=pair), say=lambda m: None)
    # floranet's resnet50 and MobileNetV2 are not Keras's
    compare_lib._check_distinct(("resnet50", "keras:resnet50", "mobilenet_v2", "keras:mobilenet_v2"))
    spelled = CompareConfig(data_dir="d", backbones=("ResNet20",), weights={"RESNET20": "none"})
    assert spelled.backbones == ("ResNet20",) and spelled.weights_of("ResNet20") is None
    # Wrong types are named, not TypeErrors (a str was taken letter by letter).
    for kwargs, match in (
        ({"backbones": None}, "backbones must be a non-empty list.*Received: backbones=None"),
        ({"backbones": "resnet20"}, "Received: backbones='resnet20'"),
        ({"backbones": ("a",), "weights": None}, "weights must be a mapping"),
        ({"backbones": ("a",), "train": ["epochs"]}, "train must be a mapping"),
        ({"backbones": ("a",), "fine_tune": "yes"}, "fine_tune must be True or False"),
        ({"backbones": ("a",), "default_weights": 5}, "default_weights must be"),
        # Empty (--weights "$W" or --weights a=$W with W unset): trained from random weights, where train refuses it
        ({"backbones": ("a",), "default_weights": ""}, "default_weights must be.*Received: default_weights=''"),
        ({"backbones": ("a",), "weights": {"a": " "}}, "weights must map each backbone to.*Received: weights="),
    ):
        with pytest.raises(ConfigError, match=match):
            CompareConfig(data_dir="d", **kwargs)


def test_compare_weights_paths_may_hold_equals_signs(tmp_path: Path, monkeypatch) -> None:
    """`--weights resnet20=w=1/x.h5` and `--weights w=1/x.h5`: the text before the first '=' is a backbone's name
    only where it names a compared backbone ('w=1/x.h5' was taken as weights for a backbone 'w')."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w=1").mkdir()
    (tmp_path / "w=1" / "x.h5").write_text("")
    names = ("resnet20", "ResNet32")
    assert parse_weights(["resnet20=w=1/x.h5", "w=1/x.h5"], names) == ({"resnet20": "w=1/x.h5"}, "w=1/x.h5")
    assert parse_weights(["RESNET32=none"], names) == ({"RESNET32": "none"}, "imagenet")
    with pytest.raises(ConfigError, match=r"'resnt20' is not one of them.*Received: --weights='resnt20=none'"):
        parse_weights(["resnt20=none"], names)


def test_compare_library_call(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", classes=3, per_class=6)
    cfg = CompareConfig(
        data_dir=str(data),
        backbones=("resnet20",),
        out=str(tmp_path / "c"),
        default_weights=None,
        train=SETTINGS,
        runtime="tensorflow",
        precision="fp32",
    )
    result = compare(cfg, say=lambda m: None)
    assert len(result.ranked()) == 1 and result.ranked()[0].accuracy is not None
    assert "resnet20" in result.table()
    # Rerun after a crash that left resnet32's folder with its lock alone: the finished run is reused, the other
    # trained (a rerun used to be refused: "already holds runs of resnet20", "holds things ... (resnet32)").
    model = tmp_path / "c" / "resnet20" / RunDir.MODEL
    before = model.stat().st_mtime_ns
    (tmp_path / "c" / "resnet32").mkdir()
    (tmp_path / "c" / "resnet32" / RunDir.LOCK).write_text("")
    said: list[str] = []
    again = compare(dataclasses.replace(cfg, backbones=("resnet20", "resnet32")), say=said.append)
    assert {e.backbone for e in again.ranked()} == {"resnet20", "resnet32"} and model.stat().st_mtime_ns == before
    assert any(m.startswith("Reusing the finished run of resnet20") for m in said)
    assert next(e for e in again.ranked() if e.backbone == "resnet20").accuracy == result.ranked()[0].accuracy
    first = again.ranked()[0]
    assert first.classes == ["class_0", "class_1", "class_2"] and first.val_images == result.ranked()[0].val_images
    # The data folder loses a class: the finished runs are reused, a new one trains on what is left of the split,
    # and is not ranked with them (resnet44 with 2 classes ranked above resnet20 with 3, without a word).
    shutil.rmtree(data / "class_2")
    said.clear()
    third = compare(dataclasses.replace(cfg, backbones=("resnet20", "resnet32", "resnet44")), say=said.append)
    ranked = third.ranked()
    assert [e.backbone for e in ranked[2:]] == ["resnet44"] and [e.not_ranked for e in ranked[:2]] == [None, None]
    why = ranked[2].not_ranked or ""
    assert why.startswith("2 classes, not 3: without class_2; ") and why.endswith(
        f" validation images, not {first.val_images}"
    )
    assert any(m.startswith("Not ranking resnet44: it was trained on other data than resnet20, resnet32") for m in said)
    table = third.table()
    assert "| not ranked | resnet44 |" in table and f"resnet44: {why}" in table
    assert "Not ranked, trained on other data" in (tmp_path / "c" / "comparison.html").read_text()
    saved = json.loads((tmp_path / "c" / "comparison.json").read_text())["ranking"]
    assert saved[2]["not_ranked"] == why and saved[2]["classes"] == ["class_0", "class_1"]


def test_compare_ranks_the_runs_most_of_them_share_the_data_of() -> None:
    """The ranked runs are those of the class set and validation count most runs share; the first backbone's
    among equals."""
    from floranet.workflows.ranking import Comparison, Entry, mark_other_data

    def entry(name: str, accuracy: float, classes: list[str], val: int) -> Entry:
        return Entry(name, "none", accuracy=accuracy, ece=0.1, classes=classes, val_images=val)

    abc = ["a", "b", "c"]
    entries = [entry("r20", 0.5, abc, 6), entry("r32", 0.9, ["a", "b"], 4), entry("r44", 0.6, ["c", "b", "a"], 6)]
    entries.append(Entry("r56", "imagenet", skipped="no weights"))
    said = mark_other_data(entries)
    assert [e.backbone for e in Comparison(entries, "tf", Path("o")).ranked()] == ["r44", "r20", "r32", "r56"]
    assert said == [
        "Not ranking r32: it was trained on other data than r20, r44 (2 classes, not 3: without c; 4 validation "
        "images, not 6); the data folder changed between them, and a new --out compares every backbone on it as it "
        "is now."
    ]
    tie = [entry("r20", 0.5, abc, 6), entry("r32", 0.9, ["a", "b", "d"], 6)]
    assert mark_other_data(tie) and tie[1].not_ranked == "3 classes, not 3: without c, with d"
    same = [entry("r20", 0.5, abc, 6), entry("r32", 0.9, abc, 6)]
    assert mark_other_data(same) == [] and Comparison(same, "tf", Path("o")).other_data() == ""


def test_runs_of_the_same_accuracy_and_ece_share_their_rank() -> None:
    """Exact ties were ranked 1 and 2 by the order of --backbones, with nothing to say they were tied."""
    from floranet.workflows.ranking import Comparison, Entry, page

    def entry(name: str, accuracy: float, ece: float) -> Entry:
        return Entry(name, "none", accuracy=accuracy, ece=ece, classes=["a"], val_images=4)

    entries = [entry("r20", 0.5, 0.1), entry("r32", 0.75, 0.2), entry("r44", 0.75, 0.2), entry("r56", 0.75, 0.1)]
    entries.append(Entry("r110", "imagenet", skipped="no weights"))
    result = Comparison(entries, "tf", Path("o"))
    assert [e.backbone for e in result.ranked()] == ["r56", "r32", "r44", "r20", "r110"]
    assert result.ranks() == ["1", "2=", "2=", "4", "-"]
    assert [e["rank"] for e in result.to_dict()["ranking"]] == ["1", "2=", "2=", "4", "-"]
    assert "| 2= | r32 |" in result.table() and "| 2= | r44 |" in result.table()
    assert page(result).count("<td>2=</td>") == 2


def test_compare_checks_names_and_out_before_training_anything(tmp_path: Path, monkeypatch) -> None:
    """A typo in the last backbone failed after training the first (and blocked the corrected rerun); --out inside
    the data folder got a split.csv first; a folder of the user's had its comparison.html replaced; a file as --out
    gave a traceback."""
    from floranet.workflows import compare as compare_lib

    data = make_image_folder(tmp_path / "data", classes=3, per_class=4)
    trained: list[str] = []
    monkeypatch.setattr(compare_lib, "train", lambda settings, **k: trained.append(settings.backbone) or 1 / 0)

    def cfg(out: Path, backbones: tuple[str, ...] = ("resnet20",)) -> CompareConfig:
        return CompareConfig(
            data_dir=str(data), backbones=backbones, out=str(out), default_weights=None, train=SETTINGS
        )

    with pytest.raises(ConfigError, match="Unknown backbone.*resnet2O"):
        compare(cfg(tmp_path / "c", ("resnet20", "resnet2O")), say=lambda m: None)
    assert not trained and not (tmp_path / "c").exists()
    # Keras's Inception needs 75 px: a raw ValueError after the first backbone had trained
    with pytest.raises(ConfigError, match=r"backbone 'keras:inception_v3' cannot take images of 32x32 px"):
        compare(cfg(tmp_path / "c", ("resnet20", "keras:inception_v3")), say=lambda m: None)
    assert not trained and not (tmp_path / "c").exists()
    with pytest.raises(ConfigError, match="outside the data folder"):
        compare(cfg(data / "cmp"), say=lambda m: None)
    assert not (data / "cmp").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "comparison.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds things a comparison did not write .comparison.txt"):
        compare(cfg(mine), say=lambda m: None)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="it is a file"):
        compare(cfg(tmp_path / "afile"), say=lambda m: None)
    earlier = tmp_path / "earlier"
    (earlier / "resnet20").mkdir(parents=True)
    # A run of other settings (as floranet writes its config: data_dir, out and preset resolved, then the rest).
    (earlier / "resnet20" / RunDir.CONFIG).write_text(
        f"data_dir: {data}\nout: {earlier / 'resnet20'}\npreset: recommended\nbackbone: resnet20\n"
    )
    (earlier / "resnet20" / RunDir.SPLIT).write_text("path,label,split,sha256\n")
    with pytest.raises(ConfigError, match="already holds a run of resnet20 with other settings"):
        compare(cfg(earlier), say=lambda m: None)
    assert not trained
    import sys

    from floranet.errors import MissingDependencyError
    from floranet.inference import runtime

    with monkeypatch.context() as m:  # latency's runtime missing: said before a backbone trains for nothing
        m.setattr(runtime, "openvino_available", lambda: False)
        m.setitem(sys.modules, "openvino", None)
        with pytest.raises(MissingDependencyError, match="openvino"):
            compare(dataclasses.replace(cfg(tmp_path / "ov"), runtime="openvino"), say=lambda m: None)
    assert not trained
    with pytest.raises(ZeroDivisionError):  # past every check: the first training starts
        compare(cfg(earlier, ("resnet32",)), say=lambda m: None)
    assert trained == ["resnet32"]


def test_a_second_compare_into_one_out_is_refused_while_the_first_writes_it(tmp_path: Path, monkeypatch) -> None:
    """Two compares into one OUT each decided which runs were new, then each failed on a run the other had begun
    ("already holds a run", "Nothing to resume") and neither wrote its comparison."""
    from floranet.errors import RunLockedError
    from floranet.utils import locks
    from floranet.workflows import compare as compare_lib

    data = make_image_folder(tmp_path / "data", classes=3, per_class=4)
    monkeypatch.setattr(compare_lib, "train", lambda settings, **k: 1 / 0)
    out = tmp_path / "cmp"
    config = CompareConfig(
        data_dir=str(data), backbones=("resnet20",), out=str(out), default_weights=None, train=SETTINGS
    )
    fd = locks.acquire(out / RunDir.LOCK, what="the first compare")
    try:
        with pytest.raises(RunLockedError, match="another floranet compare is writing it: wait for it to finish"):
            compare(config, say=lambda m: None)
        assert [p.name for p in out.iterdir()] == [RunDir.LOCK]  # it wrote nothing
    finally:
        locks.release(out / RunDir.LOCK, fd)
    with pytest.raises(ZeroDivisionError):  # once it is let go, the next compare goes on to train
        compare(config, say=lambda m: None)


def test_a_missing_weights_file_is_refused_before_anything_is_written(tmp_path: Path, monkeypatch, capsys) -> None:
    """--weights resnet32=missing.h5 wrote OUT/split.csv and trained resnet20, then skipped resnet32 ("weights must
    be ... an existing weights file") and exited 0: a typo to fix, not weights that cannot be had offline."""
    from floranet.models import weights as weights_lib
    from floranet.workflows import compare as compare_lib

    data = make_image_folder(tmp_path / "data", classes=2, per_class=4)
    trained: list[str] = []
    monkeypatch.setattr(compare_lib, "train", lambda settings, **k: trained.append(settings.backbone) or 1 / 0)
    out = tmp_path / "cmp"
    argv = ["compare", str(data), "--backbones", "resnet20,resnet32", "--out", str(out), "--weights", "none"]
    argv += ["--weights", f"resnet32={tmp_path / 'missing.h5'}", "--image-size", "32", "--epochs", "1"]
    assert main(argv) == 2
    said = capsys.readouterr().err
    assert "an existing weights file" in said and f"weights={str(tmp_path / 'missing.h5')!r}" in said
    assert not trained and not out.exists()
    (tmp_path / "w.h5").write_text("unreadable")

    def unreadable(path, *a, **k):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(weights_lib, "open", unreadable, raising=False)  # root may read any file
    argv[argv.index(f"resnet32={tmp_path / 'missing.h5'}")] = f"resnet32={tmp_path / 'w.h5'}"
    assert main(argv) == 2
    assert f"Cannot read weights file {tmp_path / 'w.h5'}: Permission denied" in capsys.readouterr().err
    assert not trained and not out.exists()


def test_compare_cli_passes_a_zero_seed(tmp_path: Path, monkeypatch) -> None:
    from floranet.workflows import compare as compare_lib

    seen: list[CompareConfig] = []
    monkeypatch.setattr(compare_lib, "compare", lambda config: seen.append(config) or 1 / 0)
    with pytest.raises(ZeroDivisionError):
        main(["compare", str(tmp_path), "--backbones", "resnet20", "--seed", "0", "--epochs", "1"])
    assert seen[0].train == {"seed": 0, "epochs": 1}


def test_a_run_killed_after_training_is_resumed_not_reused(writable_run: Path) -> None:
    """compare called a run finished once its state was complete and model.keras and metrics.json existed: true
    already when it was killed in its report or audit, so that run never got its report, card or audit."""
    from floranet.workflows.compare import _earlier_run

    run = RunDir(writable_run)
    settings = dataclasses.replace(run.config(), out=str(writable_run))  # the copy, not the run it was made from
    assert run.is_finished() and _earlier_run("resnet20", settings) == "finished"
    metrics = json.loads((writable_run / "metrics.json").read_text())
    metrics["timings_s"] = {k: v for k, v in metrics["timings_s"].items() if k != "training"}  # as fit left them
    (writable_run / "metrics.json").write_text(json.dumps(metrics))
    assert not run.is_finished() and _earlier_run("resnet20", settings) == "incomplete"
    (writable_run / "metrics.json").write_text("[]")  # damaged: not finished, and said by name where read
    assert not run.is_finished()
    with pytest.raises(Exception, match="metrics.json is damaged .not a JSON object"):
        run.metrics()


def test_a_backbone_skipped_for_its_weights_leaves_no_run_behind(tmp_path: Path) -> None:
    """resnet56 has no ImageNet weights: the WeightsError came at its build, after its run folder was made, and
    the half-made run (config, split, ...) refused the retry with other weights ("other settings (weights)").
    A weights file that does not fit fails at the build too: the folder this invocation made is removed."""
    data = make_image_folder(tmp_path / "data", classes=2, per_class=4)
    out = tmp_path / "c"
    (tmp_path / "bad.h5").write_text("not weights")
    cfg = CompareConfig(
        data_dir=str(data),
        backbones=("resnet56", "resnet20"),
        out=str(out),
        weights={"resnet20": str(tmp_path / "bad.h5")},
        default_weights="imagenet",
        train=SETTINGS,
        runtime="tensorflow",
        precision="fp32",
    )
    result = compare(cfg, say=lambda m: None)
    assert [e.skipped is not None for e in result.entries] == [True, True]
    assert "has no ImageNet weights" in (result.entries[0].skipped or "")
    assert not (out / "resnet56").exists() and not (out / "resnet20").exists()
    mine = out / "resnet32"  # a folder that was there before is not this invocation's to remove
    mine.mkdir()
    (mine / RunDir.LOCK).write_text("")
    compare(dataclasses.replace(cfg, backbones=("resnet32",), weights={"resnet32": str(tmp_path / "bad.h5")}))
    assert mine.is_dir()


def test_a_comparisons_split_is_not_reused_for_another_data_folder(tmp_path: Path, monkeypatch) -> None:
    """compare data4 --out cmp (a comparison of data3) reused data3's split.csv: data4's runs trained on whatever
    files of it data4 happened to have, and its other images were ignored without a word."""
    from floranet.workflows import compare as compare_lib

    def killed(settings: TrainConfig, **kwargs: object) -> None:  # the split is made, a run begun, nothing trained
        Path(settings.out).mkdir(exist_ok=True)
        settings.save(Path(settings.out) / RunDir.CONFIG)
        (Path(settings.out) / RunDir.DOCTOR).write_text("{}")
        raise ZeroDivisionError

    monkeypatch.setattr(compare_lib, "train", killed)
    first = make_image_folder(tmp_path / "data3", classes=2, per_class=4)
    other = make_image_folder(tmp_path / "data4", classes=2, per_class=4, seed=1)
    out = tmp_path / "cmp"
    cfg = CompareConfig(data_dir=str(first), backbones=("resnet20",), out=str(out), default_weights=None)
    with pytest.raises(ZeroDivisionError):
        compare(cfg, say=lambda m: None)
    assert json.loads((out / "split.json").read_text()) == {"data_dir": str(first.resolve())}
    split = (out / "split.csv").read_text()
    with pytest.raises(ConfigError, match="holds a comparison of another data folder") as caught:
        compare(dataclasses.replace(cfg, data_dir=str(other)), say=lambda m: None)
    assert f"made from {first.resolve()}, not {other.resolve()}" in str(caught.value)
    assert (out / "split.csv").read_text() == split
    # A comparison made before the record was kept: its split is taken for this data folder, and that is said.
    (out / "split.json").unlink()
    said: list[str] = []
    with pytest.raises(ZeroDivisionError):
        compare(cfg, say=said.append)
    assert any("has no record of the data folder" in m for m in said)
    assert any("images added there since are not in it" in m for m in said)
    assert json.loads((out / "split.json").read_text()) == {"data_dir": str(first.resolve())}


def test_a_split_csv_of_someone_elses_is_not_taken_for_the_comparisons(tmp_path: Path, monkeypatch) -> None:
    """An OUT holding only a split.csv of the user's (no split.json, no run of a comparison) was taken for a
    comparison made before split.json was kept: its rows became every backbone's split."""
    from floranet.workflows import compare as compare_lib

    monkeypatch.setattr(compare_lib, "train", lambda settings, **k: 1 / 0)
    data = make_image_folder(tmp_path / "data", classes=2, per_class=4)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "split.csv").write_text("path,label,split\nelsewhere/a.jpg,0,train\n")
    cfg = CompareConfig(data_dir=str(data), backbones=("resnet20",), out=str(out), default_weights=None)
    with pytest.raises(ConfigError, match="holds a split.csv that floranet compare did not write"):
        compare(cfg, say=lambda m: None)
    assert sorted(p.name for p in out.iterdir()) == ["split.csv"]
    assert (out / "split.csv").read_text() == "path,label,split\nelsewhere/a.jpg,0,train\n"


def test_a_damaged_split_record_names_compare_as_its_writer(tmp_path: Path, monkeypatch) -> None:
    """A split.json that is not JSON said "rerun the step that wrote it": that step is compare itself, which said
    it again. The message names the command that writes the file (RunDir.WRITERS) and what to do."""
    from floranet.workflows import compare as compare_lib

    monkeypatch.setattr(compare_lib, "train", lambda settings, **k: 1 / 0)
    data = make_image_folder(tmp_path / "data", classes=2, per_class=4)
    out = tmp_path / "cmp"
    cfg = CompareConfig(data_dir=str(data), backbones=("resnet20",), out=str(out), default_weights=None)
    with pytest.raises(ZeroDivisionError):
        compare(cfg, say=lambda m: None)
    (out / "split.json").write_text('{"data_dir": "cut')
    with pytest.raises(ConfigError, match="split.json is damaged .not valid JSON") as caught:
        compare(cfg, say=lambda m: None)
    assert "it is written by `floranet compare`; choose a new --out" in str(caught.value)
    assert "step that wrote it" not in str(caught.value)
    (out / "split.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"split.json is damaged \(no data_dir.*\); choose a new --out"):
        compare(cfg, say=lambda m: None)


@pytest.mark.parametrize("given", ["relative", "absolute"])
def test_a_comparison_moved_or_copied_elsewhere_is_continued(tmp_path: Path, monkeypatch, given: str) -> None:
    """Its runs' config.yaml name the split where the comparison lay (split_file is absolute): a moved OUT was
    refused, "out already holds a run of resnet20 with other settings (split_file)"."""
    from floranet.workflows import compare as compare_lib

    calls: list[tuple[str | None, bool]] = []

    def started(settings, resume=False, **kwargs):  # a run killed in training: config.yaml and state.json
        calls.append((settings.split_file, resume))
        run = RunDir(settings.out)
        if not resume:
            run.path.mkdir(parents=True)
            run.write_config(settings)
            run.write_json(RunDir.STATE, {})
        raise ZeroDivisionError

    monkeypatch.setattr(compare_lib, "train", started)
    monkeypatch.chdir(tmp_path)
    data = make_image_folder(tmp_path / "data", classes=2, per_class=4)
    first = "cmp" if given == "relative" else str(tmp_path / "cmp")  # config.yaml keeps out as given
    cfg = CompareConfig(data_dir=str(data), backbones=("resnet20",), out=first, default_weights=None)
    with pytest.raises(ZeroDivisionError):
        compare(cfg, say=lambda m: None)
    split = str(tmp_path / "cmp" / "split.csv")
    assert calls == [(split, False)]
    for where in ("moved", str(tmp_path / "copied")):
        if where == "moved":
            shutil.move(tmp_path / "cmp", tmp_path / where)
        else:
            shutil.copytree(tmp_path / "moved", where)
        calls.clear()
        with pytest.raises(ZeroDivisionError):  # resumed, no longer refused
            compare(dataclasses.replace(cfg, out=where), say=lambda m: None)
        assert calls == [(split, True)]  # as the run saved it
    # A run trained on another split file is still a run of other settings.
    config = tmp_path / "moved" / "resnet20" / "config.yaml"
    config.write_text(config.read_text().replace(split, str(tmp_path / "split.csv")))
    with pytest.raises(ConfigError, match=r"other settings \(split_file\)"):
        compare(dataclasses.replace(cfg, out="moved"), say=lambda m: None)


def test_a_damaged_run_in_out_is_named_not_taken_for_a_folder_of_yours(tmp_path: Path, monkeypatch) -> None:
    """OUT/resnet20 with its config.yaml damaged or removed was "a folder that holds things a comparison did not
    write (resnet20)": neither which file nor what to do was said."""
    from floranet.workflows import compare as compare_lib

    monkeypatch.setattr(compare_lib, "train", lambda settings, **k: 1 / 0)
    data = make_image_folder(tmp_path / "data", classes=2, per_class=4)
    out = tmp_path / "cmp"
    run = out / "resnet20"
    run.mkdir(parents=True)
    (run / RunDir.STATE).write_text("{}")
    (run / RunDir.DOCTOR).write_text("{}")
    cfg = CompareConfig(data_dir=str(data), backbones=("resnet20",), out=str(out), default_weights=None)
    config = run / RunDir.CONFIG
    for text, state in ((None, "missing"), ("{bad", "damaged"), ("epochs: 2\n", "damaged")):
        if text is not None:
            config.write_text(text)
        with pytest.raises(ConfigError) as caught:
            compare(cfg, say=lambda m: None)
        said = str(caught.value)
        assert said.startswith(f"{config} is {state}") and "Move that run away to train it again" in said
    config.unlink()
    with pytest.raises(ConfigError, match=f"{config} is missing"):  # a backbone of an earlier comparison
        compare(dataclasses.replace(cfg, backbones=("resnet32",)), say=lambda m: None)
    shutil.rmtree(run)
    (out / "notes").mkdir()
    (out / "notes" / RunDir.STATE).write_text("{}")  # a folder named for no backbone is still one of yours
    with pytest.raises(ConfigError, match=r"holds things a comparison did not write \(notes\)"):
        compare(cfg, say=lambda m: None)


def test_metrics_of_the_wrong_type_are_named_not_a_traceback(writable_run: Path) -> None:
    """A reused run's metrics.json, valid JSON of other types: "calibration": null gave an AttributeError,
    "accuracy": "0.9" a TypeError when ranked."""
    from floranet.errors import ModelError
    from floranet.workflows.compare import _one

    run = RunDir(writable_run)
    settings = dataclasses.replace(run.config(), out=str(writable_run))
    cfg = CompareConfig(
        data_dir=run.config().data_dir, backbones=("resnet20",), out=str(writable_run.parent), default_weights=None
    )
    good = json.loads((writable_run / "metrics.json").read_text())
    for field, value in (("calibration", None), ("accuracy", "0.9"), ("num_examples", [6]), ("timings_s", 3)):
        (writable_run / "metrics.json").write_text(json.dumps({**good, field: value}))
        with pytest.raises(ModelError) as caught:
            _one(cfg, "resnet20", settings, "finished", progress=False, say=lambda m: None)
        said = str(caught.value)
        assert said.startswith(f"{writable_run / 'metrics.json'} is damaged: {field} must be ")
        assert said.endswith(f"Received: {field}={json.dumps(value)}")
    bad_ece = {**good, "calibration": {**good["calibration"], "ece": "low"}}
    (writable_run / "metrics.json").write_text(json.dumps(bad_ece))
    with pytest.raises(ModelError, match=r"calibration\.ece must be a number.*Received: calibration\.ece=\"low\""):
        _one(cfg, "resnet20", settings, "finished", progress=False, say=lambda m: None)


def test_a_skipped_weights_file_keeps_its_row_and_its_whole_path(tmp_path: Path) -> None:
    """A weights file w|x.h5 split its Markdown row into more cells than the header has, and the reason was cut at
    its first ". ", inside a path holding one ("no weights: Cannot read weights file /tmp/a")."""
    import re

    data = make_image_folder(tmp_path / "data", classes=2, per_class=4)
    weights = tmp_path / "a. b" / "w|x.h5"
    weights.parent.mkdir()
    weights.write_text("not weights")
    cfg = CompareConfig(
        data_dir=str(data),
        backbones=("resnet20",),
        out=str(tmp_path / "c"),
        default_weights=str(weights),
        train=SETTINGS,
        runtime="tensorflow",
        precision="fp32",
    )
    result = compare(cfg, say=lambda m: None)
    skipped = result.entries[0].skipped or ""
    assert skipped.startswith(f"no weights: Cannot read weights file {weights}: not an HDF5 file")
    header, _, row = result.table().splitlines()[:3]
    cells = [c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]]
    assert len(cells) == header.count("|") - 1 == 9
    assert cells[2] == "file w\\|x.h5" and cells[3].startswith("skipped: no weights: Cannot read weights file /")
    assert str(weights).replace("|", "\\|") in cells[3]


def test_a_comparison_json_or_html_of_yours_in_out_is_refused_and_kept(tmp_path: Path, monkeypatch) -> None:
    """`compare --out DIR` took DIR's comparison.html and comparison.json for its own by their names, and replaced
    them when it ended: only files that start as floranet writes them are its own; any other is named and kept."""
    from floranet.utils.files import atomic_write_text, write_json
    from floranet.workflows import compare as compare_lib
    from floranet.workflows.ranking import Comparison, page

    monkeypatch.setattr(compare_lib, "train", lambda settings, **k: 1 / 0)  # past every check: training starts
    data = make_image_folder(tmp_path / "data", classes=2, per_class=4)
    cfg = CompareConfig(data_dir=str(data), backbones=("resnet20",), out="", default_weights=None, train=SETTINGS)
    mine = {"comparison.html": "<html><title>my comparison</title>", "comparison.json": '{"runtime": "mine"}'}
    for name, text in mine.items():
        out = tmp_path / f"mine-{name}"
        out.mkdir()
        (out / name).write_text(text)
        with pytest.raises(ConfigError, match=f"out holds a {name} that floranet compare did not write"):
            compare(dataclasses.replace(cfg, out=str(out)), say=lambda m: None)
        assert [p.name for p in out.iterdir()] == [name] and (out / name).read_text() == text
    (tmp_path / "dir" / "comparison.json").mkdir(parents=True)  # not a file it could replace either
    with pytest.raises(ConfigError, match="out holds a comparison.json that floranet compare did not write"):
        compare(dataclasses.replace(cfg, out=str(tmp_path / "dir")), say=lambda m: None)
    ours = tmp_path / "ours"  # an earlier comparison's own table and page: taken for its own
    earlier = Comparison([], "tensorflow fp32", ours, {"data_dir": str(data)})
    write_json(ours / "comparison.json", earlier.to_dict())
    atomic_write_text(ours / "comparison.html", page(earlier))
    with pytest.raises(ZeroDivisionError):
        compare(dataclasses.replace(cfg, out=str(ours)), say=lambda m: None)
