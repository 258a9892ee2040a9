//! What a client can make the broker hold, and for how long: connections
//! that say nothing, idle keep-alive connections, slow bodies, too many
//! requests at once (in all, per client, and revocations apart), token
//! requests past the rate limits, repeated bad credentials in the audit
//! log, a client that hangs up mid-decision, and a second broker on the
//! same data directory. (Floods, with an honest client beside them, are in
//! flood.rs.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};
use stint_proto::{INTROSPECTION_PATH, REVOCATION_PATH, TOKEN_PATH};
use stint_server::{Limits, Rate};
use stint_tests::{BrokerOptions, TestBroker, basic, client_from, test_secret};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Short limits, so that the tests wait seconds, not minutes.
fn short_limits() -> Limits {
    Limits {
        first_byte_timeout: Duration::from_secs(1),
        header_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        ..Limits::default()
    }
}

async fn broker_with(limits: Limits) -> TestBroker {
    TestBroker::start_with(BrokerOptions {
        limits,
        ..BrokerOptions::default()
    })
    .await
}

/// Read until the peer closes the connection; returns what was read and
/// how long that took. Fails the test if it stays open past `within`.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout(within, stream.read(&mut buffer)).await {
            Err(_) => panic!(
                "the connection was still open after {within:?}; read so far: {:?}",
                String::from_utf8_lossy(&received)
            ),
            Ok(Ok(0) | Err(_)) => return (received, started.elapsed()),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

async fn healthz(broker: &TestBroker) -> reqwest::Response {
    broker
        .http
        .get(broker.url("/healthz"))
        .send()
        .await
        .unwrap()
}

