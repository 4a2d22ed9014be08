//! A client's bounded send buffer.
//!
//! Producers (the poller, the relay) never wait on a client: they push frames and return. A
//! poll page's frame for a client is pushed *deferred* (a closure that cuts the client's
//! witness and encodes the frame) and built by the client's session task right before it
//! writes: the frames of one page are then built in parallel by the sessions' tasks over all
//! cores, and the first clients' frames are written while the others are still being built,
//! instead of the poller building every frame one after the other first. The client's session task drains the buffer into its socket. When a client reads
//! too slowly the buffer reaches its frame or byte bound and the client is aborted with 4001,
//! so one stalled client never delays anybody else.
//!
//! Memory: an idle outbox is a mutex, an empty `VecDeque` (no allocation) and a `Notify`.
//! A session's outbox charges its queued bytes to the gateway's memory ledger
//! (`crate::memory`): a frame for a client that is already behind, when the budget is spent,
//! closes that client with 4006 instead of growing the buffer.

use crate::memory::{Category, Charge, Ledger, Shed};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Bytes;

/// A WebSocket close to send: code and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseWith {
    /// Close code (see `ic_ws_protocol::frames::close_code`).
    pub code: u16,
    /// Human-readable reason (at most 123 bytes, the close frame's limit).
    pub reason: String,
}

impl CloseWith {
    /// A close with `code` and `reason`, cut on a character boundary to fit a close frame
    /// (the reason often quotes peer text: an app's rejection, a canister error).
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        let reason = if reason.len() > ic_ws_protocol::text::MAX_CLOSE_REASON_BYTES {
            ic_ws_protocol::text::close_reason(&reason)
        } else {
            reason
        };
        CloseWith { code, reason }
    }
}

/// What the session should do next.
#[derive(Debug)]
pub enum Outgoing {
    /// Write this frame; `since` is when its poll reply arrived (for the delivery-delay metric).
    Frame(Bytes, Option<Instant>),
    /// Close the connection.
    Close(CloseWith),
}

/// Result of [`Outbox::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Queued.
    Queued,
    /// The buffer overflowed: the client is being closed with 4001 (the frame is dropped).
    Overflowed,
    /// The client is already closing; the frame is dropped.
    Closed,
    /// The frame could not be built (logged by its builder); nothing was queued.
    Dropped,
}

/// A frame to write: ready bytes, or built just before writing.
enum Frame {
    Ready(Bytes),
    /// Not queued: what [`Outbox::take`] returns when the client is closing.
    Closing(CloseWith),
    /// `size` is an estimate of the encoded size (for the byte bound); `build` gives the bytes,
    /// or `None` when the frame cannot be encoded (logged by the builder; the frame is skipped).
    Deferred {
        size: usize,
        build: Box<dyn FnOnce() -> Option<Bytes> + Send>,
    },
}

impl Frame {
    fn size(&self) -> usize {
        match self {
            Frame::Ready(b) => b.len(),
            Frame::Closing(_) => 0,
            Frame::Deferred { size, .. } => *size,
        }
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Frame::Ready(b) => write!(f, "Ready({} bytes)", b.len()),
            Frame::Closing(c) => write!(f, "Closing({c:?})"),
            Frame::Deferred { size, .. } => write!(f, "Deferred(~{size} bytes)"),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<(Frame, Option<Instant>, Option<Charge>)>,
    bytes: usize,
    /// Close after the queued frames are written.
    finish: Option<CloseWith>,
    /// Close now, dropping queued frames.
    abort: Option<CloseWith>,
}

/// A bounded per-client send buffer (single consumer: the client's session).
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    ready: Notify,
    aborted: Notify,
    max_frames: usize,
    max_bytes: usize,
    ledger: Option<Arc<Ledger>>,
}

