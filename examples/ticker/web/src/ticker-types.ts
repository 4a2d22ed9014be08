/** Candid types of the ticker canister's messages (examples/ticker/ticker.did). */
import { IDL } from "@ic-ws/client";

export const TickerIn = IDL.Variant({
  Subscribe: IDL.Record({ symbols: IDL.Vec(IDL.Text) }),
  Unsubscribe: IDL.Record({ symbols: IDL.Vec(IDL.Text) }),
});
export type TickerIn = { Subscribe: { symbols: string[] } } | { Unsubscribe: { symbols: string[] } };

const Quote = IDL.Record({ at_ns: IDL.Nat64, tick: IDL.Nat64, price: IDL.Float64, symbol: IDL.Text });
export interface Quote { at_ns: bigint; tick: bigint; price: number; symbol: string }

export const TickerOut = IDL.Variant({
  Unsubscribed: IDL.Record({ symbols: IDL.Vec(IDL.Text) }),
  Price: Quote,
  Subscribed: IDL.Record({ symbols: IDL.Vec(IDL.Text) }),
});
export type TickerOut =
  | { Unsubscribed: { symbols: string[] } }
  | { Price: Quote }
  | { Subscribed: { symbols: string[] } };
