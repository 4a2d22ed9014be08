//! Stable-memory records and their byte layouts.
//!
//! Every structure the runtime persists lives in its own virtual memory (see
//! [`crate::memory`]) as an ic-stable-structures map or cell, except the retained outbound
//! messages, which are chunks of the arena ([`crate::arena`]) in the layout defined here
//! ([`OutEntry::to_chunk`]). Records use small fixed layouts
//! (big-endian integers) rather than candid: they are written on every `send`, and a compact
//! layout keeps both instructions and stable-memory overhead per message low. These bytes are
//! only ever written by this crate; decoding is still defensive (missing bytes read as zero)
//! so that no stored value can make the runtime panic.

use ic_stable_structures::storable::Bound;
use ic_stable_structures::Storable;
use std::borrow::Cow;

/// Reads big-endian integers from a byte slice; past the end it yields zeros.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some(src) = self.bytes.get(self.pos..self.pos + N) {
            out.copy_from_slice(src);
        }
        self.pos += N;
        out
    }
    pub(crate) fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    pub(crate) fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.take())
    }
    pub(crate) fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.take())
    }
    pub(crate) fn array<const N: usize>(&mut self) -> [u8; N] {
        self.take()
    }
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let rest = self.bytes.get(self.pos..).unwrap_or(&[]);
        self.pos = self.bytes.len();
        rest
    }
}

const FLAG_ATTACHED: u8 = 1;
const FLAG_CLOSED: u8 = 2;

/// One session.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub(crate) struct ClientRecord {
    pub key: [u8; 32],
    /// Internal id of the gateway it is (or was last) attached to.
    pub gateway: u32,
    pub attached: bool,
    pub closed: bool,
    pub next_inbound_seq: u64,
    pub next_outbound_seq: u64,
    /// Oldest retained outbound sequence number (== next_outbound_seq when none retained).
    pub first_retained_seq: u64,
    pub queued_messages: u64,
    pub queued_bytes: u64,
    pub last_open_ts: u64,
    pub opened_at_ns: u64,
    pub last_activity_ns: u64,
    pub closed_at_ns: u64,
    /// Arena address of the oldest retained message (0 = none; see [`crate::arena`]).
    pub head: u64,
    /// Arena address of the newest retained message (0 = none).
    pub tail: u64,
}

const CLIENT_RECORD_LEN: usize = 32 + 4 + 1 + 8 * 11;

impl Storable for ClientRecord {
    fn to_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.clone().into_bytes())
    }
    fn into_bytes(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(CLIENT_RECORD_LEN);
        out.extend_from_slice(&self.key);
        out.extend_from_slice(&self.gateway.to_be_bytes());
        let flags = if self.attached { FLAG_ATTACHED } else { 0 }
            | if self.closed { FLAG_CLOSED } else { 0 };
        out.push(flags);
        for v in [
            self.next_inbound_seq,
            self.next_outbound_seq,
            self.first_retained_seq,
            self.queued_messages,
            self.queued_bytes,
            self.last_open_ts,
            self.opened_at_ns,
            self.last_activity_ns,
            self.closed_at_ns,
            self.head,
            self.tail,
        ] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out
    }
    fn from_bytes(bytes: Cow<'_, [u8]>) -> Self {
        let mut r = Reader::new(&bytes);
        let key = r.array();
        let gateway = r.u32();
        let flags = r.u8();
        ClientRecord {
            key,
            gateway,
            attached: flags & FLAG_ATTACHED != 0,
            closed: flags & FLAG_CLOSED != 0,
            next_inbound_seq: r.u64(),
            next_outbound_seq: r.u64(),
            first_retained_seq: r.u64(),
            queued_messages: r.u64(),
            queued_bytes: r.u64(),
            last_open_ts: r.u64(),
            opened_at_ns: r.u64(),
            last_activity_ns: r.u64(),
            closed_at_ns: r.u64(),
            head: r.u64(),
            tail: r.u64(),
        }
    }
    const BOUND: Bound = Bound::Bounded {
        max_size: CLIENT_RECORD_LEN as u32,
        is_fixed_size: true,
    };
}

/// Per session key: the newest accepted open timestamp (replay protection) and how many
/// sessions (open or closed but not yet deleted) use the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct KeyRecord {
    pub last_open_ts: u64,
    pub sessions: u32,
}

