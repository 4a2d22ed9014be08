/**
 * The chat page: pick a name, see who is online and the messages, type and send. Every
 * message shown passed the client's checks (IC certificate, tree, sequence); a check mark
 * shows the certificate's time. A failed check shows a banner and the message is never shown.
 *
 * Configuration: `config.json` next to the page (written by scripts/demo), overridden by
 * query parameters `gateway`, `canister`, `rootKey` (hex DER; omit for mainnet), `name`,
 * `room` (default `lobby`) and `signin=1` (sign in with the browser's key).
 *
 * Signing in (issue 10): the page keeps an Ed25519 identity in `localStorage` and gives it to
 * the client (`identity` option), which proves its principal at open; the canister shows it
 * next to the name, and others can click it to send direct messages to every session of that
 * principal. A real app passes Internet Identity's `AuthClient.getIdentity()` instead.
 */
import { Ed25519KeyIdentity } from "@icp-sdk/core/identity";
import { IcWsClient, IDL, fromHex } from "@ic-ws/client";
import type { ConnectionState, IcWsError, Principal } from "@ic-ws/client";
import { ChatIn, ChatOut, OpenArgs } from "./chat-types.js";

interface Config { gateway: string; canister: string; rootKey?: string }

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

async function loadConfig(): Promise<Config> {
  let file: Partial<Config> = {};
  try {
    const r = await fetch("./config.json", { cache: "no-store" });
    if (r.ok) file = (await r.json()) as Partial<Config>;
  } catch {
    // No config file: query parameters only.
  }
  const q = new URLSearchParams(location.search);
  const cfg = {
    gateway: q.get("gateway") ?? file.gateway,
    canister: q.get("canister") ?? file.canister,
    rootKey: q.get("rootKey") ?? file.rootKey,
  };
  if (!cfg.gateway || !cfg.canister) throw new Error("no gateway/canister configured (config.json or ?gateway=&canister=)");
  return cfg as Config;
}

const STATE_TEXT: Record<ConnectionState, string> = {
  idle: "not connected",
  connecting: "connecting…",
  open: "connected",
  reconnecting: "reconnecting…",
  closed: "disconnected",
};

function setState(s: ConnectionState): void {
  const el = $("state");
  el.dataset.state = s;
  el.textContent = STATE_TEXT[s];
  ($("send") as HTMLButtonElement).disabled = s !== "open";
}

function timeOf(ns: bigint): string {
  return new Date(Number(ns / 1_000_000n)).toLocaleTimeString();
}

