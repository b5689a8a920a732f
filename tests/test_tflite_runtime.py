"""The TFLite/XNNPACK runtime: the same vectors as Keras, any batch size, a verified on-disk conversion cache."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from indexer.demo_catalog import write_demo_catalog
from indexer.embedders import Embedder, EmbedderSpec, tflite_runtime
from indexer.embedders.tflite_runtime import TFLiteConfig, TFLiteForward, cache_stem
from indexer.errors import ModelError
from indexer.images import DecodeConfig, decode_image, fit_to_input

MIN_COSINE = 0.9999  # per image, TFLite vs Keras (the brief's tolerance; measured ~1 - 1e-7)
POSTERS = 8
MICRO_BATCH = 4  # batch sizes 1, 3 and 17 cover: all images one by one, several micro-batches plus a tail
THREADS = 2
BATCH_SIZES = (1, 3, 17)
SAME_VECTOR_RTOL = 1e-5  # one image's vector whatever chunk and position it runs in
CONCURRENT_CALLERS = 4


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return np.sum(a64 * b64, axis=1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))


def from_embedder(emb: Embedder, cache_dir: Path, micro_batch: int = MICRO_BATCH) -> TFLiteForward:
    return TFLiteForward.from_keras(
        emb.model,
        emb.backbone.preprocess,
        emb.input_size,
        cache_dir,
        emb.fingerprint,
        TFLiteConfig(threads=THREADS, micro_batch=micro_batch),
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, photos: dict[str, np.ndarray]) -> np.ndarray:
    """Synthetic posters and the scikit-image / scikit-learn photos, as model input (uint8, 224 x 224)."""
    out = tmp_path_factory.mktemp("posters")
    write_demo_catalog(out, count=POSTERS, seed=11)
    decode = DecodeConfig(size=224)
    posters = [decode_image(p.read_bytes(), decode) for p in sorted((out / "posters").glob("*.jpg"))]
    from PIL import Image

    pictures = [fit_to_input(Image.fromarray(a).convert("RGB"), decode) for a in photos.values()]
    return np.stack(posters + pictures)


@pytest.fixture(scope="module")
def none_embedder() -> Embedder:
    return Embedder(EmbedderSpec(weights="none"))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tflite-cache")


@pytest.fixture(scope="module")
def lite_tflite(lite_embedder: Embedder, cache_dir: Path) -> TFLiteForward:
    forward = from_embedder(lite_embedder, cache_dir)
    assert forward.converted, "an empty cache directory must mean a conversion"
    return forward


def test_imagenet_vectors_equal_keras_on_posters_and_photos(
    lite_embedder: Embedder, lite_tflite: TFLiteForward, images: np.ndarray
) -> None:
    want = lite_embedder.embed(images)
    got = lite_tflite(images)
    assert got.shape == want.shape == (len(images), lite_embedder.dim) and got.dtype == np.float32
    worst = cosines(got, want).min()
    assert worst >= MIN_COSINE, f"cosine to Keras expected >= {MIN_COSINE} for every image, got min {worst}"


def test_random_init_vectors_equal_keras(none_embedder: Embedder, tmp_path: Path, images: np.ndarray) -> None:
    emb = none_embedder
    forward = from_embedder(emb, tmp_path)
    subset = images[:: max(1, len(images) // 5)]
    worst = cosines(forward(subset), emb.embed(subset)).min()
    assert worst >= MIN_COSINE, f"cosine to Keras expected >= {MIN_COSINE}, got min {worst}"


def test_batch_sizes_agree(lite_embedder: Embedder, lite_tflite: TFLiteForward, images: np.ndarray) -> None:
    batch = np.concatenate([images, images[::-1]])[: max(BATCH_SIZES)]
    reference = lite_embedder.embed(batch)
    whole = lite_tflite(batch)
    for n in BATCH_SIZES:
        for offset in (0, len(batch) - n):  # the same image at another position in its micro-batch
            got = lite_tflite(batch[offset : offset + n])
            assert got.shape == (n, lite_embedder.dim)
            np.testing.assert_allclose(
                got,
                whole[offset : offset + n],
                rtol=SAME_VECTOR_RTOL,
                atol=SAME_VECTOR_RTOL,
                err_msg=f"batch of {n} at {offset}",
            )
            assert cosines(got, reference[offset : offset + n]).min() >= MIN_COSINE
    assert lite_tflite(batch[:0]).shape == (0, lite_embedder.dim)


def test_micro_batch_one_gives_the_same_vectors(
    lite_embedder: Embedder, lite_tflite: TFLiteForward, cache_dir: Path, images: np.ndarray
) -> None:
    single = from_embedder(lite_embedder, cache_dir, micro_batch=1)
    np.testing.assert_allclose(
        single(images[:5]), lite_tflite(images[:5]), rtol=SAME_VECTOR_RTOL, atol=SAME_VECTOR_RTOL
    )


def test_cache_is_reused_without_converting(
    lite_embedder: Embedder,
    lite_tflite: TFLiteForward,
    cache_dir: Path,
    images: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flat = cache_dir / f"{cache_stem(lite_embedder.fingerprint)}.tflite"
    before = flat.stat().st_mtime_ns
    monkeypatch.setattr(tflite_runtime, "convert_keras", lambda *a: pytest.fail("the cached conversion was ignored"))
    again = from_embedder(lite_embedder, cache_dir)
    assert not again.converted
    assert flat.stat().st_mtime_ns == before
    np.testing.assert_array_equal(again(images[:3]), lite_tflite(images[:3]))


def _corrupt_byte(flat: Path, side: Path) -> None:
    data = bytearray(flat.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flat.write_bytes(bytes(data))


def _truncate(flat: Path, side: Path) -> None:
    flat.write_bytes(flat.read_bytes()[: flat.stat().st_size // 3])


def _garbage_sidecar(flat: Path, side: Path) -> None:
    side.write_text("{not json")


def _missing_sidecar(flat: Path, side: Path) -> None:
    side.unlink()


def _other_key_in_sidecar(flat: Path, side: Path) -> None:
    meta = json.loads(side.read_text())
    side.write_text(json.dumps({**meta, "key": "another-embedder"}))


@pytest.mark.parametrize(
    "damage", [_corrupt_byte, _truncate, _garbage_sidecar, _missing_sidecar, _other_key_in_sidecar]
)
def test_damaged_cache_is_detected_and_converted_again(
    lite_embedder: Embedder,
    lite_tflite: TFLiteForward,
    cache_dir: Path,
    tmp_path: Path,
    images: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
    damage,
) -> None:
    stem = cache_stem(lite_embedder.fingerprint)
    good = (cache_dir / f"{stem}.tflite").read_bytes()
    for suffix in (".tflite", ".json"):
        shutil.copy(cache_dir / f"{stem}{suffix}", tmp_path / f"{stem}{suffix}")
    flat, side = tmp_path / f"{stem}.tflite", tmp_path / f"{stem}.json"
    damage(flat, side)
    calls: list[str] = []

    def convert(model, preprocess, size):  # the real conversion is already tested; this one only counts
        calls.append(model.name)
        return good

    monkeypatch.setattr(tflite_runtime, "convert_keras", convert)
    forward = from_embedder(lite_embedder, tmp_path)
    assert forward.converted and calls == [lite_embedder.model.name]
    assert flat.read_bytes() == good, "the damaged cache must be rewritten"
    assert json.loads(side.read_text())["key"] == lite_embedder.fingerprint
    np.testing.assert_array_equal(forward(images[:2]), lite_tflite(images[:2]))
    assert not from_embedder(lite_embedder, tmp_path).converted, "the rewritten cache must be reused"


def test_a_conversion_that_disagrees_with_keras_is_rejected_and_not_cached(
    lite_embedder: Embedder,
    lite_tflite: TFLiteForward,
    none_embedder: Embedder,
    cache_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A flatbuffer with the right shapes but other weights (e.g. variables lost in conversion) must not pass."""
    wrong_weights = none_embedder
    good = (cache_dir / f"{cache_stem(lite_embedder.fingerprint)}.tflite").read_bytes()
    monkeypatch.setattr(tflite_runtime, "convert_keras", lambda *a: good)
    with pytest.raises(ModelError, match="cosine to Keras expected"):
        from_embedder(wrong_weights, tmp_path)
    assert not list(tmp_path.iterdir()), "a rejected conversion must not be cached"


