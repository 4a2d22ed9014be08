// The real stack for the browser test and the bench: builds the chat canister to wasm and the
// replica and gateway binaries (cargo, incremental), then starts
//   ic-ws-replica --port 0 --json --install chat=<wasm>
//   ic-ws-gateway --listen 127.0.0.1:0 --network <replica> --fetch-root-key --canister <chat>
// and returns their addresses and the replica's root key (the page verifies against it). The
// chat is reinstalled at once with that root key as its install argument, so that it verifies
// canister signatures (Internet Identity logins, here the test identity provider's) under it.
import { execFile, execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { ROOT } from "./page-build.mjs";
import { start, stop } from "./proc.mjs";

export const TARGET_DIR = process.env.CARGO_TARGET_DIR || join(ROOT, "target");

function cargo(args) {
  console.error(`[build] cargo ${args.join(" ")}`);
  execFileSync("cargo", args, { cwd: ROOT, stdio: ["ignore", "inherit", "inherit"] });
}

/**
 * Builds what the stack needs; returns the paths. `IC_WS_CHAT_WASM`, `IC_WS_REPLICA_BIN` and
 * `IC_WS_GATEWAY_BIN` name prebuilt artefacts instead (each one given is not built).
 */
export function buildStack({ ticker = false, idp = false } = {}) {
  const env = process.env;
  if (!env.IC_WS_CHAT_WASM) cargo(["build", "--target", "wasm32-unknown-unknown", "--profile", "canister", "-p", "ic-ws-example-chat"]);
  if (ticker && !env.IC_WS_TICKER_WASM) cargo(["build", "--target", "wasm32-unknown-unknown", "--profile", "canister", "-p", "ic-ws-example-ticker"]);
  if (idp && !env.IC_WS_TEST_IDP_WASM) cargo(["build", "--target", "wasm32-unknown-unknown", "--profile", "canister", "-p", "ic-ws-replica-test-idp"]);
  const bins = [];
  if (!env.IC_WS_REPLICA_BIN) bins.push("-p", "ic-ws-replica");
  if (!env.IC_WS_GATEWAY_BIN) bins.push("-p", "ic-ws-gateway");
  if (bins.length) cargo(["build", ...bins, "--bins"]);
  const paths = {
    wasm: env.IC_WS_CHAT_WASM || join(TARGET_DIR, "wasm32-unknown-unknown/canister/ic_ws_example_chat.wasm"),
    ...(ticker ? { tickerWasm: env.IC_WS_TICKER_WASM || join(TARGET_DIR, "wasm32-unknown-unknown/canister/ic_ws_example_ticker.wasm") } : {}),
    ...(idp ? { idpWasm: env.IC_WS_TEST_IDP_WASM || join(TARGET_DIR, "wasm32-unknown-unknown/canister/ic_ws_replica_test_idp.wasm") } : {}),
    replica: env.IC_WS_REPLICA_BIN || join(TARGET_DIR, "debug/ic-ws-replica"),
    gateway: env.IC_WS_GATEWAY_BIN || join(TARGET_DIR, "debug/ic-ws-gateway"),
  };
  for (const [what, p] of Object.entries(paths)) if (!existsSync(p)) throw new Error(`${what} not built: ${p}`);
  return paths;
}

async function waitForFile(path, ms) {
  const end = Date.now() + ms;
  while (!existsSync(path)) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${path}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return readFileSync(path, "utf8");
}

/**
 * Reinstalls the (empty) chat canister with the replica's root key as its install argument
 * (`ic-ws-replica upgrade --mode reinstall`, as the anonymous principal that controls the
 * canisters of `--install`).
 */
export async function withRootKey(replicaBin, url, canisterId, wasm, rootKeyHex) {
  const arg = `(opt record { ic_root_key = opt blob "${rootKeyHex.replace(/(..)/g, "\\$1")}" })`;
  try {
    await promisify(execFile)(replicaBin, ["upgrade", "--url", url, "--mode", "reinstall", `${canisterId}=${wasm}:${arg}`]);
  } catch (e) {
    throw new Error(`reinstalling the chat with the root key failed: ${e.stderr || e.message}`);
  }
}

/** Starts replica (with the chat canister, and the ticker's when built) and gateway. */
export async function startStack(paths = buildStack()) {
  const installs = ["--install", `chat=${paths.wasm}`];
  if (paths.tickerWasm) installs.push("--install", `ticker=${paths.tickerWasm}`);
  if (paths.idpWasm) installs.push("--install", `idp=${paths.idpWasm}`);
  const replica = await start("replica", paths.replica, ["--port", "0", "--json", ...installs], {
    ready: (l) => l.startsWith("{"),
    timeoutMs: 180_000,
  });
  const info = JSON.parse(replica.line);
  const canisterId = info.canisters.chat;
  try {
    await withRootKey(paths.replica, info.url, canisterId, paths.wasm, info.root_key);
  } catch (e) {
    await stop(replica.child);
    throw e;
  }
  const dir = mkdtempSync(join(tmpdir(), "ic-ws-gateway-"));
  const readyFile = join(dir, "ready.json");
  const gatewayArgs = [
    "--listen", "127.0.0.1:0", "--admin-listen", "off", "--ready-file", readyFile,
    "--network", info.url, "--fetch-root-key", "--identity-file", join(dir, "identity.pem"),
    "--canister", canisterId,
    ...(info.canisters.ticker ? ["--canister", info.canisters.ticker] : []),
  ];
  const gwChild = start("gateway", paths.gateway, gatewayArgs, { ready: () => false, timeoutMs: 600_000 });
  gwChild.catch(() => {});
  let ready;
  try {
    ready = JSON.parse(await Promise.race([waitForFile(readyFile, 60_000), gwChild.then(() => { throw new Error("gateway exited"); })]));
  } catch (e) {
    await stop(replica.child);
    throw e;
  }
  return {
    replicaUrl: info.url,
    canisterId,
    tickerCanisterId: info.canisters.ticker,
    idpCanisterId: info.canisters.idp,
    rootKeyHex: info.root_key,
    gatewayUrl: `ws://${ready.listen}`,
    gatewayPrincipal: ready.principal,
    async stop() {
      const { stopAll } = await import("./proc.mjs");
      await stopAll();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
