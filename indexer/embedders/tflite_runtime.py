"""The embedder's forward pass as a TFLite flatbuffer run by the XNNPACK delegate (a faster CPU runtime).

The Keras model (uint8 ``(n, size, size, 3)`` -> cast -> preprocess -> backbone -> pooling) is converted locally
at first use — a conversion, nothing is downloaded — and cached under a caller-given directory, keyed by the
caller's key (the embedder fingerprint), the TensorFlow version and this module's conversion format. A cached file
is trusted only if its SHA-256 matches the sidecar written after it; anything else (missing, truncated, corrupt,
wrong shapes) is converted again. A fresh conversion is checked against Keras on a seeded batch before it is
cached.

The converted model has a dynamic batch axis; it is run on fixed micro-batches (the input is chunked; a shorter
tail runs image by image on a second, batch-1 interpreter), so no interpreter re-plans for a new batch size and no
compute is spent on padding.

Thread-safety: a ``tf.lite.Interpreter`` is not thread-safe. Each ``TFLiteForward`` owns one interpreter and
serializes calls with a lock (XNNPACK itself runs each call on ``threads`` threads). For parallel embedding, make
one ``TFLiteForward`` per worker (e.g. per process or actor, each with fewer threads).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.errors import ModelError

log = logging.getLogger(__name__)

# Bump when the conversion changes (graph, converter options): cached flatbuffers of older formats are not reused.
CONVERSION_FORMAT = 1
DEFAULT_MICRO_BATCH = 4  # images per interpreter call: 4 measured a little faster than 1 or 8 (CPU time, 2 cores)
PARITY_IMAGES = 2  # seeded random images a fresh conversion is checked on against Keras
PARITY_SEED = 0
PARITY_MIN_COSINE = 0.9999  # per image, TFLite vs Keras; float32 on both sides, so in practice > 0.999999
PIXEL_LEVELS = 256
CHANNELS = 3
FLATBUFFER_SUFFIX = ".tflite"
SIDECAR_SUFFIX = ".json"
# tf.lite.Interpreter warns on construction that it moves to the ai-edge-litert package; it still ships with TF.
_DEPRECATION_MESSAGE = r"(?s).*tf\.lite\.Interpreter is deprecated.*"


@dataclass(frozen=True)
class TFLiteConfig:
    """How a converted embedder is run."""

    threads: int = max(1, os.cpu_count() or 1)  # XNNPACK worker threads per interpreter call
    micro_batch: int = DEFAULT_MICRO_BATCH

    def validate(self) -> None:
        if self.threads < 1:
            raise ModelError(f"tflite threads expected >= 1, got {self.threads}")
        if self.micro_batch < 1:
            raise ModelError(f"tflite micro_batch expected >= 1, got {self.micro_batch}")


def tf_version() -> str:
    import tensorflow as tf

    return str(tf.__version__)


def cache_stem(key: str) -> str:
    """File name stem of a cached conversion: the caller's key, the TF version and the conversion format."""
    if not key or not all(c.isalnum() or c in "-_." for c in key):
        raise ModelError(f"tflite cache key expected a non-empty [A-Za-z0-9._-] string, got {key!r}")
    return f"{key}-tf{tf_version()}-f{CONVERSION_FORMAT}"


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def convert_keras(model: Any, preprocess: Callable, size: int) -> bytes:
    """Convert ``uint8 batch -> preprocess -> model`` (dynamic batch) to a TFLite flatbuffer, builtin ops only.

    Keras 3 variables are captured through ``keras.export.ExportArchive``, given to the converter as the trackable
    that owns them; converting a bare ``tf.function`` loses them silently (NaN outputs). This skips the SavedModel
    round trip of ``model.export(format="litert")`` (~3 s instead of ~10 s for EfficientNet-Lite0).
    """
    import keras
    import tensorflow as tf

    def forward(batch: Any) -> Any:
        return model(preprocess(tf.cast(batch, tf.float32)), training=False)

    archive = keras.export.ExportArchive()
    archive.track(model)
    endpoint = archive.add_endpoint(
        "serve", forward, input_signature=[tf.TensorSpec([None, size, size, CHANNELS], tf.uint8)]
    )
    converter = tf.lite.TFLiteConverter.from_concrete_functions([endpoint.get_concrete_function()], archive)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex ops: all of it on XNNPACK
    try:
        return bytes(converter.convert())
    except Exception as exc:  # the converter raises ConverterError and assorted internal errors
        raise ModelError(f"cannot convert {model.name} to TFLite: {type(exc).__name__}: {exc}") from exc


