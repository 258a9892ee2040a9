//! Target credentials: native credentials of the systems steps reach (a
//! PostgreSQL login), made for one step token and destroyed with it.
//!
//! This module is the broker's side of them, whatever the kind, as domain
//! code: it takes plain values and a [`Host`] (the broker's clock, store,
//! audit log, randomness and revocations), and answers with domain results
//! ([`MintError`]) that the HTTP layer turns into OAuth errors. It records each
//! credential before the upstream call, hands the secret out once, follows
//! the step token's revocations and expiry, and destroys the credential
//! through a durable queue that retries with backoff and jitter. A
//! reconciler removes what exists upstream and no record accounts for.
//! Each kind's pure planner lives in `stint_core::target`; each kind's
//! client (the I/O) in this crate ([`crate::postgres`]), and
//! [`crate::clients`] joins the two.
//!
//! The order of a mint, and why:
//!
//! 1. the credential is planned (pure: nothing is made if it would widen);
//! 2. it is recorded in the store as `minting` (one per step token and
//!    target: a second exchange finds the first), so that a broker killed
//!    from here on destroys it at its next start;
//! 3. it is made upstream (one transaction);
//! 4. if its step token was revoked meanwhile, it is queued for destruction
//!    and refused; otherwise it is `live`, and the caller audits it before
//!    answering (an audit failure queues it for destruction).
//!
//! While a credential is being made it is marked busy, and the queue does
//! not touch it: destroying a role before its creation commits would leave
//! the role behind.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use stint_core::audit::{AuditEntry, Decision, EventKind, TargetAudit, timestamp};
use stint_core::claims::AccessTokenClaims;
use stint_core::policy::Policy;
use stint_core::scope::Scope;
use stint_core::target_credential::{
    Backoff, Cause, CredentialState, TargetCredential, Trigger, UpstreamGrant,
};
use stint_proto::{GithubToken, PostgresLogin};
use stint_store::Store;

/// How often the reconciler compares what exists upstream with what Stint
/// knows, besides at start.
const RECONCILE_EVERY: Duration = Duration::from_secs(300);
/// The longest the queue sleeps between looks (expiries are found by it).
const QUEUE_TICK: Duration = Duration::from_secs(1);
/// Upstream revocations in flight at once, over every target.
const MAX_REVOKING: usize = 16;
/// Upstream revocations in flight at once on one target, unless its kind
/// says otherwise ([`TargetClient::max_destroying`]).
const DEFAULT_DESTROYING_PER_TARGET: usize = 2;
/// How long past the upstream's own expiry a credential is taken to be
/// gone without asking.
const EXPIRED_UPSTREAM_SLACK_SECS: i64 = 300;
/// How long a destroyed credential's record is kept (its story is in the
/// audit log).
const KEEP_FINISHED_SECS: i64 = 24 * 3600;
/// With a store other brokers share, each broker owns the credentials it
/// makes, and says it is alive every [`CLAIM_EVERY`], for this long: a
/// broker that has not said so since owns nothing, and the next broker to
/// look takes its unfinished credentials over.
const LEASE_SECS: i64 = 30;
/// How often a broker on a shared store renews its lease and takes over
/// the credentials of brokers whose lease ran out.
const CLAIM_EVERY: Duration = Duration::from_secs(10);

/// What the broker lends the queue: its clock, store, audit log,
/// randomness, revocations and metrics.
#[async_trait]
pub trait Host: Send + Sync {
    /// Now, by the broker's clock.
    fn now(&self) -> DateTime<Utc>;
    /// The durable store.
    fn store(&self) -> &dyn Store;
    /// The CSPRNG.
    fn rng(&self) -> &ring::rand::SystemRandom;
    /// Whether a revocation that reaches this step token is in force, or
    /// has begun (is being audited and stored).
    fn is_revoked(&self, claims: &AccessTokenClaims, now: DateTime<Utc>) -> bool;
    /// Write an audit record; an error means it was not written.
    async fn audit(&self, entry: AuditEntry) -> Result<(), String>;
    /// Count an event of a target's credentials (`minted`, `revoked`, ...).
    fn count(&self, target: &str, event: &str);
    /// This broker process's id: with a shared store, the owner of what it
    /// makes and takes over (see [`Store::claim_target_credentials`]).
    fn instance(&self) -> &str;
}

/// Why a credential was not made. Nothing is left upstream: what may have
/// been begun is queued for destruction.
#[derive(Debug, Clone)]
pub enum MintError {
    /// The policy declares no such target.
    UnknownTarget(String),
    /// The target cannot be used now (its admin credential unreadable).
    TargetBroken {
        /// The target.
        target: String,
        /// Why (never a secret).
        why: String,
    },
    /// The planner refused the grant.
    PlanRefused(String),
    /// The step token already has a credential on this target.
    AlreadyExchanged(String),
    /// The credential could not be recorded before it is made.
    NotRecorded,
    /// The step token was revoked while its credential was being made.
    RevokedMeanwhile,
    /// The upstream call failed.
    Upstream {
        /// The target.
        target: String,
        /// What failed.
        failure: UpstreamFailure,
        /// The upstream's id of the failed request, if it gave one.
        request_id: Option<String>,
    },
    /// An internal failure (randomness, a lost record).
    Internal(&'static str),
}

/// Why an upstream call failed.
#[derive(Debug, Clone)]
pub enum UpstreamFailure {
    /// Unreachable, timed out, pool exhausted: retry later.
    Unavailable(String),
    /// The upstream refused (its own error code and message).
    Refused { code: String, message: String },
    /// The upstream asked Stint to wait (a rate limit): retry no sooner
    /// than `retry_after_secs` from now.
    RateLimited {
        retry_after_secs: u64,
        message: String,
    },
    /// Retrying cannot help (what destroying it needs is gone): the
    /// credential is irrevocable at once.
    Permanent(String),
}

impl std::fmt::Display for UpstreamFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unavailable(why) => f.write_str(why),
            Self::Refused { code, message } => write!(f, "refused ({code}): {message}"),
            Self::RateLimited {
                retry_after_secs,
                message,
            } => write!(
                f,
                "rate limited, retry after {retry_after_secs} s: {message}"
            ),
            Self::Permanent(why) => f.write_str(why),
        }
    }
}

/// What a kind's planner decided to make (the secret included: it is
/// handed out once, never stored).
pub struct Planned {
    /// The upstream identifier (PostgreSQL role name).
    pub upstream_id: String,
    /// The secret (PostgreSQL password).
    pub secret: String,
    /// The privileges planned, as the audit shows them.
    pub privileges: Vec<String>,
    /// The privileges the credential carries, as scopes.
    pub effective: Vec<String>,
    /// The kind's request (for PostgreSQL, the statements of one
    /// transaction; they carry a password verifier, never the password).
    pub request: Vec<String>,
    /// How to use a PostgreSQL login.
    pub postgres: Option<PostgresLogin>,
    /// What to ask GitHub for.
    pub github: Option<stint_core::target::github::GithubPlan>,
}

/// What a creation made, when the upstream made part of it: GitHub makes
/// the token itself. All `None` for kinds that planned everything
/// (PostgreSQL).
#[derive(Default)]
pub struct Created {
    /// The secret the upstream made (replaces [`Planned::secret`]).
    pub secret: Option<String>,
    /// The upstream's identifier (replaces [`Planned::upstream_id`]).
    pub upstream_id: Option<String>,
    /// What destroying it needs, sealed: stored with the record.
    pub sealed: Option<Vec<u8>>,
    /// What the upstream granted, as it said.
    pub grant: Option<UpstreamGrant>,
    /// How to use a GitHub installation token.
    pub github: Option<GithubToken>,
}

