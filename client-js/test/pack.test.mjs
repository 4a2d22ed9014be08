// The package as users get it: `npm pack`, installed into a scratch project (its dependencies
// from npm's cache or the registry), imported from ESM, and type-checked from TypeScript.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const npm = process.platform === "win32" ? "npm.cmd" : "npm";

test("npm pack: installs into a scratch project, imports and type-checks", { timeout: 300_000 }, () => {
  const dir = mkdtempSync(join(tmpdir(), "ic-ws-pack-"));
  try {
    // `npm test` built dist/ already (prepack builds it for a real `npm pack`).
    const [packed] = JSON.parse(execFileSync(npm, ["pack", "--json", "--ignore-scripts", "--pack-destination", dir], { cwd: root, encoding: "utf8" }));
    const files = packed.files.map((f) => f.path);
    for (const f of ["package.json", "README.md", "dist/index.js", "dist/index.d.ts", "dist/identity.js", "src/client.ts"]) {
      assert.ok(files.includes(f), `${f} is in the package (${files.length} files)`);
    }
    assert.ok(!files.some((f) => f.startsWith("test/") || f.startsWith("node_modules/")), "no tests or modules packed");
    writeFileSync(join(dir, "package.json"), JSON.stringify({ name: "scratch", private: true, type: "module" }));
    execFileSync(npm, ["install", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error", join(dir, packed.filename)], { cwd: dir, stdio: ["ignore", "inherit", "inherit"] });
    writeFileSync(join(dir, "check.mjs"), `
      import { IcWsClient, IDL, Principal, identityProver, MAINNET_ROOT_KEY_DER } from "@ic-ws/client";
      const client = new IcWsClient({ gatewayUrl: "ws://127.0.0.1:9", canisterId: "aaaaa-aa", inboundType: IDL.Text, reconnect: false });
      console.log(JSON.stringify({ state: client.state, key: client.publicKey.length, root: MAINNET_ROOT_KEY_DER.length,
        prover: typeof identityProver, principal: Principal.fromText("aaaaa-aa").toText() }));
    `);
    const out = JSON.parse(execFileSync(process.execPath, ["check.mjs"], { cwd: dir, encoding: "utf8" }));
    assert.deepEqual(out, { state: "idle", key: 32, root: 133, prover: "function", principal: "aaaaa-aa" });
    // The types resolve through the package's "exports" (as a TypeScript app compiles it).
    writeFileSync(join(dir, "check.ts"), `
      import { IcWsClient, IDL } from "@ic-ws/client";
      import type { IcWsClientOptions, MessageEvent } from "@ic-ws/client";
      const options: IcWsClientOptions<string, string> = { gatewayUrl: "ws://x", canisterId: "aaaaa-aa", inboundType: IDL.Text, outboundType: IDL.Text };
      const client = new IcWsClient<string, string>(options);
      client.on("message", (m: MessageEvent<string>) => m.data.toUpperCase());
    `);
    writeFileSync(join(dir, "tsconfig.json"), JSON.stringify({ compilerOptions: { target: "ES2022", module: "NodeNext", moduleResolution: "NodeNext", strict: true, noEmit: true, skipLibCheck: true }, files: ["check.ts"] }));
    execFileSync(process.execPath, [join(root, "node_modules/typescript/bin/tsc"), "-p", dir], { cwd: dir, stdio: ["ignore", "inherit", "inherit"] });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
