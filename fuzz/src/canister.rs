//! The canister runtime's endpoints (`ws_open`, `ws_message`, `ws_close`, `ws_poll`), natively,
//! on the fake environment of `ic_ws_canister::testing`: what the generated endpoint shims do
//! with their argument bytes (bounded candid decoding, then the runtime), fed raw argument
//! bytes and validly signed structured requests (the target signs them with session keys from
//! seeds, so inputs get past the signature checks into sessions, sequence numbers, queues,
//! topics, closes, housekeeping and certification).
//!
//! The runtime keeps its state (heap and the fake stable memory) per thread, so each input runs
//! on a fresh thread: every execution starts from an empty canister.
//!
//! Input (see [`crate::input::Reader`]): steps, each a tag byte: 0-3 raw argument bytes
//! (2-byte length) of `ws_open`/`ws_message`/`ws_close`/`ws_poll`; 4 a signed open (key seed,
//! gateway, flags, optional resume, args); 5 a signed message (key seed, client id, sequence
//! number, ack, kind); 6 advance the clock (seconds, one byte); 7 a configuration (limits from
//! the input, the instruction budget counted in entries); 8 a poll from cursor 0 by one
//! gateway.
//!
//! Invariants: no panic (a trap on the IC; the shims decode before calling the runtime, so a
//! panic here is a canister that traps on a bad argument); one result per batch entry; the
//! first entry of a call is processed, and after a `NotProcessed` entry every later one is
//! `NotProcessed` too; every
//! poll reply is witnessed: its tree's root is the certified data and every message's content
//! hash is the leaf at its path.

use crate::input::{Reader, Writer};
use ic_certification::{HashTree, LookupResult};
use ic_ws_canister::__private::{self, Handlers};
use ic_ws_canister::config::{OverflowPolicy, WsConfig};
use ic_ws_canister::testing;
use ic_ws_protocol::signing::{message_signing_bytes, open_signing_bytes};
use ic_ws_protocol::types::*;
use ic_ws_protocol::{content_hash, message_path, SessionKey};

const MAX_STEPS: usize = 48;

/// App handlers that use the runtime's API from inside the endpoints, driven by the payload
/// (a candid text): `close`, `refuse`, `sub:<topic>`, `pub:<topic>`, anything else is echoed.
const HANDLERS: Handlers = Handlers {
    on_open: |id, args| {
        let arg: String = ic_ws_protocol::decode(args).unwrap_or_default();
        if arg == "reject" {
            let _ = ic_ws_canister::send(id, &"welcome".to_string());
            return Err(WsError::Rejected("rejected".into()));
        }
        Ok(())
    },
    on_message: |id, payload| {
        let text: String = __private::decode_payload(payload)?;
        if text == "close" {
            ic_ws_canister::close(id, 4000, &text);
        } else if text == "refuse" {
            return Err(WsError::Rejected(text));
        } else if let Some(topic) = text.strip_prefix("sub:") {
            ic_ws_canister::subscribe(id, topic).map_err(|e| WsError::Rejected(e.to_string()))?;
        } else if let Some(topic) = text.strip_prefix("pub:") {
            ic_ws_canister::publish(topic, &text).map_err(|e| WsError::Rejected(e.to_string()))?;
        } else {
            ic_ws_canister::send(id, &text).map_err(|e| WsError::Rejected(e.to_string()))?;
        }
        Ok(())
    },
    on_close: |id, _| {
        let _ = ic_ws_canister::send(id, &"too late".to_string());
    },
};

/// One of 8 session keys, derived once per process (a key derivation is a scalar
/// multiplication: deriving per step took an eighth of the target's time).
fn key(seed: u8) -> SessionKey {
    static KEYS: std::sync::OnceLock<Vec<SessionKey>> = std::sync::OnceLock::new();
    let keys = KEYS.get_or_init(|| (1..=8).map(|s| SessionKey::from_seed([s; 32])).collect());
    keys[usize::from(seed % 8)].clone()
}

