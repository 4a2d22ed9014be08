// scratch (not committed): JS client against replica + gateway + e2e test-app
import { start, stopAll } from "./lib/proc.mjs";
import { IcWsClient, IDL, fromHex, MemoryStorage } from "../client-js/dist/index.js";
import { mkdtempSync, readFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { tmpdir } from "node:os";
const wasm = "/work/targets/canister/wasm32-unknown-unknown/canister/ic_ws_e2e_test_app.wasm";
try {
  const r = await start("replica", process.env.REPLICA, ["--port", "0", "--json", "--install", `test=${wasm}`], { ready: (l) => l.startsWith("{"), timeoutMs: 120000 });
  const info = JSON.parse(r.line);
  console.log(info);
  const dir = mkdtempSync(join(tmpdir(), "gw-"));
  const rf = join(dir, "ready.json");
  start("gateway", process.env.GATEWAY, ["--listen", "127.0.0.1:0", "--admin-listen", "off", "--ready-file", rf, "--network", info.url, "--fetch-root-key", "--identity-file", join(dir, "id.pem"), "--canister", info.canisters.test], { ready: () => false }).catch((e) => console.error(String(e)));
  while (!existsSync(rf)) await new Promise((r) => setTimeout(r, 100));
  const ready = JSON.parse(readFileSync(rf, "utf8"));
  console.log(ready);
  const Inbound = IDL.Variant({ Echo: IDL.Text, Subscribe: IDL.Text, CloseMe: IDL.Null, Fail: IDL.Null });
  const Outbound = IDL.Variant({ Echo: IDL.Text, Text: IDL.Text, Bytes: IDL.Vec(IDL.Nat8) });
  const c = new IcWsClient({ gatewayUrl: `ws://${ready.listen}`, canisterId: info.canisters.test, rootKey: fromHex(info.root_key), inboundType: Inbound, outboundType: Outbound, openArgs: IDL.encode([IDL.Text], ["alice"]), storage: new MemoryStorage() });
  c.on("state", (s) => console.log("state", s));
  c.on("open", (o) => console.log("open", o));
  c.on("error", (e) => console.log("error", e.kind, e.message));
  c.on("close", (e) => console.log("close", e));
  const got = new Promise((res) => c.on("message", (m) => { console.log("message", m); res(); }));
  c.connect();
  c.send({ Echo: "hello from js" });
  await Promise.race([got, new Promise((_, rej) => setTimeout(() => rej(new Error("timeout")), 30000))]);
  c.send({ Fail: null });
  await new Promise((r) => setTimeout(r, 3000));
  c.close();
  await new Promise((r) => setTimeout(r, 3000));
} finally {
  await stopAll();
}
