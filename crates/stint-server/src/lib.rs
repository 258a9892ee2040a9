//! The Stint broker as a library.
//!
//! [`start`] validates a [`Config`], opens the data directory (store, audit
//! log, keys), loads the policy, binds the listener and serves until
//! [`RunningServer::shutdown`]. [`run`] adds what a daemon needs: `SIGHUP`
//! reloads the policy, `SIGTERM`/`SIGINT` shut down gracefully. `stintd`'s
//! `main` is a thin shell around [`run`]; tests drive [`start`] directly.
//!
//! Start-up order matters for safety: the audit log opens before the policy
//! loads (so the load is audited), the revocations are back in memory before
//! the listener accepts its first connection (so a revoked token is never
//! briefly active after a restart).

mod approvals;
pub mod audit;
pub mod audit_store;
mod changes;
pub mod config;
mod dev;
pub mod error;
pub mod federation;
pub mod federation_token;
mod feed;
pub mod forwarded;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod http;
pub mod keys;
mod limits;
mod live;
pub mod metrics;
pub mod operators;
mod serve;
mod state;
mod status;
mod store_health;
mod targets;
pub mod tls;
pub mod webhook;

pub use audit::AuditSettings;
pub use config::{
    ClientCertificates, Config, ConfigError, Limits, PolicySource, Rate, StoreConfig, TlsFiles,
    WebhookTarget,
};
pub use dev::{DEMO_CLIENT_ID, DEV_CLIENT_FILE};
pub use error::StartError;

use crate::audit::{AuditLog, FileSink};
use crate::keys::KeyRing;
use crate::metrics::{Metrics, ScrapeToken};
use crate::state::{AppState, read_policy_file, report_overdue};
use arc_swap::ArcSwap;
use bytes::Bytes;
use chrono::Days;
use ring::rand::SystemRandom;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use stint_core::audit::{Decision, EventKind};
use stint_core::policy::Policy;
use stint_core::revocation::RevocationSet;
use stint_core::{Clock, SystemClock, secret};
use stint_proto::{self as proto, AuthorizationServerMetadata, DevClient};
use stint_store::{PostgresStore, SqliteStore, Store};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The store's file name in the data directory.
pub const STORE_FILE: &str = "stint.db";
/// The audit log's file name in the data directory.
pub const AUDIT_FILE: &str = "audit.jsonl";
/// The lock file that keeps a second broker out of the data directory.
pub const LOCK_FILE: &str = "stintd.lock";
/// How often expired revocations are dropped from memory and the store.
const PURGE_INTERVAL: Duration = Duration::from_secs(60);
/// How often approval requests whose time is up are moved to their final
/// state (and audited, and announced).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// A broker that is serving.
pub struct RunningServer {
    local_addr: SocketAddr,
    state: Arc<AppState>,
    dev_client: Option<PathBuf>,
    data_dir: PathBuf,
    /// Where the store is, for the banner.
    store_description: String,
    /// Where the audit log is written.
    audit_description: String,
    /// The same, for operators' front ends.
    audit_location: operators::AuditLocation,
    shutdown: Option<oneshot::Sender<()>>,
    serve_task: JoinHandle<()>,
    purge_task: JoinHandle<()>,
    /// The target credentials' revocation queue.
    targets_task: JoinHandle<()>,
    /// Writes counted refusals; ends at shutdown, once its last write is.
    refusals_task: JoinHandle<()>,
    /// With an audit chain in a shared store: records the other chains'
    /// heads; ends at shutdown, once a record it has begun is written.
    peers_task: Option<JoinHandle<()>>,
    /// Set at shutdown: revocation feed streams end.
    closing: tokio::sync::watch::Sender<bool>,
    /// Set at shutdown once decisions have drained: the target queue ends.
    queue_closing: tokio::sync::watch::Sender<bool>,
    /// `Limits::max_in_flight`: shutdown takes every permit back.
    max_in_flight: usize,
    /// `Limits::max_revocations_in_flight`, likewise.
    max_revocations_in_flight: usize,
    /// The TLS configuration, if the broker serves TLS.
    tls: Option<Arc<tls::ReloadableTls>>,
    /// Held (an exclusive `flock`) for as long as the broker runs.
    _lock: std::fs::File,
}

impl RunningServer {
    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The issuer URL: every token's `iss`, and the base of every endpoint.
    pub fn issuer(&self) -> &str {
        &self.state.issuer
    }

