"""``posters-serve --processes N``: a supervisor process and N worker processes sharing one port.

The supervisor loads no bundle. It reserves the port (a bound, never listening socket with SO_REUSEPORT:
``--port 0`` picks one free port for all), then starts N copies of ``posters-serve`` (``python -m
server.cli``) with the same arguments plus ``--worker-index I``: each worker binds the port with
SO_REUSEPORT (``grpc.so_reuseport``), so the kernel spreads incoming connections over the listening
workers (one connection stays with one worker), and loads the bundle itself.

- Readiness: a worker writes its own port file once it listens; when all N have, the supervisor writes
  ``--port-file``. A worker that exits before listening at start stops everything: the supervisor exits
  with that worker's exit code (2 for a configuration error such as a bad TLS file).
- Reloads: each worker watches ROOT/CURRENT (``server.reloader``), the single source of truth, so all
  converge on the bundle it names. The supervisor also stats CURRENT every 0.5 s (a stat: it is replaced
  by rename) and sends every worker SIGHUP when it changes, so they reload together instead of each on its
  own --poll tick; SIGHUP sent to the supervisor is forwarded too.
- Failures: a worker that dies is restarted after a backoff (0.5 s, doubling up to 30 s; reset once a
  worker has run for a minute), logged with its exit status. Five deaths in a row before listening: the
  supervisor gives up, stops the others and exits 1.
- Shutdown: SIGTERM/SIGINT are forwarded as SIGTERM; workers drain within ``--grace`` seconds (their own
  graceful stop); any still alive shortly after are killed (logged, exit code 1).
- Orphans: each worker holds the read end of a pipe whose write end only the supervisor holds; when the
  supervisor dies (even by SIGKILL) the pipe closes and the workers shut down.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

TICK_SECONDS = 0.1  # the supervisor's loop period (signals wake it at once)
CURRENT_CHECK_SECONDS = 0.5  # the supervisor stats CURRENT this often (or every --poll seconds if shorter)
RESTART_BACKOFF_INITIAL = 0.5
RESTART_BACKOFF_MAX = 30.0
STABLE_SECONDS = 60.0  # a worker that ran this long gets its restart backoff reset
MAX_START_FAILURES = 5  # consecutive deaths before listening, then the supervisor gives up
START_TIMEOUT_SECONDS = 120.0  # a worker that does not listen within this is killed (a start failure)
STOP_MARGIN_SECONDS = 5.0  # beyond --grace, for interpreter exit, before stragglers are killed
EXIT_FAILURE = 1
WORKER_MODULE = "server.cli"


@dataclass(frozen=True)
class SupervisorConfig:
    processes: int
    index_root: Path  # whose CURRENT is watched, to nudge workers together
    host: str
    port: int  # 0: any free port, shared by every worker
    grace: float
    poll_interval: float
    port_file: Path | None = None
    metrics_port: int | None = None  # worker I serves metrics on metrics_port + I (0: each any free port)
    start_timeout: float = START_TIMEOUT_SECONDS


class StartFailure(Exception):
    """The workers could not be started; ``exit_code`` is what the supervisor exits with."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def reserve_port(host: str, port: int) -> tuple[list[socket.socket], int]:
    """Bind (not listen) ``host:port`` with SO_REUSEPORT on every address ``host`` resolves to; returns the
    sockets (keep them open: they hold the port while workers restart) and the port. OSError if taken."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((address[0], port, *address[2:]))
            port = sock.getsockname()[1]  # port 0: the first bind picks it, the others take the same
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets, port


def worker_command(
    argv: Sequence[str], index: int, port: int, port_file: Path, metrics_port: int | None, fd: int
) -> list[str]:
    """The worker's command line: the supervisor's own arguments, then overrides (argparse: the last wins)."""
    cmd = [sys.executable, "-m", WORKER_MODULE, *argv, "--processes", "1", "--port", str(port)]
    cmd += ["--port-file", str(port_file), "--worker-index", str(index), "--supervisor-fd", str(fd)]
    if metrics_port is not None:
        cmd += ["--metrics-port", str(metrics_port + index if metrics_port else 0)]
    return cmd


@dataclass
class _Worker:
    index: int
    port_file: Path
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    ready: bool = False
    start_failures: int = 0  # consecutive deaths before listening
    backoff: float = 0.0  # the next restart's delay (0: none yet)
    restart_at: float | None = None  # when a dead worker is started again

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _exit_status(code: int) -> str:
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"


class Supervisor:
    def __init__(self, config: SupervisorConfig, argv: Sequence[str]) -> None:
        if config.processes < 1:
            raise ValueError(f"processes expected >= 1, got {config.processes}")
        self.config = config
        self._argv = list(argv)
        self._wake = threading.Event()
        self._stop_requested = False
        self._hup_requested = False
        self._run_dir = Path(tempfile.mkdtemp(prefix="posters-serve-"))
        self._workers = [_Worker(i, self._run_dir / f"worker-{i}.port") for i in range(config.processes)]
        self._port = 0
        self._pipe_read = -1
        self._current_stamp: tuple[int, int] | None = None

    # ---- signals (handlers only set flags; the loop acts) ----------------------------------------------------
    def request_stop(self) -> None:
        self._stop_requested = True
        self._wake.set()

    def request_reload(self) -> None:
        self._hup_requested = True
        self._wake.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
        signal.signal(signal.SIGINT, lambda *_: self.request_stop())
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())

    # ---- the run ---------------------------------------------------------------------------------------------
    def run(self) -> int:
        """Start the workers, keep them running until SIGTERM/SIGINT, stop them; the exit code."""
        try:
            sockets, self._port = reserve_port(self.config.host, self.config.port)
        except OSError as exc:
            raise StartFailure(f"cannot listen on {self.config.host}:{self.config.port}: {exc}", 2) from exc
        self._pipe_read, pipe_write = os.pipe()  # pipe_write is never written: it closes when we die
        try:
            return self._supervise()
        finally:
            self._stop_all()
            os.close(self._pipe_read)
            os.close(pipe_write)
            for sock in sockets:
                sock.close()
            shutil.rmtree(self._run_dir, ignore_errors=True)

    def _supervise(self) -> int:
        log.info("starting %d worker processes on %s:%d", len(self._workers), self.config.host, self._port)
        for worker in self._workers:
            self._start(worker)
        announced = False
        self._current_stamp = self._stamp_current()
        check_every = min(self.config.poll_interval, CURRENT_CHECK_SECONDS)
        next_current_check = time.monotonic() + check_every
        while not self._stop_requested:
            for worker in self._workers:
                self._check(worker, startup=not announced)
            if not announced and all(w.ready for w in self._workers):
                announced = True
                self._announce()
            if self._hup_requested:
                self._hup_requested = False
                self._signal_ready(signal.SIGHUP, "SIGHUP received")
            if time.monotonic() >= next_current_check:
                next_current_check = time.monotonic() + check_every
                self._nudge_on_current_change()
            self._wake.wait(TICK_SECONDS)
            self._wake.clear()
        log.info("shutting down %d workers (grace %.1fs)", len(self._workers), self.config.grace)
        return self._stop_all()

    def _announce(self) -> None:
        pids = ", ".join(str(w.proc.pid) for w in self._workers if w.proc is not None)
        log.info("%d workers listening on %s:%d (pids %s)", len(self._workers), self.config.host, self._port, pids)
        if self.config.port_file is not None:
            tmp = self.config.port_file.with_suffix(".tmp")
            tmp.write_text(f"{self._port}\n")
            os.replace(tmp, self.config.port_file)

    def _start(self, worker: _Worker) -> None:
        worker.port_file.unlink(missing_ok=True)
        cmd = worker_command(
            self._argv, worker.index, self._port, worker.port_file, self.config.metrics_port, self._pipe_read
        )
        worker.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, pass_fds=(self._pipe_read,))
        worker.started_at = time.monotonic()
        worker.ready = False
        worker.restart_at = None
        log.info("worker %d started (pid %d)", worker.index, worker.proc.pid)

    def _check(self, worker: _Worker, startup: bool) -> None:
        now = time.monotonic()
        if worker.proc is None or worker.restart_at is not None:
            if worker.restart_at is not None and now >= worker.restart_at:
                self._start(worker)
            return
        code = worker.proc.poll()
        if code is None:
            if not worker.ready and worker.port_file.exists():
                worker.ready = True
                worker.start_failures = 0
                log.info("worker %d (pid %d) listening", worker.index, worker.proc.pid)
            elif not worker.ready and now - worker.started_at > self.config.start_timeout:
                log.error(
                    "worker %d (pid %d) not listening after %.0fs: killing it",
                    worker.index,
                    worker.proc.pid,
                    now - worker.started_at,
                )
                worker.proc.kill()
                worker.proc.wait()
                self._died(worker, worker.proc.returncode, startup, now)
            return
        self._died(worker, code, startup, now)

    def _died(self, worker: _Worker, code: int, startup: bool, now: float) -> None:
        pid = worker.proc.pid if worker.proc is not None else 0
        if not worker.ready:
            worker.start_failures += 1
            if startup:
                raise StartFailure(
                    f"worker {worker.index} (pid {pid}) exited before listening ({_exit_status(code)}): "
                    "see its log lines above",
                    code if code > 0 else EXIT_FAILURE,
                )
            if worker.start_failures >= MAX_START_FAILURES:
                raise StartFailure(
                    f"worker {worker.index} died {worker.start_failures} times in a row before listening "
                    f"(last: {_exit_status(code)}); giving up"
                )
        if now - worker.started_at >= STABLE_SECONDS:
            worker.backoff = 0.0
        worker.backoff = min(worker.backoff * 2, RESTART_BACKOFF_MAX) if worker.backoff else RESTART_BACKOFF_INITIAL
        worker.restart_at = now + worker.backoff
        worker.ready = False
        log.error(
            "worker %d (pid %d) died (%s) after %.1fs; restarting it in %.1fs",
            worker.index,
            pid,
            _exit_status(code),
            now - worker.started_at,
            worker.backoff,
        )

    def _signal_ready(self, signum: signal.Signals, why: str) -> None:
        """Send a signal to every listening worker (earlier, its handlers may not be installed yet; a starting
        worker reads CURRENT anyway)."""
        ready = [w for w in self._workers if w.ready and w.alive]
        log.info("%s: sending %s to %d workers", why, signum.name, len(ready))
        for worker in ready:
            assert worker.proc is not None
            with contextlib.suppress(ProcessLookupError):
                worker.proc.send_signal(signum)

    def _stamp_current(self) -> tuple[int, int] | None:
        """CURRENT's identity (inode, mtime): it is replaced by rename, so a new bundle changes it."""
        try:
            st = (self.config.index_root / "CURRENT").stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns

    def _nudge_on_current_change(self) -> None:
        stamp = self._stamp_current()
        if stamp != self._current_stamp:
            self._current_stamp = stamp
            self._signal_ready(signal.SIGHUP, "CURRENT changed")

    def _stop_all(self) -> int:
        """SIGTERM every live worker, wait for them within the grace (plus a margin), kill stragglers."""
        live = [w for w in self._workers if w.alive]
        for worker in live:
            assert worker.proc is not None
            with contextlib.suppress(ProcessLookupError):
                worker.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.grace + STOP_MARGIN_SECONDS
        status = 0
        for worker in live:
            assert worker.proc is not None
            try:
                code = worker.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d (pid %d) still running after the grace: killing it", worker.index, worker.proc.pid)
                worker.proc.kill()
                worker.proc.wait()
                status = EXIT_FAILURE
                continue
            if code not in (0, -signal.SIGTERM):
                log.error("worker %d (pid %d) stopped with %s", worker.index, worker.proc.pid, _exit_status(code))
                status = EXIT_FAILURE
        for worker in self._workers:
            worker.restart_at = None
        if live:
            log.info("stopped %d workers", len(live))
        return status


