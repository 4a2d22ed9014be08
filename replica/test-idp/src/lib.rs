//! A small identity provider that signs delegations with canister signatures, the way Internet
//! Identity does, so that tests can log in "with Internet Identity" against the embedded replica.
//!
//! - `prepare_delegation(session_key, max_time_to_live, targets)` (update): the user is the
//!   caller (a real II user is an anchor; here the caller's principal plays that role, so every
//!   caller gets its own seed and its own principal). Adds `sha256(delegation message)` under
//!   `sig/<sha256(seed)>/` in a certified signature map, sets the certified data to the map's
//!   root hash, returns the user's canister-signature public key and the delegation's
//!   expiration.
//! - `get_delegation(session_key, expiration, targets)` (query): the `SignedDelegation` whose
//!   signature is CBOR `{certificate, tree}`: the data certificate of this query and a witness of
//!   `sig/<seed>/<message>` in the map.
//! - `whoami` (update): the caller, to check who a delegation authenticates.
//! - `verify_canister_sig(root_key, public_key, message, signature)` (query): runs
//!   `ic_ws_protocol::canister_sig::verify` and reports its instruction count (the cost an
//!   ic-ws canister pays to verify an Internet Identity user at open);
//!   `verify_canister_sig_cached` runs it twice with one `DelegationCache` (the second run is
//!   what a canister keeping the cache pays per user once the subnet delegation is known).
//!
//! Bounds (a hostile caller, or many, cannot grow the state without limit): a prepared
//! signature lives [`SIGNATURE_TTL_NS`] (as in Internet Identity: clients fetch it right away);
//! at most [`MAX_SIGNATURES`] live at once and [`MAX_SIGNATURES_PER_SEED`] per user; expired
//! ones are pruned (at most [`MAX_PRUNE_PER_CALL`] per call) before each new one is added; keys
//! and target lists are capped in size.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};

use candid::{CandidType, Deserialize, Principal};
use ic_certification::{AsHashTree, HashTree, NestedTree};
use ic_ws_protocol::canister_sig;
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};

/// How long a prepared signature stays in the map.
pub const SIGNATURE_TTL_NS: u64 = 60 * 1_000_000_000;
/// Live signatures at most.
pub const MAX_SIGNATURES: usize = 1_000;
/// Live signatures per user at most.
pub const MAX_SIGNATURES_PER_SEED: usize = 8;
/// Expired signatures pruned per call at most.
pub const MAX_PRUNE_PER_CALL: usize = 64;
/// Default delegation lifetime (as Internet Identity: 30 minutes).
pub const DEFAULT_TTL_NS: u64 = 30 * 60 * 1_000_000_000;
/// Longest delegation lifetime (as Internet Identity: 30 days).
pub const MAX_TTL_NS: u64 = 30 * 24 * 60 * 60 * 1_000_000_000;
/// Largest session key accepted (DER Ed25519 is 44 bytes, P-256 91).
pub const MAX_SESSION_KEY_BYTES: usize = 256;
/// Most delegation targets accepted.
pub const MAX_TARGETS: usize = 64;

const SEED_DOMAIN: &[u8] = b"ic-ws test idp seed";

type Hash = [u8; 32];

#[derive(Default)]
struct SignatureMap {
    /// `sig/<seed hash>/<message hash>` -> empty leaf.
    tree: NestedTree<Vec<u8>, Vec<u8>>,
    /// (expires at, seed hash, message hash), oldest first.
    queue: VecDeque<(u64, Hash, Hash)>,
    per_seed: BTreeMap<Hash, usize>,
}

fn path(seed_hash: &Hash, message_hash: &Hash) -> [Vec<u8>; 3] {
    [b"sig".to_vec(), seed_hash.to_vec(), message_hash.to_vec()]
}

