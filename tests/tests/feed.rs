//! The revocation feed: server-sent events with sequence numbers,
//! reconnection with Last-Event-ID, resynchronisation, keep-alives, the
//! snapshot, and a broker restarting under connected clients.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::time::{Duration, Instant};
use stint_proto::{
    REVOCATION_PATH, REVOCATION_SNAPSHOT_PATH, REVOCATION_STREAM_PATH, RevocationEvent,
    RevocationSnapshot,
};
use stint_tests::sse::{SseEvent, SseStream};
use stint_tests::{BrokerOptions, TestBroker};

const WAIT: Duration = Duration::from_secs(10);

async fn open(broker: &TestBroker, last_event_id: Option<&str>) -> SseStream {
    let response = SseStream::open(
        &broker.http,
        &broker.url(REVOCATION_STREAM_PATH),
        (&broker.client_id, &broker.client_secret),
        last_event_id,
    )
    .await;
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream",
        "an SSE stream"
    );
    SseStream::new(response)
}

async fn revoke_new_token(broker: &TestBroker, job: &str) -> String {
    let minted = broker.mint("read", "read:demo/a", &[("job", job)]).await;
    let token = minted["access_token"].as_str().unwrap().to_owned();
    let response = broker
        .post_form(REVOCATION_PATH, &[("token", &token)])
        .await;
    assert_eq!(response.status(), 200);
    let (_, claims) = stint_tests::decode_jwt(&token);
    claims["jti"].as_str().unwrap().to_owned()
}

fn revocation(event: &SseEvent) -> RevocationEvent {
    assert_eq!(event.event, "revocation", "{event:?}");
    serde_json::from_str(&event.data).unwrap()
}

#[tokio::test]
async fn subscribers_get_every_revocation_in_order() {
    let broker = TestBroker::start().await;
    let mut stream = open(&broker, None).await;
    let ready = stream.next_event(WAIT).await.unwrap();
    assert_eq!(ready.event, "ready");
    let position: Value = serde_json::from_str(&ready.data).unwrap();
    // The sequence is the store's change feed: it counts every change
    // (the signing key written at start-up too), and the events carry the
    // revocations among them, in order.
    let start = position["seq"].as_u64().unwrap();
    let epoch = position["epoch"].as_str().unwrap().to_owned();
    assert_eq!(
        ready.id, None,
        "ready carries no id: resuming is from events"
    );

    let jti = revoke_new_token(&broker, "job-feed").await;
    let event = stream.next_event(WAIT).await.unwrap();
    let token = revocation(&event);
    assert_eq!((token.seq, token.kind.as_str()), (start + 1, "token"));
    assert_eq!(token.jti.as_deref(), Some(jti.as_str()));
    assert_eq!(
        event.id.as_deref(),
        Some(format!("{epoch}.{}", start + 1).as_str())
    );

    let response = broker.post_form("/v1/jobs/job-feed/revoke", &[]).await;
    assert_eq!(response.status(), 200);
    let job = revocation(&stream.next_event(WAIT).await.unwrap());
    assert_eq!((job.seq, job.kind.as_str()), (start + 2, "job"));
    assert_eq!(job.sub.as_deref(), Some("demo-job"));
    assert_eq!(job.job.as_deref(), Some("job-feed"));
}

#[tokio::test]
async fn a_client_that_reconnects_gets_what_it_missed() {
    let broker = TestBroker::start().await;
    let mut stream = open(&broker, None).await;
    stream.next_event(WAIT).await.unwrap();
    revoke_new_token(&broker, "job-a").await;
    let first = stream.next_event(WAIT).await.unwrap();
    let last_id = first.id.clone().unwrap();
    let a = revocation(&first).seq;
    drop(stream);

    let missed_b = revoke_new_token(&broker, "job-b").await;
    let missed_c = revoke_new_token(&broker, "job-c").await;
    let mut stream = open(&broker, Some(&last_id)).await;
    let ready = stream.next_event(WAIT).await.unwrap();
    assert_eq!(ready.event, "ready");
    let b = revocation(&stream.next_event(WAIT).await.unwrap());
    let c = revocation(&stream.next_event(WAIT).await.unwrap());
    assert_eq!((b.seq, b.jti.unwrap()), (a + 1, missed_b));
    assert_eq!((c.seq, c.jti.unwrap()), (a + 2, missed_c));
    // Then live, without a gap or a repeat.
    let live_d = revoke_new_token(&broker, "job-d").await;
    let d = revocation(&stream.next_event(WAIT).await.unwrap());
    assert_eq!((d.seq, d.jti.unwrap()), (a + 3, live_d));
}

