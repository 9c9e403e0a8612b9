#!/usr/bin/env bash
# Tail latency at a fixed delivery rate, Herald vs peers, alternating runs (issue: p99 under CPU contention).
#
#   bash bench/tail.sh          # RUNS=5 S=10000 DELIVERIES=100000 DURATION=10 SERVERS="herald sockudo"
#
# Two scenarios at the same deliveries/s: 1000-subscriber bursts (S/1000 channels) and 100-subscriber
# bursts (S/100 channels). Each run starts every server fresh, one after the other (the order alternates
# between runs), and the table reports the median of RUNS runs for p50/p99/p99.9 and losses.
# Writes bench/results/tail-<time>/README.md. Extra servers: herald-base (HERALD_BASE_BIN, an older build).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
RUNS=${RUNS:-5}; S=${S:-10000}; DELIVERIES=${DELIVERIES:-100000}; DURATION=${DURATION:-10}
SERVERS=${SERVERS:-"herald sockudo"}
HERALD_BIN=${HERALD_BIN:-$root/target/release/herald}
SOCKUDO_BIN=${SOCKUDO_BIN:-$(command -v sockudo || echo "$root/bench/.peers/sockudo/bin/sockudo")}
BENCH_BIN=${BENCH_BIN:-$root/target/release/herald-bench}
PORT=${PORT:-6161}
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -j2 -p herald-server -p herald-bench >/dev/null
out="bench/results/tail-$(date -u +%Y%m%d-%H%M%S)"; mkdir -p "$out"
tmp=$(mktemp -d); pid=""
trap 'rm -rf "$tmp"; [ -n "$pid" ] && kill $pid 2>/dev/null || true' EXIT

start() {
  case "$1" in
    herald) "$HERALD_BIN" --port $PORT --app-id 1 --log warn --api-requests-per-minute 0 & pid=$! ;;
    herald-base) "${HERALD_BASE_BIN:?set HERALD_BASE_BIN}" --port $PORT --app-id 1 --log warn & pid=$! ;;
    sockudo)
      env SOCKUDO_DEFAULT_APP_ID=1 SOCKUDO_DEFAULT_APP_KEY=app-key SOCKUDO_DEFAULT_APP_SECRET=app-secret \
        SOCKUDO_DEFAULT_APP_ENABLED=true SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS=1000000 RATE_LIMITER_ENABLED=false \
        PORT=$PORT METRICS_PORT=9603 HOST=127.0.0.1 RUST_LOG=warn "$SOCKUDO_BIN" >"$tmp/sockudo.log" 2>&1 & pid=$! ;;
  esac
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
  sleep 1
}
stop() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=""; sleep 3; }

scenario() { # burst-size
  local burst=$1 channels=$((S / $1)) rate=$((DELIVERIES / $1))
  echo "-s $S -c $channels -r $rate -d $DURATION"
}
for i in $(seq "$RUNS"); do
  order=$SERVERS
  [ $((i % 2)) -eq 0 ] && order=$(echo $SERVERS | tr ' ' '\n' | tac | tr '\n' ' ')
  for burst in 1000 100; do
    for name in $order; do
      start "$name"
      echo "== run $i, $name, $burst-subscriber bursts"
      "$BENCH_BIN" -q --server 127.0.0.1:$PORT --name "$name" --pid "$pid" --json "$tmp/r.json" fanout $(scenario $burst) >/dev/null || true
      stop
      node -e 'const r=Object.fromEntries(require(process.argv[1]).results);
        console.log([process.argv[2], process.argv[3], r.deliveries_per_sec, r.latency_p50_ms, r.latency_p99_ms, r.latency_p999_ms, r.lost + r.closed_by_server].join(" "))' \
        "$tmp/r.json" "$name" "$burst" | tee -a "$out/runs.txt"
    done
  done
done
{
  echo "# Tail latency — $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "$(nproc) cores; load generator on the same machine. $S subscribers, $DELIVERIES deliveries/s, ${DURATION}s per run;"
  echo "medians of $RUNS runs, servers alternating. \`RUNS=$RUNS S=$S DELIVERIES=$DELIVERIES DURATION=$DURATION bash bench/tail.sh\`"
  echo "Every run is in runs.txt (server, burst, deliveries/s, p50, p99, p99.9, lost+closed)."
  echo
  echo "| bursts | server | deliveries/s | p50 ms | p99 ms | p99.9 ms | lost |"
  echo "|---|---|---:|---:|---:|---:|---:|"
  for burst in 1000 100; do for name in $SERVERS; do
    grep "^$name $burst " "$out/runs.txt" | node -e 'const rows=require("fs").readFileSync(0,"utf8").trim().split("\n").map(l=>l.split(" "));
      const med=(i)=>{const v=rows.map(r=>+r[i]).sort((a,b)=>a-b);return v[Math.floor(v.length/2)]};
      console.log(`| ${process.argv[1]} subscribers | ${process.argv[2]} | ${med(2)} | ${med(3)} | ${med(4)} | ${med(5)} | ${med(6)} |`)' "$burst" "$name"
  done; done
} > "$out/README.md"
cat "$out/README.md"
