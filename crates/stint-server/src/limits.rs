//! What one source or one client may take from the broker: connections,
//! requests in flight, token requests a second, and audit records for
//! refusals.
//!
//! Every table here is bounded. The connection and in-flight tables hold an
//! entry only while it counts something, and each count is capped by a
//! global limit, so they cannot outgrow those limits. The rate limiters and
//! the refusal aggregator hold at most a configured number of keys; past
//! that, new keys share one budget (rate limits) or one counter (refusals),
//! so a flood of distinct sources costs a fixed amount of memory and, at
//! worst, slows the sources that are not yet tracked.
//!
//! Time is an input: every decision takes the `Instant` it is made at, so
//! the unit tests move time by hand.

use crate::audit::AuditLog;
use crate::config::{Limits, Rate};
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use stint_core::audit::{AuditEntry, Decision, EventKind};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How often a full rate-limit table may be swept for keys whose budget
/// has refilled (a sweep walks the whole table).
const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// Where a connection or request comes from, as far as limits go: an IPv4
/// address, or the /64 an IPv6 address is in (a single host is routinely
/// given a whole /64, so counting its addresses apart would count nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    V4(Ipv4Addr),
    /// The upper 64 bits of an IPv6 address.
    V6(u64),
    /// Every source that found its table full, together.
    Untracked,
}

impl Source {
    pub(crate) fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(v4),
                None => Self::V6(u64::try_from(u128::from(v6) >> 64).unwrap_or(u64::MAX)),
            },
        }
    }

    /// The source of an audit entry's `client_addr` (`ip:port`).
    fn of_entry(entry: &AuditEntry) -> Option<Self> {
        let addr: SocketAddr = entry.client_addr.as_deref()?.parse().ok()?;
        Some(Self::of(addr.ip()))
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::V4(v4) => write!(f, "{v4}"),
            Self::V6(prefix) => write!(f, "{}/64", Ipv6Addr::from(u128::from(*prefix) << 64)),
            Self::Untracked => f.write_str("untracked"),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A rate limit per key: GCRA (the generic cell rate algorithm, as the
/// `governor` crate implements it), which keeps one instant per key, the
/// "theoretical arrival time" of the next request. A key whose instant is
/// in the past has its whole burst again, so dropping it loses nothing:
/// that is what a sweep of a full table does.
pub(crate) struct RateLimiter<K> {
    /// Time between requests at the sustained rate.
    emission: Duration,
    /// How far ahead of now a key's arrival time may run: the burst.
    tolerance: Duration,
    capacity: usize,
    table: Mutex<RateTable<K>>,
}

struct RateTable<K> {
    arrivals: HashMap<K, Instant>,
    /// The budget every key shares once the table is full.
    overflow: Instant,
    next_sweep: Instant,
}

impl<K: Hash + Eq> RateLimiter<K> {
    pub(crate) fn new(rate: Rate, capacity: usize, now: Instant) -> Self {
        let emission = Duration::from_secs(1) / rate.per_second.max(1);
        Self {
            emission,
            tolerance: emission * rate.burst.max(1).saturating_sub(1),
            capacity,
            table: Mutex::new(RateTable {
                arrivals: HashMap::new(),
                overflow: now,
                next_sweep: now,
            }),
        }
    }

    /// Count one request of `key` at `now`, or say how long until one
    /// would be allowed.
    pub(crate) fn check(&self, key: K, now: Instant) -> Result<(), Duration> {
        let mut table = lock(&self.table);
        let table = &mut *table;
        if !table.arrivals.contains_key(&key) && table.arrivals.len() >= self.capacity {
            if now >= table.next_sweep {
                table.arrivals.retain(|_, arrival| *arrival > now);
                table.next_sweep = now + SWEEP_EVERY;
            }
            if table.arrivals.len() >= self.capacity {
                return admit(&mut table.overflow, now, self.emission, self.tolerance);
            }
        }
        let arrival = table.arrivals.entry(key).or_insert(now);
        admit(arrival, now, self.emission, self.tolerance)
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        lock(&self.table).arrivals.len()
    }
}

fn admit(
    arrival: &mut Instant,
    now: Instant,
    emission: Duration,
    tolerance: Duration,
) -> Result<(), Duration> {
    let next = (*arrival).max(now);
    let ahead = next.saturating_duration_since(now);
    if ahead > tolerance {
        return Err(ahead - tolerance);
    }
    *arrival = next + emission;
    Ok(())
}

/// Whole seconds for a `Retry-After` header: at least 1.
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// Requests in flight per key, each key at most `cap`. An entry lives only
/// while it counts a request, and callers take a global permit first, so
/// the table never holds more entries than there are global permits.
pub(crate) struct InFlight<K: Hash + Eq> {
    cap: usize,
    counts: Mutex<HashMap<K, usize>>,
}

/// One request counted against its key until dropped.
pub(crate) struct InFlightGuard<K: Hash + Eq> {
    table: Arc<InFlight<K>>,
    key: Option<K>,
}

impl<K: Hash + Eq + Clone> InFlight<K> {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap,
            counts: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn try_acquire(self: &Arc<Self>, key: K) -> Option<InFlightGuard<K>> {
        let mut counts = lock(&self.counts);
        let count = counts.entry(key.clone()).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(InFlightGuard {
            table: Arc::clone(self),
            key: Some(key),
        })
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        lock(&self.counts).len()
    }
}

impl<K: Hash + Eq> Drop for InFlightGuard<K> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let mut counts = lock(&self.table.counts);
        if let Some(count) = counts.get_mut(&key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&key);
            }
        }
    }
}

