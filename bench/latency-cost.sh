#!/usr/bin/env bash
# What recording delivery latency costs on the fan-out bench: the same release herald run with
# `--latency-histograms true` (front and per-channel histograms recorded per delivery) and `false`
# (fronts get no histogram: no clock read, no atomic adds), alternating A/B, RUNS times each, two loads:
#   max:  publishing as fast as the server accepts (-r 0): deliveries/s is the cost signal;
#   rate: a fixed rate well under the ceiling: latency p50/p99 is the cost signal.
#
#   bash bench/latency-cost.sh        # RUNS=5 S=1000 C=10 RATE=50 DURATION=8
#
# Writes bench/results/latency-cost-<time>/README.md (medians) and runs.txt (every run).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
RUNS=${RUNS:-5}; S=${S:-1000}; C=${C:-10}; RATE=${RATE:-50}; DURATION=${DURATION:-8}; PORT=${PORT:-6151}
HERALD_BIN=${HERALD_BIN:-$root/target/release/herald}
BENCH_BIN=${BENCH_BIN:-$root/target/release/herald-bench}
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -j2 -p herald-server -p herald-bench >/dev/null
out="bench/results/latency-cost-$(date -u +%Y%m%d-%H%M%S)"; mkdir -p "$out"
tmp=$(mktemp -d); pid=""
trap 'rm -rf "$tmp"; [ -n "$pid" ] && kill $pid 2>/dev/null || true' EXIT

start() { # on|off
  local on=true; [ "$1" = off ] && on=false
  "$HERALD_BIN" --port $PORT --app-id 1 --log warn --api-requests-per-minute 0 --latency-histograms $on & pid=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
  sleep 1
}
stop() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=""; sleep 2; }

for i in $(seq "$RUNS"); do
  order="on off"; [ $((i % 2)) -eq 0 ] && order="off on"
  for load in max rate; do
    r=$RATE; [ $load = max ] && r=0
    for mode in $order; do
      start $mode
      echo "== run $i, recording $mode, $load"
      "$BENCH_BIN" -q --server 127.0.0.1:$PORT --name "herald-$mode" --pid "$pid" --json "$tmp/r.json" \
        fanout -s "$S" -c "$C" -r "$r" -d "$DURATION" --drain 2 >/dev/null || true
      stop
      node -e 'const r=Object.fromEntries(require(process.argv[1]).results);
        console.log([process.argv[2], process.argv[3], r.deliveries_per_sec, r.latency_p50_ms, r.latency_p99_ms, r.lost + r.closed_by_server].join(" "))' \
        "$tmp/r.json" "$mode" "$load" | tee -a "$out/runs.txt"
    done
  done
done
{
  echo "# Latency histogram recording cost — $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "$(nproc) cores shared with other work (load generator on the same machine): the numbers are noisy;"
  echo "compare medians, and read a difference smaller than the run-to-run spread (runs.txt) as none."
  echo "$S subscribers on $C channels, ${DURATION}s per run, $RUNS runs per mode, on/off alternating."
  echo "\`RUNS=$RUNS S=$S C=$C RATE=$RATE DURATION=$DURATION bash bench/latency-cost.sh\`"
  echo
  echo "| load | recording | deliveries/s | p50 ms | p99 ms | lost |"
  echo "|---|---|---:|---:|---:|---:|"
  for load in max rate; do for mode in on off; do
    grep "^$mode $load " "$out/runs.txt" | node -e 'const rows=require("fs").readFileSync(0,"utf8").trim().split("\n").map(l=>l.split(" "));
      const med=(i)=>{const v=rows.map(r=>+r[i]).sort((a,b)=>a-b);return v[Math.floor(v.length/2)]};
      const label=process.argv[1]==="max"?"max (-r 0)":`${process.argv[3]} publishes/s`;
      console.log(`| ${label} | ${process.argv[2]} | ${med(2)} | ${med(3)} | ${med(4)} | ${med(5)} |`)' "$load" "$mode" "$RATE"
  done; done
} > "$out/README.md"
cat "$out/README.md"