    /// What operators may do at this broker, for a front end such as the
    /// console.
    pub fn operator_api(&self) -> operators::OperatorApi {
        operators::OperatorApi::new(Arc::clone(&self.state), self.audit_location.clone())
    }

    /// Where `--dev` wrote the demo client's credentials, if it did.
    pub fn dev_client_path(&self) -> Option<&Path> {
        self.dev_client.as_deref()
    }

    /// Re-read the policy file, as `SIGHUP` does. An invalid file is refused
    /// (and audited), and the policy in force stays.
    pub async fn reload_policy(&self) -> Result<(), stint_core::policy::PolicyErrors> {
        self.state.reload_policy().await
    }

    /// Re-read the TLS certificate, key and client CA files, as `SIGHUP`
    /// does: new connections get them, open ones keep theirs. Files that do
    /// not load are refused (logged, counted) and the configuration in
    /// force stays. Without TLS there is nothing to do.
    pub fn reload_tls(&self) -> Result<(), String> {
        let Some(tls) = &self.tls else {
            return Ok(());
        };
        match tls.reload() {
            Ok(not_after) => {
                self.state.metrics.tls_load(Some(not_after));
                tracing::info!(not_after, "TLS certificate and key loaded");
                Ok(())
            }
            Err(error) => {
                self.state.metrics.tls_load(None);
                tracing::error!(%error, "TLS certificate not reloaded: the one in force stays");
                Err(error)
            }
        }
    }

    /// Drop revocations whose tokens would have expired anyway, from memory
    /// and from the store, and unpublish retired signing keys whose tokens
    /// have all expired, as the background task does every minute. Returns
    /// how many revocation entries left memory.
    pub async fn purge_expired(&self) -> usize {
        purge(&self.state).await
    }

    /// Activate a staged signing key whose publish lead has passed, as the
    /// background task does every second. Returns its key id if this call
    /// activated it.
    pub async fn activate_due_keys(&self) -> Option<String> {
        activate_due_keys(&self.state).await
    }

    /// The key id that signs new tokens now.
    pub fn signing_kid(&self) -> String {
        self.state.keys.signing_key().kid().to_owned()
    }

    /// The key ids the JWK set publishes now.
    pub fn published_kids(&self) -> Vec<String> {
        self.state.keys.published_kids()
    }

    /// A few lines for a person starting the broker by hand.
    pub fn banner(&self) -> String {
        let scheme_note = if self.state.issuer.starts_with("http://") {
            " (dev mode: plain HTTP on loopback)"
        } else {
            ""
        };
        let mut text = format!(
            "stintd listening on {issuer}{scheme_note}\n\
             data directory: {dir}\n\
             store: {store}\n\
             audit log: {audit}\n\
             metadata: {issuer}{metadata}\n",
            issuer = self.state.issuer,
            dir = self.data_dir.display(),
            store = self.store_description,
            audit = self.audit_description,
            metadata = proto::METADATA_PATH,
        );
        if let Some(path) = &self.dev_client {
            text.push_str(&format!(
                "demo client credentials: {}\n\nMint a token for the demo workflow's read step:\n  {}\n",
                path.display(),
                dev::curl_example(&format!("{}{}", self.state.issuer, proto::TOKEN_PATH), path)
            ));
        }
        text
    }

