//! Ed25519 verification on curve25519-dalek, single and batched, with exactly the accept/reject
//! semantics of the protocol's reference verifier ([`crate::signing::verify_signature`], on
//! ed25519-compact, which also stays the signer).
//!
//! Why a second verifier: inside a canister every instruction is paid for. ed25519-compact's
//! field arithmetic multiplies `u64 x u64 -> u128`, which wasm32 has no instruction for (each
//! multiply is a `__multi3` call); curve25519-dalek selects its 32-bit backend on wasm32
//! (`u32 x u32 -> u64`, one native `i64.mul`) and has variable-time multi-scalar
//! multiplication, which batch verification needs. Figures: `BENCHMARKS.md`, "Inbound
//! verification".
//!
//! # Semantics (those of ed25519-compact 2.6, tested differentially in this module's tests)
//!
//! A signature `(R, S)` on message `M` under key `A` is accepted iff
//! - `S` is canonical (`S < L`),
//! - `A` and `R` are canonical encodings (`y < p`; `x = 0` with the sign bit set is refused) of
//!   curve points that do not have small order (order dividing 8),
//! - the cofactored equation holds: `[8]([S]B - [k]A - R) = 0` with
//!   `k = SHA-512(R || A || M) mod L`.
//!
//! # Batches
//!
//! [`verify_batch`] / [`batch_holds`] check `n` signatures with one multi-scalar
//! multiplication: with 128-bit coefficients `z_i`,
//! `[8](Σ z_i [S_i]B − Σ z_i [k_i]A_i − Σ z_i R_i) = 0`.
//! If every entry satisfies its own equation the sum does, so an honest batch is always
//! accepted. If some entry `j` does not, write `[8]([S_j]B − [k_j]A_j − R_j) = e_j·G` with
//! `e_j ≠ 0 (mod L)` (`G` a generator of the prime-order subgroup; the cofactor kills every
//! torsion component); the batch is accepted only if `Σ z_i e_i ≡ 0 (mod L)`, which for fixed
//! other terms holds for at most one value of `z_j` among its `2^128` (`L > 2^252`). The
//! canister has no randomness inside a call, so the `z_i` are derived from SHA-512 of **every**
//! input of the batch (Fiat–Shamir: each `A_i, R_i, S_i, k_i`, which determine all the `e_i`):
//! in the random-oracle model an attacker who picks the inputs and tries again and again
//! succeeds with probability at most `2^-128` per try (per SHA-512 evaluation it makes). The
//! per-entry checks (`S < L`, encodings, small order) are made on each entry as in a single
//! verification, so a batch that holds accepts exactly the entries a single verification
//! would accept (except with that probability). The argument is repeated in `docs/protocol.md`
//! ("Batch verification").
//!
//! The same key appearing in several entries is one point of the multi-scalar multiplication
//! (its coefficients add up), so a session sending many messages in a batch pays its key once.

use crate::signing::SignatureError;
use crate::types::{CLIENT_KEY_LEN, SIGNATURE_LEN};
use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::VartimeMultiscalarMul;
use sha2::{Digest, Sha512};

/// Domain separator of the Fiat–Shamir derivation of a batch's coefficients.
const BATCH_DOMAIN: &[u8] = b"\x14ic-ws-ed25519-batch";

/// One signature to verify: key, message, signature (any lengths; wrong lengths are
/// [`SignatureError::Malformed`], as in the reference).
#[derive(Clone, Copy, Debug)]
pub struct Entry<'a> {
    /// The signer's 32-byte public key.
    pub public_key: &'a [u8],
    /// The signed message.
    pub message: &'a [u8],
    /// The 64-byte signature `R || S`.
    pub signature: &'a [u8],
}

/// True if the 255-bit `y` of a point encoding is below `p = 2^255 - 19`.
fn y_is_canonical(b: &[u8; 32]) -> bool {
    // y >= p exactly when bytes 1..=30 are 0xff, the top byte (sign bit cleared) is 0x7f
    // and the low byte is >= 0xed.
    !(b[0] >= 0xed && b[1..31].iter().all(|&x| x == 0xff) && b[31] & 0x7f == 0x7f)
}

/// A canonical encoding of a point that does not have small order.
fn decode_point(bytes: &[u8; 32]) -> Option<EdwardsPoint> {
    if !y_is_canonical(bytes) {
        return None;
    }
    // x = 0 with the sign bit set (which ed25519-compact refuses) decodes here to a point of
    // order 1 or 2 (y = ±1 are the only points with x = 0), which the small-order check below
    // refuses: same outcome.
    let p = CompressedEdwardsY(*bytes).decompress()?;
    if p.is_small_order() {
        return None;
    }
    Some(p)
}

/// How many decoded keys [`decode_key`] keeps (~200 bytes of heap each).
#[cfg(not(test))]
pub const KEY_CACHE_MAX: usize = 4096;
/// Small in unit tests, so that the bound is exercised quickly.
#[cfg(test)]
pub const KEY_CACHE_MAX: usize = 16;

