//! The verifier's view of the broker's revocations: a snapshot, then the
//! live feed (`/v1/revocations/stream`), kept in memory.
//!
//! A background task holds the stream open, applies each revocation the
//! moment it arrives, and reconnects with `Last-Event-ID` when the
//! connection drops (loading the snapshot again when told to resync, and
//! while the stream cannot be opened: the snapshot is the fallback).
//! Everything heard from the broker (an event, a keep-alive, a snapshot)
//! counts as a sign of life; [`RevocationView::check`] fails closed when
//! there has been none for longer than the configured bound.

use crate::client::{Credentials, read_body, read_json_up_to};
use crate::error::Error;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use stint_core::claims::AccessTokenClaims;
use stint_proto::revocations::{EVENT_READY, EVENT_RESYNC, EVENT_REVOCATION};
use stint_proto::{
    FeedPosition, REVOCATION_SNAPSHOT_PATH, REVOCATION_STREAM_PATH, RevocationEvent,
    RevocationSnapshot,
};

/// The longest single SSE event read (a revocation event is a few hundred
/// bytes).
const MAX_EVENT_LEN: usize = 64 * 1024;
/// How often a long-lived stream's entries are purged.
const PURGE_EVERY: Duration = Duration::from_secs(60);
/// The largest snapshot read (a million entries are about 100 MB of JSON).
const MAX_SNAPSHOT_LEN: usize = 256 * 1024 * 1024;
/// Reconnection delays after a failure, then the last one repeats.
const BACKOFF: [Duration; 4] = [
    Duration::from_millis(100),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
];

#[derive(Default)]
struct Known {
    tokens: HashMap<String, i64>,
    jobs: HashMap<(String, String), i64>,
    steps: HashMap<(String, String, String), i64>,
    approvals: HashMap<String, i64>,
    /// Stopped workloads: tokens issued up to the first value are revoked.
    workloads: HashMap<String, (i64, i64)>,
    position: Option<FeedPosition>,
    heard: Option<Instant>,
    /// The feed sent a kind of revocation this SDK cannot apply: the view
    /// is not current, whatever else arrives.
    incompatible: bool,
}

impl Known {
    fn apply(&mut self, event: RevocationEvent) {
        match event.kind.as_str() {
            "token" => {
                if let Some(jti) = event.jti {
                    self.tokens.insert(jti, event.until);
                }
            }
            "job" => {
                if let (Some(sub), Some(job)) = (event.sub, event.job) {
                    self.jobs.insert((sub, job), event.until);
                }
            }
            "step" => {
                if let (Some(sub), Some(job), Some(step)) = (event.sub, event.job, event.step) {
                    self.steps.insert((sub, job, step), event.until);
                }
            }
            "approval" => {
                if let Some(approval) = event.approval {
                    self.approvals.insert(approval, event.until);
                }
            }
            "workload" => {
                if let (Some(sub), Some(before)) = (event.sub, event.issued_before) {
                    self.workloads.insert(sub, (before, event.until));
                }
            }
            // A kind this SDK does not know: a newer broker. It cannot be
            // applied, so the view is not current: fail closed.
            other => {
                tracing::error!(
                    kind = other,
                    "unknown revocation kind in the feed: upgrade the SDK; refusing tokens until then"
                );
                self.incompatible = true;
            }
        }
    }

    /// Drop entries whose tokens can no longer pass verification even
    /// with the largest clock leeway a verifier allows.
    fn purge(&mut self, now: i64) {
        let now = now - stint_core::access_token::MAX_LEEWAY_SECS;
        self.tokens.retain(|_, until| *until > now);
        self.jobs.retain(|_, until| *until > now);
        self.steps.retain(|_, until| *until > now);
        self.approvals.retain(|_, until| *until > now);
        self.workloads.retain(|_, (_, until)| *until > now);
    }
}

/// What the verifier knows of the broker's revocations, kept current by a
/// background task. Dropping the last handle stops the task.
pub(crate) struct RevocationView {
    known: Arc<RwLock<Known>>,
    max_staleness: Duration,
    fail_open: bool,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RevocationView {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for RevocationView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocationView")
            .field("max_staleness", &self.max_staleness)
            .field("fail_open", &self.fail_open)
            .finish_non_exhaustive()
    }
}

struct Feed {
    http: reqwest::Client,
    stream_http: reqwest::Client,
    issuer: String,
    credentials: Credentials,
    /// How long a silent stream is trusted before it is dropped.
    idle: Duration,
}

