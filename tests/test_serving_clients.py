"""Issue #12 for real clients: filters inside the search (against a brute-force oracle), lenient ids,
per-query batch statuses, posters over the API, structured error details."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from indexer import bundle as bundles
from indexer.build import BuildConfig, build
from indexer.catalog import CatalogConfig
from indexer.index import IndexSpec
from indexer.precomputed import PrecomputedConfig
from server._proto import posters_pb2 as pb
from server._proto import posters_pb2_grpc as pb_grpc
from server.errors import InvalidArgument, NotFound
from server.searcher import Searcher
from server.types import Filter, ItemQuery, SearchOptions, SearchResult, VectorQuery
from tests.conftest import QUIET, clustered_vectors
from tests.grpc_helpers import serve

GENRES = ("Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi")
N_ITEMS = 3000
DIM = 24
FILTER_TRIALS = 60


def _catalog(folder: Path, seed: int = 11) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Seeded vectors + a MovieLens-shaped movies.csv (genres, years in titles, some without) + ratings.csv."""
    rng = np.random.default_rng(seed)
    x = clustered_vectors(N_ITEMS, DIM, clusters=40, seed=seed)
    ids = np.arange(N_ITEMS, dtype=np.int64) * 7 + 1
    years = rng.integers(1930, 2021, size=N_ITEMS)
    no_year = rng.random(N_ITEMS) < 0.05
    genres = ["|".join(g for g in GENRES if rng.random() < 0.3) for _ in range(N_ITEMS)]
    titles = [f"Movie {i}" + ("" if no_year[n] else f" ({years[n]})") for n, i in enumerate(ids)]
    movies = pd.DataFrame({"movieId": ids, "title": titles, "genres": genres})
    movies.to_csv(folder / "movies.csv", index=False)
    counts = rng.zipf(1.6, size=N_ITEMS).clip(0, 500) - 1
    pd.DataFrame({"userId": 1, "movieId": np.repeat(ids, counts), "rating": 4.0}).to_csv(
        folder / "ratings.csv", index=False
    )
    np.savez(folder / "v.npz", ids=ids, vectors=x)
    truth = pd.DataFrame(
        {"item_id": ids, "year": np.where(no_year, 0, years), "genres": genres, "ratings": counts}
    ).set_index("item_id")
    return ids, x, truth


@pytest.fixture(scope="module")
def catalog_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray, np.ndarray, pd.DataFrame]:
    folder = tmp_path_factory.mktemp("filters")
    ids, x, truth = _catalog(folder)
    roots = {}
    for kind in ("flat", "ivf"):
        root = folder / kind
        build(
            BuildConfig(
                index_root=root,
                precomputed=PrecomputedConfig(folder / "v.npz"),
                catalog=CatalogConfig(
                    posters_dir=folder, movies_csv=folder / "movies.csv", ratings_csv=folder / "ratings.csv"
                ),
                index=IndexSpec(kind=kind, nlist=50, nprobe=1),
                pipeline=QUIET,
                neighbours_k=20,
            )
        )
        roots[kind] = root
    return roots["flat"], roots["ivf"], ids, x, truth


def _passes(truth: pd.DataFrame, f: Filter) -> np.ndarray:
    """The oracle: which items pass the filter, computed from the generated catalog, not from the bundle."""
    keep = np.ones(len(truth), bool)
    sets = [set(g.split("|")) - {""} for g in truth["genres"]]
    if f.genres_any:
        keep &= [bool(s & set(f.genres_any)) for s in sets]
    if f.genres_all:
        keep &= [set(f.genres_all) <= s for s in sets]
    if f.genres_none:
        keep &= [not (s & set(f.genres_none)) for s in sets]
    year = truth["year"].to_numpy()
    if f.year_min is not None:
        keep &= (year > 0) & (year >= f.year_min)
    if f.year_max is not None:
        keep &= (year > 0) & (year <= f.year_max)
    if f.min_ratings is not None:
        keep &= truth["ratings"].to_numpy() >= f.min_ratings
    if f.allow_ids:
        keep &= truth.index.isin(f.allow_ids)
    if f.deny_ids:
        keep &= ~truth.index.isin(f.deny_ids)
    return keep


