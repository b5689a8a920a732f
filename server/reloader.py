"""Owns the serving Searcher and swaps it when the index root's CURRENT changes.

New bundles are loaded, verified and warmed up on a background thread (polling
and on request, e.g. SIGHUP), then swapped in with one reference assignment:
a request uses the searcher it started with. A bundle that fails to load is
logged and skipped; the old one keeps serving.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable

import numpy as np

from indexer import bundle as bundles
from server.errors import Unavailable
from server.image_embedder import EmbedderPool
from server.searcher import SearchLimits, Searcher

log = logging.getLogger(__name__)

Listener = Callable[[Searcher], None]


class BundleManager:
    def __init__(self, root: Path, limits: SearchLimits | None = None, image_search: bool = True,
                 threads: int = 1, poll_interval: float = 5.0, coalesce: bool = False) -> None:
        self.root = root
        self.limits = limits or SearchLimits()
        self.image_search = image_search
        self.threads = threads
        self.coalesce = coalesce
        self.poll_interval = poll_interval
        self.last_error: str | None = None
        self._searcher: Searcher | None = None
        self._failed_build: str | None = None
        self._reload_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listeners: list[Listener] = []
        self._embedders = EmbedderPool()

    @property
    def current(self) -> Searcher | None:
        return self._searcher

    def require(self) -> Searcher:
        searcher = self._searcher
        if searcher is None:
            raise Unavailable(f"no index bundle is loaded yet from {self.root}"
                              + (f" (last error: {self.last_error})" if self.last_error else ""))
        return searcher

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _load(self, build_id: str) -> Searcher:
        bundle = bundles.load_bundle(self.root / bundles.BUILDS / build_id, verify=True)
        embedder, reason = (None, "image search disabled on this server")
        if self.image_search:
            embedder, reason = self._embedders.for_manifest(bundle.manifest, self.limits.max_image_pixels,
                                                            self.limits.max_image_bytes)
            if reason:
                log.warning("bundle %s: image search unavailable: %s", build_id, reason)
        searcher = Searcher(bundle, self.limits, embedder, reason, threads=self.threads, coalesce=self.coalesce)
        # warm-up: one real query proves the index answers before it takes traffic
        if searcher.item_count:
            searcher.search_vector(np.asarray(bundle.index.reconstruct(int(searcher.ids[0]))))
        return searcher

    def reload(self, force: bool = False) -> bool:
        """Load CURRENT if it changed; True if a new bundle now serves. Never raises."""
        with self._reload_lock:
            try:
                build_id = bundles.read_current(self.root, missing_ok=True)
            except bundles.BundleError as exc:
                self._record_failure(None, str(exc))
                return False
            if build_id is None:
                return False
            serving = self._searcher.version if self._searcher else None
            if build_id == serving or (build_id == self._failed_build and not force):
                return False
            try:
                searcher = self._load(build_id)
            except Exception as exc:  # noqa: BLE001 - a bad bundle must never stop the server
                self._record_failure(build_id, f"{type(exc).__name__}: {exc}")
                return False
            self._searcher = searcher
            self._failed_build = None
            self.last_error = None
            log.info("serving bundle %s (%d items, dim %d, %s) [previous: %s]", searcher.version,
                     searcher.item_count, searcher.dim, "flat" if searcher.is_exact_index else "ivf", serving)
        for listener in self._listeners:
            listener(searcher)
        return True

    def _record_failure(self, build_id: str | None, reason: str) -> None:
        self._failed_build = build_id
        self.last_error = reason
        serving = self._searcher.version if self._searcher else "nothing"
        log.error("cannot load bundle %s: %s; still serving %s", build_id, reason, serving)

    def request_reload(self) -> None:
        """Ask the watcher to re-read CURRENT now (safe from a signal handler)."""
        self._wake.set()

    def _watch(self) -> None:
        while not self._stop.is_set():
            woke = self._wake.wait(self.poll_interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            self.reload(force=woke)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="bundle-watcher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
