//! Topics: subscriptions and publishing one shared content to every subscriber.
//!
//! Methods of [`super::State`] for this flow (the state itself and what every flow shares
//! live in `runtime.rs`).

use super::*;

impl State {
    // ---------------------------------------------------------------- topics

    pub(super) fn check_topic(&self, topic: &str) -> Result<(), Error> {
        if topic.is_empty() || topic.len() as u64 > self.config.max_topic_len.min(255) {
            return Err(Error::InvalidArgument(format!(
                "topic length must be 1..={}",
                self.config.max_topic_len.min(255)
            )));
        }
        Ok(())
    }

    pub(crate) fn subscribe(&mut self, id: ClientId, topic: &str) -> Result<(), Error> {
        self.check_topic(topic)?;
        let rec = self.clients.get(&id).ok_or(Error::UnknownClient(id))?;
        if rec.closed {
            return Err(Error::Closed(id));
        }
        let key = sub_key(topic, id);
        if self.subs.contains_key(&key) {
            return Ok(());
        }
        self.check_subscriptions()?;
        let count = self.topics.get(&topic.as_bytes().to_vec()).unwrap_or(0);
        if count >= self.config.max_topic_subscribers {
            return Err(Error::LimitReached(format!(
                "{} subscribers on topic {topic:?}",
                self.config.max_topic_subscribers
            )));
        }
        self.subs.insert(key, ());
        self.client_subs.insert(client_sub_key(id, topic), ());
        self.topics.insert(topic.as_bytes().to_vec(), count + 1);
        Ok(())
    }

    pub(crate) fn unsubscribe(&mut self, id: ClientId, topic: &str) -> bool {
        if self.subs.remove(&sub_key(topic, id)).is_none() {
            return false;
        }
        self.client_subs.remove(&client_sub_key(id, topic));
        let t = topic.as_bytes().to_vec();
        let count = self.topics.get(&t).unwrap_or(1).saturating_sub(1);
        if count == 0 {
            self.topics.remove(&t);
        } else {
            self.topics.insert(t, count);
        }
        true
    }

    pub(super) fn unsubscribe_all(&mut self, id: ClientId) {
        let prefix = id.to_be_bytes().to_vec();
        let mut end = (id + 1).to_be_bytes().to_vec();
        if id == u64::MAX {
            end = vec![0xff; 9];
        }
        let keys: Vec<Vec<u8>> = self.client_subs.keys_range(prefix..end).collect();
        for k in keys {
            let topic = String::from_utf8_lossy(&k[8..]).into_owned();
            self.unsubscribe(id, &topic);
        }
    }

    pub(crate) fn subscriptions(&self, id: ClientId) -> Vec<String> {
        let prefix = id.to_be_bytes().to_vec();
        let end = (id.saturating_add(1)).to_be_bytes().to_vec();
        self.client_subs
            .keys_range(prefix..end)
            .map(|k| String::from_utf8_lossy(&k[8..]).into_owned())
            .collect()
    }

    /// Every subscriber of `topic`, in id order.
    pub(crate) fn subscribers(&self, topic: &str) -> Vec<ClientId> {
        self.subscribers_up_to(topic, usize::MAX)
    }

    /// The first `limit` subscribers of `topic` in id order (reads at most `limit` keys).
    pub(crate) fn subscribers_up_to(&self, topic: &str, limit: usize) -> Vec<ClientId> {
        let mut start = vec![topic.len() as u8];
        start.extend_from_slice(topic.as_bytes());
        let mut end = start.clone();
        end.extend_from_slice(&[0xff; 9]);
        self.subs
            .keys_range(start..end)
            .take(limit)
            .filter_map(|k| {
                k.get(k.len().saturating_sub(8)..)
                    .map(|b| crate::store::Reader::new(b).u64())
            })
            .collect()
    }

    /// Publishes a payload to every subscriber of `topic`, storing the content once.
    pub(crate) fn publish_payload(
        &mut self,
        topic: &str,
        payload: Vec<u8>,
        now: u64,
    ) -> Result<crate::PublishReport, Error> {
        self.check_topic(topic)?;
        let size = payload.len() as u64;
        if size > self.config.max_outbound_payload_bytes {
            return Err(Error::TooLarge {
                size,
                limit: self.config.max_outbound_payload_bytes,
            });
        }
        let content = encode_content(
            now,
            OutboundBody::App {
                topic: Some(topic.to_string()),
                payload,
            },
        );
        let hash = content_hash(&content);
        // The canister-wide cap: room for one copy per subscriber, or nothing is queued.
        let subscribers = self.topics.get(&topic.as_bytes().to_vec()).unwrap_or(0);
        self.check_retained_bytes(size, subscribers)?;
        let pid = self.counters.next_payload_id;
        let mut report = crate::PublishReport::default();
        let mut refs = 0u64;
        for id in self.subscribers(topic) {
            let Some(mut rec) = self.clients.get(&id) else {
                continue;
            };
            if rec.closed {
                continue;
            }
            if !self.fits(&rec, size) {
                match self.overflow(id, now) {
                    Error::QueueOverflowClosed(_) => report.closed.push(id),
                    _ => report.skipped.push(id),
                }
                continue;
            }
            if self.check_canister_room().is_err() {
                report.skipped.push(id);
                continue;
            }
            let Ok(seq) = self.enqueue(
                id,
                &mut rec,
                OutBody::Shared {
                    pid,
                    len: size as u32,
                },
                hash,
            ) else {
                report.skipped.push(id);
                continue;
            };
            self.clients.insert(id, rec);
            report.delivered.push((id, seq));
            refs += 1;
        }
        if refs > 0 {
            self.counters.next_payload_id += 1;
            self.save_counters();
            self.shared.insert(pid, SharedContent { refs, content });
        }
        Ok(report)
    }
}
