//! The certified tree of retained messages, `W` in `labeled("ws", W)`, with cached hashes.
//!
//! Clients (Rust and JS) and the gateway only ever *look up* `/ws/<client BE>/<seq BE>` in the
//! tree a poll returns and compare its root hash with `certified_data`; any well-formed IC
//! hash tree (labels in increasing order left to right) with those lookups is valid. This
//! module chooses shapes that make the runtime's updates cheap instead of a general
//! red-black tree that re-hashes two root paths on every insert:
//!
//! - **Per client** the retained sequence numbers are always one contiguous range
//!   `first..end` (appended at the right by `send`, removed at the left by acks). The range
//!   is cut into maximal aligned blocks `[k 2^L, (k+1) 2^L)` (at most two per level); a block
//!   is a perfect binary tree of forks over the `labeled(seq BE, leaf(content hash))` nodes,
//!   and the client's subtree is the left fold `fork(fork(B0, B1), B2)...` of its blocks.
//!   Full blocks never change once complete, so they are hashed once (one fork per append,
//!   amortised), and so are the fold prefixes that did not change: an append costs the leaf
//!   hashes plus O(1) forks amortised. An ack re-folds O(log n) blocks.
//! - **Across clients** the subtrees `labeled(client BE, subtree)` sit in a crit-bit
//!   (binary Patricia) shape over the client id bits: a node is `fork(left, right)` at the
//!   highest bit where its smallest and largest client ids differ. Node hashes are cached
//!   by `(bit, prefix)`; a change to a client invalidates only the nodes whose block contains
//!   it, and hashes are recomputed lazily, once, when the root is next asked for (at the end
//!   of the runtime call, see `State::certify`).
//!
//! Both shapes are functions of the retained set only (not of the order of operations), so
//! the root hash after an upgrade's rebuild is the one before it. A client with no retained
//! message has no subtree at all.

use ic_certification::{empty, fork, fork_hash, labeled, labeled_hash, leaf, leaf_hash, pruned};
use ic_certification::{Hash, HashTree};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use ic_ws_protocol::ClientId;

/// Hash of the empty tree.
fn empty_hash() -> Hash {
    empty().digest()
}

/// `labeled(seq BE, leaf(content hash))`.
fn message_node_hash(seq: u64, content_hash: &Hash) -> Hash {
    labeled_hash(&seq.to_be_bytes(), &leaf_hash(content_hash))
}

/// One client's retained messages `first..first + leaves.len()`.
#[derive(Default, Clone, Debug)]
struct SeqTree {
    first: u64,
    /// Content hashes (for witnesses), in sequence order.
    contents: VecDeque<Hash>,
    /// `levels[L]`: hashes of the complete aligned blocks of `2^L` messages, the first one
    /// being block number `base[L]`. Level 0 holds the message nodes.
    levels: Vec<VecDeque<Hash>>,
    base: Vec<u64>,
    /// The last computed fold: the blocks and the fold hash up to each of them.
    folds: Vec<((u8, u64), Hash)>,
}

impl SeqTree {
    fn end(&self) -> u64 {
        self.first + self.contents.len() as u64
    }

    fn is_empty(&self) -> bool {
        self.contents.is_empty()
    }

    /// Appends `seq` (must be `end()`, or anything when empty).
    fn push(&mut self, seq: u64, content_hash: Hash) {
        if self.contents.is_empty() {
            *self = SeqTree {
                first: seq,
                ..SeqTree::default()
            };
        }
        self.contents.push_back(content_hash);
        self.push_block(0, seq, message_node_hash(seq, &content_hash));
        // Complete every aligned block that `seq` ends.
        let mut level = 0usize;
        let mut k = seq;
        while k & 1 == 1 && level < 63 {
            let parent = k >> 1;
            // The parent block is entirely retained only if its first message is not
            // before `first`; then both children are complete, hence stored.
            if (parent << (level + 1)) < self.first {
                break;
            }
            let Some(idx) = (parent << 1).checked_sub(self.base[level]) else {
                break;
            };
            let lv = &self.levels[level];
            let (Some(l), Some(r)) = (lv.get(idx as usize), lv.get(idx as usize + 1)) else {
                break;
            };
            let h = fork_hash(l, r);
            level += 1;
            self.push_block(level, parent, h);
            k = parent;
        }
    }

    fn push_block(&mut self, level: usize, k: u64, hash: Hash) {
        while self.levels.len() <= level {
            self.levels.push(VecDeque::new());
            self.base.push(0);
        }
        if self.levels[level].is_empty() {
            self.base[level] = k;
        }
        self.levels[level].push_back(hash);
    }