    /// Stop accepting, let in-flight requests finish, and stop. Decisions
    /// whose clients already hung up are waited for too (up to the drain
    /// time), and then no new decision can start, so nothing is decided
    /// after this returns and the data directory's lock is released.
    pub async fn shutdown(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        // Long-lived feed streams end now, so the drain does not wait on
        // them.
        let _ = self.closing.send(true);
        self.purge_task.abort();
        let _ = (&mut self.purge_task).await;
        let _ = (&mut self.serve_task).await;
        let permits = u32::try_from(self.max_in_flight).unwrap_or(u32::MAX);
        let all = Arc::clone(&self.state.in_flight).acquire_many_owned(permits);
        let revocations = Arc::clone(&self.state.limits.revocations)
            .acquire_many_owned(u32::try_from(self.max_revocations_in_flight).unwrap_or(u32::MAX));
        if tokio::time::timeout(serve::DRAIN_TIMEOUT, async {
            tokio::join!(all, revocations)
        })
        .await
        .is_err()
        {
            tracing::warn!("some decisions did not finish within the drain timeout");
        }
        // The queue runs (and renews this broker's lease) until every
        // decision has drained, so that a mint finishing now is not taken
        // over half made. It ends once the attempts it started have ended
        // (their records are written before the last checkpoint). It is
        // durable: what it has not done, the next start (or, on a shared
        // store, another broker) does, so one stuck past the drain timeout
        // is cancelled.
        let _ = self.queue_closing.send(true);
        if tokio::time::timeout(serve::DRAIN_TIMEOUT, &mut self.targets_task)
            .await
            .is_err()
        {
            tracing::warn!("target revocations in flight did not finish within the drain timeout");
            self.targets_task.abort();
            let _ = (&mut self.targets_task).await;
        }
        // What this broker owns is another's to finish from now on.
        if let Err(error) = self
            .state
            .store
            .release_target_credentials(&self.state.instance)
            .await
        {
            tracing::warn!(%error, "could not release this broker's target credentials: another broker takes them over once its lease runs out");
        }
        self.state.in_flight.close();
        self.state.limits.revocations.close();
        // Refusals counted since the last interval are written now.
        let _ = (&mut self.refusals_task).await;
        // A peers record begun before `closing` lands before the checkpoint.
        // (A store that does not answer is not waited on past the drain.)
        if let Some(mut peers) = self.peers_task.take()
            && tokio::time::timeout(serve::DRAIN_TIMEOUT, &mut peers)
                .await
                .is_err()
        {
            peers.abort();
        }
        limits::record_counted(
            &self.state.limits.refusals,
            &self.state.audit,
            &audit::timestamp(self.state.clock.now()),
        )
        .await;
        // Every index handed out is in the store: after a clean stop, no
        // token's status reads INVALID for want of its entry.
        self.state
            .status_lists
            .flush(self.state.store.as_ref())
            .await;
        // The log ends signed: nothing after a clean stop is unvouched for.
        if let Err(error) = self.state.audit.checkpoint().await {
            tracing::error!(%error, "could not write the audit log's shutdown checkpoint");
        }
    }
}

/// Start a broker with the system clock.
pub async fn start(config: Config) -> Result<RunningServer, StartError> {
    start_with_clock(config, Arc::new(SystemClock)).await
}