/// What a new connection may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Everything.
    General,
    /// Only the reserved routes (health, discovery, keys, revocation): it
    /// came in while the general connections were all taken.
    Reserved,
}

/// Why a connection was closed on accept (the metric's label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Every connection, reserve included, is taken.
    Full,
    /// The source holds `max_connections_per_source`.
    PerSource,
    /// Only reserve is left, and the source holds its share of it.
    ReserveShare,
}

impl Refusal {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Full => "max_connections",
            Self::PerSource => "max_connections_per_source",
            Self::ReserveShare => "reserve_share_per_source",
        }
    }
}

/// Open connections, in all and per source, with the reserve.
pub(crate) struct Connections {
    max: usize,
    general: usize,
    per_source: usize,
    /// How many reserved connections one source may hold: a sixteenth of
    /// the reserve (at least one), so that one source cannot take it all.
    reserve_per_source: usize,
    open: Mutex<OpenConnections>,
}

#[derive(Default)]
struct OpenConnections {
    total: usize,
    /// (all connections, reserved ones) per source.
    by_source: HashMap<Source, (usize, usize)>,
}

/// One open connection, counted until dropped.
pub(crate) struct ConnectionSlot {
    connections: Arc<Connections>,
    source: Source,
    admission: Admission,
}

impl ConnectionSlot {
    pub(crate) fn admission(&self) -> Admission {
        self.admission
    }
}

