//! The change feed's applier against a store that does not hold what it
//! should: a change missing from the sequence, a store that went back.
//! (The embedded store runs the same applier as PostgreSQL's replicas; the
//! database is edited underneath the broker, as a restore or a bad purge
//! would.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;
use stint_proto::{REVOCATION_PATH, REVOCATION_STREAM_PATH};
use stint_tests::sse::SseStream;
use stint_tests::{BrokerOptions, TestBroker, eventually};

const WAIT: Duration = Duration::from_secs(10);

fn database(broker: &TestBroker) -> rusqlite::Connection {
    let connection =
        rusqlite::Connection::open(broker.data_dir().join(stint_server::STORE_FILE)).unwrap();
    connection.busy_timeout(Duration::from_secs(5)).unwrap();
    connection
}

async fn token(broker: &TestBroker, job: &str) -> String {
    broker.mint("read", "read:demo/a", &[("job", job)]).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn active(broker: &TestBroker, token: &str) -> bool {
    broker.introspect(token).await["active"] == true
}

#[tokio::test]
async fn a_change_missing_from_the_sequence_reloads_everything_from_the_store() {
    let broker = TestBroker::start().await;
    let revoked = token(&broker, "job-seen").await;
    let unseen = token(&broker, "job-unseen").await;
    let response = broker
        .post_form(REVOCATION_PATH, &[("token", &revoked)])
        .await;
    assert_eq!(response.status(), 200);
    let stream = SseStream::open(
        &broker.http,
        &broker.url(REVOCATION_STREAM_PATH),
        (&broker.client_id, &broker.client_secret),
        None,
    )
    .await;
    assert_eq!(stream.status(), 200);
    let mut stream = SseStream::new(stream);
    assert_eq!(stream.next_event(WAIT).await.unwrap().event, "ready");

    // Underneath the broker: a revocation with no change of its own, and
    // the feed moved two places on with only the second change there (the
    // first lost, as a purge or a delete would lose it).
    let (_, claims) = stint_tests::decode_jwt(&unseen);
    {
        let db = database(&broker);
        db.execute(
            "INSERT INTO revoked_tokens (jti, sub, job, expires_at, revoked_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            rusqlite::params![
                claims["jti"].as_str().unwrap(),
                claims["sub"].as_str().unwrap(),
                claims["job"].as_str().unwrap(),
                claims["exp"].as_i64().unwrap(),
                claims["iat"].as_i64().unwrap(),
            ],
        )
        .unwrap();
        let body: String = db
            .query_row(
                "SELECT body FROM stint_changes ORDER BY seq DESC LIMIT 1",
                [],
                |row| row.get(0),
            )
            .unwrap();
        db.execute_batch("UPDATE stint_change_head SET seq = seq + 2")
            .unwrap();
        db.execute(
            "INSERT INTO stint_changes (seq, at, body) SELECT seq, unixepoch(), ?1 FROM stint_change_head",
            [body],
        )
        .unwrap();
    }
    assert!(
        active(&broker, &unseen).await,
        "nothing told the broker yet"
    );
    eventually(
        WAIT,
        "the gap is noticed and the store reloaded",
        || async { (!active(&broker, &unseen).await).then_some(()) },
    )
    .await;
    // Its feed starts over: open streams end (their clients resync).
    assert_eq!(
        stream.next(WAIT).await,
        None,
        "the stream ends when the feed restarts"
    );
    assert!(!active(&broker, &revoked).await);
}

#[tokio::test]
async fn a_store_that_went_back_fails_the_broker_closed_until_it_restarts() {
    let mut broker = TestBroker::start_with(BrokerOptions {
        store_fail_closed_after: Duration::from_secs(1),
        ..BrokerOptions::default()
    })
    .await;
    let live = token(&broker, "job-live").await;
    // A restore from a backup gives the store another epoch (the
    // operations guide says to set one), and a failover that lost commits
    // a head behind this broker's position: either way what this broker
    // holds is not what the store holds.
    database(&broker)
        .execute_batch("UPDATE stint_change_head SET epoch = 'restored'")
        .unwrap();
    eventually(WAIT, "the broker fails closed", || async {
        let response = broker
            .try_mint("read", "read:demo/a", &[("job", "job-after")])
            .await;
        (response.status() == 503).then_some(())
    })
    .await;
    assert!(
        !active(&broker, &live).await,
        "no token is vouched for meanwhile"
    );
    let ready = broker.http.get(broker.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    // It stays closed: the store answers, but it is another store now.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        broker
            .try_mint("read", "read:demo/a", &[("job", "job-after")])
            .await
            .status(),
        503
    );
    // Started again, it loads the store as it is.
    broker.restart().await;
    assert!(active(&broker, &live).await);
    token(&broker, "job-restarted").await;
}
