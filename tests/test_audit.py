"""The label audit: flipped labels, near-duplicates and outliers found; outputs; --exclude and --relabel."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from floranet import config
from floranet.data.curation import Curation, read_exclude, read_relabel
from floranet.errors import ConfigError, DatasetError
from floranet.evaluation.audit import AuditData, run_audit
from floranet.evaluation.audit_report import to_csv
from floranet.evaluation.duplicates import similar_pairs
from floranet.evaluation.labels import group_ids
from floranet.rundir import RunDir
from imagesets import TINY_MODEL, make_image_folder

# A head that learns the colour classes of imagesets from random-init ResNet-20 features in a few seconds,
# and one for the separable embeddings of the unit tests.
HEAD = {"preset": "tutorial", "epochs": 30, "batch_size": 8}
FAST = {"preset": "tutorial", "epochs": 6, "batch_size": 16}
TINY = TINY_MODEL


def _clusters(seed: int = 0, per_class: int = 30, classes: int = 3, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Separable embeddings: one Gaussian blob per class (the last row of the result: the class centres)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 5, size=(classes, dim))
    labels = np.repeat(np.arange(classes), per_class)
    return (centres[labels] + rng.normal(0, 1, size=(len(labels), dim))).astype(np.float32), labels


def _centres(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.stack([x[y == c].mean(axis=0) for c in np.unique(y)])


def _data(features: np.ndarray, labels: np.ndarray, splits: list[str] | None = None) -> AuditData:
    n = len(labels)
    return AuditData(
        tuple(f"c{labels[i]}/img_{i:03d}.jpg" for i in range(n)),
        np.asarray(labels),
        tuple(splits or ["train"] * n),
        tuple(f"{i:064x}" for i in range(n)),
        features,
        tuple(f"c{c}" for c in range(int(labels.max()) + 1)),
    )


def test_flipped_labels_rank_first_on_separable_embeddings() -> None:
    x, y = _clusters()
    noisy = y.copy()
    flipped = [3, 40, 77]
    for i in flipped:
        noisy[i] = (y[i] + 1) % 3
    cfg = config.resolve(data_dir="d", out="o", **FAST)
    result = run_audit(_data(x, noisy), cfg, say=lambda m: None)
    data = result.data
    assert set(result.label_ranking()[:3]) == {data.paths[i] for i in flipped}
    issues = result.of_kind("label_issue")
    assert {f.file for f in issues} >= {data.paths[i] for i in flipped}
    suggested = {f.file: f.suggested_label for f in issues}
    assert all(suggested[data.paths[i]] == f"c{y[i]}" for i in flipped)


def test_near_duplicates_conflicts_and_leaks() -> None:
    x, y = _clusters(per_class=20)
    rng = np.random.default_rng(1)
    # Three copies: slightly perturbed (as a re-encoded photo), one in another class, one across the split.
    copies = x[[0, 1, 2]] + rng.normal(0, 0.01, size=(3, x.shape[1])).astype(np.float32)
    features = np.concatenate([x, copies])
    labels = np.concatenate([y, [1, 0, 0]])  # copy of 0 → class 1 (conflict); 1, 2 stay in class 0
    splits = ["train"] * len(x) + ["train", "validation", "train"]
    pairs, _ = similar_pairs(features, 0.999)
    n = len(x)
    assert {(i, j) for i, j, _ in pairs} == {(0, n), (1, n + 1), (2, n + 2)}
    cfg = config.resolve(data_dir="d", out="o", **FAST)
    result = run_audit(_data(features, labels, splits), cfg, duplicate_similarity=0.999, say=lambda m: None)
    kinds = {(f.file, f.other_file): f.kind for f in result.findings if f.kind.startswith("duplicate")}
    p = result.data.paths
    assert kinds[(p[n + 1], p[1])] == "duplicate_leak"  # the validation copy is the one to leave out
    assert [k for pair, k in kinds.items() if set(pair) == {p[2], p[n + 2]}] == ["duplicate"]
    conflict = [f for f in result.findings if f.kind == "duplicate_conflict"]
    assert len(conflict) == 1 and {conflict[0].file, conflict[0].other_file} == {p[0], p[n]}


def test_byte_identical_copies_do_not_hide_other_near_duplicates() -> None:
    """The whitening and the threshold were measured on every row: five copies of one file (the doctor allows
    them within a class) skewed both, and a re-encoded copy of another image, found without them, was not."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 256)).astype(np.float32)
    copy = x[[0]] + rng.normal(0, 0.8, (1, 256)).astype(np.float32)  # a re-encoded copy of image 0
    features = np.concatenate([x, copy, np.repeat(x[[5]], 5, axis=0)])  # and five copies of image 5's file
    groups = np.array([*range(41), *[5] * 5])
    pairs, _ = similar_pairs(features, groups=groups)
    found = {(i, j) for i, j, _ in pairs}
    assert (0, 40) in found
    copies = [5, *range(41, 46)]
    assert not {(i, j) for i in copies for j in copies if i < j} & found  # listed by pair_findings, once each
    assert (0, 40) not in {(i, j) for i, j, _ in similar_pairs(features)[0]}  # measured on every row: missed


def test_a_group_of_byte_identical_files_is_one_row_per_copy_and_exclude_keeps_one() -> None:
    """Every pair of copies was a row: 1,000 copies of one file made 500,000 rows (21.7 MB of audit.csv). Each
    copy is now one row against the copy kept, and leaving out every row's file keeps exactly one."""
    from floranet.evaluation.audit import pair_findings

    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 64)).astype(np.float32)
    near = x[[0]] + rng.normal(0, 0.3, (1, 64)).astype(np.float32)  # a re-encoded copy of image 0, not identical
    features = np.concatenate([x, near, np.repeat(x[[0]], 40, axis=0)])  # and 40 byte-identical copies of it
    n = len(features)
    sha = [f"{i:064x}" for i in range(31)] + [f"{0:064x}"] * 40
    data = AuditData(
        tuple(f"c/{i:03d}.jpg" for i in range(n)),
        np.zeros(n, np.int64),
        ("train",) * n,
        tuple(sha),
        features,
        ("c",),
    )
    pairs, _ = similar_pairs(features, groups=group_ids(sha, n))
    quality = np.full(n, 0.5, np.float32)
    quality[35] = 0.9  # the most trustworthy label of the group: the copy kept
    rows = pair_findings(data, pairs, quality, group_ids(sha, n))
    group = {data.paths[i] for i in (0, *range(31, n))}
    copies = [r for r in rows if r.file in group and r.other_file in group]
    assert len(copies) == 40 and {r.other_file for r in copies} == {"c/035.jpg"} and {r.score for r in copies} == {1.0}
    assert len([r for r in rows if data.paths[30] in (r.file, r.other_file)]) == 41  # the near copy: every copy
    left_out = {r.file for r in rows}
    assert (group | {data.paths[30]}) - left_out == {"c/035.jpg"}


