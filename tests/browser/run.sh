#!/usr/bin/env bash
# Runs the dashboard's browser tests alone: Debian's chromium (installed if missing, as root),
# playwright-core from the lock file, against $DEPLOYD_BIN (default target/release/deployd,
# built if missing). Screenshots go to $SCREENSHOT_DIR (default tests/browser/screenshots).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
if [ ! -x /usr/bin/chromium ]; then
  apt-get update -qq && apt-get install -y -qq chromium
fi
export DEPLOYD_BIN=${DEPLOYD_BIN:-$repo/target/release/deployd}
if [ ! -x "$DEPLOYD_BIN" ]; then
  (cd "$repo" && cargo build --release --locked)
fi
export SCREENSHOT_DIR=${SCREENSHOT_DIR:-$here/screenshots}
cd "$here"
[ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund
node --test --test-concurrency=1 ./*.test.mjs "$@"