impl Connections {
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            max: limits.max_connections,
            general: limits
                .max_connections
                .saturating_sub(limits.reserved_connections),
            per_source: limits.max_connections_per_source,
            reserve_per_source: (limits.reserved_connections / 16).max(1),
            open: Mutex::new(OpenConnections::default()),
        }
    }

    /// Admit a connection from `source`, held to its share of the
    /// connections if `per_source` (not for a trusted proxy's).
    pub(crate) fn admit(
        self: &Arc<Self>,
        source: Source,
        per_source: bool,
    ) -> Result<ConnectionSlot, Refusal> {
        let mut open = lock(&self.open);
        if open.total >= self.max {
            return Err(Refusal::Full);
        }
        let general_full = open.total >= self.general;
        let (all, reserved) = open.by_source.get(&source).copied().unwrap_or((0, 0));
        if per_source && all >= self.per_source {
            return Err(Refusal::PerSource);
        }
        if per_source && general_full && reserved >= self.reserve_per_source {
            return Err(Refusal::ReserveShare);
        }
        let admission = if general_full {
            Admission::Reserved
        } else {
            Admission::General
        };
        open.total += 1;
        let counts = open.by_source.entry(source).or_insert((0, 0));
        counts.0 += 1;
        counts.1 += usize::from(admission == Admission::Reserved);
        Ok(ConnectionSlot {
            connections: Arc::clone(self),
            source,
            admission,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = lock(&self.connections.open);
        open.total = open.total.saturating_sub(1);
        if let Some(counts) = open.by_source.get_mut(&self.source) {
            counts.0 = counts.0.saturating_sub(1);
            if self.admission == Admission::Reserved {
                counts.1 = counts.1.saturating_sub(1);
            }
            if counts.0 == 0 {
                open.by_source.remove(&self.source);
            }
        }
    }
}

/// What refusals are counted together under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RefusalKey {
    source: Source,
    event: EventKind,
    reason: Option<String>,
    /// Set only for a client id the policy knows (the handlers never
    /// record an unknown one), so this adds no unbounded dimension.
    client_id: Option<String>,
}

/// Refusals of one kind from one source recorded in full in each
/// interval before the rest are counted: a few guesses keep their own
/// records (request ids, details); a flood does not.
pub(crate) const FULL_RECORDS_PER_INTERVAL: u32 = 8;

struct Counted {
    /// Recorded in full in this interval.
    full: u32,
    count: u64,
    /// The `time` of the first refusal counted since the last record.
    since: Option<String>,
    /// The last drain found nothing counted: the next one that does not
    /// either forgets the kind. (So a kind is remembered for at least a
    /// whole interval after its last refusal, however close to a drain
    /// its first came.)
    quiet: bool,
}

/// Audits repeated refusals of one kind from one source as counted records.
///
/// Only refusals of requests that did not authenticate (no workload, no
/// operator in the record) and rate-limit refusals qualify: a flood of
/// those would otherwise cost one record each. The first
/// [`FULL_RECORDS_PER_INTERVAL`] such refusals of a kind from a source in
/// an interval are recorded in full, as any decision is; the ones after
/// them are counted, and every `interval` each count that grew becomes one
/// record with `count` set. A kind that saw no refusal for a whole
/// interval is forgotten, so its next refusal is recorded in full again.
/// At most nine records per interval per kind and source, then, however
/// many refusals.
pub(crate) struct RefusalAggregator {
    capacity: usize,
    windows: Mutex<HashMap<RefusalKey, Counted>>,
}

impl RefusalAggregator {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `entry` must be written now (`Some`), or was counted.
    pub(crate) fn admit(&self, entry: AuditEntry) -> Option<AuditEntry> {
        let rate_limited = entry.reason.as_deref() == Some(RATE_LIMITED);
        let unauthenticated = entry.sub.is_none() && entry.operator.is_none();
        if entry.decision != Decision::Deny || !(unauthenticated || rate_limited) {
            return Some(entry);
        }
        // Not a request's refusal (or no address to count it under):
        // recorded as it is.
        let Some(source) = Source::of_entry(&entry) else {
            return Some(entry);
        };
        let mut key = RefusalKey {
            source,
            event: entry.event,
            reason: entry.reason.clone(),
            client_id: entry.client_id.clone(),
        };
        let mut windows = lock(&self.windows);
        if !windows.contains_key(&key) && windows.len() >= self.capacity {
            // Past capacity, new sources are counted together, and their
            // first refusal too: the bucket stands for many sources.
            key.source = Source::Untracked;
            let counted = windows.entry(key).or_insert(Counted {
                full: 0,
                count: 0,
                since: None,
                quiet: false,
            });
            counted.count += 1;
            counted.since.get_or_insert(entry.time);
            return None;
        }
        match windows.get_mut(&key) {
            Some(counted) if counted.full < FULL_RECORDS_PER_INTERVAL => {
                counted.full += 1;
                counted.quiet = false;
                Some(entry)
            }
            Some(counted) => {
                counted.count += 1;
                counted.since.get_or_insert(entry.time);
                None
            }
            None => {
                windows.insert(
                    key,
                    Counted {
                        full: 1,
                        count: 0,
                        since: None,
                        quiet: false,
                    },
                );
                Some(entry)
            }
        }
    }

