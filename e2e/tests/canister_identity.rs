//! Issue 10: identity proofs at open, against the real test-app wasm in the embedded replica
//! (direct calls as a gateway would make them): every key kind ic-agent has, delegation
//! chains, every attack refused with a typed error and no state change, the principal kept
//! across resume through another gateway and across an upgrade, and the instruction cost per
//! kind (printed for BENCHMARKS.md, budget asserted).
//!
//! Figures: `cargo test --workspace --locked --test canister_identity -- --nocapture --test-threads 1`
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use candid::Principal;
use ic_agent::identity::{
    BasicIdentity, DelegatedIdentity, Delegation, Identity, Prime256v1Identity, Secp256k1Identity,
    SignedDelegation,
};
use ic_ws_client::identity_proof;
use ic_ws_e2e::canister_harness::*;
use ic_ws_protocol::identity::{IdentityError, IdentityProof};
use ic_ws_protocol::types::{OpenRequest, WsError};

const HOUR_NS: u64 = 3_600_000_000_000;

fn ed(seed: u8) -> Arc<dyn Identity> {
    Arc::new(BasicIdentity::from_raw_key(&[seed; 32]))
}
fn k1(seed: u8) -> Arc<dyn Identity> {
    Arc::new(Secp256k1Identity::from_private_key(
        k256::SecretKey::from_slice(&[seed; 32]).unwrap(),
    ))
}
fn p256(seed: u8) -> Arc<dyn Identity> {
    Arc::new(Prime256v1Identity::from_private_key(
        p256::SecretKey::from_slice(&[seed; 32]).unwrap(),
    ))
}

/// `root` delegates (no target restriction, or `targets`) to an Ed25519 "dapp session" key,
/// as Internet Identity delegates to a dapp's session key (with a plain key at the root).
fn delegated(
    root: &dyn Identity,
    inner_seed: u8,
    targets: Option<Vec<Principal>>,
    exp: u64,
) -> Arc<dyn Identity> {
    let inner = BasicIdentity::from_raw_key(&[inner_seed; 32]);
    let delegation = Delegation {
        pubkey: inner.public_key().unwrap(),
        expiration: exp,
        targets,
        permissions: None,
    };
    let signature = root
        .sign_delegation(&delegation)
        .unwrap()
        .signature
        .unwrap();
    Arc::new(DelegatedIdentity::new_unchecked(
        root.public_key().unwrap(),
        Box::new(inner),
        vec![SignedDelegation {
            delegation,
            signature,
        }],
    ))
}

fn key_of(client: &TestClient) -> [u8; 32] {
    client.key.public_key().try_into().unwrap()
}

/// A signed open of `client` through `gw` carrying `proof`.
fn open_with(
    c: &WsCanister,
    client: &TestClient,
    gw: Principal,
    proof: Option<IdentityProof>,
) -> OpenRequest {
    let mut req = client.open_request(c, gw, "hello", false);
    req.identity = proof;
    client.key.sign_open(&c.canister, &mut req);
    req
}

fn proof_for(c: &WsCanister, id: &dyn Identity, client: &TestClient) -> IdentityProof {
    identity_proof(id, &key_of(client), c.canister, c.now() + HOUR_NS).unwrap()
}

fn open_identities(c: &WsCanister) -> Vec<(u64, Option<Principal>)> {
    c.query("app_open_identities", (), Principal::anonymous())
}

fn clients_of(c: &WsCanister, p: Principal) -> Vec<u64> {
    c.query("app_clients_of", (p,), Principal::anonymous())
}

