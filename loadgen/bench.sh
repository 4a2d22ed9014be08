#!/usr/bin/env bash
# Runs the gateway benchmarks: the embedded replica with the test app canister installed
# (once, or N times), the gateway as a separate process, and ic-ws-loadgen.
#
#   loadgen/bench.sh idle 10000,19000         # idle connections held, gateway RSS per connection
#   loadgen/bench.sh fanout 1 2000            # 1 canister x 2000 subscribers
#   loadgen/bench.sh fanout 10 200            # 10 canisters x 200 subscribers
#   PUBLISHERS=1 SAMPLE=1 FANOUT_ARGS="--interval-ms 500" loadgen/bench.sh fanout 1 100
#                                             # bursts after silence: 100 messages, 500 ms pause
#                                             # (more in BENCHMARKS.md, "Polling: latency vs queries")
#   loadgen/bench.sh inbound 1000 1           # 1000 clients x 1 message/s
#   loadgen/bench.sh gateway 1000 50 100      # the gateway alone, fake canister on its own
#                                             # thread: 1000 sessions x 50 messages per 100 ms
#   PERIOD_MS=1000 loadgen/bench.sh gateway 10000 1 10   # 10000 sessions x 1 message/s, spread
#                                             # over 10 ms ticks
#   loadgen/bench.sh attack signed-flood      # one attack for SECS (60) s beside an honest client,
#                                             # gateway with its default limits, replica + test app
#   loadgen/bench.sh attack-fake ping-flood   # the same in front of ic-ws-bench-gateway's fake
#                                             # canister (no replica: the gateway-bound part)
#   modes: none ping-flood junk-flood signed-flood sessions hold slowloris big-frames
#
# Environment: TARGET (cargo target dir, default target), WASM (the test app wasm, default
# $TARGET/wasm32-unknown-unknown/canister/ic_ws_e2e_test_app.wasm), GATEWAY_ARGS (extra gateway
# flags, e.g. a memory budget), SECS (measured seconds), ATTACK_ARGS (extra `loadgen attack`
# flags, e.g. "--attackers 2000 --baseline-secs 10"), BUDGET_MIB (the memory budget the RSS
# peak is reported against, default 512), FANOUT_ARGS (extra `loadgen fanout` flags, e.g.
# "--period-ms 1000 --idle-after-secs 65"), REPLICA_ARGS (extra replica flags).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${TARGET:-target}
wasm=${WASM:-$target/wasm32-unknown-unknown/canister/ic_ws_e2e_test_app.wasm}
replica=$target/release/ic-ws-replica
gateway=$target/release/ic-ws-gateway
loadgen=$target/release/ic-ws-loadgen
run=$(mktemp -d "${TMPDIR:-/tmp}/ic-ws-bench.XXXXXX")
pids=()
cleanup() {
  for ((i=${#pids[@]}-1; i>=0; i--)); do kill -TERM "${pids[$i]}" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$run"
}
trap cleanup EXIT

# Every connection is a file descriptor on both sides: raise the soft limit as far as allowed.
hard=$(ulimit -Hn)
ulimit -n "$hard"
echo "open files limit: $(ulimit -n) (hard $hard)" >&2

scenario=${1:?scenario: idle | fanout | inbound}
shift

start_replica() { # $1 = number of canisters
  local installs=()
  for i in $(seq 0 $(($1 - 1))); do installs+=(--install "bench$i=$wasm"); done
  "$replica" --port 0 --json --seed bench ${REPLICA_ARGS:-} "${installs[@]}" >"$run/replica.json" 2>"$run/replica.log" &
  pids+=($!)
  for _ in $(seq 1200); do [ -s "$run/replica.json" ] && break; sleep 0.1; done
  [ -s "$run/replica.json" ] || { cat "$run/replica.log" >&2; exit 1; }
  replica_url=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["url"])' "$run/replica.json")
  canister_ids=$(python3 -c 'import json,sys; c=json.load(open(sys.argv[1]))["canisters"]; print(",".join(c[k] for k in sorted(c, key=lambda k: int(k[5:]))))' "$run/replica.json")
}

start_gateway() { # $1 = network url, $2 = canisters, $3 = --fetch-root-key or nothing
  "$gateway" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --ready-file "$run/gateway.json" \
    --identity-file "$run/identity.pem" --network "$1" ${3:-} --canister "$2" \
    --ip-connect-rate 0 --idle-timeout-ms 600000 --max-connections 200000 --log warn \
    --max-connections-per-ip 0 --max-connections-per-ipv6-64 0 \
    ${GATEWAY_ARGS:-} 2>"$run/gateway.log" &
  gateway_started $!
}

# The attack scenarios run the gateway with its default limits (only GATEWAY_ARGS added).
attack_flags() { # $1 = mode
  echo --gateway "$gw_listen" --admin "$gw_admin" --gateway-pid "$gateway_pid" --mode "$1" \
    --secs "${SECS:-60}" --budget-mib "${BUDGET_MIB:-512}" ${ATTACK_ARGS:-}
}

gateway_started() { # $1 = pid of a gateway writing $run/gateway.json when ready
  gateway_pid=$1
  pids+=($gateway_pid)
  for _ in $(seq 300); do [ -s "$run/gateway.json" ] && break; sleep 0.1; done
  [ -s "$run/gateway.json" ] || { cat "$run/gateway.log" >&2; exit 1; }
  gw_listen=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["listen"])' "$run/gateway.json")
  gw_admin=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["admin"])' "$run/gateway.json")
}

