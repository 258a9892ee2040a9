//! The change feed at the broker: every broker sharing a store applies
//! every change, in sequence order, to what it keeps in memory (the
//! revocation set, the status lists, stopped workloads, approval requests)
//! and publishes the revocations on its own revocation feed under the
//! change's sequence number. The hot path keeps reading memory.
//!
//! Changes arrive three ways, and all three end in the same catch-up read
//! by sequence ([`Store::changes_since`]), so none is missed and none is
//! applied twice:
//! - this broker's own writes hand their change over
//!   ([`Changes::committed`]); the next one in sequence needs no read;
//! - the store's notifications ([`Store::watch_changes`], PostgreSQL's
//!   `NOTIFY`) wake the applier; they are a wake-up only, since a listener
//!   that was disconnected misses them;
//! - a poll every [`POLL`] catches whatever the other two missed.
//!
//! Applying a change is idempotent (sets, and statuses that are set once):
//! a write's own broker puts a revocation in its set before the change is
//! applied, and at start-up the state loaded may already hold changes after
//! the position read just before it.

use crate::state::{AppState, Revocation};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use stint_store::{Change, ChangePosition, ChangeRecord};
use tokio::sync::{Notify, watch};

/// How often the applier reads the store for changes, whatever woke it.
pub(crate) const POLL: Duration = Duration::from_millis(250);
/// Changes read in one go.
const BATCH: usize = 512;
/// Changes of this broker's own waiting to be applied, at most (beyond,
/// they are read from the store like any other).
const MAX_OFFERED: usize = 4_096;
/// How long to wait before listening again after the store's
/// notifications failed: soon at first (a restarted server is back in
/// well under a second, and until then changes wait for the poll), then
/// doubling up to [`LISTEN_RETRY_MAX`] while the server stays away.
const LISTEN_RETRY_MIN: Duration = Duration::from_millis(50);
const LISTEN_RETRY_MAX: Duration = Duration::from_secs(1);
/// A listening session that lasted this long was a working one: the next
/// failure starts again from [`LISTEN_RETRY_MIN`].
const LISTEN_SETTLED: Duration = Duration::from_secs(10);

/// Where this broker stands in the change feed.
pub(crate) struct Changes {
    /// The last change applied here.
    applied: watch::Sender<u64>,
    /// Wakes the applier.
    wake: Notify,
    /// Changes this broker committed, by sequence number, not yet applied.
    offered: Mutex<BTreeMap<u64, Change>>,
    /// The store's epoch when this broker started.
    epoch: String,
    /// When the applier last read the feed to its end.
    caught_up: Mutex<Instant>,
    /// The store went back (restored from a backup, or a failover lost
    /// commits): what this broker holds is no longer what the store holds.
    /// It fails closed until it is restarted.
    diverged: AtomicBool,
}

impl Changes {
    /// At `position`: what the store held then is loaded.
    pub(crate) fn new(position: ChangePosition) -> Self {
        Self {
            applied: watch::Sender::new(position.seq),
            wake: Notify::new(),
            offered: Mutex::new(BTreeMap::new()),
            epoch: position.epoch,
            caught_up: Mutex::new(Instant::now()),
            diverged: AtomicBool::new(false),
        }
    }

    /// Whether this broker has applied the feed within `bound`: if not, it
    /// may not know of revocations other brokers made, and fails closed
    /// ([`crate::store_health`]).
    pub(crate) fn current(&self, bound: Duration) -> bool {
        !self.diverged.load(Ordering::Relaxed)
            && self
                .caught_up
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed()
                <= bound
    }

