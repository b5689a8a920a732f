#!/usr/bin/env bash
# Set up (first run only) and run the offline demo: catalog -> index -> server -> queries -> contact sheets.
#   scripts/demo.sh --web   the same demo bundle behind posters-serve + posters-web: prints the page's URL
#                           (port $WEB_PORT, default 8080) and serves until Ctrl-C
set -euo pipefail
cd "$(dirname "$0")/.."
web=0
args=()
for arg in "$@"; do
  if [ "$arg" = "--web" ]; then web=1; else args+=("$arg"); fi
done
scripts/setup.sh
if [ "$web" = 0 ]; then
  exec .venv/bin/posters-demo --workdir demo "${args[@]}"
fi

# --web: build the demo bundle if there is none, write its quality reports once, then serve both
if [ ! -s demo/index/CURRENT ]; then
  .venv/bin/posters-demo --workdir demo
fi
build=$(cat demo/index/CURRENT)
if [ ! -f "demo/index/quality/$build/eval/eval.md" ]; then
  echo "== quality reports for the quality page (posters-index eval + analyze, about a minute)"
  .venv/bin/posters-index eval demo/index --copy-sample 20
  .venv/bin/posters-index analyze demo/index
fi
port_file=$(mktemp)
.venv/bin/posters-serve --index demo/index --port 0 --port-file "$port_file" &
serve_pid=$!
trap 'kill -TERM "$serve_pid" 2>/dev/null || true; wait "$serve_pid" 2>/dev/null || true; rm -f "$port_file"' EXIT
until [ -s "$port_file" ]; do
  kill -0 "$serve_pid" 2>/dev/null || { echo "posters-serve exited before listening" >&2; exit 1; }
  sleep 0.2
done
echo "== posters-serve on 127.0.0.1:$(cat "$port_file"); open the URL below (Ctrl-C stops both)"
.venv/bin/posters-web --target "127.0.0.1:$(cat "$port_file")" --quality-dir demo/index/quality \
  --port "${WEB_PORT:-8080}" "${args[@]}"
