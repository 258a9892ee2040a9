//! The conformance suite every [`Store`](crate::Store) backend must pass.
//!
//! Call [`run`] with a fresh, empty store from the backend's own tests. Each
//! check panics with a message naming the property that failed.

// A test suite: a failed expectation is a failed test, so panicking is the point.
#![allow(clippy::expect_used, clippy::panic)]

use crate::{ApprovalSaved, Change, Store, StoredApproval, StoredKey};
use stint_core::revocation::{JobRevocation, StepRevocation, TokenRevocation, WorkloadStop};

/// Run every check against `store`, which must be empty.
pub async fn run(store: &dyn Store) {
    store.check().await.expect("check() on a fresh store");
    change_feed_is_gap_free_and_in_order(store).await;
    token_revocations_round_trip(store).await;
    job_revocations_round_trip(store).await;
    purge_drops_only_what_expired(store).await;
    signing_keys_round_trip(store).await;
    approvals_round_trip(store).await;
    status_lists_round_trip(store).await;
    workload_stops_round_trip(store).await;
    step_revocations_round_trip(store).await;
    target_credentials_round_trip(store).await;
}

async fn change_feed_is_gap_free_and_in_order(store: &dyn Store) {
    use stint_core::status_list::StatusReference;
    let start = store.change_position().await.expect("position");
    assert!(!start.epoch.is_empty(), "the feed has an epoch");
    let status = StatusReference {
        idx: 7,
        uri: "https://stint.example/v1/status/l1".into(),
    };
    let revoked = token(90, 9_000);
    let job = JobRevocation {
        sub: "w".into(),
        job: "j90".into(),
        revoked_at: 1_000,
        until: 2_000,
    };
    let step = StepRevocation {
        sub: "w".into(),
        job: "j90".into(),
        step: "flow/s".into(),
        revoked_at: 1_000,
        until: 2_000,
    };
    let stop = WorkloadStop {
        workload: "w90".into(),
        stopped_at: 1_000,
        stopped_by: "alice".into(),
        enabled_at: None,
    };
    let mut seqs = vec![
        store
            .revoke_token(&revoked, Some(&status))
            .await
            .expect("revoke"),
    ];
    seqs.push(store.revoke_job(&job).await.expect("revoke job"));
    seqs.push(store.revoke_step(&step).await.expect("revoke step"));
    seqs.push(store.stop_workload(&stop).await.expect("stop"));
    seqs.push(store.enable_workload("w90", 1_100).await.expect("enable"));
    let expected: Vec<u64> = (start.seq + 1..=start.seq + 5).collect();
    assert_eq!(seqs, expected, "writes get consecutive sequence numbers");
    let changes = store
        .changes_since(start.seq, 100)
        .await
        .expect("read changes");
    assert_eq!(
        changes.iter().map(|c| c.seq).collect::<Vec<_>>(),
        expected,
        "the feed returns every change, in order"
    );
    assert_eq!(
        changes.into_iter().map(|c| c.change).collect::<Vec<_>>(),
        [
            Change::Token {
                revocation: revoked,
                status: Some(status)
            },
            Change::Job { revocation: job },
            Change::Step { revocation: step },
            Change::WorkloadStopped { stop },
            Change::WorkloadEnabled {
                workload: "w90".into(),
                at: 1_100
            },
        ],
        "each change comes back as written"
    );
    let limited = store.changes_since(start.seq + 1, 2).await.expect("read");
    assert_eq!(
        limited.iter().map(|c| c.seq).collect::<Vec<_>>(),
        [start.seq + 2, start.seq + 3],
        "after, limit"
    );
    assert!(
        store
            .changes_since(start.seq + 5, 10)
            .await
            .expect("read")
            .is_empty(),
        "nothing after the last"
    );
    let now = store.change_position().await.expect("position");
    assert_eq!((now.epoch, now.seq), (start.epoch, start.seq + 5));
    // Recent changes outlive a purge (they are kept CHANGE_RETENTION_SECS).
    store.purge_expired(1_000_000).await.expect("purge");
    assert_eq!(
        store
            .changes_since(start.seq, 100)
            .await
            .expect("read")
            .len(),
        5,
        "a purge keeps recent changes"
    );
}

