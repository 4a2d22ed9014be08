//! Client -> canister relay: one worker per canister turns the queue of opens, messages and
//! disconnects into batched update calls (`ws_message`, `ws_close`, `ws_open`).
//!
//! - Batching: a batch is a prefix of the queue bounded in entries and bytes; batches to one
//!   canister are at least `--batch-interval-ms` apart and never overlap (one in flight), so
//!   each client's messages reach the canister in the order it sent them.
//! - Within a batch, calls go in the order messages, closes, opens: a client's messages come
//!   before its disconnect, and a disconnect of a client's old connection before the resume on
//!   its new one.
//! - Retries: a transient failure repeats the same call with exponential backoff (the canister
//!   treats an already accepted message as a `Duplicate` no-op). When a call traps (an app
//!   handler panicked, the IC rolled the whole call back), its entries are retried one by one
//!   so only the entry that traps fails, and only its client hears about it.
//! - Results go to each entry's client only: `MessageError` (then 4004 when the session cannot
//!   continue), `OpenResult` (then 4003 when the open failed).

use crate::canister::{CallError, CanisterApi};
use crate::health::WorkerExit;
use crate::hub::{ClientEntry, Hub, Shared};
use crate::metrics::ErrorKind;
use crate::outbox::{CloseWith, Outbox};
use ic_ws_protocol::frames::close_code;
use ic_ws_protocol::text::bounded;
use ic_ws_protocol::types::{
    ClientId, ClientMessage, CloseBatch, MessageBatch, MessageResult, OpenBatch, OpenOk,
    OpenRequest, WsError,
};
use ic_ws_protocol::GatewayFrame;
use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tokio_tungstenite::tungstenite::Bytes;

/// Fixed overhead counted per entry in the byte bound (ids, seq, signature, candid framing).
const ENTRY_OVERHEAD: usize = 128;

/// Most bytes of a canister's trap message quoted in an error frame to a client.
pub const MAX_ERROR_TEXT_BYTES: usize = 1024;

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
    /// Told the `OpenOk` once the client is attached.
    pub reply: oneshot::Sender<OpenOk>,
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
    /// Released when the result is known (bounds a client's messages in flight).
    pub permit: Option<OwnedSemaphorePermit>,
}

impl RelayItem {
    fn cost(&self) -> usize {
        match self {
            RelayItem::Open(o) => ENTRY_OVERHEAD.saturating_add(o.request.args.len()),
            RelayItem::Message(m) => ENTRY_OVERHEAD.saturating_add(m.size),
            RelayItem::Close { .. } => 16,
        }
    }
}

/// Whether a per-entry error ends the client's session (it cannot send anything valid after
/// it). `Rejected` and `DecodeError` consume the sequence number: the client moves on.
pub fn is_fatal(error: &WsError) -> bool {
    !matches!(error, WsError::Rejected(_) | WsError::DecodeError(_))
}

/// The error a client gets when the canister trapped handling its `what` (the trap message,
/// from the canister, is bounded).
pub fn trapped(what: &str, why: &str) -> WsError {
    WsError::Rejected(format!(
        "the canister trapped handling this {what}: {}",
        bounded(why, MAX_ERROR_TEXT_BYTES)
    ))
}

fn send_frame(outbox: &Outbox, frame: &GatewayFrame) {
    match crate::codec::encode_frame(frame) {
        Ok(bytes) => {
            outbox.push(Bytes::from(bytes), None);
        }
        Err(e) => tracing::error!("cannot encode a frame: {e}"),
    }
}

/// Takes the next batch off the front of `queue`: entries in queue order while they fit the
/// bounds (at least one).
pub fn take_batch(
    queue: &mut VecDeque<RelayItem>,
    max_entries: usize,
    max_bytes: usize,
) -> Vec<RelayItem> {
    let mut batch = Vec::new();
    let mut bytes: usize = 0;
    while let Some(item) = queue.front() {
        let cost = item.cost();
        if !batch.is_empty()
            && (batch.len() >= max_entries || bytes.saturating_add(cost) > max_bytes)
        {
            break;
        }
        bytes = bytes.saturating_add(cost);
        if let Some(item) = queue.pop_front() {
            batch.push(item);
        }
    }
    batch
}