fn get(path: &str, host: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n")
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed() {
    let broker = broker_with(short_limits()).await;
    let mut stream = TcpStream::connect(broker.server().local_addr())
        .await
        .unwrap();
    let (received, took) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(
        received.is_empty(),
        "nothing is sent to a silent client: {received:?}"
    );
    assert!(
        took >= Duration::from_millis(900),
        "closed too early: {took:?}"
    );
}

/// An HTTP/2 client (prior knowledge) that sends the preface and its
/// settings, then nothing: hyper has no timer for that, the broker does.
#[tokio::test]
async fn an_http2_connection_that_never_sends_a_request_is_closed() {
    let broker = broker_with(short_limits()).await;
    let mut stream = TcpStream::connect(broker.server().local_addr())
        .await
        .unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // An empty SETTINGS frame: length 0, type 4, flags 0, stream 0.
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    stream.write_all(&hello).await.unwrap();
    let (received, took) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(
        !received.is_empty(),
        "the server spoke HTTP/2 (its SETTINGS) before closing"
    );
    assert!(
        took >= Duration::from_millis(900),
        "closed too early: {took:?}"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_and_a_busy_one_is_not() {
    // hyper's own header timeout would also end an idle HTTP/1 connection;
    // a longer one here shows the broker's idle timeout doing it.
    let broker = broker_with(Limits {
        header_timeout: Duration::from_secs(8),
        ..short_limits()
    })
    .await;
    let addr = broker.server().local_addr();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let host = addr.to_string();
    // Requests more often than the idle timeout keep the connection open
    // well past it.
    for _ in 0..5 {
        stream
            .write_all(get("/healthz", &host).as_bytes())
            .await
            .unwrap();
        let mut buffer = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
            .await
            .expect("a response")
            .unwrap();
        assert!(
            buffer[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&buffer[..n])
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    // Then silence: closed after about a second.
    let (received, took) = read_until_closed(&mut stream, Duration::from_secs(4)).await;
    assert!(received.is_empty(), "{received:?}");
    assert!(
        took >= Duration::from_millis(500),
        "closed too early: {took:?}"
    );
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_is_refused_and_audited() {
    let broker = broker_with(short_limits()).await;
    let addr = broker.server().local_addr();
    let records_before = broker.audit_records().len();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {INTROSPECTION_PATH} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ntoken=abc",
        basic("demo-job", &test_secret("demo-job"))
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let (received, _) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"error\":\"invalid_request\""), "{text}");
    assert!(text.contains("not sent in time"), "{text}");
    // Introspection refusals are not audited (see docs/http-api.md); the
    // token endpoint's are: the same slow body there leaves a denial.
    assert_eq!(broker.audit_records().len(), records_before);

    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {TOKEN_PATH} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ngrant_type=",
        basic("demo-job", &test_secret("demo-job"))
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let (received, _) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    let records = broker.audit_records();
    let last = records.last().unwrap();
    assert_eq!(last["event"], "token_denied", "{last}");
    assert_eq!(last["reason"], "malformed_request", "{last}");
}

#[tokio::test]
async fn requests_beyond_the_in_flight_cap_get_503() {
    let broker = broker_with(Limits {
        max_in_flight: 1,
        body_timeout: Duration::from_secs(3),
        ..short_limits()
    })
    .await;
    let addr = broker.server().local_addr();
    // Hold the only permit: a request whose body never finishes.
    let mut holder = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {INTROSPECTION_PATH} HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ntoken=",
    );
    holder.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let introspect = || {
        broker
            .http
            .post(broker.url(INTROSPECTION_PATH))
            .basic_auth("demo-job", Some(test_secret("demo-job")))
            .form(&[("token", "x.y.z")])
            .send()
    };
    let response = introspect().await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    // Health, discovery and keys are never shed.
    assert_eq!(healthz(&broker).await.status(), 200);
    let jwks = broker
        .http
        .get(broker.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(jwks.status(), 200);

    // Once the holder's body times out, the permit is back.
    let (received, _) = read_until_closed(&mut holder, Duration::from_secs(10)).await;
    assert!(received.starts_with(b"HTTP/1.1 408"));
    assert_eq!(
        introspect().await.unwrap().status(),
        200,
        "handled again: an inactive token (RFC 7662), not a shed request"
    );
    assert!(
        broker
            .metrics()
            .await
            .contains("stint_requests_shed_total 1"),
        "the shed request is counted"
    );
}

/// A client that hangs up right after sending a revocation must not leave
/// a revocation that is in force but unaudited, or audited but not in
/// force: once a handler has started it runs to completion on its own task.
/// (A request the server had not started when the client hung up is simply
/// not made; the client never saw a 200 and must retry.)
#[tokio::test]
async fn a_client_hanging_up_mid_revocation_leaves_no_half_decision() {
    let broker = TestBroker::start().await;
    let addr = broker.server().local_addr();
    let mut tokens = Vec::new();
    for i in 0..40 {
        let minted = broker
            .mint("read", &format!("read:demo/{i}"), &[("ttl", "600")])
            .await;
        tokens.push(minted["access_token"].as_str().unwrap().to_owned());
    }
    for token in &tokens {
        let body = format!("token={token}");
        let request = format!(
            "POST {REVOCATION_PATH} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            basic("demo-job", &test_secret("demo-job")),
            body.len()
        );
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        // Hang up at once, without reading the answer.
        drop(stream);
    }
    let jti = |token: &str| stint_tests::decode_jwt(token).1["jti"].clone();
    let revoked = stint_tests::eventually(
        Duration::from_secs(10),
        "every token audited as revoked if and only if it is inactive",
        || {
            let (broker, tokens) = (&broker, &tokens);
            async move {
                let records = broker.audit_records();
                let mut revoked = 0;
                for token in tokens {
                    let audited = records
                        .iter()
                        .any(|r| r["event"] == "token_revoked" && r["jti"] == jti(token));
                    let active = broker.introspect(token).await["active"] == true;
                    if audited == active {
                        return None;
                    }
                    revoked += usize::from(audited);
                }
                Some(revoked)
            }
        },
    )
    .await;
    assert!(
        revoked > 0,
        "no revocation was started before its client hung up: the test shows nothing"
    );
}

#[tokio::test]
async fn a_second_broker_on_the_same_data_directory_is_refused() {
    let broker = TestBroker::start().await;
    let config = stint_server::Config::dev(broker.data_dir(), "127.0.0.1:0".parse().unwrap());
    let error = match stint_server::start(config).await {
        Ok(_) => panic!("a second broker started on a data directory in use"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("another stintd is using this data directory"),
        "{error}"
    );
    assert!(error.contains(stint_server::LOCK_FILE), "{error}");
    // The first one is untouched.
    let minted = broker.mint("read", "read:demo/x", &[]).await;
    assert!(minted["access_token"].is_string(), "{minted}");
}

/// A connection that sends nothing is closed after the first-byte timeout,
/// well before the header timeout a connection that has started talking
/// gets.
#[tokio::test]
async fn a_silent_connection_is_closed_at_the_first_byte_timeout() {
    let broker = broker_with(Limits {
        first_byte_timeout: Duration::from_secs(1),
        header_timeout: Duration::from_secs(8),
        ..short_limits()
    })
    .await;
    let addr = broker.server().local_addr();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let (received, took) = read_until_closed(&mut silent, Duration::from_secs(4)).await;
    assert!(received.is_empty(), "{received:?}");
    assert!(
        took >= Duration::from_millis(900),
        "closed too early: {took:?}"
    );
    // One byte, and the connection has the header timeout for the rest.
    let mut talking = TcpStream::connect(addr).await.unwrap();
    talking.write_all(b"G").await.unwrap();
    let mut buffer = [0u8; 16];
    assert!(
        tokio::time::timeout(Duration::from_secs(3), talking.read(&mut buffer))
            .await
            .is_err(),
        "a connection that has sent a byte waits for its headers"
    );
}

/// Slow-body request bytes: headers promising 100 bytes of form, and less.
fn slow_body(path: &str, addr: std::net::SocketAddr, authorization: Option<&str>) -> String {
    let authorization = authorization
        .map(|value| format!("Authorization: {value}\r\n"))
        .unwrap_or_default();
    format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{authorization}\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ngrant_type="
    )
}

#[tokio::test]
async fn basic_credentials_are_checked_before_the_body_is_read() {
    let broker = broker_with(Limits {
        body_timeout: Duration::from_secs(5),
        ..short_limits()
    })
    .await;
    let addr = broker.server().local_addr();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let wrong = basic("demo-job", "not-the-secret");
    stream
        .write_all(slow_body(TOKEN_PATH, addr, Some(&wrong)).as_bytes())
        .await
        .unwrap();
    let started = Instant::now();
    let mut buffer = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buffer))
        .await
        .expect("an answer before the body timeout")
        .unwrap();
    let text = String::from_utf8_lossy(&buffer[..n]);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(text.contains("\"error\":\"invalid_client\""), "{text}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // With the right credentials the body is waited for (and times out).
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let right = basic("demo-job", &test_secret("demo-job"));
    stream
        .write_all(slow_body(TOKEN_PATH, addr, Some(&right)).as_bytes())
        .await
        .unwrap();
    let (received, took) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(
        received.starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&received)
    );
    assert!(took >= Duration::from_secs(4), "{took:?}");
}

/// Open `count` slow-body requests as `client` (held until dropped).
async fn hold_requests(
    broker: &TestBroker,
    path: &str,
    authorization: Option<&str>,
    count: usize,
) -> Vec<TcpStream> {
    let addr = broker.server().local_addr();
    let mut held = Vec::new();
    for _ in 0..count {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(slow_body(path, addr, authorization).as_bytes())
            .await
            .unwrap();
        held.push(stream);
    }
    // They are in flight once the broker answers the next one with the
    // cap's refusal (the callers check that); their own answers come only
    // at the body timeout.
    held
}

#[tokio::test]
async fn revocation_has_its_own_capacity_that_minting_cannot_take() {
    let broker = broker_with(Limits {
        max_in_flight: 4,
        max_in_flight_per_client: 4,
        body_timeout: Duration::from_secs(5),
        ..short_limits()
    })
    .await;
    let token = broker.mint("read", "read:demo/x", &[]).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    // Another workload holds every request slot with authenticated mints
    // whose bodies never come.
    let other = basic("other-job", &test_secret("other-job"));
    let _held = hold_requests(&broker, TOKEN_PATH, Some(&other), 4).await;
    stint_tests::eventually(Duration::from_secs(5), "minting to be full", || async {
        (broker.try_mint("read", "read:demo/y", &[]).await.status() == 503).then_some(())
    })
    .await;
    // Revocation still answers.
    let revoked = broker
        .post_form(REVOCATION_PATH, &[("token", &token)])
        .await;
    assert_eq!(revoked.status(), 200);
    let job = broker
        .http
        .post(broker.url("/v1/jobs/job-1/revoke"))
        .basic_auth(&broker.client_id, Some(&broker.client_secret))
        .send()
        .await
        .unwrap();
    assert_eq!(job.status(), 200);
    // And it worked (introspection shares minting's capacity: it waits
    // for the held requests to go).
    drop(_held);
    stint_tests::eventually(Duration::from_secs(10), "introspection", || async {
        let response = broker
            .post_form(INTROSPECTION_PATH, &[("token", &token)])
            .await;
        if response.status() != 200 {
            return None;
        }
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["active"], false, "{body}");
        Some(())
    })
    .await;
}

#[tokio::test]
async fn a_client_holds_at_most_its_share_of_requests_in_flight() {
    let broker = broker_with(Limits {
        max_in_flight_per_client: 2,
        body_timeout: Duration::from_secs(5),
        ..short_limits()
    })
    .await;
    let other = ("other-job", test_secret("other-job"));
    let _held = hold_requests(&broker, TOKEN_PATH, Some(&basic(other.0, &other.1)), 2).await;
    let response = stint_tests::eventually(Duration::from_secs(5), "the client's cap", || async {
        let response = broker
            .try_mint_as((other.0, &other.1), "read", "read:demo/x", &[])
            .await;
        (response.status() == 429).then_some(response)
    })
    .await;
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .unwrap()
            .to_str()
            .unwrap(),
        "1"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("in flight"),
        "{body}"
    );
    // Another client is not held back.
    let minted = broker.mint("read", "read:demo/x", &[]).await;
    assert!(minted["access_token"].is_string());
}

