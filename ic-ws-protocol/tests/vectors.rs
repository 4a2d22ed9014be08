//! Test vectors shared with other client implementations (client-js runs the same file), and
//! the Rust side's own checks against them.
//!
//! `test-vectors/vectors.json` is generated from this file. If the protocol changes on
//! purpose, regenerate it with `IC_WS_UPDATE_VECTORS=1 cargo test -p ic-ws-protocol --test vectors`
//! and review the diff: every client must then be updated.
#![allow(clippy::unwrap_used)]

use candid::Principal;
use ic_ws_protocol::signing::{message_signing_bytes, open_signing_bytes};
use ic_ws_protocol::test_utils::{cbor_self_describing, TestOutbox, TestRootKey};
use ic_ws_protocol::verify::{prune_tree_for_client, DeliveryVerifier, VerifyError};
use ic_ws_protocol::*;
use serde_json::{json, Value};

const SEED: [u8; 32] = [7; 32];
const NOW_NS: u64 = 1_700_000_000_000_000_000;
const MAX_AGE_NS: u64 = 300_000_000_000;

fn canister() -> Principal {
    Principal::from_text("bkyz2-fmaaa-aaaaa-qaaaq-cai").unwrap()
}

fn gateway() -> Principal {
    Principal::self_authenticating([3u8; 44])
}

fn hx(b: &[u8]) -> String {
    hex::encode(b)
}

fn open_cases(key: &SessionKey) -> Vec<(&'static str, OpenRequest)> {
    let base = OpenRequest {
        client_key: key.public_key(),
        gateway: gateway(),
        timestamp_ns: NOW_NS,
        resume: None,
        args: candid::encode_one("alice").unwrap(),
        signature: vec![],
        identity: None,
    };
    let resume = OpenRequest {
        resume: Some(ResumeFrom {
            client_id: 42,
            next_outbound_seq: 17,
        }),
        args: vec![],
        timestamp_ns: NOW_NS + 1,
        ..base.clone()
    };
    let with_identity = OpenRequest {
        identity: Some(identity_proof(key)),
        ..base.clone()
    };
    vec![
        ("new_session", base),
        ("resume", resume),
        ("new_session_with_identity", with_identity),
    ]
}

/// Issue 10: an Ed25519 IC identity (seed 5, deterministic signatures) delegates to the
/// session key, restricted to the canister, until NOW + 1 h.
fn identity_proof(key: &SessionKey) -> identity::IdentityProof {
    use ic_agent::Identity;
    let id = ic_agent::identity::BasicIdentity::from_raw_key(&[5; 32]);
    let session: [u8; 32] = key.public_key().try_into().unwrap();
    let delegation = identity::Delegation {
        pubkey: identity::ed25519_der(&session),
        expiration: NOW_NS + 3_600_000_000_000,
        targets: Some(vec![canister()]),
        permissions: None,
    };
    let signature = id
        .sign_arbitrary(&identity::delegation_signable(&delegation))
        .unwrap()
        .signature
        .unwrap();
    identity::IdentityProof {
        sender_pubkey: id.public_key().unwrap(),
        delegations: vec![identity::SignedDelegation {
            delegation,
            signature,
        }],
    }
}

fn identity_json(p: &identity::IdentityProof) -> Value {
    json!({
        "sender_pubkey": hx(&p.sender_pubkey),
        "principal": identity::principal_of(&p.sender_pubkey).to_text(),
        "delegations": p.delegations.iter().map(|d| json!({
            "pubkey": hx(&d.delegation.pubkey),
            "expiration": d.delegation.expiration.to_string(),
            "targets": d.delegation.targets.as_ref().map(|t| t.iter().map(|p| p.to_text()).collect::<Vec<_>>()),
            "signable": hx(&identity::delegation_signable(&d.delegation)),
            "signature": hx(&d.signature),
        })).collect::<Vec<_>>(),
        "proof_digest": hx(&identity::proof_digest(p)),
    })
}

