/**
 * Candid types of the chat canister's messages (examples/chat/chat.did), as IDL values.
 * The page decodes every verified payload with these; keep them in step with chat.did.
 */
import { IDL } from "@ic-ws/client";
import type { Principal } from "@ic-ws/client";

/** `on_open` argument: the name the user picked and the room (default `lobby`). */
export const OpenArgs = IDL.Record({ name: IDL.Text, room: IDL.Opt(IDL.Text) });
export interface OpenArgs { name: string; room: [] | [string] }

/** What the page sends (the canister's `on_message` argument). */
export const ChatIn = IDL.Variant({
  Say: IDL.Record({ text: IDL.Text }),
  SwitchRoom: IDL.Record({ room: IDL.Text }),
  Direct: IDL.Record({ to: IDL.Principal, text: IDL.Text }),
  History: IDL.Null,
});
export type ChatIn = { Say: { text: string } } | { SwitchRoom: { room: string } } | { Direct: { to: Principal; text: string } } | { History: null };

/** What the canister sends. */
export const ChatOut = IDL.Variant({
  Message: IDL.Record({ from: IDL.Text, client: IDL.Nat64, room: IDL.Text, text: IDL.Text, at_ns: IDL.Nat64 }),
  Joined: IDL.Record({ name: IDL.Text, client: IDL.Nat64, room: IDL.Text, principal: IDL.Opt(IDL.Principal) }),
  Left: IDL.Record({ name: IDL.Text, client: IDL.Nat64, room: IDL.Text, reason: IDL.Text }),
  Members: IDL.Record({ room: IDL.Text, names: IDL.Vec(IDL.Text), total: IDL.Nat64, principals: IDL.Vec(IDL.Opt(IDL.Principal)) }),
  Direct: IDL.Record({ from: IDL.Text, from_principal: IDL.Opt(IDL.Principal), to: IDL.Principal, text: IDL.Text, at_ns: IDL.Nat64 }),
});
export type ChatOut =
  | { Message: { from: string; client: bigint; room: string; text: string; at_ns: bigint } }
  | { Joined: { name: string; client: bigint; room: string; principal: [] | [Principal] } }
  | { Left: { name: string; client: bigint; room: string; reason: string } }
  | { Members: { room: string; names: string[]; total: bigint; principals: ([] | [Principal])[] } }
  | { Direct: { from: string; from_principal: [] | [Principal]; to: Principal; text: string; at_ns: bigint } };
