//! The target-credential revocation queue (`stint_targets::queue`,
//! `TargetCredentials`) on a real shared PostgreSQL 15 store, with two
//! brokers ("broker-a" and "broker-b") on two handles of one database.
//!
//! The queue's own unit tests run on the embedded SQLite store, which is
//! never shared: there a broker always owns what it made, and the branches
//! that handle a credential taken over by another broker cannot be reached.
//! Here they are, with a fake upstream whose creations and destructions can
//! be held on a gate while the other broker takes the row:
//!
//! - an attempt to destroy a credential that another broker took over while
//!   the upstream call ran (`update_target_credential` answers `Ok(false)`):
//!   what it did upstream is audited, with a detail saying the credential was
//!   taken over, the record is left as the new owner has it, and the broker
//!   stops tracking it;
//! - a credential queued at one broker and taken by another before the
//!   attempt starts (`owns_target_credential` answers `false`): let go
//!   without an upstream call, an audit record or a write;
//! - a mint whose row another broker took over while the upstream creation
//!   ran (again `Ok(false)`): the broker destroys what it made, audits that,
//!   hands nothing out and tracks nothing;
//! - `adopt`: a broker takes a credential back from the broker that took it,
//!   and its queue then destroys it once.

// Test code: a failed expectation should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::{DateTime, Utc};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stint_core::audit::{AuditEntry, EventKind};
use stint_core::claims::AccessTokenClaims;
use stint_core::policy::Policy;
use stint_core::scope::Scope;
use stint_core::target::TargetKind;
use stint_core::target_credential::{CredentialState, TargetCredential};
use stint_store::{PostgresStore, Store};
use stint_targets::queue::{
    Connector, CreateFailure, Created, Destroyed, Host, MintError, Planned, TargetClient,
    TargetCredentials, UpstreamFailure,
};
use stint_tests::postgres::PgCluster;

const ROLE: &str = "stint_store";
const PASSWORD: &str = "store-pw-queue-3b9e17";
const TARGET: &str = "warehouse";
const SCOPE: &str = "select:warehouse/s/t";

/// What `async_trait` turns an `async fn` of a trait into (this crate does
/// not depend on the macro).
type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A broker, as far as the queue cares: its handle on the shared store, its
/// instance name, and its audit log in memory.
struct TestHost {
    store: Arc<PostgresStore>,
    name: &'static str,
    rng: ring::rand::SystemRandom,
    audit: Mutex<Vec<AuditEntry>>,
}

impl TestHost {
    fn new(store: Arc<PostgresStore>, name: &'static str) -> Arc<Self> {
        Arc::new(Self {
            store,
            name,
            rng: ring::rand::SystemRandom::new(),
            audit: Mutex::new(Vec::new()),
        })
    }

    fn events(&self, event: EventKind) -> Vec<AuditEntry> {
        let audit = self.audit.lock().unwrap();
        audit.iter().filter(|e| e.event == event).cloned().collect()
    }

    fn all_events(&self) -> Vec<AuditEntry> {
        self.audit.lock().unwrap().clone()
    }
}

impl Host for TestHost {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
    fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }
    fn rng(&self) -> &ring::rand::SystemRandom {
        &self.rng
    }
    fn is_revoked(&self, _claims: &AccessTokenClaims, _now: DateTime<Utc>) -> bool {
        false
    }
    fn audit<'life0, 'async_trait>(
        &'life0 self,
        entry: AuditEntry,
    ) -> BoxFuture<'async_trait, Result<(), String>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            self.audit.lock().unwrap().push(entry);
            Ok(())
        })
    }
    fn count(&self, _target: &str, _event: &str) {}
    fn instance(&self) -> &str {
        self.name
    }
}

/// A target whose creations and destructions wait for their gate when the
/// test says so, and are counted and recorded.
struct FakeClient {
    gate_create: bool,
    gate_destroy: bool,
    create_gate: tokio::sync::Notify,
    destroy_gate: tokio::sync::Notify,
    planned: AtomicUsize,
    creates_started: AtomicUsize,
    destroys_started: AtomicUsize,
    destroyed: Mutex<Vec<String>>,
}

impl FakeClient {
    fn new(gate_create: bool, gate_destroy: bool) -> Arc<Self> {
        Arc::new(Self {
            gate_create,
            gate_destroy,
            create_gate: tokio::sync::Notify::new(),
            destroy_gate: tokio::sync::Notify::new(),
            planned: AtomicUsize::new(0),
            creates_started: AtomicUsize::new(0),
            destroys_started: AtomicUsize::new(0),
            destroyed: Mutex::new(Vec::new()),
        })
    }

