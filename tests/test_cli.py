"""The command-line tools end to end: posters-serve as a process, posters-query, signals."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from indexer import bundle as bundles
from server.app import IMAGE_SEARCH_HEALTH
from server.client import PosterClient
from tests.conftest import DEMO_COUNT
from tests.grpc_helpers import serve_command

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 120.0


def _wait_for_file(path: Path, proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"server exited early with {proc.returncode}"
        if path.exists():
            return path.read_text()
        time.sleep(0.1)  # polling a file written by another process, bounded by the deadline
    raise TimeoutError(path)


@pytest.fixture()
def server_process(tmp_path: Path, demo_root: Path) -> Iterator[tuple[subprocess.Popen, str, Path]]:
    """posters-serve on a copy of the demo bundle whose CURRENT is not yet written (nothing to serve)."""
    root = tmp_path / "root"
    shutil.copytree(demo_root / "builds", root / "builds")
    port_file = tmp_path / "port"
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        serve_command(root, port_file, "--poll", "3600", "--access-log", "--log-format", "json"),
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        port = int(_wait_for_file(port_file, proc, START_TIMEOUT))
        yield proc, f"127.0.0.1:{port}", root
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def _query(target: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "server.client.cli", "--target", target, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_serve_sighup_query_and_graceful_stop(
    server_process, demo_root: Path, demo_catalog: Path, tmp_path: Path
) -> None:
    proc, target, root = server_process
    with PosterClient(target) as client:
        assert client.health() == "NOT_SERVING"
        waiting = _query(target, "similar", "1")
        assert waiting.returncode == 1 and "UNAVAILABLE" in waiting.stderr, waiting.stderr
        # publish, then SIGHUP: the server loads at once (it polls only hourly here); the health Watch stream
        # reports SERVING as soon as the bundle is in (no polling)
        build_id = bundles.read_current(demo_root)
        (root / "CURRENT.tmp").write_text(build_id)
        os.replace(root / "CURRENT.tmp", root / "CURRENT")
        proc.send_signal(signal.SIGHUP)
        client.wait_until_serving(timeout=START_TIMEOUT)
        # index queries are answered first; image search says when its model is loaded (its own health service)
        client.wait_until_serving(timeout=START_TIMEOUT, service=IMAGE_SEARCH_HEALTH)
        assert client.info()["bundle_version"] == build_id
    out = _query(target, "similar", "1", "-k", "3")
    assert out.returncode == 0, out.stderr
    assert "3 results from bundle" in out.stdout
    data = json.loads(_query(target, "similar", "1", "-k", "4", "--json").stdout)
    assert len(data["neighbors"]) == 4 and data["exact"]
    sheet = tmp_path / "sheet.png"
    out = _query(
        target,
        "like",
        "1",
        "2:0.5",
        "--not",
        "3",
        "-k",
        "5",
        "--sheet",
        str(sheet),
        "--posters",
        str(demo_catalog / "posters"),
    )
    assert out.returncode == 0, out.stderr
    with Image.open(sheet) as im:
        assert im.size[0] > 6 * 150 and im.size[1] > 250  # query + 5 neighbours, with captions
    poster = next((demo_catalog / "posters").iterdir())
    assert _query(target, "image", str(poster), "-k", "2").returncode == 0
    with PosterClient(target) as client:
        word = client.items([1])[0].title.split()[0]
    titles = _query(target, "title", word.lower())
    assert titles.returncode == 0 and titles.stdout.split()[0] == "1" and word in titles.stdout
    bad = _query(target, "similar", "987654")
    assert bad.returncode == 1 and "NOT_FOUND" in bad.stderr and "987654" in bad.stderr
    info = _query(target, "info")
    assert f"item_count         {DEMO_COUNT}" in info.stdout

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    raw = (tmp_path / "server.log").read_text().splitlines()
    # every line is one JSON object: TensorFlow's native start-up lines are records too, not noise
    lines = [json.loads(line) for line in raw]
    assert all(dt.datetime.fromisoformat(r["time"]).utcoffset() == dt.timedelta(0) for r in lines)
    access = [r for r in lines if r.get("method") == "SimilarToItem"]
    assert access and all(r.get("request_id") for r in access)
    assert any(r["code"] == "NOT_FOUND" for r in access)
    assert any(r["code"] == "UNAVAILABLE" for r in access)
    assert any("stopped" in r["message"] for r in lines)


def test_serve_help_and_defaults() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "server.cli", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    ).stdout
    assert "127.0.0.1" in out and "50051" in out
    for option in (
        "--index",
        "--tls-cert",
        "--tls-client-ca",
        "--token-file",
        "--metrics-port",
        "--max-k",
        "--max-image-bytes",
        "--no-image-search",
        "--poll",
        "--grace",
    ):
        assert option in out, option


def test_query_help_lists_commands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "server.client.cli", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    ).stdout
    for command in ("similar", "like", "image", "title", "info"):
        assert command in out


@pytest.mark.skipif(os.environ.get("POSTERS_SKIP_DEMO") == "1", reason="demo disabled")
def test_demo_end_to_end(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "server.demo", "--workdir", str(tmp_path / "demo"), "--count", "40"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "server stopped cleanly (exit code 0)" in out.stdout
    sheets = sorted(p.name for p in (tmp_path / "demo" / "sheets").glob("*.png"))
    assert "like.png" in sheets and "image.png" in sheets and len(sheets) >= 4
    line = next(row for row in out.stdout.splitlines() if row.startswith("== sequels"))
    hits, total = map(int, line.split("for ")[1].split(" movies")[0].split(" of "))
    assert total > 0 and hits / total >= 0.8, line