def test_outlier_far_from_every_class_is_flagged() -> None:
    x, y = _clusters(per_class=25)
    far = -_centres(x, y).sum(axis=0, keepdims=True)  # pointing away from every class
    features = np.concatenate([x, far])
    labels = np.concatenate([y, [0]])
    cfg = config.resolve(data_dir="d", out="o", **FAST)
    result = run_audit(_data(features, labels), cfg, say=lambda m: None)
    outliers = result.of_kind("outlier")
    assert outliers and outliers[0].file == result.data.paths[-1]
    assert len(outliers) <= 3


def test_a_copy_in_a_class_left_out_of_the_label_check_is_the_one_left_out() -> None:
    """An image of a class of one, left out of the label check, had label quality 1.0: its near-duplicate in a
    class of 11 (quality below 1) was the copy audit.csv left out, and --exclude audit.csv dropped the checked one."""
    x, y = _clusters(per_class=11, classes=2)
    features, labels = np.concatenate([x, x[[0]]]), np.concatenate([y, [2]])  # a copy of image 0, alone in c2
    result = run_audit(_data(features, labels), config.resolve(data_dir="d", out="o", **FAST), say=lambda m: None)
    assert result.facts["label_check_left_out"] == ["c2"]
    conflicts = [(f.file, f.other_file) for f in result.of_kind("duplicate_conflict")]
    assert conflicts == [(result.data.paths[-1], result.data.paths[0])]


def test_audit_of_a_data_folder_end_to_end(tmp_path: Path, monkeypatch) -> None:
    from floranet.cli import main

    data = make_image_folder(tmp_path / "data", classes=3, per_class=12, names=["a", "b", "c"])
    shutil.move(data / "a" / "img_000.jpg", data / "b" / "moved.jpg")  # a red image filed under green
    from PIL import Image

    Image.open(data / "c" / "img_003.jpg").save(data / "a" / "copy.jpg", quality=80)  # re-encoded, other class
    before = sorted(p.read_bytes() for p in data.rglob("*.jpg"))
    out = tmp_path / "audit"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in {**TINY, **HEAD}.items()]
    assert main(["audit", str(data), "--out", str(out), *flags]) == 0
    run = RunDir(out)
    for name in (RunDir.AUDIT, RunDir.AUDIT_CSV, RunDir.AUDIT_HTML, RunDir.SPLIT, RunDir.CONFIG):
        assert run.exists(name), name
    rows = list(csv.DictReader(io.StringIO((out / RunDir.AUDIT_CSV).read_text())))
    assert list(rows[0]) == ["file", "kind", "score", "given_label", "suggested_label", "other_file", "split"]
    conflict = sorted((r for r in rows if r["kind"] == "duplicate_conflict"), key=lambda r: -float(r["score"]))
    assert {conflict[0]["file"], conflict[0]["other_file"]} == {"a/copy.jpg", "c/img_003.jpg"}  # the most similar
    audit = json.loads((out / RunDir.AUDIT).read_text())
    ranking = sorted(audit["label_quality"], key=audit["label_quality"].get)
    assert set(ranking[:2]) == {"b/moved.jpg", "a/copy.jpg"}  # both are filed under the wrong colour
    # The photo galleries are embedded as JPEG, smaller than their PNG (2.0 MB of a 3.0 MB report on 300 photos)
    import base64
    import re

    page = (out / RunDir.AUDIT_HTML).read_text()
    embedded = [base64.b64decode(b) for b in re.findall(r"data:image/jpeg;base64,([A-Za-z0-9+/=]+)", page)]
    pngs = sorted(run.plot("").glob("audit_*.png"))
    assert embedded and len(embedded) == len(pngs) and "data:image/png" not in page
    assert sum(map(len, embedded)) < sum(p.stat().st_size for p in pngs)
    assert "td{overflow-wrap:anywhere}" in page  # a long file name wraps in its cell, not past the page
    assert sorted(p.read_bytes() for p in data.rglob("*.jpg")) == before  # nothing moved or changed
    with pytest.raises(ConfigError, match="outside the data folder"):
        from floranet.workflows.audit import audit as audit_fn

        audit_fn(data, out=data / "audit", **TINY)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(ConfigError, match="not empty and not a floranet run"):  # --out never writes over others'
        audit_fn(data, out=foreign, **TINY)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    # Weights that cannot be had are said before the earlier audit's settings and split are replaced
    from floranet.errors import WeightsError

    earlier = {name: (out / name).read_bytes() for name in (RunDir.CONFIG, RunDir.SPLIT)}
    with pytest.raises(WeightsError, match="existing weights file"):
        audit_fn(data, out=out, **{**TINY, "weights": str(tmp_path / "missing.h5")})
    assert {name: (out / name).read_bytes() for name in earlier} == earlier
    # Another folder of the same name would share runs/audit-<name>: the earlier audit was silently replaced
    monkeypatch.chdir(tmp_path)
    shared = audit_fn(data, **TINY).run.path
    assert shared.resolve() == (tmp_path / "runs" / "audit-data").resolve()
    twin = make_image_folder(tmp_path / "elsewhere" / "data", classes=2, per_class=6)
    audit_csv = (shared / RunDir.AUDIT_CSV).read_bytes()
    with pytest.raises(ConfigError, match="out holds the audit of another data folder"):
        audit_fn(twin, **TINY)
    assert (shared / RunDir.AUDIT_CSV).read_bytes() == audit_csv
    assert audit_fn(data, **TINY).run.path == shared  # the same folder's audit again: replaced, as before
    with pytest.raises(ConfigError, match=r"is a run: its own settings and folder are used. Received: seed=3"):
        audit_fn(out, seed=3)  # an audit folder is audited as a run: the setting was named as out=None