#[tokio::test]
async fn an_unknown_position_gets_a_resync_and_the_snapshot_catches_up() {
    let broker = TestBroker::start().await;
    let start = fetch_snapshot(&broker).await.position.seq;
    let revoked = revoke_new_token(&broker, "job-s").await;
    let response = broker.post_form("/v1/jobs/job-t/revoke", &[]).await;
    assert_eq!(response.status(), 200);

    let mut stream = open(&broker, Some("another-epoch.7")).await;
    let resync = stream.next_event(WAIT).await.unwrap();
    assert_eq!(resync.event, "resync", "{resync:?}");
    assert!(resync.data.contains(REVOCATION_SNAPSHOT_PATH));
    assert_eq!(
        stream.next(WAIT).await,
        None,
        "the broker closes the stream"
    );

    let snapshot = fetch_snapshot(&broker).await;
    assert_eq!(snapshot.position.seq, start + 2);
    assert!(
        snapshot
            .revocations
            .iter()
            .any(|r| r.kind == "token" && r.jti.as_deref() == Some(revoked.as_str()))
    );
    assert!(
        snapshot
            .revocations
            .iter()
            .any(|r| r.kind == "job" && r.job.as_deref() == Some("job-t"))
    );
    // Continuing from the snapshot's position: nothing to resync.
    let position = format!("{}.{}", snapshot.position.epoch, snapshot.position.seq);
    let mut stream = open(&broker, Some(&position)).await;
    assert_eq!(stream.next_event(WAIT).await.unwrap().event, "ready");
    let next = revoke_new_token(&broker, "job-u").await;
    assert_eq!(
        revocation(&stream.next_event(WAIT).await.unwrap()).jti,
        Some(next.clone())
    );
    // A snapshot asked for again after a revocation has it (the broker
    // reuses a snapshot only while nothing new is published).
    let again = fetch_snapshot(&broker).await;
    assert_eq!(again.position.seq, start + 3);
    assert!(
        again
            .revocations
            .iter()
            .any(|r| r.jti.as_deref() == Some(next.as_str()))
    );
    assert_eq!(again.revocations.len(), snapshot.revocations.len() + 1);
}

async fn fetch_snapshot(broker: &TestBroker) -> RevocationSnapshot {
    let response = broker
        .http
        .get(broker.url(REVOCATION_SNAPSHOT_PATH))
        .basic_auth(&broker.client_id, Some(&broker.client_secret))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "application/json");
    response.json().await.unwrap()
}

#[tokio::test]
async fn quiet_streams_carry_keep_alives() {
    let broker = TestBroker::start_with(BrokerOptions {
        feed_keepalive: Duration::from_millis(200),
        ..BrokerOptions::default()
    })
    .await;
    let mut stream = open(&broker, None).await;
    assert_eq!(stream.next_event(WAIT).await.unwrap().event, "ready");
    let started = Instant::now();
    let comment = stream.next(WAIT).await.unwrap();
    assert_eq!(comment.event, ":", "a comment, not an event: {comment:?}");
    assert_eq!(comment.data, "keep-alive");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_stream_outlives_the_idle_timeout() {
    let broker = TestBroker::start_with(BrokerOptions {
        feed_keepalive: Duration::from_millis(200),
        limits: stint_server::Limits {
            idle_timeout: Duration::from_millis(500),
            ..stint_server::Limits::default()
        },
        ..BrokerOptions::default()
    })
    .await;
    let mut stream = open(&broker, None).await;
    assert_eq!(stream.next_event(WAIT).await.unwrap().event, "ready");
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1_500) {
        let comment = stream.next(WAIT).await;
        assert!(comment.is_some(), "the stream was cut while in use");
    }
    let jti = revoke_new_token(&broker, "job-long").await;
    assert_eq!(
        revocation(&stream.next_event(WAIT).await.unwrap()).jti,
        Some(jti)
    );
}

