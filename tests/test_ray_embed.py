"""posters-index embed (local and Ray Data engines), its shards, build --embeddings DIR and cache import.

One Ray session for the module (a local Ray on 127.0.0.1 with two embedding actors) runs the Ray job once through
the CLI; the local engine runs in-process with the session's EfficientNet-Lite0. Oracles: the poster files' own
bytes (content hashes), the build's own embedding and failure rows for the same catalog, and NumPy.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from indexer import bundle as bundles
from indexer import embedding_shards as shards
from indexer.build import BuildConfig, build
from indexer.cache import EmbeddingCache, content_hash, recall_model
from indexer.cache_import import import_shards
from indexer.catalog import CatalogConfig
from indexer.cli import main
from indexer.demo_catalog import write_demo_catalog
from indexer.embed_job import EmbedJobConfig, prepare_out, run_embed
from indexer.embedders import Embedder
from indexer.embedders.embedder import spec_key
from indexer.errors import BuildError, CatalogError
from indexer.precomputed import PrecomputedConfig, load_precomputed
from tests.conftest import QUIET

COUNT = 14
NOT_AN_IMAGE, EMPTY, MISSING, COPY, ORIGINAL = 1, 2, 3, 4, 5  # movie ids
EMBEDDED = sorted(set(range(1, COUNT + 1)) - {NOT_AN_IMAGE, EMPTY, MISSING})
MIN_COSINE = 0.9999
RAY_ACTORS = 2
RAY_CPUS = 3  # two 1-CPU actors plus room for the decode tasks
BATCH = 4
ROWS_PER_SHARD = 5  # 11 rows -> 3 shards
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def _poster(root: Path, movie_id: int) -> Path:
    return root / "posters" / f"{10_000 + 7 * movie_id}.jpg"  # the demo catalog's {tmdbId}.jpg


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ray-catalog")
    write_demo_catalog(root, count=COUNT, seed=11)
    _poster(root, NOT_AN_IMAGE).write_bytes(b"this is not an image")
    _poster(root, EMPTY).write_bytes(b"")
    _poster(root, MISSING).unlink()
    shutil.copyfile(_poster(root, ORIGINAL), _poster(root, COPY))  # two movies, one poster: one content hash
    return root


def _catalog_config(root: Path) -> CatalogConfig:
    return CatalogConfig(
        posters_dir=root / "posters",
        movies_csv=root / "movies.csv",
        links_csv=root / "links.csv",
        pattern="{tmdbId}.jpg",
    )


@pytest.fixture(scope="module")
def local_out(catalog: Path, lite_embedder: Embedder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("embed-local") / "shards"
    config = EmbedJobConfig(
        catalog=_catalog_config(catalog), out=out, batch_size=BATCH, rows_per_shard=ROWS_PER_SHARD, progress=False
    )
    run_embed(config, embedder=lite_embedder)
    return out


def _listening(pids: set[int]) -> set[str]:
    return {c.laddr.ip for c in psutil.net_connections(kind="inet") if c.status == "LISTEN" and c.pid in pids}


@pytest.fixture(scope="module")
def ray_run(catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, set[str]]]:
    """The Ray job, run once through the CLI in a module-wide local Ray; yields (shard dir, addresses Ray listens
    on)."""
    from indexer.distributed import ray_embed

    ray_embed.start_local_ray(RAY_CPUS)
    ray = ray_embed.import_ray(local=True)
    try:
        out = tmp_path_factory.mktemp("embed-ray") / "shards"
        args = ["embed", "--movies", str(catalog / "movies.csv"), "--links", str(catalog / "links.csv")]
        args += ["--posters", str(catalog / "posters"), "--pattern", "{tmdbId}.jpg", "--out", str(out)]
        args += ["--engine", "ray", "--actors", str(RAY_ACTORS), "--batch-size", str(BATCH)]
        args += ["--rows-per-shard", str(ROWS_PER_SHARD), "--quiet"]
        assert main(args) == 0
        me = psutil.Process()
        addresses = _listening({me.pid} | {p.pid for p in me.children(recursive=True)})
        yield out, addresses
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_out(ray_run: tuple[Path, set[str]]) -> Path:
    return ray_run[0]


def _rows(directory: Path) -> dict[int, tuple[str, np.ndarray]]:
    out: dict[int, tuple[str, np.ndarray]] = {}
    for part in shards.iter_shards(shards.open_shards(directory)):
        assert not part.bad_rows
        for item, key, vector in zip(part.ids.tolist(), part.hashes, part.vectors):
            assert item not in out, f"item {item} in two rows"
            out[item] = (str(key), vector)
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _summary(directory: Path) -> dict:
    return json.loads((directory / shards.SUCCESS_FILE).read_text())


def test_ray_vectors_equal_the_local_path(catalog: Path, local_out: Path, ray_out: Path, lite_embedder: Embedder):
    local, distributed = _rows(local_out), _rows(ray_out)
    assert sorted(local) == sorted(distributed) == EMBEDDED
    for item in EMBEDDED:
        expected_hash = content_hash(_poster(catalog, item).read_bytes())  # the bytes the cache would key
        assert local[item][0] == distributed[item][0] == expected_hash, f"item {item}"
        cosine = float(_unit(local[item][1]) @ _unit(distributed[item][1]))
        assert cosine >= MIN_COSINE, f"item {item}: cosine {cosine:.6f} between the local and the Ray vector"
    assert local[COPY][0] == local[ORIGINAL][0]  # same bytes, same key
    for directory, engine in ((local_out, "local"), (ray_out, "ray")):
        summary = _summary(directory)
        assert summary["engine"] == engine
        assert (summary["rows"], summary["catalog_items"], summary["failure_count"]) == (len(EMBEDDED), COUNT - 1, 3)
        assert list(summary["shards"].values()) == [ROWS_PER_SHARD, ROWS_PER_SHARD, len(EMBEDDED) - 2 * ROWS_PER_SHARD]
        assert summary["embedder"] == lite_embedder.describe()
        assert shards.open_shards(directory).embedder == shards.ShardEmbedder(
            lite_embedder.describe(), spec_key(lite_embedder.spec)
        )
    workers = _summary(ray_out)["workers"]
    # which actor gets the 4 batches is Ray's scheduling: one that is ready seconds before the other may take them
    # all (seen in CI under load); scripts/bench_embed_ray.py shows 2 actors sharing a larger job
    assert 1 <= len(workers) <= RAY_ACTORS, f"expected at most {RAY_ACTORS} actors to embed, got {workers}"
    assert sum(workers.values()) == COUNT - 1  # every poster the catalog found went through an actor


def test_ray_listens_on_loopback_only(ray_run: tuple[Path, set[str]]) -> None:
    _, addresses = ray_run
    assert addresses, "expected the local Ray's servers among this process's children"
    assert addresses <= LOOPBACK, f"expected Ray to listen on 127.0.0.1 only, got {sorted(addresses)}"


def test_failures_and_vectors_match_the_build(
    catalog: Path, local_out: Path, ray_out: Path, lite_embedder: Embedder, tmp_path: Path
) -> None:
    """The build of the same catalog is the oracle: same failure rows (stage, file, reason), same vectors."""
    root = tmp_path / "index"
    build(
        BuildConfig(index_root=root, catalog=_catalog_config(catalog), pipeline=QUIET, neighbours_k=0, use_cache=False),
        embedder=lite_embedder,
    )
    bundle = bundles.load_bundle(bundles.current_path(root))
    expected = bundles.load_failures(bundle.path).sort_values("item_id").reset_index(drop=True)
    assert expected["item_id"].tolist() == [NOT_AN_IMAGE, EMPTY, MISSING]
    for directory in (local_out, ray_out):
        got = pd.read_csv(directory / shards.FAILURES_FILE, dtype=str, keep_default_na=False)
        got = got.sort_values("item_id", key=lambda s: s.astype(int)).reset_index(drop=True)
        assert got["item_id"].astype(int).tolist() == expected["item_id"].tolist()
        for column in ("file", "stage", "reason"):
            assert got[column].tolist() == expected[column].astype(str).tolist(), f"{directory.parent.name}: {column}"
    local = _rows(local_out)
    built = np.vstack([bundle.index.reconstruct(item) for item in EMBEDDED])
    np.testing.assert_allclose(built, _unit(np.vstack([local[item][1] for item in EMBEDDED])), atol=1e-6)


def test_build_from_a_shard_directory(catalog: Path, ray_out: Path, lite_embedder: Embedder, tmp_path: Path) -> None:
    root = tmp_path / "index"
    titles = CatalogConfig(posters_dir=catalog / "posters", movies_csv=catalog / "movies.csv")
    report = build(
        BuildConfig(
            index_root=root, precomputed=PrecomputedConfig(ray_out), catalog=titles, pipeline=QUIET, neighbours_k=0
        )
    )
    assert (report.item_count, report.failure_count, report.embedded) == (len(EMBEDDED), 0, 0)
    bundle = bundles.load_bundle(bundles.current_path(root))
    rows = _rows(ray_out)
    assert sorted(bundle.items["item_id"].tolist()) == EMBEDDED
    assert all(bundle.items["title"].str.len() > 0)  # titles from --movies
    built = np.vstack([bundle.index.reconstruct(item) for item in EMBEDDED])
    np.testing.assert_allclose(built, _unit(np.vstack([rows[item][1] for item in EMBEDDED])), atol=1e-6)
    # the bundle records the shards' embedder as an image build does (so the server can embed image queries)
    assert bundle.manifest.embedder is not None
    assert bundle.manifest.embedder.model_dump(exclude_none=True) == lite_embedder.describe()
    assert bundle.manifest.model == lite_embedder.spec.model
    assert bundle.manifest.source["precomputed"]["vectors"] == str(ray_out)


def test_cache_import_then_a_build_embeds_nothing(catalog: Path, ray_out: Path, tmp_path: Path) -> None:
    cache_path = tmp_path / "cache" / "embeddings.sqlite"
    assert main(["cache", "import", str(ray_out), "--cache", str(cache_path)]) == 0
    made_by = shards.open_shards(ray_out).embedder
    assert made_by is not None
    rows = _rows(ray_out)
    with EmbeddingCache(cache_path, made_by.fingerprint, made_by.dim) as cache:
        stored = cache.items()
    assert set(stored) == {key for key, _ in rows.values()}  # COPY and ORIGINAL share one entry
    for key, vector in rows.values():
        # COPY and ORIGINAL (one key) may come from different batches, whose float results differ in the last
        # bits: the cache keeps one of them
        np.testing.assert_allclose(stored[key], vector, rtol=0, atol=1e-5)
    for key in stored:
        assert any(np.array_equal(stored[key], v) for k, v in rows.values() if k == key)
    assert recall_model(cache_path, made_by.spec_key) == made_by.description  # a build need not load the model
    # no embedder is passed: the build finds the remembered model description and every vector in the cache
    report = build(
        BuildConfig(
            index_root=tmp_path / "index", catalog=_catalog_config(catalog), pipeline=QUIET, cache_path=cache_path
        )
    )
    assert (report.embedded, report.from_cache, report.item_count) == (0, len(EMBEDDED), len(EMBEDDED))
    bundle = bundles.load_bundle(bundles.current_path(tmp_path / "index"))
    assert bundle.manifest.embedder is not None and bundle.manifest.embedder.fingerprint == made_by.fingerprint
    built = np.vstack([bundle.index.reconstruct(item) for item in EMBEDDED])
    np.testing.assert_allclose(built, _unit(np.vstack([rows[item][1] for item in EMBEDDED])), atol=1e-6)


# ---- the shard format, without a model: synthetic vectors and descriptions -------------------------------------

DIM = 8


def _made_by(fingerprint: str = "a" * 64, dim: int = DIM, key: str = "k" * 64) -> shards.ShardEmbedder:
    return shards.ShardEmbedder({"model": "efficientnet_lite0", "dim": dim, "fingerprint": fingerprint}, key)


def _write(directory: Path, parts: list[tuple[np.ndarray, np.ndarray, shards.ShardEmbedder]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    listing = {}
    for n, (ids, vectors, made_by) in enumerate(parts):
        name = shards.SHARD_NAME.format(n)
        shards.write_shard(directory / name, ids, [f"h{i}" for i in ids], vectors, made_by)
        listing[name] = len(ids)
    (directory / shards.SUCCESS_FILE).write_text(json.dumps({"shards": listing}))


def test_shard_directory_loads_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(7, DIM)).astype(np.float32)
    ids = np.array([5, 2**62, 9, 1, 40, 41, 42], np.int64)
    _write(tmp_path / "s", [(ids[:3], x[:3], _made_by()), (ids[3:], x[3:], _made_by())])
    got_ids, got, problems = load_precomputed(PrecomputedConfig(tmp_path / "s"))
    assert problems == []
    assert got_ids.tolist() == ids.tolist()
    np.testing.assert_array_equal(got, x)


def _refusal(tmp_path: Path, case: str) -> Path:
    x = np.ones((2, DIM), np.float32)
    directory = tmp_path / case
    if case == "fingerprints":
        _write(directory, [(np.array([1, 2]), x, _made_by("a" * 64)), (np.array([3, 4]), x, _made_by("b" * 64))])
    elif case == "dims":
        wide = np.ones((2, 2 * DIM), np.float32)
        _write(directory, [(np.array([1, 2]), x, _made_by()), (np.array([3, 4]), wide, _made_by(dim=2 * DIM))])
    elif case == "unfinished":
        _write(directory, [(np.array([1, 2]), x, _made_by())])
        (directory / shards.SUCCESS_FILE).unlink()
    elif case == "missing-shard":
        _write(directory, [(np.array([1, 2]), x, _made_by()), (np.array([3, 4]), x, _made_by())])
        (directory / shards.SHARD_NAME.format(1)).unlink()
    return directory


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("fingerprints", r"one embedder .*got 2: fingerprint aaaaaaaaaaaa dim 8: part-00000.*fingerprint bbbbbbbbbbbb"),
        ("dims", r"one embedder .*dim 8: part-00000.*dim 16: part-00001"),
        ("unfinished", r"expected _SUCCESS"),
        ("missing-shard", r"shards expected \['part-00000.parquet', 'part-00001.parquet'\].*missing \['part-00001"),
    ],
)
def test_shard_directories_that_cannot_be_indexed_are_refused(tmp_path: Path, case: str, message: str) -> None:
    directory = _refusal(tmp_path, case)
    with pytest.raises(CatalogError, match=message):
        load_precomputed(PrecomputedConfig(directory))
    with pytest.raises(CatalogError, match=message):
        import_shards(directory, tmp_path / "cache.sqlite")


def test_cache_import_refuses_shards_another_setup_made(tmp_path: Path, lite_embedder: Embedder) -> None:
    x = np.ones((2, lite_embedder.dim), np.float32)
    foreign = shards.ShardEmbedder(lite_embedder.describe(), "f" * 64)  # e.g. another Keras major version
    _write(tmp_path / "foreign", [(np.array([1, 2]), x, foreign)])
    with pytest.raises(CatalogError, match="spec key ffffffffffff: another Keras major version or weights file"):
        import_shards(tmp_path / "foreign", tmp_path / "cache.sqlite")
    ours = shards.ShardEmbedder(lite_embedder.describe(), spec_key(lite_embedder.spec))
    _write(tmp_path / "ours", [(np.array([1, 2]), x, ours)])
    stale = tmp_path / "stale.sqlite"
    with EmbeddingCache(stale, "0" * 64, lite_embedder.dim) as cache:
        cache.remember_model(ours.spec_key, {**lite_embedder.describe(), "fingerprint": "0" * 64})
    with pytest.raises(CatalogError, match="fingerprint .* \\(the shards'\\), got 000000000000"):
        import_shards(tmp_path / "ours", stale)
    done = import_shards(tmp_path / "ours", tmp_path / "fresh.sqlite")
    assert (done.rows, done.added, done.cached, done.skipped) == (2, 2, 2, 0)


def test_output_directory_guard(tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare_out(out, overwrite=False)  # new: created
    (out / shards.SHARD_NAME.format(0)).write_bytes(b"x")
    (out / shards.SUCCESS_FILE).write_text("{}")
    with pytest.raises(BuildError, match="expected an empty or new directory.*--overwrite replaces"):
        prepare_out(out, overwrite=False)
    prepare_out(out, overwrite=True)
    assert list(out.iterdir()) == []
    (out / "notes.txt").write_text("mine")
    with pytest.raises(BuildError, match="not an embed output"):
        prepare_out(out, overwrite=True)
    assert (out / "notes.txt").exists()