/// Entries of the signature cache before it is emptied (bounded memory over 10 M executions).
const SIGNATURE_CACHE_ENTRIES: usize = 1 << 16;

/// `key.sign(bytes)`, remembered per process: Ed25519 signatures are deterministic, so a cached
/// signature is the one signing would compute, and libFuzzer's mutations of a corpus input keep
/// most of its signed steps unchanged (signing was the largest part of the target's time).
fn sign_cached(key: &SessionKey, bytes: Vec<u8>) -> Vec<u8> {
    type Cache = std::collections::HashMap<(Vec<u8>, Vec<u8>), Vec<u8>>;
    static CACHE: std::sync::Mutex<Option<Cache>> = std::sync::Mutex::new(None);
    let id = (key.public_key(), bytes);
    let mut guard = CACHE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let cache = guard.get_or_insert_with(Cache::new);
    if let Some(signature) = cache.get(&id) {
        return signature.clone();
    }
    if cache.len() >= SIGNATURE_CACHE_ENTRIES {
        cache.clear();
    }
    let signature = key.sign(&id.1);
    cache.insert(id, signature.clone());
    signature
}

/// Checks a poll reply as a client would (without the BLS part).
fn check_poll(result: &PollResult) {
    let Ok(reply) = result else { return };
    let tree: HashTree = serde_cbor::from_slice(&reply.tree).expect("the poll tree parses");
    match testing::certified_data() {
        Some(certified) => assert_eq!(
            tree.digest(),
            certified,
            "poll tree root is not the certified data"
        ),
        // Nothing certified yet (no update call ran): there must be nothing to deliver.
        None => assert!(reply.messages.is_empty(), "uncertified messages polled"),
    }
    for m in &reply.messages {
        let path = message_path(m.client_id, m.seq);
        assert!(
            matches!(tree.lookup_path(path.iter()), LookupResult::Found(leaf) if leaf == content_hash(&m.content)),
            "polled message {}/{} is not witnessed",
            m.client_id,
            m.seq
        );
        assert!(
            ic_ws_protocol::decode::<OutboundContent>(&m.content).is_ok(),
            "polled content does not decode"
        );
    }
}

/// The instruction budget's contract: the first entry is always processed, and once an entry
/// is `NotProcessed` so is every later one.
fn check_budget<T>(results: &[T], not_processed: impl Fn(&T) -> bool) {
    if let Some(first) = results.iter().position(&not_processed) {
        assert!(first > 0, "the first entry of a call was not processed");
        assert!(
            results[first..].iter().all(not_processed),
            "an entry was processed after a NotProcessed one"
        );
    }
}

