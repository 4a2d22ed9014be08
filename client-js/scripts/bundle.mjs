// One-file ESM bundle of the client for pages without a bundler:
//   <script type="module">import { IcWsClient } from "./ic-ws-client.min.js"; ...</script>
// Writes dist/ic-ws-client.min.js (+ .map) from src/ (esbuild, the dev dependency).
import { build } from "esbuild";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const outfile = join(root, "dist/ic-ws-client.min.js");
const result = await build({
  entryPoints: [join(root, "src/index.ts")],
  bundle: true,
  format: "esm",
  platform: "browser",
  target: "es2022",
  minify: true,
  sourcemap: true,
  // The Node fallback (`ws`) is never used in a browser, which has WebSocket.
  external: ["ws"],
  outfile,
  metafile: true,
  logLevel: "warning",
});
const bytes = result.metafile.outputs[Object.keys(result.metafile.outputs).find((k) => k.endsWith(".js"))].bytes;
console.log(`${outfile}: ${(bytes / 1024).toFixed(0)} KB`);
