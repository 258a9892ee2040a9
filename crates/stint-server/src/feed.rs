//! The revocation feed: every revocation, in order, with a sequence
//! number, for verifiers that stay connected (`GET /v1/revocations/stream`,
//! server-sent events).
//!
//! Sequence numbers belong to an epoch, new at each broker start; an SSE
//! `id` is `EPOCH.SEQ`. A client that reconnects with `Last-Event-ID` gets
//! what it missed from the backlog (the last [`BACKLOG`] events), or, if it
//! is too far behind, from another epoch, or too slow to keep up, a
//! `resync` event telling it to load the snapshot and reconnect. A comment
//! every keep-alive interval lets both ends notice a dead connection.
//!
//! A revocation is published after it is durable and before the broker
//! answers 200, so a subscriber can learn of it no later than the caller.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SecureRandom;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use stint_proto::{FeedPosition, RevocationEvent};
use tokio::sync::broadcast;

/// Events kept for reconnecting clients.
pub(crate) const BACKLOG: usize = 65_536;
/// Events a connected client may fall behind by before it must resync.
const CHANNEL: usize = 8_192;

/// How many feed streams each client holds, each at most `per_client`.
pub(crate) struct ClientStreams {
    per_client: usize,
    open: Mutex<HashMap<String, usize>>,
}

/// One client's open stream: counted until dropped.
pub(crate) struct ClientStream {
    streams: Arc<ClientStreams>,
    client: String,
}

impl ClientStreams {
    pub(crate) fn new(per_client: usize) -> Self {
        Self {
            per_client,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// A stream for `client`, unless it holds as many as it may.
    pub(crate) fn open(self: &Arc<Self>, client: &str) -> Option<ClientStream> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(client.to_owned()).or_insert(0);
        if *count >= self.per_client {
            if *count == 0 {
                open.remove(client);
            }
            return None;
        }
        *count += 1;
        Some(ClientStream {
            streams: Arc::clone(self),
            client: client.to_owned(),
        })
    }

    pub(crate) fn per_client(&self) -> usize {
        self.per_client
    }
}

impl Drop for ClientStream {
    fn drop(&mut self) {
        let mut open = self.streams.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.client);
            }
        }
    }
}

/// One published event, encoded once for every subscriber.
#[derive(Debug, Clone)]
pub(crate) struct Published {
    pub(crate) seq: u64,
    pub(crate) json: Arc<str>,
    /// The workload the revocation names, if any: who may see it
    /// ([`stint_core::feed_access`]).
    pub(crate) sub: Option<Arc<str>>,
}

struct State {
    seq: u64,
    backlog: VecDeque<Published>,
}

/// The feed.
pub(crate) struct Feed {
    epoch: String,
    state: Mutex<State>,
    sender: broadcast::Sender<Published>,
}

/// Where a subscription starts.
pub(crate) enum Start {
    /// These events first (possibly none), then live ones.
    From(Vec<Published>),
    /// The client must load the snapshot: its position is unknown here.
    Resync,
}

/// A new subscriber: where it starts, and the live events after that.
pub(crate) struct Subscription {
    pub(crate) position: FeedPosition,
    pub(crate) start: Start,
    pub(crate) live: broadcast::Receiver<Published>,
}

