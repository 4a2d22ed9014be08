//! Native test support (not on wasm): drive the fake clock, caller and canister id that the
//! runtime sees outside a canister, and read what it certified. Lets apps unit-test their
//! handlers with `cargo test`, without a replica.

use crate::__private::Handlers;
use crate::env::imp::FAKE;
use candid::Principal;
use ic_ws_protocol::types::{OpenBatch, OpenRequest};
use ic_ws_protocol::{ClientId, SessionKey};

/// Sets the fake time (ns since the epoch).
pub fn set_time_ns(t: u64) {
    FAKE.with(|f| f.borrow_mut().time_ns = t);
}

/// Current fake time.
pub fn time_ns() -> u64 {
    FAKE.with(|f| f.borrow().time_ns)
}

/// Advances the fake time.
pub fn advance_ns(d: u64) {
    FAKE.with(|f| f.borrow_mut().time_ns += d);
}

/// Sets the fake caller.
pub fn set_caller(p: Principal) {
    FAKE.with(|f| f.borrow_mut().caller = p);
}

/// The fake canister id.
pub fn canister_id() -> Principal {
    FAKE.with(|f| f.borrow().canister_id)
}

/// The last certified data set.
pub fn certified_data() -> Option<[u8; 32]> {
    FAKE.with(|f| f.borrow().certified_data)
}

/// Makes `ws_poll` see no data certificate (as in an update call).
pub fn set_data_certificate(c: Option<Vec<u8>>) {
    FAKE.with(|f| f.borrow_mut().certificate = c);
}

/// Sets the fake instruction counter: the next read returns `start`, and every read adds
/// `per_read` (the runtime reads it once before each batch entry, so `per_read` acts as the
/// cost of one entry when testing [`WsConfig::max_instructions_per_call`](crate::WsConfig)).
pub fn set_instructions(start: u64, per_read: u64) {
    FAKE.with(|f| {
        let mut f = f.borrow_mut();
        f.instructions = start;
        f.instructions_per_read = per_read;
    });
}

/// A gateway principal for tests.
pub fn gateway(n: u8) -> Principal {
    Principal::from_slice(&[n, 0xEE, 1])
}

/// Handlers that accept everything.
pub const ACCEPT_ALL: Handlers = Handlers {
    on_open: crate::__private::default_on_open,
    on_message: |_, _| Ok(()),
    on_close: crate::__private::default_on_close,
};

/// A signed open request through `gateway` at the current fake time.
pub fn open_request(
    key: &SessionKey,
    gateway: Principal,
    resume: Option<(ClientId, u64)>,
) -> OpenRequest {
    let mut open = OpenRequest {
        client_key: key.public_key(),
        gateway,
        timestamp_ns: time_ns(),
        resume: resume.map(
            |(client_id, next_outbound_seq)| ic_ws_protocol::ResumeFrom {
                client_id,
                next_outbound_seq,
            },
        ),
        args: Vec::new(),
        signature: Vec::new(),
        identity: None,
    };
    key.sign_open(&canister_id(), &mut open);
    open
}

/// Issue 10: a signed open request through `gateway` that proves the Ed25519 identity
/// `identity` (a one-link delegation to `key` for this canister, valid for `ttl_ns`).
pub fn open_request_with_identity(
    key: &SessionKey,
    gateway: Principal,
    identity: &SessionKey,
    ttl_ns: u64,
) -> OpenRequest {
    let mut open = open_request(key, gateway, None);
    let mut session = [0u8; 32];
    session.copy_from_slice(&key.public_key());
    open.identity = Some(ic_ws_protocol::identity::ed25519_proof(
        identity,
        &session,
        time_ns().saturating_add(ttl_ns),
        Some(vec![canister_id()]),
    ));
    key.sign_open(&canister_id(), &mut open);
    open
}

/// The principal of the Ed25519 identity `identity` (what an open made by
/// [`open_request_with_identity`] binds).
pub fn identity_principal(identity: &SessionKey) -> Principal {
    let mut raw = [0u8; 32];
    raw.copy_from_slice(&identity.public_key());
    Principal::self_authenticating(ic_ws_protocol::identity::ed25519_der(&raw))
}

/// Opens a session through test gateway 1 with a key from `seed` and accept-all handlers;
/// returns its id and key.
pub fn open_test_client(seed: u8) -> (ClientId, SessionKey) {
    let key = SessionKey::from_seed([seed; 32]);
    set_caller(gateway(1));
    let open = open_request(&key, gateway(1), None);
    let result = crate::__private::ws_open(&ACCEPT_ALL, OpenBatch { opens: vec![open] });
    match result.into_iter().next() {
        Some(Ok(ok)) => (ok.client_id, key),
        other => panic!("test open failed: {other:?}"),
    }
}

/// Simulates an upgrade: the heap (certification tree, caches) is dropped, stable memory is
/// kept; the next runtime call reloads from stable memory.
pub fn simulate_upgrade() {
    crate::runtime::forget_heap();
}