async fn target_credentials_round_trip(store: &dyn Store) {
    use stint_core::target_credential::{CredentialState, TargetCredential, Trigger};
    let credential = TargetCredential {
        id: "tc-1".into(),
        jti: "jti-1".into(),
        sub: "etl".into(),
        client_id: "etl-connector".into(),
        job: "job-1".into(),
        step: "load".into(),
        approval: None,
        issued_at: 1_000,
        expires_at: 1_300,
        target: "warehouse".into(),
        kind: "postgres".into(),
        upstream_id: "stint_aaaaaaaaaaaaaaaaaaaaaaaa".into(),
        server: "127.0.0.1:5432".into(),
        database: Some("analytics".into()),
        effective: vec![
            "select:warehouse/crm/accounts".into(),
            "usage:warehouse/crm".into(),
        ],
        state: CredentialState::Minting,
        trigger: None,
        attempts: 0,
        next_attempt_at: 0,
        last_error: None,
        created_at: 1_000,
        finished_at: None,
        revoke_requested_at: None,
        sealed: None,
        grant: None,
    };
    assert!(
        store
            .insert_target_credential(&credential, "broker-1")
            .await
            .expect("insert target credential"),
        "a new target credential is recorded"
    );
    let again = TargetCredential {
        id: "tc-2".into(),
        ..credential.clone()
    };
    assert!(
        !store
            .insert_target_credential(&again, "broker-1")
            .await
            .expect("insert a second for the same token and target"),
        "one target credential per step token and target"
    );
    let other_target = TargetCredential {
        id: "tc-3".into(),
        target: "ledger".into(),
        approval: Some("apr-1".into()),
        ..credential.clone()
    };
    assert!(
        store
            .insert_target_credential(&other_target, "broker-1")
            .await
            .expect("insert for another target"),
        "the same token may have a credential for another target"
    );
    assert_eq!(
        store
            .unfinished_target_credentials()
            .await
            .expect("load target credentials"),
        vec![credential.clone(), other_target.clone()],
        "target credentials round-trip, oldest first"
    );

    let mut revoking = credential.clone();
    revoking.state = CredentialState::Revoking;
    revoking.trigger = Some(Trigger::Job);
    revoking.attempts = 2;
    revoking.next_attempt_at = 1_010;
    revoking.last_error = Some("could not connect".into());
    revoking.revoke_requested_at = Some(1_005);
    revoking.sealed = Some(vec![0, 1, 2, 255]);
    revoking.upstream_id = "hashed-token".into();
    revoking.grant = Some(stint_core::target_credential::UpstreamGrant {
        installation: Some(42),
        repositories: vec!["acme/web".into()],
        permissions: [("contents".to_owned(), "write".to_owned())].into(),
        hashed_token: Some("aGFzaA==".into()),
        token_sha256: Some("00ff".into()),
        upstream_expires_at: Some(4_600),
        request_id: Some("ABCD:1234".into()),
    });
    assert!(
        store
            .update_target_credential(&revoking, "broker-1")
            .await
            .expect("update target credential"),
        "its owner updates it"
    );
    if store.shared() {
        // Another broker's update of it writes nothing.
        let mut stolen = revoking.clone();
        stolen.state = CredentialState::Revoked;
        assert!(
            !store
                .update_target_credential(&stolen, "broker-2")
                .await
                .expect("update target credential"),
            "only its owner updates a credential"
        );
    }
    let mut revoked = other_target.clone();
    revoked.state = CredentialState::Revoked;
    revoked.trigger = Some(Trigger::Expired);
    revoked.finished_at = Some(1_300);
    assert!(
        store
            .update_target_credential(&revoked, "broker-1")
            .await
            .expect("update target credential")
    );
    assert_eq!(
        store
            .unfinished_target_credentials()
            .await
            .expect("load target credentials"),
        vec![revoking.clone()],
        "an update replaces the state; revoked credentials are finished"
    );
    let missing = TargetCredential {
        id: "tc-missing".into(),
        ..credential.clone()
    };
    assert!(
        store
            .update_target_credential(&missing, "broker-1")
            .await
            .is_err(),
        "updating a credential the store does not hold is an error"
    );
    assert_eq!(
        store
            .purge_target_credentials(1_300)
            .await
            .expect("purge target credentials"),
        0,
        "purge keeps what finished at or after its time"
    );
    assert_eq!(
        store
            .purge_target_credentials(1_301)
            .await
            .expect("purge target credentials"),
        1,
        "purge drops revoked credentials finished before its time"
    );
    let mut irrevocable = revoking;
    irrevocable.state = CredentialState::Irrevocable;
    irrevocable.finished_at = Some(2_000);
    store
        .update_target_credential(&irrevocable, "broker-1")
        .await
        .expect("update target credential");
    store
        .purge_target_credentials(5_000)
        .await
        .expect("purge target credentials");
    assert_eq!(
        store
            .unfinished_target_credentials()
            .await
            .expect("load target credentials"),
        vec![irrevocable],
        "an irrevocable credential is kept until an operator deals with it"
    );
}