function addLine(build: (li: HTMLLIElement) => void): void {
  const list = $("messages");
  const li = document.createElement("li");
  build(li);
  const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 20;
  list.appendChild(li);
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function verifiedMark(li: HTMLLIElement, certNs: bigint): void {
  const mark = document.createElement("span");
  mark.className = "verified";
  mark.textContent = `✓ ${timeOf(certNs)}`;
  mark.title = `verified: certified by the Internet Computer at ${new Date(Number(certNs / 1_000_000n)).toISOString()}`;
  li.appendChild(mark);
}

/** The browser's own identity (made once, kept in localStorage). */
function browserIdentity(): Ed25519KeyIdentity {
  const key = "ic-ws-chat:identity";
  try {
    const stored = localStorage.getItem(key);
    if (stored) return Ed25519KeyIdentity.fromJSON(stored);
  } catch {
    // Unreadable: make a new one.
  }
  const identity = Ed25519KeyIdentity.generate();
  localStorage.setItem(key, JSON.stringify(identity.toJSON()));
  return identity;
}

/** `abcde…xyz` of a principal's text, the whole of it in the title. */
function shortPrincipal(p: Principal): string {
  const t = p.toText();
  return t.length > 17 ? `${t.slice(0, 11)}…${t.slice(-5)}` : t;
}

/** Who is in the room: name -> verified principal (null: anonymous). */
const members = new Map<string, Principal | null>();
/** The composer's recipient: a principal (direct message) or the room. */
let directTo: { name: string; principal: Principal } | undefined;

function setDirect(to: typeof directTo): void {
  directTo = to;
  const el = $("to");
  el.textContent = to ? `to ${to.name} (direct) ✕` : "";
  el.classList.toggle("show", to !== undefined);
}

function renderMembers(): void {
  const ul = $("members");
  ul.replaceChildren(...[...members.keys()].sort().map((n) => {
    const principal = members.get(n) ?? null;
    const li = document.createElement("li");
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = n;
    const who = document.createElement("span");
    who.className = principal ? "who signed" : "who";
    who.textContent = principal ? shortPrincipal(principal) : "anonymous";
    who.title = principal ? `verified principal ${principal.toText()}: click to send a direct message` : "not signed in";
    if (principal) who.onclick = () => setDirect({ name: n, principal });
    li.append(name, who);
    return li;
  }));
}

function showBanner(e: IcWsError): void {
  const b = $("banner");
  b.textContent = `Tampering detected (${e.kind}) at ${new Date().toLocaleTimeString()}: ${e.message}. The data was dropped and not shown; the page reconnected to get the real messages.`;
  b.dataset.check = e.kind;
  b.classList.add("show");
}

function showNotice(text: string): void {
  const n = $("notice");
  n.textContent = text;
  n.classList.add("show");
  setTimeout(() => n.classList.remove("show"), 8000);
}

function showJoin(): void {
  $("chat").classList.add("hidden");
  $("join").classList.remove("hidden");
  $("leave").classList.add("hidden");
}

function start(cfg: Config, name: string, signIn: boolean): void {
  $("join").classList.add("hidden");
  $("chat").classList.remove("hidden");
  $("messages").replaceChildren();
  members.clear();
  renderMembers();
  const room = new URLSearchParams(location.search).get("room");
  const client = new IcWsClient<ChatIn, ChatOut>({
    gatewayUrl: cfg.gateway,
    canisterId: cfg.canister,
    rootKey: cfg.rootKey ? fromHex(cfg.rootKey) : undefined,
    inboundType: ChatIn,
    outboundType: ChatOut,
    openArgs: IDL.encode([OpenArgs], [{ name, room: room ? [room] : [] }]),
    storageKey: `ic-ws-chat:${cfg.canister}:${name}`,
    identity: signIn ? browserIdentity() : undefined,
  });
  (window as unknown as { chatClient: unknown }).chatClient = client;
  client.on("state", setState);
  // A reload resumes the stored session, and a resume re-delivers only what was not
  // acknowledged: the first confirmation of this page being a resume, ask for the room's
  // recent messages again (shown once: lines are keyed by sender and time).
  let firstOpen = true;
  const shown = new Set<string>();
  client.on("open", (o) => {
    if (firstOpen && o.resumed) client.send({ History: null });
    firstOpen = false;
    const me = client.principal ? ` · ${shortPrincipal(client.principal)}` : " · anonymous";
    $("whoami").textContent = `${name}${me} · client #${o.clientId}${o.resumed ? " (resumed)" : ""}`;
    $("whoami").title = client.principal ? `signed in: the canister verified principal ${client.principal.toText()}` : "not signed in";
  });
  client.on("message", (m) => {
    const d = m.data;
    if ("Message" in d) {
      const key = `${d.Message.client}:${d.Message.at_ns}:${d.Message.text}`;
      if (shown.has(key)) return;
      shown.add(key);
      addLine((li) => {
        li.className = "chat";
        const from = document.createElement("span");
        from.className = "from";
        from.textContent = d.Message.from;
        from.title = `client #${d.Message.client}, room ${d.Message.room}`;
        const text = document.createElement("span");
        text.className = "text";
        text.textContent = d.Message.text;
        li.append(from, text);
        verifiedMark(li, m.certificateTimeNs);
      });
    } else if ("Direct" in d) {
      const x = d.Direct;
      addLine((li) => {
        li.className = "chat direct";
        const from = document.createElement("span");
        from.className = "from";
        from.textContent = `${x.from} → ${x.to.toText() === client.principal?.toText() ? "you" : shortPrincipal(x.to)}`;
        from.title = `direct message from ${x.from_principal[0]?.toText() ?? "an anonymous participant"}`;
        const text = document.createElement("span");
        text.className = "text";
        text.textContent = x.text;
        li.append(from, text);
        verifiedMark(li, m.certificateTimeNs);
      });
    } else if ("Joined" in d) {
      members.set(d.Joined.name, d.Joined.principal[0] ?? null);
      renderMembers();
      addLine((li) => {
        li.className = "event";
        li.textContent = `${d.Joined.name} joined`;
        verifiedMark(li, m.certificateTimeNs);
      });
    } else if ("Left" in d) {
      members.delete(d.Left.name);
      renderMembers();
      addLine((li) => {
        li.className = "event";
        li.textContent = `${d.Left.name} left (${d.Left.reason})`;
        verifiedMark(li, m.certificateTimeNs);
      });
    } else if ("Members" in d) {
      members.clear();
      d.Members.names.forEach((n, i) => members.set(n, d.Members.principals[i]?.[0] ?? null));
      renderMembers();
      $("room").textContent = `#${d.Members.room}`;
    }
  });
  client.on("error", (e) => {
    if (e.tampering) showBanner(e);
    else showNotice(`${e.kind}: ${e.message}`);
    if (e.kind === "OpenRejected" && e.certified && e.wsError && "Rejected" in e.wsError) {
      // Certified: e.g. the name is taken: pick another. (A gateway's uncertified claim of a
      // refusal is an `Unverified` error: the client retries by itself.)
      sessionStorage.removeItem("ic-ws-chat:name");
      showJoin();
    }
  });
  client.on("close", (c) => {
    if (c.sessionClosed) showNotice(`session ended: ${c.reason}`);
  });
  $("send-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = $<HTMLInputElement>("text");
    const text = input.value.trim();
    if (!text) return;
    try {
      client.send(directTo ? { Direct: { to: directTo.principal, text } } : { Say: { text } });
      input.value = "";
    } catch (e) {
      showNotice(String(e));
    }
  });
  $("to").onclick = () => setDirect(undefined);
  const leave = $<HTMLButtonElement>("leave");
  leave.classList.remove("hidden");
  leave.onclick = () => {
    client.close(1000, "left the chat");
    sessionStorage.removeItem("ic-ws-chat:name");
    leave.classList.add("hidden");
    // Back to the join form once the session has ended.
    setTimeout(() => location.assign(location.pathname + location.search.replace(/([?&])name=[^&]*&?/, "$1")), 500);
  };
  client.connect();
}

async function main(): Promise<void> {
  let cfg: Config;
  try {
    cfg = await loadConfig();
  } catch (e) {
    showNotice(String(e));
    return;
  }
  $("join-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const name = $<HTMLInputElement>("name").value.trim();
    if (!name) return;
    const signIn = $<HTMLInputElement>("signin").checked;
    sessionStorage.setItem("ic-ws-chat:name", name);
    sessionStorage.setItem("ic-ws-chat:signin", signIn ? "1" : "");
    start(cfg, name, signIn);
  });
  // A reload keeps the name (and the client resumes the session stored for it).
  const preset = sessionStorage.getItem("ic-ws-chat:name") ?? new URLSearchParams(location.search).get("name");
  if (preset) {
    const signIn = (sessionStorage.getItem("ic-ws-chat:signin") ?? new URLSearchParams(location.search).get("signin")) === "1";
    sessionStorage.setItem("ic-ws-chat:name", preset);
    sessionStorage.setItem("ic-ws-chat:signin", signIn ? "1" : "");
    start(cfg, preset, signIn);
  }
}

void main();
