"""An embedder: a backbone plus pooling, as a pure "batch of images -> vectors" function."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.embedders.registry import get_backbone
from indexer.errors import ModelError
from indexer.hashing import file_sha256

log = logging.getLogger(__name__)

WEIGHTS_IMAGENET = "imagenet"
WEIGHTS_NONE = "none"
POOLINGS = ("avg", "max", "flatten")
RESIZE_POLICIES = ("pad", "stretch", "center-crop")
# Random-init ("none") weights are drawn from this seeded generator so that the
# indexer and the server build identical models in different processes.
DEFAULT_INIT_SEED = 0


@dataclass(frozen=True)
class EmbedderSpec:
    """Everything that determines an embedding; serialized into the bundle manifest."""

    model: str = "efficientnet_lite0"
    weights: str = WEIGHTS_IMAGENET  # "imagenet", "none" (random init) or a local weights file
    pooling: str = "avg"
    resize: str = "pad"
    init_seed: int = DEFAULT_INIT_SEED

    def validate(self) -> None:
        get_backbone(self.model)
        if self.pooling not in POOLINGS:
            raise ModelError(f"pooling expected one of {POOLINGS}, got {self.pooling!r}")
        if self.resize not in RESIZE_POLICIES:
            raise ModelError(f"resize policy expected one of {RESIZE_POLICIES}, got {self.resize!r}")
        if self.weights not in (WEIGHTS_IMAGENET, WEIGHTS_NONE) and not Path(self.weights).is_file():
            raise ModelError(f"weights expected 'imagenet', 'none' or an existing file, got {self.weights!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmbedderSpec:
        return cls(**{k: data[k] for k in ("model", "weights", "pooling", "resize", "init_seed") if k in data})


def _seeded_init(model: Any, seed: int) -> None:
    """Deterministic He-normal kernels (other weights keep their constant initialisers)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        kernel = weights[0]
        if kernel.ndim >= 2:
            fan_in = (
                int(np.prod(kernel.shape[:-1]))
                if "Depthwise" not in type(layer).__name__
                else int(np.prod(kernel.shape[:2]))
            )
            weights[0] = rng.normal(0.0, np.sqrt(2.0 / max(fan_in, 1)), kernel.shape).astype(np.float32)
            layer.set_weights(weights)


def spec_key(spec: EmbedderSpec) -> str:
    """Identity of an embedder that is computable without building its model (no TensorFlow import): the
    embedding cache remembers the embedder's full description under it."""
    backbone = get_backbone(spec.model)
    weights = spec.weights
    if weights not in (WEIGHTS_IMAGENET, WEIGHTS_NONE):
        weights = f"file:{file_sha256(Path(weights))}"
    ident = {
        **spec.to_dict(),
        "weights": weights,
        "input_size": backbone.input_size,
        "preprocessing": backbone.preprocessing,
        "keras": importlib.metadata.version("keras").split(".")[0],
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


class LazyEmbedder:
    """An embedder whose description the cache already knows: the model is built only if something must
    be embedded (a rebuild whose posters are all cached never loads TensorFlow)."""

    def __init__(self, spec: EmbedderSpec, description: dict[str, Any]) -> None:
        self.spec = spec
        self._description = dict(description)
        self.dim = int(description["dim"])
        self.fingerprint = str(description["fingerprint"])
        self.input_size = int(description["input_size"])
        self.model: Embedder | None = None

    def embed(self, images: np.ndarray) -> np.ndarray:
        if self.model is None:
            self.model = Embedder(self.spec)
            if self.model.fingerprint != self.fingerprint:
                raise ModelError(
                    f"embedder fingerprint expected {self.fingerprint[:12]} (embedding cache), got "
                    f"{self.model.fingerprint[:12]}: the cache's record is stale; delete the cache or use --no-cache"
                )
        return self.model.embed(images)

    def describe(self) -> dict[str, Any]:
        return dict(self._description)


class Embedder:
    """Turns a uint8 batch ``(n, size, size, 3)`` into float32 vectors ``(n, dim)``.

    Vectors are returned as the model produces them; callers L2-normalize.
    The dimension is read from the model, never assumed.
    """

    def __init__(self, spec: EmbedderSpec) -> None:
        import keras
        import tensorflow as tf

        spec.validate()
        self.spec = spec
        self.backbone = get_backbone(spec.model)
        weights = None if spec.weights == WEIGHTS_NONE else spec.weights
        features = self.backbone.build(weights)
        if weights is None:
            _seeded_init(features, spec.init_seed)
        pool = {
            "avg": keras.layers.GlobalAveragePooling2D,
            "max": keras.layers.GlobalMaxPooling2D,
            "flatten": keras.layers.Flatten,
        }[spec.pooling](name=f"{spec.pooling}_pool")
        self.model = keras.Model(features.input, pool(features.output), name=f"{spec.model}_{spec.pooling}")
        self.dim = int(self.model.output_shape[-1])
        size = self.backbone.input_size
        preprocess = self.backbone.preprocess
        model = self.model

        @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8)], reduce_retracing=True)
        def _forward(batch):
            return model(preprocess(tf.cast(batch, tf.float32)), training=False)

        self._forward = _forward
        self.fingerprint = self._fingerprint()
        log.info("embedder %s ready: dim=%d input=%d fingerprint=%s", spec.model, self.dim, size, self.fingerprint[:12])

    @property
    def input_size(self) -> int:
        return self.backbone.input_size

    def _fingerprint(self) -> str:
        weights = self.spec.weights
        if weights not in (WEIGHTS_IMAGENET, WEIGHTS_NONE):
            weights = f"file:{file_sha256(Path(weights))}"
        elif weights == WEIGHTS_NONE:
            weights = f"none:seed={self.spec.init_seed}"
        import keras

        ident = {
            "model": self.spec.model,
            "weights": weights,
            "pooling": self.spec.pooling,
            "resize": self.spec.resize,
            "input_size": self.input_size,
            "preprocessing": self.backbone.preprocessing,
            "dim": self.dim,
            "keras": keras.__version__.split(".")[0],
        }
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Embed a uint8 batch; returns float32 ``(n, dim)`` (not normalized)."""
        if images.ndim != 4 or images.shape[1:] != (self.input_size, self.input_size, 3) or images.dtype != np.uint8:
            raise ValueError(
                f"expected uint8 images of shape (n, {self.input_size}, {self.input_size}, 3), "
                f"got {images.dtype} {images.shape}"
            )
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        return np.asarray(self._forward(images), dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        """The manifest's description of this embedder."""
        return {
            **self.spec.to_dict(),
            "input_size": self.input_size,
            "preprocessing": self.backbone.preprocessing,
            "dim": self.dim,
            "fingerprint": self.fingerprint,
        }
