#!/usr/bin/env bash
# Install Debian's chromium for the browser tests (tests/test_web_browser.py drives it with Playwright through
# executable_path; no browser is ever downloaded by Playwright). Idempotent: nothing to do when it is there.
# Needs root (CI runs as root); elsewhere run it with sudo, or skip it: the browser test then skips and says why.
set -euo pipefail
CHROMIUM=/usr/bin/chromium
if [ -x "$CHROMIUM" ]; then
  echo "install_browser: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM") already installed"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install_browser: $CHROMIUM is missing and installing it needs root: sudo $0" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium
echo "install_browser: $("$CHROMIUM" --version)"
