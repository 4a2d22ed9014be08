//! The exact bytes a client's session key signs, and Ed25519 signing/verification.
//!
//! The encoding is a fixed, hand-specified byte layout (not candid, whose encoders may order
//! type tables differently) so that every client implementation produces identical bytes.
//! Each payload starts with a length-prefixed domain separator (the IC's convention), so a
//! signature made for one purpose can never be replayed as another, and binds the canister id,
//! so a message for one canister is never valid for another.
//!
//! Integers are big-endian. `principal` = 1-byte length + raw bytes. `bytes` = 4-byte length +
//! raw bytes. `text` = `bytes` of its UTF-8.

use crate::types::{ClientMessage, MessageKind, OpenRequest, CLIENT_KEY_LEN, SIGNATURE_LEN};
use candid::Principal;

/// Domain separator of open requests: `"\x0Aic-ws-open"`.
pub const OPEN_DOMAIN: &[u8] = b"\x0Aic-ws-open";
/// Domain separator of client messages: `"\x0Dic-ws-message"`.
pub const MESSAGE_DOMAIN: &[u8] = b"\x0Dic-ws-message";

fn put_principal(out: &mut Vec<u8>, p: &Principal) {
    let bytes = p.as_slice();
    // A principal is at most 29 bytes, so its length always fits in one byte.
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Payloads are bounded far below 4 GiB by the IC's 2 MiB ingress limit.
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// The bytes signed by an open request:
/// `OPEN_DOMAIN, principal canister_id, principal gateway, client_key[32], u64 timestamp_ns,
/// u8 0 | (u8 1, u64 client_id, u64 next_outbound_seq), bytes args`, followed, only when the
/// open carries an identity proof, by `u8 1, proof_digest[32]`
/// ([`crate::identity::proof_digest`]). Opens without a proof sign exactly the bytes they
/// signed before proofs existed.
pub fn open_signing_bytes(canister_id: &Principal, open: &OpenRequest) -> Vec<u8> {
    let mut out = Vec::with_capacity(OPEN_DOMAIN.len() + 120 + open.args.len());
    out.extend_from_slice(OPEN_DOMAIN);
    put_principal(&mut out, canister_id);
    put_principal(&mut out, &open.gateway);
    out.extend_from_slice(&open.client_key);
    out.extend_from_slice(&open.timestamp_ns.to_be_bytes());
    match &open.resume {
        None => out.push(0),
        Some(r) => {
            out.push(1);
            out.extend_from_slice(&r.client_id.to_be_bytes());
            out.extend_from_slice(&r.next_outbound_seq.to_be_bytes());
        }
    }
    put_bytes(&mut out, &open.args);
    if let Some(proof) = &open.identity {
        out.push(1);
        out.extend_from_slice(&crate::identity::proof_digest(proof));
    }
    out
}

/// The bytes signed by a client message:
/// `MESSAGE_DOMAIN, principal canister_id, u64 client_id, u64 seq, u64 ack, kind` where kind is
/// `u8 0, bytes payload` (App) | `u8 1` (KeepAlive) | `u8 2, u16 code, text reason` (Close).
pub fn message_signing_bytes(canister_id: &Principal, msg: &ClientMessage) -> Vec<u8> {
    let payload_len = match &msg.kind {
        MessageKind::App(p) => p.len(),
        MessageKind::KeepAlive => 0,
        MessageKind::Close { reason, .. } => reason.len() + 2,
    };
    let mut out = Vec::with_capacity(MESSAGE_DOMAIN.len() + 64 + payload_len);
    out.extend_from_slice(MESSAGE_DOMAIN);
    put_principal(&mut out, canister_id);
    out.extend_from_slice(&msg.client_id.to_be_bytes());
    out.extend_from_slice(&msg.seq.to_be_bytes());
    out.extend_from_slice(&msg.ack.to_be_bytes());
    match &msg.kind {
        MessageKind::App(payload) => {
            out.push(0);
            put_bytes(&mut out, payload);
        }
        MessageKind::KeepAlive => out.push(1),
        MessageKind::Close { code, reason } => {
            out.push(2);
            out.extend_from_slice(&code.to_be_bytes());
            put_bytes(&mut out, reason.as_bytes());
        }
    }
    out
}

/// Why a signature was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The key is not 32 bytes or not a valid Ed25519 point, or the signature is not 64 bytes.
    #[error("malformed key or signature")]
    Malformed,
    /// The signature does not verify.
    #[error("invalid signature")]
    Invalid,
}

/// Verifies an Ed25519 signature (strict: rejects non-canonical encodings and small-order keys).
pub fn verify_signature(
    public_key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> Result<(), SignatureError> {
    if public_key.len() != CLIENT_KEY_LEN || signature.len() != SIGNATURE_LEN {
        return Err(SignatureError::Malformed);
    }
    let key = ed25519_compact::PublicKey::from_slice(public_key)
        .map_err(|_| SignatureError::Malformed)?;
    let sig =
        ed25519_compact::Signature::from_slice(signature).map_err(|_| SignatureError::Malformed)?;
    key.verify(message, &sig)
        .map_err(|_| SignatureError::Invalid)
}

/// Verifies the signature of an open request for `canister_id`.
pub fn verify_open(canister_id: &Principal, open: &OpenRequest) -> Result<(), SignatureError> {
    verify_signature(
        &open.client_key,
        &open_signing_bytes(canister_id, open),
        &open.signature,
    )
}

/// Verifies the signature of a client message for `canister_id` under the session key.
pub fn verify_message(
    canister_id: &Principal,
    client_key: &[u8],
    msg: &ClientMessage,
) -> Result<(), SignatureError> {
    verify_signature(
        client_key,
        &message_signing_bytes(canister_id, msg),
        &msg.signature,
    )
}

/// A client's Ed25519 session key (the signing side; used by clients and tests).
#[derive(Clone)]
pub struct SessionKey(ed25519_compact::KeyPair);

impl SessionKey {
    /// A key from a 32-byte seed (take the seed from a CSPRNG).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(ed25519_compact::KeyPair::from_seed(
            ed25519_compact::Seed::new(seed),
        ))
    }

    /// The 32-byte public key.
    pub fn public_key(&self) -> Vec<u8> {
        self.0.pk.to_vec()
    }

    /// Signs `message` (deterministic Ed25519).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.0.sk.sign(message, None).to_vec()
    }

    /// Fills in the signature of an open request for `canister_id`.
    pub fn sign_open(&self, canister_id: &Principal, open: &mut OpenRequest) {
        open.signature = self.sign(&open_signing_bytes(canister_id, open));
    }

    /// Fills in the signature of a client message for `canister_id`.
    pub fn sign_message(&self, canister_id: &Principal, msg: &mut ClientMessage) {
        msg.signature = self.sign(&message_signing_bytes(canister_id, msg));
    }
}

impl core::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Never print the secret half.
        write!(f, "SessionKey({})", Hex(&self.0.pk[..]))
    }
}

struct Hex<'a>(&'a [u8]);
impl core::fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}