#[test]
fn every_identity_kind_opens_and_on_open_sees_its_principal() {
    let c = WsCanister::new();
    let gw = gateway(1);
    let exp = c.now() + 2 * HOUR_NS;
    let kinds: Vec<(&str, Arc<dyn Identity>)> = vec![
        ("ed25519", ed(1)),
        ("secp256k1", k1(2)),
        ("p256", p256(3)),
        (
            "delegation ed25519->ed25519",
            delegated(ed(4).as_ref(), 40, None, exp),
        ),
        (
            "delegation secp256k1->ed25519 (targets)",
            delegated(k1(5).as_ref(), 50, Some(vec![c.canister]), exp),
        ),
        (
            "delegation p256->ed25519",
            delegated(p256(6).as_ref(), 60, None, exp),
        ),
    ];
    for (i, (name, id)) in kinds.iter().enumerate() {
        let mut client = TestClient::new(100 + i as u64);
        let req = open_with(&c, &client, gw, Some(proof_for(&c, id.as_ref(), &client)));
        let ok = c
            .ws_open(gw, vec![req])
            .remove(0)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        client.id = ok.client_id;
        let p = id.sender().unwrap();
        assert_eq!(
            open_identities(&c).last(),
            Some(&(ok.client_id, Some(p))),
            "{name}"
        );
        assert_eq!(
            c.client_info(ok.client_id).unwrap().principal,
            Some(p),
            "{name}"
        );
        assert_eq!(clients_of(&c, p), vec![ok.client_id], "{name}");
        // The certified Opened names the principal, and the client's checks pass.
        let replies = c.poll_all(gw);
        let mut verified = 0;
        for r in &replies {
            verified += client.receive(&c, r).unwrap();
        }
        assert!(verified >= 1, "{name}");
        let opened = client.received.iter().find_map(|m| match &m.content.body {
            ic_ws_protocol::OutboundBody::Opened { principal, .. } => Some(*principal),
            _ => None,
        });
        assert_eq!(opened, Some(Some(p)), "{name}");
    }
    // And an anonymous open is still fine, with no principal.
    let mut client = TestClient::new(99);
    c.open(&mut client, gw);
    assert_eq!(open_identities(&c).last(), Some(&(client.id, None)));
    assert_eq!(c.client_info(client.id).unwrap().principal, None);
}

#[test]
fn attacks_are_refused_with_typed_errors_and_change_nothing() {
    let c = WsCanister::new();
    let gw = gateway(1);
    let alice = ed(1);
    let mallory = k1(2);
    let a = TestClient::new(1);
    let b = TestClient::new(2);
    let other_canister = Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 9, 1, 1]);
    let now = c.now();
    let cases: Vec<(&str, OpenRequest, WsError)> = vec![
        (
            "proof for another session key",
            open_with(&c, &a, gw, Some(proof_for(&c, alice.as_ref(), &b))),
            WsError::Identity(IdentityError::WrongSessionKey),
        ),
        (
            "proof for another canister",
            open_with(
                &c,
                &a,
                gw,
                Some(
                    identity_proof(alice.as_ref(), &key_of(&a), other_canister, now + HOUR_NS)
                        .unwrap(),
                ),
            ),
            WsError::Identity(IdentityError::TargetNotAllowed { index: 0 }),
        ),
        (
            "expired delegation",
            open_with(
                &c,
                &a,
                gw,
                Some(identity_proof(alice.as_ref(), &key_of(&a), c.canister, now - 1).unwrap()),
            ),
            WsError::Identity(IdentityError::Expired {
                index: 0,
                expiration: now - 1,
            }),
        ),
        (
            "identity chain whose targets exclude the canister",
            open_with(
                &c,
                &a,
                gw,
                Some(proof_for(
                    &c,
                    delegated(
                        alice.as_ref(),
                        10,
                        Some(vec![other_canister]),
                        now + HOUR_NS,
                    )
                    .as_ref(),
                    &a,
                )),
            ),
            WsError::Identity(IdentityError::TargetNotAllowed { index: 0 }),
        ),
        (
            "tampered signature",
            open_with(&c, &a, gw, {
                let mut p = proof_for(&c, mallory.as_ref(), &a);
                p.delegations[0].signature[7] ^= 1;
                Some(p)
            }),
            WsError::Identity(IdentityError::InvalidSignature { index: 0 }),
        ),
        (
            "alice's chain under mallory's key (claiming alice's principal)",
            open_with(&c, &a, gw, {
                let mut p = proof_for(&c, mallory.as_ref(), &a);
                p.sender_pubkey = alice.public_key().unwrap();
                Some(p)
            }),
            WsError::Identity(IdentityError::InvalidSignature { index: 0 }),
        ),
        (
            "gateway strips the proof",
            {
                let mut r = open_with(&c, &a, gw, Some(proof_for(&c, alice.as_ref(), &a)));
                r.identity = None;
                r
            },
            WsError::InvalidSignature,
        ),
        (
            "gateway swaps two clients' proofs",
            {
                let mut r = open_with(&c, &a, gw, Some(proof_for(&c, alice.as_ref(), &a)));
                r.identity = Some(proof_for(&c, mallory.as_ref(), &b));
                r
            },
            WsError::InvalidSignature,
        ),
    ];
    for (name, req, expected) in cases {
        let before = (c.usage(), open_identities(&c));
        let r = c.ws_open(gw, vec![req.clone()]).remove(0);
        assert_eq!(r, Err(expected.clone()), "{name}");
        assert_eq!(
            (c.usage(), open_identities(&c)),
            before,
            "{name}: state changed"
        );
        // The same bytes again (a replaying gateway): the same refusal, nothing consumed.
        assert_eq!(
            c.ws_open(gw, vec![req]).remove(0),
            Err(expected),
            "{name} replay"
        );
    }
    assert!(clients_of(&c, alice.sender().unwrap()).is_empty());
    // A replayed good open: StaleOpen, no second session.
    let good = open_with(&c, &a, gw, Some(proof_for(&c, alice.as_ref(), &a)));
    assert!(c.ws_open(gw, vec![good.clone()]).remove(0).is_ok());
    assert_eq!(c.ws_open(gw, vec![good]).remove(0), Err(WsError::StaleOpen));
    assert_eq!(clients_of(&c, alice.sender().unwrap()).len(), 1);
}

