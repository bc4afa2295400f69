#!/bin/bash
# Usage: benches/scripts/kill9-ingest.sh [path/to/deployd]   (default: the release build)
# kill -9 during ingest, 10 cycles: the server must reopen every time and every deployment must be ended and readable.
set -u
B=${1:-./target/release/deployd}; D=$(mktemp -d)/data; rm -rf $D; port=18095
export DEPLOYD_URL=http://127.0.0.1:$port DEPLOYD_TOKEN=bench-token-0123456789
for i in $(seq 10); do
  DEPLOYD_ADMIN_TOKEN=$DEPLOYD_TOKEN $B serve --data $D --listen 127.0.0.1:$port > $D.serve-$i.log 2>&1 &
  sp=$!
  ok=0; for j in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:$port/v1/regions && { ok=1; break; }; sleep 0.05; done
  [ $ok = 1 ] || { echo "cycle $i: server did not come up"; cat $D.serve-$i.log; exit 1; }
  timeout 20 $B bench ingest --lines 2000000 > /dev/null 2>&1 &
  bp=$!
  sleep 0.$((RANDOM % 9 + 1))
  kill -9 $sp; wait $sp 2>/dev/null; kill $bp 2>/dev/null; wait $bp 2>/dev/null
done
DEPLOYD_ADMIN_TOKEN=$DEPLOYD_TOKEN $B serve --data $D --listen 127.0.0.1:$port > $D.final.log 2>&1 &
sp=$!; sleep 1
apps=$(curl -s -u ":$DEPLOYD_TOKEN" http://127.0.0.1:$port/v1/apps | python3 -c 'import json,sys; print(" ".join(a["name"] for a in json.load(sys.stdin)["apps"]))')
total=0; unfinished=0; lines=0
for a in $apps; do
  for d in $(curl -s -u ":$DEPLOYD_TOKEN" "http://127.0.0.1:$port/v1/apps/$a/deployments?per_page=100" | python3 -c 'import json,sys; [print(d["id"], d["status"]) for d in json.load(sys.stdin)["deployments"]]' | tr ' ' ':'); do
    id=${d%%:*}; st=${d##*:}; total=$((total+1))
    case $st in queued|building|pushing|starting) unfinished=$((unfinished+1));; esac
    n=$(curl -s -u ":$DEPLOYD_TOKEN" "http://127.0.0.1:$port/v1/apps/$a/deployments/$id/output" | wc -l); lines=$((lines+n))
  done
done
echo "deployments $total unfinished $unfinished output lines $lines"
grep -hiE "error|corrupt|panick" $D.serve-*.log $D.final.log | head -5
kill $sp; wait $sp 2>/dev/null
