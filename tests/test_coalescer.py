"""Concurrent single-query searches are batched into one FAISS call with exact results."""

from __future__ import annotations

import threading

import faiss
import numpy as np
import pytest

from server.coalescer import Coalescer
from tests.conftest import clustered_vectors


class _GatedIndex:
    """Wraps a FAISS index; the first search blocks until released, so others must queue."""

    def __init__(self, index: faiss.Index) -> None:
        self.index = index
        self.entered = threading.Event()
        self.release = threading.Event()
        self.batch_sizes: list[int] = []

    def search(self, q: np.ndarray, k: int):
        self.batch_sizes.append(len(q))
        if len(self.batch_sizes) == 1:
            self.entered.set()
            assert self.release.wait(30)
        return self.index.search(q, k)


class _CountingCondition(threading.Condition):
    """A Condition that lets the test wait until N threads are waiting on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = 0
        self.changed = threading.Condition()

    def wait(self, timeout=None):
        with self.changed:
            self.waiting += 1
            self.changed.notify_all()
        return super().wait(timeout)


def test_queued_queries_run_as_one_batch_with_exact_results() -> None:
    x = clustered_vectors(2000, 32, seed=9)
    flat = faiss.IndexFlatIP(32)
    flat.add(x)
    gated = _GatedIndex(flat)
    cond = _CountingCondition()
    co = Coalescer(gated, max_concurrent=1, _cond=cond)
    queries = x[:6] + 0.01
    results: dict[int, tuple] = {}

    def run(i: int, fetch: int) -> None:
        results[i] = co.search(queries[i], fetch)

    leader = threading.Thread(target=run, args=(0, 5))
    leader.start()
    assert gated.entered.wait(30)
    followers = [threading.Thread(target=run, args=(i, 3 + i)) for i in range(1, 6)]
    for t in followers:
        t.start()
    with cond.changed:
        assert cond.changed.wait_for(lambda: cond.waiting >= 5, timeout=30)
    gated.release.set()
    for t in [leader, *followers]:
        t.join(30)
    assert not any(t.is_alive() for t in [leader, *followers]), "a search thread hung"
    assert gated.batch_sizes == [1, 5]  # the five queued queries ran as one FAISS call
    assert (co.batches, co.queries) == (2, 6)
    for i in range(6):
        scores, ids = flat.search(queries[i : i + 1], 5 if i == 0 else 3 + i)
        np.testing.assert_array_equal(results[i][1], ids[0])
        np.testing.assert_allclose(results[i][0], scores[0], atol=1e-6)


def test_errors_reach_the_caller() -> None:
    class Broken:
        def search(self, q, k):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        Coalescer(Broken()).search(np.zeros(4, np.float32), 2)
