/**
 * Candid types of the chat canister's messages (examples/chat/chat.did), as IDL values.
 * Keep in sync with the canister: the page decodes every verified payload with these.
 */
import { IDL } from "@ic-ws/client";

/** `on_open` argument: the name the user picked. */
export const OpenArgs = IDL.Record({ name: IDL.Text });
export interface OpenArgs { name: string }

/** What the page sends (the canister's `on_message` argument). */
export const ChatIn = IDL.Variant({
  Say: IDL.Record({ text: IDL.Text }),
});
export type ChatIn = { Say: { text: string } };

/** What the canister sends. */
export const ChatOut = IDL.Variant({
  Message: IDL.Record({ from: IDL.Text, text: IDL.Text }),
  Joined: IDL.Record({ name: IDL.Text }),
  Left: IDL.Record({ name: IDL.Text }),
  Members: IDL.Record({ names: IDL.Vec(IDL.Text) }),
});
export type ChatOut =
  | { Message: { from: string; text: string } }
  | { Joined: { name: string } }
  | { Left: { name: string } }
  | { Members: { names: string[] } };
