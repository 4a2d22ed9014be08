//! Per-client witnesses: the poll reply's hash tree pruned to one client's messages.
//!
//! A poll reply's tree witnesses every message of the page (up to hundreds of clients). Each
//! client must get a tree that proves only its own leaves (`/ws/<client>/<seq>`), with the same
//! root hash. [`crate::verify::prune_tree_for_client`] (the reference, used by tests and
//! simple tools) walks and re-hashes the whole tree for each client, so a page for N clients
//! costs O(N²) work. [`PageWitness`] indexes the tree once (every node's digest, its parent,
//! where each client's leaves are) and then builds each client's witness from its leaves up to
//! the root, collapsing every subtree without a kept leaf into a single pruned hash: O(path
//! length) per client. The result is the same tree as the reference's (tested), so witnesses
//! stay logarithmic in the number of other clients.
//!
//! Gateways cut every client's frame with it (`ic-ws-gateway`'s poller); it lives here, beside
//! the reference, so that protocol knowledge stays in one crate.

use crate::types::ClientId;
use ic_certification::{hash_tree::Hash, HashTree, HashTreeNode};
use std::collections::{HashMap, HashSet};

const NONE: u32 = u32::MAX;

#[derive(Debug)]
enum Node {
    Empty,
    Pruned,
    Leaf(Vec<u8>),
    Fork(u32, u32),
    Labeled(Vec<u8>, u32),
}

/// An indexed poll-reply tree from which per-client witnesses are cut.
#[derive(Debug)]
pub struct PageWitness {
    nodes: Vec<Node>,
    digests: Vec<Hash>,
    parents: Vec<u32>,
    root: u32,
    /// (client, seq) -> index of the `Labeled(seq)` node under `/ws/<client>`.
    leaves: HashMap<(ClientId, u64), u32>,
}

impl PageWitness {
    /// Indexes `tree` (done once per poll reply).
    pub fn new(tree: &HashTree) -> Self {
        let mut w = PageWitness {
            nodes: Vec::new(),
            digests: Vec::new(),
            parents: Vec::new(),
            root: 0,
            leaves: HashMap::new(),
        };
        let mut path: Vec<Vec<u8>> = Vec::new();
        w.root = w.add(tree.as_ref(), &mut path);
        w
    }

    /// The root hash (the canister's certified data).
    pub fn root_hash(&self) -> Hash {
        self.digest(self.root)
    }

    // Indices come from `add`, so every lookup finds its entry; a miss (impossible) gives an
    // empty digest / no node rather than a panic.
    fn digest(&self, idx: u32) -> Hash {
        self.digests.get(idx as usize).copied().unwrap_or_default()
    }

    fn parent(&self, idx: u32) -> u32 {
        self.parents.get(idx as usize).copied().unwrap_or(NONE)
    }

    fn set_parent(&mut self, child: u32, parent: u32) {
        if let Some(p) = self.parents.get_mut(child as usize) {
            *p = parent;
        }
    }

    fn add(&mut self, node: &HashTreeNode, path: &mut Vec<Vec<u8>>) -> u32 {
        let (n, digest) = match node {
            HashTreeNode::Empty() => (Node::Empty, node.digest()),
            HashTreeNode::Pruned(h) => (Node::Pruned, *h),
            HashTreeNode::Leaf(v) => (
                Node::Leaf(v.clone()),
                ic_certification::hash_tree::leaf_hash(v),
            ),
            HashTreeNode::Fork(lr) => {
                let l = self.add(&lr.0, path);
                let r = self.add(&lr.1, path);
                let d = ic_certification::hash_tree::fork_hash(&self.digest(l), &self.digest(r));
                (Node::Fork(l, r), d)
            }
            HashTreeNode::Labeled(label, sub) => {
                path.push(label.as_bytes().to_vec());
                let s = self.add(sub, path);
                let full_path = path.clone();
                path.pop();
                let d =
                    ic_certification::hash_tree::labeled_hash(label.as_bytes(), &self.digest(s));
                let idx = self.nodes.len() as u32;
                if let [ws, client, seq] = full_path.as_slice() {
                    if ws.as_slice() == crate::certification::WS_LABEL {
                        if let (Ok(c), Ok(s)) = (
                            <[u8; 8]>::try_from(client.as_slice()),
                            <[u8; 8]>::try_from(seq.as_slice()),
                        ) {
                            self.leaves
                                .insert((u64::from_be_bytes(c), u64::from_be_bytes(s)), idx);
                        }
                    }
                }
                (Node::Labeled(label.as_bytes().to_vec(), s), d)
            }
        };
        let idx = self.nodes.len() as u32;
        match &n {
            Node::Fork(l, r) => {
                self.set_parent(*l, idx);
                self.set_parent(*r, idx);
            }
            Node::Labeled(_, s) => self.set_parent(*s, idx),
            _ => {}
        }
        self.nodes.push(n);
        self.digests.push(digest);
        self.parents.push(NONE);
        idx
    }

    /// Whether the tree proves the message `(client, seq)` (its leaf is present, not pruned).
    pub fn has(&self, client: ClientId, seq: u64) -> bool {
        self.leaves.contains_key(&(client, seq))
    }

    /// The witness for `client`'s messages `seqs`: every other subtree is one pruned hash.
    /// Sequence numbers the tree does not prove are skipped (the client will reject them).
    pub fn for_client(&self, client: ClientId, seqs: &[u64]) -> HashTree {
        let mut keep: HashSet<u32> = HashSet::new();
        let mut full: HashSet<u32> = HashSet::new();
        for seq in seqs {
            let Some(&idx) = self.leaves.get(&(client, *seq)) else {
                continue;
            };
            full.insert(idx);
            let mut at = idx;
            while at != NONE && keep.insert(at) {
                at = self.parent(at);
            }
        }
        self.build(self.root, &keep, &full)
    }

