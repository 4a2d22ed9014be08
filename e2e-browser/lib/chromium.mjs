// Finds Chromium (Debian's /usr/bin/chromium), installing it with apt-get when missing.
// Outside CI a machine without Chromium (and without root) skips the browser tests with a loud
// message; with CI=true a missing Chromium is a failure.
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const CANDIDATES = ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"];

/** Flags measured to work on a closed network (see shared/research/browser-client-notes.md). */
export const CHROMIUM_ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
  "--disable-dev-shm-usage",
];

function found() {
  if (process.env.CHROMIUM_PATH && existsSync(process.env.CHROMIUM_PATH)) return process.env.CHROMIUM_PATH;
  return CANDIDATES.find((p) => existsSync(p));
}

/** The Chromium executable, or `undefined` (with the reason) when tests must be skipped. */
export function ensureChromium() {
  let path = found();
  if (path) return { path };
  console.error("\n*** Chromium not found: installing it with apt-get (chromium chromium-driver) ***\n");
  const isRoot = typeof process.getuid === "function" && process.getuid() === 0;
  if (isRoot) {
    const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
    const upd = spawnSync("apt-get", ["update", "-qq"], { stdio: "inherit", env });
    const inst = upd.status === 0 && spawnSync("apt-get", ["install", "-y", "-qq", "chromium", "chromium-driver"], { stdio: "inherit", env });
    if (inst && inst.status === 0) path = found();
  }
  if (path) return { path };
  const reason = "Chromium is not installed and could not be installed (run as root: apt-get update && apt-get install -y chromium chromium-driver)";
  if (process.env.CI === "true") throw new Error(`${reason}; CI=true, so this is a failure`);
  console.error(`\n${"!".repeat(78)}\n!!! SKIPPING BROWSER TESTS: ${reason}\n${"!".repeat(78)}\n`);
  return { skip: reason };
}

/** Launches Chromium in a fresh profile; `close()` also deletes the profile. */
export async function launch(executablePath) {
  const dir = mkdtempSync(join(tmpdir(), "ic-ws-chromium-"));
  const context = await chromium.launchPersistentContext(dir, {
    executablePath,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1000, height: 640 },
  });
  return {
    context,
    async close() {
      await context.close().catch(() => {});
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** `chromium --version`, for reports. */
export function chromiumVersion(path) {
  try {
    return execFileSync(path, ["--version"], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
  } catch {
    return "unknown";
  }
}
