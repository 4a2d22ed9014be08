//! Authentication of HTTP requests, as the IC's ingress validation does it.
//!
//! An envelope is `{content, sender_pubkey?, sender_sig?, sender_delegation?}` in CBOR. This
//! module computes the request id as the representation-independent hash of the `content` map
//! *as received* (every field, known or not, as the IC does), checks the ingress expiry window,
//! the sender (anonymous, or the self-authenticating principal of `sender_pubkey`), the delegation
//! chain (signatures, expiry, target restrictions, length) and the sender's signature over
//! `\x0Aic-request ++ request_id`. Supported keys: Ed25519, ECDSA P-256 and ECDSA secp256k1
//! (SHA-256), and canister signatures (the scheme Internet Identity signs its delegations
//! with: verified with `ic_ws_protocol::canister_sig` against this replica's root key, as the
//! IC verifies them against its own). WebAuthn keys are refused with a clear message.

use std::time::Duration;

use candid::Principal;
use ic_transport_types::{Delegation, EnvelopeContent};
use serde::Deserialize;
use serde_cbor::Value;
use sha2::{Digest, Sha256};

/// The IC's maximum ingress time-to-live.
pub const MAX_INGRESS_TTL: Duration = Duration::from_secs(5 * 60);
/// Clock drift the IC tolerates on top of [`MAX_INGRESS_TTL`].
pub const PERMITTED_DRIFT: Duration = Duration::from_secs(60);
/// The IC refuses delegation chains longer than this.
pub const MAX_DELEGATIONS: usize = 20;
/// The IC refuses delegations naming more targets than this.
pub const MAX_DELEGATION_TARGETS: usize = 1_000;

const REQUEST_DOMAIN: &[u8] = b"\x0Aic-request";
const DELEGATION_DOMAIN: &[u8] = b"\x1Aic-request-auth-delegation";
/// Nesting bound for the request-id hash (content maps are shallow; this stops hostile input).
const MAX_DEPTH: usize = 32;

/// Why a request was refused before reaching a canister (answered with HTTP 400, or 403 where
/// the IC does).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not CBOR, or not an envelope.
    #[error("Could not parse body as an envelope: {0}")]
    Malformed(String),
    /// Expired or too far in the future.
    #[error("Invalid request expiry: {0}")]
    Expiry(String),
    /// Signature, key or sender mismatch.
    #[error("Invalid signature: {0}")]
    Signature(String),
    /// Delegation chain problem.
    #[error("Invalid delegation: {0}")]
    Delegation(String),
    /// A delegation does not allow the targeted canister.
    #[error("Invalid delegation: canister {0} is not one of the delegation's targets")]
    TargetNotAllowed(Principal),
}

/// A request whose envelope parsed, whose expiry is acceptable and whose sender is authenticated.
#[derive(Debug, Clone)]
pub struct AuthenticatedRequest {
    /// The typed content.
    pub content: EnvelopeContent,
    /// The request id (what the sender signed, what `/request_status` is keyed by).
    pub request_id: [u8; 32],
    /// The authenticated sender.
    pub sender: Principal,
    /// If delegations restrict targets: the canisters allowed by every delegation of the chain.
    pub targets: Option<Vec<Principal>>,
}

impl AuthenticatedRequest {
    /// Fails unless the delegation chain (if restricted) allows `canister`.
    pub fn check_target(&self, canister: &Principal) -> Result<(), AuthError> {
        match &self.targets {
            Some(targets) if !targets.contains(canister) => {
                Err(AuthError::TargetNotAllowed(*canister))
            }
            _ => Ok(()),
        }
    }
}

#[derive(Deserialize)]
struct RawEnvelope {
    content: Value,
    #[serde(default, with = "serde_bytes")]
    sender_pubkey: Option<Vec<u8>>,
    #[serde(default, with = "serde_bytes")]
    sender_sig: Option<Vec<u8>>,
    #[serde(default)]
    sender_delegation: Option<Vec<RawSignedDelegation>>,
}

#[derive(Deserialize)]
struct RawSignedDelegation {
    delegation: Value,
    #[serde(with = "serde_bytes")]
    signature: Vec<u8>,
}

