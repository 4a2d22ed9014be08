/**
 * Candid types of the wire protocol (docs/protocol.md; Rust: ic-ws-protocol `types.rs` and
 * `frames.rs`), as `@icp-sdk/core/candid` IDL values plus the matching TypeScript shapes.
 *
 * Candid mapping: `nat64` is `bigint`, `blob` is `Uint8Array`, `opt T` is `[] | [T]`, a
 * variant is an object with exactly one key.
 */
import { IDL } from "@icp-sdk/core/candid";
import type { Principal } from "@icp-sdk/core/principal";
import { boundedText, MAX_PEER_TEXT_BYTES } from "./bytes.js";

export const ResumeFromIdl = IDL.Record({ client_id: IDL.Nat64, next_outbound_seq: IDL.Nat64 });
/** Issue 10: the IC's delegation (ic-transport-types' layout) and the proof an open carries. */
export const DelegationIdl = IDL.Record({
  pubkey: IDL.Vec(IDL.Nat8),
  expiration: IDL.Nat64,
  targets: IDL.Opt(IDL.Vec(IDL.Principal)),
  permissions: IDL.Opt(IDL.Variant({ queries: IDL.Null, all: IDL.Null })),
});
export const SignedDelegationIdl = IDL.Record({ delegation: DelegationIdl, signature: IDL.Vec(IDL.Nat8) });
export const IdentityProofIdl = IDL.Record({
  sender_pubkey: IDL.Vec(IDL.Nat8),
  delegations: IDL.Vec(SignedDelegationIdl),
});
const Index = IDL.Record({ index: IDL.Nat32 });
export const IdentityErrorIdl = IDL.Variant({
  Required: IDL.Null,
  Refused: IDL.Text,
  TooLarge: IDL.Record({ size: IDL.Nat64, limit: IDL.Nat64 }),
  ChainLength: IDL.Record({ len: IDL.Nat64, limit: IDL.Nat64 }),
  TooManyTargets: IDL.Null,
  MalformedKey: Index,
  CanisterSignatureUnsupported: IDL.Null,
  Cycle: IDL.Null,
  Expired: IDL.Record({ index: IDL.Nat32, expiration: IDL.Nat64 }),
  TargetNotAllowed: Index,
  QueriesOnly: Index,
  WrongSessionKey: IDL.Null,
  InvalidSignature: Index,
  PrincipalMismatch: IDL.Null,
});
export const OpenRequestIdl = IDL.Record({
  client_key: IDL.Vec(IDL.Nat8),
  gateway: IDL.Principal,
  timestamp_ns: IDL.Nat64,
  resume: IDL.Opt(ResumeFromIdl),
  args: IDL.Vec(IDL.Nat8),
  signature: IDL.Vec(IDL.Nat8),
  identity: IDL.Opt(IdentityProofIdl),
});
export const OpenOkIdl = IDL.Record({ client_id: IDL.Nat64, next_inbound_seq: IDL.Nat64, opened_seq: IDL.Nat64 });
export const MessageKindIdl = IDL.Variant({
  App: IDL.Vec(IDL.Nat8),
  KeepAlive: IDL.Null,
  Close: IDL.Record({ code: IDL.Nat16, reason: IDL.Text }),
});
export const ClientMessageIdl = IDL.Record({
  client_id: IDL.Nat64,
  seq: IDL.Nat64,
  ack: IDL.Nat64,
  kind: MessageKindIdl,
  signature: IDL.Vec(IDL.Nat8),
});
export const OutboundMessageIdl = IDL.Record({ client_id: IDL.Nat64, seq: IDL.Nat64, content: IDL.Vec(IDL.Nat8) });
export const CloseReasonIdl = IDL.Variant({
  ClientClosed: IDL.Record({ code: IDL.Nat16, reason: IDL.Text }),
  AppClosed: IDL.Record({ code: IDL.Nat16, reason: IDL.Text }),
  Expired: IDL.Null,
  QueueOverflow: IDL.Null,
  ProtocolError: IDL.Text,
  IdentityExpired: IDL.Null,
});
export const WsErrorIdl = IDL.Variant({
  InvalidSignature: IDL.Null,
  MalformedKey: IDL.Null,
  UnknownClient: IDL.Nat64,
  WrongGateway: IDL.Null,
  GatewayMismatch: IDL.Null,
  AnonymousGateway: IDL.Null,
  OutOfSequence: IDL.Record({ expected: IDL.Nat64, got: IDL.Nat64 }),
  StaleOpen: IDL.Null,
  ResumeUnavailable: IDL.Record({ first_available: IDL.Nat64 }),
  InvalidResume: IDL.Null,
  Rejected: IDL.Text,
  OpenRejected: IDL.Record({ client_id: IDL.Nat64, reason: IDL.Text }),
  DecodeError: IDL.Text,
  TooLarge: IDL.Record({ size: IDL.Nat64, limit: IDL.Nat64 }),
  LimitReached: IDL.Text,
  Closed: IDL.Null,
  InvalidArgument: IDL.Text,
  NotProcessed: IDL.Null,
  Identity: IdentityErrorIdl,
});
export const OutboundBodyIdl = IDL.Variant({
  App: IDL.Record({ topic: IDL.Opt(IDL.Text), payload: IDL.Vec(IDL.Nat8) }),
  Opened: IDL.Record({
    client_key: IDL.Vec(IDL.Nat8),
    open_timestamp_ns: IDL.Nat64,
    next_inbound_seq: IDL.Nat64,
    resumed: IDL.Bool,
    max_inbound_payload_bytes: IDL.Nat64,
    idle_timeout_ns: IDL.Nat64,
    principal: IDL.Opt(IDL.Principal),
  }),
  Closed: IDL.Record({ reason: CloseReasonIdl }),
  MessageRejected: IDL.Record({ inbound_seq: IDL.Nat64, error: WsErrorIdl }),
  OpenRejected: IDL.Record({ client_key: IDL.Vec(IDL.Nat8), open_timestamp_ns: IDL.Nat64, error: WsErrorIdl }),
});
export const OutboundContentIdl = IDL.Record({ timestamp_ns: IDL.Nat64, body: OutboundBodyIdl });
export const ClientFrameIdl = IDL.Variant({
  Open: IDL.Record({ canister_id: IDL.Principal, request: OpenRequestIdl }),
  Message: ClientMessageIdl,
});
export const GatewayFrameIdl = IDL.Variant({
  Hello: IDL.Record({ gateway: IDL.Principal, protocol_version: IDL.Nat32 }),
  OpenResult: IDL.Variant({ Ok: OpenOkIdl, Err: WsErrorIdl }),
  Messages: IDL.Record({
    messages: IDL.Vec(OutboundMessageIdl),
    certificate: IDL.Vec(IDL.Nat8),
    tree: IDL.Vec(IDL.Nat8),
  }),
  MessageError: IDL.Record({ seq: IDL.Nat64, error: WsErrorIdl }),
});