def test_exclude_and_relabel_files(tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text("# bad ones\na/1.jpg\n\nb/2.jpg  # blurry\na/img#3.jpg\n")
    assert read_exclude(listing) == ("a/1.jpg", "b/2.jpg", "a/img#3.jpg")  # '#' in a name is no comment
    audit_csv = tmp_path / "audit.csv"
    audit_csv.write_text(
        "file,kind,score,given_label,suggested_label,other_file,split\n"
        "a/1.jpg,label_issue,0.9,a,b,,train\nc/3.jpg,duplicate_leak,0.99,c,,c/4.jpg,validation\n"
    )
    assert read_exclude(audit_csv) == ("a/1.jpg", "c/3.jpg")
    assert read_relabel(audit_csv) == {"a/1.jpg": "b"}
    # Saved by a spreadsheet, every field quoted: the header was not recognised and nothing was left out
    quoted = tmp_path / "quoted.csv"
    quoted.write_text('"file","kind","score"\r\n"a/1.jpg","label_issue","0.9"\r\n')
    assert read_exclude(quoted) == ("a/1.jpg",)
    # The run's own record reads back as it was, names with ' #' or a line break included
    odd = ("a/x #y.jpg", "b/new\nline.jpg", "c/plain.jpg", " lead/0.jpg", "trail /1.jpg ")
    (tmp_path / "excluded.txt").write_text(Curation(odd, {}).excluded_text())
    assert read_exclude(tmp_path / "excluded.txt") == odd
    (tmp_path / "relabel.csv").write_text(Curation((), {" lead/1.jpg": "b"}).relabel_text())
    assert read_relabel(tmp_path / "relabel.csv") == {" lead/1.jpg": "b"}
    # A hand-written CSV's stray spaces still name the file (tried when no file has the name as written)
    assert Curation((" a/1.jpg",), {}).resolved(["a/1.jpg", " lead/0.jpg"]).exclude == ("a/1.jpg",)
    assert Curation((" lead/0.jpg",), {}).resolved(["lead/0.jpg", " lead/0.jpg"]).exclude == (" lead/0.jpg",)
    relabel = tmp_path / "relabel.csv"
    relabel.write_text("path,new_label\na/1.jpg,b\n")
    assert read_relabel(relabel) == {"a/1.jpg": "b"}
    # A header as a person writes it was read as a row: "file" relabelled "label", recorded in the run
    for header in ("file,label", "Path,New_Label", "FILE,new label"):
        relabel.write_text(f"{header}\na/1.jpg,b\n")
        assert read_relabel(relabel) == {"a/1.jpg": "b"}, header
    for bad in ("/etc/passwd\n", "../x.jpg\n"):
        listing.write_text(bad)
        with pytest.raises(ConfigError, match="relative to the data folder"):
            read_exclude(listing)
    relabel.write_text("a/1.jpg\n")
    with pytest.raises(ConfigError, match="path,new_label"):
        read_relabel(relabel)
    for bad in ("../../evil", "a/b", ".."):
        relabel.write_text(f"a/1.jpg,{bad}\n")
        with pytest.raises(ConfigError, match="line 1: a new label must be a class name"):
            read_relabel(relabel)
    # An edited audit.csv: CRLF and a blank last line are fine; a short row or an emptied label is named.
    header = "file,kind,score,given_label,suggested_label,other_file,split\r\n"
    audit_csv.write_text(header + "a/1.jpg,label_issue,0.5,a,b,,train\r\n\r\n")
    assert read_relabel(audit_csv) == {"a/1.jpg": "b"}
    audit_csv.write_text(header + "a/1.jpg,label_issue,0.5\r\n")
    with pytest.raises(ConfigError, match="line 2: expected 7 fields"):
        read_relabel(audit_csv)
    audit_csv.write_text(header + "a/1.jpg,label_issue,0.5,a,,,train\r\n")
    with pytest.raises(ConfigError, match="line 2: the suggested_label field is empty"):
        read_relabel(audit_csv)
    curation = Curation(("a/1.jpg",), {"b/2.jpg": "a"})
    items = curation.apply_items([("a/1.jpg", "a", ""), ("b/2.jpg", "b", ""), ("c/3.jpg", "c", "")])
    assert items == [("b/2.jpg", "a", ""), ("c/3.jpg", "c", "")]
    # The same file given twice: once is fine, two different labels are refused with both lines.
    relabel.write_text("path,new_label\na/1.jpg,b\nc/3.jpg,a\na/1.jpg,b\n")
    assert read_relabel(relabel) == {"a/1.jpg": "b", "c/3.jpg": "a"}
    relabel.write_text("path,new_label\na/1.jpg,b\nc/3.jpg,a\na/1.jpg,c\n")
    with pytest.raises(ConfigError, match=r"lines 2 and 4 give 'a/1.jpg' two labels, 'b' and 'c'"):
        read_relabel(relabel)
    # A relabel target that is no class makes one, and a class whose every file is left out goes: both said.
    notes = Curation(("c/3.jpg",), {"a/1.jpg": "bb"}).class_changes(["a", "b", "c"], ["bb", "b"])
    assert notes == [
        "the relabel file makes a new class 'bb' (1 image(s)); if you meant an existing class, check its spelling",
        "class 'a' has no image left after --exclude/--relabel: the model will not know it",
        "class 'c' has no image left after --exclude/--relabel: the model will not know it",
    ]


def test_curation_lists_with_old_mac_line_ends_are_read_and_a_binary_one_is_named(tmp_path: Path) -> None:
    # Saved by Excel on an old Mac, every line ended in a lone CR: a csv.Error traceback
    listing, relabel = tmp_path / "list.txt", tmp_path / "relabel.csv"
    listing.write_bytes(b"daisy/img0.jpg\rdaisy/img1.jpg\r")
    assert read_exclude(listing) == ("daisy/img0.jpg", "daisy/img1.jpg")
    relabel.write_bytes(b"daisy/img0.jpg,roses\rdaisy/img1.jpg,roses\r")
    assert read_relabel(relabel) == {"daisy/img0.jpg": "roses", "daisy/img1.jpg": "roses"}
    listing.write_bytes(b'"file","kind"\r"a/1.jpg","label_issue"\r')
    assert read_exclude(listing) == ("a/1.jpg",)
    # Not a CSV at all (a stray CR in a line that ends in LF): said with the file and the line, no traceback
    binary = tmp_path / "bin.dat"
    binary.write_bytes(b"a/1.jpg,b\nx\ry,z\n")
    with pytest.raises(ConfigError, match=r"bin.dat line 2: cannot be read as CSV .* Received: relabel="):
        read_relabel(binary)
    binary.write_bytes(b"x\ry,file\nz\n")
    with pytest.raises(ConfigError, match=r"bin.dat line 1: cannot be read as CSV .* Received: exclude="):
        read_exclude(binary)


def test_a_bad_curation_list_is_refused_and_leaves_no_run_folder(tmp_path: Path) -> None:
    from floranet.workflows import train

    data = make_image_folder(tmp_path / "data", classes=2, per_class=2)
    absolute = tmp_path / "absolute.txt"
    absolute.write_text("/etc/passwd\n")
    (tmp_path / "folder").mkdir()
    out = tmp_path / "run"
    # Read first by training, after the run folder held state.json and config.yaml: the corrected command was
    # then told the folder already holds a run.
    for kind, path, match in [
        ("relabel", tmp_path / "nofile.csv", "Cannot read the relabel file"),
        ("exclude", tmp_path / "folder", "Cannot read the exclude file"),
        ("exclude", absolute, "relative to the data folder"),
    ]:
        cfg = config.resolve(data_dir=str(data), out=str(out), epochs=1, fine_tune_epochs=0, audit=False, **TINY)
        cfg = dataclasses.replace(cfg, **{kind: str(path)})
        with pytest.raises(ConfigError, match=match):
            train(cfg, progress=False, say=lambda m: None)
        assert not out.exists(), kind


def test_a_semicolon_audit_csv_is_read_and_a_list_naming_no_file_is_refused(tmp_path: Path) -> None:
    from floranet.workflows import train

    data = make_image_folder(tmp_path / "data", classes=2, per_class=2, names=["a", "b"])
    # An audit.csv re-saved by Excel in a ';' locale (or as tab-separated text) was read as one path a line
    for sep in (";", "\t"):
        saved = tmp_path / "saved.csv"
        saved.write_text(sep.join(["file", "kind", "score", "given_label", "suggested_label"]) + "\n")
        with saved.open("a") as f:
            f.write(sep.join(["a/img_000.jpg", "label_issue", "0,9", "a", "b"]) + "\n")
        assert read_exclude(saved) == ("a/img_000.jpg",)
        assert read_relabel(saved) == {"a/img_000.jpg": "b"}
    # A list none of whose paths is a file of the data folder was noted in one line and the run trained uncurated
    other = tmp_path / "other.txt"
    other.write_text("daisy/img0.jpg\ndaisy/img1.jpg\n")
    with pytest.raises(ConfigError, match=r"None of the 2 path\(s\) of the exclude file .* 'daisy/img0.jpg'"):
        Curation.load(str(other), None).check_found(data, str(other), None)
    Curation(("daisy/img0.jpg", "a\\img_001.jpg"), {}).check_found(data, "x", None)  # one is enough
    with pytest.raises(ConfigError, match=r"None of the 1 path\(s\) of the relabel file"):
        Curation((), {"daisy/img0.jpg": "a"}).check_found(data, None, "r.csv")
    out = tmp_path / "run"
    cfg = config.resolve(data_dir=str(data), out=str(out), exclude=str(other), epochs=1, audit=False, **TINY)
    with pytest.raises(ConfigError, match="None of the 2 path"):
        train(cfg, progress=False, say=lambda m: None)
    assert not out.exists()


def test_two_spellings_of_one_file_given_two_labels_are_refused(tmp_path: Path) -> None:
    # 'daisy/img0.jpg' and 'daisy\\img0.jpg' (or a formula's quote and none) name one file: the last row won silently
    relabel = tmp_path / "relabel.csv"
    relabel.write_text("daisy/img0.jpg,roses\ndaisy\\img0.jpg,tulips\n")
    curation = Curation.load(None, str(relabel))
    two = r"lines 1 and 2 give 'daisy/img0.jpg' \(written 'daisy/img0.jpg' and 'daisy\\\\img0.jpg'\) two labels"
    with pytest.raises(ConfigError, match=two):
        curation.resolved(["daisy/img0.jpg", "daisy/img1.jpg"])
    data = make_image_folder(tmp_path / "data", classes=1, per_class=1, names=["daisy"])
    (data / "daisy" / "img_000.jpg").rename(data / "daisy" / "img0.jpg")
    with pytest.raises(ConfigError, match=two):  # train's check of the lists
        curation.check_found(data, None, str(relabel))
    with pytest.raises(ConfigError, match=r"two rows give '-x/a.jpg' \(written \"'-x/a.jpg\" and '-x/a.jpg'\)"):
        Curation((), {"'-x/a.jpg": "a", "-x/a.jpg": "b"}).resolved(["-x/a.jpg"])
    # One label, or two files: as before
    assert Curation((), {"'-x/a.jpg": "a", "-x/a.jpg": "a"}).resolved(["-x/a.jpg"]).relabel == {"-x/a.jpg": "a"}
    both = {"'-x/a.jpg": "a", "-x/a.jpg": "b"}
    assert Curation((), both).resolved(["-x/a.jpg", "'-x/a.jpg"]).relabel == both


@pytest.mark.parametrize("twin", ["\uff42\u00e9", "be\u0301"], ids=["full-width", "nfd"])
def test_a_relabel_that_makes_a_twin_of_a_class_is_refused(tmp_path: Path, twin: str) -> None:
    """The doctor refuses class folders that look the same; a relabel target made one with only a "new class" note,
    and the model then had two classes every report and answer showed as one."""
    from floranet.errors import ConfigError
    from floranet.workflows import train

    data = make_image_folder(tmp_path / "data", classes=2, per_class=4, names=["a", "b\u00e9"])
    (tmp_path / "relabel.csv").write_text(f"a/img_000.jpg,{twin}\n", encoding="utf-8")
    cfg = config.resolve(
        data_dir=str(data), out=str(tmp_path / "run"), relabel=str(tmp_path / "relabel.csv"), audit=False, **TINY
    )
    with pytest.raises(
        ConfigError,
        match=r"classes .* look the same in every report and answer; write each label "
        r"one way. Received: relabel=",
    ):
        train(cfg, progress=False, say=lambda _: None)
    assert not (tmp_path / "run").exists()  # a refused start leaves no run behind


def test_train_applies_and_records_exclude_and_relabel(tmp_path: Path) -> None:
    from floranet.evaluation.modelcard import write_model_card
    from floranet.workflows import train

    data = make_image_folder(tmp_path / "data", classes=3, per_class=8, names=["a", "b", "c"])
    (tmp_path / "exclude.txt").write_text("a/img_000.jpg\nnot/there.jpg\n")
    # a/img_000.jpg is left out as well as relabelled (it counted as both), c/img_002.jpg makes a class "cc"
    (tmp_path / "relabel.csv").write_text("b/img_001.jpg,c\na/img_000.jpg,b\nc/img_002.jpg,cc\n")
    cfg = config.resolve(
        data_dir=str(data),
        out=str(tmp_path / "run"),
        exclude=str(tmp_path / "exclude.txt"),
        relabel=str(tmp_path / "relabel.csv"),
        epochs=1,
        fine_tune_epochs=0,
        audit=False,
        **TINY,
    )
    said: list[str] = []
    result = train(cfg, progress=False, say=said.append)
    run = result.run
    split = {r.path: r.label for r in run.split().rows}
    # What was done, not how long the lists are (it said "2 file(s) left out" for one file and a typo).
    curated = next(m for m in said if m.startswith("Curation:"))
    assert curated == (
        "Curation: 1 file(s) left out, 2 relabelled (files untouched); 1 path(s) of the exclude file name no usable "
        "image (not/there.jpg); 1 relabel(s) not applied, as the file is excluded too (a/img_000.jpg)."
    )
    assert "a/img_000.jpg" not in split and split["b/img_001.jpg"] == "c" and split["c/img_002.jpg"] == "cc"
    assert "Curation: the relabel file makes a new class 'cc' (1 image(s)); if you meant an existing class, check its "
    "spelling." in said and any("new class 'cc'" in n for n in result.notes)
    assert (data / "a" / "img_000.jpg").exists() and (data / "b" / "img_001.jpg").exists()
    assert run.config().exclude == str(tmp_path / "exclude.txt")
    # The record holds what was done: not the typo, nor the relabel of a file left out (it said so of both)
    assert (run / RunDir.EXCLUDED).read_text() == "file\na/img_000.jpg\n"
    assert (run / RunDir.RELABELED).read_text() == "path,new_label\nb/img_001.jpg,c\nc/img_002.jpg,cc\n"
    assert any("exclude file" in n for n in result.notes)
    assert not run.exists(RunDir.AUDIT)  # audit: false
    # The card and the report said nothing of it, while their doctor's counts were of the folders as they are
    card = (run / RunDir.MODEL_CARD).read_text(encoding="utf-8")
    assert "Curated: 1 file(s) left out (`--exclude`, listed in `excluded.txt`) and 2 relabelled" in card
    assert "which made the class(es) cc; the class counts above are after it" in card
    report = (run / RunDir.REPORT).read_text(encoding="utf-8")
    assert "<p>Curated: 1 file(s) left out (--exclude, listed in excluded.txt) and 2 relabelled" in report
    assert "which made the class(es) &#x27;cc&#x27;; the doctor" in report
    saved = (run / RunDir.RELABELED).read_text()
    (run / RunDir.RELABELED).write_text("path,new_label\na/1.jpg,b,extra\n")  # a hand edit gone wrong
    card = write_model_card(run.path).read_text(encoding="utf-8")
    assert "*`relabel.csv` is left out of this card: it is damaged;" in card and "Curated: 1 file(s) left out" in card
    (run / RunDir.RELABELED).write_text(saved)
    # --resume reads the split, not the lists: an edited (or deleted) exclude file neither fails it nor rewrites
    # the run's record of what it left out
    (run / RunDir.STATE).write_text((run / RunDir.STATE).read_text().replace('"complete": true', '"complete": false'))
    (tmp_path / "exclude.txt").unlink()
    said.clear()
    train(cfg, resume=True, progress=False, say=said.append)
    assert (run / RunDir.EXCLUDED).read_text() == "file\na/img_000.jpg\n"
    assert any(m.startswith("Curation: as the run recorded it") for m in said)
    # A new run in a folder whose earlier attempt failed (no state.json) keeps no stale record of a curation
    (run / RunDir.STATE).unlink()
    plain = config.resolve(data_dir=str(data), out=str(run.path), epochs=1, fine_tune_epochs=0, audit=False, **TINY)
    train(plain, progress=False, say=lambda m: None)
    assert not run.exists(RunDir.EXCLUDED) and not run.exists(RunDir.RELABELED)


def test_audit_csv_round_trips_through_exclude(tmp_path: Path) -> None:
    x, y = _clusters(per_class=10)
    y[0] = 1
    cfg = config.resolve(data_dir="d", out="o", **FAST)
    result = run_audit(_data(x, y), cfg, say=lambda m: None)
    path = tmp_path / "audit.csv"
    path.write_text(to_csv(result))
    assert set(read_exclude(path)) == {f.file for f in result.findings}


def test_names_a_spreadsheet_would_run_are_quoted_and_read_back(tmp_path: Path) -> None:
    """A class folder named '=HYPERLINK(...)' reached audit.csv (and excluded.txt, relabel.csv) as a formula a
    spreadsheet runs; predictions CSVs already quoted such cells. Now every name cell is quoted, and --exclude and
    --relabel read the quoted form (or the form a spreadsheet saves back, without the quote) as the file."""
    x, y = _clusters(per_class=10)
    y[0] = 1
    data = _data(x, y)
    hostile = ("=HYPERLINK(1)", "+c1", "@c2")
    data = dataclasses.replace(
        data,
        paths=tuple(f"{hostile[int(c)]}/{p.split('/')[1]}" for p, c in zip(data.paths, y, strict=True)),
        class_names=hostile,
    )
    result = run_audit(data, config.resolve(data_dir="d", out="o", **FAST), say=lambda m: None)
    text = to_csv(result)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows and all(r["file"].startswith("'") for r in rows)
    assert all(r["given_label"] in {f"'{h}" for h in hostile} for r in rows)
    assert all(float(r["score"]) == float(r["score"]) for r in rows)  # numbers stay numbers, never quoted
    path = tmp_path / "audit.csv"
    path.write_text(text)
    excluded = Curation(read_exclude(path)).resolved(data.paths).exclude
    assert set(excluded) == {f.file for f in result.findings} and set(excluded) <= set(data.paths)
    saved_back = tmp_path / "saved.csv"  # as a spreadsheet writes it: the quote is not part of the value
    saved_back.write_text(text.replace(",'", ",").replace("\n'", "\n"))
    assert set(Curation(read_exclude(saved_back)).resolved(data.paths).exclude) == set(excluded)
    issues = [f for f in result.findings if f.kind == "label_issue"]
    assert issues and set(read_relabel(path).values()) <= set(hostile)
    recorded = Curation(tuple(excluded), {issues[0].file: "=new"})
    assert recorded.excluded_text().splitlines()[1].startswith("'")
    assert recorded.relabel_text().splitlines()[1].endswith(",'=new")
    (tmp_path / "excluded.txt").write_text(recorded.excluded_text())
    (tmp_path / "relabel.csv").write_text(recorded.relabel_text())
    assert Curation(read_exclude(tmp_path / "excluded.txt")).resolved(data.paths).exclude == recorded.exclude
    assert read_relabel(tmp_path / "relabel.csv") == {"'" + issues[0].file: "=new"}


def test_train_audits_when_cheap_and_audit_run_dir_rebuilds_the_report(writable_run: Path, capsys) -> None:
    from floranet.cli import main

    run = RunDir(writable_run)
    trained = json.loads((writable_run / RunDir.AUDIT).read_text())  # the audit step of `train`
    assert trained["images"] == len(run.split().rows) and set(trained["counts"]) >= {"label_issue", "outlier"}
    (writable_run / RunDir.AUDIT).unlink()
    (writable_run / RunDir.REPORT).write_text("old")
    assert main(["audit", str(writable_run), "--top", "3"]) == 0
    assert "Audited" in capsys.readouterr().out
    assert (
        json.loads((writable_run / RunDir.AUDIT).read_text())["label_quality"].keys() == trained["label_quality"].keys()
    )
    assert "<h2>Data audit</h2>" in (writable_run / RunDir.REPORT).read_text()
    assert main(["audit", str(writable_run), "--backbone", "resnet18"]) == 2  # a run's own settings are used


def test_audit_never_writes_over_a_training_run_or_leaves_a_folder_for_missing_data(
    writable_run: Path, tmp_path: Path, monkeypatch
) -> None:
    """A data folder's audit into a training run replaced its config, split and class names (the run could no
    longer predict); a missing data folder left an audit folder with a config.yaml behind."""
    from floranet.workflows.audit import audit as audit_fn

    data = make_image_folder(tmp_path / "other", classes=2, per_class=3)
    before = {p.name: p.read_bytes() for p in writable_run.iterdir() if p.is_file()}
    with pytest.raises(ConfigError, match="out holds a training run"):
        audit_fn(data, out=writable_run, **TINY)
    assert {p.name: p.read_bytes() for p in writable_run.iterdir() if p.is_file()} == before
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        DatasetError, match="data_dir must be an existing folder of class sub-folders. Received: data_dir=.nope."
    ):
        audit_fn("nope", **TINY)
    assert not (tmp_path / "runs").exists()


