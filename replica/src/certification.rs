//! The certified state tree and the certificates signed over it.
//!
//! The tree holds what the IC certifies for a single subnet without delegation:
//! `/time`, `/subnet/<sid>/{public_key,canister_ranges,type,node/<nid>/public_key}`,
//! `/canister/<id>/{certified_data,module_hash,controllers}` and
//! `/request_status/<rid>/{status,reply,reject_code,reject_message,error_code}`.
//!
//! Signing costs about half a millisecond, so the tree is signed at most once per distinct state:
//! [`StateTree::certificate`] re-signs only when the root hash moved since the last signature,
//! and every certificate handed out until the next change (query data certificates, read_state,
//! sync call responses) is a witness of that same signed root, as on the IC where queries reuse
//! the latest certified state.

use std::collections::HashMap;
use std::sync::Arc;

use candid::Principal;
use ic_certification::{merge_hash_trees, AsHashTree, Certificate, HashTree, NestedTree};
use serde::Serialize;

use crate::keys::Keys;

/// A path in the state tree (a list of labels).
pub type Path = Vec<Vec<u8>>;

/// The lifecycle of an ingress message as published under `/request_status/<rid>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestStatus {
    /// Accepted for execution, not yet executed.
    Received,
    /// Executed with a reply.
    Replied(Vec<u8>),
    /// Executed (or refused during execution) with a reject.
    Rejected {
        /// IC reject code (1..=5).
        code: u64,
        /// Human-readable message.
        message: String,
        /// IC error code such as `IC0503`.
        error_code: Option<String>,
    },
    /// Reply/reject data pruned, the request id still remembered.
    Done,
}

/// The latest signature over the tree, reused until the tree changes.
struct Signed {
    root_hash: [u8; 32],
    signature: Vec<u8>,
    /// Data certificates of this signed state, per canister (a query-heavy load asks for the
    /// same witness again and again).
    data_certificates: HashMap<Principal, Arc<Vec<u8>>>,
}

/// The replica's certified state tree.
pub(crate) struct StateTree {
    tree: NestedTree<Vec<u8>, Vec<u8>>,
    /// Per canister: the module hash whose metadata is published under
    /// `/canister/<id>/metadata`, and the names published (to drop the ones a new module lacks).
    metadata_names: std::collections::HashMap<Principal, (Option<[u8; 32]>, Vec<String>)>,
    time_ns: u64,
    signed: Option<Signed>,
    signatures_made: u64,
}

