"""floranet.export: every format round-trips through its own runtime and agrees with model.keras."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import floranet
from floranet import export as export_lib
from floranet.errors import ConfigError, MissingDependencyError, ModelError
from floranet.export import ExportResult, export_run, load_exported

# Module each format's runtime needs (skipped when the export extra is not installed).
NEEDS = {"onnx": ("tf2onnx", "onnx", "onnxruntime"), "openvino": ("openvino",), "openvino-int8": ("openvino", "nncf")}
FP32 = ["keras", "saved_model", "onnx", "openvino", "tflite"]
# openvino's quantized exports (~5 s each) run with the slow tests (`pytest -m slow`).
FP16 = ["tflite-fp16", pytest.param("openvino-fp16", marks=pytest.mark.slow)]
INT8 = ["tflite-int8", pytest.param("openvino-int8", marks=pytest.mark.slow)]
VALIDATION_IMAGES = 6  # tiny_run: 30 images, 6 in validation
TRAINING_IMAGES = 24


def _skip_if_missing(name: str) -> None:
    for module in NEEDS.get(name, NEEDS.get(name.split("-")[0], ())):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} not installed (floranet[export])")


@pytest.fixture(scope="module")
def run_copy(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the session's tiny run: exports write into it."""
    dst = tmp_path_factory.mktemp("export") / "run"
    shutil.copytree(
        tiny_run,
        dst,
        ignore=shutil.ignore_patterns("exports", "exports.json", "checkpoints", "features", "logs", "plots"),
    )
    return dst


@pytest.fixture(scope="module")
def exported(run_copy: Path):
    """``exported(name)``: the run copy exported as ``<format>[-<quantize>]``, once per module."""
    cache: dict[str, ExportResult] = {}

    def get(name: str) -> ExportResult:
        _skip_if_missing(name)
        if name not in cache:
            fmt, _, quantize = name.partition("-")
            cache[name] = export_run(run_copy, fmt, quantize=quantize or None)
        return cache[name]

    return get


def _pixels(n: int = 3) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (n, 32, 32, 3)).astype(np.float32)