/// Parses and authenticates an envelope against the replica's current time. Canister
/// signatures need the root key: see [`authenticate_with_root_key`]; here they are refused.
pub fn authenticate(body: &[u8], now_ns: u64) -> Result<AuthenticatedRequest, AuthError> {
    authenticate_with_root_key(body, now_ns, None)
}

/// [`authenticate`], verifying canister signatures (a canister-signature `sender_pubkey`, or a
/// delegation chain that starts at one) against `root_key_der`, the key certificates of this
/// replica are signed with.
pub fn authenticate_with_root_key(
    body: &[u8],
    now_ns: u64,
    root_key_der: Option<&[u8]>,
) -> Result<AuthenticatedRequest, AuthError> {
    let raw: RawEnvelope =
        serde_cbor::from_slice(body).map_err(|e| AuthError::Malformed(e.to_string()))?;
    let content_value = strip_tags(raw.content);
    let request_id = hash_value(&content_value, 0)?;
    let content: EnvelopeContent = serde_cbor::value::from_value(content_value)
        .map_err(|e| AuthError::Malformed(format!("invalid content: {e}")))?;

    check_expiry(content.ingress_expiry(), now_ns)?;

    let sender = *content.sender();
    let mut targets: Option<Vec<Principal>> = None;
    if sender == Principal::anonymous() {
        if raw.sender_pubkey.is_some()
            || raw.sender_sig.is_some()
            || raw.sender_delegation.is_some()
        {
            return Err(AuthError::Signature(
                "anonymous requests must not carry a public key, signature or delegation".into(),
            ));
        }
    } else {
        let pubkey = raw.sender_pubkey.ok_or_else(|| {
            AuthError::Signature("missing sender_pubkey for a non-anonymous sender".into())
        })?;
        let signature = raw.sender_sig.ok_or_else(|| {
            AuthError::Signature("missing sender_sig for a non-anonymous sender".into())
        })?;
        let expected = Principal::self_authenticating(&pubkey);
        if expected != sender {
            return Err(AuthError::Signature(format!(
                "sender {sender} does not match the public key's principal {expected}"
            )));
        }
        let delegations = raw.sender_delegation.unwrap_or_default();
        if delegations.len() > MAX_DELEGATIONS {
            return Err(AuthError::Delegation(format!(
                "chain of {} delegations is longer than the maximum of {MAX_DELEGATIONS}",
                delegations.len()
            )));
        }
        let mut signing_key = pubkey;
        let mut seen_keys = vec![signing_key.clone()];
        for (index, signed) in delegations.into_iter().enumerate() {
            let delegation_value = strip_tags(signed.delegation);
            let hash = hash_value(&delegation_value, 0)?;
            let delegation: Delegation = serde_cbor::value::from_value(delegation_value)
                .map_err(|e| AuthError::Delegation(format!("delegation {index} malformed: {e}")))?;
            let signable = [DELEGATION_DOMAIN, &hash[..]].concat();
            verify_signature_with_root_key(
                &signing_key,
                &signable,
                &signed.signature,
                root_key_der,
            )
            .map_err(|e| AuthError::Delegation(format!("delegation {index}: {e}")))?;
            if delegation.expiration < now_ns {
                return Err(AuthError::Delegation(format!(
                    "delegation {index} expired at {} (now {now_ns})",
                    delegation.expiration
                )));
            }
            if let Some(new_targets) = delegation.targets {
                if new_targets.len() > MAX_DELEGATION_TARGETS {
                    return Err(AuthError::Delegation(format!(
                        "delegation {index} has more than {MAX_DELEGATION_TARGETS} targets"
                    )));
                }
                targets = Some(match targets {
                    None => new_targets,
                    Some(previous) => previous
                        .into_iter()
                        .filter(|t| new_targets.contains(t))
                        .collect(),
                });
            }
            if seen_keys.contains(&delegation.pubkey) {
                return Err(AuthError::Delegation(
                    "the delegation chain contains a cycle".into(),
                ));
            }
            seen_keys.push(delegation.pubkey.clone());
            signing_key = delegation.pubkey;
        }
        let signable = [REQUEST_DOMAIN, &request_id[..]].concat();
        verify_signature_with_root_key(&signing_key, &signable, &signature, root_key_der)
            .map_err(AuthError::Signature)?;
    }
    Ok(AuthenticatedRequest {
        content,
        request_id,
        sender,
        targets,
    })
}

