/**
 * Byte helpers shared by the signing layout and the certification paths: big-endian integers,
 * length-prefixed fields, hex. Kept free of any dependency so they are easy to audit.
 */

/** Largest value of an unsigned 64-bit integer. */
export const U64_MAX = (1n << 64n) - 1n;

/** Concatenates byte arrays. */
export function concat(parts: Uint8Array[]): Uint8Array {
  let len = 0;
  for (const p of parts) len += p.length;
  const out = new Uint8Array(len);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** `u64` big-endian (8 bytes). Throws on values outside 0..2^64-1. */
export function u64be(value: bigint): Uint8Array {
  if (value < 0n || value > U64_MAX) throw new RangeError(`not a u64: ${value}`);
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, value, false);
  return out;
}

/** `u16` big-endian (2 bytes). */
export function u16be(value: number): Uint8Array {
  if (!Number.isInteger(value) || value < 0 || value > 0xffff) throw new RangeError(`not a u16: ${value}`);
  return new Uint8Array([value >> 8, value & 0xff]);
}

/** `u32` big-endian (4 bytes). */
export function u32be(value: number): Uint8Array {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) throw new RangeError(`not a u32: ${value}`);
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, value, false);
  return out;
}

/** `bytes` field of the signing layout: 4-byte big-endian length, then the bytes. */
export function lengthPrefixed(bytes: Uint8Array): Uint8Array {
  return concat([u32be(bytes.length), bytes]);
}

/** Byte-wise equality. */
export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Lower-case hex. */
export function toHex(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += b.toString(16).padStart(2, "0");
  return s;
}

/** Parses hex (either case, no prefix). Throws on odd length or a non-hex digit. */
export function fromHex(hex: string): Uint8Array {
  if (hex.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(hex)) throw new Error("invalid hex string");
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** UTF-8 encoding of a string. */
export function utf8(text: string): Uint8Array {
  return new TextEncoder().encode(text);
}

/** Most UTF-8 bytes of a WebSocket close reason (browsers throw on a longer one). */
export const MAX_CLOSE_REASON_BYTES = 123;

/** UTF-8 length of one code point (a lone surrogate is encoded as U+FFFD: 3 bytes). */
function utf8Len(codePoint: number): number {
  return codePoint < 0x80 ? 1 : codePoint < 0x800 ? 2 : codePoint < 0x10000 ? 3 : 4;
}

/**
 * The longest prefix of `s` whose UTF-8 encoding is at most `maxBytes` bytes, cut between
 * code points (never inside a surrogate pair). Work is bounded by `maxBytes`, not `s.length`.
 */
export function truncateUtf8(s: string, maxBytes: number): string {
  // Every UTF-16 unit is at most 3 UTF-8 bytes.
  if (s.length * 3 <= maxBytes) return s;
  let bytes = 0;
  let end = 0;
  for (const ch of s) {
    const n = utf8Len(ch.codePointAt(0) ?? 0);
    if (bytes + n > maxBytes) return s.slice(0, end);
    bytes += n;
    end += ch.length;
  }
  return s;
}

/**
 * `s` within `maxBytes` UTF-8 bytes, cut between code points, with "…" appended when it was
 * cut and the ellipsis fits. For close reasons and error texts that quote peer data.
 */
export function boundedText(s: string, maxBytes: number): string {
  const whole = truncateUtf8(s, maxBytes);
  if (whole.length === s.length) return s;
  return maxBytes >= 3 ? `${truncateUtf8(s, maxBytes - 3)}…` : whole;
}

/** Most UTF-8 bytes of peer-supplied text (decoder messages, relayed errors) kept in an error. */
export const MAX_PEER_TEXT_BYTES = 512;
