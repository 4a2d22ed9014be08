//! Metering of the bytes clients send, before tungstenite reads them.
//!
//! tungstenite reserves a frame's whole announced length in its read buffer as soon as it has
//! parsed the frame header, before any of the payload arrives: 14 bytes announcing a
//! 128 KiB frame make the gateway allocate 128 KiB, and a continuation of a fragmented message
//! adds to what the message already holds, up to `--max-message-size`. A client that sends such
//! headers on many connections and then nothing would hold `connections x max frame` bytes
//! outside every other bound.
//!
//! [`MeteredStream`] sits between the socket (or the TLS stream) and tungstenite. It follows the
//! byte stream with a [`FrameMeter`]: the HTTP upgrade request up to its blank line, then
//! each frame header. Before tungstenite sees a header, its announced length is charged to the
//! memory ledger (`frames`); when the ledger cannot take it, the read fails with
//! [`MeterError::BudgetExceeded`] and the session closes its sender with 4006. A message growing
//! past [`SMALL_MESSAGE`] is only taken while the ledger is below half the budget (new
//! connections and opens are taken up to 3/4): the rest stays for new clients and for the small
//! messages of the sessions that exist (a chat line, a click), so clients holding big
//! half-sent frames can neither lock newcomers out nor starve the others. A frame's charge is kept
//! until its message is complete (for a fragmented message, until its last frame) and given
//! back at the next read, when tungstenite has handed the message over (from then on it is the
//! session's `held` charge). Frames longer than `--max-frame-size` are not charged:
//! tungstenite refuses them (1009) without reserving anything.
//!
//! Before the connection's session is open (the session sets [`MeteredStream::opened`]), a
//! message may not grow past `--max-open-frame-size` (16 KiB: an `Open` frame with its app
//! arguments): the read fails with [`MeterError::BeforeOpen`] and the session closes with 1009.
//! Without it, connections that never open a session (free for an attacker: no signature, no
//! canister call) could each hold a half-sent `--max-frame-size` frame and fill the budget's
//! first three quarters, after which new connections are shed (measured: `loadgen attack
//! big-frames`, BENCHMARKS.md).

use crate::memory::{Category, Charge, Ledger};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest message (its frames so far) still taken once the ledger is past half the budget.
pub const SMALL_MESSAGE: usize = 16 * 1024;

/// Why a metered read fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MeterError {
    /// The frame does not fit the memory budget.
    #[error("a frame of {announced} bytes does not fit the gateway's memory budget")]
    BudgetExceeded {
        /// The frame's announced length.
        announced: u64,
    },
    /// A message was not complete `--frame-timeout-ms` after its first byte.
    #[error("a message not complete {ms} ms after its first byte")]
    FrameTimeout {
        /// `--frame-timeout-ms`.
        ms: u64,
    },
    /// The message grows past what a connection may send before its session is open.
    #[error("a message of {size} bytes before the session is open (at most {limit})")]
    BeforeOpen {
        /// The message's size with this frame.
        size: u64,
        /// `--max-open-frame-size`.
        limit: u64,
    },
}

/// The [`MeterError`] a metered read failed with, if that is what `e` is.
pub fn meter_error(e: &io::Error) -> Option<MeterError> {
    e.get_ref()?.downcast_ref::<MeterError>().copied()
}

/// Where in the byte stream the meter is.
#[derive(Debug, Clone, Copy)]
enum State {
    /// In the HTTP upgrade request; `tail` holds its last four bytes.
    Http { tail: u32 },
    /// In a frame header: `have` of its bytes so far.
    Header { bytes: [u8; 14], have: usize },
    /// In a frame's payload: `left` bytes to go.
    Payload { left: u64, control: bool, fin: bool },
    /// No longer metering (the frame is over the size limit: tungstenite ends the connection).
    Off,
}

/// Follows a client's byte stream and charges every frame's announced length (see the module
/// doc). Pure: [`FrameMeter::observe`] takes the bytes as they are read.
#[derive(Debug)]
pub struct FrameMeter {
    ledger: Arc<Ledger>,
    max_frame: u64,
    max_before_open: u64,
    opened: Arc<AtomicBool>,
    state: State,
    /// The frames of the data message being received.
    message: Option<Charge>,
    /// The control frame being received.
    control: Option<Charge>,
    /// Frames of messages that ended: given back at the next read.
    ended: Option<Charge>,
    /// Messages (and control frames) that ended so far.
    messages_ended: u64,
}

