//! High availability: three real `stintd` replicas on one real PostgreSQL
//! store, behind one issuer. A revocation acknowledged by one replica is in
//! force at the others (introspection, the SDK verifier, the feed), a feed
//! reader resumes at another replica without a gap, a replica killed right
//! after acknowledging loses nothing, PostgreSQL stopping makes every
//! replica fail closed and its return heals them, and operators voting
//! through different replicas make one quorum.
//!
//! These run the real binary: build it first (`cargo build -p stintd
//! -p stint-cli`) or set `$STINTD_BIN`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use stint_client::{Credentials, Error, Verifier};
use stint_core::secret;
use stint_core::status_list::{INVALID, StatusList, VALID};
use stint_proto::{APPROVALS_PATH, REVOCATION_STREAM_PATH, RevocationEvent, TOKEN_PATH};
use stint_tests::ha::{HaCluster, HaOptions, Replica, demo_job};
use stint_tests::sse::{SseEvent, SseStream};
use stint_tests::{decode_jwt, eventually, policy_with, test_secret};

/// How long a change may take to reach another replica: the feed is woken
/// by NOTIFY and polled every 250 ms, so this is generous.
const PROPAGATION: Duration = Duration::from_secs(5);
const WAIT: Duration = Duration::from_secs(10);

fn jti(token: &str) -> String {
    decode_jwt(token).1["jti"].as_str().unwrap().to_owned()
}

/// Wait until `token` is inactive at `replica`; how long it took.
async fn inactive_soon(replica: &Replica, token: &str, what: &str) -> Duration {
    let started = Instant::now();
    eventually(PROPAGATION, what, || async {
        (!replica.active(token).await).then_some(())
    })
    .await;
    started.elapsed()
}