/** Protocol version this client speaks (in the gateway's `Hello`). */
export const PROTOCOL_VERSION = 2;

export interface ResumeFrom { client_id: bigint; next_outbound_seq: bigint }
export interface OpenRequest {
  client_key: Uint8Array;
  gateway: Principal;
  timestamp_ns: bigint;
  resume: [] | [ResumeFrom];
  args: Uint8Array;
  signature: Uint8Array;
  /** Issue 10: proof that an IC principal authorised the session key (none: anonymous). */
  identity: [] | [IdentityProof];
}
export interface Delegation {
  pubkey: Uint8Array; expiration: bigint; targets: [] | [Principal[]];
  permissions: [] | [{ queries: null } | { all: null }];
}
export interface SignedDelegation { delegation: Delegation; signature: Uint8Array }
export interface IdentityProof { sender_pubkey: Uint8Array; delegations: SignedDelegation[] }
export interface OpenOk { client_id: bigint; next_inbound_seq: bigint; opened_seq: bigint }
export type MessageKind =
  | { App: Uint8Array }
  | { KeepAlive: null }
  | { Close: { code: number; reason: string } };
export interface ClientMessage { client_id: bigint; seq: bigint; ack: bigint; kind: MessageKind; signature: Uint8Array }
export interface OutboundMessage { client_id: bigint; seq: bigint; content: Uint8Array }
export type CloseReason =
  | { ClientClosed: { code: number; reason: string } }
  | { AppClosed: { code: number; reason: string } }
  | { Expired: null }
  | { QueueOverflow: null }
  | { ProtocolError: string }
  | { IdentityExpired: null };
