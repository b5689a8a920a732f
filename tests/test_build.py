"""Builds end to end: index types, bundle round trip, hostile posters, cache, kill -9, precomputed input."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from indexer import bundle as bundles
from indexer.build import BuildConfig, build
from indexer.catalog import CatalogConfig
from indexer.embedders import Embedder
from indexer.errors import BuildError, BundleError
from indexer.index import IndexSpec
from indexer.precomputed import PrecomputedConfig
from tests.conftest import DEMO_COUNT, QUIET, assert_exact_topk, clustered_vectors, demo_catalog_config, jpeg_bytes
from tests.hostile import bad_files, odd_files, poster, write_files

ROOT_DIR = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("kind", ["flat", "ivf", "auto"])
def test_each_index_type_on_generated_catalog(
    tmp_path: Path, demo_catalog: Path, lite_embedder: Embedder, kind: str
) -> None:
    spec = IndexSpec(kind=kind, nlist=4 if kind == "ivf" else None)
    report = build(
        BuildConfig(
            index_root=tmp_path,
            catalog=demo_catalog_config(demo_catalog),
            index=spec,
            pipeline=QUIET,
            neighbours_k=5,
            cache_path=tmp_path.parent / "shared-cache.sqlite",
        ),
        embedder=lite_embedder,
    )
    b = bundles.load_bundle(bundles.current_path(tmp_path))
    assert report.item_count == DEMO_COUNT == b.index.ntotal
    assert b.manifest.index.type == ("flat" if kind == "auto" else kind)
    assert b.manifest.dim == lite_embedder.dim
    assert b.manifest.embedder.fingerprint == lite_embedder.fingerprint
    assert b.items["item_id"].tolist() == list(range(1, DEMO_COUNT + 1))
    # every stored vector is unit-length and search finds each poster as its own best match
    x = np.vstack([b.index.reconstruct(int(i)) for i in b.items["item_id"]])
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    _, found = b.index.search(x, 1, params=None)
    assert (found[:, 0] == b.items["item_id"].to_numpy()).mean() >= (1.0 if kind != "ivf" else 0.9)


def test_bundle_round_trip_and_manifest(demo_root: Path, demo_catalog: Path) -> None:
    path = bundles.current_path(demo_root)
    b = bundles.load_bundle(path)
    m = b.manifest
    assert m.format_version == bundles.FORMAT_VERSION and m.build_id == path.name
    assert m.metric == "inner_product" and m.normalization == "l2"
    assert m.embedder is not None and m.embedder.resize == "pad" and m.embedder.pooling == "avg"
    assert m.embedder.input_size == 224 and m.embedder.weights == "imagenet"
    assert set(m.files) == {
        "index.faiss",
        "items.csv",
        "failures.csv",
        "neighbour_ids.npy",
        "neighbour_scores.npy",
        "posters.bin",
        "poster_offsets.npy",
    }
    # a thumbnail of every poster travels with the bundle: a JPEG in the 185 x 278 box, in items order
    assert m.thumbnails is not None and m.thumbnails.count == DEMO_COUNT and b.thumbnails is not None
    from PIL import Image

    for row in (0, DEMO_COUNT - 1):
        with Image.open(io.BytesIO(b.thumbnails.get(row))) as thumb:
            assert thumb.format == "JPEG" and max(thumb.size[0] / 185, thumb.size[1] / 278) == pytest.approx(
                1, abs=0.01
            )
        with Image.open(demo_catalog / "posters" / b.items["poster"][row]) as original:
            assert abs(thumb.size[0] / thumb.size[1] - original.size[0] / original.size[1]) < 0.02
    assert {"numpy", "faiss-cpu", "keras", "pillow", "python"} <= set(m.versions)
    assert m.item_count == DEMO_COUNT and m.neighbours.k == 20 and set(m.phase_seconds) >= {"embed", "index"}
    assert b.neighbour_ids.shape == (DEMO_COUNT, 20)
    titles = pd.read_csv(path / "items.csv")["title"]
    assert titles.str.contains(r"\(\d{4}\)$").all()


def test_flat_bundle_equals_numpy_oracle(vectors_root) -> None:
    root, ids, x = vectors_root
    b = bundles.load_bundle(bundles.current_path(root))
    q = x[:40]
    scores, found = b.index.search(q, 10)
    assert_exact_topk(found, scores, x, ids, q)
    assert_exact_topk(b.neighbour_ids, b.neighbour_scores, x, ids, x, exclude_self=True)


def _hostile_catalog(folder: Path) -> tuple[CatalogConfig, dict[str, int]]:
    posters = folder / "posters"
    files = {**odd_files(), **bad_files()}
    for n in range(5):
        files[f"good{n}.jpg"] = jpeg_bytes(poster(100 + n))
    write_files(posters, files)
    ids = {name: 1000 + n for n, name in enumerate(sorted(files))}
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n"
        + "".join(f"{i},{name} (2000),Drama\n" for name, i in ids.items())
        + "99,Missing poster (2001),Drama\n"
    )
    (folder / "files.csv").write_text("movieId,imdbId,tmdbId\n")
    # name each poster by its movieId: rename files
    for name, i in ids.items():
        (posters / name).rename(posters / f"{i}{Path(name).suffix}")
    return CatalogConfig(posters, folder / "movies.csv", pattern="{movieId}"), ids


def test_hostile_catalog_builds_and_reports_each_bad_file(tmp_path: Path, lite_embedder: Embedder) -> None:
    config, ids = _hostile_catalog(tmp_path)
    report = build(
        BuildConfig(index_root=tmp_path / "root", catalog=config, pipeline=QUIET, neighbours_k=3),
        embedder=lite_embedder,
    )
    path = bundles.current_path(tmp_path / "root")
    failures = bundles.load_failures(path)
    failed = {int(i): r for i, r in zip(failures["item_id"], failures["reason"])}
    for name in bad_files():
        assert ids[name] in failed, f"{name} missing from failures.csv"
        assert failed[ids[name]], f"{name} has no reason"
    assert "too large" in failed[ids["bomb.png"]] or "pixels" in failed[ids["bomb.png"]]
    assert "empty file" in failed[ids["zero.jpg"]]
    assert "not a recognised image" in failed[ids["text.jpg"]]
    assert "poster file not found" in failed[99]
    indexed = set(bundles.load_bundle(path).items["item_id"])
    good = {ids[n] for n in odd_files()} | {ids[f"good{n}.jpg"] for n in range(5)}
    assert indexed == good  # every odd-mode image was embedded, every good file indexed
    assert report.failure_count == len(bad_files()) + 1


def test_cache_embeds_only_new_posters(tmp_path: Path, demo_catalog: Path, lite_embedder: Embedder) -> None:
    catalog = tmp_path / "catalog"
    (catalog / "posters").mkdir(parents=True)
    movies = pd.read_csv(demo_catalog / "movies.csv")
    links = pd.read_csv(demo_catalog / "links.csv")
    first = movies.iloc[:30]
    first.to_csv(catalog / "movies.csv", index=False)
    links.to_csv(catalog / "links.csv", index=False)
    for tmdb in links["tmdbId"]:
        name = f"{int(tmdb)}.jpg"
        (catalog / "posters" / name).write_bytes((demo_catalog / "posters" / name).read_bytes())
    config = BuildConfig(
        index_root=tmp_path / "root", catalog=demo_catalog_config(catalog), pipeline=QUIET, neighbours_k=0
    )
    r1 = build(config, embedder=lite_embedder)
    assert (r1.embedded, r1.from_cache) == (30, 0)
    movies.iloc[:40].to_csv(catalog / "movies.csv", index=False)  # 10 new movies
    r2 = build(config, embedder=lite_embedder)
    assert (r2.embedded, r2.from_cache, r2.item_count) == (10, 30, 40)
    assert r2.build_id != r1.build_id
    # a changed poster file is re-embedded (content hash), the rest come from the cache
    p = catalog / "posters" / f"{int(links['tmdbId'][0])}.jpg"
    p.write_bytes(jpeg_bytes(poster(999)))
    r3 = build(config, embedder=lite_embedder)
    assert (r3.embedded, r3.from_cache) == (1, 39)


def test_failed_build_keeps_current(tmp_path: Path, demo_root: Path, lite_embedder: Embedder) -> None:
    root = tmp_path / "root"
    x = clustered_vectors(50, 8)
    np.save(tmp_path / "v.npy", x)
    np.save(tmp_path / "i.npy", np.arange(50))
    build(
        BuildConfig(
            index_root=root, precomputed=PrecomputedConfig(tmp_path / "v.npy", tmp_path / "i.npy"), pipeline=QUIET
        )
    )
    before = bundles.read_current(root)
    posters = tmp_path / "bad"
    write_files(posters, {"1.jpg": b"", "2.jpg": b"junk"})
    with pytest.raises(BuildError, match="nothing to index"):
        build(BuildConfig(index_root=root, catalog=CatalogConfig(posters), pipeline=QUIET), embedder=lite_embedder)
    assert bundles.read_current(root) == before
    bundles.load_bundle(bundles.current_path(root))


def test_disk_full_during_write_keeps_current(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vectors_root) -> None:
    root, ids, x = vectors_root
    before = bundles.read_current(root)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    from indexer.bundle import writer

    monkeypatch.setattr(writer, "_write_npy", full)  # the neighbour table write fails mid-bundle
    with pytest.raises(BuildError, match="No space left.*CURRENT unchanged"):
        build(
            BuildConfig(
                index_root=root,
                precomputed=PrecomputedConfig(tmp_path / "v.npy", tmp_path / "ids.npy"),
                pipeline=QUIET,
                neighbours_k=5,
            )
        )
    monkeypatch.undo()
    assert bundles.read_current(root) == before
    assert bundles.load_bundle(bundles.current_path(root)).version == before
    assert list((root / "builds").glob(".staging-*")), "the partial bundle stays in staging, never published"


def test_prune_keeps_current_and_newest(vectors_root, tmp_path: Path) -> None:
    root, _, _ = vectors_root
    config = BuildConfig(
        index_root=root,
        precomputed=PrecomputedConfig(tmp_path / "v.npy", tmp_path / "ids.npy"),
        pipeline=QUIET,
        neighbours_k=0,
        keep_builds=2,
    )
    for _ in range(3):
        build(config)
    builds = bundles.list_builds(root)
    assert len(builds) == 2 and bundles.read_current(root) == builds[-1]


def test_concurrent_build_is_refused(vectors_root) -> None:
    root, _, _ = vectors_root
    with (
        bundles.build_lock(root),
        pytest.raises(BuildError, match="another build is running"),
        bundles.build_lock(root),
    ):
        pass


@pytest.mark.parametrize("fmt", ["npy", "npz", "parquet"])
def test_precomputed_formats(tmp_path: Path, fmt: str, demo_catalog: Path) -> None:
    x = clustered_vectors(30, 16) * 2
    ids = np.arange(1, 31, dtype=np.int64)
    if fmt == "npy":
        np.save(tmp_path / "v.npy", x)
        (tmp_path / "ids.txt").write_text("\n".join(map(str, ids)))
        pre = PrecomputedConfig(tmp_path / "v.npy", tmp_path / "ids.txt")
    elif fmt == "npz":
        np.savez(tmp_path / "v.npz", ids=ids, vectors=x)
        pre = PrecomputedConfig(tmp_path / "v.npz")
    else:
        pd.DataFrame({"item_id": ids, "embedding": list(x)}).to_parquet(tmp_path / "v.parquet")
        pre = PrecomputedConfig(tmp_path / "v.parquet")
    build(
        BuildConfig(
            index_root=tmp_path / "root",
            precomputed=pre,
            pipeline=QUIET,
            neighbours_k=0,
            catalog=CatalogConfig(demo_catalog / "posters", demo_catalog / "movies.csv"),
        )
    )
    b = bundles.load_bundle(bundles.current_path(tmp_path / "root"))
    assert b.manifest.model == "precomputed" and b.manifest.embedder is None
    assert b.items["item_id"].tolist() == ids.tolist()
    assert b.items["title"].iloc[0] == pd.read_csv(demo_catalog / "movies.csv")["title"].iloc[0]
    np.testing.assert_allclose(b.index.reconstruct(5), x[4] / np.linalg.norm(x[4]), atol=1e-6)


def test_precomputed_duplicates_and_nan_are_reported(tmp_path: Path) -> None:
    x = clustered_vectors(5, 4)
    x[3] = np.nan
    np.savez(tmp_path / "v.npz", ids=np.array([1, 2, 2, 3, 4]), vectors=x)
    build(BuildConfig(index_root=tmp_path / "r", precomputed=PrecomputedConfig(tmp_path / "v.npz"), pipeline=QUIET))
    path = bundles.current_path(tmp_path / "r")
    reasons = bundles.load_failures(path)["reason"].tolist()
    assert any("duplicate" in r for r in reasons) and any("NaN" in r for r in reasons)
    assert bundles.load_bundle(path).items["item_id"].tolist() == [1, 2, 4]


def test_corrupt_files_give_readable_errors_naming_the_file(vectors_root) -> None:
    root, _, _ = vectors_root
    path = bundles.current_path(root)
    index_file = path / "index.faiss"
    data = index_file.read_bytes()
    index_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="index.faiss is truncated"):
        bundles.load_bundle(path)
    with pytest.raises(BundleError, match="index.faiss is not a readable FAISS index"):
        bundles.load_bundle(path, verify=False)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="manifest.json is corrupt"):
        bundles.load_bundle(path)
    (root / "CURRENT").write_text("")
    with pytest.raises(BundleError, match="CURRENT is corrupt"):
        bundles.read_current(root)


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "indexer.cli", *args], capture_output=True, text=True, cwd=ROOT_DIR, timeout=600, **kw
    )


def test_build_help_documents_every_option() -> None:
    out = _cli("build", "--help").stdout
    for option in (
        "--movies",
        "--links",
        "--ratings",
        "--min-ratings",
        "--posters",
        "--pattern",
        "--embeddings",
        "--ids",
        "--model",
        "--weights",
        "--pooling",
        "--resize",
        "--batch-size",
        "--workers",
        "--max-pixels",
        "--index",
        "--nlist",
        "--nprobe",
        "--target-recall",
        "--neighbours",
        "--out",
        "--keep",
        "--no-cache",
        "--cache",
        "--quiet",
    ):
        assert option in out, option
    assert "efficientnet_lite0" in out and "inception_v3" in out


def test_kill_9_during_build_keeps_current_then_resumes_from_cache(
    tmp_path: Path, demo_catalog: Path, demo_root: Path
) -> None:
    root = tmp_path / "root"
    # start from a published bundle (copy the session's demo bundle)
    import shutil

    shutil.copytree(demo_root / "builds", root / "builds")
    shutil.copy(demo_root / "CURRENT", root / "CURRENT")
    before = bundles.read_current(root)
    args = [
        "build",
        "--movies",
        str(demo_catalog / "movies.csv"),
        "--links",
        str(demo_catalog / "links.csv"),
        "--posters",
        str(demo_catalog / "posters"),
        "--pattern",
        "{tmdbId}.jpg",
        "--out",
        str(root),
        "--batch-size",
        "4",
        "--neighbours",
        "0",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "indexer.cli", *args],
        cwd=ROOT_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # wait until embedding has really started, then kill -9 mid-way
        if "embedding:  " in line and "/40" in line and not line.strip().endswith("?img/s]"):
            break
    cache = root / "cache" / "embeddings.sqlite"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert bundles.read_current(root) == before
    bundles.load_bundle(bundles.current_path(root))  # still loadable and verified
    done = _cli(*args, "--quiet")
    assert done.returncode == 0, done.stderr
    summary = done.stdout.splitlines()[0]
    counts = re.search(r"(\d+) embedded, (\d+) from cache", summary)
    assert counts, summary
    embedded, from_cache = int(counts[1]), int(counts[2])
    assert embedded + from_cache == DEMO_COUNT and from_cache > 0, summary
    assert cache.exists()
    assert bundles.read_current(root) != before
    assert not list((root / "builds").glob(".staging-*"))


def test_info_cli(demo_root: Path) -> None:
    out = _cli("info", str(demo_root))
    assert out.returncode == 0, out.stderr
    assert "checks        OK" in out.stdout and f"items         {DEMO_COUNT}" in out.stdout
    manifest = json.loads(_cli("info", str(demo_root), "--json").stdout)
    assert manifest["item_count"] == DEMO_COUNT and manifest["format_version"] == bundles.FORMAT_VERSION


def test_a_fully_cached_rebuild_never_builds_the_model(tmp_path: Path, demo_catalog: Path, monkeypatch) -> None:
    from indexer.embedders import embedder as embedder_module

    config = BuildConfig(index_root=tmp_path / "root", catalog=demo_catalog_config(demo_catalog), pipeline=QUIET)
    first = build(config)  # builds the model, fills the cache, and the cache remembers the embedder
    assert first.embedded == DEMO_COUNT

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built although every poster is cached")

    monkeypatch.setattr(embedder_module.Embedder, "__init__", no_model)
    second = build(config)
    assert (second.embedded, second.from_cache) == (0, DEMO_COUNT)
    a = bundles.load_bundle(first.path)
    b = bundles.load_bundle(second.path)
    assert a.manifest.embedder == b.manifest.embedder  # same fingerprint and description, from the cache
    ids = a.items["item_id"].tolist()
    np.testing.assert_array_equal(
        np.vstack([a.index.reconstruct(i) for i in ids]), np.vstack([b.index.reconstruct(i) for i in ids])
    )


def test_an_empty_poster_folder_fails_before_loading_a_model(tmp_path: Path, demo_catalog: Path, monkeypatch) -> None:
    from indexer.embedders import embedder as embedder_module

    monkeypatch.setattr(embedder_module.Embedder, "__init__", lambda *a, **k: pytest.fail("model built"))
    (tmp_path / "empty").mkdir()
    catalog = CatalogConfig(
        posters_dir=tmp_path / "empty",
        movies_csv=demo_catalog / "movies.csv",
        links_csv=demo_catalog / "links.csv",
        pattern="{tmdbId}.jpg",
    )
    with pytest.raises(BuildError, match="no poster files found .* poster file not found"):
        build(BuildConfig(index_root=tmp_path / "root", catalog=catalog, pipeline=QUIET))