fn step(r: &mut Reader<'_>) {
    let canister = testing::canister_id();
    match r.u8() % 9 {
        0 => {
            let arg = r.bytes16();
            // What the generated inspect_message decides must agree with the endpoint's decoding.
            let inspected = ic_ws_canister::inspect_ws_call("ws_open", &testing::gateway(1), arg);
            if let Ok(batch) = __private::decode_payload::<OpenBatch>(arg) {
                let n = batch.opens.len();
                testing::set_instructions(0, 1);
                let results = __private::ws_open(&HANDLERS, batch);
                assert_eq!(results.len(), n);
                check_budget(&results, |x| matches!(x, Err(WsError::NotProcessed)));
            } else {
                assert!(
                    inspected.is_err(),
                    "inspect_message accepted an undecodable ws_open"
                );
            }
        }
        1 => {
            let arg = r.bytes16();
            // What the generated inspect_message decides must agree with the endpoint's decoding.
            let inspected =
                ic_ws_canister::inspect_ws_call("ws_message", &testing::gateway(1), arg);
            if let Ok(batch) = __private::decode_payload::<MessageBatch>(arg) {
                let n = batch.messages.len();
                testing::set_instructions(0, 1);
                let results = __private::ws_message(&HANDLERS, batch);
                assert_eq!(results.len(), n);
                check_budget(&results, |x| {
                    matches!(x, MessageResult::Err(WsError::NotProcessed))
                });
            } else {
                assert!(
                    inspected.is_err(),
                    "inspect_message accepted an undecodable ws_message"
                );
            }
        }
        2 => {
            let arg = r.bytes16();
            // What the generated inspect_message decides must agree with the endpoint's decoding.
            let inspected = ic_ws_canister::inspect_ws_call("ws_close", &testing::gateway(1), arg);
            if let Ok(batch) = __private::decode_payload::<CloseBatch>(arg) {
                let n = batch.clients.len();
                testing::set_instructions(0, 1);
                let results = __private::ws_close(&HANDLERS, batch);
                assert_eq!(results.len(), n);
                check_budget(&results, |x| matches!(x, Err(WsError::NotProcessed)));
            } else {
                assert!(
                    inspected.is_err(),
                    "inspect_message accepted an undecodable ws_close"
                );
            }
        }
        3 => {
            if let Ok(request) = __private::decode_payload::<PollRequest>(r.bytes16()) {
                check_poll(&__private::ws_poll(request));
            }
        }
        4 => {
            let key = key(r.u8());
            let gateway = testing::gateway(r.u8() % 3);
            let flags = r.u8();
            testing::set_caller(if flags & 1 != 0 {
                testing::gateway(9)
            } else {
                gateway
            });
            let resume = (flags & 2 != 0).then(|| (u64::from(r.u8()), u64::from(r.u8())));
            let mut open = OpenRequest {
                client_key: key.public_key(),
                gateway,
                timestamp_ns: testing::time_ns(),
                resume: resume.map(|(client_id, next_outbound_seq)| ResumeFrom {
                    client_id,
                    next_outbound_seq,
                }),
                args: Vec::new(),
                identity: None,
                signature: Vec::new(),
            };
            if flags & 4 != 0 {
                open.args = r.bytes8().to_vec();
            }
            if flags & 8 != 0 {
                open.timestamp_ns = open.timestamp_ns.wrapping_sub(u64::from(r.u8()) << 32);
            }
            if flags & 32 != 0 {
                // Issue 10: an identity proof from one of four identities, valid or mangled
                // (expiry, targets, signature byte), signed into the open.
                let identity = SessionKey::from_seed([r.u8() % 4 + 200; 32]);
                let mut session = [0u8; 32];
                session.copy_from_slice(&key.public_key());
                let how = r.u8();
                let expiration = testing::time_ns().saturating_add(u64::from(how) << 30);
                let targets = (how & 1 != 0).then(|| vec![canister]);
                let mut proof = ic_ws_protocol::identity::ed25519_proof(
                    &identity, &session, expiration, targets,
                );
                if how & 2 != 0 {
                    if let Some(d) = proof.delegations.first_mut() {
                        let i = usize::from(r.u8()) % d.signature.len().max(1);
                        if let Some(b) = d.signature.get_mut(i) {
                            *b ^= 1;
                        }
                    }
                }
                if how & 4 != 0 {
                    proof.delegations.truncate(usize::from(r.u8() % 2));
                }
                open.identity = Some(proof);
            }
            open.signature = sign_cached(&key, open_signing_bytes(&canister, &open));
            if flags & 16 != 0 {
                open.signature.reverse();
            }
            let results = __private::ws_open(&HANDLERS, OpenBatch { opens: vec![open] });
            assert_eq!(results.len(), 1);
        }
        5 => {
            let key = key(r.u8());
            testing::set_caller(testing::gateway(r.u8() % 3));
            let mut message = ClientMessage {
                client_id: u64::from(r.u8()),
                seq: u64::from(r.u8()),
                ack: u64::from(r.u8()),
                kind: match r.u8() % 4 {
                    0 => MessageKind::KeepAlive,
                    1 => MessageKind::Close {
                        code: r.u16(),
                        reason: String::from_utf8_lossy(r.bytes8()).into_owned(),
                    },
                    2 => MessageKind::App(r.bytes8().to_vec()),
                    _ => MessageKind::App(
                        candid::encode_one(String::from_utf8_lossy(r.bytes8()).into_owned())
                            .unwrap_or_default(),
                    ),
                },
                signature: Vec::new(),
            };
            message.signature = sign_cached(&key, message_signing_bytes(&canister, &message));
            let results = __private::ws_message(
                &HANDLERS,
                MessageBatch {
                    messages: vec![message],
                },
            );
            assert_eq!(results.len(), 1);
        }
        6 => testing::advance_ns(u64::from(r.u8()) * 1_000_000_000),
        7 => {
            let small = |r: &mut Reader<'_>| u64::from(r.u8()) + 1;
            let config = WsConfig {
                max_inbound_payload_bytes: small(r) * 16,
                max_outbound_payload_bytes: small(r) * 16,
                max_queued_messages: small(r),
                max_queued_bytes: small(r) * 64,
                max_sessions_per_gateway: small(r),
                max_topic_subscribers: small(r),
                max_topic_len: small(r),
                max_poll_messages: u32::from(r.u8()) + 1,
                max_poll_bytes: (u32::from(r.u8()) + 1) * 256,
                idle_timeout_ns: small(r) * 1_000_000_000,
                clock_skew_ns: small(r) * 1_000_000_000,
                closed_retention_ns: small(r) * 1_000_000_000,
                overflow_policy: if r.u8() & 1 == 0 {
                    OverflowPolicy::Close
                } else {
                    OverflowPolicy::Reject
                },
                max_housekeeping_per_call: u32::from(r.u8()) + 1,
                max_entries_per_call: Some(u32::from(r.u8()) + 1),
                max_sessions: Some(small(r)),
                gateways: None,
                // Counted in entries: the fuzz target's fake counter adds 1 per read (one read
                // before each entry after the first, and the native housekeeping's reads).
                max_instructions_per_call: Some(u64::from(r.u8() % 8) + 1),
                max_retained_bytes: Some(small(r) * 256),
                max_subscriptions: Some(small(r)),
                max_gateways: Some(small(r) % 4 + 1),
                gateway_retention_ns: Some(small(r) * 1_000_000_000),
                housekeeping_instructions: None,
                max_retained_messages: Some(small(r) * 4),
                identity_policy: None,
                ic_root_key: None,
                max_sessions_per_principal: Some(small(r)),
            };
            let _ = ic_ws_canister::configure(config);
        }
        _ => {
            testing::set_caller(testing::gateway(r.u8() % 3));
            check_poll(&__private::ws_poll(PollRequest {
                cursor: 0,
                max_messages: None,
                max_bytes: None,
                max_clients: None,
            }));
        }
    }
}

