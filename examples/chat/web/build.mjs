// Bundles the chat page into dist/ (app.js + index.html) with esbuild.
// Usage: node build.mjs [--minify]
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "dist");
mkdirSync(out, { recursive: true });
const result = await build({
  entryPoints: [join(here, "src/main.ts")],
  bundle: true,
  format: "esm",
  platform: "browser",
  target: "es2022",
  minify: !process.argv.includes("--no-minify"),
  sourcemap: true,
  outfile: join(out, "app.js"),
  metafile: true,
  // `@icp-sdk/core` (the page's identity) from the client's own install: one copy of it in the
  // bundle, the one @ic-ws/client (a file: dependency) uses. A page with @ic-ws/client from
  // npm lists @icp-sdk/core beside it instead.
  nodePaths: [join(here, "../../../client-js/node_modules")],
  logLevel: "warning",
});
copyFileSync(join(here, "index.html"), join(out, "index.html"));
const bytes = Object.values(result.metafile.outputs).find((o) => o.entryPoint)?.bytes ?? 0;
console.log(`chat page built: ${out} (app.js ${(bytes / 1024).toFixed(0)} KB)`);
