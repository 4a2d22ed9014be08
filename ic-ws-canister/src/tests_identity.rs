//! Issue 10: identity proofs at open, on the fake environment of `testing`.

use crate::__private::{self, Handlers};
use crate::testing::{self, gateway, identity_principal, open_request, open_request_with_identity};
use crate::*;
use ic_ws_protocol::identity::{ed25519_der, ed25519_proof, IdentityError};
use ic_ws_protocol::types::*;
use ic_ws_protocol::SessionKey;
use std::cell::RefCell;

const HOUR: u64 = 3_600_000_000_000;
const T0: u64 = 1_800_000_000_000_000_000;

thread_local! {
    static SEEN: RefCell<Vec<(ClientId, Option<candid::Principal>)>> = const { RefCell::new(Vec::new()) };
    static CLOSED: RefCell<Vec<(ClientId, CloseReason)>> = const { RefCell::new(Vec::new()) };
}

/// `on_open` records the principal the runtime bound (what the macro shim hands the app).
const H: Handlers = Handlers {
    on_open: |id, _| {
        SEEN.with(|s| s.borrow_mut().push((id, client_principal(id))));
        Ok(())
    },
    on_message: |_, _| Ok(()),
    on_close: |id, reason| CLOSED.with(|c| c.borrow_mut().push((id, reason))),
};

fn key(seed: u8) -> SessionKey {
    SessionKey::from_seed([seed; 32])
}

fn raw(k: &SessionKey) -> [u8; 32] {
    k.public_key().try_into().unwrap()
}

fn ws_open(open: OpenRequest) -> OpenResult {
    testing::set_caller(gateway(1));
    __private::ws_open(&H, OpenBatch { opens: vec![open] }).remove(0)
}

fn setup() {
    testing::set_time_ns(T0);
}

/// The decoded `Opened` (seq `seq`) of client `id` from gateway 1's log.
fn opened_principal(id: ClientId) -> Vec<Option<candid::Principal>> {
    testing::set_caller(gateway(1));
    let reply = __private::ws_poll(PollRequest::default()).unwrap();
    reply
        .messages
        .iter()
        .filter(|m| m.client_id == id)
        .filter_map(|m| {
            let c: OutboundContent = ic_ws_protocol::decode(&m.content).unwrap();
            match c.body {
                OutboundBody::Opened { principal, .. } => Some(principal),
                _ => None,
            }
        })
        .collect()
}

/// Everything an open could change, to compare before and after a refusal.
fn snapshot(k: &SessionKey) -> (u64, Usage, Option<crate::store::KeyRecord>, u64) {
    (
        client_count(),
        usage(),
        runtime::with_state(|s| s.key_record(&raw(k))),
        runtime::with_state(|s| s.identities.len()),
    )
}

#[test]
fn an_open_with_a_proof_binds_the_principal_everywhere() {
    setup();
    let (s, id) = (key(1), key(100));
    let ok = ws_open(open_request_with_identity(&s, gateway(1), &id, HOUR)).unwrap();
    let p = identity_principal(&id);
    assert_eq!(
        SEEN.with(|v| v.borrow().clone()),
        vec![(ok.client_id, Some(p))]
    );
    assert_eq!(client_principal(ok.client_id), Some(p));
    assert_eq!(client_info(ok.client_id).unwrap().principal, Some(p));
    assert_eq!(client_identity_expiry(ok.client_id), Some(T0 + HOUR));
    assert_eq!(opened_principal(ok.client_id), vec![Some(p)]);
    // A second session of the same user, and an anonymous one.
    let ok2 = ws_open(open_request_with_identity(&key(2), gateway(1), &id, HOUR)).unwrap();
    let anon = ws_open(open_request(&key(3), gateway(1), None)).unwrap();
    assert_eq!(clients_of(&p), vec![ok.client_id, ok2.client_id]);
    assert_eq!(client_principal(anon.client_id), None);
    assert_eq!(opened_principal(anon.client_id), vec![None]);
    // Closed sessions are not listed.
    close(ok.client_id, 1000, "bye");
    assert_eq!(clients_of(&p), vec![ok2.client_id]);
}

