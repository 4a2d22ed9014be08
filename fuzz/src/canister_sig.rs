//! Canister signatures (`ic_ws_protocol::canister_sig`): the key parser and `verify` (CBOR
//! signature, hash tree, certificate, subnet delegation, BLS), as a canister runs them at open
//! on what a client (or a gateway) sends.
//!
//! Input: a mode byte, then the rest.
//! - mode 0: the rest is the signature, for the fixture's key and message;
//! - mode 1: the rest is the public key, with the fixture's signature and message;
//! - mode 2: the rest is the message, with the fixture's key and signature;
//! - mode 3: the rest is the signature's hash tree (CBOR); the target signs a certificate of
//!   its root hash with the fixture's root key (one BLS signature per input that decodes), so
//!   mutations reach the lookups with a certificate that always matches.
//!
//! Invariants: no panic; an accepted signature (mode 0) decodes to the fixture's certificate
//! and tree (only another encoding of the same content may verify); an accepted key (mode 1)
//! names the fixture's canister and seed; an accepted message (mode 2) is the fixture's; in
//! mode 3 `verify` accepts exactly when the tree holds the empty leaf at
//! `sig/<sha256(seed)>/<sha256(message)>`.

use candid::Principal;
use ic_certification::{Certificate, HashTree, LookupResult};
use ic_ws_protocol::canister_sig::{self, CanisterSigError, MAX_SIGNATURE_BYTES};
use ic_ws_protocol::test_utils::{cbor_self_describing, TestRootKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

const SEED: &[u8] = b"fuzz seed";

struct Fixture {
    root: TestRootKey,
    root_key: Vec<u8>,
    canister: Principal,
    key: Vec<u8>,
    message: Vec<u8>,
    tree: HashTree,
    signature: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Sig {
    #[serde(with = "serde_bytes")]
    certificate: Vec<u8>,
    tree: HashTree,
}

fn sha(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        use ic_certification::{fork, labeled, leaf};
        let root = TestRootKey::from_seed(9);
        let canister = Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 7, 1, 1]);
        let message = canister_sig::delegation_signature_msg(b"session", 1, None);
        let tree = labeled(
            b"sig".to_vec(),
            labeled(
                sha(SEED),
                fork(
                    labeled(sha(&message), leaf(Vec::<u8>::new())),
                    labeled(vec![0xff; 32], leaf(Vec::<u8>::new())),
                ),
            ),
        );
        let signature = sign(&root, &canister, &tree);
        Fixture {
            root_key: root.public_key_der(),
            root,
            key: canister_sig::public_key_der(&canister, SEED),
            canister,
            message,
            tree,
            signature,
        }
    })
}

fn sign(root: &TestRootKey, canister: &Principal, tree: &HashTree) -> Vec<u8> {
    let certificate = root.certificate(canister, &tree.digest(), 1);
    cbor_self_describing(&Sig {
        certificate,
        tree: tree.clone(),
    })
}

/// Runs one input; panics on a bug.
pub fn run(data: &[u8]) {
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            if canister_sig::verify(&f.root_key, &f.key, &f.message, rest).is_ok() {
                let sig: Sig = serde_cbor::from_slice(rest).expect("accepted, so it decodes");
                let cert = |b: &[u8]| serde_cbor::from_slice::<Certificate>(b).ok();
                let original: Sig =
                    serde_cbor::from_slice(&f.signature).expect("the fixture decodes");
                assert_eq!(sig.tree, original.tree, "accepted another tree");
                assert_eq!(
                    cert(&sig.certificate),
                    cert(&original.certificate),
                    "accepted another certificate"
                );
            }
        }
        1 => {
            let parsed = canister_sig::signing_canister(rest);
            if canister_sig::verify(&f.root_key, rest, &f.message, &f.signature).is_ok() {
                assert_eq!(
                    parsed,
                    Ok((f.canister, SEED.to_vec())),
                    "accepted another key"
                );
            }
            if let Ok((canister, seed)) = parsed {
                // A parsed key round-trips (DER is canonical here).
                assert_eq!(canister_sig::public_key_der(&canister, &seed), rest);
            }
        }
        2 => {
            if canister_sig::verify(&f.root_key, &f.key, rest, &f.signature).is_ok() {
                // Two messages are signed in the fixture's tree: the message, and a pair
                // whose hash is 0xff.. (no preimage known).
                assert_eq!(rest, f.message.as_slice(), "accepted another message");
            }
        }
        _ => {
            let Ok(tree) = serde_cbor::from_slice::<HashTree>(rest) else {
                return;
            };
            let signature = sign(&f.root, &f.canister, &tree);
            let result = canister_sig::verify(&f.root_key, &f.key, &f.message, &signature);
            if signature.len() > MAX_SIGNATURE_BYTES {
                assert!(matches!(result, Err(CanisterSigError::TooLarge { .. })));
                return;
            }
            let signed = matches!(
                tree.lookup_path([&b"sig"[..], &sha(SEED), &sha(&f.message)]),
                LookupResult::Found([])
            );
            // A tree that re-encodes deeper than the decoder allows is a decode error.
            if let Err(CanisterSigError::MalformedSignature(_)) = result {
                return;
            }
            assert_eq!(result.is_ok(), signed, "{result:?}");
        }
    }
}

/// The fixture's signature, key, message and tree, one per mode.
pub fn seeds() -> Vec<Vec<u8>> {
    let f = fixture();
    let tree = serde_cbor::to_vec(&f.tree).unwrap_or_default();
    [
        (0u8, f.signature.clone()),
        (1, f.key.clone()),
        (2, f.message.clone()),
        (3, tree),
    ]
    .into_iter()
    .map(|(mode, rest)| [vec![mode], rest].concat())
    .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_fixture_verifies_and_the_seeds_run() {
        let f = super::fixture();
        assert_eq!(
            super::canister_sig::verify(&f.root_key, &f.key, &f.message, &f.signature),
            Ok(())
        );
        for seed in super::seeds() {
            super::run(&seed);
        }
    }
}
