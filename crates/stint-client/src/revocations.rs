//! The verifier's view of the broker's revocations: a snapshot, then the
//! live feed (`/v1/revocations/stream`), kept in memory; and, while the
//! stream is down, the Token Status Lists of the tokens it verifies.
//!
//! A background task holds the stream open, applies each revocation the
//! moment it arrives, and reconnects with `Last-Event-ID` when the
//! connection drops (loading the snapshot again when told to resync).
//! A second task polls the status lists that the tokens verified point at
//! (signed `statuslist+jwt`, checked with the verifier's keys) whenever the
//! feed has been quiet for half the staleness bound: the stream is down,
//! refused, stuck, or resyncing without success. Everything heard on the
//! feed (an event, a keep-alive, a snapshot) keeps the whole view alive; a
//! status list the broker signed recently keeps its own tokens alive.
//! [`RevocationView::check`] fails closed when a token has neither for
//! longer than the configured bound.

use crate::client::{Credentials, read_body, read_body_up_to, read_json_up_to};
use crate::error::Error;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use stint_core::claims::AccessTokenClaims;
use stint_core::jose::JoseError;
use stint_core::jose::KeySet;
use stint_core::status_list::{
    ListTokenError, MAX_LIST_TOKEN_LEN, STATUS_LIST_MEDIA_TYPE, StatusList, StatusReference, VALID,
    verify_list_token,
};
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
/// The most status lists followed (tokens point at one list per broker
/// hour; the oldest is forgotten first).
const MAX_LISTS: usize = 64;
/// A status list's `ttl` when its token does not say.
const DEFAULT_LIST_TTL: u64 = 60;
/// Where the broker serves its status lists, under the issuer.
const STATUS_PATH: &str = "/v1/status/";
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
    /// Status lists fetched while the stream was down, by URI.
    lists: HashMap<String, FetchedList>,
}

/// A verified status list, as last fetched.
pub(crate) struct FetchedList {
    pub(crate) list: StatusList,
    /// Its token's `iat`.
    pub(crate) iat: i64,
    /// Its token's `exp`: past it, the list vouches for nothing.
    pub(crate) exp: i64,
    /// Its token's `ttl` (60 s if absent).
    pub(crate) ttl: u64,
    etag: Option<String>,
    /// When the broker last confirmed it: the start of a fetch answered by
    /// a recently signed list (200, or 304 for the ETag held).
    confirmed: Option<Instant>,
}

