"""The run's compiled inference model: an OpenVINO IR of ``model.keras``, checked against it once, so that
``predict``, ``evaluate`` and ``serve`` start without importing TensorFlow (about 6 s of a cold start).

``train`` (and ``floranet export``) write ``RUN_DIR/inference/model.xml`` + ``model.bin`` and
``inference/compiled.json``: the agreement with ``model.keras`` on validation images (top-1 and the largest
probability difference, with OpenVINO computing in fp32), and the size, time and sha256 of the ``model.keras``
it was made from, and the size and sha256 of ``model.xml`` and ``model.bin``. :func:`usable` accepts it only when
it agrees, ``model.keras`` is the one it was made from and its own files are as written (a damaged ``model.bin``
of the right size is read by OpenVINO without a word); anything else falls back to ``model.keras``.

The IR has two outputs (:func:`floranet.models.classifier.probabilities_and_features`): the probabilities
``[N, classes]`` first, as ``model.keras`` (so a floranet that reads only the first still works), then the
pooled backbone features ``[N, F]``, so one call also gives what the "unknown" score
(:mod:`floranet.inference.unknown`) reads. ``compiled.json``'s ``outputs`` gives their columns when joined
(``OpenVINOInference(joined=True)``); the check covers the features (relative to their largest value) and, when
the run has an unknown answer, its score and answer. The answer is compared on the images whose score is farther
from the threshold than the score tolerance: an image within float rounding of it may land on either side
(``ood_near_threshold`` counts them; the threshold sits above the validation score it keeps by this tolerance, or
by half the gap to the next, so the validation images it keeps stay known within it). An IR without ``outputs``
(made before) serves a run only when its unknown answer needs no features; a ``model.keras`` that is not a
classifier built here (no ``head`` layer) gets an IR of its probabilities alone.

Both models' outputs on the check images are kept in ``inference/check.npz``: an unknown answer fitted after the
IR was made (``train`` fits it on the evaluation's outputs) is checked on them by :func:`recheck`, with no model
run again.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from floranet.data.decode import load_resized
from floranet.errors import DatasetError, ModelError
from floranet.inference.unknown import SCORE_REL_TOLERANCE, UnknownDetector
from floranet.rundir import RunDir
from floranet.utils import optional
from floranet.utils.files import file_digest, fsync_dir, seal_folder, temp_folder_beside, write_json
from floranet.utils.system import package_version

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)
MAX_ABS_DIFF = 1e-4  # fp32 IR vs TensorFlow fp32: float rounding only
# Features: the largest difference over the largest feature; the unknown score: over max(1, |threshold|).
# Measured (tests' tiny run, ResNet-20 at 32 px, 6 images): features 2.3e-7, score 4.3e-4 (the combined score
# divides by small spreads on tiny sets); float rounding only.
MAX_FEATURES_REL_DIFF = 1e-4
MAX_SCORE_REL_DIFF = SCORE_REL_TOLERANCE  # the unknown threshold sits this far above the score it keeps
# A conversion error is systematic (padding, preprocessing, a layer's semantics): a few images show it. 32, not
# 64: TensorFlow's reference pass over them is most of the check's time (ResNet50 at 180 px: 27 images/s).
CHECK_IMAGES = 32
IR_FILES = (RunDir.COMPILED_XML, "model.bin")  # what OpenVINO reads (the weights by model.xml's name)


def check_pixels(files: list[Path], size: tuple[int, int], max_pixels: int) -> np.ndarray:
    """The first :data:`CHECK_IMAGES` of ``files`` that decode (within the run's ``max_pixels``, as training
    decoded them), resized: what the agreement check runs on."""
    pixels = []
    for path in files[:CHECK_IMAGES]:
        try:
            pixels.append(load_resized(path, size, max_pixels=max_pixels))
        except DatasetError:
            continue
    return np.stack(pixels) if pixels else np.zeros((0, *size, 3), np.float32)


def compile_run(
    run: RunDir,
    model: keras.Model,
    pixels: np.ndarray,
    detector: UnknownDetector | None = None,
    *,
    backbone: Any = None,
) -> dict[str, Any] | None:
    """Writes the run's IR and checks it against ``model`` on ``pixels`` (float32 ``[N, H, W, 3]``).

    Args:
        run: The run whose ``inference/`` is written.
        model: The run's ``model.keras``, loaded.
        pixels: Validation images to check on (up to :data:`CHECK_IMAGES`).
        detector: The run's unknown answer, when it has one: its scores are checked too.
        backbone: ``model``'s layers up to the pooled features, already converted to OpenVINO (stage 1's
            extractor when the backbone stayed frozen): the head is appended to it instead of converting the
            whole model again (:func:`floranet.inference.runtime.append_head`). The check is the same.

    Returns:
        What ``compiled.json`` records, or None when OpenVINO is not installed (nothing is written).

    Raises:
        ModelError: ``RUN_DIR/inference`` holds things of someone else's (no ``compiled.json``); nothing is written.
    """
    if not optional.available("openvino"):
        log.info("OpenVINO is not installed: no compiled inference model (predict loads model.keras)")
        return None
    folder = run / RunDir.COMPILED
    _check_ours(folder)
    from floranet.inference.runtime import (
        OpenVINOInference,
        RuntimeChoice,
        append_head,
        compile_inference,
        to_openvino,
    )
    from floranet.models import classifier

    ov = optional.require("openvino", "a compiled inference model")
    split = any(layer.name == classifier.HEAD_LAYER for layer in model.layers)  # a classifier built here
    both = classifier.probabilities_and_features(model) if split else model
    classes = int(model.outputs[0].shape[-1])
    tmp = temp_folder_beside(folder)
    try:
        appended = append_head(backbone, classifier.head_of(model)) if backbone is not None and split else None
        ov.save_model(appended or to_openvino(both), str(tmp / RunDir.COMPILED_XML), compress_to_fp16=False)
        tf32 = RuntimeChoice("tensorflow", "fp32", "reference")
        pixels = pixels[:CHECK_IMAGES]
        got, want = (
            np.asarray(f(pixels), np.float32) if len(pixels) else np.zeros((0, classes), np.float32)
            for f in (
                OpenVINOInference.from_ir(tmp / RunDir.COMPILED_XML, "fp32", joined=True),
                compile_inference(classifier.with_features(model) if split else model, tf32),
            )
        )
        with open(tmp / RunDir.COMPILED_CHECK, "wb") as f:
            np.savez(f, compiled=got, reference=want)
        check = _agreement(got, want, classes, detector)
        stat = run.model_file.stat()
        # Output 0 and 1, as columns of the two joined (what the predictor reads).
        outputs = {"probabilities": [0, classes]}
        if split:
            outputs["features"] = [classes, classes + int(both.outputs[1].shape[-1])]
        record = {
            "format": "openvino-ir",
            "openvino": package_version("openvino"),
            "model": {"sha256": file_digest(run.model_file), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns},
            "image_size": [int(d) for d in model.inputs[0].shape[1:3]],
            "outputs": outputs,
            "files": _file_facts(tmp),
            **check,
            "agrees": _agrees(check),
        }
        write_json(tmp / RunDir.COMPILED_INFO, record)
        seal_folder(tmp)  # mkdtemp's 0700 would keep the folder from everyone else who may read the run
        if folder.exists():
            _check_ours(folder)  # again: something may have been put there while the model was converted
            shutil.rmtree(folder)  # our own compiled model, replaced by the new one
        os.replace(tmp, folder)
        fsync_dir(folder.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record


def _check_ours(folder: Path) -> None:
    """Refuses to replace ``folder`` unless it is missing, empty or a compiled model (its ``compiled.json``):
    ``floranet export RUN --out RUN/inference`` had its export deleted by the compiled model written next.

    Raises:
        ModelError: It holds things floranet did not write there.
    """
    if not (folder.exists() or folder.is_symlink()):
        return
    if (
        folder.is_dir()
        and not folder.is_symlink()
        and ((folder / RunDir.COMPILED_INFO).is_file() or not any(folder.iterdir()))
    ):
        return
    raise ModelError(
        f"{folder} is not a compiled inference model floranet wrote (it has no {RunDir.COMPILED_INFO}); it is left "
        "as it is and the run's compiled model was not made. Move it away, then run `floranet export` on the run "
        "to make it."
    )


def recheck(run: RunDir, detector: UnknownDetector) -> dict[str, Any] | None:
    """Checks the unknown answer fitted after the run's IR was made, on the check images' stored outputs of both
    models (``check.npz``), and records it in ``compiled.json``; returns the new record (None: no IR or no
    stored outputs, nothing changed)."""
    record = info(run)
    folder = run / RunDir.COMPILED
    if not record or not (folder / RunDir.COMPILED_CHECK).exists():
        return None
    with np.load(folder / RunDir.COMPILED_CHECK) as data:
        got, want = data["compiled"], data["reference"]
    classes = int(record.get("outputs", {}).get("probabilities", [0, got.shape[1]])[1])
    check = _agreement(got, want, classes, detector)
    record = {**record, **check, "agrees": _agrees(check)}
    write_json(folder / RunDir.COMPILED_INFO, record)
    return record


def _agreement(got: np.ndarray, want: np.ndarray, classes: int, detector: UnknownDetector | None) -> dict[str, Any]:
    """The IR's ``[probabilities | features]`` (``got``) against TensorFlow's (``want``: ``model.keras``'s
    probabilities and the features of the same layers), and the unknown score and answer computed from each."""
    out: dict[str, Any] = {"images": len(got), "top1_agreement": None, "max_abs_diff": None}
    out.update(features_max_rel_diff=None, ood_max_rel_diff=None, ood_answer_agreement=None, ood_near_threshold=None)
    if not len(got):
        return out
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    n = classes
    out["top1_agreement"] = float(np.mean(got[:, :n].argmax(1) == want[:, :n].argmax(1)))
    out["max_abs_diff"] = float(np.max(np.abs(got[:, :n] - want[:, :n])))
    has_features = got.shape[1] > n
    if has_features:
        scale = max(float(np.max(np.abs(want[:, n:]))), 1e-12)
        out["features_max_rel_diff"] = float(np.max(np.abs(got[:, n:] - want[:, n:])) / scale)
    if detector is not None and (has_features or not detector.needs_features):
        mine, theirs = (
            detector.score(x[:, n:] if detector.needs_features else None, x[:, :n]).astype(np.float64)
            for x in (got, want)
        )
        tolerance = max(1.0, abs(detector.threshold))
        out["ood_max_rel_diff"] = float(np.max(np.abs(mine - theirs)) / tolerance)
        # Images within the tolerance of the threshold may land on either side; the rest must agree.
        decided = np.abs(theirs - detector.threshold) > MAX_SCORE_REL_DIFF * tolerance
        out["ood_near_threshold"] = int(np.sum(~decided))
        same = (mine > detector.threshold) == (theirs > detector.threshold)
        out["ood_answer_agreement"] = float(np.mean(same[decided])) if decided.any() else None
    return out


def _file_facts(folder: Path) -> dict[str, dict[str, Any]]:
    """The size and sha256 of the IR's files in ``folder``: what :func:`unusable` checks them against."""
    return {name: {"size": (folder / name).stat().st_size, "sha256": file_digest(folder / name)} for name in IR_FILES}


