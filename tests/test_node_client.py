"""A client in another language (Node.js, @grpc/grpc-js + @grpc/proto-loader from npm) built from the
.proto alone, against a real server: item, filtered, image, batch with per-query statuses, posters, and an
error with its structured details (google.rpc.BadRequest / ErrorInfo). scripts/install_node_client.sh
installs its packages (CI runs it); without Node.js or them the test is skipped, saying so."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

from server.types import Filter, SearchOptions
from tests.grpc_helpers import serve

NODE_DIR = Path(__file__).resolve().parent / "node_client"


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
@pytest.mark.skipif(
    not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir(),
    reason="npm packages missing: run scripts/install_node_client.sh",
)
def test_node_client_against_a_real_server(demo_root: Path, demo_catalog: Path) -> None:
    with serve(demo_root, image_search=True) as served:
        item = 1
        genre = served.client.items([item])[0].genres[0]
        poster = demo_catalog / "posters" / served.client.items([7])[0].poster
        out = subprocess.run(
            ["node", str(NODE_DIR / "check.mjs"), served.target, str(poster), str(item), genre],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        got = json.loads(out.stdout)
        # the same answers as the Python client (the oracle here is the server's own gRPC API)
        assert got["item"] == [h.item.item_id for h in served.client.similar(item, SearchOptions(k=5)).hits]
        want = served.client.similar(item, SearchOptions(k=5, filter=Filter(genres_any=(genre,))))
        assert [f["id"] for f in got["filtered"]] == [h.item.item_id for h in want.hits]
        assert all(genre in f["genres"] for f in got["filtered"])
        assert got["image"][0] == 7
        assert got["batch"]["first"] == got["item"][:2]
        assert [s["code"] for s in got["batch"]["statuses"]] == [0, grpc.StatusCode.NOT_FOUND.value[0]]
        assert "query 1: item 987654321" in got["batch"]["statuses"][1]["message"]
        assert got["posters"]["ids"] == [item] and got["posters"]["missing"] == [987654321]
        assert got["posters"]["jpeg_magic"] == ["ffd8ff"]  # a JPEG
        error = got["error"]
        assert error["code"] == "INVALID_ARGUMENT" and "k expected 1..1000" in error["message"]
        types = {d["type"]: d for d in error["details"]}
        assert types["google.rpc.ErrorInfo"]["reason"] == "INVALID_ARGUMENT"
        assert types["google.rpc.ErrorInfo"]["domain"] == "posters.v1"
        assert types["google.rpc.BadRequest"]["fieldViolations"][0]["field"] == "options.k"
