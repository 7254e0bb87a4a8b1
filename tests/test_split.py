"""The split manifest: stratified, deterministic, duplicate-safe, round-trips."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

from floranet.data.split import SPLIT_COLUMNS, Split, SplitRow, check_split_against, make_split
from floranet.errors import ConfigError, DatasetError


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def _items(sizes: dict[str, int]) -> list[tuple[str, str, str]]:
    return [(f"{label}/img_{i:04d}.jpg", label, _sha(f"{label}{i}")) for label, n in sizes.items() for i in range(n)]


def _sides(split: Split) -> dict[str, str]:
    return {r.path: r.split for r in split.rows}


@pytest.mark.parametrize("val_split", [0.1, 0.2, 0.25, 0.5, 0.9])
def test_stratified_within_one_image_per_class(val_split: float) -> None:
    rng = random.Random(7)
    for trial in range(5):
        sizes = {f"class_{c}": rng.randint(1, 60) for c in range(rng.randint(2, 6))}
        split = make_split(_items(sizes), val_split=val_split, seed=trial)
        counts = split.counts()
        for label, n in sizes.items():
            assert counts[label]["train"] + counts[label]["validation"] == n
            assert abs(counts[label]["validation"] - val_split * n) <= 1, (label, n, counts[label])
            assert counts[label]["train"] >= 1


def test_single_image_class_goes_to_train() -> None:
    split = make_split(_items({"a": 1, "b": 10}), val_split=0.9)
    assert split.counts()["a"] == {"train": 1, "validation": 0}


def test_deterministic_and_independent_of_input_order() -> None:
    items = _items({"daisy": 37, "roses": 23, "tulips": 11})
    first = make_split(items, seed=5)
    shuffled = list(items)
    random.Random(1).shuffle(shuffled)
    assert make_split(items, seed=5) == first
    assert make_split(shuffled, seed=5) == first
    assert make_split(list(reversed(items)), seed=5) == first
    assert make_split(items, seed=6) != first
    assert [r.path for r in first.rows] == sorted(p for p, _, _ in items)
    assert first.class_names == ("daisy", "roses", "tulips")
    assert [first.label_index(n) for n in first.class_names] == [0, 1, 2]


def test_duplicates_never_split_across_sides() -> None:
    rng = random.Random(3)
    items = []
    for label in ("a", "b", "c"):
        for i in range(40):
            # ~1 in 3 images shares its bytes with 1-3 others of its class.
            items.append((f"{label}/{i:03d}.jpg", label, _sha(f"{label}{rng.randint(0, 25)}")))
    items.append(("a/conflict.jpg", "a", _sha("shared")))  # cross-class group: kept together too
    items.append(("b/conflict.jpg", "b", _sha("shared")))
    for seed in range(20):
        split = make_split(items, val_split=0.3, seed=seed)
        by_sha: dict[str, set[str]] = {}
        for r in split.rows:
            by_sha.setdefault(r.sha256, set()).add(r.split)
        assert all(len(sides) == 1 for sides in by_sha.values())
        assert len(split.validation()) > 0


def test_val_split_out_of_range_is_config_error() -> None:
    for bad in (0, 0.0, 1, 1.5, -0.2, float("nan"), True, "0.2"):
        with pytest.raises(ConfigError, match="val_split"):
            make_split(_items({"a": 5}), val_split=bad)  # type: ignore[arg-type]


def test_labels_outside_class_names_and_duplicate_paths() -> None:
    with pytest.raises(DatasetError, match="class_names"):
        make_split(_items({"a": 3, "b": 3}), class_names=["a"])
    with pytest.raises(DatasetError, match="duplicate"):
        make_split([("x.jpg", "a", ""), ("x.jpg", "b", "")])
    split = make_split(_items({"b": 3}), class_names=["a", "b"])
    assert split.label_index("b") == 1
    assert split.counts()["a"] == {"train": 0, "validation": 0}
    with pytest.raises(DatasetError, match="label='zzz'"):
        split.label_index("zzz")


def test_csv_round_trip_with_spaces_and_non_utf8(tmp_path: Path) -> None:
    weird = os.fsdecode(b"roses/caf\xe9 \xff.jpg")  # Latin-1 bytes: surrogate-escaped str
    assert "\udce9" in weird
    items = _items({"roses": 6, "tulips": 5}) + [
        ("roses/with space, and comma.jpg", "roses", _sha("s")),
        (weird, "roses", _sha("w")),
        ('tulips/quote"d.jpg', "tulips", ""),
    ]
    split = make_split(items, seed=9)
    out = tmp_path / "runs" / "split.csv"
    split.to_csv(out)
    assert out.read_bytes().startswith(",".join(SPLIT_COLUMNS).encode() + b"\n")
    assert b"caf\xe9 \xff.jpg" in out.read_bytes()  # the original bytes, not UTF-8 of U+DCE9
    assert not [p for p in out.parent.iterdir() if p.name != "split.csv"]  # no temp file left
    back = Split.from_csv(out)
    assert back == split
    assert Split.from_csv(out, class_names=["roses", "tulips", "zinnia"]).class_names == ("roses", "tulips", "zinnia")


def test_a_class_named_with_spaces_round_trips(tmp_path: Path) -> None:
    split = make_split(_items({" daisy ": 5, "roses": 5}), seed=1)
    split.to_csv(tmp_path / "split.csv")
    for names in (None, split.class_names):
        assert Split.from_csv(tmp_path / "split.csv", class_names=names) == split
    # A hand-written file's padding around a class's name is still forgiven.
    hand = _write(tmp_path / "hand.csv", "path,label,split,sha256\na.jpg, roses ,train,\n")
    assert Split.from_csv(hand, class_names=["roses"]).train() == [SplitRow("a.jpg", "roses", "train", "")]


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_a_path_as_find_writes_it_names_the_file(tmp_path: Path) -> None:
    """``./a/1.jpg`` and ``a//1.jpg`` were kept as written, matched no file and were left out ("1 files of the split
    are missing"), where an exclude or relabel list reads them as ``a/1.jpg``."""
    body = "path,label,split,sha256\n./a/1.jpg,a,train,\na//2.jpg,a,validation,\nb/./3.jpg,b,train,\n"
    split = Split.from_csv(_write(tmp_path / "split.csv", body))
    assert [r.path for r in split.rows] == ["a/1.jpg", "a/2.jpg", "b/3.jpg"]
    with pytest.raises(DatasetError, match="line 3: duplicate path 'a/1.jpg' .first on line 2."):
        Split.from_csv(
            _write(tmp_path / "twice.csv", "path,label,split,sha256\n./a/1.jpg,a,train,\na/1.jpg,a,train,\n")
        )