async fn step_revocations_round_trip(store: &dyn Store) {
    use stint_core::revocation::StepRevocation;
    let revocation = StepRevocation {
        sub: "w".into(),
        job: "j".into(),
        step: "deploy".into(),
        revoked_at: 1_000,
        until: 4_601,
    };
    store.revoke_step(&revocation).await.expect("revoke step");
    store
        .revoke_step(&revocation)
        .await
        .expect("again: a no-op");
    assert_eq!(
        store.live_revocations(2_000).await.expect("load").steps,
        std::slice::from_ref(&revocation)
    );
    assert!(
        store
            .live_revocations(4_601)
            .await
            .expect("load")
            .steps
            .is_empty()
    );
    store.purge_expired(4_601).await.expect("purge");
}

async fn workload_stops_round_trip(store: &dyn Store) {
    use stint_core::revocation::WorkloadStop;
    let stop = WorkloadStop {
        workload: "w".into(),
        stopped_at: 1_000,
        stopped_by: "alice".into(),
        enabled_at: None,
    };
    store.stop_workload(&stop).await.expect("stop");
    assert_eq!(
        store.workload_stops(1_000_000).await.expect("load"),
        std::slice::from_ref(&stop),
        "kept while stopped"
    );
    store.enable_workload("w", 1_500).await.expect("enable");
    let enabled = WorkloadStop {
        enabled_at: Some(1_500),
        ..stop.clone()
    };
    assert_eq!(
        store.workload_stops(2_000).await.expect("load"),
        [enabled],
        "enabled, tokens still revoked"
    );
    assert!(
        store
            .workload_stops(stop.until())
            .await
            .expect("load")
            .is_empty(),
        "enabled and every revoked token expired"
    );
    store.purge_expired(stop.until()).await.expect("purge");
    store.stop_workload(&stop).await.expect("stop again");
}

