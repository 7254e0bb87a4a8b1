"""Prediction from a run directory: files, folders or globs → top-k rows.

Images are decoded exactly as in training (:mod:`floranet.data.pipeline`) and run through
:func:`floranet.inference.batch.run_on_files`. A file that cannot be used gets its error in its row;
the batch goes on.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from floranet.config import DEFAULT_MAX_PIXELS, InferenceConfig
from floranet.data import decode
from floranet.data.images import with_run_limit
from floranet.data.inputs import Unmatched, expand_inputs
from floranet.errors import ConfigError, DatasetError, ModelError
from floranet.inference import arguments, batch, compiled, runtime
from floranet.inference.temperature import apply_temperature
from floranet.inference.unknown import UnknownDetector
from floranet.rundir import RunDir

if TYPE_CHECKING:
    import keras

# A row's error when the model's probabilities are NaN or infinite (damaged weights, or a training that diverged).
NON_FINITE = (
    "the model gave non-finite probabilities (NaN or infinity): its weights are damaged or its training "
    "diverged; retrain it"
)


@dataclass(frozen=True)
class Prediction:
    """One input's result; ``error`` is set (and ``top_k`` empty) when the file could not be used.

    ``unknown`` is True when the run's out-of-distribution score (``ood_score``) passes its threshold: the
    image looks like none of the classes. ``ood_score`` is None when the answer is off or the run has none.
    """

    file: str
    top_k: tuple[tuple[str, float], ...] = ()
    low_confidence: bool = False
    error: str | None = None
    unknown: bool = False
    ood_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "top_k": [{"class": c, "probability": p} for c, p in self.top_k],
            "low_confidence": self.low_confidence,
            "unknown": self.unknown,
            "ood_score": self.ood_score,
            "error": self.error,
        }


def top_k(probs: np.ndarray, class_names: Sequence[str], k: int) -> tuple[tuple[str, float], ...]:
    """The ``k`` most probable classes of one probability row, most probable first (ties: lower index)."""
    k = max(1, min(int(k), len(class_names)))
    order = np.argsort(-np.asarray(probs), kind="stable")[:k]
    return tuple((class_names[i], round(float(probs[i]), 6)) for i in order)


@dataclass
class Predictor:
    """A loaded run: its model, class names and input size, and how to run it.

    One Predictor may serve several threads at once (a web app's request handlers): each job runs on the runtime
    it selected, and calls on one compiled model take turns.

    Attributes:
        run: The run directory.
        class_names: Label index → name.
        image_size: ``(h, w)`` the model takes.
        config: How to run it (runtime, precision, batch size, top-k, ...); ``auto`` runtimes are resolved
            per job (a handful of images stays on TensorFlow, a folder goes to OpenVINO), unless the run has
            a compiled model that agrees with ``model.keras``: then OpenVINO runs it, with no TensorFlow.
        temperature: The run's fitted temperature when ``config.calibrated`` (the only case it is used), else 1.0.
        max_pixels: Larger images are refused: the run's own limit.
        compiled: The run's compiled model (``inference/model.xml``), when it is used.
        ir: That model, read into memory once: compiled for each precision a job asks for, so the predictor
            answers with the model it loaded even after the run is trained again into its folder.
        choice: The runtime the last job ran on.
        keras_model: ``model.keras``, once loaded.
        detector: The run's "unknown" answer (``ood.json``), None when it has none or ``config.unknown`` is off.
        note: Why the compiled model is not used although the run has one ("" otherwise).
    """

    run: RunDir
    class_names: list[str]
    image_size: tuple[int, int]
    config: InferenceConfig = field(default_factory=InferenceConfig)
    temperature: float = 1.0
    max_pixels: int = DEFAULT_MAX_PIXELS
    compiled: Path | None = None
    choice: runtime.RuntimeChoice | None = None
    keras_model: keras.Model | None = field(default=None, repr=False)
    detector: UnknownDetector | None = None
    note: str = ""
    ir: Any = field(default=None, repr=False)
    _calls: dict[str, Any] = field(default_factory=dict, repr=False)
    _selected: runtime.RuntimeChoice | None = field(default=None, init=False, repr=False, compare=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        runtime.choose_inference(self.config.runtime, self.config.precision, images=1)  # bad settings fail now
        if self.compiled is not None and self.ir is None:  # read now: the files may be replaced later
            self.ir = runtime.read_ir(self.compiled)

    @property
    def run_dir(self) -> Path:
        return self.run.path

    @property
    def model(self) -> keras.Model:
        """The Keras model (``model.keras``), loaded on first use (Grad-CAM, or a TensorFlow runtime)."""
        with self._lock:  # loaded once, whichever threads ask
            if self.keras_model is None:
                self.keras_model = self.run.load_model(safe_mode=self.config.safe_mode)
        return self.keras_model

    def select(self, images: int | None = None) -> runtime.RuntimeChoice:
        """Resolves the runtime for ``images`` images (None: long-running, e.g. a server), compiles the model for it
        once, and keeps it for later :meth:`probabilities`, :meth:`outputs` and :meth:`predict_bytes` calls; without
        a select each picks for its own images, as each ``predict`` does for its job: never a job's before it.
        Thread-safe."""
        self._selected = self._job(images)
        return self._selected

    def _job(self, images: int | None) -> runtime.RuntimeChoice:
        """The runtime for a job of ``images`` images, compiled; :attr:`choice` then names it."""
        choice = self._resolve(images)
        with self._lock:  # one compile per runtime, however many threads ask at once
            self._compile(choice)
            self.choice = choice
        return choice

    def _resolve(self, images: int | None) -> runtime.RuntimeChoice:
        if self.compiled is not None:
            precision, why = self.config.precision, ""
            if precision == "auto" and images is not None and images < runtime.AUTO_MIN_IMAGES:
                precision, why = "fp32", f"fp32 for a job of {images} image(s), as exact as model.keras"
            base = runtime.choose("openvino", precision)
            choice = runtime.RuntimeChoice(
                "openvino",
                base.precision,
                "the run's compiled model (inference/, checked against model.keras; no TensorFlow); "
                + (why or base.reason),
            )
        else:
            choice = runtime.choose_inference(self.config.runtime, self.config.precision, images=images)
            if self.note:
                choice = runtime.RuntimeChoice(choice.runtime, choice.precision, f"{choice.reason}; {self.note}")
        return choice

    def _compile(self, choice: runtime.RuntimeChoice) -> None:
        if choice.key not in self._calls:
            # Traced once (TensorFlow) or compiled (OpenVINO): the warm single-image path is one call. It also
            # returns the pooled features when the unknown score needs them (the compiled model's second output).
            self._calls[choice.key] = (
                runtime.OpenVINOInference(
                    self.ir, choice.precision, threads=self.config.threads, joined=self._needs_features
                )
                if self.ir is not None
                else runtime.compile_inference(self._keras_for_inference(), choice, threads=self.config.threads)
            )

    @property
    def _needs_features(self) -> bool:
        return self.detector is not None and self.detector.needs_features

    def _keras_for_inference(self) -> keras.Model:
        if not self._needs_features:
            return self.model
        from floranet.models import classifier  # Keras: only on this path

        return classifier.with_features(self.model)

    def _raw(self, pixels: np.ndarray, choice: runtime.RuntimeChoice | None) -> np.ndarray:
        """The model call's output: ``[B, classes]`` probabilities, then the pooled features when the unknown score
        needs them."""
        pixels = arguments.pixels(pixels, self.image_size)  # a wrong size failed inside OpenVINO
        choice = choice or self._selected or self._job(len(pixels))
        return np.asarray(self._calls[choice.key](pixels), dtype=np.float32)

    def _calibrated(self, probs: np.ndarray) -> np.ndarray:
        if self.config.calibrated and self.temperature != 1.0:
            return apply_temperature(probs, self.temperature).astype(np.float32)
        return probs

    def outputs(self, pixels: np.ndarray, *, choice: runtime.RuntimeChoice | None = None) -> np.ndarray:
        """``[B, classes + 1]`` for float32 ``[B, H, W, 3]`` RGB 0..255 already at ``image_size``: the
        probabilities (calibrated when asked), then the unknown score (NaN without a detector). ``choice``: the
        runtime to run on; None: the one :meth:`select` chose, else the one for ``len(pixels)`` images. Pixels of
        another shape, or not numbers, are a ConfigError (before the model runs)."""
        raw = self._raw(pixels, choice)
        n = len(self.class_names)
        scores = np.full((len(raw), 1), np.nan, np.float32)
        if self.detector is not None:
            scores[:, 0] = self.detector.score(raw[:, n:] if self._needs_features else None, raw[:, :n])
        return np.concatenate([self._calibrated(raw[:, :n]), scores], axis=1)

    def probabilities(self, pixels: np.ndarray, *, choice: runtime.RuntimeChoice | None = None) -> np.ndarray:
        """Model probabilities for float32 ``[B, H, W, 3]`` RGB 0..255 already at ``image_size`` (``choice`` and a
        wrong shape: as :meth:`outputs`)."""
        return self._calibrated(self._raw(pixels, choice)[:, : len(self.class_names)])

    def predict_files(
        self, files: Sequence[str | os.PathLike[str]], *, job_size: int | None = None, with_unknown: bool = False
    ) -> batch.FileOutputs:
        """Probabilities of every file, aligned with ``files`` (see :func:`batch.run_on_files`); with
        ``with_unknown`` one more column, the unknown score (:meth:`outputs`).

        Raises:
            ConfigError: ``files`` is one path, not a list of them (it would be read letter by letter), or holds
                something else than a path (``str`` or ``os.PathLike``: bytes paths are refused).
        """
        if isinstance(files, str | bytes | os.PathLike):
            raise ConfigError(f"files must be a list of image files. Received: files={files!r}")
        files = arguments.paths("files", files, one=False)
        # The job's own runtime, passed along: another thread's job may select another meanwhile.
        choice = self._job(job_size if job_size is not None else len(files)) if files else None
        return batch.run_on_files(
            functools.partial(self.outputs if with_unknown else self.probabilities, choice=choice),
            files,
            without_tensorflow=self.compiled is not None,
            image_size=self.image_size,
            batch_size=self.config.batch_size,
            max_pixels=self.max_pixels,
            job_size=job_size,
            run_limit=True,
        )

    def predict(
        self,
        inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        top_k: int | None = None,
        job_size: int | None = None,
    ) -> list[Prediction]:
        """Predicts every image named by ``inputs`` (files, folders, globs), in order.

        Args:
            inputs: Files, folders and globs.
            top_k: Classes per row (default: ``config.top_k``).
            job_size: When these inputs are one part of a larger job (a distributed worker's
                batch), its total image count: runtime and decode path are then chosen as for
                the whole job, so every row equals the single-process result.

        Raises:
            ConfigError: ``inputs`` is not a path or a list of paths (``str`` or ``os.PathLike``), or a bad ``top_k``.
        """
        arguments.check_top_k(top_k)
        files, missing = expand_inputs(arguments.paths("inputs", inputs, one=True))
        return in_input_order(self.file_rows(files, top_k=top_k, job_size=job_size), missing)

    def file_rows(
        self, files: Sequence[str | os.PathLike[str]], *, top_k: int | None = None, job_size: int | None = None
    ) -> list[Prediction]:
        """One row per file, in order (no folder or pattern expanded: a Ray worker's share of a job's files)."""
        arguments.check_top_k(top_k)
        out = self.predict_files(files, job_size=job_size, with_unknown=True)
        k = top_k if top_k is not None else self.config.top_k
        return [
            Prediction(str(f), error=out.errors[i]) if i in out.errors else self.row(str(f), out.outputs[i], k)
            for i, f in enumerate(files)
        ]

    def predict_bytes(self, data: bytes, *, name: str = "<upload>", top_k: int | None = None) -> Prediction:
        """Predicts one encoded image (an upload), decoded as the server decodes it.

        Raises:
            DatasetError: Not a usable image.
        """
        arguments.check_top_k(top_k)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ConfigError(f"data must be the encoded image's bytes. Received: data of type {type(data).__name__}")
        try:
            _, pixels = decode.decode_bytes(bytes(data), self.image_size, name=name, max_pixels=self.max_pixels)
        except DatasetError as e:  # the limit is the run's: the hint names its config.yaml
            raise with_run_limit(e) from None
        choice = self._selected or self._job(1)  # a server's select, else its own: never a job's before it
        return self.row(name, self.outputs(pixels[None], choice=choice)[0], top_k)

    def describe(self) -> str:
        """What the last batch ran on, e.g. ``"compiled model (openvino fp32)"`` or ``"model.keras (tensorflow
        fp32)"``."""
        source = "compiled model" if self.compiled is not None else RunDir.MODEL
        return f"{source} ({self.choice.runtime} {self.choice.precision})" if self.choice else source

    def row(self, file: str, output: np.ndarray, k: int | None = None) -> Prediction:
        """The answer for one image: its probabilities, or a row of :meth:`outputs` (with the unknown score)."""
        n = len(self.class_names)
        if not np.isfinite(output[:n]).all():
            return Prediction(file, error=NON_FINITE)
        top = top_k(output[:n], self.class_names, k if k is not None else self.config.top_k)
        score = float(output[n]) if len(output) > n and not np.isnan(output[n]) else None
        unknown = bool(self.detector is not None and score is not None and score > self.detector.threshold)
        low = bool(top[0][1] < self.config.low_confidence)
        return Prediction(file, top, low, None, unknown, None if score is None else round(score, 6))