#[tokio::test]
async fn token_requests_past_a_clients_rate_get_429_with_retry_after() {
    let mut broker = broker_with(Limits {
        token_rate_per_client: Rate {
            per_second: 1,
            burst: 2,
        },
        ..short_limits()
    })
    .await;
    for _ in 0..2 {
        broker.mint("read", "read:demo/x", &[]).await;
    }
    let refused = broker.try_mint("read", "read:demo/x", &[]).await;
    assert_eq!(refused.status(), 429);
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(refused.headers()["cache-control"], "no-store");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("rate limit"),
        "{body}"
    );
    // Another client has its own budget.
    let other = ("other-job", test_secret("other-job"));
    let response = broker
        .try_mint_as((other.0, &other.1), "read", "read:demo/x", &[])
        .await;
    assert_eq!(response.status(), 200);
    broker.stop().await;
    let records = broker.audit_records();
    let limited: Vec<_> = records
        .iter()
        .filter(|r| r["reason"] == "rate_limited")
        .collect();
    assert_eq!(limited.len(), 1, "{limited:?}");
    assert_eq!(limited[0]["client_id"], "demo-job");
    assert_eq!(limited[0]["event"], "token_denied");
}

#[tokio::test]
async fn token_requests_past_a_sources_rate_get_429_whoever_asks() {
    let broker = broker_with(Limits {
        token_rate_per_source: Rate {
            per_second: 1,
            burst: 3,
        },
        ..short_limits()
    })
    .await;
    let busy = client_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    for _ in 0..3 {
        assert_eq!(
            broker.try_mint_with(&busy, "read:demo/x").await.status(),
            200
        );
    }
    let refused = broker.try_mint_with(&busy, "read:demo/x").await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    // Unauthenticated guesses from that source count too.
    let guess = busy
        .post(broker.url(TOKEN_PATH))
        .basic_auth("demo-job", Some("guess"))
        .send()
        .await
        .unwrap();
    assert_eq!(guess.status(), 429);
    // Another source is not held back.
    let calm = client_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
    assert_eq!(
        broker.try_mint_with(&calm, "read:demo/x").await.status(),
        200
    );
}