/// Runs one input (on a fresh thread: a fresh canister).
pub fn run(data: &[u8]) {
    let data = data.to_vec();
    let outcome = std::thread::spawn(move || {
        // Small buckets: a fresh canister's stable memory stays small.
        let _ = ic_ws_canister::memory::set_bucket_size_pages(1);
        let mut r = Reader::new(&data);
        let mut steps = 0;
        while !r.is_empty() && steps < MAX_STEPS {
            step(&mut r);
            steps += 1;
        }
        for gw in 0..3 {
            testing::set_caller(testing::gateway(gw));
            check_poll(&__private::ws_poll(PollRequest::default()));
        }
    })
    .join();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// The vectors' signed opens and messages as raw endpoint arguments, plus structured scripts.
pub fn seeds() -> Vec<Vec<u8>> {
    let v = crate::vectors();
    let mut seeds = Vec::new();
    let mut w = Writer::default();
    for o in v["opens"].as_array().into_iter().flatten() {
        if let Ok(request) =
            ic_ws_protocol::decode::<OpenRequest>(&crate::vector_bytes(&o["candid"]))
        {
            let batch = OpenBatch {
                opens: vec![request],
            };
            w.u8(0)
                .bytes16(&ic_ws_protocol::encode(&batch).unwrap_or_default());
        }
    }
    for m in v["messages"].as_array().into_iter().flatten() {
        if let Ok(ic_ws_protocol::ClientFrame::Message(message)) =
            ic_ws_protocol::decode(&crate::vector_bytes(&m["frame_candid"]))
        {
            let batch = MessageBatch {
                messages: vec![message],
            };
            w.u8(1)
                .bytes16(&ic_ws_protocol::encode(&batch).unwrap_or_default());
        }
    }
    let close = CloseBatch {
        clients: vec![0, 1],
    };
    w.u8(2)
        .bytes16(&ic_ws_protocol::encode(&close).unwrap_or_default());
    let poll = PollRequest {
        cursor: 0,
        max_messages: Some(2),
        max_bytes: None,
        max_clients: Some(1),
    };
    w.u8(3)
        .bytes16(&ic_ws_protocol::encode(&poll).unwrap_or_default());
    seeds.push(w.0);
    // Two clients on gateway 1: open, echo, subscribe, publish, close, expire.
    let text = |s: &str| s.as_bytes().to_vec();
    let mut w = Writer::default();
    w.u8(4).u8(1).u8(1).u8(0);
    w.u8(4).u8(2).u8(1).u8(0);
    w.u8(5)
        .u8(1)
        .u8(1)
        .u8(0)
        .u8(0)
        .u8(0)
        .u8(3)
        .bytes8(&text("hello"));
    w.u8(5)
        .u8(1)
        .u8(1)
        .u8(0)
        .u8(1)
        .u8(1)
        .u8(3)
        .bytes8(&text("sub:news"));
    w.u8(5)
        .u8(2)
        .u8(1)
        .u8(1)
        .u8(0)
        .u8(0)
        .u8(3)
        .bytes8(&text("sub:news"));
    w.u8(5)
        .u8(2)
        .u8(1)
        .u8(1)
        .u8(1)
        .u8(0)
        .u8(3)
        .bytes8(&text("pub:news"));
    w.u8(8).u8(1);
    w.u8(5)
        .u8(1)
        .u8(1)
        .u8(0)
        .u8(2)
        .u8(2)
        .u8(3)
        .bytes8(&text("close"));
    w.u8(5)
        .u8(2)
        .u8(1)
        .u8(1)
        .u8(2)
        .u8(1)
        .u8(1)
        .u8(0x03)
        .u8(0xe8)
        .bytes8(&text("bye"));
    w.u8(6)
        .u8(200)
        .u8(4)
        .u8(1)
        .u8(1)
        .u8(2)
        .u8(0)
        .u8(1)
        .u8(8)
        .u8(1);
    seeds.push(w.0);
    // A tight configuration, then overflow.
    let mut w = Writer::default();
    w.u8(7);
    for _ in 0..14 {
        w.u8(1);
    }
    w.u8(4).u8(3).u8(1).u8(0);
    for seq in 0..6 {
        w.u8(5)
            .u8(3)
            .u8(1)
            .u8(0)
            .u8(seq)
            .u8(0)
            .u8(3)
            .bytes8(&text("echo echo echo"));
    }
    w.u8(8).u8(1);
    seeds.push(w.0);
    // A valid configuration with an instruction budget of 2 (entries, see step 7), then
    // batches of 5 entries: the last 2 of each are `NotProcessed`.
    let mut w = Writer::default();
    w.u8(7);
    for b in [
        3, 0, 10, 10, 10, 10, 10, 99, 255, 100, 5, 10, 0, 5, 99, 50, 1,
    ] {
        w.u8(b);
    }
    w.u8(4).u8(1).u8(1).u8(0);
    let close = CloseBatch {
        clients: vec![0, 1, 2, 3, 4],
    };
    w.u8(2)
        .bytes16(&ic_ws_protocol::encode(&close).unwrap_or_default());
    w.u8(4).u8(2).u8(1).u8(0);
    seeds.push(w.0);
    seeds
}