impl FrameMeter {
    /// A meter for a new connection (starting with its HTTP request), with no limit of its
    /// own before the open.
    pub fn new(ledger: Arc<Ledger>, max_frame_size: usize) -> Self {
        Self::with_open_limit(ledger, max_frame_size, usize::MAX)
    }

    /// A meter that allows messages of at most `max_open_frame_size` until
    /// [`FrameMeter::opened`] is set.
    pub fn with_open_limit(
        ledger: Arc<Ledger>,
        max_frame_size: usize,
        max_open_frame_size: usize,
    ) -> Self {
        FrameMeter {
            ledger,
            max_frame: u64::try_from(max_frame_size).unwrap_or(u64::MAX),
            max_before_open: u64::try_from(max_open_frame_size).unwrap_or(u64::MAX),
            opened: Arc::new(AtomicBool::new(false)),
            messages_ended: 0,
            state: State::Http { tail: 0 },
            message: None,
            control: None,
            ended: None,
        }
    }

    /// The flag the session sets once its session is open (lifts the limit before the open).
    pub fn opened(&self) -> Arc<AtomicBool> {
        self.opened.clone()
    }

    /// Whether a message (or control frame) has begun and not ended: part of a header, a
    /// payload, or frames of an unfinished fragmented message.
    pub fn in_progress(&self) -> bool {
        self.message.is_some()
            || self.control.is_some()
            || matches!(self.state, State::Payload { .. })
            || matches!(self.state, State::Header { have, .. } if have > 0)
    }

    /// Bytes charged for this connection now.
    pub fn charged(&self) -> usize {
        [&self.message, &self.control, &self.ended]
            .into_iter()
            .flatten()
            .map(Charge::bytes)
            .fold(0, usize::saturating_add)
    }

    /// Gives back the charges of messages that ended (tungstenite reads again only after it
    /// has handed the previous message over).
    pub fn release_ended(&mut self) {
        self.ended = None;
    }

    /// Follows `data`, the next bytes read from the client.
    pub fn observe(&mut self, mut data: &[u8]) -> Result<(), MeterError> {
        while let Some((&byte, rest)) = data.split_first() {
            match &mut self.state {
                State::Off => return Ok(()),
                State::Http { tail } => {
                    *tail = (*tail << 8) | u32::from(byte);
                    data = rest;
                    if *tail == u32::from_be_bytes(*b"\r\n\r\n") {
                        self.state = header();
                    }
                }
                State::Header { bytes, have } => {
                    if let Some(slot) = bytes.get_mut(*have) {
                        *slot = byte;
                    }
                    *have = have.saturating_add(1);
                    data = rest;
                    if let Some((len, control, fin)) = parse_header(bytes, *have) {
                        self.start_frame(len, control, fin)?;
                    }
                }
                State::Payload { left, .. } => {
                    let n = u64::try_from(data.len()).unwrap_or(u64::MAX).min(*left);
                    *left = left.saturating_sub(n);
                    data = data
                        .get(usize::try_from(n).unwrap_or(usize::MAX)..)
                        .unwrap_or_default();
                    if *left == 0 {
                        self.end_frame();
                    }
                }
            }
        }
        Ok(())
    }

    fn start_frame(&mut self, len: u64, control: bool, fin: bool) -> Result<(), MeterError> {
        if len > self.max_frame {
            self.state = State::Off;
            return Ok(());
        }
        let bytes = usize::try_from(len).unwrap_or(usize::MAX);
        let refused = MeterError::BudgetExceeded { announced: len };
        let slot = if control {
            &mut self.control
        } else {
            &mut self.message
        };
        let total = slot.as_ref().map_or(0, Charge::bytes).saturating_add(bytes);
        if !control && !self.opened.load(Relaxed) {
            let size = u64::try_from(total).unwrap_or(u64::MAX);
            if size > self.max_before_open {
                return Err(MeterError::BeforeOpen {
                    size,
                    limit: self.max_before_open,
                });
            }
        }
        if total > SMALL_MESSAGE && !self.ledger.admits_big_messages() {
            return Err(refused);
        }
        match slot {
            Some(charge) => {
                if !charge.try_grow(bytes) {
                    return Err(refused);
                }
            }
            None => {
                *slot = Some(
                    self.ledger
                        .try_charge(Category::Frames, bytes)
                        .ok_or(refused)?,
                )
            }
        }
        self.state = State::Payload {
            left: len,
            control,
            fin,
        };
        if len == 0 {
            self.end_frame();
        }
        Ok(())
    }