impl FetchedList {
    /// Whether a list signed at `iat` can be the broker's current one at
    /// `now`: the broker signs its lists again every `ttl / 2` (and at
    /// once on a change), so an older one is a copy someone kept.
    pub(crate) fn is_recent(&self, now: i64, leeway: i64) -> bool {
        let max_age = i64::try_from(self.ttl / 2).unwrap_or(i64::MAX);
        now.saturating_sub(self.iat) <= max_age.saturating_add(leeway)
    }
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
    shared: Arc<Shared>,
    /// `{issuer}/v1/status/`: only lists there are followed.
    list_prefix: String,
    leeway_secs: i64,
    max_staleness: Duration,
    fail_open: bool,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

/// What the view and its background tasks share. Locks: `wanted` is never
/// held while `known` is taken, nor the other way round.
struct Shared {
    known: RwLock<Known>,
    /// The status list URIs of tokens verified, oldest first (at most
    /// [`MAX_LISTS`]).
    wanted: RwLock<Vec<String>>,
    /// Wakes the list poller when a token names a list not followed yet.
    wake: tokio::sync::Notify,
    /// A status list was signed by a key the verifier does not hold: it
    /// should fetch its keys again.
    keys_wanted: AtomicBool,
}

impl Drop for RevocationView {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
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
    /// The audience the verifier protects, sent as `?audience=`: the broker
    /// refuses a reader that would not hear of every revocation for it,
    /// rather than let it miss some without knowing.
    audience: Option<String>,
    /// How long a silent stream is trusted before it is dropped.
    idle: Duration,
    /// The verifier's keys, which sign status lists too.
    keys: Arc<RwLock<Arc<KeySet>>>,
    leeway_secs: i64,
}

/// How a [`RevocationView`] is set up.
pub(crate) struct ViewConfig {
    pub(crate) http: reqwest::Client,
    pub(crate) stream_http: reqwest::Client,
    pub(crate) issuer: String,
    pub(crate) credentials: Credentials,
    pub(crate) audience: Option<String>,
    pub(crate) max_staleness: Duration,
    pub(crate) fail_open: bool,
    pub(crate) keys: Arc<RwLock<Arc<KeySet>>>,
    pub(crate) leeway_secs: i64,
}

impl RevocationView {
    /// Load the snapshot (an error if the broker cannot be asked: a
    /// verifier that must check revocations does not start blind), then
    /// follow the feed in the background.
    pub(crate) async fn start(config: ViewConfig) -> Result<Self, Error> {
        let list_prefix = format!("{}{STATUS_PATH}", config.issuer);
        let feed = Feed {
            http: config.http,
            stream_http: config.stream_http,
            issuer: config.issuer,
            credentials: config.credentials,
            audience: config.audience,
            idle: config.max_staleness,
            keys: config.keys,
            leeway_secs: config.leeway_secs,
        };
        let shared = Arc::new(Shared {
            known: RwLock::new(Known::default()),
            wanted: RwLock::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
            keys_wanted: AtomicBool::new(false),
        });
        feed.load_snapshot(&shared.known).await?;
        let feed = Arc::new(feed);
        let tasks = [
            tokio::spawn(follow(Arc::clone(&feed), Arc::clone(&shared))),
            tokio::spawn(poll_lists_while_quiet(feed, Arc::clone(&shared))),
        ];
        Ok(Self {
            shared,
            list_prefix,
            leeway_secs: config.leeway_secs,
            max_staleness: config.max_staleness,
            fail_open: config.fail_open,
            tasks,
        })
    }

    /// Whether a status list named a key the verifier does not hold (it
    /// should fetch its keys again).
    pub(crate) fn keys_wanted(&self) -> bool {
        self.shared.keys_wanted.load(Ordering::Relaxed)
    }

    /// The verifier fetched its keys.
    pub(crate) fn keys_fetched(&self) {
        self.shared.keys_wanted.store(false, Ordering::Relaxed);
    }

    /// Whether these claims are revoked, as far as the broker has said;
    /// fails closed ([`Error::RevocationStateStale`]) when, for longer than
    /// the bound, nothing has been heard from the broker and the token's
    /// status list has not been confirmed either, unless the verifier was
    /// built to fail open.
    pub(crate) fn check(&self, claims: &AccessTokenClaims) -> Result<(), Error> {
        let reference = claims
            .status
            .as_ref()
            .map(|status| &status.status_list)
            .filter(|reference| reference.uri.starts_with(&self.list_prefix));
        let result = self.decide(claims, reference);
        if let Some(reference) = reference {
            self.follow_list(&reference.uri);
        }
        result
    }

    fn decide(
        &self,
        claims: &AccessTokenClaims,
        reference: Option<&StatusReference>,
    ) -> Result<(), Error> {
        let known = self.shared.known.read().unwrap_or_else(|p| p.into_inner());
        let rules = Rules {
            max_staleness: self.max_staleness,
            fail_open: self.fail_open,
            leeway_secs: self.leeway_secs,
        };
        judge(&known, &rules, claims, reference, unix_now())
    }

    /// Follow the status list at `uri` (polled while the stream is down).
    fn follow_list(&self, uri: &str) {
        let wanted = &self.shared.wanted;
        if wanted
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|u| u == uri)
        {
            return;
        }
        {
            let mut wanted = wanted.write().unwrap_or_else(|p| p.into_inner());
            if wanted.iter().any(|u| u == uri) {
                return;
            }
            if wanted.len() >= MAX_LISTS {
                // Its fetched list goes at the next poll.
                wanted.remove(0);
            }
            wanted.push(uri.to_owned());
        }
        self.shared.wake.notify_one();
    }
}