def _random_filter(rng: np.random.Generator, ids: np.ndarray) -> Filter:
    pick = lambda n: tuple(rng.choice(GENRES, size=n, replace=False).tolist())  # noqa: E731
    kwargs: dict = {}
    if rng.random() < 0.5:
        kwargs["genres_any"] = pick(int(rng.integers(1, 3)))
    if rng.random() < 0.3:
        kwargs["genres_all"] = pick(int(rng.integers(1, 3)))
    if rng.random() < 0.3:
        kwargs["genres_none"] = pick(1)
    if rng.random() < 0.5:
        lo = int(rng.integers(1930, 2020))
        kwargs["year_min"], kwargs["year_max"] = lo, lo + int(rng.integers(0, 40))
    elif rng.random() < 0.3:  # an open range: items without a year must still fail it
        kwargs["year_max"] = int(rng.integers(1940, 2020))
    if rng.random() < 0.3:
        kwargs["min_ratings"] = int(rng.integers(0, 20))
    if rng.random() < 0.15:
        kwargs["allow_ids"] = tuple(rng.choice(ids, size=40, replace=False).tolist())
    if rng.random() < 0.2:
        kwargs["deny_ids"] = tuple(rng.choice(ids, size=300, replace=False).tolist())
    return Filter(**kwargs)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_random_filters_equal_the_brute_force_oracle(catalog_root, kind: str) -> None:
    flat_root, ivf_root, ids, x, truth = catalog_root
    s = Searcher(bundles.load_bundle(bundles.current_path(flat_root if kind == "flat" else ivf_root)))
    rng = np.random.default_rng(5)
    k = 10
    checked = 0
    for trial in range(FILTER_TRIALS):
        flt = _random_filter(rng, ids)
        passing = _passes(truth, flt)
        row = int(rng.integers(N_ITEMS))
        q = x[row]
        # IVF: the default (approximate) search must fill k with passing items; exact=True must equal the oracle
        approx = s.search_vector(q, SearchOptions(k=k, filter=flt))
        assert len(approx.hits) == min(k, int(passing.sum())), (trial, flt)
        assert {h.item.item_id for h in approx.hits} <= set(ids[passing].tolist()), (trial, flt)
        exact = kind == "ivf"
        got = s.search_vector(q, SearchOptions(k=k, filter=flt, exact=exact))
        # oracle: exact inner products over the passing items only
        sims = x[passing] @ q
        order = np.argsort(-sims, kind="stable")[:k]
        want = ids[passing][order]
        assert len(got.hits) == min(k, int(passing.sum())), (trial, flt)  # k filled whenever k items pass
        got_ids = [h.item.item_id for h in got.hits]
        assert set(got_ids) <= set(ids[passing].tolist()), (trial, flt)
        np.testing.assert_allclose([h.score for h in got.hits], sims[order], atol=1e-5, err_msg=str(flt))
        assert got_ids == want.tolist() or np.allclose(sims[order], np.sort(sims)[::-1][:k], atol=1e-6)
        # item queries too (the neighbour table must not be used under a filter)
        item = s.similar_to_item(int(ids[row]), SearchOptions(k=k, filter=flt, exact=exact))
        mask_wo_self = passing & (ids != ids[row])
        sims_item = x[mask_wo_self] @ x[row]
        want_item = ids[mask_wo_self][np.argsort(-sims_item, kind="stable")[:k]]
        assert [h.item.item_id for h in item.hits] == want_item.tolist(), (trial, flt)
        checked += 1
    assert checked == FILTER_TRIALS