@pytest.mark.parametrize("name", FP32)
def test_fp32_export_agrees_exactly(exported, run_copy: Path, name: str) -> None:
    r = exported(name)
    assert r.name == name and r.format == name and r.quantize is None
    assert r.path == run_copy / "exports" / name
    assert r.num_images == VALIDATION_IMAGES
    assert r.agreement == 1.0
    assert r.max_abs_diff is not None and r.max_abs_diff < 1e-4
    assert r.latency_ms_batch1 > 0 and r.reference_latency_ms_batch1 > 0
    assert r.size_bytes > 0 and r.calibration_images is None
    assert (r.path / export_lib.MODEL_FILES[name]).exists()
    assert json.loads((r.path / "class_names.json").read_text()) == ["daisy", "roses", "tulips"]
    readme = (r.path / "README.txt").read_text()
    assert readme.startswith("floranet export") and "0..255" in readme and "[N, 3]" in readme
    assert "top-1 100.0%" in r.summary()
    # Its own runtime, outside the check: batch of 3 and batch of 1, probabilities.
    predict = load_exported(r.path)
    assert predict.format == name
    probs = predict(_pixels(3))
    assert probs.shape == (3, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(predict(_pixels(3)[:1]), probs[:1], atol=1e-5)
    assert not list(r.path.parent.glob(f".{name}.*")), "temp folders left behind"


@pytest.mark.parametrize("name", FP16)
def test_fp16_export_is_close_and_smaller(exported, run_copy: Path, name: str) -> None:
    r = exported(name)
    assert r.quantize == "fp16" and r.num_images == VALIDATION_IMAGES
    assert r.agreement is not None and 0.0 <= r.agreement <= 1.0
    assert r.max_abs_diff is not None and r.max_abs_diff < 1e-2
    assert r.size_bytes < 0.6 * (run_copy / "model.keras").stat().st_size
    assert (r.path / "class_names.json").exists()


@pytest.mark.parametrize("name", INT8)
def test_int8_export_runs_and_reports(exported, run_copy: Path, name: str) -> None:
    r = exported(name)
    assert r.quantize == "int8"
    assert r.calibration_images == TRAINING_IMAGES
    assert isinstance(r.agreement, float) and 0.0 <= r.agreement <= 1.0  # reported, not required to be 1
    assert r.max_abs_diff is not None and np.isfinite(r.max_abs_diff)
    assert r.size_bytes < 0.5 * (run_copy / "model.keras").stat().st_size
    assert "int8 calibration: 24 training images" in r.summary()
    assert load_exported(r.path)(_pixels(2)).shape == (2, 3)


def test_exports_json_keeps_an_export_folder_whose_name_is_not_utf8(tmp_path: Path) -> None:
    """exports.json held such a folder's key as its raw byte: not UTF-8, so the next export dropped every entry."""
    from floranet.export.record import forget_export, record_export

    run = tmp_path / "run"
    run.mkdir()
    odd = os.fsdecode(b"exports/caf\xe9")
    (run / "exports.json").write_bytes(b'{"exports/caf\xe9": {"name": "caf\xe9", "path": "exports/caf\xe9"}}')  # older
    record_export(run, run / "exports" / "onnx", {"name": "onnx"})
    raw = (run / "exports.json").read_bytes()
    assert b"exports/caf\\udce9" in raw and set(json.loads(raw.decode("utf-8"))) == {odd, "exports/onnx"}
    assert forget_export(run, Path(os.fsdecode(os.fsencode(run) + b"/exports/caf\xe9")))
    assert set(json.loads((run / "exports.json").read_bytes().decode("utf-8"))) == {"exports/onnx"}


def test_exports_json_has_every_export(exported, run_copy: Path) -> None:
    names = []
    for name in FP32 + ["tflite-fp16", "tflite-int8"]:
        try:
            exported(name)
        except pytest.skip.Exception:
            continue
        names.append(name)
    entries = json.loads((run_copy / "exports.json").read_text())
    assert {f"exports/{name}" for name in names} <= set(entries)  # one entry per folder
    for name in names:
        e = entries[f"exports/{name}"]
        assert e["name"] == name and e["format"] == name.split("-")[0] and e["path"] == f"exports/{name}"
        for key in (
            "quantize",
            "size_bytes",
            "agreement",
            "max_abs_diff",
            "latency_ms_batch1",
            "num_images",
            "created",
            "runtime_versions",
        ):
            assert key in e, (name, key)
        assert "keras" in e["runtime_versions"] and "runtime" in e["runtime_versions"]


def test_out_folder_reexport_and_no_check(run_copy: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "deploy" / "model"
    r = export_run(run_copy, "keras", out=str(out), max_images=0)
    assert r.path == out and r.agreement is None and r.num_images == 0 and r.latency_ms_batch1 is None
    assert "skipped" in r.summary()
    (out / "app.py").write_text("mine")  # a file of the user's beside the export: replacing the folder deleted it
    with pytest.raises(ConfigError, match=r"holds an earlier export and things it does not write \(app.py\)"):
        export_run(run_copy, "keras", out=out, max_images=0)
    assert (out / "app.py").read_text() == "mine" and (out / "model.keras").exists()
    (out / "app.py").unlink()
    r2 = export_run(run_copy, "keras", out=out, max_images=0)  # replaces the older export
    assert r2.path == out and (out / "model.keras").exists()
    assert json.loads((run_copy / "exports.json").read_text())[str(out)]["name"] == "keras"
    assert sorted(p.name for p in out.parent.iterdir()) == ["model"]
    monkeypatch.chdir(out)  # "." as --out: its name was empty (a traceback after the conversion)
    assert export_run(run_copy, "keras", out=".", max_images=0).path == out


def test_a_file_of_yours_inside_an_exports_folder_is_never_replaced(exported) -> None:
    """Only the top level was compared: a note left inside saved_model's model/ was deleted by a re-export."""
    r = exported("saved_model")
    note = r.path / "model" / "deploy-notes.txt"
    note.write_text("mine")
    try:
        with pytest.raises(ConfigError, match=r"things it does not write \(model/deploy-notes.txt\)"):
            export_lib.export_run(r.path.parent.parent, "saved_model", max_images=0)
        assert note.read_text() == "mine"
    finally:
        note.unlink()


def test_an_interrupt_between_the_two_renames_puts_the_old_export_back(tmp_path: Path, monkeypatch) -> None:
    """Only an OSError restored the old export: a Ctrl-C between its two renames left no export folder, the old
    one under a hidden name for good, and the new one deleted with the temp folder."""
    from floranet.export import folders
    from floranet.export.common import MARKER

    final, tmp = tmp_path / "onnx", tmp_path / ".onnx.tmp-1"
    for folder, text in ((final, "old"), (tmp, "new")):
        folder.mkdir()
        (folder / "README.txt").write_text(MARKER + text)
    real, calls = os.replace, []

    def interrupted(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the new export onto the final name
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(folders.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        folders.place(tmp, final)
    assert (final / "README.txt").read_text() == MARKER + "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".onnx.tmp-1", "onnx"]


def test_a_killed_exports_temporary_folder_is_removed_by_the_next(run_copy: Path, tmp_path: Path) -> None:
    """A killed export left its hidden .keras.tmp-* folder (a whole model) for good. The next export removes one
    whose process is gone and that is an hour old; a running export's folder, or a recent one, stays."""
    out = tmp_path / "keras"
    dead = 2**22 + 12345  # above Linux's largest pid: no such process
    names = {
        "left": f".keras.tmp-{dead}-abc",
        "recent": f".keras.tmp-{dead}-def",
        "running": f".keras.tmp-{os.getpid()}-ghi",
        "mine": ".keras.tmp-notes",
    }
    for key, name in names.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.keras").write_bytes(b"x" * 10)
        if key != "recent":
            os.utime(tmp_path / name, (1_000_000_000, 1_000_000_000))
    export_run(run_copy, "keras", out=out, max_images=0)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["keras", names["recent"], names["running"], names["mine"]])


def test_a_sealed_folder_is_on_disk_before_it_is_renamed(tmp_path: Path, monkeypatch) -> None:
    """Only README.txt was synced: after a power cut exports.json (synced) could vouch for an empty model file."""
    from floranet.utils import files

    folder = tmp_path / ".export.tmp"
    (folder / "model" / "variables").mkdir(parents=True)
    for name in ("model.onnx", "class_names.json", "model/variables/data"):
        (folder / name).write_bytes(b"x")
    synced: list[str] = []
    real = os.fsync
    monkeypatch.setattr(files.os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd)))
    files.seal_folder(folder)
    everything = {str(p) for p in folder.rglob("*")} | {str(folder)}
    assert set(synced) == everything
    assert oct(folder.stat().st_mode & 0o777) == oct(0o777 & ~files.current_umask())


def test_an_export_that_disagrees_says_so_and_exits_1(run_copy: Path, tmp_path: Path, monkeypatch) -> None:
    """The agreement check computed numbers and passed whatever they were: 0% top-1 agreement exited 0."""
    from floranet.cli import main
    from floranet.export import check, exporter

    bad = check.Check(agreement=0.5, max_abs_diff=0.6, latency=1.0, reference_latency=1.0, num_images=4)
    monkeypatch.setattr(exporter, "check_export", lambda *a, **k: bad)
    out = tmp_path / "bad"
    assert main(["export", str(run_copy), "--format", "keras", "--out", str(out), "--max-images", "4"]) == 1
    assert "DOES NOT AGREE (needs top-1 >= 99% and max |Δp| <= 0.01)" in (out / "README.txt").read_text()
    assert json.loads((run_copy / "exports.json").read_text())[str(out)]["agrees"] is False
    assert (
        check.agrees("int8", 0.95, 0.3) and not check.agrees("fp16", 0.99, 0.2) and check.agrees(None, None, 0) is None
    )


def test_out_refuses_a_folder_that_is_not_an_export(run_copy: Path, tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a floranet export"):
        export_run(run_copy, "keras", out=tmp_path, max_images=0)
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    (tmp_path / "README.txt").write_bytes(b"\xff\xfe notes of mine")  # not UTF-8: a raw UnicodeDecodeError before
    with pytest.raises(ConfigError, match="not a floranet export"):
        export_run(run_copy, "keras", out=tmp_path, max_images=0)


def test_out_inside_the_data_folder_or_under_a_file_and_an_unrecordable_run(
    run_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An export into the data folder became a class for the doctor; a file in the way gave a traceback; a run
    that could not record a complete export (read-only) made the command fail after the export was written."""
    from floranet.errors import OutputError
    from floranet.rundir import RunDir

    data = Path(RunDir(run_copy).config().data_dir)
    with pytest.raises(ConfigError, match="outside the data folder"):
        export_run(run_copy, "keras", out=data / "exported", max_images=0)
    assert not (data / "exported").exists()
    (tmp_path / "afile").write_text("x")
    # It said 'File exists' without naming the file in the way.
    with pytest.raises(OutputError, match=r"Cannot write .*afile/x: .*\(.*afile is a file, not a folder\)"):
        export_run(run_copy, "keras", out=tmp_path / "afile" / "x", max_images=0)

    def read_only(*args: object) -> None:
        raise OutputError(run_copy / "exports.json", OSError(30, "Read-only file system"))

    monkeypatch.setattr(export_lib.exporter, "record_export", read_only)
    r = export_run(run_copy, "keras", out=tmp_path / "done", max_images=0)
    assert (r.path / "model.keras").exists()
    assert "The export is complete in" in caplog.text and "Read-only file system" in caplog.text


def _renamed_classes(run_copy: Path, folder: Path, names: dict[str, str]) -> Path:
    """A copy of the run whose classes are called ``names[old]`` (class_names.json and split.csv)."""
    from floranet.data.split import Split, SplitRow
    from floranet.rundir import RunDir

    run = folder / "run"
    shutil.copytree(run_copy, run, ignore=shutil.ignore_patterns("exports", "exports.json"))
    old = RunDir(run).class_names()
    (run / RunDir.CLASS_NAMES).write_text(json.dumps([names.get(n, n) for n in old]))
    split = RunDir(run_copy).split(old)
    rows = tuple(SplitRow(r.path, names.get(r.label, r.label), r.split, r.sha256) for r in split.rows)
    Split(rows, tuple(names.get(n, n) for n in old)).to_csv(run / RunDir.SPLIT)
    return run


def test_class_names_with_line_breaks_and_line_based_label_files(run_copy: Path, tmp_path: Path) -> None:
    """tflite read its labels back with splitlines(), which splits at U+2028 too (the export failed its own
    check, naming a deleted temp file); a name with a real line break cannot be one line of labels.txt."""
    _skip_if_missing("tflite")
    run = _renamed_classes(run_copy, tmp_path / "a", {"daisy": "da\u2028isy", "tulips": "tu\x1clips"})
    r = export_run(run, "tflite", max_images=0)
    meta, _ = export_lib.metadata.read_metadata("tflite", r.path)
    assert list(meta.class_names) == ["da\u2028isy", "roses", "tu\x1clips"]
    broken = _renamed_classes(run_copy, tmp_path / "b", {"daisy": "new\nline"})
    for fmt in ("tflite", "saved_model"):
        with pytest.raises(ConfigError, match="class name 'new\\\\nline' holds a line break"):
            export_run(broken, fmt, max_images=0)
    assert export_run(broken, "keras", max_images=0).path.exists()
    latin1 = _renamed_classes(run_copy, tmp_path / "c", {"daisy": os.fsdecode(b"caf\xe9")})  # a folder's bytes
    for fmt in ("tflite", "saved_model"):  # a raw UnicodeEncodeError, or a failure after the conversion
        with pytest.raises(ConfigError, match=r"class name 'caf\\\\xe9' is not UTF-8 \(its folder's name bytes\)"):
            export_run(latin1, fmt, max_images=0)
    # Formats without a labels file carry it as predict names it: strict UTF-8. The metadata held a lone surrogate
    # (strict JSON readers refuse it), class_names.json the raw byte (not UTF-8), README.txt a split line.
    names = ["caf\\xe9", "roses", "tulips"]
    for fmt in ("keras", "onnx"):
        if fmt == "onnx":
            _skip_if_missing("onnx")
        r = export_run(latin1, fmt, max_images=0)
        meta, _ = export_lib.metadata.read_metadata(fmt, r.path)
        assert list(meta.class_names) == names
        assert json.loads((r.path / "class_names.json").read_bytes().decode("utf-8")) == names
        assert "  0: caf\\xe9\n" in (r.path / "README.txt").read_text(encoding="utf-8")
    lines = _renamed_classes(run_copy, tmp_path / "d", {"daisy": "two\nlines"})
    assert "  0: two\\x0alines\n" in (export_run(lines, "keras", max_images=0).path / "README.txt").read_text()


def test_a_check_with_no_image_to_check_stops_and_max_images_0_compiles_nothing(run_copy: Path, tmp_path: Path) -> None:
    """The check used to be skipped, with a warning nobody saw, when no image of the run could be decoded: the
    command exited 0 with an unchecked export. Without a check, no compiled model is made either: one that never
    agreed could never be used."""
    from floranet.errors import DatasetError
    from floranet.rundir import RunDir

    run = tmp_path / "run"
    shutil.copytree(run_copy, run, ignore=shutil.ignore_patterns("exports", "exports.json", "inference"))
    data = tmp_path / "data"
    shutil.copytree(RunDir(run).config().data_dir, data)
    config = (run / RunDir.CONFIG).read_text()
    (run / RunDir.CONFIG).write_text(config.replace(RunDir(run).config().data_dir, str(data)))
    for row in RunDir(run).split().rows:
        if row.split == "validation":
            (data / row.path).write_bytes(b"gone")
    with pytest.raises(DatasetError, match=r"none of .*split.csv's validation images could be decoded.*--max-images 0"):
        export_run(run, "keras", out=tmp_path / "unchecked")
    assert not (tmp_path / "unchecked").exists()
    r = export_run(run, "keras", out=tmp_path / "plain", max_images=0)
    assert r.agreement is None and not (run / RunDir.COMPILED).exists()


def test_failed_export_keeps_the_older_one(run_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "keras"
    export_run(run_copy, "keras", out=out, max_images=0)

    def broken(*args: object) -> str:
        raise RuntimeError("converter crashed")

    monkeypatch.setitem(export_lib.writers.WRITERS, "keras", broken)
    with pytest.raises(ModelError, match="format='keras' failed: RuntimeError: converter crashed"):
        export_run(run_copy, "keras", out=out, max_images=0)
    assert (out / "model.keras").exists() and (out / "README.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keras"]


@pytest.mark.slow
def test_tflite_via_converter_fallback(run_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keras without format="litert" (< 3.12): SavedModel → tf.lite.TFLiteConverter."""
    monkeypatch.setattr(export_lib.writers, "_has_litert_export", lambda: False)
    r = export_run(run_copy, "tflite", out=tmp_path / "tfl", max_images=3)
    assert r.agreement == 1.0 and r.max_abs_diff < 1e-4


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"format": "pt"}, r"format must be one of keras, saved_model, onnx, openvino, tflite\. Received: format='pt'"),
        (
            {"format": "onnx", "quantize": "int4"},
            r"quantize must be one of None, fp16, int8\. Received: quantize='int4'",
        ),
        ({"format": "onnx", "quantize": "int8"}, r"quantize='int8' is not supported for format='onnx'"),
        ({"format": "keras", "quantize": "fp16"}, r"quantize='fp16' is not supported for format='keras'"),
        ({"format": "saved_model", "quantize": "int8"}, r"not supported for format='saved_model'"),
        ({"format": "tflite", "max_images": -1}, r"max_images must be an int >= 0"),
        ({"format": "tflite", "max_images": True}, r"max_images must be an int >= 0"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    args = dict(kwargs)
    fmt = args.pop("format")
    with pytest.raises(ConfigError, match=match):
        export_run(tmp_path, fmt, **args)


def test_missing_run(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="Run directory not found"):
        export_run(tmp_path / "nope", "onnx")
    assert not (tmp_path / "nope").exists()  # no folder made for a lock
    with pytest.raises(ModelError, match="model.keras is missing"):
        export_run(tmp_path, "onnx")
    (tmp_path / "model.onnx").write_bytes(b"x")  # an exported model given as a run: "not found" for a file there
    with pytest.raises(ModelError, match="run_dir must be a run directory .made by floranet train., not a file"):
        export_run(tmp_path / "model.onnx", "onnx")


def test_export_is_refused_while_another_writer_holds_the_run(run_copy: Path, tmp_path: Path) -> None:
    """export rewrote exports.json (and inference/ of an older run) while training or evaluate held the run."""
    from floranet.errors import RunLockedError
    from floranet.rundir import RunDir
    from floranet.utils import locks

    fd = locks.acquire(run_copy / RunDir.LOCK, what="a test holding the run")
    try:
        before = (run_copy / "exports.json").read_bytes() if (run_copy / "exports.json").exists() else None
        with pytest.raises(RunLockedError, match="in use by process [0-9]+; wait for it to finish.$") as refused:
            export_run(run_copy, "keras", out=tmp_path / "k", max_images=0)
        assert "elsewhere" not in str(refused.value)  # another --out would not help: the run exported is held
        after = (run_copy / "exports.json").read_bytes() if (run_copy / "exports.json").exists() else None
        assert before == after and not (tmp_path / "k").exists()
    finally:
        locks.release(run_copy / RunDir.LOCK, fd)


def test_load_exported_errors(exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelError, match="Export not found"):
        load_exported(tmp_path / "nope")
    with pytest.raises(ModelError, match="No exported model found"):
        load_exported(tmp_path)
    r = exported("onnx")
    assert load_exported(r.path / "model.onnx").format == "onnx"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(MissingDependencyError, match=r"onnxruntime.*pip install 'floranet\[export\]'"):
        load_exported(r.path)


def test_tflite_runs_without_ai_edge_litert(exported, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the export extra, TensorFlow's own tf.lite.Interpreter runs the file."""
    r = exported("tflite")
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    predict = load_exported(r.path)
    assert predict.runtime.startswith("tf.lite")
    np.testing.assert_allclose(predict(_pixels(2)), load_exported(r.path / "model.tflite")(_pixels(2)), atol=1e-5)


def test_onnx_fallback_for_captured_constants(run_copy: Path, tmp_path: Path) -> None:
    """Normalization(mean, variance) (torch-style preprocessing, EfficientNet) breaks Keras's ONNX path."""
    _skip_if_missing("onnx")
    import keras

    run = tmp_path / "run"
    shutil.copytree(run_copy, run, ignore=shutil.ignore_patterns("exports", "exports.json"))
    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Normalization(mean=[0.485, 0.456, 0.406], variance=[0.05, 0.05, 0.05])(x)
    x = keras.layers.Conv2D(4, 3)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x)).save(run / "model.keras")
    r = export_run(run, "onnx", max_images=3)
    assert "fallback" in r.converter
    assert r.agreement == 1.0 and r.max_abs_diff < 1e-4
    assert load_exported(r.path).input_name == "image"


# Each runtime alone (a fresh interpreter that never imports floranet) reads class names and input size
# back from the model file: the export's metadata, never class_names.json (deleted from a copy first).
READERS = {
    "keras": """
import json, zipfile, keras
meta = json.loads(zipfile.ZipFile(path + "/model.keras").read("metadata.json"))["floranet"]
model = keras.saving.load_model(path + "/model.keras")
assert list(model.inputs[0].shape[1:3]) == json.loads(meta["image_size"])
out = {**meta, "class_names": json.loads(meta["class_names"]), "image_size": json.loads(meta["image_size"])}
""",
    "saved_model": """
import tensorflow as tf
meta = tf.saved_model.load(path + "/model").signatures["metadata"]()
out = {k: v.numpy().decode() for k, v in meta.items() if k != "class_names"}
out["class_names"] = [v.decode() for v in meta["class_names"].numpy()]
out["image_size"] = json.loads(out["image_size"])
""",
    "onnx": """
import onnxruntime as ort
s = ort.InferenceSession(path + "/model.onnx", providers=["CPUExecutionProvider"])
out = dict(s.get_modelmeta().custom_metadata_map)
out["class_names"], out["image_size"] = json.loads(out["class_names"]), json.loads(out["image_size"])
assert s.get_inputs()[0].shape[1:] == [*out["image_size"], 3]
""",
    "openvino": """
import openvino as ov
m = ov.Core().read_model(path + "/model.xml")
out = {k: v.astype(str) for k, v in m.get_rt_info(["floranet"]).astype(dict).items()}
out["class_names"], out["image_size"] = json.loads(out["class_names"]), json.loads(out["image_size"])
""",
    "tflite": """
import zipfile
from ai_edge_litert.interpreter import Interpreter
from ai_edge_litert.tools import flatbuffer_utils
model = flatbuffer_utils.read_model(path + "/model.tflite")
entry = next(m for m in model.metadata if m.name.decode() == "floranet")
out = json.loads(bytes(model.buffers[entry.buffer].data))
out["class_names"], out["image_size"] = json.loads(out["class_names"]), json.loads(out["image_size"])
labels = zipfile.ZipFile(path + "/model.tflite").read("labels.txt").decode().split()
assert labels == out["class_names"], labels
it = Interpreter(model_path=path + "/model.tflite")
assert list(it.get_input_details()[0]["shape"][1:3]) == out["image_size"]
""",
}


@pytest.mark.parametrize("name", [*FP32, "tflite-fp16"])
def test_each_runtime_alone_reads_labels_and_input_size(exported, tmp_path: Path, name: str) -> None:
    import subprocess

    r = exported(name)
    copy = tmp_path / name
    shutil.copytree(r.path, copy)
    (copy / "class_names.json").unlink()
    script = (
        "import json, sys\npath = sys.argv[1]\n"
        + READERS[name.split("-")[0]]
        + "assert not any(m.startswith('floranet') for m in sys.modules)\nprint(json.dumps(out))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(copy)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    meta = json.loads(done.stdout.strip().splitlines()[-1])
    assert meta["class_names"] == ["daisy", "roses", "tulips"] and meta["image_size"] == [32, 32]
    assert meta["pixel_range"] == "0..255" and meta["input_layout"] == "NHWC" and meta["color_order"] == "RGB"
    assert meta["floranet_version"] == floranet.__version__ and meta["backbone"] == "resnet20"
    # The agreement check read them back too, with the same runtime, and says so in exports.json.
    entry = json.loads((r.path.parent.parent / "exports.json").read_text())[f"exports/{name}"]["metadata"]
    assert entry["class_names"] == ["daisy", "roses", "tulips"] and entry["image_size"] == [32, 32]
    assert "Metadata in the file" in r.summary()


def test_export_without_metadata_fails_the_check(run_copy: Path, tmp_path: Path, monkeypatch) -> None:
    _skip_if_missing("onnx")
    monkeypatch.setitem(export_lib.metadata._EMBED, "onnx", lambda folder, meta: None)
    with pytest.raises(ModelError, match="lacks floranet metadata: floranet_version, class_names, image_size"):
        export_run(run_copy, "onnx", out=tmp_path / "onnx", max_images=0)
    assert not (tmp_path / "onnx").exists()


def test_a_damaged_unknown_answer_is_left_out_not_blocking(
    run_copy: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cut ood.npz failed every export ('cannot be read'), with no way past it. With ood.json damaged, export
    said the run's inference model "was not compiled", though it was there and needed no compiling."""
    if not (run_copy / "ood.npz").exists():
        pytest.skip("this run has no unknown statistics")
    damaged = tmp_path / "run"
    shutil.copytree(run_copy, damaged)
    (damaged / "ood.npz").write_bytes((damaged / "ood.npz").read_bytes()[:100])
    result = export_run(damaged, "keras", out=tmp_path / "out", max_images=0)
    readme = (result.path / "README.txt").read_text()
    assert "Unknown answer: none (the run's unknown answer cannot be read" in readme
    assert not (result.path / "ood.npz").exists()
    # The run's own inference model gone too, or ood.json damaged: the export was complete (placed, recorded),
    # then mending the run's inference model read the unknown answer again and the command failed (exit 2).
    shutil.rmtree(damaged / "inference", ignore_errors=True)
    again = export_run(damaged, "keras", out=tmp_path / "out2", max_images=2)
    assert (again.path / "model.keras").exists()
    if not (damaged / "inference").is_dir():  # the run's usable compiled model, which needs no compiling
        shutil.copytree(run_copy / "inference", damaged / "inference")
    (damaged / "ood.json").write_text('{"method": "combined", "thresh')
    caplog.clear()
    for fmt in ("keras", "onnx"):
        assert (export_run(damaged, fmt, out=tmp_path / f"out-{fmt}", max_images=2).path / "README.txt").exists()
    assert json.loads((damaged / "exports.json").read_text())
    assert "was not compiled" not in caplog.text


def test_an_export_into_the_folder_of_another_replaces_its_record(run_copy: Path, tmp_path: Path) -> None:
    """tflite, then tflite fp16 into the same --out: exports.json kept the fp32 entry, vouching for a model that
    the fp16 one had replaced in that folder."""
    out = tmp_path / "shared"
    export_run(run_copy, "tflite", out=out, max_images=0)
    export_run(run_copy, "tflite", quantize="fp16", out=out, max_images=0)
    entries = json.loads((run_copy / "exports.json").read_text())
    assert [v["name"] for v in entries.values() if v["path"] == str(out)] == ["tflite-fp16"]


def test_an_export_of_another_run_replaced_in_a_folder_of_yours_leaves_that_runs_record(
    run_copy: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run B exported into deploy/, which held run A's export: A's exports.json still vouched for deploy/ (its
    model, agreement and latency), which now held B's model."""
    run_a, run_b, out = tmp_path / "a", tmp_path / "b", tmp_path / "deploy"
    for folder in (run_a, run_b):
        shutil.copytree(run_copy, folder, ignore=shutil.ignore_patterns("exports", "exports.json"))
    export_run(run_a, "keras", out=out, max_images=0)
    export_run(run_a, "keras", out=tmp_path / "kept", max_images=0)
    assert str(out) in json.loads((run_a / "exports.json").read_text())
    export_run(run_b, "keras", out=out, max_images=0)
    assert f"Source:    {run_b / 'model.keras'}" in (out / "README.txt").read_text()
    assert sorted(json.loads((run_a / "exports.json").read_text())) == [str(tmp_path / "kept")]
    assert sorted(json.loads((run_b / "exports.json").read_text())) == [str(out)]
    assert f"held an export of another run, {run_a}, now replaced; its exports.json no longer lists it" in caplog.text
    # A run whose exports.json cannot be written keeps its record, and the export says so.
    real_write = export_lib.record.write_json

    def refused(path: Path, obj: object) -> None:
        if path.parent == run_b:
            raise PermissionError(13, "Permission denied", str(path))
        real_write(path, obj)

    monkeypatch.setattr(export_lib.record, "write_json", refused)
    caplog.clear()
    export_run(run_a, "keras", out=out, max_images=0)
    assert f"held an export of the run {run_b}, whose exports.json still lists it" in caplog.text
    assert "Permission denied" in caplog.text and str(out) in json.loads((run_a / "exports.json").read_text())
    assert sorted(json.loads((run_b / "exports.json").read_text())) == [str(out)]
    caplog.clear()
    export_run(run_a, "keras", out=out, max_images=0)  # its own export: nothing to say
    assert "held an export" not in caplog.text


def test_a_cut_short_model_is_called_damaged_not_missing(run_copy: Path, tmp_path: Path, capsys) -> None:
    """A model.keras cut short said 'File not found: filepath=...model.keras. ... zip file..' of a file that exists."""
    from floranet.cli import main

    run = tmp_path / "run"
    shutil.copytree(run_copy, run, ignore=shutil.ignore_patterns("exports", "exports.json"))
    data = (run / "model.keras").read_bytes()
    (run / "model.keras").write_bytes(data[: len(data) // 2])
    assert main(["export", str(run), "--format", "keras", "--max-images", "0"]) != 0
    err = capsys.readouterr().err
    assert "model.keras: the file is damaged (not a .keras zip archive" in err and "not found" not in err


def test_a_command_given_an_export_folder_says_what_it_is(exported, capsys: pytest.CaptureFixture[str]) -> None:
    """`floranet predict RUN/exports/onnx ...` said "... is not a finished floranet run: model.keras is missing", as
    if a file had been lost from a run."""
    from floranet.cli import main

    folder = exported("saved_model").path
    for argv in (["predict", str(folder), str(folder / "README.txt")], ["evaluate", str(folder)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"{folder} is a model exported by `floranet export` (saved_model), not a run directory" in err, err
        assert "missing" not in err
    with pytest.raises(ModelError, match=r"exported by `floranet export` \(saved_model\).*give the run it was"):
        floranet.load(folder)


def test_an_empty_folder_made_for_the_export_is_taken(run_copy: Path, tmp_path: Path) -> None:
    """`mkdir deploy && floranet export RUN --out deploy` was refused: 'out exists and is not a floranet export
    folder', though an empty folder holds nothing to lose."""
    out = tmp_path / "deploy"
    out.mkdir()
    assert export_run(run_copy, "keras", out=out, max_images=0).path == out and (out / "model.keras").is_file()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is not empty and is not a floranet export folder"):
        export_run(run_copy, "keras", out=tmp_path / "mine", max_images=0)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


def test_out_inside_the_run_only_under_exports_and_the_compiled_model_never_replaces_yours(
    run_copy: Path, tmp_path: Path
) -> None:
    """`export RUN --format onnx --out RUN/inference` on a run without a compiled model: the export was placed,
    then compiling the run's model deleted that folder (model.onnx, README.txt, class_names.json) with exit 0 and
    exports.json vouching for it."""
    from floranet.inference import compiled
    from floranet.rundir import RunDir

    run = tmp_path / "run"
    shutil.copytree(run_copy, run, ignore=shutil.ignore_patterns("exports", "exports.json", "inference"))
    for out in (run / "inference", run, run / "exports", run / "plots" / "x"):
        with pytest.raises(ConfigError, match=r"out must be outside the run directory .*under its exports/ folder"):
            export_run(run, "keras", out=out, max_images=2)
    assert not (run / "inference").exists() and not (run / "exports.json").exists()
    mine = run / "inference"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(ModelError, match=r"inference is not a compiled inference model floranet wrote"):
        compiled.compile_run(RunDir(run), RunDir(run).load_model(), _pixels(2))
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_a_model_whose_outputs_are_not_the_runs_classes_is_refused(run_copy: Path, tmp_path: Path) -> None:
    """Only the input shape was checked: a 3-class model.keras in a 10-class run was exported with 10 names in its
    metadata, and 'agreed'."""
    run = tmp_path / "run"
    shutil.copytree(run_copy, run, ignore=shutil.ignore_patterns("exports", "exports.json"))
    (run / "class_names.json").write_text(json.dumps(["daisy", "roses", "tulips", "irises"]))
    with pytest.raises(ModelError, match="names 4 classes but the model outputs 3: the run's files do not belong"):
        export_run(run, "keras", out=tmp_path / "k", max_images=0)
    assert not (tmp_path / "k").exists() and not (run / "exports.json").exists()


# The file each format's runtime reads first, cut short in the damage test.
DAMAGED = {
    "keras": "model.keras",
    "saved_model": "model/saved_model.pb",
    "onnx": "model.onnx",
    "openvino": "model.bin",
    "tflite": "model.tflite",
}


@pytest.mark.parametrize("name", FP32)
def test_a_damaged_export_is_a_model_error_naming_its_file(exported, tmp_path: Path, name: str) -> None:
    """read_metadata, whose docstring promises ModelError, let each runtime's own error through (BadZipFile,
    IndexError, struct.error, RuntimeError); a cut model.keras loaded as 'File not found'; a cut model.tflite
    killed Python (SIGSEGV): LiteRT said 'not a valid Flatbuffer buffer' and tf.lite's interpreter, tried next in
    the same process, crashed. That one runs in a child process, so it cannot take pytest down with it."""
    import subprocess

    copy = tmp_path / name
    shutil.copytree(exported(name).path, copy)
    cut = copy / DAMAGED[name]
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    shown = re.escape(str(copy / export_lib.MODEL_FILES[name]))
    with pytest.raises(ModelError, match=f"Cannot read the metadata of {shown}: the file is damaged"):
        export_lib.metadata.read_metadata(name, copy)
    if name == "keras":
        with pytest.raises(ModelError, match=r"model.keras: the file is damaged \(not a .keras zip archive"):
            load_exported(copy)
    if name == "tflite":
        script = (
            "import sys\nfrom floranet.errors import ModelError\nfrom floranet.export import load_exported\n"
            "try:\n    load_exported(sys.argv[1])\nexcept ModelError as e:\n    print(e)\n"
        )
        src = os.path.dirname(os.path.dirname(floranet.__file__))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run(
            [sys.executable, "-c", script, str(copy)], capture_output=True, text=True, timeout=300, env=env
        )
        assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
        assert f"Cannot load {cut}: the file is damaged or not a TFLite model" in done.stdout


def test_class_names_that_are_one_name_as_exported_are_refused(run_copy: Path, tmp_path: Path) -> None:
    """A folder b'caf\\xe9' (not UTF-8) and one literally named 'caf\\xe9' were exported as the names
    ["caf\\xe9", "caf\\xe9", "tulips"], and the export 'agreed'."""
    names = {"daisy": os.fsdecode(b"caf\xe9"), "roses": "caf\\xe9"}
    run = _renamed_classes(run_copy, tmp_path, names)
    with pytest.raises(ModelError, match=r"class folders b'caf\\xe9' and b'caf\\\\xe9' are both named 'caf\\\\xe9'"):
        export_run(run, "keras", out=tmp_path / "k", max_images=0)
    assert not (tmp_path / "k").exists()


def test_out_inside_another_run_is_refused_and_each_folder_keeps_its_record(run_copy: Path, tmp_path: Path) -> None:
    """An export into OTHER_RUN/exports/keras replaced that run's export, its exports.json still vouching for the
    old one; and exports.json was keyed by the export's name: keras to --out elsewhere dropped the record of
    RUN/exports/keras, which was still there."""
    run, other = tmp_path / "run", tmp_path / "other"
    for folder in (run, other):
        shutil.copytree(run_copy, folder, ignore=shutil.ignore_patterns("exports", "exports.json"))
    theirs = export_run(other, "keras", max_images=0).path
    before = (theirs / "README.txt").read_bytes()
    for out in (theirs, other / "exports" / "new", other / "deploy"):
        with pytest.raises(ConfigError, match=r"out must be outside another floranet run \(.*other"):
            export_run(run, "keras", out=out, max_images=0)
    assert (theirs / "README.txt").read_bytes() == before and not (run / "exports.json").exists()
    # An exports.json of before (keyed by name) is read, and an export of the same name elsewhere kept beside it.
    old = {"keras": {"format": "keras", "path": "exports/keras", "agrees": None}}
    (run / "exports.json").write_text(json.dumps(old))
    (run / "exports" / "keras").mkdir(parents=True)
    export_run(run, "keras", out=tmp_path / "deploy", max_images=0)
    entries = json.loads((run / "exports.json").read_text())
    assert sorted(entries) == sorted(["exports/keras", str(tmp_path / "deploy")])
    assert entries["exports/keras"] == {"name": "keras", **old["keras"]}
    assert entries[str(tmp_path / "deploy")]["name"] == "keras"


def test_an_earlier_export_of_any_format_is_replaced_and_yours_refused_before_building(
    run_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """keras into the folder of a saved_model export was refused, after the whole conversion and check, for the
    earlier export's own files ('things it does not write (model, model/assets, ...)'), and a file of yours was
    found only after the conversion too. The README.txt of an export now lists its files."""
    out = tmp_path / "deploy"
    export_run(run_copy, "saved_model", out=out, max_images=0)
    readme = (out / "README.txt").read_text()
    assert "\nFiles of this export" in readme and "\n  model/saved_model.pb\n" in readme
    export_run(run_copy, "keras", out=out, max_images=0)
    left = {p.name for p in out.iterdir()} - {"ood.json", "ood.npz"}
    assert left == {"README.txt", "class_names.json", "model.keras"}
    # An export from before README.txt listed its files: its format's model file is known as its own.
    (out / "README.txt").write_text((out / "README.txt").read_text().split("\nFiles of this export")[0])
    export_run(run_copy, "saved_model", out=out, max_images=0)
    assert (out / "model" / "saved_model.pb").is_file() and not (out / "model.keras").exists()
    (out / "model" / "notes.txt").write_text("mine")
    built: list[str] = []
    monkeypatch.setitem(export_lib.writers.WRITERS, "keras", lambda *args: built.append("keras") or "")
    with pytest.raises(ConfigError, match=r"holds an earlier export and things it does not write \(model/notes.txt\)"):
        export_run(run_copy, "keras", out=out, max_images=0)
    assert not built and (out / "model" / "notes.txt").read_text() == "mine"


def test_recording_an_export_on_a_file_system_without_locks_is_an_output_error(tmp_path, monkeypatch) -> None:
    """The run lock refuses a file system without flock (NFS without lockd) with an OutputError, which export
    passes by for a read-only run; exports.json's own lock then raised the raw OSError (Errno 37) after a whole
    export. Now it is an OutputError naming exports.json, which export turns into a warning."""
    import errno
    import fcntl

    from floranet.errors import OutputError
    from floranet.export import record

    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(OutputError, match=r"exports\.json: No locks available"), record.locked(tmp_path):
        pass


def test_a_run_that_is_not_ours_to_write_is_exported_elsewhere_and_left_as_it_is(
    writable_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A read-only run without a usable inference model was exported, then export compiled that model into the
    run and failed with a raw OSError traceback (exit 1, "does not agree") though the export was complete. A file
    system that cannot lock files was passed by the same way, and the run then written without its lock."""
    import errno

    from floranet.errors import OutputError
    from floranet.rundir import RunDir

    shutil.rmtree(writable_run / RunDir.COMPILED)
    before = sorted(p.relative_to(writable_run) for p in writable_run.rglob("*"))

    def refused(code: int, why: str):
        def lock(self: RunDir, **kwargs: object):
            raise OutputError(self.path / RunDir.LOCK, OSError(code, why))

        return lock

    monkeypatch.setattr(RunDir, "lock", refused(errno.EROFS, "Read-only file system"))
    r = export_run(writable_run, "keras", out=tmp_path / "ro", max_images=4)
    assert (r.path / "model.keras").exists() and r.agrees
    assert "the run is not writable here, so it was left as it was" in caplog.text
    assert sorted(p.relative_to(writable_run) for p in writable_run.rglob("*")) == before  # no inference/, no record
    monkeypatch.setattr(RunDir, "lock", refused(errno.ENOLCK, "No locks available"))
    with pytest.raises(OutputError, match="No locks available"):
        export_run(writable_run, "keras", out=tmp_path / "nolock", max_images=4)
    assert not (tmp_path / "nolock").exists()


def test_a_full_disk_while_the_export_is_written_is_an_output_error(
    run_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No space left while the labels were written into the model file was a raw OSError traceback (exit 1)."""
    import errno

    from floranet.errors import OutputError

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export_lib.exporter.metadata, "embed_and_verify", full)
    out = tmp_path / "full"
    with pytest.raises(OutputError, match=f"Cannot write {re.escape(str(out))}: No space left on device"):
        export_run(run_copy, "keras", out=out, max_images=0)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".full")]


def test_two_exports_of_two_runs_into_one_out_take_turns(
    run_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Run A and run B exported into one --out at once: each held only its own run, read the folder's owner before
    building, and both exited 0 with A's exports.json listing the folder that held B's export (or the second rename
    failed, ENOTEMPTY). The folder's lock (beside it) makes the second wait, then replace the first and say so."""
    import threading

    from floranet.utils import locks

    run_a, run_b, out = tmp_path / "a", tmp_path / "b", tmp_path / "shared"
    lock = tmp_path / ".shared.lock"  # beside the folder: inside, it would be taken for a file of the user's
    for folder in (run_a, run_b):
        shutil.copytree(run_copy, folder, ignore=shutil.ignore_patterns("exports", "exports.json"))
    lock.write_text("999999\n")  # left by a killed export: taken over, then removed
    building, go, waiting = threading.Event(), threading.Event(), threading.Event()
    write_keras = export_lib.writers.WRITERS["keras"]

    def slow(model: object, source: object, folder: Path, *args: object) -> str:
        if source.path == run_a:  # type: ignore[attr-defined]
            building.set()
            go.wait(60)
        return write_keras(model, source, folder, *args)

    real_wait = locks._wait_for

    def wait_for(*args: object) -> None:
        waiting.set()
        real_wait(*args)  # type: ignore[arg-type]

    monkeypatch.setitem(export_lib.writers.WRITERS, "keras", slow)
    monkeypatch.setattr(locks, "_wait_for", wait_for)
    first = threading.Thread(target=export_run, args=(run_a, "keras"), kwargs={"out": out, "max_images": 0})
    second = threading.Thread(target=export_run, args=(run_b, "keras"), kwargs={"out": out, "max_images": 0})
    first.start()
    assert building.wait(60)  # A builds, holding the folder
    second.start()
    while not waiting.is_set() and second.is_alive():  # B waits for it (without the lock: B built and placed)
        second.join(0.05)
    go.set()
    first.join(60)
    second.join(60)
    listing = [r.name for r in (run_a, run_b) if str(out) in json.loads((r / "exports.json").read_text())]
    assert listing == ["b"] and f"Source:    {run_b / 'model.keras'}" in (out / "README.txt").read_text()
    assert f"held an export of another run, {run_a}, now replaced; its exports.json no longer lists it" in caplog.text
    assert not lock.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "shared"]
