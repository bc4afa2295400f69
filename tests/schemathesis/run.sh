#!/usr/bin/env bash
# Fuzzes the running API with schemathesis against its own OpenAPI document
# (GET /v1/openapi.json): no 5xx, every status, content type and body as documented, for every
# operation. Usage: tests/schemathesis/run.sh DEPLOYD_BINARY [SCHEMATHESIS_BINARY]
#
# The server runs on 127.0.0.1 port 0 over a temporary data directory, with the admin token
# sent on every request (so authenticated operations are reached, not only their 401s), and
# private sources refused (a fuzzed source_url never reaches anything but this host's refusal).
set -euo pipefail
bin=${1:?usage: run.sh DEPLOYD_BINARY [SCHEMATHESIS]}
st=${2:-schemathesis}
# Examples per operation: enough for the coverage phase's boundary cases and some fuzzing, small
# enough for CI's time budget (26 operations).
max_examples=${SCHEMATHESIS_MAX_EXAMPLES:-60}

work=$(mktemp -d)
server=""
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

token="schemathesis-admin-token-0123456789abcdef"
DEPLOYD_ADMIN_TOKEN=$token "$bin" serve --listen 127.0.0.1:0 --data "$work/data" \
  >"$work/stdout" 2>"$work/server.log" &
server=$!
for _ in $(seq 1 300); do
  url=$(sed -n 's/^deployd listening on //p' "$work/stdout" | head -n1)
  [ -n "$url" ] && break
  sleep 0.1
done
if [ -z "${url:-}" ]; then
  echo "deployd did not start:" >&2
  cat "$work/server.log" >&2
  exit 1
fi
echo "deployd at $url"

status=0
# From the temporary directory: schemathesis keeps its example cache in the working directory.
st=$(command -v "$st")
cd "$work"
"$st" run "$url/v1/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --phases examples,coverage,fuzzing \
  --max-examples "$max_examples" \
  --workers 2 \
  --request-timeout 10 \
  --seed 1 \
  --generation-with-security-parameters false \
  --header "Authorization: Bearer $token" \
  || status=$?
if ! kill -0 "$server" 2>/dev/null; then
  echo "deployd died during the run:" >&2
  tail -n 50 "$work/server.log" >&2
  exit 1
fi
if grep -q "internal error" "$work/server.log"; then
  echo "deployd logged internal errors:" >&2
  grep "internal error" "$work/server.log" | head -n 20 >&2
  status=1
fi
exit "$status"
