// A hostile gateway in front of the real one: relays WebSocket frames both ways and, when
// `forge` is on, rewrites the text of chat messages delivered to the browser (the certified
// content is altered but its certificate and tree are kept, as an attacker would have to).
// The page must detect it (NotCertified), show the banner and never display the forged text.
import { WebSocket, WebSocketServer } from "ws";
import { IDL, GatewayFrameIdl, OutboundContentIdl, decodeGatewayFrame, decodeOutboundContent } from "../../client-js/dist/index.js";

export const FORGED_PREFIX = "FORGED by the gateway";

export class TamperProxy {
  constructor(upstreamUrl, chatOutIdl) {
    this.upstream = upstreamUrl;
    this.chatOut = chatOutIdl;
    this.forge = false;
    this.forged = 0;
  }

  async start() {
    this.wss = new WebSocketServer({ port: 0, host: "127.0.0.1" });
    await new Promise((r) => this.wss.on("listening", r));
    this.url = `ws://127.0.0.1:${this.wss.address().port}`;
    this.wss.on("connection", (client, req) => this.relay(client, req.url ?? "/"));
    return this;
  }

  relay(client, path) {
    const up = new WebSocket(new URL(path, this.upstream).toString());
    const pending = [];
    up.on("open", () => { for (const m of pending.splice(0)) up.send(m); });
    client.on("message", (data) => (up.readyState === WebSocket.OPEN ? up.send(data) : pending.push(data)));
    up.on("message", (data) => {
      const bytes = new Uint8Array(data);
      if (client.readyState === WebSocket.OPEN) client.send(this.forge ? this.tamper(bytes) : bytes);
    });
    const closeBoth = (code, reason) => {
      const c = code >= 1000 && code < 5000 && code !== 1005 && code !== 1006 ? code : 1000;
      if (client.readyState <= WebSocket.OPEN) client.close(c, reason);
      if (up.readyState <= WebSocket.OPEN) up.close(c, reason);
    };
    up.on("close", (code, reason) => closeBoth(code, reason.toString()));
    client.on("close", (code, reason) => closeBoth(code, reason.toString()));
    up.on("error", () => closeBoth(1011, "upstream error"));
    client.on("error", () => closeBoth(1011, "client error"));
  }

  /** Rewrites the text of every chat `Message` in a `Messages` frame. */
  tamper(bytes) {
    let frame;
    try {
      frame = decodeGatewayFrame(bytes);
    } catch {
      return bytes;
    }
    if (!("Messages" in frame)) return bytes;
    let changed = false;
    const messages = frame.Messages.messages.map((m) => {
      let content;
      try {
        content = decodeOutboundContent(m.content);
      } catch {
        return m;
      }
      if (!("App" in content.body)) return m;
      let out;
      try {
        [out] = IDL.decode([this.chatOut], content.body.App.payload);
      } catch {
        return m;
      }
      if (!out || !("Message" in out)) return m;
      out = { Message: { ...out.Message, text: `${FORGED_PREFIX}: ${out.Message.text}` } };
      const payload = IDL.encode([this.chatOut], [out]);
      changed = true;
      this.forged++;
      return { ...m, content: IDL.encode([OutboundContentIdl], [{ ...content, body: { App: { ...content.body.App, payload } } }]) };
    });
    if (!changed) return bytes;
    return IDL.encode([GatewayFrameIdl], [{ Messages: { ...frame.Messages, messages } }]);
  }

  async stop() {
    for (const c of this.wss.clients) c.terminate();
    await new Promise((r) => this.wss.close(r));
  }
}