#[test]
fn refused_proofs_are_typed_errors_and_change_nothing() {
    setup();
    let (s, id) = (key(1), key(100));
    let other = key(2);
    let canister = testing::canister_id();
    let cases: Vec<(&str, OpenRequest, IdentityError)> = {
        let mut v = Vec::new();
        // A proof made for another session key, attached to this open.
        let mut o = open_request(&s, gateway(1), None);
        o.identity = Some(ed25519_proof(&id, &raw(&other), T0 + HOUR, None));
        s.sign_open(&canister, &mut o);
        v.push(("other session key", o, IdentityError::WrongSessionKey));
        // Another canister.
        let mut o = open_request(&s, gateway(1), None);
        let elsewhere = candid::Principal::from_slice(&[9, 9, 9]);
        o.identity = Some(ed25519_proof(
            &id,
            &raw(&s),
            T0 + HOUR,
            Some(vec![elsewhere]),
        ));
        s.sign_open(&canister, &mut o);
        v.push((
            "targets exclude",
            o,
            IdentityError::TargetNotAllowed { index: 0 },
        ));
        // Expired.
        let mut o = open_request(&s, gateway(1), None);
        o.identity = Some(ed25519_proof(&id, &raw(&s), T0 - 1, None));
        s.sign_open(&canister, &mut o);
        v.push((
            "expired",
            o,
            IdentityError::Expired {
                index: 0,
                expiration: T0 - 1,
            },
        ));
        // Tampered signature.
        let mut o = open_request(&s, gateway(1), None);
        let mut p = ed25519_proof(&id, &raw(&s), T0 + HOUR, None);
        p.delegations[0].signature[0] ^= 1;
        o.identity = Some(p);
        s.sign_open(&canister, &mut o);
        v.push(("tampered", o, IdentityError::InvalidSignature { index: 0 }));
        // Another principal's key claimed as the sender.
        let mut o = open_request(&s, gateway(1), None);
        let mut p = ed25519_proof(&id, &raw(&s), T0 + HOUR, None);
        p.sender_pubkey = ed25519_der(&raw(&key(101)));
        o.identity = Some(p);
        s.sign_open(&canister, &mut o);
        v.push((
            "sender swapped",
            o,
            IdentityError::InvalidSignature { index: 0 },
        ));
        v
    };
    for (name, open, expected) in cases {
        let before = snapshot(&s);
        assert_eq!(
            ws_open(open.clone()),
            Err(WsError::Identity(expected.clone())),
            "{name}"
        );
        assert_eq!(snapshot(&s), before, "{name}: state changed");
        // A replay is refused the same way (the refusal consumed nothing, and decides nothing
        // differently later).
        assert_eq!(
            ws_open(open),
            Err(WsError::Identity(expected)),
            "{name} replay"
        );
    }
    assert!(SEEN.with(|v| v.borrow().is_empty()), "on_open never ran");
    // The client's honest open still goes through afterwards.
    assert!(ws_open(open_request_with_identity(&s, gateway(1), &id, HOUR)).is_ok());
}

#[test]
fn a_gateway_cannot_strip_swap_or_replay_proofs() {
    setup();
    let (a, b) = (key(1), key(2));
    let (ida, idb) = (key(100), key(101));
    let oa = open_request_with_identity(&a, gateway(1), &ida, HOUR);
    let ob = open_request_with_identity(&b, gateway(1), &idb, HOUR);
    // Strip: the open's signature covers the proof.
    let mut stripped = oa.clone();
    stripped.identity = None;
    assert_eq!(ws_open(stripped), Err(WsError::InvalidSignature));
    // Swap the two clients' proofs.
    let mut swapped = oa.clone();
    swapped.identity = ob.identity.clone();
    assert_eq!(ws_open(swapped), Err(WsError::InvalidSignature));
    // Or re-sign b's proof into a's open without a's key: impossible; with a's own key
    // (a's client colluding), b's proof names b's session key.
    let mut stolen = open_request(&a, gateway(1), None);
    stolen.identity = ob.identity.clone();
    a.sign_open(&testing::canister_id(), &mut stolen);
    assert_eq!(
        ws_open(stolen),
        Err(WsError::Identity(IdentityError::WrongSessionKey))
    );
    assert_eq!(client_count(), 0);
    // The genuine opens work, each with its own principal; replaying one is StaleOpen.
    let ra = ws_open(oa.clone()).unwrap();
    let rb = ws_open(ob).unwrap();
    assert_eq!(
        client_principal(ra.client_id),
        Some(identity_principal(&ida))
    );
    assert_eq!(
        client_principal(rb.client_id),
        Some(identity_principal(&idb))
    );
    assert_eq!(ws_open(oa), Err(WsError::StaleOpen));
}

