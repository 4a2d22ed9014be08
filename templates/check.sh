#!/usr/bin/env bash
# Builds templates/rust-canister as a user would, outside this repository: copies it to a
# temporary directory and there runs its native tests (behaviour, and counter.did in sync with
# the code), builds the canister wasm (release `canister` profile, wasm32) and checks that it
# carries its candid interface, generates the page's TypeScript bindings from counter.did with
# @icp-sdk/bindgen, type-checks the page (`tsc --noEmit`) and bundles it; with icp-cli at
# hand it also runs `icp build` on the template's icp.yaml; given ic-ws-replica (and
# ic-ws-gateway) binaries, it installs the wasm in the replica and, from Node with the
# generated bindings and @ic-ws/client, calls `get` and counts over a WebSocket.
#
# The template names its dependencies as a user writes them (`ic-ws-canister = "0.1"`,
# `"@ic-ws/client": "^0.1.0"`); here they come from this repository: a `[patch.crates-io]` in
# the copy's .cargo/config.toml, and the client-js tarball of `npm pack`. The repository's
# Cargo.lock seeds the copy's, so the template builds with the versions the workspace tests.
#
# Usage: templates/check.sh
#   CARGO_TARGET_DIR   the template builds in $CARGO_TARGET_DIR/template (default target/template)
#   IC_WS_CANISTER_TARGET_DIR
#                      if set, the wasm (and `icp build`) is built there instead: the directory
#                      of the repository's own canister builds (same profile and wasm flags),
#                      whose compiled dependencies it then reuses (scripts/test does not: it
#                      runs this beside its tests, and a shared directory would make their
#                      canister builds wait on cargo's lock for this one)
#   ICP_BIN            icp-cli to run `icp build` with (default: `icp` on PATH, else the one
#                      replica/js-test installs; skipped when there is none)
#   IC_WS_REPLICA_BIN  ic-ws-replica: deploys the built wasm into it and calls `get` with the
#                      generated bindings (skipped when unset)
#   IC_WS_GATEWAY_BIN  ic-ws-gateway (with IC_WS_REPLICA_BIN): also a WebSocket round trip,
#                      the client with the generated types through a gateway
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-target}
case $target in /*) ;; *) target=$root/$target ;; esac
export CARGO_TARGET_DIR=$target/template
wasm_target=${IC_WS_CANISTER_TARGET_DIR:-$CARGO_TARGET_DIR}
case $wasm_target in /*) ;; *) wasm_target=$root/$wasm_target ;; esac
tmp=$(mktemp -d "${TMPDIR:-/tmp}/ic-ws-template.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
app=$tmp/counter
say() { printf '  template: %s\n' "$*"; }
fail() { printf 'templates/check.sh: %s\n' "$*" >&2; exit 1; }

# The template as a user gets it (without what a build in place may have left there).
cp -r "$root/templates/rust-canister" "$app"
rm -rf "$app/target" "$app/web/node_modules" "$app/web/dist" "$app/web/src/bindings" "$app/.icp"
cp "$root/Cargo.lock" "$app/Cargo.lock"
mkdir -p "$app/.cargo"
# Appended: the template's own .cargo/config.toml (its build flags) stays.
cat >>"$app/.cargo/config.toml" <<TOML
[patch.crates-io]
ic-ws-canister = { path = "$root/ic-ws-canister" }
ic-ws-protocol = { path = "$root/ic-ws-protocol" }
TOML
cd "$app"

say "cargo test (native: the counter's behaviour, counter.did in sync)"
# Without debug info (nothing here reads it): a cold build took 66 instead of 79 CPU-s.
CARGO_PROFILE_DEV_DEBUG=0 cargo test --quiet
say "cargo build --target wasm32-unknown-unknown --profile canister"
CARGO_TARGET_DIR=$wasm_target cargo build --quiet --target wasm32-unknown-unknown --profile canister
wasm=$wasm_target/wasm32-unknown-unknown/canister/counter.wasm
[ -s "$wasm" ] || fail "no wasm at $wasm"
# The candid:service metadata: the section's name and the interface's ws_app_types line are in it.
LC_ALL=C grep -qF 'icp:public candid:service' "$wasm" || fail "$wasm has no candid:service section"
LC_ALL=C grep -qF "$(grep 'ws_app_types' counter.did)" "$wasm" || fail "$wasm does not carry counter.did"
say "wasm: $wasm ($(wc -c <"$wasm") bytes, candid:service embedded)"

say "@ic-ws/client from npm pack (client-js)"
if [ ! -d "$root/client-js/node_modules" ]; then
  (cd "$root/client-js" && npm ci --no-audit --no-fund --loglevel=error)
fi
(cd "$root/client-js" && npm run --silent build)
tarball=$(cd "$root/client-js" && npm pack --silent --ignore-scripts --pack-destination "$tmp" | tail -n 1)
[ -s "$tmp/$tarball" ] || fail "npm pack wrote no tarball"
cd "$app/web"
npm install --no-audit --no-fund --loglevel=error "$tmp/$tarball"
say "bindings from counter.did (@icp-sdk/bindgen)"
npm run --silent bindgen >/dev/null
grep -q 'export const CounterOut = IDL.Variant' src/bindings/counter.did.ts || fail "the bindings lack CounterOut"
say "tsc --noEmit (the page against the bindings and @ic-ws/client)"
npm run --silent check
npm run --silent build >/dev/null
[ -s dist/main.js ] || fail "the page did not bundle"

icp=${ICP_BIN:-$(command -v icp || true)}
packaged=$root/replica/js-test/node_modules/@icp-sdk/icp-cli-linux-x64/bin/icp
[ -n "$icp" ] || { [ -x "$packaged" ] && icp=$packaged; } || true
cd "$app"
if [ -n "$icp" ]; then
  say "icp build ($("$icp" --version))"
  CARGO_TARGET_DIR=$wasm_target "$icp" build >/dev/null
  artifact=.icp/cache/artifacts/counter
  cmp -s "$artifact" "$wasm" || fail "icp build's artifact ($artifact) is not the cargo-built wasm"
else
  say "icp build: skipped (no icp-cli; set ICP_BIN or install replica/js-test's packages)"
fi

# Deployed: the wasm in ic-ws-replica, a query through the generated bindings and, with a
# gateway, a WebSocket round trip with the generated message types (Node, @ic-ws/client).
replica=${IC_WS_REPLICA_BIN:-}
if [ -n "$replica" ]; then
  [ -x "$replica" ] || fail "IC_WS_REPLICA_BIN=$replica is not an executable"
  say "deploy into ic-ws-replica ($replica)"
  "$replica" --port 0 --json --install "counter=$wasm" >"$tmp/replica.json" 2>"$tmp/replica.log" &
  pids+=($!)
  for _ in $(seq 300); do [ -s "$tmp/replica.json" ] && break; sleep 0.2; done
  [ -s "$tmp/replica.json" ] || fail "the replica did not start: $(tail -5 "$tmp/replica.log")"
  json() { node -e 'const j = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")); console.log(process.argv[2].split(".").reduce((o, k) => o[k], j))' "$tmp/replica.json" "$1"; }
  url=$(json url) root_key=$(json root_key) canister=$(json canisters.counter)
  gateway_url=""
  if [ -n "${IC_WS_GATEWAY_BIN:-}" ]; then
    [ -x "$IC_WS_GATEWAY_BIN" ] || fail "IC_WS_GATEWAY_BIN=$IC_WS_GATEWAY_BIN is not an executable"
    "$IC_WS_GATEWAY_BIN" --listen 127.0.0.1:0 --admin-listen off --network "$url" --fetch-root-key \
      --canister "$canister" --ready-file "$tmp/gateway.json" >"$tmp/gateway.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 300); do [ -s "$tmp/gateway.json" ] && break; sleep 0.2; done
    [ -s "$tmp/gateway.json" ] || fail "the gateway did not start: $(tail -5 "$tmp/gateway.log")"
    gateway_url=ws://$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).listen)' "$tmp/gateway.json")
  fi
  cat >"$app/web/smoke.ts" <<'TS'
// What a first deployment checks: a query through the generated bindings, and (with a gateway)
// the counter over a WebSocket with the generated message types, every message verified.
import { Actor, HttpAgent } from "@icp-sdk/core/agent";
import { IcWsClient } from "@ic-ws/client";
import { CounterIn, CounterOut, idlFactory } from "./src/bindings/counter.did";

const [url, rootKey, canisterId, gatewayUrl] = process.argv.slice(2);
const agent = await HttpAgent.create({ host: url, shouldFetchRootKey: true });
const counter = Actor.createActor(idlFactory, { agent, canisterId });
const before = (await counter.get()) as bigint;
const seen: bigint[] = [];
if (gatewayUrl) {
  const client = new IcWsClient<CounterIn, CounterOut>({
    gatewayUrl, canisterId, rootKey, inboundType: CounterIn, outboundType: CounterOut, storage: null, reconnect: false,
  });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no reply through the gateway in 60 s (saw ${seen})`)), 60_000);
    client.on("error", (e) => { clearTimeout(timer); reject(e); });
    client.on("message", (m) => {
      seen.push(m.data.Value.value);
      if (seen.length === 1) client.send({ Add: 2n });
      else { clearTimeout(timer); resolve(); }
    });
    client.connect();
  });
  client.close();
}
const after = (await counter.get()) as bigint;
const expected = gatewayUrl ? [before, before + 2n] : [];
if (seen.join() !== expected.join() || after !== (gatewayUrl ? before + 2n : before)) {
  throw new Error(`unexpected: get ${before} then ${after}, messages [${seen}]`);
}
console.log(`  template: get() = ${before}${gatewayUrl ? `; over ws: Value ${seen[0]}, Add(2) -> Value ${seen[1]}; get() = ${after}` : ""}`);
TS
  (cd "$app/web" && npx esbuild smoke.ts --bundle --platform=node --format=esm --log-level=warning \
    --banner:js="import { createRequire } from 'module'; const require = createRequire(import.meta.url);" \
    --outfile=smoke.mjs && node smoke.mjs "$url" "$root_key" "$canister" "$gateway_url")
fi
say "ok"