fn label(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// Unsigned LEB128, the IC's encoding of natural numbers in the state tree.
pub(crate) use ic_ws_protocol::leb128;

/// CBOR with the self-describe tag (55799), as the IC encodes certificates and responses.
pub(crate) fn to_self_describing_cbor<T: Serialize>(value: &T) -> Vec<u8> {
    let mut serializer = serde_cbor::Serializer::new(Vec::new());
    // Serializing plain data into a Vec cannot fail; an error here would be a bug in the types.
    if serializer.self_describe().is_err() || value.serialize(&mut serializer).is_err() {
        tracing::error!("CBOR serialization of an internal value failed");
    }
    serializer.into_inner()
}

impl StateTree {
    /// A tree describing one subnet (`keys`) hosting `canister_ranges`, at time `time_ns`.
    pub(crate) fn new(
        keys: &Keys,
        canister_ranges: &[(Principal, Principal)],
        time_ns: u64,
    ) -> Self {
        let mut tree = NestedTree::default();
        let sid = keys.subnet_id().as_slice().to_vec();
        let subnet = |leaf: &str| vec![label("subnet"), sid.clone(), label(leaf)];
        tree.insert(&subnet("public_key"), keys.root_key_der().to_vec());
        tree.insert(&subnet("type"), label("application"));
        let ranges = serde_cbor::to_vec(&canister_ranges.to_vec()).unwrap_or_default();
        tree.insert(&subnet("canister_ranges"), ranges);
        tree.insert(
            &[
                label("subnet"),
                sid.clone(),
                label("node"),
                keys.node_id().as_slice().to_vec(),
                label("public_key"),
            ],
            keys.node_key_der().to_vec(),
        );
        tree.insert(&[label("time")], leb128(time_ns));
        StateTree {
            tree,
            metadata_names: std::collections::HashMap::new(),
            time_ns,
            signed: None,
            signatures_made: 0,
        }
    }

    /// The time published at `/time`.
    pub(crate) fn time_ns(&self) -> u64 {
        self.time_ns
    }

    pub(crate) fn set_time(&mut self, time_ns: u64) {
        if time_ns != self.time_ns {
            self.time_ns = time_ns;
            self.tree.insert(&[label("time")], leb128(time_ns));
        }
    }

    fn canister_path(canister: Principal, leaf: &str) -> Path {
        vec![label("canister"), canister.as_slice().to_vec(), label(leaf)]
    }

    /// Sets one `/canister/<id>/<leaf>` value; unchanged values leave the root hash alone.
    fn set_canister_leaf(&mut self, canister: Principal, leaf: &str, value: Option<Vec<u8>>) {
        let path = Self::canister_path(canister, leaf);
        match value {
            Some(value) => {
                if self.tree.get(&path) != Some(&value) {
                    self.tree.insert(&path, value);
                }
            }
            None => {
                if self.tree.contains_leaf(&path) {
                    self.tree.delete(&path);
                }
            }
        }
    }

    /// Publishes a canister's certified data, module hash (absent while empty) and controllers.
    pub(crate) fn set_canister(
        &mut self,
        canister: Principal,
        certified_data: Vec<u8>,
        module_hash: Option<[u8; 32]>,
        controllers: &[Principal],
    ) {
        self.set_canister_leaf(canister, "certified_data", Some(certified_data));
        self.set_canister_leaf(canister, "module_hash", module_hash.map(|h| h.to_vec()));
        let controllers = serde_cbor::to_vec(&controllers.to_vec()).unwrap_or_default();
        self.set_canister_leaf(canister, "controllers", Some(controllers));
    }

    /// Publishes the installed module's metadata sections at `/canister/<id>/metadata/<name>`
    /// (public and private alike, as the IC's state tree holds them; `read_state` decides who
    /// may read a private one). Sections of a replaced module disappear.
    /// Published once per installed module: rounds do not revisit it.
    pub(crate) fn metadata_published_for(&self, canister: Principal) -> Option<Option<[u8; 32]>> {
        self.metadata_names.get(&canister).map(|(hash, _)| *hash)
    }

    /// See [`Self::metadata_published_for`]; `module_hash` is the module the sections are of.
    pub(crate) fn set_metadata(
        &mut self,
        canister: Principal,
        module_hash: Option<[u8; 32]>,
        sections: &[(String, Vec<u8>)],
    ) {
        let names: Vec<String> = sections.iter().map(|(n, _)| n.clone()).collect();
        let known = self.metadata_names.get(&canister).map(|(_, n)| n);
        if known.is_some_and(|k| *k != names) {
            let base = vec![
                label("canister"),
                canister.as_slice().to_vec(),
                label("metadata"),
            ];
            if self.tree.contains_path(&base) {
                self.tree.delete(&base);
            }
        }
        for (name, content) in sections {
            let path = vec![
                label("canister"),
                canister.as_slice().to_vec(),
                label("metadata"),
                name.as_bytes().to_vec(),
            ];
            if self.tree.get(&path) != Some(content) {
                self.tree.insert(&path, content.clone());
            }
        }
        self.metadata_names.insert(canister, (module_hash, names));
    }

    /// Removes everything under `/canister/<id>` (a deleted canister looks up as Absent).
    pub(crate) fn remove_canister(&mut self, canister: Principal) {
        self.metadata_names.remove(&canister);
        let base = vec![label("canister"), canister.as_slice().to_vec()];
        if self.tree.contains_path(&base) {
            self.tree.delete(&base);
        }
    }

    /// Publishes (or replaces) the status of an ingress message.
    pub(crate) fn set_request_status(&mut self, request_id: &[u8; 32], status: &RequestStatus) {
        let base = vec![label("request_status"), request_id.to_vec()];
        if self.tree.contains_path(&base) {
            self.tree.delete(&base);
        }
        let mut put = |leaf: &str, value: Vec<u8>| {
            let mut path = base.clone();
            path.push(label(leaf));
            self.tree.insert(&path, value);
        };
        match status {
            RequestStatus::Received => put("status", label("received")),
            RequestStatus::Done => put("status", label("done")),
            RequestStatus::Replied(reply) => {
                put("status", label("replied"));
                put("reply", reply.clone());
            }
            RequestStatus::Rejected {
                code,
                message,
                error_code,
            } => {
                put("status", label("rejected"));
                put("reject_code", leb128(*code));
                put("reject_message", message.as_bytes().to_vec());
                if let Some(error_code) = error_code {
                    put("error_code", error_code.as_bytes().to_vec());
                }
            }
        }
    }

    /// Forgets a request entirely (it then looks up as Absent).
    pub(crate) fn remove_request(&mut self, request_id: &[u8; 32]) {
        let base = vec![label("request_status"), request_id.to_vec()];
        if self.tree.contains_path(&base) {
            self.tree.delete(&base);
        }
    }

    /// How many BLS signatures this tree has cost so far (tests use it to check reuse).
    pub(crate) fn signatures_made(&self) -> u64 {
        self.signatures_made
    }

    /// Signs the current root unless the last signature already covers it.
    fn ensure_signed(&mut self, keys: &Keys) -> &mut Signed {
        let root_hash = self.tree.root_hash();
        let stale = self
            .signed
            .as_ref()
            .is_none_or(|s| s.root_hash != root_hash);
        if stale {
            self.signatures_made += 1;
            self.signed = Some(Signed {
                root_hash,
                signature: keys.sign_state_root(&root_hash),
                data_certificates: HashMap::new(),
            });
        }
        match &mut self.signed {
            Some(signed) => signed,
            None => unreachable!("signed just above"),
        }
    }

    /// A CBOR certificate revealing `/time` and `paths` (pruned elsewhere), signed by the root key
    /// (the replica signs outside its lock instead: `Replica::certificate_unlocked`).
    #[cfg(test)]
    pub(crate) fn certificate(&mut self, keys: &Keys, paths: &[Path]) -> Vec<u8> {
        let unsigned = self.unsigned_certificate(paths);
        let signature = self.ensure_signed(keys).signature.clone();
        encode_certificate(unsigned.witness, signature)
    }

    /// The witness of `/time` and `paths` over the current state, with the signature of that
    /// state if one was made already. The caller can sign (about 0.5 ms) without holding
    /// whatever lock protects the tree, then [`StateTree::record_signature`].
    pub(crate) fn unsigned_certificate(&self, paths: &[Path]) -> UnsignedCertificate {
        let mut witness = self.tree.witness(&[label("time")]);
        for path in paths {
            witness = merge_hash_trees(witness, self.tree.witness(path));
        }
        let root_hash = self.tree.root_hash();
        let signature = self
            .signed
            .as_ref()
            .filter(|s| s.root_hash == root_hash)
            .map(|s| s.signature.clone());
        UnsignedCertificate {
            witness,
            root_hash,
            signature,
        }
    }

    /// Keeps a signature made outside the tree for reuse, if it covers the current state (the
    /// state may have moved on while it was made; it is then only good for its own certificate).
    pub(crate) fn record_signature(&mut self, root_hash: [u8; 32], signature: &[u8]) {
        self.signatures_made += 1;
        let current = self.tree.root_hash() == root_hash;
        let already = self
            .signed
            .as_ref()
            .is_some_and(|s| s.root_hash == root_hash);
        if current && !already {
            self.signed = Some(Signed {
                root_hash,
                signature: signature.to_vec(),
                data_certificates: HashMap::new(),
            });
        }
    }

    /// The data certificate a query on `canister` sees: `/time` and its `certified_data`.
    pub(crate) fn data_certificate(&mut self, keys: &Keys, canister: Principal) -> Arc<Vec<u8>> {
        let cached = self
            .ensure_signed(keys)
            .data_certificates
            .get(&canister)
            .cloned();
        if let Some(cert) = cached {
            return cert;
        }
        let path = Self::canister_path(canister, "certified_data");
        let tree = merge_hash_trees(
            self.tree.witness(&[label("time")]),
            self.tree.witness(&path),
        );
        let signed = self.ensure_signed(keys);
        let cert = Arc::new(encode_certificate(tree, signed.signature.clone()));
        signed.data_certificates.insert(canister, cert.clone());
        cert
    }
}

/// A certificate before its signature (see [`StateTree::unsigned_certificate`]).
pub(crate) struct UnsignedCertificate {
    witness: HashTree,
    /// Root hash of the state the witness was taken from (what the signature must cover).
    pub(crate) root_hash: [u8; 32],
    /// The signature of that state, when the tree had one.
    pub(crate) signature: Option<Vec<u8>>,
}

impl UnsignedCertificate {
    /// The CBOR certificate, with `signature` over [`UnsignedCertificate::root_hash`].
    pub(crate) fn encode(self, signature: Vec<u8>) -> Vec<u8> {
        encode_certificate(self.witness, signature)
    }
}

fn encode_certificate(tree: HashTree, signature: Vec<u8>) -> Vec<u8> {
    to_self_describing_cbor(&Certificate {
        tree,
        signature,
        delegation: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ic_certification::LookupResult;

    fn decode(bytes: &[u8]) -> Certificate {
        serde_cbor::from_slice(bytes).unwrap()
    }

    fn verify(keys: &Keys, cert: &Certificate) -> bool {
        let mut msg = b"\x0Dic-state-root".to_vec();
        msg.extend_from_slice(&cert.tree.digest());
        ic_verify_bls_signature::verify_bls_signature(
            &cert.signature,
            &msg,
            &keys.root_key_der()[crate::keys::BLS_DER_PREFIX.len()..],
        )
        .is_ok()
    }

    fn tree() -> (Keys, StateTree, Principal) {
        let keys = Keys::from_seed(b"cert tests");
        let canister = Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 1, 1, 1]);
        let mut tree = StateTree::new(&keys, &[(canister, canister)], 1_000);
        tree.set_canister(
            canister,
            vec![0xab; 32],
            Some([1; 32]),
            &[Principal::anonymous()],
        );
        (keys, tree, canister)
    }

    #[test]
    fn data_certificate_reveals_certified_data_and_verifies() {
        let (keys, mut tree, canister) = tree();
        let cert = decode(&tree.data_certificate(&keys, canister));
        assert!(verify(&keys, &cert));
        let found =
            cert.tree
                .lookup_path([b"canister".as_ref(), canister.as_slice(), b"certified_data"]);
        assert_eq!(found, LookupResult::Found(&[0xab; 32][..]));
        assert_eq!(
            cert.tree.lookup_path([b"time".as_ref()]),
            LookupResult::Found(&leb128(1_000)[..])
        );
        // module hash is pruned away, not revealed
        assert!(!matches!(
            cert.tree
                .lookup_path([b"canister".as_ref(), canister.as_slice(), b"module_hash"]),
            LookupResult::Found(_)
        ));
    }

    #[test]
    fn a_signature_made_outside_the_tree_is_reused_only_for_the_state_it_covers() {
        let (keys, mut tree, canister) = tree();
        let first = tree.unsigned_certificate(&[vec![label("subnet")]]);
        assert!(first.signature.is_none(), "nothing signed yet");
        let root = first.root_hash;
        let sig = keys.sign_state_root(&root);
        tree.record_signature(root, &sig);
        let again = tree.unsigned_certificate(&[]);
        assert_eq!(again.signature.as_deref(), Some(&sig[..]), "reused");
        assert!(verify(&keys, &decode(&first.encode(sig.clone()))));

        // The state moves on while a signature is being made: the late signature still makes a
        // valid certificate of its own state, but is not taken for the new one.
        let stale = tree.unsigned_certificate(&[]);
        tree.set_canister(canister, vec![0xee; 32], None, &[]);
        let late = keys.sign_state_root(&stale.root_hash);
        tree.record_signature(stale.root_hash, &late);
        let now = tree.unsigned_certificate(&[]);
        assert_ne!(now.root_hash, stale.root_hash);
        assert!(
            now.signature.is_none(),
            "a signature never covers a state it was not made for"
        );
        assert!(verify(&keys, &decode(&stale.encode(late))));
    }

    #[test]
    fn signs_once_per_state_and_again_after_a_change() {
        let (keys, mut tree, canister) = tree();
        tree.data_certificate(&keys, canister);
        tree.certificate(&keys, &[vec![label("subnet")]]);
        tree.data_certificate(&keys, canister);
        assert_eq!(tree.signatures_made(), 1);
        tree.set_canister(
            canister,
            vec![0xcd; 32],
            Some([1; 32]),
            &[Principal::anonymous()],
        );
        let cert = decode(&tree.data_certificate(&keys, canister));
        assert_eq!(tree.signatures_made(), 2);
        assert!(verify(&keys, &cert));
        let found =
            cert.tree
                .lookup_path([b"canister".as_ref(), canister.as_slice(), b"certified_data"]);
        assert_eq!(found, LookupResult::Found(&[0xcd; 32][..]));
        // setting identical values is not a state change
        tree.set_canister(
            canister,
            vec![0xcd; 32],
            Some([1; 32]),
            &[Principal::anonymous()],
        );
        tree.set_time(1_000);
        tree.data_certificate(&keys, canister);
        assert_eq!(tree.signatures_made(), 2);
    }

    #[test]
    fn request_status_found_when_known_absent_when_unknown() {
        let (keys, mut tree, _) = tree();
        let rid = [5u8; 32];
        tree.set_request_status(&rid, &RequestStatus::Received);
        tree.set_request_status(
            &rid,
            &RequestStatus::Rejected {
                code: 5,
                message: "trapped".into(),
                error_code: Some("IC0503".into()),
            },
        );
        let path = vec![label("request_status"), rid.to_vec()];
        let unknown = vec![label("request_status"), vec![6u8; 32]];
        let cert = decode(&tree.certificate(&keys, &[path, unknown]));
        assert!(verify(&keys, &cert));
        let status = |rid: &[u8], leaf: &[u8]| {
            cert.tree
                .lookup_path([b"request_status".as_ref(), rid, leaf])
        };
        assert_eq!(
            status(&rid, b"status"),
            LookupResult::Found(b"rejected".as_ref())
        );
        assert_eq!(
            status(&rid, b"reject_code"),
            LookupResult::Found(&[5u8][..])
        );
        assert_eq!(
            status(&rid, b"error_code"),
            LookupResult::Found(b"IC0503".as_ref())
        );
        assert_eq!(status(&rid, b"reply"), LookupResult::Absent);
        assert_eq!(status(&[6u8; 32], b"status"), LookupResult::Absent);
    }

    #[test]
    fn tampered_certificate_fails_verification() {
        let (keys, mut tree, canister) = tree();
        let mut cert = decode(&tree.data_certificate(&keys, canister));
        cert.signature[3] ^= 1;
        assert!(!verify(&keys, &cert));
        let other = Keys::from_seed(b"someone else");
        let cert = decode(&tree.data_certificate(&keys, canister));
        let mut msg = b"\x0Dic-state-root".to_vec();
        msg.extend_from_slice(&cert.tree.digest());
        let other_pk = &other.root_key_der()[crate::keys::BLS_DER_PREFIX.len()..];
        assert!(
            ic_verify_bls_signature::verify_bls_signature(&cert.signature, &msg, other_pk).is_err()
        );
    }

    #[test]
    fn leb128_matches_the_spec_examples() {
        assert_eq!(leb128(0), vec![0]);
        assert_eq!(leb128(127), vec![127]);
        assert_eq!(leb128(128), vec![0x80, 1]);
        assert_eq!(leb128(624_485), vec![0xe5, 0x8e, 0x26]);
    }
}
