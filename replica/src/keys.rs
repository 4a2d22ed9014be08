//! The replica's keys and the identities derived from them.
//!
//! - The root key: a BLS12-381 (min-sig) key that signs certificates, exactly like the IC's NNS
//!   root key. Without a delegation the agents take the subnet id to be the self-authenticating
//!   principal of this key's DER encoding, so that is our subnet id.
//! - One node key: an Ed25519 key that signs query responses (`\x0Bic-response` domain); its DER
//!   form is published at `/subnet/<sid>/node/<nid>/public_key` and the node id is its
//!   self-authenticating principal.
//!
//! Both derive from one 32-byte seed, so a fixed seed gives reproducible keys and ids.

use candid::Principal;
use ic_verify_bls_signature::PrivateKey as BlsPrivateKey;
use sha2::{Digest, Sha256};

/// DER prefix of an IC BLS12-381 G2 public key (OIDs 1.3.6.1.4.1.44668.5.3.1.2.1 and
/// 1.3.6.1.4.1.44668.5.3.2.1), followed by the 96-byte compressed key.
pub const BLS_DER_PREFIX: [u8; 37] = [
    0x30, 0x81, 0x82, 0x30, 0x1d, 0x06, 0x0d, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0xdc, 0x7c, 0x05,
    0x03, 0x01, 0x02, 0x01, 0x06, 0x0c, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0xdc, 0x7c, 0x05, 0x03,
    0x02, 0x01, 0x03, 0x61, 0x00,
];

/// DER prefix of an Ed25519 public key (RFC 8410), followed by the 32-byte key.
pub const ED25519_DER_PREFIX: [u8; 12] = [48, 42, 48, 5, 6, 3, 43, 101, 112, 3, 33, 0];

/// Domain separator of signed certificate roots.
const STATE_ROOT_DOMAIN: &[u8] = b"\x0Dic-state-root";

/// The replica's key material and derived identities.
pub(crate) struct Keys {
    root: BlsPrivateKey,
    root_der: Vec<u8>,
    node: ic_ed25519::PrivateKey,
    node_der: Vec<u8>,
    subnet_id: Principal,
    node_id: Principal,
}

impl Keys {
    /// Derives all keys from `seed` (any length; hashed with a domain per key).
    pub(crate) fn from_seed(seed: &[u8]) -> Self {
        let root = bls_key_from_seed(seed);
        let root_der = [&BLS_DER_PREFIX[..], &root.public_key().serialize()[..]].concat();
        let node_seed: [u8; 32] = Sha256::new()
            .chain_update(b"ic-ws-replica node key")
            .chain_update(seed)
            .finalize()
            .into();
        let node = ic_ed25519::PrivateKey::generate_from_seed(&node_seed);
        let node_der = [
            &ED25519_DER_PREFIX[..],
            &node.public_key().serialize_raw()[..],
        ]
        .concat();
        Keys {
            subnet_id: Principal::self_authenticating(&root_der),
            node_id: Principal::self_authenticating(&node_der),
            root,
            root_der,
            node,
            node_der,
        }
    }

    /// Fresh random keys (each replica instance then has its own root of trust).
    pub(crate) fn random() -> Self {
        let seed: [u8; 32] = rand::random();
        Self::from_seed(&seed)
    }

    /// The 133-byte DER root key served by `/api/v2/status`.
    pub(crate) fn root_key_der(&self) -> &[u8] {
        &self.root_der
    }

    pub(crate) fn node_key_der(&self) -> &[u8] {
        &self.node_der
    }

    pub(crate) fn subnet_id(&self) -> Principal {
        self.subnet_id
    }

    pub(crate) fn node_id(&self) -> Principal {
        self.node_id
    }

    /// Signs a state-tree root hash (`\x0Dic-state-root` ++ hash): the certificate signature.
    pub(crate) fn sign_state_root(&self, root_hash: &[u8; 32]) -> Vec<u8> {
        let mut msg = Vec::with_capacity(STATE_ROOT_DOMAIN.len() + 32);
        msg.extend_from_slice(STATE_ROOT_DOMAIN);
        msg.extend_from_slice(root_hash);
        self.root.sign(&msg).serialize().to_vec()
    }

    /// Signs with the node key (query responses; the caller supplies the domain-separated bytes).
    pub(crate) fn node_sign(&self, msg: &[u8]) -> Vec<u8> {
        self.node.sign_message(msg).to_vec()
    }
}

/// A BLS12-381 scalar from a seed. The hash's top three bits are cleared so the value is below
/// the group order (about 0x73ed...) and `deserialize` cannot refuse it; a zero scalar has
/// negligible probability but is still handled by perturbing the input.
fn bls_key_from_seed(seed: &[u8]) -> BlsPrivateKey {
    let mut counter = 0u32;
    loop {
        let mut scalar: [u8; 32] = Sha256::new()
            .chain_update(b"ic-ws-replica root key")
            .chain_update(counter.to_be_bytes())
            .chain_update(seed)
            .finalize()
            .into();
        scalar[0] &= 0x1f;
        if let Ok(key) = BlsPrivateKey::deserialize(&scalar) {
            return key;
        }
        counter += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_identities_different_seed_different() {
        let a = Keys::from_seed(b"one");
        let b = Keys::from_seed(b"one");
        let c = Keys::from_seed(b"two");
        assert_eq!(a.root_key_der(), b.root_key_der());
        assert_eq!(a.node_id(), b.node_id());
        assert_ne!(a.root_key_der(), c.root_key_der());
        assert_ne!(a.subnet_id(), c.subnet_id());
        assert_eq!(a.root_key_der().len(), 133);
        assert_eq!(a.node_key_der().len(), 44);
    }

    #[test]
    fn state_root_signature_verifies_with_the_published_key_only() {
        let keys = Keys::from_seed(b"sig");
        let hash = [7u8; 32];
        let sig = keys.sign_state_root(&hash);
        let mut msg = STATE_ROOT_DOMAIN.to_vec();
        msg.extend_from_slice(&hash);
        let pk = &keys.root_key_der()[BLS_DER_PREFIX.len()..];
        assert!(ic_verify_bls_signature::verify_bls_signature(&sig, &msg, pk).is_ok());
        msg[20] ^= 1;
        assert!(ic_verify_bls_signature::verify_bls_signature(&sig, &msg, pk).is_err());
    }
}