impl SignatureMap {
    fn prune(&mut self, now: u64) {
        for _ in 0..MAX_PRUNE_PER_CALL {
            match self.queue.front() {
                Some((expires, seed, msg)) if *expires <= now => {
                    let (seed, msg) = (*seed, *msg);
                    self.queue.pop_front();
                    self.tree.delete(&path(&seed, &msg));
                    if let Some(n) = self.per_seed.get_mut(&seed) {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            self.per_seed.remove(&seed);
                        }
                    }
                }
                _ => break,
            }
        }
    }

    fn add(&mut self, now: u64, seed: Hash, msg: Hash) -> Result<(), String> {
        self.prune(now);
        let p = path(&seed, &msg);
        if self.tree.contains_leaf(&p) {
            return Ok(());
        }
        if self.queue.len() >= MAX_SIGNATURES {
            return Err(format!(
                "too many prepared delegations ({MAX_SIGNATURES}); retry in a minute"
            ));
        }
        let count = self.per_seed.entry(seed).or_insert(0);
        if *count >= MAX_SIGNATURES_PER_SEED {
            return Err(format!(
                "this user has {MAX_SIGNATURES_PER_SEED} prepared delegations; retry in a minute"
            ));
        }
        *count += 1;
        self.queue
            .push_back((now.saturating_add(SIGNATURE_TTL_NS), seed, msg));
        self.tree.insert(&p, Vec::new());
        Ok(())
    }
}

thread_local! {
    static SIGNATURES: RefCell<SignatureMap> = RefCell::new(SignatureMap::default());
}

fn sha256(bytes: &[u8]) -> Hash {
    Sha256::digest(bytes).into()
}

/// The seed of a user (the caller).
fn seed_of(user: &Principal) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(SEED_DOMAIN);
    hasher.update(user.as_slice());
    hasher.finalize().to_vec()
}

fn check_inputs(session_key: &[u8], targets: &Option<Vec<Principal>>) -> Result<(), String> {
    if session_key.is_empty() || session_key.len() > MAX_SESSION_KEY_BYTES {
        return Err(format!(
            "session key must be 1..={MAX_SESSION_KEY_BYTES} bytes"
        ));
    }
    if targets.as_ref().is_some_and(|t| t.len() > MAX_TARGETS) {
        return Err(format!("at most {MAX_TARGETS} targets"));
    }
    Ok(())
}

/// What `prepare_delegation` returns.
#[derive(CandidType, Deserialize, Debug)]
pub struct Prepared {
    /// The user's canister-signature public key (DER): its principal is the user's.
    pub user_key: ByteBuf,
    /// The delegation's expiration (ns since the epoch).
    pub expiration: u64,
}

#[ic_cdk::update]
fn prepare_delegation(
    session_key: ByteBuf,
    max_time_to_live: Option<u64>,
    targets: Option<Vec<Principal>>,
) -> Result<Prepared, String> {
    let caller = ic_cdk::api::msg_caller();
    if caller == Principal::anonymous() {
        return Err("log in with a non-anonymous identity".into());
    }
    check_inputs(&session_key, &targets)?;
    let now = ic_cdk::api::time();
    let ttl = max_time_to_live.unwrap_or(DEFAULT_TTL_NS).min(MAX_TTL_NS);
    let expiration = now.saturating_add(ttl);
    let seed = seed_of(&caller);
    let message =
        canister_sig::delegation_signature_msg(&session_key, expiration, targets.as_deref());
    SIGNATURES.with(|s| {
        let mut s = s.borrow_mut();
        s.add(now, sha256(&seed), sha256(&message))?;
        ic_cdk::api::certified_data_set(s.tree.root_hash());
        Ok(Prepared {
            user_key: ByteBuf::from(canister_sig::public_key_der(
                &ic_cdk::api::canister_self(),
                &seed,
            )),
            expiration,
        })
    })
}

/// A delegation (the IC's `Delegation`, as Internet Identity's candid names it).
#[derive(CandidType, Deserialize, Debug, Clone)]
pub struct Delegation {
    /// The session key delegated to.
    pub pubkey: ByteBuf,
    /// Expiration (ns since the epoch).
    pub expiration: u64,
    /// Canisters the delegation is restricted to.
    pub targets: Option<Vec<Principal>>,
}

/// A delegation and its canister signature.
#[derive(CandidType, Deserialize, Debug, Clone)]
pub struct SignedDelegation {
    /// The delegation.
    pub delegation: Delegation,
    /// CBOR `{certificate, tree}`.
    pub signature: ByteBuf,
}

