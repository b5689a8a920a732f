"""Descriptor options (issue #10, item 2): GeM pooling, multi-scale embedding, PCA-whitening in the bundle.

Oracles are independent NumPy/Keras computations: GeM by hand on the feature map, the second scale by a backbone
built natively at that input size, whitening by the covariance it must produce and by brute-force search in the
whitened space.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from indexer import bundle as bundles
from indexer.build import BuildConfig, build
from indexer.embedders import Embedder, EmbedderSpec
from indexer.errors import BundleError, ModelError
from indexer.index import IndexSpec, normalize
from indexer.precomputed import PrecomputedConfig
from indexer.transform import TRANSFORM_FILE, WhitenSpec, learn_whitening
from server.searcher import Searcher
from server.types import SearchOptions
from tests.conftest import QUIET, assert_exact_topk, clustered_vectors

N, D, WHITE_DIM = 400, 32, 12


def _images(n: int, seed: int, size: int = 224) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 8, 8, 3)).astype(np.uint8)
    return np.repeat(np.repeat(base, size // 8, axis=1), size // 8, axis=2)  # blocky: real spatial structure


# ---- GeM ----------------------------------------------------------------------------------------------------
def _feature_map(embedder: Embedder, images: np.ndarray) -> np.ndarray:
    import keras

    pool = embedder.model.layers[-1]
    features = keras.Model(embedder.model.inputs, pool.input)
    return np.asarray(features(embedder.backbone.preprocess(images.astype(np.float32)), training=False), np.float64)


def test_gem_pooling_is_the_generalized_mean_of_the_feature_map() -> None:
    p = 3.0
    gem = Embedder(EmbedderSpec(weights="none", pooling="gem", gem_p=p))
    images = _images(3, seed=1)
    fmap = np.maximum(_feature_map(gem, images), 1e-6)
    oracle = np.mean(fmap**p, axis=(1, 2)) ** (1.0 / p)
    np.testing.assert_allclose(gem.embed(images), oracle, rtol=2e-4, atol=1e-6)
    avg = Embedder(EmbedderSpec(weights="none", pooling="avg"))
    assert gem.fingerprint != avg.fingerprint and gem.describe()["gem_p"] == p
    one = Embedder(EmbedderSpec(weights="none", pooling="gem", gem_p=1.0))  # p = 1 is average pooling
    np.testing.assert_allclose(one.embed(images), avg.embed(images), rtol=1e-4, atol=1e-5)
    assert "gem_p" not in avg.describe()  # avg describes (and fingerprints) exactly as before GeM existed


@pytest.mark.parametrize(
    "spec, message",
    [
        (EmbedderSpec(pooling="gem", gem_p=0.5), "gem_p expected"),
        (EmbedderSpec(scales=(1.0, 1.0)), "scales expected distinct"),
        (EmbedderSpec(scales=(1.0, 9.0)), "scales expected"),
        (EmbedderSpec(scales=()), "scales expected"),
        (EmbedderSpec(pooling="flatten", scales=(1.0, 0.5)), "multi-scale needs"),
    ],
)
def test_descriptor_options_are_validated(spec: EmbedderSpec, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        spec.validate()


# ---- multi-scale ---------------------------------------------------------------------------------------------
def test_multi_scale_averages_the_normalized_descriptors_of_each_size(monkeypatch: pytest.MonkeyPatch) -> None:
    import keras
    import tensorflow as tf

    from indexer.embedders import efficientnet_lite
    from indexer.embedders.embedder import _seeded_init

    images = _images(2, seed=2)
    multi = Embedder(EmbedderSpec(weights="none", scales=(1.0, 0.75)))
    single = Embedder(EmbedderSpec(weights="none"))
    one_scale = Embedder(EmbedderSpec(weights="none", scales=(1.0,)))
    assert multi.sides == (224, 168) and multi.fingerprint != single.fingerprint
    # the oracle's second scale: a backbone built natively for 168 px inputs, with the same seeded weights
    with monkeypatch.context() as patch:
        patch.setattr(efficientnet_lite, "INPUT_SIZE", 168)
        native = efficientnet_lite.build(include_top=False)
    _seeded_init(native, 0)
    small = keras.Model(native.input, keras.layers.GlobalAveragePooling2D()(native.output))
    resized = tf.image.resize(tf.cast(images, tf.float32), (168, 168), antialias=True)
    at_168 = np.asarray(small(single.backbone.preprocess(resized), training=False), np.float64)
    oracle = (normalize(single.embed(images))[0] + normalize(at_168)[0]) / 2
    np.testing.assert_allclose(multi.embed(images), oracle, rtol=1e-4, atol=1e-5)
    # one scale of 1.0 is the single-scale embedding, bit for bit
    np.testing.assert_array_equal(one_scale.embed(images), single.embed(images))
    assert one_scale.fingerprint == single.fingerprint


# ---- whitening -----------------------------------------------------------------------------------------------
def test_whitening_gives_the_catalog_identity_covariance() -> None:
    x, _ = normalize(clustered_vectors(N, D, clusters=10, seed=3))
    white = learn_whitening(x, WhitenSpec(enabled=True, shrinkage=0.0))
    projected = (x.astype(np.float64) - white.mean) @ white.projection.T.astype(np.float64)
    np.testing.assert_allclose(np.cov(projected, rowvar=False), np.eye(white.out_dim), atol=1e-3)
    reduced = learn_whitening(x, WhitenSpec(enabled=True, dim=WHITE_DIM))
    top = np.sort(np.linalg.eigvalsh(np.cov(x.astype(np.float64), rowvar=False)))[::-1][:WHITE_DIM]
    np.testing.assert_allclose(reduced.eigenvalues, top, rtol=1e-4)  # the leading principal directions, in order
    few = learn_whitening(x[:9], WhitenSpec(enabled=True))  # 9 vectors span 8 directions around their mean
    assert few.out_dim == 8


def _build(tmp_path: Path, x: np.ndarray, ids: np.ndarray, name: str, whiten: WhitenSpec) -> Path:
    np.save(tmp_path / "v.npy", x)
    np.save(tmp_path / "ids.npy", ids)
    root = tmp_path / name
    build(
        BuildConfig(
            index_root=root,
            precomputed=PrecomputedConfig(tmp_path / "v.npy", tmp_path / "ids.npy"),
            index=IndexSpec(kind="flat"),
            pipeline=QUIET,
            neighbours_k=10,
            whiten=whiten,
        )
    )
    return bundles.current_path(root)


@pytest.fixture(scope="module")
def whitened(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    tmp = tmp_path_factory.mktemp("white")
    x = clustered_vectors(N, D, clusters=10, seed=4) * 3.0  # not normalized: the build normalizes first
    ids = np.arange(N, dtype=np.int64) * 7 + 1
    plain = _build(tmp, x, ids, "plain", WhitenSpec())
    white = _build(tmp, x, ids, "white", WhitenSpec(enabled=True, dim=WHITE_DIM))
    return plain, white, ids, x


def test_whitened_bundle_round_trip(whitened: tuple[Path, Path, np.ndarray, np.ndarray]) -> None:
    plain_path, white_path, ids, x = whitened
    plain, white = bundles.load_bundle(plain_path), bundles.load_bundle(white_path)
    m = white.manifest
    assert m.transform is not None and white.whitening is not None
    assert (m.transform.in_dim, m.transform.out_dim, m.dim, m.query_dim) == (D, WHITE_DIM, WHITE_DIM, D)
    assert TRANSFORM_FILE in m.files and (white_path / TRANSFORM_FILE).is_file()
    assert plain.manifest.transform is None and plain.whitening is None and plain.manifest.query_dim == D
    assert m.vector_space != plain.manifest.vector_space  # the fingerprint of the vector space changes with it
    # the catalog was transformed at build time exactly as a query is at search time
    searcher = Searcher(white)
    stored = searcher.vectors.vectors(ids)
    expected, ok = white.whitening.apply(normalize(x)[0])
    assert ok.all()
    np.testing.assert_allclose(stored, expected, atol=1e-5)
    # a client's vector (embedder space) is whitened the same way: each item's own raw vector finds it first
    for row in (0, 57, N - 1):
        hits = searcher.search_vector(x[row], SearchOptions(k=10)).hits
        assert hits[0].item.item_id == ids[row] and hits[0].score == pytest.approx(1.0, abs=1e-5)
        found = np.array([[h.item.item_id for h in hits]])
        scores = np.array([[h.score for h in hits]])
        assert_exact_topk(found, scores, expected, ids, expected[row : row + 1])
    assert searcher.info().dimension == D  # what SearchByVector takes
    with pytest.raises(Exception, match=f"expected {D}"):
        searcher.search_vector(np.ones(WHITE_DIM))


def test_the_transform_file_is_checked(whitened: tuple[Path, Path, np.ndarray, np.ndarray], tmp_path: Path) -> None:
    import shutil

    _, white_path, _, _ = whitened
    copy = tmp_path / "builds" / white_path.name
    shutil.copytree(white_path, copy)
    np.savez(copy / TRANSFORM_FILE, mean=np.zeros(D, np.float32), projection=np.zeros((3, D), np.float32),
             eigenvalues=np.ones(3), shrinkage=np.float64(0), trained_on=np.int64(1))  # fmt: skip
    with pytest.raises(BundleError, match="transform.npz"):
        bundles.load_bundle(copy, verify=True)  # the checksum
    with pytest.raises(BundleError, match=r"projection expected float32 \(12, 32\)"):
        bundles.load_bundle(copy, verify=False)  # the structure, even without checksums


def test_a_format_2_bundle_still_loads(whitened: tuple[Path, Path, np.ndarray, np.ndarray], tmp_path: Path) -> None:
    import shutil

    plain_path, _, ids, x = whitened
    copy = tmp_path / "builds" / plain_path.name
    shutil.copytree(plain_path, copy)
    manifest = json.loads((copy / bundles.MANIFEST).read_text())
    manifest["format_version"] = 2
    del manifest["transform"]  # format 2 had no such key
    (copy / bundles.MANIFEST).write_text(json.dumps(manifest))
    old = bundles.load_bundle(copy)
    assert old.manifest.transform is None and old.whitening is None
    hits = Searcher(old).search_vector(x[3], SearchOptions(k=1)).hits
    assert hits[0].item.item_id == ids[3]


def test_image_queries_go_through_the_bundles_whitening(
    tmp_path: Path, demo_catalog: Path, demo_root: Path, lite_embedder: Embedder
) -> None:
    """SearchByImage embeds, normalizes and whitens exactly as the build did: a catalog poster's own bytes find
    it with cosine 1 in the whitened space (without the transform the query would not even have the index's
    dimension)."""
    from server.admission import EmbeddingGate
    from server.image_embedder import EmbedderPool
    from tests.conftest import demo_catalog_config

    root = tmp_path / "white-images"
    build(
        BuildConfig(
            index_root=root,
            catalog=demo_catalog_config(demo_catalog),
            pipeline=QUIET,
            neighbours_k=10,
            cache_path=demo_root / "cache" / "embeddings.sqlite",  # the demo's embeddings: nothing re-embedded
            whiten=WhitenSpec(enabled=True, dim=24),
        ),
        embedder=lite_embedder,
    )
    b = bundles.load_bundle(bundles.current_path(root))
    assert b.manifest.dim == 24 and b.manifest.query_dim == lite_embedder.dim
    embedder, reason = EmbedderPool().for_manifest(b.manifest, 10_000_000, 10_000_000, EmbeddingGate(1), b.whitening)
    assert reason == "" and embedder is not None
    searcher = Searcher(b, image_embedder=embedder)
    for row in (0, 33):
        poster = demo_catalog / "posters" / str(b.items["poster"].iat[row])
        hits = searcher.search_image(poster.read_bytes(), SearchOptions(k=3), mode="whole").hits
        assert hits[0].item.item_id == int(b.items["item_id"].iat[row])
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)


def test_tflite_runtime_gives_the_keras_vectors_under_the_same_fingerprint(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("POSTERS_TFLITE_CACHE", str(tmp_path / "tflite"))
    images = _images(3, seed=9)
    keras_run = Embedder(EmbedderSpec(weights="none"))
    lite_run = Embedder(EmbedderSpec(weights="none", runtime="tflite"))
    assert lite_run.fingerprint == keras_run.fingerprint and "runtime" not in lite_run.describe()
    a, b = normalize(keras_run.embed(images))[0], normalize(lite_run.embed(images))[0]
    assert float(np.einsum("ij,ij->i", a, b).min()) >= 0.9999
    assert any((tmp_path / "tflite").iterdir())  # converted once, kept for the next run
    with pytest.raises(ModelError, match="multi-scale needs runtime 'keras'"):
        EmbedderSpec(runtime="tflite", scales=(1.0, 0.5)).validate()
