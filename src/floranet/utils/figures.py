"""Figures without a display: charts with matplotlib's object API (no pyplot state), picture grids with Pillow;
both saved as PNG atomically."""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from floranet.utils.files import atomic_path
from floranet.utils.text import printable

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_PAD = 6  # pixels around each cell of an image grid
_MIN_CELL_WIDTH = 220  # room for a file name and "true roses, predicted sunflowers (74%)" at 11 px
# The PNG text chunk every figure floranet saves carries (image_grid, save_figure): an explain overlay of that name
# may be replaced, anything else is kept; and explain leaves such a PNG out of its inputs (a run's own plots).
SOFTWARE_KEY, SOFTWARE = "Software", "floranet"
# A Grad-CAM overlay's longer side, in explain, the report and serve alike: a larger photo is scaled down to 384 px,
# a tiny one up to 192.
SHOWN_SIDE = (192, 384)


def new_figure(
    rows: int = 1,
    columns: int = 1,
    *,
    size: tuple[float, float],
    squeeze: bool = True,
    layout: Literal["constrained", "compressed", "tight"] | None = None,
) -> tuple[Figure, Any]:
    """A figure and its axes (as ``pyplot.subplots`` returns them); ``layout``: matplotlib's layout engine (e.g.
    ``"constrained"``, which keeps each axes' labels clear of the others), None for none."""
    from matplotlib.figure import Figure  # here: the server draws heat maps with this module, never charts

    fig = Figure(figsize=size, layout=layout)
    return fig, fig.subplots(rows, columns, squeeze=squeeze)


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> None:
    """Writes ``fig`` as a PNG, atomically, marked as floranet's (:func:`written_here`)."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png", metadata={SOFTWARE_KEY: SOFTWARE})


def heat_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """``image`` (uint8 RGB) with ``heat`` (values in 0..1, any resolution) blended over it in the jet colour map."""
    from matplotlib import colormaps
    from PIL import Image

    h, w = image.shape[:2]
    scaled = Image.fromarray((np.clip(heat, 0.0, 1.0) * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BILINEAR)
    colours = colormaps["jet"](np.asarray(scaled) / 255.0)[..., :3] * 255.0
    return np.clip(np.asarray(image, np.float32) * (1 - alpha) + colours * alpha, 0, 255).astype(np.uint8)


def shown_photo(photo: np.ndarray) -> np.ndarray:
    """``photo`` (upright uint8 RGB) at its own aspect ratio with its longer side scaled into :data:`SHOWN_SIDE`:
    what a Grad-CAM overlay is drawn on, by ``explain``, the report and ``serve`` (the model's square input squashed
    a 400x20 photo into a square of streaks, and showed a large one at 32 px)."""
    from PIL import Image

    h, w = photo.shape[:2]
    scale = min(max(max(h, w), SHOWN_SIDE[0]), SHOWN_SIDE[1]) / max(h, w)
    if scale == 1:
        return photo
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.BILINEAR))


def image_grid(
    images: Sequence[np.ndarray],
    captions: Sequence[str],
    path: str | os.PathLike[str],
    *,
    columns: int = 3,
    overlays: Sequence[np.ndarray | None] | None = None,
    max_side: int = 256,
    font_size: int = 11,
) -> None:
    """Writes images in a grid, each under its caption (lines split at ``\\n``), as a PNG.

    Drawn with Pillow at the images' own size (longer side at most ``max_side``): a grid of pictures needs
    no plotting library, and matplotlib took seconds for each of the audit's galleries.

    Args:
        images: uint8 RGB arrays (any sizes).
        captions: One per image; a line too wide for its cell keeps its end ("…" in front).
        path: The PNG to write.
        columns: Cells per row.
        overlays: Heat maps (values in 0..1) blended over the images (:func:`heat_overlay`); None: none.
        max_side: Larger images are scaled down to this.
        font_size: Caption size in pixels.
    """
    from PIL import Image, ImageDraw

    pictures = []
    for i, image in enumerate(images):
        pixels = np.clip(np.asarray(image), 0, 255).astype(np.uint8)
        if overlays is not None and overlays[i] is not None:
            pixels = heat_overlay(pixels, np.asarray(overlays[i]))
        picture = Image.fromarray(pixels)
        picture.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
        pictures.append(picture)
    font = _font(font_size)
    line_height = font_size + 3
    cell_w = max([p.width for p in pictures] + [_MIN_CELL_WIDTH])
    lines = [caption_lines(c, font, cell_w) for c in captions[: len(pictures)]]
    text_h = line_height * max([len(x) for x in lines] + [0])
    cell_h = max([p.height for p in pictures] + [1]) + text_h
    rows = max(1, (len(pictures) + columns - 1) // columns)
    width = min(columns, max(1, len(pictures))) * (cell_w + _PAD) + _PAD
    sheet = Image.new("RGB", (width, rows * (cell_h + _PAD) + _PAD), "white")
    draw = ImageDraw.Draw(sheet)
    for i, picture in enumerate(pictures):
        x = _PAD + (i % columns) * (cell_w + _PAD)
        y = _PAD + (i // columns) * (cell_h + _PAD)
        for j, text in enumerate(lines[i]):
            draw.text((x + (cell_w - font.getlength(text)) / 2, y + j * line_height), text, fill="black", font=font)
        sheet.paste(picture, (x + (cell_w - picture.width) // 2, y + text_h))
    from PIL.PngImagePlugin import PngInfo

    marker = PngInfo()
    marker.add_text(SOFTWARE_KEY, SOFTWARE)  # how a later run knows the file is its own to replace
    with atomic_path(path, suffix=".png") as tmp:
        sheet.save(tmp, format="PNG", pnginfo=marker)


def written_here(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a PNG that :func:`image_grid` or :func:`save_figure` wrote (its text chunk says so; read
    from the header)."""
    from PIL import Image

    try:
        with Image.open(path, formats=["PNG"]) as im:
            return im.info.get(SOFTWARE_KEY) == SOFTWARE
    except Exception:  # noqa: BLE001 - anything that is not a readable PNG is not ours
        return False