    /// What was counted since the last call; kinds that stayed quiet since
    /// are forgotten.
    pub(crate) fn drain(&self) -> Vec<CountedRefusals> {
        let mut windows = lock(&self.windows);
        let mut drained = Vec::new();
        windows.retain(|key, counted| {
            let recorded = std::mem::take(&mut counted.full);
            if counted.count == 0 {
                let forget = counted.quiet && recorded == 0;
                counted.quiet = recorded == 0;
                return !forget;
            }
            counted.quiet = false;
            drained.push(CountedRefusals {
                key: key.clone(),
                count: counted.count,
                since: counted.since.take(),
            });
            counted.count = 0;
            true
        });
        drained
    }

    /// Put back counts whose record could not be written, so that the
    /// next drain tries again.
    pub(crate) fn restore(&self, unwritten: Vec<CountedRefusals>) {
        let mut windows = lock(&self.windows);
        for refusals in unwritten {
            let counted = windows.entry(refusals.key).or_insert(Counted {
                full: 0,
                count: 0,
                since: None,
                quiet: false,
            });
            counted.count += refusals.count;
            // The older time: the restored refusals came first.
            if refusals.since.is_some() {
                counted.since = refusals.since;
            }
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        lock(&self.windows).len()
    }
}

/// The reason label of a rate-limit refusal.
pub(crate) const RATE_LIMITED: &str = "rate_limited";

/// Refusals of one kind from one source, counted since the last record.
pub(crate) struct CountedRefusals {
    key: RefusalKey,
    count: u64,
    since: Option<String>,
}

impl CountedRefusals {
    /// The audit record of these refusals, made at `time`.
    pub(crate) fn record(&self, time: &str) -> AuditEntry {
        let mut entry = AuditEntry::new(time.to_owned(), self.key.event, Decision::Deny);
        entry.reason.clone_from(&self.key.reason);
        entry.client_id.clone_from(&self.key.client_id);
        entry.client_addr = Some(self.key.source.to_string());
        entry.count = Some(self.count);
        entry.detail = Some(format!(
            "{} more refusals like the last one recorded in full from this source, since {}: counted, not recorded one by one",
            self.count,
            self.since.as_deref().unwrap_or(time)
        ));
        entry
    }
}

/// Write one record for each kind of refusal counted since the last call
/// (at `time`), all in one group commit. What cannot be written is counted
/// again, for the next call.
pub(crate) async fn record_counted(refusals: &RefusalAggregator, audit: &AuditLog, time: &str) {
    let drained = refusals.drain();
    if drained.is_empty() {
        return;
    }
    let writes = drained
        .iter()
        .map(|counted| audit.record(counted.record(time)));
    let results = futures_util::future::join_all(writes).await;
    let unwritten: Vec<CountedRefusals> = drained
        .into_iter()
        .zip(results)
        .filter_map(|(counted, result)| result.is_err().then_some(counted))
        .collect();
    if !unwritten.is_empty() {
        tracing::error!(
            kinds = unwritten.len(),
            "counted refusals not written to the audit log; retrying at the next interval"
        );
        refusals.restore(unwritten);
    }
}

/// Every limit on requests, for the HTTP layer.
pub(crate) struct RequestLimits {
    /// Permits for revocation requests in flight (apart from
    /// `AppState::in_flight`, which minting shares with the rest).
    pub(crate) revocations: Arc<Semaphore>,
    /// Of each pool, what requests that did not authenticate by header
    /// may hold together: half, so that a flood of them from many sources
    /// still leaves authenticated clients room.
    unauthenticated: Arc<Semaphore>,
    unauthenticated_revocations: Arc<Semaphore>,
    per_client: Arc<InFlight<String>>,
    per_source: Arc<InFlight<Source>>,
    pub(crate) token_per_client: RateLimiter<String>,
    pub(crate) token_per_source: RateLimiter<Source>,
    pub(crate) refusals: RefusalAggregator,
    pub(crate) aggregation_interval: Duration,
}

/// Who a request's `Authorization` header authenticated, for accounting
/// only (handlers authenticate again, and decide).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Principal {
    Client(String),
    Unauthenticated(Source),
}