#[test]
fn the_principal_survives_resume_through_another_gateway_and_upgrade_and_expiry_closes() {
    let c = WsCanister::new();
    let (gw, gw2) = (gateway(1), gateway(2));
    let alice = p256(7);
    let p = alice.sender().unwrap();
    let mut client = TestClient::new(1);
    let proof = identity_proof(
        alice.as_ref(),
        &key_of(&client),
        c.canister,
        c.now() + 600_000_000_000,
    )
    .unwrap();
    let ok = c
        .ws_open(gw, vec![open_with(&c, &client, gw, Some(proof))])
        .remove(0)
        .unwrap();
    client.id = ok.client_id;
    for r in c.poll_all(gw) {
        client.receive(&c, &r).unwrap();
    }
    c.upgrade();
    assert_eq!(c.client_info(client.id).unwrap().principal, Some(p));
    assert_eq!(clients_of(&c, p), vec![client.id]);
    // Resume through gateway 2 (no proof): kept, certified again in the resumed Opened.
    c.advance(Duration::from_secs(1));
    let resume = client.open_request(&c, gw2, "", true);
    assert!(c.ws_open(gw2, vec![resume]).remove(0).is_ok());
    for r in c.poll_all(gw2) {
        client.receive(&c, &r).unwrap();
    }
    let principals: Vec<_> = client
        .received
        .iter()
        .filter_map(|m| match &m.content.body {
            ic_ws_protocol::OutboundBody::Opened {
                principal, resumed, ..
            } => Some((*resumed, *principal)),
            _ => None,
        })
        .collect();
    assert_eq!(principals, vec![(false, Some(p)), (true, Some(p))]);
    assert_eq!(c.client_info(client.id).unwrap().gateway, gw2);
    // A resume proving another principal: refused, nothing changes.
    c.advance(Duration::from_secs(1));
    let mut r = client.open_request(&c, gw, "", true);
    r.identity = Some(proof_for(&c, ed(9).as_ref(), &client));
    client.key.sign_open(&c.canister, &mut r);
    assert_eq!(
        c.ws_open(gw, vec![r]).remove(0),
        Err(WsError::Identity(IdentityError::PrincipalMismatch))
    );
    assert_eq!(c.client_info(client.id).unwrap().gateway, gw2);
    // The delegation expires (10 min) while the session is alive (kept alive by keep-alives
    // well within the idle timeout): housekeeping closes it with a certified reason.
    for _ in 0..11 {
        let m = client.message(&c, ic_ws_protocol::MessageKind::KeepAlive);
        let _ = c.ws_message(gw2, vec![m]);
        c.advance(Duration::from_secs(60));
    }
    assert!(!c.client_info(client.id).unwrap().open);
    assert!(
        c.closes()
            .iter()
            .any(|(id, r)| *id == client.id && r.contains("IdentityExpired")),
        "{:?}",
        c.closes()
    );
    assert!(clients_of(&c, p).is_empty());
}

