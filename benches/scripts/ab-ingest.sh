#!/bin/bash
# A/B ingest of two deployd binaries in one run, alternating (3 rounds each), on loopback.
# Usage: benches/scripts/ab-ingest.sh OLD_BINARY NEW_BINARY
set -u
old=$1 new=$2
run() {
  local name=$1 bin=$2 port=18091 data
  data=$(mktemp -d)
  DEPLOYD_ADMIN_TOKEN=bench-token-0123456789 $bin serve --data "$data" --listen 127.0.0.1:$port > /dev/null 2>&1 &
  local sp=$!
  for i in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:$port/v1/regions && break; sleep 0.1; done
  export DEPLOYD_URL=http://127.0.0.1:$port DEPLOYD_TOKEN=bench-token-0123456789
  echo "$name $($bin bench --server-pid $sp ingest --lines 1000000 2>&1 | grep -E 'lines/s|cpu' | tr -s ' ' | tr '\n' ' ')"
  kill $sp; wait $sp 2>/dev/null
  rm -rf "$data"
}
for round in 1 2 3; do run old "$old"; run new "$new"; done
