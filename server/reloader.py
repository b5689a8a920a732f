"""Owns the serving Searcher and swaps it when the bundle CURRENT names changes.

New bundles are loaded, verified and warmed up on a background thread (polling, and at once
on request, e.g. SIGHUP), then swapped in with one reference assignment: a request uses the
searcher it started with. Bundle identity is content, not a name: the build id CURRENT names
plus the SHA-256 of that bundle's manifest (which holds every file's SHA-256), so a bundle
replaced in place is reloaded and a copied one is refused (its manifest names another build).

Nothing stops the watcher: every failure (unreadable or corrupt CURRENT, a bundle that fails
its checks, a listener that raises) is logged, counted and retried with exponential backoff,
while the last good bundle keeps serving. ``status()`` says what is wanted, what serves, and
why they differ.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from indexer import bundle as bundles
from server.admission import EmbeddingGate
from server.errors import Unavailable
from server.image_embedder import EmbedderPool
from server.searcher import Searcher, SearchLimits

log = logging.getLogger(__name__)

Listener = Callable[[Searcher], None]
MAX_RETRY_BACKOFF_SECONDS = 300.0  # a failing bundle is retried at most this far apart (SIGHUP: at once)
DEFAULT_EMBEDDING_PERMITS = 2
IMAGE_MODEL_LOADING = "the image model is loading (health service posters.v1.PosterSimilarity.SearchByImage says when)"


@dataclass(frozen=True)
class ReloadStatus:
    """What the watcher wants to serve and what it serves (they differ while a reload fails)."""

    desired_version: str  # the build id CURRENT names ("" if CURRENT is missing or unreadable)
    serving_version: str  # "" before the first bundle loads
    reload_failures: int  # failed load attempts since start
    last_error: str  # why the last attempt failed ("" once a reload succeeds)
    previous_version: str  # the bundle the last successful reload replaced
    previous_model: str
    previous_dimension: int

    @property
    def stale(self) -> bool:
        return self.desired_version != self.serving_version


@dataclass(frozen=True)
class _Identity:
    build_id: str
    digest: str  # SHA-256 of the manifest ("" when CURRENT itself could not be read)


class BundleManager:
    def __init__(
        self,
        root: Path,
        limits: SearchLimits | None = None,
        image_search: bool = True,
        threads: int = 1,
        poll_interval: float = 5.0,
        coalesce: bool = False,
        require_same_model: bool = False,
        embedding_gate: EmbeddingGate | None = None,
    ) -> None:
        if poll_interval <= 0:
            raise ValueError(f"poll interval expected > 0 seconds, got {poll_interval}")
        self.root = root
        self.limits = limits or SearchLimits()
        self.image_search = image_search
        self.threads = threads
        self.coalesce = coalesce
        self.require_same_model = require_same_model
        self.poll_interval = poll_interval
        self.embedding_gate = embedding_gate or EmbeddingGate(DEFAULT_EMBEDDING_PERMITS)
        self.stopping = threading.Event()  # set on shutdown: in-flight work stops at its next check
        self._searcher: Searcher | None = None
        self._serving: _Identity | None = None
        self._desired = ""
        self._failed: _Identity | None = None
        self._consecutive_failures = 0
        self._retry_at = 0.0
        self._failures = 0
        self._last_error = ""
        self._previous: tuple[str, str, int] = ("", "", 0)
        self._reload_lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._listeners: list[Listener] = []
        self._embedders = EmbedderPool()

    @property
    def current(self) -> Searcher | None:
        return self._searcher

    @property
    def last_error(self) -> str:
        return self._last_error

    def require(self) -> Searcher:
        searcher = self._searcher
        if searcher is None:
            raise Unavailable(
                f"no index bundle is loaded yet from {self.root}"
                + (f" (last error: {self._last_error})" if self._last_error else "")
            )
        return searcher

    def status(self) -> ReloadStatus:
        serving = self._searcher.version if self._searcher else ""
        return ReloadStatus(self._desired, serving, self._failures, self._last_error, *self._previous)

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _load(self, build_id: str) -> Searcher:
        bundle = bundles.load_bundle(self.root / bundles.BUILDS / build_id, verify=True)
        old = self._searcher
        if old is not None and (bundle.manifest.model, bundle.manifest.query_dim) != (old.manifest.model, old.dim):
            change = (
                f"bundle {build_id} changes the model from {old.manifest.model} (dim {old.dim}) to "
                f"{bundle.manifest.model} (dim {bundle.manifest.query_dim}): vector queries of the old "
                f"dimension will be refused"
            )
            if self.require_same_model:
                raise bundles.BundleError(f"{change}; refused (--require-same-model)")
            log.warning("MODEL CHANGE: %s", change)
        reason = IMAGE_MODEL_LOADING if self.image_search else "image search disabled on this server"
        searcher = Searcher(bundle, self.limits, None, reason, threads=self.threads, coalesce=self.coalesce)
        searcher.warm_up()
        return searcher

    def _with_image_search(self, searcher: Searcher) -> Searcher:
        """The same bundle with its image embedder (building the model takes seconds: after the swap)."""
        embedder, reason = self._embedders.for_manifest(
            searcher.manifest,
            self.limits.max_image_pixels,
            self.limits.max_image_bytes,
            self.embedding_gate,
            searcher.whitening,
        )
        if reason:
            log.warning("bundle %s: image search unavailable: %s", searcher.version, reason)
        return searcher.with_image_embedder(embedder, reason)

    def _notify(self, searcher: Searcher) -> None:
        for listener in self._listeners:
            try:
                listener(searcher)
            except Exception:
                log.exception("bundle listener %r failed for %s", listener, searcher.version)

    def _desired_identity(self) -> _Identity | None:
        build_id = bundles.read_current(self.root, missing_ok=True)
        if build_id is None:
            return None
        return _Identity(build_id, bundles.bundle_digest(self.root / bundles.BUILDS / build_id))

    def reload(self, force: bool = False) -> bool:
        """Load the bundle CURRENT names if it differs from the serving one; True if it now serves.

        Never raises. A failure is logged, counted and retried with backoff (at once with ``force``).
        """
        with self._reload_lock:
            try:
                searcher = self._reload_locked(force)
            except Exception as exc:  # noqa: BLE001 - nothing may stop the watcher; the old bundle keeps serving
                self._record_failure(exc)
                return False
        if searcher is None:
            return False
        self._notify(searcher)  # item and vector queries are answered from here on
        if self.image_search:
            try:
                with_images = self._with_image_search(searcher)
            except Exception as exc:
                log.exception("bundle %s: cannot start image search", searcher.version)
                with_images = searcher.with_image_embedder(None, f"cannot build the image model: {exc}")
            with self._reload_lock:
                if self._searcher is not searcher:  # a newer bundle was swapped in meanwhile
                    return True
                self._searcher = with_images
            self._notify(with_images)
        return True

    def _reload_locked(self, force: bool) -> Searcher | None:
        self._desired = ""
        desired = self._desired_identity()
        if desired is None:
            return None
        self._desired = desired.build_id
        if desired == self._serving:
            self._clear_failure()
            return None
        if desired == self._failed and not force and time.monotonic() < self._retry_at:
            return None  # backing off from this bundle; SIGHUP forces a retry
        self._failed = desired
        searcher = self._load(desired.build_id)
        previous = self._searcher
        if previous is not None:
            self._previous = (previous.version, previous.manifest.model, previous.dim)
        self._searcher = searcher
        self._serving = desired
        self._clear_failure()
        log.info(
            "serving bundle %s (%d items, dim %d, %s) [previous: %s]",
            searcher.version,
            searcher.item_count,
            searcher.dim,
            searcher.index_type,
            previous.version if previous else None,
        )
        return searcher

    def _clear_failure(self) -> None:
        self._failed = None
        self._consecutive_failures = 0
        self._last_error = ""

    def _record_failure(self, exc: BaseException) -> None:
        self._failures += 1
        self._consecutive_failures += 1
        backoff = min(self.poll_interval * 2 ** (self._consecutive_failures - 1), MAX_RETRY_BACKOFF_SECONDS)
        self._retry_at = time.monotonic() + backoff
        error = f"{type(exc).__name__}: {exc}"
        serving = self._searcher.version if self._searcher else "nothing"
        attempts = self._consecutive_failures
        if error != self._last_error:
            log.error(
                "cannot load the bundle CURRENT names: %s; still serving %s (retry in %.0fs)", error, serving, backoff
            )
        elif attempts & (attempts - 1) == 0:  # repeats logged at 2, 4, 8, ... attempts, not every poll
            log.warning(
                "bundle still failing after %d attempts: %s; still serving %s (retry in %.0fs)",
                attempts,
                error,
                serving,
                backoff,
            )
        self._last_error = error

    def request_reload(self) -> None:
        """Ask the watcher to re-read CURRENT now (safe from a signal handler)."""
        self._wake.set()

    def _watch(self) -> None:
        while not self.stopping.is_set():
            woke = self._wake.wait(self.poll_interval)
            self._wake.clear()
            if self.stopping.is_set():
                break
            try:
                self.reload(force=woke)
            except Exception:
                log.exception("bundle watcher iteration failed; continuing")

    def start(self, load_now: bool = False) -> None:
        """Watch CURRENT on a background thread; ``load_now``: its first reload at once (a server that
        listens before its bundle is loaded answers health NOT_SERVING meanwhile)."""
        if self._thread is None:
            if load_now:
                self._wake.set()
            self._thread = threading.Thread(target=self._watch, name="bundle-watcher", daemon=True)
            self._thread.start()

    @property
    def watching(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self.stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