export type OutboundBody =
  | { App: { topic: [] | [string]; payload: Uint8Array } }
  | {
      Opened: {
        client_key: Uint8Array; open_timestamp_ns: bigint; next_inbound_seq: bigint; resumed: boolean;
        /** Protocol v2: the canister's inbound payload limit (a client refuses to sign more). */
        max_inbound_payload_bytes: bigint;
        /** Protocol v2: the session's idle timeout (part of the own-clock expiry proof). */
        idle_timeout_ns: bigint;
        /** Issue 10: the principal the canister bound (none: anonymous). */
        principal?: [] | [Principal];
      };
    }
  | { Closed: { reason: CloseReason } }
  /** Protocol v2: certified refusal of an accepted inbound message (a fact). */
  | { MessageRejected: { inbound_seq: bigint; error: WsError } }
  /** Protocol v2: certified refusal of a new session's open (seq 0 of a closed session). */
  | { OpenRejected: { client_key: Uint8Array; open_timestamp_ns: bigint; error: WsError } };
export interface OutboundContent { timestamp_ns: bigint; body: OutboundBody }
export type WsError =
  | { InvalidSignature: null } | { MalformedKey: null } | { UnknownClient: bigint } | { WrongGateway: null }
  | { GatewayMismatch: null } | { AnonymousGateway: null } | { OutOfSequence: { expected: bigint; got: bigint } }
  | { StaleOpen: null } | { ResumeUnavailable: { first_available: bigint } } | { InvalidResume: null }
  | { Rejected: string } | { OpenRejected: { client_id: bigint; reason: string } } | { DecodeError: string }
  | { TooLarge: { size: bigint; limit: bigint } }
  | { LimitReached: string } | { Closed: null } | { InvalidArgument: string } | { NotProcessed: null }
  | { Identity: Record<string, unknown> };
export type ClientFrame =
  | { Open: { canister_id: Principal; request: OpenRequest } }
  | { Message: ClientMessage };
export type GatewayFrame =
  | { Hello: { gateway: Principal; protocol_version: number } }
  | { OpenResult: { Ok: OpenOk } | { Err: WsError } }
  | { Messages: { messages: OutboundMessage[]; certificate: Uint8Array; tree: Uint8Array } }
  | { MessageError: { seq: bigint; error: WsError } };

/** Candid encoding of a client frame. */
export function encodeClientFrame(frame: ClientFrame): Uint8Array {
  return IDL.encode([ClientFrameIdl], [frame]);
}

/** Candid decoding of a gateway frame (throws on bad input). */
export function decodeGatewayFrame(bytes: Uint8Array): GatewayFrame {
  const [value] = IDL.decode([GatewayFrameIdl], bytes);
  return value as unknown as GatewayFrame;
}

/** Candid decoding of certified content (throws on bad input). */
export function decodeOutboundContent(bytes: Uint8Array): OutboundContent {
  const [value] = IDL.decode([OutboundContentIdl], bytes);
  return value as unknown as OutboundContent;
}

/** The name of a protocol error (its variant), for messages. */
export function wsErrorName(e: WsError): string {
  return Object.keys(e)[0] ?? "Unknown";
}

/**
 * A readable description of a protocol error. Its text is relayed (uncertified) by the
 * gateway, so it is bounded (`MAX_PEER_TEXT_BYTES`).
 */
export function describeWsError(e: WsError): string {
  const [name, value] = Object.entries(e)[0] ?? ["Unknown", null];
  if (value === null || value === undefined) return name;
  if (typeof value === "object") {
    return `${name} ${Object.entries(value).map(([k, x]) => `${k}=${boundedText(String(x), MAX_PEER_TEXT_BYTES)}`).join(" ")}`;
  }
  return `${name}: ${boundedText(String(value), MAX_PEER_TEXT_BYTES)}`;
}
