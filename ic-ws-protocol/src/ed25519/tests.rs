//! Differential tests against the protocol's reference verifier (ed25519-compact): every case,
//! honest or adversarial, alone or in any batch, must get the same verdict.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::signing::verify_signature as reference;
use crate::signing::SessionKey;
use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
use proptest::prelude::*;

/// Deterministic pseudo-random bytes (SHA-512 of a label and a counter).
fn rnd(label: &str, i: u64) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(label.as_bytes());
    h.update(i.to_be_bytes());
    h.finalize().into()
}

/// `L`, the order of the prime subgroup, little-endian.
const L_BYTES: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// Little-endian 256-bit addition (wrapping).
fn add_le(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut sum = [0u8; 32];
    let mut carry = 0u16;
    for j in 0..32 {
        let v = u16::from(a[j]) + u16::from(b[j]) + carry;
        sum[j] = v as u8;
        carry = v >> 8;
    }
    sum
}

/// A signature by secret scalar `a` (public point `a_pub`, possibly with a torsion component
/// the signer added) with nonce point `r_pub = [r]B + t_r`.
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

/// A signature whose nonce point is given by its encoding `r_enc` (any bytes) with nonce
/// scalar `r`: `S = r + k a`, `k = H(r_enc || A || M)`. With `r = 0` and `r_enc` a small-order
/// point, the equation holds up to torsion: only the checks on `R` refuse it.
fn sign_with_r(
    a: Scalar,
    a_pub: EdwardsPoint,
    r: Scalar,
    r_enc: [u8; 32],
    msg: &[u8],
) -> ([u8; 32], [u8; 64]) {
    let pk = a_pub.compress().to_bytes();
    let mut h = Sha512::new();
    h.update(r_enc);
    h.update(pk);
    h.update(msg);
    let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
    let s = r + k * a;
    let mut sig = [0u8; 64];
    sig[..32].copy_from_slice(&r_enc);
    sig[32..].copy_from_slice(s.as_bytes());
    (pk, sig)
}

/// Signatures valid but for a small-order `R` (each torsion point, either sign bit): the
/// reference refuses them all.
fn small_order_r_cases(msg: &[u8]) -> Vec<Case> {
    let a = Scalar::from_bytes_mod_order_wide(&rnd("a-small-r", 0));
    let mut out = Vec::new();
    for t in EIGHT_TORSION.iter() {
        for sign in [0u8, 0x80] {
            let mut enc = t.compress().to_bytes();
            enc[31] |= sign;
            let (pk, sig) = sign_with_r(a, ED25519_BASEPOINT_POINT * a, Scalar::ZERO, enc, msg);
            out.push((pk.to_vec(), msg.to_vec(), sig.to_vec()));
        }
    }
    out
}

/// The verdict of [`verify`] and of a one-entry [`verify_batch`], checked against the
/// reference.
fn same(pk: &[u8], msg: &[u8], sig: &[u8]) -> Result<(), SignatureError> {
    let ours = verify(pk, msg, sig);
    let expected = reference(pk, msg, sig);
    assert_eq!(
        ours, expected,
        "verdicts differ for pk {pk:02x?} sig {sig:02x?}"
    );
    let e = Entry {
        public_key: pk,
        message: msg,
        signature: sig,
    };
    assert_eq!(verify_batch(&[e]), vec![expected]);
    assert_eq!(batch_holds(&[e]), expected.is_ok());
    ours
}

/// A case: key, message, signature.
type Case = (Vec<u8>, Vec<u8>, Vec<u8>);

fn entries(cases: &[Case]) -> Vec<Entry<'_>> {
    cases
        .iter()
        .map(|(k, m, s)| Entry {
            public_key: k,
            message: m,
            signature: s,
        })
        .collect()
}