impl Storable for KeyRecord {
    fn to_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.into_bytes())
    }
    fn into_bytes(self) -> Vec<u8> {
        let mut out = self.last_open_ts.to_be_bytes().to_vec();
        out.extend_from_slice(&self.sessions.to_be_bytes());
        out
    }
    fn from_bytes(bytes: Cow<'_, [u8]>) -> Self {
        let mut r = Reader::new(&bytes);
        KeyRecord {
            last_open_ts: r.u64(),
            sessions: r.u32(),
        }
    }
    const BOUND: Bound = Bound::Bounded {
        max_size: 12,
        is_fixed_size: true,
    };
}

/// Per gateway principal: its internal id and the sessions attached to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct GatewayRecord {
    pub id: u32,
    pub sessions: u64,
}

impl Storable for GatewayRecord {
    fn to_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.into_bytes())
    }
    fn into_bytes(self) -> Vec<u8> {
        let mut out = self.id.to_be_bytes().to_vec();
        out.extend_from_slice(&self.sessions.to_be_bytes());
        out
    }
    fn from_bytes(bytes: Cow<'_, [u8]>) -> Self {
        let mut r = Reader::new(&bytes);
        GatewayRecord {
            id: r.u32(),
            sessions: r.u64(),
        }
    }
    const BOUND: Bound = Bound::Bounded {
        max_size: 12,
        is_fixed_size: true,
    };
}

/// `log_idx` of a message that is in no gateway's delivery log (session detached).
pub(crate) const NOT_LOGGED: u64 = u64::MAX;

/// A retained outbound message. The certified `content` (candid of `OutboundContent`) is
/// rebuilt from this on demand; only shared (published) contents are stored whole, once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OutEntry {
    /// Position in the attached gateway's delivery log, or [`NOT_LOGGED`].
    pub log_idx: u64,
    /// SHA-256 of the certified content, stored with the message so that the post-upgrade
    /// rebuild of the certified tree reads 76 bytes per message instead of re-encoding and
    /// re-hashing its content. `None` only in chunks written before it was stored
    /// ([`FLAG_HASH`] clear); those are re-hashed.
    pub hash: Option<[u8; 32]>,
    pub body: OutBody,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum OutBody {
    /// A direct `send`: timestamp and the app's candid payload.
    App { ts: u64, payload: Vec<u8> },
    /// A `publish`: the shared content `pid` of `len` payload bytes.
    Shared { pid: u64, len: u32 },
    /// A runtime message (`Opened`, `Closed`): its whole certified content, encoded once
    /// when it is queued (there is one or two per session, and re-encoding them with candid
    /// on every poll cost more than all the rest of a poll).
    Control { content: Vec<u8> },
}

impl OutEntry {
    /// Bytes counted against the session's `max_queued_bytes` (app payload bytes only).
    pub(crate) fn counted_bytes(&self) -> u64 {
        match &self.body {
            OutBody::App { payload, .. } => payload.len() as u64,
            OutBody::Shared { len, .. } => u64::from(*len),
            OutBody::Control { .. } => 0,
        }
    }
}

/// Bytes of a message chunk's fixed header:
/// `class u16, tag u8, flag u8, body len u32, next u64, log_idx u64, ts u64`; then, if
/// `flag` has [`FLAG_HASH`], the 32-byte content hash; then the body.
pub(crate) const CHUNK_HEADER: usize = 32;
/// `flag` bit: the content hash follows the header.
pub(crate) const FLAG_HASH: u8 = 1;
/// Bytes of the stored content hash.
const HASH_LEN: usize = 32;
/// Header, hash and the fixed body of a `Shared` message: enough to release any message and
/// to rebuild its tree entry.
pub(crate) const CHUNK_PEEK: usize = CHUNK_HEADER + HASH_LEN + 12;
/// Offset of `next` (the session's next message) in a chunk.
pub(crate) const CHUNK_NEXT: u64 = 8;
/// Offset of `log_idx` in a chunk.
pub(crate) const CHUNK_LOG_IDX: u64 = 16;

const TAG_APP: u8 = 0;
const TAG_SHARED: u8 = 1;
const TAG_CONTROL: u8 = 2;