/// What a request in flight holds; released when dropped.
pub(crate) struct InFlightPermits {
    _pool: OwnedSemaphorePermit,
    _share: Option<OwnedSemaphorePermit>,
    _client: Option<InFlightGuard<String>>,
    _source: Option<InFlightGuard<Source>>,
}

/// Why a request was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shed {
    /// The pool (or the unauthenticated share of it) is exhausted: 503.
    Pool,
    /// This client or source holds its share: 429.
    Share,
}

impl RequestLimits {
    pub(crate) fn new(limits: &Limits, now: Instant) -> Self {
        Self {
            revocations: Arc::new(Semaphore::new(limits.max_revocations_in_flight)),
            unauthenticated: Arc::new(Semaphore::new(limits.max_in_flight.div_ceil(2))),
            unauthenticated_revocations: Arc::new(Semaphore::new(
                limits.max_revocations_in_flight.div_ceil(2),
            )),
            per_client: Arc::new(InFlight::new(limits.max_in_flight_per_client)),
            per_source: Arc::new(InFlight::new(
                limits.max_unauthenticated_in_flight_per_source,
            )),
            token_per_client: RateLimiter::new(
                limits.token_rate_per_client,
                limits.max_tracked_sources,
                now,
            ),
            token_per_source: RateLimiter::new(
                limits.token_rate_per_source,
                limits.max_tracked_sources,
                now,
            ),
            refusals: RefusalAggregator::new(limits.audit_aggregation_sources),
            aggregation_interval: limits.audit_aggregation_interval,
        }
    }

