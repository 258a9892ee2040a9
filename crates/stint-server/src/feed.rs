//! The revocation feed: every revocation, in order, with a sequence
//! number, for verifiers that stay connected (`GET /v1/revocations/stream`,
//! server-sent events).
//!
//! Sequence numbers are the store's change feed's ([`crate::changes`]):
//! one sequence for every broker sharing the store, in commit order, so a
//! client that reconnects through a load balancer to another broker
//! resumes where it was. An SSE `id` is `EPOCH.SEQ`, the epoch the store's.
//! Revocations are a subsequence of the changes, so ids have gaps. A client
//! that reconnects with `Last-Event-ID` gets what it missed from the
//! backlog (the last [`BACKLOG`] events), or, if it is too far behind, from
//! another epoch, or too slow to keep up, a `resync` event telling it to
//! load the snapshot and reconnect. A client ahead of this broker (it came
//! from one that applied more) gets the events after its position as this
//! broker applies them. A comment every keep-alive interval lets both ends
//! notice a dead connection.
//!
//! A revocation is published, here, after it is durable and (within a
//! bound) before the broker answers 200, so a subscriber can learn of it no
//! later than the caller.

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
    /// The last change applied (published or not).
    seq: u64,
    /// The backlog holds every revocation after this change.
    complete_after: u64,
    backlog: VecDeque<Published>,
    /// Replaced (ending every stream) when the feed restarts.
    sender: broadcast::Sender<Published>,
    /// Events published since the broker started (for metrics: the
    /// sequence counts every change of the store, not only revocations).
    published: u64,
}

/// The feed.
pub(crate) struct Feed {
    epoch: String,
    state: Mutex<State>,
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
    /// Live events up to this one are not sent: the client has them.
    pub(crate) after: u64,
}