@cache
def _font(size: int) -> Any:
    """DejaVu Sans from matplotlib's own files (it has the arrows and ellipses captions use); Pillow's
    built-in font where that file is missing."""
    import matplotlib
    from PIL import ImageFont

    try:
        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size)
    except OSError:
        return ImageFont.load_default(size)


def caption_lines(caption: str, font: Any, width: int) -> list[str]:
    """The lines a caption is drawn in, each fitting ``width`` pixels: its first line (a file's path) keeps its
    end; the others are broken between words, so none loses its start ("UNKNOWN: ..." over a narrow photo lost
    the word that carried the verdict)."""
    if not caption:
        return []
    first, *rest = (printable(line) for line in caption.split("\n"))
    return [_fit(first, font, width), *(part for line in rest for part in _wrap(line, font, width))]


def _wrap(text: str, font: Any, width: int) -> list[str]:
    """``text`` in lines of whole words that fit ``width`` pixels; a word longer than a line keeps its end."""
    out: list[str] = []
    for word in text.split(" "):
        if out and font.getlength(f"{out[-1]} {word}") <= width:
            out[-1] += f" {word}"
        else:
            out.append(word)
    return [_fit(line, font, width) for line in out]


def _fit(text: str, font: Any, width: int) -> str:
    """``text``, or its longest end that fits ``width`` pixels after a "…"."""
    if font.getlength(text) <= width:
        return text
    lo, hi = 0, len(text)  # the fewest leading characters to drop so that "…" + the rest fits
    while lo < hi:
        mid = (lo + hi) // 2
        if font.getlength("…" + text[mid:]) <= width:
            hi = mid
        else:
            lo = mid + 1
    return "…" + text[lo:]
