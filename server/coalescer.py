"""Batch concurrent single-query searches into one FAISS call (flat combining).

A flat index scans every vector per query; FAISS answers a batch of queries with
one matrix multiply that reads the vectors once, so under concurrent load a
batch of 8-16 queries costs little more than one. There is no timer: a request thread
that finds a free slot (one per core by default) runs whatever is queued at that
moment (at least its own query) while later arrivals queue for the next round.
An idle server adds only a lock round trip.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np


@dataclass(eq=False)  # identity, not field equality (fields hold arrays)
class _Job:
    query: np.ndarray  # (d,)
    fetch: int
    scores: np.ndarray | None = None
    ids: np.ndarray | None = None
    error: BaseException | None = None
    done: bool = False


@dataclass
class Coalescer:
    index: faiss.Index
    max_batch: int = 64
    max_concurrent: int = field(default_factory=lambda: os.cpu_count() or 1)  # batches running at once
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _pending: list[_Job] = field(default_factory=list)
    _running: int = 0
    batches: int = 0  # statistics, for tests and benchmarks
    queries: int = 0

    def search(self, query: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``fetch`` (scores, ids) for one normalized query, possibly batched with others."""
        job = _Job(query, fetch)
        with self._cond:
            self._pending.append(job)
            while self._running >= self.max_concurrent and not job.done:
                self._cond.wait()
            if job.done:
                return self._result(job)
            batch = self._pending[: self.max_batch]
            if job not in batch:
                batch.append(job)
            taken = set(map(id, batch))
            self._pending = [j for j in self._pending if id(j) not in taken]
            self._running += 1
        try:
            k = max(j.fetch for j in batch)
            scores, ids = self.index.search(np.vstack([j.query for j in batch]), k)
            for j, s, i in zip(batch, scores, ids):
                j.scores, j.ids = s[: j.fetch], i[: j.fetch]
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting request, re-raised there
            for j in batch:
                j.error = exc
        finally:
            with self._cond:
                for j in batch:
                    j.done = True
                self.batches += 1
                self.queries += len(batch)
                self._running -= 1
                self._cond.notify_all()
        return self._result(job)

    @staticmethod
    def _result(job: _Job) -> Any:
        if job.error is not None:
            raise job.error
        return job.scores, job.ids