    /// Removes the first message.
    fn pop_front(&mut self) {
        if self.contents.pop_front().is_none() {
            return;
        }
        let old = self.first;
        self.first += 1;
        for level in 0..self.levels.len() {
            if self.levels[level].is_empty() || self.base[level] << level != old {
                // Blocks at higher levels that start at `old` exist only if this one does.
                if level > 0 {
                    break;
                }
                continue;
            }
            self.levels[level].pop_front();
            self.base[level] += 1;
        }
    }

    /// The maximal aligned blocks covering `first..end`, left to right.
    fn blocks(&self) -> Vec<(u8, u64)> {
        let mut out = Vec::new();
        let (mut a, end) = (self.first, self.end());
        while a < end {
            let mut level = a.trailing_zeros().min(63);
            while level > 0 && end - a < (1u64 << level) {
                level -= 1;
            }
            out.push((level as u8, a >> level));
            a += 1u64 << level;
        }
        out
    }

    fn block_hash(&self, (level, k): (u8, u64)) -> Hash {
        let level = level as usize;
        // Blocks of `blocks()` are complete, hence stored; the fallback keeps a logic error
        // from panicking (it would show as a root mismatch at the client, not a trap).
        self.levels
            .get(level)
            .and_then(|lv| lv.get(k.wrapping_sub(self.base[level]) as usize))
            .copied()
            .unwrap_or_default()
    }

    /// The subtree hash, reusing the unchanged prefix of the last fold.
    fn root(&mut self) -> Hash {
        let blocks = self.blocks();
        let keep = self
            .folds
            .iter()
            .zip(&blocks)
            .take_while(|(f, b)| f.0 == **b)
            .count();
        self.folds.truncate(keep);
        for &b in &blocks[keep..] {
            let h = self.block_hash(b);
            let acc = match self.folds.last() {
                None => h,
                Some((_, prev)) => fork_hash(prev, &h),
            };
            self.folds.push((b, acc));
        }
        self.folds.last().map(|f| f.1).unwrap_or_else(empty_hash)
    }

    /// Witness revealing the messages `lo..=hi` (clipped to what is retained).
    fn witness(&self, lo: u64, hi: u64) -> HashTree {
        let blocks = self.blocks();
        let mut acc: Option<(HashTree, Hash)> = None;
        for b in blocks {
            let h = self.block_hash(b);
            let w = self.block_witness(b, lo, hi);
            acc = Some(match acc {
                None => (w, h),
                Some((t, prev)) => {
                    let joined = fork_hash(&prev, &h);
                    // Collapse a fold prefix with nothing revealed into one pruned hash.
                    let t = if is_pruned(&t) && is_pruned(&w) {
                        pruned(joined)
                    } else {
                        fork(t, w)
                    };
                    (t, joined)
                }
            });
        }
        acc.map(|(t, _)| t).unwrap_or_else(empty)
    }

    fn block_witness(&self, (level, k): (u8, u64), lo: u64, hi: u64) -> HashTree {
        let start = k << level;
        let last = start + ((1u64 << level) - 1);
        if last < lo || start > hi {
            return pruned(self.block_hash((level, k)));
        }
        if level == 0 {
            let content = self
                .contents
                .get((start - self.first) as usize)
                .copied()
                .unwrap_or_default();
            return labeled(start.to_be_bytes().to_vec(), leaf(content.to_vec()));
        }
        fork(
            self.block_witness((level - 1, k << 1), lo, hi),
            self.block_witness((level - 1, (k << 1) | 1), lo, hi),
        )
    }
}

fn is_pruned(t: &HashTree) -> bool {
    matches!(t.as_ref(), ic_certification::HashTreeNode::Pruned(_))
}

/// A cheap hasher for `(bit, prefix)` node keys (the keys are not attacker-chosen: client
/// ids are assigned by the runtime).
#[derive(Default)]
struct NodeHasher(u64);

impl Hasher for NodeHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type NodeCache = HashMap<(u8, u64), Hash, BuildHasherDefault<NodeHasher>>;

/// One client: its messages and the cached `labeled(client BE, subtree)` hash.
#[derive(Default, Clone, Debug)]
struct ClientEntry {
    seqs: SeqTree,
    node_hash: Hash,
}