fn message_cases() -> Vec<(&'static str, ClientMessage)> {
    let m = |seq, ack, kind| ClientMessage {
        client_id: 42,
        seq,
        ack,
        kind,
        signature: vec![],
    };
    vec![
        (
            "app",
            m(0, 1, MessageKind::App(candid::encode_one("hello").unwrap())),
        ),
        ("keep_alive", m(1, 3, MessageKind::KeepAlive)),
        (
            "close",
            m(
                2,
                3,
                MessageKind::Close {
                    code: 1000,
                    reason: "bye ✓".into(),
                },
            ),
        ),
        (
            "large_numbers",
            m(u64::MAX - 1, u64::MAX, MessageKind::App(vec![0, 1, 2, 255])),
        ),
    ]
}

fn app(payload: &str, t: u64) -> OutboundContent {
    OutboundContent {
        timestamp_ns: t,
        body: OutboundBody::App {
            topic: None,
            payload: candid::encode_one(payload).unwrap(),
        },
    }
}

/// A delivery of messages 0..3 to client 42 (client 43 has messages too), certified.
struct Delivery {
    root: TestRootKey,
    messages: Vec<OutboundMessage>,
    other: OutboundMessage,
    certificate: Vec<u8>,
    tree: Vec<u8>,
    full_tree: ic_certification::HashTree,
}

fn delivery(key: &SessionKey) -> Delivery {
    let root = TestRootKey::from_seed(0x2a);
    let mut outbox = TestOutbox::default();
    let opened = OutboundContent {
        timestamp_ns: NOW_NS,
        body: OutboundBody::Opened {
            client_key: key.public_key(),
            open_timestamp_ns: NOW_NS,
            next_inbound_seq: 0,
            resumed: false,
            max_inbound_payload_bytes: 64 * 1024,
            idle_timeout_ns: 120_000_000_000,
            principal: None,
        },
    };
    let messages = vec![
        outbox.push(42, 0, &opened),
        outbox.push(42, 1, &app("first", NOW_NS + 1)),
        outbox.push(
            42,
            2,
            &OutboundContent {
                timestamp_ns: NOW_NS + 2,
                body: OutboundBody::App {
                    topic: Some("prices".into()),
                    payload: candid::encode_one("second").unwrap(),
                },
            },
        ),
    ];
    let other = outbox.push(43, 0, &app("for someone else", NOW_NS));
    let full_tree = outbox.tree();
    let certificate = root.certificate(&canister(), &full_tree.digest(), NOW_NS);
    let pruned = prune_tree_for_client(&full_tree, 42, &[0, 1, 2]);
    assert_eq!(
        pruned.digest(),
        full_tree.digest(),
        "pruning keeps the root"
    );
    Delivery {
        root,
        messages,
        other,
        certificate,
        tree: cbor_self_describing(&pruned),
        full_tree,
    }
}

fn verifier(root_key_der: Vec<u8>) -> DeliveryVerifier {
    DeliveryVerifier {
        root_key_der,
        canister_id: canister(),
        client_id: 42,
        max_certificate_age_ns: MAX_AGE_NS,
    }
}

fn msg_json(m: &OutboundMessage) -> Value {
    json!({"client_id": m.client_id.to_string(), "seq": m.seq.to_string(), "content": hx(&m.content)})
}

/// Tampered deliveries with the check that must catch each, in the order a client checks.
/// name, messages, certificate, tree, root key, now, expected error.
type Case = (
    &'static str,
    Vec<OutboundMessage>,
    Vec<u8>,
    Vec<u8>,
    Vec<u8>,
    u64,
    Option<&'static str>,
);

