"""Cached views on disk: float16 ``.npy`` files of per-image tensors, written as a stream and read a batch at a time.

Stage 2 trains on views of the frozen prefix's outputs (:mod:`floranet.training.prefix`). A view is written with
plain file writes (:class:`ViewWriter`; a memory map would count every written page in the process's memory) and
read with ``pread`` (:class:`ViewFile`), so the process holds one batch whatever the cache's size;
:class:`ViewSequence` feeds a view per epoch to Keras.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import keras
import numpy as np

from floranet.utils.files import atomic_path

FLOAT16_MAX = 65504.0


class ViewWriter:
    """Rows streamed into an open float16 ``.npy`` of ``n`` rows (see :func:`view_writer`)."""

    def __init__(self, f: BinaryIO, shape: tuple[int, ...], n: int) -> None:
        self._f, self.shape, self.n, self.done = f, shape, n, 0
        np.lib.format.write_array_header_1_0(f, {"descr": "<f2", "fortran_order": False, "shape": (n, *shape)})

    def write(self, batch: np.ndarray) -> None:
        if self.done + len(batch) > self.n:
            raise ValueError(f"more than the {self.n} rows this view was opened for")
        # Saturate rather than overflow to inf: these activations stay far below float16's range.
        self._f.write(np.clip(batch, -FLOAT16_MAX, FLOAT16_MAX).astype("<f2").tobytes())
        self.done += len(batch)

    def pad(self) -> None:
        """Zero rows after the last written (rows of images that failed to decode: never read)."""
        self._f.write(bytes(2 * math.prod(self.shape) * (self.n - self.done)))


@contextlib.contextmanager
def view_writer(path: Path, shape: tuple[int, ...], n: int) -> Iterator[ViewWriter]:
    """A :class:`ViewWriter` whose file appears at ``path`` (complete, padded) only when the block succeeds."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        writer = ViewWriter(f, shape, n)
        yield writer
        writer.pad()


def write_view(path: Path, shape: tuple[int, ...], n: int, batches: Iterable[np.ndarray]) -> int:
    """Streams ``batches`` into a float16 ``.npy`` of ``n`` rows (zero rows after the last batch); returns the
    rows written."""
    with view_writer(path, shape, n) as writer:
        for batch in batches:
            writer.write(batch)
    return writer.done


class ViewFile:
    """Rows of one cached view, read with ``pread`` on demand (float16 ``.npy``; only the first ``count`` rows
    hold images). Reads, not a memory map, keep the process's memory at one batch whatever the cache size."""

    def __init__(self, path: Path, count: int) -> None:
        with open(path, "rb") as f:
            np.lib.format.read_magic(f)
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            self.offset = f.tell()
        if dtype != np.dtype("<f2") or shape[0] < count:
            raise ValueError(f"{path} is not a cached view of {count} float16 rows (shape {shape}, {dtype})")
        self.path, self.count, self.shape = path, count, tuple(shape[1:])
        self.row_bytes = 2 * math.prod(self.shape)

    def __len__(self) -> int:
        return self.count

    def take(self, rows: np.ndarray) -> np.ndarray:
        """float32 ``[len(rows), *shape]`` of the given rows, in their order; read in file order, consecutive rows
        at once."""
        rows = np.asarray(rows, np.int64)
        order = np.argsort(rows, kind="stable")
        wanted = rows[order]
        out = np.empty((len(rows), *self.shape), np.float32)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            start = 0
            while start < len(wanted):
                end = start + 1
                while end < len(wanted) and wanted[end] == wanted[end - 1] + 1:
                    end += 1
                data = os.pread(fd, self.row_bytes * (end - start), self.offset + int(wanted[start]) * self.row_bytes)
                out[order[start:end]] = np.frombuffer(data, "<f2").reshape(end - start, *self.shape)
                start = end
        finally:
            os.close(fd)
        return out


class ViewSequence(keras.utils.PyDataset):
    """Batches of one cached view per epoch (epoch ``e``: view ``e mod views``), shuffled per epoch.

    Args:
        views: Per view, its cached float16 prefix outputs.
        labels: Label of each row (the same rows in every view).
        batch_size: Rows per batch.
        seed: Seeds each epoch's order.
        first_epoch: The epoch training starts at (a resumed run continues the view cycle).
        class_weight: Per-class sample weights, or None.
    """

    def __init__(
        self,
        views: list[ViewFile],
        labels: np.ndarray,
        batch_size: int,
        seed: int,
        first_epoch: int = 0,
        class_weight: dict[int, float] | None = None,
    ) -> None:
        super().__init__()
        self.views, self.labels, self.batch_size, self.seed = views, labels, batch_size, seed
        self.weights = (
            None if class_weight is None else np.asarray([class_weight.get(int(c), 1.0) for c in labels], np.float32)
        )
        self.epoch = first_epoch
        self._order = self._shuffled()

    def _shuffled(self) -> np.ndarray:
        return np.random.default_rng(self.seed + self.epoch).permutation(len(self.labels))

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __getitem__(self, i: int) -> tuple[np.ndarray, ...]:
        rows = np.sort(self._order[i * self.batch_size : (i + 1) * self.batch_size])  # sorted: sequential reads
        x = self.views[self.epoch % len(self.views)].take(rows)
        if self.weights is None:
            return x, self.labels[rows]
        return x, self.labels[rows], self.weights[rows]

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._order = self._shuffled()


__all__ = ["FLOAT16_MAX", "ViewFile", "ViewSequence", "ViewWriter", "view_writer", "write_view"]
