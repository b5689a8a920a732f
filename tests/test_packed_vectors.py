"""Packed query vectors (``SearchByVectorRequest.vector_f32le``) over a real gRPC server: the same answers as the
repeated float field, bit for bit; malformed packed bytes refused with INVALID_ARGUMENT naming the field; the
Python client sends the packed form by default."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from indexer.build import BuildConfig, build
from indexer.index import IndexSpec
from indexer.precomputed import PrecomputedConfig
from server._proto import posters_pb2 as pb
from server._proto import posters_pb2_grpc as pb_grpc
from server.client import PosterClient
from server.types import SearchOptions, VectorQuery
from tests.conftest import QUIET, assert_exact_topk, clustered_vectors
from tests.grpc_helpers import serve

ITEMS = 600
DIM = 32
QUERIES = 12
K = 10
F32 = 4  # bytes per packed value


def _held_out(dim: int, n: int = QUERIES) -> np.ndarray:
    """Seeded float32 queries that are not in the index (another seed than the indexed vectors)."""
    return clustered_vectors(n, dim, clusters=12, seed=77)


def _packed(v: np.ndarray) -> bytes:
    return np.asarray(v, "<f4").tobytes()


def _violation_field(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)
    assert status is not None, "expected google.rpc details in the trailer"
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in status.details), "expected a BadRequest detail"
    return bad.field_violations[0].field


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """One server for the module over a flat bundle of seeded clustered vectors (no neighbour table)."""
    folder = tmp_path_factory.mktemp("packed")
    x = clustered_vectors(ITEMS, DIM, clusters=12, seed=5)
    ids = np.arange(ITEMS, dtype=np.int64) * 3 + 100
    np.savez(folder / "v.npz", ids=ids, vectors=x)
    root = folder / "root"
    build(
        BuildConfig(
            index_root=root,
            precomputed=PrecomputedConfig(folder / "v.npz"),
            index=IndexSpec(kind="flat"),
            pipeline=QUIET,
            neighbours_k=0,
        )
    )
    with serve(root) as s:
        yield s, pb_grpc.PosterSimilarityStub(s.client.channel), ids, x


def test_packed_and_repeated_vectors_give_identical_answers(served) -> None:
    s, stub, ids, x = served
    queries = _held_out(x.shape[1])
    options = pb.SearchOptions(k=K)
    found_ids, found_scores = [], []
    for q in queries:
        repeated = stub.SearchByVector(pb.SearchByVectorRequest(vector=q.tolist(), options=options))
        packed = stub.SearchByVector(pb.SearchByVectorRequest(vector_f32le=_packed(q), options=options))
        assert packed.SerializeToString(deterministic=True) == repeated.SerializeToString(deterministic=True)
        found_ids.append([n.item_id for n in packed.neighbors])
        found_scores.append([n.score for n in packed.neighbors])
    # and both are right: the brute-force top k of the normalized query
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    assert_exact_topk(np.array(found_ids), np.array(found_scores), x, ids, qn)


def test_batch_vector_queries_packed_equal_repeated(served) -> None:
    _, stub, _, x = served
    queries = _held_out(x.shape[1])
    options = pb.SearchOptions(k=K)

    def batch(packed: bool) -> pb.BatchSearchResponse:
        return stub.BatchSearch(
            pb.BatchSearchRequest(
                queries=[
                    pb.Query(
                        vector=pb.SearchByVectorRequest(vector_f32le=_packed(q), options=options)
                        if packed
                        else pb.SearchByVectorRequest(vector=q.tolist(), options=options)
                    )
                    for q in queries
                ]
            )
        )

    packed, repeated = batch(True), batch(False)
    assert [st.code for st in packed.statuses] == [0] * QUERIES
    assert packed.SerializeToString(deterministic=True) == repeated.SerializeToString(deterministic=True)


def test_python_client_sends_packed_vectors_by_default(served) -> None:
    s, _, _, x = served
    q = _held_out(x.shape[1], 1)[0]
    sent: list[pb.SearchByVectorRequest] = []
    original = s.client._stub.SearchByVector

    def recording(request, **kwargs):
        sent.append(request)
        return original(request, **kwargs)

    s.client._stub.SearchByVector = recording
    packed = s.client.vector(q, SearchOptions(k=K))
    assert sent[0].vector_f32le == _packed(q) and not sent[0].vector
    with PosterClient(s.target, packed_vectors=False) as old_style:
        old_style._stub.SearchByVector = recording
        repeated = old_style.vector(q, SearchOptions(k=K))
        assert sent[1].vector == pytest.approx(q.tolist(), abs=0) and not sent[1].vector_f32le
        assert old_style.batch([VectorQuery(q, SearchOptions(k=K))]) == [repeated]
    assert packed == repeated
    assert s.client.batch([VectorQuery(q, SearchOptions(k=K))]) == [packed]


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        pytest.param(lambda q: {"vector_f32le": _packed(q)[:-1]}, "not a multiple of 4", id="ragged-bytes"),
        pytest.param(
            lambda q: {"vector_f32le": _packed(q)[:-F32]}, "dimension expected {dim} ({want} bytes", id="short"
        ),
        pytest.param(
            lambda q: {"vector_f32le": _packed(q) + _packed(q[:1])}, "expected {dim} ({want} bytes", id="long"
        ),
        pytest.param(
            lambda q: {"vector_f32le": _packed(q), "vector": q.tolist()}, "exactly one of vector and", id="both-set"
        ),
    ],
)
def test_malformed_packed_vectors_are_refused(served, make, expected: str) -> None:
    _, stub, _, x = served
    q = _held_out(x.shape[1], 1)[0]
    want = expected.format(dim=x.shape[1], want=x.shape[1] * F32)
    request = pb.SearchByVectorRequest(**make(q))
    with pytest.raises(grpc.RpcError) as err:
        stub.SearchByVector(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert want in err.value.details() and "got" in err.value.details()
    assert _violation_field(err.value) == "vector_f32le"
    # the same query inside a batch fails alone, named by its position
    batch = stub.BatchSearch(
        pb.BatchSearchRequest(
            queries=[pb.Query(vector=pb.SearchByVectorRequest(vector_f32le=_packed(q))), pb.Query(vector=request)]
        )
    )
    assert [st.code for st in batch.statuses] == [0, grpc.StatusCode.INVALID_ARGUMENT.value[0]]
    assert batch.statuses[1].message.startswith("query 1: ") and want in batch.statuses[1].message
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in batch.statuses[1].details)
    assert bad.field_violations[0].field == "queries[1].vector_f32le"
    assert len(batch.results[0].neighbors) == K and not batch.results[1].neighbors


def test_packed_values_follow_the_vector_rules(served) -> None:
    _, stub, _, x = served
    q = _held_out(x.shape[1], 1)[0].copy()
    q[3] = np.nan
    with pytest.raises(grpc.RpcError) as err:
        stub.SearchByVector(pb.SearchByVectorRequest(vector_f32le=_packed(q)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "finite" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.SearchByVector(pb.SearchByVectorRequest(vector_f32le=bytes(x.shape[1] * F32)))  # all zeros
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "non-zero" in err.value.details()