    /// Take what a request needs from `pool` (the general pool, or
    /// `revocations`), its share of it, and its principal's share.
    pub(crate) fn enter(
        &self,
        pool: &Arc<Semaphore>,
        revocation: bool,
        principal: Principal,
    ) -> Result<InFlightPermits, Shed> {
        let pool_permit = Arc::clone(pool)
            .try_acquire_owned()
            .map_err(|_| Shed::Pool)?;
        match principal {
            Principal::Client(client) => {
                let client = self.per_client.try_acquire(client).ok_or(Shed::Share)?;
                Ok(InFlightPermits {
                    _pool: pool_permit,
                    _share: None,
                    _client: Some(client),
                    _source: None,
                })
            }
            Principal::Unauthenticated(source) => {
                let share = if revocation {
                    &self.unauthenticated_revocations
                } else {
                    &self.unauthenticated
                };
                let share = Arc::clone(share)
                    .try_acquire_owned()
                    .map_err(|_| Shed::Pool)?;
                let source = self.per_source.try_acquire(source).ok_or(Shed::Share)?;
                Ok(InFlightPermits {
                    _pool: pool_permit,
                    _share: Some(share),
                    _client: None,
                    _source: Some(source),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_second: u32, burst: u32) -> Rate {
        Rate { per_second, burst }
    }

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let t0 = Instant::now();
        let limiter = RateLimiter::new(rate(10, 3), 16, t0);
        for _ in 0..3 {
            assert_eq!(limiter.check("a", t0), Ok(()));
        }
        let wait = limiter.check("a", t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        assert_eq!(retry_after_secs(wait), 1);
        // Another key has its own budget.
        assert_eq!(limiter.check("b", t0), Ok(()));
        // One more every 100 ms.
        assert!(limiter.check("a", t0 + Duration::from_millis(99)).is_err());
        assert_eq!(limiter.check("a", t0 + Duration::from_millis(100)), Ok(()));
        assert!(limiter.check("a", t0 + Duration::from_millis(150)).is_err());
        // After a quiet spell, the whole burst again, no more.
        let later = t0 + Duration::from_secs(10);
        for _ in 0..3 {
            assert_eq!(limiter.check("a", later), Ok(()));
        }
        assert!(limiter.check("a", later).is_err());
    }

    #[test]
    fn a_flood_of_distinct_keys_stays_within_the_table() {
        let t0 = Instant::now();
        let limiter = RateLimiter::new(rate(1, 1), 64, t0);
        let mut allowed = 0;
        for key in 0..100_000u32 {
            allowed += usize::from(limiter.check(key, t0).is_ok());
        }
        assert_eq!(limiter.tracked(), 64);
        // 64 tracked keys, then one shared budget of one request.
        assert_eq!(allowed, 65);
        // Once their budgets refill, the stale keys are swept out and new
        // ones tracked again.
        let later = t0 + Duration::from_secs(5);
        assert_eq!(limiter.check(1_000_000, later), Ok(()));
        assert_eq!(limiter.tracked(), 1);
    }

    #[test]
    fn ipv6_sources_are_counted_by_slash_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Source::of(a), Source::of(b));
        assert_ne!(Source::of(a), Source::of(c));
        assert_eq!(Source::of(a).to_string(), "2001:db8:1:2::/64");
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(Source::of(mapped).to_string(), "192.0.2.7");
    }

    #[test]
    fn in_flight_per_key_is_capped_and_released() {
        let table = Arc::new(InFlight::new(2));
        let first = table.try_acquire("a").unwrap();
        let _second = table.try_acquire("a").unwrap();
        assert!(table.try_acquire("a").is_none());
        let _other = table.try_acquire("b").unwrap();
        drop(first);
        assert!(table.try_acquire("a").is_some());
        drop(_other);
        drop(_second);
        assert_eq!(table.tracked(), 0, "no entry outlives its requests");
    }

    fn limits(max: usize, reserved: usize, per_source: usize) -> Limits {
        Limits {
            max_connections: max,
            reserved_connections: reserved,
            max_connections_per_source: per_source,
            ..Limits::default()
        }
    }

    #[test]
    fn a_trusted_proxy_is_held_to_the_total_only() {
        let connections = Arc::new(Connections::new(&limits(40, 16, 12)));
        let proxy = Source::V4(Ipv4Addr::new(10, 0, 0, 1));
        let held: Vec<_> = (0..40)
            .map(|_| connections.admit(proxy, false).unwrap())
            .collect();
        assert_eq!(connections.admit(proxy, false).err(), Some(Refusal::Full));
        drop(held);
        assert!(connections.admit(proxy, true).is_ok());
    }

    #[test]
    fn connections_per_source_and_the_reserve() {
        let connections = Arc::new(Connections::new(&limits(40, 16, 12)));
        let source = |n: u8| Source::V4(Ipv4Addr::new(10, 0, 0, n));
        let mut held = Vec::new();
        for _ in 0..12 {
            held.push(connections.admit(source(1), true).unwrap());
        }
        assert_eq!(
            connections.admit(source(1), true).err(),
            Some(Refusal::PerSource)
        );
        for _ in 0..12 {
            held.push(connections.admit(source(2), true).unwrap());
        }
        // 24 of 40: the general part is full; the reserve is next, one
        // connection a source (16 / 16).
        let reserved = connections.admit(source(3), true).unwrap();
        assert_eq!(reserved.admission(), Admission::Reserved);
        assert_eq!(
            connections.admit(source(3), true).err(),
            Some(Refusal::ReserveShare)
        );
        for n in 4..19 {
            held.push(connections.admit(source(n), true).unwrap());
        }
        assert_eq!(
            connections.admit(source(99), true).err(),
            Some(Refusal::Full)
        );
        drop(reserved);
        let again = connections.admit(source(3), true).unwrap();
        assert_eq!(again.admission(), Admission::Reserved);
        drop(again);
        held.clear();
        assert_eq!(
            connections.admit(source(1), true).unwrap().admission(),
            Admission::General
        );
        assert!(lock(&connections.open).by_source.len() <= 1);
    }

    fn refusal(addr: &str, time: &str) -> AuditEntry {
        let mut entry = AuditEntry::new(time.into(), EventKind::TokenDenied, Decision::Deny);
        entry.reason = Some("invalid_client".into());
        entry.client_addr = Some(addr.into());
        entry
    }

    #[test]
    fn repeated_refusals_become_one_counted_record() {
        let aggregator = RefusalAggregator::new(8);
        for port in 0..FULL_RECORDS_PER_INTERVAL {
            let first = aggregator.admit(refusal(&format!("192.0.2.1:{port}"), "t0"));
            assert!(first.is_some(), "the first refusals are recorded in full");
        }
        for port in 1001..1101 {
            assert!(
                aggregator
                    .admit(refusal(&format!("192.0.2.1:{port}"), "t1"))
                    .is_none()
            );
        }
        // Another source is recorded apart.
        assert!(aggregator.admit(refusal("192.0.2.2:1000", "t1")).is_some());
        // An authenticated refusal is never counted away.
        let mut authenticated = refusal("192.0.2.1:1000", "t1");
        authenticated.sub = Some("demo-job".into());
        assert!(aggregator.admit(authenticated).is_some());
        // Nor a request's refusal that has no address (not a request).
        let mut internal = refusal("192.0.2.1:1000", "t1");
        internal.client_addr = None;
        assert!(aggregator.admit(internal).is_some());

        let drained = aggregator.drain();
        assert_eq!(drained.len(), 1);
        let record = drained[0].record("t2");
        assert_eq!(record.count, Some(100));
        assert_eq!(record.client_addr.as_deref(), Some("192.0.2.1"));
        assert_eq!(record.reason.as_deref(), Some("invalid_client"));
        assert_eq!(record.event, EventKind::TokenDenied);
        assert!(record.detail.unwrap().contains("since t1"));
        // A failed write puts the count back.
        aggregator.restore(drained);
        let again = aggregator.drain();
        assert_eq!(again[0].count, 100);
        assert_eq!(again[0].since.as_deref(), Some("t1"));
        // A new interval: the first ones in full again, then counted.
        for _ in 0..FULL_RECORDS_PER_INTERVAL {
            assert!(aggregator.admit(refusal("192.0.2.1:1", "t4")).is_some());
        }
        assert!(aggregator.admit(refusal("192.0.2.1:1", "t4")).is_none());
        assert_eq!(aggregator.drain()[0].count, 1);
        // Quiet for a whole interval: forgotten.
        assert!(aggregator.drain().is_empty());
        assert_eq!(aggregator.tracked(), 1);
        assert!(aggregator.drain().is_empty());
        assert_eq!(aggregator.tracked(), 0);
        assert!(aggregator.admit(refusal("192.0.2.1:1", "t5")).is_some());
    }

    #[test]
    fn refusals_from_too_many_sources_are_counted_together() {
        let aggregator = RefusalAggregator::new(4);
        let mut written = 0;
        for n in 0..10_000u32 {
            let addr = format!("10.{}.{}.{}:1", n >> 16, (n >> 8) & 255, n & 255);
            written += usize::from(aggregator.admit(refusal(&addr, "t")).is_some());
        }
        assert_eq!(written, 4, "only the tracked sources' first refusals");
        assert!(aggregator.tracked() <= 5);
        let records: Vec<AuditEntry> = aggregator.drain().iter().map(|c| c.record("t")).collect();
        let counted: u64 = records.iter().filter_map(|r| r.count).sum();
        assert_eq!(counted as usize + written, 10_000, "every refusal counted");
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].client_addr.as_deref(), Some("untracked"));
    }
}