async fn status_lists_round_trip(store: &dyn Store) {
    store
        .insert_status_list("list-a", 1_000, 9_000, &[7; 32])
        .await
        .expect("insert a list");
    store
        .insert_status_list("list-b", 2_000, 10_000, &[8; 32])
        .await
        .expect("insert another");
    store
        .insert_status_list("list-a", 5_000, 99_000, &[9; 32])
        .await
        .expect("inserting again is a no-op");
    store
        .append_status_entries("list-a", 2, b"cd")
        .await
        .expect("append entries");
    store
        .append_status_entries("list-a", 0, b"ab")
        .await
        .expect("append entries");
    store
        .append_status_entries("list-a", 2, b"c")
        .await
        .expect("a shorter write at the same index is ignored");
    store
        .append_status_entries("list-a", 0, b"a")
        .await
        .expect("a shorter write at the same index is ignored");
    let lists = store.status_lists(3_000).await.expect("load lists");
    let summary: Vec<_> = lists
        .iter()
        .map(|l| (l.id.as_str(), l.created_at, l.key.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            ("list-a", 1_000, Some(vec![7; 32])),
            ("list-b", 2_000, Some(vec![8; 32]))
        ]
    );
    assert_eq!(
        lists[0].chunks,
        [(0, b"ab".to_vec()), (2, b"cd".to_vec())],
        "entries come back in index order"
    );
    store
        .append_status_entries("list-a", 2, b"cdef")
        .await
        .expect("a longer write at the same index replaces it");
    assert_eq!(
        store.status_lists(3_000).await.expect("load lists")[0].chunks,
        [(0, b"ab".to_vec()), (2, b"cdef".to_vec())]
    );
    assert!(lists[1].chunks.is_empty());
    // One list, from an index on.
    let one = store
        .status_list("list-a", 2, 3_000)
        .await
        .expect("load one list")
        .expect("it is kept");
    assert_eq!(
        (one.id.as_str(), one.created_at, one.key.clone()),
        ("list-a", 1_000, Some(vec![7; 32]))
    );
    assert_eq!(
        one.chunks,
        [(2, b"cdef".to_vec())],
        "the chunks from index 2"
    );
    assert_eq!(
        store
            .status_list("list-a", 0, 3_000)
            .await
            .expect("load one list")
            .map(|l| l.chunks.len()),
        Some(2)
    );
    assert_eq!(
        store.status_list("list-a", 0, 9_000).await.expect("load"),
        None,
        "not once every token it could serve has expired"
    );
    assert_eq!(
        store.status_list("list-none", 0, 0).await.expect("load"),
        None
    );
    let ids = |lists: Vec<crate::StoredStatusList>| -> Vec<String> {
        lists.into_iter().map(|l| l.id).collect()
    };
    assert_eq!(
        ids(store.status_lists(9_000).await.expect("load lists")),
        ["list-b"],
        "a list is not returned once every token it could serve has expired"
    );
    store.purge_expired(10_000).await.expect("purge");
    assert!(store.status_lists(0).await.expect("load lists").is_empty());
    // A list inserted again under a purged id starts without entries.
    store
        .insert_status_list("list-a", 20_000, 30_000, &[1; 32])
        .await
        .expect("insert");
    let lists = store.status_lists(20_000).await.expect("load lists");
    assert!(lists[0].chunks.is_empty(), "purging dropped the entries");
}

async fn approvals_round_trip(store: &dyn Store) {
    use stint_core::approval::{ApprovalRequest, Elevation, Operator, Requester};
    use stint_core::scope::Scope;
    let elevation = Elevation {
        approver_groups: ["sre".to_owned()].into(),
        quorum: 1,
        max_duration: 600,
        max_wait: 300,
        reason_required: false,
    };
    let mut request = ApprovalRequest::new(
        "apr-1".into(),
        Requester {
            workload: "w".into(),
            client_id: "w".into(),
            job: "j".into(),
            step: "flow/step".into(),
            audience: "https://a.example".into(),
        },
        vec![Scope::parse("deploy:prod/web").expect("scope")],
        Some("hotfix".into()),
        None,
        elevation,
        10_000,
    )
    .expect("a request");
    assert!(
        matches!(
            store
                .save_approval(&request, 0)
                .await
                .expect("save pending"),
            ApprovalSaved::Saved { revision: 1, .. }
        ),
        "a new request is saved at revision 1"
    );
    assert_eq!(
        store
            .save_approval(&request, 0)
            .await
            .expect("save pending again"),
        ApprovalSaved::Conflict,
        "a second new request with the same id conflicts"
    );
    let pending = request.clone();
    let alice = Operator {
        name: "alice".into(),
        groups: ["sre".to_owned()].into(),
        owns: Default::default(),
    };
    request
        .approve(&alice, None, Some("ok".into()), 10_010)
        .expect("approve");
    let saved = store
        .save_approval(&request, 1)
        .await
        .expect("save approved");
    let ApprovalSaved::Saved { revision: 2, seq } = saved else {
        panic!("an approval saved over revision 1 is revision 2, got {saved:?}");
    };
    let changes = store
        .changes_since(seq - 1, 10)
        .await
        .expect("read changes");
    assert_eq!(
        changes.first().map(|c| &c.change),
        Some(&Change::Approval {
            request: Box::new(request.clone()),
            revision: 2
        }),
        "the save is in the change feed with its revision"
    );
    assert_eq!(
        store.save_approval(&pending, 1).await.expect("save stale"),
        ApprovalSaved::Conflict,
        "a save over a revision that is no longer the stored one conflicts"
    );
    // The same operator's vote again, as another broker would record it
    // from the request it read at revision 2: refused by the vote rows.
    let mut twice = request.clone();
    twice.approvals[0].at += 1;
    assert_eq!(
        store.save_approval(&twice, 2).await.expect("vote twice"),
        ApprovalSaved::AlreadyVoted,
        "one vote per operator and request"
    );
    assert_eq!(
        store.approval("apr-1").await.expect("load approval"),
        Some(StoredApproval {
            request: request.clone(),
            revision: 2
        }),
        "a refused save writes nothing"
    );
    assert_eq!(store.approval("apr-none").await.expect("load"), None);
    assert_eq!(
        store.approvals(10_020).await.expect("load approvals"),
        [StoredApproval {
            request: request.clone(),
            revision: 2
        }],
        "the latest state of a request replaces the earlier one"
    );
    let gone = request.keep_until();
    assert_eq!(
        store.approvals(gone).await.expect("load approvals"),
        [],
        "not returned past keep_until"
    );
    assert!(store.purge_expired(gone).await.expect("purge") >= 1);
    assert!(
        matches!(
            store.save_approval(&request, 0).await.expect("save again"),
            ApprovalSaved::Saved { revision: 1, .. }
        ),
        "a purged request, and its votes, are gone"
    );
}

