// Logging in with the test identity provider (replica/test-idp), as Internet Identity's
// AuthClient logs a user in: for the Node and the Chromium identity tests.
import { Actor, HttpAgent } from "@icp-sdk/core/agent";
import { Delegation, DelegationChain, DelegationIdentity, Ed25519KeyIdentity } from "@icp-sdk/core/identity";

/** The test identity provider's interface (replica/test-idp, Internet Identity's shapes). */
const idpFactory = ({ IDL: I }) => {
  const Del = I.Record({ pubkey: I.Vec(I.Nat8), expiration: I.Nat64, targets: I.Opt(I.Vec(I.Principal)) });
  return I.Service({
    prepare_delegation: I.Func([I.Vec(I.Nat8), I.Opt(I.Nat64), I.Opt(I.Vec(I.Principal))],
      [I.Variant({ Ok: I.Record({ user_key: I.Vec(I.Nat8), expiration: I.Nat64 }), Err: I.Text })], []),
    get_delegation: I.Func([I.Vec(I.Nat8), I.Nat64, I.Opt(I.Vec(I.Principal))],
      [I.Variant({ signed_delegation: I.Record({ delegation: Del, signature: I.Vec(I.Nat8) }), no_such_delegation: I.Null })], ["query"]),
  });
};

/**
 * Logs in with the test identity provider as Internet Identity's AuthClient does: a device
 * identity asks it to sign a delegation to a fresh session key; the result is a
 * `DelegationIdentity` whose chain starts at the user's canister-signature key. Returns it with
 * its parts (the session key and the chain), which is what an app keeps to restore the login.
 */
export async function loginWithTestIdp(replicaUrl, idpCanisterId, targets) {
  const device = Ed25519KeyIdentity.generate();
  const agent = await HttpAgent.create({ host: replicaUrl, identity: device, shouldFetchRootKey: true });
  const idp = Actor.createActor(idpFactory, { agent, canisterId: idpCanisterId });
  const session = Ed25519KeyIdentity.generate();
  const key = new Uint8Array(session.getPublicKey().toDer());
  const prepared = await idp.prepare_delegation(key, [30n * 60n * 1_000_000_000n], targets ? [targets] : []);
  if (!("Ok" in prepared)) throw new Error(`prepare_delegation: ${prepared.Err}`);
  const { user_key, expiration } = prepared.Ok;
  // The signature is readable once the certified data of the update is (the next round).
  for (let i = 0; i < 100; i++) {
    const got = await idp.get_delegation(key, expiration, targets ? [targets] : []);
    if ("signed_delegation" in got) {
      const d = got.signed_delegation;
      const delegation = new Delegation(new Uint8Array(d.delegation.pubkey), d.delegation.expiration, d.delegation.targets[0]);
      const chain = DelegationChain.fromDelegations([{ delegation, signature: new Uint8Array(d.signature) }], new Uint8Array(user_key));
      return { identity: DelegationIdentity.fromDelegation(session, chain), session, chain };
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error("the test identity provider never returned the delegation");
}

/** The chat canister's `participants` query (all rooms): `[{ name, principal (text or null), connected }]`. */
export async function chatParticipants(replicaUrl, chatCanisterId) {
  const agent = await HttpAgent.create({ host: replicaUrl, shouldFetchRootKey: true });
  const factory = ({ IDL: I }) => I.Service({
    participants: I.Func([I.Opt(I.Text)], [I.Vec(I.Record({
      participant: I.Record({ client: I.Nat64, name: I.Text, room: I.Text, joined_at_ns: I.Nat64, principal: I.Opt(I.Principal) }),
      connected: I.Bool,
    }))], ["query"]),
  });
  const chat = Actor.createActor(factory, { agent, canisterId: chatCanisterId });
  const list = await chat.participants([]);
  return list.map((p) => ({ name: p.participant.name, principal: p.participant.principal[0]?.toText() ?? null, connected: p.connected }));
}
