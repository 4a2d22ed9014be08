// What the replica's JS tests need built: the replica binary and canister wasm, from the
// variables scripts/test sets (IC_WS_REPLICA_BIN, IC_WS_*_WASM) or else by cargo.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const workspace = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const cargo = process.env.CARGO ?? 'cargo';

/** Runs cargo with --message-format=json and returns the artefact file names it reports. */
function cargoArtifacts(args) {
  const out = execFileSync(cargo, [...args, '--message-format=json-render-diagnostics'], {
    cwd: workspace,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
    maxBuffer: 64 * 1024 * 1024,
  });
  const files = [];
  for (const line of out.split('\n')) {
    if (!line.startsWith('{')) continue;
    const message = JSON.parse(line);
    if (message.reason !== 'compiler-artifact') continue;
    if (message.executable) files.push(message.executable);
    for (const file of message.filenames ?? []) files.push(file);
  }
  return files;
}

/** The ic-ws-replica binary: `IC_WS_REPLICA_BIN`, or built by cargo. */
export function replicaBinary() {
  if (process.env.IC_WS_REPLICA_BIN) return process.env.IC_WS_REPLICA_BIN;
  const files = cargoArtifacts(['build', '-p', 'ic-ws-replica', '--bin', 'ic-ws-replica']);
  const bin = files.find((f) => /[\\/]ic-ws-replica(\.exe)?$/.test(f));
  assert.ok(bin, `cargo did not report the ic-ws-replica binary: ${files.join(', ')}`);
  return bin;
}

/** The wasm of canister package `pkg`: the file named by `envVar`, or built by cargo. */
export function canisterWasm(envVar, pkg) {
  if (process.env[envVar]) return process.env[envVar];
  const files = cargoArtifacts([
    'build', '--target', 'wasm32-unknown-unknown', '--profile', 'canister',
    '-p', pkg, '--target-dir', resolve(workspace, 'target', 'canisters'),
  ]);
  const wasm = files.find((f) => f.endsWith('.wasm'));
  assert.ok(wasm, `cargo did not report the ${pkg} wasm: ${files.join(', ')}`);
  return wasm;
}
