#!/usr/bin/env bash
# Time from the end of descriptor exhaustion to the store taking writes again.
#
# Uses the store's fault seam, so it needs a `test-support` build of the binary (what
# `cargo test` builds: target/debug/deployd). Every log-file open fails with EMFILE while the
# faults file says so; a `deployd push` makes a commit fail; the script then clears the fault
# and measures until /readyz answers 200 and until a new push is acknowledged.
# Usage: benches/scripts/recover-after-emfile.sh [BIN] [ROUNDS]
set -euo pipefail
BIN=${1:-target/debug/deployd}
ROUNDS=${2:-10}
DIR=$(mktemp -d)
trap 'kill "$PID" 2>/dev/null || true; rm -rf "$DIR"' EXIT
export DEPLOYD_ADMIN_TOKEN=bench-admin-token-0123456789abcdef
DEPLOYD_TEST_FAULTS_FILE="$DIR/faults" "$BIN" serve --listen 127.0.0.1:0 --data "$DIR/data" \
  >"$DIR/out" 2>"$DIR/log" &
PID=$!
until grep -q listening "$DIR/out"; do sleep 0.05; done
URL=$(sed -n 's/.*listening on //p' "$DIR/out")
AUTH="Authorization: Basic $(printf ':%s' "$DEPLOYD_ADMIN_TOKEN" | base64 -w0)"
curl -sf -H "$AUTH" -H 'Content-Type: application/json' -d '{"app":{"name":"measure"}}' "$URL/v1/apps" >/dev/null
now_ms() { date +%s%3N; }
for round in $(seq "$ROUNDS"); do
  echo "log_open EMFILE" >"$DIR/faults"
  "$BIN" push --url "$URL" --token "$DEPLOYD_ADMIN_TOKEN" --app measure -- echo "round $round" \
    >/dev/null 2>&1 || true
  test "$(curl -s -o /dev/null -w '%{http_code}' "$URL/readyz")" = 503
  sleep 2 # let the backoff grow to its cap (the worst case)
  rm "$DIR/faults"
  start=$(now_ms)
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/readyz")" = 200 ]; do sleep 0.005; done
  ready=$(now_ms)
  "$BIN" push --url "$URL" --token "$DEPLOYD_ADMIN_TOKEN" --app measure -- echo ok >/dev/null 2>&1
  written=$(now_ms)
  echo "round $round: ready after $((ready - start)) ms, first push acknowledged after $((written - start)) ms"
done