#[test]
fn policy_authenticated_only_and_callback() {
    setup();
    configure(WsConfig {
        identity_policy: Some(IdentityPolicy::AuthenticatedOnly),
        ..WsConfig::default()
    })
    .unwrap();
    let s = key(1);
    assert_eq!(
        ws_open(open_request(&s, gateway(1), None)),
        Err(WsError::Identity(IdentityError::Required))
    );
    testing::advance_ns(1);
    assert!(ws_open(open_request_with_identity(&s, gateway(1), &key(100), HOUR)).is_ok());

    configure(WsConfig {
        identity_policy: Some(IdentityPolicy::Callback),
        ..WsConfig::default()
    })
    .unwrap();
    testing::advance_ns(1);
    // No filter registered: fails closed.
    assert!(matches!(
        ws_open(open_request_with_identity(
            &key(2),
            gateway(1),
            &key(100),
            HOUR
        )),
        Err(WsError::Identity(IdentityError::Refused(_)))
    ));
    set_identity_filter(|p| match p {
        Some(p) if *p == identity_principal(&key(100)) => Ok(()),
        Some(_) => Err("not on the list".into()),
        None => Err("log in first".into()),
    });
    testing::advance_ns(1);
    assert!(ws_open(open_request_with_identity(
        &key(3),
        gateway(1),
        &key(100),
        HOUR
    ))
    .is_ok());
    assert_eq!(
        ws_open(open_request_with_identity(
            &key(4),
            gateway(1),
            &key(101),
            HOUR
        )),
        Err(WsError::Identity(IdentityError::Refused(
            "not on the list".into()
        )))
    );
    assert_eq!(
        ws_open(open_request(&key(5), gateway(1), None)),
        Err(WsError::Identity(IdentityError::Refused(
            "log in first".into()
        )))
    );
}

#[test]
fn sessions_per_principal_are_capped() {
    setup();
    configure(WsConfig {
        max_sessions_per_principal: Some(2),
        ..WsConfig::default()
    })
    .unwrap();
    let id = key(100);
    assert!(ws_open(open_request_with_identity(&key(1), gateway(1), &id, HOUR)).is_ok());
    assert!(ws_open(open_request_with_identity(&key(2), gateway(1), &id, HOUR)).is_ok());
    assert!(matches!(
        ws_open(open_request_with_identity(&key(3), gateway(1), &id, HOUR)),
        Err(WsError::LimitReached(_))
    ));
    // Another principal is not affected.
    assert!(ws_open(open_request_with_identity(
        &key(4),
        gateway(1),
        &key(101),
        HOUR
    ))
    .is_ok());
    assert_eq!(clients_of(&identity_principal(&id)).len(), 2);
}

#[test]
fn the_principal_survives_resume_gateway_switch_and_upgrade_and_a_resume_cannot_change_it() {
    setup();
    let (s, id) = (key(1), key(100));
    let p = identity_principal(&id);
    let ok = ws_open(open_request_with_identity(&s, gateway(1), &id, HOUR)).unwrap();
    testing::simulate_upgrade();
    assert_eq!(client_principal(ok.client_id), Some(p));
    assert_eq!(clients_of(&p), vec![ok.client_id]);
    // Resume through gateway 2, without a proof: the principal is kept and certified.
    testing::advance_ns(1);
    testing::set_caller(gateway(2));
    let r = __private::ws_open(
        &H,
        OpenBatch {
            opens: vec![open_request(&s, gateway(2), Some((ok.client_id, 0)))],
        },
    )
    .remove(0);
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(client_principal(ok.client_id), Some(p));
    testing::set_caller(gateway(2));
    let reply = __private::ws_poll(PollRequest::default()).unwrap();
    let principals: Vec<_> = reply
        .messages
        .iter()
        .filter_map(|m| {
            match ic_ws_protocol::decode::<OutboundContent>(&m.content)
                .unwrap()
                .body
            {
                OutboundBody::Opened {
                    principal,
                    resumed: true,
                    ..
                } => Some(principal),
                _ => None,
            }
        })
        .collect();
    assert_eq!(principals, vec![Some(p)]);
    // A resume proving another principal is refused, nothing changes.
    testing::advance_ns(1);
    let mut o = open_request(&s, gateway(2), Some((ok.client_id, 0)));
    o.identity = Some(ed25519_proof(&key(101), &raw(&s), T0 + HOUR, None));
    s.sign_open(&testing::canister_id(), &mut o);
    testing::set_caller(gateway(2));
    let r = __private::ws_open(&H, OpenBatch { opens: vec![o] }).remove(0);
    assert_eq!(r, Err(WsError::Identity(IdentityError::PrincipalMismatch)));
    assert_eq!(client_principal(ok.client_id), Some(p));
    // A resume with a fresh proof of the same principal extends the expiry.
    testing::advance_ns(1);
    let mut o = open_request(&s, gateway(2), Some((ok.client_id, 0)));
    o.identity = Some(ed25519_proof(&id, &raw(&s), T0 + 5 * HOUR, None));
    s.sign_open(&testing::canister_id(), &mut o);
    testing::set_caller(gateway(2));
    let r = __private::ws_open(&H, OpenBatch { opens: vec![o] }).remove(0);
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(client_identity_expiry(ok.client_id), Some(T0 + 5 * HOUR));
    // An anonymous session cannot become authenticated by a resume.
    let anon_key = key(2);
    let anon = ws_open(open_request(&anon_key, gateway(1), None)).unwrap();
    testing::advance_ns(1);
    let mut o = open_request(&anon_key, gateway(1), Some((anon.client_id, 0)));
    o.identity = Some(ed25519_proof(&id, &raw(&anon_key), T0 + HOUR, None));
    anon_key.sign_open(&testing::canister_id(), &mut o);
    assert_eq!(
        ws_open(o),
        Err(WsError::Identity(IdentityError::PrincipalMismatch))
    );
    assert_eq!(client_principal(anon.client_id), None);
}