def test_selective_filter_on_ivf_still_fills_k(catalog_root) -> None:
    _, ivf_root, ids, x, truth = catalog_root
    s = Searcher(bundles.load_bundle(bundles.current_path(ivf_root)))
    assert s.vectors.default_nprobe == 1  # the bundle probes 1 of 50 lists: a filter would starve it
    allow = tuple(ids[::97].tolist())  # 31 items spread over every list
    got = s.search_vector(x[0], SearchOptions(k=25, filter=Filter(allow_ids=allow)))
    assert len(got.hits) == 25 and {h.item.item_id for h in got.hits} <= set(allow)
    half = Filter(genres_none=("Drama",))  # about 70 % pass: approximate first, exact if short
    passing = _passes(truth, half)
    got = s.search_vector(x[1], SearchOptions(k=50, filter=half))
    assert len(got.hits) == 50 and all(passing[ids == h.item.item_id][0] for h in got.hits)


def test_filter_errors_say_expected_vs_got(catalog_root) -> None:
    flat_root, _, _, x, _ = catalog_root
    s = Searcher(bundles.load_bundle(bundles.current_path(flat_root)))
    with pytest.raises(InvalidArgument, match=r"genres of this bundle \(Action, Comedy.*got unknown \['Western'\]"):
        s.search_vector(x[0], SearchOptions(filter=Filter(genres_any=("Western",))))
    with pytest.raises(InvalidArgument, match="year_min expected <= year_max, got 2000 > 1990"):
        s.search_vector(x[0], SearchOptions(filter=Filter(year_min=2000, year_max=1990)))
    with pytest.raises(InvalidArgument, match="min_ratings expected >= 0"):
        s.search_vector(x[0], SearchOptions(filter=Filter(min_ratings=-1)))


def test_lenient_and_strict_unknown_ids(catalog_root) -> None:
    flat_root, _, ids, x, _ = catalog_root
    s = Searcher(bundles.load_bundle(bundles.current_path(flat_root)))
    candidates = (int(ids[1]), 999_999_999, int(ids[2]), 888_888_888)
    got = s.similar_to_item(int(ids[0]), SearchOptions(k=5, candidate_ids=candidates, exclude_ids=(777_777_777,)))
    assert {h.item.item_id for h in got.hits} == {int(ids[1]), int(ids[2])}
    assert got.missing_ids == (777_777_777, 999_999_999, 888_888_888)
    with pytest.raises(NotFound, match="candidate item 999999999"):
        s.similar_to_item(int(ids[0]), SearchOptions(candidate_ids=candidates, strict=True))
    liked = s.similar_to_items([(int(ids[3]), 1.0), (5, 1.0)], [(6, 1.0)], SearchOptions(k=3))
    plain = s.similar_to_items([(int(ids[3]), 1.0)], options=SearchOptions(k=3))
    assert [h.item.item_id for h in liked.hits] == [h.item.item_id for h in plain.hits]
    assert liked.missing_ids == (5, 6)
    found = s.get_items([int(ids[4]), 12345, int(ids[4])])
    assert [i.item_id for i in found.items] == [int(ids[4])] and found.missing_ids == (12345,)


def test_batch_reports_a_status_per_query_over_grpc(catalog_root) -> None:
    flat_root, _, ids, x, _ = catalog_root
    with serve(flat_root) as served:
        stub = pb_grpc.PosterSimilarityStub(served.client.channel)
        request = pb.BatchSearchRequest(
            queries=[
                pb.Query(vector=pb.SearchByVectorRequest(vector=x[0].tolist())),
                pb.Query(vector=pb.SearchByVectorRequest(vector=[1.0, 2.0])),
                pb.Query(item=pb.SimilarToItemRequest(item_id=424242)),
                pb.Query(),
                pb.Query(item=pb.SimilarToItemRequest(item_id=int(ids[5]), options=pb.SearchOptions(k=3))),
            ]
        )
        response = stub.BatchSearch(request)
        codes = [grpc.StatusCode.OK.value[0] if st.code == 0 else st.code for st in response.statuses]
        assert codes == [
            0,
            grpc.StatusCode.INVALID_ARGUMENT.value[0],
            grpc.StatusCode.NOT_FOUND.value[0],
            grpc.StatusCode.INVALID_ARGUMENT.value[0],
            0,
        ]
        assert response.statuses[1].message.startswith("query 1: vector dimension expected 24")
        assert "query 2: item 424242" in response.statuses[2].message
        assert len(response.results[0].neighbors) == 10 and len(response.results[4].neighbors) == 3
        assert not response.results[1].neighbors
        violation = error_details_pb2.BadRequest()
        assert any(d.Unpack(violation) for d in response.statuses[1].details)
        assert violation.field_violations[0].field == "queries[1].vector"