/// Whether a failed creation left something upstream.
#[derive(Debug)]
pub enum Made {
    /// Certainly nothing (the upstream refused): nothing to destroy.
    Nothing,
    /// Perhaps (a timeout may hide a commit): destroy whatever exists.
    Maybe,
    /// Something that could not be destroyed at once, and what destroying
    /// it needs, sealed.
    Something(Vec<u8>),
}

/// Why a creation failed, and what it may have left.
#[derive(Debug)]
pub struct CreateFailure {
    /// What failed.
    pub failure: UpstreamFailure,
    /// What it left upstream.
    pub made: Made,
    /// The upstream's id of the failed request, if it gave one.
    pub request_id: Option<String>,
    /// If something may have been made, when it stops working upstream by
    /// itself at the latest (a GitHub token's hour), seconds since the
    /// epoch: an irrevocable record is closed then.
    pub expires_by: Option<i64>,
}

impl CreateFailure {
    /// A failure that may have left something (a timeout, a lost answer).
    pub fn maybe(failure: UpstreamFailure) -> Self {
        Self {
            failure,
            made: Made::Maybe,
            request_id: None,
            expires_by: None,
        }
    }
}

/// What a destruction found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Destroyed {
    /// Whether the credential still existed ("already gone" is success).
    pub existed: bool,
    /// Sessions cut.
    pub terminated: u32,
}

/// One configured target: its planner and its upstream client.
#[async_trait]
pub trait TargetClient: Send + Sync {
    /// The kind, e.g. `postgres`.
    fn kind(&self) -> &'static str;
    /// The upstream server, `host:port`.
    fn server(&self) -> String;
    /// The database, for kinds that have one.
    fn database(&self) -> Option<String>;
    /// Plan a credential for `scopes` (the step token's, for this target),
    /// valid until `expires_at`. Pure but for randomness.
    fn plan(
        &self,
        target: &str,
        scopes: &[Scope],
        expires_at: i64,
        rng: &ring::rand::SystemRandom,
    ) -> Result<Planned, String>;
    /// Make it upstream, all or nothing.
    async fn create(&self, planned: &Planned) -> Result<Created, CreateFailure>;
    /// Destroy it upstream (with what [`Created::sealed`] kept, if this
    /// kind needs it). Gone already is success.
    async fn destroy(
        &self,
        upstream_id: &str,
        sealed: Option<&[u8]>,
    ) -> Result<Destroyed, UpstreamFailure>;
    /// What exists upstream that Stint made (`None`: this kind cannot
    /// list).
    async fn list(&self) -> Result<Option<Vec<String>>, UpstreamFailure>;
    /// How many destructions may run at once on this target (the rest of
    /// its capacity stays for mints).
    fn max_destroying(&self) -> usize {
        DEFAULT_DESTROYING_PER_TARGET
    }
    /// The upstream's rate-limit budget left, by what it meters (a GitHub
    /// installation): for the metrics.
    fn rate_limits(&self) -> Vec<(String, i64)> {
        Vec::new()
    }
}

/// Where a credential was made: its target's name, server and database.
type Endpoint = (String, String, Option<String>);

fn endpoint_of(credential: &TargetCredential) -> Endpoint {
    (
        credential.target.clone(),
        credential.server.clone(),
        credential.database.clone(),
    )
}

/// A target as the broker holds it: usable, or why not.
#[derive(Clone)]
enum Slot {
    Ready(Arc<dyn TargetClient>),
    /// Declared but unusable (its admin credential could not be read):
    /// the reason, never a secret.
    Broken(String),
}

/// A credential the broker tracks, with whether an upstream call on it is
/// in flight.
struct Tracked {
    credential: TargetCredential,
    busy: bool,
    /// Taken over by this broker (a revocation through it) while an
    /// attempt was busy with it: that attempt, finding it had lost the
    /// credential before, must not forget it.
    adopted: bool,
}

/// Builds a target's client from its policy entry (a seam for tests).
pub type Connector = Arc<
    dyn Fn(&str, &stint_core::target::Target) -> Result<Arc<dyn TargetClient>, String>
        + Send
        + Sync,
>;

/// The broker's target credentials.
pub struct TargetCredentials {
    /// Targets by name, as the policy declares them.
    slots: RwLock<HashMap<String, Slot>>,
    /// Clients of targets removed from the policy, or since moved to
    /// another server or database, kept while credentials made through
    /// them are to be destroyed.
    retired: Mutex<HashMap<Endpoint, Arc<dyn TargetClient>>>,
    /// Every credential that is not finished, by id.
    open: Mutex<HashMap<String, Tracked>>,
    wake: tokio::sync::Notify,
    /// Revocations in flight by target.
    target_limits: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    backoff: Backoff,
    connector: Connector,
    /// The comment the broker's roles carry: which broker made them.
    marker: String,
    /// The last claim failed: it may have committed, giving this broker
    /// credentials it does not know of; the next claim asks for them.
    claim_unsure: std::sync::atomic::AtomicBool,
}

/// A credential made and ready to hand out.
pub struct Minted {
    pub credential: TargetCredential,
    pub secret: String,
    pub privileges: Vec<String>,
    pub postgres: Option<PostgresLogin>,
    pub github: Option<GithubToken>,
}

impl TargetCredentials {
    /// An empty set of targets; [`Self::install`] fills it from a policy.
    pub fn new(issuer: &str, connector: Connector) -> Self {
        Self {
            slots: RwLock::new(HashMap::new()),
            retired: Mutex::new(HashMap::new()),
            open: Mutex::new(HashMap::new()),
            wake: tokio::sync::Notify::new(),
            target_limits: Mutex::new(HashMap::new()),
            backoff: Backoff::default(),
            connector,
            marker: stint_core::target::role_marker(issuer),
            claim_unsure: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Build the clients of the policy's targets. A target whose client
    /// cannot be built (an unreadable admin password file) is kept as
    /// unusable, with the reason, which its mints report. Returns those
    /// reasons, by target.
    pub fn install(&self, policy: &Policy) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut built = HashMap::new();
        // An oidc target has no upstream to connect to: the broker signs
        // its federation tokens itself, and nothing is queued for them.
        for target in policy
            .targets()
            .filter(|t| !matches!(t.kind(), stint_core::target::TargetKind::Oidc(_)))
        {
            let slot = match (self.connector)(&self.marker, target) {
                Ok(client) => Slot::Ready(client),
                Err(why) => {
                    tracing::error!(target = target.name(), %why, "target is not usable");
                    problems.push((target.name().to_owned(), why.clone()));
                    Slot::Broken(why)
                }
            };
            built.insert(target.name().to_owned(), slot);
        }
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        // A target gone from the policy, or moved to another server or
        // database, keeps its old client for the credentials made through
        // it that it still has to destroy.
        let still_needed: HashSet<Endpoint> = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|t| t.credential.state.is_open())
            .map(|t| endpoint_of(&t.credential))
            .collect();
        let current: HashSet<Endpoint> = built
            .iter()
            .filter_map(|(name, slot)| match slot {
                Slot::Ready(client) => Some((name.clone(), client.server(), client.database())),
                Slot::Broken(_) => None,
            })
            .collect();
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        for (name, slot) in slots.drain() {
            if let Slot::Ready(client) = slot {
                let endpoint = (name, client.server(), client.database());
                if still_needed.contains(&endpoint) && !current.contains(&endpoint) {
                    retired.insert(endpoint, client);
                }
            }
        }
        retired.retain(|endpoint, _| still_needed.contains(endpoint));
        slots.extend(built);
        // Their limits follow the new clients (attempts in flight keep the
        // permits they hold).
        self.target_limits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        problems
    }

