/**
 * @ic-ws/client: real-time WebSockets to Internet Computer canisters through an untrusted
 * gateway, with every message verified. `IcWsClient` is the entry point; the lower layers
 * (signing bytes, protocol IDL, `DeliveryVerifier`) are exported for tools and tests.
 */
export * from "./bytes.js";
export * from "./signing.js";
export * from "./types.js";
export * from "./verify.js";
export * from "./storage.js";
export * from "./session.js";
export * from "./client.js";
export * from "./identity.js";
// Re-exported so that apps describe their message types with the same candid library the
// client decodes with (and bundle one copy of it).
export { IDL } from "@icp-sdk/core/candid";
export { Principal } from "@icp-sdk/core/principal";
