"""posters-web's REST API (issue #14) against real in-process posters-serve instances on loopback.

Oracles: every search answer equals the gRPC answer of the same server to the same request (ids, scores,
order, missing ids); every error carries the HTTP status of the documented table (written out here, not read
from the module), the server's message verbatim and its google.rpc details. A schema-driven fuzz of the
OpenAPI document (schemathesis) finds no 5xx and no answer outside the document.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from fastapi.testclient import TestClient
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from PIL import Image

from server.client import PosterClient
from server.searcher import SearchLimits
from server.types import Filter, SearchOptions
from server.web import cli as web_cli
from server.web.app import create_app
from server.web.config import MULTIPART_SLACK_BYTES, UpstreamConfig, WebConfig
from server.web.middleware import GatewayMiddleware
from tests.grpc_helpers import serve

SERVICE = "posters.v1.PosterSimilarity"
METHODS = (
    "SimilarToItem",
    "SimilarToItems",
    "SearchByVector",
    "SearchByImage",
    "BatchSearch",
    "FindItems",
    "GetItems",
    "GetIndexInfo",
    "GetPosters",
)
# The documented gRPC -> HTTP table (README "Web page and REST gateway"); a change must change both.
EXPECTED_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 503,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.DATA_LOSS: 500,
}
SECURITY_HEADERS = ("content-security-policy", "x-content-type-options", "x-frame-options", "referrer-policy")
FUZZ_EXAMPLES = 25  # per operation (13 operations): ~325 requests, a few seconds


# ---- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(demo_root: Path) -> Iterator:
    with serve(demo_root, image_search=True) as s:
        yield s


def gateway_for(target: str, **config: object) -> TestClient:
    upstream = config.pop("upstream", UpstreamConfig(target=target))
    return TestClient(create_app(WebConfig(upstream=upstream, **config)))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def web(served) -> Iterator[TestClient]:
    with gateway_for(served.target) as client:
        yield client


@pytest.fixture(scope="module")
def items_by_id(served) -> dict:
    info = served.client.info()
    ids = list(range(1, info["item_count"] + 1))
    return {i.item_id: i for i in served.client.items(ids)}


def poster_bytes(demo_catalog: Path, item) -> bytes:
    return (demo_catalog / "posters" / item.poster).read_bytes()


def hits(result) -> list[tuple[int, float]]:
    return [(h.item.item_id, h.score) for h in result.hits]


def rest_hits(body: dict) -> list[tuple[int, float]]:
    return [(n["item_id"], n["score"]) for n in body["neighbors"]]


def grpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def assert_error(response, code: str, http_status: int, message: str | None = None) -> dict:
    assert response.status_code == http_status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code and error["http_status"] == http_status, error
    assert error["request_id"] == response.headers["x-request-id"]
    if message is not None:
        assert error["message"] == message
    assert "Traceback" not in response.text
    return error


def detail_types(error: dict) -> set[str]:
    return {d["@type"].rsplit(".", 1)[-1] for d in error["details"]}


# ---- every endpoint equals the gRPC answer ---------------------------------------------------------------


def test_info_mirrors_get_index_info(web, served) -> None:
    body = web.get("/api/v1/info").json()
    info = served.client.info()
    for name in ("bundle_version", "model", "dimension", "item_count", "max_k", "max_batch", "image_search"):
        assert body[name] == info[name], name
    assert body["genres"] == list(info["genres"]) and body["genres"], body["genres"]
    assert (body["year_min"], body["year_max"]) == (info["year_min"], info["year_max"])
    assert body["has_posters"] is True
    assert body["manifest"]["build_id"] == info["bundle_version"]
    assert body["gateway_max_image_bytes"] == WebConfig().max_image_bytes


def test_health_reports_both_services(web) -> None:
    assert web.get("/api/v1/health").json() == {"status": "SERVING", "image_search": "SERVING"}


def test_search_item_equals_grpc_with_filter_and_missing_ids(web, served, items_by_id) -> None:
    genre = items_by_id[1].genres[0]
    options = SearchOptions(k=6, exclude_ids=(2, 987654), filter=Filter(genres_any=(genre,), year_min=1970))
    expected = served.client.similar(1, options)
    body = web.post(
        "/api/v1/search/item",
        json={
            "item_id": 1,
            "options": {"k": 6, "exclude_ids": [2, 987654], "filter": {"genres_any": [genre], "year_min": 1970}},
        },
    ).json()
    assert len(expected.hits) == 6
    assert rest_hits(body) == hits(expected)
    assert [n["item_id"] for n in body["neighbors"]] == [h.item.item_id for h in expected.hits]
    assert all(genre in n["genres"] for n in body["neighbors"])
    assert body["missing_ids"] == [987654] and body["bundle_version"] == expected.bundle_version
    assert body["neighbors"][0]["title"] == expected.hits[0].item.title
    assert body["neighbors"][0]["query_box"] is None


def test_search_items_equals_grpc(web, served) -> None:
    expected = served.client.like([(1, 1.0), (3, 0.5)], [(5, 2.0)], SearchOptions(k=7))
    body = web.post(
        "/api/v1/search/items",
        json={
            "positive": [{"item_id": 1}, {"item_id": 3, "weight": 0.5}],
            "negative": [{"item_id": 5, "weight": 2}],
            "options": {"k": 7},
        },
    ).json()
    assert [n["item_id"] for n in body["neighbors"]] == [h.item.item_id for h in expected.hits]
    assert rest_hits(body) == hits(expected)
    assert not {1, 3, 5} & {n["item_id"] for n in body["neighbors"]}


def test_search_vector_equals_grpc(web, served) -> None:
    dim = served.client.info()["dimension"]
    vector = np.random.default_rng(7).normal(size=dim).astype(np.float32)
    expected = served.client.vector(vector, SearchOptions(k=5, min_score=-1.0))
    body = web.post("/api/v1/search/vector", json={"vector": vector.tolist(), "options": {"k": 5, "min_score": -1.0}})
    assert [n["item_id"] for n in body.json()["neighbors"]] == [h.item.item_id for h in expected.hits]
    assert rest_hits(body.json()) == hits(expected)


def test_search_image_upload_finds_the_poster_first(web, served, demo_catalog, items_by_id) -> None:
    item = items_by_id[4]
    data = poster_bytes(demo_catalog, item)
    expected = served.client.image_located(data, SearchOptions(k=5), "whole")
    response = web.post(
        "/api/v1/search/image",
        files={"image": ("poster.jpg", data, "image/jpeg")},
        data={"mode": "whole", "options": json.dumps({"k": 5})},
    )
    body = response.json()
    assert body["neighbors"][0]["item_id"] == item.item_id
    assert [n["item_id"] for n in body["neighbors"]] == [h.item.item_id for h in expected.result.hits]
    assert rest_hits(body) == hits(expected.result)


def test_batch_mixes_kinds_and_reports_per_query_statuses(web, served, demo_catalog, items_by_id) -> None:
    data = poster_bytes(demo_catalog, items_by_id[6])
    queries = [
        {"item": {"item_id": 1, "options": {"k": 3}}},
        {"items": {"positive": [{"item_id": 2}], "negative": [{"item_id": 9}], "options": {"k": 3}}},
        {"vector": {"vector": [1.0, 2.0], "options": {"k": 3}}},  # wrong dimension: this query alone fails
        {"image": {"image_base64": base64.b64encode(data).decode(), "mode": "whole", "options": {"k": 3}}},
        {"item": {"item_id": 987654, "options": {"strict": True}}},
    ]
    body = web.post("/api/v1/search/batch", json={"queries": queries}).json()
    assert [s["code"] for s in body["statuses"]] == ["OK", "OK", "INVALID_ARGUMENT", "OK", "NOT_FOUND"]
    assert [s["http_status"] for s in body["statuses"]] == [200, 200, 400, 200, 404]
    assert "ErrorInfo" in {d["@type"].rsplit(".", 1)[-1] for d in body["statuses"][4]["details"]}
    single = [
        served.client.similar(1, SearchOptions(k=3)),
        served.client.like([(2, 1.0)], [(9, 1.0)], SearchOptions(k=3)),
    ]
    for n, expected in enumerate(single):
        assert [x["item_id"] for x in body["results"][n]["neighbors"]] == [h.item.item_id for h in expected.hits]
    assert body["results"][2]["neighbors"] == [] and body["results"][4]["neighbors"] == []
    assert body["results"][3]["neighbors"][0]["item_id"] == 6
    failed = grpc_error(lambda: served.client.vector([1.0, 2.0], SearchOptions(k=3)))
    assert failed.details() in body["statuses"][2]["message"]


def test_find_pages_equal_grpc(web, served, items_by_id) -> None:
    word = items_by_id[1].title.split()[0]
    first = served.client.find_page(word, page_size=1)
    assert first.total >= 2 and first.next_page_token, "the demo catalog has sequels sharing title words"
    body = web.get("/api/v1/find", params={"q": word, "page_size": 1}).json()
    assert [i["item_id"] for i in body["items"]] == [i.item_id for i in first.items]
    assert (body["total"], body["next_page_token"]) == (first.total, first.next_page_token)
    second = web.get("/api/v1/find", params={"q": word, "page_size": 1, "page_token": body["next_page_token"]}).json()
    expected = served.client.find_page(word, page_size=1, page_token=first.next_page_token)
    assert [i["item_id"] for i in second["items"]] == [i.item_id for i in expected.items]
    assert second["items"] != body["items"]


def test_items_in_request_order_with_missing_ids(web, items_by_id) -> None:
    body = web.get("/api/v1/items", params=[("ids", 3), ("ids", 987654), ("ids", 1)]).json()
    assert [i["item_id"] for i in body["items"]] == [3, 1]
    assert body["items"][0]["title"] == items_by_id[3].title
    assert body["missing_ids"] == [987654]


def test_posters_and_thumbnails_are_the_bundle_jpegs(web, served) -> None:
    expected = served.client.posters([1, 2, 987654])
    body = web.get("/api/v1/posters", params=[("ids", 1), ("ids", 2), ("ids", 987654)]).json()
    assert [base64.b64decode(p["jpeg_base64"]) for p in body["posters"]] == [p.jpeg for p in expected.posters]
    assert [(p["width"], p["height"]) for p in body["posters"]] == [(p.width, p.height) for p in expected.posters]
    assert body["missing_ids"] == [987654]
    thumb = web.get("/api/v1/thumbnails/2")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert thumb.content == expected.posters[1].jpeg
    error = assert_error(web.get("/api/v1/thumbnails/987654"), "NOT_FOUND", 404)
    assert "987654" in error["message"]


# ---- errors: each gRPC status from a real server, with its message and details ----------------------------


def test_invalid_argument_is_400_with_the_servers_message_and_field(web, served) -> None:
    failed = grpc_error(lambda: served.client.similar(1, SearchOptions(k=100_000)))
    error = assert_error(
        web.post("/api/v1/search/item", json={"item_id": 1, "options": {"k": 100_000}}),
        "INVALID_ARGUMENT",
        400,
        failed.details(),
    )
    violations = [d for d in error["details"] if d["@type"].endswith("BadRequest")][0]["field_violations"]
    assert violations[0]["field"] == "options.k"
    assert {"reason": "INVALID_ARGUMENT", "domain": "posters.v1"}.items() <= [
        d for d in error["details"] if d["@type"].endswith("ErrorInfo")
    ][0].items()


def test_not_found_is_404_with_the_servers_message(web, served) -> None:
    failed = grpc_error(lambda: served.client.similar(987654))
    assert_error(web.post("/api/v1/search/item", json={"item_id": 987654}), "NOT_FOUND", 404, failed.details())
    failed = grpc_error(lambda: served.client.get_items([1, 987654], strict=True))
    assert_error(
        web.get("/api/v1/items", params=[("ids", 1), ("ids", 987654), ("strict", "true")]),
        "NOT_FOUND",
        404,
        failed.details(),
    )


def test_server_image_limit_is_429_and_the_gateway_cap_is_413_before_reading(demo_root, demo_catalog) -> None:
    data = (demo_catalog / "posters" / sorted(os.listdir(demo_catalog / "posters"))[0]).read_bytes()
    limit = len(data) // 2
    with serve(demo_root, limits=SearchLimits(max_image_bytes=limit)) as small:
        failed = grpc_error(lambda: small.client.image(data))
        with gateway_for(small.target, max_image_bytes=len(data) * 2) as web:
            error = assert_error(
                web.post("/api/v1/search/image", files={"image": ("p.jpg", data, "image/jpeg")}),
                "RESOURCE_EXHAUSTED",
                429,
                failed.details(),
            )
            assert "ErrorInfo" in detail_types(error)
        with gateway_for(small.target, max_image_bytes=limit) as web:
            too_big = data + b"\0" * (MULTIPART_SLACK_BYTES + 1)
            response = web.post("/api/v1/search/image", files={"image": ("p.jpg", too_big, "image/jpeg")})
            error = assert_error(response, "RESOURCE_EXHAUSTED", 413)
            assert "expected at most" in error["message"] and "got" in error["message"]
            # a chunked body (no Content-Length) is cut off while streaming, before it is all read
            chunks = iter([b"x" * 65536] * (2 + (limit + MULTIPART_SLACK_BYTES) // 65536))
            response = web.post(
                "/api/v1/search/image", content=chunks, headers={"content-type": "multipart/form-data; boundary=b"}
            )
            assert_error(response, "RESOURCE_EXHAUSTED", 413)
    with gateway_for("127.0.0.1:9", max_json_bytes=1000) as web:  # JSON bodies have their own cap
        response = web.post("/api/v1/search/vector", json={"vector": [0.5] * 1000})
        assert_error(response, "RESOURCE_EXHAUSTED", 413)


def test_failed_precondition_is_409(vectors_root) -> None:
    root, _, _ = vectors_root
    with serve(root, image_search=True) as s, gateway_for(s.target) as web:
        png = io.BytesIO()
        Image.new("RGB", (32, 48), (200, 30, 30)).save(png, "PNG")
        failed = grpc_error(lambda: s.client.image(png.getvalue()))
        assert failed.code() is grpc.StatusCode.FAILED_PRECONDITION
        response = web.post("/api/v1/search/image", files={"image": ("p.png", png.getvalue(), "image/png")})
        assert_error(response, "FAILED_PRECONDITION", 409, failed.details())


def test_unavailable_is_503_when_the_server_is_unreachable() -> None:
    with gateway_for("127.0.0.1:9", upstream=UpstreamConfig(target="127.0.0.1:9", timeout=5)) as web:
        error = assert_error(web.get("/api/v1/info"), "UNAVAILABLE", 503)
        assert error["message"]
        assert_error(web.get("/api/v1/health"), "UNAVAILABLE", 503)


def test_unauthenticated_is_401_when_the_gateways_token_is_wrong(demo_root) -> None:
    with serve(demo_root, token="right-token") as s:
        with PosterClient(s.target, token="wrong-token") as wrong:
            failed = grpc_error(lambda: wrong.similar(1))
        upstream = UpstreamConfig(target=s.target, token="wrong-token")
        with gateway_for(s.target, upstream=upstream) as web:
            assert_error(web.post("/api/v1/search/item", json={"item_id": 1}), "UNAUTHENTICATED", 401, failed.details())
        with gateway_for(s.target, upstream=UpstreamConfig(target=s.target, token="right-token")) as web:
            assert web.post("/api/v1/search/item", json={"item_id": 1}).status_code == 200


def test_deadline_exceeded_is_504() -> None:
    # the stub answers nothing until the call's deadline has passed
    with (
        fault_server(grpc.StatusCode.OK, hang=True) as target,
        gateway_for(target, upstream=UpstreamConfig(target=target, timeout=0.2)) as web,
    ):
        error = assert_error(web.post("/api/v1/search/item", json={"item_id": 1}), "DEADLINE_EXCEEDED", 504)
        assert "Deadline" in error["message"]


@contextlib.contextmanager
def fault_server(code: grpc.StatusCode, hang: bool = False) -> Iterator[str]:
    """A PosterSimilarity whose every method fails with ``code``, a message, ErrorInfo and a DebugInfo stack;
    with ``hang``, every call waits instead, until the server stops."""
    stopped = threading.Event()

    def packed(message) -> any_pb2.Any:
        out = any_pb2.Any()
        out.Pack(message)
        return out

    def behaviour(request: bytes, context: grpc.ServicerContext) -> bytes:
        if hang:  # until the fixture stops: the client's own deadline ends the call
            stopped.wait()
            return b""
        status = status_pb2.Status(
            code=code.value[0],
            message=f"fault {code.name}: expected <nothing>, got <b>x</b>",
            details=[
                packed(error_details_pb2.ErrorInfo(reason=code.name, domain="posters.v1")),
                packed(error_details_pb2.DebugInfo(stack_entries=["SECRET-STACK-FRAME"], detail="SECRET")),
            ],
        )
        context.abort_with_status(rpc_status.to_status(status))
        raise AssertionError("abort returns by raising")

    handler = grpc.method_handlers_generic_handler(
        SERVICE, {m: grpc.unary_unary_rpc_method_handler(behaviour) for m in METHODS}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stopped.set()
        server.stop(None).wait()


@pytest.mark.parametrize("code", list(EXPECTED_HTTP), ids=lambda c: c.name)
def test_every_grpc_status_maps_to_its_http_status_with_message_and_details(code: grpc.StatusCode) -> None:
    with fault_server(code) as target, gateway_for(target) as web:
        for response in (
            web.post("/api/v1/search/item", json={"item_id": 1}),
            web.get("/api/v1/find", params={"q": "x"}),
        ):
            error = assert_error(
                response, code.name, EXPECTED_HTTP[code], f"fault {code.name}: expected <nothing>, got <b>x</b>"
            )
            info = [d for d in error["details"] if d["@type"].endswith("ErrorInfo")]
            assert info == [
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": code.name, "domain": "posters.v1"}
            ]
            assert {"@type": "type.googleapis.com/google.rpc.DebugInfo"} in error["details"]
            assert "SECRET" not in response.text  # a server's debug info (stack) never reaches a client
        page = web.get("/quality")  # pages do not call the server: still served
        assert page.status_code == 200


class Exploding(PosterClient):
    def similar(self, *args, **kwargs):  # type: ignore[override]
        raise RuntimeError("SECRET internal detail")


def test_a_gateway_fault_is_500_with_a_request_id_and_no_traceback() -> None:
    client = Exploding("127.0.0.1:9")
    with TestClient(create_app(WebConfig(), client=client)) as web:
        response = web.post("/api/v1/search/item", json={"item_id": 1}, headers={"x-request-id": "req-42"})
        error = assert_error(response, "INTERNAL", 500)
        assert error["request_id"] == "req-42" and "req-42" in error["message"]
        assert "SECRET" not in response.text and "RuntimeError" not in response.text
        for name in SECURITY_HEADERS:
            assert name in response.headers
    client.close()


# ---- the gateway's own validation: 400 with the field named ----------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/v1/search/item", {"item_id": "x"}, "item_id"),
        ("/api/v1/search/item", {"item_id": 2**63}, "item_id"),
        ("/api/v1/search/item", {"item_id": 1, "options": {"k": 2**31}}, "options.k"),
        ("/api/v1/search/item", {"item_id": 1, "optoins": {}}, "optoins"),
        ("/api/v1/search/item", {}, "item_id"),
        ("/api/v1/search/items", {"positive": [{"item_id": 1, "weight": "heavy"}]}, "positive.0.weight"),
        (
            "/api/v1/search/item",
            {"item_id": 1, "options": {"filter": {"genres_any": ["\ud800"]}}},
            "options.filter.genres_any.0",
        ),
        ("/api/v1/search/batch", {"queries": [{"item": {"item_id": 1}, "vector": {"vector": [1.0]}}]}, "queries.0"),
        ("/api/v1/search/batch", {"queries": [{}]}, "queries.0"),
        (
            "/api/v1/search/batch",
            {"queries": [{"image": {"image_base64": "not base64!"}}]},
            "queries.0.image.image_base64",
        ),
    ],
)
def test_malformed_requests_are_400_naming_the_field(web, path: str, body: dict, field: str) -> None:
    response = web.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
    error = assert_error(response, "INVALID_ARGUMENT", 400)
    fields = [v["field"] for d in error["details"] if d["@type"].endswith("BadRequest") for v in d["field_violations"]]
    assert field in fields, fields
    assert error["message"].startswith(field) and "expected" in error["message"]


def test_malformed_json_query_and_form_fields_are_400(web) -> None:
    assert_error(
        web.post("/api/v1/search/item", content=b"{not json", headers={"content-type": "application/json"}),
        "INVALID_ARGUMENT",
        400,
    )
    assert_error(web.get("/api/v1/items", params={"ids": "seven"}), "INVALID_ARGUMENT", 400)
    assert_error(web.get("/api/v1/items", params={"ids": str(2**64)}), "INVALID_ARGUMENT", 400)
    assert_error(web.get("/api/v1/find"), "INVALID_ARGUMENT", 400)
    error = assert_error(
        web.post(
            "/api/v1/search/image", files={"image": ("p.jpg", b"abc", "image/jpeg")}, data={"options": '{"k": "many"}'}
        ),
        "INVALID_ARGUMENT",
        400,
    )
    assert error["message"].startswith("options.k")
    assert_error(
        web.post("/api/v1/search/image", files={"image": ("p.jpg", b"abc", "image/jpeg")}, data={"mode": "zoom"}),
        "INVALID_ARGUMENT",
        400,
    )
    error = assert_error(
        web.post("/api/v1/search/image", files={"image": ("p.jpg", b"abc", "image/jpeg")}), "INVALID_ARGUMENT", 400
    )
    assert "ErrorInfo" in detail_types(error)  # the server's refusal of an undecodable image


def test_unknown_paths_and_methods(web) -> None:
    assert_error(web.get("/api/v1/nothing"), "NOT_FOUND", 404)
    assert_error(web.get("/api/v1/search/item"), "UNIMPLEMENTED", 405)
    page = web.get("/<script>alert(1)</script>")
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert "<script>alert(1)" not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text


# ---- pages, static files, headers, CORS, Host ------------------------------------------------------------


def test_pages_and_static_files_by_fixed_names(web) -> None:
    for path in ("/", "/quality", "/docs"):
        page = web.get(path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), path
        assert '<script src="/static/' in page.text and "<script>" not in page.text  # no inline script (CSP)
    assert web.get("/static/browse.js").headers["content-type"].startswith("text/javascript")
    for bad in ("/static/app.py", "/static/..%2Fapp.py", "/static/%2e%2e/config.py", "/static/index.html"):
        assert web.get(bad).status_code == 404, bad
    spec = web.get("/openapi.json").json()
    assert set(spec["paths"]) >= {
        "/api/v1/info",
        "/api/v1/health",
        "/api/v1/search/item",
        "/api/v1/search/items",
        "/api/v1/search/vector",
        "/api/v1/search/image",
        "/api/v1/search/batch",
        "/api/v1/find",
        "/api/v1/items",
        "/api/v1/posters",
        "/api/v1/thumbnails/{item_id}",
        "/api/v1/quality",
        "/api/v1/quality/{section}/{name}",
    }
    assert "422" not in json.dumps(spec["paths"])  # validation errors are documented (and answered) as 400
    item_id = spec["components"]["schemas"]["ItemSearchIn"]["properties"]["item_id"]
    assert (item_id["minimum"], item_id["maximum"]) == (-(2**63), 2**63 - 1)


def test_security_headers_everywhere_and_cors_off_by_default(web) -> None:
    for response in (
        web.get("/"),
        web.get("/api/v1/info"),
        web.get("/api/v1/nothing"),
        web.post("/api/v1/search/item", json={}),
    ):
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
    response = web.get("/api/v1/info", headers={"origin": "https://evil.example"})
    assert "access-control-allow-origin" not in response.headers
    preflight = web.options(
        "/api/v1/search/item", headers={"origin": "https://evil.example", "access-control-request-method": "POST"}
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_body_cap_refuses_before_the_app_reads_a_byte() -> None:
    """Content-Length over the cap: 413 and the app is never called; a chunked body is cut while streaming."""
    seen: list[int] = []
    calls: list[str] = []

    async def app(scope, receive, send) -> None:
        calls.append(scope["path"])
        while True:
            message = await receive()
            seen.append(len(message.get("body", b"")))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"read"})

    client = TestClient(GatewayMiddleware(app, limit_for=lambda path: 10))  # no lifespan: a bare ASGI app
    assert client.post("/api/v1/x", content=b"x" * 10).text == "read"
    assert seen == [10]
    seen.clear()
    calls.clear()
    assert_error(client.post("/api/v1/x", content=b"x" * 11), "RESOURCE_EXHAUSTED", 413)
    assert calls == [] and seen == []  # refused on the header: the app never ran, no byte was read
    assert_error(client.post("/api/v1/x", content=iter([b"x" * 6, b"x" * 6, b"x" * 6])), "RESOURCE_EXHAUSTED", 413)
    assert sum(seen) <= 6  # the second chunk put it over: it never reached the app
    page = client.post("/upload", content=b"x" * 11)
    assert page.status_code == 413 and page.headers["content-type"].startswith("text/html")


def test_cors_only_for_configured_origins(served) -> None:
    with gateway_for(served.target, cors_origins=("https://app.example",)) as web:
        ok = web.get("/api/v1/health", headers={"origin": "https://app.example"})
        assert ok.headers["access-control-allow-origin"] == "https://app.example"
        other = web.get("/api/v1/health", headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_host_header_guard(served) -> None:
    with gateway_for(served.target, allowed_hosts=("127.0.0.1", "localhost")) as web:
        assert web.get("/api/v1/health", headers={"host": "127.0.0.1:8080"}).status_code == 200
        assert_error(web.get("/api/v1/health", headers={"host": "rebind.evil.example"}), "INVALID_ARGUMENT", 400)


# ---- the quality page's data: fixed names only, never a path from the request ----------------------------


def _png(path: Path, colour: tuple[int, int, int]) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), colour).save(path, "PNG")
    return path.read_bytes()


def test_quality_reports_by_fixed_names(served, tmp_path: Path) -> None:
    version = served.client.info()["bundle_version"]
    with gateway_for(served.target) as web:
        body = web.get("/api/v1/quality").json()
        assert (body["configured"], body["sections"], body["bundle_version"]) == (False, [], version)
        assert "posters-index eval" in body["how_to"]
    root = tmp_path / "quality"
    report = root / version
    (report / "eval").mkdir(parents=True)
    (report / "eval" / "eval.md").write_text("# Evaluation\n\n| a | b |\n|---|---|\n| 1 | <img src=x> |\n")
    fidelity = _png(report / "eval" / "fidelity.png", (10, 20, 30))
    (report / "eval" / "eval.json").write_text("{}")
    secret = tmp_path / "secret.png"
    _png(secret, (1, 2, 3))
    (report / "eval" / "genres.png").symlink_to(secret)  # a link out of the quality folder: never served
    (report / "analyze" / "clusters").mkdir(parents=True)
    (report / "analyze" / "analysis.md").write_text("# Analysis\n")
    cluster = _png(report / "analyze" / "clusters" / "cluster_03.png", (40, 50, 60))
    with gateway_for(served.target, quality_dir=root) as web:
        body = web.get("/api/v1/quality").json()
        assert body["configured"] is True
        sections = {s["name"]: s for s in body["sections"]}
        assert [c["name"] for c in sections["eval"]["charts"]] == ["fidelity.png"]
        assert [c["name"] for c in sections["analyze"]["charts"]] == ["cluster_03.png"]
        assert "<img src=x>" in sections["eval"]["markdown"]  # text: the page renders it with textContent
        assert web.get("/api/v1/quality/eval/fidelity.png").content == fidelity
        assert web.get("/api/v1/quality/analyze/cluster_03.png").content == cluster
        assert web.get("/api/v1/quality/eval/eval.md").headers["content-type"].startswith("text/markdown")
        for name in ("eval.json", "genres.png", "cluster_03.png", "..%2F..%2Fsecret.png", "fidelity.png%00"):
            response = web.get(f"/api/v1/quality/eval/{name}")
            assert response.status_code in (400, 404), (name, response.status_code)
            assert response.content != secret.read_bytes()
        assert web.get("/api/v1/quality/other/fidelity.png").status_code == 400
    with gateway_for(served.target, quality_dir=tmp_path) as web:  # the index ROOT: reports under ROOT/quality
        assert [s["name"] for s in web.get("/api/v1/quality").json()["sections"]] == ["eval", "analyze"]


# ---- the CLI -----------------------------------------------------------------------------------------------


def test_cli_refuses_bad_settings_with_one_line(tmp_path: Path, capsys) -> None:
    assert web_cli.main(["--quality-dir", str(tmp_path / "missing"), "--port", "0"]) == 2
    assert "quality_dir expected a folder" in capsys.readouterr().err
    assert web_cli.main(["--cors-origin", "*", "--port", "0"]) == 2
    with pytest.raises(SystemExit) as exit_info:
        web_cli.main(["--max-image-bytes", "0"])
    assert exit_info.value.code == 2
    empty = tmp_path / "token"
    empty.write_text("  \n")
    assert web_cli.main(["--token-file", str(empty), "--port", "0"]) == 2


def test_cli_binds_loopback_and_guards_the_host_by_default() -> None:
    args = web_cli.parser().parse_args([])
    config = web_cli.config_from_args(args)
    assert args.host == "127.0.0.1" and "127.0.0.1" in config.allowed_hosts
    assert config.cors_origins == ()
    assert web_cli.config_from_args(web_cli.parser().parse_args(["--host", "0.0.0.0"])).allowed_hosts == ()


# ---- schema-driven fuzz ------------------------------------------------------------------------------------


def test_openapi_fuzz_finds_no_server_error(served) -> None:
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    app = create_app(WebConfig(upstream=UpstreamConfig(target=served.target)))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 13
    calls: list[int] = []
    for operation in operations:

        @settings(
            max_examples=FUZZ_EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def fuzz(case) -> None:
            response = case.call_and_validate(checks=checks)
            calls.append(response.status_code)

        fuzz()
    assert len(calls) >= len(operations) * 5
    assert max(calls) < 500
    assert {200, 400} <= set(calls), sorted(set(calls))