    /// The client that reaches the server and database `credential` was
    /// made on: its target's, or, if the target has moved since, the one it
    /// had then.
    fn client_for(
        &self,
        credential: &TargetCredential,
    ) -> Result<Arc<dyn TargetClient>, UpstreamFailure> {
        let endpoint = endpoint_of(credential);
        match self.slot(&credential.target) {
            Some(Slot::Ready(client))
                if client.server() == endpoint.1 && client.database() == endpoint.2 =>
            {
                return Ok(client);
            }
            Some(Slot::Broken(why)) => return Err(UpstreamFailure::Unavailable(why)),
            _ => {}
        }
        self.retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&endpoint)
            .cloned()
            .ok_or_else(|| {
                UpstreamFailure::Unavailable(format!(
                    "target {} no longer reaches {} (database {}), where this credential was made: restore that target in the policy, or drop the role by hand",
                    credential.target,
                    credential.server,
                    credential.database.as_deref().unwrap_or("-")
                ))
            })
    }

    fn slot(&self, target: &str) -> Option<Slot> {
        self.slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(target)
            .cloned()
    }

    /// Make a credential on `target` for the step token `claims`, with
    /// `scopes` (the token's, for this target). The caller has checked
    /// that the token is active and that its step lists the target; it
    /// audits the result before answering.
    pub async fn mint(
        &self,
        host: &dyn Host,
        claims: &AccessTokenClaims,
        target: &str,
        scopes: &[Scope],
        now: DateTime<Utc>,
    ) -> Result<Minted, MintError> {
        let client = match self.slot(target) {
            Some(Slot::Ready(client)) => client,
            Some(Slot::Broken(why)) => {
                return Err(MintError::TargetBroken {
                    target: target.to_owned(),
                    why,
                });
            }
            None => return Err(MintError::UnknownTarget(target.to_owned())),
        };
        let planned = client
            .plan(target, scopes, claims.exp, host.rng())
            .map_err(MintError::PlanRefused)?;
        let credential = TargetCredential {
            id: new_id(host)?,
            jti: claims.jti.clone(),
            sub: claims.sub.clone(),
            client_id: claims.client_id.clone(),
            job: claims.job.clone(),
            step: claims.step.clone(),
            approval: claims.elev.clone(),
            issued_at: claims.iat,
            expires_at: claims.exp,
            target: target.to_owned(),
            kind: client.kind().to_owned(),
            upstream_id: planned.upstream_id.clone(),
            server: client.server(),
            database: client.database(),
            effective: planned.effective.clone(),
            state: CredentialState::Minting,
            trigger: None,
            attempts: 0,
            next_attempt_at: now.timestamp(),
            last_error: None,
            created_at: now.timestamp(),
            finished_at: None,
            revoke_requested_at: None,
            sealed: None,
            grant: None,
        };
        let inserted = host
            .store()
            .insert_target_credential(&credential, host.instance())
            .await
            .map_err(|error| {
                tracing::error!(%error, "target credential not recorded; refusing");
                MintError::NotRecorded
            })?;
        if !inserted {
            return Err(MintError::AlreadyExchanged(target.to_owned()));
        }
        let id = credential.id.clone();
        self.open.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id.clone(),
            Tracked {
                credential,
                busy: true,
                adopted: false,
            },
        );

        let created = client.create(&planned).await;
        let now = host.now();
        // The revocation set gets a revocation before the queue hears of
        // it (see `on_revocation`): either the record was seen there, or
        // the revocation is seen here.
        let revoked_meanwhile = host.is_revoked(claims, now);
        let (credential, outcome) = {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            let Some(tracked) = open.get_mut(&id) else {
                return Err(MintError::Internal(
                    "the credential's record was lost while it was being made",
                ));
            };
            // Still busy: no attempt starts on it before the state below is
            // stored (a later write of the mint's would undo the attempt's).
            let c = &mut tracked.credential;
            let outcome = match created {
                Err(CreateFailure {
                    failure,
                    made,
                    request_id,
                    expires_by,
                }) => {
                    if expires_by.is_some() {
                        c.grant = Some(UpstreamGrant {
                            upstream_expires_at: expires_by,
                            ..UpstreamGrant::default()
                        });
                    }
                    match made {
                        Made::Nothing => {
                            // Refused: there is nothing to destroy.
                            c.state = CredentialState::Revoked;
                            c.trigger = Some(Trigger::FailedMint);
                            c.finished_at = Some(now.timestamp());
                        }
                        Made::Maybe => {
                            c.begin_revocation(Trigger::FailedMint, now.timestamp());
                        }
                        Made::Something(sealed) => {
                            c.sealed = Some(sealed);
                            c.begin_revocation(Trigger::FailedMint, now.timestamp());
                        }
                    }
                    c.last_error = Some(failure.to_string());
                    Err(MintError::Upstream {
                        target: target.to_owned(),
                        failure,
                        request_id,
                    })
                }
                Ok(created) => {
                    if let Some(upstream_id) = created.upstream_id {
                        c.upstream_id = upstream_id;
                    }
                    c.sealed = created.sealed;
                    c.grant = created.grant;
                    if revoked_meanwhile || c.state != CredentialState::Minting {
                        c.begin_revocation(Trigger::Token, now.timestamp());
                        Err(MintError::RevokedMeanwhile)
                    } else {
                        c.state = CredentialState::Live;
                        Ok((created.secret, created.github))
                    }
                }
            };
            (c.clone(), outcome)
        };
        let stored = host
            .store()
            .update_target_credential(&credential, host.instance())
            .await;
        if let Some(tracked) = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&credential.id)
        {
            tracked.busy = false;
        }
        self.wake.notify_one();
        if let Ok(false) = stored {
            // Another broker took the row over while this mint ran (it took
            // longer than a mint may): it destroys what it thinks was never
            // made, so this broker destroys what it made, now, and hands
            // nothing out.
            self.forget(&credential.id, now.timestamp());
            tracing::error!(credential = %credential.id, "a target credential's record was taken over while it was being made; destroying it");
            if credential.state != CredentialState::Revoked {
                let destroyed = client
                    .destroy(&credential.upstream_id, credential.sealed.as_deref())
                    .await;
                let (event, outcome) = match &destroyed {
                    Ok(_) => (EventKind::TargetCredentialRevoked, "revoked"),
                    Err(_) => (EventKind::TargetCredentialIrrevocable, "irrevocable"),
                };
                let mut entry = credential_entry(host.now(), event, &credential);
                if let Some(target) = entry.target.as_mut() {
                    target.outcome = Some(outcome.to_owned());
                }
                entry.detail = Some(match &destroyed {
                    Ok(_) => "its record was taken over by another broker while it was being made: destroyed by the broker that made it, never handed out".to_owned(),
                    Err(failure) => format!("its record was taken over by another broker while it was being made, and it could not be destroyed: remove it by hand ({failure})"),
                });
                if let Err(error) = host.audit(entry).await {
                    tracing::error!(%error, "target credential's destruction not audited");
                }
            }
            outcome?;
            return Err(MintError::Internal(
                "the credential's record was taken over by another broker while it was being made; it was destroyed: ask for a new step token",
            ));
        }
        if let (Err(error), Err(_)) = (&stored, &outcome)
            && credential.sealed.is_some()
        {
            // Only this broker's memory holds what revokes it now.
            tracing::error!(%error, credential = %credential.id, "a credential to destroy, and its sealed token, could not be stored: a restart before its revocation cannot revoke it");
        }
        let (secret, github) = outcome?;
        if let Err(error) = stored {
            if credential.sealed.is_some() {
                // Only the stored copy lets a restarted broker destroy it:
                // without it, it is not handed out.
                tracing::error!(%error, credential = %credential.id, "target credential's token not stored; destroying it");
                self.abandon(&credential.id, now.timestamp());
                return Err(MintError::NotRecorded);
            }
            // Still `minting` in the store: a restart would destroy it early
            // (fail safe), but while this broker runs it is tracked here.
            tracing::warn!(%error, credential = %credential.id, "target credential's state not stored");
        }
        Ok(Minted {
            credential,
            secret: secret.unwrap_or(planned.secret),
            privileges: planned.privileges,
            postgres: planned.postgres,
            github,
        })
    }

    /// Stop tracking credential `id`, which another broker owns now;
    /// unless this broker took it back meanwhile (see [`Self::adopt`]):
    /// then it is due again at `now`.
    fn forget(&self, id: &str, now: i64) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        match open.get_mut(id) {
            Some(tracked) if tracked.adopted => {
                tracked.adopted = false;
                tracked.busy = false;
                tracked.credential.next_attempt_at = now;
                drop(open);
                self.wake.notify_one();
            }
            Some(_) => {
                open.remove(id);
            }
            None => {}
        }
    }

    /// Destroy a credential that was made but cannot be handed out (its
    /// mint could not be audited).
    pub fn abandon(&self, id: &str, now: i64) {
        if let Some(tracked) = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(id)
        {
            tracked
                .credential
                .begin_revocation(Trigger::FailedMint, now);
        }
        self.wake.notify_one();
    }

    /// Queue for destruction every credential `cause` reaches. Called when
    /// the revocation is in force (audited and durable): the queue makes
    /// the upstream side durable in turn.
    pub fn on_revocation(&self, cause: Cause<'_>, now: i64) {
        let mut queued = 0usize;
        for tracked in self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values_mut()
        {
            if tracked.credential.covered_by(&cause)
                && tracked.credential.begin_revocation(cause.trigger(), now)
            {
                queued += 1;
            }
        }
        if queued > 0 {
            self.wake.notify_one();
        }
    }

    /// With a shared store, make this broker the owner of credential `id`
    /// (made from step token `jti`), whoever owns it, so that revoking it
    /// through this broker reaches it: the owner may be another broker, or
    /// may have been, while this one still remembers it (the broker that
    /// owned it last finds it is not its own before it acts; see
    /// `attempt`). An error means the ledger could not be written: the
    /// revocation cannot be carried out here now.
    pub async fn adopt(
        &self,
        host: &dyn Host,
        id: &str,
        jti: &str,
    ) -> Result<(), stint_store::StoreError> {
        if !host.store().shared() {
            return Ok(());
        }
        let taken = host
            .store()
            .take_target_credential(host.instance(), id, jti)
            .await;
        if taken.is_err() {
            // It may have committed: the next claim returns what this
            // broker owns, so that nothing it took is left untracked.
            self.claim_unsure
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let Some(credential) = taken? else {
            // Not live nor being revoked: finished (then `revoke_one`
            // answers from what is known here), or not this token's.
            return Ok(());
        };
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        match open.get_mut(id) {
            // An attempt of this broker's is under way: it finishes it, and
            // does not forget it for having found another owner before.
            Some(tracked) if tracked.busy => tracked.adopted = true,
            Some(tracked) => tracked.credential = credential,
            None => {
                open.insert(
                    id.to_owned(),
                    Tracked {
                        credential,
                        busy: false,
                        adopted: false,
                    },
                );
            }
        }
        Ok(())
    }

    /// Revoke one credential alone, for the step token `jti` it was made
    /// from: the credential as queued (or as it already was, if it is on
    /// its way out or gone), or `None` if no credential with that id was
    /// made from that token.
    pub fn revoke_one(&self, id: &str, jti: &str, now: i64) -> Option<TargetCredential> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let tracked = open.get_mut(id).filter(|t| t.credential.jti == jti)?;
        tracked
            .credential
            .begin_revocation(Trigger::Credential, now);
        let credential = tracked.credential.clone();
        drop(open);
        self.wake.notify_one();
        Some(credential)
    }

    /// Counts of open credentials by target and state, and each target's
    /// oldest irrevocable credential's age: for the metrics.
    pub fn census(&self, now: i64) -> Vec<(String, CredentialState, u64, i64)> {
        let mut counts: HashMap<(String, CredentialState), (u64, i64)> = HashMap::new();
        for tracked in self.open.lock().unwrap_or_else(|p| p.into_inner()).values() {
            let c = &tracked.credential;
            if c.state == CredentialState::Revoked {
                continue;
            }
            let entry = counts.entry((c.target.clone(), c.state)).or_default();
            entry.0 += 1;
            entry.1 = entry.1.max(now - c.created_at);
        }
        let mut census: Vec<_> = counts
            .into_iter()
            .map(|((target, state), (count, age))| (target, state, count, age))
            .collect();
        census.sort_by(|a, b| (&a.0, a.1.as_str()).cmp(&(&b.0, b.1.as_str())));
        census
    }

    /// Each target's upstream rate-limit budget left, by what it meters:
    /// for the metrics.
    pub fn rate_limits(&self) -> Vec<(String, String, i64)> {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        let mut limits: Vec<(String, String, i64)> = slots
            .iter()
            .filter_map(|(name, slot)| match slot {
                Slot::Ready(client) => Some((name, client.rate_limits())),
                Slot::Broken(_) => None,
            })
            .flat_map(|(name, limits)| {
                limits
                    .into_iter()
                    .map(move |(what, left)| (name.clone(), what, left))
            })
            .collect();
        limits.sort();
        limits
    }

    /// Load what the store holds and decide, before the broker serves:
    /// every `minting` credential (its broker stopped before answering) and
    /// every `live` one whose step token is revoked or expired is queued
    /// for destruction. With a shared store only what no live broker owns
    /// is loaded (and owned from now on). Then the first reconciliation
    /// runs in the queue.
    pub async fn load(&self, host: &dyn Host) -> Result<usize, stint_store::StoreError> {
        let store = host.store();
        let stored = if store.shared() {
            self.claim(host).await?
        } else {
            store.unfinished_target_credentials().await?
        };
        let count = stored.len();
        self.track(host, stored);
        Ok(count)
    }

    /// Renew this broker's lease and take over the credentials of brokers
    /// whose lease ran out.
    async fn claim(
        &self,
        host: &dyn Host,
    ) -> Result<Vec<TargetCredential>, stint_store::StoreError> {
        use std::sync::atomic::Ordering;
        let now = host.now().timestamp();
        let include_own = self.claim_unsure.load(Ordering::Relaxed);
        let claimed = host
            .store()
            .claim_target_credentials(
                host.instance(),
                now.saturating_add(LEASE_SECS),
                now,
                include_own,
            )
            .await;
        self.claim_unsure.store(claimed.is_err(), Ordering::Relaxed);
        claimed
    }

    /// Track `credentials` found in the store (left by a broker that
    /// stopped), deciding as [`Self::load`] says.
    fn track(&self, host: &dyn Host, credentials: Vec<TargetCredential>) {
        let now = host.now();
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mut queued = false;
        for mut credential in credentials {
            match credential.state {
                CredentialState::Minting => {
                    credential.begin_revocation(Trigger::InterruptedMint, now.timestamp());
                }
                CredentialState::Live => {
                    if let Some(trigger) = revoked_by(host, &credential, now) {
                        credential.begin_revocation(trigger, now.timestamp());
                    }
                }
                CredentialState::Revoking
                | CredentialState::Irrevocable
                | CredentialState::Revoked => {}
            }
            queued |= credential.state == CredentialState::Revoking;
            // What this broker already tracks is left as it is (an attempt
            // may be under way).
            open.entry(credential.id.clone()).or_insert(Tracked {
                credential,
                busy: false,
                adopted: false,
            });
        }
        drop(open);
        if queued {
            self.wake.notify_one();
        }
    }

    /// The queue: destroys what is due, finds expiries, reconciles now and
    /// then; until the broker closes. Then it waits for the attempts and the
    /// reconciliation it started (each bounded by its target's timeouts), so
    /// that nothing it does lands in the audit log after the broker's last
    /// checkpoint; a caller that cannot wait drops this future, and what it
    /// started is cancelled with it.
    pub async fn run(
        self: Arc<Self>,
        host: Arc<dyn Host>,
        mut closing: tokio::sync::watch::Receiver<bool>,
    ) {
        let limit = Arc::new(tokio::sync::Semaphore::new(MAX_REVOKING));
        let mut next_reconcile = tokio::time::Instant::now();
        let mut next_purge = tokio::time::Instant::now();
        // `load` claimed at start.
        let mut next_claim = tokio::time::Instant::now() + CLAIM_EVERY;
        let mut started = tokio::task::JoinSet::new();
        loop {
            while started.try_join_next().is_some() {}
            let now = host.now().timestamp();
            // Never waits for a permit: what cannot start now (its target,
            // or all targets, at their limit) stays due, and is looked at
            // again when an attempt ends (it wakes the queue). So a dead
            // target's attempts, each bounded by its timeouts, hold up no
            // other target's.
            let claimed = self.claim_due(now, |target| {
                let all = Arc::clone(&limit).try_acquire_owned().ok()?;
                let one = self.target_limit(target).try_acquire_owned().ok()?;
                Some((all, one))
            });
            for (credential, permits) in claimed {
                let (queue, host) = (Arc::clone(&self), Arc::clone(&host));
                started.spawn(async move {
                    queue.attempt(host.as_ref(), credential).await;
                    drop(permits);
                    queue.wake.notify_one();
                });
            }
            if tokio::time::Instant::now() >= next_reconcile {
                next_reconcile = tokio::time::Instant::now() + RECONCILE_EVERY;
                let (queue, host) = (Arc::clone(&self), Arc::clone(&host));
                started.spawn(async move { queue.reconcile(host.as_ref()).await });
            }
            if host.store().shared() && tokio::time::Instant::now() >= next_claim {
                next_claim = tokio::time::Instant::now() + CLAIM_EVERY;
                let (queue, host) = (Arc::clone(&self), Arc::clone(&host));
                started.spawn(async move {
                    match queue.claim(host.as_ref()).await {
                        Ok(claimed) => {
                            if !claimed.is_empty() {
                                tracing::info!(
                                    credentials = claimed.len(),
                                    "took over the target credentials of brokers whose lease ran out"
                                );
                            }
                            queue.track(host.as_ref(), claimed);
                        }
                        Err(error) => {
                            tracing::warn!(%error, "could not renew this broker's lease on its target credentials");
                        }
                    }
                });
            }
            if tokio::time::Instant::now() >= next_purge {
                next_purge = tokio::time::Instant::now() + Duration::from_secs(3600);
                if let Err(error) = host
                    .store()
                    .purge_target_credentials(now - KEEP_FINISHED_SECS)
                    .await
                {
                    tracing::warn!(%error, "could not purge finished target credentials");
                }
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(QUEUE_TICK) => {}
                _ = closing.changed() => break,
            }
            if *closing.borrow() {
                break;
            }
        }
        while started.join_next().await.is_some() {}
    }

    /// The revocations in flight on one target, at most its client's
    /// [`TargetClient::max_destroying`]: the rest of its capacity stays for
    /// mints.
    fn target_limit(&self, target: &str) -> Arc<tokio::sync::Semaphore> {
        let most = match self.slot(target) {
            Some(Slot::Ready(client)) => client.max_destroying().max(1),
            _ => DEFAULT_DESTROYING_PER_TARGET,
        };
        Arc::clone(
            self.target_limits
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(target.to_owned())
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(most))),
        )
    }

    /// After queueing those whose step token has expired, the credentials
    /// whose destruction is due now and may start (`start` gives the
    /// permits for a credential's target, or `None`): marked busy, with
    /// their permits.
    fn claim_due<P>(
        &self,
        now: i64,
        mut start: impl FnMut(&str) -> Option<P>,
    ) -> Vec<(TargetCredential, P)> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|_, t| {
            t.busy
                || t.credential.state != CredentialState::Revoked
                || t.credential.expires_at + stint_core::access_token::MAX_LEEWAY_SECS > now
        });
        let mut due = Vec::new();
        for tracked in open.values_mut() {
            if tracked.busy {
                continue;
            }
            let c = &mut tracked.credential;
            if c.state == CredentialState::Live && c.expires_at <= now {
                c.begin_revocation(Trigger::Expired, now);
            }
            // An irrevocable credential that has stopped working upstream
            // by itself (a GitHub token after its hour) is closed, through
            // one more attempt that finds it expired.
            if c.state == CredentialState::Irrevocable
                && c.grant
                    .as_ref()
                    .and_then(|g| g.upstream_expires_at)
                    .is_some_and(|at| at + EXPIRED_UPSTREAM_SLACK_SECS <= now)
            {
                c.state = CredentialState::Revoking;
                c.next_attempt_at = now;
            }
            if c.state == CredentialState::Revoking && c.next_attempt_at <= now {
                let Some(permits) = start(&c.target) else {
                    continue;
                };
                tracked.busy = true;
                due.push((c.clone(), permits));
            }
        }
        due
    }

    /// One attempt to destroy `credential` upstream, its outcome stored
    /// and audited.
    async fn attempt(&self, host: &dyn Host, mut credential: TargetCredential) {
        // Another broker may have taken it over (revoked through it, or
        // this broker's lease ran out): then it is that one's to destroy.
        if host.store().shared() {
            match host
                .store()
                .owns_target_credential(host.instance(), &credential.id)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    tracing::info!(credential = %credential.id, "target credential taken over by another broker");
                    self.forget(&credential.id, host.now().timestamp());
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, credential = %credential.id, "could not check who owns a target credential; trying again later");
                    if let Some(tracked) = self
                        .open
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_mut(&credential.id)
                    {
                        tracked.credential.next_attempt_at = host.now().timestamp() + 5;
                        tracked.busy = false;
                    }
                    return;
                }
            }
        }
        let expired_upstream = credential
            .grant
            .as_ref()
            .and_then(|g| g.upstream_expires_at)
            // With slack for clocks that disagree: a DELETE of a token that
            // is gone is cheap (GitHub answers 401).
            .is_some_and(|at| at + EXPIRED_UPSTREAM_SLACK_SECS <= host.now().timestamp());
        let result = if expired_upstream {
            // It has stopped working by itself: nothing to call.
            Ok(Destroyed {
                existed: false,
                terminated: 0,
            })
        } else {
            match self.client_for(&credential) {
                Ok(client) => {
                    client
                        .destroy(&credential.upstream_id, credential.sealed.as_deref())
                        .await
                }
                Err(failure) => Err(failure),
            }
        };
        let now = host.now();
        credential.attempts = credential.attempts.saturating_add(1);
        let (event, outcome, terminated) = match &result {
            Ok(destroyed) => {
                credential.state = CredentialState::Revoked;
                credential.finished_at = Some(now.timestamp());
                credential.last_error = None;
                credential.sealed = None;
                let outcome = if expired_upstream {
                    "expired_upstream"
                } else if destroyed.existed {
                    "revoked"
                } else {
                    "already_gone"
                };
                (
                    EventKind::TargetCredentialRevoked,
                    outcome,
                    Some(destroyed.terminated),
                )
            }
            Err(failure) => {
                credential.last_error = Some(failure.to_string());
                if self.backoff.exhausted(credential.attempts)
                    || matches!(failure, UpstreamFailure::Permanent(_))
                {
                    credential.state = CredentialState::Irrevocable;
                    credential.finished_at = Some(now.timestamp());
                    // It cannot be used to destroy anything any more.
                    credential.sealed = None;
                    tracing::error!(
                        target = %credential.target,
                        role = %credential.upstream_id,
                        attempts = credential.attempts,
                        %failure,
                        "target credential could not be destroyed: remove it by hand"
                    );
                    (EventKind::TargetCredentialIrrevocable, "irrevocable", None)
                } else {
                    let jitter = random_u32(host);
                    let mut delay = self.backoff.delay(credential.attempts, jitter);
                    // Never sooner than the upstream asked.
                    if let UpstreamFailure::RateLimited {
                        retry_after_secs, ..
                    } = failure
                    {
                        delay = delay.max(i64::try_from(*retry_after_secs).unwrap_or(i64::MAX / 2));
                    }
                    credential.next_attempt_at = now.timestamp().saturating_add(delay);
                    tracing::warn!(
                        target = %credential.target,
                        role = %credential.upstream_id,
                        attempts = credential.attempts,
                        %failure,
                        "target credential not destroyed yet; retrying"
                    );
                    (EventKind::TargetRevocationFailed, "failed", None)
                }
            }
        };
        host.count(&credential.target, outcome);
        // Taken over while this attempt ran: what it did upstream is still
        // audited (here), the record's state is the new owner's.
        let lost = match host
            .store()
            .update_target_credential(&credential, host.instance())
            .await
        {
            Ok(stored) => !stored,
            Err(error) => {
                tracing::warn!(%error, credential = %credential.id, "target credential's state not stored");
                false
            }
        };
        let mut entry = credential_entry(now, event, &credential);
        if let Some(target) = entry.target.as_mut() {
            target.outcome = Some(outcome.to_owned());
            target.terminated = terminated;
            if credential.state == CredentialState::Revoked {
                target.exposure_secs = credential
                    .revoke_requested_at
                    .map(|at| now.timestamp().saturating_sub(at).max(0));
            }
        }
        entry.detail = if lost {
            Some(format!(
                "another broker took this credential over during the attempt: its record and further attempts are that broker's{}",
                credential
                    .last_error
                    .as_deref()
                    .map(|e| format!("; {e}"))
                    .unwrap_or_default()
            ))
        } else {
            credential.last_error.clone()
        };
        if let Err(error) = host.audit(entry).await {
            tracing::error!(%error, "target credential's revocation not audited");
        }
        if lost {
            tracing::info!(credential = %credential.id, "target credential taken over by another broker during an attempt");
            self.forget(&credential.id, now.timestamp());
            return;
        }
        // A revoked credential stays known until its step token expires,
        // so that revoking it again is answered as done.
        if let Some(tracked) = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&credential.id)
        {
            tracked.credential = credential;
            tracked.busy = false;
            tracked.adopted = false;
        }
    }

    /// Destroy what exists upstream, made by this broker, that no open
    /// credential accounts for (a broker killed before its record, a record
    /// lost): for every target that can list.
    pub async fn reconcile(&self, host: &dyn Host) {
        let slots: Vec<(String, Arc<dyn TargetClient>)> = self
            .slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(|(name, slot)| match slot {
                Slot::Ready(client) => Some((name.clone(), Arc::clone(client))),
                Slot::Broken(_) => None,
            })
            .collect();
        // Several targets may share a server: each lists the same roles, so
        // a role is known if any target's credential names it.
        let mut done = HashSet::new();
        for (name, client) in slots {
            let listed = match client.list().await {
                Ok(Some(listed)) => listed,
                Ok(None) => continue,
                Err(failure) => {
                    tracing::warn!(target = %name, %failure, "reconciler could not list the target's credentials");
                    continue;
                }
            };
            let mut known: HashSet<String> = self
                .open
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                // Revoked and irrevocable credentials should not exist: if
                // one does, it is destroyed (an irrevocable one's record is
                // then closed).
                .filter(|t| t.credential.state.is_open())
                .map(|t| t.credential.upstream_id.clone())
                .collect();
            // Other brokers on a shared store mint credentials this one
            // does not track: the ledger knows them. Read after the
            // listing, so that a credential listed is in the ledger read
            // (its row is written before it is created upstream). No
            // ledger, no reconciling: nothing is destroyed on a guess.
            if host.store().shared() {
                match host.store().unfinished_target_credentials().await {
                    Ok(ledger) => known.extend(
                        ledger
                            .into_iter()
                            .filter(|c| c.state.is_open())
                            .map(|c| c.upstream_id),
                    ),
                    Err(error) => {
                        tracing::warn!(target = %name, %error, "reconciler could not read the shared ledger: not reconciling");
                        continue;
                    }
                }
            }
            for upstream_id in listed {
                if known.contains(&upstream_id) || !done.insert(upstream_id.clone()) {
                    continue;
                }
                let result = client.destroy(&upstream_id, None).await;
                let now = host.now();
                if result.is_ok() {
                    self.close_irrevocable(host, &upstream_id, now.timestamp())
                        .await;
                }
                let mut entry = AuditEntry::new(
                    timestamp(now),
                    EventKind::TargetCredentialReconciled,
                    if result.is_ok() {
                        Decision::Allow
                    } else {
                        Decision::Deny
                    },
                );
                let (outcome, terminated) = match &result {
                    Ok(destroyed) if destroyed.existed => ("revoked", Some(destroyed.terminated)),
                    Ok(destroyed) => ("already_gone", Some(destroyed.terminated)),
                    Err(failure) => {
                        entry.detail = Some(failure.to_string());
                        ("failed", None)
                    }
                };
                host.count(&name, "reconciled");
                entry.target = Some(TargetAudit {
                    name: name.clone(),
                    kind: client.kind().to_owned(),
                    server: Some(client.server()),
                    database: client.database(),
                    upstream_id: Some(upstream_id.clone()),
                    trigger: Some(Trigger::Reconciler.as_str().to_owned()),
                    attempts: Some(1),
                    outcome: Some(outcome.to_owned()),
                    terminated,
                    ..TargetAudit::default()
                });
                tracing::warn!(target = %name, role = %upstream_id, outcome, "reconciler found a credential no step token accounts for");
                if let Err(error) = host.audit(entry).await {
                    tracing::error!(%error, "reconciliation not audited");
                }
            }
        }
    }
}

