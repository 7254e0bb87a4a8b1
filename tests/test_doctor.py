"""The dataset doctor, on a generated corpus of every odd and broken case."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from corpus import CLASSES, EMPTY_CLASS, LOCKED, NON_UTF8_PATH, deny_locked_reads, make_corpus, snapshot
from floranet.data import doctor, images
from floranet.errors import ConfigError, DatasetError


@pytest.fixture
def corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "data"
    root.mkdir()
    expected = make_corpus(root)
    deny_locked_reads(monkeypatch)
    return root, expected


def two_classes(root: Path, names: tuple[str, ...] = ("a", "b"), per_class: int = 2) -> Path:
    rng = np.random.default_rng(7)
    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_every_path_gets_its_expected_status(corpus) -> None:
    root, expected = corpus
    report = doctor.diagnose(root)
    got = {f.path: f.status for f in report.files}
    assert got == expected
    assert [f.path for f in report.files] == sorted(got)
    assert report.usable and report.reason == ""


def test_reasons_labels_and_hashes(corpus) -> None:
    root, _ = corpus
    files = {f.path: f for f in doctor.diagnose(root).files}
    reasons = {
        "daisy/dup_b.jpg": "duplicate of daisy/dup_a.jpg",
        "daisy/conflict.png": "label conflict: identical to roses/conflict.png",
        "roses/conflict.png": "label conflict: identical to daisy/conflict.png",
        "daisy/loop": "symlink loop",
        "roses/broken.jpg": "broken symlink",
        LOCKED: "unreadable: permission denied",
        "README.txt": "not inside a class folder",
        "daisy/notes.txt": "not an image file extension (.txt)",
        ".ipynb_checkpoints": "hidden folder (not scanned)",
        ".DS_Store": "hidden file",
        "roses/empty.jpg": "empty file (0 bytes)",
        "roses/text.jpg": "not a supported image (content is not one of JPEG, PNG, GIF, BMP, WEBP, TIFF, MPO)",
        "daisy/exif6.jpg": "EXIF orientation 6 applied",
        "roses/anim.gif": "animated GIF: first frame used",
    }
    for path, reason in reasons.items():
        assert files[path].reason == reason, path
    assert "looks like JPEG" in files["daisy/photo.dat"].reason
    assert (
        files["roses/fake.heic"].reason.startswith("unsupported format HEIC")
        and "JPEG" in files["roses/fake.heic"].reason
    )
    assert "400.0 MP exceeds the limit of 50.0 MP (max_pixels); raise max_pixels" in files["roses/bomb.png"].reason
    assert files["roses/truncated.jpg"].reason.startswith("truncated")
    for f in files.values():
        assert (f.label is None) == (f.status == "ignored"), f.path
        assert (f.reason == "") == (f.status == "ok"), f.path
        if f.status in ("ok", "note"):
            assert f.sha256 == hashlib.sha256((root / f.path).read_bytes()).hexdigest()
            assert f.width and f.height
        else:
            assert not f.tf_decodable
    assert files["roses/empty.jpg"].sha256 == hashlib.sha256(b"").hexdigest()  # read, then refused
    assert files["daisy/d0.jpg"].tf_decodable and not files["daisy/cmyk.jpg"].tf_decodable
    assert files["daisy/nested/deep.png"].label == "daisy"
    assert files[NON_UTF8_PATH].status == "ok" and (root / NON_UTF8_PATH).exists()


def test_classes_counts_summary_and_duplicates(corpus) -> None:
    root, expected = corpus
    report = doctor.diagnose(root)
    usable = Counter(p.split("/")[0] for p, s in expected.items() if s in ("ok", "note"))
    assert report.classes == {c: usable[c] for c in sorted([*CLASSES, EMPTY_CLASS])}
    assert list(report.classes) == sorted(report.classes) and report.classes[EMPTY_CLASS] == 0
    assert report.duplicates == (("daisy/conflict.png", "roses/conflict.png"), ("daisy/dup_a.jpg", "daisy/dup_b.jpg"))
    assert [f.path for f in report.usable_files()] == sorted(p for p, s in expected.items() if s in ("ok", "note"))
    s = report.summary()
    status = Counter(expected.values())
    assert (s["num_files"], s["num_usable"], s["num_bad"], s["num_notes"], s["num_ignored"]) == (
        len(expected),
        status["ok"] + status["note"],
        status["bad"],
        status["note"],
        status["ignored"],
    )
    assert s["num_classes"] == 4 and s["empty_classes"] == [EMPTY_CLASS]
    assert s["imbalance_ratio"] == pytest.approx(max(usable.values()) / min(usable.values()), abs=1e-3)
    assert (s["duplicates_within_class"], s["label_conflicts"]) == (1, 2)
    assert s["width"] == {"min": 30, "median": 40, "max": 40} and s["height"]["max"] == 40


def test_diagnose_changes_nothing_and_is_fast(corpus, tmp_path) -> None:
    root, _ = corpus
    before = snapshot(root)
    start = time.perf_counter()
    report = doctor.diagnose(root, workers=4)
    elapsed = time.perf_counter() - start
    report.write_json(tmp_path / "report.json")
    assert snapshot(root) == before
    assert elapsed < 5.0  # the 400 MP bomb is refused from its header, never decoded


def test_workers_and_progress_do_not_change_the_result(corpus, capsys) -> None:
    root, _ = corpus
    serial = doctor.diagnose(root, workers=1)
    assert doctor.diagnose(root, workers=3, progress=True) == serial
    assert "Checking images" in capsys.readouterr().err
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ConfigError, match=r"workers must be a positive int or None\. Received: workers="):
            doctor.diagnose(root, workers=bad)
    with pytest.raises(ConfigError, match=r"max_pixels must be a positive int\. Received: max_pixels=-3"):
        doctor.diagnose(root, max_pixels=-3)
    # Checked once, before any file: a huge limit made every image "cannot be decoded (ConfigError ...)".
    with pytest.raises(ConfigError, match=r"max_pixels must be below 2\*\*31\. Received: max_pixels=10000000000"):
        doctor.diagnose(root, max_pixels=10**10)


def test_json_report(corpus, tmp_path) -> None:
    root, _ = corpus
    report = doctor.diagnose(root)
    out = tmp_path / "out" / "doctor.json"
    out.parent.mkdir()
    report.write_json(out)
    report.write_json(out)  # replaces the earlier report atomically, leaves no temp file behind
    assert os.listdir(out.parent) == ["doctor.json"]
    data = json.loads(out.read_text(encoding="utf-8"))
    assert set(data) == {"data_dir", "classes", "files", "duplicates", "summary", "usable", "reason", "warnings"}
    assert data["usable"] is True and data["classes"][EMPTY_CLASS] == 0
    assert all(set(f) == {"path", "label", "status", "reason", "sha256", "width", "height"} for f in data["files"])
    paths = {f["path"]: f for f in data["files"]}
    assert paths["daisy/caf\\xe9.jpg"]["status"] == "ok"  # undecodable bytes shown, not lost
    assert data["summary"]["num_bad"] == report.summary()["num_bad"]
    with pytest.raises(ConfigError, match="does not exist"):
        report.write_json(tmp_path / "missing" / "doctor.json")


def test_format_text(corpus) -> None:
    root, _ = corpus
    text = doctor.diagnose(root).format_text()
    text.encode("utf-8")  # printable: no lone surrogates from the non-UTF-8 name
    first_bad, first_note = text.index("BAD "), text.index("NOTE ")
    assert first_bad < first_note < text.index("Classes") < text.index("Summary") < text.index("Verdict: usable")
    assert "sunflowers" in text and "(empty)" in text
    short = doctor.diagnose(root).format_text(max_rows=3)
    assert "... and " in short and short.count("BAD ") == 3


def test_one_class_is_not_usable(tmp_path) -> None:
    root = two_classes(tmp_path / "data", names=("roses",))
    (root / "empty").mkdir()
    report = doctor.diagnose(root)
    assert not report.usable
    assert report.reason == (
        "only 1 class with usable images ('roses'): nothing to classify; a dataset needs at least 2 class folders"
    )
    assert report.classes == {"empty": 0, "roses": 2}


def test_zero_classes_is_not_usable(tmp_path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "photo.jpg").write_bytes(b"")
    report = doctor.diagnose(root)
    assert not report.usable and report.classes == {}
    assert report.reason.startswith("no class folders in ") and "at least 2 class folders" in report.reason
    (root / "a").mkdir()
    (root / "b").mkdir()
    (root / "a" / "x.jpg").write_bytes(b"junk")
    report = doctor.diagnose(root)
    assert not report.usable and report.reason.startswith("no class has usable images (2 class folder(s)")
    assert report.format_text().endswith(f"Verdict: NOT usable: {report.reason}")


def test_bad_data_dir(tmp_path) -> None:
    with pytest.raises(DatasetError, match=r"data_dir does not exist\. Received: data_dir='.*nowhere'"):
        doctor.diagnose(tmp_path / "nowhere")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"not a file\. Received: data_dir='.*file\.txt'"):
        doctor.diagnose(tmp_path / "file.txt")


def test_a_crashing_decoder_becomes_a_bad_file(tmp_path, monkeypatch) -> None:
    root = two_classes(tmp_path / "data")
    real = images.inspect_image_bytes

    def flaky(data, *, name, max_pixels):
        if name == "a/0.png":
            raise RuntimeError("decoder exploded")
        return real(data, name=name, max_pixels=max_pixels)

    monkeypatch.setattr(images, "inspect_image_bytes", flaky)
    files = {f.path: f for f in doctor.diagnose(root).files}
    assert files["a/0.png"].status == "bad" and "decoder exploded" in files["a/0.png"].reason
    assert files["a/1.png"].status == "ok"


def test_symlinked_class_folders_are_not_scanned_twice(tmp_path) -> None:
    root = two_classes(tmp_path / "data")
    os.symlink("a", root / "c")  # a class folder that is another class
    os.symlink("../b", root / "a" / "into_b")  # a sub-folder that is another class
    os.symlink("..", root / "b" / "up")  # back to data_dir
    report = doctor.diagnose(root)
    files = {f.path: f for f in report.files}
    assert report.classes == {"a": 2, "b": 2}
    assert files["c"].reason == files["a/into_b"].reason == "symlink to a folder already scanned"
    assert files["b/up"].reason == "symlink loop"


def test_an_alias_never_takes_over_the_folder_it_names(tmp_path) -> None:
    root = two_classes(tmp_path / "data", ("roses", "tulips"))
    os.symlink("tulips", root / "Tulip")  # sorts before the real folder
    os.symlink("b", root / "roses" / "a_alias")
    (root / "roses" / "b").mkdir()
    report = doctor.diagnose(root)
    files = {f.path: f for f in report.files}
    assert report.classes == {"roses": 2, "tulips": 2}
    assert files["Tulip"].reason == files["roses/a_alias"].reason == "symlink to a folder already scanned"


def test_broken_entries_at_the_top_are_findings_not_crashes(tmp_path) -> None:
    root = two_classes(tmp_path / "data")
    os.symlink("loop", root / "loop")  # ELOOP where the entry is examined
    os.symlink("missing", root / "gone")
    os.symlink("missing.txt", root / "a" / "notes.txt")  # not an image: nothing to count as unusable
    (root / "a" / "@eaDir" / "0.png").mkdir(parents=True)  # a Synology NAS's thumbnails
    Image.new("RGB", (8, 8)).save(root / "a" / "@eaDir" / "0.png" / "SYNOFILE_THUMB_S.jpg")
    report = doctor.diagnose(root)
    files = {f.path: (f.status, f.reason) for f in report.files}
    assert report.classes == {"a": 2, "b": 2}
    assert files["loop"] == ("ignored", "symlink loop")
    assert files["gone"] == files["a/notes.txt"] == ("ignored", "broken symlink")
    assert files["a/@eaDir"] == ("ignored", "system folder (not scanned)")
    assert not [f for f in report.files if f.status == "bad"]


def test_one_name_in_two_unicode_forms_is_refused(tmp_path) -> None:
    root = two_classes(tmp_path / "data", ("caf\u00e9", "cafe\u0301", "Roses", "roses"))
    report = doctor.diagnose(root)
    assert not report.usable
    assert "'cafe\\u0301' and 'caf\\xe9' are one name written in two Unicode forms" in report.reason
    # Case alone is a real difference (handwriting sets have "A" and "a").
    assert doctor.diagnose(two_classes(tmp_path / "cased", ("A", "a"))).usable


@pytest.mark.parametrize(
    "twin", ["tulips ", " tulips", "tulips\u00a0", "tul\u200bips", "tu\ufefflips", "tulips\t", "\uff54ulips"]
)
def test_class_names_that_differ_only_by_invisible_characters_are_refused(tmp_path, twin) -> None:
    """A trailing space, a no-break space, a zero-width space, a full-width letter: two classes that look the same
    in every table and answer (class_names.json was ["tulips", "tulips "]); only NFC forms were compared."""
    root = two_classes(tmp_path / "data", ("roses", "tulips", twin))
    report = doctor.diagnose(root)
    assert not report.usable
    a, b = sorted(["tulips", twin])
    assert (
        f"class folders {ascii(a)} and {ascii(b)} differ only by white space, invisible characters or Unicode "
        "compatibility forms: they look the same in every report and answer; rename one" in report.reason
    )
    # Spaces inside a name are seen: "red roses" and "redroses" are two classes.
    assert doctor.diagnose(two_classes(tmp_path / "spaced", ("red roses", "redroses"))).usable


def test_class_names_that_differ_only_by_case_are_usable_with_a_warning(tmp_path) -> None:
    """Roses/ and roses/ are two classes here, but one folder on macOS and Windows: said, not refused."""
    report = doctor.diagnose(two_classes(tmp_path / "data", ("Roses", "roses", "tulips")))
    assert report.usable
    warning = (
        "class folders 'Roses' and 'roses' differ only by case: two classes here, but one folder on a "
        "case-insensitive file system (macOS and Windows by default)"
    )
    assert len(report.warnings) == 1 and report.warnings[0].startswith(warning)
    assert report.to_dict()["warnings"] == list(report.warnings)
    assert f"Warning: {warning}" in report.format_text()
    assert doctor.diagnose(two_classes(tmp_path / "plain", ("roses", "tulips"))).warnings == ()


def test_a_bad_extra_formats_setting_is_one_error_not_every_file_bad(tmp_path, monkeypatch) -> None:
    from floranet.data import formats

    root = two_classes(tmp_path / "data")
    monkeypatch.setenv(formats.EXTRA_FORMATS_ENV, "EPS")
    with pytest.raises(ConfigError, match="may name AVIF, HEIF"):
        doctor.diagnose(root)
    with pytest.raises(ConfigError, match="may name AVIF, HEIF"):
        images.decode_image_bytes((root / "a" / "0.png").read_bytes())


def test_find_leaks(corpus) -> None:
    root, _ = corpus
    report = doctor.diagnose(root)
    split_of = {
        "daisy/dup_a.jpg": "train",
        "daisy/dup_b.jpg": "validation",
        "daisy/d0.jpg": "train",
        "daisy/d1.jpg": "validation",
        "roses/r0.jpg": "validation",
    }
    assert doctor.find_leaks(report, split_of) == [("daisy/dup_a.jpg", "daisy/dup_b.jpg")]
    assert doctor.find_leaks(report, {"daisy/dup_a.jpg": "train", "daisy/dup_b.jpg": "train"}) == []
    with pytest.raises(ConfigError, match=r"Received: split_of\['daisy/d0.jpg'\]='test'"):
        doctor.find_leaks(report, {"daisy/d0.jpg": "test"})


def test_the_json_report_replaces_only_an_earlier_report_outside_the_data_folder(tmp_path, capsys) -> None:
    """`floranet doctor DATA --json FILE` overwrote any file: a photo of the folder it checked, or a user's notes."""
    from floranet.cli import main
    from imagesets import make_image_folder

    data = make_image_folder(tmp_path / "data", classes=2, per_class=3)
    photo = sorted((data / "class_0").iterdir())[0]
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    kept = {photo: photo.read_bytes(), notes: notes.read_bytes()}
    for target, needle in ((photo, "json must be outside the data folder"), (notes, "not a doctor report")):
        assert main(["doctor", str(data), "--json", str(target)]) == 2
        assert needle in capsys.readouterr().err
    assert {p: p.read_bytes() for p in kept} == kept
    report = tmp_path / "doctor.json"
    for _ in range(2):  # new, then an earlier report replaced
        assert main(["doctor", str(data), "--json", str(report)]) == 0
    assert json.loads(report.read_text())["usable"] is True