    /// The last change applied here.
    pub(crate) fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// This broker committed `change` as `seq`: have it applied, and wait
    /// until it is (and so published on the feed), at most `bound`.
    /// Returns whether it was applied within the bound; if not, it will be
    /// as soon as the store can be read.
    pub(crate) async fn committed(&self, seq: u64, change: Change, bound: Duration) -> bool {
        self.offer(seq, change);
        let mut applied = self.applied.subscribe();
        tokio::time::timeout(bound, applied.wait_for(|at| *at >= seq))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Hand over a committed change without waiting for it.
    pub(crate) fn offer(&self, seq: u64, change: Change) {
        {
            let mut offered = self.offered.lock().unwrap_or_else(|p| p.into_inner());
            if offered.len() < MAX_OFFERED {
                offered.insert(seq, change);
            }
        }
        self.wake.notify_one();
    }

    /// Have the applier read the store now.
    pub(crate) fn wake_up(&self) {
        self.wake.notify_one();
    }

    /// The offered change `seq`, if it is here; those before it go.
    fn take_offered(&self, seq: u64) -> Option<Change> {
        let mut offered = self.offered.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(entry) = offered.first_entry() {
            if *entry.key() >= seq {
                break;
            }
            entry.remove();
        }
        offered.remove(&seq)
    }
}

/// Apply the change feed until the broker closes.
pub(crate) async fn run(state: std::sync::Arc<AppState>, mut closing: watch::Receiver<bool>) {
    let listener = {
        let state = std::sync::Arc::clone(&state);
        let mut closing = closing.clone();
        async move {
            let mut retry = LISTEN_RETRY_MIN;
            loop {
                let began = Instant::now();
                tokio::select! {
                    result = state.store.watch_changes(&state.changes.wake) => {
                        if let Err(error) = result {
                            tracing::warn!(%error, "store notifications stopped; polling every {POLL:?} until they are back");
                        }
                    }
                    _ = closing.wait_for(|c| *c) => return,
                }
                if began.elapsed() >= LISTEN_SETTLED {
                    retry = LISTEN_RETRY_MIN;
                }
                tokio::select! {
                    () = tokio::time::sleep(retry) => {}
                    _ = closing.wait_for(|c| *c) => return,
                }
                retry = (retry * 2).min(LISTEN_RETRY_MAX);
            }
        }
    };
    let listener = tokio::spawn(listener);
    let mut failing: Option<Instant> = None;
    loop {
        tokio::select! {
            () = state.changes.wake.notified() => {}
            () = tokio::time::sleep(POLL) => {}
            _ = closing.wait_for(|c| *c) => break,
        }
        match catch_up(&state).await {
            Ok(()) => {
                if failing.is_some() {
                    tracing::info!("applying the change feed again");
                }
                failing = None;
                *state
                    .changes
                    .caught_up
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Instant::now();
            }
            Err(error) => {
                // Said again every half minute: a change that cannot be
                // read (or applied) keeps this broker failing closed.
                if failing.is_none_or(|since| since.elapsed() >= Duration::from_secs(30)) {
                    tracing::error!(%error, applied = state.changes.applied(), "cannot apply the change feed: failing closed after the bound until it can");
                    failing = Some(Instant::now());
                }
            }
        }
    }
    listener.abort();
}

/// Apply what was committed between the position read at start-up and
/// now (the keys this start created, say), before the broker serves: its
/// first answers are then as current as the store.
pub(crate) async fn catch_up_at_start(state: &AppState) -> Result<(), stint_store::StoreError> {
    catch_up(state).await.map_err(|error| match error {
        CatchUpError::Store(error) => error,
        diverged @ CatchUpError::Diverged { .. } => stint_store::StoreError::Backend {
            operation: "apply the change feed",
            message: diverged.to_string(),
        },
    })
}

/// Why the feed cannot be applied.
#[derive(Debug, thiserror::Error)]
enum CatchUpError {
    #[error(transparent)]
    Store(#[from] stint_store::StoreError),
    #[error(
        "the store's change feed went back (epoch {epoch}, head {head}, this broker applied up to {applied} of epoch {ours}): the store was restored or lost commits; restart this broker"
    )]
    Diverged {
        epoch: String,
        head: u64,
        applied: u64,
        ours: String,
    },
}

/// Apply every change after the last applied one, in sequence: a change
/// missing from the sequence (purged, or deleted) reloads everything.
async fn catch_up(state: &AppState) -> Result<(), CatchUpError> {
    if state.changes.diverged.load(Ordering::Relaxed) {
        return Err(diverged(state, None).await);
    }
    'read: loop {
        let applied = state.changes.applied();
        let batch = match state.changes.take_offered(applied + 1) {
            Some(change) => vec![ChangeRecord {
                seq: applied + 1,
                change,
            }],
            None => state.store.changes_since(applied, BATCH).await?,
        };
        let full = batch.len() == BATCH;
        if batch.is_empty() {
            check_head(state, applied).await?;
            return Ok(());
        }
        for record in batch {
            let expected = state.changes.applied() + 1;
            if record.seq != expected {
                // Purged (or deleted) before this broker read them.
                restart(state, record.seq - 1).await?;
                continue 'read;
            }
            apply(state, record).await;
        }
        // On while there is more: a full batch, or this broker's next
        // change at hand. (An offered change the store does not show yet
        // is read on the next wake-up or poll, not spun for.)
        let next = state.changes.applied() + 1;
        if !full && !state.changes.has_offered(next) {
            return Ok(());
        }
    }
}