impl TargetCredentials {
    /// Close the record of an irrevocable credential whose upstream side
    /// the reconciler has now destroyed.
    async fn close_irrevocable(&self, host: &dyn Host, upstream_id: &str, now: i64) {
        let closed = {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            open.values_mut()
                .find(|t| {
                    t.credential.upstream_id == upstream_id
                        && t.credential.state == CredentialState::Irrevocable
                })
                .map(|t| {
                    t.credential.state = CredentialState::Revoked;
                    t.credential.finished_at = Some(now);
                    t.credential.clone()
                })
        };
        if let Some(credential) = closed
            && let Err(error) = host
                .store()
                .update_target_credential(&credential, host.instance())
                .await
        {
            tracing::warn!(%error, credential = %credential.id, "target credential's state not stored");
        }
    }
}

/// Which stored revocation reaches `credential`'s step token, if any, or
/// whether it has expired.
fn revoked_by(host: &dyn Host, c: &TargetCredential, now: DateTime<Utc>) -> Option<Trigger> {
    if c.expires_at <= now.timestamp() {
        return Some(Trigger::Expired);
    }
    let claims = AccessTokenClaims {
        iss: String::new(),
        sub: c.sub.clone(),
        aud: String::new(),
        client_id: c.client_id.clone(),
        exp: c.expires_at,
        iat: c.issued_at,
        nbf: c.issued_at,
        jti: c.jti.clone(),
        scope: String::new(),
        job: c.job.clone(),
        step: c.step.clone(),
        workflow: String::new(),
        cnf: None,
        elev: c.approval.clone(),
        status: None,
    };
    host.is_revoked(&claims, now).then_some(Trigger::Token)
}

