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

/**
 * Starts the replica with `--json` and the given canisters (`{ name: wasmPath }`); resolves to
 * `{ startup, stop }`: the startup line (URL, root key, canister ids) and a function that
 * stops the process (SIGTERM, waits for the exit).
 */
export async function startReplica(seed, canisters) {
  const { spawn } = await import('node:child_process');
  const { createInterface } = await import('node:readline');
  const args = ['--port', '0', '--json', '--seed', seed];
  for (const [name, wasm] of Object.entries(canisters)) args.push('--install', `${name}=${wasm}`);
  const replica = spawn(replicaBinary(), args, { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines = createInterface({ input: replica.stdout });
  const startup = await new Promise((resolveStartup, reject) => {
    replica.once('exit', (code) => reject(new Error(`ic-ws-replica exited early with ${code}`)));
    lines.once('line', (line) => resolveStartup(JSON.parse(line)));
  });
  const stop = async () => {
    if (replica.exitCode !== null) return;
    const exited = new Promise((r) => replica.once('exit', r));
    replica.kill('SIGTERM');
    await exited;
  };
  return { startup, stop };
}