fn token(n: u8, expires_at: i64) -> TokenRevocation {
    let jti = format!("{:A<22}", format!("tok{n}"));
    TokenRevocation {
        jti,
        sub: "workload".into(),
        job: format!("job-{n}"),
        expires_at,
        revoked_at: 1_000,
    }
}

async fn token_revocations_round_trip(store: &dyn Store) {
    let a = token(1, 5_000);
    let b = token(2, 6_000);
    store.revoke_token(&a, None).await.expect("revoke a");
    store.revoke_token(&b, None).await.expect("revoke b");
    // Idempotent: a second revocation of the same jti changes nothing.
    let mut again = a.clone();
    again.revoked_at = 4_000;
    store
        .revoke_token(&again, None)
        .await
        .expect("revoke a again");

    let mut live = store.live_revocations(1_500).await.expect("load").tokens;
    live.sort_by(|x, y| x.jti.cmp(&y.jti));
    assert_eq!(
        live,
        [a.clone(), b.clone()],
        "revoked tokens are returned exactly, first revocation kept"
    );
    let live = store.live_revocations(5_000).await.expect("load").tokens;
    assert_eq!(live, [b], "a token whose exp has passed is no longer live");
}

async fn job_revocations_round_trip(store: &dyn Store) {
    let first = JobRevocation {
        sub: "workload".into(),
        job: "job-x".into(),
        revoked_at: 1_000,
        until: 4_601,
    };
    store.revoke_job(&first).await.expect("revoke job");
    let later = JobRevocation {
        revoked_at: 2_000,
        until: 5_601,
        ..first.clone()
    };
    store.revoke_job(&later).await.expect("revoke job again");
    let other = JobRevocation {
        sub: "other".into(),
        ..first.clone()
    };
    store
        .revoke_job(&other)
        .await
        .expect("revoke other workload's job");

    let mut jobs = store.live_revocations(1_500).await.expect("load").jobs;
    jobs.sort_by(|x, y| x.sub.cmp(&y.sub));
    assert_eq!(
        jobs,
        [
            other,
            JobRevocation {
                revoked_at: 1_000,
                until: 5_601,
                ..first
            }
        ],
        "a job is keyed by workload and id; re-revoking keeps the first time and the later until"
    );
}

