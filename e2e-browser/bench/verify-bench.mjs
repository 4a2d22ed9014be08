// Benchmark (issue 5): in Chromium, the time the client takes to verify one received batch
// (certificate BLS + age, tree root, per-message path/hash/sequence, candid decoding) after
// warm-up, and the size of the client bundle (minified and gzip).
//
//   cd e2e-browser && npm run bench        (numbers go to client-js/BENCH.md by hand)
//   npm run bench -- --real                also: real frames from the replica + gateway +
//                                          chat canister, received by the chat page
//
// Batches are certified like the canister's (a test BLS root key; every batch has its own
// certificate, as every poll does), 10 chat messages each, with a tree pruned to the client's
// paths. Two cases: a root-key certificate (local replica) and a subnet-delegated one (mainnet
// shape: two BLS signatures, the delegation's remembered after the first batch).
import { gzipSync } from "node:zlib";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { ensureChromium, launch, chromiumVersion } from "../lib/chromium.mjs";
import { CLIENT_DIR, buildPage, WEB_DIR } from "../lib/page-build.mjs";
import { IDL, Principal, OutboundContentIdl, u64be, toHex } from "../../client-js/dist/index.js";
import { TestRootKey, labeled, labels, leaf, fork, sha256, Cbor, reconstruct } from "../../client-js/test/fake-gateway.mjs";

const WARMUP = 20;
const MEASURED = 100;
const PER_BATCH = 10;

const { build } = await import(pathToFileURL(join(CLIENT_DIR, "node_modules/esbuild/lib/main.js")).href);

async function bundle(entry, format, extra = {}) {
  const r = await build({
    stdin: { contents: entry, resolveDir: CLIENT_DIR, loader: "ts" },
    bundle: true, minify: true, format, platform: "browser", target: "es2022", write: false, logLevel: "error", ...extra,
  });
  return r.outputFiles[0].contents;
}

function sizes(bytes) {
  return { minified: bytes.length, gzip: gzipSync(bytes, { level: 9 }).length };
}

async function batches(count, delegation) {
  const root = new TestRootKey();
  const canisterId = Principal.fromText("bkyz2-fmaaa-aaaaa-qaaaq-cai");
  const clientId = 7n;
  const t0 = 1_700_000_000_000_000_000n;
  const out = [];
  let seq = 0n;
  for (let b = 0; b < count; b++) {
    const messages = [];
    for (let i = 0; i < PER_BATCH; i++, seq++) {
      const payload = IDL.encode([IDL.Variant({ Message: IDL.Record({ from: IDL.Text, text: IDL.Text }) })], [{ Message: { from: "alice", text: `message number ${seq}: the quick brown fox jumps over the lazy dog` } }]);
      const content = IDL.encode([OutboundContentIdl], [{ timestamp_ns: t0 + seq, body: { App: { topic: [], payload } } }]);
      messages.push({ client_id: clientId.toString(), seq: seq.toString(), content: toHex(content) });
    }
    // The canister's tree pruned to this client's messages: other clients and the app are hashes.
    const wsTree = labels([
      [u64be(clientId - 1n), [4, sha256(new Uint8Array([1]))]],
      [u64be(clientId), labels(messages.map((m) => [u64be(BigInt(m.seq)), leaf(sha256(Buffer.from(m.content, "hex")))]))],
      [u64be(clientId + 1n), [4, sha256(new Uint8Array([2]))]],
    ]);
    const tree = fork(labeled("app", [4, sha256(new Uint8Array([3]))]), labeled("ws", wsTree));
    const time = t0 + BigInt(b) * 1_000_000_000n;
    const certificate = await root.certificate(canisterId, await reconstruct(tree), time, delegation ? { ranges: [[canisterId, canisterId]], timeNs: t0 } : undefined);
    out.push({ messages, certificate: toHex(certificate), tree: toHex(new Uint8Array(Cbor.encode(tree))), now: (time + 1_000_000_000n).toString() });
  }
  return { rootKey: toHex(root.der), canisterId: canisterId.toText(), clientId: clientId.toString(), batches: out };
}

async function measure(page, data) {
  return page.evaluate(async ({ data, warmup }) => {
    const { DeliveryVerifier, Principal, fromHex } = globalThis.IcWs;
    const v = new DeliveryVerifier({ rootKeyDer: fromHex(data.rootKey), canisterId: Principal.fromText(data.canisterId), clientId: BigInt(data.clientId) });
    const times = [];
    const cachedTimes = [];
    let next = 0n;
    for (const b of data.batches) {
      const msgs = b.messages.map((m) => ({ client_id: BigInt(m.client_id), seq: BigInt(m.seq), content: fromHex(m.content) }));
      const cert = fromHex(b.certificate);
      const tree = fromHex(b.tree);
      const t = performance.now();
      const out = await v.verify(msgs, cert, tree, next, BigInt(b.now));
      times.push(performance.now() - t);
      // The same frame again: the certificate is the one just verified (as for several
      // frames of one poll), so this is the cost of everything but the BLS check.
      const t2 = performance.now();
      await v.verify(msgs, cert, tree, next, BigInt(b.now));
      cachedTimes.push(performance.now() - t2);
      next += BigInt(out.length);
    }
    const first = times[0];
    const m = times.slice(warmup).sort((a, b) => a - b);
    const pct = (p) => m[Math.min(m.length - 1, Math.floor(p * m.length))];
    const c = cachedTimes.slice(warmup).sort((a, b) => a - b);
    return { first, median: pct(0.5), p95: pct(0.95), max: m[m.length - 1], mean: m.reduce((a, b) => a + b, 0) / m.length, n: m.length, cachedMedian: c[Math.floor(c.length / 2)] };
  }, { data, warmup: WARMUP });
}