thread_local! {
    /// Decoded (valid) keys by their encoding, negated (the equations use `-A`). Decoding a
    /// key is a field square root; a session's key is decoded at its open and then reused by
    /// all its messages. Only successful decodings are kept, and a decoding depends on the
    /// bytes alone, so a hit gives exactly what decoding would. Heap only (in a canister: empty
    /// after an upgrade) and cleared whole when full: bounded memory.
    static KEY_CACHE: std::cell::RefCell<std::collections::HashMap<[u8; 32], EdwardsPoint>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// `-A` for a key encoding (see [`decode_point`]), through [`KEY_CACHE`].
fn decode_key_negated(bytes: &[u8; 32]) -> Option<EdwardsPoint> {
    if let Some(p) = KEY_CACHE.with(|c| c.borrow().get(bytes).copied()) {
        return Some(p);
    }
    let p = -decode_point(bytes)?;
    KEY_CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= KEY_CACHE_MAX {
            c.clear();
        }
        c.insert(*bytes, p);
    });
    Some(p)
}

/// Number of keys in the cache (tests and benchmarks).
pub fn key_cache_len() -> usize {
    KEY_CACHE.with(|c| c.borrow().len())
}

/// An entry that passed the per-entry checks, ready for its equation.
struct Parsed {
    a_bytes: [u8; 32],
    minus_a: EdwardsPoint,
    r_bytes: [u8; 32],
    minus_r: EdwardsPoint,
    s: Scalar,
    k: Scalar,
}

impl Parsed {
    /// The entry's own cofactored equation: `[8]([S]B - [k]A - R) = 0`.
    fn holds(&self) -> bool {
        (EdwardsPoint::vartime_double_scalar_mul_basepoint(&self.k, &self.minus_a, &self.s)
            + self.minus_r)
            .is_small_order()
    }
}

/// The per-entry checks, in the reference's order of outcomes: lengths (`Malformed`), then
/// `S`, `A`, `R` (`Invalid`); then `k`.
fn parse(e: &Entry<'_>) -> Result<Parsed, SignatureError> {
    let (Ok(pk), Ok(sig)) = (
        <&[u8; CLIENT_KEY_LEN]>::try_from(e.public_key),
        <&[u8; SIGNATURE_LEN]>::try_from(e.signature),
    ) else {
        return Err(SignatureError::Malformed);
    };
    let mut r_bytes = [0u8; 32];
    let mut s_bytes = [0u8; 32];
    r_bytes.copy_from_slice(&sig[..32]);
    s_bytes.copy_from_slice(&sig[32..]);
    let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes))
        .ok_or(SignatureError::Invalid)?;
    let minus_a = decode_key_negated(pk).ok_or(SignatureError::Invalid)?;
    let minus_r = -decode_point(&r_bytes).ok_or(SignatureError::Invalid)?;
    let mut h = Sha512::new();
    h.update(r_bytes);
    h.update(pk);
    h.update(e.message);
    let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
    Ok(Parsed {
        a_bytes: *pk,
        minus_a,
        r_bytes,
        minus_r,
        s,
        k,
    })
}

/// Verifies one Ed25519 signature (the reference's verdict: see the module docs).
pub fn verify(public_key: &[u8], message: &[u8], signature: &[u8]) -> Result<(), SignatureError> {
    let p = parse(&Entry {
        public_key,
        message,
        signature,
    })?;
    if p.holds() {
        Ok(())
    } else {
        Err(SignatureError::Invalid)
    }
}

/// The batch equation over entries that passed their checks (see the module docs).
fn batch_equation_holds(entries: &[&Parsed]) -> bool {
    match entries {
        [] => return true,
        [one] => return one.holds(),
        _ => {}
    }
    // Fiat–Shamir: the coefficients depend on every input of the batch.
    let mut h = Sha512::new();
    h.update(BATCH_DOMAIN);
    h.update((entries.len() as u64).to_be_bytes());
    for p in entries {
        h.update(p.a_bytes);
        h.update(p.r_bytes);
        h.update(p.s.as_bytes());
        h.update(p.k.as_bytes());
    }
    let seed: [u8; 64] = h.finalize().into();
    let mut z = Vec::with_capacity(entries.len());
    let mut block = 0u64;
    while z.len() < entries.len() {
        let mut h = Sha512::new();
        h.update(seed);
        h.update(block.to_be_bytes());
        block += 1;
        let out: [u8; 64] = h.finalize().into();
        for chunk in out.chunks_exact(16) {
            if z.len() == entries.len() {
                break;
            }
            let mut b = [0u8; 32];
            b[..16].copy_from_slice(chunk);
            // < 2^128 < L: canonical.
            z.push(Scalar::from_bytes_mod_order(b));
        }
    }
    // Points: B, each distinct -A (coefficients summed), each -R (128-bit coefficient).
    let mut b_coef = Scalar::ZERO;
    let mut keys: Vec<([u8; 32], EdwardsPoint, Scalar)> = Vec::new();
    let mut scalars = Vec::with_capacity(2 * entries.len() + 1);
    let mut points = Vec::with_capacity(2 * entries.len() + 1);
    for (p, z) in entries.iter().zip(&z) {
        b_coef += z * p.s;
        let zk = z * p.k;
        match keys.iter_mut().find(|(a, _, _)| *a == p.a_bytes) {
            Some((_, _, c)) => *c += zk,
            None => keys.push((p.a_bytes, p.minus_a, zk)),
        }
        scalars.push(*z);
        points.push(p.minus_r);
    }
    scalars.push(b_coef);
    points.push(ED25519_BASEPOINT_POINT);
    for (_, minus_a, c) in keys {
        scalars.push(c);
        points.push(minus_a);
    }
    EdwardsPoint::vartime_multiscalar_mul(scalars, points).is_small_order()
}

