// The Rust test vectors (ic-ws-protocol/test-vectors/vectors.json) run by the bundled client
// inside Chromium: signing bytes, signatures and every delivery check, as in Node.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { ensureChromium, launch } from "../lib/chromium.mjs";
import { buildPage, ROOT } from "../lib/page-build.mjs";
import { clientIife } from "../lib/client-bundle.mjs";

const chromium = ensureChromium();
if (!chromium.skip) buildPage();

test("browser: the Rust test vectors pass in Chromium", { skip: chromium.skip, timeout: 120_000 }, async () => {
  const vectors = JSON.parse(readFileSync(join(ROOT, "ic-ws-protocol/test-vectors/vectors.json"), "utf8"));
  const browser = await launch(chromium.path);
  try {
    const page = await browser.context.newPage();
    await page.setContent("<!doctype html><title>vectors</title>");
    await page.addScriptTag({ content: await clientIife() });
    const result = await page.evaluate(async (V) => {
      const { SessionKey, Principal, openSigningBytes, messageSigningBytes, toHex, fromHex, DeliveryVerifier } = globalThis.IcWs;
      const canister = Principal.fromText(V.canister_id);
      const key = SessionKey.fromHex(V.session_key.seed);
      const out = { opens: [], messages: [], deliveries: [] };
      for (const o of V.opens) {
        const r = o.request;
        const req = {
          client_key: fromHex(r.client_key), gateway: Principal.fromText(r.gateway), timestamp_ns: BigInt(r.timestamp_ns),
          resume: r.resume ? [{ client_id: BigInt(r.resume.client_id), next_outbound_seq: BigInt(r.resume.next_outbound_seq) }] : [],
          args: fromHex(r.args),
          // Issue 10: an open may carry an identity proof (covered by the signing bytes).
          identity: r.identity
            ? [{
                sender_pubkey: fromHex(r.identity.sender_pubkey),
                delegations: r.identity.delegations.map((d) => ({
                  delegation: {
                    pubkey: fromHex(d.pubkey),
                    expiration: BigInt(d.expiration),
                    targets: d.targets ? [d.targets.map((t) => Principal.fromText(t))] : [],
                    permissions: [],
                  },
                  signature: fromHex(d.signature),
                })),
              }]
            : [],
        };
        out.opens.push([o.name, toHex(openSigningBytes(canister, req)) === o.signing_bytes, toHex(key.signOpen(canister, req).signature) === o.signature]);
      }
      for (const m of V.messages) {
        const k = m.message.kind;
        const kind = k === "KeepAlive" ? { KeepAlive: null } : k.App !== undefined ? { App: fromHex(k.App) } : { Close: k.Close };
        const msg = { client_id: BigInt(m.message.client_id), seq: BigInt(m.message.seq), ack: BigInt(m.message.ack), kind };
        out.messages.push([m.name, toHex(messageSigningBytes(canister, msg)) === m.signing_bytes, toHex(key.signMessage(canister, msg).signature) === m.signature]);
      }
      for (const c of V.delivery.cases) {
        const v = new DeliveryVerifier({ rootKeyDer: fromHex(c.root_key), canisterId: canister, clientId: BigInt(V.delivery.client_id), maxCertificateAgeNs: BigInt(V.delivery.max_certificate_age_ns) });
        const msgs = c.messages.map((m) => ({ client_id: BigInt(m.client_id), seq: BigInt(m.seq), content: fromHex(m.content) }));
        try {
          const verified = await v.verify(msgs, fromHex(c.certificate), fromHex(c.tree), BigInt(V.delivery.next_seq), BigInt(c.now_ns));
          out.deliveries.push([c.name, c.expect_error, null, verified.length]);
        } catch (e) {
          out.deliveries.push([c.name, c.expect_error, e.check ?? String(e), 0]);
        }
      }
      return out;
    }, vectors);
    assert.equal(result.opens.length, vectors.opens.length);
    for (const [name, bytesOk, sigOk] of [...result.opens, ...result.messages]) {
      assert.ok(bytesOk, `signing bytes of ${name}`);
      assert.ok(sigOk, `signature of ${name}`);
    }
    assert.equal(result.deliveries.length, vectors.delivery.cases.length);
    for (const [name, expected, got, n] of result.deliveries) {
      if (expected) assert.equal(got, expected, `delivery ${name}`);
      else assert.ok(got === null && n > 0, `delivery ${name} verifies (got ${got})`);
    }
  } finally {
    await browser.close();
  }
});
