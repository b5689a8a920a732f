"""Poster localisation and the image-query path (indexer/localise.py, indexer/query_image.py).

A small catalog of real photos made into posters (among the demo catalog's posters as distractors) is
embedded with the genuine model; query scenes paste a catalog poster at a known place (plain page, busy
photo, perspective on a wall) and the located window must cover it (box IoU >= 0.7) with its item first.
Fusion is checked against a hand-computed case and a brute-force NumPy oracle.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from indexer.embedders import Embedder
from indexer.errors import ImageError, ImageTooLargeError
from indexer.images import DecodeConfig, decode_image
from indexer.index import normalize
from indexer.localise import LocaliseConfig, box_iou, propose, quad_box, rectify
from indexer.quality.edits import perspective_coefficients
from indexer.query_image import (
    WHOLE_WINDOW,
    QueryImage,
    QueryImageConfig,
    QueryMode,
    fuse_max,
)
from tests.conftest import jpeg_bytes, real_photo_arrays

POSTER_SIZE = (300, 450)
PHOTO_HEIGHT = 360
BORDER = 8  # printed posters have a margin: the outline stays visible on a busy background
MIN_IOU = 0.7
K = 10
QUERY_POSTERS = ("coffee", "rocket", "motorcycle")


def make_poster(photo: np.ndarray, title: str) -> Image.Image:
    """A 300 x 450 poster: the photo above a dark title band (as posters-index photo-catalog makes them)."""
    poster = Image.new("RGB", POSTER_SIZE, (30, 30, 35))
    poster.paste(Image.fromarray(photo).convert("RGB").resize((POSTER_SIZE[0], PHOTO_HEIGHT)), (0, 0))
    ImageDraw.Draw(poster).text((POSTER_SIZE[0] / 2, 405), title.upper(), fill=(235, 235, 235), anchor="mm")
    return poster


@dataclasses.dataclass
class Catalog:
    ids: np.ndarray
    vectors: np.ndarray
    posters: dict[int, Image.Image]  # the photo posters, by id

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact inner-product search (the FAISS flat index's answer), shaped as FAISS returns it."""
        sims = queries @ self.vectors.T
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(sims, order, axis=1), self.ids[order]


@pytest.fixture(scope="module")
def query(lite_embedder: Embedder) -> QueryImage:
    return QueryImage(lite_embedder, DecodeConfig(size=lite_embedder.input_size, resize=lite_embedder.spec.resize))


@pytest.fixture(scope="module")
def catalog(query: QueryImage, demo_catalog: Path) -> Catalog:
    photos = real_photo_arrays()
    posters = {1000 + n: make_poster(photo, name) for n, (name, photo) in enumerate(sorted(photos.items()))}
    distractors = sorted((demo_catalog / "posters").glob("*.jpg"))
    data = [jpeg_bytes(p) for p in posters.values()] + [p.read_bytes() for p in distractors]
    ids = np.array([*posters, *range(len(distractors))], np.int64)
    return Catalog(ids, query.embed_whole_batch(data), posters)


def poster_id(catalog: Catalog, name: str) -> int:
    return 1000 + sorted(real_photo_arrays()).index(name)


# ---- scenes with a poster at a known place ----------------------------------------------------------------------
Scene = tuple[Image.Image, tuple[float, float, float, float]]


def plain_page(poster: Image.Image) -> Scene:
    """The poster small (190 px tall) at a known place on a light 1280 x 800 page."""
    page = Image.new("RGB", (1280, 800), (244, 244, 247))
    ImageDraw.Draw(page).rectangle([0, 0, 1280, 56], fill=(20, 40, 60))
    at, size = (720, 310), (127, 190)
    page.paste(poster.resize(size, Image.Resampling.LANCZOS), at)
    return page, (at[0], at[1], at[0] + size[0], at[1] + size[1])


def busy_photo(poster: Image.Image) -> Scene:
    """The poster (with a white margin) on a real photo full of edges and colour."""
    scene = Image.fromarray(real_photo_arrays()["flower"]).convert("RGB").resize((1024, 683))
    framed = ImageOps.expand(poster, border=BORDER, fill=(250, 250, 250)).resize((240, 372))
    at = (420, 160)
    scene.paste(framed, at)
    return scene, (at[0], at[1], at[0] + framed.width, at[1] + framed.height)


WALL_QUAD = np.array([[300, 110], [560, 150], [555, 560], [295, 620]], np.float64)


