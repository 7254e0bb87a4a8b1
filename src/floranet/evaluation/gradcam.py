"""Grad-CAM (Selvaraju et al. 2017) from the backbone's last convolutional stage."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from floranet.data.archives import NAME_MAX
from floranet.data.images import load_image, with_run_limit
from floranet.data.inputs import expand_inputs, once
from floranet.data.resize import bilinear
from floranet.errors import ConfigError, DatasetError, ModelError
from floranet.models import classifier
from floranet.rundir import RunDir
from floranet.utils.figures import SHOWN_SIDE, image_grid, shown_photo, written_here
from floranet.utils.files import TEMP_NAME_EXTRA, check_outside
from floranet.utils.text import printable

log = logging.getLogger(__name__)
NO_EVIDENCE = "no positive evidence for"  # a map that is all zero: nothing in the image raised the class


def last_feature_map(backbone: keras.Model) -> tuple[str, keras.KerasTensor]:
    """(a name for it, the tensor): the backbone's last spatial (4-D) feature map, the one its global pooling
    reads. Not simply the last layer with a 4-D output: ConvNeXt's last residual sum is ``x + branch``, an
    operation rather than a layer, and that layer is the branch alone, nearly none of the signal."""
    for layer in reversed(backbone.layers):
        if len(layer.output.shape) == 2 and len(getattr(layer.input, "shape", ())) == 4:  # the pooling
            return f"{layer.name} input", layer.input
    for layer in reversed(backbone.layers):
        if len(layer.output.shape) == 4:
            return layer.name, layer.output
    raise ModelError(f"backbone {backbone.name!r} has no 4-D feature map")


class GradCAM:
    """Heat maps of where a classifier looked, for any class.

    Args:
        model: A classifier built by :func:`floranet.models.classifier.build_classifier`.
        layer: Backbone layer to explain; by default the feature map its global pooling reads (its last stage).
    """

    def __init__(self, model: keras.Model, layer: str | None = None) -> None:
        base = classifier.backbone_of(model)
        self.layer, feature_map = (layer, base.get_layer(layer).output) if layer else last_feature_map(base)
        multi = keras.Model(base.inputs, [feature_map, base.outputs[0]])
        inputs = keras.Input(shape=model.inputs[0].shape[1:])
        x = inputs
        for layer_ in model.layers[1:]:
            if layer_.name == classifier.BACKBONE_LAYER:
                break
            x = layer_(x)
        conv, pooled = multi(x, training=False)
        self.map_size = (int(conv.shape[1] or 0), int(conv.shape[2] or 0))  # a map's (height, width)
        self.input_size = (int(model.inputs[0].shape[1] or 0), int(model.inputs[0].shape[2] or 0))
        self._model = keras.Model(inputs, [conv, *_scores(classifier.head_of(model), pooled)])

    def heatmaps(
        self, images: np.ndarray, class_index: int | np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Returns (heat maps in [0, 1] at feature-map resolution, probabilities).

        Args:
            images: float32 ``[B, H, W, 3]`` raw RGB 0..255.
            class_index: Class to explain per image; the predicted class by default.
        """
        x = tf.convert_to_tensor(np.asarray(images, np.float32))
        wanted = -1 if class_index is None else class_index  # -1: the predicted class
        idx = tf.broadcast_to(tf.convert_to_tensor(wanted, tf.int64), [x.shape[0]])
        cam, probs = self._maps(x, idx)
        cam = cam.numpy()
        peak = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1)
        return np.where(peak > 0, cam / np.where(peak > 0, peak, 1), 0.0), probs.numpy()

    @tf.function(reduce_retracing=True)
    def _maps(self, x: tf.Tensor, idx: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        # Traced: an eager gradient pass through ResNet50 costs ~0.8 s per call, the graph a fraction.
        with tf.GradientTape() as tape:
            conv, scores, probs = self._model(x, training=False)
            tape.watch(conv)
            idx = tf.where(idx < 0, tf.argmax(probs, axis=1), idx)
            score = tf.gather(scores, idx, axis=1, batch_dims=1)
        grads = tape.gradient(score, conv)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        return tf.nn.relu(tf.reduce_sum(weights * conv, axis=-1)), probs


def _scores(head: keras.Model, pooled: keras.KerasTensor) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """(the class scores Grad-CAM differentiates, the probabilities): the logits before the head's softmax, as in
    the paper; the probability saturates (p rounds to 1.0 and its gradient to 0, a blank map for a confident
    answer). A head that does not end in a softmax Dense is explained by its output."""
    last = head.layers[-1]
    if not (isinstance(last, keras.layers.Dense) and last.activation is keras.activations.softmax):
        probs = head(pooled, training=False)
        return probs, probs
    x = pooled
    for layer in head.layers[:-1]:
        x = layer(x, training=False)
    linear = keras.layers.Dense(last.units, dtype="float32", name="gradcam_logits")
    logits = linear(x)
    linear.set_weights(last.get_weights())  # a copy: the explained model's weights do not change afterwards
    return logits, keras.ops.softmax(logits)


def explain_files(
    run_dir: str | os.PathLike[str],
    paths: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    class_name: str | None = None,
    on_error: Callable[[str | os.PathLike[str], DatasetError], None] | None = None,
    note: Callable[[str | os.PathLike[str]], str | None] | None = None,
) -> list[tuple[Path, Path]]:
    """Writes one Grad-CAM overlay PNG per image (``<stem>.gradcam.png``; ``<stem>.2.gradcam.png`` and on for
    later images of the same name; a stem too long for the file system cut to its start, "~" and a short hash),
    captioned with the image's path as given, and returns ``(image, overlay)``
    pairs in the order of the images.

    Images floranet drew (overlays of an earlier run in an input folder, a run's plots) are left out, and said:
    explaining them again added ``x.gradcam.gradcam.png`` on every rerun.

    Args:
        run_dir: A finished run directory.
        paths: Image files, folders (walked) and patterns, as predict takes them.
        out_dir: Where the PNGs go (created).
        class_name: Explain this class; the predicted class by default.
        on_error: Called with an image that cannot be decoded (or an input that names no image) and why, and the
            others are explained; None: the first such image raises.
        note: A line for an image's caption, or None (e.g. the run's "unknown" answer:
            :func:`floranet.workflows.explain.explain`).

    Raises:
        ConfigError: ``class_name`` is not one of the run's classes, or ``out_dir`` is a file or lies in the run
            directory or the data folder it was trained on.
        DatasetError: An image cannot be decoded, or an input names no image.
    """
    run = RunDir.open(run_dir)
    out = _checked_out(run, out_dir)
    model = run.load_model()
    names = run.class_names()
    if class_name is not None and class_name not in names:
        raise ConfigError(f"class_name must be one of {', '.join(names)}. Received: class_name={class_name!r}")
    files = _images(paths, on_error)
    targets = _targets(out, files)
    size = (int(model.inputs[0].shape[1]), int(model.inputs[0].shape[2]))
    max_pixels = run.max_pixels()  # what predict decodes, explain decodes
    cam = GradCAM(model)
    _warn_if_uniform(cam)
    written = []
    for p, target in zip(files, targets, strict=True):
        try:
            photo = load_image(p, max_pixels=max_pixels)  # upright (EXIF), at its own size: what the overlay shows
        except DatasetError as e:
            error = with_run_limit(e)  # explain has no --max-pixels: the hint names the run's config.yaml
            if on_error is None:
                raise error from None
            on_error(p, error)  # the other images are explained still
            continue
        idx = None if class_name is None else names.index(class_name)
        heat, probs = cam.heatmaps(bilinear(photo, size)[None], idx)  # the model's input, as predict resizes it
        shown = names[int(np.argmax(probs[0]))] if class_name is None else class_name
        # The path as given: two inputs of one name (a/x.jpg, b/x.jpg) are told apart on the picture too.
        caption = f"{printable(os.fspath(p))}\n{shown} ({probs[0][names.index(shown)]:.0%})"
        extra = note(p) if note is not None else None
        caption += f"\n{extra}" if extra else ""
        if not heat[0].any():  # drawn plain blue, it looked like "nowhere" rather than "no evidence"
            caption += f"\n{NO_EVIDENCE} {shown}"
            log.warning("%s: %s %s; its map is blank.", printable(os.fspath(p)), NO_EVIDENCE, printable(shown))
        image_grid([shown_photo(photo)], [caption], target, overlays=[heat[0]], columns=1, max_side=SHOWN_SIDE[1])
        written.append((p, target))
    return written


def uniform_maps(cam: GradCAM) -> str | None:
    """Why every map ``cam`` draws is one flat colour, or None: the explained feature map is a single cell (many
    backbones' at 32 px), so no map can show a place. Said by ``explain`` and in ``serve``'s ``gradcam_note``."""
    if cam.map_size != (1, 1):
        return None
    return (
        f"The feature map Grad-CAM explains ({cam.layer}) is 1x1 at this model's {cam.input_size[0]}x"
        f"{cam.input_size[1]} input: every map is uniform and shows no place"
    )


def _warn_if_uniform(cam: GradCAM) -> None:
    """Says, once, that every map will be one flat colour (:func:`uniform_maps`): drawn without a word, it looked
    like an answer."""
    reason = uniform_maps(cam)
    if reason:
        log.warning("%s. Train with a larger --image-size (e.g. 224) for maps that do.", reason)


def _checked_out(run: RunDir, out_dir: str | os.PathLike[str]) -> Path:
    """``out_dir``, checked before any model is loaded: a folder (or a new one) outside the run directory (its
    model and records), any other run's and the data folder (an overlay there would become a training image).

    Raises:
        ConfigError: It is a file, or lies in one of those.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out must be a folder for the overlays; it is a file. Received: out={str(out)!r}")
    inside = [("the run directory (its model and records)", run.path), *runs_around(out)]
    if run.exists(RunDir.CONFIG):
        inside.append(("the data folder the run was trained on", Path(run.config().data_dir)))
    check_outside(out, arg="out", inside=inside)
    return out


def runs_around(path: str | os.PathLike[str]) -> list[tuple[str, Path]]:
    """``(what, folder)`` for each floranet run or audit folder (:meth:`RunDir.is_run`) that ``path`` is or lies
    in, for :func:`check_outside`: an output there wrote among another run's model and records (``report --out
    OTHER_RUN/report.html`` replaced that run's page)."""
    target = Path(path).resolve()
    return [
        (f"another floranet run ({printable(os.fspath(folder))}, its model and records)", folder)
        for folder in (target, *target.parents)
        if folder.is_dir() and RunDir(folder).is_run()
    ]


def _images(
    paths: Sequence[str | os.PathLike[str]], on_error: Callable[[str | os.PathLike[str], DatasetError], None] | None
) -> list[Path]:
    """The images ``paths`` name (:func:`expand_inputs`), each file once however many inputs name it (``a.jpg
    ./a.jpg`` drew it twice, the second as ``a.2.gradcam.png``), less those floranet drew; an input that names no
    image goes to ``on_error`` (raised without one) before anything is drawn, as a missing file always did."""
    found, unmatched = expand_inputs(paths)
    files = once(found)
    for miss in unmatched:
        error = DatasetError(f"{miss.input}: {miss.reason}")
        if on_error is None:
            raise error
        on_error(miss.input, error)
    drawn = {p for p in files if p.suffix.lower() == ".png" and written_here(p)}
    if drawn:
        log.warning(
            "Left out %d image(s) that floranet drew (overlays or plots, e.g. %s): they are not photos to explain.",
            len(drawn),
            printable(os.fspath(min(drawn))),
        )
    return [p for p in files if p not in drawn]


def _targets(out: Path, paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """``out/<stem>.gradcam.png`` per input (``<stem>.2.gradcam.png`` for a second input of one name; a long stem
    shortened by :func:`_overlay_name`), checked before any is drawn: a file of that name that floranet did not
    write is never replaced.

    Raises:
        ConfigError: One of them exists and is not an overlay floranet wrote.
    """
    targets, used = [], set()
    for p in paths:
        stem, n = Path(p).stem, 1
        name = _overlay_name(stem, n)
        while name in used:  # two inputs of one name (a/x.jpg, b/x.jpg): both kept
            n += 1
            name = _overlay_name(stem, n)
        used.add(name)
        target = out / name
        if target.exists() and not written_here(target):
            raise ConfigError(
                f"{target} exists and is not an overlay floranet wrote; choose another --out so it is kept. "
                f"Received: out={str(out)!r}"
            )
        targets.append(target)
    return targets


def _overlay_name(stem: str, n: int) -> str:
    """``<stem>.gradcam.png`` (``<stem>.<n>.gradcam.png`` from the second image of that stem on), the stem cut to
    a readable start, "~" and 8 hex digits of the whole stem's hash (two long names that share a start stay
    apart) where the name, or the temp file written before it, would pass NAME_MAX: a long but legal photo name
    was "File name too long", and the batch stopped there."""
    tail = (f".{n}" if n > 1 else "") + ".gradcam.png"
    room = NAME_MAX - TEMP_NAME_EXTRA - len(".png") - len(tail)  # the temp file written first: its name too
    raw = os.fsencode(stem)  # bytes, not characters: "é" is two; a non-UTF-8 byte (surrogate-escaped) is one
    if len(raw) <= room:
        return stem + tail
    keep = stem[: room - 9]
    while len(os.fsencode(keep)) > room - 9:  # whole characters dropped: a UTF-8 sequence is never split
        keep = keep[:-1]
    return f"{keep}~{hashlib.sha256(raw).hexdigest()[:8]}{tail}"