def load(run_dir: str | os.PathLike[str], config: InferenceConfig | None = None, **settings: Any) -> Predictor:
    """Loads a run directory for prediction.

    Args:
        run_dir: A finished run.
        config: How to run it; or give its fields as keywords (``runtime="openvino"``, ``batch_size=8``).

    Raises:
        ModelError: Not a finished run, or the model file cannot be loaded
            (for instance it contains arbitrary code and ``safe_mode`` is on).
        ConfigError: A bad setting, or ``run_dir`` is not a path (``str`` or ``os.PathLike``).
    """
    config = arguments.inference_config(config, settings)
    run = RunDir.open(arguments.run_dir(run_dir))
    if config.calibrated and not run.exists(RunDir.CALIBRATION):  # else "calibrated" would be the raw numbers
        raise ConfigError(
            f"calibrated=True needs the temperature fitted on the run's validation images ({RunDir.CALIBRATION}), "
            f"which {run.path} does not have (a run without validation images, or an export folder). "
            "Received: calibrated=True"
        )
    max_pixels = run.max_pixels()
    detector = UnknownDetector.load(run.path) if config.unknown else None
    ir, note = compiled_model(run, config.runtime, features=detector is not None and detector.needs_features)
    # Read only where it is used: evaluate (uncalibrated) rewrites calibration.json, so a damaged one must not stop it.
    names, temperature = run.class_names(), run.temperature() if config.calibrated else 1.0
    if ir is not None:  # TensorFlow is never imported on this path
        facts = compiled.info(run)
        h, w = facts["image_size"]
        check_classes(run, names, int(facts.get("outputs", {}).get("probabilities", [0, len(names)])[1]))
        return Predictor(
            run, names, (int(h), int(w)), config, temperature, max_pixels, ir, detector=detector, note=note
        )
    model = run.load_model(safe_mode=config.safe_mode)
    h, w = model.inputs[0].shape[1:3]
    check_classes(run, names, int(model.output_shape[-1]))
    return Predictor(
        run, names, (int(h), int(w)), config, temperature, max_pixels, keras_model=model, detector=detector, note=note
    )