def _damaged_file(folder: Path, facts: dict[str, Any]) -> str | None:
    """The first of the IR's files in ``folder`` that is missing or differs from what ``compiled.json`` recorded
    (``facts["files"]``), with why; None: all as made. Every byte is hashed, not only the size and time
    compared: OpenVINO reads a damaged ``model.bin`` of the right size without a word, and answers wrongly; and
    the files are read next anyway."""
    recorded = facts.get("files")
    if not isinstance(recorded, dict):
        # Made before compiled.json recorded them: unchecked, they may be damaged. model.keras answers instead,
        # exactly (a slower start), until `floranet export` compiles it again.
        return f"it was made before {RunDir.COMPILED_INFO} recorded its files' sha256"
    for name in IR_FILES:
        want = recorded.get(name)
        if not isinstance(want, dict):
            return f"{RunDir.COMPILED_INFO} records no size and sha256 of {name}"
        try:
            if (folder / name).stat().st_size != want.get("size") or file_digest(folder / name) != want.get("sha256"):
                return f"{folder / name} is damaged (its size or sha256 is not what {RunDir.COMPILED_INFO} records)"
        except OSError as e:
            return f"{folder / name} cannot be read ({e.strerror or e})"
    return None


def _agrees(check: dict[str, Any]) -> bool:
    features, score, answer = check["features_max_rel_diff"], check["ood_max_rel_diff"], check["ood_answer_agreement"]
    return (
        check["images"] > 0
        and check["top1_agreement"] == 1.0
        and check["max_abs_diff"] <= MAX_ABS_DIFF
        and (features is None or features <= MAX_FEATURES_REL_DIFF)
        and (score is None or score <= MAX_SCORE_REL_DIFF)
        and (answer is None or answer == 1.0)
    )


