"""Admission control: how many calls of each cost class run at once, and a bounded pool for image work.

Calls are admitted per cost class without queueing: when a class is full the call is refused at
once with RESOURCE_EXHAUSTED (clients retry with backoff) instead of piling up behind slow work.
The server's thread pool has a thread for every admitted call plus a reserve, so health checks
and reflection are answered even when every class is full. Image decoding and embedding, the
expensive part of ``SearchByImage`` and of image queries inside ``BatchSearch``, go through one
``EmbeddingGate`` whose permits bound the CPU and memory they use; waiting for a permit stops when
the caller cancels or its deadline passes.
"""

from __future__ import annotations

import contextlib
import enum
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from server.errors import ResourceExhausted
from server.guard import CallGuard

GATE_POLL_SECONDS = 0.05  # how often a call waiting for an embedding permit re-checks its guard
MAX_GATE_WAIT_SECONDS = 30.0  # longest wait for a permit when the call has no deadline
HEALTH_RESERVE_THREADS = 2  # threads beyond every class's limit: health, reflection, refusals


class CostClass(enum.Enum):
    QUERY = "query"  # item, items, vector, title lookup, items by id, index info
    BATCH = "batch"  # BatchSearch
    IMAGE = "image"  # SearchByImage


METHOD_CLASS = {"SearchByImage": CostClass.IMAGE, "BatchSearch": CostClass.BATCH}


@dataclass(frozen=True)
class AdmissionLimits:
    query: int = 8
    batch: int = 2
    image: int = 2
    embedding_permits: int = 2  # concurrent image decode+embed operations (2 cores)

    def __post_init__(self) -> None:
        for name in ("query", "batch", "image", "embedding_permits"):
            if getattr(self, name) < 1:
                raise ValueError(f"admission limit {name} expected >= 1, got {getattr(self, name)}")

    @property
    def threads(self) -> int:
        """Server threads needed so that every admitted call and the reserve have one."""
        return self.query + self.batch + self.image + HEALTH_RESERVE_THREADS


def cost_class(method: str) -> CostClass:
    return METHOD_CLASS.get(method, CostClass.QUERY)


class Admission:
    """Non-blocking per-class slots, with counts for metrics and tests."""

    def __init__(self, limits: AdmissionLimits) -> None:
        self.limits = limits
        self._cond = threading.Condition()
        self._capacity = {c: getattr(limits, c.value) for c in CostClass}
        self._in_flight = {c: 0 for c in CostClass}
        self.rejected = {c: 0 for c in CostClass}

    @contextlib.contextmanager
    def admit(self, method: str) -> Iterator[None]:
        cls = cost_class(method)
        with self._cond:
            if self._in_flight[cls] >= self._capacity[cls]:
                self.rejected[cls] += 1
                raise ResourceExhausted(
                    f"server busy: {self._in_flight[cls]} of {self._capacity[cls]} {cls.value} slots in use "
                    f"(expected a free slot for {method}); retry with backoff"
                )
            self._in_flight[cls] += 1
        try:
            yield
        finally:
            with self._cond:
                self._in_flight[cls] -= 1
                self._cond.notify_all()

    def in_flight(self) -> dict[str, int]:
        with self._cond:
            return {c.value: n for c, n in self._in_flight.items()}

    def wait_idle(self, timeout: float) -> bool:
        """Block until no call is in flight (True) or ``timeout`` passes (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: not any(self._in_flight.values()), timeout)


class EmbeddingGate:
    """A bounded pool of permits for image decode + embed, shared by every call that embeds images."""

    def __init__(self, permits: int) -> None:
        self._permits = threading.BoundedSemaphore(permits)
        self._lock = threading.Lock()
        self.started = 0  # embeddings begun (tests and metrics: cancelled work stops growing this)

    @contextlib.contextmanager
    def permit(self, guard: CallGuard) -> Iterator[None]:
        remaining = guard.remaining()
        budget = MAX_GATE_WAIT_SECONDS if remaining is None else min(remaining, MAX_GATE_WAIT_SECONDS)
        waited = 0.0
        while not self._permits.acquire(timeout=GATE_POLL_SECONDS):
            guard.check("image embedding")
            waited += GATE_POLL_SECONDS
            if waited >= budget:
                raise ResourceExhausted(f"image embedding busy: no free permit within {budget:.1f}s; retry later")
        try:
            guard.check("image embedding")
            with self._lock:
                self.started += 1
            yield
        finally:
            self._permits.release()