impl OutEntry {
    /// The chunk bytes of this message (the first two, the size class, are the arena's).
    pub(crate) fn to_chunk(&self, next: u64) -> Vec<u8> {
        let flag = if self.hash.is_some() { FLAG_HASH } else { 0 };
        let (tag, ts) = match &self.body {
            OutBody::App { ts, .. } => (TAG_APP, *ts),
            OutBody::Shared { .. } => (TAG_SHARED, 0),
            OutBody::Control { .. } => (TAG_CONTROL, 0),
        };
        let body_len = match &self.body {
            OutBody::App { payload, .. } => payload.len(),
            OutBody::Shared { .. } => 12,
            OutBody::Control { content } => content.len(),
        };
        let mut out = Vec::with_capacity(CHUNK_HEADER + HASH_LEN + body_len);
        out.extend_from_slice(&[0, 0, tag, flag]);
        out.extend_from_slice(&(body_len as u32).to_be_bytes());
        out.extend_from_slice(&next.to_be_bytes());
        out.extend_from_slice(&self.log_idx.to_be_bytes());
        out.extend_from_slice(&ts.to_be_bytes());
        if let Some(h) = &self.hash {
            out.extend_from_slice(h);
        }
        match &self.body {
            OutBody::App { payload, .. } => out.extend_from_slice(payload),
            OutBody::Shared { pid, len } => {
                out.extend_from_slice(&pid.to_be_bytes());
                out.extend_from_slice(&len.to_be_bytes());
            }
            OutBody::Control { content } => out.extend_from_slice(content),
        }
        out
    }

    /// Decodes a chunk (header + body); returns `next` and the message.
    pub(crate) fn from_chunk(bytes: &[u8]) -> (u64, OutEntry) {
        let head = ChunkHead::parse(bytes);
        let body = bytes.get(head.body_offset()..).unwrap_or(&[]);
        let body = body.get(..head.body_len as usize).unwrap_or(body);
        let mut r = Reader::new(body);
        let body = match head.tag {
            TAG_SHARED => OutBody::Shared {
                pid: r.u64(),
                len: r.u32(),
            },
            TAG_CONTROL => OutBody::Control {
                content: body.to_vec(),
            },
            _ => OutBody::App {
                ts: head.ts,
                payload: body.to_vec(),
            },
        };
        (
            head.next,
            OutEntry {
                log_idx: head.log_idx,
                hash: head.hash,
                body,
            },
        )
    }
}

/// The fixed part of a chunk: what releasing a message needs (first [`CHUNK_PEEK`] bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChunkHead {
    pub tag: u8,
    pub flag: u8,
    pub body_len: u32,
    pub next: u64,
    pub log_idx: u64,
    pub ts: u64,
    /// The stored content hash ([`FLAG_HASH`]).
    pub hash: Option<[u8; 32]>,
    /// `(pid, len)` of a `Shared` message.
    pub shared: Option<(u64, u32)>,
}

impl ChunkHead {
    pub(crate) fn parse(bytes: &[u8]) -> ChunkHead {
        let mut r = Reader::new(bytes);
        let _class = r.array::<2>();
        let tag = r.u8();
        let flag = r.u8();
        let body_len = r.u32();
        let next = r.u64();
        let log_idx = r.u64();
        let ts = r.u64();
        let hash = (flag & FLAG_HASH != 0).then(|| r.array::<HASH_LEN>());
        let shared = (tag == TAG_SHARED).then(|| (r.u64(), r.u32()));
        ChunkHead {
            tag,
            flag,
            body_len,
            next,
            log_idx,
            ts,
            hash,
            shared,
        }
    }

    /// Where the body starts in the chunk.
    pub(crate) fn body_offset(&self) -> usize {
        CHUNK_HEADER
            + if self.flag & FLAG_HASH != 0 {
                HASH_LEN
            } else {
                0
            }
    }

    /// Bytes counted against `max_queued_bytes` (as [`OutEntry::counted_bytes`]).
    pub(crate) fn counted_bytes(&self) -> u64 {
        match (self.tag, self.shared) {
            (TAG_APP, _) => u64::from(self.body_len),
            (_, Some((_, len))) => u64::from(len),
            _ => 0,
        }
    }
}

/// A published content stored once for all its recipients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SharedContent {
    /// Retained messages that reference it; deleted at zero.
    pub refs: u64,
    /// candid of `OutboundContent` (identical for every subscriber, hence one hash).
    pub content: Vec<u8>,
}