def supervise(config: SupervisorConfig, argv: Sequence[str]) -> int:
    """Run the supervisor in this process until SIGTERM/SIGINT; the exit code (non-zero if workers cannot start
    or did not stop cleanly)."""
    supervisor = Supervisor(config, argv)
    supervisor.install_signal_handlers()
    try:
        return supervisor.run()
    except StartFailure as exc:
        log.error("%s", exc)
        return exc.exit_code


# ---- the worker's side ----------------------------------------------------------------------------------------
def watch_supervisor(fd: int, on_gone: Callable[[], None]) -> threading.Thread:
    """In a worker: call ``on_gone`` when the supervisor's pipe closes (the supervisor exited or was killed)."""

    def wait() -> None:
        try:
            while os.read(fd, 1):
                pass
        except OSError:
            pass
        log.warning("the supervisor is gone: shutting down")
        on_gone()

    thread = threading.Thread(target=wait, name="supervisor-watch", daemon=True)
    thread.start()
    return thread


def tag_worker_logs(index: int) -> None:
    """Every log record of this worker carries ``worker`` (a JSON field; in text lines after the level)."""
    factory = logging.getLogRecordFactory()

    def make(*args: object, **kwargs: object) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        record.worker = index
        return record

    logging.setLogRecordFactory(make)
    from server.logs import TEXT_FORMAT, IsoTextFormatter

    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, IsoTextFormatter):
            handler.setFormatter(IsoTextFormatter(TEXT_FORMAT.replace("%(name)s", "worker-%(worker)s %(name)s")))
