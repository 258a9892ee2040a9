//! `GET /v1/revocations/stream` (server-sent events) and
//! `GET /v1/revocations/snapshot`, for any authenticated client (resource
//! servers are clients), each seeing what [`FeedAccess`] lets it see:
//! revocations by token and approval, and those by job, step and workload
//! of the workloads it has a reason to know. A stream whose reader the
//! policy no longer has (removed, or another client id, secret or
//! certificate) is closed at the reload.
//!
//! The stream sends `ready` (the feed position), then what the client
//! missed since its `Last-Event-ID`, then each revocation as it is
//! published, with a keep-alive comment in every quiet interval. When the
//! client's position is unknown here (another epoch: the broker restarted;
//! too far behind; too slow to keep up) it sends `resync` and closes: load
//! the snapshot, then reconnect from the snapshot's position.

use super::client_auth::credentials;
use crate::error::OAuthError;
use crate::feed::{Published, Start};
use crate::state::AppState;
use axum::extract::{RawQuery, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use http::{HeaderMap, HeaderValue, header};
use std::convert::Infallible;
use std::sync::Arc;
use stint_core::decision::DenyReason;
use stint_core::feed_access::FeedAccess;
use stint_core::form::FormParams;
use stint_core::policy::{Policy, Workload};
use stint_proto::revocations::{EVENT_READY, EVENT_RESYNC, EVENT_REVOCATION};
use stint_proto::{REVOCATION_SNAPSHOT_PATH, RevocationEvent};
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::RecvError;

/// The longest `Last-Event-ID` read.
const MAX_EVENT_ID_LEN: usize = 64;

/// An authenticated reader: its workload as the policy described it when
/// it authenticated, what it may see, and the audience it verifies tokens
/// for, if it named one (`?audience=`).
struct Reader {
    workload: Workload,
    access: FeedAccess,
    audience: Option<String>,
}

impl Reader {
    /// Authenticate the reader. A reader that names the audience it
    /// verifies must see every revocation that can touch a token for it,
    /// else it is refused (403) rather than left to miss revocations
    /// without knowing: the SDK's verifier names its audience, and falls
    /// back to the status lists when refused.
    fn authenticate(
        state: &AppState,
        headers: &HeaderMap,
        query: &FeedQuery,
    ) -> Result<Self, OAuthError> {
        let policy = state.policy.load();
        let workload = credentials(headers, None)?.authenticate(&policy)?;
        if let Some(audience) = &query.audience {
            stint_core::ids::validate_audience(audience).map_err(|e| {
                OAuthError::invalid_request(
                    DenyReason::MalformedAudience,
                    format!("the audience is malformed: it {e}"),
                )
            })?;
        }
        let reader = Self {
            access: FeedAccess::for_reader(&policy, workload),
            workload: workload.clone(),
            audience: query.audience.clone(),
        };
        if let Some(audience) = &reader.audience
            && !reader.covers(&policy)
        {
            return Err(OAuthError::new(
                stint_proto::ErrorCode::UnauthorizedClient,
                DenyReason::AudienceNotAllowed,
                format!(
                    "this client would not hear of every revocation for audience {audience:?}: give its workload serves = [{audience:?}] in the policy, or verify with the status lists"
                ),
            )
            .with_status(http::StatusCode::FORBIDDEN));
        }
        Ok(reader)
    }

    /// Whether the reader sees all it needs for the audience it named.
    fn covers(&self, policy: &Policy) -> bool {
        self.audience
            .as_deref()
            .is_none_or(|audience| self.access.covers_audience(policy, audience))
    }

    /// Check the reader against a newly installed policy: `false` if the
    /// credential it authenticated with no longer stands for it, or it no
    /// longer sees all it needs for its audience.
    fn reauthorize(&mut self, policy: &Policy) -> bool {
        match policy.workload(self.workload.name()) {
            Some(now) if self.workload.same_identity(now) => {
                self.access = FeedAccess::for_reader(policy, now);
                self.workload = now.clone();
                self.covers(policy)
            }
            _ => false,
        }
    }

    fn sees(&self, published: &Published) -> bool {
        self.access.sees(published.sub.as_deref())
    }
}

/// The query both feed endpoints take: `audience`, the audience the
/// reader verifies tokens for, at most once.
pub(crate) struct FeedQuery {
    audience: Option<String>,
}

fn feed_query(query: Option<String>) -> Result<FeedQuery, OAuthError> {
    let malformed = || {
        OAuthError::invalid_request(
            DenyReason::MalformedRequest,
            "the only query parameter is audience, once",
        )
    };
    let params =
        FormParams::parse(query.unwrap_or_default().as_bytes()).map_err(|_| malformed())?;
    if params.names().any(|name| name != "audience") || params.names().count() > 1 {
        return Err(malformed());
    }
    Ok(FeedQuery {
        audience: params.get("audience").map(str::to_owned),
    })
}

/// `GET /v1/revocations/stream`.
pub(crate) async fn stream(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let reader = match feed_query(query).and_then(|q| Reader::authenticate(&state, &headers, &q)) {
        Ok(reader) => reader,
        Err(error) => return error.into_response(),
    };
    let client = reader.workload.name().to_owned();
    let last_event_id = headers
        .get("last-event-id")
        .filter(|v| v.len() <= MAX_EVENT_ID_LEN)
        .and_then(|v| v.to_str().ok());
    if headers.contains_key("last-event-id") && last_event_id.is_none() {
        return OAuthError::invalid_request(
            DenyReason::MalformedRequest,
            "Last-Event-ID must be EPOCH.SEQ as the stream sent it",
        )
        .into_response();
    }
    if !state.store_reachable() {
        state.metrics.feed_refused("store_unreachable");
        return OAuthError::unavailable("the broker cannot reach its store; poll the status lists")
            .into_response();
    }
    let Some(client_slot) = state.feed_clients.open(&client) else {
        state.metrics.feed_refused("client_limit");
        return OAuthError::unavailable(&format!(
            "this client already holds {} feed streams, as many as one client may; poll the status lists",
            state.feed_clients.per_client()
        ))
        .with_status(http::StatusCode::TOO_MANY_REQUESTS)
        .into_response();
    };
    let Ok(slot) = Arc::clone(&state.feed_slots).try_acquire_owned() else {
        state.metrics.feed_refused("broker_limit");
        return OAuthError::unavailable(
            "the broker holds as many feed streams as it serves; poll the status lists",
        )
        .into_response();
    };
    let subscription = state.feed.subscribe(last_event_id);
    // No `id` on `ready`: a client that drops during the backlog must
    // resume from the last event it got, not from the head.
    let ready = Event::default()
        .event(EVENT_READY)
        .json_data(&subscription.position)
        .unwrap_or_default();
    let after = subscription.after;
    let (first, backlog, resync) = match subscription.start {
        Start::From(backlog) => (ready, backlog, false),
        Start::Resync => (resync_event(), Vec::new(), true),
    };
    let closing = state.closing.clone();
    let reachable = state.store_reachable.subscribe();
    let feed_state = Arc::clone(&state);
    let start = Phase::Start {
        first,
        resync,
        backlog: backlog.into_iter(),
        live: Live {
            events: subscription.live,
            reader,
            policy: state.policy_installed.subscribe(),
        },
    };
    let slot = Arc::new((slot, client_slot));
    let events = stream::unfold(start, move |phase| {
        // The slot is held for as long as the stream lives.
        let _slot = Arc::clone(&slot);
        let state = Arc::clone(&feed_state);
        let mut closing = closing.clone();
        let mut reachable = reachable.clone();
        async move {
            match phase {
                Phase::Start {
                    first,
                    resync,
                    backlog,
                    live,
                } => {
                    let next = if resync {
                        Phase::Done
                    } else {
                        Phase::Streaming {
                            backlog,
                            live,
                            last: after,
                        }
                    };
                    Some((Ok::<_, Infallible>(first), next))
                }
                Phase::Streaming {
                    mut backlog,
                    live,
                    last,
                } => {
                    let visible = backlog.by_ref().find(|p| live.reader.sees(p));
                    match visible {
                        Some(published) => Some((
                            Ok(revocation(&state, &published)),
                            Phase::Streaming {
                                backlog,
                                live,
                                last: published.seq,
                            },
                        )),
                        None => next_live(&state, live, last, &mut closing, &mut reachable).await,
                    }
                }
                Phase::Done => None,
            }
        }
    });
    let mut response = Sse::new(events)
        .keep_alive(
            KeepAlive::new()
                .interval(state.feed_keepalive)
                .text("keep-alive"),
        )
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Proxies that buffer responses (nginx) would hold events back.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

enum Phase {
    /// `ready` (or `resync`) first.
    Start {
        first: Event,
        resync: bool,
        backlog: std::vec::IntoIter<Published>,
        live: Live,
    },
    /// The backlog, then live events; `last` is the last seq sent.
    Streaming {
        backlog: std::vec::IntoIter<Published>,
        live: Live,
        last: u64,
    },
    Done,
}

/// A stream's live side: the events, who reads them, and the policy
/// installs to check the reader against.
struct Live {
    events: Receiver<Published>,
    reader: Reader,
    policy: tokio::sync::watch::Receiver<u64>,
}

async fn next_live(
    state: &AppState,
    mut live: Live,
    mut last: u64,
    closing: &mut tokio::sync::watch::Receiver<bool>,
    reachable: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<(Result<Event, Infallible>, Phase)> {
    loop {
        if *closing.borrow() {
            return None;
        }
        // Out of reach of the store: the stream ends, so that verifiers
        // fail closed or turn to the status lists.
        if !*reachable.borrow_and_update() {
            tracing::warn!("feed stream closed: the store is out of reach");
            return None;
        }
        tokio::select! {
            // A policy install first: an event published right after it is
            // then judged by the reader's new access, not its old one.
            biased;
            changed = live.policy.changed() => {
                if changed.is_err() || !live.reader.reauthorize(&state.policy.load()) {
                    tracing::info!(client = %live.reader.workload.name(), "feed stream closed: its client is no longer in the policy as it authenticated");
                    return None;
                }
            }
            received = live.events.recv() => match received {
                // Already sent from the backlog, or not this reader's.
                Ok(published) if published.seq <= last || !live.reader.sees(&published) => {}
                Ok(published) => {
                    last = published.seq;
                    let event = revocation(state, &published);
                    let next = Phase::Streaming { backlog: Vec::new().into_iter(), live, last };
                    return Some((Ok(event), next));
                }
                Err(RecvError::Lagged(_)) => return Some((Ok(resync_event()), Phase::Done)),
                Err(RecvError::Closed) => return None,
            },
            _ = closing.changed() => return None,
            _ = reachable.changed() => {}
        }
    }
}

fn revocation(state: &AppState, published: &Published) -> Event {
    Event::default()
        .event(EVENT_REVOCATION)
        .id(state.feed.event_id(published.seq))
        .data(&*published.json)
}

fn resync_event() -> Event {
    Event::default()
        .event(EVENT_RESYNC)
        .data(format!("{{\"snapshot\":\"{REVOCATION_SNAPSHOT_PATH}\"}}"))
}

/// `GET /v1/revocations/snapshot`: what the reader may see of the
/// revocations in force.
pub(crate) async fn snapshot(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let reader = match feed_query(query).and_then(|q| Reader::authenticate(&state, &headers, &q)) {
        Ok(reader) => reader,
        Err(error) => return error.into_response(),
    };
    // One build at a time, reused while nothing new is published: a client
    // asking in a loop costs a filtered copy of the bytes, not a build.
    let mut cached = state.snapshot_cache.lock().await;
    let now = state.clock.now().timestamp();
    // The position first: every event up to it is already in the set (a
    // revocation enters the set before it is published), so a client that
    // continues from it misses nothing (and may see a few twice).
    let position = state.feed.position();
    let built = match cached
        .as_ref()
        .filter(|c| c.seq == position.seq && (0..SNAPSHOT_REUSE_SECS).contains(&(now - c.built_at)))
    {
        Some(hit) => Arc::clone(&hit.built),
        None => {
            let built = Arc::new(build_snapshot(&state, position));
            *cached = Some(CachedSnapshot {
                seq: built.position.seq,
                built_at: now,
                built: Arc::clone(&built),
            });
            built
        }
    };
    drop(cached);
    let mut response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        built.body_for(&reader.access),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// How long a built snapshot is reused while no revocation is published
/// (entries that expire meanwhile are harmless to a reader).
const SNAPSHOT_REUSE_SECS: i64 = 10;

/// The last snapshot built.
pub(crate) struct CachedSnapshot {
    seq: u64,
    built_at: i64,
    built: Arc<BuiltSnapshot>,
}

/// Every revocation in force, each encoded once with the workload it
/// names, to be filtered for each reader.
pub(crate) struct BuiltSnapshot {
    position: stint_proto::FeedPosition,
    events: Vec<(Option<String>, String)>,
}

impl BuiltSnapshot {
    /// The `RevocationSnapshot` JSON of what `access` may see.
    fn body_for(&self, access: &FeedAccess) -> bytes::Bytes {
        // `RevocationSnapshot` flattens the position into the object:
        // `{"epoch":..,"seq":..` then the revocations. Plain data:
        // serializing cannot fail.
        let position = serde_json::to_string(&self.position).unwrap_or_default();
        let mut body = String::with_capacity(
            64 + self
                .events
                .iter()
                .map(|(_, json)| json.len() + 1)
                .sum::<usize>(),
        );
        body.push_str(position.strip_suffix('}').unwrap_or("{"));
        body.push_str(",\"revocations\":[");
        let mut first = true;
        for (_, json) in self
            .events
            .iter()
            .filter(|(sub, _)| access.sees(sub.as_deref()))
        {
            if !first {
                body.push(',');
            }
            first = false;
            body.push_str(json);
        }
        body.push_str("]}");
        bytes::Bytes::from(body)
    }
}

fn build_snapshot(state: &AppState, position: stint_proto::FeedPosition) -> BuiltSnapshot {
    let seq = position.seq;
    // Also what expired within the largest verifier leeway: verifiers
    // still accept such tokens (the set keeps them that long).
    let entries = state.revocations.entries(
        state.clock.now() - chrono::Duration::seconds(stint_core::access_token::MAX_LEEWAY_SECS),
    );
    let mut revocations = Vec::with_capacity(
        entries.tokens.len()
            + entries.jobs.len()
            + entries.approvals.len()
            + entries.steps.len()
            + entries.workloads.len(),
    );
    let blank = |kind: &str, until: i64| RevocationEvent {
        seq,
        ..RevocationEvent::new(kind, until)
    };
    for (jti, exp) in entries.tokens {
        revocations.push(RevocationEvent {
            jti: Some(jti),
            ..blank("token", exp)
        });
    }
    for (sub, job, until) in entries.jobs {
        revocations.push(RevocationEvent {
            sub: Some(sub),
            job: Some(job),
            ..blank("job", until)
        });
    }
    for (approval, until) in entries.approvals {
        revocations.push(RevocationEvent {
            approval: Some(approval),
            ..blank("approval", until)
        });
    }
    for (sub, job, step, until) in entries.steps {
        revocations.push(RevocationEvent {
            sub: Some(sub),
            job: Some(job),
            step: Some(step),
            ..blank("step", until)
        });
    }
    for (sub, issued_before, until) in entries.workloads {
        revocations.push(RevocationEvent {
            sub: Some(sub),
            issued_before: Some(issued_before),
            ..blank("workload", until)
        });
    }
    let events = revocations
        .into_iter()
        .map(|event| {
            // Plain data: serializing cannot fail.
            let json = serde_json::to_string(&event).unwrap_or_default();
            (event.sub, json)
        })
        .collect();
    BuiltSnapshot { position, events }
}