fn delivery_cases(d: &Delivery) -> Vec<Case> {
    let der = d.root.public_key_der();
    let mut cases = vec![(
        "valid",
        d.messages.clone(),
        d.certificate.clone(),
        d.tree.clone(),
        der.clone(),
        NOW_NS,
        None,
    )];

    let mut altered = d.messages.clone();
    let last = altered[1].content.len() - 1;
    altered[1].content[last] ^= 1;
    cases.push((
        "altered_payload",
        altered,
        d.certificate.clone(),
        d.tree.clone(),
        der.clone(),
        NOW_NS,
        Some("NotCertified"),
    ));

    let mut cert = d.certificate.clone();
    // Flip a bit inside the 48-byte BLS signature (it sits right after its CBOR header).
    let sig_at = find(&cert, b"signature").map(|i| i + 9 + 2).unwrap();
    cert[sig_at] ^= 0x01;
    cases.push((
        "altered_certificate_signature",
        d.messages.clone(),
        cert,
        d.tree.clone(),
        der.clone(),
        NOW_NS,
        Some("BadCertificateSignature"),
    ));

    let other_root = TestRootKey::from_seed(0x11).public_key_der();
    cases.push((
        "wrong_root_key",
        d.messages.clone(),
        d.certificate.clone(),
        d.tree.clone(),
        other_root,
        NOW_NS,
        Some("BadCertificateSignature"),
    ));

    cases.push((
        "stale_certificate",
        d.messages.clone(),
        d.certificate.clone(),
        d.tree.clone(),
        der.clone(),
        NOW_NS + MAX_AGE_NS + 1_000_000_000,
        Some("StaleCertificate"),
    ));

    let mut other_tree = TestOutbox::default();
    other_tree.push(42, 0, &app("forged", NOW_NS));
    cases.push((
        "tree_not_certified",
        d.messages.clone(),
        d.certificate.clone(),
        cbor_self_describing(&other_tree.tree()),
        der.clone(),
        NOW_NS,
        Some("TreeRootMismatch"),
    ));

    let mut reordered = d.messages.clone();
    reordered.swap(1, 2);
    cases.push((
        "reordered",
        reordered,
        d.certificate.clone(),
        d.tree.clone(),
        der.clone(),
        NOW_NS,
        Some("OutOfSequence"),
    ));

    let mut dropped = d.messages.clone();
    dropped.remove(1);
    cases.push((
        "dropped",
        dropped,
        d.certificate.clone(),
        d.tree.clone(),
        der.clone(),
        NOW_NS,
        Some("OutOfSequence"),
    ));

    let mut duplicated = d.messages.clone();
    duplicated.insert(2, d.messages[1].clone());
    cases.push((
        "duplicated",
        duplicated,
        d.certificate.clone(),
        d.tree.clone(),
        der.clone(),
        NOW_NS,
        Some("OutOfSequence"),
    ));

    let mut misdelivered = d.messages.clone();
    misdelivered.push(d.other.clone());
    cases.push((
        "other_clients_message",
        misdelivered,
        d.certificate.clone(),
        cbor_self_describing(&d.full_tree),
        der.clone(),
        NOW_NS,
        Some("WrongClient"),
    ));

    let mut relabelled = d.messages.clone();
    relabelled.push(OutboundMessage {
        client_id: 42,
        seq: 3,
        content: d.other.content.clone(),
    });
    cases.push((
        "other_clients_content_relabelled",
        relabelled,
        d.certificate.clone(),
        cbor_self_describing(&d.full_tree),
        der,
        NOW_NS,
        Some("NotCertified"),
    ));
    cases
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn error_name(e: &VerifyError) -> &'static str {
    match e {
        VerifyError::MalformedCertificate(_) => "MalformedCertificate",
        VerifyError::MalformedRootKey => "MalformedRootKey",
        VerifyError::BadCertificateSignature => "BadCertificateSignature",
        VerifyError::BadDelegation(_) => "BadDelegation",
        VerifyError::MissingTime => "MissingTime",
        VerifyError::StaleCertificate { .. } => "StaleCertificate",
        VerifyError::MissingCertifiedData(_) => "MissingCertifiedData",
        VerifyError::MalformedTree(_) => "MalformedTree",
        VerifyError::TreeRootMismatch => "TreeRootMismatch",
        VerifyError::WrongClient { .. } => "WrongClient",
        VerifyError::OutOfSequence { .. } => "OutOfSequence",
        VerifyError::NotCertified { .. } => "NotCertified",
        VerifyError::BadContent { .. } => "BadContent",
        VerifyError::Empty => "Empty",
    }
}

