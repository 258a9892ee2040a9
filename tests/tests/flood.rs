//! Floods from one source while an honest client keeps working.
//!
//! The attacker's connections come from 127.0.0.2 (and, for the flood from
//! many sources, 127.0.0.3 to 127.0.0.5), the honest client's from
//! 127.0.0.1: on Linux every 127.0.0.0/8 address is on `lo`, so the broker
//! sees distinct sources. Each test runs its flood for a few seconds
//! against a broker with shortened limits and, while it runs, the honest
//! client checks health, reads the keys, mints and revokes, each request
//! on a new connection; every one of those must succeed. The attacker's
//! requests must leave a bounded number of audit records, not one each.
//! The tests run one at a time (the figures they print are for one flood
//! on an otherwise quiet machine): run with `--nocapture` to see them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::body::Body;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use stint_proto::{JWKS_PATH, REVOCATION_PATH, TOKEN_PATH};
use stint_server::{Limits, Rate};
use stint_tests::{BrokerOptions, TestBroker, basic, client_from, connect_from, eventually};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// One flood at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const HONEST: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// How long the honest client works while a flood is on.
const FLOOD: Duration = Duration::from_secs(3);
/// Attacker tasks per flood: more than the broker's connection cap below.
const ATTACKERS: usize = 150;

/// The limits the floods run against: the production design, scaled down
/// so that a few hundred connections exceed it.
fn flood_limits() -> Limits {
    Limits {
        first_byte_timeout: Duration::from_secs(1),
        header_timeout: Duration::from_secs(2),
        body_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(5),
        max_connections: 128,
        // Four reserved connections a source (a sixteenth).
        reserved_connections: 64,
        max_connections_per_source: 24,
        max_in_flight: 64,
        max_revocations_in_flight: 16,
        max_in_flight_per_client: 16,
        max_unauthenticated_in_flight_per_source: 4,
        // The honest client mints as fast as it can, on one source.
        token_rate_per_client: Rate {
            per_second: 10_000,
            burst: 10_000,
        },
        token_rate_per_source: Rate {
            per_second: 10_000,
            burst: 10_000,
        },
        ..Limits::default()
    }
}

async fn broker_with(limits: Limits) -> TestBroker {
    TestBroker::start_with(BrokerOptions {
        limits,
        feed_max_streams: 8,
        ..BrokerOptions::default()
    })
    .await
}

/// What the honest client did while a flood ran.
#[derive(Debug, Default)]
struct Honest {
    rounds: usize,
    mints: usize,
    revocations: usize,
    failures: Vec<String>,
    slowest: Duration,
    elapsed: Duration,
}

impl Honest {
    fn mints_per_second(&self) -> f64 {
        self.mints as f64 / self.elapsed.as_secs_f64()
    }

    /// Print the figures, and fail unless every request succeeded.
    fn assert_unharmed(&self, flood: &str) {
        eprintln!(
            "flood {flood}: honest client: {} mints in {:.1?} ({:.0}/s), {} revocations, {} health and key reads; slowest round {:.1?}",
            self.mints,
            self.elapsed,
            self.mints_per_second(),
            self.revocations,
            self.rounds * 2,
            self.slowest
        );
        assert!(
            self.failures.is_empty(),
            "{flood}: the honest client was refused {} times, first: {}",
            self.failures.len(),
            self.failures[0]
        );
        assert!(self.mints > 0, "{flood}: the honest client minted nothing");
    }
}

/// Health, keys, a mint and its revocation, each on a new connection from
/// 127.0.0.1, round after round for `FLOOD`.
async fn honest_client(broker: &TestBroker) -> Honest {
    let http = client_from(HONEST);
    let mut honest = Honest::default();
    let started = Instant::now();
    while started.elapsed() < FLOOD {
        let round = Instant::now();
        honest.rounds += 1;
        for path in ["/healthz", JWKS_PATH] {
            match http.get(broker.url(path)).send().await {
                Ok(response) if response.status() == 200 => {}
                Ok(response) => honest
                    .failures
                    .push(format!("GET {path}: {}", response.status())),
                Err(error) => honest.failures.push(format!("GET {path}: {error}")),
            }
        }
        let minted = match mint(broker, &http).await {
            Ok(token) => token,
            Err(failure) => {
                honest.failures.push(failure);
                continue;
            }
        };
        honest.mints += 1;
        match revoke(broker, &http, &minted).await {
            Ok(()) => honest.revocations += 1,
            Err(failure) => honest.failures.push(failure),
        }
        honest.slowest = honest.slowest.max(round.elapsed());
    }
    honest.elapsed = started.elapsed();
    honest
}