/// Runs `call` until it succeeds, fails non-transiently, or runs out of attempts.
async fn with_retry<C, T, F, Fut>(
    shared: &Shared<C>,
    what: &str,
    mut call: F,
) -> Result<T, CallError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, CallError>>,
{
    let mut backoff = shared.config.retry_backoff();
    let mut attempt = 1;
    loop {
        match call().await {
            Err(CallError::Transient(e)) if attempt < shared.config.retry_attempts => {
                shared.metrics.error(ErrorKind::CallTransient);
                tracing::warn!(
                    attempt,
                    "{what}: transient error, retrying in {backoff:?}: {e}"
                );
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
                attempt = attempt.saturating_add(1);
            }
            Err(e) => {
                shared.metrics.error(match e {
                    CallError::Transient(_) => ErrorKind::CallTransient,
                    CallError::Trapped(_) => ErrorKind::CallTrapped,
                    CallError::Permanent(_) => ErrorKind::CallPermanent,
                });
                return Err(e);
            }
            ok => return ok,
        }
    }
}

/// The relay worker of `hub`'s canister. Returns when the gateway drains and the queue is empty.
pub async fn run<C: CanisterApi>(shared: Arc<Shared<C>>, hub: Arc<Hub>) -> WorkerExit {
    let Some(mut rx) = hub.relay_receiver() else {
        return WorkerExit::Failed("another relay worker holds the queue".into());
    };
    let mut queue: VecDeque<RelayItem> = VecDeque::new();
    let mut draining = shared.draining.subscribe();
    let interval = shared.config.batch_interval();
    let max_entries = shared.config.batch_max_messages;
    let max_bytes = shared.config.batch_max_bytes;
    let mut last_batch: Option<Instant> = None;
    loop {
        if queue.is_empty() {
            tokio::select! {
                item = rx.recv() => match item {
                    Some(item) => queue.push_back(item),
                    None => return WorkerExit::Done,
                },
                _ = draining.wait_for(|d| *d) => {
                    match rx.try_recv() {
                        Ok(item) => queue.push_back(item),
                        Err(_) => return WorkerExit::Done,
                    }
                }
            }
        }
        // Collect until the interval since the previous batch has passed or the batch is full.
        if let Some(last) = last_batch {
            let ready_at =
                tokio::time::Instant::from_std(last.checked_add(interval).unwrap_or(last));
            while queue.len() < max_entries && !*draining.borrow() {
                tokio::select! {
                    item = rx.recv() => match item {
                        Some(item) => queue.push_back(item),
                        None => break,
                    },
                    _ = tokio::time::sleep_until(ready_at) => break,
                }
            }
        }
        while queue.len() < max_entries.saturating_mul(2) {
            match rx.try_recv() {
                Ok(item) => queue.push_back(item),
                Err(_) => break,
            }
        }
        let batch = take_batch(&mut queue, max_entries, max_bytes);
        last_batch = Some(Instant::now());
        if crate::testhook::fire(&shared.config, "panic-relay") {
            panic!(
                "test hook: relay of {} panics with {} items in hand",
                hub.canister,
                batch.len().saturating_add(queue.len())
            );
        }
        process(&shared, &hub, batch).await;
    }
}

async fn process<C: CanisterApi>(shared: &Arc<Shared<C>>, hub: &Arc<Hub>, batch: Vec<RelayItem>) {
    let mut messages = Vec::new();
    let mut closes = Vec::new();
    let mut opens = Vec::new();
    for item in batch {
        match item {
            RelayItem::Message(m) => messages.push(m),
            RelayItem::Close { client_id, conn_id } => closes.push((client_id, conn_id)),
            RelayItem::Open(o) => opens.push(o),
        }
    }
    if !messages.is_empty() {
        relay_messages(shared, hub, messages).await;
        hub.poll_wake.notify_one();
    }
    if !closes.is_empty() {
        relay_closes(shared, hub, closes).await;
    }
    if !opens.is_empty() {
        relay_opens(shared, hub, opens).await;
        hub.poll_wake.notify_one();
    }
}

