"""The index root on disk: file names, build ids, ``CURRENT``, the build lock, durable writes."""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from indexer.errors import BuildError, BundleError

log = logging.getLogger(__name__)

CURRENT = "CURRENT"
BUILDS = "builds"
STAGING_PREFIX = ".staging-"
LOCK_FILE = ".lock"
MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
ITEMS_FILE = "items.csv"
FAILURES_FILE = "failures.csv"
NEIGHBOUR_IDS = "neighbour_ids.npy"
NEIGHBOUR_SCORES = "neighbour_scores.npy"
REQUIRED_FILES = (INDEX_FILE, ITEMS_FILE, FAILURES_FILE)
NEIGHBOUR_FILES = (NEIGHBOUR_IDS, NEIGHBOUR_SCORES)
DEFAULT_KEEP_BUILDS = 3
BUILD_ID_PATTERN = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._:+-]{0,127}$")
MAX_CURRENT_BYTES = 4096


def new_build_id(now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.UTC)
    return f"{now:%Y%m%dT%H%M%S.%f}Z-{secrets.token_hex(3)}"  # sortable: prune keeps the newest


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def durable_file(path: Path) -> Iterator[BinaryIO]:
    """A new file opened for writing; flushed and fsynced on exit. Every failed write raises OSError
    (Python ignores SIGXFSZ, so a file-size limit is EFBIG here, and a full disk ENOSPC)."""
    try:
        with path.open("xb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        if exc.filename is None:  # name the file the failed write was for
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise


@contextlib.contextmanager
def build_lock(root: Path) -> Iterator[None]:
    """Exclusive lock on an index root for the length of a build (released if the process dies)."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / LOCK_FILE).open("a") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BuildError(f"another build is running in {root} (lock {root / LOCK_FILE} is held)") from None
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def remove_stale_staging(root: Path) -> None:
    """Delete staging directories left by killed builds (call with the build lock held)."""
    builds = root / BUILDS
    if builds.is_dir():
        for path in builds.glob(f"{STAGING_PREFIX}*"):
            log.info("removing unfinished build %s", path.name)
            shutil.rmtree(path, ignore_errors=True)


def write_current(root: Path, build_id: str) -> None:
    """Point CURRENT at ``build_id`` atomically (temporary file, fsync, rename, fsync the directory)."""
    tmp = root / f"{CURRENT}.tmp-{build_id}"
    try:
        with durable_file(tmp) as fh:
            fh.write(f"{build_id}\n".encode())
        os.replace(tmp, root / CURRENT)
        fsync_dir(root)
    finally:
        tmp.unlink(missing_ok=True)


def list_builds(root: Path) -> list[str]:
    builds = root / BUILDS
    if not builds.is_dir():
        return []
    return sorted(p.name for p in builds.iterdir() if p.is_dir() and not p.name.startswith("."))


def prune(root: Path, keep: int) -> list[str]:
    """Delete the oldest published builds beyond ``keep``; never the current one."""
    current = read_current(root, missing_ok=True)
    published = list_builds(root)
    removed = []
    for build_id in published[: max(0, len(published) - keep)]:
        if build_id != current:
            shutil.rmtree(root / BUILDS / build_id, ignore_errors=True)
            removed.append(build_id)
    return removed


def check_build_id(build_id: str, where: str) -> str:
    if not BUILD_ID_PATTERN.match(build_id):
        raise BundleError(
            f"{where} is corrupt: expected a build id (letters, digits, '._:+-', at most 128), got {build_id[:60]!r}"
        )
    return build_id


def read_current(root: Path, missing_ok: bool = False) -> str | None:
    """The build id CURRENT points to; BundleError for an unreadable or corrupt CURRENT."""
    path = root / CURRENT
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_CURRENT_BYTES + 1)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise BundleError(f"{path} does not exist: no bundle has been published in {root}") from None
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc}") from exc
    if len(raw) > MAX_CURRENT_BYTES:
        raise BundleError(f"{path} is corrupt: expected a build id, got more than {MAX_CURRENT_BYTES} bytes")
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise BundleError(
            f"{path} is corrupt: expected a UTF-8 build id, got bytes {raw[:16]!r} ({exc.reason})"
        ) from None
    return check_build_id(text, str(path))


def current_path(root: Path) -> Path:
    return root / BUILDS / str(read_current(root))