async fn mint(broker: &TestBroker, http: &reqwest::Client) -> Result<String, String> {
    let response = http
        .post(broker.url(TOKEN_PATH))
        .basic_auth(&broker.client_id, Some(&broker.client_secret))
        .form(&[
            ("grant_type", "client_credentials"),
            ("step", "read"),
            ("scope", "read:demo/flood"),
            ("audience", "demo-api"),
        ])
        .send()
        .await
        .map_err(|e| format!("mint: {e}"))?;
    let status = response.status();
    let body: Value = response.json().await.map_err(|e| format!("mint: {e}"))?;
    if status != 200 {
        return Err(format!("mint: {status} {body}"));
    }
    Ok(body["access_token"].as_str().unwrap().to_owned())
}

async fn revoke(broker: &TestBroker, http: &reqwest::Client, token: &str) -> Result<(), String> {
    let response = http
        .post(broker.url(REVOCATION_PATH))
        .basic_auth(&broker.client_id, Some(&broker.client_secret))
        .form(&[("token", token)])
        .send()
        .await
        .map_err(|e| format!("revoke: {e}"))?;
    match response.status().as_u16() {
        200 => Ok(()),
        status => Err(format!(
            "revoke: {status} {}",
            response.text().await.unwrap_or_default()
        )),
    }
}

/// The attacker's tasks, stopped (and their connections dropped) on drop.
struct Flood {
    stop: Arc<AtomicBool>,
    /// Connections the attacker opened so far.
    opened: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Flood {
    fn new() -> Self {
        Self {
            stop: Arc::new(AtomicBool::new(false)),
            opened: Arc::new(AtomicUsize::new(0)),
            tasks: Vec::new(),
        }
    }

    /// Run `attack` in `count` tasks, each looping until the flood stops.
    fn spawn<F, Fut>(&mut self, count: usize, attack: F)
    where
        F: Fn(usize) -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        for n in 0..count {
            let (stop, opened, attack) = (
                Arc::clone(&self.stop),
                Arc::clone(&self.opened),
                attack.clone(),
            );
            self.tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let cycle = Instant::now();
                    attack(n).await;
                    opened.fetch_add(1, Ordering::Relaxed);
                    // Bounded churn: at most 20 connections a second a task.
                    tokio::time::sleep(Duration::from_millis(50).saturating_sub(cycle.elapsed()))
                        .await;
                }
            }));
        }
    }

    /// Wait until every task has opened at least one connection.
    async fn at_strength(&self, tasks: usize) {
        let opened = Arc::clone(&self.opened);
        eventually(Duration::from_secs(20), "the flood to start", || {
            let opened = Arc::clone(&opened);
            async move { (opened.load(Ordering::Relaxed) >= tasks).then_some(()) }
        })
        .await;
    }

    async fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
        self.opened.load(Ordering::Relaxed)
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Wait (at most `within`) until the peer closes, or sends something.
async fn until_closed_or_answered(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut buffer = [0u8; 1024];
    match tokio::time::timeout(within, stream.read(&mut buffer)).await {
        Ok(Ok(n)) => buffer[..n].to_vec(),
        _ => Vec::new(),
    }
}

/// The audit records made for requests from `source`.
fn records_from(broker: &TestBroker, source: IpAddr) -> Vec<Value> {
    let prefix = source.to_string();
    broker
        .audit_records()
        .into_iter()
        .filter(|record| {
            record["client_addr"]
                .as_str()
                .is_some_and(|addr| addr == prefix || addr.starts_with(&format!("{prefix}:")))
        })
        .collect()
}

