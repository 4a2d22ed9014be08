// Serves the built chat page with examples/chat/web/serve.mjs (the demo's server) on a free port.
import { join } from "node:path";
import { start } from "./proc.mjs";
import { WEB_DIR } from "./page-build.mjs";

export async function serveStatic(dir) {
  const { child, line } = await start("static", process.execPath, [join(WEB_DIR, "serve.mjs"), "--port", "0", "--dir", dir], {
    ready: (l) => l.startsWith("serving "),
    timeoutMs: 10_000,
  });
  return { child, url: line.slice("serving ".length).trim() };
}