/// The heap tree of retained messages: client -> seq -> content hash.
#[derive(Default)]
pub(crate) struct WsTree {
    clients: BTreeMap<ClientId, ClientEntry>,
    /// Crit-bit node hashes by `(bit count, id >> bit count)`, valid for nodes not
    /// containing a dirty client.
    nodes: NodeCache,
    /// Clients changed since the root was last computed.
    dirty: Vec<ClientId>,
    root: Option<Hash>,
}

impl WsTree {
    /// Retains message `seq` of `client`. Sequence numbers of a client must be appended in
    /// order (`seq` = previous + 1); a gap starts the client's range anew (never happens in
    /// the runtime, whose sequence numbers are contiguous).
    pub(crate) fn insert(&mut self, client: ClientId, seq: u64, hash: Hash) {
        let e = self.clients.entry(client).or_default();
        if !e.seqs.is_empty() && seq != e.seqs.end() {
            e.seqs = SeqTree::default();
        }
        e.seqs.push(seq, hash);
        self.mark(client);
    }

    /// Drops message `seq` of `client`; only the client's first retained message can be
    /// dropped (acks release from the left), anything else is ignored.
    pub(crate) fn remove(&mut self, client: ClientId, seq: u64) {
        if let Some(e) = self.clients.get_mut(&client) {
            if !e.seqs.is_empty() && e.seqs.first == seq {
                e.seqs.pop_front();
                self.mark(client);
            }
        }
    }

    pub(crate) fn remove_client(&mut self, client: ClientId) {
        if self.clients.remove(&client).is_some() {
            self.mark(client);
        }
    }

    fn mark(&mut self, client: ClientId) {
        if self.dirty.last() != Some(&client) {
            self.dirty.push(client);
        }
        self.root = None;
    }

    /// Hash of `W` (recomputes what changed since the last call).
    pub(crate) fn root_hash(&mut self) -> Hash {
        if let Some(r) = self.root {
            return r;
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for &c in &dirty {
            let remove = match self.clients.get_mut(&c) {
                Some(e) if !e.seqs.is_empty() => {
                    e.node_hash = labeled_hash(&c.to_be_bytes(), &e.seqs.root());
                    false
                }
                Some(_) => true,
                None => false,
            };
            if remove {
                self.clients.remove(&c);
            }
        }
        // Invalidate every cached node whose block contains a changed client (each
        // distinct prefix once).
        for bits in 1..=64u32 {
            let mut last = None;
            for &c in &dirty {
                let p = c.checked_shr(bits).unwrap_or(0);
                if last != Some(p) {
                    self.nodes.remove(&(bits as u8, p));
                    last = Some(p);
                }
            }
        }
        let r = match (self.clients.keys().next(), self.clients.keys().next_back()) {
            (Some(&lo), Some(&hi)) => self.node(lo, hi),
            _ => empty_hash(),
        };
        self.root = Some(r);
        r
    }

    /// Hash of the crit-bit node over the clients in `lo..=hi`, the smallest and largest
    /// retained ids of a block (caching split nodes).
    fn node(&mut self, lo: ClientId, hi: ClientId) -> Hash {
        if lo == hi {
            return self
                .clients
                .get(&lo)
                .map(|e| e.node_hash)
                .unwrap_or_default();
        }
        let bits = 64 - (lo ^ hi).leading_zeros();
        let key = (bits as u8, lo.checked_shr(bits).unwrap_or(0));
        if let Some(h) = self.nodes.get(&key) {
            return *h;
        }
        let (l, r) = self.children(lo, hi, bits);
        let h = fork_hash(&self.node(l.0, l.1), &self.node(r.0, r.1));
        self.nodes.insert(key, h);
        h
    }

    /// The (smallest, largest) ids of the two halves of the split node over `lo..=hi`.
    fn children(&self, lo: ClientId, hi: ClientId, bits: u32) -> ((u64, u64), (u64, u64)) {
        // Ids below `mid` have the split bit clear.
        let mid = (hi >> (bits - 1)) << (bits - 1);
        let left_hi = self
            .clients
            .range(..mid)
            .next_back()
            .map_or(lo, |(k, _)| *k);
        let right_lo = self.clients.range(mid..).next().map_or(hi, |(k, _)| *k);
        ((lo, left_hi), (right_lo, hi))
    }

    /// Hash of the `labeled("ws", W)` subtree.
    pub(crate) fn labeled_hash(&mut self) -> Hash {
        labeled_hash(ic_ws_protocol::certification::WS_LABEL, &self.root_hash())
    }

    /// Witness of every `(client, first..=last)` range, as `W` (not labeled). Call after
    /// [`WsTree::root_hash`] has seen the latest change (the runtime certifies at the end of
    /// every update); nodes missing from the cache are recomputed without caching.
    pub(crate) fn witness(&self, ranges: &[(ClientId, u64, u64)]) -> HashTree {
        match (self.clients.keys().next(), self.clients.keys().next_back()) {
            (Some(&lo), Some(&hi)) => self.node_witness(lo, hi, ranges),
            _ => empty(),
        }
    }

    fn node_hash_ro(&self, lo: ClientId, hi: ClientId) -> Hash {
        if lo == hi {
            return self
                .clients
                .get(&lo)
                .map(|e| e.node_hash)
                .unwrap_or_default();
        }
        let bits = 64 - (lo ^ hi).leading_zeros();
        if let Some(h) = self
            .nodes
            .get(&(bits as u8, lo.checked_shr(bits).unwrap_or(0)))
        {
            return *h;
        }
        let (l, r) = self.children(lo, hi, bits);
        fork_hash(&self.node_hash_ro(l.0, l.1), &self.node_hash_ro(r.0, r.1))
    }

    fn node_witness(
        &self,
        lo: ClientId,
        hi: ClientId,
        ranges: &[(ClientId, u64, u64)],
    ) -> HashTree {
        let wanted: Vec<&(ClientId, u64, u64)> =
            ranges.iter().filter(|r| r.0 >= lo && r.0 <= hi).collect();
        if wanted.is_empty() {
            return pruned(self.node_hash_ro(lo, hi));
        }
        if lo == hi {
            let Some(e) = self.clients.get(&lo) else {
                return pruned(Hash::default());
            };
            let (first, last) = wanted
                .iter()
                .fold((u64::MAX, 0), |(a, b), r| (a.min(r.1), b.max(r.2)));
            return labeled(lo.to_be_bytes().to_vec(), e.seqs.witness(first, last));
        }
        let bits = 64 - (lo ^ hi).leading_zeros();
        let (l, r) = self.children(lo, hi, bits);
        fork(
            self.node_witness(l.0, l.1, ranges),
            self.node_witness(r.0, r.1, ranges),
        )
    }
}

#[cfg(test)]
mod tests {
    //! The cached tree against a from-scratch model over random operation sequences: same
    //! root hash as a direct construction of the documented shape, lookups of every retained
    //! message found with its hash, nothing else found, witnesses with the root hash.
    use super::*;
    use ic_certification::{HashTreeNode, LookupResult};
    use sha2::{Digest, Sha256};