def test_a_run_audits_from_any_folder_and_an_unreadable_data_folder_is_an_error(
    writable_run: Path, tmp_path: Path, monkeypatch
) -> None:
    """config.yaml records the data folder absolute; a run whose images are gone is refused, not audited as 0
    images over its earlier audit."""
    from floranet.workflows.audit import audit as audit_fn

    assert Path(RunDir(writable_run).config().data_dir).is_absolute()
    monkeypatch.chdir(tmp_path)
    assert audit_fn(writable_run, say=lambda m: None).result is not None
    config = (writable_run / RunDir.CONFIG).read_text()
    data_dir = RunDir(writable_run).config().data_dir
    (writable_run / RunDir.CONFIG).write_text(config.replace(data_dir, str(tmp_path / "gone")))
    shutil.rmtree(writable_run / RunDir.FEATURES)
    earlier = (writable_run / RunDir.AUDIT).read_bytes()
    with pytest.raises(DatasetError, match="no image of the audit could be read under .*gone"):
        audit_fn(writable_run, say=lambda m: None)
    assert (writable_run / RunDir.AUDIT).read_bytes() == earlier


def test_a_run_audited_later_sees_its_files_as_they_are_now(writable_run: Path, tmp_path: Path) -> None:
    """The split's sha256 keyed the feature cache: a file changed since training had its new content cached and
    audited under its old hash."""
    import hashlib

    from floranet.workflows.audit import audit as audit_fn

    run = RunDir(writable_run)
    data = tmp_path / "data"
    shutil.copytree(run.config().data_dir, data)
    config = (writable_run / RunDir.CONFIG).read_text()
    (writable_run / RunDir.CONFIG).write_text(config.replace(run.config().data_dir, str(data)))
    rows = run.split().rows
    first, second, third = rows[:3]
    (data / first.path).write_bytes((data / second.path).read_bytes())  # edited since training
    (data / third.path).unlink()  # gone: the rest was audited without a word
    said: list[str] = []
    result = audit_fn(writable_run, say=said.append).result
    now = hashlib.sha256((data / first.path).read_bytes()).hexdigest()
    assert result.data.sha256[result.data.paths.index(first.path)] == now != first.sha256
    assert "Audit: 1 file(s) changed since the run's split was written; audited as they are now." in said
    assert third.path not in result.data.paths
    assert (
        f"Audit: 1 of the split's {len(rows)} file(s) are gone from {data} (moved, deleted or unreadable: "
        f"{third.path}); the {len(rows) - 1} left are audited." in said
    )


