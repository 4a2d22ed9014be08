// A small static file server for the built page (dist/), with no dependencies.
// Usage: node serve.mjs [--port 8000] [--host 127.0.0.1] [--dir dist]
// Prints one line `serving <url>` when listening (port 0 picks a free port).
import { createServer } from "node:http";
import { readFile, stat } from "node:fs/promises";
import { extname, join, normalize, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] !== undefined ? args[i + 1] : dflt;
};
const here = fileURLToPath(new URL(".", import.meta.url));
const root = resolve(here, opt("dir", "dist"));
const port = Number(opt("port", "8000"));
const host = opt("host", "127.0.0.1");
const types = { ".html": "text/html; charset=utf-8", ".js": "text/javascript", ".json": "application/json", ".map": "application/json", ".css": "text/css", ".png": "image/png", ".svg": "image/svg+xml" };

const server = createServer(async (req, res) => {
  const path = decodeURIComponent(new URL(req.url ?? "/", "http://x").pathname);
  const file = normalize(join(root, path.endsWith("/") ? `${path}index.html` : path));
  if (file !== root && !file.startsWith(root + sep)) {
    res.writeHead(403).end();
    return;
  }
  try {
    if (!path.endsWith("/") && (await stat(file)).isDirectory()) {
      // Pages load "./app.js": a directory is served with its trailing slash.
      res.writeHead(301, { location: `${path}/` }).end();
      return;
    }
    const body = await readFile(file);
    res.writeHead(200, { "content-type": types[extname(file)] ?? "application/octet-stream", "cache-control": "no-store" });
    res.end(body);
  } catch {
    res.writeHead(404, { "content-type": "text/plain" }).end("not found");
  }
});
server.listen(port, host, () => {
  const a = server.address();
  console.log(`serving http://${host}:${a.port}/`);
});
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => server.close(() => process.exit(0)));
