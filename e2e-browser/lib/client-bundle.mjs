// The client bundled for a plain page (IIFE exposing `globalThis.IcWs`), with client-js's esbuild.
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { CLIENT_DIR } from "./page-build.mjs";

export async function clientIife() {
  const { build } = await import(pathToFileURL(join(CLIENT_DIR, "node_modules/esbuild/lib/main.js")).href);
  const r = await build({
    stdin: { contents: `export * from "./src/index.ts";`, resolveDir: CLIENT_DIR, loader: "ts" },
    bundle: true, minify: true, format: "iife", globalName: "IcWs", platform: "browser", target: "es2022", write: false, logLevel: "error",
  });
  return Buffer.from(r.outputFiles[0].contents).toString();
}
