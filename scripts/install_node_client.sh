#!/usr/bin/env bash
# Install the Node.js test client's packages (@grpc/grpc-js, @grpc/proto-loader; pinned in
# tests/node_client/package-lock.json) from the npm registry. Idempotent; CI runs it before the tests.
set -euo pipefail
cd "$(dirname "$0")/../tests/node_client"
if [ ! -d node_modules/@grpc/grpc-js ]; then
  npm ci --silent --no-audit --no-fund
fi
