//! Issue 10: the IC principal bound to a session at open (see `docs/protocol.md`,
//! "Identity").
//!
//! One stable map (memory slot [`slot::IDENTITIES`]) holds three key spaces:
//! - `[0] ++ client_id` -> `u8 len ++ principal ++ u64 expires_ns`: the session's principal;
//! - `[1] ++ u8 len ++ principal ++ client_id` -> (): the sessions of a principal
//!   ([`State::clients_of`], bounded by [`WsConfig::sessions_per_principal`]);
//! - `[2] ++ u64 expires_ns ++ client_id` -> (): open sessions by delegation expiry, which
//!   housekeeping closes with `CloseReason::IdentityExpired` once it passes.
//!
//! Anonymous sessions have no entry. Entries are written when a new session is created and
//! removed when it is deleted (the expiry entry when it closes), so they survive resume,
//! gateway switch and upgrade like the session record.

use super::*;
use crate::config::IdentityPolicy;
use ic_ws_protocol::identity::{IdentityError, VerifiedIdentity, VerifyContext};

const BOUND: u8 = 0;
const BY_PRINCIPAL: u8 = 1;
const BY_EXPIRY: u8 = 2;

fn bound_key(id: ClientId) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(BOUND);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn principal_prefix(p: &Principal) -> Vec<u8> {
    let b = p.as_slice();
    let mut k = Vec::with_capacity(2 + b.len() + 8);
    k.push(BY_PRINCIPAL);
    k.push(b.len() as u8);
    k.extend_from_slice(b);
    k
}

fn principal_key(p: &Principal, id: ClientId) -> Vec<u8> {
    let mut k = principal_prefix(p);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn expiry_key(expires_ns: u64, id: ClientId) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(BY_EXPIRY);
    k.extend_from_slice(&expires_ns.to_be_bytes());
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// A session's bound identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Bound {
    pub principal: Principal,
    pub expires_ns: u64,
}

fn decode_bound(v: &[u8]) -> Option<Bound> {
    let (&len, rest) = v.split_first()?;
    let (p, rest) = rest.split_at_checked(usize::from(len))?;
    let exp: [u8; 8] = rest.try_into().ok()?;
    Some(Bound {
        principal: Principal::try_from_slice(p).ok()?,
        expires_ns: u64::from_be_bytes(exp),
    })
}

/// The Ed25519 signatures of an open's identity proof already found valid (in one batch with
/// the open's own signature): `(key, signed bytes, signature)`.
#[derive(Default)]
pub(crate) struct VerifiedLinks(Vec<ic_ws_protocol::identity::Ed25519Signature>);

impl VerifiedLinks {
    fn contains(&self, k: &[u8; 32], m: &[u8], s: &[u8]) -> bool {
        self.0
            .iter()
            .any(|(k2, m2, s2)| k2 == k && m2 == m && s2 == s)
    }
}

impl State {
    /// Verifies the open's own signature (`Err` as before: `InvalidSignature` /
    /// `MalformedKey`). With an identity proof whose checks before signatures pass, the
    /// open's signature and the chain's Ed25519 signatures are verified in one batch; if that
    /// holds, the chain's are returned so that [`State::verify_identity`] does not verify
    /// them again, otherwise the open's signature is verified alone (and the chain's later,
    /// one by one, as without the batch): every verdict and error is unchanged.
    pub(crate) fn verify_open_signatures(
        &self,
        canister: &Principal,
        key: &[u8; 32],
        open: &OpenRequest,
        now: u64,
    ) -> Result<VerifiedLinks, WsError> {
        let links = open.identity.as_ref().and_then(|proof| {
            let ctx = VerifyContext {
                canister: *canister,
                session_key: key,
                now_ns: now,
                // Unused by the checks before signatures.
                ic_root_key: &[],
            };
            ic_ws_protocol::identity::ed25519_signatures(proof, &ctx)
        });
        if let Some(links) = links.filter(|l| !l.is_empty()) {
            let mut batch = crate::ed25519::OwnedBatch(links);
            batch.0.push((
                *key,
                ic_ws_protocol::signing::open_signing_bytes(canister, open),
                open.signature.clone(),
            ));
            if batch.verified().iter().all(|v| *v) {
                batch.0.pop();
                return Ok(VerifiedLinks(batch.0));
            }
        }
        crate::ed25519::verify_open(canister, open).map_err(crate::runtime::sig_error)?;
        Ok(VerifiedLinks::default())
    }

    /// Verifies the open's identity proof, if any (pure: no state change; a refusal depends
    /// only on the signed proof and the time, so a replay is refused the same way). `links`:
    /// the proof's Ed25519 signatures already verified (by
    /// [`State::verify_open_signatures`]).
    pub(crate) fn verify_identity(
        &self,
        canister: &Principal,
        key: &[u8; 32],
        open: &OpenRequest,
        now: u64,
        links: &VerifiedLinks,
    ) -> Result<Option<VerifiedIdentity>, WsError> {
        let Some(proof) = &open.identity else {
            return Ok(None);
        };
        let root = self.config.ic_root_key();
        let ctx = VerifyContext {
            canister: *canister,
            session_key: key,
            now_ns: now,
            ic_root_key: &root,
        };
        ic_ws_protocol::identity::verify_proof_with(proof, &ctx, &|k, m, s| {
            links.contains(k, m, s) || crate::ed25519::verify_signature(k, m, s).is_ok()
        })
        .map(Some)
        .map_err(WsError::Identity)
    }

