"""Convolutional bases: InceptionV3 (the paper's), MobileNetV3Small, a small CNN.

Each base maps an image to a pooled feature vector (the "bottleneck").
ImageNet weights come from Keras' cache (``$KERAS_HOME/models``, by default
``~/.keras/models``) or are downloaded where there is internet; offline and
absent, training stops at once and names the file to place there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

from domain.errors import TriageError
from model_runtime.package import InputSpec


@dataclasses.dataclass(frozen=True)
class Backbone:
    name: str
    size: int
    channels: int
    scaling: str
    # File name of Keras' no-top ImageNet weights, or None when there are none.
    imagenet_file: str | None
    description: str

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec(
            height=self.size, width=self.size, channels=self.channels, scaling=self.scaling
        )


BACKBONES: dict[str, Backbone] = {
    "inception_v3": Backbone(
        "inception_v3",
        299,
        3,
        "minus_one_one",
        "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "InceptionV3 (Szegedy et al. 2016), as in Kermany et al. 2018",
    ),
    "mobilenet_v3_small": Backbone(
        "mobilenet_v3_small",
        224,
        3,
        "minus_one_one",
        "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
        "MobileNetV3Small: a small, fast alternative",
    ),
    "small_cnn": Backbone(
        "small_cnn",
        128,
        1,
        "zero_one",
        None,
        "A small CNN for tests and phantoms; has no ImageNet weights",
    ),
}


def keras_models_dir() -> Path:
    """Where Keras keeps downloaded application weights."""
    home = os.environ.get("KERAS_HOME") or str(Path.home() / ".keras")
    return Path(home) / "models"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_base(backbone: Backbone, weights: str | None) -> Any:
    """The feature extractor: image in, pooled features out.

    ``weights`` is None (random), "imagenet", or a path to a weights file.
    """
    import keras

    shape = (backbone.size, backbone.size, backbone.channels)
    keras_weights = "imagenet" if weights == "imagenet" else None
    if backbone.name == "inception_v3":
        base = keras.applications.InceptionV3(
            include_top=False, weights=keras_weights, input_shape=shape, pooling="avg"
        )
    elif backbone.name == "mobilenet_v3_small":
        base = keras.applications.MobileNetV3Small(
            include_top=False,
            weights=keras_weights,
            input_shape=shape,
            pooling="avg",
            include_preprocessing=False,
        )
    else:
        base = _small_cnn_base(shape)
    if weights not in (None, "imagenet"):
        base.load_weights(str(weights))
    return base


def _small_cnn_base(shape: tuple[int, int, int]) -> Any:
    import keras

    inputs = keras.Input(shape, name="image")
    x = inputs
    for index, filters in enumerate((16, 32, 64, 64)):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{index}")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{index}")(x)
        x = keras.layers.ReLU(name=f"relu{index}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{index}")(x)
    outputs = keras.layers.GlobalAveragePooling2D(name="bottleneck")(x)
    return keras.Model(inputs, outputs, name="small_cnn_base")


def resolve_base_weights(backbone: Backbone, base_weights: str) -> tuple[str | None, str]:
    """Turn ``--base-weights`` into (weights for build_base, SHA-256 or "").

    Raises
    ------
    TriageError
        If ImageNet weights are asked for but cannot be had, or a file is missing.
    """
    if base_weights == "none":
        return None, ""
    if base_weights == "imagenet":
        if backbone.imagenet_file is None:
            raise TriageError(
                f"Backbone {backbone.name} has no ImageNet weights; use --base-weights "
                "none or a weights file."
            )
        cached = keras_models_dir() / backbone.imagenet_file
        if not cached.is_file():
            try:
                build_base(backbone, "imagenet")
            except Exception as exc:
                raise TriageError(
                    f"ImageNet weights for {backbone.name} are not in Keras' cache and could "
                    f"not be downloaded ({type(exc).__name__}). Place the file "
                    f"{backbone.imagenet_file} in {cached.parent}/ and run again."
                ) from exc
        return "imagenet", sha256_file(cached)
    path = Path(base_weights)
    if not path.is_file():
        raise TriageError(f"--base-weights {base_weights}: no such file.")
    return str(path), sha256_file(path)