/// Wait until `verifier` refuses `token` as revoked; how long it took.
async fn refused_soon(verifier: &Verifier, token: &str, what: &str) -> Duration {
    let started = Instant::now();
    loop {
        match verifier.verify(token).await {
            Err(Error::Revoked) => return started.elapsed(),
            Ok(_) if started.elapsed() < PROPAGATION => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => panic!("{what}: expected Revoked, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_at_b_is_inactive_at_c_and_refused_by_a_verifier_following_c() {
    let cluster = HaCluster::start(HaOptions::default()).await;
    let [a, b, c] = cluster.start_three();
    // The verifier reaches the issuer, which the balancer sends to C.
    cluster.balancer.send_to(c.listen);
    let verifier = Verifier::builder(cluster.issuer())
        .audience("demo-api")
        .revocation_feed(
            Credentials::new("demo-api", test_secret("demo-api")),
            Duration::from_secs(2),
        )
        .build()
        .await
        .unwrap();

    // By token (RFC 7009).
    let token = a.mint("ha-token").await;
    assert!(c.active(&token).await, "C vouches for A's token");
    verifier
        .verify(&token)
        .await
        .expect("C's keys verify A's token");
    assert_eq!(b.revoke_token(&token).await, 200);
    // Both measured from B's acknowledgement.
    let (at_c, verified) = tokio::join!(
        inactive_soon(&c, &token, "the token inactive at C"),
        refused_soon(&verifier, &token, "a verifier following C"),
    );
    let at_a = inactive_soon(&a, &token, "the token inactive at A").await;
    println!(
        "token revoked at B: inactive at C after {at_c:?}, refused by C's verifier after {verified:?}, inactive at A {at_a:?} after C"
    );

    // By job.
    let token = a.mint("ha-job").await;
    verifier.verify(&token).await.unwrap();
    assert!(c.active(&token).await);
    assert_eq!(b.revoke_job("ha-job").await, 200);
    let (at_c, verified) = tokio::join!(
        inactive_soon(&c, &token, "the job's token inactive at C"),
        refused_soon(&verifier, &token, "a verifier following C (job)"),
    );
    assert!(!a.active(&token).await);
    println!(
        "job revoked at B: inactive at C after {at_c:?}, refused by C's verifier after {verified:?}"
    );
    // A token minted at A after the job's revocation is refused there.
    let response = a.try_mint("ha-job").await.unwrap();
    assert_ne!(response.status(), 200, "no token for a revoked job");
}

async fn open(replica: &Replica, last_event_id: Option<&str>) -> SseStream {
    let (id, secret) = demo_job();
    SseStream::new(
        SseStream::open(
            &replica.http,
            &replica.url(REVOCATION_STREAM_PATH),
            (&id, &secret),
            last_event_id,
        )
        .await,
    )
}

/// The `ready` event's position (epoch, seq).
async fn ready(stream: &mut SseStream, at: &str) -> (String, u64) {
    let event = stream.next_event(WAIT).await.unwrap();
    assert_eq!(event.event, "ready", "{at} opens with ready: {event:?}");
    let position: Value = serde_json::from_str(&event.data).unwrap();
    (
        position["epoch"].as_str().unwrap().to_owned(),
        position["seq"].as_u64().unwrap(),
    )
}

fn revocation(event: &SseEvent) -> RevocationEvent {
    assert_eq!(event.event, "revocation", "no resync, no gap: {event:?}");
    serde_json::from_str(&event.data).unwrap()
}

/// Mint at `minter`, revoke at `revoker`; the jti.
async fn revoke_new(minter: &Replica, revoker: &Replica, job: &str) -> String {
    let token = minter.mint(job).await;
    assert_eq!(revoker.revoke_token(&token).await, 200);
    jti(&token)
}

/// The next `n` revocations of `stream`: (seq, id, jti), checked to carry
/// ids `epoch.seq` increasing past `after`.
async fn next_revocations(
    stream: &mut SseStream,
    epoch: &str,
    mut after: u64,
    n: usize,
) -> Vec<(u64, String, String)> {
    let mut got = Vec::new();
    for _ in 0..n {
        let event = stream.next_event(WAIT).await.expect("the stream is open");
        let parsed = revocation(&event);
        assert_eq!(parsed.kind, "token", "{event:?}");
        let id = event.id.clone().unwrap();
        assert_eq!(id, format!("{epoch}.{}", parsed.seq), "{event:?}");
        assert!(parsed.seq > after, "ids increase: {event:?} after {after}");
        after = parsed.seq;
        got.push((parsed.seq, id, parsed.jti.unwrap()));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_reader_moved_to_another_replica_resumes_without_a_gap() {
    let cluster = HaCluster::start(HaOptions::default()).await;
    let [a, b, c] = cluster.start_three();

    let mut stream = open(&a, None).await;
    let (epoch, start) = ready(&mut stream, "A").await;
    // Revocations made through each replica reach A's readers in order.
    let mut made = Vec::new();
    for (revoker, job) in [(&a, "feed-1"), (&b, "feed-2"), (&c, "feed-3")] {
        made.push(revoke_new(&a, revoker, job).await);
    }
    let seen = next_revocations(&mut stream, &epoch, start, 3).await;
    assert_eq!(
        seen.iter().map(|s| s.2.clone()).collect::<Vec<_>>(),
        made,
        "A's stream, in the order acknowledged"
    );
    let last = seen.last().unwrap().clone();
    drop(stream);

    // Meanwhile, with the reader away, three more.
    let mut missed = Vec::new();
    for (revoker, job) in [(&c, "feed-4"), (&a, "feed-5"), (&b, "feed-6")] {
        missed.push(revoke_new(&b, revoker, job).await);
    }
    // The reader comes back through B with the last id A gave it.
    let mut stream = open(&b, Some(&last.1)).await;
    let (b_epoch, _) = ready(&mut stream, "B").await;
    assert_eq!(b_epoch, epoch, "one epoch: the store's");
    let resumed = next_revocations(&mut stream, &epoch, last.0, 3).await;
    assert_eq!(
        resumed.iter().map(|s| s.2.clone()).collect::<Vec<_>>(),
        missed,
        "exactly what was missed, in order"
    );
    // And then what follows, nothing in between.
    let live = revoke_new(&a, &c, "feed-7").await;
    let next = next_revocations(&mut stream, &epoch, resumed[2].0, 1).await;
    assert_eq!(next[0].2, live);
    let last = next[0].clone();
    drop(stream);
    println!(
        "A's ids {:?}, resumed at B: {:?}, then {:?}",
        seen.iter().map(|s| &s.1).collect::<Vec<_>>(),
        resumed.iter().map(|s| &s.1).collect::<Vec<_>>(),
        last.1
    );

    // Moved at once to C, which may not have applied that change yet: it
    // waits for what follows rather than asking for a resync.
    let just = revoke_new(&b, &b, "feed-8").await;
    let mut on_b = open(&b, Some(&last.1)).await;
    ready(&mut on_b, "B").await;
    let from_b = next_revocations(&mut on_b, &epoch, last.0, 1).await;
    assert_eq!(from_b[0].2, just);
    drop(on_b);
    let mut on_c = open(&c, Some(&from_b[0].1)).await;
    ready(&mut on_c, "C").await;
    let after = revoke_new(&a, &a, "feed-9").await;
    let from_c = next_revocations(&mut on_c, &epoch, from_b[0].0, 1).await;
    assert_eq!(from_c[0].2, after, "C resumes right after B's last id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_right_after_acknowledging_a_revocation_loses_nothing() {
    let cluster = HaCluster::start(HaOptions::default()).await;
    let [mut a, mut b, c] = cluster.start_three();

    // A acknowledges a token's revocation and dies at once.
    let token = a.mint("kill-token").await;
    assert!(c.active(&token).await);
    assert_eq!(a.revoke_token(&token).await, 200);
    a.kill9();
    let at_b = inactive_soon(&b, &token, "inactive at B after A died").await;
    let at_c = inactive_soon(&c, &token, "inactive at C after A died").await;
    println!("A killed after its 200: inactive at B after {at_b:?}, at C after {at_c:?}");

    // B acknowledges a job's revocation and dies at once.
    let job_token = c.mint("kill-job").await;
    assert!(c.active(&job_token).await);
    assert_eq!(b.revoke_job("kill-job").await, 200);
    b.kill9();
    inactive_soon(&c, &job_token, "the job's token inactive at C after B died").await;

    // Both come back: from their first answer, they know.
    cluster.start_replica(&mut a);
    cluster.start_replica(&mut b);
    for replica in [&a, &b] {
        assert!(
            !replica.active(&token).await,
            "{} restarted: the token stays revoked",
            replica.name
        );
        assert!(
            !replica.active(&job_token).await,
            "{} restarted: the job stays revoked",
            replica.name
        );
        let response = replica.try_mint("kill-job").await.unwrap();
        assert_ne!(response.status(), 200, "{}: a revoked job", replica.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_fails_closed_while_postgresql_is_down_and_heals_after() {
    const FAIL_CLOSED_AFTER: u64 = 2;
    let mut cluster = HaCluster::start(HaOptions {
        fail_closed_after: FAIL_CLOSED_AFTER,
        store_timeout: 1,
        ..HaOptions::default()
    })
    .await;
    let [a, b, c] = cluster.start_three();
    let live = a.mint("pg-live").await;
    let revoked = a.mint("pg-revoked").await;
    assert_eq!(b.revoke_token(&revoked).await, 200);
    for replica in [&a, &b, &c] {
        assert_eq!(replica.ready().await, Some(200), "{}", replica.name);
        inactive_soon(replica, &revoked, "revoked everywhere").await;
        assert!(replica.active(&live).await);
    }

    let stopping = Instant::now();
    cluster.pg.stop();
    let stopped = Instant::now();
    println!("pg_ctl stop took {:?}", stopped - stopping);
    for replica in [&a, &b, &c] {
        eventually(WAIT, &format!("{} fails closed", replica.name), || async {
            let ready = replica.ready().await? == 503;
            let mint = replica.try_mint("pg-during").await.ok()?.status() == 503;
            let vouched = replica.active(&live).await;
            (ready && mint && !vouched).then_some(())
        })
        .await;
        let took = stopped.elapsed();
        println!(
            "{} failed closed {took:?} after PostgreSQL stopped",
            replica.name
        );
        assert!(
            took < Duration::from_secs(FAIL_CLOSED_AFTER + 4),
            "{}: {took:?}",
            replica.name
        );
    }

    cluster.pg.start_again();
    let restarted = Instant::now();
    for replica in [&a, &b, &c] {
        eventually(
            Duration::from_secs(30),
            &format!("{} heals", replica.name),
            || async {
                let ready = replica.ready().await? == 200;
                let mint = replica.try_mint("pg-after").await.ok()?.status() == 200;
                (ready && mint).then_some(())
            },
        )
        .await;
        println!(
            "{} healed {:?} after PostgreSQL started",
            replica.name,
            restarted.elapsed()
        );
        assert!(
            replica.active(&live).await,
            "{}: active again",
            replica.name
        );
        assert!(
            !replica.active(&revoked).await,
            "{}: the revocation made before is in force",
            replica.name
        );
    }
    // The change feed runs again between them: a revocation at C reaches A.
    let after = b.mint("pg-after-heal").await;
    assert_eq!(c.revoke_token(&after).await, 200);
    let took = inactive_soon(&a, &after, "a revocation after healing reaches A").await;
    println!("after healing, C's revocation inactive at A after {took:?}");
    for replica in [&a, &b, &c] {
        let stderr = replica.daemon().stderr();
        assert!(
            stderr.contains("failing closed"),
            "{}: {stderr}",
            replica.name
        );
        assert!(
            stderr.contains("the store answers again"),
            "{}",
            replica.name
        );
    }
}

// Approvals through several replicas.

const STANDING: &str = "deploy:demo/staging";
const ELEVATED: &str = "deploy:demo/prod/web";

fn operator_key(name: &str) -> String {
    format!("stint_operator_{name}")
}

/// A deploy step whose production scopes need two approvals from `sre`
/// (alice, bob and erin).
fn elevation_policy() -> String {
    let key = |name: &str| secret::hash_hex(&operator_key(name));
    policy_with(&format!(
        r#"
[workflows.demo.steps.deploy]
scopes = ["{STANDING}"]

[workflows.demo.steps.deploy.elevation]
scopes = ["deploy:demo/prod/*"]
approver_groups = ["sre"]
quorum = 2
max_duration = "30m"
max_wait = "10m"
reason_required = true

[operators.alice]
groups = ["sre"]
key_sha256 = "{alice}"

[operators.bob]
groups = ["sre"]
key_sha256 = "{bob}"

[operators.erin]
groups = ["sre"]
key_sha256 = "{erin}"
"#,
        alice = key("alice"),
        bob = key("bob"),
        erin = key("erin"),
    ))
}

/// Ask `replica` for the deploy step with the elevated scope for `job`.
async fn ask(replica: &Replica, job: &str, extra: &[(&str, &str)]) -> (u16, Value) {
    let scope = format!("{STANDING} {ELEVATED}");
    let mut form = vec![
        ("grant_type", "client_credentials"),
        ("step", "deploy"),
        ("scope", scope.as_str()),
        ("audience", "demo-api"),
        ("job", job),
        ("reason", "hotfix for INC-42"),
    ];
    form.extend_from_slice(extra);
    let response = replica.post_form(TOKEN_PATH, &form).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Ask again as a polling client does (the interval is 1 s).
async fn poll(replica: &Replica, job: &str, id: &str) -> (u16, Value) {
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    ask(replica, job, &[("approval_id", id)]).await
}

async fn approve(replica: &Replica, name: &str, id: &str) -> (u16, Value) {
    let response = replica
        .http
        .post(replica.url(&format!("{APPROVALS_PATH}/{id}/approve")))
        .bearer_auth(operator_key(name))
        .json(&json!({ "comment": format!("{name} via {}", replica.name) }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn show(replica: &Replica, id: &str) -> Value {
    let response = replica
        .http
        .get(replica.url(&format!("{APPROVALS_PATH}/{id}")))
        .bearer_auth(operator_key("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{} shows {id}", replica.name);
    response.json().await.unwrap()
}

fn voters(view: &Value) -> Vec<String> {
    view["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["operator"].as_str().unwrap().to_owned())
        .collect()
}

/// A new request for `job` made through `replica`; its id.
async fn request(replica: &Replica, job: &str) -> String {
    let (status, body) = ask(replica, job, &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("authorization_pending")),
        "{body}"
    );
    body["approval_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_voting_through_different_replicas_make_one_quorum() {
    let cluster = HaCluster::start(HaOptions {
        policy: elevation_policy(),
        ..HaOptions::default()
    })
    .await;
    let [a, b, c] = cluster.start_three();

    // Requested through A, alice votes through B at once.
    let id = request(&a, "ha-approval").await;
    let (status, body) = approve(&b, "alice", &id).await;
    assert_eq!(status, 200, "B finds A's request: {body}");
    assert_eq!(body["state"], "pending", "{body}");
    // Alice again, through C: refused, and not counted.
    let (status, body) = approve(&c, "alice", &id).await;
    assert_eq!(
        status, 409,
        "one vote per operator, whichever replica: {body}"
    );
    for replica in [&a, &b, &c] {
        let view = eventually(PROPAGATION, "alice's vote shown everywhere", || async {
            let view = show(replica, &id).await;
            (voters(&view) == ["alice"]).then_some(view)
        })
        .await;
        assert_eq!(view["state"], "pending", "{}: {view}", replica.name);
    }
    let (status, body) = poll(&a, "ha-approval", &id).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("authorization_pending")),
        "one operator is not a quorum: {body}"
    );

    // Bob, through C, makes the quorum; the job's poll at A gets its token.
    let (status, body) = approve(&c, "bob", &id).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "approved", "{body}");
    let token = eventually(WAIT, "A mints under the approval", || async {
        let (status, body) = poll(&a, "ha-approval", &id).await;
        (status == 200).then(|| body["access_token"].as_str().unwrap().to_owned())
    })
    .await;
    assert_eq!(decode_jwt(&token).1["elev"], id.as_str());
    assert!(b.active(&token).await, "B vouches for it");
    for replica in [&a, &b, &c] {
        let view = eventually(PROPAGATION, "the approval shown everywhere", || async {
            let view = show(replica, &id).await;
            (view["state"] == "approved").then_some(view)
        })
        .await;
        assert_eq!(voters(&view), ["alice", "bob"], "{}: {view}", replica.name);
    }
    // A vote after the quorum, through A, is refused.
    let (status, body) = approve(&a, "erin", &id).await;
    assert_eq!(status, 409, "{body}");

    // The same operator voting at the same moment through two replicas:
    // one vote is counted, the other refused, and no quorum.
    let id = request(&a, "ha-approval-race").await;
    let ((one, body_one), (two, body_two)) =
        tokio::join!(approve(&b, "erin", &id), approve(&c, "erin", &id));
    let mut statuses = [one, two];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409], "{body_one} / {body_two}");
    println!("erin voting through B and C at once: {one} and {two}");
    for replica in [&a, &b, &c] {
        eventually(PROPAGATION, "erin's one vote shown everywhere", || async {
            let view = show(replica, &id).await;
            (voters(&view) == ["erin"] && view["state"] == "pending").then_some(())
        })
        .await;
    }
    let (status, body) = poll(&a, "ha-approval-race", &id).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("authorization_pending")),
        "one operator twice is not a quorum: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_started_at_once_on_a_new_store_agree() {
    let cluster = HaCluster::start(HaOptions::default()).await;
    let mut replicas = [
        cluster.replica("a"),
        cluster.replica("b"),
        cluster.replica("c"),
    ];
    // As a deployment rolls out: all three at once on an empty database
    // (the migration and the first signing key race).
    std::thread::scope(|scope| {
        for replica in &mut replicas {
            let cluster = &cluster;
            scope.spawn(move || cluster.start_replica(replica));
        }
    });
    let signing: Vec<String> = cluster
        .pg
        .superuser_client_in("stint")
        .await
        .query("SELECT kid FROM signing_keys WHERE retired_at IS NULL", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        signing.len(),
        1,
        "one key signs at a time, but the store holds {} unretired: {signing:?}",
        signing.len()
    );
    let [a, b, c] = &replicas;
    for minter in [a, b, c] {
        let token = minter.mint(&format!("start-{}", minter.name)).await;
        for checker in [a, b, c] {
            assert!(
                checker.active(&token).await,
                "{}'s token (kid {}) inactive at {}, which publishes {:?}",
                minter.name,
                kid_of(&token),
                checker.name,
                published_kids(checker).await
            );
        }
    }
    let token = a.mint("start-revoke").await;
    assert_eq!(c.revoke_token(&token).await, 200);
    inactive_soon(b, &token, "C's revocation at B").await;
}

fn admin_policy() -> String {
    policy_with(&format!(
        "\n[workloads.key-admin]\nsecret_sha256 = \"{}\"\ncapabilities = [\"admin\"]\n",
        secret::hash_hex(&test_secret("key-admin"))
    ))
}

fn kid_of(token: &str) -> String {
    decode_jwt(token).0["kid"].as_str().unwrap().to_owned()
}

async fn published_kids(replica: &Replica) -> Vec<String> {
    let jwks: Value = replica
        .http
        .get(replica.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut kids: Vec<String> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    kids.sort();
    kids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotated_at_one_replica_is_published_by_all_before_any_signs_with_it() {
    const LEAD: u64 = 3;
    let cluster = HaCluster::start(HaOptions {
        policy: admin_policy(),
        key_publish_lead: LEAD,
        ..HaOptions::default()
    })
    .await;
    let [a, b, c] = cluster.start_three();
    let before = a.mint("rotate-before").await;
    let old_kid = kid_of(&before);
    for replica in [&a, &b, &c] {
        assert_eq!(
            published_kids(replica).await,
            std::slice::from_ref(&old_kid),
            "one key"
        );
        let jwks = replica
            .http
            .get(replica.url(stint_proto::JWKS_PATH))
            .send()
            .await
            .unwrap();
        assert_eq!(
            jwks.headers()["cache-control"],
            format!("public, max-age={LEAD}").as_str(),
            "no verifier caches the set for longer than a new key waits"
        );
    }

    let rotated = Instant::now();
    let response = a
        .http
        .post(a.url(stint_proto::KEY_ROTATION_PATH))
        .basic_auth("key-admin", Some(test_secret("key-admin")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let rotation: Value = response.json().await.unwrap();
    let new_kid = rotation["kid"].as_str().unwrap().to_owned();
    assert_eq!(rotation["retired_kid"], old_kid.as_str());
    let mut both = vec![old_kid.clone(), new_kid.clone()];
    both.sort();
    // Published everywhere at once; nobody signs with it yet.
    for replica in [&a, &b, &c] {
        let published = tokio::time::timeout(PROPAGATION, async {
            loop {
                if published_kids(replica).await == both {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(
            published.is_ok(),
            "{} publishes {:?}, not both {both:?}, {PROPAGATION:?} after A rotated",
            replica.name,
            published_kids(replica).await
        );
        println!(
            "{} publishes both keys {:?} after the rotation",
            replica.name,
            rotated.elapsed()
        );
    }
    let mut signed_with_old = 0;
    while rotated.elapsed() < Duration::from_millis(LEAD * 1000 - 800) {
        for replica in [&a, &b, &c] {
            let token = replica.mint("rotate-staged").await;
            assert_eq!(
                kid_of(&token),
                old_kid,
                "{} signed with the new key {:?} after the rotation, before its lead of {LEAD} s",
                replica.name,
                rotated.elapsed()
            );
            signed_with_old += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(signed_with_old >= 3);
    // After the lead, every replica signs with the new key, and every
    // replica vouches for tokens of both keys.
    for replica in [&a, &b, &c] {
        eventually(
            PROPAGATION,
            "every replica signs with the new key",
            || async { (kid_of(&replica.mint("rotate-after").await) == new_kid).then_some(()) },
        )
        .await;
        println!(
            "{} signs with the new key {:?} after the rotation",
            replica.name,
            rotated.elapsed()
        );
    }
    let after = c.mint("rotate-after-c").await;
    for replica in [&a, &b, &c] {
        assert!(
            replica.active(&before).await,
            "{}: the old token",
            replica.name
        );
        assert!(
            replica.active(&after).await,
            "{}: the new token",
            replica.name
        );
    }
    let unretired: i64 = cluster
        .pg
        .superuser_client_in("stint")
        .await
        .query_one(
            "SELECT count(*) FROM signing_keys WHERE retired_at IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(unretired, 1, "one signing key after the switch");
}

async fn operator_call(replica: &Replica, path: &str) -> (u16, Value) {
    let response = replica
        .http
        .post(replica.url(path))
        .bearer_auth(operator_key("alice"))
        .json(&json!({ "comment": format!("via {}", replica.name) }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_stopped_at_one_replica_mints_nothing_at_the_others() {
    let cluster = HaCluster::start(HaOptions {
        policy: elevation_policy(),
        ..HaOptions::default()
    })
    .await;
    let [a, b, c] = cluster.start_three();
    let held = a.mint("stop-held").await;
    let (status, body) = operator_call(&b, "/v1/workloads/demo-job/stop").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stopped"], true);
    let took = inactive_soon(&c, &held, "a stopped workload's token inactive at C").await;
    let started = Instant::now();
    eventually(
        PROPAGATION,
        "A refuses to mint for a stopped workload",
        || async {
            let status = a.try_mint("stop-after").await.ok()?.status();
            (status != 200).then_some(status)
        },
    )
    .await;
    println!(
        "stopped at B: its token inactive at C after {took:?}, A refuses to mint after {:?}",
        started.elapsed()
    );
    let (status, body) = operator_call(&c, "/v1/workloads/demo-job/enable").await;
    assert_eq!(status, 200, "{body}");
    eventually(PROPAGATION, "A mints again once enabled at C", || async {
        (a.try_mint("stop-enabled").await.ok()?.status() == 200).then_some(())
    })
    .await;
    assert!(!b.active(&held).await, "what it held before stays revoked");
}

/// The status of `token` in its status list as `replica` serves it (the
/// list's URI names the shared issuer; it is fetched from `replica`).
async fn status_at(cluster: &HaCluster, replica: &Replica, token: &str) -> u8 {
    let (_, claims) = decode_jwt(token);
    let reference = &claims["status"]["status_list"];
    let uri = reference["uri"].as_str().unwrap();
    let path = uri
        .strip_prefix(&cluster.issuer())
        .unwrap_or_else(|| panic!("{uri} is under the issuer"));
    let response = replica.http.get(replica.url(path)).send().await.unwrap();
    assert_eq!(
        response.status(),
        200,
        "{} serves {path} (the status list of a token minted at another replica)",
        replica.name
    );
    let (_, list) = decode_jwt(&response.text().await.unwrap());
    StatusList::decode(1, list["status_list"]["lst"].as_str().unwrap())
        .unwrap()
        .get(reference["idx"].as_u64().unwrap())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_list_entries_are_distinct_across_replicas_and_agree_everywhere() {
    let cluster = HaCluster::start(HaOptions::default()).await;
    let [a, b, c] = cluster.start_three();
    // Minted through all three at once: no two tokens share an entry.
    let mut tokens = Vec::new();
    let mut minters = Vec::new();
    for round in 0..4 {
        let jobs = [0, 1, 2].map(|i| format!("status-{i}-{round}"));
        let (x, y, z) = tokio::join!(a.mint(&jobs[0]), b.mint(&jobs[1]), c.mint(&jobs[2]));
        tokens.extend([x, y, z]);
        minters.extend(["a", "b", "c"]);
    }
    let mut entries: Vec<(String, u64)> = tokens
        .iter()
        .map(|token| {
            let reference = &decode_jwt(token).1["status"]["status_list"];
            (
                reference["uri"].as_str().unwrap().to_owned(),
                reference["idx"].as_u64().unwrap(),
            )
        })
        .collect();
    for (entry, minter) in entries.iter().zip(&minters) {
        println!("minted at {minter}: {entry:?}");
    }
    entries.sort();
    let before = entries.len();
    entries.dedup();
    assert_eq!(entries.len(), before, "one status entry per token");

    // Every entry reads VALID at every replica once it is in the store
    // (each broker writes its entries every second, and another replica
    // reads a list it serves again once a second): until then it reads
    // INVALID there, failing closed.
    let minted = Instant::now();
    for replica in [&a, &b, &c] {
        for token in &tokens {
            eventually(PROPAGATION, "every entry valid everywhere", || async {
                (status_at(&cluster, replica, token).await == VALID).then_some(())
            })
            .await;
        }
    }
    println!(
        "every entry valid at every replica {:?} after the mints",
        minted.elapsed()
    );

    // A's token revoked at B: its entry says so at all three; the others
    // stay valid.
    let revoked = &tokens[0];
    assert_eq!(b.revoke_token(revoked).await, 200);
    for replica in [&a, &b, &c] {
        eventually(PROPAGATION, "the entry invalid everywhere", || async {
            (status_at(&cluster, replica, revoked).await == INVALID).then_some(())
        })
        .await;
        for (token, minter) in tokens.iter().zip(&minters).skip(1) {
            assert_eq!(
                status_at(&cluster, replica, token).await,
                VALID,
                "{}: only the revoked token's entry (this one minted at {minter})",
                replica.name
            );
        }
    }
}