impl RevocationView {
    /// Load the snapshot (an error if the broker cannot be asked: a
    /// verifier that must check revocations does not start blind), then
    /// follow the feed in the background.
    pub(crate) async fn start(
        http: reqwest::Client,
        stream_http: reqwest::Client,
        issuer: String,
        credentials: Credentials,
        max_staleness: Duration,
        fail_open: bool,
    ) -> Result<Self, Error> {
        let feed = Feed {
            http,
            stream_http,
            issuer,
            credentials,
            idle: max_staleness,
        };
        let known = Arc::new(RwLock::new(Known::default()));
        feed.load_snapshot(&known).await?;
        let task = tokio::spawn(follow(feed, Arc::clone(&known)));
        Ok(Self {
            known,
            max_staleness,
            fail_open,
            task,
        })
    }

    /// Whether these claims are revoked, as far as the broker has said;
    /// fails closed ([`Error::RevocationStateStale`]) when nothing has been
    /// heard from the broker for longer than the bound, unless the
    /// verifier was built to fail open.
    pub(crate) fn check(&self, claims: &AccessTokenClaims) -> Result<(), Error> {
        let known = self.known.read().unwrap_or_else(|p| p.into_inner());
        let silent = if known.incompatible {
            Duration::MAX
        } else {
            known.heard.map_or(Duration::MAX, |at| at.elapsed())
        };
        if silent > self.max_staleness {
            if self.fail_open {
                tracing::error!(
                    silent_ms = silent.as_millis() as u64,
                    "revocation state is stale and this verifier FAILS OPEN: accepting a token that may be revoked"
                );
            } else {
                return Err(Error::RevocationStateStale {
                    silent: silent.min(Duration::from_secs(u64::from(u32::MAX))),
                });
            }
        }
        let revoked = known.tokens.contains_key(&claims.jti)
            || known
                .jobs
                .contains_key(&(claims.sub.clone(), claims.job.clone()))
            || claims
                .elev
                .as_ref()
                .is_some_and(|approval| known.approvals.contains_key(approval))
            || known
                .workloads
                .get(&claims.sub)
                .is_some_and(|(before, _)| claims.iat <= *before)
            || known.steps.contains_key(&(
                claims.sub.clone(),
                claims.job.clone(),
                claims.step.clone(),
            ));
        if revoked { Err(Error::Revoked) } else { Ok(()) }
    }
}