/// Start a broker with the given clock (tests move time with a
/// [`stint_core::ManualClock`]).
pub async fn start_with_clock(
    config: Config,
    clock: Arc<dyn Clock>,
) -> Result<RunningServer, StartError> {
    config.validate()?;
    let federation_keys = federation_token::FederationKeys::load(&config.federation_keys)
        .map_err(|e| StartError::Config(ConfigError::FederationKey(e.to_string())))?;
    let kek = match &config.key_encryption_key_file {
        Some(path) => Some(Arc::new(
            keys::read_key_encryption_key(path).map_err(StartError::Keys)?,
        )),
        None => {
            if !config.dev {
                tracing::warn!(
                    "no --key-encryption-key-file: the signing keys are stored in the clear, and a copy of the store is a copy of them"
                );
            }
            None
        }
    };
    prepare_data_dir(&config.data_dir)?;
    let lock = lock_data_dir(&config.data_dir)?;
    let rng = SystemRandom::new();
    let scrape_token = config.metrics_token_file.as_deref().map(ScrapeToken::load);
    let metrics = Arc::new(Metrics::with_scrape_token(scrape_token.transpose()?));

    let (store, store_description): (Arc<dyn Store>, String) = match &config.store {
        StoreConfig::Sqlite => {
            let path = config.data_dir.join(STORE_FILE);
            let description = format!("sqlite {}", path.display());
            (Arc::new(SqliteStore::open(&path)?), description)
        }
        StoreConfig::Postgres(settings) => {
            let store = PostgresStore::open(settings).await?;
            let description = format!("postgresql {}", store.endpoint());
            (Arc::new(store), description)
        }
    };

    // With a shared store the audit log is in it (a chain of this
    // process's own), so that losing this machine loses no record.
    let audit_path = config.data_dir.join(AUDIT_FILE);
    let mut own_chain = None;
    let mut durable_mark = None;
    let (sink, chain, audit_where) = match &config.store {
        StoreConfig::Postgres(settings) => {
            let id =
                audit_store::new_chain_id(clock.now(), &rng).map_err(|e| StartError::Audit {
                    path: audit_path.clone(),
                    message: e.to_string(),
                })?;
            // One connection of its own: the writer sends one batch at a
            // time, and no other use of the store can hold it up.
            let writer_store = PostgresStore::dedicated(settings, 1)?;
            let sink = audit_store::StoreSink::new(Arc::new(writer_store), id, settings.timeout)
                .map_err(|e| StartError::Audit {
                    path: audit_path.clone(),
                    message: format!("cannot start the audit writer's runtime: {e}"),
                })?;
            let audit_where = PathBuf::from(format!("{store_description} chain {}", sink.chain()));
            own_chain = Some(sink.chain().to_owned());
            (
                audit_store::Sink::Store(sink),
                stint_core::audit::Chain::genesis(),
                audit_where,
            )
        }
        StoreConfig::Sqlite => {
            let (sink, chain) = FileSink::open(&audit_path).map_err(|e| StartError::Audit {
                path: audit_path.clone(),
                message: e.to_string(),
            })?;
            durable_mark = Some(sink.durable_mark());
            (audit_store::Sink::File(sink), chain, audit_path.clone())
        }
    };
    let audit_error = |message: String| StartError::Audit {
        path: audit_where.clone(),
        message,
    };
    let audit = AuditLog::start_with(sink, chain, metrics.clone(), config.audit, clock.clone())
        .map_err(|e| audit_error(e.to_string()))?;
    tracing::info!(audit = %audit_where.display(), "audit log");

    // The policy, audited either way.
    let now = clock.now();
    let mut demo_secret = None;
    let loaded = match &config.policy {
        PolicySource::File(path) => {
            let name = path.display().to_string();
            read_policy_file(path)
                .await
                .and_then(|text| Policy::parse(&name, &text))
                .and_then(|policy| state::check_target_files(policy, &name))
        }
        PolicySource::Demo => {
            let secret =
                dev::demo_secret(&config.data_dir, &rng).map_err(|e| StartError::DataDir {
                    path: config.data_dir.clone(),
                    message: format!("cannot read or create {DEV_CLIENT_FILE}: {e}"),
                })?;
            let review_by = now
                .date_naive()
                .checked_add_days(Days::new(365))
                .unwrap_or(now.date_naive());
            let mut text = dev::demo_policy(&secret::hash_hex(&secret), review_by);
            if let Some(issuer) = &config.dev_operators_issuer {
                text.push_str(&dev::demo_operators(issuer));
            }
            demo_secret = Some(secret);
            Policy::parse("built-in demo policy", &text)
        }
    };
    let mut entry = stint_core::audit::AuditEntry::new(
        audit::timestamp(now),
        EventKind::PolicyLoaded,
        Decision::Allow,
    );
    let policy = match loaded {
        Ok(policy) => {
            entry.policy_sha256 = Some(policy.digest().to_owned());
            entry.allows = policy.allowances();
            entry.reviews = Some(policy.review_dates());
            // Listed only beside the allowances (bounded in size with them).
            entry.shadows = entry.allows.as_ref().map(|_| policy.shadow_map());
            audit
                .record(entry)
                .await
                .map_err(|e| audit_error(e.to_string()))?;
            metrics.policy_load(true);
            policy
        }
        Err(errors) => {
            entry.event = EventKind::PolicyRefused;
            entry.decision = Decision::Deny;
            entry.detail = Some(errors.to_string());
            audit
                .record(entry)
                .await
                .map_err(|e| audit_error(e.to_string()))?;
            return Err(StartError::Policy(errors));
        }
    };
    tracing::info!(
        sha256 = policy.digest(),
        workloads = policy.workloads().count(),
        workflows = policy.workflows().count(),
        "policy loaded"
    );
    report_overdue(&policy, now);
    federation_token::warn_if_unsigned(&policy, &federation_keys);

    // The change feed's position before anything is loaded (the keys
    // included): a change committed meanwhile is both loaded and applied,
    // never neither.
    let position = store.change_position().await?;
    let keys = KeyRing::load_or_create(
        store.as_ref(),
        config.signing_alg,
        config.key_publish_lead,
        now,
        &rng,
        kek,
    )
    .await
    .map_err(StartError::Keys)?
    .with_federation_keys(federation_keys.public_jwks())
    .map_err(StartError::Keys)?;
    // From here the broker's signing key signs the audit log's checkpoints.
    audit.attach_signer(keys.checkpoint_signer());

    let revocations = RevocationSet::new();
    let live = store
        .live_revocations(stint_core::revocation::purge_cutoff(now))
        .await?;
    for token in &live.tokens {
        revocations.insert_token(token);
    }
    for job in &live.jobs {
        revocations.insert_job(job);
    }
    for step in &live.steps {
        revocations.insert_step(step);
    }
    let mut stopped = std::collections::HashSet::new();
    for stop in store.workload_stops(now.timestamp()).await? {
        revocations.insert_workload(&stop);
        if stop.enabled_at.is_none() {
            tracing::warn!(workload = %stop.workload, by = %stop.stopped_by, "workload is stopped: it mints nothing until an operator enables it");
            stopped.insert(stop.workload);
        }
    }
    tracing::info!(
        tokens = live.tokens.len(),
        jobs = live.jobs.len(),
        "revocations loaded"
    );

    let tls = match &config.tls {
        Some(files) => {
            let (tls, not_after) = tls::ReloadableTls::load(
                &files.cert,
                &files.key,
                config.client_certificates.as_ref(),
            )
            .map_err(StartError::Tls)?;
            metrics.tls_load(Some(not_after));
            Some(Arc::new(tls))
        }
        None => None,
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| StartError::Bind {
            addr: config.listen,
            message: e.to_string(),
        })?;
    let local_addr = listener.local_addr().map_err(|e| StartError::Bind {
        addr: config.listen,
        message: e.to_string(),
    })?;
    let issuer = match &config.issuer {
        Some(issuer) => issuer.clone(),
        None => format!(
            "{}://{local_addr}",
            if tls.is_some() { "https" } else { "http" }
        ),
    };
    let metadata = metadata_document(
        &issuer,
        config.signing_alg.as_str(),
        config.client_certificates.is_some(),
        !federation_keys.is_empty(),
    )?;

    let dev_client = match demo_secret {
        Some(client_secret) if config.dev => {
            let client = DevClient {
                issuer: issuer.clone(),
                token_endpoint: format!("{issuer}{}", proto::TOKEN_PATH),
                client_id: DEMO_CLIENT_ID.to_owned(),
                client_secret,
            };
            Some(
                dev::write_dev_client(&config.data_dir, &client).map_err(|e| {
                    StartError::DataDir {
                        path: config.data_dir.clone(),
                        message: format!("cannot write {DEV_CLIENT_FILE}: {e}"),
                    }
                })?,
            )
        }
        _ => None,
    };

    let webhook = match &config.webhook {
        Some(target) => {
            let loaded = webhook::WebhookConfig::load(&target.url, &target.secret_file)
                .map_err(|e| StartError::Webhook(e.to_string()))?;
            let extra_ca = match &config.federation_ca {
                Some(path) => Some(std::fs::read(path).map_err(|e| {
                    StartError::Webhook(format!("cannot read {}: {e}", path.display()))
                })?),
                None => None,
            };
            Some(webhook::Webhook::start(loaded, extra_ca).map_err(StartError::Webhook)?)
        }
        None => None,
    };
    let feed = feed::Feed::new(position.epoch.clone(), position.seq);
    let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
    let (queue_closing_tx, queue_closing_rx) = tokio::sync::watch::channel(false);
    let loaded_approvals = store.approvals(now.timestamp()).await?;
    let changes = changes::Changes::new(position);
    tracing::info!(
        approvals = loaded_approvals.len(),
        "approval requests loaded"
    );
    let approvals = approvals::Approvals::new(
        loaded_approvals,
        config.approval_interval,
        webhook,
        &revocations,
        config.console_url.clone(),
    );

    let status_lists = status::StatusLists::start(
        &issuer,
        store.as_ref(),
        &rng,
        now.timestamp(),
        // Also what expired within the largest verifier leeway: a verifier
        // still accepts such a token, so its status must stay INVALID.
        &revocations
            .entries(now - chrono::Duration::seconds(stint_core::access_token::MAX_LEEWAY_SECS)),
    )
    .await
    .map_err(StartError::StatusLists)?;

    let issuer_keys = federation::IssuerKeys::new(config.federation_ca.as_deref())
        .map_err(|message| StartError::Config(ConfigError::FederationCa(message)))?;
    let targets = Arc::new(stint_targets::queue::TargetCredentials::new(
        &issuer,
        Arc::new(stint_targets::clients::connect),
    ));
    targets.install(&policy);
    // With the embedded store there is one broker, which owns everything:
    // the id is for the logs only.
    let instance = match &own_chain {
        Some(chain) => chain.clone(),
        None => audit_store::new_chain_id(clock.now(), &rng).map_err(|e| StartError::Audit {
            path: audit_path.clone(),
            message: e.to_string(),
        })?,
    };
    let state = Arc::new(AppState {
        issuer,
        instance,
        policy: ArcSwap::from_pointee(policy),
        policy_source: config.policy.clone(),
        keys,
        revocations,
        store,
        audit,
        metrics,
        clock,
        rng,
        metadata,
        in_flight: Arc::new(tokio::sync::Semaphore::new(config.limits.max_in_flight)),
        issuer_keys,
        body_timeout: config.limits.body_timeout,
        approvals,
        feed,
        status_lists,
        stopped: std::sync::RwLock::new(stopped),
        feed_slots: Arc::new(tokio::sync::Semaphore::new(config.feed_max_streams)),
        snapshot_cache: tokio::sync::Mutex::new(None),
        feed_clients: Arc::new(feed::ClientStreams::new(config.feed_max_streams_per_client)),
        feed_keepalive: config.feed_keepalive,
        closing: closing_rx,
        store_reachable: tokio::sync::watch::channel(true).0,
        policy_installed: tokio::sync::watch::channel(0).0,
        pending: std::sync::Mutex::new(Vec::new()),
        limits: limits::RequestLimits::new(&config.limits, std::time::Instant::now()),
        targets,
        federation_keys,
        changes,
        live: config.live_tokens.then(live::LiveTokens::default),
    });
    let open_credentials = state.targets.load(state.as_ref()).await?;
    if open_credentials > 0 {
        tracing::info!(
            credentials = open_credentials,
            "target credentials loaded: those left unfinished are destroyed first"
        );
    }

    let targets_task = tokio::spawn(Arc::clone(&state.targets).run(
        Arc::clone(&state) as Arc<dyn stint_targets::queue::Host>,
        queue_closing_rx,
    ));
    changes::catch_up_at_start(&state).await?;
    let own_chain_for_api = own_chain.clone();
    let peers_task = own_chain.map(|own| {
        tokio::spawn(vouch_for_peers(
            Arc::clone(&state),
            own,
            config.audit.checkpoint_interval,
        ))
    });
    let purge_task = tokio::spawn(purge_loop(Arc::clone(&state)));
    // Ends with the broker (it watches `closing`).
    tokio::spawn(changes::run(Arc::clone(&state), state.closing.clone()));
    // Ends with the broker (it watches `closing`).
    tokio::spawn(store_health::run(
        Arc::clone(&state),
        config.store_fail_closed_after,
    ));
    let refusals_task = tokio::spawn(refusals_loop(Arc::clone(&state)));
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let router = http::router(Arc::clone(&state));
    let serve_task = tokio::spawn(serve::serve(
        listener,
        tls.clone(),
        Arc::new(if config.tls_terminated_by_proxy {
            config.trusted_proxies.clone().exclusive()
        } else {
            config.trusted_proxies.clone()
        }),
        router,
        config.limits,
        Arc::clone(&state.metrics),
        async {
            let _ = shutdown_rx.await;
        },
    ));
    tracing::info!(%local_addr, issuer = %state.issuer, "stintd is serving");
    Ok(RunningServer {
        local_addr,
        state,
        dev_client,
        data_dir: config.data_dir,
        store_description,
        audit_description: audit_where.display().to_string(),
        audit_location: match &own_chain_for_api {
            Some(chain) => operators::AuditLocation::Store {
                chain: chain.clone(),
            },
            None => operators::AuditLocation::File {
                path: audit_path.clone(),
                durable: durable_mark.clone(),
            },
        },
        shutdown: Some(shutdown_tx),
        serve_task,
        purge_task,
        targets_task,
        refusals_task,
        peers_task,
        closing: closing_tx,
        queue_closing: queue_closing_tx,
        max_in_flight: config.limits.max_in_flight,
        max_revocations_in_flight: config.limits.max_revocations_in_flight,
        tls,
        _lock: lock,
    })
}