/// Each kind of refusal leaves at most eight records in full and one
/// counted record per aggregation interval (1 s), plus the last ones at the
/// end: for a flood of a few seconds, a few dozen per kind, whatever the
/// number of requests.
fn assert_audit_bounded(flood: &str, records: &[Value], kinds: usize, requests: usize) {
    let intervals = FLOOD.as_secs() as usize + 3;
    let bound = kinds * 9 * intervals;
    eprintln!(
        "flood {flood}: {requests} attacker requests answered, {} audit records from the attacker",
        records.len()
    );
    assert!(
        records.len() <= bound,
        "{flood}: {} audit records for the attacker's requests (at most {bound} expected): the log grows with each refusal",
        records.len()
    );
}

/// The honest client alone, for the figures the floods are compared with.
#[tokio::test]
async fn no_flood_for_reference() {
    let _serial = SERIAL.lock().await;
    let broker = broker_with(flood_limits()).await;
    let honest = honest_client(&broker).await;
    honest.assert_unharmed("none (reference)");
}

/// Silent connections from one source, each held for `hold` (or until the
/// broker closes it) and opened again, while the honest client works.
async fn silent_flood(hold: Duration, what: &str) {
    let _serial = SERIAL.lock().await;
    let broker = broker_with(flood_limits()).await;
    let addr = broker.server().local_addr();
    let mut flood = Flood::new();
    flood.spawn(ATTACKERS, move |_| async move {
        if let Ok(mut stream) = connect_from(ATTACKER, addr).await {
            until_closed_or_answered(&mut stream, hold).await;
        }
    });
    flood.at_strength(ATTACKERS).await;
    let honest = honest_client(&broker).await;
    let connections = flood.stop().await;
    eprintln!(
        "flood {what}: {connections} attacker connections in about {:.0?}",
        honest.elapsed
    );
    honest.assert_unharmed(what);
    assert!(records_from(&broker, ATTACKER).is_empty());
}

#[tokio::test]
async fn silent_connections_from_one_source() {
    // Connect, say nothing, and connect again once the broker gives up.
    silent_flood(Duration::from_secs(30), "silent connections").await;
}

#[tokio::test]
async fn reconnect_churn_from_one_source() {
    // Short-lived silent connections, opened again and again: each holds
    // its slot for 100 ms, far less than any timeout.
    silent_flood(Duration::from_millis(100), "reconnect churn").await;
}

