// The chat canister's message types for the test tools (same as
// examples/chat/web/src/chat-types.ts, which the page uses; keep the two in step).
import { IDL } from "../../client-js/dist/index.js";

export const OpenArgs = IDL.Record({ name: IDL.Text });
export const ChatIn = IDL.Variant({ Say: IDL.Record({ text: IDL.Text }) });
export const ChatOut = IDL.Variant({
  Message: IDL.Record({ from: IDL.Text, text: IDL.Text }),
  Joined: IDL.Record({ name: IDL.Text }),
  Left: IDL.Record({ name: IDL.Text }),
  Members: IDL.Record({ names: IDL.Vec(IDL.Text) }),
});
