"""Labels and preprocessing inside every export: written into each format's own metadata, read back with
that format's own runtime, so that the model file alone is enough.

Where each format keeps it (every value a string; ``class_names`` and ``image_size`` are JSON)::

    keras        the archive's metadata.json, key "floranet"        zipfile + json (Keras has no metadata API)
    saved_model  signature "metadata" (no inputs, string outputs)   tf.saved_model.load(p).signatures["metadata"]()
                 whose class_names come from assets/labels.txt (a lookup table on that asset)
    onnx         ModelProto.metadata_props                          onnxruntime: get_modelmeta().custom_metadata_map
    openvino     rt_info under "floranet"                           openvino: read_model(xml).get_rt_info([KEY, k])
    tflite       a Model.metadata entry "floranet" (JSON buffer)     ai_edge_litert.tools.flatbuffer_utils / schema
                 + labels.txt in a zip appended to the flatbuffer   zipfile (the TFLite associated-file layout)

:func:`read_metadata` reads them back (never from ``class_names.json``) and raises :class:`ModelError` when
any key is missing.

Besides the fixed contract, ``model_version``, ``backbone`` and ``unknown``: the run's "unknown" answer as JSON
(:func:`floranet.export.unknown.summary`: method, threshold, rule, statistics, or ``"available": false`` and
why), so an export always says whether it has one.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from floranet.errors import FloranetError, ModelError
from floranet.export.common import MODEL_FILES
from floranet.export.rundata import ExportSource
from floranet.export.unknown import summary as unknown_summary
from floranet.rundir import RunDir
from floranet.utils.files import DAMAGED_KERAS, is_cut_keras
from floranet.utils.optional import available, require
from floranet.utils.text import utf8

KEY = "floranet"  # the namespace (OpenVINO rt_info, Keras metadata.json, TFLite metadata entry)
LABELS_FILE = "labels.txt"
# How floranet turns a file into pixels (floranet.data.images): the same pixels give the same answer.
DECODING = (
    "as Pillow: EXIF orientation applied, transparency composited over white, 16-bit gray rounded to 8 bits "
    "(v * 255 / 65535), 16-bit colour to its high byte, "
    "JPEG with Pillow's (libjpeg's accurate) IDCT, first frame of an animation"
)
# Every export's fixed input contract (preprocessing is inside the model).
CONTRACT = {
    "input_layout": "NHWC",
    "input_dtype": "float32",
    "pixel_range": "0..255",
    "color_order": "RGB",
    "preprocessing": "inside the model: feed raw pixels, do not normalize",
    "resize": "bilinear with half-pixel centres (align_corners=False), no antialias, no crop, to image_size",
    "output": "float32 [N, len(class_names)] softmax probabilities, column i = class_names[i]",
    "decoding": DECODING,
}
# Keys every export carries ("decoding" came later: older exports are read without it).
REQUIRED = ("floranet_version", "class_names", "image_size", *(k for k in CONTRACT if k != "decoding"))
# How a user of each runtime reads it (README and the export's README.txt).
HOWTO = {
    "keras": f'json.loads(zipfile.ZipFile("{MODEL_FILES["keras"]}").read("metadata.json"))["floranet"]',
    "saved_model": 'tf.saved_model.load("model").signatures["metadata"]()  # dict of string tensors',
    "onnx": 'onnxruntime.InferenceSession("model.onnx").get_modelmeta().custom_metadata_map',
    "openvino": 'openvino.Core().read_model("model.xml").get_rt_info(["floranet", "class_names"]).astype(str)',
    "tflite": "ai_edge_litert.tools.flatbuffer_utils.read_model('model.tflite').metadata (entry 'floranet'); "
    "labels.txt: zipfile.ZipFile('model.tflite'), split at \"\\n\" only (not splitlines(): a name may hold U+2028)",
}


@dataclass(frozen=True)
class ModelMetadata:
    """What a deployed model needs besides its weights.

    Attributes:
        class_names: Output column → class name.
        image_size: ``(h, w)`` of the input.
        floranet_version: The floranet that wrote the export.
        extra: Other string fields (the fixed input contract, backbone, model version, ...).
    """

    class_names: tuple[str, ...]
    image_size: tuple[int, int]
    floranet_version: str
    extra: dict[str, str]

    @classmethod
    def for_run(cls, class_names: list[str], image_size: tuple[int, int], **extra: str) -> ModelMetadata:
        from floranet import __version__

        return cls(tuple(class_names), image_size, __version__, {**CONTRACT, **extra})

    def to_strings(self) -> dict[str, str]:
        """Flat string → string form, as every format stores it."""
        return {
            "floranet_version": self.floranet_version,
            "class_names": json.dumps(list(self.class_names)),
            "image_size": json.dumps(list(self.image_size)),
            **self.extra,
        }

    @classmethod
    def from_strings(cls, values: dict[str, str], where: str) -> ModelMetadata:
        """Parses :meth:`to_strings`'s form.

        Raises:
            ModelError: A required key is missing or malformed.
        """
        missing = [k for k in REQUIRED if not values.get(k)]
        if missing:
            raise ModelError(f"{where} lacks floranet metadata: {', '.join(missing)} missing")
        try:
            names = json.loads(values["class_names"])
            size = json.loads(values["image_size"])
            ok = isinstance(names, list) and all(isinstance(n, str) for n in names) and len(size) == 2
        except (ValueError, TypeError):
            ok = False
        if not ok:
            raise ModelError(f"{where} has malformed floranet metadata (class_names or image_size)")
        extra = {k: str(v) for k, v in values.items() if k not in ("floranet_version", "class_names", "image_size")}
        return cls(tuple(names), (int(size[0]), int(size[1])), values["floranet_version"], extra)

    def summary(self) -> str:
        h, w = self.image_size
        unknown = json.loads(self.extra.get("unknown") or "{}")
        answer = (
            f"unknown answer {unknown['method']} (threshold {unknown['threshold']:.4g})"
            if unknown.get("available")
            else "no unknown answer"
        )
        return (
            f"{len(self.class_names)} class names, input {h}x{w} {self.extra.get('color_order')} "
            f"{self.extra.get('pixel_range')} {self.extra.get('input_layout')} {self.extra.get('input_dtype')}, "
            f"{answer}, floranet {self.floranet_version}"
        )


def for_source(source: ExportSource) -> ModelMetadata:
    """The metadata of a run being exported: its class names, input size, backbone and model version."""
    extra = {"model_version": source.run.model_version()}
    if source.run.exists(RunDir.CONFIG):
        extra["backbone"] = source.run.config().backbone
    extra["unknown"] = json.dumps(unknown_summary(source.run))
    # As predict names them: strict UTF-8 (a folder name's other bytes as \xNN), which every reader of JSON takes.
    return ModelMetadata.for_run([utf8(n) for n in source.class_names], source.image_size, **extra)


# --------------------------------------------------------------------------- writing


def embed(fmt: str, folder: Path, meta: ModelMetadata) -> None:
    """Writes ``meta`` into the export's model file (in place, in the export's temp folder)."""
    _EMBED[fmt](folder, meta)


def _embed_keras(folder: Path, meta: ModelMetadata) -> None:
    path = folder / MODEL_FILES["keras"]
    tmp = path.with_suffix(".tmp.keras")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "metadata.json":
                doc = json.loads(data)
                doc[KEY] = meta.to_strings()
                data = json.dumps(doc, indent=1).encode()
            dst.writestr(item, data)
    os.replace(tmp, path)


def _embed_onnx(folder: Path, meta: ModelMetadata) -> None:
    onnx = require("onnx", "format='onnx'")
    path = folder / MODEL_FILES["onnx"]
    proto = onnx.load(str(path))
    kept = [p for p in proto.metadata_props if p.key not in meta.to_strings()]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in meta.to_strings().items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def _embed_openvino(folder: Path, meta: ModelMetadata) -> None:
    ov = require("openvino", "format='openvino'")
    xml = folder / MODEL_FILES["openvino"]
    model = ov.Core().read_model(str(xml))
    for key, value in meta.to_strings().items():
        model.set_rt_info(value, [KEY, key])
    staging = folder / ".meta"
    staging.mkdir()
    # Already compressed (or not) as the export asked: store the constants as they are.
    ov.save_model(model, str(staging / xml.name), compress_to_fp16=False)
    del model
    for name in (xml.name, xml.with_suffix(".bin").name):
        os.replace(staging / name, folder / name)
    shutil.rmtree(staging)


def _flatbuffer_utils() -> Any:
    if available("ai_edge_litert"):
        from ai_edge_litert.tools import flatbuffer_utils

        return flatbuffer_utils
    from tensorflow.lite.tools import flatbuffer_utils  # the same module, inside TensorFlow

    return flatbuffer_utils


def _embed_tflite(folder: Path, meta: ModelMetadata) -> None:
    fbu = _flatbuffer_utils()
    schema = fbu.schema_fb
    path = folder / MODEL_FILES["tflite"]
    model = fbu.read_model(str(path))
    buffer = schema.BufferT()
    buffer.data = json.dumps(meta.to_strings()).encode()
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = KEY
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != KEY] + [entry]
    fbu.write_model(model, str(path))
    # The TFLite associated-file layout: a zip appended to the flatbuffer (runtimes ignore trailing bytes).
    with zipfile.ZipFile(path, "a") as z:
        z.writestr(LABELS_FILE, "\n".join(meta.class_names) + "\n")
        z.writestr(f"{KEY}.json", json.dumps(meta.to_strings(), indent=1))


def _embed_saved_model(folder: Path, meta: ModelMetadata) -> None:
    """Nothing to do: the SavedModel writer builds the metadata signature and labels asset itself."""


_EMBED = {
    "keras": _embed_keras,
    "saved_model": _embed_saved_model,
    "onnx": _embed_onnx,
    "openvino": _embed_openvino,
    "tflite": _embed_tflite,
}


# --------------------------------------------------------------------------- reading


def embed_and_verify(fmt: str, folder: Path, source: ExportSource) -> dict[str, Any]:
    """Writes the run's metadata into the export, reads it back with the format's runtime, compares.

    Returns:
        What was read back (``read_with``, ``class_names``, ``image_size``, ``floranet_version``,
        ``summary``): the ``metadata`` column of ``exports.json``.

    Raises:
        ModelError: Missing after writing, or different from the run's.
    """
    meta = for_source(source)
    embed(fmt, folder, meta)
    read, how = read_metadata(fmt, folder)
    unknown = read.extra.get("unknown")
    if read.class_names != meta.class_names or read.image_size != meta.image_size or unknown != meta.extra["unknown"]:
        raise ModelError(
            f"The {fmt} export's metadata ({how}) differs from the run's: class names {list(read.class_names)} "
            f"vs {list(meta.class_names)}, image size {read.image_size} vs {meta.image_size}, unknown answer "
            f"{unknown} vs {meta.extra['unknown']}"
        )
    return {
        "read_with": how,
        "class_names": list(read.class_names),
        "image_size": list(read.image_size),
        "floranet_version": read.floranet_version,
        "unknown": json.loads(unknown),
        "summary": read.summary(),
    }


def read_metadata(fmt: str, folder: Path) -> tuple[ModelMetadata, str]:
    """Reads the metadata back from the export's model file with the format's own runtime.

    Returns:
        (the metadata, how it was read).

    Raises:
        ModelError: The file is missing or damaged, has none, or some key is missing.
    """
    path = folder / MODEL_FILES[fmt]
    if not path.exists():
        raise ModelError(f"Cannot read the metadata of {path}: it is missing.")
    if fmt == "keras" and is_cut_keras(path):
        raise ModelError(f"Cannot read the metadata of {path}: {DAMAGED_KERAS}")
    try:
        values, how = _READ[fmt](folder)
    except FloranetError:  # ours says what is wrong (e.g. the runtime is not installed)
        raise
    except Exception as e:  # each runtime's own error for a damaged file: BadZipFile, IndexError, struct.error, ...
        raise ModelError(
            f"Cannot read the metadata of {path}: the file is damaged (cut short by a copy or a full disk?), or is "
            f"not in the {fmt} format: {type(e).__name__}: {str(e).strip()}"
        ) from e
    return ModelMetadata.from_strings(values, f"{path} ({how})"), how


def _read_keras(folder: Path) -> tuple[dict[str, str], str]:
    with zipfile.ZipFile(folder / MODEL_FILES["keras"]) as z:
        doc = json.loads(z.read("metadata.json"))
    return dict(doc.get(KEY) or {}), "metadata.json of the .keras archive"


def _read_saved_model(folder: Path) -> tuple[dict[str, str], str]:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(folder / MODEL_FILES["saved_model"]))
    how = f"tensorflow {tf.__version__} signatures['metadata'] (class names from assets/{LABELS_FILE})"
    if "metadata" not in loaded.signatures:
        return {}, how
    values: dict[str, str] = {}
    for key, tensor in loaded.signatures["metadata"]().items():
        value = tensor.numpy()
        values[key] = value.decode() if isinstance(value, bytes) else json.dumps([v.decode() for v in value])
    return values, how


def _read_onnx(folder: Path) -> tuple[dict[str, str], str]:
    ort = require("onnxruntime", "Reading an onnx export")
    session = ort.InferenceSession(str(folder / MODEL_FILES["onnx"]), providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map), f"onnxruntime {ort.__version__} custom_metadata_map"


def _read_openvino(folder: Path) -> tuple[dict[str, str], str]:
    ov = require("openvino", "Reading an openvino export")
    model = ov.Core().read_model(str(folder / MODEL_FILES["openvino"]))
    if not model.has_rt_info([KEY]):
        return {}, "openvino rt_info"
    values = {str(k): v.astype(str) for k, v in model.get_rt_info([KEY]).astype(dict).items()}
    return values, f"openvino {ov.__version__} rt_info"


def _read_tflite(folder: Path) -> tuple[dict[str, str], str]:
    path = folder / MODEL_FILES["tflite"]
    data = path.read_bytes()
    schema = _flatbuffer_utils().schema_fb
    model = schema.Model.GetRootAs(data, 0)
    values: dict[str, str] = {}
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == KEY.encode():
            values = json.loads(bytes(model.Buffers(entry.Buffer()).DataAsNumpy()).decode())
    try:
        with zipfile.ZipFile(path) as z:
            # One name a line, split at "\n" only (splitlines() also splits at U+2028, \x1c, ..., which a folder
            # name may hold).
            labels = z.read(LABELS_FILE).decode().split("\n")[:-1] if LABELS_FILE in z.namelist() else []
    except zipfile.BadZipFile:  # no associated files at all
        labels = []
    if labels != json.loads(values.get("class_names", "[]")):
        values.pop("class_names", None)
    return values, f"{schema.__name__} Model.metadata['{KEY}'] + zipped {LABELS_FILE}"


_READ = {
    "keras": _read_keras,
    "saved_model": _read_saved_model,
    "onnx": _read_onnx,
    "openvino": _read_openvino,
    "tflite": _read_tflite,
}