/// How a view judges staleness.
struct Rules {
    max_staleness: Duration,
    fail_open: bool,
    leeway_secs: i64,
}

/// Whether `claims` pass, given what is known at `now` (seconds since the
/// epoch): see [`RevocationView::check`].
fn judge(
    known: &Known,
    rules: &Rules,
    claims: &AccessTokenClaims,
    reference: Option<&StatusReference>,
    now: i64,
) -> Result<(), Error> {
    let feed_silent = if known.incompatible {
        Duration::MAX
    } else {
        known.heard.map_or(Duration::MAX, |at| at.elapsed())
    };
    // The token's status list, if fetched. What it says is revoked
    // stays revoked; it vouches for now only if confirmed and not
    // expired.
    let list = reference.and_then(|reference| {
        let fetched = known.lists.get(&reference.uri)?;
        Some((fetched, reference.idx))
    });
    let list_silent = list
        .filter(|(fetched, _)| fetched.exp > now.saturating_sub(rules.leeway_secs))
        .and_then(|(fetched, _)| fetched.confirmed)
        .map_or(Duration::MAX, |at| at.elapsed());
    let silent = feed_silent.min(list_silent);
    if silent > rules.max_staleness {
        if rules.fail_open {
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
    // Any status but VALID (or an index outside the list) is a refusal.
    let revoked = list.is_some_and(|(fetched, idx)| fetched.list.get(idx) != Ok(VALID))
        || known.tokens.contains_key(&claims.jti)
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
        || known
            .steps
            .contains_key(&(claims.sub.clone(), claims.job.clone(), claims.step.clone()));
    if revoked { Err(Error::Revoked) } else { Ok(()) }
}

impl Feed {
    /// `?audience=` when the verifier pins one.
    fn audience_query(&self) -> Vec<(&'static str, &str)> {
        self.audience
            .as_deref()
            .map(|audience| ("audience", audience))
            .into_iter()
            .collect()
    }

    async fn load_snapshot(&self, known: &RwLock<Known>) -> Result<(), Error> {
        let url = format!("{}{REVOCATION_SNAPSHOT_PATH}", self.issuer);
        let response = self
            .http
            .get(&url)
            .query(&self.audience_query())
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
        let mut known = known.write().unwrap_or_else(|p| p.into_inner());
        // The status lists are not the snapshot's: they stay.
        fresh.lists = std::mem::take(&mut known.lists);
        *known = fresh;
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
            .query(&self.audience_query())
            .header(reqwest::header::AUTHORIZATION, self.credentials.basic())
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(position) = &position {
            request = request.header(
                "last-event-id",
                format!("{}.{}", position.epoch, position.seq),
            );
        }
        // A broker that accepts the connection but never answers is as
        // good as down.
        let mut response = match tokio::time::timeout(self.idle, request.send()).await {
            Err(_) => return Err(Error::protocol(&url, "the feed did not answer")),
            Ok(sent) => sent.map_err(|e| Error::unreachable(&url, &e))?,
        };
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
        let mut parser = SseParser::new(MAX_EVENT_LEN);
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
            let blocks = parser.push(&chunk).map_err(|BlockTooLong| {
                Error::protocol(&url, "an event in the feed is too long")
            })?;
            for SseBlock { event, data } in blocks {
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
        }
    }
}

impl Feed {
    /// Fetch every followed status list again (with its ETag), verify it,
    /// and keep it. Failures are logged; a list not confirmed stops
    /// vouching for its tokens once the staleness bound passes.
    async fn poll_lists(&self, shared: &Shared) {
        let uris = shared
            .wanted
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for uri in &uris {
            if let Err(error) = self.poll_list(shared, uri).await {
                tracing::warn!(%error, "could not fetch a status list");
            }
        }
        // Lists no longer followed are dropped.
        let uris = shared
            .wanted
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        shared
            .known
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .lists
            .retain(|uri, _| uris.contains(uri));
    }

    async fn poll_list(&self, shared: &Shared, uri: &str) -> Result<(), Error> {
        // Freshness counts from before the request: a slow answer does not
        // stretch the bound.
        let asked = Instant::now();
        let now = unix_now();
        let etag = shared
            .known
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .lists
            .get(uri)
            .filter(|fetched| fetched.exp > now)
            .and_then(|fetched| fetched.etag.clone());
        // `no-cache`: a cache on the way must ask the broker.
        let mut request = self
            .http
            .get(uri)
            .header(reqwest::header::ACCEPT, STATUS_LIST_MEDIA_TYPE)
            .header(reqwest::header::CACHE_CONTROL, "no-cache");
        if let Some(etag) = &etag {
            request = request.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        let response = request
            .send()
            .await
            .map_err(|e| Error::unreachable(uri, &e))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_MODIFIED && etag.is_some() {
            let mut known = shared.known.write().unwrap_or_else(|p| p.into_inner());
            if let Some(fetched) = known.lists.get_mut(uri) {
                // Only a list the broker could still be serving as is.
                if fetched.is_recent(unix_now(), self.leeway_secs) {
                    fetched.confirmed = Some(asked);
                } else {
                    return Err(Error::protocol(
                        uri,
                        "the status list was confirmed unchanged, but it is older than the broker keeps one: a stale cache?",
                    ));
                }
            }
            return Ok(());
        }
        if status == reqwest::StatusCode::NOT_FOUND {
            // The broker no longer serves it: its tokens have all expired.
            shared
                .wanted
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|u| u != uri);
            shared
                .known
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .lists
                .remove(uri);
            return Ok(());
        }
        if !status.is_success() {
            return Err(Error::protocol(
                uri,
                format!("the status list answered {status}"),
            ));
        }
        let new_etag = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.len() <= 128)
            .map(str::to_owned);
        let body = read_body_up_to(uri, response, MAX_LIST_TOKEN_LEN).await?;
        let keys = Arc::clone(&self.keys.read().unwrap_or_else(|p| p.into_inner()));
        let now = unix_now();
        let mut fetched = match read_list(&body, &keys, uri, now, self.leeway_secs) {
            Ok(fetched) => fetched,
            Err(error) => {
                if error == ListTokenError::Jose(JoseError::UnknownKey) {
                    // A rotated key: the verifier fetches its keys again
                    // at its next verification (rate-limited).
                    shared.keys_wanted.store(true, Ordering::Relaxed);
                }
                return Err(Error::protocol(
                    uri,
                    format!("the status list was refused: {error}"),
                ));
            }
        };
        fetched.etag = new_etag;
        // An old copy still says what was revoked when it was signed, but
        // does not vouch for now.
        let recent = fetched.is_recent(now, self.leeway_secs);
        if recent {
            fetched.confirmed = Some(asked);
        }
        {
            let mut known = shared.known.write().unwrap_or_else(|p| p.into_inner());
            // Never replace a list with an older one (a cache's copy would
            // forget later revocations).
            if known
                .lists
                .get(uri)
                .is_some_and(|held| held.iat > fetched.iat)
            {
                return Err(Error::protocol(
                    uri,
                    "the status list is older than the one held: a stale cache?",
                ));
            }
            known.lists.insert(uri.to_owned(), fetched);
        }
        if recent {
            Ok(())
        } else {
            Err(Error::protocol(
                uri,
                "the status list is older than the broker keeps one: a stale cache?",
            ))
        }
    }
}

/// The list in a status list response's `body` (a `statuslist+jwt`,
/// verified for `uri` with `keys` at `now`), not yet confirmed.
pub(crate) fn read_list(
    body: &[u8],
    keys: &KeySet,
    uri: &str,
    now: i64,
    leeway_secs: i64,
) -> Result<FetchedList, ListTokenError> {
    let token = std::str::from_utf8(body)
        .map_err(|_| JoseError::Malformed("the status list token is not text"))?;
    let verified = verify_list_token(token.trim(), keys, uri, now, leeway_secs)?;
    Ok(FetchedList {
        list: verified.list,
        iat: verified.iat,
        exp: verified.exp,
        ttl: verified.ttl.unwrap_or(DEFAULT_LIST_TTL),
        etag: None,
        confirmed: None,
    })
}

/// Poll the followed status lists whenever the feed has been quiet for half
/// the staleness bound, every third of it (and at once when a token names
/// a list not followed yet), until the verifier is dropped.
async fn poll_lists_while_quiet(feed: Arc<Feed>, shared: Arc<Shared>) {
    let every = feed.idle / 3;
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shared.wake.notified() => {}
        }
        let quiet = {
            let known = shared.known.read().unwrap_or_else(|p| p.into_inner());
            known.incompatible || known.heard.is_none_or(|at| at.elapsed() >= feed.idle / 2)
        };
        if quiet {
            tracing::debug!("the revocation feed is quiet: polling the status lists");
            feed.poll_lists(&shared).await;
        }
    }
}

