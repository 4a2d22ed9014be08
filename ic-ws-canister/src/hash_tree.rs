//! Pure hash-tree code below the runtime's state: the `ws` witness, the composition of the
//! app's certified hash with the ws subtree, and the IC's CBOR encoding of a tree. The
//! app-facing facade that reads the state is [`crate::certification`].

use ic_certification::{
    fork, fork_hash, labeled, labeled_hash, pruned, Hash, HashTree, HashTreeNode,
};
use ic_ws_protocol::certification::{APP_LABEL, WS_LABEL};
use ic_ws_protocol::ClientId;

pub(crate) use crate::ws_tree::WsTree;

/// Witness of every `(client, first..=last)` range, as the `labeled("ws", ...)` subtree.
pub(crate) fn ws_witness(tree: &WsTree, ranges: &[(ClientId, u64, u64)]) -> HashTree {
    labeled(WS_LABEL, tree.witness(ranges))
}

/// The root hash given a ws subtree hash and the app's hash.
pub(crate) fn compose_root(ws_labeled: Hash, app: Option<Hash>) -> Hash {
    match app {
        None => ws_labeled,
        Some(a) => fork_hash(&labeled_hash(APP_LABEL, &a), &ws_labeled),
    }
}

/// The full tree (for `ws_poll`) given the ws witness and the app's hash.
pub(crate) fn compose_tree(ws: HashTree, app: Option<Hash>) -> HashTree {
    match app {
        None => ws,
        Some(a) => fork(pruned(labeled_hash(APP_LABEL, &a)), ws),
    }
}

/// Serializes a hash tree in the IC's CBOR encoding (as `ws_poll` does, and as clients and
/// agents decode it).
pub fn encode_tree(tree: &HashTree) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    encode_node(tree.as_ref(), &mut out);
    out
}

fn cbor_head(major: u8, len: u64, out: &mut Vec<u8>) {
    let m = major << 5;
    if len < 24 {
        out.push(m | len as u8);
    } else if len <= 0xff {
        out.push(m | 24);
        out.push(len as u8);
    } else if len <= 0xffff {
        out.push(m | 25);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else if len <= 0xffff_ffff {
        out.push(m | 26);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&len.to_be_bytes());
    }
}

fn cbor_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    cbor_head(2, bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

fn encode_node(node: &HashTreeNode, out: &mut Vec<u8>) {
    match node {
        HashTreeNode::Empty() => {
            cbor_head(4, 1, out);
            cbor_head(0, 0, out);
        }
        HashTreeNode::Fork(lr) => {
            cbor_head(4, 3, out);
            cbor_head(0, 1, out);
            encode_node(&lr.0, out);
            encode_node(&lr.1, out);
        }
        HashTreeNode::Labeled(label, sub) => {
            cbor_head(4, 3, out);
            cbor_head(0, 2, out);
            cbor_bytes(label.as_bytes(), out);
            encode_node(sub, out);
        }
        HashTreeNode::Leaf(v) => {
            cbor_head(4, 2, out);
            cbor_head(0, 3, out);
            cbor_bytes(v, out);
        }
        HashTreeNode::Pruned(h) => {
            cbor_head(4, 2, out);
            cbor_head(0, 4, out);
            cbor_bytes(h, out);
        }
    }
}
