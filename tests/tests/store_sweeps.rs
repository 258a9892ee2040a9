//! The broker's leaderless sweeps against a real PostgreSQL 15, with two
//! store handles (two brokers) on one database running them at the same
//! moment: each sweep must take effect exactly once, however many brokers
//! run it.
//!
//! - Approval expiry: every broker's sweep saves the expired state of a
//!   request naming the revision it read; exactly one save per request
//!   succeeds (and only that one is in the change feed), the other
//!   conflicts.
//! - Expiry purge (`purge_expired`): revocations, approval requests (and
//!   their votes), status lists (and their entries) and enabled workload
//!   stops that no longer matter are deleted once, whoever purges; what
//!   still matters, and what is written meanwhile, stays.
//! - Target credential purge (`purge_target_credentials`): each finished
//!   credential is deleted once; the others stay.
//! - Target credential claims (`claim_target_credentials`, which every
//!   broker runs to take over the credentials of brokers whose lease ran
//!   out): each is taken by one broker, never one whose owner is alive,
//!   also when one claim's scan meets another's commit (a race this file
//!   found, now closed: the claim is a compare-and-set on the owner).
//! - An approval ended by the sweep reads back (this file found that it
//!   did not: its state wrote a second `reason` key).

// Test code: a failed expectation should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use stint_core::approval::{ApprovalRequest, Elevation, Operator, Requester, State};
use stint_core::revocation::{JobRevocation, StepRevocation, TokenRevocation, WorkloadStop};
use stint_core::scope::Scope;
use stint_core::target_credential::{CredentialState, TargetCredential};
use stint_store::{ApprovalSaved, Change, PostgresStore, Store, StoredApproval};
use stint_tests::postgres::{PgCluster, ledger_credential};
use tokio::sync::Barrier;

const ROLE: &str = "stint_store";
const PASSWORD: &str = "store-pw-5d81c0a4e9";

/// Two brokers' handles on one fresh database: their own pools (four
/// connections each), as two `stintd` processes would have. The timeout
/// is longer than the harness's 2 s so that a slow machine (a build
/// running alongside) does not fail the test: contention here is the
/// point, and the store must resolve it, not time out.
async fn two_brokers(cluster: &PgCluster) -> (Arc<PostgresStore>, Arc<PostgresStore>) {
    let mut settings = cluster.create_store_database("stint", ROLE, PASSWORD).await;
    settings.timeout = Duration::from_secs(15);
    let a = PostgresStore::open(&settings).await.unwrap();
    let b = PostgresStore::open(&settings).await.unwrap();
    (Arc::new(a), Arc::new(b))
}

fn elevation() -> Elevation {
    Elevation {
        approver_groups: ["sre".to_owned()].into(),
        quorum: 1,
        max_duration: 600,
        max_wait: 300,
        reason_required: false,
    }
}

/// A pending request made at `requested_at`: it waits until
/// `requested_at + 300` and is kept until `requested_at + 900 + 1 day`.
fn request(id: &str, requested_at: i64) -> ApprovalRequest {
    ApprovalRequest::new(
        id.into(),
        Requester {
            workload: "w".into(),
            client_id: "w".into(),
            job: format!("job-{id}"),
            step: "flow/step".into(),
            audience: "https://a.example".into(),
        },
        vec![Scope::parse("deploy:prod/web").unwrap()],
        None,
        None,
        elevation(),
        requested_at,
    )
    .unwrap()
}

fn alice() -> Operator {
    Operator {
        name: "alice".into(),
        groups: ["sre".to_owned()].into(),
        owns: BTreeSet::new(),
    }
}

fn token(jti: &str, expires_at: i64) -> TokenRevocation {
    TokenRevocation {
        jti: jti.into(),
        sub: "w".into(),
        job: "j".into(),
        expires_at,
        revoked_at: 1_000,
    }
}

fn job(name: &str, until: i64) -> JobRevocation {
    JobRevocation {
        sub: "w".into(),
        job: name.into(),
        revoked_at: 1_000,
        until,
    }
}

