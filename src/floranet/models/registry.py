"""The one table of backbones: what each name is, how it is fed, where fine-tuning starts, which weights exist.

Pure data (no Keras import), so ``floranet backbones`` lists it instantly. The
builders read it: :func:`floranet.models.resnet.build_resnet` takes a ResNet's
block kind and stage depths from here, :mod:`floranet.models.weights` its
official file and hash (or the bundled file and its sha256),
:mod:`floranet.models.backbones` everything else.
Any other ``keras.applications`` model is also usable by its snake-case name
(see :func:`floranet.models.backbones.get`); those are not listed here.
"""

from __future__ import annotations

from dataclasses import dataclass

from floranet.errors import ConfigError

PREPROCESSING_MODES = ("caffe", "tf", "torch", "none")
RESNET_BLOCKS = ("basic", "bottleneck", "preact", "cifar")
FAMILIES = ("resnet", "mobilenet", "keras")
IMAGENET_SOURCES = ("official", "bundled", "keras")


@dataclass(frozen=True)
class WeightsFile:
    """Official ImageNet weights: Keras's files for our ResNets (downloaded, md5-verified).

    Attributes:
        stem: File name without ``_notop`` and ``.h5``.
        md5_top: Keras's published md5 of the file with the classification top.
        md5_notop: The same for the headless file.
    """

    stem: str
    md5_top: str
    md5_notop: str

    def file(self, *, include_top: bool) -> tuple[str, str]:
        """``(file name, md5)`` of the file with or without the top."""
        return (f"{self.stem}.h5", self.md5_top) if include_top else (f"{self.stem}_notop.h5", self.md5_notop)


@dataclass(frozen=True)
class BundledWeights:
    """ImageNet weights shipped inside floranet (``floranet/models/pretrained/``): no network needed.

    Attributes:
        file: File name in ``floranet/models/pretrained/``; headless (no classification top).
        sha256: Its sha256, checked before every load.
        origin: Where the weights come from, in a few words (``SOURCE.md`` beside the file has the rest).
    """

    file: str
    sha256: str
    origin: str


@dataclass(frozen=True)
class BackboneInfo:
    """One registered backbone.

    Attributes:
        name: Registry name, e.g. ``"resnet50"``.
        family: ``"resnet"`` or ``"mobilenet"`` (floranet's own builders) or ``"keras"``
            (``keras.applications``).
        preprocessing: What its weights expect of raw RGB 0..255: ``"caffe"`` (BGR, ImageNet mean
            subtracted), ``"tf"`` ([-1, 1]), ``"torch"`` ([0, 1] then ImageNet mean/std) or ``"none"``
            (the model normalises inside itself).
        fine_tune_prefix: Fine-tuning unfreezes the first layer whose name starts with this, and
            every layer after it (None: the last quarter of the layers).
        default_size: The image size its ImageNet weights were trained at.
        imagenet: Where ``weights="imagenet"`` comes from: ``"official"`` (Keras's file, downloaded, see
            ``weights_file``), ``"bundled"`` (shipped with floranet, see ``bundled``), ``"keras"``
            (``keras.applications`` downloads it) or None (no weights).
        weights_file: The official file, for ``imagenet="official"``.
        bundled: The file in the box, for ``imagenet="bundled"``.
        block: ResNet block kind (one of :data:`RESNET_BLOCKS`), for ``family="resnet"``.
        depths: Blocks per stage, for ``family="resnet"``.
        keras_name: The ``keras.applications`` function, for ``family="keras"``.
    """

    name: str
    family: str
    preprocessing: str
    fine_tune_prefix: str | None
    default_size: int = 224
    imagenet: str | None = None
    weights_file: WeightsFile | None = None
    block: str | None = None
    depths: tuple[int, ...] = ()
    keras_name: str | None = None
    bundled: BundledWeights | None = None

    @property
    def has_imagenet_weights(self) -> bool:
        return self.imagenet is not None

    @property
    def weights_in_box(self) -> bool:
        """Its ImageNet weights ship with floranet (``weights="imagenet"`` needs no network)."""
        return self.imagenet == "bundled"

    def describe_weights(self) -> str:
        """One phrase for ``floranet backbones``: where its ImageNet weights come from."""
        return {
            "bundled": "ImageNet weights bundled",
            "official": "ImageNet weights downloaded on first use",
            "keras": "ImageNet weights downloaded on first use, by Keras",
        }.get(str(self.imagenet), "no ImageNet weights")


REGISTRY: dict[str, BackboneInfo] = {}


def register(info: BackboneInfo) -> BackboneInfo:
    """Adds a backbone to :data:`REGISTRY` (checked for consistency)."""
    problems = []
    if info.family not in FAMILIES:
        problems.append(f"family={info.family!r}")
    if info.imagenet not in (*IMAGENET_SOURCES, None):
        problems.append(f"imagenet={info.imagenet!r}")
    if info.preprocessing not in PREPROCESSING_MODES:
        problems.append(f"preprocessing={info.preprocessing!r}")
    if info.family == "resnet" and (info.block not in RESNET_BLOCKS or not info.depths):
        problems.append(f"block={info.block!r}, depths={info.depths!r}")
    if info.family == "keras" and not info.keras_name:
        problems.append("keras_name=None")
    if (info.imagenet == "official") != (info.weights_file is not None):
        problems.append(f"imagenet={info.imagenet!r} with weights_file={info.weights_file!r}")
    if (info.imagenet == "bundled") != (info.bundled is not None):
        problems.append(f"imagenet={info.imagenet!r} with bundled={info.bundled!r}")
    if problems or info.name in REGISTRY:
        raise ConfigError(f"Cannot register backbone {info.name!r}: {', '.join(problems) or 'name taken'}.")
    REGISTRY[info.name] = info
    return info