def test_concurrent_callers_get_their_own_vectors(lite_tflite: TFLiteForward, images: np.ndarray) -> None:
    batches = [np.roll(images, shift, axis=0)[: 3 + shift] for shift in range(CONCURRENT_CALLERS)]
    expected = [lite_tflite(b) for b in batches]
    results: dict[int, np.ndarray] = {}
    start = threading.Barrier(CONCURRENT_CALLERS)

    def call(i: int) -> None:
        start.wait()
        results[i] = lite_tflite(batches[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(CONCURRENT_CALLERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(CONCURRENT_CALLERS):
        np.testing.assert_array_equal(results[i], expected[i], err_msg=f"caller {i}")


def test_rejects_wrong_input(lite_tflite: TFLiteForward) -> None:
    with pytest.raises(ValueError, match="expected uint8 images of shape"):
        lite_tflite(np.zeros((2, 224, 224, 3), np.float32))
    with pytest.raises(ValueError, match="expected uint8 images of shape"):
        lite_tflite(np.zeros((2, 100, 100, 3), np.uint8))


def test_config_and_key_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="threads expected >= 1"):
        TFLiteConfig(threads=0).validate()
    with pytest.raises(ModelError, match="micro_batch expected >= 1"):
        TFLiteConfig(micro_batch=0).validate()
    with pytest.raises(ModelError, match="cache key expected"):
        cache_stem("../escape")
