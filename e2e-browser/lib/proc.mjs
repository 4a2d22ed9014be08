// Child processes for the tests and the bench: started in their own process group, their
// output prefixed on stderr, and all stopped (SIGTERM, then SIGKILL) at the end.
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";

const children = new Set();

/** Starts `cmd args`; resolves with the child and the first stdout line matching `ready`. */
export function start(name, cmd, args, { ready, env, cwd, timeoutMs = 120_000 } = {}) {
  const child = spawn(cmd, args, { cwd, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"], detached: true });
  children.add(child);
  child.on("exit", () => children.delete(child));
  const err = createInterface({ input: child.stderr });
  err.on("line", (l) => { if (process.env.E2E_VERBOSE) console.error(`[${name}] ${l}`); });
  const lastLines = [];
  err.on("line", (l) => { lastLines.push(l); if (lastLines.length > 30) lastLines.shift(); });
  const out = createInterface({ input: child.stdout });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} not ready after ${timeoutMs} ms:\n${lastLines.join("\n")}`)), timeoutMs);
    out.on("line", (line) => {
      if (process.env.E2E_VERBOSE) console.error(`[${name}] ${line}`);
      if (ready && ready(line)) {
        clearTimeout(timer);
        resolve({ child, line });
      }
    });
    child.on("exit", (code, sig) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited (${code ?? sig}) before it was ready:\n${lastLines.join("\n")}`));
    });
    child.on("error", (e) => {
      clearTimeout(timer);
      reject(new Error(`${name}: cannot start ${cmd}: ${e.message}`));
    });
  });
}

/** Stops one child (its whole process group). */
export async function stop(child) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise((r) => child.once("exit", r));
  try { process.kill(-child.pid, "SIGTERM"); } catch { /* already gone */ }
  const t = setTimeout(() => { try { process.kill(-child.pid, "SIGKILL"); } catch { /* gone */ } }, 5000);
  await gone;
  clearTimeout(t);
}

/** Stops every child started here. */
export async function stopAll() {
  await Promise.all([...children].map(stop));
}

process.on("exit", () => {
  for (const c of children) try { process.kill(-c.pid, "SIGKILL"); } catch { /* gone */ }
});
