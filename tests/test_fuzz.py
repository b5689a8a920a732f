"""Request fuzzing: garbage bytes and out-of-range fields never give UNKNOWN/INTERNAL or a crash."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server._proto import posters_pb2 as pb
from tests.grpc_helpers import METHODS, Served, raw_call, serve

FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def fuzz_server(demo_root: Path) -> Iterator[Served]:
    with serve(demo_root, image_search=True) as s:
        yield s


@SETTINGS
@given(method=st.sampled_from(METHODS), payload=st.binary(max_size=2048))
def test_garbage_bytes(fuzz_server: Served, method: str, payload: bytes) -> None:
    assert raw_call(fuzz_server.client.channel, method, payload) not in FORBIDDEN


ints = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-5, 50))
floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
options = st.builds(
    lambda k, c, e, m, n, x: pb.SearchOptions(
        k=k, candidate_ids=c, exclude_ids=e, nprobe=n, exact=x, **({} if m is None else {"min_score": m})
    ),
    st.integers(-(2**31), 2**31 - 1),
    st.lists(ints, max_size=5),
    st.lists(ints, max_size=5),
    st.none() | floats,
    st.integers(-(2**31), 2**31 - 1),
    st.booleans(),
)
weighted = st.lists(st.builds(lambda i, w: pb.WeightedItem(item_id=i, weight=w), ints, floats), max_size=4)
requests = st.one_of(
    st.builds(lambda i, o: ("SimilarToItem", pb.SimilarToItemRequest(item_id=i, options=o)), ints, options),
    st.builds(
        lambda p, n, o: ("SimilarToItems", pb.SimilarToItemsRequest(positive=p, negative=n, options=o)),
        weighted,
        weighted,
        options,
    ),
    st.builds(
        lambda v, o: ("SearchByVector", pb.SearchByVectorRequest(vector=v, options=o)),
        st.one_of(st.lists(floats, max_size=20), st.lists(floats, min_size=1280, max_size=1280)),
        options,
    ),
    st.builds(
        lambda b, o: ("SearchByImage", pb.SearchByImageRequest(image=b, options=o)), st.binary(max_size=512), options
    ),
    st.builds(
        lambda q, n: ("FindItems", pb.FindItemsRequest(query=q, limit=n)),
        st.text(max_size=300),
        st.integers(-(2**31), 2**31 - 1),
    ),
    st.builds(lambda ids: ("GetItems", pb.GetItemsRequest(item_ids=ids)), st.lists(ints, max_size=5)),
)


@SETTINGS
@given(request=requests)
def test_out_of_range_fields(fuzz_server: Served, request) -> None:
    method, message = request
    code = raw_call(fuzz_server.client.channel, method, message.SerializeToString())
    assert code not in FORBIDDEN, (method, message)


def test_still_serving_after_fuzzing(fuzz_server: Served) -> None:
    assert fuzz_server.client.health() == "SERVING"
    assert fuzz_server.client.similar(1).hits