/// Run a broker until `SIGTERM` or `SIGINT`, reloading the policy on
/// `SIGHUP`. `on_ready` runs once the listener is bound (`stintd` prints
/// its banner and starts the console there); if it fails, the broker shuts
/// down and the error is returned. The signal handlers are in place before
/// the broker starts, so an early `SIGHUP` cannot kill it.
pub async fn run(
    config: Config,
    on_ready: impl FnOnce(&RunningServer) -> Result<(), String>,
) -> Result<(), StartError> {
    use tokio::signal::unix::{SignalKind, signal};
    let signal_error = |e: std::io::Error| StartError::Signals(e.to_string());
    let mut hangup = signal(SignalKind::hangup()).map_err(signal_error)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(signal_error)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(signal_error)?;
    let server = start(config).await?;
    if let Err(error) = on_ready(&server) {
        server.shutdown().await;
        return Err(StartError::Frontend(error));
    }
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                tracing::info!("SIGHUP: reloading the policy and the TLS files");
                // Success and failure are both logged (the policy's also
                // audited) and counted there.
                let _ = server.reload_policy().await;
                let _ = server.reload_tls();
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

async fn purge_loop(state: Arc<AppState>) {
    let mut purge_tick = tokio::time::interval(PURGE_INTERVAL);
    purge_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweep_tick = tokio::time::interval(SWEEP_INTERVAL);
    sweep_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = purge_tick.tick() => {
                purge(&state).await;
            }
            _ = sweep_tick.tick() => {
                state.approvals.sweep(&state, state.clock.now()).await;
                activate_due_keys(&state).await;
                state.status_lists.flush(state.store.as_ref()).await;
            }
        }
    }
}