def test_train_cli_flags_reach_the_config() -> None:
    from floranet.cli import build_parser
    from floranet.cli.training import TRAIN_KEYS

    args = build_parser().parse_args(
        ["train", "d", "--out", "o", "--exclude", "a.csv", "--relabel", "r.csv", "--no-audit"]
        + ["--unknown-method", "mahalanobis", "--unknown-keep", "0.9"]
    )
    cfg = config.resolve(data_dir="d", out="o", **{k: getattr(args, k) for k in TRAIN_KEYS})
    assert (cfg.exclude, cfg.relabel, cfg.audit, cfg.unknown_method, cfg.unknown_keep) == (
        os.path.abspath("a.csv"),  # recorded absolute: --resume from another folder finds the same files
        os.path.abspath("r.csv"),
        False,
        "mahalanobis",
        0.9,
    )
    defaults = build_parser().parse_args(["train", "d", "--out", "o"])
    assert config.resolve(data_dir="d", out="o", **{k: getattr(defaults, k) for k in TRAIN_KEYS}).audit is True


def test_a_folder_with_another_tools_config_yaml_is_not_taken_for_a_run(tmp_path: Path) -> None:
    """Any config.yaml made a folder a "run": audit and train wrote over the user's config.yaml and filled the
    folder; a data folder with one and a split.csv at its top was audited as a run, into the data folder."""
    from floranet.workflows.audit import audit as audit_fn
    from floranet.workflows.train import train as train_fn

    data = make_image_folder(tmp_path / "data", classes=2, per_class=6)
    theirs = tmp_path / "myproj"
    theirs.mkdir()
    (theirs / "config.yaml").write_text("model: yolov8\n")
    for attempt in (
        lambda: audit_fn(data, out=theirs, **TINY),
        lambda: train_fn(config.resolve(data_dir=str(data), out=str(theirs), **TINY), progress=False),
    ):
        with pytest.raises(ConfigError, match="not empty and not a floranet run"):
            attempt()
        assert [p.name for p in theirs.iterdir()] == ["config.yaml"]
        assert (theirs / "config.yaml").read_text() == "model: yolov8\n"
    (data / "config.yaml").write_text("model: yolov8\n")  # files at the top of a data folder, of another tool
    (data / "split.csv").write_text("path,label,subset\n")
    before = sorted(p.name for p in data.iterdir())
    outcome = audit_fn(data, out=tmp_path / "audit", **TINY, **HEAD)
    assert outcome.run.path == tmp_path / "audit" and sorted(p.name for p in data.iterdir()) == before