def _resnet(
    name: str,
    block: str,
    depths: tuple[int, ...],
    preprocessing: str,
    md5: tuple[str, str] | None = None,
    *,
    fine_tune: str = "conv5_",
    size: int = 224,
) -> None:
    weights = WeightsFile(f"{name}_weights_tf_dim_ordering_tf_kernels", *md5) if md5 else None
    register(
        BackboneInfo(
            name, "resnet", preprocessing, fine_tune, size, "official" if md5 else None, weights, block, depths
        )
    )


# Our ResNets. v1 50/101/152 and v2 load Keras's official ImageNet files (md5 as Keras publishes them);
# 18/34 are torchvision's layout (torch preprocessing, for converted weights); CIFAR ones train from scratch.
_resnet("resnet18", "basic", (2, 2, 2, 2), "torch")
_resnet("resnet34", "basic", (3, 4, 6, 3), "torch")
_resnet(
    "resnet50",
    "bottleneck",
    (3, 4, 6, 3),
    "caffe",
    ("2cb95161c43110f7111970584f804107", "4d473c1dd8becc155b73f8504c6f6626"),
)
_resnet(
    "resnet101",
    "bottleneck",
    (3, 4, 23, 3),
    "caffe",
    ("f1aeb4b969a6efcfb50fad2f0c20cfc5", "88cf7a10940856eca736dc7b7e228a21"),
)
_resnet(
    "resnet152",
    "bottleneck",
    (3, 8, 36, 3),
    "caffe",
    ("100835be76be38e30d865e96f2aaae62", "ee4c566cf9a93f14d82f913c2dc6dd0c"),
)
_resnet(
    "resnet50v2", "preact", (3, 4, 6, 3), "tf", ("3ef43a0b657b3be2300d5770ece849e0", "fac2f116257151a9d068a22e544a4917")
)
_resnet(
    "resnet101v2",
    "preact",
    (3, 4, 23, 3),
    "tf",
    ("6343647c601c52e1368623803854d971", "c0ed64b8031c3730f411d2eb4eea35b5"),
)
_resnet(
    "resnet152v2",
    "preact",
    (3, 8, 36, 3),
    "tf",
    ("a49b44d1979771252814e80f8ec446f9", "ed17cf2e0169df9d443503ef94b23b33"),
)
for _depth, _n in ((20, 3), (32, 5), (44, 7), (56, 9), (110, 18)):
    _resnet(f"resnet{_depth}", "cifar", (_n, _n, _n), "tf", fine_tune="conv4_", size=32)

# Our MobileNetV2 (floranet.models.mobilenet): keras.applications' layers and names, torchvision's symmetric
# padding, so torchvision's ImageNet weights (converted by scripts/convert_mobilenet_v2.py, shipped in the
# package) match torchvision at every image size. They expect torchvision's normalisation ("torch").
register(
    BackboneInfo(
        "mobilenet_v2",
        "mobilenet",
        "torch",
        "block_13_",
        224,
        "bundled",
        bundled=BundledWeights(
            "mobilenet_v2_imagenet_notop.h5",
            "d8d7b6809f23592a53e39eda3bd5f31cf589bc59c1ff174d0c6be2537e52d1af",
            "torchvision's mobilenet_v2-b0353104.pth (BSD-3-Clause), converted to Keras",
        ),
    )
)

# keras.applications models known to work well as backbones (others work by name too;
# keras:mobilenet_v2 is Keras's own MobileNetV2 with Keras's downloadable weights).
for _info in (
    BackboneInfo("efficientnet_b0", "keras", "none", "block6a_", imagenet="keras", keras_name="EfficientNetB0"),
    BackboneInfo(
        "convnext_tiny", "keras", "none", "convnext_tiny_stage_3", imagenet="keras", keras_name="ConvNeXtTiny"
    ),
    BackboneInfo("densenet121", "keras", "torch", "conv5_", imagenet="keras", keras_name="DenseNet121"),
):
    register(_info)


def lookup(name: str) -> BackboneInfo | None:
    """The registered backbone of that name (case and spaces ignored), or None."""
    return REGISTRY.get(name.strip().lower()) if isinstance(name, str) else None


def resnet(name: str) -> BackboneInfo:
    """A registered ResNet of floranet's own family.

    Raises:
        ConfigError: Not one of them; the message lists the valid names.
    """
    info = lookup(name)
    if info is None or info.family != "resnet":
        valid = ", ".join(n for n, i in REGISTRY.items() if i.family == "resnet")
        raise ConfigError(f"Unknown ResNet architecture. Valid names: {valid}. Received: arch={name!r}")
    return info


def keras_key(name: str) -> str | None:
    """The ``keras.applications`` function a backbone name builds, lower case without underscores (the key
    :func:`floranet.models.backbones.get` finds it by: ``efficientnetb0`` for efficientnet_b0, EfficientNetB0
    and keras:efficientnet_b0), or None for floranet's own models (resnet50, mobilenet_v2). No Keras import."""
    key = name.strip().lower()
    info = lookup(key)
    if info is not None and info.family != "keras":
        return None
    keras_name = info.keras_name if info is not None else None
    return (keras_name or key.removeprefix("keras:")).lower().replace("_", "")


def identity(name: str) -> str:
    """Which model a backbone name builds, from the name alone: names of one identity train the same model
    (``efficientnet_b0`` and ``efficientnetb0``: ``keras.applications.efficientnetb0``); floranet's resnet50 is
    not ``keras:resnet50``."""
    key = keras_key(name)
    return name.strip().lower() if key is None else f"keras.applications.{key}"
