// The chat "canister" (examples/chat, one room) on client-js's fake IC + gateway (real
// certificates from a test root key): lets the page run in Chromium without the Rust stack.
import { IDL } from "../../client-js/dist/index.js";
import { FakeGateway } from "../../client-js/test/fake-gateway.mjs";
import { ChatIn, ChatOut, OpenArgs } from "./chat-idl.mjs";

export async function startFakeChat() {
  const gw = await new FakeGateway().start();
  const names = new Map();
  const broadcast = (out) => {
    for (const s of gw.sessions.values()) if (!s.closed) gw.push(s, { App: { topic: [], payload: IDL.encode([ChatOut], [out]) } });
  };
  gw.onOpened = (s, args) => {
    const [{ name }] = IDL.decode([OpenArgs], args);
    names.set(s.id, name);
    gw.push(s, { App: { topic: [], payload: IDL.encode([ChatOut], [{ Members: { room: "lobby", names: [...names.values()], total: BigInt(names.size), principals: [...names.values()].map(() => []) } }]) } });
    broadcast({ Joined: { name, client: s.id, room: "lobby", principal: [] } });
  };
  gw.onClosed = (s) => {
    const name = names.get(s.id);
    names.delete(s.id);
    broadcast({ Left: { name, client: s.id, room: "lobby", reason: "left" } });
  };
  gw.onApp = (s, payload) => {
    const [msg] = IDL.decode([ChatIn], payload);
    broadcast({ Message: { from: names.get(s.id) ?? "?", client: s.id, room: "lobby", text: msg.Say.text, at_ns: gw.now() } });
  };
  return {
    gatewayUrl: gw.url,
    canisterId: gw.canisterId.toText(),
    rootKeyHex: Buffer.from(gw.root.der).toString("hex"),
    gw,
    stop: () => gw.stop(),
  };
}