/// Nothing after `applied` was read: check that the store agrees there is
/// nothing more (every change after it may have been purged), and that it
/// is still the store this broker started on.
async fn check_head(state: &AppState, applied: u64) -> Result<(), CatchUpError> {
    let head = state.store.change_position().await?;
    if head.epoch != state.changes.epoch || head.seq < applied {
        return Err(diverged(state, Some(head)).await);
    }
    if head.seq > applied && state.store.changes_since(applied, 1).await?.is_empty() {
        // The head is read after the empty read, and a change is visible
        // with the head that counts it: they were purged.
        restart(state, head.seq).await?;
    }
    Ok(())
}

async fn diverged(state: &AppState, head: Option<ChangePosition>) -> CatchUpError {
    state.changes.diverged.store(true, Ordering::Relaxed);
    let head = match head {
        Some(head) => head,
        None => state
            .store
            .change_position()
            .await
            .unwrap_or_else(|_| ChangePosition {
                epoch: String::from("?"),
                seq: 0,
            }),
    };
    CatchUpError::Diverged {
        epoch: head.epoch,
        head: head.seq,
        applied: state.changes.applied(),
        ours: state.changes.epoch.clone(),
    }
}

impl Changes {
    fn has_offered(&self, seq: u64) -> bool {
        self.offered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&seq)
    }
}

/// Apply one change (the next in sequence) and move on past it.
async fn apply(state: &AppState, record: ChangeRecord) {
    let ChangeRecord { seq, change } = record;
    match change {
        Change::Token { revocation, status } => {
            state.enforce(seq, Revocation::Token(&revocation, status.as_ref()));
        }
        Change::Job { revocation } => state.enforce(seq, Revocation::Job(&revocation)),
        Change::Step { revocation } => state.enforce(seq, Revocation::Step(&revocation)),
        Change::WorkloadStopped { stop } => {
            state
                .stopped
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(stop.workload.clone());
            state.enforce(seq, Revocation::Workload(&stop));
        }
        Change::WorkloadEnabled { workload, .. } => {
            state
                .stopped
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&workload);
            state.feed.skip(seq);
        }
        Change::Approval { request, revision } => {
            let revoked = matches!(request.state, stint_core::approval::State::Revoked { .. });
            let (id, until) = (request.id.clone(), request.latest_token_expiry());
            state.approvals.adopt(*request, revision).await;
            if revoked {
                state.enforce(seq, Revocation::Approval { id: &id, until });
            } else {
                state.feed.skip(seq);
            }
        }
        // The store holds the keys: load them again (a staged key is
        // published, an activated one signs, on every broker alike).
        Change::SigningKeys => {
            if let Err(error) = state
                .keys
                .reload(state.store.as_ref(), state.clock.now(), &state.rng)
                .await
            {
                tracing::error!(%error, "could not load the signing keys after a change; loading again within a minute");
            }
            state.feed.skip(seq);
        }
    }
    state.changes.applied.send_replace(seq);
}

/// The changes before `seq + 1` are gone from the store: load what is in
/// force again, and start the feed over after `seq` (its streams end; a
/// client from before is told to resync).
async fn restart(state: &AppState, seq: u64) -> Result<(), stint_store::StoreError> {
    tracing::error!(
        applied = state.changes.applied(),
        next = seq + 1,
        "changes this broker had not applied were purged from the store (it could not read it for longer than they are kept): loading everything again"
    );
    let now = state.clock.now();
    let live = state
        .store
        .live_revocations(stint_core::revocation::purge_cutoff(now))
        .await?;
    let stops = state.store.workload_stops(now.timestamp()).await?;
    let approvals = state.store.approvals(now.timestamp()).await?;
    for token in &live.tokens {
        state.revocations.insert_token(token);
    }
    for job in &live.jobs {
        state.revocations.insert_job(job);
    }
    for step in &live.steps {
        state.revocations.insert_step(step);
    }
    {
        let mut stopped = state.stopped.write().unwrap_or_else(|p| p.into_inner());
        stopped.clear();
        for stop in &stops {
            state.revocations.insert_workload(stop);
            if stop.enabled_at.is_none() {
                stopped.insert(stop.workload.clone());
            }
        }
    }
    for stored in approvals {
        if let stint_core::approval::State::Revoked { .. } = stored.request.state {
            state
                .revocations
                .insert_approval(&stored.request.id, stored.request.latest_token_expiry());
        }
        state.approvals.adopt(stored.request, stored.revision).await;
    }
    state.status_lists.reapply(&state.revocations.entries(now));
    if let Err(error) = state
        .keys
        .reload(state.store.as_ref(), now, &state.rng)
        .await
    {
        tracing::error!(%error, "could not load the signing keys again");
    }
    state.feed.restart(seq);
    state.changes.applied.send_replace(seq);
    Ok(())
}
