"""The one path from image files to model outputs, used by every command that runs a model on files.

Training's final evaluation, ``evaluate``, ``predict``, ``export``'s check and the stage-1 feature cache all
decode through :mod:`floranet.data.pipeline` and call the model here; the server, which receives bytes,
decodes with the same :func:`floranet.data.decode.decode_bytes` and calls the same compiled model.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from floranet.config import DEFAULT_MAX_PIXELS
from floranet.data import decode, images
from floranet.errors import DatasetError
from floranet.utils.system import usable_cpus
from floranet.utils.text import quoted

# A job of at most this many files decodes each one directly: building a tf.data pipeline costs more.
SMALL_JOB = 4

ModelFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class FileOutputs:
    """A model's outputs on a list of files, aligned with it.

    Attributes:
        outputs: float32 ``[n, ...]``; rows of files that could not be used are zeros.
        errors: ``{index: reason}`` of the files that could not be used.
    """

    outputs: np.ndarray
    errors: dict[int, str]

    @property
    def ok(self) -> np.ndarray:
        """bool ``[n]``: which rows hold real outputs."""
        mask = np.ones(len(self.outputs), bool)
        mask[list(self.errors)] = False
        return mask


def iter_outputs(
    fn: ModelFn,
    paths: Sequence[str | os.PathLike[str]],
    *,
    image_size: tuple[int, int],
    batch_size: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    tf_decodable: Sequence[bool | None] | None = None,
) -> Iterator[tuple[list[int], np.ndarray]]:
    """Streams ``(positions in paths, outputs)`` batch by batch; files that cannot be decoded are left out.

    ``fn`` may have a ``map(batches)`` method (a streaming OpenVINO model): several batches are then in
    flight at once while decoding stays ahead.
    """
    if not paths:
        return
    from floranet.data import pipeline  # TensorFlow: only this path needs it

    ds = pipeline.make_dataset(
        [os.fspath(p) for p in paths],
        list(range(len(paths))),
        image_size=image_size,
        batch_size=batch_size,
        tf_decodable=tf_decodable,
        max_pixels=max_pixels,
        on_error="skip",
    )
    order: collections.deque[list[int]] = collections.deque()

    def batches() -> Iterator[np.ndarray]:
        for pixels, positions in ds:
            order.append([int(p) for p in positions.numpy()])
            yield pixels.numpy()

    mapper = getattr(fn, "map", None)
    outputs = mapper(batches()) if callable(mapper) else map(fn, batches())
    for out in outputs:
        yield order.popleft(), np.asarray(out, dtype=np.float32)


def run_on_files(
    fn: ModelFn,
    paths: Sequence[str | os.PathLike[str]],
    *,
    image_size: tuple[int, int],
    batch_size: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    tf_decodable: Sequence[bool | None] | None = None,
    job_size: int | None = None,
    without_tensorflow: bool = False,
    run_limit: bool = False,
) -> FileOutputs:
    """Runs ``fn`` (float32 ``[B, H, W, 3]`` RGB 0..255 → outputs) on every file, in order.

    Args:
        fn: A compiled model (:func:`floranet.inference.runtime.compile_inference`).
        paths: Image files.
        image_size: ``(h, w)`` the model takes.
        batch_size: Images per call.
        max_pixels: Larger images are refused (decompression-bomb guard).
        tf_decodable: Per file, the doctor's verdict on the fast decoder (None: guessed).
        job_size: When these files are one part of a larger job (a distributed worker's share), the
            whole job's size: the decode path is then chosen as for the whole job, so results are equal.
        without_tensorflow: Decode in a thread pool with Pillow and NumPy (the same pixels) instead of tf.data,
            so a model that needs no TensorFlow (the run's compiled IR) runs without importing it.
        run_limit: ``max_pixels`` is a trained run's (predict): a too-large image's error names the run's
            config.yaml (:func:`floranet.data.images.with_run_limit`), not an argument the caller has.
    """
    n = len(paths)
    if n and (job_size if job_size is not None else n) <= SMALL_JOB:
        return _direct(fn, paths, image_size, max_pixels, run_limit)
    outputs: np.ndarray | None = None
    seen = np.zeros(n, bool)
    stream = (
        _pillow_outputs(fn, paths, image_size, batch_size, max_pixels)
        if without_tensorflow
        else iter_outputs(
            fn, paths, image_size=image_size, batch_size=batch_size, max_pixels=max_pixels, tf_decodable=tf_decodable
        )
    )
    for positions, out in stream:
        if outputs is None:
            outputs = np.zeros((n, *out.shape[1:]), np.float32)
        outputs[positions] = out
        seen[positions] = True
    errors = {int(i): _reason(paths[int(i)], max_pixels, run_limit) for i in np.flatnonzero(~seen)}
    return FileOutputs(outputs if outputs is not None else np.zeros((n, 0), np.float32), errors)


def _pillow_outputs(
    fn: ModelFn, paths: Sequence[str | os.PathLike[str]], image_size: tuple[int, int], batch_size: int, max_pixels: int
) -> Iterator[tuple[list[int], np.ndarray]]:
    """Like :func:`iter_outputs`, decoding with Pillow in threads (it releases the GIL) instead of tf.data."""

    def decoded(i: int) -> np.ndarray | None:
        try:
            return decode.load_resized(paths[i], image_size, max_pixels=max_pixels)
        except DatasetError:
            return None

    workers = max(1, min(4, usable_cpus()))
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="floranet-decode") as pool:
        for start in range(0, len(paths), batch_size):
            chunk = list(pool.map(decoded, range(start, min(start + batch_size, len(paths)))))
            positions = [start + j for j, x in enumerate(chunk) if x is not None]
            if positions:
                yield positions, np.asarray(fn(np.stack([x for x in chunk if x is not None])), np.float32)


def _direct(
    fn: ModelFn, paths: Sequence[str | os.PathLike[str]], image_size: tuple[int, int], max_pixels: int, run_limit: bool
) -> FileOutputs:
    decoded: dict[int, np.ndarray] = {}
    errors: dict[int, str] = {}
    for i, path in enumerate(paths):
        try:
            decoded[i] = decode.decode_and_resize(path, image_size, max_pixels=max_pixels)
        except DatasetError as e:
            errors[i] = _said(e, run_limit)
    if not decoded:
        return FileOutputs(np.zeros((len(paths), 0), np.float32), errors)
    # One image per call, as the server and a single `predict` see it.
    rows = {i: np.asarray(fn(x[None]), np.float32)[0] for i, x in decoded.items()}
    shape = next(iter(rows.values())).shape
    outputs = np.zeros((len(paths), *shape), np.float32)
    for i, row in rows.items():
        outputs[i] = row
    return FileOutputs(outputs, errors)


def _reason(path: str | os.PathLike[str], max_pixels: int, run_limit: bool) -> str:
    """Why a file the pipeline skipped cannot be used (decoded again, with Pillow, for its reason)."""
    try:
        images.load_image(path, max_pixels=max_pixels)
    except DatasetError as e:
        return _said(e, run_limit)
    return f"Cannot decode image: {quoted(os.fsdecode(path))} could not be decoded"


def _said(error: DatasetError, run_limit: bool) -> str:
    return str(images.with_run_limit(error) if run_limit else error)
