/**
 * Live prices from the ticker canister: subscribes to symbols and shows each quote as it
 * arrives, every one verified in the page (IC certificate, tree, sequence) before display.
 *
 * Configuration: `config.json` next to the page or query parameters `gateway`, `canister`,
 * `rootKey` (hex DER; omit on mainnet) and `symbols` (comma-separated, default ICP,BTC,ETH).
 */
import { IcWsClient, fromHex } from "@ic-ws/client";
import { TickerIn, TickerOut } from "./ticker-types.js";
import type { Quote } from "./ticker-types.js";

interface Config { gateway: string; canister: string; rootKey?: string }
const $ = (id: string) => document.getElementById(id) as HTMLElement;

async function loadConfig(): Promise<Config> {
  let file: Partial<Config> = {};
  try {
    const r = await fetch("./config.json", { cache: "no-store" });
    if (r.ok) file = (await r.json()) as Partial<Config>;
  } catch {
    // Query parameters only.
  }
  const q = new URLSearchParams(location.search);
  const gateway = q.get("gateway") ?? file.gateway;
  const canister = q.get("canister") ?? file.canister;
  if (!gateway || !canister) throw new Error("no gateway/canister configured (config.json or ?gateway=&canister=)");
  return { gateway, canister, rootKey: q.get("rootKey") ?? file.rootKey };
}

const rows = new Map<string, { price: HTMLElement; change: HTMLElement; tick: HTMLElement; verified: HTMLElement; last?: number }>();

function row(symbol: string) {
  let r = rows.get(symbol);
  if (r) return r;
  const tr = document.createElement("tr");
  const cells = ["symbol", "price", "change", "tick", "verified"].map((c) => {
    const td = document.createElement("td");
    td.className = c;
    tr.appendChild(td);
    return td;
  });
  cells[0]!.textContent = symbol;
  $("quotes").appendChild(tr);
  r = { price: cells[1]!, change: cells[2]!, tick: cells[3]!, verified: cells[4]! };
  rows.set(symbol, r);
  return r;
}

function show(q: Quote, certNs: bigint): void {
  const r = row(q.symbol);
  const up = r.last === undefined ? 0 : Math.sign(q.price - r.last);
  r.price.textContent = q.price.toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  r.change.textContent = up > 0 ? "▲" : up < 0 ? "▼" : "•";
  r.change.dataset.dir = String(up);
  r.tick.textContent = String(q.tick);
  r.verified.textContent = `✓ ${new Date(Number(certNs / 1_000_000n)).toLocaleTimeString()}`;
  r.verified.title = "certified by the Internet Computer, verified in this page";
  r.last = q.price;
}

async function main(): Promise<void> {
  const cfg = await loadConfig();
  const symbols = (new URLSearchParams(location.search).get("symbols") ?? "ICP,BTC,ETH").split(",").map((s) => s.trim()).filter(Boolean);
  const client = new IcWsClient<TickerIn, TickerOut>({
    gatewayUrl: cfg.gateway,
    canisterId: cfg.canister,
    rootKey: cfg.rootKey ? fromHex(cfg.rootKey) : undefined,
    inboundType: TickerIn,
    outboundType: TickerOut,
    storageKey: `ic-ws-ticker:${cfg.canister}`,
  });
  client.on("state", (s) => {
    $("state").textContent = s;
    $("state").dataset.state = s;
  });
  client.on("open", (o) => {
    // A resumed session keeps its subscriptions; a new one subscribes.
    if (!o.resumed) client.send({ Subscribe: { symbols } });
  });
  client.on("message", (m) => {
    if ("Price" in m.data) show(m.data.Price, m.certificateTimeNs);
  });
  client.on("error", (e) => {
    const b = $("banner");
    b.textContent = e.tampering
      ? `Tampering detected (${e.kind}): ${e.message}. Dropped, not shown; reconnecting.`
      : `${e.kind}: ${e.message}`;
    b.className = e.tampering ? "show bad" : "show";
  });
  client.connect();
}

main().catch((e) => {
  $("banner").textContent = String(e);
  $("banner").className = "show";
});
