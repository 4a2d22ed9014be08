// Small units: byte helpers and session storage against bad input.
import { test } from "node:test";
import assert from "node:assert/strict";
import { u64be, u16be, fromHex, toHex, lengthPrefixed, MemoryStorage, loadSession, saveSession, SessionKey, Principal, truncateUtf8, boundedText, MAX_CLOSE_REASON_BYTES, describeWsError, MAX_PEER_TEXT_BYTES } from "../dist/index.js";

test("units: u64be / u16be encode big-endian and refuse out-of-range values", () => {
  assert.equal(toHex(u64be(0x0102030405060708n)), "0102030405060708");
  assert.equal(toHex(u64be((1n << 64n) - 1n)), "ffffffffffffffff");
  assert.throws(() => u64be(1n << 64n), RangeError);
  assert.throws(() => u64be(-1n), RangeError);
  assert.equal(toHex(u16be(1000)), "03e8");
  assert.throws(() => u16be(70000), RangeError);
  assert.equal(toHex(lengthPrefixed(new Uint8Array([9, 9]))), "000000020909");
});

test("units: fromHex refuses malformed hex", () => {
  assert.deepEqual([...fromHex("00ff")], [0, 255]);
  assert.throws(() => fromHex("abc"));
  assert.throws(() => fromHex("zz"));
});

test("units: a stored session round-trips; garbage in storage counts as no session", () => {
  const storage = new MemoryStorage();
  const key = SessionKey.generate();
  const msg = key.signMessage(Principal.fromText("aaaaa-aa"), { client_id: 3n, seq: 4n, ack: 5n, kind: { KeepAlive: null } });
  saveSession(storage, "s", { keySeed: key.toJSON(), lastOpenTimestampNs: 7n, clientId: 3n, nextOutboundSeq: 5n, nextInboundSeq: 5n, outbox: [msg] });
  const back = loadSession(storage, "s");
  assert.equal(back.clientId, 3n);
  assert.equal(back.outbox[0].seq, 4n);
  assert.deepEqual([...back.outbox[0].signature], [...msg.signature]);
  assert.equal(SessionKey.fromHex(back.keySeed).toJSON(), key.toJSON());
  storage.setItem("bad", "{not json");
  assert.equal(loadSession(storage, "bad"), undefined);
  storage.setItem("bad2", JSON.stringify({ keySeed: "00", outbox: ["zz"] }));
  assert.equal(loadSession(storage, "bad2"), undefined);
});

// A small deterministic generator (xorshift) of strings mixing ASCII, 2-, 3- and 4-byte
// characters and lone surrogates: property checks without a dependency.
function randomStrings(count, seed = 0x2545f491) {
  let x = seed;
  const next = () => ((x ^= x << 13), (x ^= x >>> 17), (x ^= x << 5), x >>> 0);
  const pools = [[0x20, 0x7e], [0x80, 0x7ff], [0x800, 0xd7ff], [0x10000, 0x10ffff], [0xd800, 0xdfff]];
  const out = [];
  for (let i = 0; i < count; i++) {
    let s = "";
    const len = next() % 200;
    for (let j = 0; j < len; j++) {
      const [lo, hi] = pools[next() % pools.length];
      s += String.fromCodePoint(lo + (next() % (hi - lo + 1)));
    }
    out.push(s);
  }
  return out;
}

test("units: text is cut on code points within a UTF-8 byte bound (close reasons <= 123 bytes)", () => {
  const utf8 = (s) => new TextEncoder().encode(s).length;
  const name = "a" + "日本".repeat(15);
  const reason = boundedText(`open failed: the name "${name}" is taken, and more text after it`, MAX_CLOSE_REASON_BYTES);
  assert.ok(utf8(reason) <= 123 && reason.endsWith("…"), reason);
  for (const s of randomStrings(2000)) {
    for (const max of [0, 1, 2, 3, 4, 5, 17, 64, 123, 500]) {
      const t = truncateUtf8(s, max);
      assert.ok(utf8(t) <= max, `${max}: ${utf8(t)}`);
      assert.ok(s.startsWith(t));
      // Never ends inside a surrogate pair that the source keeps whole.
      const last = t.charCodeAt(t.length - 1);
      if (last >= 0xd800 && last <= 0xdbff) assert.ok(!(s.charCodeAt(t.length) >= 0xdc00 && s.charCodeAt(t.length) <= 0xdfff));
      // Longest: the next code point would not fit.
      if (t.length < s.length) assert.ok(utf8(s.slice(0, t.length + (s.codePointAt(t.length) > 0xffff ? 2 : 1))) > max);
      const b = boundedText(s, max);
      assert.ok(utf8(b) <= max);
      if (b !== s && max >= 3) assert.ok(b.endsWith("…") && s.startsWith(b.slice(0, -1)));
    }
  }
  const long = describeWsError({ Rejected: "日本".repeat(100_000) });
  assert.ok(utf8(long) <= MAX_PEER_TEXT_BYTES + 20, `${utf8(long)}`);
});
