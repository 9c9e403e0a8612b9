#!/usr/bin/env bash
# Publishing with and without channel history, same load, alternating runs: publishes/s at full speed and
# publish->receive latency at a fixed rate, for the memory engine and the Redis engine.
#
#   bash bench/history.sh            # RUNS=3 S=1000 C=10 RATE=1000 DURATION=5
# Writes bench/results/history-<time>/README.md (a table of medians).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}; S=${S:-1000}; C=${C:-10}; RATE=${RATE:-1000}; DURATION=${DURATION:-5}
cargo build --release -j2 -p herald-server -p herald-bench >/dev/null
bin=target/release
out="bench/results/history-$(date -u +%Y%m%d-%H%M%S)"; mkdir -p "$out"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"; kill $rpid 2>/dev/null || true' EXIT
app='[[apps]]
id = "1"
key = "app-key"
secret = "app-secret"'
printf '%s\n' "$app" > "$tmp/plain.toml"
printf '%s\n[[apps.history]]\nprefix = "fanout-"\nsize = 100\nttl = 300\n' "$app" > "$tmp/history.toml"
rport=$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no >/dev/null & rpid=$!
sleep 0.5
port=6141
run() { # name config engine-args... ; prints "publishes_per_sec p50 p99" for max and fixed rate
  local name=$1 config=$2; shift 2
  "$bin/herald" --config "$config" --port $port --log warn --api-requests-per-minute 0 "$@" & local pid=$!
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  "$bin/herald-bench" -q --server 127.0.0.1:$port --json "$tmp/max.json" fanout -s "$S" -c "$C" -r 0 -d "$DURATION" --drain 2 >/dev/null
  "$bin/herald-bench" -q --server 127.0.0.1:$port --json "$tmp/rate.json" fanout -s "$S" -c "$C" -r "$RATE" -d "$DURATION" --drain 2 >/dev/null
  kill $pid; wait $pid 2>/dev/null || true
  node -e 'const g=(f)=>Object.fromEntries(require(f).results); const m=g(process.argv[1]), r=g(process.argv[2]);
    console.log([process.argv[3], m.publishes_per_sec, m.lost, r.latency_p50_ms, r.latency_p99_ms, r.lost].join(" "))' "$tmp/max.json" "$tmp/rate.json" "$name" >> "$tmp/rows"
}
for i in $(seq "$RUNS"); do
  run memory "$tmp/plain.toml"
  run memory+history "$tmp/history.toml"
  run redis "$tmp/plain.toml" --engine redis --redis-url "redis://127.0.0.1:$rport"
  run redis+history "$tmp/history.toml" --engine redis --redis-url "redis://127.0.0.1:$rport"
done
{
  echo "# Publishing with and without history — $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "$(nproc) cores; load generator on the same machine. $S subscribers on $C channels; max: publishes as fast as accepted;"
  echo "latency: $RATE publishes/s. Medians of $RUNS alternating runs. \`RUNS=$RUNS S=$S C=$C RATE=$RATE DURATION=$DURATION bash bench/history.sh\`"
  echo
  echo "| engine | max publishes/s | lost | p50 ms at ${RATE}/s | p99 ms at ${RATE}/s | lost |"
  echo "|---|---:|---:|---:|---:|---:|"
  for name in memory memory+history redis redis+history; do
    grep "^$name " "$tmp/rows" | node -e 'const rows=require("fs").readFileSync(0,"utf8").trim().split("\n").map(l=>l.split(" "));
      const med=(i)=>{const v=rows.map(r=>+r[i]).sort((a,b)=>a-b);return v[Math.floor(v.length/2)]};
      console.log(`| ${rows[0][0]} | ${med(1)} | ${med(2)} | ${med(3)} | ${med(4)} | ${med(5)} |`)'
  done
} > "$out/README.md"
cat "$out/README.md"
