#!/usr/bin/env bash
# The README's "Scaling" tables: how cost grows with pushers, batch size, subscribers, log size
# and the point a subscriber joins at. Starts one deployd (release build, temp data dir, no
# connection cap, no log size limit: the 10 M-line log is 1 GB), runs each table's rows back to
# back with `deployd bench --json`, prints one markdown row per run, then stops the server.
# Every run is bounded by the tool's own limits and --timeout; only 127.0.0.1 is driven.
#
#   benches/scripts/scaling.sh [BINARY] [TABLE...]    # tables: ingest batch1 fanout output catchup
#
# Shorter runs for a busy machine (the defaults are the README's sizes): INGEST_LINES (total over
# the pushers, 1000000), BATCH1_LINES (102400), FANOUT_LINES (5000), OUTPUT_LINES (a list,
# "1000000 10000000"), CATCHUP_LINES (a list, "10000 100000 1000000").
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-target/release/deployd}
shift || true
tables=${*:-ingest batch1 fanout output catchup}
[ -x "$bin" ] || { echo "no binary at $bin (cargo build --release)" >&2; exit 2; }

dir=$(mktemp -d)
token="bench-scaling-$RANDOM$RANDOM$RANDOM"
DEPLOYD_ADMIN_TOKEN=$token "$bin" serve --listen 127.0.0.1:0 --data "$dir/data" \
  --server-max-connections 0 --retention-max-log-bytes 0 >"$dir/stdout" 2>"$dir/server.log" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do grep -q "listening on" "$dir/stdout" 2>/dev/null && break; sleep 0.1; done
url=$(sed -n 's/^deployd listening on //p' "$dir/stdout")
[ -n "$url" ] || { echo "deployd did not start" >&2; cat "$dir/server.log" >&2; exit 2; }
export DEPLOYD_URL=$url DEPLOYD_TOKEN=$token
ingest_lines=${INGEST_LINES:-1000000}
batch1_lines=${BATCH1_LINES:-102400}
fanout_lines=${FANOUT_LINES:-5000}
output_lines=${OUTPUT_LINES:-1000000 10000000}
catchup_lines=${CATCHUP_LINES:-10000 100000 1000000}

run() { "$bin" bench --json --timeout 300 --server-pid "$server" "$@"; }
# Reads a report on stdin and prints the fields asked for, as a markdown row.
row() { python3 -c '
import json, sys
r = json.load(sys.stdin); s = r.get("server", {})
mb = lambda k: "%.0f MB" % (s.get(k, 0) / 1024)
ms = lambda l: "%.1f / %.1f ms" % (l["p50_us"] / 1000, l["p99_us"] / 1000)
v = r.get("violations")
clean = "" if v is None else ("every line once, in order" if not any(v.values()) else "VIOLATIONS %s" % v)
cells = {
 "ingest": lambda: [r["pushers"], r["batch"], "%.0f" % r["lines_per_sec"], ms(r["ack_latency"]),
                    "%.2f" % (s["server_cpu_secs"] * 1e6 / r["lines_acked"]), mb("server_rss_peak_kib")],
 "fanout": lambda: [r["subscribers"], "%.0f" % r["deliveries_per_sec"], ms(r["latency"]),
                    "%.3f" % r.get("server_cpu_us_per_delivery", 0), mb("server_rss_peak_kib"), clean],
 "output": lambda: [r["lines"], "%.0f" % r["first_read_mb_per_sec"], "%.0f" % r["best_mb_per_sec"],
                    " / ".join(mb(k) for k in ("server_rss_start_kib", "server_rss_peak_kib", "server_rss_end_kib"))],
 "catchup": lambda: [r["lines_before_join"], "%.2f s" % r["catch_up_secs"], "%.0f" % r["replay_lines_per_sec"],
                     ms(r["live_latency"]), mb("server_rss_peak_kib"), clean],
}[sys.argv[1]]()
print("| " + " | ".join(str(c) for c in cells) + " |")' "$1"; }

for table in $tables; do
  case $table in
  ingest)
    echo "| pushers | batch | lines/s | ack p50 / p99 | server CPU µs per line | server RSS peak |"
    echo "|---|---|---|---|---|---|"
    for p in 1 4 16 64 256; do run ingest --pushers $p --lines $((ingest_lines / p)) | row ingest; done ;;
  batch1)
    echo "| pushers | batch | lines/s | ack p50 / p99 | server CPU µs per line | server RSS peak |"
    echo "|---|---|---|---|---|---|"
    for p in 1 4 16 64 256; do run ingest --pushers $p --batch 1 --lines $((batch1_lines / p)) | row ingest; done ;;
  fanout)
    echo "| subscribers | deliveries/s | ack→arrival p50 / p99 | server CPU µs per delivery | server RSS peak | check |"
    echo "|---|---|---|---|---|---|"
    for k in 10 100 1000 10000; do run fanout --subscribers $k --rate 1000 --lines "$fanout_lines" | row fanout; done ;;
  output)
    echo "| lines | first read MB/s | best read MB/s | server RSS before / peak / after |"
    echo "|---|---|---|---|"
    for n in $output_lines; do run read --lines $n --reads 3 | row output; done ;;
  catchup)
    echo "| joins at line | caught up after | replay lines/s | live ack→arrival p50 / p99 | server RSS peak | check |"
    echo "|---|---|---|---|---|---|"
    for n in $catchup_lines; do run catchup --lines $n --live-lines 5000 --rate 1000 | row catchup; done ;;
  *) echo "unknown table $table" >&2; exit 2 ;;
  esac
  echo
done