/// Every `interval`, record the other brokers' audit chains' heads in this
/// broker's chain (see [`audit_store`]), until the broker shuts down.
async fn vouch_for_peers(state: Arc<AppState>, own: String, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closing = state.closing.clone();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = closing.wait_for(|closing| *closing) => return,
        }
        let heads = match state.store.audit_heads().await {
            Ok(heads) => heads,
            Err(error) => {
                tracing::warn!(%error, "could not read the other brokers' audit chains");
                continue;
            }
        };
        let time = audit::timestamp(state.clock.now());
        if let Some(entry) = audit_store::peers_entry(time, &own, &heads)
            && let Err(error) = state.audit.record(entry).await
        {
            tracing::warn!(%error, "could not record the other brokers' audit chains");
        }
    }
}

/// Write the refusals counted in each interval, until the broker shuts
/// down (which writes the last ones itself). Never aborted: a write it has
/// started finishes, so no count is lost.
async fn refusals_loop(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(state.limits.aggregation_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closing = state.closing.clone();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let time = audit::timestamp(state.clock.now());
                limits::record_counted(&state.limits.refusals, &state.audit, &time).await;
            }
            _ = async { closing.wait_for(|closing| *closing).await.is_ok() } => return,
        }
    }
}

/// Activate a staged signing key whose publish lead has passed (any
/// broker may; the store lets one), and count the rotation it completes.
async fn activate_due_keys(state: &AppState) -> Option<String> {
    let activated = state
        .keys
        .activate_due(state.store.as_ref(), state.clock.now(), &state.rng)
        .await;
    if let Some(kid) = &activated {
        tracing::info!(%kid, "activated the staged signing key: it signs from now, on every broker");
    }
    activated
}