    /// Deterministic pseudo-random numbers.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
    }

    fn content(c: u64, s: u64) -> Hash {
        Sha256::digest([c.to_be_bytes(), s.to_be_bytes()].concat()).into()
    }

    /// The model: client -> contiguous (first, end).
    type Model = BTreeMap<u64, (u64, u64)>;

    /// Direct (uncached) construction of the documented shape as a full `HashTree`.
    fn reference_tree(model: &Model) -> HashTree {
        fn seq_block(c: u64, level: u8, k: u64) -> HashTree {
            if level == 0 {
                return labeled(k.to_be_bytes().to_vec(), leaf(content(c, k).to_vec()));
            }
            fork(
                seq_block(c, level - 1, k << 1),
                seq_block(c, level - 1, (k << 1) | 1),
            )
        }
        fn client_tree(c: u64, first: u64, end: u64) -> HashTree {
            let t = SeqTree {
                first,
                contents: (first..end).map(|s| content(c, s)).collect(),
                ..SeqTree::default()
            };
            let mut acc: Option<HashTree> = None;
            for (l, k) in t.blocks() {
                let b = seq_block(c, l, k);
                acc = Some(match acc {
                    None => b,
                    Some(a) => fork(a, b),
                });
            }
            labeled(c.to_be_bytes().to_vec(), acc.unwrap())
        }
        fn crit(ids: &[(u64, (u64, u64))]) -> HashTree {
            if ids.len() == 1 {
                let (c, (f, e)) = ids[0];
                return client_tree(c, f, e);
            }
            let (lo, hi) = (ids[0].0, ids[ids.len() - 1].0);
            let bit = 63 - (lo ^ hi).leading_zeros();
            let split = ids.iter().position(|(c, _)| c >> bit & 1 == 1).unwrap();
            fork(crit(&ids[..split]), crit(&ids[split..]))
        }
        let ids: Vec<(u64, (u64, u64))> = model
            .iter()
            .filter(|(_, (f, e))| f < e)
            .map(|(c, r)| (*c, *r))
            .collect();
        if ids.is_empty() {
            empty()
        } else {
            crit(&ids)
        }
    }

