"""Weight files in the layouts floranet must read, written for tests."""

from __future__ import annotations

import h5py
import keras


def write_legacy_h5(model: keras.Model, path, *, every_layer: bool = False) -> None:
    """Writes weights in the layout of Keras's official application files (by layer name); ``every_layer``: as
    those files do, layers without weights too (an empty ``weight_names``)."""
    with h5py.File(path, "w") as f:
        named = [layer for layer in model.layers if layer.weights or every_layer]
        f.attrs["layer_names"] = [layer.name.encode() for layer in named]
        for layer in named:
            g = f.create_group(layer.name)
            names = [f"{layer.name}/{w.name}:0".encode() for w in layer.weights]
            g.attrs["weight_names"] = names
            for n, value in zip(names, layer.get_weights(), strict=True):
                g.create_dataset(n.decode(), data=value)


def poison_run(run) -> None:
    """Makes a run's model answer NaN (its last layer's bias), as damaged weights or a diverged training would;
    the compiled copy goes, so every runtime loads the poisoned model.keras."""
    import shutil

    import numpy as np

    from floranet.rundir import RunDir

    model = keras.saving.load_model(run / RunDir.MODEL, compile=False)
    last = next(layer for layer in reversed(model.layers) if layer.weights)
    weights = last.get_weights()
    weights[-1][:] = np.nan
    last.set_weights(weights)
    model.save(run / RunDir.MODEL)
    shutil.rmtree(run / "inference", ignore_errors=True)


def blank_head(run) -> None:
    """Zeroes the kernel of a run's last head layer: no feature raises any class, so every Grad-CAM map is all zero
    (what explain captions and serve notes as "no positive evidence")."""
    from floranet.models import classifier
    from floranet.rundir import RunDir

    rundir = RunDir(run)
    model = rundir.load_model()
    last = classifier.head_of(model).layers[-1]
    kernel, bias = last.get_weights()
    kernel[:] = 0
    last.set_weights([kernel, bias])
    rundir.save_model(model)
