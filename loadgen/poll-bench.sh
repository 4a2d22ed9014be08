#!/usr/bin/env bash
# Latency vs queries/s of the gateway's polling policies (issue 14): each traffic scenario
# against each polling configuration, through loadgen/bench.sh fanout (embedded replica with
# --round-delay-ms 0, the test app, the real gateway, messages published by direct update
# calls the gateway does not relay, like a timer or another gateway's clients would).
#
#   loadgen/poll-bench.sh                 # every scenario x every policy
#   loadgen/poll-bench.sh bursts default  # one of each
#   IDLE=1 loadgen/poll-bench.sh bursts default   # also idle queries/s after 65 s of silence
#
# Scenarios: bursts (100 clients; one publish to all of them, then a 500 ms pause: ~190
# msg/s in bursts), tick1 (1 client, 1 publish/s), steady1k (10 clients, 4 publishers x 1
# publish per 40 ms: 1,000 msg/s). Policies: default; norhythm (default without the rhythm
# detector, --poll-rhythm false); before (the former doubling from 20 ms to 500 ms);
# fixed100 / fixed20 (one poll every 100 / 20 ms); hint (default, and the
# publisher announces its next publish: tick1 only, where it knows it).
# Environment as for bench.sh (TARGET, WASM); SECS (default 30).
set -euo pipefail
cd "$(dirname "$0")/.."
scenarios=${1:-"bursts tick1 steady1k"}
policies=${2:-"default norhythm before fixed100 fixed20 hint"}
for s in $scenarios; do
  for p in $policies; do
    fanout=""
    case "$s" in
      bursts) clients=100; publishers=1; fanout="--interval-ms 500" ;;
      tick1) clients=1; publishers=1; fanout="--period-ms 1000" ;;
      steady1k) clients=10; publishers=4; fanout="--period-ms 40" ;;
      *) echo "unknown scenario $s" >&2; exit 2 ;;
    esac
    case "$p" in
      default) gw="" ;;
      norhythm) gw="--poll-rhythm false" ;;
      before) gw="--poll-active-interval-ms 20 --poll-active-window-ms 1 --poll-max-rate 1000 --poll-jitter-pct 0 --poll-rhythm false" ;;
      fixed100) gw="--poll-min-interval-ms 100 --poll-active-interval-ms 100 --poll-max-interval-ms 100 --poll-jitter-pct 0 --poll-rhythm false" ;;
      fixed20) gw="--poll-active-interval-ms 20 --poll-max-interval-ms 20 --poll-max-rate 1000 --poll-jitter-pct 0 --poll-rhythm false" ;;
      hint)
        [ "$s" = tick1 ] || continue
        gw=""; fanout="$fanout --hint" ;;
      *) echo "unknown policy $p" >&2; exit 2 ;;
    esac
    if [ -n "${IDLE:-}" ]; then fanout="$fanout --idle-after-secs 65 --idle-secs 20"; fi
    echo "== $s / $p: gateway $gw; loadgen $fanout" >&2
    out=$(PUBLISHERS=$publishers SAMPLE=1 SECS=${SECS:-30} GATEWAY_ARGS="$gw" \
      FANOUT_ARGS="$fanout" REPLICA_ARGS="--round-delay-ms 0" \
      loadgen/bench.sh fanout 1 "$clients" 2>&1 | tee /dev/stderr | grep '^{"scenario"' | tail -1)
    echo "$s $p $out"
  done
done
