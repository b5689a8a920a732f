"""The registry of named backbones: input size, preprocessing and how to build each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from indexer.embedders import efficientnet_lite
from indexer.errors import ModelError

if TYPE_CHECKING:
    import keras

WeightsArg = str | Path | None  # "imagenet", a local file, or None (random init)


@dataclass(frozen=True)
class Backbone:
    """A convolutional feature extractor (no classifier, no pooling)."""

    name: str
    input_size: int
    preprocessing: str  # human/machine-readable description stored in the manifest
    preprocess: Callable  # float32 RGB [0, 255] tensor -> network input
    build: Callable[[WeightsArg], keras.Model]  # weights -> feature-map model


def _keras_app(constructor: str, size: int) -> Callable[[WeightsArg], keras.Model]:
    def build(weights: WeightsArg) -> keras.Model:
        import keras

        app = getattr(keras.applications, constructor)
        try:
            return app(
                include_top=False, weights=None if weights is None else str(weights), input_shape=(size, size, 3)
            )
        except (ValueError, OSError) as exc:
            raise ModelError(f"cannot build {constructor} with weights={weights}: {exc}") from exc

    return build


def _keras_preprocess(module: str) -> Callable:
    def preprocess(x):
        import keras

        return getattr(keras.applications, module).preprocess_input(x)

    return preprocess


def _build_efficientnet_lite0(weights: WeightsArg) -> keras.Model:
    model = efficientnet_lite.build(include_top=False)
    if weights is None:
        return model
    path = efficientnet_lite.packaged_weights_path() if weights == "imagenet" else Path(weights)
    if path.suffix == ".pth":
        efficientnet_lite.load_torch_weights(model, path)
    else:
        try:
            model.load_weights(str(path))
        except (ValueError, OSError) as exc:
            raise ModelError(f"cannot load efficientnet_lite0 weights from {path}: {exc}") from exc
    return model


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone(
            "efficientnet_lite0",
            efficientnet_lite.INPUT_SIZE,
            "(x - 127) / 128",
            efficientnet_lite.preprocess,
            _build_efficientnet_lite0,
        ),
        Backbone(
            "vgg16",
            224,
            "keras.applications.vgg16.preprocess_input (caffe: BGR, ImageNet mean)",
            _keras_preprocess("vgg16"),
            _keras_app("VGG16", 224),
        ),
        Backbone(
            "resnet50",
            224,
            "keras.applications.resnet50.preprocess_input (caffe: BGR, ImageNet mean)",
            _keras_preprocess("resnet50"),
            _keras_app("ResNet50", 224),
        ),
        Backbone(
            "inception_v3",
            299,
            "keras.applications.inception_v3.preprocess_input (x / 127.5 - 1)",
            _keras_preprocess("inception_v3"),
            _keras_app("InceptionV3", 299),
        ),
        Backbone(
            "mobilenet_v2",
            224,
            "keras.applications.mobilenet_v2.preprocess_input (x / 127.5 - 1)",
            _keras_preprocess("mobilenet_v2"),
            _keras_app("MobileNetV2", 224),
        ),
    )
}


def backbone_names() -> list[str]:
    return sorted(BACKBONES)


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}: expected one of {', '.join(backbone_names())}") from None
