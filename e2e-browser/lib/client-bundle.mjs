// The client bundled for a plain page (IIFE exposing `globalThis.IcWs`), with client-js's esbuild.
// `withIdentities` adds the @icp-sdk/core identity classes (the identity tests make real
// identities of every kind in the page).
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { CLIENT_DIR } from "./page-build.mjs";

export async function clientIife({ withIdentities = false } = {}) {
  const identities = withIdentities
    ? `export { Ed25519KeyIdentity, ECDSAKeyIdentity, DelegationChain, DelegationIdentity } from "@icp-sdk/core/identity";
export { Secp256k1KeyIdentity } from "@icp-sdk/core/identity/secp256k1";`
    : "";
  const { build } = await import(pathToFileURL(join(CLIENT_DIR, "node_modules/esbuild/lib/main.js")).href);
  const r = await build({
    stdin: { contents: `export * from "./src/index.ts";\n${identities}`, resolveDir: CLIENT_DIR, loader: "ts" },
    bundle: true, minify: true, format: "iife", globalName: "IcWs", platform: "browser", target: "es2022", write: false, logLevel: "error",
  });
  return Buffer.from(r.outputFiles[0].contents).toString();
}
