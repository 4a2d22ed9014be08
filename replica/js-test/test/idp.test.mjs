// Logging in "with Internet Identity" from Node: the identity-provider test canister
// (replica/test-idp) signs a delegation with a canister signature, @icp-sdk/core's
// DelegationChain / DelegationIdentity use it, and the replica verifies it as the IC does.
//
// Starts `ic-ws-replica --port 0 --json --install idp=<IdP wasm> --install test=<test canister>`;
// the binary and canisters are built with cargo unless IC_WS_REPLICA_BIN,
// IC_WS_TEST_IDP_WASM and IC_WS_TEST_CANISTER_WASM are set.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Actor, HttpAgent } from '@icp-sdk/core/agent';
import {
  Delegation,
  DelegationChain,
  DelegationIdentity,
  Ed25519KeyIdentity,
} from '@icp-sdk/core/identity';
import { Principal } from '@icp-sdk/core/principal';

import { canisterWasm, startReplica } from '../lib/build.mjs';

const idpFactory = ({ IDL }) => {
  const Delegation = IDL.Record({
    pubkey: IDL.Vec(IDL.Nat8),
    expiration: IDL.Nat64,
    targets: IDL.Opt(IDL.Vec(IDL.Principal)),
  });
  return IDL.Service({
    prepare_delegation: IDL.Func(
      [IDL.Vec(IDL.Nat8), IDL.Opt(IDL.Nat64), IDL.Opt(IDL.Vec(IDL.Principal))],
      [IDL.Variant({
        Ok: IDL.Record({ user_key: IDL.Vec(IDL.Nat8), expiration: IDL.Nat64 }),
        Err: IDL.Text,
      })],
      [],
    ),
    get_delegation: IDL.Func(
      [IDL.Vec(IDL.Nat8), IDL.Nat64, IDL.Opt(IDL.Vec(IDL.Principal))],
      [IDL.Variant({
        signed_delegation: IDL.Record({ delegation: Delegation, signature: IDL.Vec(IDL.Nat8) }),
        no_such_delegation: IDL.Null,
      })],
      ['query'],
    ),
    whoami: IDL.Func([], [IDL.Principal], []),
  });
};
const testFactory = ({ IDL }) => IDL.Service({ whoami: IDL.Func([], [IDL.Principal], ['query']) });

let stopReplica;
let startup;

before(async () => {
  const idp = canisterWasm('IC_WS_TEST_IDP_WASM', 'ic-ws-replica-test-idp');
  const testWasm = canisterWasm('IC_WS_TEST_CANISTER_WASM', 'ic-ws-replica-test-canister');
  ({ startup, stop: stopReplica } = await startReplica('js-idp', { idp, test: testWasm }));
});

after(async () => {
  if (stopReplica) await stopReplica();
});

/** The II flow: a device identity prepares a delegation to `session`, then fetches it. */
async function login(session, targets) {
  const device = Ed25519KeyIdentity.generate();
  const agent = await HttpAgent.create({ host: startup.url, identity: device, shouldFetchRootKey: true });
  const idp = Actor.createActor(idpFactory, { agent, canisterId: Principal.fromText(startup.canisters.idp) });
  const sessionKey = new Uint8Array(session.getPublicKey().toDer());
  const t = targets ? [targets] : [];
  const prepared = await idp.prepare_delegation(sessionKey, [], t);
  assert.ok('Ok' in prepared, JSON.stringify(prepared, (_, v) => (typeof v === 'bigint' ? v.toString() : v)));
  const { user_key, expiration } = prepared.Ok;
  const reply = await idp.get_delegation(sessionKey, expiration, t);
  assert.ok('signed_delegation' in reply);
  const { delegation, signature } = reply.signed_delegation;
  const chain = DelegationChain.fromDelegations(
    [{
      delegation: new Delegation(
        new Uint8Array(delegation.pubkey),
        delegation.expiration,
        delegation.targets[0],
      ),
      signature: new Uint8Array(signature),
    }],
    new Uint8Array(user_key),
  );
  return { chain, userKey: new Uint8Array(user_key) };
}

async function whoami(identity, name) {
  const agent = await HttpAgent.create({ host: startup.url, identity, shouldFetchRootKey: true });
  const canisterId = Principal.fromText(startup.canisters[name]);
  const factory = name === 'idp' ? idpFactory : testFactory;
  return Actor.createActor(factory, { agent, canisterId }).whoami();
}

test('a canister-signature delegation from the IdP authenticates its principal', async () => {
  for (const targets of [undefined, [Principal.fromText(startup.canisters.test)]]) {
    const session = Ed25519KeyIdentity.generate();
    const { chain, userKey } = await login(session, targets);
    const identity = DelegationIdentity.fromDelegation(session, chain);
    const user = Principal.selfAuthenticating(userKey);
    assert.equal(identity.getPrincipal().toText(), user.toText());
    assert.equal((await whoami(identity, 'test')).toText(), user.toText());
    if (targets) {
      // The delegation names the test canister only: the IdP itself is refused.
      await assert.rejects(whoami(identity, 'idp'), /target/i);
    } else {
      assert.equal((await whoami(identity, 'idp')).toText(), user.toText());
    }
  }
});

test('a tampered canister signature is refused by the replica', async () => {
  const session = Ed25519KeyIdentity.generate();
  const { chain } = await login(session);
  const json = chain.toJSON();
  const sig = json.delegations[0].signature;
  // Flip a bit near the end (in the witness tree).
  const at = sig.length - 40;
  json.delegations[0].signature = sig.slice(0, at) + ((parseInt(sig[at], 16) ^ 1).toString(16)) + sig.slice(at + 1);
  const tampered = DelegationIdentity.fromDelegation(session, DelegationChain.fromJSON(json));
  await assert.rejects(whoami(tampered, 'idp'), /Invalid delegation|400/);
});