#[tokio::test]
async fn the_feed_needs_client_credentials() {
    let broker = TestBroker::start().await;
    for path in [REVOCATION_STREAM_PATH, REVOCATION_SNAPSHOT_PATH] {
        let anonymous = broker.http.get(broker.url(path)).send().await.unwrap();
        assert_eq!(anonymous.status(), 401, "{path}");
        let wrong = broker
            .http
            .get(broker.url(path))
            .basic_auth(&broker.client_id, Some("stint_wrong"))
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path}");
    }
    let long_id = "x".repeat(65);
    let response = SseStream::open(
        &broker.http,
        &broker.url(REVOCATION_STREAM_PATH),
        (&broker.client_id, &broker.client_secret),
        Some(&long_id),
    )
    .await;
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn a_restarting_broker_ends_streams_and_its_clients_resume() {
    let mut broker = TestBroker::start().await;
    let mut stream = open(&broker, None).await;
    stream.next_event(WAIT).await.unwrap();
    revoke_new_token(&broker, "job-r").await;
    let last_id = stream.next_event(WAIT).await.unwrap().id.unwrap();

    let stopping = Instant::now();
    broker.restart().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "a connected stream does not hold the shutdown"
    );
    assert_eq!(stream.next(WAIT).await, None, "the old stream ended");

    // The position is the store's: it outlives the process, so the client
    // resumes where it was, without a resync, and gets what follows.
    let mut stream = open(&broker, Some(&last_id)).await;
    assert_eq!(stream.next_event(WAIT).await.unwrap().event, "ready");
    let after = revoke_new_token(&broker, "job-r2").await;
    let event = stream.next_event(WAIT).await.unwrap();
    assert_eq!(revocation(&event).jti, Some(after));
    let (epoch, seq) = last_id.split_once('.').unwrap();
    let (next_epoch, next_seq) = event.id.as_deref().unwrap().split_once('.').unwrap();
    assert_eq!(next_epoch, epoch, "the same epoch after the restart");
    assert!(next_seq.parse::<u64>().unwrap() > seq.parse::<u64>().unwrap());
    let snapshot = fetch_snapshot(&broker).await;
    assert_eq!(
        snapshot.revocations.len(),
        2,
        "both revocations are durable"
    );
    // A position from another store's feed is a resync.
    let mut stream = open(&broker, Some(&format!("x{epoch}.{seq}"))).await;
    assert_eq!(stream.next_event(WAIT).await.unwrap().event, "resync");
}

mod verifier {
    use super::*;
    use stint_client::{Credentials, Error, Verifier};

    async fn subscribed(broker: &TestBroker, fail_open: bool) -> Verifier {
        Verifier::builder(broker.issuer())
            .audience("demo-api")
            .revocation_feed(
                Credentials::new("demo-api", stint_tests::test_secret("demo-api")),
                Duration::from_secs(1),
            )
            .revocation_fail_open(fail_open)
            .build()
            .await
            .unwrap()
    }

