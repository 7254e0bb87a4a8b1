"""Stage-1 embeddings of any list of images: the run's feature cache, found or filled.

Training's stage 1 caches the frozen backbone's pooled features in ``RUN_DIR/features/<key>/`` (see
:mod:`floranet.training.features`). The audit and the "unknown" answer read the same cache: an existing
cache of the same backbone, weights (a file's content, not its path; a random init's seed), image size and
runtime is used as it is (no backbone is even built when it covers every image); otherwise the backbone is built
from the config and the missing images are computed into the cache under the key stage 1 would use.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np

from floranet.config import TrainConfig
from floranet.errors import ModelError
from floranet.inference import runtime
from floranet.models import classifier
from floranet.rundir import RunDir
from floranet.training import features as feature_cache

log = logging.getLogger(__name__)


def _matching_caches(run: RunDir, config: TrainConfig, choice: runtime.RuntimeChoice) -> list[Path]:
    """Cache folders whose ``key.json`` says they hold this config's stage-1 features, fullest first (one whose
    ``key.json`` is damaged matches nothing: the backbone is built, and its cache folder keeps the chunks it can
    read and gets a new ``key.json``)."""
    source = feature_cache.weights_source(config)  # the weights file hashed once, not once per cache
    found = [
        key_file.parent
        for key_file in sorted((run / RunDir.FEATURES).glob("*/key.json"))
        if feature_cache.stage1_matches(_key(key_file), config, choice, source)
    ]
    return sorted(found, key=lambda p: -len(list(p.glob("chunk-*.npz"))))


def _key(key_file: Path) -> dict[str, object]:
    try:
        found = RunDir(key_file.parent).read_json(key_file.name, {})
    except ModelError as e:
        log.warning("Skipped the feature cache %s: %s", key_file.parent, e)
        return {}
    return found if isinstance(found, dict) else {}


def stage1_features(
    run: RunDir,
    config: TrainConfig,
    paths: Sequence[str],
    hashes: Sequence[str],
    *,
    tf_decodable: Sequence[bool] | None = None,
    progress: bool = False,
    say: Callable[[str], None] = print,
) -> dict[str, np.ndarray]:
    """``{sha256: pooled features of the frozen, pretrained backbone}`` for every decodable file.

    Args:
        run: The run (or audit) folder whose ``features/`` cache is used and filled.
        config: Backbone, weights, image size, runtime and precision of the features.
        paths: Image files (absolute, or relative to the working directory).
        hashes: Their sha256, the cache's key per image.
        tf_decodable: The doctor's verdict per file, when known.
        progress: Show a progress bar while computing.
        say: Where one-line status messages go.

    Raises:
        ConfigError: The features must be computed in int8 (``config.precision``), which needs calibration
            images; stage 1 of training has them, the audit does not.
    """
    choice = runtime.choose(config.runtime, config.precision)
    for found in _matching_caches(run, config, choice):
        known, damaged = feature_cache.read_cache(found)
        if all(h in known for h in hashes):
            feature_cache.set_aside(damaged)  # what it held of these images is in other chunks
            say(f"Features: all {len(set(hashes))} images found in the cache {found.relative_to(run.path)}.")
            return {h: known[h] for h in hashes}
    # Seeded as training seeds before it builds: a backbone without pretrained weights is then the same every
    # time (unseeded, two audits of one folder had different features, cache keys and findings).
    keras.utils.set_random_seed(config.seed)
    model = classifier.build_classifier(
        config.backbone, 2, image_size=config.image_size, weights=config.weights, head_units=0
    )
    cache = feature_cache.stage1_cache(run, model, config)
    say(
        f"Features: {config.backbone} on {choice.runtime} {choice.precision} into "
        f"{cache.path.relative_to(run.path)} (once)."
    )
    return feature_cache.fill_stage1(cache, model, config, paths, hashes, tf_decodable=tf_decodable, progress=progress)