async fn purge_drops_only_what_expired(store: &dyn Store) {
    let before = store.live_revocations(0).await.expect("load");
    let total = (before.tokens.len() + before.jobs.len()) as u64;
    let purged = store.purge_expired(5_000).await.expect("purge");
    let after = store.live_revocations(0).await.expect("load");
    assert_eq!(
        purged,
        total - (after.tokens.len() + after.jobs.len()) as u64,
        "purge reports what it removed"
    );
    assert!(
        after.tokens.iter().all(|t| t.expires_at > 5_000),
        "purge removes expired tokens"
    );
    assert!(
        after.jobs.iter().all(|j| j.until > 5_000),
        "purge removes finished jobs"
    );
    assert!(
        after.tokens.iter().any(|t| t.expires_at == 6_000),
        "purge keeps live tokens"
    );
    assert!(
        after.jobs.iter().any(|j| j.until == 5_601),
        "purge keeps live jobs"
    );
}

async fn signing_keys_round_trip(store: &dyn Store) {
    assert!(
        store.signing_keys().await.expect("load keys").is_empty(),
        "a fresh store has no keys"
    );
    let old = StoredKey {
        kid: "kid-old".into(),
        alg: "ES256".into(),
        pkcs8: vec![1, 2, 3],
        created_at: 100,
        activated_at: Some(100),
        retired_at: None,
    };
    let new = StoredKey {
        kid: "kid-new".into(),
        alg: "EdDSA".into(),
        pkcs8: vec![4, 5, 6],
        created_at: 200,
        activated_at: Some(200),
        retired_at: None,
    };
    store.insert_signing_key(&new).await.expect("insert new");
    store.insert_signing_key(&old).await.expect("insert old");
    assert!(
        store.insert_signing_key(&old).await.is_err(),
        "a kid is unique"
    );
    store
        .retire_signing_key("kid-old", 300)
        .await
        .expect("retire");
    store
        .retire_signing_key("kid-old", 400)
        .await
        .expect("retire again");
    let keys = store.signing_keys().await.expect("load keys");
    assert_eq!(
        keys,
        [
            StoredKey {
                retired_at: Some(300),
                ..old
            },
            new
        ],
        "keys come back oldest first, retirement recorded once"
    );
    store
        .delete_signing_key("kid-new")
        .await
        .expect("deleting an active key is a no-op");
    store
        .delete_signing_key("kid-old")
        .await
        .expect("delete a retired key");
    let kids: Vec<String> = store
        .signing_keys()
        .await
        .expect("load keys")
        .into_iter()
        .map(|k| k.kid)
        .collect();
    assert_eq!(kids, ["kid-new"], "only the retired key is gone");

    // Staged keys: published first, signing once activated, by one broker.
    let staged = |kid: &str, created_at| StoredKey {
        kid: kid.into(),
        alg: "EdDSA".into(),
        pkcs8: vec![7],
        created_at,
        activated_at: None,
        retired_at: None,
    };
    store
        .insert_signing_key(&staged("kid-staged-1", 300))
        .await
        .expect("insert staged");
    store
        .insert_signing_key(&staged("kid-staged-2", 310))
        .await
        .expect("insert staged");
    let before = store.change_position().await.expect("position").seq;
    let seq = store
        .activate_signing_key("kid-staged-2", 500)
        .await
        .expect("activate")
        .expect("a staged key is activated");
    assert_eq!(seq, before + 1, "one change for the whole switch");
    assert_eq!(
        store
            .activate_signing_key("kid-staged-2", 510)
            .await
            .expect("activate again"),
        None,
        "a key is activated once"
    );
    assert_eq!(
        store
            .activate_signing_key("kid-staged-1", 520)
            .await
            .expect("activate the other"),
        None,
        "the staged key the activation passed over was withdrawn"
    );
    assert_eq!(
        store
            .activate_signing_key("kid-none", 520)
            .await
            .expect("activate unknown"),
        None
    );
    let keys = store.signing_keys().await.expect("load keys");
    let state = |kid: &str| {
        keys.iter()
            .find(|k| k.kid == kid)
            .map(|k| (k.activated_at, k.retired_at))
    };
    assert_eq!(
        state("kid-new"),
        Some((Some(200), Some(500))),
        "the old signer retires at the switch"
    );
    assert_eq!(state("kid-staged-1"), Some((None, Some(500))));
    assert_eq!(
        state("kid-staged-2"),
        Some((Some(500), None)),
        "the one signing key"
    );
}