    fn end_frame(&mut self) {
        if let State::Payload { control, fin, .. } = self.state {
            let done = if control {
                self.control.take()
            } else if fin {
                self.message.take()
            } else {
                None
            };
            if let Some(done) = done {
                self.messages_ended = self.messages_ended.saturating_add(1);
                match &mut self.ended {
                    Some(ended) => ended.absorb(done),
                    None => self.ended = Some(done),
                }
            }
        }
        self.state = header();
    }
}

fn header() -> State {
    State::Header {
        bytes: [0; 14],
        have: 0,
    }
}

/// The announced payload length, whether it is a control frame and whether it is final, once
/// the header is complete (`have` bytes of it so far), as RFC 6455 section 5.2 lays it out.
fn parse_header(bytes: &[u8; 14], have: usize) -> Option<(u64, bool, bool)> {
    let [b0, b1, rest @ ..] = bytes;
    if have < 2 {
        return None;
    }
    let (extended, len7) = match b1 & 0x7f {
        126 => (2, None),
        127 => (8, None),
        n => (0, Some(u64::from(n))),
    };
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    if have < 2usize.saturating_add(extended).saturating_add(mask) {
        return None;
    }
    let len = match len7 {
        Some(n) => n,
        None => rest
            .get(..extended)?
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
    };
    Some((len, b0 & 0x08 != 0, b0 & 0x80 != 0))
}

/// A client's stream (TCP or TLS) whose reads go through a [`FrameMeter`].
#[derive(Debug)]
pub struct MeteredStream<S> {
    inner: S,
    meter: FrameMeter,
    frame_timeout: Option<std::time::Duration>,
    /// When the message in progress must be complete.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> MeteredStream<S> {
    /// Meters `inner` against `ledger`; frames above `max_frame_size` are left to tungstenite;
    /// before [`MeteredStream::opened`] is set, messages above `max_open_frame_size` fail.
    pub fn new(
        inner: S,
        ledger: Arc<Ledger>,
        max_frame_size: usize,
        max_open_frame_size: usize,
    ) -> Self {
        MeteredStream {
            inner,
            meter: FrameMeter::with_open_limit(ledger, max_frame_size, max_open_frame_size),
            frame_timeout: None,
            deadline: None,
        }
    }