def test_label_issues_use_the_folds_the_data_allows_and_say_when_they_are_not_checked(tmp_path: Path) -> None:
    """Fewer distinct files than folds crashed in scikit-learn; a skipped check was written as a clean 5-fold one
    (every label_quality 1.0)."""
    from floranet.evaluation.audit_report import to_json

    x, y = _clusters(per_class=6, classes=2)
    cfg = config.resolve(data_dir="d", out="o", **FAST)
    copies = _data(x, y)
    copies = dataclasses.replace(copies, sha256=tuple("a" * 64 if c == 0 else "b" * 64 for c in y))  # 2 files
    small = _data(x[4:8], y[4:8])  # two images of each class
    for data, folds, skipped in (
        (copies, None, "at least two classes with two distinct images"),  # both are copies of one file each
        (small, 2, None),
    ):
        said: list[str] = []
        result = run_audit(data, cfg, say=said.append)
        assert result.facts["folds"] == folds
        # The folds were cut to the smallest class's images without a word (each head learns from fewer)
        assert ("Audit: 2 folds, not 5: class 'c0' has only 2 distinct images." in said) == (folds == 2), said
        written = to_json(result, tmp_path)
        if skipped is None:
            assert result.facts["label_issues_skipped"] is None and len(written["label_quality"]) == len(data.paths)
        else:
            assert skipped in result.facts["label_issues_skipped"] and written["label_quality"] is None
            assert result.of_kind("label_issue") == []