fn generate() -> Value {
    let key = SessionKey::from_seed(SEED);
    let opens: Vec<Value> = open_cases(&key)
        .into_iter()
        .map(|(name, mut req)| {
            let bytes = open_signing_bytes(&canister(), &req);
            key.sign_open(&canister(), &mut req);
            json!({
                "name": name,
                "request": {
                    "client_key": hx(&req.client_key),
                    "gateway": req.gateway.to_text(),
                    "timestamp_ns": req.timestamp_ns.to_string(),
                    "resume": req.resume.map(|r| json!({"client_id": r.client_id.to_string(), "next_outbound_seq": r.next_outbound_seq.to_string()})),
                    "args": hx(&req.args),
                    "identity": req.identity.as_ref().map(identity_json),
                },
                "signing_bytes": hx(&bytes),
                "signature": hx(&req.signature),
                "candid": hx(&encode(&req).unwrap()),
            })
        })
        .collect();
    let messages: Vec<Value> = message_cases()
        .into_iter()
        .map(|(name, mut msg)| {
            let bytes = message_signing_bytes(&canister(), &msg);
            key.sign_message(&canister(), &mut msg);
            let kind = match &msg.kind {
                MessageKind::App(p) => json!({"App": hx(p)}),
                MessageKind::KeepAlive => json!("KeepAlive"),
                MessageKind::Close { code, reason } => json!({"Close": {"code": code, "reason": reason}}),
            };
            json!({
                "name": name,
                "message": {"client_id": msg.client_id.to_string(), "seq": msg.seq.to_string(), "ack": msg.ack.to_string(), "kind": kind},
                "signing_bytes": hx(&bytes),
                "signature": hx(&msg.signature),
                "frame_candid": hx(&encode(&ClientFrame::Message(msg.clone())).unwrap()),
            })
        })
        .collect();
    let d = delivery(&key);
    let deliveries: Vec<Value> = delivery_cases(&d)
        .into_iter()
        .map(|(name, msgs, cert, tree, root, now, expect)| {
            json!({
                "name": name,
                "root_key": hx(&root),
                "now_ns": now.to_string(),
                "messages": msgs.iter().map(msg_json).collect::<Vec<_>>(),
                "certificate": hx(&cert),
                "tree": hx(&tree),
                "expect_error": expect,
            })
        })
        .collect();
    let frame = GatewayFrame::Messages {
        messages: d.messages.clone(),
        certificate: d.certificate.clone(),
        tree: d.tree.clone(),
    };
    json!({
        "description": "ic-ws protocol v2 test vectors; generated by ic-ws-protocol/tests/vectors.rs. u64 values are decimal strings; bytes are hex.",
        "protocol_version": PROTOCOL_VERSION,
        "session_key": {"seed": hx(&SEED), "public_key": hx(&key.public_key())},
        "canister_id": canister().to_text(),
        "gateway": gateway().to_text(),
        "opens": opens,
        "messages": messages,
        "delivery": {
            "client_id": "42",
            "next_seq": "0",
            "max_certificate_age_ns": MAX_AGE_NS.to_string(),
            "cases": deliveries,
            "expected_payloads": ["first", "second"],
            "gateway_frame_candid": hx(&encode(&frame).unwrap()),
            "hello_frame_candid": hx(&encode(&GatewayFrame::Hello { gateway: gateway(), protocol_version: PROTOCOL_VERSION }).unwrap()),
        },
    })
}

