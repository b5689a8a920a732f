#!/usr/bin/env bash
# The gates CI runs before the tests: ruff (lint + format check), mypy, buf lint and buf breaking on protos/.
# buf comes from the npm registry (@bufbuild/buf, pinned) into .venv/node on first use.
# Usage: scripts/lint.sh            (after scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
BUF_VERSION=1.75.0
# The last released contract: buf breaking fails on any wire/JSON-incompatible change against it.
PROTO_RELEASE=7ba9154
buf=.venv/node/node_modules/.bin/buf
if [ ! -x "$buf" ] || [ "$("$buf" --version)" != "$BUF_VERSION" ]; then
  npm install --silent --no-audit --no-fund --prefix .venv/node "@bufbuild/buf@$BUF_VERSION" >/dev/null
fi
echo "== ruff check";          .venv/bin/ruff check .
echo "== ruff format --check"; .venv/bin/ruff format --check .
echo "== mypy";                .venv/bin/mypy
echo "== buf lint";            (cd protos && "../$buf" lint)
echo "== buf breaking (against $PROTO_RELEASE)"
"$buf" breaking protos --against ".git#ref=$PROTO_RELEASE,subdir=protos"
echo "lint: all gates passed"