impl Feed {
    /// A feed with a fresh epoch.
    pub(crate) fn new(rng: &dyn SecureRandom) -> Result<Self, ring::error::Unspecified> {
        let mut bytes = [0u8; 9];
        rng.fill(&mut bytes)?;
        let (sender, _) = broadcast::channel(CHANNEL);
        Ok(Self {
            epoch: URL_SAFE_NO_PAD.encode(bytes),
            state: Mutex::new(State {
                seq: 0,
                backlog: VecDeque::new(),
            }),
            sender,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where the feed stands.
    pub(crate) fn position(&self) -> FeedPosition {
        FeedPosition {
            epoch: self.epoch.clone(),
            seq: self.state().seq,
        }
    }

    /// Streams subscribed now (for metrics).
    pub(crate) fn subscribers(&self) -> usize {
        self.sender.receiver_count()
    }

    /// Publish a revocation (its `seq` is assigned here).
    pub(crate) fn publish(&self, mut event: RevocationEvent) {
        let mut state = self.state();
        state.seq += 1;
        event.seq = state.seq;
        let json: Arc<str> = match serde_json::to_string(&event) {
            Ok(json) => json.into(),
            Err(error) => {
                tracing::error!(%error, "a revocation event could not be encoded");
                return;
            }
        };
        let published = Published {
            seq: state.seq,
            json,
            sub: event.sub.as_deref().map(Arc::from),
        };
        if state.backlog.len() == BACKLOG {
            state.backlog.pop_front();
        }
        state.backlog.push_back(published.clone());
        // Sent under the lock, so that the backlog and the live events a
        // new subscriber gets neither overlap nor leave a gap. No
        // subscriber is not an error.
        let _ = self.sender.send(published);
    }

    /// Subscribe, continuing after `last_event_id` (`EPOCH.SEQ`) if given.
    pub(crate) fn subscribe(&self, last_event_id: Option<&str>) -> Subscription {
        let state = self.state();
        let live = self.sender.subscribe();
        let position = FeedPosition {
            epoch: self.epoch.clone(),
            seq: state.seq,
        };
        let start = match last_event_id {
            None => Start::From(Vec::new()),
            Some(id) => match self.parse_id(id) {
                Some(last) if last == state.seq => Start::From(Vec::new()),
                Some(last) if last < state.seq => {
                    let oldest = state.backlog.front().map_or(state.seq + 1, |p| p.seq);
                    if last + 1 < oldest {
                        Start::Resync
                    } else {
                        Start::From(
                            state
                                .backlog
                                .iter()
                                .filter(|p| p.seq > last)
                                .cloned()
                                .collect(),
                        )
                    }
                }
                // Another epoch, a position from the future, or garbage.
                _ => Start::Resync,
            },
        };
        Subscription {
            position,
            start,
            live,
        }
    }

    fn parse_id(&self, id: &str) -> Option<u64> {
        let (epoch, seq) = id.split_once('.')?;
        if epoch != self.epoch || seq.len() > 20 {
            return None;
        }
        seq.parse().ok()
    }

    /// The SSE `id` of event `seq`.
    pub(crate) fn event_id(&self, seq: u64) -> String {
        format!("{}.{seq}", self.epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;

    #[test]
    fn each_client_holds_at_most_its_share_of_streams() {
        let streams = Arc::new(ClientStreams::new(2));
        let a1 = streams.open("a").unwrap();
        let _a2 = streams.open("a").unwrap();
        assert!(streams.open("a").is_none(), "a third for the same client");
        let _b = streams.open("b").expect("another client is not held back");
        drop(a1);
        let _a3 = streams.open("a").expect("a closed stream frees its place");
        let none = Arc::new(ClientStreams::new(0));
        assert!(none.open("a").is_none());
        assert!(
            none.open.lock().unwrap().is_empty(),
            "refusals leave nothing behind"
        );
    }

    fn event(jti: &str) -> RevocationEvent {
        RevocationEvent {
            jti: Some(jti.into()),
            ..RevocationEvent::new("token", 2_000)
        }
    }

    fn seqs(start: &Start) -> Option<Vec<u64>> {
        match start {
            Start::From(events) => Some(events.iter().map(|p| p.seq).collect()),
            Start::Resync => None,
        }
    }

    #[test]
    fn reconnecting_clients_get_what_they_missed_or_a_resync() {
        let feed = Feed::new(&SystemRandom::new()).unwrap();
        for n in 0..5 {
            feed.publish(event(&format!("t{n}")));
        }
        assert_eq!(feed.position().seq, 5);
        let id = feed.event_id(2);
        assert_eq!(seqs(&feed.subscribe(Some(&id)).start), Some(vec![3, 4, 5]));
        assert_eq!(
            seqs(&feed.subscribe(Some(&feed.event_id(5))).start),
            Some(vec![])
        );
        assert_eq!(seqs(&feed.subscribe(None).start), Some(vec![]));
        assert_eq!(
            seqs(&feed.subscribe(Some(&feed.event_id(6))).start),
            None,
            "from the future"
        );
        assert_eq!(
            seqs(&feed.subscribe(Some("otherepoch.3")).start),
            None,
            "another epoch"
        );
        assert_eq!(seqs(&feed.subscribe(Some("garbage")).start), None);
    }

    #[test]
    fn a_client_behind_the_backlog_resyncs() {
        let feed = Feed::new(&SystemRandom::new()).unwrap();
        for n in 0..(BACKLOG + 10) {
            feed.publish(event(&format!("t{n}")));
        }
        assert_eq!(seqs(&feed.subscribe(Some(&feed.event_id(5))).start), None);
        let oldest_kept = (BACKLOG + 10 - BACKLOG + 1) as u64;
        let just_in_time = feed.event_id(oldest_kept - 1);
        assert_eq!(
            seqs(&feed.subscribe(Some(&just_in_time)).start).map(|s| s.len()),
            Some(BACKLOG)
        );
    }

    #[tokio::test]
    async fn live_events_follow_the_backlog_without_a_gap() {
        let feed = Feed::new(&SystemRandom::new()).unwrap();
        feed.publish(event("a"));
        let mut subscription = feed.subscribe(Some(&feed.event_id(0)));
        assert_eq!(seqs(&subscription.start), Some(vec![1]));
        feed.publish(event("b"));
        assert_eq!(subscription.live.recv().await.unwrap().seq, 2);
    }
}
