// The unmodified @icp-sdk/core agent (6.1) against ic-ws-replica, verification on: the root
// key comes from /api/v2/status, updates are certified (BLS), queries are node-signed.
//
// Starts `ic-ws-replica --port 0 --json --install test=<test canister>`; the binary and the
// canister are built with cargo unless IC_WS_REPLICA_BIN / IC_WS_TEST_CANISTER_WASM are set.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Actor, Certificate, HttpAgent, lookupResultToBuffer } from '@icp-sdk/core/agent';
import { Ed25519KeyIdentity } from '@icp-sdk/core/identity';
import { IDL } from '@icp-sdk/core/candid';
import { Principal } from '@icp-sdk/core/principal';

import { canisterWasm, startReplica } from '../lib/build.mjs';

// The part of the test canister's interface used here.
const idlFactory = ({ IDL }) =>
  IDL.Service({
    put: IDL.Func([IDL.Nat64, IDL.Text], [IDL.Nat64], []),
    get: IDL.Func([IDL.Nat64], [IDL.Opt(IDL.Text)], ['query']),
    whoami: IDL.Func([], [IDL.Principal], ['query']),
    certificate: IDL.Func([], [IDL.Opt(IDL.Vec(IDL.Nat8))], ['query']),
  });

let stopReplica;
let startup;

before(async () => {
  const wasm = canisterWasm('IC_WS_TEST_CANISTER_WASM', 'ic-ws-replica-test-canister');
  ({ startup, stop: stopReplica } = await startReplica('js-test', { test: wasm }));
});

after(async () => {
  if (stopReplica) await stopReplica();
});

test('startup line names the URL, root key and canister', () => {
  assert.match(startup.url, /^http:\/\/127\.0\.0\.1:\d+$/);
  assert.equal(startup.root_key.length, 133 * 2);
  assert.ok(Principal.fromText(startup.canisters.test));
});

test('update and query through an Actor with verification on', async () => {
  const identity = Ed25519KeyIdentity.generate();
  const agent = await HttpAgent.create({ host: startup.url, identity, shouldFetchRootKey: true });
  assert.equal(Buffer.from(agent.rootKey).toString('hex'), startup.root_key);
  const canisterId = Principal.fromText(startup.canisters.test);
  const actor = Actor.createActor(idlFactory, { agent, canisterId });

  const len = await actor.put(7n, 'seven'); // v4 call, certificate verified against the root key
  assert.equal(typeof len, 'bigint');
  assert.deepEqual(await actor.get(7n), ['seven']); // v3 query, node signature verified
  assert.equal((await actor.whoami()).toText(), identity.getPrincipal().toText());

  // the data certificate the canister saw verifies with the SDK's own Certificate class
  const [certificate] = await actor.certificate();
  assert.ok(certificate, 'queries see a data certificate');
  const cert = await Certificate.create({
    certificate: new Uint8Array(certificate),
    rootKey: agent.rootKey,
    principal: { canisterId },
  });
  const certified = lookupResultToBuffer(cert.lookup_path(['canister', canisterId.toUint8Array(), 'certified_data']));
  assert.equal(Buffer.from(certified).readBigUInt64BE(0), len);
});

test('a tampered certificate is refused by the SDK', async () => {
  const agent = await HttpAgent.create({ host: startup.url, shouldFetchRootKey: true });
  const canisterId = Principal.fromText(startup.canisters.test);
  const actor = Actor.createActor(idlFactory, { agent, canisterId });
  const [certificate] = await actor.certificate();
  const bytes = new Uint8Array(certificate);
  bytes[bytes.length - 5] ^= 1; // inside the BLS signature (the map's last field)
  await assert.rejects(
    Certificate.create({ certificate: bytes, rootKey: agent.rootKey, principal: { canisterId } }),
  );
});