    fn check(tree: &mut WsTree, model: &Model, rng: &mut Rng) {
        let reference = reference_tree(model);
        assert_eq!(tree.root_hash(), reference.digest());
        // Labels must be in strictly increasing order in every fork chain (well-formed).
        fn labels(t: &HashTreeNode, out: &mut Vec<Vec<u8>>) {
            match t {
                HashTreeNode::Fork(lr) => {
                    labels(&lr.0, out);
                    labels(&lr.1, out);
                }
                HashTreeNode::Labeled(l, _) => out.push(l.as_bytes().to_vec()),
                _ => {}
            }
        }
        let mut ls = Vec::new();
        labels(reference.as_ref(), &mut ls);
        assert!(ls.windows(2).all(|w| w[0] < w[1]));
        // A witness of a few random ranges: root hash, and exactly the wanted lookups.
        let live: Vec<(u64, u64, u64)> = model
            .iter()
            .filter(|(_, (f, e))| f < e)
            .map(|(c, (f, e))| (*c, *f, *e))
            .collect();
        let mut ranges = Vec::new();
        for _ in 0..3 {
            if live.is_empty() {
                break;
            }
            let (c, f, e) = live[rng.next() as usize % live.len()];
            if ranges.iter().any(|r: &(u64, u64, u64)| r.0 == c) {
                continue;
            }
            let a = f + rng.next() % (e - f);
            let b = a + rng.next() % (e - a);
            ranges.push((c, a, b));
        }
        ranges.sort_unstable();
        let w = tree.witness(&ranges);
        assert_eq!(w.digest(), reference.digest());
        for &(c, f, e) in &live {
            for s in f.saturating_sub(1)..e + 1 {
                let path = [c.to_be_bytes().to_vec(), s.to_be_bytes().to_vec()];
                let wanted = ranges.iter().any(|r| r.0 == c && r.1 <= s && s <= r.2);
                match w.lookup_path(path.iter()) {
                    LookupResult::Found(v) => {
                        assert!(wanted, "{c}/{s} revealed but not asked for");
                        assert_eq!(v, content(c, s).as_slice());
                    }
                    _ => assert!(!wanted, "{c}/{s} asked for but not found"),
                }
                if s >= f && s < e {
                    assert_eq!(
                        reference.lookup_path(path.iter()),
                        LookupResult::Found(content(c, s).as_slice())
                    );
                }
            }
        }
    }

    #[test]
    fn random_operations_match_the_reference_shape() {
        for seed in 0..12u64 {
            let mut rng = Rng(seed);
            let mut tree = WsTree::default();
            let mut model = Model::new();
            let spread = [4u64, 40, 1 << 40][seed as usize % 3];
            for step in 0..400 {
                let c = rng.next() % 6 * spread + seed;
                match rng.next() % 10 {
                    0..=5 => {
                        let r = model.entry(c).or_insert((0, 0));
                        if r.0 == r.1 {
                            *r = (r.1, r.1);
                        }
                        for _ in 0..=rng.next() % 3 {
                            tree.insert(c, r.1, content(c, r.1));
                            r.1 += 1;
                        }
                    }
                    6..=8 => {
                        if let Some(r) = model.get_mut(&c) {
                            for _ in 0..=rng.next() % 4 {
                                if r.0 < r.1 {
                                    tree.remove(c, r.0);
                                    r.0 += 1;
                                }
                            }
                        }
                    }
                    _ => {
                        tree.remove_client(c);
                        model.remove(&c);
                    }
                }
                if step % 7 == 0 || step > 390 {
                    check(&mut tree, &model, &mut rng);
                }
            }
            // A rebuild from the retained set gives the same root (upgrade).
            let mut rebuilt = WsTree::default();
            for (&c, &(f, e)) in &model {
                for s in f..e {
                    rebuilt.insert(c, s, content(c, s));
                }
            }
            assert_eq!(rebuilt.root_hash(), tree.root_hash());
        }
    }

    #[test]
    fn empty_tree_and_emptied_client() {
        let mut t = WsTree::default();
        assert_eq!(t.root_hash(), empty_hash());
        t.insert(5, 0, content(5, 0));
        assert_ne!(t.root_hash(), empty_hash());
        t.remove(5, 0);
        assert_eq!(t.root_hash(), empty_hash());
        // Removing anything but the first retained message is ignored.
        t.insert(5, 1, content(5, 1));
        t.insert(5, 2, content(5, 2));
        let before = t.root_hash();
        t.remove(5, 2);
        assert_eq!(t.root_hash(), before);
    }
}
