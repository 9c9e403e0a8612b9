#!/usr/bin/env bash
# Herald's two fronts side by side: the same idle and fan-out scenarios over the Pusher protocol,
# the Centrifugo protocol with JSON, and the Centrifugo protocol with protobuf, against one Herald
# build on the same machine.
#
#   bash bench/fronts.sh                  # defaults below; override with env, e.g. FANOUT_S=10000
#
# Builds Herald and herald-bench in release, starts a fresh Herald (dev app: 1 / app-key /
# app-secret) for each run, and writes JSON, SVG plots and a markdown table to
# bench/results/fronts-<timestamp>/ (and bench/results/fronts-latest.md).
#
# Each front publishes through its own HTTP API (Pusher: POST /apps/1/events, signed; Centrifugo:
# POST /apps/1/api/publish with X-API-Key); Centrifugo clients connect with an HS256 JWT and subscribe
# with subscription tokens (herald-bench --protocol).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

IDLE_N=${IDLE_N:-10000}          # idle connections
IDLE_CHANNELS=${IDLE_CHANNELS:-100}
FANOUT_S=${FANOUT_S:-10000}      # subscribers
FANOUT_C=${FANOUT_C:-10}         # channels (S/C subscribers per channel)
FANOUT_R=${FANOUT_R:-100}        # publishes/s (R * S/C deliveries/s)
DURATION=${DURATION:-10}         # seconds of publishing
PAYLOAD=${PAYLOAD:-100}          # bytes of event data
MAX=${MAX:-1}                    # 1: also fan-out as fast as the server accepts publishes
PROTOCOLS=${PROTOCOLS:-"pusher centrifugo-json centrifugo-protobuf"}
PORT=${PORT:-6111}
BUILD=${BUILD:-1}                # 0: use the binaries already built
PROFILE=${PROFILE:-release}      # release (numbers to keep) or debug (a quick check of the script)

if [ "$BUILD" = 1 ]; then
  echo "== building herald and herald-bench ($PROFILE)"
  if [ "$PROFILE" = release ]; then cargo build --release -j2 -p herald-server -p herald-bench; else cargo build -j2 -p herald-server -p herald-bench; fi
fi
bench="$root/target/$PROFILE/herald-bench"
out="bench/results/fronts-$(date -u +%Y%m%d-%H%M%S)"
mkdir -p "$out"

pid=""
start() {
  "$root/target/$PROFILE/herald" --port "$PORT" --log warn &
  pid=$!
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break
    sleep 0.1
  done
  sleep 1
}
stop() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  sleep 2
}
trap 'if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi' EXIT
run() { # protocol result-stem scenario args...
  local protocol=$1 stem=$2 scenario=$3; shift 3
  local name="herald-$protocol"
  echo "== $name: $scenario $*"
  "$bench" --server 127.0.0.1:$PORT --protocol "$protocol" --name "$name" --pid "$pid" -q \
    --json "$out/$stem-$name.json" --plot "$out/$stem-$name.svg" "$scenario" "$@"
}

fanout_latency=(-s "$FANOUT_S" -c "$FANOUT_C" -r "$FANOUT_R" -d "$DURATION" --payload "$PAYLOAD")
fanout_max=(-s "$FANOUT_S" -c "$FANOUT_C" -r 0 -d "$DURATION" --payload "$PAYLOAD")

for protocol in $PROTOCOLS; do
  start; run "$protocol" idle idle -n "$IDLE_N" --channels "$IDLE_CHANNELS"; stop
  start; run "$protocol" fanout fanout "${fanout_latency[@]}"; stop
  if [ "$MAX" = 1 ]; then
    start; run "$protocol" fanout-max fanout "${fanout_max[@]}"; stop
  fi
done
pid=""

{
  echo "# Herald's fronts side by side — $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "Build: $PROFILE. Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); load generator on the same machine."
  echo "Command: \`IDLE_N=$IDLE_N FANOUT_S=$FANOUT_S FANOUT_C=$FANOUT_C FANOUT_R=$FANOUT_R DURATION=$DURATION PAYLOAD=$PAYLOAD MAX=$MAX bash bench/fronts.sh\`"
  echo
  echo "Protocols: Pusher v7 (JSON text frames), Centrifugo v2 JSON, Centrifugo v2 protobuf (\`centrifuge-protobuf\`)."
  echo "Each publishes through its front's HTTP API; latency is publish request sent → frame received."
  echo
  max_files=()
  if [ "$MAX" = 1 ]; then max_files=("$out"/fanout-max-*.json); fi
  "$bench" table "$out"/idle-*.json $(ls "$out"/fanout-*.json | grep -v -e fanout-max) "${max_files[@]}"
} > "$out/README.md"
cp "$out/README.md" "bench/results/fronts-latest.md"
cat "$out/README.md"