/// The IC accepts a request while `now <= expiry <= now + max TTL + drift`.
pub fn check_expiry(expiry_ns: u64, now_ns: u64) -> Result<(), AuthError> {
    if expiry_ns < now_ns {
        return Err(AuthError::Expiry(format!(
            "Specified ingress_expiry not within expected range: minimum allowed expiry {now_ns}, specified {expiry_ns} (expired)"
        )));
    }
    let max = now_ns.saturating_add((MAX_INGRESS_TTL + PERMITTED_DRIFT).as_nanos() as u64);
    if expiry_ns > max {
        return Err(AuthError::Expiry(format!(
            "Specified ingress_expiry not within expected range: maximum allowed expiry {max}, specified {expiry_ns} (more than 5 minutes plus drift in the future)"
        )));
    }
    Ok(())
}

fn strip_tags(mut value: Value) -> Value {
    while let Value::Tag(_, inner) = value {
        value = *inner;
    }
    value
}

/// The representation-independent hash of the IC interface spec (request ids, delegations).
pub fn hash_value(value: &Value, depth: usize) -> Result<[u8; 32], AuthError> {
    if depth > MAX_DEPTH {
        return Err(AuthError::Malformed("content nested too deeply".into()));
    }
    Ok(match value {
        Value::Bytes(bytes) => Sha256::digest(bytes).into(),
        Value::Text(text) => Sha256::digest(text.as_bytes()).into(),
        Value::Integer(n) => {
            let n = u64::try_from(*n).map_err(|_| {
                AuthError::Malformed(format!("integer {n} out of range (nat64 expected)"))
            })?;
            Sha256::digest(crate::certification::leb128(n)).into()
        }
        Value::Array(items) => {
            let mut hasher = Sha256::new();
            for item in items {
                hasher.update(hash_value(item, depth + 1)?);
            }
            hasher.finalize().into()
        }
        Value::Map(map) => {
            let mut pairs = Vec::with_capacity(map.len());
            for (key, value) in map {
                let Value::Text(key) = key else {
                    return Err(AuthError::Malformed("map keys must be text".into()));
                };
                let mut pair = Vec::with_capacity(64);
                pair.extend_from_slice(&Sha256::digest(key.as_bytes()));
                pair.extend_from_slice(&hash_value(value, depth + 1)?);
                pairs.push(pair);
            }
            pairs.sort();
            let mut hasher = Sha256::new();
            for pair in pairs {
                hasher.update(pair);
            }
            hasher.finalize().into()
        }
        Value::Tag(_, inner) => hash_value(inner, depth + 1)?,
        Value::Bool(_) | Value::Null | Value::Float(_) => {
            return Err(AuthError::Malformed(
                "booleans, nulls and floats cannot be hashed".into(),
            ))
        }
        _ => return Err(AuthError::Malformed("unsupported CBOR value".into())),
    })
}

/// Verifies `signature` over `message` with a DER-encoded public key of a supported scheme
/// (canister signatures are refused: they need the root key, see
/// [`verify_signature_with_root_key`]).
pub fn verify_signature(der_key: &[u8], message: &[u8], signature: &[u8]) -> Result<(), String> {
    verify_signature_with_root_key(der_key, message, signature, None)
}

