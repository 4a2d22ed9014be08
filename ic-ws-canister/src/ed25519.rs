//! Ed25519 verification of client signatures inside the canister.
//!
//! The protocol's reference verifier (`ic_ws_protocol::signing::verify_signature`, on
//! ed25519-compact) stays the one clients, the gateway and tests use. Inside the canister
//! this module does the same check on curve25519-dalek because it is several times cheaper
//! in wasm: ed25519-compact's field arithmetic multiplies `u64 x u64 -> u128`, which wasm32
//! has no instruction for (every multiply is a `__multi3` call), while curve25519-dalek
//! selects its 32-bit backend on wasm32 (`u32 x u32 -> u64`, one native `i64.mul`). Measured
//! figures are in `ic-ws-canister/BENCH.md`.
//!
//! Semantics are exactly ed25519-compact's (tested against it in `tests`, including the
//! adversarial cases): the signature's `S` must be canonical (`< L`); the key `A` and the
//! signature's `R` must be canonical encodings (`y < p`) of points that do not have small
//! order; the equation is the cofactored one, `[8]([S]B - [k]A - R) = 0` with
//! `k = SHA-512(R || A || M) mod L`.

use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use ic_ws_protocol::types::{ClientMessage, OpenRequest, CLIENT_KEY_LEN, SIGNATURE_LEN};
use ic_ws_protocol::SignatureError;
use sha2::{Digest, Sha512};

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
    // x = 0 with the sign bit set (which ed25519-compact rejects) decodes here to a point of
    // order 1 or 2, which the small-order check below rejects: same outcome.
    let p = CompressedEdwardsY(*bytes).decompress()?;
    if p.is_small_order() {
        return None;
    }
    Some(p)
}

/// How many decoded session keys [`decode_key`] keeps (~200 bytes of heap each).
#[cfg(not(test))]
const KEY_CACHE_MAX: usize = 4096;
/// Small in unit tests, so that the bound is exercised quickly.
#[cfg(test)]
const KEY_CACHE_MAX: usize = 16;

thread_local! {
    /// Decoded (valid) session keys by their encoding. Decoding a key is a field square root,
    /// about 7 % of a verification in wasm; a session's key is decoded once at its open and
    /// then reused by all its messages. Only successful decodings are kept, and a decoding
    /// depends on the bytes alone, so a hit gives exactly what decoding would. Heap only: the
    /// cache starts empty after an upgrade and is cleared whole when full (bounded memory).
    static KEY_CACHE: std::cell::RefCell<std::collections::HashMap<[u8; 32], EdwardsPoint>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// [`decode_point`] for session keys, through [`KEY_CACHE`].
fn decode_key(bytes: &[u8; 32]) -> Option<EdwardsPoint> {
    if let Some(p) = KEY_CACHE.with(|c| c.borrow().get(bytes).copied()) {
        return Some(p);
    }
    let p = decode_point(bytes)?;
    KEY_CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= KEY_CACHE_MAX {
            c.clear();
        }
        c.insert(*bytes, p);
    });
    Some(p)
}

/// Verifies an Ed25519 signature with the protocol's strict semantics (see the module doc).
/// `Malformed` for wrong lengths, `Invalid` for everything else, as the reference does.
pub(crate) fn verify_signature(
    public_key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> Result<(), SignatureError> {
    let (Ok(pk), Ok(sig)) = (
        <&[u8; CLIENT_KEY_LEN]>::try_from(public_key),
        <&[u8; SIGNATURE_LEN]>::try_from(signature),
    ) else {
        return Err(SignatureError::Malformed);
    };
    let mut r_bytes = [0u8; 32];
    let mut s_bytes = [0u8; 32];
    r_bytes.copy_from_slice(&sig[..32]);
    s_bytes.copy_from_slice(&sig[32..]);
    let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes))
        .ok_or(SignatureError::Invalid)?;
    let a = decode_key(pk).ok_or(SignatureError::Invalid)?;
    let r = decode_point(&r_bytes).ok_or(SignatureError::Invalid)?;
    let mut h = Sha512::new();
    h.update(r_bytes);
    h.update(pk);
    h.update(message);
    let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
    // [S]B - [k]A - R, then the cofactored check.
    let check = EdwardsPoint::vartime_double_scalar_mul_basepoint(&k, &-a, &s) - r;
    if check.is_small_order() {
        Ok(())
    } else {
        Err(SignatureError::Invalid)
    }
}

/// [`ic_ws_protocol::signing::verify_open`] on this verifier.
pub(crate) fn verify_open(
    canister: &candid::Principal,
    open: &OpenRequest,
) -> Result<(), SignatureError> {
    verify_signature(
        &open.client_key,
        &ic_ws_protocol::signing::open_signing_bytes(canister, open),
        &open.signature,
    )
}

