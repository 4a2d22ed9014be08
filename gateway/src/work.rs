//! What sessions hand the relay: the queue's items and each client's share of its canister's
//! relay. Passive types below the hub and the workers: sessions create them, the hub's queue
//! holds them, the relay worker (`relay.rs`) consumes them.

use crate::memory::Charge;
use crate::outbox::Outbox;
use ic_ws_protocol::types::{ClientId, ClientMessage, OpenOk, OpenRequest};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

/// Fixed overhead counted per entry in the byte bound (ids, seq, signature, candid framing).
pub const ENTRY_OVERHEAD: usize = 128;

/// Something a session asks the relay to do.
#[derive(Debug)]
pub enum RelayItem {
    /// Relay an open (or resume).
    Open(PendingOpen),
    /// Relay a signed message.
    Message(PendingMessage),
    /// The client's WebSocket went away: detach its session.
    Close {
        /// The session.
        client_id: ClientId,
        /// The connection that went away.
        conn_id: u64,
    },
}

/// An open waiting for `ws_open`.
#[derive(Debug)]
pub struct PendingOpen {
    /// The signed request.
    pub request: OpenRequest,
    /// The connection asking.
    pub conn_id: u64,
    /// Its send buffer (gets the `OpenResult`).
    pub outbox: Arc<Outbox>,
    /// Told the outcome once the client is attached.
    pub reply: oneshot::Sender<OpenReply>,
    /// Its bytes in the memory ledger.
    pub charge: Option<Charge>,
}

/// What the relay tells a session whose open it attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenReply {
    /// The open (or resume) succeeded: the session relays the client's messages.
    Opened(OpenOk),
    /// Protocol version 2: the canister refused the open (`OpenRejected`) or the resume of a
    /// closed session (`Closed`) and certified the refusal as a message of session
    /// `ClientId`: the connection is attached to it until that message is delivered (then
    /// closed), relays nothing, and is closed 4003 if it does not come in time.
    Certifying(ClientId),
}

/// A message waiting for `ws_message`.
#[derive(Debug)]
pub struct PendingMessage {
    /// The signed message.
    pub message: ClientMessage,
    /// Its encoded size (for the byte bound).
    pub size: usize,
    /// The sender's send buffer (gets a `MessageError` on failure).
    pub outbox: Arc<Outbox>,
    /// What the message holds until its result is known: its client's share and its bytes in
    /// the memory ledger (all released when the entry is dropped).
    pub hold: Hold,
}

/// What a message holds while it is held, queued or in flight.
#[derive(Debug, Default)]
pub struct Hold {
    /// The sender's share (refusals are counted on it).
    pub share: Option<Arc<ClientShare>>,
    /// Its part of the share.
    pub permit: Option<SharePermit>,
    /// Its bytes in the memory ledger.
    pub charge: Option<Charge>,
}

/// Part of a client's share, released on drop.
#[derive(Debug)]
pub struct SharePermit {
    _items: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
}

/// One client's share of its canister's relay: the messages and bytes it may have queued or
/// in flight, and its refusals.
#[derive(Debug)]
pub struct ClientShare {
    items: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    max_items: u32,
    max_bytes: u32,
    refusals: AtomicU32,
    refusal_budget: u32,
}

impl ClientShare {
    /// A share of `max_items` messages and `max_bytes` bytes, closed after `refusal_budget`
    /// net refusals.
    pub fn new(max_items: usize, max_bytes: usize, refusal_budget: u32) -> Self {
        let max_items = u32::try_from(max_items)
            .unwrap_or(u32::MAX)
            .min(Semaphore::MAX_PERMITS as u32);
        let max_bytes = u32::try_from(max_bytes)
            .unwrap_or(u32::MAX)
            .min(Semaphore::MAX_PERMITS as u32);
        ClientShare {
            items: Arc::new(Semaphore::new(max_items as usize)),
            bytes: Arc::new(Semaphore::new(max_bytes as usize)),
            max_items,
            max_bytes,
            refusals: AtomicU32::new(0),
            refusal_budget,
        }
    }

    /// Waits until a message of `cost` bytes fits the share. A throttled client waits until
    /// everything it has in flight is answered (one message at a time).
    pub async fn acquire(&self, cost: usize) -> Option<SharePermit> {
        let items = if self.throttled() { self.max_items } else { 1 };
        let items = self.items.clone().acquire_many_owned(items).await.ok()?;
        let cost = u32::try_from(cost).unwrap_or(u32::MAX).min(self.max_bytes);
        let bytes = self.bytes.clone().acquire_many_owned(cost).await.ok()?;
        Some(SharePermit {
            _items: items,
            _bytes: bytes,
        })
    }

    /// Whether the client is past half of its refusal budget.
    pub fn throttled(&self) -> bool {
        self.refusals.load(Ordering::Relaxed).saturating_mul(2) > self.refusal_budget
    }

    /// Counts one refused message; returns whether the client is now past its budget.
    pub fn refused(&self) -> bool {
        let n = self
            .refusals
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        n > self.refusal_budget
    }

    /// Counts one accepted message (pays one refusal back).
    pub fn accepted(&self) {
        let _ = self
            .refusals
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}