/// Internet Identity's `GetDelegationResponse`.
#[derive(CandidType, Deserialize, Debug)]
pub enum GetDelegationResponse {
    /// Found.
    #[serde(rename = "signed_delegation")]
    SignedDelegation(SignedDelegation),
    /// Not prepared, expired, or not yet certified.
    #[serde(rename = "no_such_delegation")]
    NoSuchDelegation,
}

#[derive(serde::Serialize)]
struct CanisterSig<'a> {
    #[serde(with = "serde_bytes")]
    certificate: &'a [u8],
    tree: &'a HashTree,
}

#[ic_cdk::query]
fn get_delegation(
    session_key: ByteBuf,
    expiration: u64,
    targets: Option<Vec<Principal>>,
) -> GetDelegationResponse {
    if check_inputs(&session_key, &targets).is_err() {
        return GetDelegationResponse::NoSuchDelegation;
    }
    let caller = ic_cdk::api::msg_caller();
    let message =
        canister_sig::delegation_signature_msg(&session_key, expiration, targets.as_deref());
    let p = path(&sha256(&seed_of(&caller)), &sha256(&message));
    let Some(certificate) = ic_cdk::api::data_certificate() else {
        return GetDelegationResponse::NoSuchDelegation;
    };
    SIGNATURES.with(|s| {
        let s = s.borrow();
        if !s.tree.contains_leaf(&p) {
            return GetDelegationResponse::NoSuchDelegation;
        }
        let witness = s.tree.witness(&p);
        let mut signature = Vec::new();
        let mut ser = serde_cbor::Serializer::new(&mut signature);
        if ser.self_describe().is_err()
            || serde::Serialize::serialize(
                &CanisterSig {
                    certificate: &certificate,
                    tree: &witness,
                },
                &mut ser,
            )
            .is_err()
        {
            return GetDelegationResponse::NoSuchDelegation;
        }
        GetDelegationResponse::SignedDelegation(SignedDelegation {
            delegation: Delegation {
                pubkey: session_key,
                expiration,
                targets,
            },
            signature: ByteBuf::from(signature),
        })
    })
}

/// How many signatures are live (tests check the bound).
#[ic_cdk::query]
fn signature_count() -> u64 {
    SIGNATURES.with(|s| s.borrow().queue.len() as u64)
}

#[ic_cdk::update]
fn whoami() -> Principal {
    ic_cdk::api::msg_caller()
}

/// What `verify_canister_sig` reports.
#[derive(CandidType, Deserialize, Debug)]
pub struct VerifyReport {
    /// `Ok` or the error's text.
    pub result: Result<(), String>,
    /// Instructions `canister_sig::verify` took (performance counter 0).
    pub instructions: u64,
}

#[ic_cdk::query]
fn verify_canister_sig(
    root_key: ByteBuf,
    public_key: ByteBuf,
    message: ByteBuf,
    signature: ByteBuf,
) -> VerifyReport {
    let before = ic_cdk::api::performance_counter(0);
    let result = canister_sig::verify(&root_key, &public_key, &message, &signature)
        .map_err(|e| e.to_string());
    let instructions = ic_cdk::api::performance_counter(0).saturating_sub(before);
    VerifyReport {
        result,
        instructions,
    }
}

/// Two runs of `canister_sig::verify_with_cache` sharing one fresh cache.
#[ic_cdk::query]
fn verify_canister_sig_cached(
    root_key: ByteBuf,
    public_key: ByteBuf,
    message: ByteBuf,
    signature: ByteBuf,
) -> (VerifyReport, VerifyReport) {
    let mut cache = canister_sig::DelegationCache::default();
    let mut run = || {
        let before = ic_cdk::api::performance_counter(0);
        let result = canister_sig::verify_with_cache(
            &mut cache,
            &root_key,
            &public_key,
            &message,
            &signature,
        )
        .map_err(|e| e.to_string());
        VerifyReport {
            result,
            instructions: ic_cdk::api::performance_counter(0).saturating_sub(before),
        }
    };
    let first = run();
    (first, run())
}
