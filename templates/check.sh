#!/usr/bin/env bash
# Builds templates/rust-canister as a user would, outside this repository: copies it to a
# temporary directory and there runs its native tests (behaviour, and counter.did in sync with
# the code), builds the canister wasm (release `canister` profile, wasm32) and checks that it
# carries its candid interface, generates the page's TypeScript bindings from counter.did with
# @icp-sdk/bindgen, type-checks the page (`tsc --noEmit`) and bundles it; with icp-cli at
# hand it also runs `icp build` on the template's icp.yaml.
#
# The template names its dependencies as a user writes them (`ic-ws-canister = "0.1"`,
# `"@ic-ws/client": "^0.1.0"`); here they come from this repository: a `[patch.crates-io]` in
# the copy's .cargo/config.toml, and the client-js tarball of `npm pack`. The repository's
# Cargo.lock seeds the copy's, so the template builds with the versions the workspace tests.
#
# Usage: templates/check.sh
#   CARGO_TARGET_DIR   the template builds in $CARGO_TARGET_DIR/template (default target/template)
#   ICP_BIN            icp-cli to run `icp build` with (default: `icp` on PATH, else the one
#                      replica/js-test installs; skipped when there is none)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-target}
case $target in /*) ;; *) target=$root/$target ;; esac
export CARGO_TARGET_DIR=$target/template
tmp=$(mktemp -d "${TMPDIR:-/tmp}/ic-ws-template.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
app=$tmp/counter
say() { printf '  template: %s\n' "$*"; }
fail() { printf 'templates/check.sh: %s\n' "$*" >&2; exit 1; }

# The template as a user gets it (without what a build in place may have left there).
cp -r "$root/templates/rust-canister" "$app"
rm -rf "$app/target" "$app/web/node_modules" "$app/web/dist" "$app/web/src/bindings" "$app/.icp"
cp "$root/Cargo.lock" "$app/Cargo.lock"
mkdir -p "$app/.cargo"
cat >"$app/.cargo/config.toml" <<TOML
[patch.crates-io]
ic-ws-canister = { path = "$root/ic-ws-canister" }
ic-ws-protocol = { path = "$root/ic-ws-protocol" }
TOML
cd "$app"

say "cargo test (native: the counter's behaviour, counter.did in sync)"
cargo test --quiet
say "cargo build --target wasm32-unknown-unknown --profile canister"
cargo build --quiet --target wasm32-unknown-unknown --profile canister
wasm=$CARGO_TARGET_DIR/wasm32-unknown-unknown/canister/counter.wasm
[ -s "$wasm" ] || fail "no wasm at $wasm"
# The candid:service metadata: the section's name and the interface's last line are in it.
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
  "$icp" build >/dev/null
  artifact=.icp/cache/artifacts/counter
  cmp -s "$artifact" "$wasm" || fail "icp build's artifact ($artifact) is not the cargo-built wasm"
else
  say "icp build: skipped (no icp-cli; set ICP_BIN or install replica/js-test's packages)"
fi
say "ok"