def check_classes(run: RunDir, names: list[str], outputs: int) -> None:
    """Refuses a run whose class names do not match its model's outputs (a file replaced or edited by hand):
    every row would name the wrong classes, or the output would be cut in the wrong place."""
    if len(names) != outputs:
        raise ModelError(
            f"{run / RunDir.CLASS_NAMES} names {len(names)} classes but the model outputs {outputs}: the run's files "
            "do not belong together (rerun `floranet train`, or restore the file)."
        )


def compiled_model(run: RunDir, runtime_name: str, *, features: bool) -> tuple[Path | None, str]:
    """The run's compiled model when it can serve (None: ``model.keras`` runs), decided without TensorFlow, and
    why an existing one cannot ("" otherwise).

    Args:
        run: The run.
        runtime_name: ``InferenceConfig.runtime``: only ``auto`` and ``openvino`` use it.
        features: The unknown answer needs the pooled features (:func:`floranet.inference.unknown.needs_features`).
    """
    if runtime_name not in ("auto", "openvino"):
        return None, ""
    if runtime_name == "auto" and runtime.gpu_available():  # auto means TensorFlow on a GPU, as for any job
        return None, f"a GPU is visible: model.keras runs on it (--runtime openvino uses {RunDir.COMPILED}/)"
    reason = compiled.unusable(run, features=features)
    if reason is None:  # usable, or none was made
        xml = run / RunDir.COMPILED / RunDir.COMPILED_XML
        return (xml if xml.exists() else None), ""
    fix = "; `floranet export RUN_DIR --format openvino` recompiles it" if reason.recompile_mends else ""
    fix += " (or use --unknown off)" if fix and features and not compiled.unusable(run) else ""
    return None, f"the run's compiled model ({RunDir.COMPILED}/) is not used: {reason.why}, so model.keras runs{fix}"


def in_input_order(rows: list[Prediction], missing: list[Unmatched]) -> list[Prediction]:
    """``rows`` (one per file of :func:`floranet.data.inputs.expand_inputs`, in its order) with an error row
    for each input that matched nothing, where that input stood."""
    out: list[Prediction] = []
    start = 0
    for m in missing:
        out += rows[start : m.position]
        out.append(Prediction(m.input, error=m.reason))
        start = m.position
    return out + rows[start:]