/// [`verify_signature`], verifying canister signatures against `root_key_der` when given.
pub fn verify_signature_with_root_key(
    der_key: &[u8],
    message: &[u8],
    signature: &[u8],
    root_key_der: Option<&[u8]>,
) -> Result<(), String> {
    if ic_ws_protocol::canister_sig::is_canister_sig_key(der_key) {
        let Some(root_key) = root_key_der else {
            return Err("canister signatures need the root key to be verified".into());
        };
        return ic_ws_protocol::canister_sig::verify(root_key, der_key, message, signature)
            .map_err(|e| format!("canister signature verification failed: {e}"));
    }
    if der_key.starts_with(&crate::keys::ED25519_DER_PREFIX) {
        let key = ic_ed25519::PublicKey::deserialize_rfc8410_der(der_key)
            .map_err(|e| format!("malformed Ed25519 public key: {e:?}"))?;
        return key
            .verify_signature(message, signature)
            .map_err(|_| "Ed25519 signature verification failed".to_string());
    }
    use p256::pkcs8::DecodePublicKey;
    if let Ok(key) = p256::ecdsa::VerifyingKey::from_public_key_der(der_key) {
        use p256::ecdsa::signature::Verifier;
        let sig = p256::ecdsa::Signature::from_slice(signature)
            .map_err(|_| "malformed ECDSA P-256 signature (64 bytes r||s expected)".to_string())?;
        return key
            .verify(message, &sig)
            .map_err(|_| "ECDSA P-256 signature verification failed".to_string());
    }
    if let Ok(key) = k256::ecdsa::VerifyingKey::from_public_key_der(der_key) {
        use k256::ecdsa::signature::Verifier;
        let sig = k256::ecdsa::Signature::from_slice(signature).map_err(|_| {
            "malformed ECDSA secp256k1 signature (64 bytes r||s expected)".to_string()
        })?;
        return key
            .verify(message, &sig)
            .map_err(|_| "ECDSA secp256k1 signature verification failed".to_string());
    }
    // 1.3.6.1.4.1.56387.1.1 (WebAuthn/COSE) is an IC key type we do not emulate; say so rather
    // than "bad signature".
    const COSE_OID: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x83, 0xb8, 0x43, 0x01, 0x01];
    if der_key.windows(COSE_OID.len()).any(|w| w == COSE_OID) {
        return Err("WebAuthn (COSE) keys are not supported by this replica".into());
    }
    Err(
        "unsupported or malformed public key (Ed25519, ECDSA P-256 or secp256k1 DER expected)"
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ic_transport_types::{Envelope, SignedDelegation};
    use std::borrow::Cow;

    const NOW: u64 = 1_700_000_000_000_000_000;

    fn content(sender: Principal) -> EnvelopeContent {
        EnvelopeContent::Call {
            nonce: Some(vec![1, 2, 3]),
            ingress_expiry: NOW + 60_000_000_000,
            sender,
            canister_id: Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 1, 1, 1]),
            method_name: "put".into(),
            arg: b"DIDL\x00\x00".to_vec(),
            sender_info: None,
        }
    }

    struct Ed {
        key: ic_ed25519::PrivateKey,
    }
    impl Ed {
        fn new(seed: u8) -> Self {
            Ed {
                key: ic_ed25519::PrivateKey::generate_from_seed(&[seed; 32]),
            }
        }
        fn der(&self) -> Vec<u8> {
            self.key.public_key().serialize_rfc8410_der()
        }
        fn principal(&self) -> Principal {
            Principal::self_authenticating(self.der())
        }
        fn sign(&self, msg: &[u8]) -> Vec<u8> {
            self.key.sign_message(msg).to_vec()
        }
    }

    fn envelope(
        content: &EnvelopeContent,
        pubkey: Option<Vec<u8>>,
        sig: Option<Vec<u8>>,
        delegation: Option<Vec<SignedDelegation>>,
    ) -> Vec<u8> {
        Envelope {
            content: Cow::Borrowed(content),
            sender_pubkey: pubkey,
            sender_sig: sig,
            sender_delegation: delegation,
        }
        .encode_bytes()
    }

    #[test]
    fn request_id_matches_ic_transport_types_for_every_request_kind() {
        let sender = Principal::anonymous();
        let call = content(sender);
        let query = EnvelopeContent::Query {
            ingress_expiry: NOW + 1,
            sender,
            canister_id: Principal::management_canister(),
            method_name: "q".into(),
            arg: vec![],
            nonce: None,
            sender_info: None,
        };
        let read_state = EnvelopeContent::ReadState {
            ingress_expiry: NOW + 1,
            sender,
            paths: vec![
                vec!["time".into()],
                vec!["request_status".into(), vec![1u8; 32].into()],
            ],
        };
        for c in [call, query, read_state] {
            let auth = authenticate(&envelope(&c, None, None, None), NOW).unwrap();
            assert_eq!(auth.request_id, *c.to_request_id(), "{c:?}");
        }
    }

    #[test]
    fn ed25519_signed_request_is_accepted_and_tampering_is_caught() {
        let id = Ed::new(1);
        let c = content(id.principal());
        let sig = id.sign(&c.to_request_id().signable());
        let ok = authenticate(&envelope(&c, Some(id.der()), Some(sig.clone()), None), NOW).unwrap();
        assert_eq!(ok.sender, id.principal());

        let mut bad = sig.clone();
        bad[0] ^= 1;
        let err = authenticate(&envelope(&c, Some(id.der()), Some(bad), None), NOW).unwrap_err();
        assert!(matches!(err, AuthError::Signature(_)), "{err}");

        // the signature does not cover a different method
        let mut other = c.clone();
        if let EnvelopeContent::Call { method_name, .. } = &mut other {
            *method_name = "steal".into();
        }
        let err = authenticate(
            &envelope(&other, Some(id.der()), Some(sig.clone()), None),
            NOW,
        )
        .unwrap_err();
        assert!(matches!(err, AuthError::Signature(_)), "{err}");

        // someone else's key cannot claim this sender
        let mallory = Ed::new(2);
        let msig = mallory.sign(&c.to_request_id().signable());
        let err =
            authenticate(&envelope(&c, Some(mallory.der()), Some(msig), None), NOW).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");

        // anonymous sender with a signature, or a named sender without one, are refused
        let anon = content(Principal::anonymous());
        assert!(authenticate(&envelope(&anon, Some(id.der()), Some(sig), None), NOW).is_err());
        assert!(authenticate(&envelope(&c, None, None, None), NOW).is_err());
    }

    #[test]
    fn ecdsa_keys_are_verified() {
        use p256::pkcs8::EncodePublicKey;
        let sk = p256::ecdsa::SigningKey::from_slice(&[3u8; 32]).unwrap();
        let der = sk
            .verifying_key()
            .to_public_key_der()
            .unwrap()
            .as_bytes()
            .to_vec();
        let c = content(Principal::self_authenticating(&der));
        use p256::ecdsa::signature::Signer;
        let sig: p256::ecdsa::Signature = sk.sign(&c.to_request_id().signable());
        let mut sig = sig.to_bytes().to_vec();
        assert!(authenticate(
            &envelope(&c, Some(der.clone()), Some(sig.clone()), None),
            NOW
        )
        .is_ok());
        sig[10] ^= 1;
        assert!(authenticate(&envelope(&c, Some(der), Some(sig), None), NOW).is_err());

        let sk = k256::ecdsa::SigningKey::from_slice(&[4u8; 32]).unwrap();
        let der = sk
            .verifying_key()
            .to_public_key_der()
            .unwrap()
            .as_bytes()
            .to_vec();
        let c = content(Principal::self_authenticating(&der));
        let sig: k256::ecdsa::Signature =
            k256::ecdsa::signature::Signer::sign(&sk, &c.to_request_id().signable());
        let mut sig = sig.to_bytes().to_vec();
        assert!(authenticate(
            &envelope(&c, Some(der.clone()), Some(sig.clone()), None),
            NOW
        )
        .is_ok());
        sig[40] ^= 1;
        assert!(authenticate(&envelope(&c, Some(der), Some(sig), None), NOW).is_err());
    }

    fn delegate(
        from: &Ed,
        to: &Ed,
        expiration: u64,
        targets: Option<Vec<Principal>>,
    ) -> SignedDelegation {
        let delegation = Delegation {
            pubkey: to.der(),
            expiration,
            targets,
            permissions: None,
        };
        SignedDelegation {
            signature: from.sign(&delegation.signable()),
            delegation,
        }
    }

    #[test]
    fn delegation_chain_expiry_and_targets_are_enforced() {
        let root = Ed::new(10);
        let session = Ed::new(11);
        let c = content(root.principal());
        let canister = match &c {
            EnvelopeContent::Call { canister_id, .. } => *canister_id,
            _ => unreachable!(),
        };
        let sig = session.sign(&c.to_request_id().signable());
        let good = delegate(&root, &session, NOW + 1_000, Some(vec![canister]));
        let auth = authenticate(
            &envelope(&c, Some(root.der()), Some(sig.clone()), Some(vec![good])),
            NOW,
        )
        .unwrap();
        assert_eq!(auth.sender, root.principal());
        assert!(auth.check_target(&canister).is_ok());
        assert!(auth.check_target(&Principal::anonymous()).is_err());

        let expired = delegate(&root, &session, NOW - 1, None);
        let err = authenticate(
            &envelope(&c, Some(root.der()), Some(sig.clone()), Some(vec![expired])),
            NOW,
        )
        .unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");

        // a delegation signed by someone other than the sender's key
        let mallory = Ed::new(12);
        let forged = delegate(&mallory, &session, NOW + 1_000, None);
        let err = authenticate(
            &envelope(&c, Some(root.der()), Some(sig.clone()), Some(vec![forged])),
            NOW,
        )
        .unwrap_err();
        assert!(matches!(err, AuthError::Delegation(_)), "{err}");

        // request signed by the root key instead of the delegated key
        let root_sig = root.sign(&c.to_request_id().signable());
        let good = delegate(&root, &session, NOW + 1_000, None);
        assert!(authenticate(
            &envelope(&c, Some(root.der()), Some(root_sig), Some(vec![good])),
            NOW
        )
        .is_err());
    }

    /// An identity provider's canister signature over `message` for `seed`, certified by the
    /// replica's real state tree and root key.
    fn canister_signature(
        keys: &crate::keys::Keys,
        idp: Principal,
        seed: &[u8],
        message: &[u8],
    ) -> Vec<u8> {
        use ic_certification::{labeled, leaf};
        let sha = |b: &[u8]| Sha256::digest(b).to_vec();
        let tree = labeled(
            b"sig".to_vec(),
            labeled(sha(seed), labeled(sha(message), leaf(Vec::<u8>::new()))),
        );
        let mut state = crate::certification::StateTree::new(keys, &[(idp, idp)], NOW);
        state.set_canister(idp, tree.digest().to_vec(), None, &[]);
        let path = vec![
            b"canister".to_vec(),
            idp.as_slice().to_vec(),
            b"certified_data".to_vec(),
        ];
        let certificate = state.certificate(keys, &[path]);
        #[derive(serde::Serialize)]
        struct Sig {
            #[serde(with = "serde_bytes")]
            certificate: Vec<u8>,
            tree: ic_certification::HashTree,
        }
        crate::certification::to_self_describing_cbor(&Sig { certificate, tree })
    }

    #[test]
    fn canister_signature_delegations_are_verified_against_the_root_key() {
        use ic_ws_protocol::canister_sig;
        let keys = crate::keys::Keys::from_seed(b"canister signatures");
        let root = Some(keys.root_key_der());
        let idp = Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 5, 1, 1]);
        let user_key = canister_sig::public_key_der(&idp, b"anchor 10000");
        let user = Principal::self_authenticating(&user_key);
        let session = Ed::new(20);
        let c = content(user);
        let canister = match &c {
            EnvelopeContent::Call { canister_id, .. } => *canister_id,
            _ => unreachable!(),
        };
        let request_sig = session.sign(&c.to_request_id().signable());
        let delegation = |expiration: u64, targets: Option<Vec<Principal>>| Delegation {
            pubkey: session.der(),
            expiration,
            targets,
            permissions: None,
        };
        // The protocol crate computes exactly what ic-transport-types signs.
        for targets in [None, Some(vec![canister, idp])] {
            let d = delegation(NOW + 1_000, targets.clone());
            assert_eq!(
                d.signable(),
                canister_sig::delegation_signature_msg(
                    &session.der(),
                    NOW + 1_000,
                    targets.as_deref()
                )
            );
        }
        let signed = |d: Delegation, signature: Vec<u8>| SignedDelegation {
            delegation: d,
            signature,
        };
        let good = delegation(NOW + 1_000, Some(vec![canister]));
        let good_sig = canister_signature(&keys, idp, b"anchor 10000", &good.signable());
        let body = envelope(
            &c,
            Some(user_key.clone()),
            Some(request_sig.clone()),
            Some(vec![signed(good.clone(), good_sig.clone())]),
        );
        let auth = authenticate_with_root_key(&body, NOW, root).unwrap();
        assert_eq!(auth.sender, user);
        assert!(auth.check_target(&canister).is_ok());
        assert!(auth.check_target(&idp).is_err());

        // Without the root key (or with another one) the chain cannot be verified.
        let err = authenticate(&body, NOW).unwrap_err();
        assert!(
            matches!(&err, AuthError::Delegation(m) if m.contains("root key")),
            "{err}"
        );
        let other = crate::keys::Keys::from_seed(b"another IC");
        let err = authenticate_with_root_key(&body, NOW, Some(other.root_key_der())).unwrap_err();
        assert!(
            matches!(&err, AuthError::Delegation(m) if m.contains("BLS")),
            "{err}"
        );

        // Another seed of the same canister (another user) cannot use this signature.
        let mallory_key = canister_sig::public_key_der(&idp, b"anchor 10001");
        let mc = content(Principal::self_authenticating(&mallory_key));
        let body = envelope(
            &mc,
            Some(mallory_key),
            Some(session.sign(&mc.to_request_id().signable())),
            Some(vec![signed(good.clone(), good_sig.clone())]),
        );
        let err = authenticate_with_root_key(&body, NOW, root).unwrap_err();
        assert!(
            matches!(&err, AuthError::Delegation(m) if m.contains("sig/")),
            "{err}"
        );

        // A delegation the canister did not sign (longer expiry), and a tampered signature.
        let longer = delegation(NOW + 2_000, Some(vec![canister]));
        let mut tampered = good_sig.clone();
        let last = tampered.len() - 40;
        tampered[last] ^= 1;
        for (d, sig) in [(longer, good_sig.clone()), (good.clone(), tampered)] {
            let body = envelope(
                &c,
                Some(user_key.clone()),
                Some(request_sig.clone()),
                Some(vec![signed(d, sig)]),
            );
            let err = authenticate_with_root_key(&body, NOW, root).unwrap_err();
            assert!(matches!(err, AuthError::Delegation(_)), "{err}");
        }

        // Expired: the certificate stays valid, the delegation does not.
        let expired = delegation(NOW - 1, None);
        let sig = canister_signature(&keys, idp, b"anchor 10000", &expired.signable());
        let body = envelope(
            &c,
            Some(user_key.clone()),
            Some(request_sig.clone()),
            Some(vec![signed(expired, sig)]),
        );
        let err = authenticate_with_root_key(&body, NOW, root).unwrap_err();
        assert!(
            matches!(&err, AuthError::Delegation(m) if m.contains("expired")),
            "{err}"
        );

        // A canister signature can also sign a request directly (no delegation).
        let direct = content(user);
        let signable = direct.to_request_id().signable();
        let sig = canister_signature(&keys, idp, b"anchor 10000", &signable);
        let body = envelope(&direct, Some(user_key.clone()), Some(sig.clone()), None);
        assert_eq!(
            authenticate_with_root_key(&body, NOW, root).unwrap().sender,
            user
        );
        let body = envelope(&content(user), Some(user_key), Some(good_sig), None);
        assert!(matches!(
            authenticate_with_root_key(&body, NOW, root),
            Err(AuthError::Signature(_))
        ));
    }

    #[test]
    fn expiry_window_is_enforced() {
        let c = |expiry| EnvelopeContent::ReadState {
            ingress_expiry: expiry,
            sender: Principal::anonymous(),
            paths: vec![],
        };
        assert!(authenticate(&envelope(&c(NOW - 1), None, None, None), NOW).is_err());
        assert!(authenticate(
            &envelope(&c(NOW + 6 * 60 * 1_000_000_000 + 1), None, None, None),
            NOW
        )
        .is_err());
        assert!(authenticate(
            &envelope(&c(NOW + 5 * 60 * 1_000_000_000), None, None, None),
            NOW
        )
        .is_ok());
    }

    #[test]
    fn garbage_is_a_typed_error_not_a_panic() {
        for body in [
            &b""[..],
            b"\xff\xff",
            b"\xd9\xd9\xf7\xa0",
            b"\xa1\x67content\x01",
            &[0x9f; 4096][..],
        ] {
            assert!(matches!(
                authenticate(body, NOW),
                Err(AuthError::Malformed(_))
            ));
        }
    }
}