def test_error_details_travel_with_the_status(catalog_root) -> None:
    flat_root, _, _, _, _ = catalog_root
    with serve(flat_root) as served:
        stub = pb_grpc.PosterSimilarityStub(served.client.channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.SimilarToItem(pb.SimilarToItemRequest(item_id=1, options=pb.SearchOptions(k=-3)))
        status = rpc_status.from_call(err.value)
        assert status is not None and status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
        unpacked = {d.type_url.rsplit("/", 1)[-1] for d in status.details}
        assert unpacked == {"google.rpc.ErrorInfo", "google.rpc.BadRequest"}
        for d in status.details:
            d.Unpack(info) or d.Unpack(bad)
        assert info.reason == "INVALID_ARGUMENT" and info.domain == "posters.v1"
        assert bad.field_violations[0].field == "options.k" and "got -3" in bad.field_violations[0].description
        with pytest.raises(grpc.RpcError) as err:
            stub.SimilarToItem(pb.SimilarToItemRequest(item_id=5))
        status = rpc_status.from_call(err.value)
        assert status is not None and [d.type_url.rsplit("/", 1)[-1] for d in status.details] == [
            "google.rpc.ErrorInfo"
        ]


def test_filters_and_missing_ids_over_grpc(catalog_root) -> None:
    flat_root, _, ids, x, truth = catalog_root
    flt = Filter(genres_any=("Comedy",), year_min=1990, year_max=2010)
    passing = set(truth.index[_passes(truth, flt)].tolist())
    with serve(flat_root) as served:
        result = served.client.vector(x[7].tolist(), SearchOptions(k=20, filter=flt, exclude_ids=(5,)))
        assert len(result.hits) == 20 and {h.item.item_id for h in result.hits} <= passing
        assert result.missing_ids == (5,)
        hit = result.hits[0].item
        assert hit.year == truth.loc[hit.item_id, "year"] and hit.rating_count == truth.loc[hit.item_id, "ratings"]
        info = served.client.info()
        assert list(info["genres"]) == sorted(GENRES) and info["has_ratings"] and not info["has_posters"]
        assert (info["year_min"], info["year_max"]) == (
            int(truth["year"][truth["year"] > 0].min()),
            int(truth["year"].max()),
        )


def test_posters_over_the_api(demo_root: Path, demo_catalog: Path) -> None:
    from PIL import Image

    with serve(demo_root) as served:
        got = served.client.posters([3, 1, 987654, 3])
        assert [p.item_id for p in got.posters] == [3, 1] and got.missing_ids == (987654,)
        for poster in got.posters:
            with Image.open(__import__("io").BytesIO(poster.jpeg)) as im:
                assert im.format == "JPEG" and im.size == (poster.width, poster.height)
                assert max(poster.width / 185, poster.height / 278) == pytest.approx(1, abs=0.01)
        stub = pb_grpc.PosterSimilarityStub(served.client.channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.GetPosters(pb.GetPostersRequest(item_ids=list(range(1, 200))))
        assert (
            err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most 100 ids, got 199" in err.value.details()
        )
        info = served.client.info()
        assert info["has_posters"] and (info["thumbnail_width"], info["thumbnail_height"]) == (185, 278)
        # a contact sheet drawn from the API's thumbnails, with no access to the poster folder
        from server.client.sheet import contact_sheet

        result = served.client.similar(1, SearchOptions(k=4))
        thumbs = {p.item_id: p.jpeg for p in served.client.posters([h.item.item_id for h in result.hits]).posters}
        sheet = contact_sheet("query", None, result.hits, None, thumbnails=thumbs)
        grey = contact_sheet("query", None, result.hits, None)
        assert np.asarray(sheet).std() > np.asarray(grey).std() + 5  # real pictures, not grey placeholders


def test_posters_refused_for_bundles_without_thumbnails(vectors_root) -> None:
    root, ids, _ = vectors_root
    with serve(root) as served:
        with pytest.raises(grpc.RpcError) as err:
            served.client.posters([int(ids[0])])
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "no poster thumbnails" in err.value.details()


def test_batch_results_match_single_queries_with_filters(catalog_root) -> None:
    flat_root, _, ids, x, _ = catalog_root
    s = Searcher(bundles.load_bundle(bundles.current_path(flat_root)))
    flt = Filter(genres_none=("Horror",), min_ratings=2)
    queries = [VectorQuery(x[i], SearchOptions(k=5, filter=flt)) for i in range(6)] + [
        ItemQuery(int(ids[9]), SearchOptions(k=4, filter=flt))
    ]
    for q, r in zip(queries, s.batch(queries)):
        assert isinstance(r, SearchResult)
        assert [h.item.item_id for h in r.hits] == [h.item.item_id for h in s.search(q).hits]


@pytest.mark.parametrize("service", ["grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"])
def test_reflection_v1_and_v1alpha_list_the_services(vectors_root, service: str) -> None:
    from grpc_reflection.v1alpha import reflection_pb2 as messages

    root, _, _ = vectors_root
    with serve(root) as served:
        call = served.client.channel.stream_stream(
            f"/{service}/ServerReflectionInfo",
            request_serializer=messages.ServerReflectionRequest.SerializeToString,
            response_deserializer=messages.ServerReflectionResponse.FromString,
        )
        responses = list(call(iter([messages.ServerReflectionRequest(list_services="")]), timeout=10))
        names = {s.name for s in responses[0].list_services_response.service}
        assert {"posters.v1.PosterSimilarity", "grpc.health.v1.Health", service} <= names
        # the contract itself is served: a client can build requests from it
        file_request = messages.ServerReflectionRequest(file_containing_symbol="posters.v1.PosterSimilarity")
        answer = list(call(iter([file_request]), timeout=10))[0]
        assert answer.file_descriptor_response.file_descriptor_proto


def test_title_search_pages_over_grpc(tmp_path: Path) -> None:
    titles = [
        "Godfather, The (1972)",
        "Godfather: Part II, The (1974)",
        "Amélie (2001)",
        "Hamlet (1948)",
        "Hamlet (1990)",
        "Hamlet (1996)",
    ] + [f"Hamlet Goes Business {n} (19{50 + n})" for n in range(6)]
    ids = np.arange(len(titles), dtype=np.int64) + 1
    pd.DataFrame({"movieId": ids, "title": titles, "genres": "Drama"}).to_csv(tmp_path / "movies.csv", index=False)
    np.savez(tmp_path / "v.npz", ids=ids, vectors=clustered_vectors(len(ids), 8, clusters=3, seed=1))
    root = tmp_path / "root"
    config = BuildConfig(
        index_root=root,
        precomputed=PrecomputedConfig(tmp_path / "v.npz"),
        pipeline=QUIET,
        catalog=CatalogConfig(posters_dir=tmp_path, movies_csv=tmp_path / "movies.csv"),
    )
    build(config)
    with serve(root) as served:
        stub = pb_grpc.PosterSimilarityStub(served.client.channel)
        first = stub.FindItems(pb.FindItemsRequest(query="the godfather"))
        assert [i.item_id for i in first.items][:2] == [1, 2] and first.total == 2 and not first.next_page_token
        assert stub.FindItems(pb.FindItemsRequest(query="amelie")).items[0].item_id == 3
        assert [i.item_id for i in stub.FindItems(pb.FindItemsRequest(query="hamlet 1990")).items] == [5]
        seen, token, pages = [], "", 0
        while True:
            page = stub.FindItems(pb.FindItemsRequest(query="hamlet", page_size=4, page_token=token))
            seen += [i.item_id for i in page.items]
            pages += 1
            assert page.total == 9
            token = page.next_page_token
            if not token:
                break
        assert pages == 3 and len(seen) == 9 == len(set(seen)) and seen[:3] == [4, 5, 6]
        stale = stub.FindItems(pb.FindItemsRequest(query="hamlet", page_size=4)).next_page_token
        build(config)  # a new bundle: tokens of the old one are refused, not silently misapplied
        assert served.manager.reload()
        with pytest.raises(grpc.RpcError) as err:
            stub.FindItems(pb.FindItemsRequest(query="hamlet", page_size=4, page_token=stale))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "the index was reloaded" in err.value.details()


def test_a_refused_vector_first_in_its_group_fails_alone(catalog_root) -> None:
    """Found by the gateway's fuzzing: a bad vector query that came first in its options group left an empty
    group behind, and the whole batch failed with INTERNAL."""
    flat_root, _, _, x, _ = catalog_root
    s = Searcher(bundles.load_bundle(bundles.current_path(flat_root)))
    bad, good = s.batch([VectorQuery([1.0, 2.0]), VectorQuery(x[0], SearchOptions(k=3))])
    assert isinstance(bad, InvalidArgument) and isinstance(good, SearchResult) and len(good.hits) == 3
    (alone,) = s.batch([VectorQuery([1.0, 2.0])])
    assert isinstance(alone, InvalidArgument)


def test_image_query_mode_and_box_over_grpc(demo_root: Path, demo_catalog: Path) -> None:
    """The request's mode is honoured end to end, and a poster found inside a page comes back with its box."""
    import io

    from PIL import Image, ImageDraw

    poster_id = 9
    with serve(demo_root, image_search=True) as served:
        item = served.client.items([poster_id])[0]
        page = Image.new("RGB", (1280, 800), (246, 246, 248))
        draw = ImageDraw.Draw(page)
        for line in range(14):  # the text of a streaming site's page
            draw.rectangle((420, 160 + 34 * line, 1180 - 37 * (line % 5), 176 + 34 * line), fill=(190, 190, 198))
        truth = (120, 150, 120 + 220, 150 + 330)
        with Image.open(demo_catalog / "posters" / item.poster) as poster:
            page.paste(poster.convert("RGB").resize((truth[2] - truth[0], truth[3] - truth[1])), truth[:2])
        buf = io.BytesIO()
        page.save(buf, "PNG")
        stub = pb_grpc.PosterSimilarityStub(served.client.channel)

        def ask(mode: int) -> pb.SearchResponse:
            return stub.SearchByImage(
                pb.SearchByImageRequest(image=buf.getvalue(), mode=mode, options=pb.SearchOptions(k=5))
            )

        located = ask(pb.IMAGE_QUERY_MODE_LOCATE)
        top = located.neighbors[0]
        assert top.item_id == poster_id and top.HasField("query_box")
        box = (top.query_box.x0, top.query_box.y0, top.query_box.x1, top.query_box.y1)
        inter = max(0, min(box[2], truth[2]) - max(box[0], truth[0])) * max(
            0, min(box[3], truth[3]) - max(box[1], truth[1])
        )
        union = (box[2] - box[0]) * (box[3] - box[1]) + (truth[2] - truth[0]) * (truth[3] - truth[1]) - inter
        assert inter / union >= 0.7, (box, truth)
        whole = ask(pb.IMAGE_QUERY_MODE_WHOLE)
        assert not any(n.HasField("query_box") for n in whole.neighbors)  # whole-image matches carry no box
        assert whole.neighbors[0].score < top.score  # the page as a whole is a poor match for the poster
        assert ask(pb.IMAGE_QUERY_MODE_UNSPECIFIED).neighbors[0].item_id == poster_id  # auto localises when unsure