/// A batch gets, entry by entry, the reference's verdicts; `batch_holds` says whether all
/// are valid.
fn same_batch(cases: &[Case]) -> Vec<Result<(), SignatureError>> {
    let e = entries(cases);
    let expected: Vec<_> = cases.iter().map(|(k, m, s)| reference(k, m, s)).collect();
    assert_eq!(verify_batch(&e), expected, "batch verdicts differ");
    assert_eq!(batch_holds(&e), expected.iter().all(Result::is_ok));
    let known = batch_verified(&e);
    // Only valid entries are ever known valid; all of them when no entry that passes its own
    // checks fails its equation.
    for (k, r) in known.iter().zip(&expected) {
        assert!(!k || r.is_ok());
    }
    let equation_fails = e.iter().any(|e| parse(e).is_ok_and(|p| !p.holds()));
    if !equation_fails {
        assert!(known.iter().zip(&expected).all(|(k, r)| *k == r.is_ok()));
    }
    expected
}

/// Every kind of case the tests know, honest and adversarial (reference verdicts vary).
fn corpus() -> Vec<Case> {
    let mut out: Vec<Case> = Vec::new();
    let msg = b"corpus".to_vec();
    // Honest signatures of a few keys (a key signs several messages).
    for i in 0..6u64 {
        let key = SessionKey::from_seed(rnd("seed", i)[..32].try_into().unwrap());
        for j in 0..2u64 {
            let m = rnd("m", i * 10 + j)[..(i as usize * 9) % 64].to_vec();
            out.push((key.public_key(), m.clone(), key.sign(&m)));
        }
    }
    let key = SessionKey::from_seed([7; 32]);
    let good = key.sign(&msg);
    // Tampered S (canonical), R, message, key.
    let mut bad = good.clone();
    bad[32] ^= 1;
    out.push((key.public_key(), msg.clone(), bad));
    let mut bad = good.clone();
    bad[3] ^= 4;
    out.push((key.public_key(), msg.clone(), bad));
    out.push((key.public_key(), b"other".to_vec(), good.clone()));
    // S + L (non-canonical, same value mod L) and S with the top bits set.
    let mut bad = good.clone();
    let s: [u8; 32] = good[32..].try_into().unwrap();
    bad[32..].copy_from_slice(&add_le(&s, &L_BYTES));
    out.push((key.public_key(), msg.clone(), bad));
    let mut bad = good.clone();
    bad[63] |= 0xf0;
    out.push((key.public_key(), msg.clone(), bad));
    // Small-order keys and nonces, with either sign bit.
    for t in EIGHT_TORSION.iter() {
        let enc = t.compress().to_bytes();
        for sign in [0u8, 0x80] {
            let mut e = enc;
            e[31] |= sign;
            let mut sig = [0u8; 64];
            sig[..32].copy_from_slice(&e);
            out.push((e.to_vec(), msg.clone(), sig.to_vec()));
            let mut s2 = good.clone();
            s2[..32].copy_from_slice(&e);
            out.push((key.public_key(), msg.clone(), s2));
        }
    }
    out.extend(small_order_r_cases(&msg));
    // Non-canonical y (>= p) as key and as R.
    for low in [0xedu8, 0xee, 0xf0, 0xff] {
        for sign in [0u8, 0x80] {
            let mut enc = [0xffu8; 32];
            enc[0] = low;
            enc[31] = 0x7f | sign;
            out.push((enc.to_vec(), msg.clone(), good.clone()));
            let mut s2 = good.clone();
            s2[..32].copy_from_slice(&enc);
            out.push((key.public_key(), msg.clone(), s2));
        }
    }
    // y = 1 + p would be y = 1 (identity) if reduced: non-canonical, and small order anyway.
    let mut enc = [0xffu8; 32];
    enc[0] = 0xee;
    enc[31] = 0x7f;
    out.push((enc.to_vec(), msg.clone(), [0u8; 64].to_vec()));
    // Keys and nonces with torsion components (valid under the cofactored equation).
    for i in 0..8u64 {
        let a = Scalar::from_bytes_mod_order_wide(&rnd("a", i));
        let r = Scalar::from_bytes_mod_order_wide(&rnd("r", i));
        let t_a = EIGHT_TORSION[i as usize];
        let t_r = EIGHT_TORSION[(i as usize * 3 + 1) % 8];
        let (pk, sig) = sign_raw(a, ED25519_BASEPOINT_POINT * a + t_a, r, t_r, &msg);
        out.push((pk.to_vec(), msg.clone(), sig.to_vec()));
        let (pk, sig) = sign_raw(a, ED25519_BASEPOINT_POINT * a, r, t_r, &msg);
        out.push((pk.to_vec(), msg.clone(), sig.to_vec()));
        out.push((pk.to_vec(), b"else".to_vec(), sig.to_vec()));
    }
    // Random garbage (mostly not points) and wrong lengths.
    for i in 0..4u64 {
        let b = rnd("garbage", i);
        out.push((b[..32].to_vec(), msg.clone(), rnd("sig", i).to_vec()));
    }
    out.push((vec![1; 31], msg.clone(), good.clone()));
    out.push((key.public_key(), msg.clone(), good[..63].to_vec()));
    out.push((key.public_key(), msg.clone(), good));
    out
}

