"""``posters-serve --processes 2`` as real processes on 127.0.0.1: both workers answer (told apart by
GetIndexInfo.process_id, each connection stays with one worker), a new bundle reaches every worker with zero
failed requests under load, SIGHUP is forwarded, a worker killed with SIGKILL is restarted while the port keeps
answering, SIGTERM stops everything within the grace, and workers that cannot start make the supervisor fail."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest

from indexer import bundle as bundles
from indexer.build import BuildConfig, build
from indexer.index import IndexSpec
from indexer.precomputed import PrecomputedConfig
from server._proto import posters_pb2 as pb
from server._proto import posters_pb2_grpc as pb_grpc
from tests.conftest import QUIET, assert_exact_topk, clustered_vectors
from tests.grpc_helpers import serve_command

ROOT = Path(__file__).resolve().parent.parent
PROCESSES = 2
ITEMS = 400
DIM = 16
K = 5
GRACE = 2.0
STOP_MARGIN = 8.0  # the supervisor's own margin (5 s) plus process exit
START_TIMEOUT = 60.0
STATE_TIMEOUT = 30.0
MAX_CHANNELS = 64  # fresh connections tried to reach every worker (each lands on one at random)
LOAD_THREADS = 4
MAX_REQUESTS_PER_THREAD = 50_000  # the load loop is bounded even if the stop event never comes
RSS_TOLERANCE = 0.25  # GetIndexInfo's RSS against psutil's, read a moment apart


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll another process's state with a deadline (not a sleep standing in for synchronisation)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def _vectors(seed: int) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(ITEMS, dtype=np.int64) * 5 + 1, clustered_vectors(ITEMS, DIM, clusters=10, seed=seed)


def _publish(root: Path, folder: Path, seed: int) -> str:
    ids, x = _vectors(seed)
    np.savez(folder / f"v{seed}.npz", ids=ids, vectors=x)
    config = BuildConfig(
        index_root=root,
        precomputed=PrecomputedConfig(folder / f"v{seed}.npz"),
        index=IndexSpec(kind="flat"),
        pipeline=QUIET,
        neighbours_k=0,
    )
    return build(config).build_id


def _channel(target: str) -> grpc.Channel:
    # a connection of its own (gRPC shares subchannels between identical channels by default)
    return grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


def _packed(q: np.ndarray) -> bytes:
    return np.asarray(q, "<f4").tobytes()


@dataclass
class Cluster:
    proc: subprocess.Popen
    target: str
    root: Path
    folder: Path
    log: Path
    seeds: dict[str, int]  # build id -> the seed of its vectors

    def publish(self, seed: int) -> str:
        build_id = _publish(self.root, self.folder, seed)
        self.seeds[build_id] = seed
        return build_id

    def workers(self) -> set[int]:
        return {c.pid for c in psutil.Process(self.proc.pid).children() if c.status() != psutil.STATUS_ZOMBIE}

    def channel_per_worker(self, pids: set[int]) -> dict[int, grpc.Channel]:
        """One open channel connected to each worker (fresh connections until every pid has answered)."""
        found: dict[int, grpc.Channel] = {}
        deadline = time.monotonic() + STATE_TIMEOUT
        for _ in range(MAX_CHANNELS):
            channel = _channel(self.target)
            pid = _info_or_none(channel)
            if pid is not None and pid.process_id in pids and pid.process_id not in found:
                found[pid.process_id] = channel
            else:
                channel.close()
            if set(found) == pids or time.monotonic() > deadline:
                break
        assert set(found) == pids, f"expected answers from workers {sorted(pids)}, got {sorted(found)}"
        return found


def _info_or_none(channel: grpc.Channel) -> pb.IndexInfo | None:
    """GetIndexInfo, or None while that worker has no bundle yet (UNAVAILABLE) or is not reachable."""
    try:
        return pb_grpc.PosterSimilarityStub(channel).GetIndexInfo(pb.GetIndexInfoRequest(), timeout=5)
    except grpc.RpcError as exc:
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return None
        raise


def _wait_for_versions(cluster: Cluster, version: str) -> dict[int, pb.IndexInfo]:
    """Block until every live worker answers GetIndexInfo with ``version`` (deadline STATE_TIMEOUT)."""
    latest: dict[int, pb.IndexInfo] = {}

    def converged() -> bool:
        pids = cluster.workers()
        with contextlib.closing(_channel(cluster.target)) as channel:
            info = _info_or_none(channel)
        if info is not None:
            latest[info.process_id] = info
        return len(pids) == PROCESSES and all(p in latest and latest[p].bundle_version == version for p in pids)

    wait_until(converged, STATE_TIMEOUT, f"every worker to serve {version}")
    return {p: latest[p] for p in cluster.workers()}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    folder = tmp_path_factory.mktemp("processes")
    root = folder / "root"
    first = _publish(root, folder, seed=1)
    port_file, log = folder / "port", folder / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            serve_command(
                root, port_file, "--processes", str(PROCESSES), "--no-image-search", "--poll", "3600",
                "--grace", str(GRACE),
            ),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_until(lambda: port_file.exists() or proc.poll() is not None, START_TIMEOUT, "the workers to listen")
        assert proc.poll() is None, log.read_text()
        c = Cluster(proc, f"127.0.0.1:{port_file.read_text().strip()}", root, folder, log, {first: 1})
        _wait_for_versions(c, first)
        yield c
    finally:
        if proc.poll() is None:
            proc.kill()  # the workers see the supervisor's pipe close and stop themselves
            proc.wait()


def test_both_workers_answer_exactly(cluster: Cluster) -> None:
    pids = cluster.workers()
    assert len(pids) == PROCESSES
    ids, x = _vectors(cluster.seeds[str(bundles.read_current(cluster.root))])
    queries = clustered_vectors(8, DIM, clusters=10, seed=99)
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    channels = cluster.channel_per_worker(pids)
    try:
        for pid, channel in channels.items():
            stub = pb_grpc.PosterSimilarityStub(channel)
            options = pb.SearchOptions(k=K)
            answers = [
                stub.SearchByVector(pb.SearchByVectorRequest(vector_f32le=_packed(q), options=options)) for q in queries
            ]
            assert_exact_topk(
                np.array([[n.item_id for n in a.neighbors] for a in answers]),
                np.array([[n.score for n in a.neighbors] for a in answers]),
                x,
                ids,
                qn,
            )
            info = stub.GetIndexInfo(pb.GetIndexInfoRequest())
            assert info.process_id == pid, "a connection stays with one worker"
            rss = psutil.Process(pid).memory_info().rss
            assert abs(info.process_rss_bytes - rss) <= RSS_TOLERANCE * rss, (info.process_rss_bytes, rss)
    finally:
        for channel in channels.values():
            channel.close()


def test_new_bundle_reaches_every_worker_with_no_failed_requests(cluster: Cluster) -> None:
    old = bundles.read_current(cluster.root)
    pids = cluster.workers()
    channels = cluster.channel_per_worker(pids)
    by_thread = [channels[pid] for pid in sorted(pids)] * (LOAD_THREADS // PROCESSES)
    stop = threading.Event()
    failures: list[str] = []
    versions: list[list[str]] = [[] for _ in by_thread]
    requests = [0] * len(by_thread)
    queries = clustered_vectors(16, DIM, clusters=10, seed=7)

    def load(n: int) -> None:
        stub = pb_grpc.PosterSimilarityStub(by_thread[n])
        for i in range(MAX_REQUESTS_PER_THREAD):
            if stop.is_set():
                return
            try:
                if i % 2:
                    r = stub.SimilarToItem(pb.SimilarToItemRequest(item_id=1 + 5 * (i % ITEMS)), timeout=10)
                else:
                    q = queries[i % len(queries)]
                    r = stub.SearchByVector(pb.SearchByVectorRequest(vector_f32le=_packed(q)), timeout=10)
                if not versions[n] or versions[n][-1] != r.bundle_version:
                    versions[n].append(r.bundle_version)
                requests[n] += 1
            except grpc.RpcError as exc:
                failures.append(f"thread {n} request {i}: {exc.code().name}: {exc.details()}")

    threads = [threading.Thread(target=load, args=(n,)) for n in range(len(by_thread))]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: all(requests), STATE_TIMEOUT, "every load thread to be answered")
        new = cluster.publish(seed=2)
        infos = _wait_for_versions(cluster, new)
        assert set(infos) == pids, "the same workers, none restarted"
        wait_until(lambda: all(v[-1] == new for v in versions), STATE_TIMEOUT, "every load thread to see it")
    finally:
        stop.set()
        for t in threads:
            t.join()
        for channel in channels.values():
            channel.close()
    assert not failures, failures[:5]
    # each connection (one worker) went from the old bundle to the new one once, never back
    assert versions == [[old, new]] * len(by_thread), versions
    assert all(n < MAX_REQUESTS_PER_THREAD for n in requests), "the load ran until the reload was seen"


def test_sighup_to_the_supervisor_reaches_every_worker(cluster: Cluster) -> None:
    serving = bundles.read_current(cluster.root)
    other = next(b for b in bundles.list_builds(cluster.root) if b != serving)
    current = cluster.root / bundles.CURRENT
    before = current.stat()
    # CURRENT rewritten in place with its old mtime: neither the supervisor's CURRENT watch (inode, mtime) nor
    # the workers' polls (--poll 3600) notice; only the forwarded SIGHUP makes the workers re-read it
    current.write_text(f"{other}\n")
    os.utime(current, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (current.stat().st_ino, current.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    cluster.proc.send_signal(signal.SIGHUP)
    _wait_for_versions(cluster, other)
    assert cluster.proc.poll() is None


def test_a_killed_worker_is_restarted_and_the_port_keeps_answering(cluster: Cluster) -> None:
    serving = bundles.read_current(cluster.root)
    pids = cluster.workers()
    victim = min(pids)
    psutil.Process(victim).kill()
    # reaped, not merely a zombie: a multi-threaded process's leader shows Z while its other threads still exit
    # holding the listening socket (connections routed to it then are reset)
    wait_until(lambda: not psutil.pid_exists(victim), STATE_TIMEOUT, "the killed worker to be reaped")
    for _ in range(4):  # fresh connections right after the kill: the surviving worker takes them
        with contextlib.closing(_channel(cluster.target)) as channel:
            info = pb_grpc.PosterSimilarityStub(channel).GetIndexInfo(pb.GetIndexInfoRequest(), timeout=10)
            assert info.process_id != victim
    infos = _wait_for_versions(cluster, serving)
    assert victim not in infos and len(infos) == PROCESSES
    log = cluster.log.read_text()
    assert f"(pid {victim}) died (signal SIGKILL)" in log and "restarting it in" in log


def test_sigterm_stops_every_process_within_the_grace(cluster: Cluster) -> None:
    pids = cluster.workers()
    started = time.monotonic()
    cluster.proc.send_signal(signal.SIGTERM)
    assert cluster.proc.wait(timeout=GRACE + STOP_MARGIN) == 0
    assert time.monotonic() - started <= GRACE + STOP_MARGIN
    assert not [p for p in pids if psutil.pid_exists(p)], "workers left running"


def test_workers_that_cannot_start_fail_the_supervisor(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    command = serve_command(
        tmp_path, tmp_path / "port", "--processes", "2", "--tls-cert", missing, "--tls-key", missing
    )
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=START_TIMEOUT)
    assert run.returncode == 2, run.stderr
    assert "exited before listening (exit code 2)" in run.stderr and missing in run.stderr
    assert not (tmp_path / "port").exists()