async fn call_messages<C: CanisterApi>(
    shared: &Shared<C>,
    hub: &Hub,
    entries: &[&PendingMessage],
) -> Result<Vec<MessageResult>, CallError> {
    let batch = MessageBatch {
        messages: entries.iter().map(|m| m.message.clone()).collect(),
    };
    let n = entries.len();
    let result = with_retry(shared, "ws_message", || {
        shared.metrics.calls_message.inc();
        shared.metrics.batch_size.observe(n as f64);
        let started = Instant::now();
        let fut = shared.api.ws_message(hub.canister, &batch);
        async move {
            let r = fut.await;
            shared
                .metrics
                .message_call_latency
                .observe_duration(started.elapsed());
            r
        }
    })
    .await?;
    if result.len() != n {
        return Err(CallError::Permanent(format!(
            "ws_message returned {} results for {n} messages",
            result.len()
        )));
    }
    Ok(result)
}

async fn relay_messages<C: CanisterApi>(
    shared: &Arc<Shared<C>>,
    hub: &Arc<Hub>,
    messages: Vec<PendingMessage>,
) {
    // Clients whose session ended in this batch: their later entries are not reported again.
    let mut failed: HashSet<ClientId> = HashSet::new();
    let all: Vec<&PendingMessage> = messages.iter().collect();
    match call_messages(shared, hub, &all).await {
        Ok(results) => {
            for (m, r) in messages.iter().zip(results) {
                handle_message_result(shared, m, r, false, &mut failed);
            }
        }
        Err(CallError::Trapped(reason)) => {
            tracing::warn!(canister = %hub.canister, entries = messages.len(), "ws_message trapped, isolating entries: {reason}");
            for m in &messages {
                if failed.contains(&m.message.client_id) {
                    continue;
                }
                let result = if messages.len() == 1 {
                    Err(CallError::Trapped(reason.clone()))
                } else {
                    call_messages(shared, hub, &[m])
                        .await
                        .map(|mut r| r.remove(0))
                };
                match result {
                    Ok(r) => handle_message_result(shared, m, r, false, &mut failed),
                    Err(CallError::Trapped(why)) => {
                        // The trap rolled the message back: its sequence number is not consumed
                        // and the same signed message would trap again, so the session cannot
                        // continue.
                        let error = trapped("message", &why);
                        handle_message_result(
                            shared,
                            m,
                            MessageResult::Err(error),
                            true,
                            &mut failed,
                        );
                    }
                    Err(e) => {
                        unavailable(shared, &m.outbox, &e);
                        failed.insert(m.message.client_id);
                    }
                }
            }
        }
        Err(e) => {
            tracing::warn!(canister = %hub.canister, "ws_message failed: {e}");
            for m in &messages {
                if failed.insert(m.message.client_id) {
                    unavailable(shared, &m.outbox, &e);
                }
            }
        }
    }
}

fn unavailable<C>(shared: &Shared<C>, outbox: &Outbox, error: &CallError) {
    let _ = shared;
    outbox.finish(CloseWith::new(
        close_code::CANISTER_UNAVAILABLE,
        format!("canister unavailable: {error}"),
    ));
}

