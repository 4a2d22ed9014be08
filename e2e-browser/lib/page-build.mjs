// Builds the client (tsc) and the chat page (esbuild) when their outputs are missing or older
// than their sources, installing their npm packages first when needed.
import { execSync } from "node:child_process";
import { existsSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = fileURLToPath(new URL("../..", import.meta.url));
export const CLIENT_DIR = join(ROOT, "client-js");
export const WEB_DIR = join(ROOT, "examples/chat/web");
export const TICKER_WEB_DIR = join(ROOT, "examples/ticker/web");

function newest(dir) {
  let t = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    t = Math.max(t, e.isDirectory() ? newest(p) : statSync(p).mtimeMs);
  }
  return t;
}

function npmInstall(dir) {
  if (existsSync(join(dir, "node_modules"))) return;
  console.error(`[build] npm ci in ${dir}`);
  execSync("npm ci --no-audit --no-fund --loglevel=error", { cwd: dir, stdio: "inherit" });
}

/** Builds the client and the ticker page; returns its dist directory. */
export function buildTickerPage() {
  buildPage();
  npmInstall(TICKER_WEB_DIR);
  console.error("[build] ticker page (esbuild)");
  execSync("node build.mjs", { cwd: TICKER_WEB_DIR, stdio: "inherit" });
  return join(TICKER_WEB_DIR, "dist");
}

export function buildPage() {
  npmInstall(CLIENT_DIR);
  const clientOut = join(CLIENT_DIR, "dist/index.js");
  if (!existsSync(clientOut) || statSync(clientOut).mtimeMs < newest(join(CLIENT_DIR, "src"))) {
    console.error("[build] client-js (tsc)");
    execSync("npm run build --silent", { cwd: CLIENT_DIR, stdio: "inherit" });
  }
  npmInstall(WEB_DIR);
  console.error("[build] chat page (esbuild)");
  execSync("node build.mjs", { cwd: WEB_DIR, stdio: "inherit" });
  return join(WEB_DIR, "dist");
}
