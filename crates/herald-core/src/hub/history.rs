//! Channels with history: publishing with a position in the channel's stream, in offset order on every
//! node, and reading what a client missed.
//!
//! On one node the stream is in memory and a publication is appended and delivered under one lock, so
//! subscribers see offsets in order. With a shared backend (Redis) the publication is appended and
//! broadcast in one step and every node (the publishing one too) delivers it when it comes back, so
//! there is no local shortcut that could deliver two publications made through different nodes in
//! different orders. Each node remembers the last offset it delivered per channel; a gap is counted
//! and told to the channel's subscribers ([`ChannelEvent::Gap`]) so fronts that can recover do.

use std::sync::Arc;

use crate::broker::{Remote, Topic};
use crate::change::ChannelEvent;
use crate::history::{HistoryBroadcast, HistoryError, HistoryOptions, HistoryStore, Recovery};
use crate::idempotency::{IdempotencyError, IdempotencyStore};
use crate::publication::{Publication, StreamPosition};

use super::Hub;

/// The shared history backend of a cluster: reads, and appends that broadcast.
pub(crate) struct SharedHistory {
    pub(crate) store: Arc<dyn HistoryStore>,
    pub(crate) broadcast: Arc<dyn HistoryBroadcast>,
}

/// What a confirmed publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Published {
    /// Delivered (and, on a channel with history, stored at this position).
    Delivered {
        /// The publication's place in the channel's stream, for channels with history.
        position: Option<StreamPosition>,
    },
    /// Its idempotency key was seen within the window: accepted, not delivered again.
    Repeat,
}

