//! Prometheus metrics.

use crate::audit::AuditObserver;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use stint_core::policy::Policy;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkflowLabel {
    workflow: String,
}

/// Latency buckets, in seconds: 250 µs to 5 s.
const LATENCY_BUCKETS: [f64; 14] = [
    0.00025, 0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

/// Every metric the broker exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    minted: Counter,
    denied: Family<ReasonLabel, Counter>,
    revocations: Family<KindLabel, Counter>,
    revocations_denied: Family<ReasonLabel, Counter>,
    latency: Family<RouteLabels, Histogram>,
    policy_reloads: Family<ResultLabel, Counter>,
    review_overdue: Family<WorkflowLabel, Gauge>,
    revocations_in_memory: Gauge,
    audit_records: Counter,
    audit_failures: Counter,
    audit_batch: Histogram,
    shed: Counter,
    key_rotations: Counter,
    limited: Family<LimitLabel, Counter>,
    connections_refused: Family<LimitLabel, Counter>,
    refusals_counted: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: &'static str,
}

impl Metrics {
    /// Register every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("stint");
        let minted = Counter::default();
        registry.register("tokens_minted", "Tokens minted", minted.clone());
        let denied = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "tokens_denied",
            "Token requests denied, by reason",
            denied.clone(),
        );
        let revocations = Family::<KindLabel, Counter>::default();
        registry.register(
            "revocations",
            "Revocations acknowledged, by kind (token, job)",
            revocations.clone(),
        );
        let revocations_denied = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "revocations_denied",
            "Revocation requests that revoked nothing, by reason",
            revocations_denied.clone(),
        );
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(LATENCY_BUCKETS)) as fn() -> Histogram,
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            latency.clone(),
        );
        let policy_reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "policy_loads",
            "Policy loads, by result (loaded, refused)",
            policy_reloads.clone(),
        );
        let review_overdue = Family::<WorkflowLabel, Gauge>::default();
        registry.register(
            "policy_workflow_review_overdue",
            "1 for each workflow past its review_by date",
            review_overdue.clone(),
        );
        let revocations_in_memory = Gauge::default();
        registry.register(
            "revocations_in_memory",
            "Revoked, unexpired tokens and jobs held in memory",
            revocations_in_memory.clone(),
        );
        let audit_records = Counter::default();
        registry.register(
            "audit_records",
            "Audit records made durable",
            audit_records.clone(),
        );
        let audit_failures = Counter::default();
        registry.register(
            "audit_write_failures",
            "Audit records that could not be written",
            audit_failures.clone(),
        );
        let audit_batch =
            Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0]);
        registry.register(
            "audit_batch_records",
            "Records per audit fsync (group commit)",
            audit_batch.clone(),
        );
        let shed = Counter::default();
        registry.register(
            "requests_shed",
            "Requests refused with 503 because too many were in flight",
            shed.clone(),
        );
        let key_rotations = Counter::default();
        registry.register(
            "signing_key_rotations",
            "Signing key rotations",
            key_rotations.clone(),
        );
        let limited = Family::<LimitLabel, Counter>::default();
        registry.register(
            "requests_limited",
            "Requests refused by a per-client or per-source limit (429) or the connection reserve (503), by limit",
            limited.clone(),
        );
        let connections_refused = Family::<LimitLabel, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections closed on accept, by the limit they hit",
            connections_refused.clone(),
        );
        let refusals_counted = Counter::default();
        registry.register(
            "audit_refusals_counted",
            "Refusals of unauthenticated requests audited in a counted record instead of one each",
            refusals_counted.clone(),
        );
        Self {
            registry,
            minted,
            denied,
            revocations,
            revocations_denied,
            latency,
            policy_reloads,
            review_overdue,
            revocations_in_memory,
            audit_records,
            audit_failures,
            audit_batch,
            shed,
            key_rotations,
            limited,
            connections_refused,
            refusals_counted,
        }
    }

    pub(crate) fn limited(&self, limit: &'static str) {
        self.limited.get_or_create(&LimitLabel { limit }).inc();
    }

    pub(crate) fn connection_refused(&self, limit: &'static str) {
        self.connections_refused
            .get_or_create(&LimitLabel { limit })
            .inc();
    }

    pub(crate) fn refusal_counted(&self) {
        self.refusals_counted.inc();
    }

    pub(crate) fn key_rotated(&self) {
        self.key_rotations.inc();
    }

    pub(crate) fn shed(&self) {
        self.shed.inc();
    }

    pub(crate) fn minted(&self) {
        self.minted.inc();
    }

    pub(crate) fn denied(&self, reason: &str) {
        self.denied
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub(crate) fn revoked(&self, kind: &'static str) {
        self.revocations.get_or_create(&KindLabel { kind }).inc();
    }

    pub(crate) fn revocation_denied(&self, reason: &str) {
        self.revocations_denied
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub(crate) fn policy_load(&self, loaded: bool) {
        let result = if loaded { "loaded" } else { "refused" };
        self.policy_reloads
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Observe one request. The labels are static strings so that the hot
    /// path allocates nothing here.
    pub(crate) fn observe_request(
        &self,
        route: &'static str,
        method: &'static str,
        status: u16,
        seconds: f64,
    ) {
        self.latency
            .get_or_create(&RouteLabels {
                route,
                method,
                status,
            })
            .observe(seconds);
    }

    /// Render the metrics, after refreshing the gauges that are computed at
    /// scrape time.
    pub(crate) fn render(
        &self,
        policy: &Policy,
        today: chrono::NaiveDate,
        revocations: usize,
    ) -> String {
        self.review_overdue.clear();
        for workflow in policy.workflows() {
            self.review_overdue
                .get_or_create(&WorkflowLabel {
                    workflow: workflow.name().to_owned(),
                })
                .set(i64::from(workflow.is_overdue(today)));
        }
        self.revocations_in_memory
            .set(i64::try_from(revocations).unwrap_or(i64::MAX));
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AuditObserver for Metrics {
    fn committed(&self, records: usize) {
        self.audit_records.inc_by(records as u64);
        self.audit_batch.observe(records as f64);
    }

    fn failed(&self, records: usize) {
        self.audit_failures.inc_by(records as u64);
    }
}