#[test]
fn every_corpus_case_alone_gets_the_reference_verdict() {
    let corpus = corpus();
    let mut valid = 0;
    for (k, m, s) in &corpus {
        valid += usize::from(same(k, m, s).is_ok());
    }
    // The corpus holds both verdicts, and many of each.
    assert!(
        valid >= 20 && corpus.len() - valid >= 40,
        "{valid} of {}",
        corpus.len()
    );
}

#[test]
fn honest_signatures_verify_and_tampering_is_rejected() {
    for i in 0..40 {
        let key = SessionKey::from_seed(rnd("seed", i)[..32].try_into().unwrap());
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
fn non_canonical_s_is_rejected() {
    let key = SessionKey::from_seed([3; 32]);
    let sig = key.sign(b"m");
    let s: [u8; 32] = sig[32..].try_into().unwrap();
    // S + L: same value mod L; L itself (= 0 mod L); 2^256 - 1.
    for bad_s in [add_le(&s, &L_BYTES), L_BYTES, [0xff; 32]] {
        let mut forged = sig.clone();
        forged[32..].copy_from_slice(&bad_s);
        assert_eq!(
            same(&key.public_key(), b"m", &forged),
            Err(SignatureError::Invalid)
        );
    }
}

#[test]
fn small_order_and_non_canonical_points_are_rejected() {
    let msg = b"any message";
    for t in EIGHT_TORSION.iter() {
        let enc = t.compress().to_bytes();
        // A small-order key with R = the same point and S = 0 satisfies the (cofactored)
        // equation trivially: a classic forgery, must be rejected.
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&enc);
        assert_eq!(same(&enc, msg, &sig), Err(SignatureError::Invalid));
        // A small-order R under an honest key.
        let key = SessionKey::from_seed([9; 32]);
        assert!(same(&key.public_key(), msg, &sig).is_err());
        // x = 0 with the sign bit set.
        let mut neg = enc;
        neg[31] |= 0x80;
        assert!(same(&neg, msg, &sig).is_err());
    }
    // Small-order R in signatures whose equation holds up to torsion (nonce 0).
    for (k, m, s) in small_order_r_cases(msg) {
        assert_eq!(same(&k, &m, &s), Err(SignatureError::Invalid));
    }
    // Non-canonical y (y + p for small y; y = p, p + 1, ...), both sign bits.
    for low in 0xedu8..=0xff {
        for sign in [0u8, 0x80] {
            let mut enc = [0xffu8; 32];
            enc[0] = low;
            enc[31] = 0x7f | sign;
            assert!(same(&enc, msg, &[0u8; 64]).is_err());
            let key = SessionKey::from_seed([4; 32]);
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
    // (cofactorless verifiers may not); what matters is the reference's verdict, so that
    // canister and clients agree on every signature.
    for i in 0..32u64 {
        let a = Scalar::from_bytes_mod_order_wide(&rnd("a", i));
        let r = Scalar::from_bytes_mod_order_wide(&rnd("r", i));
        let t_a = EIGHT_TORSION[(i % 8) as usize];
        let t_r = EIGHT_TORSION[((i / 8) % 8) as usize];
        let (pk, sig) = sign_raw(a, ED25519_BASEPOINT_POINT * a + t_a, r, t_r, b"mixed");
        assert_eq!(same(&pk, b"mixed", &sig), Ok(()));
        let (pk, sig) = sign_raw(a, ED25519_BASEPOINT_POINT * a, r, t_r, b"mixed");
        assert_eq!(same(&pk, b"mixed", &sig), Ok(()));
        assert!(same(&pk, b"other", &sig).is_err());
    }
}

#[test]
fn cached_keys_give_the_verdicts_of_a_fresh_decoding() {
    // Each case verified cold (key not cached) then warm (cached if valid): the reference's
    // verdict both times, and invalid keys never enter the cache.
    let key = SessionKey::from_seed([5; 32]);
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
            assert_eq!(same(k, b"m", s), reference(k, b"m", s));
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
        assert!(decode_key_negated(&p).is_some());
        assert!(key_cache_len() <= KEY_CACHE_MAX);
    }
}

#[test]
fn mixed_batches_identify_every_bad_entry() {
    let corpus = corpus();
    let valid: Vec<Case> = corpus
        .iter()
        .filter(|(k, m, s)| reference(k, m, s).is_ok())
        .cloned()
        .collect();
    let invalid: Vec<Case> = corpus
        .iter()
        .filter(|(k, m, s)| reference(k, m, s).is_err())
        .cloned()
        .collect();
    // All valid: holds.
    assert!(same_batch(&valid).iter().all(Result::is_ok));
    // One bad entry of every kind, at positions all over a smaller batch (debug builds are
    // slow).
    let few: Vec<Case> = valid.iter().step_by(3).cloned().collect();
    for (i, bad) in invalid.iter().enumerate() {
        let mut batch = few.clone();
        batch.insert(i % (batch.len() + 1), bad.clone());
        let r = same_batch(&batch);
        assert_eq!(r.iter().filter(|r| r.is_err()).count(), 1);
    }
    // Several bad entries.
    let mut batch = valid.clone();
    for (i, bad) in invalid.iter().enumerate().step_by(5) {
        batch.insert((i * 7) % batch.len(), bad.clone());
    }
    same_batch(&batch);
    // The whole corpus, and only bad ones.
    same_batch(&corpus);
    same_batch(&invalid);
    same_batch(&[]);
}

#[test]
fn errors_that_cancel_out_in_a_plain_sum_are_still_caught() {
    // Two signatures whose equations are off by +B and -B: a batch summing the equations
    // with equal coefficients would accept both. The random coefficients must not.
    let key = SessionKey::from_seed([11; 32]);
    let one = Scalar::ONE;
    let mut plus = key.sign(b"a");
    let mut minus = key.sign(b"b");
    let s1 = Scalar::from_canonical_bytes(plus[32..].try_into().unwrap()).unwrap() + one;
    let s2 = Scalar::from_canonical_bytes(minus[32..].try_into().unwrap()).unwrap() - one;
    plus[32..].copy_from_slice(s1.as_bytes());
    minus[32..].copy_from_slice(s2.as_bytes());
    let pk = key.public_key();
    let batch = vec![
        (pk.clone(), b"a".to_vec(), plus),
        (pk.clone(), b"b".to_vec(), minus),
        (pk.clone(), b"c".to_vec(), key.sign(b"c")),
    ];
    let r = same_batch(&batch);
    assert_eq!(r.iter().filter(|r| r.is_err()).count(), 2);
    // And off by a small-order point only (the cofactored equation accepts those): R + T.
    let a = Scalar::from_bytes_mod_order_wide(&rnd("a", 5));
    let r_nonce = Scalar::from_bytes_mod_order_wide(&rnd("r", 5));
    let mut torsion = Vec::new();
    for t in EIGHT_TORSION.iter().skip(1) {
        let (pk, sig) = sign_raw(a, ED25519_BASEPOINT_POINT * a, r_nonce, *t, b"t");
        torsion.push((pk.to_vec(), b"t".to_vec(), sig.to_vec()));
    }
    assert!(same_batch(&torsion).iter().all(Result::is_ok));
}

#[test]
fn a_failed_batch_is_split_once_so_one_bad_entry_spoils_only_its_group() {
    let mut batch: Vec<Case> = Vec::new();
    for i in 0..40u64 {
        let k = SessionKey::from_seed(rnd("split", i)[..32].try_into().unwrap());
        let m = rnd("sm", i)[..16].to_vec();
        batch.push((k.public_key(), m.clone(), k.sign(&m)));
    }
    batch[13].2[45] ^= 8;
    let known = batch_verified(&entries(&batch));
    // 40 entries in 4 groups of 10: entry 13's group (10..20) is unknown, the rest known.
    for (i, k) in known.iter().enumerate() {
        assert_eq!(*k, !(10..20).contains(&i), "entry {i}");
    }
    same_batch(&batch);
    // Under SPLIT_MIN entries: no split, nothing known.
    let small = &batch[..SPLIT_MIN - 1];
    assert!(batch_verified(&entries(small)).iter().all(|k| !k));
    same_batch(small);
}

#[test]
fn one_key_many_messages_and_many_keys() {
    // The batch merges the coefficients of a repeated key: same verdicts.
    let keys: Vec<SessionKey> = (1..6u8).map(|i| SessionKey::from_seed([i; 32])).collect();
    let mut batch: Vec<Case> = Vec::new();
    for i in 0..60usize {
        let k = &keys[i % 5];
        let m = rnd("many", i as u64)[..(i % 40)].to_vec();
        batch.push((k.public_key(), m.clone(), k.sign(&m)));
    }
    assert!(same_batch(&batch).iter().all(Result::is_ok));
    // A signature of key 0 presented under key 1 (both present in the batch).
    batch[7].0 = keys[1].public_key();
    same_batch(&batch);
}

#[test]
fn large_batches_use_the_other_algorithm_with_the_same_verdicts() {
    // Over 190 points curve25519-dalek switches from Straus to Pippenger.
    let mut batch: Vec<Case> = Vec::new();
    for i in 0..120u64 {
        let k = SessionKey::from_seed(rnd("big", i)[..32].try_into().unwrap());
        let m = rnd("bm", i)[..20].to_vec();
        batch.push((k.public_key(), m.clone(), k.sign(&m)));
    }
    assert!(same_batch(&batch).iter().all(Result::is_ok));
    batch[77].2[40] ^= 2;
    assert_eq!(same_batch(&batch).iter().filter(|r| r.is_err()).count(), 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random batches of corpus cases, some mutated at random: the reference's verdicts.
    #[test]
    fn random_batches_get_the_reference_verdicts(
        picks in proptest::collection::vec((any::<u16>(), any::<u8>(), any::<u8>(), 0u8..6), 0..24)
    ) {
        let corpus = corpus();
        let batch: Vec<Case> = picks
            .iter()
            .map(|&(i, pos, val, what)| {
                let (mut k, mut m, mut s) = corpus[usize::from(i) % corpus.len()].clone();
                match what {
                    0 if !s.is_empty() => { let n = s.len(); s[usize::from(pos) % n] ^= val }
                    1 if !k.is_empty() => { let n = k.len(); k[usize::from(pos) % n] ^= val }
                    2 => m.push(val),
                    _ => {}
                }
                (k, m, s)
            })
            .collect();
        same_batch(&batch);
    }

    /// Arbitrary bytes: never a panic, the reference's verdict.
    #[test]
    fn arbitrary_bytes_get_the_reference_verdict(
        k in proptest::collection::vec(any::<u8>(), 30..34),
        m in proptest::collection::vec(any::<u8>(), 0..64),
        s in proptest::collection::vec(any::<u8>(), 62..66),
    ) {
        let _ = same(&k, &m, &s);
    }
}