    /// Fails the read (`MeterError::FrameTimeout`) when a message is not complete `timeout`
    /// after its first byte, even if no byte arrives meanwhile.
    pub fn with_frame_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.frame_timeout = Some(timeout);
        self
    }

    /// The flag the session sets once its session is open.
    pub fn opened(&self) -> Arc<AtomicBool> {
        self.meter.opened()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for MeteredStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.meter.release_ended();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = buf.filled().get(before..).unwrap_or_default();
                let ended_before = this.meter.messages_ended;
                if let Err(e) = this.meter.observe(new) {
                    return Poll::Ready(Err(io::Error::other(e)));
                }
                // The deadline runs from the first byte of the message in progress: a new one
                // when a message ended in this read (a client streaming back-to-back messages
                // is never cut), none when nothing is in progress.
                match (this.frame_timeout, this.meter.in_progress()) {
                    (Some(timeout), true) => {
                        if this.deadline.is_none() || this.meter.messages_ended != ended_before {
                            this.deadline = Some(Box::pin(tokio::time::sleep(timeout)));
                        }
                    }
                    _ => this.deadline = None,
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if let Some(deadline) = this.deadline.as_mut() {
                    if deadline.as_mut().poll(cx).is_ready() {
                        let ms = this
                            .frame_timeout
                            .map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
                        return Poll::Ready(Err(io::Error::other(MeterError::FrameTimeout { ms })));
                    }
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for MeteredStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

    /// A masked client frame header (RFC 6455), announcing `len` bytes.
    fn frame_header(fin: bool, opcode: u8, len: u64) -> Vec<u8> {
        let mut h = vec![(u8::from(fin) << 7) | opcode];
        match len {
            0..=125 => h.push(0x80 | len as u8),
            126..=0xffff => {
                h.push(0x80 | 126);
                h.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                h.push(0x80 | 127);
                h.extend_from_slice(&len.to_be_bytes());
            }
        }
        h.extend_from_slice(&[1, 2, 3, 4]);
        h
    }

    fn frame(fin: bool, opcode: u8, payload: usize) -> Vec<u8> {
        let mut f = frame_header(fin, opcode, payload as u64);
        f.extend(std::iter::repeat_n(0x55, payload));
        f
    }

    #[test]
    fn a_header_is_charged_its_announced_length_before_the_payload_arrives() {
        let ledger = Arc::new(Ledger::new(1 << 20));
        let mut m = FrameMeter::new(ledger.clone(), 128 * 1024);
        m.observe(REQUEST).unwrap();
        assert_eq!(
            ledger.used(Category::Frames),
            0,
            "the request is not a frame"
        );
        m.observe(&frame_header(true, 2, 100_000)).unwrap();
        assert_eq!(ledger.used(Category::Frames), 100_000);
        m.observe(&[0; 99_999]).unwrap();
        assert_eq!(m.charged(), 100_000);
        m.observe(&[0]).unwrap();
        // Ended, kept until tungstenite reads again.
        assert_eq!(ledger.used(Category::Frames), 100_000);
        m.release_ended();
        assert_eq!(ledger.used(Category::Frames), 0);
        assert_eq!(ledger.total(), 0);
    }

    #[test]
    fn headers_that_do_not_fit_are_refused_and_oversized_frames_left_to_tungstenite() {
        let ledger = Arc::new(Ledger::new(200_000));
        let mut a = FrameMeter::new(ledger.clone(), 128 * 1024);
        let mut b = FrameMeter::new(ledger.clone(), 128 * 1024);
        a.observe(REQUEST).unwrap();
        b.observe(REQUEST).unwrap();
        a.observe(&frame_header(true, 2, 120_000)).unwrap();
        let e = b.observe(&frame_header(true, 2, 120_000)).unwrap_err();
        assert_eq!(e, MeterError::BudgetExceeded { announced: 120_000 });
        assert_eq!(ledger.used(Category::Frames), 120_000);
        // Over --max-frame-size: tungstenite refuses it (1009) without reserving anything.
        let mut c = FrameMeter::new(ledger.clone(), 128 * 1024);
        c.observe(REQUEST).unwrap();
        c.observe(&frame_header(true, 2, 1 << 40)).unwrap();
        assert_eq!(c.charged(), 0);
        drop(a);
        assert_eq!(
            ledger.total(),
            0,
            "a closed connection gives everything back"
        );
    }

    #[test]
    fn before_the_open_messages_are_small() {
        let ledger = Arc::new(Ledger::new(1 << 20));
        let mut m = FrameMeter::with_open_limit(ledger.clone(), 128 * 1024, 16 * 1024);
        m.observe(REQUEST).unwrap();
        m.observe(&frame(true, 2, 16 * 1024)).unwrap();
        m.release_ended();
        m.observe(&frame(true, 9, 125)).unwrap(); // pings are control frames
        m.release_ended();
        // A message over the limit, whether in one frame or in fragments, is refused.
        let e = m.observe(&frame_header(true, 2, 20_000)).unwrap_err();
        assert_eq!(
            e,
            MeterError::BeforeOpen {
                size: 20_000,
                limit: 16 * 1024
            }
        );
        let mut f = FrameMeter::with_open_limit(ledger.clone(), 128 * 1024, 16 * 1024);
        f.observe(REQUEST).unwrap();
        f.observe(&frame(false, 2, 10_000)).unwrap();
        assert!(f.observe(&frame_header(true, 0, 10_000)).is_err());
        // Once the session is open, up to --max-frame-size.
        let mut o = FrameMeter::with_open_limit(ledger.clone(), 128 * 1024, 16 * 1024);
        o.observe(REQUEST).unwrap();
        o.opened().store(true, Relaxed);
        o.observe(&frame_header(true, 2, 100_000)).unwrap();
        assert_eq!(o.charged(), 100_000);
    }

    #[test]
    fn past_half_the_budget_only_small_messages_are_taken() {
        let ledger = Arc::new(Ledger::new(590_000));
        let mut big = FrameMeter::new(ledger.clone(), 128 * 1024);
        big.observe(REQUEST).unwrap();
        for _ in 0..3 {
            big.observe(&frame(false, 2, 100_000)).unwrap();
            big.release_ended();
        }
        // Past half the budget, below 3/4: new connections would still get in.
        assert!(!ledger.admits_big_messages() && ledger.admits_new_work());
        // Another fragment of the big message, or a new big one: refused.
        assert!(big.observe(&frame_header(false, 0, 1_000)).is_err());
        let mut other = FrameMeter::new(ledger.clone(), 128 * 1024);
        other.observe(REQUEST).unwrap();
        assert!(other.observe(&frame_header(true, 2, 20_000)).is_err());
        // A small message (in two fragments) still is, but not a bigger one.
        let mut small = FrameMeter::new(ledger.clone(), 128 * 1024);
        small.observe(REQUEST).unwrap();
        small.observe(&frame(false, 2, 8_000)).unwrap();
        small.observe(&frame(true, 0, 8_000)).unwrap();
        small.release_ended();
        assert_eq!(ledger.used(Category::Frames), 300_000);
        assert!(small.observe(&frame_header(true, 2, 17_000)).is_err());
    }

    #[test]
    fn a_fragmented_message_is_charged_until_its_last_frame_and_pings_apart() {
        let ledger = Arc::new(Ledger::new(1 << 20));
        let mut m = FrameMeter::new(ledger.clone(), 128 * 1024);
        m.observe(REQUEST).unwrap();
        m.observe(&frame(false, 2, 1000)).unwrap();
        m.release_ended();
        m.observe(&frame(true, 9, 100)).unwrap(); // a ping between the fragments
        m.release_ended();
        m.observe(&frame(false, 0, 2000)).unwrap();
        m.release_ended();
        assert_eq!(ledger.used(Category::Frames), 3000);
        m.observe(&frame(true, 0, 500)).unwrap();
        m.release_ended();
        assert_eq!(ledger.used(Category::Frames), 0);
    }

    #[test]
    fn many_frames_in_one_read_and_a_frame_split_across_reads() {
        let ledger = Arc::new(Ledger::new(1 << 20));
        let mut m = FrameMeter::new(ledger.clone(), 128 * 1024);
        let mut all = REQUEST.to_vec();
        for i in 0..1000 {
            all.extend(frame(true, 2, i % 300));
        }
        all.extend(frame_header(true, 2, 70_000));
        for chunk in all.chunks(7) {
            m.observe(chunk).unwrap();
        }
        assert_eq!(
            m.charged(),
            (0..1000).map(|i| i % 300).sum::<usize>() + 70_000
        );
        m.release_ended();
        assert_eq!(ledger.used(Category::Frames), 70_000);
    }

    proptest! {
        /// Whatever the frames and however the reads split them, the meter charges exactly
        /// the frames in progress, ends with nothing charged once they are done, and never
        /// panics on arbitrary bytes.
        #[test]
        fn charges_follow_the_frames(
            frames in proptest::collection::vec((any::<bool>(), 0u8..16, 0usize..3000), 0..40),
            cuts in proptest::collection::vec(1usize..500, 1..20),
            junk in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let ledger = Arc::new(Ledger::new(usize::MAX));
            let mut m = FrameMeter::new(ledger.clone(), 128 * 1024);
            let mut bytes = REQUEST.to_vec();
            for (fin, opcode, len) in &frames {
                bytes.extend(frame(*fin, *opcode, *len));
            }
            let mut rest = &bytes[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = cuts[i % cuts.len()].min(rest.len());
                m.release_ended();
                m.observe(&rest[..n]).unwrap();
                rest = &rest[n..];
                i += 1;
            }
            // Open: data frames after the last final data frame.
            let open: usize = frames
                .iter()
                .rev()
                .filter(|(_, op, _)| op & 8 == 0)
                .take_while(|(fin, _, _)| !fin)
                .map(|(_, _, len)| len)
                .sum();
            m.release_ended();
            prop_assert_eq!(ledger.used(Category::Frames), open);
            let mut j = FrameMeter::new(ledger.clone(), 128 * 1024);
            let _ = j.observe(&junk);
            drop(j);
            drop(m);
            prop_assert_eq!(ledger.total(), 0);
        }
    }
}
