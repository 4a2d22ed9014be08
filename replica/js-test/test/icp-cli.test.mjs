// icp-cli (dfx's successor, the binary from npm: @icp-sdk/icp-cli-linux-x64) against the
// embedded replica, connected by URL (`-n <url> -k fetch`), as a developer drives a local
// network: call a canister (update and query), upgrade it (icp-cli installs through the wasm
// chunk store: upload_chunk + install_chunked_code), stop, status, start, settings. State
// survives the upgrade.
//
// What icp-cli 1.5 needs that the replica lacks (measured, so not tested here): `icp canister
// create` resolves subnets through the cycles minting canister (rkp4c-7iaaa-aaaaa-aaaca-cai)
// and `icp canister delete` deposits the cycles to the cycles ledger
// (um5iw-rqaaa-aaaaq-qaaba-cai); create canisters with `ic-ws-replica --install` or the
// management canister's `provisional_create_canister_with_cycles` instead.
//
// Skipped, loudly, where the icp-cli binary is absent (another platform: it is an optional
// dependency); IC_WS_ICP_BIN names another binary.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import { canisterWasm, startReplica } from '../lib/build.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const icp = process.env.IC_WS_ICP_BIN ?? join(here, '../node_modules/@icp-sdk/icp-cli-linux-x64/bin/icp');
const skip = !existsSync(icp) && `icp-cli not found at ${icp} (npm installs it on linux-x64 only; set IC_WS_ICP_BIN)`;
if (skip) console.error(`\n!!! SKIPPING the icp-cli test: ${skip}\n`);

let stopReplica;
after(async () => {
  if (stopReplica) await stopReplica();
});

test('icp-cli: call, upgrade through the chunk store, stop/status/start, settings', { skip, timeout: 600_000 }, async () => {
  const wasm = canisterWasm('IC_WS_TEST_CANISTER_WASM', 'ic-ws-replica-test-canister');
  let startup;
  ({ startup, stop: stopReplica } = await startReplica('js-icp-cli', { test: wasm }));
  const id = startup.canisters.test;
  // What icp prints: results on stdout, progress ("installed successfully") and warnings on
  // stderr; both, stdout first.
  const run = async (...args) => {
    try {
      const { stdout, stderr } = await promisify(execFile)(icp, [...args, '-n', startup.url, '-k', 'fetch'], { timeout: 120_000 });
      return { out: stdout.trim(), all: `${stdout}\n${stderr}` };
    } catch (e) {
      throw new Error(`icp ${args.join(' ')} failed: ${e.stderr || e.message}`);
    }
  };

  const call = async (method, arg) => (await run('canister', 'call', id, method, arg)).out;
  const status = async () => (await run('canister', 'status', id)).all;
  assert.equal(await call('put', '(7 : nat64, "before the upgrade")'), '(2 : nat64)', 'the map holds the greeting and key 7');
  assert.match((await run('canister', 'install', id, '--mode', 'upgrade', '--wasm', wasm, '--args', '(opt "upgraded")')).all, /installed successfully/);
  assert.equal(await call('get', '(7 : nat64)'), '(opt "before the upgrade")', 'state kept across the upgrade');
  assert.equal(await call('get', '(0 : nat64)'), '(opt "upgraded")', 'the upgrade argument reached post_upgrade');

  await run('canister', 'stop', id);
  assert.match(await status(), /Status: Stopped/);
  await run('canister', 'start', id);
  assert.match(await status(), /Status: Running/);

  const extra = 'aaaaa-aa';
  await run('canister', 'settings', 'update', id, '--add-controller', extra);
  assert.match(await status(), new RegExp(extra));
});