def test_the_printout_names_ignored_files_that_may_have_been_meant_as_images(tmp_path) -> None:
    """Only the JSON said which files were ignored, and why: an image beside the class folders, or a JPEG named
    .img ("rename it to use it"), was a bare count in the printout."""
    from imagesets import make_image_folder

    root = make_image_folder(tmp_path / "data", classes=2, per_class=3)
    Image.new("RGB", (20, 20), "red").save(root / "stray.jpg")
    Image.new("RGB", (20, 20), "red").save(root / "class_0" / "photo.img", "JPEG")
    (root / "README.txt").write_text("about my photos")
    (root / "class_1" / "notes.txt").write_text("x")
    os.mkfifo(root / "pipe")  # never opened to look at (it would block)
    text = doctor.diagnose(root).format_text()
    section = text[text.index("Ignored, perhaps meant as images (2):") : text.index("Classes")]
    assert "stray.jpg" in section and "not inside a class folder" in section
    assert "class_0/photo.img" in section and "rename it to use it" in section
    assert "README.txt" not in section and "notes.txt" not in section and "pipe" not in section
    assert "5 ignored" in text


def test_a_jpeg_damaged_mid_file_is_bad(tmp_path) -> None:
    """A JPEG cut in the middle but ending in an end-of-image marker, or with bytes changed mid-file, was usable:
    Pillow (and TensorFlow) decode it without an error to pixels partly grey or garbage, and train trained on them."""
    from imagesets import make_image_folder

    root = make_image_folder(tmp_path / "data", classes=2, per_class=3, size=(128, 96))
    cut, changed = root / "class_0" / "img_000.jpg", root / "class_0" / "img_001.jpg"
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 2] + b"\xff\xd9")
    data = bytearray(changed.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = b"\x5a" * 64
    changed.write_bytes(bytes(data))
    for path in (cut, changed):  # what the doctor used to see: nothing wrong
        with Image.open(path) as im:
            im.load()
    report = doctor.diagnose(root)
    files = {f.path: f for f in report.files}
    assert files["class_0/img_000.jpg"].status == "bad"
    assert files["class_0/img_000.jpg"].reason.startswith("corrupt JPEG data: premature end of data segment")
    assert files["class_0/img_001.jpg"].status == "bad"
    assert files["class_0/img_001.jpg"].reason.startswith("corrupt JPEG data: ")
    assert [f.status for f in report.files].count("ok") == 4 and report.classes == {"class_0": 1, "class_1": 3}