impl Outbox {
    /// An empty buffer bounded by `max_frames` and `max_bytes`.
    pub fn new(max_frames: usize, max_bytes: usize) -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            aborted: Notify::new(),
            max_frames,
            max_bytes,
            ledger: None,
        }
    }

    /// An empty buffer bounded by `max_frames` and `max_bytes` whose bytes are charged to
    /// `ledger`.
    pub fn accounted(max_frames: usize, max_bytes: usize, ledger: Arc<Ledger>) -> Self {
        Outbox {
            ledger: Some(ledger),
            ..Outbox::new(max_frames, max_bytes)
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere while holding it; the state is still
        // a consistent queue.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a frame, or aborts the client with 4001 if that would exceed the bounds.
    pub fn push(&self, frame: Bytes, since: Option<Instant>) -> Push {
        self.push_frame(Frame::Ready(frame), since)
    }

    /// Queues a frame that `build` makes when the session is about to write it; `size` is its
    /// estimated encoded size, counted against the byte bound.
    ///
    /// Only a frame at the head of an empty buffer is deferred: a deferred frame keeps its
    /// whole poll page alive, so for a client that is behind (frames already queued) the frame
    /// is built now and only its own bytes are kept. A client thus pins at most one page.
    /// A frame that cannot be built is dropped ([`Push::Dropped`]).
    pub fn push_deferred(
        &self,
        size: usize,
        build: Box<dyn FnOnce() -> Option<Bytes> + Send>,
        since: Option<Instant>,
    ) -> Push {
        if self.lock().frames.is_empty() {
            return self.push_frame(Frame::Deferred { size, build }, since);
        }
        match build() {
            Some(bytes) => self.push_frame(Frame::Ready(bytes), since),
            None => Push::Dropped,
        }
    }

    fn push_frame(&self, frame: Frame, since: Option<Instant>) -> Push {
        let mut s = self.lock();
        if s.abort.is_some() || s.finish.is_some() {
            return Push::Closed;
        }
        // An empty buffer always takes one frame, however large (a frame is bounded by the
        // canister's poll reply limit).
        let overflow = if !s.frames.is_empty()
            && (s.frames.len() >= self.max_frames
                || s.bytes.saturating_add(frame.size()) > self.max_bytes)
        {
            Some(CloseWith::new(
                ic_ws_protocol::frames::close_code::SLOW_CLIENT,
                "slow client: send buffer overflow",
            ))
        } else {
            None
        };
        let charge = match (&self.ledger, overflow) {
            (_, Some(close)) => Err(close),
            (None, None) => Ok(None),
            (Some(ledger), None) if s.frames.is_empty() => {
                Ok(Some(ledger.charge(Category::Outbox, frame.size())))
            }
            (Some(ledger), None) => match ledger.try_charge(Category::Outbox, frame.size()) {
                Some(c) => Ok(Some(c)),
                None => {
                    ledger.shed(Shed::Outbox);
                    Err(CloseWith::new(
                        ic_ws_protocol::frames::close_code::OVERLOADED,
                        "gateway overloaded: client too far behind",
                    ))
                }
            },
        };
        let charge = match charge {
            Ok(c) => c,
            Err(close) => {
                s.frames.clear();
                s.bytes = 0;
                s.abort = Some(close);
                drop(s);
                self.ready.notify_one();
                self.aborted.notify_waiters();
                return Push::Overflowed;
            }
        };
        s.bytes = s.bytes.saturating_add(frame.size());
        s.frames.push_back((frame, since, charge));
        drop(s);
        self.ready.notify_one();
        Push::Queued
    }

    /// Closes after every queued frame has been written (first close wins).
    pub fn finish(&self, close: CloseWith) {
        let mut s = self.lock();
        if s.abort.is_none() && s.finish.is_none() {
            s.finish = Some(close);
        }
        drop(s);
        self.ready.notify_one();
    }

    /// Closes now, dropping queued frames (first abort wins).
    pub fn abort(&self, close: CloseWith) {
        let mut s = self.lock();
        if s.abort.is_none() {
            s.frames.clear();
            s.bytes = 0;
            s.abort = Some(close);
        }
        drop(s);
        self.ready.notify_one();
        self.aborted.notify_waiters();
    }

    /// Whether the client is closing (no more frames are accepted).
    pub fn is_closing(&self) -> bool {
        let s = self.lock();
        s.abort.is_some() || s.finish.is_some()
    }

    /// Frames and bytes queued.
    pub fn len(&self) -> (usize, usize) {
        let s = self.lock();
        (s.frames.len(), s.bytes)
    }

    fn take(&self) -> Option<(Frame, Option<Instant>)> {
        let mut s = self.lock();
        if let Some(c) = &s.abort {
            return Some((Frame::Closing(c.clone()), None));
        }
        if let Some((f, since, _charge)) = s.frames.pop_front() {
            s.bytes = s.bytes.saturating_sub(f.size());
            if s.frames.is_empty() {
                // Give back the memory of a burst.
                s.frames.shrink_to(0);
            }
            return Some((f, since));
        }
        s.finish.clone().map(|c| (Frame::Closing(c), None))
    }

    /// The next thing to write (waits until there is one). A deferred frame is built here,
    /// outside the lock, by the session task that will write it.
    pub async fn next(&self) -> Outgoing {
        loop {
            match self.take() {
                Some((Frame::Closing(c), _)) => return Outgoing::Close(c),
                Some((Frame::Ready(bytes), since)) => return Outgoing::Frame(bytes, since),
                Some((Frame::Deferred { build, .. }, since)) => match build() {
                    Some(bytes) => return Outgoing::Frame(bytes, since),
                    None => continue,
                },
                None => self.ready.notified().await,
            }
        }
    }

    /// Resolves when the client has been aborted (used to interrupt a blocked write).
    pub async fn until_aborted(&self) -> CloseWith {
        loop {
            let notified = self.aborted.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(c) = self.lock().abort.clone() {
                return c;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_come_out_in_order_then_the_close() {
        let o = Outbox::new(10, 1000);
        assert_eq!(o.push(Bytes::from_static(b"a"), None), Push::Queued);
        assert_eq!(o.push(Bytes::from_static(b"b"), None), Push::Queued);
        o.finish(CloseWith::new(4000, "closed"));
        assert_eq!(o.push(Bytes::from_static(b"c"), None), Push::Closed);
        assert!(matches!(o.next().await, Outgoing::Frame(f, _) if f == "a"));
        assert!(matches!(o.next().await, Outgoing::Frame(f, _) if f == "b"));
        assert!(matches!(o.next().await, Outgoing::Close(c) if c.code == 4000));
    }

    #[tokio::test]
    async fn overflow_by_count_or_bytes_aborts_with_4001() {
        let o = Outbox::new(2, 1000);
        o.push(Bytes::from_static(b"a"), None);
        o.push(Bytes::from_static(b"b"), None);
        assert_eq!(o.push(Bytes::from_static(b"c"), None), Push::Overflowed);
        assert!(matches!(o.next().await, Outgoing::Close(c) if c.code == 4001));
        assert_eq!(o.until_aborted().await.code, 4001);

        let o = Outbox::new(100, 10);
        assert_eq!(
            o.push(Bytes::from(vec![0u8; 30]), None),
            Push::Queued,
            "an empty buffer takes a big frame"
        );
        assert_eq!(o.push(Bytes::from(vec![0u8; 3]), None), Push::Overflowed);
        assert_eq!(o.len(), (0, 0));
    }

    #[tokio::test]
    async fn queued_bytes_are_charged_and_a_client_behind_is_shed_at_the_budget() {
        let ledger = Arc::new(Ledger::new(100));
        let o = Outbox::accounted(10, 1000, ledger.clone());
        assert_eq!(o.push(Bytes::from(vec![0u8; 150]), None), Push::Queued);
        assert_eq!(
            ledger.used(Category::Outbox),
            150,
            "an empty buffer takes one frame"
        );
        assert!(matches!(o.next().await, Outgoing::Frame(..)));
        assert_eq!(ledger.total(), 0);
        o.push(Bytes::from(vec![0u8; 60]), None);
        o.push(Bytes::from(vec![0u8; 30]), None);
        assert_eq!(ledger.total(), 90);
        assert_eq!(o.push(Bytes::from(vec![0u8; 20]), None), Push::Overflowed);
        assert_eq!(ledger.total(), 0, "dropped frames give their bytes back");
        assert_eq!(ledger.shed_count(Shed::Outbox), 1);
        assert!(matches!(o.next().await, Outgoing::Close(c) if c.code == 4006));
    }

    #[tokio::test]
    async fn deferred_frames_are_built_in_order_when_taken_and_count_their_size() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let built = Arc::new(AtomicUsize::new(0));
        let deferred = |bytes: &'static [u8]| {
            let built = built.clone();
            Box::new(move || {
                built.fetch_add(1, Ordering::SeqCst);
                Some(Bytes::from_static(bytes))
            }) as Box<dyn FnOnce() -> Option<Bytes> + Send>
        };
        let o = Outbox::new(10, 100);
        // At the head of an empty buffer: deferred (counted by its estimate, built when taken).
        assert_eq!(o.push_deferred(40, deferred(b"a"), None), Push::Queued);
        assert_eq!(
            o.len(),
            (1, 40),
            "the estimate counts against the byte bound"
        );
        assert_eq!(built.load(Ordering::SeqCst), 0, "nothing is built at push");
        // Behind other frames: built now (only its bytes are kept, not its page).
        assert_eq!(o.push_deferred(40, deferred(b"bb"), None), Push::Queued);
        assert_eq!(built.load(Ordering::SeqCst), 1);
        assert_eq!(o.len(), (2, 42));
        // A frame that cannot be built is dropped, whether built now or when taken.
        assert_eq!(o.push_deferred(10, Box::new(|| None), None), Push::Dropped);
        assert!(matches!(o.next().await, Outgoing::Frame(f, _) if f == "a"));
        assert_eq!(built.load(Ordering::SeqCst), 2);
        assert!(matches!(o.next().await, Outgoing::Frame(f, _) if f == "bb"));
        assert_eq!(o.len(), (0, 0));
        assert_eq!(o.push_deferred(10, Box::new(|| None), None), Push::Queued);
        o.push(Bytes::from_static(b"c"), None);
        assert!(matches!(o.next().await, Outgoing::Frame(f, _) if f == "c"));
        // The estimate also triggers the overflow.
        assert_eq!(o.push_deferred(60, deferred(b"d"), None), Push::Queued);
        assert_eq!(o.push(Bytes::from(vec![0u8; 50]), None), Push::Overflowed);
        assert!(matches!(o.next().await, Outgoing::Close(c) if c.code == 4001));
    }

    #[tokio::test]
    async fn next_waits_for_a_push() {
        let o = std::sync::Arc::new(Outbox::new(10, 1000));
        let o2 = o.clone();
        let waiter = tokio::spawn(async move { matches!(o2.next().await, Outgoing::Frame(..)) });
        tokio::task::yield_now().await;
        o.push(Bytes::from_static(b"x"), None);
        assert!(waiter.await.unwrap());
    }
}
