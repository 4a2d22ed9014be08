export * from "./bytes.js";
export * from "./signing.js";
export * from "./types.js";
export * from "./verify.js";
export * from "./storage.js";
export * from "./client.js";