impl Storable for SharedContent {
    fn to_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.clone().into_bytes())
    }
    fn into_bytes(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.content.len());
        out.extend_from_slice(&self.refs.to_be_bytes());
        out.extend_from_slice(&self.content);
        out
    }
    fn from_bytes(bytes: Cow<'_, [u8]>) -> Self {
        let mut r = Reader::new(&bytes);
        SharedContent {
            refs: r.u64(),
            content: r.rest().to_vec(),
        }
    }
    const BOUND: Bound = Bound::Unbounded;
}

/// Key of `(u64, u64)` pairs, ordered by the first then the second (big-endian).
pub(crate) fn pair_key(a: u64, b: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&a.to_be_bytes());
    k[8..].copy_from_slice(&b.to_be_bytes());
    k
}

/// Splits a [`pair_key`].
pub(crate) fn split_pair(k: &[u8; 16]) -> (u64, u64) {
    let mut r = Reader::new(k);
    (r.u64(), r.u64())
}

/// Key of a topic subscription: `len(topic) u8, topic, client BE`.
pub(crate) fn sub_key(topic: &str, client: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + topic.len() + 8);
    k.push(topic.len() as u8);
    k.extend_from_slice(topic.as_bytes());
    k.extend_from_slice(&client.to_be_bytes());
    k
}

/// Key of a client's subscription (reverse index): `client BE, topic`.
pub(crate) fn client_sub_key(client: u64, topic: &str) -> Vec<u8> {
    let mut k = client.to_be_bytes().to_vec();
    k.extend_from_slice(topic.as_bytes());
    k
}

/// Persistent counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct Counters {
    pub next_client_id: u64,
    pub next_log_idx: u64,
    pub next_payload_id: u64,
    pub next_gateway_id: u64,
}

impl Counters {
    pub(crate) fn to_array(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out[..8].copy_from_slice(&self.next_client_id.to_be_bytes());
        out[8..16].copy_from_slice(&self.next_log_idx.to_be_bytes());
        out[16..24].copy_from_slice(&self.next_payload_id.to_be_bytes());
        out[24..].copy_from_slice(&self.next_gateway_id.to_be_bytes());
        out
    }
    pub(crate) fn from_array(a: &[u8; 32]) -> Self {
        let mut r = Reader::new(a);
        Counters {
            next_client_id: r.u64(),
            next_log_idx: r.u64(),
            next_payload_id: r.u64(),
            next_gateway_id: r.u64(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let rec = ClientRecord {
            key: [7; 32],
            gateway: 3,
            attached: true,
            closed: false,
            next_inbound_seq: 1,
            next_outbound_seq: 2,
            first_retained_seq: 3,
            queued_messages: 4,
            queued_bytes: 5,
            last_open_ts: 6,
            opened_at_ns: 7,
            last_activity_ns: 8,
            closed_at_ns: 9,
            head: 10,
            tail: 11,
        };
        assert_eq!(ClientRecord::from_bytes(rec.to_bytes()), rec);
        for body in [
            OutBody::App {
                ts: 1,
                payload: vec![1, 2, 3],
            },
            OutBody::Shared { pid: 9, len: 100 },
            OutBody::Control {
                content: vec![9, 9],
            },
        ] {
            // With the content hash, and as chunks written before it was stored.
            for hash in [Some([5u8; 32]), None] {
                let e = OutEntry {
                    log_idx: 42,
                    hash,
                    body: body.clone(),
                };
                let chunk = e.to_chunk(77);
                assert_eq!(OutEntry::from_chunk(&chunk), (77, e.clone()));
                let head = ChunkHead::parse(&chunk);
                assert_eq!((head.next, head.log_idx, head.hash), (77, 42, hash));
                assert_eq!(head.counted_bytes(), e.counted_bytes());
                if let OutBody::Shared { pid, len } = body {
                    assert_eq!(head.shared, Some((pid, len)));
                    assert!(chunk.len() <= CHUNK_PEEK);
                }
                // A chunk read with trailing garbage (its size class's rounding) decodes the same.
                let mut padded = chunk.clone();
                padded.extend_from_slice(&[0xee; 15]);
                assert_eq!(OutEntry::from_chunk(&padded), (77, e));
            }
        }
        // Truncated bytes never panic.
        let _ = ClientRecord::from_bytes(Cow::Borrowed(&[1, 2, 3]));
        let _ = OutEntry::from_chunk(&[2]);
        let _ = ChunkHead::parse(&[1, 2, 3]);
    }
}