def perspective_wall(poster: Image.Image) -> Scene:
    """The poster photographed at an angle on a plain wall (a known quadrilateral)."""
    w, h = 900, 700
    scene = Image.new("RGB", (w, h), (170, 160, 140))
    src = np.array([[0, 0], [poster.width, 0], [poster.width, poster.height], [0, poster.height]], np.float64)
    coeffs = perspective_coefficients(WALL_QUAD, src)
    warped = poster.transform((w, h), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BICUBIC)
    mask = Image.new("L", poster.size, 255).transform((w, h), Image.Transform.PERSPECTIVE, coeffs)
    scene.paste(warped, (0, 0), mask)
    return scene, quad_box(WALL_QUAD)


SCENES: dict[str, Callable[[Image.Image], Scene]] = {
    "plain page": plain_page,
    "busy photo": busy_photo,
    "perspective": perspective_wall,
}


@pytest.mark.parametrize("name", QUERY_POSTERS)
@pytest.mark.parametrize("scene_name", sorted(SCENES))
def test_locate_finds_the_poster_and_its_box(query: QueryImage, catalog: Catalog, scene_name: str, name: str) -> None:
    item = poster_id(catalog, name)
    scene, truth = SCENES[scene_name](catalog.posters[item])
    result = query.search(jpeg_bytes(scene), K, catalog.search, QueryMode.LOCATE)
    assert result.localised and result.mode is QueryMode.LOCATE
    assert int(result.hits.ids[0]) == item, f"{scene_name}: expected item {item} first, got {result.hits.ids[:3]}"
    assert result.hits.windows[0] != WHOLE_WINDOW
    iou = box_iou(result.box_of(0), truth)
    assert iou >= MIN_IOU, f"{scene_name}: matched window {result.box_of(0)} vs poster {truth}: IoU {iou:.2f}"
    assert result.embedding.image_size == scene.size
    whole = query.search(jpeg_bytes(scene), K, catalog.search, QueryMode.WHOLE)
    assert float(result.hits.scores[0]) > float(whole.hits.scores[0])  # the window matches better than the frame


def test_boxes_are_in_the_displayed_frame_after_exif_orientation(query: QueryImage, catalog: Catalog) -> None:
    item = poster_id(catalog, "rocket")
    scene, truth = plain_page(catalog.posters[item])
    stored = scene.transpose(Image.Transpose.ROTATE_90)  # orientation 6: display = rotate the stored 90° clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=90, exif=exif)
    result = query.search(buf.getvalue(), K, catalog.search, QueryMode.LOCATE)
    assert result.embedding.image_size == scene.size
    assert int(result.hits.ids[0]) == item
    assert box_iou(result.box_of(0), truth) >= MIN_IOU
    np.testing.assert_allclose(result.embedding.boxes[WHOLE_WINDOW], [0, 0, *scene.size])


def test_whole_mode_is_todays_vector(query: QueryImage, lite_embedder: Embedder, catalog: Catalog) -> None:
    """``whole`` is exactly the path SearchByImage had: decode_image -> embed one image -> L2 normalize."""
    data = jpeg_bytes(perspective_wall(catalog.posters[poster_id(catalog, "coffee")])[0])
    decode = DecodeConfig(size=lite_embedder.input_size, resize=lite_embedder.spec.resize)
    today, _ = normalize(lite_embedder.embed(decode_image(data, decode)[None]))
    embedding = query.embed(data, QueryMode.WHOLE)
    np.testing.assert_array_equal(embedding.vectors, today)
    np.testing.assert_array_equal(query.embed_whole_batch([data]), today)
    assert embedding.quads.shape == (1, 4, 2) and embedding.image_size == (900, 700)
    located = query.embed(data, QueryMode.LOCATE)
    assert len(located) > 1
    assert float(located.vectors[WHOLE_WINDOW] @ today[0]) > 1 - 1e-5  # window 0 is the whole image
    assert located.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(located.vectors, axis=1), 1.0, atol=1e-5)


def test_auto_localises_only_when_the_whole_image_is_not_confident(query: QueryImage, catalog: Catalog) -> None:
    item = poster_id(catalog, "motorcycle")
    plain = query.search(jpeg_bytes(catalog.posters[item]), K, catalog.search, QueryMode.AUTO)
    assert not plain.localised and len(plain.embedding) == 1 and int(plain.hits.ids[0]) == item
    assert float(plain.hits.scores[0]) >= query.config.auto_confident
    scene = jpeg_bytes(perspective_wall(catalog.posters[item])[0])
    auto = query.search(scene, K, catalog.search)  # the default mode
    locate = query.search(scene, K, catalog.search, QueryMode.LOCATE)
    assert auto.mode is QueryMode.AUTO and auto.localised and int(auto.hits.ids[0]) == item
    np.testing.assert_array_equal(auto.hits.ids, locate.hits.ids)
    never = QueryImage(query.embedder, query.decode, QueryImageConfig(auto_confident=-1.0))
    whole = query.search(scene, K, catalog.search, QueryMode.WHOLE)
    assert not never.search(scene, K, catalog.search, QueryMode.AUTO).localised
    np.testing.assert_array_equal(never.search(scene, K, catalog.search, QueryMode.AUTO).hits.ids, whole.hits.ids)