#[test]
fn vectors_file_is_up_to_date() {
    let generated = serde_json::to_string_pretty(&generate()).unwrap() + "\n";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("test-vectors/vectors.json");
    if std::env::var_os("IC_WS_UPDATE_VECTORS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "test-vectors/vectors.json is out of date; regenerate with IC_WS_UPDATE_VECTORS=1 cargo test -p ic-ws-protocol --test vectors and review the diff"
    );
}

#[test]
fn signatures_in_vectors_verify_and_tampering_fails() {
    let key = SessionKey::from_seed(SEED);
    for (_, mut req) in open_cases(&key) {
        key.sign_open(&canister(), &mut req);
        assert_eq!(signing::verify_open(&canister(), &req), Ok(()));
        let mut other_canister = req.clone();
        assert_eq!(
            signing::verify_open(&Principal::management_canister(), &other_canister),
            Err(SignatureError::Invalid),
            "an open for one canister is not valid for another"
        );
        other_canister.timestamp_ns += 1;
        assert_eq!(
            signing::verify_open(&canister(), &other_canister),
            Err(SignatureError::Invalid)
        );
        let mut moved = req.clone();
        moved.gateway = Principal::anonymous();
        assert_eq!(
            signing::verify_open(&canister(), &moved),
            Err(SignatureError::Invalid)
        );
        // A gateway can neither strip an identity proof nor add or swap one.
        let mut stripped = req.clone();
        stripped.identity = match req.identity {
            Some(_) => None,
            None => Some(identity_proof(&key)),
        };
        assert_eq!(
            signing::verify_open(&canister(), &stripped),
            Err(SignatureError::Invalid)
        );
        if let Some(p) = &req.identity {
            let mut swapped = req.clone();
            let mut q = p.clone();
            q.delegations[0].delegation.expiration += 1;
            swapped.identity = Some(q);
            assert_eq!(
                signing::verify_open(&canister(), &swapped),
                Err(SignatureError::Invalid)
            );
        }
    }
    for (_, mut msg) in message_cases() {
        key.sign_message(&canister(), &mut msg);
        let pk = key.public_key();
        assert_eq!(signing::verify_message(&canister(), &pk, &msg), Ok(()));
        for tamper in [
            |m: &mut ClientMessage| m.seq = m.seq.wrapping_add(1),
            |m: &mut ClientMessage| m.ack = m.ack.wrapping_sub(1),
            |m: &mut ClientMessage| m.client_id += 1,
            |m: &mut ClientMessage| m.kind = MessageKind::KeepAlive,
        ] {
            let mut t = msg.clone();
            tamper(&mut t);
            if t != msg {
                assert_eq!(
                    signing::verify_message(&canister(), &pk, &t),
                    Err(SignatureError::Invalid)
                );
            }
        }
        let other = SessionKey::from_seed([8; 32]).public_key();
        assert_eq!(
            signing::verify_message(&canister(), &other, &msg),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            signing::verify_message(&canister(), &pk[..31], &msg),
            Err(SignatureError::Malformed)
        );
    }
}

