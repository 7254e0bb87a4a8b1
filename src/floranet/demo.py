"""``floranet demo``: the classic Keras tutorial's steps, done right, in one command.

1. get flower_photos (download, cache, or the bundled sample when offline)
2. show sample images            3. build ResNet50 + the tutorial's head
4. train (tutorial preset)       5. plot accuracy and loss
6. predict one rose photo        7. confusion matrix on the validation set
8. say where everything is
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from floranet import config as config_lib
from floranet.data import datasets, pipeline
from floranet.errors import FloranetError
from floranet.models import weights as weights_lib
from floranet.workflow import train_and_report

BANNER = "=" * 72


@dataclass
class DemoResult:
    run_dir: Path
    data_dir: Path
    offline_data: bool
    weights: str | None
    rose_file: Path | None
    rose_top: list[tuple[str, float]]
    accuracy: float | None


def run_demo(data: str | None = None, out: str | None = None, *, epochs: int | None = None,
             image_size: int | None = None, progress: bool = True,
             say: Callable[[str], None] = print) -> DemoResult:
    """Runs the tutorial workflow end to end and returns what it produced."""
    out_dir = Path(out) if out else Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    say(BANNER)
    say("floranet demo: the Keras ResNet50 flower tutorial, step by step")
    say(BANNER)

    say("[1/8] Data")
    data_dir, offline = _data(data, say)

    weights = "imagenet"
    try:
        weights_lib.fetch_imagenet("resnet50", include_top=False, timeout=10.0)
    except FloranetError as e:
        weights = None
        say(BANNER)
        say("WARNING: ImageNet weights for ResNet50 are not available (no network?):")
        say(f"  {e}")
        say("  The demo continues with RANDOM weights (weights=None): every step runs, but accuracy")
        say("  will be near chance. This is recorded in the run's metrics.json.")
        say(BANNER)

    cfg = config_lib.resolve(preset="tutorial", data_dir=str(data_dir), out=str(out_dir),
                             weights=weights or "none", epochs=epochs,
                             image_size=image_size)
    say(f"[2-7] Sample grid, ResNet50 (top removed, avg pooling) + Flatten → Dense(512, relu) → "
        f"Dense(n, softmax), Adam {cfg.learning_rate:g}, {cfg.epochs} epochs at {cfg.image_size[0]} px")
    result = train_and_report(cfg, progress=progress, say=lambda m: say("  " + m))

    say("[6/8] Predict one rose photo")
    rose, top = _predict_rose(result.run_dir, data_dir, result.class_names, cfg.image_size)
    if rose is None:
        say("  (no 'roses' class in this data set; skipped)")
    else:
        say(f"  {rose}")
        for name, p in top:
            say(f"    {name:<14} {p:6.1%}")

    acc = result.metrics.get("accuracy")
    say("[8/8] Results")
    if acc is not None:
        say(f"  validation accuracy {acc:.1%} on {result.metrics['num_examples']} held-out images"
            + ("" if weights else " (random weights: expect chance level)"))
    run = result.run_dir
    for name in ("model.keras", "config.yaml", "split.csv", "class_names.json", "history.csv", "metrics.json",
                 "plots/samples.png", "plots/history.png", "plots/confusion_matrix.png", "plots/reliability.png",
                 "report.html", "logs/"):
        say(f"  {run / name}")
    return DemoResult(run, data_dir, offline, weights, rose, top, acc)


def _data(data: str | None, say: Callable[[str], None]) -> tuple[Path, bool]:
    if data:
        say(f"  using {data}")
        return Path(data), False
    try:
        path = datasets.fetch("flower_photos", timeout=10.0)
        say(f"  flower_photos at {path}")
        return path, False
    except FloranetError as e:
        sample = datasets.mini_flowers_path()
        say(BANNER)
        say("WARNING: could not get flower_photos (no network?):")
        say(f"  {e}")
        say(f"  FALLING BACK to the bundled sample mini_flowers ({sample}),")
        say("  about 30 photos per class: fine to see every step, too small for real accuracy.")
        say(BANNER)
        return sample, True


def _predict_rose(run_dir: Path, data_dir: Path, class_names: list[str], image_size: tuple[int, int],
                  k: int = 3) -> tuple[Path | None, list[tuple[str, float]]]:
    if "roses" not in class_names:
        return None, []
    from floranet.data.split import Split

    rows = [r for r in Split.from_csv(run_dir / "split.csv").rows if r.label == "roses"]
    # A held-out rose, as the tutorial's single prediction should be.
    rows.sort(key=lambda r: (r.split != "validation", r.path))
    model = keras.saving.load_model(run_dir / "model.keras")
    for r in rows:
        path = data_dir / r.path
        try:
            image = pipeline.decode_and_resize(str(path), image_size)
        except FloranetError:
            continue
        probs = np.asarray(model(np.asarray(image)[None], training=False))[0]
        order = np.argsort(probs)[::-1][:k]
        return path, [(class_names[i], float(probs[i])) for i in order]
    return None, []
