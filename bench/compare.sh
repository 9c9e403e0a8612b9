#!/usr/bin/env bash
# Herald vs Sockudo vs the machine's fan-out ceiling, same scenarios, same run, same machine.
#
#   bash bench/compare.sh                 # defaults below; override with env, e.g. IDLE_N=100000
#
# Builds Herald and herald-bench in release, installs Sockudo 5.2.0 if missing (needs protoc from
# Debian's protobuf-compiler; ~15 min on 2 cores), starts each server fresh for each scenario with the
# same app (1 / app-key / app-secret), and writes JSON, SVG plots and a markdown table to
# bench/results/<timestamp>/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

IDLE_N=${IDLE_N:-10000}          # idle connections
IDLE_CHANNELS=${IDLE_CHANNELS:-100}
CONNECT_N=${CONNECT_N:-10000}    # connection storm size
FANOUT_S=${FANOUT_S:-10000}      # subscribers
FANOUT_C=${FANOUT_C:-10}         # channels (S/C subscribers per channel)
FANOUT_R=${FANOUT_R:-100}        # publishes/s for the burst run (R * S/C deliveries/s: 1000-subscriber bursts)
SPREAD_C=${SPREAD_C:-100}        # the spread run: same deliveries/s as smaller bursts (S/SPREAD_C each)
SPREAD_R=${SPREAD_R:-1000}
DURATION=${DURATION:-10}         # seconds of publishing
PAYLOAD=${PAYLOAD:-100}          # bytes of event data
SERVERS=${SERVERS:-"herald sockudo"}
HERALD_PORT=${HERALD_PORT:-6101}
SOCKUDO_PORT=${SOCKUDO_PORT:-6102}
SOCKUDO_BIN=${SOCKUDO_BIN:-$(command -v sockudo || echo "$root/bench/.peers/sockudo/bin/sockudo")}
HERALD_BASE_BIN=${HERALD_BASE_BIN:-}  # an older herald build, for before/after runs (SERVERS="herald-base herald")
HERALD_BASE_PORT=${HERALD_BASE_PORT:-6103}

if [[ " $SERVERS " == *" sockudo "* ]] && [ ! -x "$SOCKUDO_BIN" ]; then
  echo "== installing sockudo 5.2.0 into bench/.peers (one-off)"
  command -v protoc >/dev/null || { apt-get update -qq && apt-get install -y -qq protobuf-compiler >/dev/null; }
  cargo install sockudo --version 5.2.0 --locked --root "$root/bench/.peers/sockudo" -j2
  SOCKUDO_BIN="$root/bench/.peers/sockudo/bin/sockudo"
fi

echo "== building herald and herald-bench (release)"
cargo build --release -j2 -p herald-server -p herald-bench
bench="$root/target/release/herald-bench"
out="bench/results/$(date -u +%Y%m%d-%H%M%S)"
mkdir -p "$out"

pid=""
start() {
  case "$1" in
    herald)
      "$root/target/release/herald" --port $HERALD_PORT --log warn --api-requests-per-minute 0 &
      pid=$!; port=$HERALD_PORT ;;
    herald-base)
      "${HERALD_BASE_BIN:?set HERALD_BASE_BIN to the older herald binary}" --port $HERALD_BASE_PORT --app-id 1 --log warn &
      pid=$!; port=$HERALD_BASE_PORT ;;
    sockudo)
      env SOCKUDO_DEFAULT_APP_ID=1 SOCKUDO_DEFAULT_APP_KEY=app-key SOCKUDO_DEFAULT_APP_SECRET=app-secret \
        SOCKUDO_DEFAULT_APP_ENABLED=true SOCKUDO_DEFAULT_APP_ENABLE_CLIENT_MESSAGES=true \
        SOCKUDO_DEFAULT_APP_ENABLE_USER_AUTHENTICATION=true SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS=1000000 \
        SOCKUDO_ENABLE_CLIENT_MESSAGES=true RATE_LIMITER_ENABLED=false \
        PORT=$SOCKUDO_PORT METRICS_PORT=9602 HOST=127.0.0.1 RUST_LOG=warn \
        "$SOCKUDO_BIN" >"$out/sockudo.log" 2>&1 &
      pid=$!; port=$SOCKUDO_PORT ;;
  esac
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
    sleep 0.1
  done
  sleep 1
}
stop() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  sleep 3 # sockudo needs a moment before its ports are free again
}
run() { # name result-stem scenario args...
  local name=$1 stem=$2 scenario=$3; shift 3
  echo "== $name: $scenario $*"
  "$bench" --server 127.0.0.1:$port --name "$name" --pid "$pid" -q \
    --json "$out/$stem-$name.json" --plot "$out/$stem-$name.svg" "$scenario" "$@"
}

fanout_latency=(-s "$FANOUT_S" -c "$FANOUT_C" -r "$FANOUT_R" -d "$DURATION" --payload "$PAYLOAD")
fanout_spread=(-s "$FANOUT_S" -c "$SPREAD_C" -r "$SPREAD_R" -d "$DURATION" --payload "$PAYLOAD")
fanout_max=(-s "$FANOUT_S" -c "$FANOUT_C" -r 0 -d "$DURATION" --payload "$PAYLOAD")

for name in $SERVERS; do
  start "$name"; run "$name" idle idle -n "$IDLE_N" --channels "$IDLE_CHANNELS"; stop
  start "$name"; run "$name" connect connect -n "$CONNECT_N"; stop
  start "$name"; run "$name" fanout fanout "${fanout_latency[@]}"; stop
  start "$name"; run "$name" fanout-spread fanout "${fanout_spread[@]}"; stop
  start "$name"; run "$name" fanout-max fanout "${fanout_max[@]}"; stop
done
echo "== ceiling"
"$bench" -q --name ceiling --json "$out/fanout-ceiling.json" --plot "$out/fanout-ceiling.svg" ceiling "${fanout_latency[@]}"
"$bench" -q --name ceiling --json "$out/fanout-spread-ceiling.json" --plot "$out/fanout-spread-ceiling.svg" ceiling "${fanout_spread[@]}"
"$bench" -q --name ceiling --json "$out/fanout-max-ceiling.json" --plot "$out/fanout-max-ceiling.svg" ceiling "${fanout_max[@]}"

{
  echo "# Herald vs peers — $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); load generator on the same machine."
  echo "Command: \`IDLE_N=$IDLE_N CONNECT_N=$CONNECT_N FANOUT_S=$FANOUT_S FANOUT_C=$FANOUT_C FANOUT_R=$FANOUT_R SPREAD_C=$SPREAD_C SPREAD_R=$SPREAD_R DURATION=$DURATION bash bench/compare.sh\`"
  echo
  echo "Fan-out runs, in order: 1000-subscriber bursts at R/s; 100-subscriber bursts at the same deliveries/s;"
  echo "as fast as the server accepts publishes. The ceiling runs in the bench process (publishing in-process, no HTTP)."
  echo
  "$bench" table "$out"/idle-*.json "$out"/connect-*.json $(ls "$out"/fanout-*.json | grep -v -e fanout-max -e fanout-spread) "$out"/fanout-spread-*.json "$out"/fanout-max-*.json
} > "$out/README.md"
cp "$out/README.md" "bench/results/latest.md"
cat "$out/README.md"