    async fn token(broker: &TestBroker, job: &str) -> String {
        broker.mint("read", "read:demo/a", &[("job", job)]).await["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn revoked_soon(verifier: &Verifier, token: &str, what: &str) -> Duration {
        let started = Instant::now();
        loop {
            match verifier.verify(token).await {
                Err(Error::Revoked) => return started.elapsed(),
                Ok(_) if started.elapsed() < WAIT => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                other => panic!("{what}: expected Revoked, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_subscribed_verifier_rejects_revoked_tokens_and_fails_closed_when_cut_off() {
        let mut broker = TestBroker::start_with(BrokerOptions {
            feed_keepalive: Duration::from_millis(200),
            ..BrokerOptions::default()
        })
        .await;
        // Revoked before the verifier starts: known from the snapshot.
        let early = token(&broker, "job-early").await;
        let response = broker
            .post_form(REVOCATION_PATH, &[("token", &early)])
            .await;
        assert_eq!(response.status(), 200);

        let verifier = subscribed(&broker, false).await;
        let lenient = subscribed(&broker, true).await;
        assert!(matches!(verifier.verify(&early).await, Err(Error::Revoked)));

        let a = token(&broker, "job-a").await;
        let b = token(&broker, "job-b").await;
        verifier.verify(&a).await.unwrap();
        verifier.verify(&b).await.unwrap();
        let response = broker.post_form(REVOCATION_PATH, &[("token", &a)]).await;
        assert_eq!(response.status(), 200);
        let took = revoked_soon(&verifier, &a, "a revoked token").await;
        assert!(took < Duration::from_secs(2), "{took:?}");
        let response = broker.post_form("/v1/jobs/job-b/revoke", &[]).await;
        assert_eq!(response.status(), 200);
        revoked_soon(&verifier, &b, "a token of a revoked job").await;

        // The broker restarts under the verifier: it resynchronises, keeps
        // what it knew, and hears of revocations made after.
        broker.restart().await;
        let c = token(&broker, "job-c").await;
        let response = broker.post_form(REVOCATION_PATH, &[("token", &c)]).await;
        assert_eq!(response.status(), 200);
        revoked_soon(&verifier, &c, "revoked after a restart").await;
        assert!(matches!(verifier.verify(&a).await, Err(Error::Revoked)));

        // Cut off: after the staleness bound, nothing passes (fail closed),
        // unless the verifier was built to fail open.
        let d = token(&broker, "job-d").await;
        verifier.verify(&d).await.unwrap();
        broker.stop().await;
        let stale = stint_tests::eventually(WAIT, "the verifier goes stale", || async {
            match verifier.verify_with_cached_keys(&d) {
                Err(Error::RevocationStateStale { silent }) => Some(silent),
                _ => None,
            }
        })
        .await;
        assert!(stale > Duration::from_secs(1));
        let error = verifier.verify_with_cached_keys(&d).unwrap_err();
        assert!(error.is_unavailable() && !error.is_denial(), "{error}");
        lenient
            .verify_with_cached_keys(&d)
            .expect("fail-open accepts, and logs it");
        assert!(
            matches!(lenient.verify_with_cached_keys(&a), Err(Error::Revoked)),
            "fail-open still refuses what it knows is revoked"
        );
    }

    #[tokio::test]
    async fn a_verifier_refused_the_stream_follows_the_status_lists() {
        // The broker lets this client hold no stream: the verifier can load
        // the snapshot, but must fall back to polling the status lists.
        let mut broker = TestBroker::start_with(BrokerOptions {
            feed_max_streams_per_client: 0,
            ..BrokerOptions::default()
        })
        .await;
        let refused = SseStream::open(
            &broker.http,
            &broker.url(REVOCATION_STREAM_PATH),
            (&broker.client_id, &broker.client_secret),
            None,
        )
        .await;
        assert_eq!(refused.status(), 429);

        let verifier = subscribed(&broker, false).await;
        let a = token(&broker, "job-a").await;
        let b = token(&broker, "job-b").await;
        verifier.verify(&a).await.unwrap();
        verifier.verify(&b).await.unwrap();
        let response = broker.post_form("/v1/jobs/job-a/revoke", &[]).await;
        assert_eq!(response.status(), 200);
        let took = revoked_soon(&verifier, &a, "a token whose status list says revoked").await;
        assert!(took < Duration::from_secs(3), "{took:?}");

        // Well past the staleness bound (1 s) with no stream and no
        // snapshot since the start: the status list keeps its live token
        // verifying, because the broker keeps confirming it.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        verifier
            .verify(&b)
            .await
            .expect("vouched for by its status list");
        assert!(matches!(verifier.verify(&a).await, Err(Error::Revoked)));

        // A token revoked by its jti, then the broker goes away: the list
        // can no longer be confirmed, and the verifier fails closed.
        let response = broker.post_form(REVOCATION_PATH, &[("token", &b)]).await;
        assert_eq!(response.status(), 200);
        revoked_soon(&verifier, &b, "a revoked token, from its status list").await;
        let c = token(&broker, "job-c").await;
        verifier.verify(&c).await.unwrap();
        broker.stop().await;
        stint_tests::eventually(WAIT, "the verifier goes stale", || async {
            matches!(
                verifier.verify_with_cached_keys(&c),
                Err(Error::RevocationStateStale { .. })
            )
            .then_some(())
        })
        .await;
    }
}