async fn purge(state: &AppState) -> usize {
    let now = state.clock.now();
    let dropped = state.revocations.purge(now);
    let cutoff = stint_core::revocation::purge_cutoff(now);
    if let Some(live) = &state.live {
        live.purge(cutoff);
    }
    if let Err(error) = state.store.purge_expired(cutoff).await {
        tracing::warn!(%error, "could not purge expired revocations from the store");
    }
    if dropped > 0 {
        tracing::debug!(dropped, "dropped expired revocations from memory");
    }
    state
        .keys
        .prune(state.store.as_ref(), now, &state.rng)
        .await;
    state.status_lists.purge(now.timestamp());
    dropped
}

fn prepare_data_dir(dir: &Path) -> Result<(), StartError> {
    let fail = |message: String| StartError::DataDir {
        path: dir.to_owned(),
        message,
    };
    match std::fs::metadata(dir) {
        Ok(metadata) if metadata.is_dir() => {
            if metadata.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    path = %dir.display(),
                    "the data directory is accessible to group or others; its files are 0600, but chmod 700 the directory"
                );
            }
            Ok(())
        }
        Ok(_) => Err(fail("exists and is not a directory".into())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| fail(format!("cannot create: {e}"))),
        Err(error) => Err(fail(error.to_string())),
    }
}

