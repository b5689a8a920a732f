"""Served-throughput helpers for scripts/bench_concurrency.py --processes: start posters-serve as a real process
(one process, or a supervisor with N workers), drive it from client threads with pre-serialized requests over
one connection per thread, and measure QPS, latency and the server's CPU per request (psutil cpu_times of every
server process before and after, divided by the requests answered).

The client side is kept cheap on purpose (requests serialized once, responses not parsed) because it shares
the machine's cores with the server.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import psutil
from bench_common import ROOT, percentiles_ms

SERVICE = "/posters.v1.PosterSimilarity/"
START_TIMEOUT_SECONDS = 300.0
STOP_TIMEOUT_SECONDS = 60.0
CALL_TIMEOUT_SECONDS = 30.0
POLL_SECONDS = 0.05
MAX_PROBE_CONNECTIONS = 64  # fresh connections tried to see every worker answer
WARMUP_CALLS = 20  # per thread, before the timed window
K = 10
BYTES_PER_MB = 2**20


@dataclass(frozen=True)
class Workload:
    name: str
    method: str
    payloads: tuple[bytes, ...]  # serialized requests, used round-robin


def workloads(item_ids: np.ndarray, queries: np.ndarray) -> list[Workload]:
    """Item queries (the neighbour-table path when the bundle has one), and the same held-out vector queries
    packed (vector_f32le) and as the repeated float field."""
    from server._proto import posters_pb2 as pb

    options = pb.SearchOptions(k=K)
    items = tuple(pb.SimilarToItemRequest(item_id=int(i), options=options).SerializeToString() for i in item_ids)
    packed = tuple(
        pb.SearchByVectorRequest(vector_f32le=np.asarray(q, "<f4").tobytes(), options=options).SerializeToString()
        for q in queries
    )
    repeated = tuple(pb.SearchByVectorRequest(vector=q.tolist(), options=options).SerializeToString() for q in queries)
    return [
        Workload("item", "SimilarToItem", items),
        Workload("vector packed", "SearchByVector", packed),
        Workload("vector repeated", "SearchByVector", repeated),
    ]


def _channel(target: str) -> grpc.Channel:
    return grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])  # one connection each


def _worker_pid(channel: grpc.Channel) -> int | None:
    from server._proto import posters_pb2 as pb

    call = channel.unary_unary(SERVICE + "GetIndexInfo", request_serializer=None, response_deserializer=None)
    try:
        return pb.IndexInfo.FromString(call(b"", timeout=CALL_TIMEOUT_SECONDS)).process_id
    except grpc.RpcError:
        return None  # not serving yet


@dataclass
class Server:
    proc: subprocess.Popen
    target: str
    processes: list[psutil.Process]  # the supervisor (if any) and its workers

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self.processes:
            t = p.cpu_times()
            total += t.user + t.system
        return total

    def memory(self) -> list[dict[str, float]]:
        out = []
        for p in self.processes:
            m = p.memory_info()
            rss, shared = round(m.rss / BYTES_PER_MB, 1), round(m.shared / BYTES_PER_MB, 1)
            out.append({"pid": p.pid, "rss_mb": rss, "shared_mb": shared})
        return out


@contextlib.contextmanager
def started(root: Path, processes: int, slots: int, workdir: Path) -> Iterator[Server]:
    """posters-serve --processes N on 127.0.0.1 (any free port), every worker serving; SIGTERM on exit."""
    port_file = workdir / f"port-{processes}"
    cmd = [sys.executable, "-m", "server.cli", "--index", str(root), "--port", "0", "--port-file", str(port_file)]
    cmd += ["--no-image-search", "--poll", "3600", "--processes", str(processes), "--workers", str(slots)]
    with (workdir / f"server-{processes}.log").open("w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"posters-serve --processes {processes} did not start; see {log.name}")
            time.sleep(POLL_SECONDS)  # another process's state, bounded by the deadline
        target = f"127.0.0.1:{int(port_file.read_text())}"
        root_proc = psutil.Process(proc.pid)
        workers = {c.pid for c in root_proc.children()} or {proc.pid}
        seen: set[int] = set()
        for _ in range(MAX_PROBE_CONNECTIONS):
            while time.monotonic() < deadline:
                with contextlib.closing(_channel(target)) as channel:
                    pid = _worker_pid(channel)
                if pid is not None:
                    seen.add(pid)
                    break
                time.sleep(POLL_SECONDS)
            if seen >= workers:
                break
        if not seen >= workers:
            raise SystemExit(f"expected every worker {sorted(workers)} to answer, got {sorted(seen)}")
        yield Server(proc, target, [root_proc, *(psutil.Process(p) for p in workers if p != proc.pid)])
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def measure(server: Server, workload: Workload, threads: int, seconds: float) -> dict:
    """T threads, one connection each, calling for ``seconds`` after a warm-up; QPS, latency, server CPU."""
    channels = [_channel(server.target) for _ in range(threads)]
    pids = Counter(_worker_pid(c) for c in channels)  # which worker each connection landed on
    latencies: list[list[float]] = [[] for _ in range(threads)]
    failures = [0] * threads
    gate = threading.Barrier(threads + 1)
    stop = threading.Event()

    def client(n: int) -> None:
        call = channels[n].unary_unary(SERVICE + workload.method, request_serializer=None, response_deserializer=None)
        payloads = workload.payloads
        for i in range(WARMUP_CALLS):
            call(payloads[(n + i) % len(payloads)], timeout=CALL_TIMEOUT_SECONDS)
        gate.wait()
        mine, i = latencies[n], n
        while not stop.is_set():
            t = time.perf_counter()
            try:
                call(payloads[i % len(payloads)], timeout=CALL_TIMEOUT_SECONDS)
            except grpc.RpcError:
                failures[n] += 1
            mine.append(time.perf_counter() - t)
            i += threads

    pool = [threading.Thread(target=client, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    gate.wait()  # every thread warmed up
    cpu_before = server.cpu_seconds()
    began = time.perf_counter()
    time.sleep(seconds)  # the measurement window
    stop.set()
    for t in pool:
        t.join()
    wall = time.perf_counter() - began
    cpu = server.cpu_seconds() - cpu_before
    for c in channels:
        c.close()
    done = [x for per in latencies for x in per]
    return {
        "workload": workload.name,
        "threads": threads,
        "requests": len(done),
        "failed": sum(failures),
        "qps": round(len(done) / wall, 1),
        "server_cpu_ms_per_request": round(1000 * cpu / max(1, len(done)), 4),
        "connections_per_worker": sorted(pids.values(), reverse=True),
        **percentiles_ms(done),
    }
