"""An embedder: a backbone plus pooling, as a pure "batch of images -> vectors" function."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
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
POOLINGS = ("avg", "max", "gem", "flatten")
DEFAULT_GEM_P = 3.0  # the generalized mean's usual exponent (Radenović et al.); 1 = avg, large = max
GEM_P_RANGE = (1.0, 16.0)
GEM_EPSILON = 1e-6  # activations are clamped to this before the power (ReLU6 outputs may be exactly 0)
SINGLE_SCALE = (1.0,)
RUNTIMES = ("keras", "tflite")
TFLITE_CACHE_ENV = "POSTERS_TFLITE_CACHE"  # where converted models are kept (default ~/.cache/poster-similarity)
SCALE_RANGE = (0.25, 4.0)  # relative to the backbone's input size
MIN_SCALED_SIDE = 32
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
    gem_p: float = DEFAULT_GEM_P  # pooling "gem" only
    # multi-scale: the input resized to these multiples of the model's input size, one descriptor each
    # (L2-normalized), averaged. (1.0,): one scale, exactly the single-scale embedding.
    scales: tuple[float, ...] = SINGLE_SCALE
    # how the model runs: "keras" (TensorFlow) or "tflite" (the same graph converted to TFLite and run with
    # XNNPACK, vectors equal within float32 rounding): not part of the fingerprint or the manifest
    runtime: str = "keras"

    def validate(self) -> None:
        get_backbone(self.model)
        if self.pooling not in POOLINGS:
            raise ModelError(f"pooling expected one of {POOLINGS}, got {self.pooling!r}")
        low, high = GEM_P_RANGE
        if not low <= self.gem_p <= high:
            raise ModelError(f"gem_p expected {low}..{high}, got {self.gem_p}")
        low, high = SCALE_RANGE
        if (
            not self.scales
            or any(not low <= s <= high for s in self.scales)
            or len(set(self.scales)) != len(self.scales)
        ):
            raise ModelError(f"scales expected distinct numbers in {low}..{high}, got {list(self.scales)}")
        if self.runtime not in RUNTIMES:
            raise ModelError(f"runtime expected one of {RUNTIMES}, got {self.runtime!r}")
        if self.runtime == "tflite" and self.scales != SINGLE_SCALE:
            raise ModelError("runtime 'tflite' runs one input size: multi-scale needs runtime 'keras'")
        if self.pooling == "flatten" and self.scales != SINGLE_SCALE:
            raise ModelError("pooling 'flatten' has a dimension per input size: multi-scale needs avg, max or gem")
        if self.resize not in RESIZE_POLICIES:
            raise ModelError(f"resize policy expected one of {RESIZE_POLICIES}, got {self.resize!r}")
        if self.weights not in (WEIGHTS_IMAGENET, WEIGHTS_NONE) and not Path(self.weights).is_file():
            raise ModelError(f"weights expected 'imagenet', 'none' or an existing file, got {self.weights!r}")

    def to_dict(self) -> dict[str, Any]:
        """The spec as the manifest stores it: gem_p only for GeM pooling and scales only when there are several,
        so single-scale avg/max/flatten specs describe (and fingerprint) exactly as before these options."""
        data = asdict(self)
        data.pop("gem_p")
        data.pop("scales")
        data.pop("runtime")
        return {**data, **self.extras()}

    def extras(self) -> dict[str, Any]:
        """The descriptor options that differ from the single-scale, non-GeM embedding."""
        extras: dict[str, Any] = {}
        if self.pooling == "gem":
            extras["gem_p"] = float(self.gem_p)
        if tuple(self.scales) != SINGLE_SCALE:
            extras["scales"] = [float(s) for s in self.scales]
        return extras

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmbedderSpec:
        known: dict[str, Any] = {
            k: data[k] for k in ("model", "weights", "pooling", "resize", "init_seed") if k in data
        }
        if data.get("gem_p") is not None:
            known["gem_p"] = float(data["gem_p"])
        if data.get("scales") is not None:
            known["scales"] = tuple(float(s) for s in data["scales"])
        return cls(**known)


def tflite_cache_dir() -> Path:
    """Converted TFLite models (one per embedder fingerprint and TensorFlow version): $POSTERS_TFLITE_CACHE or
    ~/.cache/poster-similarity/tflite. A conversion happens once, locally (nothing is downloaded)."""
    configured = os.environ.get(TFLITE_CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "poster-similarity" / "tflite"


def scaled_side(size: int, scale: float) -> int:
    """The input side of one scale of a multi-scale embedding."""
    return max(MIN_SCALED_SIDE, round(size * scale))


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


def _pooling_layer(spec: EmbedderSpec) -> Any:
    import keras

    if spec.pooling == "gem":
        p = float(spec.gem_p)

        def gem(x: Any) -> Any:  # generalized mean over the spatial axes: (mean x^p)^(1/p)
            ops = keras.ops
            return ops.power(ops.mean(ops.power(ops.maximum(x, GEM_EPSILON), p), axis=(1, 2)), 1.0 / p)

        return keras.layers.Lambda(gem, name="gem_pool")
    return {
        "avg": keras.layers.GlobalAveragePooling2D,
        "max": keras.layers.GlobalMaxPooling2D,
        "flatten": keras.layers.Flatten,
    }[spec.pooling](name=f"{spec.pooling}_pool")


def _at_side(features: Any, pool: Any, side: int) -> tuple[int, Any]:
    """The feature model rebuilt for ``side`` x ``side`` inputs with the same weights, plus the pooling."""
    import keras

    inputs = keras.Input((side, side, 3), name=f"image_{side}")
    clone = keras.models.clone_model(features, input_tensors=inputs)
    clone.set_weights(features.get_weights())
    return side, keras.Model(inputs, pool(clone.output), name=f"{features.name}_{side}")


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
        size = self.backbone.input_size
        pool = _pooling_layer(spec)
        self.model = keras.Model(features.input, pool(features.output), name=f"{spec.model}_{spec.pooling}")
        self.dim = int(self.model.output_shape[-1])
        preprocess = self.backbone.preprocess
        scaled = [
            (size, self.model) if scaled_side(size, s) == size else _at_side(features, pool, scaled_side(size, s))
            for s in spec.scales
        ]
        self.sides = tuple(side for side, _ in scaled)

        @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8)], reduce_retracing=True)
        def _forward(batch):
            pixels = tf.cast(batch, tf.float32)
            if len(scaled) == 1 and scaled[0][0] == size:
                return scaled[0][1](preprocess(pixels), training=False)
            descriptors = [
                tf.math.l2_normalize(
                    model(
                        preprocess(pixels if side == size else tf.image.resize(pixels, (side, side), antialias=True)),
                        training=False,
                    ),
                    axis=1,
                )
                for side, model in scaled
            ]
            return tf.add_n(descriptors) / len(descriptors)

        self._forward = _forward
        self.fingerprint = self._fingerprint()
        if spec.runtime == "tflite":
            from indexer.embedders.tflite_runtime import TFLiteForward

            self._forward = TFLiteForward.from_keras(self.model, preprocess, size, tflite_cache_dir(), self.fingerprint)
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
            **self.spec.extras(),  # absent for single-scale avg/max/flatten: their fingerprints are unchanged
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
