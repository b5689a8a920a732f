#!/usr/bin/env bash
# Set up (first run only) and run the offline demo: catalog -> index -> server -> queries -> contact sheets.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/posters-demo --workdir demo "$@"