#[tokio::test]
async fn repeated_bad_credentials_from_one_source_are_audited_as_a_count() {
    let mut broker = broker_with(short_limits()).await;
    let before = broker.audit_records().len();
    for n in 0..50 {
        let response = broker
            .try_mint_as(
                ("demo-job", &format!("wrong-{n}")),
                "read",
                "read:demo/x",
                &[],
            )
            .await;
        assert_eq!(response.status(), 401);
    }
    broker.mint("read", "read:demo/x", &[]).await;
    broker.stop().await;
    let records = broker.audit_records();
    let new = &records[before..];
    let denied: Vec<_> = new
        .iter()
        .filter(|r| r["event"] == "token_denied")
        .collect();
    // The first eight of each interval in full (with their request ids),
    // then counted records for the rest: a handful, not fifty.
    let (full, counted): (Vec<&Value>, Vec<&Value>) =
        denied.iter().copied().partition(|r| r["count"].is_null());
    assert!(full.len() >= 8 && denied.len() <= 24, "{denied:#?}");
    assert!(!counted.is_empty(), "{denied:#?}");
    for record in &full[..8] {
        assert!(record["request_id"].is_string());
        assert_eq!(record["reason"], "invalid_client");
    }
    let total: u64 = counted.iter().map(|r| r["count"].as_u64().unwrap()).sum();
    assert_eq!(
        total as usize + full.len(),
        50,
        "every refusal is in the log, in full or counted: {denied:#?}"
    );
    for record in &counted {
        assert_eq!(record["client_addr"], "127.0.0.1");
        assert_eq!(record["client_id"], "demo-job");
        assert_eq!(record["decision"], "deny");
    }
    // The honest mint after them is recorded in full, as every decision
    // of an authenticated client is.
    assert!(new.iter().any(|r| r["event"] == "token_minted"));
}