fn handle_message_result<C>(
    shared: &Shared<C>,
    m: &PendingMessage,
    result: MessageResult,
    always_fatal: bool,
    failed: &mut HashSet<ClientId>,
) {
    let client = m.message.client_id;
    match result {
        MessageResult::Ok | MessageResult::Duplicate => {}
        MessageResult::Err(error) => {
            if failed.contains(&client) {
                return;
            }
            shared.metrics.error(ErrorKind::MessageRejected);
            let fatal = always_fatal || is_fatal(&error);
            tracing::debug!(
                client,
                seq = m.message.seq,
                fatal,
                "message rejected: {error}"
            );
            send_frame(
                &m.outbox,
                &GatewayFrame::MessageError {
                    seq: m.message.seq,
                    error: error.clone(),
                },
            );
            if fatal {
                failed.insert(client);
                m.outbox.finish(CloseWith::new(
                    close_code::MESSAGE_REJECTED,
                    format!("message {} rejected: {error}", m.message.seq),
                ));
            }
        }
    }
}

async fn relay_closes<C: CanisterApi>(
    shared: &Arc<Shared<C>>,
    hub: &Arc<Hub>,
    closes: Vec<(ClientId, u64)>,
) {
    // A client that already resumed on another connection of this gateway stays attached.
    let clients: Vec<ClientId> = {
        let table = hub.table();
        closes
            .into_iter()
            .filter(|(client, conn)| table.clients.get(client).is_none_or(|e| e.conn_id == *conn))
            .map(|(client, _)| client)
            .collect()
    };
    if clients.is_empty() {
        return;
    }
    let batch = CloseBatch { clients };
    let result = with_retry(shared, "ws_close", || {
        shared.metrics.calls_close.inc();
        shared.api.ws_close(hub.canister, &batch)
    })
    .await;
    if let Err(e) = result {
        // The sessions expire in the canister anyway; nothing else depends on this.
        tracing::warn!(canister = %hub.canister, clients = batch.clients.len(), "ws_close failed: {e}");
    }
}

async fn call_opens<C: CanisterApi>(
    shared: &Shared<C>,
    hub: &Hub,
    entries: &[&PendingOpen],
) -> Result<Vec<ic_ws_protocol::types::OpenResult>, CallError> {
    let batch = OpenBatch {
        opens: entries.iter().map(|o| o.request.clone()).collect(),
    };
    let n = entries.len();
    let result = with_retry(shared, "ws_open", || {
        shared.metrics.calls_open.inc();
        shared.api.ws_open(hub.canister, &batch)
    })
    .await?;
    if result.len() != n {
        return Err(CallError::Permanent(format!(
            "ws_open returned {} results for {n} opens",
            result.len()
        )));
    }
    Ok(result)
}