    fn build(&self, idx: u32, keep: &HashSet<u32>, full: &HashSet<u32>) -> HashTree {
        if !keep.contains(&idx) {
            return ic_certification::pruned(self.digest(idx));
        }
        if full.contains(&idx) {
            return self.clone_subtree(idx);
        }
        match self.nodes.get(idx as usize) {
            Some(Node::Fork(l, r)) => {
                ic_certification::fork(self.build(*l, keep, full), self.build(*r, keep, full))
            }
            Some(Node::Labeled(label, s)) => {
                ic_certification::labeled(label.clone(), self.build(*s, keep, full))
            }
            _ => self.clone_subtree(idx),
        }
    }

    fn clone_subtree(&self, idx: u32) -> HashTree {
        match self.nodes.get(idx as usize) {
            None | Some(Node::Empty) => ic_certification::empty(),
            Some(Node::Pruned) => ic_certification::pruned(self.digest(idx)),
            Some(Node::Leaf(v)) => ic_certification::leaf(v.clone()),
            Some(Node::Fork(l, r)) => {
                ic_certification::fork(self.clone_subtree(*l), self.clone_subtree(*r))
            }
            Some(Node::Labeled(label, s)) => {
                ic_certification::labeled(label.clone(), self.clone_subtree(*s))
            }
        }
    }
}

/// A balanced fork over `nodes` (the shape of the canister's trees).
pub fn balanced_fork(mut nodes: Vec<HashTree>) -> HashTree {
    match nodes.len() {
        0 => ic_certification::empty(),
        1 => nodes.remove(0),
        n => {
            let right = nodes.split_off(n / 2);
            ic_certification::fork(balanced_fork(nodes), balanced_fork(right))
        }
    }
}

/// The tree a poll reply would carry for `messages`: `/ws/<client>/<seq> -> sha256(content)`
/// beside an app subtree, balanced as the canister builds it. For fakes, tests and benchmarks
/// (the canister's own tree is `ic_ws_canister`'s).
pub fn tree_of(messages: &[crate::types::OutboundMessage]) -> HashTree {
    use ic_certification::{fork, labeled, leaf};
    let mut by_client: std::collections::BTreeMap<
        ClientId,
        std::collections::BTreeMap<u64, HashTree>,
    > = Default::default();
    for m in messages {
        by_client.entry(m.client_id).or_default().insert(
            m.seq,
            labeled(
                m.seq.to_be_bytes().to_vec(),
                leaf(crate::certification::content_hash(&m.content).to_vec()),
            ),
        );
    }
    let clients = by_client
        .into_iter()
        .map(|(c, leaves)| {
            labeled(
                c.to_be_bytes().to_vec(),
                balanced_fork(leaves.into_values().collect()),
            )
        })
        .collect();
    fork(
        labeled(b"app".to_vec(), leaf(b"app data".to_vec())),
        labeled(
            crate::certification::WS_LABEL.to_vec(),
            balanced_fork(clients),
        ),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::certification::content_hash;
    use crate::types::OutboundMessage;
    use ic_certification::LookupResult;

    /// `tree_of` over `(client, seq, content)` triples.
    fn tree_of(messages: &[(ClientId, u64, Vec<u8>)]) -> HashTree {
        let messages: Vec<OutboundMessage> = messages
            .iter()
            .map(|(client_id, seq, content)| OutboundMessage {
                client_id: *client_id,
                seq: *seq,
                content: content.clone(),
            })
            .collect();
        super::tree_of(&messages)
    }

    #[test]
    fn witness_matches_the_protocol_pruning_and_stays_small() {
        let mut messages = Vec::new();
        for c in 0..300u64 {
            for s in 0..3u64 {
                messages.push((c * 7, s + 10, format!("m{c}-{s}").into_bytes()));
            }
        }
        let tree = tree_of(&messages);
        let page = PageWitness::new(&tree);
        assert_eq!(page.root_hash(), tree.digest());
        for client in [0u64, 7, 700, 2093] {
            let seqs = [10, 11, 12];
            let mine = page.for_client(client, &seqs);
            let reference = crate::verify::prune_tree_for_client(&tree, client, &seqs);
            assert_eq!(mine.digest(), tree.digest(), "root hash unchanged");
            assert_eq!(reference.digest(), tree.digest());
            for (c, s, content) in &messages {
                let path = crate::message_path(*c, *s);
                let got = matches!(mine.lookup_path(path.iter()), LookupResult::Found(v) if v == content_hash(content));
                assert_eq!(
                    got,
                    *c == client,
                    "client {c} seq {s} visible only to its owner"
                );
            }
            assert_eq!(
                mine, reference,
                "same witness as the protocol's reference pruning"
            );
            // 3 leaves + one pruned hash per level of a 300-client balanced tree: O(log n).
            let mine_len = serde_cbor::to_vec(&mine).unwrap().len();
            assert!(mine_len < 1_000, "witness of {mine_len} bytes");
        }
    }

    #[test]
    fn a_subset_of_seqs_proves_only_those() {
        let messages: Vec<_> = (0..5u64).map(|s| (1u64, s, vec![s as u8])).collect();
        let tree = tree_of(&messages);
        let page = PageWitness::new(&tree);
        let w = page.for_client(1, &[2, 3]);
        assert_eq!(w.digest(), tree.digest());
        for s in 0..5u64 {
            let found = matches!(
                w.lookup_path(crate::message_path(1, s).iter()),
                LookupResult::Found(_)
            );
            assert_eq!(found, s == 2 || s == 3);
        }
        assert!(page.has(1, 4));
        assert!(!page.has(2, 0));
    }
}