def info(run: RunDir) -> dict[str, Any]:
    """What ``compiled.json`` records ({} when the run has no compiled model, or a damaged record: the compiled
    model is a cache, and ``model.keras`` answers without it)."""
    try:
        found = run.read_json(f"{RunDir.COMPILED}/{RunDir.COMPILED_INFO}")
    except ModelError:
        return {}
    return found if isinstance(found, dict) else {}


def usable(run: RunDir, *, features: bool = False) -> Path | None:
    """The run's IR (``model.xml``) when it agrees with the ``model.keras`` now in the run, else None.

    Args:
        run: The run.
        features: Only an IR that also outputs the pooled features (what the unknown score reads).
    """
    xml = run / RunDir.COMPILED / RunDir.COMPILED_XML
    return xml if xml.exists() and unusable(run, features=features) is None else None


@dataclass(frozen=True)
class Unusable:
    """Why the run's compiled model cannot serve, as said to the user, and whether ``floranet export RUN_DIR
    --format openvino`` (which compiles the run's model again) mends it."""

    why: str
    recompile_mends: bool = False


def unusable(run: RunDir, *, features: bool = False) -> Unusable | None:
    """Why the run's compiled model cannot serve (None: it can, or the run has none).

    Args:
        run: The run.
        features: Only an IR that also outputs the pooled features (what the unknown score reads).
    """
    facts = info(run)
    xml = run / RunDir.COMPILED / RunDir.COMPILED_XML
    if not facts and not xml.exists():
        return None  # none was made (a run from before, or OpenVINO was not installed when it trained)
    if not optional.available("openvino"):
        return Unusable("OpenVINO is not installed")
    if not facts.get("agrees"):
        return Unusable(f"it does not agree with model.keras ({RunDir.COMPILED_INFO})")
    if not xml.exists():
        return Unusable(f"{RunDir.COMPILED_XML} is missing", recompile_mends=True)
    if features and "features" not in facts.get("outputs", {}):
        return Unusable("it was made before it output the features the unknown answer needs", recompile_mends=True)
    try:
        stat = run.model_file.stat()
    except OSError:
        return Unusable("model.keras cannot be read")
    made_from = facts.get("model", {})
    same = stat.st_size == made_from.get("size") and (
        stat.st_mtime_ns == made_from.get("mtime_ns") or file_digest(run.model_file) == made_from.get("sha256")
    )
    if not same:
        return Unusable("model.keras changed since it was made", recompile_mends=True)
    damaged = _damaged_file(xml.parent, facts)
    return None if damaged is None else Unusable(damaged, recompile_mends=True)