impl Feed {
    async fn load_snapshot(&self, known: &RwLock<Known>) -> Result<(), Error> {
        let url = format!("{}{REVOCATION_SNAPSHOT_PATH}", self.issuer);
        let response = self
            .http
            .get(&url)
            .header(reqwest::header::AUTHORIZATION, self.credentials.basic())
            .send()
            .await
            .map_err(|e| Error::unreachable(&url, &e))?;
        let snapshot: RevocationSnapshot =
            read_json_up_to(&url, response, MAX_SNAPSHOT_LEN).await?;
        let mut fresh = Known::default();
        for event in snapshot.revocations {
            fresh.apply(event);
        }
        fresh.position = Some(snapshot.position);
        fresh.heard = Some(Instant::now());
        *known.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// Follow the stream until it ends. Returns whether the broker asked
    /// for a resync.
    async fn stream(&self, known: &RwLock<Known>) -> Result<bool, Error> {
        let url = format!("{}{REVOCATION_STREAM_PATH}", self.issuer);
        let position = known
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .position
            .clone();
        let mut request = self
            .stream_http
            .get(&url)
            .header(reqwest::header::AUTHORIZATION, self.credentials.basic())
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(position) = &position {
            request = request.header(
                "last-event-id",
                format!("{}.{}", position.epoch, position.seq),
            );
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| Error::unreachable(&url, &e))?;
        if !response.status().is_success() {
            let status = response.status();
            let body = read_body(&url, response).await.unwrap_or_default();
            return Err(Error::protocol(
                &url,
                format!(
                    "the feed answered {status}: {}",
                    String::from_utf8_lossy(&body)
                ),
            ));
        }
        let mut buffer: Vec<u8> = Vec::new();
        let mut last_purge = Instant::now();
        loop {
            // Silence longer than the staleness bound: the connection is as
            // good as dead (the broker sends keep-alives well within it).
            let chunk = match tokio::time::timeout(self.idle, response.chunk()).await {
                Err(_) => return Err(Error::protocol(&url, "the feed went silent")),
                Ok(Err(error)) => return Err(Error::unreachable(&url, &error)),
                Ok(Ok(None)) => return Ok(false),
                Ok(Ok(Some(chunk))) => chunk,
            };
            buffer.extend_from_slice(&chunk);
            while let Some(end) = find_blank_line(&buffer) {
                let block: Vec<u8> = buffer.drain(..end).collect();
                let block = String::from_utf8_lossy(&block);
                let (event, data) = parse_block(&block);
                let mut known = known.write().unwrap_or_else(|p| p.into_inner());
                // A resync says nothing about what is revoked: not a sign
                // of life (a verifier stuck resyncing must go stale).
                if event.as_deref() != Some(EVENT_RESYNC) {
                    known.heard = Some(Instant::now());
                }
                if last_purge.elapsed() >= PURGE_EVERY {
                    known.purge(unix_now());
                    last_purge = Instant::now();
                }
                match event.as_deref() {
                    Some(EVENT_REVOCATION) => {
                        let event: RevocationEvent = serde_json::from_str(&data)
                            .map_err(|_| Error::protocol(&url, "a revocation event is not JSON"))?;
                        if let Some(position) = &mut known.position {
                            position.seq = event.seq;
                        }
                        known.apply(event);
                    }
                    Some(EVENT_READY) => {
                        let ready: FeedPosition = serde_json::from_str(&data)
                            .map_err(|_| Error::protocol(&url, "the ready event is not JSON"))?;
                        // Backlog events follow; the position moves with them.
                        if known
                            .position
                            .as_ref()
                            .is_none_or(|p| p.epoch != ready.epoch)
                        {
                            known.position = Some(ready);
                        }
                    }
                    Some(EVENT_RESYNC) => return Ok(true),
                    // Keep-alive comments and unknown events: a sign of
                    // life, nothing more.
                    _ => {}
                }
            }
            if buffer.len() > MAX_EVENT_LEN {
                return Err(Error::protocol(&url, "an event in the feed is too long"));
            }
        }
    }
}

/// Keep the view current until the verifier is dropped.
async fn follow(feed: Feed, known: Arc<RwLock<Known>>) {
    let mut failures = 0usize;
    loop {
        match feed.stream(&known).await {
            Ok(true) => {
                tracing::info!("the revocation feed asked for a resync: loading the snapshot");
                if let Err(error) = feed.load_snapshot(&known).await {
                    tracing::warn!(%error, "could not load the revocation snapshot");
                    failures += 1;
                } else {
                    failures = 0;
                    continue;
                }
            }
            Ok(false) => {
                tracing::debug!("the revocation feed closed; reconnecting");
                failures += 1;
            }
            Err(error) => {
                tracing::warn!(%error, "revocation feed unavailable; polling the snapshot until it is back");
                failures += 1;
                // The fallback: the snapshot keeps the view current (and
                // alive) while the stream cannot be held open.
                if feed.load_snapshot(&known).await.is_ok() {
                    tracing::debug!("revocation snapshot loaded");
                }
            }
        }
        let now = unix_now();
        known.write().unwrap_or_else(|p| p.into_inner()).purge(now);
        let delay = BACKOFF[failures.min(BACKOFF.len()).saturating_sub(1)];
        tokio::time::sleep(delay).await;
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The end (past the blank line) of the first complete event in `buffer`.
fn find_blank_line(buffer: &[u8]) -> Option<usize> {
    buffer.windows(2).position(|w| w == b"\n\n").map(|i| i + 2)
}

/// The `event` name and the joined `data` lines of one SSE block; a
/// comment block has no event name.
fn parse_block(block: &str) -> (Option<String>, String) {
    let mut event = None;
    let mut data = Vec::new();
    for line in block.lines() {
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event = Some(value.to_owned()),
            "data" => data.push(value),
            _ => {}
        }
    }
    (event, data.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_blocks_parse() {
        let (event, data) = parse_block("event: revocation\nid: e.3\ndata: {\"a\":1}\n\n");
        assert_eq!(event.as_deref(), Some("revocation"));
        assert_eq!(data, "{\"a\":1}");
        assert_eq!(parse_block(": keep-alive\n\n"), (None, String::new()));
        assert_eq!(find_blank_line(b"data: x\n\nrest"), Some(9));
        assert_eq!(find_blank_line(b"data: x\n"), None);
    }

    #[test]
    fn revocations_apply_and_expire() {
        let mut known = Known::default();
        known.apply(RevocationEvent {
            seq: 1,
            kind: "job".into(),
            jti: None,
            sub: Some("w".into()),
            job: Some("j".into()),
            step: None,
            approval: None,
            issued_before: None,
            until: 100,
        });
        assert!(known.jobs.contains_key(&("w".to_owned(), "j".to_owned())));
        known.purge(399);
        assert!(
            !known.jobs.is_empty(),
            "kept while a lenient verifier could still accept"
        );
        known.purge(100 + stint_core::access_token::MAX_LEEWAY_SECS);
        assert!(known.jobs.is_empty());
        assert!(!known.incompatible);
        known.apply(RevocationEvent {
            seq: 2,
            kind: "tenant".into(),
            jti: None,
            sub: None,
            job: None,
            step: None,
            approval: None,
            issued_before: None,
            until: 100,
        });
        assert!(known.incompatible, "a kind it cannot apply: not current");
    }
}