#[test]
fn every_tampered_delivery_is_caught_by_the_named_check() {
    let key = SessionKey::from_seed(SEED);
    let d = delivery(&key);
    let cases = delivery_cases(&d);
    assert!(cases.len() >= 10);
    for (name, msgs, cert, tree, root, now, expect) in cases {
        let result = verifier(root).verify(&msgs, &cert, &tree, 0, now);
        match (expect, result) {
            (None, Ok(verified)) => {
                assert_eq!(verified.len(), 3, "{name}");
                assert!(matches!(
                    verified[0].content.body,
                    OutboundBody::Opened { resumed: false, .. }
                ));
                let OutboundBody::App { payload, topic } = &verified[2].content.body else {
                    panic!("{name}")
                };
                assert_eq!(topic.as_deref(), Some("prices"));
                assert_eq!(candid::decode_one::<String>(payload).unwrap(), "second");
            }
            (Some(want), Err(e)) => assert_eq!(error_name(&e), want, "{name}: {e}"),
            (want, got) => panic!("{name}: expected {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn a_delivery_continues_from_the_expected_sequence_number() {
    let key = SessionKey::from_seed(SEED);
    let d = delivery(&key);
    let v = verifier(d.root.public_key_der());
    // Having received 0, the client accepts 1..=2 alone and rejects a replay of 0..=2.
    let ok = v
        .verify(&d.messages[1..], &d.certificate, &d.tree, 1, NOW_NS)
        .unwrap();
    assert_eq!(ok.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2]);
    let replay = v.verify(&d.messages, &d.certificate, &d.tree, 1, NOW_NS);
    assert_eq!(
        replay,
        Err(VerifyError::OutOfSequence {
            expected: 1,
            got: 0
        })
    );
    assert_eq!(
        v.verify(&[], &d.certificate, &d.tree, 0, NOW_NS),
        Err(VerifyError::Empty)
    );
}

#[test]
fn malformed_inputs_are_errors_not_panics() {
    let key = SessionKey::from_seed(SEED);
    let d = delivery(&key);
    let v = verifier(d.root.public_key_der());
    for junk in [&b""[..], b"\xd9\xd9\xf7", b"not cbor at all", &[0xff; 64]] {
        assert!(matches!(
            v.verify(&d.messages, junk, &d.tree, 0, NOW_NS),
            Err(VerifyError::MalformedCertificate(_))
        ));
        assert!(matches!(
            v.verify(&d.messages, &d.certificate, junk, 0, NOW_NS),
            Err(VerifyError::MalformedTree(_))
        ));
    }
    let mut bad_key = verifier(vec![1, 2, 3]);
    assert_eq!(
        bad_key.verify(&d.messages, &d.certificate, &d.tree, 0, NOW_NS),
        Err(VerifyError::MalformedRootKey)
    );
    bad_key.root_key_der = d.root.public_key_der();
    bad_key.canister_id = Principal::management_canister();
    assert!(matches!(
        bad_key.verify(&d.messages, &d.certificate, &d.tree, 0, NOW_NS),
        Err(VerifyError::MissingCertifiedData(_))
    ));
    for junk in [
        &b""[..],
        b"DIDL",
        &[0x44, 0x49, 0x44, 0x4c, 0xff, 0xff, 0xff, 0xff, 0x0f],
    ] {
        assert!(decode::<GatewayFrame>(junk).is_err());
        assert!(decode::<ClientFrame>(junk).is_err());
    }
}

#[test]
fn pruned_witness_keeps_the_root_and_stays_small() {
    let mut outbox = TestOutbox::default();
    for client in 0..1000u64 {
        outbox.push(client, 0, &app("x", NOW_NS));
    }
    let full = outbox.tree();
    let pruned = prune_tree_for_client(&full, 500, &[0]);
    assert_eq!(pruned.digest(), full.digest());
    let leaf = pruned.lookup_path(message_path(500, 0).iter());
    assert!(matches!(leaf, ic_certification::LookupResult::Found(_)));
    // One path through a balanced tree of 1,000 clients: a few dozen nodes, not 1,000.
    let size = cbor_self_describing(&pruned).len();
    assert!(
        size < 2_000,
        "witness for one client of 1,000 is {size} bytes"
    );
}

#[test]
fn frames_round_trip_through_candid() {
    let key = SessionKey::from_seed(SEED);
    let d = delivery(&key);
    let frame = GatewayFrame::Messages {
        messages: d.messages.clone(),
        certificate: d.certificate,
        tree: d.tree,
    };
    assert_eq!(
        decode::<GatewayFrame>(&encode(&frame).unwrap()).unwrap(),
        frame
    );
    let (_, mut req) = open_cases(&key).remove(1);
    key.sign_open(&canister(), &mut req);
    let open = ClientFrame::Open {
        canister_id: canister(),
        request: req,
    };
    assert_eq!(
        decode::<ClientFrame>(&encode(&open).unwrap()).unwrap(),
        open
    );
}