#[tokio::test]
async fn one_cheap_http2_request_per_connection() {
    let _serial = SERIAL.lock().await;
    let broker = broker_with(flood_limits()).await;
    let addr = broker.server().local_addr();
    let answered = Arc::new(AtomicUsize::new(0));
    let mut flood = Flood::new();
    let counter = Arc::clone(&answered);
    // An HTTP/2 connection, one health check on it, then hold it open.
    flood.spawn(ATTACKERS, move |_| {
        let counter = Arc::clone(&counter);
        async move {
            let Ok(stream) = connect_from(ATTACKER, addr).await else {
                return;
            };
            let Ok((mut sender, connection)) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
            else {
                return;
            };
            let connection = tokio::spawn(connection);
            let request = axum::http::Request::get(format!("http://{addr}/healthz"))
                .body(Body::empty())
                .unwrap();
            if let Ok(Ok(response)) =
                tokio::time::timeout(Duration::from_secs(5), sender.send_request(request)).await
                && response.status() == 200
            {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            // Held until the broker closes it (or the flood ends).
            let _ = tokio::time::timeout(Duration::from_secs(30), connection).await;
        }
    });
    // As many connections answered as the source may hold.
    eventually(Duration::from_secs(20), "the attacker's requests", || {
        let answered = Arc::clone(&answered);
        async move { (answered.load(Ordering::Relaxed) >= 24).then_some(()) }
    })
    .await;
    flood.at_strength(ATTACKERS).await;
    let honest = honest_client(&broker).await;
    flood.stop().await;
    eprintln!(
        "flood http2: {} attacker requests answered",
        answered.load(Ordering::Relaxed)
    );
    honest.assert_unharmed("HTTP/2, one request per connection");
    assert!(records_from(&broker, ATTACKER).is_empty());
}

#[tokio::test]
async fn slow_bodies_from_one_source() {
    let _serial = SERIAL.lock().await;
    // Connections are not what runs out here: requests in flight are.
    let mut broker = broker_with(Limits {
        max_connections: 400,
        max_connections_per_source: 300,
        ..flood_limits()
    })
    .await;
    let addr = broker.server().local_addr();
    let answered = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&answered);
    let mut flood = Flood::new();
    // Headers, the start of a body, and then nothing: to the token endpoint
    // and to revocation, without credentials (they would be in the body)
    // and with wrong ones.
    flood.spawn(ATTACKERS, move |n| {
        let counter = Arc::clone(&counter);
        async move {
            let path = if n % 3 == 0 {
                REVOCATION_PATH
            } else {
                TOKEN_PATH
            };
            let authorization = if n % 2 == 0 {
                format!(
                    "Authorization: {}\r\n",
                    basic("demo-job", "not-the-secret")
                )
            } else {
                String::new()
            };
            let request = format!(
                "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{authorization}\
                 Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ntoken="
            );
            let Ok(mut stream) = connect_from(ATTACKER, addr).await else {
                return;
            };
            if stream.write_all(request.as_bytes()).await.is_ok()
                && !until_closed_or_answered(&mut stream, Duration::from_secs(30))
                    .await
                    .is_empty()
            {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    flood.at_strength(ATTACKERS).await;
    let honest = honest_client(&broker).await;
    flood.stop().await;
    honest.assert_unharmed("slow bodies");
    // What the attacker sent is audited (once each kind in full, then
    // counted), but not one record per request.
    let requests = answered.load(Ordering::Relaxed);
    let records = records_after_stop(&mut broker, ATTACKER).await;
    assert_audit_bounded("slow bodies", &records, 4, requests);
}

/// The attacker's records, once the broker has stopped (and so written
/// what it had counted).
async fn records_after_stop(broker: &mut TestBroker, source: IpAddr) -> Vec<Value> {
    broker.stop().await;
    records_from(broker, source)
}

#[tokio::test]
async fn an_unauthenticated_credential_spray_from_one_source() {
    let _serial = SERIAL.lock().await;
    let mut broker = broker_with(Limits {
        token_rate_per_source: Rate {
            per_second: 500,
            burst: 500,
        },
        ..flood_limits()
    })
    .await;
    let addr = broker.server().local_addr();
    let statuses = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
    let retry_after_ok = Arc::new(AtomicBool::new(true));
    let mut flood = Flood::new();
    let (counts, retry_ok) = (Arc::clone(&statuses), Arc::clone(&retry_after_ok));
    // A keep-alive client that guesses secrets as fast as it is answered:
    // for the demo workload, and for client ids the policy does not know.
    flood.spawn(16, move |n| {
        let (counts, retry_ok) = (Arc::clone(&counts), Arc::clone(&retry_ok));
        async move {
            let http = reqwest::Client::builder()
                .local_address(ATTACKER)
                .build()
                .unwrap();
            let started = Instant::now();
            let mut guess = 0u64;
            while started.elapsed() < Duration::from_millis(500) {
                guess += 1;
                let client = if n % 2 == 0 {
                    "demo-job"
                } else {
                    "guessed-client"
                };
                let Ok(response) = http
                    .post(format!("http://{addr}{TOKEN_PATH}"))
                    .basic_auth(client, Some(format!("guess-{n}-{guess}")))
                    .form(&[("grant_type", "client_credentials"), ("step", "read")])
                    .send()
                    .await
                else {
                    continue;
                };
                let status = response.status().as_u16();
                let retry = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                let body: Value = response.json().await.unwrap_or(Value::Null);
                let description = body["error_description"].as_str().unwrap_or_default();
                // Over the source's rate (a refusal, audited), or over its
                // share of requests in flight (not handled at all, as a
                // shed request is not).
                let kind = match status {
                    429 if description.contains("rate limit") => "429 rate limit",
                    429 if description.contains("in flight") => "429 in flight",
                    401 => "401",
                    _ => "other",
                };
                if status == 429
                    && (retry.is_none_or(|s| s == 0) || body["error"] != "temporarily_unavailable")
                {
                    retry_ok.store(false, Ordering::Relaxed);
                }
                *counts.lock().unwrap().entry(kind).or_insert(0usize) += 1;
            }
        }
    });
    flood.at_strength(16).await;
    let honest = honest_client(&broker).await;
    flood.stop().await;
    honest.assert_unharmed("credential spray");
    let statuses = statuses.lock().unwrap().clone();
    let requests: usize = statuses.values().sum();
    let refused = statuses.get("401").copied().unwrap_or(0)
        + statuses.get("429 rate limit").copied().unwrap_or(0);
    eprintln!("flood spray: attacker answers: {statuses:?}");
    assert!(!statuses.contains_key("other"), "{statuses:?}");
    assert!(
        statuses.contains_key("401") && statuses.contains_key("429 rate limit"),
        "wrong guesses get 401, and past the source's rate 429: {statuses:?}"
    );
    assert!(
        retry_after_ok.load(Ordering::Relaxed),
        "every 429 says when to retry, in an OAuth error body"
    );
    let records = records_after_stop(&mut broker, ATTACKER).await;
    // Three kinds: a wrong secret for a known client, an unknown client,
    // and the rate limit.
    assert_audit_bounded("credential spray", &records, 3, requests);
    // ... and every refusal is in the log, in full or counted, once the
    // in-flight requests of the flood's end are answered.
    let audited: u64 = records
        .iter()
        .map(|r| r["count"].as_u64().unwrap_or(1))
        .sum();
    assert!(
        audited as usize >= refused,
        "{audited} refusals audited, {refused} answered"
    );
    let denied: Vec<_> = records
        .iter()
        .filter(|r| r["count"].is_null())
        .map(|r| r["reason"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(denied.contains(&"invalid_client".to_owned()), "{denied:?}");
    assert!(denied.contains(&"rate_limited".to_owned()), "{denied:?}");
}

/// Beyond one source: four attacking sources fill the general
/// connections, and the reserve still serves health, keys and revocation
/// (not minting) on new connections, while a connection opened before the
/// flood keeps minting. (A new connection may still find a general slot
/// that an attacker's connection just left: the test counts how many were
/// served from the reserve.)
#[tokio::test]
async fn a_flood_from_many_sources_leaves_the_reserve_for_revocation() {
    let _serial = SERIAL.lock().await;
    let broker = broker_with(flood_limits()).await;
    let addr = broker.server().local_addr();
    // A client with its connection open from before the flood.
    let pooled = reqwest::Client::builder()
        .local_address(HONEST)
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let early = mint(&broker, &pooled).await.unwrap();
    let mut flood = Flood::new();
    for source in 2..=5u8 {
        flood.spawn(ATTACKERS / 3, move |_| async move {
            let from = IpAddr::V4(Ipv4Addr::new(127, 0, 0, source));
            if let Ok(mut stream) = connect_from(from, addr).await {
                until_closed_or_answered(&mut stream, Duration::from_secs(30)).await;
            }
        });
    }
    flood.at_strength(4 * (ATTACKERS / 3)).await;
    let fresh = client_from(HONEST);
    let started = Instant::now();
    let (mut rounds, mut pooled_mints, mut reserved) = (0, 0, 0);
    while started.elapsed() < FLOOD {
        rounds += 1;
        for path in ["/healthz", JWKS_PATH] {
            let response = fresh.get(broker.url(path)).send().await.unwrap();
            assert_eq!(response.status(), 200, "GET {path} on a new connection");
        }
        let token = mint(&broker, &pooled).await.unwrap();
        pooled_mints += 1;
        revoke(&broker, &fresh, &token).await.unwrap();
        // A mint on a new connection that came in on the reserve is
        // refused, with a reason.
        match mint(&broker, &fresh).await {
            Ok(_) => {}
            Err(failure) => {
                assert!(
                    failure.contains("503") && failure.contains("connection limit"),
                    "{failure}"
                );
                reserved += 1;
            }
        }
    }
    flood.stop().await;
    eprintln!(
        "flood many sources: {pooled_mints} mints on the pooled connection in {:.1?}, {rounds} health checks and revocations on new connections, {reserved} of them on the reserve",
        started.elapsed()
    );
    assert!(reserved > 0, "no new connection came in on the reserve");
    revoke(&broker, &fresh, &early).await.unwrap();
    let metrics = broker.metrics().await;
    assert!(
        metrics.contains("stint_connections_refused_total{limit=\"reserve_share_per_source\"}"),
        "each attacking source was held to its share of the reserve:\n{metrics}"
    );
    // Once the flood is over, new connections mint again.
    eventually(
        Duration::from_secs(10),
        "minting on new connections",
        || {
            let (broker, fresh) = (&broker, &fresh);
            async move { mint(broker, fresh).await.ok() }
        },
    )
    .await;
}
