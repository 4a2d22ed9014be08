// Issue 10 in Chromium: the bundled client opens chat sessions with real @icp-sdk/core
// identities made in the page (Ed25519, secp256k1, P-256 through WebCrypto, a delegation
// chain) and with a login from the test identity provider (a canister-signature delegation, as
// Internet Identity gives it; made by Node and restored in the page from its JSON, as an app
// restores a stored login), through the REAL gateway, replica and chat canister. The client
// checks the certified `Opened` binds each identity's principal; the canister's own
// `participants` list agrees.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { ensureChromium, launch } from "../lib/chromium.mjs";
import { buildPage } from "../lib/page-build.mjs";
import { clientIife } from "../lib/client-bundle.mjs";
import { stopAll } from "../lib/proc.mjs";

const chromium = ensureChromium();
const dist = chromium.skip ? undefined : buildPage();
after(stopAll);

test("browser: identities of every kind open sessions bound to their principal (Chromium, real stack)", { skip: chromium.skip, timeout: 900_000 }, async () => {
  const { serveStatic } = await import("../lib/static.mjs");
  const { startStack, buildStack } = await import("../lib/stack.mjs");
  const { chatParticipants, loginWithTestIdp } = await import("../../client-js/test/lib/test-idp.mjs");
  const { IDL, Principal } = await import("../../client-js/dist/index.js");
  const { OpenArgs } = await import("../lib/chat-idl.mjs");
  const stack = await startStack(buildStack({ idp: true }));
  // A page on http://127.0.0.1 (a secure context: WebCrypto, which P-256 identities use).
  const web = await serveStatic(dist);
  const browser = await launch(chromium.path);
  try {
    const login = await loginWithTestIdp(stack.replicaUrl, stack.idpCanisterId, [Principal.fromText(stack.canisterId)]);
    const kinds = ["ed25519", "secp256k1", "p256", "chain", "test-idp"];
    const openArgs = Object.fromEntries(kinds.map((k) => [k, Buffer.from(IDL.encode([OpenArgs], [{ name: `web-${k}`, room: [] }])).toString("hex")]));
    const page = await browser.context.newPage();
    await page.goto(`${web.url}/index.html?gateway=none&canister=${stack.canisterId}`);
    await page.addScriptTag({ content: await clientIife({ withIdentities: true }) });
    const results = await page.evaluate(async (T) => {
      const W = globalThis.IcWs;
      const identities = {
        ed25519: W.Ed25519KeyIdentity.generate(),
        secp256k1: W.Secp256k1KeyIdentity.generate(),
        p256: await W.ECDSAKeyIdentity.generate(),
        chain: await (async () => {
          const root = W.Ed25519KeyIdentity.generate();
          const middle = W.Ed25519KeyIdentity.generate();
          const chain = await W.DelegationChain.create(root, middle.getPublicKey(), new Date(Date.now() + 3600_000));
          return W.DelegationIdentity.fromDelegation(middle, chain);
        })(),
        "test-idp": W.DelegationIdentity.fromDelegation(W.Ed25519KeyIdentity.fromJSON(T.login.session), W.DelegationChain.fromJSON(T.login.chain)),
      };
      const out = {};
      await Promise.all(Object.entries(identities).map(([kind, identity]) => new Promise((resolve) => {
        const client = new W.IcWsClient({
          gatewayUrl: T.gateway, canisterId: T.canister, rootKey: T.rootKey, identity,
          openArgs: W.fromHex(T.openArgs[kind]), storage: null,
        });
        const errors = [];
        const timer = setTimeout(() => { out[kind] = { opened: false, errors }; resolve(); }, 120_000);
        client.on("error", (e) => errors.push(`${e.kind}: ${e.message}`));
        client.on("open", () => {
          clearTimeout(timer);
          out[kind] = { opened: true, expected: identity.getPrincipal().toText(), client: client.principal?.toText(), errors };
          resolve();
        });
        client.connect();
      })));
      return out;
    }, { gateway: stack.gatewayUrl, canister: stack.canisterId, rootKey: stack.rootKeyHex, openArgs, login: { session: JSON.stringify(login.session.toJSON()), chain: JSON.stringify(login.chain.toJSON()) } });
    const listed = new Map((await chatParticipants(stack.replicaUrl, stack.canisterId)).map((p) => [p.name, p.principal]));
    for (const kind of kinds) {
      const r = results[kind];
      assert.ok(r?.opened, `${kind}: the session opened (the client verified the certified Opened binds its principal): ${JSON.stringify(r)}`);
      assert.equal(r.client, r.expected, `${kind}: client.principal`);
      assert.equal(listed.get(`web-${kind}`), r.expected, `${kind}: the canister bound the identity's principal`);
      assert.deepEqual(r.errors, [], `${kind}: no errors`);
    }
    assert.equal(results["test-idp"].expected, login.identity.getPrincipal().toText(), "the restored login is the test IdP user");
  } finally {
    await browser.close();
    await stack.stop();
  }
});
