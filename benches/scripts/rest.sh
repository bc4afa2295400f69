#!/bin/bash
# deployd's REST API against a bare hyper hello-world (examples/hello.rs), side by side in one
# run (issue 13): every figure is a ratio to hello measured seconds before, on the same machine,
# so a busy machine moves both. Shipped defaults: access logging and metrics on.
#
# Usage: benches/scripts/rest.sh [DEPLOYD_BINARY] [HELLO_BINARY] [ROUNDS]
#   defaults: target/release/deployd, target/release/examples/hello, 3
#   (cargo build --release && cargo build --release --example hello)
# Environment: WRK_ARGS (default "-t2 -c64 -d8s"), DEPLOYMENTS (deployments created, default 20),
# DEPLOYD_ARGS (extra `deployd serve` flags); RUST_LOG=warn turns the access log off, to see
# what it costs (the shipped default, info, logs every request).
set -u
deployd=${1:-target/release/deployd}
hello=${2:-target/release/examples/hello}
rounds=${3:-3}
wrk_args=${WRK_ARGS:--t2 -c64 -d8s}
deployments=${DEPLOYMENTS:-20}
port=18097 hello_port=18098
token=bench-token-0123456789
api=http://127.0.0.1:$port
command -v wrk > /dev/null || { echo "wrk is needed (apt-get install -y wrk)" >&2; exit 1; }
for bin in "$deployd" "$hello"; do
  [ -x "$bin" ] || { echo "$bin: not built" >&2; exit 1; }
done

data=$(mktemp -d)
# The access log goes to a file, as a service's stderr would go to the journal: the terminal is
# not what is measured.
DEPLOYD_ADMIN_TOKEN=$token $deployd serve --data "$data" --listen 127.0.0.1:$port \
  ${DEPLOYD_ARGS:-} 2> "$data/stderr.log" > /dev/null &
server=$!
"$hello" 127.0.0.1:$hello_port > /dev/null &
peer=$!
trap 'kill $server $peer 2> /dev/null; wait $server $peer 2> /dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do
  curl -sf -o /dev/null "$api/readyz" && curl -sf -o /dev/null http://127.0.0.1:$hello_port/ && break
  sleep 0.1
done

curl -sf -u ":$token" -H 'Content-Type: application/json' -d '{"app":{"name":"bench-app"}}' \
  "$api/v1/apps" > /dev/null || { echo "creating the app failed" >&2; exit 1; }
for i in $(seq "$deployments"); do
  "$deployd" push --url "$api" --token "$token" --app bench-app --git-ref "v$i" -- \
    sh -c 'echo compiling; echo built' > /dev/null 2>&1 || { echo "push $i failed" >&2; exit 1; }
done
# What Scalingo's CLI sends: a JWT from the exchange.
jwt=$(curl -sf -u ":$token" -X POST "$api/v1/tokens/exchange" | sed 's/.*"token":"\([^"]*\)".*/\1/')
[ -n "$jwt" ] || { echo "token exchange failed" >&2; exit 1; }

# p99 latency is printed too (wrk --latency), so an inline store read that hurts the tail shows.
measure() {
  local out
  out=$(wrk $wrk_args --latency "$@")
  echo "$(echo "$out" | awk '/^Requests\/sec/ {print int($2)}') $(echo "$out" | awk '$1 == "99%" {print $2}')"
}

printf '%-5s %-34s %10s %8s %7s\n' round target req/s p99 vs-hello
for round in $(seq "$rounds"); do
  read -r hello_rps hello_p99 <<< "$(measure http://127.0.0.1:$hello_port/)"
  printf '%-5s %-34s %10s %8s %7s\n' "$round" hello "$hello_rps" "$hello_p99" 100%
  for path in /v1/apps/bench-app/deployments /v1/apps/bench-app /v1/users/self; do
    read -r got p99 <<< "$(measure -H "Authorization: Bearer $jwt" "$api$path")"
    printf '%-5s %-34s %10s %8s %6s%%\n' "$round" "GET $path" "$got" "$p99" \
      "$((got * 100 / hello_rps))"
  done
  read -r got p99 <<< "$(measure -H "Authorization: Basic $(printf ':%s' "$token" | base64)" \
    "$api/v1/apps/bench-app")"
  printf '%-5s %-34s %10s %8s %6s%%\n' "$round" "GET /v1/apps/bench-app (API token)" "$got" \
    "$p99" "$((got * 100 / hello_rps))"
done
# Every request must have been answered 200: a fast 401 or 404 is not a result.
codes=$(grep -o 'status=[0-9]*' "$data/stderr.log" | sort | uniq -c | tr -s ' ' | tr '\n' ' ')
echo "access log status counts: $codes"