def _interpreter(flatbuffer: bytes, threads: int) -> Any:
    """An interpreter with the default delegates (XNNPACK on CPU) and ``threads`` threads."""
    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DEPRECATION_MESSAGE, category=UserWarning)
        return tf.lite.Interpreter(
            model_content=flatbuffer,
            num_threads=threads,
            experimental_op_resolver_type=tf.lite.experimental.OpResolverType.AUTO,
        )


def _check_signature(interpreter: Any, size: int, dim: int) -> str | None:
    """Why the interpreter's model is not ``uint8 (n, size, size, 3) -> float32 (n, dim)``, or None."""
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        return f"expected one input and one output, got {len(inputs)} and {len(outputs)}"
    got_in = (inputs[0]["dtype"], [int(v) for v in inputs[0]["shape_signature"]])
    if got_in != (np.uint8, [-1, size, size, CHANNELS]):
        return f"input expected uint8 [-1, {size}, {size}, {CHANNELS}], got {got_in[0].__name__} {got_in[1]}"
    got_out = (outputs[0]["dtype"], [int(v) for v in outputs[0]["shape_signature"]])
    if got_out != (np.float32, [-1, dim]):
        return f"output expected float32 [-1, {dim}], got {got_out[0].__name__} {got_out[1]}"
    return None


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return float(np.min(np.sum(a64 * b64, axis=1) / np.maximum(norms, np.finfo(np.float64).tiny)))


