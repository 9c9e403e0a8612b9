#!/usr/bin/env bash
# Herald on Redis: deliveries/s with one node vs two nodes (subscribers spread over both, publishes
# through the first), and how many Redis messages each node received for channels it had no subscribers
# for (interest routing: must be 0). A third node with no subscribers at all runs alongside.
#
#   bash bench/cluster.sh            # env: FANOUT_S, FANOUT_C, DURATION, RATE (0 = as fast as accepted)
set -euo pipefail
cd "$(dirname "$0")/.."
FANOUT_S=${FANOUT_S:-10000}
FANOUT_C=${FANOUT_C:-10}
DURATION=${DURATION:-10}
RATE=${RATE:-0}
cargo build --release -j2 -p herald-server -p herald-bench
bench=target/release/herald-bench
out="bench/results/cluster-$(date -u +%Y%m%d-%H%M%S)"
mkdir -p "$out"

rport=$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
rpid=$!
pids=()
trap 'kill ${pids[@]+"${pids[@]}"} $rpid 2>/dev/null || true' EXIT
sleep 0.5

metric() { # port name
  curl -s "127.0.0.1:$1/metrics" | awk -v n="$2" '$1==n {print $2}' | head -1
}
wait_up() { for _ in $(seq 100); do curl -sf "127.0.0.1:$1/up" >/dev/null && return; sleep 0.1; done; }

run() { # label ports...
  local label=$1; shift
  echo "== $label"
  "$bench" -q --server "127.0.0.1:$1" --spread "$(printf '127.0.0.1:%s,' "$@" | sed 's/,$//')" --name "$label" \
    --json "$out/$label.json" fanout -s "$FANOUT_S" -c "$FANOUT_C" -r "$RATE" -d "$DURATION"
}

# One node (plus an idle node on the same prefix that must receive nothing).
target/release/herald --port 6201 --log warn --api-requests-per-minute 0 --engine redis --redis-url "redis://127.0.0.1:$rport" --redis-prefix one & pids+=($!)
target/release/herald --port 6209 --log warn --api-requests-per-minute 0 --engine redis --redis-url "redis://127.0.0.1:$rport" --redis-prefix one & pids+=($!)
wait_up 6201; wait_up 6209
run one-node 6201
one_idle_received=$(metric 6209 herald_redis_received_total)
kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true; pids=()

# Two nodes, subscribers spread over both, publishes through the first; an idle third node.
for p in 6211 6212 6219; do
  target/release/herald --port $p --log warn --api-requests-per-minute 0 --engine redis --redis-url "redis://127.0.0.1:$rport" --redis-prefix two & pids+=($!)
done
wait_up 6211; wait_up 6212; wait_up 6219
run two-nodes 6211 6212
{
  echo "# Herald on Redis: one node vs two — $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "Machine: $(nproc) cores; Redis, the nodes and the load generator share it. Command: \`FANOUT_S=$FANOUT_S FANOUT_C=$FANOUT_C RATE=$RATE DURATION=$DURATION bash bench/cluster.sh\`"
  echo
  "$bench" table "$out/one-node.json" "$out/two-nodes.json"
  echo "| node | redis messages received | for channels without local subscribers |"
  echo "|---|---:|---:|"
  echo "| one-node run, idle node | ${one_idle_received:-0} | ${one_idle_received:-0} |"
  for p in 6211 6212 6219; do
    r=$(metric $p herald_redis_received_total); u=$(metric $p herald_redis_received_unwanted_total)
    echo "| two-node run, :$p$([ $p = 6219 ] && echo ' (no subscribers)') | ${r:-0} | ${u:-0} |"
  done
} > "$out/README.md"
cat "$out/README.md"
