/**
 * The counter's page. `src/bindings/counter.did.ts` is generated from `../counter.did`
 * (`npm run bindgen`): the message types `CounterIn` / `CounterOut` come from there, as IDL
 * values (what the client encodes and decodes with) and as TypeScript types.
 *
 * Where to connect comes from the query string: `?gateway=ws://127.0.0.1:8080&canister=<id>`
 * and, on a local network (dfx, icp-cli, ic-ws-replica), `&rootKey=<hex DER>` (its
 * `/api/v2/status` root key; omit it on mainnet).
 */
import { IcWsClient } from "@ic-ws/client";
import type { IcWsError, MessageEvent } from "@ic-ws/client";
import { CounterIn, CounterOut } from "./bindings/counter.did";

const params = new URLSearchParams(location.search);
const $ = (id: string) => document.getElementById(id) as HTMLElement;

const canisterId = params.get("canister");
if (!canisterId) {
  $("error").textContent = "Which canister? Open this page with ?canister=<id>&gateway=ws://...";
  throw new Error("no canister id in the URL");
}

const client = new IcWsClient<CounterIn, CounterOut>({
  gatewayUrl: params.get("gateway") ?? "ws://127.0.0.1:8080",
  canisterId,
  rootKey: params.get("rootKey") ?? undefined,
  inboundType: CounterIn,
  outboundType: CounterOut,
});

// Every message passed the client's checks (IC certificate, tree, sequence) before it is here.
client.on("message", (m: MessageEvent<CounterOut>) => {
  const { value, by } = m.data.Value;
  $("value").textContent = value.toString();
  const who = by.length === 0 ? "current value" : `changed by session ${by[0]}`;
  const at = new Date(Number(m.certificateTimeNs / 1_000_000n)).toLocaleTimeString();
  $("status").textContent = `${who}, certified at ${at}`;
});
client.on("state", (state) => ($("status").textContent = state));
client.on("error", (e: IcWsError) => {
  $("error").textContent = `${e.kind}: ${e.message}${e.tampering ? " (tampering detected)" : ""}`;
});

const send = (message: CounterIn) => client.send(message);
$("plus").onclick = () => send({ Add: 1n });
$("minus").onclick = () => send({ Add: -1n });
$("reset").onclick = () => send({ Reset: null });
client.connect();
