#!/usr/bin/env bash
# Set up (first run only) and run the test suite (about 6 minutes on 2 cores after setup).
# Extra arguments go to pytest, e.g. scripts/test.sh -m slow  or  scripts/test.sh tests/test_searcher.py
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