def test_a_class_of_one_image_is_left_out_of_the_label_check_not_every_class(tmp_path: Path) -> None:
    """One class of a single image turned the label check off for every class ("at least two distinct images of
    every class"). Now that class alone is left out, said, and the others are checked: a flipped label is found."""
    from floranet.evaluation.audit_report import audit_section, to_json

    x, y = _clusters(per_class=10)
    noisy = y.copy()
    noisy[3] = 1  # a class-0 image filed under class 1
    lonely = _data(np.r_[x, x[:1] + 9.0], np.r_[noisy, 3])  # a fourth class of one image
    said: list[str] = []
    result = run_audit(lonely, config.resolve(data_dir="d", out="o", **FAST), say=said.append)
    assert result.facts["label_issues_skipped"] is None and result.facts["label_check_left_out"] == ["c3"]
    assert any("'c3' left out of the label check" in m for m in said)
    issues = result.of_kind("label_issue")
    assert issues and issues[0].file == lonely.paths[3] and issues[0].suggested_label == "c0"
    assert all(f.suggested_label != "c3" for f in issues)
    written = to_json(result, tmp_path)
    assert lonely.paths[-1] not in written["label_quality"] and len(written["label_quality"]) == len(y)
    RunDir(tmp_path).write_json(RunDir.AUDIT, written)
    assert "not checked in c3 (a class needs at least two distinct images)" in audit_section(RunDir(tmp_path), written)


def test_near_duplicates_are_found_in_a_small_set_of_real_photos(tmp_path: Path) -> None:
    """On 39 photos the fixed similarity of 0.42 (set on 3,119) found none of three resized, cropped, re-encoded
    copies: whitening spreads a small set's images apart. The set's own threshold finds each, and nothing else."""
    from PIL import Image

    from floranet.data.datasets import mini_flowers_path
    from floranet.workflows.audit import audit as audit_fn

    data, planted = tmp_path / "data", set()
    for c in ("daisy", "roses", "tulips"):
        (data / c).mkdir(parents=True)
        for f in sorted((mini_flowers_path() / c).glob("*.jpg"))[:12]:
            shutil.copy(f, data / c / f.name)
    for c, other in (("daisy", "roses"), ("roses", "tulips"), ("tulips", "roses")):
        original = sorted((data / c).glob("*.jpg"))[1]
        im = Image.open(original)
        w, h = im.size
        copy = data / other / f"copy_{original.name}"
        im.crop((2, 2, w - 2, h - 2)).resize((int(w * 0.92), int(h * 0.92))).save(copy, quality=75)
        planted.add(frozenset((f"{c}/{original.name}", f"{other}/{copy.name}")))
    mobilenet = {"backbone": "mobilenet_v2", "weights": "imagenet", "image_size": 97, "preset": "tutorial"}
    result = audit_fn(data, out=tmp_path / "audit", **mobilenet, runtime="tensorflow", precision="fp32").result
    pairs = [f for f in result.findings if f.kind.startswith("duplicate")]
    assert {frozenset((f.file, f.other_file)) for f in pairs} == planted
    # README's figures: the set's own threshold 0.06, and no planted copy reaching the fixed 0.42
    assert round(result.facts["duplicate_similarity"], 2) == 0.06 and max(f.score for f in pairs) < 0.42


def test_exclude_of_the_audit_keeps_one_copy_of_every_group_of_near_duplicates() -> None:
    """Each pair chose its copy to leave out by its own rule (conflict: the less trustworthy label; leak: the
    validation side): over three copies a (daisy, train, quality 0.5), b (roses, validation, 0.9) and
    c (roses, train, 0.2) that named a, c and b, and --exclude audit.csv dropped the photo altogether."""
    from floranet.evaluation.audit import pair_findings

    data = AuditData(
        ("daisy/a.jpg", "roses/b.jpg", "roses/c.jpg", "roses/d.jpg"),
        np.array([0, 1, 1, 1]),
        ("train", "validation", "train", "validation"),
        tuple(f"{i:064x}" for i in range(4)),
        np.zeros((4, 2), np.float32),
        ("daisy", "roses"),
    )
    quality = np.array([0.5, 0.9, 0.2, 0.95])
    pairs = [(0, 1, 0.9), (0, 2, 0.9), (1, 2, 0.9), (1, 3, 0.8), (2, 3, 0.8), (0, 3, 0.8)]
    rows = {(f.file, f.other_file): f.kind for f in pair_findings(data, pairs, quality, np.arange(4))}
    assert {f for f, _ in rows} == {"roses/b.jpg", "roses/c.jpg", "roses/d.jpg"}  # a, the keeper, is never left out
    assert rows[("roses/b.jpg", "daisy/a.jpg")] == "duplicate_conflict"
    assert rows[("roses/b.jpg", "roses/c.jpg")] == "duplicate_leak"  # the validation side
    assert rows[("roses/c.jpg", "daisy/a.jpg")] == "duplicate_conflict"  # same side: the less trustworthy label


def test_odd_file_names_survive_the_split_curation_and_audit_json(tmp_path: Path) -> None:
    """split.csv wrote such a name and then refused to read it back; an exclude list read the backslash as a
    separator, so it named no file."""
    from floranet.data.split import Split, SplitRow
    from floranet.workflows.audit import audit as audit_fn

    odd = "class_0/a\\b.jpg"
    rows = (SplitRow(odd, "class_0", "train", ""), SplitRow("class_1/x.jpg", "class_1", "validation", ""))
    split = Split(rows, ("class_0", "class_1"))
    split.to_csv(tmp_path / "split.csv")
    assert [r.path for r in Split.from_csv(tmp_path / "split.csv").rows] == [odd, "class_1/x.jpg"]
    listing = tmp_path / "exclude.txt"
    listing.write_text(f"{odd}\nclass_1\\img_000.jpg\n")  # a literal name, and a list written on Windows
    curate = Curation(read_exclude(listing)).resolved([odd, "class_1/img_000.jpg", "class_1/img_001.jpg"])
    assert curate.exclude == (odd, "class_1/img_000.jpg")
    data = make_image_folder(tmp_path / "data", classes=2, per_class=6)
    shutil.copy(data / "class_0" / "img_000.jpg", data / odd)
    shutil.copy(data / "class_0" / "img_001.jpg", data / "class_0" / "c\nFORGED 0.999 d.jpg")
    shutil.copy(data / "class_0" / "img_002.jpg", data / "class_0" / "e\u2028SPLIT 0.999 f.jpg")  # splitlines breaks
    make_image_folder(tmp_path / "more", classes=2, per_class=1, seed=5)  # a new photo under a name not UTF-8
    shutil.copy(tmp_path / "more" / "class_1" / "img_000.jpg", data / "class_1" / os.fsdecode(b"\xff\xfe.jpg"))
    out = tmp_path / "audit"
    audit_fn(data, out=out, **TINY, **HEAD)
    again = audit_fn(out)  # the audit folder as a RUN_DIR reads its own split.csv back
    assert odd in again.result.data.paths
    written = json.loads((out / RunDir.AUDIT).read_bytes().decode("utf-8"))  # strict UTF-8, as doctor.json
    assert "class_1/\\xff\\xfe.jpg" in written["label_quality"]
    # The printed list escapes names: a line break in one cannot forge a line of its own.
    from floranet.evaluation.audit_report import summary

    listed = summary(again.result, n=50)
    assert "a\\b.jpg" in listed and "c\\x0aFORGED 0.999 d.jpg" in listed and "e\\u2028SPLIT" in listed
    assert not [line for line in listed.splitlines() if line.startswith(("FORGED", "SPLIT"))]


