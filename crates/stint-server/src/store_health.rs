//! Failing closed when the store is out of reach.
//!
//! A broker that cannot reach its store cannot make a revocation durable,
//! and with a shared store it would not learn of the revocations other
//! replicas make. So the store is checked all the time, and once it has
//! failed every check for longer than `--store-fail-closed-after`, the
//! broker stops vouching for anything: the token endpoint answers 503,
//! introspection says every token is inactive, the revocation feed's
//! streams end (verifiers then fail closed or poll the status lists) and
//! new ones are refused, and `/readyz` is 503. The first check that
//! succeeds heals it. So does the change feed: a broker that has not
//! applied it to its end within the bound (the applier's own reads fail,
//! or a change cannot be read) fails closed the same way.

use crate::state::AppState;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the store is checked.
const CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// Check the store until the broker shuts down, keeping
/// [`AppState::store_reachable`] up to date.
pub(crate) async fn run(state: Arc<AppState>, bound: Duration) {
    let mut closing = state.closing.clone();
    let mut last_ok = Instant::now();
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // A check that hangs is a failed one once the bound has passed:
        // the state is judged on every tick, not only when it returns.
        let check = tokio::time::timeout(bound, state.store.check());
        tokio::pin!(check);
        let ok = loop {
            tokio::select! {
                result = &mut check => break matches!(result, Ok(Ok(()))),
                _ = tick.tick() => judge(&state, last_ok, bound),
                _ = closing.changed() => return,
            }
        };
        if ok {
            last_ok = Instant::now();
        }
        judge(&state, last_ok, bound);
        tokio::select! {
            _ = tick.tick() => {}
            _ = closing.changed() => return,
        }
    }
}

fn judge(state: &AppState, last_ok: Instant, bound: Duration) {
    // A store that answers but whose change feed this broker cannot apply
    // (a change it cannot read, a store that went back) is as good as
    // none: other brokers' revocations do not reach this one.
    let reachable = last_ok.elapsed() <= bound && state.changes.current(bound);
    let was = state.store_reachable.send_replace(reachable);
    if was != reachable {
        state.metrics.store_reachable(reachable);
        if reachable {
            tracing::info!("the store answers again: minting, introspection and the feed resume");
        } else {
            tracing::error!(
                bound_secs = bound.as_secs_f64(),
                "the store (or its change feed) has not answered within the bound: failing closed (no mint, every token inactive, feed streams ended) until it does"
            );
        }
    }
}
