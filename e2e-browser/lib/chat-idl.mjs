// The chat canister's message types for the test tools (examples/chat/chat.did; the page's
// copy is examples/chat/web/src/chat-types.ts: keep the three in step).
import { IDL } from "../../client-js/dist/index.js";

export const OpenArgs = IDL.Record({ name: IDL.Text, room: IDL.Opt(IDL.Text) });
export const ChatIn = IDL.Variant({
  Say: IDL.Record({ text: IDL.Text }),
  SwitchRoom: IDL.Record({ room: IDL.Text }),
  Direct: IDL.Record({ to: IDL.Principal, text: IDL.Text }),
  History: IDL.Null,
});
export const ChatOut = IDL.Variant({
  Message: IDL.Record({ from: IDL.Text, client: IDL.Nat64, room: IDL.Text, text: IDL.Text, at_ns: IDL.Nat64 }),
  Joined: IDL.Record({ name: IDL.Text, client: IDL.Nat64, room: IDL.Text, principal: IDL.Opt(IDL.Principal) }),
  Left: IDL.Record({ name: IDL.Text, client: IDL.Nat64, room: IDL.Text, reason: IDL.Text }),
  Members: IDL.Record({ room: IDL.Text, names: IDL.Vec(IDL.Text), total: IDL.Nat64, principals: IDL.Vec(IDL.Opt(IDL.Principal)) }),
  Direct: IDL.Record({ from: IDL.Text, from_principal: IDL.Opt(IDL.Principal), to: IDL.Principal, text: IDL.Text, at_ns: IDL.Nat64 }),
});
