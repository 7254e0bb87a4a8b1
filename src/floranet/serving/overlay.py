"""Grad-CAM for the server: the heat map over the uploaded photo, as a PNG."""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from floranet.errors import ModelError
from floranet.utils.figures import heat_overlay, shown_photo


class GradCamOverlay:
    """Builds the Grad-CAM model on first use (once, thread-safe) and draws overlays with it.

    Args:
        model: Gives the served Keras classifier (called on first use: a server running the compiled model
            loads Keras only when Grad-CAM is asked for).
    """

    def __init__(self, model: Callable[[], Any]) -> None:
        self._model = model
        self._cam: Any = None
        self._lock = threading.Lock()

    def _gradcam(self) -> Any:
        from floranet.evaluation.gradcam import GradCAM

        with self._lock:
            if self._cam is None:
                try:
                    self._cam = GradCAM(self._model())
                except Exception as e:  # noqa: BLE001 - not a floranet classifier (no backbone/head)
                    self._cam = ModelError(f"Grad-CAM is not available for this model: {e}")
        if isinstance(self._cam, ModelError):
            raise self._cam
        return self._cam

    @staticmethod
    def shrink(photo: np.ndarray) -> np.ndarray:
        """``photo`` sized as ``explain`` and the report size it (:func:`~floranet.utils.figures.shown_photo`: the
        longer side scaled down to 384 px, a tiny photo's up to 192), what the overlay is drawn on."""
        return shown_photo(photo)

    def png(self, photo: np.ndarray, pixels: np.ndarray, class_index: int, class_name: str) -> tuple[str, str | None]:
        """(base64 PNG, note): ``photo`` (as :meth:`shrink` sized it) with the heat map of ``class_index``
        (``class_name``; computed on ``pixels``, the model's input) blended over it, and why the map is one flat
        tint when it is (a 1x1 feature map, or no positive evidence for the class), as ``explain`` says it; else
        None.

        Raises:
            ModelError: The model is not a floranet classifier.
        """
        from PIL import Image

        from floranet.evaluation.gradcam import NO_EVIDENCE, uniform_maps

        cam = self._gradcam()
        heat, _ = cam.heatmaps(pixels[None], class_index=class_index)
        buf = io.BytesIO()
        Image.fromarray(heat_overlay(self.shrink(photo), heat[0], alpha=0.45)).save(buf, "PNG")
        note = uniform_maps(cam) or (None if heat[0].any() else f"{NO_EVIDENCE} {class_name}: the map is blank")
        return base64.b64encode(buf.getvalue()).decode("ascii"), note