class CountingEmbedder:
    """The embedder, counting model calls."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.calls = 0

    def embed(self, images: np.ndarray) -> np.ndarray:
        self.calls += 1
        return self.inner.embed(images)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_windows_are_one_model_call_and_check_runs_between_steps(query: QueryImage, catalog: Catalog) -> None:
    counting = CountingEmbedder(query.embedder)
    q = QueryImage(counting, query.decode)  # type: ignore[arg-type]
    scene = jpeg_bytes(plain_page(catalog.posters[poster_id(catalog, "coffee")])[0])
    stages: list[str] = []
    q.search(scene, K, catalog.search, QueryMode.LOCATE, check=stages.append)
    assert counting.calls == 1
    assert stages == ["image decoding", "image localisation", "image embedding", "image search"]

    class Cancelled(Exception):
        pass

    def cancel_before_model(stage: str) -> None:
        if stage == "image embedding":
            raise Cancelled(stage)

    counting.calls = 0
    with pytest.raises(Cancelled):
        q.search(scene, K, catalog.search, QueryMode.LOCATE, check=cancel_before_model)
    assert counting.calls == 0


@pytest.mark.parametrize("mode", list(QueryMode))
def test_decode_limits_hold_in_every_mode(query: QueryImage, catalog: Catalog, mode: QueryMode) -> None:
    small = QueryImage(query.embedder, dataclasses.replace(query.decode, max_pixels=640 * 480))
    big = jpeg_bytes(plain_page(catalog.posters[poster_id(catalog, "coffee")])[0])  # 1280 x 800
    with pytest.raises(ImageTooLargeError, match="1280x800"):
        small.search(big, K, catalog.search, mode)
    with pytest.raises(ImageError, match="empty"):
        query.search(b"", K, catalog.search, mode)


def test_fuse_max_hand_computed() -> None:
    scores = np.array([[0.9, 0.5, 0.4], [0.8, 0.7, 0.6]], np.float32)
    ids = np.array([[1, 2, 3], [2, 4, -1]], np.int64)
    fused = fuse_max(scores, ids, k=10)
    # item 1: 0.9 (window 0); item 2: max(0.5, 0.8) from window 1; item 4: 0.7; item 3: 0.4; -1 is padding
    assert fused.ids.tolist() == [1, 2, 4, 3]
    np.testing.assert_allclose(fused.scores, [0.9, 0.8, 0.7, 0.4])
    assert fused.windows.tolist() == [0, 1, 1, 0]
    assert fuse_max(scores, ids, k=2).ids.tolist() == [1, 2]
    tie = fuse_max(np.array([[0.5, 0.3], [0.5, 0.5]], np.float32), np.array([[7, 8], [9, 7]]), k=5)
    assert tie.ids.tolist() == [7, 9, 8] and tie.windows.tolist() == [0, 1, 0]  # ties: lower window, then rank
    empty = fuse_max(np.zeros((2, 0), np.float32), np.zeros((2, 0), np.int64), k=3)
    assert len(empty.ids) == 0
    with pytest.raises(ValueError, match="same 2-D shape"):
        fuse_max(scores, ids[:, :2], k=3)


def test_fuse_max_is_exact_max_fusion_against_brute_force() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(500, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(500, dtype=np.int64) * 7 + 3
    for trial in range(20):
        windows = rng.normal(size=(int(rng.integers(1, 6)), 32)).astype(np.float32)
        k = int(rng.integers(1, 30))
        sims = windows @ x.T
        order = np.argsort(-sims, axis=1)[:, :k]  # each window searched to depth k
        fused = fuse_max(np.take_along_axis(sims, order, axis=1), ids[order], k)
        best = sims.max(axis=0)  # the oracle: every item's best window over the whole catalog
        truth = np.argsort(-best)[:k]
        assert fused.ids.tolist() == ids[truth].tolist(), f"trial {trial}"
        np.testing.assert_allclose(fused.scores, best[truth], rtol=1e-6)
        assert fused.windows.tolist() == sims[:, truth].argmax(axis=0).tolist()


def test_query_mode_parse() -> None:
    assert QueryMode.parse(None) is QueryMode.AUTO and QueryMode.parse("") is QueryMode.AUTO
    assert QueryMode.parse("LOCATE") is QueryMode.LOCATE and QueryMode.parse(QueryMode.WHOLE) is QueryMode.WHOLE
    with pytest.raises(ValueError, match="expected one of whole, locate, auto, got 'everything'"):
        QueryMode.parse("everything")


def test_propose_ignores_what_cannot_be_a_poster() -> None:
    """A wide banner, a tiny square and an empty page give no window; a poster-shaped frame does."""
    page = Image.new("RGB", (1000, 700), (240, 240, 240))
    d = ImageDraw.Draw(page)
    d.rectangle([100, 100, 900, 180], fill=(30, 60, 200))  # 800 x 80: aspect 0.1
    d.rectangle([100, 400, 140, 440], fill=(200, 40, 40))  # 40 px: below min_side_px
    assert propose(np.asarray(page)) == []
    assert propose(np.zeros((300, 400, 3), np.uint8)) == []
    d.rectangle([500, 300, 700, 600], fill=(20, 120, 60))  # 200 x 300: a poster's shape
    found = propose(np.asarray(page))
    assert len(found) >= 1 and box_iou(found[0].box, (500, 300, 700, 600)) >= 0.9
    assert propose(np.asarray(page), dataclasses.replace(LocaliseConfig(), max_windows=0)) == []


def test_rectify_undoes_the_perspective(catalog: Catalog) -> None:
    poster = catalog.posters[poster_id(catalog, "coffee")]
    scene, _ = perspective_wall(poster)
    upright = rectify(np.asarray(scene), WALL_QUAD.astype(np.float32))
    back = np.asarray(Image.fromarray(upright).resize(poster.size), np.float64)
    original = np.asarray(poster, np.float64)
    correlation = np.corrcoef(back.ravel(), original.ravel())[0, 1]
    assert correlation > 0.9, f"rectified poster correlates {correlation:.3f} with the original"


def test_eval_measures_through_the_query_path(tmp_path: Path, demo_root: Path, lite_embedder: Embedder) -> None:
    """``eval --query-mode locate``: recorded in query_path, and each copy's rank is its original's place in
    the max over the query's windows of brute-force cosines (an oracle independent of FAISS and fuse_max)."""
    from indexer.quality.bundle_view import bundle_vectors, open_bundle
    from indexer.quality.edits import edited_copy
    from indexer.quality.evaluate import EvalConfig, evaluate

    config = EvalConfig(
        root=demo_root,
        out=tmp_path / "eval",
        copy_sample=3,
        edit_kinds=("identity", "wall", "screenshot"),
        fidelity_queries=20,
        latency_queries=5,
        image_latency_queries=2,
        phash=False,
        charts=False,
        query_mode="locate",
        seed=2,
    )
    payload = evaluate(config, embedder=lite_embedder)
    path = payload["query_path"]
    assert path["mode"] == "locate" and path["version"] == 2 and path["localisation"]["localise"]["max_windows"] == 4
    assert payload["timings"]["latency"]["image"]["mode"] == "locate"
    copy = payload["metrics"]["copy_detection"]
    bundle = open_bundle(demo_root)
    ids, x = bundle_vectors(bundle)
    poster = dict(zip(bundle.items["item_id"], bundle.items["poster"], strict=True))
    posters_dir = Path(payload["bundle"]["posters_dir"])
    q = QueryImage(lite_embedder, DecodeConfig(size=lite_embedder.input_size, resize=lite_embedder.spec.resize))
    for row in copy["edits"]:
        ranks, windows, cosines = [], [], []
        for i in copy["original_ids"]:
            data = edited_copy(row["edit"], (posters_dir / poster[i]).read_bytes(), i, config.seed)
            emb = q.embed(data, QueryMode.LOCATE)
            fused = (emb.vectors @ x.T).max(axis=0)
            ranks.append(int((fused > fused[ids == i][0]).sum()))
            windows.append(len(emb))
            cosines.append(float(fused[ids == i][0]))
        assert row["model"]["recall@1"] == pytest.approx(np.mean(np.array(ranks) < 1)), row["edit"]
        assert row["windows"]["mean"] == pytest.approx(np.mean(windows)), row["edit"]
        assert row["cosine_to_original"]["median"] == pytest.approx(np.median(cosines), abs=1e-5), row["edit"]
    assert next(e for e in copy["edits"] if e["edit"] == "screenshot")["windows"]["localised"] == 1.0
    assert "| windows (mean) |" in (tmp_path / "eval" / "eval.md").read_text()