/// Take the data directory for this process. Two brokers on one directory
/// would each append to the audit log from their own idea of the chain's
/// head, breaking it, and each answer from their own memory of revocations.
fn lock_data_dir(dir: &Path) -> Result<std::fs::File, StartError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = dir.join(LOCK_FILE);
    let fail = |message: String| StartError::DataDir {
        path: dir.to_owned(),
        message,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| fail(format!("cannot open {LOCK_FILE}: {e}")))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(fail(format!(
            "another stintd is using this data directory (it holds {}); stop it first, or give each broker its own --data-dir",
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(fail(format!("cannot lock {LOCK_FILE}: {e}"))),
    }
}

/// The two discovery documents, serialized once at start.
#[derive(Debug, Clone)]
pub(crate) struct Discovery {
    /// RFC 8414, at `/.well-known/oauth-authorization-server`.
    pub(crate) oauth: Bytes,
    /// OpenID Connect Discovery 1.0, at `/.well-known/openid-configuration`:
    /// the RFC 8414 document plus the fields section 3 requires.
    pub(crate) openid: Bytes,
}

/// The discovery documents. Stint is not an interactive OpenID Provider and
/// issues no ID tokens; it serves `openid-configuration` because relying
/// parties that trust it as an issuer (cloud workload identity federation,
/// JWT auth backends) discover its keys there, with parsers that insist on
/// the fields OpenID Connect Discovery marks REQUIRED. What it says there
/// is what holds: `response_types_supported` is `["none"]` (the
/// authorization endpoint issues nothing), that endpoint refuses every
/// request, `sub` is `public`, and the algorithms listed are those the
/// broker signs with: its access tokens' algorithm, and RS256 when a
/// federation key is configured (federation tokens, whose claims
/// `claims_supported` lists). Without a federation key Stint signs no
/// RS256, so it does not claim to (see docs/http-api.md).
fn metadata_document(
    issuer: &str,
    alg: &str,
    client_certs: bool,
    federation: bool,
) -> Result<Discovery, StartError> {
    let client_auth = vec![
        "client_secret_basic".to_owned(),
        "client_secret_post".to_owned(),
    ];
    let token_auth = {
        let mut methods = client_auth.clone();
        if client_certs {
            methods.push("tls_client_auth".to_owned());
        }
        methods
    };
    let document = AuthorizationServerMetadata {
        issuer: issuer.to_owned(),
        token_endpoint: format!("{issuer}{}", proto::TOKEN_PATH),
        jwks_uri: format!("{issuer}{}", proto::JWKS_PATH),
        revocation_endpoint: format!("{issuer}{}", proto::REVOCATION_PATH),
        introspection_endpoint: format!("{issuer}{}", proto::INTROSPECTION_PATH),
        grant_types_supported: vec![
            proto::GRANT_CLIENT_CREDENTIALS.to_owned(),
            proto::GRANT_TOKEN_EXCHANGE.to_owned(),
        ],
        response_types_supported: Vec::new(),
        authorization_endpoint: None,
        subject_types_supported: None,
        id_token_signing_alg_values_supported: None,
        claims_supported: None,
        token_endpoint_auth_methods_supported: token_auth,
        revocation_endpoint_auth_methods_supported: client_auth.clone(),
        introspection_endpoint_auth_methods_supported: client_auth,
        access_token_signing_alg_values_supported: vec![alg.to_owned()],
        tls_client_certificate_bound_access_tokens: client_certs.then_some(true),
    };
    let openid = AuthorizationServerMetadata {
        response_types_supported: vec!["none".to_owned()],
        authorization_endpoint: Some(format!("{issuer}{}", proto::AUTHORIZATION_PATH)),
        subject_types_supported: Some(vec!["public".to_owned()]),
        id_token_signing_alg_values_supported: Some({
            let mut algs = vec![alg.to_owned()];
            let rs256 = stint_core::jose::Algorithm::RS256.as_str();
            if federation && alg != rs256 {
                algs.push(rs256.to_owned());
            }
            algs
        }),
        claims_supported: federation.then(|| {
            stint_core::target::oidc::CLAIMS
                .iter()
                .map(|c| (*c).to_owned())
                .chain(std::iter::once(
                    stint_core::target::oidc::AWS_TAGS_CLAIM.to_owned(),
                ))
                .collect()
        }),
        ..document.clone()
    };
    let serialize = |document: &AuthorizationServerMetadata| {
        serde_json::to_vec(document)
            .map(Bytes::from)
            .map_err(|e| StartError::Keys(format!("cannot serialize the metadata document: {e}")))
    };
    Ok(Discovery {
        oauth: serialize(&document)?,
        openid: serialize(&openid)?,
    })
}
