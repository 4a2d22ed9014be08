// Small units: byte helpers and session storage against bad input.
import { test } from "node:test";
import assert from "node:assert/strict";
import { u64be, u16be, fromHex, toHex, lengthPrefixed, MemoryStorage, loadSession, saveSession, SessionKey, Principal } from "../dist/index.js";

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
