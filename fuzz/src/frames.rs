//! Decoding of what crosses the WebSocket: `ClientFrame` (the gateway decodes it from every
//! client), `GatewayFrame` (clients decode it from an untrusted gateway) and `OutboundContent`
//! (clients decode certified contents; the gateway peeks at them with `codec::is_closed`).
//!
//! Invariants: decoding never panics; whatever decodes encodes again and decodes to the same
//! value (generic and typed encoders agree); the signature checks a canister makes on a decoded
//! frame never panic, and the canister's verifier (`ic_ws_protocol::ed25519`, single and
//! batched) gives the reference's verdicts on them and on the raw input read as
//! `key || signature || message`; the gateway's fast `is_closed` agrees with a full decode on canonical
//! contents.

use candid::CandidType;
use ic_ws_gateway::codec;
use ic_ws_protocol::ed25519;
use ic_ws_protocol::signing::{
    message_signing_bytes, open_signing_bytes, verify_message, verify_open, verify_signature,
};
use ic_ws_protocol::types::{OutboundBody, OutboundContent};
use ic_ws_protocol::{decode, encode, ClientFrame, GatewayFrame, SessionKey};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::sync::OnceLock;

/// Runs one input.
pub fn run(data: &[u8]) {
    if let Ok(frame) = decode::<ClientFrame>(data) {
        round_trip(&frame);
        let canister = candid::Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 1, 1, 1]);
        match &frame {
            ClientFrame::Open { request, .. } => {
                let r = verify_open(&canister, request);
                // The canister's verifier (curve25519-dalek) gives the reference's verdict.
                let bytes = open_signing_bytes(&canister, request);
                let ours = ed25519::verify(&request.client_key, &bytes, &request.signature);
                assert_eq!(ours, r, "ed25519 verifiers disagree on an open");
            }
            ClientFrame::Message(m) => {
                // The test vectors' session key (seed 7): their messages verify.
                let key = vectors_key();
                let r = verify_message(&canister, key, m);
                let bytes = message_signing_bytes(&canister, m);
                assert_eq!(
                    ed25519::verify(key, &bytes, &m.signature),
                    r,
                    "ed25519 verifiers disagree on a message"
                );
            }
        }
    }
    ed25519_differential(data);
    if let Ok(frame) = decode::<GatewayFrame>(data) {
        round_trip(&frame);
        let typed = codec::encode_frame(&frame).expect("the typed encoder encodes a frame");
        assert_eq!(
            typed,
            encode(&frame).expect("encodes"),
            "typed encoder differs"
        );
    }
    let closed = codec::is_closed(data);
    if let Ok(content) = decode::<OutboundContent>(data) {
        round_trip(&content);
        // Canisters write canonical candid; the fast path must agree with a full decode there.
        if encode(&content).ok().as_deref() == Some(data) {
            assert_eq!(
                closed,
                matches!(content.body, OutboundBody::Closed { .. }),
                "is_closed disagrees with the decoded content"
            );
        }
    }
}

fn vectors_key() -> &'static [u8] {
    static KEY: OnceLock<Vec<u8>> = OnceLock::new();
    KEY.get_or_init(|| SessionKey::from_seed([7; 32]).public_key())
}

/// The raw input as `key[32] || signature[64] || message`: `ic_ws_protocol::ed25519` (single
/// and in a batch with honest entries and with itself) gives ed25519-compact's verdict.
fn ed25519_differential(data: &[u8]) {
    let Some((key, rest)) = data.split_at_checked(32) else {
        return;
    };
    let Some((sig, msg)) = rest.split_at_checked(64) else {
        return;
    };
    let expected = verify_signature(key, msg, sig);
    assert_eq!(
        ed25519::verify(key, msg, sig),
        expected,
        "single verdicts differ"
    );
    /// Honest `(key, message, signature)` entries.
    type Honest = Vec<(Vec<u8>, Vec<u8>, Vec<u8>)>;
    static HONEST: OnceLock<Honest> = OnceLock::new();
    let honest = HONEST.get_or_init(|| {
        (0..2u8)
            .map(|i| {
                let k = SessionKey::from_seed([i + 1; 32]);
                let m = vec![i; 40];
                (k.public_key(), m.clone(), k.sign(&m))
            })
            .collect()
    });
    let mut entries: Vec<ed25519::Entry<'_>> = honest
        .iter()
        .map(|(k, m, s)| ed25519::Entry {
            public_key: k,
            message: m,
            signature: s,
        })
        .collect();
    let input = ed25519::Entry {
        public_key: key,
        message: msg,
        signature: sig,
    };
    entries.insert(usize::from(data[0] % 3), input);
    let mut want = vec![Ok(()), Ok(())];
    want.insert(usize::from(data[0] % 3), expected);
    assert_eq!(
        ed25519::verify_batch(&entries),
        want,
        "batch verdicts differ"
    );
    assert_eq!(ed25519::batch_holds(&entries), expected.is_ok());
    let known = ed25519::batch_verified(&entries);
    assert!(known.iter().zip(&want).all(|(k, w)| !k || w.is_ok()));
    assert_eq!(
        ed25519::verify_batch(&[input, input]),
        vec![expected, expected],
        "a repeated entry"
    );
}

fn round_trip<T: CandidType + DeserializeOwned + PartialEq + Debug>(value: &T) {
    let bytes = encode(value).expect("a decoded value encodes");
    let again: T = decode(&bytes).expect("an encoded value decodes");
    assert_eq!(&again, value, "round trip changed the value");
}

/// Every frame and content of the test vectors.
pub fn seeds() -> Vec<Vec<u8>> {
    let v = crate::vectors();
    let mut seeds = Vec::new();
    for m in v["messages"].as_array().into_iter().flatten() {
        seeds.push(crate::vector_bytes(&m["frame_candid"]));
    }
    for o in v["opens"].as_array().into_iter().flatten() {
        let request: ic_ws_protocol::OpenRequest = match decode(&crate::vector_bytes(&o["candid"]))
        {
            Ok(r) => r,
            Err(_) => continue,
        };
        let canister = candid::Principal::from_text(v["canister_id"].as_str().unwrap_or_default())
            .unwrap_or(candid::Principal::anonymous());
        let frame = ClientFrame::Open {
            canister_id: canister,
            request,
        };
        seeds.extend(encode(&frame).ok());
    }
    seeds.push(crate::vector_bytes(&v["delivery"]["hello_frame_candid"]));
    seeds.push(crate::vector_bytes(&v["delivery"]["gateway_frame_candid"]));
    for case in v["delivery"]["cases"]
        .as_array()
        .into_iter()
        .flatten()
        .take(1)
    {
        let messages = crate::verify::vector_messages(case);
        for m in &messages {
            seeds.push(m.content.clone());
        }
        let frame = GatewayFrame::Messages {
            messages,
            certificate: crate::vector_bytes(&case["certificate"]),
            tree: crate::vector_bytes(&case["tree"]),
        };
        seeds.extend(encode(&frame).ok());
    }
    let closed = OutboundContent {
        timestamp_ns: 1,
        body: OutboundBody::Closed {
            reason: ic_ws_protocol::CloseReason::ClientClosed {
                code: 1000,
                reason: "bye".into(),
            },
        },
    };
    seeds.extend(encode(&closed).ok());
    seeds.retain(|s| !s.is_empty());
    seeds
}
