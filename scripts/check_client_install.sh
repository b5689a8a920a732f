#!/usr/bin/env bash
# A client-only install in an empty venv: `pip install .` (no extras) must give a working posters-query.
# Starts posters-serve from the full .venv on a small generated bundle (127.0.0.1, any free port), runs
# `posters-query info` from the client venv, and prints the client install's size.
# Usage: scripts/check_client_install.sh   (needs scripts/setup.sh's .venv; ~1 minute; PyPI access)
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d /tmp/posters-client-XXXXXX)
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --upgrade pip
"$work/venv/bin/python" -m pip install --quiet .
if "$work/venv/bin/python" -c "import faiss" 2>/dev/null || "$work/venv/bin/python" -c "import pandas" 2>/dev/null \
   || "$work/venv/bin/python" -c "import tensorflow" 2>/dev/null; then
  echo "FAIL: the client-only install pulled in FAISS, pandas or TensorFlow" >&2; exit 1
fi
if "$work/venv/bin/posters-index" --help 2>"$work/err.txt"; then echo "FAIL: posters-index ran without [index]" >&2; exit 1; fi
grep -q "needs the \[index\] extra" "$work/err.txt" || { cat "$work/err.txt" >&2; echo "FAIL: no hint" >&2; exit 1; }
size=$(du -sm "$work/venv/lib" | cut -f1)
full=$(du -sm .venv/lib | cut -f1)

.venv/bin/python - "$work" <<'PY'
import sys
from pathlib import Path
import numpy as np
work = Path(sys.argv[1])
rng = np.random.default_rng(0)
np.savez(work / "v.npz", ids=np.arange(1, 101), vectors=rng.normal(size=(100, 16)).astype("float32"))
PY
.venv/bin/posters-index build --embeddings "$work/v.npz" --out "$work/index" --quiet >/dev/null 2>&1
.venv/bin/posters-serve --index "$work/index" --port 0 --port-file "$work/port" --no-image-search \
    >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 600); do [ -s "$work/port" ] && break; sleep 0.1; done
[ -s "$work/port" ] || { cat "$work/server.log" >&2; echo "FAIL: server did not start" >&2; exit 1; }
"$work/venv/bin/posters-query" --target "127.0.0.1:$(cat "$work/port")" info > "$work/info.txt"
grep -q "item_count *100" "$work/info.txt" || { cat "$work/info.txt" >&2; echo "FAIL: unexpected info" >&2; exit 1; }
echo "client-only install: posters-query info OK; installed size ${size} MB (the full [test] venv: ${full} MB)"