/// Why a confirmed publish was not accepted (nothing was delivered).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfirmError {
    /// The history could not take it.
    #[error(transparent)]
    History(#[from] HistoryError),
    /// The idempotency key could not be checked (or is too long).
    #[error(transparent)]
    Idempotency(#[from] IdempotencyError),
}

impl Hub {
    pub(crate) fn attach_idempotency(&self, store: Arc<dyn IdempotencyStore>) -> bool {
        self.shared_idempotency.set(store).is_ok()
    }

    /// Publishes `publication` and returns once it was accepted: with a position when its channel keeps
    /// history (the app's rules, or `history` given by the front), and at most once per
    /// `idempotency_key` within the window (a repeat is accepted and not delivered). For HTTP clients'
    /// retries and bus consumers that ack only what was accepted.
    pub async fn publish_confirmed(
        &self,
        publication: &Publication,
        history: Option<HistoryOptions>,
        idempotency_key: Option<&str>,
    ) -> Result<Published, ConfirmError> {
        let history = history.or_else(|| self.history_options(&publication.channel));
        if let (Some(key), None) = (idempotency_key, &history) {
            let topic = || Topic::Channel(publication.channel.clone());
            if let Some(sent) = self.publish_once(topic, publication, key).await {
                if !sent? {
                    return Ok(Published::Repeat);
                }
                self.deliver(publication);
                return Ok(Published::Delivered { position: None });
            }
        }
        if let Some(key) = idempotency_key {
            if !self.first_seen(key).await? {
                return Ok(Published::Repeat);
            }
        }
        match history {
            Some(options) => Ok(Published::Delivered { position: Some(self.publish_with_history(publication, options).await?) }),
            None => {
                self.publish(publication);
                Ok(Published::Delivered { position: None })
            }
        }
    }

    /// True if `key` was not seen within the idempotency window (remembering it); a repeat is counted.
    pub(super) async fn first_seen(&self, key: &str) -> Result<bool, IdempotencyError> {
        let store: &dyn IdempotencyStore = match self.shared_idempotency.get() {
            Some(shared) => shared.as_ref(),
            None => self.idempotency.as_ref(),
        };
        let first = store.first_seen(&self.app.id, key).await?;
        if !first {
            metrics::counter!("herald_publish_repeats_total", "app" => self.app.id.clone()).increment(1);
        }
        Ok(first)
    }

    /// With a broker that can ([`crate::Broker::publish_once`]): records `key` and sends `publication`
    /// to the other nodes in one step (`Some(Ok(false))`: a repeat, counted). Local delivery is the
    /// caller's.
    pub(super) async fn publish_once(
        &self,
        topic: impl FnOnce() -> Topic,
        publication: &Publication,
        key: &str,
    ) -> Option<Result<bool, IdempotencyError>> {
        let broker = self.broker.get()?;
        let topic = topic();
        let sent = broker.publish_once(&self.app.id, &topic, Remote::Publish { publication: publication.clone() }, key)?.await;
        if matches!(sent, Ok(false)) {
            metrics::counter!("herald_publish_repeats_total", "app" => self.app.id.clone()).increment(1);
        }
        Some(sent)
    }

    pub(crate) fn attach_history(&self, store: Arc<dyn HistoryStore>, broadcast: Arc<dyn HistoryBroadcast>) -> bool {
        self.shared_history.set(SharedHistory { store, broadcast }).is_ok()
    }

    /// The history `channel` keeps under the app's rules, if any.
    pub fn history_options(&self, channel: &str) -> Option<HistoryOptions> {
        self.app.history_for(channel)
    }

    /// Publishes to a channel with history: the publication gets the next offset of the channel's
    /// stream (and its epoch) and every node delivers it in offset order. Returns its position once the
    /// history accepted it (a confirmable publish: an HTTP API can answer with it, a bus consumer can
    /// ack).
    pub async fn publish_with_history(&self, publication: &Publication, options: HistoryOptions) -> Result<StreamPosition, HistoryError> {
        self.stats.published();
        if let Some(shared) = self.shared_history.get() {
            return shared.broadcast.append_and_broadcast(&self.app.id, publication, options).await;
        }
        let _in_order = self.history_order.lock();
        let position = self.memory_history.append_now(&self.app.id, publication, options)?;
        let mut positioned = publication.clone();
        positioned.position = Some(position.clone());
        self.deliver(&positioned);
        Ok(position)
    }

    /// What `channel` published after `since` (everything kept when `None`), at most `limit`, and
    /// whether that is all a client missed.
    pub async fn history(&self, channel: &str, since: Option<&StreamPosition>, limit: usize) -> Result<Recovery, HistoryError> {
        match self.shared_history.get() {
            Some(shared) => shared.store.since(&self.app.id, channel, since, limit).await,
            None => self.memory_history.since_now(&self.app.id, channel, since, limit),
        }
    }

    /// The channel stream's current position.
    pub async fn stream_position(&self, channel: &str) -> Result<StreamPosition, HistoryError> {
        match self.shared_history.get() {
            Some(shared) => shared.store.position(&self.app.id, channel).await,
            None => self.memory_history.position_now(&self.app.id, channel),
        }
    }

    /// Drops the channel's history; its next publication starts a new epoch.
    pub async fn remove_history(&self, channel: &str) -> Result<(), HistoryError> {
        match self.shared_history.get() {
            Some(shared) => shared.store.remove(&self.app.id, channel).await,
            None => {
                self.memory_history.remove_now(&self.app.id, channel);
                Ok(())
            }
        }
    }

    /// Delivers a publication that carries its stream position, noting the channel's last offset; a
    /// gap (an offset skipped in the same epoch, or a new epoch: the stream was lost, so subscribers
    /// can't know what they missed) is counted and told to the subscribers first. An offset at or
    /// before the last one in the same epoch (two publishes crossing on the sharded path) is delivered
    /// but doesn't move the last offset back, so it causes no second, spurious gap.
    pub(super) fn deliver_in_order(&self, publication: &Publication) -> usize {
        let Some(position) = &publication.position else { return self.deliver(publication) };
        let gap = match self.channels.get_mut(&*publication.channel) {
            Some(mut ch) => {
                let (gap, newer) = match ch.last.as_ref() {
                    None => (false, true),
                    Some(last) if last.epoch != position.epoch => (true, true),
                    Some(last) => (last.offset + 1 < position.offset, last.offset < position.offset),
                };
                if newer {
                    ch.last = Some(position.clone());
                }
                gap
            }
            None => return 0,
        };
        if gap {
            metrics::counter!("herald_history_gaps_total", "app" => self.app.id.clone()).increment(1);
            self.deliver_event(&publication.channel, &ChannelEvent::Gap { position: position.clone() }, None);
        }
        self.deliver(publication)
    }
}
