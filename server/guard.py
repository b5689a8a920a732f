"""Stop work nobody waits for: a per-call guard checked between batch items and before each embedding.

The servicer builds one from the gRPC context (``is_active``, ``time_remaining``); the search core
only calls ``check()`` and knows nothing of gRPC. A server that is shutting down stops its work the
same way, so ``--grace`` bounds shutdown.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from server.errors import Cancelled, DeadlineExceeded, Unavailable


def _always_active() -> bool:
    return True


def _no_deadline() -> float | None:
    return None


@dataclass(frozen=True)
class CallGuard:
    """``check()`` raises when the caller has gone, the deadline has passed or the server is stopping."""

    is_active: Callable[[], bool] = _always_active
    time_remaining: Callable[[], float | None] = _no_deadline
    stopping: threading.Event = field(default_factory=threading.Event)

    def check(self, what: str = "request") -> None:
        if self.stopping.is_set():
            raise Unavailable(f"server is shutting down; {what} stopped")
        remaining = self.time_remaining()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceeded(f"deadline exceeded; {what} stopped")
        if not self.is_active():
            raise Cancelled(f"cancelled by the client; {what} stopped")

    def remaining(self) -> float | None:
        """Seconds left before the deadline (None: no deadline)."""
        return self.time_remaining()


UNGUARDED = CallGuard()