class TFLiteForward:
    """A callable ``uint8 (n, size, size, 3) -> float32 (n, dim)``: the embedder's forward pass on TFLite/XNNPACK.

    Build it with :meth:`from_keras`. ``converted`` says whether this construction converted the model (False when
    the on-disk cache was reused).
    """

    def __init__(self, flatbuffer: bytes, size: int, dim: int, config: TFLiteConfig, converted: bool) -> None:
        config.validate()
        self.size, self.dim, self.config, self.converted = size, dim, config, converted
        self._interpreter = _interpreter(flatbuffer, config.threads)
        problem = _check_signature(self._interpreter, size, dim)
        if problem:
            raise ModelError(f"tflite model: {problem}")
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self._interpreter.resize_tensor_input(self._input, [config.micro_batch, size, size, CHANNELS], strict=True)
        self._interpreter.allocate_tensors()
        # a tail shorter than a micro-batch runs image by image here rather than padded (no wasted compute)
        self._single = self._interpreter
        if config.micro_batch > 1:
            self._single = _interpreter(flatbuffer, config.threads)
            self._single.resize_tensor_input(self._input, [1, size, size, CHANNELS], strict=True)
            self._single.allocate_tensors()
        self._lock = threading.Lock()

    @classmethod
    def from_keras(
        cls,
        model: Any,
        preprocess: Callable,
        size: int,
        cache_dir: Path,
        key: str,
        config: TFLiteConfig = TFLiteConfig(),
    ) -> TFLiteForward:
        """The converted forward pass of ``uint8 -> preprocess -> model``, from ``cache_dir`` when a verified
        conversion under ``key`` (the embedder fingerprint) and this TF version is there, else converted now,
        checked against Keras and cached (atomically)."""
        config.validate()
        dim = int(model.output_shape[-1])
        cache_dir = Path(cache_dir)
        stem = cache_stem(key)
        flat_path, side_path = cache_dir / f"{stem}{FLATBUFFER_SUFFIX}", cache_dir / f"{stem}{SIDECAR_SUFFIX}"
        cached = _read_cached(flat_path, side_path, key)
        if cached is not None:
            try:
                forward = cls(cached, size, dim, config, converted=False)
                log.info("tflite: reused %s", flat_path)
                return forward
            except ModelError as exc:
                log.warning("tflite: cached %s unusable (%s); converting again", flat_path, exc)
        log.info("tflite: converting %s (dim %d, input %d) to %s", model.name, dim, size, flat_path)
        flatbuffer = convert_keras(model, preprocess, size)
        forward = cls(flatbuffer, size, dim, config, converted=True)
        forward.check_against(model, preprocess)
        cache_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(flat_path, flatbuffer)
        sidecar = {
            "key": key,
            "tensorflow": tf_version(),
            "format": CONVERSION_FORMAT,
            "sha256": _sha256_bytes(flatbuffer),
            "bytes": len(flatbuffer),
            "input_size": size,
            "dim": dim,
        }
        _write_atomic(side_path, json.dumps(sidecar, indent=2, sort_keys=True).encode())
        return forward

    def check_against(self, model: Any, preprocess: Callable) -> None:
        """Raise ModelError unless this forward pass matches Keras (cosine per image) on a seeded batch."""
        import tensorflow as tf

        rng = np.random.default_rng(PARITY_SEED)
        batch = rng.integers(0, PIXEL_LEVELS, (PARITY_IMAGES, self.size, self.size, CHANNELS), dtype=np.uint8)
        want = np.asarray(model(preprocess(tf.cast(batch, tf.float32)), training=False), np.float32)
        got = self(batch)
        cosine = _min_cosine(got, want) if np.isfinite(got).all() else float("nan")
        if not cosine >= PARITY_MIN_COSINE:
            raise ModelError(
                f"tflite conversion of {model.name}: cosine to Keras expected >= {PARITY_MIN_COSINE}, got {cosine}"
            )

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Embed a uint8 batch of any length; returns float32 ``(n, dim)`` (not normalized)."""
        if images.ndim != 4 or images.shape[1:] != (self.size, self.size, CHANNELS) or images.dtype != np.uint8:
            raise ValueError(
                f"expected uint8 images of shape (n, {self.size}, {self.size}, {CHANNELS}), "
                f"got {images.dtype} {images.shape}"
            )
        n, step = len(images), self.config.micro_batch
        out = np.empty((n, self.dim), np.float32)
        full = n - n % step
        with self._lock:
            for start in range(0, full, step):
                self._run(self._interpreter, images[start : start + step], out[start : start + step])
            for i in range(full, n):
                self._run(self._single, images[i : i + 1], out[i : i + 1])
        return out

    def _run(self, interpreter: Any, batch: np.ndarray, out: np.ndarray) -> None:
        interpreter.set_tensor(self._input, np.ascontiguousarray(batch))
        interpreter.invoke()
        out[:] = interpreter.get_tensor(self._output)


def _read_cached(flat_path: Path, side_path: Path, key: str) -> bytes | None:
    """The cached flatbuffer if its sidecar names this key and format and its SHA-256 matches, else None."""
    if not flat_path.is_file() or not side_path.is_file():
        return None
    try:
        sidecar = json.loads(side_path.read_text())
        flatbuffer = flat_path.read_bytes()
    except (OSError, ValueError) as exc:
        log.warning("tflite: cannot read cached %s: %s; converting again", flat_path, exc)
        return None
    expected = {
        "key": key,
        "tensorflow": tf_version(),
        "format": CONVERSION_FORMAT,
        "sha256": _sha256_bytes(flatbuffer),
    }
    got = {name: sidecar.get(name) for name in expected} if isinstance(sidecar, dict) else sidecar
    if got != expected:
        log.warning(
            "tflite: cached %s fails verification (expected %s, got %s); converting again", flat_path, expected, got
        )
        return None
    return flatbuffer
