"""The index root on disk: file names, build ids, ``CURRENT``, the build lock, durable writes."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from indexer.errors import BuildError, BundleError

if TYPE_CHECKING:
    from indexer.bundle.manifest import Manifest

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
POSTERS_FILE = "posters.bin"  # thumbnails: JPEG files back to back
POSTER_OFFSETS = "poster_offsets.npy"  # int64 (items + 1,): row r's JPEG is posters.bin[off[r]:off[r + 1]]
POSTER_FILES = (POSTERS_FILE, POSTER_OFFSETS)
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


# ---- operations: describe the builds of a root, roll CURRENT back ------------------------------------------------

BYTES_PER_MB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class BuildRow:
    """One build directory of an index root, as ``posters-index list`` shows it."""

    build_id: str
    path: Path
    finished: bool  # False: a staging directory (a build in progress, or killed)
    is_current: bool
    size_bytes: int  # every file under the directory
    created_at: str | None = None  # from the manifest (None if it cannot be read)
    item_count: int | None = None
    failure_count: int | None = None
    index_type: str | None = None
    problems: tuple[str, ...] = ()  # empty: the checks passed
    checked: str = "full"  # "full" (load_bundle with checksums), "quick" (manifest and file sizes), "none"

    @property
    def ok(self) -> bool:
        return self.finished and not self.problems

    @property
    def size_mb(self) -> float:
        return self.size_bytes / BYTES_PER_MB


@dataclasses.dataclass(frozen=True)
class Rollback:
    """What ``rollback`` changed: CURRENT before (None if it was missing or unreadable) and after."""

    previous: str | None
    current: str


def _tree_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # a file removed while listing (a prune, a staging cleanup)
                total += (Path(dirpath) / name).stat().st_size
    return total


def _quick_problems(bundle_dir: Path, manifest: Manifest) -> list[str]:
    """The manifest's own checks that need no hashing: build id = directory, listed files present at their size."""
    from indexer.bundle.reader import _listing_problems

    problems = _listing_problems(bundle_dir, manifest)
    for name, meta in sorted(manifest.files.items()):
        path = bundle_dir / name
        try:
            size = path.stat().st_size
        except OSError:
            problems.append(f"{path} is missing")
            continue
        if size != meta.bytes:
            problems.append(f"{path} is truncated or modified: expected {meta.bytes} bytes, got {size}")
    return problems


def _describe(path: Path, build_id: str, current: str | None, verify: bool) -> BuildRow:
    from indexer.bundle.reader import load_bundle, read_manifest

    row = BuildRow(build_id, path, finished=True, is_current=build_id == current, size_bytes=_tree_bytes(path))
    try:
        manifest = read_manifest(path)
    except BundleError as exc:
        return dataclasses.replace(row, problems=(str(exc),), checked="none")
    if verify:
        try:
            load_bundle(path, verify=True)
            problems: list[str] = []
        except BundleError as exc:
            problems = str(exc).split("; ")
    else:
        problems = _quick_problems(path, manifest)
    return dataclasses.replace(
        row,
        created_at=manifest.created_at,
        item_count=manifest.item_count,
        failure_count=manifest.failure_count,
        index_type=manifest.index.type,
        problems=tuple(problems),
        checked="full" if verify else "quick",
    )


def describe_builds(root: Path, verify: bool = True, include_staging: bool = False) -> list[BuildRow]:
    """Every published build of ``root``, oldest first (build ids sort by time), each checked.

    ``verify=True`` runs ``load_bundle(verify=True)`` on each (checksums, index, ids: what a server checks before
    serving); ``verify=False`` reads only manifests and file sizes. ``include_staging`` adds the unfinished
    ``builds/.staging-*`` directories (last, ``finished=False``). A corrupt CURRENT marks no build current.
    """
    try:
        current = read_current(root, missing_ok=True)
    except BundleError:
        current = None
    rows = [_describe(root / BUILDS / build_id, build_id, current, verify) for build_id in list_builds(root)]
    if include_staging and (root / BUILDS).is_dir():
        for path in sorted((root / BUILDS).glob(f"{STAGING_PREFIX}*")):
            rows.append(
                BuildRow(
                    build_id=path.name[len(STAGING_PREFIX) :],
                    path=path,
                    finished=False,
                    is_current=False,
                    size_bytes=_tree_bytes(path),
                    problems=("unfinished: a build in progress, or one that was killed",),
                    checked="none",
                )
            )
    return rows


def _rollback_target(root: Path, current: str | None, build_id: str | None) -> str:
    published = list_builds(root)
    if build_id is not None:
        if build_id not in published:  # names from the directory listing: no path can escape builds/
            raise BundleError(
                f"unknown build {build_id!r}: expected one of the published builds in {root / BUILDS} "
                f"({', '.join(published) or 'none'})"
            )
        if build_id == current:
            raise BundleError(f"{build_id} is already CURRENT in {root}: nothing to roll back")
        return build_id
    if current is None:
        raise BundleError(f"{root / CURRENT} does not exist: nothing to roll back from (name a build to publish)")
    older = [b for b in published if b < current]
    if not older:
        raise BundleError(f"nothing to roll back to: no published build in {root / BUILDS} is older than {current}")
    return older[-1]


def rollback(root: Path, build_id: str | None = None) -> Rollback:
    """Point CURRENT at ``build_id`` (default: the newest published build older than CURRENT), atomically.

    Holds the build lock (a running build refuses it, and it refuses a build), verifies the target whole with
    ``load_bundle(verify=True)`` *before* switching, then replaces CURRENT by rename. Refusals are BundleError
    (BuildError if a build holds the lock); CURRENT is then unchanged. A running server notices by itself.
    An unreadable CURRENT can be repaired by naming a build.
    """
    from indexer.bundle.reader import load_bundle

    with build_lock(root):
        try:
            current = read_current(root, missing_ok=True)
        except BundleError:
            if build_id is None:
                raise
            current = None  # a corrupt CURRENT: publishing a named, verified build repairs it
        target = _rollback_target(root, current, build_id)
        try:
            load_bundle(root / BUILDS / target, verify=True)
        except BundleError as exc:
            raise BundleError(f"build {target} fails verification, CURRENT unchanged: {exc}") from exc
        write_current(root, target)
        log.info("CURRENT: %s -> %s", current, target)
    return Rollback(previous=current, current=target)