    /// The identity policy (`AuthenticatedOnly` refuses anonymous opens, `Callback` asks the
    /// app's filter) and the per-principal session cap.
    pub(crate) fn check_identity_policy(
        &self,
        identity: Option<&VerifiedIdentity>,
    ) -> Result<(), WsError> {
        match self.config.identity_policy() {
            IdentityPolicy::AnonymousAllowed => {}
            IdentityPolicy::AuthenticatedOnly => {
                if identity.is_none() {
                    return Err(WsError::Identity(IdentityError::Required));
                }
            }
            IdentityPolicy::Callback => {
                crate::config::run_identity_filter(identity.map(|v| &v.principal)).map_err(
                    |r| {
                        WsError::Identity(IdentityError::Refused(ic_ws_protocol::text::bounded(
                            &r,
                            MAX_OUTCOME_TEXT_BYTES,
                        )))
                    },
                )?;
            }
        }
        match identity {
            None => {}
            Some(v) => {
                let max = self.config.sessions_per_principal();
                let prefix = principal_prefix(&v.principal);
                let mut end = prefix.clone();
                end.extend_from_slice(&[0xff; 8]);
                let n = self
                    .identities
                    .keys_range(prefix..=end)
                    .take(max as usize)
                    .count() as u64;
                if n >= max {
                    return Err(WsError::LimitReached(format!(
                        "{max} sessions of this principal"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Binds `identity` to new session `id`.
    pub(crate) fn bind_identity(&mut self, id: ClientId, identity: &VerifiedIdentity) {
        let p = identity.principal;
        let b = p.as_slice();
        let mut v = Vec::with_capacity(1 + b.len() + 8);
        v.push(b.len() as u8);
        v.extend_from_slice(b);
        v.extend_from_slice(&identity.expires_ns.to_be_bytes());
        self.identities.insert(bound_key(id), v);
        self.identities.insert(principal_key(&p, id), Vec::new());
        self.identities
            .insert(expiry_key(identity.expires_ns, id), Vec::new());
    }

    /// The identity bound to session `id`.
    pub(crate) fn bound_identity(&self, id: ClientId) -> Option<Bound> {
        self.identities
            .get(&bound_key(id))
            .and_then(|v| decode_bound(&v))
    }

    /// A resume's proof: it must name the bound principal (a resume never changes it); the
    /// session's expiry moves to the new proof's.
    pub(crate) fn refresh_identity(
        &mut self,
        id: ClientId,
        identity: &VerifiedIdentity,
    ) -> Result<(), WsError> {
        let bound = self.bound_identity(id);
        if bound.map(|b| b.principal) != Some(identity.principal) {
            return Err(WsError::Identity(IdentityError::PrincipalMismatch));
        }
        if let Some(b) = bound {
            self.identities.remove(&expiry_key(b.expires_ns, id));
        }
        self.bind_identity(id, identity);
        Ok(())
    }

    /// Session `id` closed: it no longer needs closing at its delegation's expiry.
    pub(crate) fn identity_closed(&mut self, id: ClientId) {
        if let Some(b) = self.bound_identity(id) {
            self.identities.remove(&expiry_key(b.expires_ns, id));
        }
    }

    /// Session `id` is deleted: every trace of its identity goes.
    pub(crate) fn identity_deleted(&mut self, id: ClientId) {
        if let Some(b) = self.bound_identity(id) {
            self.identities.remove(&expiry_key(b.expires_ns, id));
            self.identities.remove(&principal_key(&b.principal, id));
            self.identities.remove(&bound_key(id));
        }
    }

    /// Open sessions bound to `principal`, in id order (at most `sessions_per_principal`).
    pub(crate) fn clients_of(&self, principal: &Principal) -> Vec<ClientId> {
        let prefix = principal_prefix(principal);
        let mut end = prefix.clone();
        end.extend_from_slice(&[0xff; 8]);
        let max = self.config.sessions_per_principal() as usize;
        self.identities
            .keys_range(prefix.clone()..=end)
            .take(max)
            .filter_map(|k| {
                let id = u64::from_be_bytes(k.get(prefix.len()..)?.try_into().ok()?);
                self.clients.get(&id).filter(|r| !r.closed).map(|_| id)
            })
            .collect()
    }

    /// The open session whose delegation expired first, if its expiry is before `now`.
    pub(crate) fn first_identity_expired(&self, now: u64) -> Option<(u64, ClientId)> {
        let k = self
            .identities
            .keys_range(vec![BY_EXPIRY]..vec![BY_EXPIRY + 1])
            .next()?;
        let exp = u64::from_be_bytes(k.get(1..9)?.try_into().ok()?);
        let id = u64::from_be_bytes(k.get(9..17)?.try_into().ok()?);
        (exp < now).then_some((exp, id))
    }

    /// When the next delegation expires (housekeeping's schedule).
    pub(crate) fn next_identity_expiry(&self) -> Option<u64> {
        let k = self
            .identities
            .keys_range(vec![BY_EXPIRY]..vec![BY_EXPIRY + 1])
            .next()?;
        Some(u64::from_be_bytes(k.get(1..9)?.try_into().ok()?).saturating_add(1))
    }

    /// Removes a stale expiry entry (housekeeping found it for a session not open).
    pub(crate) fn drop_expiry_entry(&mut self, exp: u64, id: ClientId) {
        self.identities.remove(&expiry_key(exp, id));
    }
}