fn step(name: &str, until: i64) -> StepRevocation {
    StepRevocation {
        sub: "w".into(),
        job: "j".into(),
        step: name.into(),
        revoked_at: 1_000,
        until,
    }
}

fn credential(id: &str, state: CredentialState, finished_at: Option<i64>) -> TargetCredential {
    TargetCredential {
        issued_at: 1_000,
        expires_at: 1_300,
        state,
        finished_at,
        // Long before any claim here: a `minting` one is an abandoned mint
        // (see `MINT_ABANDONED_AFTER_SECS`), which a claim takes.
        ..ledger_credential(id, &format!("jti-{id}"), 0)
    }
}

/// Run `work` on every handle in `stores` at once (each its own task on
/// the multi-threaded runtime, released together), and return what each
/// returned, in the order of `stores`.
async fn all_at_once<T, F, Fut>(stores: &[Arc<PostgresStore>], work: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize, Arc<PostgresStore>) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(stores.len()));
    let tasks: Vec<_> = stores
        .iter()
        .enumerate()
        .map(|(n, store)| {
            let barrier = Arc::clone(&barrier);
            let work = work(n, Arc::clone(store));
            tokio::spawn(async move {
                barrier.wait().await;
                work.await
            })
        })
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    for outcome in futures_util::future::join_all(tasks).await {
        results.push(outcome.unwrap());
    }
    results
}