#[test]
fn a_live_session_is_closed_when_its_delegation_expires() {
    setup();
    configure(WsConfig {
        idle_timeout_ns: 10 * HOUR,
        ..WsConfig::default()
    })
    .unwrap();
    let id = key(100);
    let short = ws_open(open_request_with_identity(
        &key(1),
        gateway(1),
        &id,
        60_000_000_000,
    ))
    .unwrap();
    let long = ws_open(open_request_with_identity(&key(2), gateway(1), &id, HOUR)).unwrap();
    let anon = ws_open(open_request(&key(3), gateway(1), None)).unwrap();
    testing::advance_ns(30_000_000_000);
    housekeeping();
    assert!(CLOSED.with(|c| c.borrow().is_empty()));
    testing::advance_ns(31_000_000_000);
    housekeeping();
    assert_eq!(
        CLOSED.with(|c| c.borrow().clone()),
        vec![(short.client_id, CloseReason::IdentityExpired)]
    );
    assert_eq!(clients_of(&identity_principal(&id)), vec![long.client_id]);
    assert!(client_info(anon.client_id).unwrap().open);
    // The certified Closed message says why.
    testing::set_caller(gateway(1));
    let reply = __private::ws_poll(PollRequest::default()).unwrap();
    let closed: Vec<_> = reply
        .messages
        .iter()
        .filter(|m| m.client_id == short.client_id)
        .filter_map(|m| {
            match ic_ws_protocol::decode::<OutboundContent>(&m.content)
                .unwrap()
                .body
            {
                OutboundBody::Closed { reason } => Some(reason),
                _ => None,
            }
        })
        .collect();
    assert_eq!(closed, vec![CloseReason::IdentityExpired]);
    // After deletion every identity record is gone.
    testing::advance_ns(2 * HOUR);
    for _ in 0..10 {
        housekeeping();
    }
    assert_eq!(client_info(short.client_id), None);
    assert_eq!(client_principal(short.client_id), None);
}

/// A two-link Ed25519 chain: the open's signature and both links are verified in one batch
/// (issue 13). Whichever signature is bad, the error is the one of the checks made one by one:
/// the open's own signature first, then the links in chain order.
#[test]
fn batched_chain_verification_reports_the_first_bad_signature() {
    use ic_ws_protocol::identity::{delegation_signable, Delegation, SignedDelegation};
    setup();
    let (s, id, mid) = (key(1), key(100), key(50));
    let canister = testing::canister_id();
    // id -> mid -> session key s.
    let chain = |bad_link: Option<usize>| {
        let mut proof = ed25519_proof(&mid, &raw(&s), T0 + HOUR, None);
        let first = Delegation {
            pubkey: ed25519_der(&raw(&mid)),
            expiration: T0 + HOUR,
            targets: None,
            permissions: None,
        };
        let signature = id.sign(&delegation_signable(&first));
        proof.sender_pubkey = ed25519_der(&raw(&id));
        proof.delegations.insert(
            0,
            SignedDelegation {
                delegation: first,
                signature,
            },
        );
        if let Some(i) = bad_link {
            proof.delegations[i].signature[40] ^= 1;
        }
        let mut o = open_request(&s, gateway(1), None);
        o.identity = Some(proof);
        s.sign_open(&canister, &mut o);
        o
    };
    for i in 0..2 {
        assert_eq!(
            ws_open(chain(Some(i))),
            Err(WsError::Identity(IdentityError::InvalidSignature {
                index: i as u32
            })),
            "link {i}"
        );
    }
    // A bad open signature is reported before a bad link.
    let mut o = chain(Some(1));
    o.signature[40] ^= 1;
    assert_eq!(ws_open(o), Err(WsError::InvalidSignature));
    // Both links and the open valid: accepted, with the root's principal.
    let ok = ws_open(chain(None)).unwrap();
    assert_eq!(
        opened_principal(ok.client_id),
        vec![Some(identity_principal(&id))]
    );
}