const chromium = ensureChromium();
if (chromium.skip) {
  console.error(chromium.skip);
  process.exit(1);
}

const full = sizes(await bundle(`export * from "./src/index.ts";`, "esm"));
const app = sizes(await bundle(`import { IcWsClient, IDL } from "./src/index.ts"; globalThis.x = [IcWsClient, IDL];`, "esm"));
const chatPage = (() => { buildPage(); return null; })();
const { readFileSync } = await import("node:fs");
const page = sizes(readFileSync(join(WEB_DIR, "dist/app.js")));
const iife = Buffer.from(await bundle(`export * from "./src/index.ts";`, "iife", { globalName: "IcWs" })).toString();

/** Real frames: the chat page receives what a Node client says through the real stack. */
async function realStack(browser) {
  const { startStack } = await import("../lib/stack.mjs");
  const { serveStatic } = await import("../lib/static.mjs");
  const { ChatIn, ChatOut, OpenArgs } = await import("../lib/chat-idl.mjs");
  const { IcWsClient, MemoryStorage, fromHex } = await import("../../client-js/dist/index.js");
  const stack = await startStack();
  const web = await serveStatic(join(WEB_DIR, "dist"));
  try {
    const page = await browser.context.newPage();
    const q = new URLSearchParams({ gateway: stack.gatewayUrl, canister: stack.canisterId, rootKey: stack.rootKeyHex, name: "reader" });
    await page.goto(`${web.url}?${q}`);
    await page.waitForSelector("#state[data-state=open]", { timeout: 60_000 });
    await page.evaluate(() => {
      window.__batches = [];
      window.chatClient.on("batch", (b) => window.__batches.push(b));
    });
    const sender = new IcWsClient({
      gatewayUrl: stack.gatewayUrl, canisterId: stack.canisterId, rootKey: fromHex(stack.rootKeyHex),
      inboundType: ChatIn, outboundType: ChatOut, storage: new MemoryStorage(),
      openArgs: IDL.encode([OpenArgs], [{ name: "writer", room: [] }]),
    });
    await new Promise((resolve) => { sender.on("open", resolve); sender.connect(); });
    const total = 300;
    for (let i = 0; i < total; i++) {
      sender.send({ Say: { text: `message number ${i}: the quick brown fox jumps over the lazy dog` } });
      await new Promise((r) => setTimeout(r, 20));
    }
    await page.waitForFunction((n) => window.__batches.reduce((a, b) => a + b.messages, 0) >= n, total, { timeout: 300_000 });
    const batches = await page.evaluate(() => window.__batches);
    sender.disconnect();
    const measured = batches.slice(10).map((b) => b.verifyMs).sort((a, b) => a - b);
    const sizes = batches.slice(10).map((b) => b.messages);
    return {
      batches: batches.length,
      first: batches[0].verifyMs,
      median: measured[Math.floor(measured.length / 2)],
      p95: measured[Math.min(measured.length - 1, Math.floor(measured.length * 0.95))],
      max: measured[measured.length - 1],
      meanMessages: sizes.reduce((a, b) => a + b, 0) / sizes.length,
    };
  } finally {
    await stack.stop();
  }
}

const browser = await launch(chromium.path);
try {
  const results = {};
  for (const [name, delegation] of [["root key (local replica)", false], ["subnet delegation (mainnet shape)", true]]) {
    const p = await browser.context.newPage();
    await p.setContent("<!doctype html><title>bench</title>");
    await p.addScriptTag({ content: iife });
    results[name] = await measure(p, await batches(WARMUP + MEASURED, delegation));
    await p.close();
  }
  const f = (x) => x.toFixed(1);
  console.log(`\n${chromiumVersion(chromium.path)}; ${PER_BATCH} messages per batch; ${WARMUP} warm-up batches, ${MEASURED} measured\n`);
  const { loadavg, cpus } = await import("node:os");
  console.log(`load average ${loadavg().map((x) => x.toFixed(1)).join(" ")} on ${cpus().length} cores\n`);
  console.log("| certificate | first batch (cold) | median | p95 | max | mean | median, certificate already verified |");
  console.log("|---|---|---|---|---|---|---|");
  for (const [name, r] of Object.entries(results)) console.log(`| ${name} | ${f(r.first)} ms | ${f(r.median)} ms | ${f(r.p95)} ms | ${f(r.max)} ms | ${f(r.mean)} ms | ${f(r.cachedMedian)} ms |`);
  if (process.argv.includes("--real")) {
    const r = await realStack(browser);
    console.log(`\nreal stack (replica + gateway + chat canister, chat page, ${r.batches} frames, first 10 are warm-up, ${r.meanMessages.toFixed(1)} messages per frame on average):`);
    console.log("| first frame (cold) | median | p95 | max |");
    console.log("|---|---|---|---|");
    console.log(`| ${f(r.first)} ms | ${f(r.median)} ms | ${f(r.p95)} ms | ${f(r.max)} ms |`);
  }
  const kb = (n) => `${(n / 1024).toFixed(1)} KB`;
  console.log("\n| bundle (esbuild, minified, es2022) | minified | gzip -9 |");
  console.log("|---|---|---|");
  console.log(`| whole package (every export) | ${kb(full.minified)} | ${kb(full.gzip)} |`);
  console.log(`| an app's import (IcWsClient + IDL) | ${kb(app.minified)} | ${kb(app.gzip)} |`);
  console.log(`| the chat page (examples/chat/web dist/app.js) | ${kb(page.minified)} | ${kb(page.gzip)} |`);
  void chatPage;
} finally {
  await browser.close();
}
