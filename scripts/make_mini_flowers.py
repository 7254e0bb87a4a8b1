#!/usr/bin/env python
"""Builds the bundled sample ``src/floranet/data/mini_flowers`` from the shared photos.

Source: ``../shared/data/flower_photos`` (relative to the repository root): the
class folders of TensorFlow's flower_photos set and its ``MANIFEST.tsv``. Only
photos whose ``image_source`` is ``full_resolution`` are used (the others are
squashed 224x224 copies). For each class, 60 photos are drawn with a fixed seed
from the sorted list, EXIF orientation is applied, the longer side is downsized
to 160 px (aspect kept) and the image is re-encoded as baseline JPEG (quality 85,
no EXIF/ICC/comments), under its original file name (the Flickr photo id).

Deterministic: the same source and the same Pillow build give identical bytes.

    .venv/bin/python scripts/make_mini_flowers.py            # rebuilds the sample
    .venv/bin/python scripts/make_mini_flowers.py --check    # fails if it would change
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

import PIL
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "flower_photos"
DEFAULT_OUT = REPO / "src" / "floranet" / "data" / "mini_flowers"
CLASSES = ("daisy", "dandelion", "roses", "sunflowers", "tulips")
PER_CLASS = 60  # 30 until issue 14: 60 gave the offline demo a better mean, a smaller spread
SEED = 20240601
LONG_SIDE = 160
QUALITY = 85
MAX_BYTES = 3_000_000
COMMAND = "python scripts/make_mini_flowers.py"


def pick(source: Path) -> dict[str, list[str]]:
    """Class → sorted file names of the chosen full-resolution photos."""
    manifest = source / "MANIFEST.tsv"
    by_class: dict[str, list[str]] = {c: [] for c in CLASSES}
    with open(manifest, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if row["class"] in by_class and row["image_source"] == "full_resolution":
                by_class[row["class"]].append(row["file"])
    chosen = {}
    for cls in CLASSES:
        files = sorted(by_class[cls])
        if len(files) < PER_CLASS:
            raise SystemExit(f"error: only {len(files)} full-resolution photos of {cls} in {manifest}")
        rng = random.Random(f"{SEED}:{cls}")  # str seeds hash deterministically (sha512)
        chosen[cls] = sorted(rng.sample(files, PER_CLASS))
    return chosen


def encode(path: Path) -> tuple[bytes, tuple[int, int]]:
    """The downsized, re-encoded JPEG bytes of one photo and its size."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)  # apply the EXIF orientation before dropping EXIF
        im = im.convert("RGB")
        w, h = im.size
        scale = LONG_SIDE / max(w, h)
        if scale < 1:
            im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        # No exif=/icc_profile=/comment=: nothing but pixels is written.
        im.save(buf, "JPEG", quality=QUALITY, optimize=True, progressive=False, subsampling="4:2:0")
        return buf.getvalue(), im.size


def source_md(chosen: dict[str, list[str]], total: int) -> str:
    counts = "\n".join(f"| {cls} | {len(files)} |" for cls, files in chosen.items())
    n = sum(len(v) for v in chosen.values())
    return f"""# mini_flowers: the sample bundled with floranet

{n} photos in {len(chosen)} class folders ({PER_CLASS} per class), downsized so the longer side is
{LONG_SIDE} px. Enough for every step of floranet offline (the `demo` falls back to it) and for a
rough accuracy figure (60 validation photos), not a benchmark. Total size of the photos: {total:,} bytes.

| class | photos |
| ----- | -----: |
{counts}

## Origin

The photos come from TensorFlow's `flower_photos` set
(<https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz>,
3,670 photos in 5 classes), which collects photos published on Flickr. They were taken from the
project's shared copy of that set (`shared/data/flower_photos`, see its `SOURCE.txt`), using only
the full-resolution originals listed in its `MANIFEST.tsv` (`image_source == full_resolution`).

## Licence and attribution

The photos are licensed under Creative Commons Attribution 2.0 (CC-BY 2.0,
<https://creativecommons.org/licenses/by/2.0/>) by their Flickr photographers. The file names are
unchanged: they are the Flickr photo ids (`<photo-id>_<secret>[_size].jpg`), so each photo's page
and author can be found at `https://www.flickr.com/photo.gne?id=<photo-id>`; the photographer list
is in `flower_photos/LICENSE.txt` of the archive above. The photos were modified: rotated upright
according to their EXIF orientation, downsized and re-encoded as JPEG without metadata.

## How it was built

```
{COMMAND}
```

For each class: the sorted list of full-resolution file names, {PER_CLASS} drawn with
`random.Random("{SEED}:<class>").sample`, sorted again; EXIF orientation applied; resized with
Lanczos so the longer side is {LONG_SIDE} px (aspect ratio kept); saved as baseline JPEG with
quality {QUALITY}, 4:2:0 subsampling, optimized Huffman tables, no EXIF/ICC/comment. Running the
script again gives identical bytes (with the same Pillow build; built with Pillow {PIL.__version__}).
This file sits at the top level of the sample, beside the class folders, where the dataset doctor
ignores it.
"""


def build(source: Path, out_dir: Path) -> tuple[dict[str, list[str]], int]:
    """Writes the sample into the empty folder ``out_dir``; returns the choice and total bytes."""
    chosen = pick(source)
    total = 0
    for cls, files in chosen.items():
        (out_dir / cls).mkdir(parents=True)
        for name in files:
            data, _ = encode(source / cls / name)
            (out_dir / cls / name).write_bytes(data)
            total += len(data)
    (out_dir / "SOURCE.md").write_text(source_md(chosen, total), encoding="utf-8", newline="\n")
    return chosen, total


def tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(q for q in folder.rglob("*") if q.is_file()):
        h.update(p.relative_to(folder).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source",
        type=Path,
        default=DEFAULT_SOURCE,
        help=f"the shared flower_photos folder (default: {DEFAULT_SOURCE})",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default: {DEFAULT_OUT}")
    parser.add_argument(
        "--check", action="store_true", help="build into a temporary folder and fail if it differs from --out"
    )
    args = parser.parse_args(argv)

    source: Path = args.source
    if not (source / "MANIFEST.tsv").is_file() or not all((source / c).is_dir() for c in CLASSES):
        print(
            f"error: the shared photos are not at {source} (expected MANIFEST.tsv and the folders "
            f"{', '.join(CLASSES)}). This script needs the project's shared data checkout "
            "(../shared next to the repository) or --source DIR; it will not build the sample "
            "from anything else.",
            file=sys.stderr,
        )
        return 2

    out: Path = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".mini_flowers-build-", dir=out.parent))
    try:
        chosen, total = build(source, tmp / "mini_flowers")
        if total > MAX_BYTES:
            print(f"error: the sample would be {total:,} bytes, over {MAX_BYTES:,}", file=sys.stderr)
            return 1
        new = tmp / "mini_flowers"
        if args.check:
            same = out.is_dir() and tree_digest(out) == tree_digest(new)
            print(f"{out}: {'up to date' if same else 'DIFFERS from a fresh build'}")
            return 0 if same else 1
        if out.exists():
            shutil.rmtree(out)
        os.replace(new, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(
        f"wrote {out}: {sum(map(len, chosen.values()))} photos "
        f"({', '.join(f'{c} {len(v)}' for c, v in chosen.items())}), {size:,} bytes in all, "
        f"sha256 of the tree {tree_digest(out)[:16]}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