    fn destroyed(&self) -> Vec<String> {
        self.destroyed.lock().unwrap().clone()
    }
}

impl TargetClient for FakeClient {
    fn kind(&self) -> &'static str {
        "postgres"
    }
    fn server(&self) -> String {
        "fake.example:5432".into()
    }
    fn database(&self) -> Option<String> {
        Some("db".into())
    }
    fn plan(
        &self,
        _target: &str,
        scopes: &[Scope],
        _expires_at: i64,
        _rng: &ring::rand::SystemRandom,
    ) -> Result<Planned, String> {
        let n = self.planned.fetch_add(1, Ordering::SeqCst);
        Ok(Planned {
            upstream_id: format!("stint_fake_{n}"),
            secret: "secret".into(),
            privileges: Vec::new(),
            effective: scopes.iter().map(|s| s.as_str().to_owned()).collect(),
            request: Vec::new(),
            postgres: None,
            github: None,
        })
    }
    fn create<'life0, 'life1, 'async_trait>(
        &'life0 self,
        _planned: &'life1 Planned,
    ) -> BoxFuture<'async_trait, Result<Created, CreateFailure>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            self.creates_started.fetch_add(1, Ordering::SeqCst);
            if self.gate_create {
                self.create_gate.notified().await;
            }
            Ok(Created::default())
        })
    }
    fn destroy<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        upstream_id: &'life1 str,
        _sealed: Option<&'life2 [u8]>,
    ) -> BoxFuture<'async_trait, Result<Destroyed, UpstreamFailure>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            self.destroys_started.fetch_add(1, Ordering::SeqCst);
            if self.gate_destroy {
                self.destroy_gate.notified().await;
            }
            self.destroyed.lock().unwrap().push(upstream_id.to_owned());
            Ok(Destroyed {
                existed: true,
                terminated: 0,
            })
        })
    }
    fn list<'life0, 'async_trait>(
        &'life0 self,
    ) -> BoxFuture<'async_trait, Result<Option<Vec<String>>, UpstreamFailure>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move { Ok(None) })
    }
}

/// A policy whose step `load` reaches the PostgreSQL target `warehouse`
/// (never connected to: the connector gives the fake).
fn policy() -> Policy {
    let text = format!(
        "[workloads.etl]\nsecret_sha256 = \"{}\"\nworkflows = [\"sync\"]\n[targets.{TARGET}]\nkind = \"postgres\"\nhost = \"fake.example\"\ndatabase = \"db\"\nadmin_user = \"admin\"\nadmin_password_env = \"UNUSED\"\n[workflows.sync]\nreview_by = 2099-01-01\n[workflows.sync.steps.load]\nscopes = [\"{SCOPE}\"]\ntargets = [\"{TARGET}\"]\n",
        "0".repeat(64),
    );
    Policy::parse("p.toml", &text).unwrap()
}

fn claims(jti: &str, iat: i64) -> AccessTokenClaims {
    AccessTokenClaims {
        iss: "https://stint.example".into(),
        sub: "etl".into(),
        aud: TARGET.into(),
        client_id: "etl".into(),
        exp: iat + 3600,
        iat,
        nbf: iat,
        jti: jti.into(),
        scope: SCOPE.into(),
        job: "job-1".into(),
        step: "load".into(),
        workflow: "sync".into(),
        cnf: None,
        elev: None,
        status: None,
    }
}

fn scopes() -> Vec<Scope> {
    vec![Scope::parse(SCOPE).unwrap()]
}

/// A queue whose only target is `client`, with the policy installed.
fn queue(client: &Arc<FakeClient>) -> Arc<TargetCredentials> {
    let client = Arc::clone(client);
    let connector: Connector = Arc::new(move |_marker, target| {
        let TargetKind::Postgres(_) = target.kind() else {
            return Err("not a postgres target".into());
        };
        Ok(Arc::clone(&client) as Arc<dyn TargetClient>)
    });
    let queue = Arc::new(TargetCredentials::new("https://stint.example", connector));
    let problems = queue.install(&policy());
    assert!(problems.is_empty(), "{problems:?}");
    queue
}

/// Two brokers on one fresh database, each with its lease: broker-a's
/// taken by its queue's `load` (which finds nothing to take over),
/// broker-b's by a claim of its own.
struct Brokers {
    cluster: PgCluster,
    host_a: Arc<TestHost>,
    host_b: Arc<TestHost>,
    client: Arc<FakeClient>,
    queue_a: Arc<TargetCredentials>,
}