/// The audit record of an event on `credential`.
pub fn credential_entry(now: DateTime<Utc>, event: EventKind, c: &TargetCredential) -> AuditEntry {
    let decision = match event {
        EventKind::TargetCredentialMinted
        | EventKind::TargetCredentialRevoked
        | EventKind::TargetCredentialReconciled => Decision::Allow,
        _ => Decision::Deny,
    };
    let mut entry = AuditEntry::new(timestamp(now), event, decision);
    entry.sub = Some(c.sub.clone());
    entry.client_id = Some(c.client_id.clone());
    entry.job = Some(c.job.clone());
    entry.step = Some(c.step.clone());
    entry.jti = Some(c.jti.clone());
    entry.exp = Some(c.expires_at);
    entry.approval_id = c.approval.clone();
    entry.target = Some(TargetAudit {
        name: c.target.clone(),
        kind: c.kind.clone(),
        server: Some(c.server.clone()),
        database: c.database.clone(),
        credential_id: Some(c.id.clone()),
        upstream_id: Some(c.upstream_id.clone()),
        planned: Vec::new(),
        effective: c.effective.clone(),
        expires_at: Some(c.expires_at),
        trigger: c.trigger.map(|t| t.as_str().to_owned()),
        attempts: (c.attempts > 0).then_some(c.attempts),
        outcome: None,
        terminated: None,
        grant: c.grant.clone(),
        exposure_secs: None,
        request_id: None,
        ..TargetAudit::default()
    });
    entry
}