case "$scenario" in
  idle)
    # No canister is contacted: the connections stay before their open.
    start_gateway http://127.0.0.1:9 aaaaa-aa
    "$loadgen" idle --gateway "$gw_listen" --admin "$gw_admin" --gateway-pid "$gateway_pid" \
      --connections "${1:-10000}" --concurrency 500
    ;;
  fanout)
    start_replica "${1:-1}"
    start_gateway "$replica_url" "$canister_ids" --fetch-root-key
    "$loadgen" fanout --gateway "$gw_listen" --admin "$gw_admin" --gateway-pid "$gateway_pid" \
      --replica "$replica_url" --canisters "$canister_ids" --clients-per-canister "${2:-1000}" \
      --secs "${SECS:-20}" --publishers "${PUBLISHERS:-2}" --size "${SIZE:-64}" --sample-every "${SAMPLE:-10}" \
      ${FANOUT_ARGS:-}
    ;;
  inbound)
    start_replica 1
    start_gateway "$replica_url" "$canister_ids" --fetch-root-key
    "$loadgen" inbound --gateway "$gw_listen" --admin "$gw_admin" --gateway-pid "$gateway_pid" \
      --replica "$replica_url" --canisters "$canister_ids" --clients "${1:-1000}" --rate "${2:-1}" \
      --secs "${SECS:-30}"
    ;;
  gateway)
    # The gateway library in front of the in-memory fake canister (ic-ws-bench-gateway): the
    # fake runs on its own thread, whose CPU the load generator reports apart.
    "$target/release/ic-ws-bench-gateway" --tick-ms "${3:-100}" --per-tick "${2:-1}" --size "${SIZE:-64}" \
      --period-ms "${PERIOD_MS:-0}" -- \
      --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --ready-file "$run/gateway.json" \
      --canister aaaaa-aa --ip-connect-rate 0 --idle-timeout-ms 600000 --max-connections 200000 \
      --max-connections-per-ip 0 --max-connections-per-ipv6-64 0 \
      --log warn ${GATEWAY_ARGS:-} 2>"$run/gateway.log" &
    gateway_started $!
    "$loadgen" receive --gateway "$gw_listen" --admin "$gw_admin" --gateway-pid "$gateway_pid" \
      --canister aaaaa-aa --clients "${1:-1000}" --secs "${SECS:-20}" --sample-every "${SAMPLE:-100}"
    ;;
  attack)
    start_replica 1
    "$gateway" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --ready-file "$run/gateway.json" \
      --identity-file "$run/identity.pem" --network "$replica_url" --fetch-root-key \
      --canister "$canister_ids" --log warn ${GATEWAY_ARGS:-} 2>"$run/gateway.log" &
    gateway_started $!
    "$loadgen" attack $(attack_flags "${1:?mode}") --canister "$canister_ids"
    ;;
  attack-fake)
    "$target/release/ic-ws-bench-gateway" --tick-ms 1000 --per-tick 0 --like-test-app -- \
      --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --ready-file "$run/gateway.json" \
      --canister aaaaa-aa --log warn ${GATEWAY_ARGS:-} 2>"$run/gateway.log" &
    gateway_started $!
    "$loadgen" attack $(attack_flags "${1:?mode}") --canister aaaaa-aa --fake-canister
    ;;
  *) echo "unknown scenario $scenario" >&2; exit 2 ;;
esac
if [ -n "${KEEP_LOGS:-}" ]; then cp "$run"/*.log "$KEEP_LOGS"/ 2>/dev/null || true; fi
