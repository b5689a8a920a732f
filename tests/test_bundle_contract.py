"""The bundle contract: golden bundles of every format version load, writes are checked, and a bundle
that is whole on the outside but inconsistent inside is refused (by the server and by ``info``)."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pytest

from indexer import bundle as bundles
from indexer.build import BuildConfig, build
from indexer.errors import BuildError, BundleError
from indexer.hashing import file_sha256
from indexer.index import IndexSpec
from indexer.precomputed import PrecomputedConfig
from server.searcher import Searcher
from server.types import SearchOptions
from tests.conftest import QUIET, assert_exact_topk, clustered_vectors

GOLDEN = Path(__file__).resolve().parent / "golden"
ROOT_DIR = GOLDEN.parent.parent


def _install(golden: Path, root: Path) -> Path:
    """Put a golden bundle into an index root the way a build publishes it (builds/<build id>, CURRENT)."""
    build_id = json.loads((golden / "manifest.json").read_text())["build_id"]
    shutil.copytree(golden, root / "builds" / build_id)
    (root / "CURRENT").write_text(build_id + "\n")
    return root / "builds" / build_id


def _normalized(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("name", ["format1-flat", "format1-ivf"])
def test_golden_format1_bundles_load_and_answer_exactly(tmp_path: Path, name: str) -> None:
    path = _install(GOLDEN / name, tmp_path)
    b = bundles.load_bundle(path)
    x = _normalized(np.load(GOLDEN / f"{name}-vectors.npy"))
    ids = b.items["item_id"].to_numpy()
    assert b.manifest.format_version == bundles.FORMAT_VERSION  # read as the current format
    s = Searcher(b)
    q = x[:12]
    found = [s.search_vector(v, SearchOptions(k=5, exact=True)) for v in q]
    got_ids = np.array([[h.item.item_id for h in r.hits] for r in found])
    got_scores = np.array([[h.score for h in r.hits] for r in found])
    assert_exact_topk(got_ids, got_scores, x, ids, q)
    if name == "format1-ivf":  # the format-1 recall key became typed fields
        assert b.manifest.index.recall is not None and b.manifest.index.recall_k == 10
        assert b.manifest.index.recall_queries == "held-in" and b.manifest.index.nlist == 8


def test_golden_format1_image_bundle_keeps_image_search(tmp_path: Path, lite_embedder) -> None:
    from server.admission import EmbeddingGate
    from server.image_embedder import EmbedderPool

    path = _install(GOLDEN / "format1-image", tmp_path)
    b = bundles.load_bundle(path)
    embedder, reason = EmbedderPool().for_manifest(b.manifest, 10_000_000, 1_000_000, EmbeddingGate(1))
    assert reason == "" and embedder is not None  # same fingerprint: the old bundle still serves images
    s = Searcher(b, image_embedder=embedder)
    poster = sorted((GOLDEN / "format1-image-posters").iterdir())[2]
    hits = s.search_image(poster.read_bytes(), SearchOptions(k=3)).hits
    assert hits[0].item.poster == poster.name and hits[0].score > 0.99


def test_newer_format_version_is_refused_with_a_reason(tmp_path: Path) -> None:
    path = _install(GOLDEN / "format1-flat", tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = bundles.FORMAT_VERSION + 1
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        BundleError, match=rf"format_version expected 1\.\.{bundles.FORMAT_VERSION}, got {bundles.FORMAT_VERSION + 1}"
    ):
        bundles.load_bundle(path)


def test_manifest_with_an_unknown_or_mistyped_key_is_refused(tmp_path: Path) -> None:
    path = _install(GOLDEN / "format1-flat", tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "dim": "eight"}))
    with pytest.raises(BundleError, match="dim"):
        bundles.load_bundle(path)
    (path / "manifest.json").write_text(json.dumps({**manifest, "surprise": 1}))
    with pytest.raises(BundleError, match="surprise"):
        bundles.load_bundle(path)


# ---- item 10: load-time checks that go deeper than checksums ------------------------------------


def _precomputed_root(tmp_path: Path, neighbours: int = 5) -> tuple[Path, Path]:
    x = clustered_vectors(300, 16, clusters=6, seed=2)
    np.savez(tmp_path / "v.npz", ids=np.arange(300) * 2 + 1, vectors=x)
    root = tmp_path / "root"
    build(
        BuildConfig(
            index_root=root,
            precomputed=PrecomputedConfig(tmp_path / "v.npz"),
            index=IndexSpec(kind="flat"),
            pipeline=QUIET,
            neighbours_k=neighbours,
        )
    )
    return root, bundles.current_path(root)


def _reseal(path: Path, drop: str | None = None) -> None:
    """Recompute every checksum in the manifest (what a careless or hostile operator would do)."""
    manifest = json.loads((path / "manifest.json").read_text())
    for name in list(manifest["files"]):
        if name == drop:
            del manifest["files"][name]
            continue
        manifest["files"][name] = {"sha256": file_sha256(path / name), "bytes": (path / name).stat().st_size}
    (path / "manifest.json").write_text(json.dumps(manifest))


def _info(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "indexer.cli", "info", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT_DIR,
        timeout=120,
    )


def _assert_refused(path: Path, pattern: str) -> None:
    with pytest.raises(BundleError, match=pattern):
        bundles.load_bundle(path)
    out = _info(path)
    assert out.returncode == 2 and "INVALID" in out.stderr and "Traceback" not in out.stderr
    assert any(part in out.stderr for part in pattern.split(".*")), out.stderr


def test_changed_item_id_with_resealed_checksums_is_refused(tmp_path: Path) -> None:
    _, path = _precomputed_root(tmp_path)
    items = pd.read_csv(path / "items.csv")
    items.loc[7, "item_id"] = 999_999
    items.to_csv(path / "items.csv", index=False)
    _reseal(path)
    _assert_refused(path, "index ids differ from items.csv")


def test_l2_metric_index_is_refused(tmp_path: Path) -> None:
    _, path = _precomputed_root(tmp_path)
    old = faiss.read_index(str(path / "index.faiss"))
    l2 = faiss.IndexIDMap2(faiss.IndexFlatL2(old.d))
    l2.add_with_ids(
        np.vstack([old.reconstruct(int(i)) for i in faiss.vector_to_array(old.id_map)]),
        faiss.vector_to_array(old.id_map),
    )
    faiss.write_index(l2, str(path / "index.faiss"))
    _reseal(path)
    _assert_refused(path, "metric expected inner product")


def test_missing_checksum_entry_is_refused(tmp_path: Path) -> None:
    _, path = _precomputed_root(tmp_path)
    _reseal(path, drop="items.csv")
    _assert_refused(path, "required file items.csv has no checksum entry")


def test_neighbour_table_with_foreign_ids_or_wrong_dtype_is_refused(tmp_path: Path) -> None:
    _, path = _precomputed_root(tmp_path)
    nids = np.load(path / "neighbour_ids.npy")
    nids[3, 2] = 123_456_789
    np.save(path / "neighbour_ids.npy", nids)
    _reseal(path)
    _assert_refused(path, "holds ids that are not items")
    np.save(path / "neighbour_ids.npy", nids.astype(np.int32))
    _reseal(path)
    _assert_refused(path, "neighbour table expected int64 ids")


def test_neighbour_scores_outside_cosine_range_or_not_finite_are_refused(tmp_path: Path) -> None:
    _, path = _precomputed_root(tmp_path)
    good = np.load(path / "neighbour_scores.npy")
    over = good.copy()
    over[1, 0] = 1.003
    np.save(path / "neighbour_scores.npy", over)
    _reseal(path)
    _assert_refused(path, "scores expected cosines in .*, got values from .* to 1.003")
    nan = good.copy()
    nan[2, 1] = np.nan
    np.save(path / "neighbour_scores.npy", nan)
    _reseal(path)
    _assert_refused(path, "scores expected finite cosines, got 1 NaN/inf")


def test_copied_bundle_is_refused_by_its_build_id(tmp_path: Path) -> None:
    root, path = _precomputed_root(tmp_path)
    copy = root / "builds" / "29990101T000000.000000Z-copied"
    shutil.copytree(path, copy)
    _assert_refused(copy, "build_id is .* but the bundle lives in directory")


# ---- item 3: every write checked, the staged bundle verified before it is published ----------------


def _build_cli(root: Path, vectors: Path, fsize_limit: int | None) -> subprocess.CompletedProcess:
    def limit() -> None:
        if fsize_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, fsize_limit))

    return subprocess.run(
        [
            sys.executable,
            "-m",
            "indexer.cli",
            "build",
            "--embeddings",
            str(vectors),
            "--out",
            str(root),
            "--quiet",
            "--index",
            "flat",
            "--neighbours",
            "100",
            "--no-cache",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT_DIR,
        preexec_fn=limit,
        timeout=300,
    )


def test_file_size_limit_fails_the_build_and_keeps_current(tmp_path: Path) -> None:
    x = clustered_vectors(2000, 8, seed=9)  # the neighbour table (2000 x 100 int64) outgrows the index
    np.savez(tmp_path / "v.npz", ids=np.arange(2000), vectors=x)
    root = tmp_path / "root"
    assert _build_cli(root, tmp_path / "v.npz", None).returncode == 0
    good = bundles.read_current(root)
    index_bytes = (root / "builds" / good / "index.faiss").stat().st_size
    # RLIMIT_FSIZE is per file: the first limit cuts the index, the second the neighbour table
    for limit in (index_bytes // 2, index_bytes + 1000):
        out = _build_cli(root, tmp_path / "v.npz", limit)
        assert out.returncode == 2, out.stderr[-2000:]
        assert "File too large" in out.stderr and "Traceback" not in out.stderr
        assert bundles.read_current(root) == good
        bundles.load_bundle(bundles.current_path(root))  # still whole
    assert bundles.list_builds(root) == [good]


def test_a_staged_bundle_that_reads_back_wrong_is_never_published(tmp_path: Path, monkeypatch) -> None:
    root, path = _precomputed_root(tmp_path)
    before = bundles.read_current(root)
    from indexer.bundle import writer

    real = writer._write_index

    def truncating(index: faiss.Index, target: Path) -> None:  # FAISS's own writer only prints on failure
        real(index, target)
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2])

    monkeypatch.setattr(writer, "_write_index", truncating)
    with pytest.raises(BuildError, match="failed verification, not published.*index.faiss"):
        build(
            BuildConfig(
                index_root=root,
                precomputed=PrecomputedConfig(tmp_path / "v.npz"),
                index=IndexSpec(kind="flat"),
                pipeline=QUIET,
                neighbours_k=5,
            )
        )
    assert bundles.read_current(root) == before