impl Feed {
    /// A feed of the store's `epoch`, whose revocations up to change
    /// `seq` are in the snapshot (loaded at start-up).
    pub(crate) fn new(epoch: String, seq: u64) -> Self {
        let (sender, _) = broadcast::channel(CHANNEL);
        Self {
            epoch,
            state: Mutex::new(State {
                seq,
                complete_after: seq,
                backlog: VecDeque::new(),
                sender,
                published: 0,
            }),
        }
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

    /// Revocation events published since the broker started.
    pub(crate) fn published(&self) -> u64 {
        self.state().published
    }

    /// Streams subscribed now (for metrics).
    pub(crate) fn subscribers(&self) -> usize {
        self.state().sender.receiver_count()
    }

    /// Change `seq`, applied here, was not a revocation.
    pub(crate) fn skip(&self, seq: u64) {
        let mut state = self.state();
        state.seq = state.seq.max(seq);
    }

    /// Start again after change `seq`: the changes before it are no
    /// longer known (they were purged from the store while this broker
    /// could not read them). Every stream ends, and a client that comes
    /// back from an earlier position is told to resync.
    pub(crate) fn restart(&self, seq: u64) {
        let mut state = self.state();
        state.seq = seq;
        state.complete_after = seq;
        state.backlog.clear();
        state.sender = broadcast::channel(CHANNEL).0;
    }

    /// Publish revocation `seq` of the change feed (applied in order).
    pub(crate) fn publish(&self, seq: u64, mut event: RevocationEvent) {
        let mut state = self.state();
        if seq <= state.seq {
            return;
        }
        state.seq = seq;
        event.seq = seq;
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
        if state.backlog.len() == BACKLOG
            && let Some(dropped) = state.backlog.pop_front()
        {
            state.complete_after = dropped.seq;
        }
        state.backlog.push_back(published.clone());
        state.published += 1;
        // Sent under the lock, so that the backlog and the live events a
        // new subscriber gets neither overlap nor leave a gap. No
        // subscriber is not an error.
        let _ = state.sender.send(published);
    }

    /// Subscribe, continuing after `last_event_id` (`EPOCH.SEQ`) if given.
    pub(crate) fn subscribe(&self, last_event_id: Option<&str>) -> Subscription {
        let state = self.state();
        let live = state.sender.subscribe();
        let position = FeedPosition {
            epoch: self.epoch.clone(),
            seq: state.seq,
        };
        let (start, after) = match last_event_id {
            None => (Start::From(Vec::new()), state.seq),
            Some(id) => match self.parse_id(id) {
                Some(last) if last < state.complete_after => (Start::Resync, 0),
                Some(last) => (
                    Start::From(
                        state
                            .backlog
                            .iter()
                            .filter(|p| p.seq > last)
                            .cloned()
                            .collect(),
                    ),
                    // Ahead of this broker: the events up to `last`, when
                    // they are applied here, are not sent again.
                    last.max(state.seq),
                ),
                // Another epoch, or garbage.
                None => (Start::Resync, 0),
            },
        };
        Subscription {
            position,
            start,
            live,
            after,
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
        // Started after change 10; changes 12, 14, ... are revocations.
        let feed = Feed::new("e1".into(), 10);
        for n in 1..=5 {
            feed.publish(10 + 2 * n, event(&format!("t{n}")));
            feed.skip(11 + 2 * n);
        }
        assert_eq!(feed.position().seq, 21, "the last change applied");
        assert_eq!(
            seqs(&feed.subscribe(Some(&feed.event_id(15))).start),
            Some(vec![16, 18, 20]),
            "what followed, though ids have gaps"
        );
        assert_eq!(
            seqs(&feed.subscribe(Some(&feed.event_id(10))).start),
            Some(vec![12, 14, 16, 18, 20]),
            "from the position loaded at start-up"
        );
        assert_eq!(
            seqs(&feed.subscribe(Some(&feed.event_id(9))).start),
            None,
            "from before it: unknown here"
        );
        assert_eq!(seqs(&feed.subscribe(None).start), Some(vec![]));
        let ahead = feed.subscribe(Some(&feed.event_id(30)));
        assert_eq!(
            (seqs(&ahead.start), ahead.after),
            (Some(vec![]), 30),
            "a client ahead of this broker waits for what follows its position"
        );
        assert_eq!(
            seqs(&feed.subscribe(Some("otherepoch.3")).start),
            None,
            "another epoch"
        );
        assert_eq!(seqs(&feed.subscribe(Some("garbage")).start), None);
        assert_eq!(seqs(&feed.subscribe(Some("e1.")).start), None, "no number");
    }

    #[test]
    fn a_client_behind_the_backlog_resyncs() {
        let feed = Feed::new("e1".into(), 0);
        for n in 1..=(BACKLOG + 10) {
            feed.publish(n as u64, event(&format!("t{n}")));
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
    async fn a_restart_ends_every_stream_and_resyncs_earlier_positions() {
        let feed = Feed::new("e1".into(), 0);
        feed.publish(1, event("a"));
        let mut before = feed.subscribe(None);
        feed.restart(100);
        assert!(
            matches!(
                before.live.recv().await,
                Err(broadcast::error::RecvError::Closed)
            ),
            "open streams end"
        );
        assert_eq!(seqs(&feed.subscribe(Some(&feed.event_id(1))).start), None);
        assert_eq!(
            seqs(&feed.subscribe(Some(&feed.event_id(100))).start),
            Some(vec![])
        );
        feed.publish(100, event("stale"));
        assert_eq!(
            feed.position().seq,
            100,
            "a change already passed is not published"
        );
    }

    #[tokio::test]
    async fn live_events_follow_the_backlog_without_a_gap() {
        let feed = Feed::new("e1".into(), 0);
        feed.publish(1, event("a"));
        let mut subscription = feed.subscribe(Some(&feed.event_id(0)));
        assert_eq!(seqs(&subscription.start), Some(vec![1]));
        feed.publish(3, event("b"));
        assert_eq!(subscription.live.recv().await.unwrap().seq, 3);
    }
}