/// Keep the view current from the feed until the verifier is dropped.
async fn follow(feed: Arc<Feed>, shared: Arc<Shared>) {
    let known = &shared.known;
    let mut failures = 0usize;
    loop {
        match feed.stream(known).await {
            Ok(true) => {
                tracing::info!("the revocation feed asked for a resync: loading the snapshot");
                if let Err(error) = feed.load_snapshot(known).await {
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
                // The status lists carry the verifier meanwhile (see
                // `poll_lists_while_quiet`).
                tracing::warn!(%error, "revocation feed unavailable; retrying");
                failures += 1;
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

/// One block of the event stream: the fields between two blank lines. A
/// block of comments only (a keep-alive) has no event name and no data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SseBlock {
    /// The last `event` field, if any.
    pub(crate) event: Option<String>,
    /// The `data` fields, joined with `\n`.
    pub(crate) data: String,
}

/// A block grew past the limit before its blank line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockTooLong;

/// An incremental `text/event-stream` reader, after WHATWG HTML's "event
/// stream interpretation": a line ends with CRLF, LF or a lone CR (a proxy
/// may rewrite the broker's LF into either), a blank line ends a block, a
/// line starting with `:` is a comment, a field's value loses one leading
/// space, and a leading byte order mark is dropped. Text is UTF-8, decoded
/// lossily line by line (no line ending byte occurs inside a UTF-8
/// sequence, so that is the same as decoding the whole stream). Unlike
/// the standard's dispatch, every block is returned, data or not: for the
/// feed a keep-alive comment is a sign of life.
#[derive(Debug)]
pub(crate) struct SseParser {
    /// The longest block (its lines and line endings so far) accepted.
    max_block_len: usize,
    /// The line being read.
    line: Vec<u8>,
    /// The previous byte was a CR: an LF now completes that line ending.
    after_cr: bool,
    /// Whether a line has ended yet (only the first may start with a BOM).
    started: bool,
    /// The block being read.
    block: SseBlock,
    /// Whether it has a `data` field yet.
    has_data: bool,
    /// Bytes of the block being read, the current line included.
    block_len: usize,
}

impl SseParser {
    /// A reader that refuses blocks longer than `max_block_len` bytes.
    pub(crate) fn new(max_block_len: usize) -> Self {
        Self {
            max_block_len,
            line: Vec::new(),
            after_cr: false,
            started: false,
            block: SseBlock::default(),
            has_data: false,
            block_len: 0,
        }
    }

    /// Read the next bytes of the stream; returns the blocks they complete.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseBlock>, BlockTooLong> {
        let mut blocks = Vec::new();
        for &byte in bytes {
            let after_cr = std::mem::replace(&mut self.after_cr, byte == b'\r');
            if byte == b'\n' && after_cr {
                // The LF of a CRLF: the line already ended at the CR.
                continue;
            }
            self.block_len += 1;
            if self.block_len > self.max_block_len {
                return Err(BlockTooLong);
            }
            if byte == b'\r' || byte == b'\n' {
                if let Some(block) = self.end_line() {
                    blocks.push(block);
                }
            } else {
                self.line.push(byte);
            }
        }
        Ok(blocks)
    }

    /// The current line has ended: apply it, and return the block if it
    /// was the blank line that ends one.
    fn end_line(&mut self) -> Option<SseBlock> {
        let mut line = std::mem::take(&mut self.line);
        if !std::mem::replace(&mut self.started, true) && line.starts_with(b"\xEF\xBB\xBF") {
            line.drain(..3);
        }
        if line.is_empty() {
            self.has_data = false;
            self.block_len = 0;
            return Some(std::mem::take(&mut self.block));
        }
        if line.first() == Some(&b':') {
            return None;
        }
        let line = String::from_utf8_lossy(&line);
        let (field, value) = line.split_once(':').unwrap_or((&line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => self.block.event = Some(value.to_owned()),
            "data" => {
                if std::mem::replace(&mut self.has_data, true) {
                    self.block.data.push('\n');
                }
                self.block.data.push_str(value);
            }
            // `id` and `retry`: the feed's position travels in the events'
            // data, and reconnection has its own backoff.
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(idx: u64) -> AccessTokenClaims {
        AccessTokenClaims {
            iss: "https://stint.test".into(),
            sub: "w".into(),
            aud: "a".into(),
            client_id: "w".into(),
            exp: 2000,
            iat: 1000,
            nbf: 1000,
            jti: "j".into(),
            scope: "read:x".into(),
            job: "job".into(),
            step: "step".into(),
            workflow: "wf".into(),
            cnf: None,
            elev: None,
            status: Some(stint_core::status_list::StatusClaim {
                status_list: StatusReference {
                    idx,
                    uri: "https://stint.test/v1/status/L".into(),
                },
            }),
        }
    }

    #[test]
    fn a_status_list_vouches_while_confirmed_and_its_revocations_stay() {
        let rules = |fail_open| Rules {
            max_staleness: Duration::from_secs(10),
            fail_open,
            leeway_secs: 0,
        };
        let mut list = StatusList::new(1, 8).unwrap();
        list.set(3, stint_core::status_list::INVALID).unwrap();
        let mut known = Known::default();
        known.lists.insert(
            "https://stint.test/v1/status/L".into(),
            FetchedList {
                list,
                iat: 1000,
                exp: 1300,
                ttl: 60,
                etag: None,
                confirmed: Some(Instant::now()),
            },
        );
        let judge_at = |known: &Known, idx: u64, fail_open: bool, now: i64| {
            let claims = claims(idx);
            let reference = claims.status.as_ref().map(|s| &s.status_list);
            judge(known, &rules(fail_open), &claims, reference, now)
        };
        // The feed was never heard: the list alone keeps tokens current.
        assert!(judge_at(&known, 2, false, 1100).is_ok());
        assert!(matches!(
            judge_at(&known, 3, false, 1100),
            Err(Error::Revoked)
        ));
        assert!(
            matches!(judge_at(&known, 99, false, 1100), Err(Error::Revoked)),
            "an index outside the list fails closed"
        );
        // Past the list's exp it vouches for nothing ...
        assert!(matches!(
            judge_at(&known, 2, false, 1300),
            Err(Error::RevocationStateStale { .. })
        ));
        // ... but what it said was revoked stays revoked, even failing open.
        assert!(matches!(
            judge_at(&known, 3, true, 1300),
            Err(Error::Revoked)
        ));
        assert!(judge_at(&known, 2, true, 1300).is_ok());
        // Never confirmed (a cache's stale copy): no vouching either.
        known
            .lists
            .values_mut()
            .for_each(|fetched| fetched.confirmed = None);
        assert!(matches!(
            judge_at(&known, 2, false, 1100),
            Err(Error::RevocationStateStale { .. })
        ));
        // A token whose list is not held has only the feed.
        let mut other = claims(2);
        other.status = None;
        assert!(matches!(
            judge(&Known::default(), &rules(false), &other, None, 1100),
            Err(Error::RevocationStateStale { .. })
        ));
    }

    #[test]
    fn only_a_recently_signed_list_vouches_for_now() {
        let list = |iat: i64, ttl: u64| FetchedList {
            list: StatusList::new(1, 8).unwrap(),
            iat,
            exp: iat + 300,
            ttl,
            etag: None,
            confirmed: None,
        };
        // The broker signs again every ttl / 2 (30 s).
        assert!(list(1000, 60).is_recent(1030, 0));
        assert!(!list(1000, 60).is_recent(1031, 0), "a kept copy");
        assert!(list(1000, 60).is_recent(1040, 10), "within the leeway");
        assert!(!list(1000, 10).is_recent(1010, 0));
        assert!(list(1000, u64::MAX).is_recent(i64::MAX, 0));
    }

    /// The blocks a stream delivered in these chunks yields, as
    /// `Feed::stream` reads them.
    fn blocks_of(chunks: &[&[u8]]) -> Vec<(Option<String>, String)> {
        let mut parser = SseParser::new(MAX_EVENT_LEN);
        let mut blocks = Vec::new();
        for chunk in chunks {
            blocks.extend(parser.push(chunk).unwrap());
        }
        blocks.into_iter().map(|b| (b.event, b.data)).collect()
    }

    fn block(event: Option<&str>, data: &str) -> (Option<String>, String) {
        (event.map(str::to_owned), data.to_owned())
    }

    #[test]
    fn sse_events_end_at_a_blank_line_of_any_line_ending() {
        // WHATWG HTML, event stream interpretation: a line ends with CRLF,
        // LF or CR; a proxy may rewrite the broker's LF into either.
        let expected = vec![
            block(None, ""),
            block(Some("ready"), r#"{"epoch":"e","seq":1}"#),
            block(Some("revocation"), "a\nb"),
        ];
        for eol in ["\n", "\r\n", "\r"] {
            let stream = [
                ": keep-alive",
                "",
                "event: ready",
                r#"data: {"epoch":"e","seq":1}"#,
                "",
                "event: revocation",
                "id: e.1",
                "data: a",
                "data: b",
                "",
            ]
            .map(|line| format!("{line}{eol}"))
            .concat();
            assert_eq!(blocks_of(&[stream.as_bytes()]), expected, "{eol:?}");
            // Cut anywhere, even between the CR and the LF of one line end.
            for cut in 0..=stream.len() {
                let (a, b) = stream.as_bytes().split_at(cut);
                assert_eq!(blocks_of(&[a, b]), expected, "{eol:?} cut at {cut}");
            }
            let bytes: Vec<&[u8]> = stream.as_bytes().chunks(1).collect();
            assert_eq!(blocks_of(&bytes), expected, "{eol:?} byte by byte");
        }
        // Mixed line endings in one stream, and a leading byte order mark.
        assert_eq!(
            blocks_of(&[b"\xEF\xBB\xBFevent: ready\r\ndata: x\r\rdata: y\n\r\n"]),
            vec![block(Some("ready"), "x"), block(None, "y")]
        );
    }

    #[test]
    fn an_sse_block_is_bounded_but_a_stream_is_not() {
        let mut parser = SseParser::new(16);
        for _ in 0..100 {
            assert_eq!(parser.push(b"data: 0123456\r\n\r\n").unwrap().len(), 1);
        }
        assert_eq!(parser.push(b"data: 0123456789"), Ok(Vec::new()));
        assert_eq!(parser.push(b"\r"), Err(BlockTooLong));
        // Lone CRs end the line and then the block.
        let mut parser = SseParser::new(MAX_EVENT_LEN);
        assert_eq!(
            parser.push(b"event: resync\r\r").unwrap(),
            vec![SseBlock {
                event: Some("resync".into()),
                data: String::new()
            }]
        );
    }

    #[test]
    fn revocations_apply_and_expire() {
        let mut known = Known::default();
        known.apply(RevocationEvent {
            seq: 1,
            sub: Some("w".into()),
            job: Some("j".into()),
            ..RevocationEvent::new("job", 100)
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
            ..RevocationEvent::new("tenant", 100)
        });
        assert!(known.incompatible, "a kind it cannot apply: not current");
    }
}