async fn brokers(gate_create: bool, gate_destroy: bool) -> Brokers {
    let cluster = PgCluster::start();
    let mut settings = cluster.create_store_database("stint", ROLE, PASSWORD).await;
    // A slow machine (a build alongside) must not fail these tests.
    settings.timeout = Duration::from_secs(15);
    let store_a = Arc::new(PostgresStore::open(&settings).await.unwrap());
    let store_b = Arc::new(PostgresStore::open(&settings).await.unwrap());
    assert!(store_a.shared(), "the PostgreSQL store is shared");
    let host_a = TestHost::new(store_a, "broker-a");
    let host_b = TestHost::new(store_b, "broker-b");
    let client = FakeClient::new(gate_create, gate_destroy);
    let queue_a = queue(&client);
    assert_eq!(queue_a.load(host_a.as_ref()).await.unwrap(), 0);
    let now = Utc::now().timestamp();
    let taken = host_b
        .store
        .claim_target_credentials("broker-b", now + 30, now, false)
        .await
        .unwrap();
    assert!(taken.is_empty());
    Brokers {
        cluster,
        host_a,
        host_b,
        client,
        queue_a,
    }
}

impl Brokers {
    /// Broker-a mints a credential for step token `jti`.
    async fn mint_at_a(&self, jti: &str) -> stint_targets::queue::Minted {
        let now = Utc::now();
        self.queue_a
            .mint(
                self.host_a.as_ref(),
                &claims(jti, now.timestamp() - 10),
                TARGET,
                &scopes(),
                now,
            )
            .await
            .unwrap()
    }

    /// Whether `broker` (`broker-a` or `broker-b`) owns credential `id`.
    async fn owns(&self, broker: &str, id: &str) -> bool {
        let host = if broker == "broker-a" {
            &self.host_a
        } else {
            &self.host_b
        };
        host.store.owns_target_credential(broker, id).await.unwrap()
    }

    /// Broker-b takes credential `id` (of step token `jti`) over.
    async fn take_at_b(&self, id: &str, jti: &str) -> Option<TargetCredential> {
        self.host_b
            .store
            .take_target_credential("broker-b", id, jti)
            .await
            .unwrap()
    }
}

/// Start broker-a's queue; it runs until the sender is dropped or says so.
fn run_queue(brokers: &Brokers) -> tokio::sync::watch::Sender<bool> {
    let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(
        Arc::clone(&brokers.queue_a).run(Arc::clone(&brokers.host_a) as Arc<dyn Host>, closing_rx),
    );
    closing_tx
}

/// Wait, at most 10 s, until `check` holds.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The stored row of credential `id`, if it is unfinished.
async fn stored(store: &PostgresStore, id: &str) -> Option<TargetCredential> {
    store
        .unfinished_target_credentials()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.id == id)
}