@pytest.mark.parametrize(
    ("body", "line", "match"),
    [
        ("path,label,sha256\na.jpg,a,\n", 1, r"missing column\(s\) \['split'\]"),
        ("path,label,split,sha256\na.jpg,a,train,\nb.jpg,a,test,\n", 3, "split='test'"),
        ("path,label,split,sha256\na.jpg,a,train,\nb.jpg,,train,\n", 3, "label is empty"),
        ("path,label,split,sha256\na.jpg,a,train,\na.jpg,a,validation,\n", 3, "duplicate path"),
        ("path,label,split,sha256\n/etc/passwd,a,train,\n", 2, "relative"),
        ("path,label,split,sha256\n../x.jpg,a,train,\n", 2, "relative"),
        ("path,label,split,sha256\na.jpg,a,train,xyz\n", 2, "sha256='xyz'"),
        ("path,label,split,sha256\na.jpg,a,train\n", 2, "expected 4 fields"),
    ],
)
def test_bad_manifest_names_file_and_line(tmp_path: Path, body: str, line: int, match: str) -> None:
    path = _write(tmp_path / "bad split.csv", body)
    with pytest.raises(DatasetError, match=match) as info:
        Split.from_csv(path)
    assert "bad split.csv" in str(info.value)
    assert f"line {line}:" in str(info.value)


def test_bad_manifest_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="missing.csv"):
        Split.from_csv(tmp_path / "missing.csv")
    with pytest.raises(DatasetError, match="empty"):
        Split.from_csv(_write(tmp_path / "empty.csv", ""))
    with pytest.raises(DatasetError, match=r"line 2: label must be one of class_names"):
        Split.from_csv(_write(tmp_path / "c.csv", "path,label,split,sha256\na.jpg,a,train,\n"), class_names=["b"])
    # A BOM (spreadsheet export) and extra columns are fine.
    ok = _write(tmp_path / "ok.csv", "\ufeffpath,label,split,sha256,note\na.jpg,a,validation,,hi\n")
    assert Split.from_csv(ok).validation() == [SplitRow("a.jpg", "a", "validation", "")]


def test_a_device_as_split_file_is_refused_not_read_whole(tmp_path: Path) -> None:
    """The size check read stat(), 0 for a device: /dev/zero was read until memory ran out."""
    link = tmp_path / "zero.csv"
    link.symlink_to("/dev/zero")
    with pytest.raises(DatasetError, match=r"zero.csv' not a split manifest: file too large"):
        Split.from_csv(link)


def test_names_that_start_like_a_formula_are_quoted_and_read_back(tmp_path: Path) -> None:
    """split.csv wrote '=cls/0.jpg' and '=cls' as they are: a spreadsheet runs them (audit.csv quotes them)."""
    split = make_split([("=cls/0.jpg", "=cls", ""), ("+b/1.jpg", "+b", ""), ("c/@2.jpg", "c", "")], val_split=0.5)
    path = tmp_path / "split.csv"
    split.to_csv(path)
    lines = path.read_text().splitlines()[1:]
    assert sorted(ln.split(",")[0] for ln in lines) == ["'+b/1.jpg", "'=cls/0.jpg", "c/@2.jpg"]
    assert Split.from_csv(path) == split


@pytest.mark.parametrize("name", ["'=eq", "''+b", "'", "'plain", "=a", "''"])
def test_every_name_reads_back_as_it_was_quotes_included(name: str) -> None:
    """A class folder named "'=eq" was written as it was and read back as "=eq": training failed at its end."""
    from floranet.utils.text import formula_safe, unquote_formula

    assert unquote_formula(formula_safe(name)) == name


def test_check_split_against_current_files() -> None:
    class Finding:
        def __init__(self, path: str, label: str, sha256: str) -> None:
            self.path, self.label, self.sha256 = path, label, sha256

    items = _items({"a": 8, "b": 4})
    split = make_split(items)
    findings = [Finding(p, lab, sha) for p, lab, sha in items]
    check_split_against(split, findings)
    findings[0].sha256 = _sha("changed")
    with pytest.raises(DatasetError, match=r"a/img_0000.jpg' \(contents changed\)"):
        check_split_against(split, findings)
    with pytest.raises(DatasetError, match=r"12 file\(s\).* and 2 more"):
        check_split_against(split, [])
