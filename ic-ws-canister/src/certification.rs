//! The certified hash tree and how the app composes its own certified data with it.
//!
//! The runtime certifies every retained outbound message at `/ws/<client BE>/<seq BE>` (value:
//! `sha256(content)`). The canister's `certified_data` (32 bytes, see
//! `ic_cdk::api::certified_data_set`) is the root hash of:
//!
//! - `labeled("ws", W)` when the app certifies nothing itself (the default);
//! - `fork(labeled("app", A), labeled("ws", W))` when the app registered its own root hash `A`
//!   with [`set_app_root_hash`].
//!
//! The app never calls `certified_data_set` itself (it would break the ws certificates);
//! it registers `A` instead, and builds the witness of its own data with [`app_witness`]:
//!
//! ```
//! use ic_certification::{labeled, leaf, AsHashTree, RbTree};
//! use ic_ws_canister::certification;
//!
//! // The app's own certified map (kept in the heap, rebuilt after upgrade like any RbTree).
//! let mut app: RbTree<Vec<u8>, Vec<u8>> = RbTree::new();
//! app.insert(b"greeting".to_vec(), b"hello".to_vec());
//! // After every change: register its root hash (this updates certified_data).
//! certification::set_app_root_hash(Some(app.root_hash()));
//!
//! // In a query: the app's witness, composed with the ws subtree (pruned to its hash), whose
//! // root hash is exactly the certified_data; reply with it and
//! // `certification::data_certificate()`.
//! let tree = certification::app_witness(app.witness(b"greeting"));
//! assert_eq!(tree.digest(), certification::certified_root());
//! let cbor = certification::encode_tree(&tree);
//! # let _ = cbor;
//! ```
//!
//! A verifier looks the app's value up at `/app/greeting` in that tree and checks the tree's
//! root hash against `/canister/<id>/certified_data` of the certificate, exactly as ic-ws
//! clients do for `/ws/...`.
//!
//! The ws tree lives in the heap (a tree specialised to the runtime's updates, see
//! `ws_tree.rs`) and is rebuilt from stable memory after an upgrade (see
//! [`crate::post_upgrade`]).

use ic_certification::{fork, labeled, pruned, Hash, HashTree};
use ic_ws_protocol::certification::APP_LABEL;

pub use ic_certification;

/// The IC's CBOR encoding of a hash tree (as `ws_poll` replies carry it).
pub use crate::hash_tree::encode_tree;

/// Registers (or, with `None`, removes) the root hash of the app's own certified data and
/// updates `certified_data` accordingly. Persisted in stable memory, so the composition is
/// the same after an upgrade even before the app registers again (it should register again
/// once its own tree is rebuilt, if that tree lives in the heap).
pub fn set_app_root_hash(hash: Option<Hash>) {
    crate::runtime::with_state(|s| {
        s.set_app_hash(hash);
        s.certify();
    });
}

/// The app's registered root hash.
pub fn app_root_hash() -> Option<Hash> {
    crate::runtime::with_state(|s| s.app_hash())
}

/// The hash of the `labeled("ws", ...)` subtree.
pub fn ws_labeled_hash() -> Hash {
    crate::runtime::with_state(|s| s.tree.labeled_hash())
}

/// The root hash the runtime puts in `certified_data`.
pub fn certified_root() -> Hash {
    crate::runtime::with_state(|s| s.root_hash())
}

/// Composes a witness of the app's own tree (whose root hash is the registered app hash) with
/// the ws subtree (pruned), so that its root hash is the canister's certified data.
pub fn app_witness(app_tree: HashTree) -> HashTree {
    fork(labeled(APP_LABEL, app_tree), pruned(ws_labeled_hash()))
}

/// The IC data certificate (CBOR), available in non-replicated queries only.
pub fn data_certificate() -> Option<Vec<u8>> {
    crate::env::data_certificate()
}