/// Instructions of one `ws_open` of a new session, per identity kind (warm canister).
#[test]
fn instructions_per_authenticated_open_by_kind() {
    let c = WsCanister::new();
    let gw = gateway(1);
    let exp = c.now() + 2 * HOUR_NS;
    let mut seed = 1000u64;
    let mut measure = |proof: &dyn Fn(&TestClient) -> Option<IdentityProof>| -> u64 {
        let mut samples = Vec::new();
        for _ in 0..4 {
            seed += 1;
            let client = TestClient::new(seed);
            let req = open_with(&c, &client, gw, proof(&client));
            c.ws_open(gw, vec![req]).remove(0).unwrap();
            samples.push(c.last_instructions());
        }
        samples.sort_unstable();
        samples[samples.len() / 2]
    };
    // Warm-up (first calls load state).
    measure(&|_| None);
    let anon = measure(&|_| None);
    let kinds: Vec<(&str, Arc<dyn Identity>)> = vec![
        ("Ed25519", ed(1)),
        ("ECDSA secp256k1", k1(2)),
        ("ECDSA P-256", p256(3)),
        (
            "delegation chain Ed25519 -> Ed25519 -> session",
            delegated(ed(4).as_ref(), 40, None, exp),
        ),
        (
            "delegation chain secp256k1 -> Ed25519 -> session",
            delegated(k1(5).as_ref(), 50, None, exp),
        ),
        (
            "delegation chain P-256 -> Ed25519 -> session",
            delegated(p256(6).as_ref(), 60, None, exp),
        ),
    ];
    println!("| open | instructions | x anonymous |");
    println!("| --- | ---: | ---: |");
    println!("| anonymous | {anon} | 1.00 |");
    let mut figures = Vec::new();
    for (name, id) in &kinds {
        let n = measure(&|client| Some(proof_for(&c, id.as_ref(), client)));
        println!("| {name} | {n} | {:.2} |", n as f64 / anon as f64);
        figures.push((*name, n));
    }
    // The worst case a caller can buy with a valid proof: the longest chain (4 links) of the
    // slowest kind (P-256 keys signing each other), then the session link.
    let keys: Vec<Prime256v1Identity> = (0..4)
        .map(|i| {
            Prime256v1Identity::from_private_key(
                p256::SecretKey::from_slice(&[70 + i; 32]).unwrap(),
            )
        })
        .collect();
    let mut chain = Vec::new();
    for pair in keys.windows(2) {
        let delegation = Delegation {
            pubkey: pair[1].public_key().unwrap(),
            expiration: exp,
            targets: None,
            permissions: None,
        };
        let signature = pair[0]
            .sign_delegation(&delegation)
            .unwrap()
            .signature
            .unwrap();
        chain.push(SignedDelegation {
            delegation,
            signature,
        });
    }
    let last =
        Prime256v1Identity::from_private_key(p256::SecretKey::from_slice(&[73; 32]).unwrap());
    let worst: Arc<dyn Identity> = Arc::new(DelegatedIdentity::new_unchecked(
        keys[0].public_key().unwrap(),
        Box::new(last),
        chain,
    ));
    let n = measure(&|client| {
        let p = proof_for(&c, worst.as_ref(), client);
        assert_eq!(
            p.delegations.len(),
            ic_ws_protocol::identity::MAX_DELEGATIONS
        );
        Some(p)
    });
    println!(
        "| worst case: 4 P-256 links (3 in the identity's chain + the session link) | {n} | {:.2} |",
        n as f64 / anon as f64
    );
    assert!(n <= 30 * anon, "worst case {n}");
    // Budgets. The target is 2x an anonymous open. Since issue 13 the open's
    // signature and the chain's Ed25519 signatures are verified in one batch: an Ed25519
    // identity measured 1.41x (1.57x before), a two-link Ed25519 chain (three signatures)
    // 1.69x (2.11x before); the ceilings are those plus a margin that catches a regression
    // (e.g. the batch no longer taken). ECDSA kinds are reported as measured, with ceilings
    // that catch a regression.
    for (name, n) in figures {
        let ceiling = match name {
            "Ed25519" => 1.5,
            "delegation chain Ed25519 -> Ed25519 -> session" => 1.8,
            "ECDSA secp256k1" => 2.5,
            "delegation chain secp256k1 -> Ed25519 -> session" => 3.0,
            _ => 8.0,
        };
        assert!(
            n as f64 <= ceiling * anon as f64,
            "{name}: {n} > {ceiling} x {anon}"
        );
    }
}