/// True iff every entry verifies (as [`verify`] would say, up to the batch's `2^-128`): one
/// multi-scalar multiplication for the whole batch. Says nothing about which entry is bad
/// when false; [`verify_batch`] does.
pub fn batch_holds(entries: &[Entry<'_>]) -> bool {
    let mut parsed = Vec::with_capacity(entries.len());
    for e in entries {
        match parse(e) {
            Ok(p) => parsed.push(p),
            Err(_) => return false,
        }
    }
    batch_equation_holds(&parsed.iter().collect::<Vec<_>>())
}

/// A failed batch of at least this many entries is split into [`SPLIT`] groups, each checked
/// as a batch again, before anything is left to single verifications.
pub const SPLIT_MIN: usize = 16;
/// Into how many groups a failed batch is split (once).
pub const SPLIT: usize = 4;

/// For each entry that passed its own checks (`parsed[i]` is `Some`), whether it is known
/// valid: the batch equation over all of them; if that fails and they are at least
/// [`SPLIT_MIN`], the equation over each of [`SPLIT`] groups of them (one bad entry then
/// leaves only its group unknown). At most two passes of multi-scalar multiplication over the
/// entries; no single verification.
fn known_valid(parsed: &[Option<Parsed>]) -> Vec<bool> {
    let ok: Vec<usize> = (0..parsed.len()).filter(|&i| parsed[i].is_some()).collect();
    let refs = |idx: &[usize]| -> Vec<&Parsed> {
        idx.iter().filter_map(|&i| parsed[i].as_ref()).collect()
    };
    let mut known = vec![false; parsed.len()];
    let mut mark = |idx: &[usize]| idx.iter().for_each(|&i| known[i] = true);
    if ok.len() == 1 {
        // One entry: its own equation, once.
        if refs(&ok).first().is_some_and(|p| p.holds()) {
            mark(&ok);
        }
    } else if batch_equation_holds(&refs(&ok)) {
        mark(&ok);
    } else if ok.len() >= SPLIT_MIN {
        for group in ok.chunks(ok.len().div_ceil(SPLIT)) {
            if batch_equation_holds(&refs(group)) {
                mark(group);
            }
        }
    }
    known
}

/// Which entries are known to verify, after batch equations and no single verification: the
/// entries that pass their own checks (lengths, `S < L`, encodings, small order) are verified
/// together; if that fails (and they are at least [`SPLIT_MIN`]), each of [`SPLIT`] groups of
/// them is verified as a batch again. `true`: the entry is valid (up to the batch's
/// `2^-128`). `false`: not known valid (it failed its own checks, or its group failed):
/// [`verify`] gives the verdict (cheaply for an entry that fails its own checks). For callers
/// that must bound the work per call (a canister): the cost is at most two multi-scalar
/// passes over the entries, and the single verifications are theirs to schedule.
pub fn batch_verified(entries: &[Entry<'_>]) -> Vec<bool> {
    let parsed: Vec<Option<Parsed>> = entries.iter().map(|e| parse(e).ok()).collect();
    known_valid(&parsed)
}

/// Verifies every entry: each result is [`verify`]'s verdict for it. The entries that pass
/// their own checks are verified in a batch (split once into groups if it fails, see
/// [`batch_verified`]); the entries of a group that fails are verified alone, so every bad
/// entry is still identified.
pub fn verify_batch(entries: &[Entry<'_>]) -> Vec<Result<(), SignatureError>> {
    let parsed: Vec<Result<Parsed, SignatureError>> = entries.iter().map(parse).collect();
    let opt: Vec<Option<Parsed>> = parsed.into_iter().map(Result::ok).collect();
    let known = known_valid(&opt);
    entries
        .iter()
        .zip(opt.iter().zip(known))
        .map(|(e, (p, known))| match p {
            // Failed its own checks: the error those checks give.
            None => parse(e).map(|_| ()),
            Some(_) if known => Ok(()),
            Some(p) if p.holds() => Ok(()),
            Some(_) => Err(SignatureError::Invalid),
        })
        .collect()
}

#[cfg(test)]
mod tests;