fn new_id(host: &dyn Host) -> Result<String, MintError> {
    use base64::Engine as _;
    let mut bytes = [0u8; 12];
    ring::rand::SecureRandom::fill(host.rng(), &mut bytes)
        .map_err(|_| MintError::Internal("could not generate a credential id"))?;
    Ok(format!(
        "tc-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

fn random_u32(host: &dyn Host) -> u32 {
    let mut bytes = [0u8; 4];
    // Jitter, not secrecy: a failed CSPRNG only makes retries line up.
    let _ = ring::rand::SecureRandom::fill(host.rng(), &mut bytes);
    u32::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use stint_core::revocation::WorkloadStop;
    use stint_core::target::TargetKind;

    /// The broker, as far as the queue cares: an SQLite store in a
    /// temporary directory, the audit log in memory.
    struct FakeHost {
        store: stint_store::SqliteStore,
        _dir: tempfile::TempDir,
        rng: ring::rand::SystemRandom,
        audit: Mutex<Vec<AuditEntry>>,
    }

    impl FakeHost {
        fn new() -> Arc<Self> {
            let dir = tempfile::tempdir().unwrap();
            let store = stint_store::SqliteStore::open(&dir.path().join("stint.db")).unwrap();
            Arc::new(Self {
                store,
                _dir: dir,
                rng: ring::rand::SystemRandom::new(),
                audit: Mutex::new(Vec::new()),
            })
        }

        fn events(&self, event: EventKind) -> Vec<AuditEntry> {
            let audit = self.audit.lock().unwrap();
            audit.iter().filter(|e| e.event == event).cloned().collect()
        }
    }

    #[async_trait]
    impl Host for FakeHost {
        fn now(&self) -> DateTime<Utc> {
            Utc::now()
        }
        fn store(&self) -> &dyn Store {
            &self.store
        }
        fn rng(&self) -> &ring::rand::SystemRandom {
            &self.rng
        }
        fn is_revoked(&self, _claims: &AccessTokenClaims, _now: DateTime<Utc>) -> bool {
            false
        }
        async fn audit(&self, entry: AuditEntry) -> Result<(), String> {
            self.audit.lock().unwrap().push(entry);
            Ok(())
        }
        fn count(&self, _target: &str, _event: &str) {}
        fn instance(&self) -> &str {
            "test-broker"
        }
    }

    /// A target whose destructions never end (`stuck`), wait for `gate`
    /// (`gated`), or are recorded.
    struct FakeClient {
        server: String,
        stuck: bool,
        gated: bool,
        gate: tokio::sync::Notify,
        made: AtomicUsize,
        started: AtomicUsize,
        destroyed: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl TargetClient for FakeClient {
        fn kind(&self) -> &'static str {
            "postgres"
        }
        fn server(&self) -> String {
            self.server.clone()
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
            let n = self.made.fetch_add(1, Ordering::SeqCst);
            Ok(Planned {
                upstream_id: format!("stint_{}_{n}", self.server.replace([':', '.'], "")),
                secret: "secret".into(),
                privileges: Vec::new(),
                effective: scopes.iter().map(|s| s.as_str().to_owned()).collect(),
                request: Vec::new(),
                postgres: None,
                github: None,
            })
        }
        async fn create(&self, _planned: &Planned) -> Result<Created, CreateFailure> {
            Ok(Created::default())
        }
        async fn destroy(
            &self,
            upstream_id: &str,
            _sealed: Option<&[u8]>,
        ) -> Result<Destroyed, UpstreamFailure> {
            self.started.fetch_add(1, Ordering::SeqCst);
            if self.stuck {
                std::future::pending::<()>().await;
            }
            if self.gated {
                self.gate.notified().await;
            }
            self.destroyed.lock().unwrap().push(upstream_id.to_owned());
            Ok(Destroyed {
                existed: true,
                terminated: 0,
            })
        }
        async fn list(&self) -> Result<Option<Vec<String>>, UpstreamFailure> {
            Ok(None)
        }
    }

    fn policy(slow_host: &str, fast_host: &str) -> Policy {
        let target = |name: &str, host: &str| {
            format!(
                "[targets.{name}]\nkind = \"postgres\"\nhost = \"{host}\"\ndatabase = \"db\"\nadmin_user = \"admin\"\nadmin_password_env = \"UNUSED\"\n"
            )
        };
        let text = format!(
            "[workloads.etl]\nsecret_sha256 = \"{}\"\nworkflows = [\"sync\"]\n{}{}[workflows.sync]\nreview_by = 2099-01-01\n[workflows.sync.steps.load]\nscopes = [\"select:slow/s/t\", \"select:fast/s/t\"]\ntargets = [\"slow\", \"fast\"]\n",
            "0".repeat(64),
            target("slow", slow_host),
            target("fast", fast_host),
        );
        Policy::parse("p.toml", &text).unwrap()
    }

    fn claims(jti: &str, iat: i64) -> AccessTokenClaims {
        AccessTokenClaims {
            iss: "https://stint.example".into(),
            sub: "etl".into(),
            aud: "slow".into(),
            client_id: "etl".into(),
            exp: iat + 3600,
            iat,
            nbf: iat,
            jti: jti.into(),
            scope: String::new(),
            job: "job-1".into(),
            step: "load".into(),
            workflow: "sync".into(),
            cnf: None,
            elev: None,
            status: None,
        }
    }

    /// Clients by server, made once each, so that tests can look at them.
    type Clients = Arc<Mutex<HashMap<String, Arc<FakeClient>>>>;

    fn queue(clients: &Clients) -> Arc<TargetCredentials> {
        let clients = Arc::clone(clients);
        let connector: Connector = Arc::new(move |_marker, target| {
            let TargetKind::Postgres(pg) = target.kind() else {
                return Err("not a postgres target".into());
            };
            let server = format!("{}:{}", pg.host, pg.port);
            let client = Arc::clone(
                clients
                    .lock()
                    .unwrap()
                    .entry(server.clone())
                    .or_insert_with(|| {
                        Arc::new(FakeClient {
                            stuck: server.starts_with("stuck"),
                            gated: server.starts_with("gated"),
                            gate: tokio::sync::Notify::new(),
                            server,
                            made: AtomicUsize::new(0),
                            started: AtomicUsize::new(0),
                            destroyed: Mutex::new(Vec::new()),
                        })
                    }),
            );
            Ok(client as Arc<dyn TargetClient>)
        });
        Arc::new(TargetCredentials::new("https://stint.example", connector))
    }

    async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_stuck_target_holds_up_no_other_targets_revocations() {
        let host = FakeHost::new();
        let clients: Clients = Arc::default();
        let queue = queue(&clients);
        queue.install(&policy("stuck.example", "fast.example"));
        let now = Utc::now();
        let scope = |text: &str| vec![Scope::parse(text).unwrap()];
        // More revocations on the stuck target than run at once anywhere.
        for n in 0..(MAX_REVOKING + 4) {
            let claims = claims(&format!("slow-{n}"), now.timestamp() - 10);
            queue
                .mint(
                    host.as_ref(),
                    &claims,
                    "slow",
                    &scope("select:slow/s/t"),
                    now,
                )
                .await
                .unwrap();
        }
        let fast = claims("fast-1", now.timestamp() - 10);
        queue
            .mint(host.as_ref(), &fast, "fast", &scope("select:fast/s/t"), now)
            .await
            .unwrap();
        let (_closing_tx, closing) = tokio::sync::watch::channel(false);
        tokio::spawn(Arc::clone(&queue).run(host.clone() as Arc<dyn Host>, closing));
        // The stuck target's revocations first: the queue starts them.
        for n in 0..(MAX_REVOKING + 4) {
            let token = stint_core::revocation::TokenRevocation {
                jti: format!("slow-{n}"),
                sub: "etl".into(),
                job: "job-1".into(),
                expires_at: now.timestamp() + 3600,
                revoked_at: now.timestamp(),
            };
            queue.on_revocation(Cause::Token(&token), now.timestamp());
        }
        let slow_client = Arc::clone(clients.lock().unwrap().get("stuck.example:5432").unwrap());
        eventually("the stuck target's destructions to start", || {
            slow_client.started.load(Ordering::SeqCst) >= 1
        })
        .await;
        // Then the other target's.
        let stop = WorkloadStop {
            workload: "etl".into(),
            stopped_at: now.timestamp(),
            stopped_by: "op".into(),
            enabled_at: None,
        };
        queue.on_revocation(Cause::Workload(&stop), now.timestamp());
        let fast_client = Arc::clone(clients.lock().unwrap().get("fast.example:5432").unwrap());
        eventually("the fast target's login to be destroyed", || {
            fast_client.destroyed.lock().unwrap().len() == 1
        })
        .await;
        assert_eq!(host.events(EventKind::TargetCredentialRevoked).len(), 1);
        // And the stuck target holds no more than its share.
        assert_eq!(
            slow_client.started.load(Ordering::SeqCst),
            DEFAULT_DESTROYING_PER_TARGET
        );
    }

    #[tokio::test]
    async fn a_target_moved_to_another_server_still_destroys_what_it_made_on_the_old_one() {
        let host = FakeHost::new();
        let clients: Clients = Arc::default();
        let queue = queue(&clients);
        queue.install(&policy("old.example", "fast.example"));
        let now = Utc::now();
        let claims = claims("moved-1", now.timestamp() - 10);
        let minted = queue
            .mint(
                host.as_ref(),
                &claims,
                "slow",
                &[Scope::parse("select:slow/s/t").unwrap()],
                now,
            )
            .await
            .unwrap();
        // The policy now points the target at another server.
        queue.install(&policy("new.example", "fast.example"));
        let (_closing_tx, closing) = tokio::sync::watch::channel(false);
        tokio::spawn(Arc::clone(&queue).run(host.clone() as Arc<dyn Host>, closing));
        assert!(
            queue
                .revoke_one(&minted.credential.id, "moved-1", now.timestamp())
                .is_some()
        );
        let old = Arc::clone(clients.lock().unwrap().get("old.example:5432").unwrap());
        eventually("the login to be destroyed on the old server", || {
            old.destroyed.lock().unwrap().as_slice() == [minted.credential.upstream_id.clone()]
        })
        .await;
        let new = Arc::clone(clients.lock().unwrap().get("new.example:5432").unwrap());
        assert!(new.destroyed.lock().unwrap().is_empty());
        // Once nothing made there is left, the old client is let go.
        queue.install(&policy("new.example", "fast.example"));
        assert!(queue.retired.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_closing_queue_ends_only_after_the_revocations_it_started_are_recorded() {
        let host = FakeHost::new();
        let clients: Clients = Arc::default();
        let queue = queue(&clients);
        queue.install(&policy("gated.example", "fast.example"));
        let now = Utc::now();
        let claims = claims("closing-1", now.timestamp() - 10);
        let minted = queue
            .mint(
                host.as_ref(),
                &claims,
                "slow",
                &[Scope::parse("select:slow/s/t").unwrap()],
                now,
            )
            .await
            .unwrap();
        let (closing_tx, closing) = tokio::sync::watch::channel(false);
        let mut running =
            tokio::spawn(Arc::clone(&queue).run(host.clone() as Arc<dyn Host>, closing));
        assert!(
            queue
                .revoke_one(&minted.credential.id, "closing-1", now.timestamp())
                .is_some()
        );
        let client = Arc::clone(clients.lock().unwrap().get("gated.example:5432").unwrap());
        eventually("the destruction to start", || {
            client.started.load(Ordering::SeqCst) == 1
        })
        .await;
        closing_tx.send(true).unwrap();
        // The attempt cannot end while the target holds it, so neither can
        // the queue: the broker's last checkpoint would otherwise come
        // before this credential's record.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), &mut running)
                .await
                .is_err(),
            "the queue ended with a revocation in flight"
        );
        assert!(host.events(EventKind::TargetCredentialRevoked).is_empty());
        client.gate.notify_one();
        tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("the queue ends once its attempt has")
            .unwrap();
        assert_eq!(host.events(EventKind::TargetCredentialRevoked).len(), 1);
        assert_eq!(
            *client.destroyed.lock().unwrap(),
            vec![minted.credential.upstream_id.clone()]
        );
    }
}