/// [`ic_ws_protocol::signing::verify_message`] on this verifier.
pub(crate) fn verify_message(
    canister: &candid::Principal,
    client_key: &[u8],
    msg: &ClientMessage,
) -> Result<(), SignatureError> {
    verify_signature(
        client_key,
        &ic_ws_protocol::signing::message_signing_bytes(canister, msg),
        &msg.signature,
    )
}

#[cfg(test)]
mod tests {
    //! Differential tests against the protocol's reference verifier (ed25519-compact): every
    //! case, honest or adversarial, must get the same verdict.
    use super::*;
    use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
    use ic_ws_protocol::signing::verify_signature as reference;

    /// Deterministic pseudo-random bytes (SHA-512 of a label and a counter).
    fn rnd(label: &str, i: u64) -> [u8; 64] {
        let mut h = Sha512::new();
        h.update(label.as_bytes());
        h.update(i.to_be_bytes());
        h.finalize().into()
    }

    /// A signature by secret scalar `a` (public point `a_pub`, possibly with a torsion
    /// component the signer added) with nonce point `r_pub = [r]B + t_r`.
    fn sign_raw(
        a: Scalar,
        a_pub: EdwardsPoint,
        r: Scalar,
        t_r: EdwardsPoint,
        msg: &[u8],
    ) -> ([u8; 32], [u8; 64]) {
        let pk = a_pub.compress().to_bytes();
        let r_pub = (ED25519_BASEPOINT_POINT * r + t_r).compress().to_bytes();
        let mut h = Sha512::new();
        h.update(r_pub);
        h.update(pk);
        h.update(msg);
        let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
        let s = r + k * a;
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&r_pub);
        sig[32..].copy_from_slice(s.as_bytes());
        (pk, sig)
    }

    fn same(pk: &[u8], msg: &[u8], sig: &[u8]) -> Result<(), SignatureError> {
        let ours = verify_signature(pk, msg, sig);
        assert_eq!(
            ours,
            reference(pk, msg, sig),
            "verdicts differ for pk {pk:02x?} sig {sig:02x?}"
        );
        ours
    }

    #[test]
    fn honest_signatures_verify_and_tampering_is_rejected() {
        for i in 0..40 {
            let key = ic_ws_protocol::signing::SessionKey::from_seed(
                rnd("seed", i)[..32].try_into().unwrap(),
            );
            let msg = rnd("msg", i);
            let msg = &msg[..(i as usize % 64)];
            let sig = key.sign(msg);
            let pk = key.public_key();
            assert_eq!(same(&pk, msg, &sig), Ok(()));
            // Any flipped bit of key, message or signature is rejected.
            let bit = (i as usize * 7) % 256;
            let mut bad_pk = pk.clone();
            bad_pk[bit / 8] ^= 1 << (bit % 8);
            assert!(same(&bad_pk, msg, &sig).is_err());
            let mut bad_sig = sig.clone();
            bad_sig[(i as usize * 13) % 64] ^= 0x10;
            assert!(same(&pk, msg, &bad_sig).is_err());
            let mut bad_msg = msg.to_vec();
            bad_msg.push(1);
            assert!(same(&pk, &bad_msg, &sig).is_err());
        }
    }

    #[test]
    fn malleated_s_is_rejected() {
        let key = ic_ws_protocol::signing::SessionKey::from_seed([3; 32]);
        let sig = key.sign(b"m");
        // S + L: same value mod L, non-canonical encoding.
        let s = Scalar::from_canonical_bytes(sig[32..].try_into().unwrap()).unwrap();
        let l_bytes: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut sum = [0u8; 32];
        let mut carry = 0u16;
        for j in 0..32 {
            let v = u16::from(s.as_bytes()[j]) + u16::from(l_bytes[j]) + carry;
            sum[j] = v as u8;
            carry = v >> 8;
        }
        let mut forged = sig;
        forged[32..].copy_from_slice(&sum);
        assert_eq!(
            same(&key.public_key(), b"m", &forged),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn small_order_and_non_canonical_points_are_rejected() {
        let msg = b"any message";
        for t in EIGHT_TORSION.iter() {
            let enc = t.compress().to_bytes();
            // A small-order key with R = the same point and S = 0 satisfies the
            // (cofactored) equation trivially: a classic forgery, must be rejected.
            let mut sig = [0u8; 64];
            sig[..32].copy_from_slice(&enc);
            assert_eq!(same(&enc, msg, &sig), Err(SignatureError::Invalid));
            // And with a small-order R under an honest key.
            let key = ic_ws_protocol::signing::SessionKey::from_seed([9; 32]);
            assert!(same(&key.public_key(), msg, &sig).is_err());
            // x = 0 with the sign bit set.
            let mut neg = enc;
            neg[31] |= 0x80;
            assert!(same(&neg, msg, &sig).is_err());
        }
        // Non-canonical y (y + p for small y; y = p, p + 1, ...), both sign bits.
        for low in 0xedu8..=0xff {
            for sign in [0u8, 0x80] {
                let mut enc = [0xffu8; 32];
                enc[0] = low;
                enc[31] = 0x7f | sign;
                let sig = [0u8; 64];
                assert!(same(&enc, msg, &sig).is_err());
                let key = ic_ws_protocol::signing::SessionKey::from_seed([4; 32]);
                let mut s2 = key.sign(msg);
                s2[..32].copy_from_slice(&enc);
                assert!(same(&key.public_key(), msg, &s2).is_err());
            }
        }
        // Wrong lengths are Malformed in both.
        assert_eq!(
            same(&[1; 31], msg, &[0; 64]),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            same(&[1; 32], msg, &[0; 63]),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn mixed_order_keys_and_nonces_get_the_reference_verdict() {
        // Keys and nonces with a torsion component: the cofactored equation accepts these
        // (cofactorless verifiers may not); what matters is the same verdict as the
        // reference, so that canister and clients agree on every signature.
        for i in 0..32u64 {
            let a = Scalar::from_bytes_mod_order_wide(&rnd("a", i));
            let r = Scalar::from_bytes_mod_order_wide(&rnd("r", i));
            let t_a = EIGHT_TORSION[(i % 8) as usize];
            let t_r = EIGHT_TORSION[((i / 8) % 8) as usize];
            let (pk, sig) = sign_raw(a, ED25519_BASEPOINT_POINT * a + t_a, r, t_r, b"mixed");
            assert_eq!(same(&pk, b"mixed", &sig), Ok(()));
            let (pk, sig) = sign_raw(a, ED25519_BASEPOINT_POINT * a, r, t_r, b"mixed");
            assert_eq!(same(&pk, b"mixed", &sig), Ok(()));
            // The same signatures over another message are rejected.
            assert!(same(&pk, b"other", &sig).is_err());
        }
    }

    #[test]
    fn cached_keys_give_the_verdicts_of_a_fresh_decoding() {
        // Each case verified cold (key not cached) then warm (cached if valid): same verdict
        // as the reference both times, and invalid keys never enter the cache.
        let key = ic_ws_protocol::signing::SessionKey::from_seed([5; 32]);
        let pk = key.public_key();
        let sig = key.sign(b"m");
        let mut forged = sig.clone();
        forged[40] ^= 1;
        let small: [u8; 32] = EIGHT_TORSION[1].compress().to_bytes();
        let a = Scalar::from_bytes_mod_order_wide(&rnd("a", 99));
        let (mixed_pk, mixed_sig) = sign_raw(
            a,
            ED25519_BASEPOINT_POINT * a + EIGHT_TORSION[3],
            a,
            EIGHT_TORSION[0],
            b"m",
        );
        let cases: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (pk.clone(), sig.clone()),
            (pk.clone(), forged),
            (small.to_vec(), sig.clone()),
            (mixed_pk.to_vec(), mixed_sig.to_vec()),
            ([0xffu8; 32].to_vec(), sig),
        ];
        for _ in 0..2 {
            for (k, s) in &cases {
                assert_eq!(verify_signature(k, b"m", s), reference(k, b"m", s));
            }
        }
        assert!(KEY_CACHE.with(|c| c.borrow().contains_key(pk.as_slice())));
        assert!(!KEY_CACHE.with(|c| c.borrow().contains_key(&small)));
        assert!(!KEY_CACHE.with(|c| c.borrow().contains_key(&[0xff; 32])));
        // Bounded: the cache never holds more than its maximum.
        for i in 0..(KEY_CACHE_MAX as u64 + 10) {
            let p = (ED25519_BASEPOINT_POINT * Scalar::from(i + 1))
                .compress()
                .to_bytes();
            assert!(decode_key(&p).is_some());
        }
        assert!(KEY_CACHE.with(|c| c.borrow().len()) <= KEY_CACHE_MAX);
    }

    #[test]
    fn random_garbage_gets_the_reference_verdict() {
        for i in 0..200u64 {
            let b = rnd("garbage", i);
            let pk: [u8; 32] = b[..32].try_into().unwrap();
            let sig = [rnd("sig", i)[..32].to_vec(), b[32..].to_vec()].concat();
            assert!(same(&pk, b"x", &sig).is_err());
        }
    }
}