/// What the broker's approval sweep does for each request it holds (see
/// `stint-server`'s `approvals.rs`): if the request is due, save its
/// expired state naming the revision it read. Returns each request's id,
/// the revision read and the save's outcome, in the sweep's order.
async fn sweep_approvals(
    store: Arc<PostgresStore>,
    held: Vec<StoredApproval>,
    now: i64,
) -> Vec<(String, u64, ApprovalSaved)> {
    let mut outcomes = Vec::with_capacity(held.len());
    for stored in held {
        let mut next = stored.request.clone();
        assert!(next.expire(now), "{} is due at {now}", next.id);
        let saved = store.save_approval(&next, stored.revision).await.unwrap();
        outcomes.push((next.id.clone(), stored.revision, saved));
    }
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn approval_expiry_swept_by_two_brokers_is_saved_once_per_request() {
    let cluster = PgCluster::start();
    let (a, b) = two_brokers(&cluster).await;
    const PENDING: usize = 20;
    const VOTED: usize = 10;
    // Twenty pending requests, made through A at revision 1, and ten that
    // need two approvals and have alice's (still pending, at revision 2,
    // with a vote row), so that the race is over either revision.
    for n in 0..PENDING + VOTED {
        let mut pending = request(&format!("apr-{n:02}"), 10_000);
        if n >= PENDING {
            pending.elevation.quorum = 2;
        }
        assert!(
            matches!(
                a.save_approval(&pending, 0).await.unwrap(),
                ApprovalSaved::Saved { revision: 1, .. }
            ),
            "apr-{n:02} is made"
        );
        if n >= PENDING {
            let mut voted = pending;
            voted.approve(&alice(), None, None, 10_010).unwrap();
            assert_eq!(voted.state, State::Pending);
            assert!(
                matches!(
                    a.save_approval(&voted, 1).await.unwrap(),
                    ApprovalSaved::Saved { revision: 2, .. }
                ),
                "apr-{n:02} has alice's vote"
            );
        }
    }
    let start = b.change_position().await.unwrap();

    // Both brokers hold every request at the revision they read; at
    // 20_000 every one is due (they waited until 10_300).
    let now = 20_000;
    let held_a = a.approvals(now).await.unwrap();
    let held_b = b.approvals(now).await.unwrap();
    assert_eq!(held_a.len(), PENDING + VOTED);
    assert_eq!(held_a, held_b, "both brokers read the same requests");
    let read: BTreeMap<String, u64> = held_a
        .iter()
        .map(|s| (s.request.id.clone(), s.revision))
        .collect();

    // Both sweep at once, in the same order (so that they meet on every
    // row), each request one save after another as a broker's sweep does.
    let held = [held_a, held_b];
    let sweeps = all_at_once(&[Arc::clone(&a), Arc::clone(&b)], |n, store| {
        sweep_approvals(store, held[n].clone(), now)
    })
    .await;

    // For every request, exactly one broker saved the expiry, at the
    // revision read plus one; the other conflicted (and, as the broker
    // does, reads it again: final, nothing left to do).
    let mut winners: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for (broker, outcomes) in sweeps.iter().enumerate() {
        assert_eq!(outcomes.len(), PENDING + VOTED);
        for (id, revision, saved) in outcomes {
            match saved {
                ApprovalSaved::Saved {
                    revision: saved,
                    seq,
                } => {
                    assert_eq!(*saved, revision + 1, "{id}: saved over what was read");
                    let earlier = winners.insert(id.clone(), (broker, *seq));
                    assert!(
                        earlier.is_none(),
                        "{id}: both brokers saved its expiry: {sweeps:?}"
                    );
                }
                ApprovalSaved::Conflict => {}
                ApprovalSaved::AlreadyVoted => {
                    panic!("{id}: an expiry is no vote: {sweeps:?}")
                }
            }
        }
    }
    assert_eq!(
        winners.keys().cloned().collect::<Vec<_>>(),
        read.keys().cloned().collect::<Vec<_>>(),
        "every request's expiry was saved by one broker: {sweeps:?}"
    );
    let conflicts = sweeps
        .iter()
        .flatten()
        .filter(|(_, _, saved)| *saved == ApprovalSaved::Conflict)
        .count();
    assert_eq!(conflicts, PENDING + VOTED, "the other broker's conflicted");

    // The change feed holds exactly one change per expiry: the winner's,
    // at the sequence number its save returned; the conflicts wrote none.
    let changes = a.changes_since(start.seq, 1_000).await.unwrap();
    assert_eq!(changes.len(), PENDING + VOTED, "{changes:?}");
    let mut announced: BTreeMap<String, u64> = BTreeMap::new();
    for record in &changes {
        let Change::Approval { request, revision } = &record.change else {
            panic!("only expiries were written: {record:?}");
        };
        assert_eq!(request.state, State::Expired, "{record:?}");
        assert_eq!(*revision, read[&request.id] + 1, "{record:?}");
        assert_eq!(
            winners[&request.id].1, record.seq,
            "{}: the feed carries the winner's save",
            request.id
        );
        let earlier = announced.insert(request.id.clone(), record.seq);
        assert!(earlier.is_none(), "{} announced twice", request.id);
    }
    assert_eq!(
        b.change_position().await.unwrap().seq,
        start.seq + (PENDING + VOTED) as u64
    );

    // The stored requests are final, one save later than what was read;
    // the loser, reading again, finds nothing left to do.
    for (id, revision) in &read {
        let stored = b.approval(id).await.unwrap().unwrap();
        assert_eq!(stored.revision, revision + 1, "{id}");
        assert_eq!(stored.request.state, State::Expired, "{id}");
        assert_eq!(stored.request.approvals.len() as u64, revision - 1, "{id}");
        assert!(!stored.request.clone().expire(now), "{id}: swept for good");
    }

    // Both sweep again from the revisions they read before (brokers that
    // missed the changes): every save refused, and nothing written.
    let stale = all_at_once(&[Arc::clone(&a), Arc::clone(&b)], |_, store| {
        let held = held[0].clone();
        async move { sweep_approvals(store, held, now).await }
    })
    .await;
    assert!(
        stale
            .iter()
            .flatten()
            .all(|(_, _, saved)| *saved == ApprovalSaved::Conflict),
        "{stale:?}"
    );
    assert_eq!(
        a.change_position().await.unwrap().seq,
        start.seq + (PENDING + VOTED) as u64,
        "refused saves write no change"
    );
}

/// Found here, now fixed (found by the sweep, not a race): an approved
/// request whose window closed was swept to `ended`, and the store kept it
/// in a form nobody could read back. `ApprovalRequest` flattens its `state` (`#[serde(flatten)]`),
/// and `State::Ended { reason }` then wrote a second `reason` key beside
/// the request's own: reading the row, or the change that carries it,
/// failed with "duplicate field `reason`", so the other broker could not
/// read the change (its catch-up failed there), and `approval(id)` and
/// `approvals(now)` (which a broker loads at start) failed until the
/// request was purged, a day later. (`State::Ended` now stores it as
/// `ended_because`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_approval_ended_by_the_sweep_can_be_read_back_by_the_other_broker() {
    let cluster = PgCluster::start();
    let (a, b) = two_brokers(&cluster).await;
    let mut approved = request("apr-ended", 10_000);
    a.save_approval(&approved, 0).await.unwrap();
    approved.approve(&alice(), None, None, 10_010).unwrap();
    assert!(matches!(
        a.save_approval(&approved, 1).await.unwrap(),
        ApprovalSaved::Saved { revision: 2, .. }
    ));
    let start = b.change_position().await.unwrap();
    // A's sweep at 20_000: the window (until 10_610) has closed.
    let swept = sweep_approvals(Arc::clone(&a), a.approvals(20_000).await.unwrap(), 20_000).await;
    assert!(
        matches!(
            swept.as_slice(),
            [(_, 2, ApprovalSaved::Saved { revision: 3, .. })]
        ),
        "{swept:?}"
    );
    // B applies A's change, and reads the request, as A stored it.
    let changes = b.changes_since(start.seq, 10).await;
    let stored = b.approval("apr-ended").await;
    let all = b.approvals(20_000).await;
    let Ok(changes) = changes else {
        panic!(
            "B cannot read A's change: {changes:?} (and approval(): {stored:?}, approvals(): {all:?})"
        );
    };
    let [record] = changes.as_slice() else {
        panic!("{changes:?}");
    };
    let Change::Approval { request, revision } = &record.change else {
        panic!("{record:?}");
    };
    assert_eq!(*revision, 3);
    assert!(matches!(request.state, State::Ended { .. }), "{request:?}");
    let stored = stored.unwrap().unwrap();
    assert_eq!(stored.revision, 3);
    assert_eq!(&stored.request, request.as_ref());
    assert_eq!(all.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_purges_by_two_brokers_delete_each_row_once() {
    let cluster = PgCluster::start();
    let (a, b) = two_brokers(&cluster).await;
    const CUTOFF: i64 = 100_000;
    let mut expired: u64 = 0;

    // Revocations: those that ended at or before the cutoff go, the rest
    // stay.
    let mut live_tokens = Vec::new();
    for n in 0..30 {
        a.revoke_token(&token(&format!("t-old-{n:02}"), CUTOFF - n), None)
            .await
            .unwrap();
        expired += 1;
    }
    for n in 0..10 {
        let live = token(&format!("t-live-{n:02}"), CUTOFF + 1 + n);
        a.revoke_token(&live, None).await.unwrap();
        live_tokens.push(live);
    }
    let mut live_jobs = Vec::new();
    let mut live_steps = Vec::new();
    for n in 0..10 {
        a.revoke_job(&job(&format!("j-old-{n:02}"), CUTOFF - n))
            .await
            .unwrap();
        a.revoke_step(&step(&format!("s-old-{n:02}"), CUTOFF - n))
            .await
            .unwrap();
        expired += 2;
    }
    for n in 0..5 {
        let (j, s) = (
            job(&format!("j-live-{n:02}"), CUTOFF + 1 + n),
            step(&format!("s-live-{n:02}"), CUTOFF + 1 + n),
        );
        a.revoke_job(&j).await.unwrap();
        a.revoke_step(&s).await.unwrap();
        live_jobs.push(j);
        live_steps.push(s);
    }

    // Approval requests: made at 1_000, kept until 88_300 (gone); made at
    // 200_000, kept until long after. Half of each approved by alice, so
    // that there are vote rows to purge with their requests.
    let mut kept_approvals = Vec::new();
    for (n, requested_at) in (0..16).map(|n| (n, if n < 10 { 1_000 } else { 200_000 })) {
        let id = format!("apr-{n:02}");
        let mut req = request(&id, requested_at);
        assert!(req.keep_until() <= CUTOFF || requested_at > CUTOFF);
        a.save_approval(&req, 0).await.unwrap();
        if n % 2 == 0 {
            req.approve(&alice(), None, None, requested_at + 10)
                .unwrap();
            assert!(matches!(
                a.save_approval(&req, 1).await.unwrap(),
                ApprovalSaved::Saved { revision: 2, .. }
            ));
        }
        if requested_at < CUTOFF {
            expired += 1;
        } else {
            kept_approvals.push(id);
        }
    }

    // Status lists, each with two chunks of entries: expired at or before
    // the cutoff (gone, entries too), or later (kept, entries intact).
    let (mut old_lists, mut live_lists) = (Vec::new(), Vec::new());
    for n in 0..8_i64 {
        let id = format!("list-{n}");
        let expires_at = if n < 5 { CUTOFF - n } else { CUTOFF + n };
        a.insert_status_list(&id, 1_000 + n, expires_at, &[7; 32])
            .await
            .unwrap();
        a.append_status_entries(&id, 0, b"ab").await.unwrap();
        a.append_status_entries(&id, 2, b"cd").await.unwrap();
        if n < 5 {
            expired += 1;
            old_lists.push(id);
        } else {
            live_lists.push(id);
        }
    }

    // Workload stops: enabled and past their tokens' lives (gone); still
    // stopped (kept, however old); enabled but their revoked tokens may
    // still be alive (kept).
    let stop = |workload: String, stopped_at: i64| WorkloadStop {
        workload,
        stopped_at,
        stopped_by: "alice".into(),
        enabled_at: None,
    };
    let mut kept_stops = Vec::new();
    for n in 0..6 {
        let old = stop(format!("w-old-{n}"), 50_000 + n);
        assert!(old.until() <= CUTOFF);
        a.stop_workload(&old).await.unwrap();
        a.enable_workload(&old.workload, 60_000).await.unwrap();
        expired += 1;
    }
    for n in 0..2 {
        let stopped = stop(format!("w-stopped-{n}"), 50_000 + n);
        a.stop_workload(&stopped).await.unwrap();
        kept_stops.push(stopped);
        let recent = stop(format!("w-recent-{n}"), CUTOFF - 10 + n);
        assert!(recent.until() > CUTOFF);
        a.stop_workload(&recent).await.unwrap();
        a.enable_workload(&recent.workload, CUTOFF).await.unwrap();
        kept_stops.push(WorkloadStop {
            enabled_at: Some(CUTOFF),
            ..recent
        });
    }

    // Three rounds of four purges at once, two through each broker, while
    // a fifth task revokes more tokens through B (what is written meanwhile
    // is no purge's business). Every purge succeeds (no deadlock, no
    // serialization failure); the counts of the first round add up to
    // exactly what expired (each row deleted by one purge), the later
    // rounds find nothing.
    let stores = [
        Arc::clone(&a),
        Arc::clone(&b),
        Arc::clone(&a),
        Arc::clone(&b),
    ];
    let mut rounds = Vec::new();
    let mut written_meanwhile = Vec::new();
    for round in 0..3 {
        let revocations: Vec<TokenRevocation> = (0..5)
            .map(|n| token(&format!("t-new-{round}-{n}"), CUTOFF + 50))
            .collect();
        let writer = {
            let (b, revocations) = (Arc::clone(&b), revocations.clone());
            tokio::spawn(async move {
                for revocation in &revocations {
                    b.revoke_token(revocation, None).await.unwrap();
                }
            })
        };
        let counts = all_at_once(&stores, |_, store| async move {
            store.purge_expired(CUTOFF).await
        })
        .await;
        writer.await.unwrap();
        written_meanwhile.extend(revocations);
        let counts: Vec<u64> = counts
            .into_iter()
            .map(|count| count.unwrap_or_else(|e| panic!("round {round}: {e}")))
            .collect();
        rounds.push(counts);
    }
    let sums: Vec<u64> = rounds.iter().map(|r| r.iter().sum()).collect();
    assert_eq!(sums, [expired, 0, 0], "each row purged once: {rounds:?}");

    // What is stored at all (asked as at time 0): only what still matters.
    let stored = b.live_revocations(0).await.unwrap();
    let mut tokens = stored.tokens.clone();
    tokens.sort_by(|x, y| x.jti.cmp(&y.jti));
    let mut expected_tokens = [live_tokens, written_meanwhile].concat();
    expected_tokens.sort_by(|x, y| x.jti.cmp(&y.jti));
    assert_eq!(tokens, expected_tokens);
    let mut jobs = stored.jobs.clone();
    jobs.sort_by(|x, y| x.job.cmp(&y.job));
    assert_eq!(jobs, live_jobs);
    let mut steps = stored.steps.clone();
    steps.sort_by(|x, y| x.step.cmp(&y.step));
    assert_eq!(steps, live_steps);

    let approvals: Vec<String> = a
        .approvals(0)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.request.id)
        .collect();
    assert_eq!(approvals, kept_approvals);
    // Votes went with their requests, and only with them (the store's own
    // tables: no API lists votes).
    let votes: Vec<String> = cluster
        .superuser_client_in("stint")
        .await
        .query(
            "SELECT approval_id FROM approval_votes ORDER BY approval_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(votes, ["apr-10", "apr-12", "apr-14"]);

    let lists = b.status_lists(0).await.unwrap();
    assert_eq!(
        lists.iter().map(|l| l.id.clone()).collect::<Vec<_>>(),
        live_lists
    );
    for list in &lists {
        assert_eq!(
            list.chunks,
            [(0, b"ab".to_vec()), (2, b"cd".to_vec())],
            "{}: entries intact",
            list.id
        );
    }
    for id in &old_lists {
        assert!(a.status_list(id, 0, 0).await.unwrap().is_none(), "{id}");
    }
    let entries: i64 = cluster
        .superuser_client_in("stint")
        .await
        .query_one("SELECT count(*) FROM status_entries", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(entries, 2 * live_lists.len() as i64, "entries went too");

    let mut stops = a.workload_stops(0).await.unwrap();
    stops.sort_by(|x, y| x.workload.cmp(&y.workload));
    kept_stops.sort_by(|x, y| x.workload.cmp(&y.workload));
    assert_eq!(stops, kept_stops);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn target_credential_purges_by_two_brokers_delete_each_row_once() {
    let cluster = PgCluster::start();
    let (a, b) = two_brokers(&cluster).await;
    const BEFORE: i64 = 10_000;
    // Revoked before the cutoff: purged. Revoked at or after it, live,
    // revoking, irrevocable (however long ago): kept.
    let mut old: u64 = 0;
    for n in 0..24 {
        assert!(
            a.insert_target_credential(
                &credential(
                    &format!("tc-old-{n:02}"),
                    CredentialState::Revoked,
                    Some(BEFORE - 1 - n),
                ),
                "broker-a"
            )
            .await
            .unwrap()
        );
        old += 1;
    }
    let mut unfinished = Vec::new();
    for n in 0..4 {
        assert!(
            a.insert_target_credential(
                &credential(
                    &format!("tc-recent-{n}"),
                    CredentialState::Revoked,
                    Some(BEFORE + n),
                ),
                "broker-a"
            )
            .await
            .unwrap()
        );
        for (state, finished_at) in [
            (CredentialState::Live, None),
            (CredentialState::Revoking, None),
            (CredentialState::Irrevocable, Some(1_000)),
        ] {
            let c = credential(&format!("tc-{}-{n}", state.as_str()), state, finished_at);
            assert!(a.insert_target_credential(&c, "broker-a").await.unwrap());
            unfinished.push(c);
        }
    }

    let stores = [
        Arc::clone(&a),
        Arc::clone(&b),
        Arc::clone(&a),
        Arc::clone(&b),
    ];
    let mut rounds = Vec::new();
    for _ in 0..3 {
        let counts = all_at_once(&stores, |_, store| async move {
            store.purge_target_credentials(BEFORE).await.unwrap()
        })
        .await;
        rounds.push(counts);
    }
    let sums: Vec<u64> = rounds.iter().map(|r| r.iter().sum()).collect();
    assert_eq!(sums, [old, 0, 0], "each credential purged once: {rounds:?}");

    // The unfinished ones all stay, as stored.
    let mut stored = b.unfinished_target_credentials().await.unwrap();
    stored.sort_by(|x, y| x.id.cmp(&y.id));
    unfinished.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(stored, unfinished);
    // So do those revoked at or after the cutoff: a later purge finds
    // exactly them.
    assert_eq!(a.purge_target_credentials(i64::MAX).await.unwrap(), 4);
}

/// Claim for `owner` at `now`, with a 30 s lease as the queue takes: what
/// it took over.
async fn claim(store: Arc<PostgresStore>, owner: String, now: i64) -> Vec<TargetCredential> {
    store
        .claim_target_credentials(&owner, now + 30, now, false)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_by_two_brokers_take_each_ownerless_credential_once() {
    let cluster = PgCluster::start();
    let (a, b) = two_brokers(&cluster).await;
    // Leases first (a claim on an empty ledger takes nothing): `alive`
    // until long after, `lapsed` until 500; `gone` never had one.
    assert!(
        a.claim_target_credentials("alive", 1_000_000, 0, false)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        b.claim_target_credentials("lapsed", 500, 0, false)
            .await
            .unwrap()
            .is_empty()
    );
    let states = [
        (CredentialState::Minting, None),
        (CredentialState::Live, None),
        (CredentialState::Revoking, None),
        (CredentialState::Irrevocable, Some(1_000)),
    ];
    let mut ownerless = BTreeMap::new();
    let mut kept = Vec::new();
    for n in 0..40 {
        let (state, finished_at) = states[n % states.len()];
        for owner in ["lapsed", "gone"] {
            let c = credential(&format!("tc-{owner}-{n:02}"), state, finished_at);
            assert!(a.insert_target_credential(&c, owner).await.unwrap());
            ownerless.insert(c.id.clone(), c);
        }
        if n < 10 {
            let c = credential(&format!("tc-alive-{n:02}"), state, finished_at);
            assert!(b.insert_target_credential(&c, "alive").await.unwrap());
            kept.push(c.id);
            // Destroyed: nobody's to destroy again.
            let c = credential(
                &format!("tc-revoked-{n:02}"),
                CredentialState::Revoked,
                Some(900),
            );
            assert!(b.insert_target_credential(&c, "gone").await.unwrap());
        }
    }

    // Both brokers claim at 1_000, at once: every credential whose owner's
    // lease ran out (or never was) is taken by exactly one of them.
    let stores = [Arc::clone(&a), Arc::clone(&b)];
    let taken = all_at_once(&stores, |n, store| {
        claim(store, ["broker-a", "broker-b"][n].to_owned(), 1_000)
    })
    .await;
    let mut by: BTreeMap<String, &str> = BTreeMap::new();
    for (owner, claimed) in ["broker-a", "broker-b"].into_iter().zip(&taken) {
        for c in claimed {
            assert_eq!(Some(c), ownerless.get(&c.id), "{owner} took {c:?}");
            if let Some(other) = by.insert(c.id.clone(), owner) {
                panic!("{} taken by both {other} and {owner}", c.id);
            }
        }
    }
    assert_eq!(
        by.keys().collect::<Vec<_>>(),
        ownerless.keys().collect::<Vec<_>>(),
        "every ownerless credential was taken"
    );
    // The store agrees on who owns what; the live broker's stay its own.
    for (id, owner) in &by {
        let other = if *owner == "broker-a" {
            "broker-b"
        } else {
            "broker-a"
        };
        assert!(a.owns_target_credential(owner, id).await.unwrap(), "{id}");
        assert!(!b.owns_target_credential(other, id).await.unwrap(), "{id}");
    }
    for id in &kept {
        assert!(b.owns_target_credential("alive", id).await.unwrap(), "{id}");
    }

    // Claiming again while everyone's lease holds takes nothing.
    let again = all_at_once(&stores, |n, store| {
        claim(store, ["broker-a", "broker-b"][n].to_owned(), 1_010)
    })
    .await;
    assert!(again.iter().all(Vec::is_empty), "{again:?}");

    // Broker B stops renewing: at 2_000 its lease (until 1_040) has run
    // out, and A takes over exactly what B held, once.
    let mut held_by_b: Vec<&String> = by
        .iter()
        .filter(|(_, owner)| **owner == "broker-b")
        .map(|(id, _)| id)
        .collect();
    held_by_b.sort();
    let mut taken_over: Vec<String> = claim(Arc::clone(&a), "broker-a".into(), 2_000)
        .await
        .into_iter()
        .map(|c| c.id)
        .collect();
    taken_over.sort();
    assert_eq!(taken_over.iter().collect::<Vec<_>>(), held_by_b);
}

/// Found here, now fixed: `claim_target_credentials` selected the
/// credentials to take `FOR UPDATE SKIP LOCKED` in a READ COMMITTED
/// statement, with "whose owner is not alive" as an anti-join against the
/// leases. A claim whose statement began before another broker's claim
/// committed, and whose scan reached a credential after that commit,
/// locked the credential's new version and rechecked it without looking at
/// the leases again (PostgreSQL's EvalPlanQual recheck of a join), so it
/// took the credential too: both claims returned it (5 runs of 5). The
/// claim is now a compare-and-set on each row's owner as read. The window is the
/// second claim's scan, so the bigger the ledger, the wider it is; this
/// test sweeps the second broker's start across the first one's claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_claim_racing_a_committing_claim_takes_no_credential_twice() {
    let cluster = PgCluster::start();
    let (a, b) = two_brokers(&cluster).await;
    // 5 000 credentials of a broker that never had a lease: one through
    // the store, copied by the superuser (only `id` and `jti` differ).
    const LEDGER: i64 = 5_000;
    let seed = credential("tc-seed", CredentialState::Live, None);
    assert!(a.insert_target_credential(&seed, "gone").await.unwrap());
    cluster
        .superuser_client_in("stint")
        .await
        .execute(
            "INSERT INTO target_credentials
             SELECT (jsonb_populate_record(t, jsonb_build_object(
                       'id', 'tc-copy-' || g, 'jti', 'jti-copy-' || g))).*
             FROM target_credentials t, generate_series(1, $1::bigint) g
             WHERE t.id = 'tc-seed'",
            &[&LEDGER],
        )
        .await
        .unwrap();
    // How long one claim of it all takes, alone.
    let started = std::time::Instant::now();
    let all = claim(Arc::clone(&a), "timing".into(), 1_000).await;
    assert_eq!(all.len() as i64, LEDGER + 1);
    let alone = started.elapsed();

    // Each trial a little later: A claims, and B a moment after. The
    // previous trial's leases have run out, so everything is to be taken
    // again, by one of them. 60 trials, B's start swept from 0 to twice
    // the time of a claim alone.
    for trial in 0..60_u32 {
        let now = 10_000 + i64::from(trial) * 1_000;
        let delay = alone * 2 * trial / 60;
        let (owner_a, owner_b) = (format!("a-{trial}"), format!("b-{trial}"));
        let first = tokio::spawn(claim(Arc::clone(&a), owner_a, now));
        let second = {
            let b = Arc::clone(&b);
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                claim(b, owner_b, now).await
            })
        };
        let (by_a, by_b) = (first.await.unwrap(), second.await.unwrap());
        let ids: BTreeSet<&str> = by_a.iter().map(|c| c.id.as_str()).collect();
        let twice = by_b.iter().filter(|c| ids.contains(c.id.as_str())).count();
        assert_eq!(
            twice,
            0,
            "trial {trial}, B {delay:?} after A: both claims took {twice} credentials \
             (A {}, B {})",
            by_a.len(),
            by_b.len()
        );
        assert_eq!(by_a.len() + by_b.len(), all.len(), "trial {trial}");
    }
}