def test_two_audits_with_one_seed_and_random_weights_agree(tmp_path: Path) -> None:
    """The backbone was built unseeded: with --weights none each audit of one folder had other features, another
    cache key and other findings (and a run's incomplete cache was filled by a backbone unlike its model's)."""
    from floranet.workflows.audit import audit as audit_fn

    data = make_image_folder(tmp_path / "data", classes=2, per_class=6)
    runs = [audit_fn(data, out=tmp_path / name, **TINY, **FAST, seed=42).run.path for name in ("a1", "a2")]
    keys = [sorted(p.name for p in (run / "features").iterdir()) for run in runs]
    assert keys[0] == keys[1]
    assert (runs[0] / RunDir.AUDIT_CSV).read_text() == (runs[1] / RunDir.AUDIT_CSV).read_text()


@pytest.mark.parametrize(
    ("copies", "exclude", "relabel", "expected"),
    [
        ("b", "", "", {}),  # a label conflict: every copy left out, as the doctor says
        ("b", "b/copy.jpg\n", "", {"a/img_000.jpg": "a"}),  # one copy left out: the other one is fine
        ("b", "", "b/copy.jpg,a\n", {"a/img_000.jpg": "a", "b/copy.jpg": "a"}),  # one label: both kept
        ("bc", "", "c/copy.jpg,a\n", {}),  # a and b still disagree
    ],
)
def test_exclude_or_relabel_settles_a_label_conflict(tmp_path: Path, copies, exclude, relabel, expected) -> None:
    # Byte-identical copies in two classes were left out whatever the run's curation said: the --exclude or
    # --relabel that the audit suggests for them could not bring either copy back.
    from floranet.training.data import prepare

    data = make_image_folder(tmp_path / "data", classes=3, per_class=6, names=["a", "b", "c"])
    for other in copies:
        shutil.copy(data / "a" / "img_000.jpg", data / other / "copy.jpg")
    (tmp_path / "exclude.txt").write_text(exclude)
    (tmp_path / "relabel.csv").write_text(relabel)
    cfg = config.resolve(
        data_dir=str(data), out=str(tmp_path / "run"), exclude=str(tmp_path / "exclude.txt") if exclude else None,
        relabel=str(tmp_path / "relabel.csv") if relabel else None, **TINY,
    )  # fmt: skip
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    rows = {r.path: r for r in prepare(cfg, run, resume=False, progress=False, say=lambda m: None).split.rows}
    kept = {p: rows[p].label for p in ("a/img_000.jpg", "b/copy.jpg", "c/copy.jpg") if p in rows}
    assert kept == expected
    assert len({rows[p].split for p in kept}) <= 1  # copies stay on one side of the split
    assert len(rows) == 18 - 1 + len(expected)  # every other image is used


def test_an_audit_killed_in_its_data_scan_does_not_block_the_next(tmp_path: Path, monkeypatch) -> None:
    """The audit wrote config.yaml before the scan wrote doctor.json: killed in the scan, its folder held config.yaml
    alone, not a run, and every later audit into it was refused as 'not a floranet run'."""
    from floranet.data import doctor
    from floranet.workflows.audit import audit as audit_fn

    class Killed(BaseException):
        """Stands for a kill in the data scan."""

    def killed(*args, **kwargs):
        raise Killed

    data = make_image_folder(tmp_path / "data", classes=2, per_class=6)
    monkeypatch.chdir(tmp_path)
    with monkeypatch.context() as m:
        m.setattr(doctor, "diagnose", killed)
        with pytest.raises(Killed):
            audit_fn(data, **TINY)
    folder = tmp_path / "runs" / "audit-data"
    assert RunDir(folder).is_run()
    assert audit_fn(data, **TINY).run.path.resolve() == folder.resolve()
    assert json.loads((folder / RunDir.DOCTOR).read_text())["files"]  # the scan's report over the mark
    # Killed between the mark and config.yaml: the mark alone is floranet's, not a file of the user's.
    shutil.rmtree(folder)
    folder.mkdir()
    RunDir(folder).write_json(RunDir.DOCTOR, {"complete": False})
    assert audit_fn(data, **TINY).run.path.resolve() == folder.resolve()


def test_the_doctors_label_conflicts_are_rows_of_the_audit_and_its_exclude_settles_them(tmp_path: Path) -> None:
    """Byte-identical copies in two classes appeared in no audit output (the doctor leaves them out of the split,
    so the embeddings never saw them), though the README settles them with the audit's --exclude or --relabel."""
    from floranet.data.curation import read_exclude, read_relabel
    from floranet.training.data import prepare
    from floranet.workflows.audit import audit as audit_fn

    data = make_image_folder(tmp_path / "data", classes=3, per_class=6, names=["a", "b", "c"])
    for other in "bc":
        shutil.copy(data / "a" / "img_000.jpg", data / other / "copy.jpg")
    outcome = audit_fn(data, out=tmp_path / "audit", **TINY, **FAST)
    rows = [f for f in outcome.result.findings if f.other_file == "a/img_000.jpg" and f.score == 1.0]
    assert [(f.file, f.kind, f.given_label, f.suggested_label, f.split) for f in rows] == [
        ("b/copy.jpg", "duplicate_conflict", "b", "a", ""),
        ("c/copy.jpg", "duplicate_conflict", "c", "a", ""),
    ]
    assert outcome.result.facts["left_out_conflict_copies"] == 2
    csv_text = (outcome.run / RunDir.AUDIT_CSV).read_text()
    assert "b/copy.jpg,duplicate_conflict,1.0,b,a,a/img_000.jpg,\n" in csv_text
    # The audit cut down to those rows, as the README says to use it: each list settles the conflict
    audit_csv = tmp_path / "conflicts.csv"
    head, *lines = csv_text.splitlines()
    audit_csv.write_text("\n".join([head, *[ln for ln in lines if ",duplicate_conflict," in ln]]) + "\n")
    assert read_exclude(audit_csv) == ("b/copy.jpg", "c/copy.jpg")
    assert read_relabel(audit_csv) == {}  # label issues only: a conflict's suggestion is the other copy's label
    cfg = config.resolve(data_dir=str(data), out=str(tmp_path / "run"), exclude=str(audit_csv), **TINY)
    (tmp_path / "run").mkdir()
    split = prepare(cfg, RunDir(tmp_path / "run"), resume=False, progress=False, say=lambda m: None).split
    kept = {r.path for r in split.rows}
    assert "a/img_000.jpg" in kept and not kept & {"b/copy.jpg", "c/copy.jpg"}
    # An audit of a folder without such copies has no such rows
    clean = make_image_folder(tmp_path / "clean", classes=2, per_class=4)
    assert audit_fn(clean, out=tmp_path / "audit2", **TINY, **FAST).result.facts["left_out_conflict_copies"] == 0
