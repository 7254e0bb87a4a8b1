"""``floranet explain``: Grad-CAM overlays captioned with the run's whole answer, its "unknown" included (an
overlay captioned "daisy (87%)" of a photo that predict and serve call unknown read as a confident answer)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from floranet.errors import DatasetError, FloranetError
from floranet.evaluation.gradcam import explain_files
from floranet.inference.predictor import load

log = logging.getLogger("floranet.explain")


def explain(
    run_dir: str | os.PathLike[str],
    paths: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    class_name: str | None = None,
    on_error: Callable[[str | os.PathLike[str], DatasetError], None] | None = None,
) -> list[tuple[Path, Path]]:
    """:func:`~floranet.evaluation.gradcam.explain_files`, each caption saying when the run answers "unknown"
    (with its score), as ``predict`` does for the same image: the same model.keras, in fp32 on TensorFlow.

    Raises:
        As :func:`~floranet.evaluation.gradcam.explain_files`.
    """
    predictor = load(run_dir, runtime="tensorflow", precision="fp32")
    failed: list[FloranetError] = []

    def unknown(path: str | os.PathLike[str]) -> str | None:
        if failed:  # said once; the overlays are drawn without it
            return None
        try:
            row = predictor.predict([path])[0]
        except FloranetError as e:  # e.g. statistics of another model.keras: the map is still worth drawing
            failed.append(e)
            log.warning("The captions leave out the unknown answer: %s", e)
            return None
        return f"UNKNOWN: unlike every class (ood score {row.ood_score:.3g})" if row.unknown else None

    return explain_files(run_dir, paths, out_dir, class_name=class_name, on_error=on_error, note=unknown)