/// Whether broker-a's queue tracks any credential that is not revoked.
fn tracks_any(queue: &TargetCredentials) -> bool {
    !queue.census(Utc::now().timestamp()).is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_attempt_that_loses_its_credential_audits_what_it_did_and_writes_nothing() {
    let brokers = brokers(false, true).await;
    let (host_a, host_b, client, queue_a) = (
        &brokers.host_a,
        &brokers.host_b,
        &brokers.client,
        &brokers.queue_a,
    );
    let now = Utc::now();
    let jti = "lost-attempt-1";
    let minted = brokers.mint_at_a(jti).await;
    let id = minted.credential.id.clone();
    assert!(brokers.owns("broker-a", &id).await);
    let _closing = run_queue(&brokers);

    let queued = queue_a.revoke_one(&id, jti, now.timestamp()).unwrap();
    assert_eq!(queued.state, CredentialState::Revoking);
    // As the broker's revocation endpoint does: the queued state is stored.
    assert!(
        host_a
            .store
            .update_target_credential(&queued, "broker-a")
            .await
            .unwrap()
    );
    eventually("broker-a's destruction to start", || {
        client.destroys_started.load(Ordering::SeqCst) == 1
    })
    .await;
    // Broker-a checked it owned the credential before it called the
    // upstream; broker-b takes it now (its token's holder revoked it there).
    let taken = brokers
        .take_at_b(&id, jti)
        .await
        .expect("broker-b takes the credential being revoked");
    assert_eq!(taken.state, CredentialState::Revoking);
    assert_eq!(taken.attempts, 0);
    assert!(!brokers.owns("broker-a", &id).await);
    assert!(host_a.events(EventKind::TargetCredentialRevoked).is_empty());
    client.destroy_gate.notify_one();

    eventually(
        "broker-a to audit its attempt and let the credential go",
        || !host_a.events(EventKind::TargetCredentialRevoked).is_empty() && !tracks_any(queue_a),
    )
    .await;
    // Its destruction happened upstream, once, and is audited once, saying
    // whose the credential is now (the `Ok(false)` branch ran: an attempt
    // that kept its credential audits no detail).
    assert_eq!(
        client.destroyed(),
        vec![minted.credential.upstream_id.clone()]
    );
    let revoked = host_a.events(EventKind::TargetCredentialRevoked);
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    let entry = &revoked[0];
    assert_eq!(entry.jti.as_deref(), Some(jti));
    let target = entry.target.as_ref().unwrap();
    assert_eq!(target.credential_id.as_deref(), Some(id.as_str()));
    assert_eq!(target.outcome.as_deref(), Some("revoked"));
    let detail = entry.detail.as_deref().unwrap_or_default();
    assert!(
        detail.contains("another broker took this credential over"),
        "{detail:?}"
    );
    // Nothing else was audited (the mint's caller audits the mint).
    assert_eq!(host_a.all_events().len(), 1, "{:?}", host_a.all_events());
    // The row is broker-b's, exactly as broker-b took it: broker-a's
    // `revoked`, with one attempt, was not written.
    assert!(brokers.owns("broker-b", &id).await);
    assert!(!brokers.owns("broker-a", &id).await);
    let row = stored(&host_b.store, &id)
        .await
        .expect("the credential is still unfinished in the store");
    assert_eq!(row.state, CredentialState::Revoking);
    assert_eq!(row.attempts, 0);
    assert_eq!(row, taken);
    // Broker-a no longer tracks it: a revocation through it is not its own.
    assert!(
        queue_a
            .revoke_one(&id, jti, Utc::now().timestamp())
            .is_none()
    );
    assert!(!tracks_any(queue_a));
    // And its queue does not come back to it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(client.destroys_started.load(Ordering::SeqCst), 1);
    assert_eq!(stored(&host_b.store, &id).await.unwrap(), taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_credential_taken_over_before_its_attempt_is_let_go_untouched() {
    let brokers = brokers(false, false).await;
    let (host_a, host_b, client, queue_a) = (
        &brokers.host_a,
        &brokers.host_b,
        &brokers.client,
        &brokers.queue_a,
    );
    let now = Utc::now();
    let jti = "taken-before-1";
    let minted = brokers.mint_at_a(jti).await;
    let id = minted.credential.id.clone();
    // Queued at broker-a (its queue not running yet), then taken by
    // broker-b.
    let queued = queue_a.revoke_one(&id, jti, now.timestamp()).unwrap();
    assert!(
        host_a
            .store
            .update_target_credential(&queued, "broker-a")
            .await
            .unwrap()
    );
    let taken = brokers
        .take_at_b(&id, jti)
        .await
        .expect("broker-b takes the credential being revoked");
    assert!(tracks_any(queue_a));

    let _closing = run_queue(&brokers);
    // Only the attempt's ownership check lets it go without an upstream
    // call: an attempt that destroyed it would have made it `revoked`
    // (which the census leaves out too, so the fake's counts decide).
    eventually("broker-a to let the credential go", || !tracks_any(queue_a)).await;
    assert_eq!(client.destroys_started.load(Ordering::SeqCst), 0);
    assert!(client.destroyed().is_empty());
    assert!(host_a.all_events().is_empty(), "{:?}", host_a.all_events());
    assert!(
        queue_a
            .revoke_one(&id, jti, Utc::now().timestamp())
            .is_none()
    );
    assert_eq!(stored(&host_b.store, &id).await.unwrap(), taken);
    assert!(brokers.owns("broker-b", &id).await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(client.destroys_started.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mint_whose_row_is_taken_over_destroys_what_it_made_and_hands_nothing_out() {
    let brokers = brokers(true, false).await;
    let (host_a, host_b, client, queue_a) = (
        &brokers.host_a,
        &brokers.host_b,
        &brokers.client,
        &brokers.queue_a,
    );
    let _closing = run_queue(&brokers);
    let now = Utc::now();
    let jti = "lost-mint-1";
    let minting = tokio::spawn({
        let (queue_a, host_a) = (Arc::clone(queue_a), Arc::clone(host_a));
        let claims = claims(jti, now.timestamp() - 10);
        async move {
            queue_a
                .mint(host_a.as_ref(), &claims, TARGET, &scopes(), now)
                .await
        }
    });
    eventually("broker-a's creation to start", || {
        client.creates_started.load(Ordering::SeqCst) == 1
    })
    .await;
    // The row is recorded, `minting`, broker-a's.
    let rows = host_b.store.unfinished_target_credentials().await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let recorded = rows[0].clone();
    assert_eq!(recorded.jti, jti);
    assert_eq!(recorded.state, CredentialState::Minting);
    assert!(brokers.owns("broker-a", &recorded.id).await);
    // Another broker takes the row over while the creation runs.
    let superuser = brokers.cluster.superuser_client_in("stint").await;
    let updated = superuser
        .execute(
            "UPDATE target_credentials SET owner = 'broker-b' WHERE jti = $1",
            &[&jti],
        )
        .await
        .unwrap();
    assert_eq!(updated, 1);
    client.create_gate.notify_one();

    let result = tokio::time::timeout(Duration::from_secs(10), minting)
        .await
        .expect("the mint ends")
        .unwrap();
    let why = match result {
        Err(MintError::Internal(why)) => why,
        Err(other) => panic!("expected an internal error, got {other:?}"),
        Ok(minted) => panic!(
            "a credential whose row was taken over was handed out: {:?}",
            minted.credential
        ),
    };
    assert!(why.contains("taken over"), "{why}");
    // What it made was destroyed, once, by the broker that made it.
    assert_eq!(client.destroyed(), vec![recorded.upstream_id.clone()]);
    let revoked = host_a.events(EventKind::TargetCredentialRevoked);
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    let entry = &revoked[0];
    assert_eq!(entry.jti.as_deref(), Some(jti));
    let target = entry.target.as_ref().unwrap();
    assert_eq!(target.credential_id.as_deref(), Some(recorded.id.as_str()));
    assert_eq!(target.outcome.as_deref(), Some("revoked"));
    let detail = entry.detail.as_deref().unwrap_or_default();
    assert!(
        detail.contains("taken over by another broker while it was being made"),
        "{detail:?}"
    );
    assert_eq!(host_a.all_events().len(), 1, "{:?}", host_a.all_events());
    // Broker-a tracks nothing, and wrote nothing to broker-b's row.
    assert!(!tracks_any(queue_a));
    assert!(
        queue_a
            .revoke_one(&recorded.id, jti, Utc::now().timestamp())
            .is_none()
    );
    let row = stored(&host_b.store, &recorded.id).await.unwrap();
    assert_eq!(row, recorded);
    assert!(brokers.owns("broker-b", &recorded.id).await);
    // Its queue does not destroy it a second time.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(client.destroys_started.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adopt_takes_a_credential_back_from_its_new_owner() {
    let brokers = brokers(false, false).await;
    let (host_a, client, queue_a) = (&brokers.host_a, &brokers.client, &brokers.queue_a);
    let jti = "adopted-1";
    let minted = brokers.mint_at_a(jti).await;
    let id = minted.credential.id.clone();
    assert!(brokers.take_at_b(&id, jti).await.is_some());
    assert!(!brokers.owns("broker-a", &id).await);

    // A step token that is not the credential's takes nothing.
    queue_a
        .adopt(host_a.as_ref(), &id, "another-token")
        .await
        .unwrap();
    assert!(brokers.owns("broker-b", &id).await);

    queue_a.adopt(host_a.as_ref(), &id, jti).await.unwrap();
    assert!(brokers.owns("broker-a", &id).await);
    assert!(!brokers.owns("broker-b", &id).await);

    let _closing = run_queue(&brokers);
    let queued = queue_a
        .revoke_one(&id, jti, Utc::now().timestamp())
        .expect("broker-a tracks the credential it took back");
    assert_eq!(queued.state, CredentialState::Revoking);
    eventually("broker-a to destroy the credential and audit it", || {
        !host_a.events(EventKind::TargetCredentialRevoked).is_empty()
    })
    .await;
    assert_eq!(
        client.destroyed(),
        vec![minted.credential.upstream_id.clone()]
    );
    let revoked = host_a.events(EventKind::TargetCredentialRevoked);
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    let target = revoked[0].target.as_ref().unwrap();
    assert_eq!(target.credential_id.as_deref(), Some(id.as_str()));
    assert_eq!(target.outcome.as_deref(), Some("revoked"));
    // Its attempt kept the credential: no "taken over" detail.
    assert_eq!(revoked[0].detail, None);
    // And it wrote the outcome: the row is finished.
    eventually("nothing else to happen", || !tracks_any(queue_a)).await;
    assert_eq!(stored(&host_a.store, &id).await, None);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(client.destroys_started.load(Ordering::SeqCst), 1);
    assert_eq!(host_a.all_events().len(), 1, "{:?}", host_a.all_events());
}
