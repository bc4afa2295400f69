#!/bin/bash
# A/B fan-out of two deployd builds in one run, alternating (2 rounds each), on loopback: either
# the server varies (the tool is NEW's) or the load tool varies (the server is NEW's, one server
# for every run), so a change to one side is measured with the other side fixed.
# Usage: benches/scripts/ab-fanout.sh server|tool OLD_BINARY NEW_BINARY [FANOUT_ARGS...]
# FANOUT_ARGS default to `--subscribers 1000 --rate 1000 --lines 10000`.
set -u
vary=$1 old=$2 new=$3
shift 3
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--subscribers 1000 --rate 1000 --lines 10000)
port=18092
export DEPLOYD_URL=http://127.0.0.1:$port DEPLOYD_TOKEN=bench-token-0123456789
sp="" data=""
start() {
  data=$(mktemp -d)
  DEPLOYD_ADMIN_TOKEN=$DEPLOYD_TOKEN $1 serve --data "$data" --listen 127.0.0.1:$port \
    --server-max-connections 0 > /dev/null 2>&1 &
  sp=$!
  for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:$port/v1/regions && break; sleep 0.1; done
}
stop() { kill "$sp"; wait "$sp" 2>/dev/null; rm -rf "$data"; }
measure() {
  echo "$1 $($2 bench --server-pid "$sp" fanout "${args[@]}" 2>&1 \
    | grep -E 'ack->arrival|subscriber process CPU|server CPU|violations' | tr -s ' ' | tr '\n' ' ')"
}
case $vary in
  server)
    for _ in 1 2; do
      start "$old"; measure old "$new"; stop
      start "$new"; measure new "$new"; stop
    done ;;
  tool)
    start "$new"
    for _ in 1 2; do measure old "$old"; measure new "$new"; done
    stop ;;
  *) echo "usage: $0 server|tool OLD_BINARY NEW_BINARY [FANOUT_ARGS...]" >&2; exit 2 ;;
esac