async fn relay_opens<C: CanisterApi>(
    shared: &Arc<Shared<C>>,
    hub: &Arc<Hub>,
    opens: Vec<PendingOpen>,
) {
    let all: Vec<&PendingOpen> = opens.iter().collect();
    let results: Vec<Result<ic_ws_protocol::types::OpenResult, CallError>> = match call_opens(
        shared, hub, &all,
    )
    .await
    {
        Ok(results) => results.into_iter().map(Ok).collect(),
        Err(CallError::Trapped(reason)) if opens.len() > 1 => {
            tracing::warn!(canister = %hub.canister, entries = opens.len(), "ws_open trapped, isolating entries: {reason}");
            let mut out = Vec::with_capacity(opens.len());
            for o in &opens {
                out.push(call_opens(shared, hub, &[o]).await.map(|mut r| r.remove(0)));
            }
            out
        }
        Err(e) => opens.iter().map(|_| Err(e.clone())).collect(),
    };
    for (open, result) in opens.into_iter().zip(results) {
        let result = match result {
            Ok(r) => r,
            Err(CallError::Trapped(why)) => Err(trapped("open", &why)),
            Err(e) => {
                unavailable(shared, &open.outbox, &e);
                continue;
            }
        };
        send_frame(&open.outbox, &GatewayFrame::OpenResult(result.clone()));
        match result {
            Ok(ok) => {
                let next_seq = open.request.resume.map_or(0, |r| r.next_outbound_seq);
                shared.attach(
                    hub,
                    ok.client_id,
                    ClientEntry {
                        conn_id: open.conn_id,
                        outbox: open.outbox.clone(),
                        next_seq,
                    },
                );
                if open.reply.send(ok).is_err() && shared.detach(hub, ok.client_id, open.conn_id) {
                    // The connection went away while its open was in flight.
                    let item = RelayItem::Close {
                        client_id: ok.client_id,
                        conn_id: open.conn_id,
                    };
                    if hub.relay.try_send(item).is_err() {
                        tracing::debug!(
                            client = ok.client_id,
                            "relay queue full: ws_close skipped (the session expires)"
                        );
                    }
                }
            }
            Err(error) => {
                shared.metrics.error(ErrorKind::OpenRejected);
                open.outbox.finish(CloseWith::new(
                    close_code::OPEN_FAILED,
                    format!("open failed: {error}"),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(client: ClientId, seq: u64, size: usize) -> RelayItem {
        RelayItem::Message(PendingMessage {
            message: ClientMessage {
                client_id: client,
                seq,
                ack: 0,
                kind: ic_ws_protocol::types::MessageKind::App(vec![0; size]),
                signature: vec![0; 64],
            },
            size,
            outbox: Arc::new(Outbox::new(10, 1000)),
            permit: None,
        })
    }

    fn seqs(batch: &[RelayItem]) -> Vec<(ClientId, u64)> {
        batch
            .iter()
            .filter_map(|i| match i {
                RelayItem::Message(m) => Some((m.message.client_id, m.message.seq)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn batches_are_queue_prefixes_bounded_by_count_and_bytes() {
        let mut q: VecDeque<RelayItem> = (0..10).map(|i| msg(i % 3, i / 3, 100)).collect();
        let first = take_batch(&mut q, 4, 1_000_000);
        assert_eq!(seqs(&first), vec![(0, 0), (1, 0), (2, 0), (0, 1)]);
        let second = take_batch(&mut q, 100, 2 * (ENTRY_OVERHEAD + 100));
        assert_eq!(seqs(&second), vec![(1, 1), (2, 1)]);
        // An entry larger than the byte bound still goes alone (the canister judges it).
        let mut q: VecDeque<RelayItem> = vec![msg(1, 0, 5000), msg(1, 1, 10)].into();
        assert_eq!(seqs(&take_batch(&mut q, 100, 1000)), vec![(1, 0)]);
    }

    proptest::proptest! {
        #[test]
        fn error_texts_in_frames_are_bounded(why in "\\PC{0,3000}", code in 0u16..5000) {
            let WsError::Rejected(text) = trapped("message", &why) else {
                panic!("not Rejected");
            };
            let prefix = "the canister trapped handling this message: ";
            proptest::prop_assert!(text.len() <= prefix.len() + MAX_ERROR_TEXT_BYTES);
            let kept = text.strip_prefix(prefix).unwrap_or_default();
            proptest::prop_assert!(why.starts_with(kept.strip_suffix('…').unwrap_or(kept)));
            // Every close built from peer text fits a close frame, cut on a char boundary.
            for reason in [
                format!("open failed: {}", WsError::Rejected(why.clone())),
                format!("message 7 rejected: {}", trapped("message", &why)),
                format!("canister unavailable: {why}"),
            ] {
                let close = CloseWith::new(code, reason.clone());
                proptest::prop_assert!(close.reason.len() <= 123);
                let kept = close.reason.strip_suffix('…').unwrap_or(&close.reason);
                proptest::prop_assert!(reason.starts_with(kept));
            }
        }
    }

    #[test]
    fn only_sequence_consuming_errors_let_a_session_continue() {
        assert!(!is_fatal(&WsError::Rejected("no".into())));
        assert!(!is_fatal(&WsError::DecodeError("bad".into())));
        assert!(is_fatal(&WsError::OutOfSequence {
            expected: 1,
            got: 3
        }));
        assert!(is_fatal(&WsError::InvalidSignature));
        assert!(is_fatal(&WsError::Closed));
    }
}
