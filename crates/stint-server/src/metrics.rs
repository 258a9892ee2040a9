//! Prometheus metrics: the broker's own, the standard process metrics, and
//! the two exposition formats (Prometheus text 0.0.4 and OpenMetrics 1.0),
//! chosen by the scraper's `Accept`.
//!
//! Every label value is one of a fixed set chosen here (a route, a reason,
//! an outcome), never a value a client sent. The one exception is the
//! policy's own workflow names, which only an authorized scraper sees (see
//! [`Metrics::authorize`] and docs/operations.md).

use crate::audit::AuditObserver;
use crate::webhook::DeliveryCounts;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use stint_core::policy::Policy;
use thiserror::Error;

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabel {
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MeteredLabel {
    metered: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabel {
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// The exposition format a scraper asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// The Prometheus text format, version 0.0.4: what a scraper that
    /// states no preference gets (as Prometheus' own client libraries do).
    Text,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
}

impl Format {
    /// Choose by the `Accept` header: the acceptable media range with the
    /// highest `q` wins (the first, on a tie); OpenMetrics only when it is
    /// asked for (`application/openmetrics-text`, version 1.0.0, 0.0.1 or
    /// none); anything else, no header or nothing acceptable, is the text
    /// format.
    pub(crate) fn negotiate(accept: Option<&str>) -> Self {
        let Some(accept) = accept else {
            return Self::Text;
        };
        let mut best: Option<(u32, Self)> = None;
        // Bounded: a header value is at most the server's header limit,
        // and only the first 32 ranges are considered.
        for range in accept.split(',').take(32) {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let mut q = 1000;
            let mut version = None;
            for parameter in parts {
                let Some((name, value)) = parameter.split_once('=') else {
                    continue;
                };
                match name.trim().to_ascii_lowercase().as_str() {
                    "q" => q = parse_q(value.trim()).unwrap_or(0),
                    "version" => version = Some(value.trim().trim_matches('"').to_owned()),
                    _ => {}
                }
            }
            let format = match (media.as_str(), version.as_deref()) {
                ("application/openmetrics-text", None | Some("1.0.0" | "0.0.1")) => {
                    Self::OpenMetrics
                }
                ("text/plain", None | Some("0.0.4")) | ("text/*" | "*/*", _) => Self::Text,
                _ => continue,
            };
            if q > 0 && best.is_none_or(|(best_q, _)| q > best_q) {
                best = Some((q, format));
            }
        }
        best.map_or(Self::Text, |(_, format)| format)
    }

    /// The response's `Content-Type`.
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Self::Text => "text/plain; version=0.0.4; charset=utf-8",
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// A `q` value in thousandths (RFC 9110 section 12.4.2), `None` if invalid.
fn parse_q(text: &str) -> Option<u32> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = format!("{fraction:0<3}").parse::<u32>().ok()?;
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// What a scrape reports that is read from elsewhere at scrape time.
pub(crate) struct Scrape<'a> {
    /// The policy in force (workflow review dates).
    pub(crate) policy: &'a Policy,
    /// Today, for the review dates.
    pub(crate) today: chrono::NaiveDate,
    /// Revoked, unexpired tokens and jobs held in memory.
    pub(crate) revocations: usize,
    /// Approval requests waiting for a decision.
    pub(crate) approvals_pending: usize,
    /// Revocation feed streams open now.
    pub(crate) feed_streams: usize,
    /// Events published on the feed since the broker started.
    pub(crate) feed_events: u64,
    /// The webhook's delivery counts, if a webhook is configured.
    pub(crate) webhook: Option<DeliveryCounts>,
    /// Fetches of trusted issuers' keys: (succeeded, failed).
    pub(crate) jwks_fetches: (u64, u64),
    /// Whether the scraper may see the policy's workflow names.
    pub(crate) names: bool,
    /// Open target credentials: (target, state, count, oldest's age).
    pub(crate) targets: Vec<(
        String,
        stint_core::target_credential::CredentialState,
        u64,
        i64,
    )>,
    /// Upstream rate-limit budgets left: (target, what is metered, left).
    pub(crate) rate_limits: Vec<(String, String, i64)>,
}

/// The shortest and longest scrape token accepted, in bytes.
const MIN_SCRAPE_TOKEN_LEN: usize = 32;
const MAX_SCRAPE_TOKEN_LEN: usize = 1024;

/// Why the `--metrics-token-file` is refused.
#[derive(Debug, Error)]
pub enum ScrapeTokenError {
    /// The file could not be read.
    #[error("cannot read the metrics token file {path}: {message}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// Too short, too long, or not printable ASCII.
    #[error(
        "the metrics token in {path} must be {MIN_SCRAPE_TOKEN_LEN} to {MAX_SCRAPE_TOKEN_LEN} printable ASCII characters without spaces (e.g. `openssl rand -hex 32`)"
    )]
    Malformed {
        /// The file.
        path: PathBuf,
    },
}

/// The bearer token a scraper must present, kept only as its SHA-256.
#[derive(Debug, Clone)]
pub struct ScrapeToken {
    digest: [u8; 32],
}

impl ScrapeToken {
    /// Read the token from `path` (one line; a final newline is ignored).
    pub fn load(path: &Path) -> Result<Self, ScrapeTokenError> {
        use std::io::Read as _;
        use std::os::unix::fs::PermissionsExt as _;
        let unreadable = |message: String| ScrapeTokenError::Unreadable {
            path: path.to_owned(),
            message,
        };
        let file = std::fs::File::open(path).map_err(|e| unreadable(e.to_string()))?;
        let metadata = file.metadata().map_err(|e| unreadable(e.to_string()))?;
        if !metadata.is_file() {
            return Err(unreadable("not a regular file".to_owned()));
        }
        if metadata.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "the metrics token file is readable by group or others; chmod 600 it"
            );
        }
        let mut text = Vec::with_capacity(128);
        file.take(MAX_SCRAPE_TOKEN_LEN as u64 + 3)
            .read_to_end(&mut text)
            .map_err(|e| unreadable(e.to_string()))?;
        let token = String::from_utf8(text)
            .ok()
            .map(|t| t.trim_end_matches(['\n', '\r']).to_owned())
            .filter(|t| {
                (MIN_SCRAPE_TOKEN_LEN..=MAX_SCRAPE_TOKEN_LEN).contains(&t.len())
                    && t.bytes().all(|b| b.is_ascii_graphic())
            })
            .ok_or_else(|| ScrapeTokenError::Malformed {
                path: path.to_owned(),
            })?;
        Ok(Self::new(&token))
    }

    /// A token given directly (tests).
    pub fn new(token: &str) -> Self {
        Self {
            digest: stint_core::secret::hash(token),
        }
    }
}

/// Whether, and how much, a scraper may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Everything, workflow names included.
    Full,
    /// Everything but the policy's names (no token is configured and none
    /// was presented).
    Anonymous,
    /// Nothing: a token is configured and a valid one was not presented.
    Refused,
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
    policy_widened: Family<WorkflowLabel, Counter>,
    shadow_grants: Family<WorkflowLabel, Counter>,
    tls_loads: Family<ResultLabel, Counter>,
    tls_not_after: Gauge,
    store_reachable: Gauge,
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
    approval_events: Family<EventLabel, Counter>,
    feed_refused: Family<ReasonLabel, Counter>,
    id_tokens: Family<OutcomeLabel, Counter>,
    target_events: Family<EventLabel, Counter>,
    federation_tokens: Family<TargetLabel, Counter>,
    scrape_token: Option<ScrapeToken>,
}

/// The events of target credentials the metrics count.
const TARGET_EVENTS: [&str; 7] = [
    "minted",
    "revoked",
    "already_gone",
    "expired_upstream",
    "failed",
    "irrevocable",
    "reconciled",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: &'static str,
}

impl Metrics {
    /// Register every metric; `/metrics` open to any scraper (without the
    /// policy's names).
    pub fn new() -> Self {
        Self::with_scrape_token(None)
    }

    /// Register every metric; with a token, `/metrics` answers only a
    /// scraper that presents it (`Authorization: Bearer`).
    pub fn with_scrape_token(scrape_token: Option<ScrapeToken>) -> Self {
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
        let policy_widened = Family::<WorkflowLabel, Counter>::default();
        registry.register(
            "policy_widened_steps",
            "Steps a policy reload let allow more than before, by workflow (see docs/least-privilege.md, drift)",
            policy_widened.clone(),
        );
        let shadow_grants = Family::<WorkflowLabel, Counter>::default();
        registry.register(
            "policy_shadow_grants",
            "Mints that needed a scope pattern marked for removal (shadow): what the removal would have refused, by workflow",
            shadow_grants.clone(),
        );
        let tls_loads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "tls_certificate_loads",
            "Loads of the TLS certificate and key (start and SIGHUP), by result (loaded, refused)",
            tls_loads.clone(),
        );
        let store_reachable = Gauge::default();
        store_reachable.set(1);
        registry.register(
            "store_reachable",
            "1 while the store answers within --store-fail-closed-after; 0 while the broker fails closed",
            store_reachable.clone(),
        );
        let tls_not_after = Gauge::default();
        registry.register(
            "tls_certificate_not_after_timestamp_seconds",
            "When the TLS certificate being served expires (its notAfter), seconds since the epoch",
            tls_not_after.clone(),
        );
        let review_overdue = Family::<WorkflowLabel, Gauge>::default();
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
        let approval_events = Family::<EventLabel, Counter>::default();
        registry.register(
            "approval_events",
            "Approval request transitions, by event (requested, approved, denied, revoked, expired, ended)",
            approval_events.clone(),
        );
        let feed_refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "feed_streams_refused",
            "Revocation feed streams refused, by reason (client_limit, broker_limit)",
            feed_refused.clone(),
        );
        let id_tokens = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "federation_id_token_verifications",
            "Platform ID tokens checked (token exchange, bearer authentication), by outcome (verified, untrusted_issuer, invalid, keys_unavailable)",
            id_tokens.clone(),
        );
        let target_events = Family::<EventLabel, Counter>::default();
        registry.register(
            "target_credentials",
            "Target credentials, by event (minted; revoked or already_gone upstream; failed revocation attempts, retried; irrevocable after the last attempt; reconciled: found upstream with no step token behind it)",
            target_events.clone(),
        );
        for event in TARGET_EVENTS {
            let _ = target_events.get_or_create(&EventLabel { event });
        }
        let federation_tokens = Family::<TargetLabel, Counter>::default();
        registry.register(
            "federation_tokens_issued",
            "Federation tokens signed for OIDC targets, by target (the policy's names: at most its 64 targets)",
            federation_tokens.clone(),
        );
        registry.register(
            "build",
            "The broker's version",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        // Every value of the fixed label sets is there from the start, at
        // 0, so that a rate or an alert sees the series before its first
        // event.
        for event in [
            "requested",
            "approved",
            "denied",
            "revoked",
            "expired",
            "ended",
        ] {
            let _ = approval_events.get_or_create(&EventLabel { event });
        }
        for reason in ["client_limit", "broker_limit"] {
            let _ = feed_refused.get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            });
        }
        for outcome in [
            "verified",
            "untrusted_issuer",
            "invalid",
            "keys_unavailable",
        ] {
            let _ = id_tokens.get_or_create(&OutcomeLabel { outcome });
        }
        Self {
            registry,
            minted,
            denied,
            revocations,
            revocations_denied,
            latency,
            policy_reloads,
            policy_widened,
            shadow_grants,
            tls_loads,
            tls_not_after,
            store_reachable,
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
            approval_events,
            feed_refused,
            id_tokens,
            target_events,
            federation_tokens,
            scrape_token,
        }
    }

    /// A target credential event (one of [`TARGET_EVENTS`]; others are
    /// not counted).
    pub(crate) fn target_event(&self, _target: &str, event: &str) {
        if let Some(event) = TARGET_EVENTS.iter().find(|e| **e == event) {
            self.target_events
                .get_or_create(&EventLabel { event })
                .inc();
        }
    }

    /// A federation token signed for OIDC target `target`.
    pub(crate) fn federation_token_issued(&self, target: &str) {
        self.federation_tokens
            .get_or_create(&TargetLabel {
                target: target.to_owned(),
            })
            .inc();
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

    /// What a scraper that sent `authorization` (the header's value) may
    /// see. The token is compared by its SHA-256, in constant time.
    pub(crate) fn authorize(&self, authorization: Option<&[u8]>) -> Access {
        let presented = authorization
            .and_then(|value| value.strip_prefix(b"Bearer "))
            .and_then(|token| std::str::from_utf8(token).ok());
        match (&self.scrape_token, presented) {
            (None, None) => Access::Anonymous,
            // Without a configured token no bearer can be right; a wrong
            // credential is refused rather than ignored.
            (None, Some(_)) => Access::Refused,
            (Some(expected), Some(token))
                if stint_core::secret::verify(token, &expected.digest) =>
            {
                Access::Full
            }
            (Some(_), _) => Access::Refused,
        }
    }

    /// An approval request changed state; `kind` is the webhook event
    /// (`approval.requested`, ...). Unknown kinds are not counted, so the
    /// label stays within its fixed set.
    pub(crate) fn approval_event(&self, kind: &str) {
        let event = match kind {
            "approval.requested" => "requested",
            "approval.approved" => "approved",
            "approval.denied" => "denied",
            "approval.revoked" => "revoked",
            "approval.expired" => "expired",
            "approval.ended" => "ended",
            _ => return,
        };
        self.approval_events
            .get_or_create(&EventLabel { event })
            .inc();
    }

    /// A revocation feed stream was refused (`client_limit`, `broker_limit`).
    pub(crate) fn feed_refused(&self, reason: &'static str) {
        self.feed_refused
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// A platform ID token was checked: `verified`, `untrusted_issuer`,
    /// `invalid` or `keys_unavailable`.
    pub(crate) fn id_token(&self, outcome: &'static str) {
        self.id_tokens
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
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

    /// A reload widened a step of `workflow`.
    pub(crate) fn policy_widened(&self, workflow: &str) {
        self.policy_widened
            .get_or_create(&WorkflowLabel {
                workflow: workflow.to_owned(),
            })
            .inc();
    }

    /// A mint needed a pattern of `workflow` marked for removal.
    pub(crate) fn shadow_grant(&self, workflow: &str) {
        self.shadow_grants
            .get_or_create(&WorkflowLabel {
                workflow: workflow.to_owned(),
            })
            .inc();
    }

    /// The store's reachability changed.
    pub(crate) fn store_reachable(&self, reachable: bool) {
        self.store_reachable.set(i64::from(reachable));
    }

    /// A load of the TLS certificate and key: `not_after` is the served
    /// leaf's expiry when it loaded.
    pub(crate) fn tls_load(&self, not_after: Option<i64>) {
        let result = if not_after.is_some() {
            "loaded"
        } else {
            "refused"
        };
        self.tls_loads.get_or_create(&ResultLabel { result }).inc();
        if let Some(not_after) = not_after {
            self.tls_not_after.set(not_after);
        }
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

    /// Render the metrics in `format`, with the values read at scrape time.
    pub(crate) fn render(&self, scrape: &Scrape<'_>, format: Format) -> String {
        self.revocations_in_memory
            .set(i64::try_from(scrape.revocations).unwrap_or(i64::MAX));
        let mut scraped = Registry::with_prefix("stint");
        let overdue: Vec<_> = scrape
            .policy
            .workflows()
            .map(|workflow| (workflow.name(), workflow.is_overdue(scrape.today)))
            .collect();
        register_gauge(
            &mut scraped,
            "policy_workflows_review_overdue",
            "Workflows past their review_by date",
            overdue.iter().filter(|(_, overdue)| *overdue).count(),
        );
        if scrape.names {
            self.review_overdue.clear();
            for (workflow, overdue) in &overdue {
                self.review_overdue
                    .get_or_create(&WorkflowLabel {
                        workflow: (*workflow).to_owned(),
                    })
                    .set(i64::from(*overdue));
            }
            scraped.register(
                "policy_workflow_review_overdue",
                "1 for each workflow past its review_by date (authorized scrapes only: it names the policy's workflows)",
                self.review_overdue.clone(),
            );
        }
        register_gauge(
            &mut scraped,
            "approvals_pending",
            "Approval requests waiting for a decision",
            scrape.approvals_pending,
        );
        register_gauge(
            &mut scraped,
            "feed_streams_open",
            "Revocation feed streams open",
            scrape.feed_streams,
        );
        register_counter(
            &mut scraped,
            "feed_events_published",
            "Revocation events published on the feed since the broker started",
            scrape.feed_events,
        );
        if let Some(counts) = scrape.webhook {
            let deliveries = Family::<OutcomeLabel, Counter>::default();
            for (outcome, count) in [
                ("delivered", counts.delivered),
                ("failed", counts.failed),
                ("dropped", counts.dropped),
            ] {
                deliveries
                    .get_or_create(&OutcomeLabel { outcome })
                    .inc_by(count);
            }
            scraped.register(
                "webhook_deliveries",
                "Approval webhook events, by outcome (delivered, failed after its last attempt or refused, dropped unqueued)",
                deliveries,
            );
            register_counter(
                &mut scraped,
                "webhook_retries",
                "Webhook delivery attempts that failed and were retried",
                counts.retries,
            );
        }
        let fetches = Family::<OutcomeLabel, Counter>::default();
        for (outcome, count) in [
            ("fetched", scrape.jwks_fetches.0),
            ("failed", scrape.jwks_fetches.1),
        ] {
            fetches
                .get_or_create(&OutcomeLabel { outcome })
                .inc_by(count);
        }
        scraped.register(
            "federation_jwks_fetches",
            "Fetches of a trusted issuer's discovery document and keys, by outcome (fetched, failed)",
            fetches,
        );
        use stint_core::target_credential::CredentialState;
        let open = Family::<StateLabel, Gauge>::default();
        for state in [
            CredentialState::Minting,
            CredentialState::Live,
            CredentialState::Revoking,
            CredentialState::Irrevocable,
        ] {
            let count: u64 = scrape
                .targets
                .iter()
                .filter(|(_, s, _, _)| *s == state)
                .map(|(_, _, n, _)| n)
                .sum();
            open.get_or_create(&StateLabel {
                state: state.as_str(),
            })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        let irrevocable_oldest_age = scrape
            .targets
            .iter()
            .filter(|(_, s, _, _)| *s == CredentialState::Irrevocable)
            .map(|(_, _, _, age)| *age)
            .max()
            .unwrap_or(0);
        scraped.register(
            "target_credentials_open",
            "Target credentials that may exist upstream, by state (minting, live, revoking; irrevocable: every attempt to destroy them failed, an operator must)",
            open,
        );
        register_gauge(
            &mut scraped,
            "target_credential_irrevocable_oldest_age_seconds",
            "Age of the oldest target credential that could not be destroyed (0 when there is none)",
            usize::try_from(irrevocable_oldest_age).unwrap_or(0),
        );
        let budgets = Family::<MeteredLabel, Gauge>::default();
        let mut lowest: std::collections::BTreeMap<&str, i64> = std::collections::BTreeMap::new();
        for (_, metered, left) in &scrape.rate_limits {
            let entry = lowest.entry(metered.as_str()).or_insert(*left);
            *entry = (*entry).min(*left);
        }
        for (metered, left) in lowest {
            budgets
                .get_or_create(&MeteredLabel {
                    metered: metered.to_owned(),
                })
                .set(left);
        }
        scraped.register(
            "github_rate_limit_remaining",
            "GitHub's x-ratelimit-remaining at its last answer, by what it meters (app: the App's JWT requests; an installation id: its token requests)",
            budgets,
        );
        let process = process_registry();

        let mut out = String::new();
        let encoded = encode_registry(&mut out, &self.registry)
            .and_then(|()| encode_registry(&mut out, &scraped))
            .and_then(|()| encode_registry(&mut out, &process))
            .and_then(|()| encode_eof(&mut out));
        if encoded.is_err() {
            out.clear();
        }
        match format {
            Format::OpenMetrics => out,
            Format::Text => to_text_format(&out),
        }
    }
}

fn register_gauge(registry: &mut Registry, name: &str, help: &str, value: usize) {
    let gauge = Gauge::<i64>::default();
    gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
    registry.register(name, help, gauge);
}

fn register_counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let counter = Counter::<u64>::default();
    counter.inc_by(value);
    registry.register(name, help, counter);
}

/// The standard process metrics (as Prometheus' client libraries name
/// them), read from `/proc/self` at each scrape. Those that cannot be read
/// (another OS, a restricted `/proc`) are left out, not reported as 0.
fn process_registry() -> Registry {
    let mut registry = Registry::default();
    let Some(stats) = ProcessStats::read() else {
        return registry;
    };
    let float_gauge = |registry: &mut Registry, name: &str, help: &str, value: Option<f64>| {
        if let Some(value) = value {
            let gauge = Gauge::<f64, AtomicU64>::default();
            gauge.set(value);
            registry.register(name, help, gauge);
        }
    };
    if let Some(cpu) = stats.cpu_seconds {
        let counter = Counter::<f64, AtomicU64>::default();
        counter.inc_by(cpu);
        registry.register(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            counter,
        );
    }
    float_gauge(
        &mut registry,
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds",
        stats.start_time_seconds,
    );
    float_gauge(
        &mut registry,
        "process_resident_memory_bytes",
        "Resident memory size in bytes",
        stats.resident_bytes,
    );
    float_gauge(
        &mut registry,
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes",
        stats.virtual_bytes,
    );
    float_gauge(
        &mut registry,
        "process_open_fds",
        "Number of open file descriptors",
        stats.open_fds,
    );
    float_gauge(
        &mut registry,
        "process_max_fds",
        "Maximum number of open file descriptors",
        stats.max_fds,
    );
    registry
}

/// Linux's `USER_HZ`, the unit of `/proc/self/stat`'s times: fixed at 100
/// by the kernel's ABI on every architecture (`sysconf(_SC_CLK_TCK)`), as
/// Prometheus' own procfs library assumes.
const USER_HZ: f64 = 100.0;

/// What `/proc` says about this process.
#[derive(Debug, Default, PartialEq)]
struct ProcessStats {
    cpu_seconds: Option<f64>,
    start_time_seconds: Option<f64>,
    resident_bytes: Option<f64>,
    virtual_bytes: Option<f64>,
    open_fds: Option<f64>,
    max_fds: Option<f64>,
}

impl ProcessStats {
    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let (ticks, start_ticks, virtual_bytes) = parse_stat(&stat)?;
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|text| parse_btime(&text));
        let status = std::fs::read_to_string("/proc/self/status").ok();
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|entries| entries.count() as f64);
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|text| parse_max_open_files(&text));
        Some(Self {
            cpu_seconds: Some(ticks as f64 / USER_HZ),
            start_time_seconds: boot.map(|boot| boot as f64 + start_ticks as f64 / USER_HZ),
            resident_bytes: status
                .as_deref()
                .and_then(|text| parse_status_kib(text, "VmRSS:"))
                .map(|kib| kib as f64 * 1024.0),
            virtual_bytes: Some(virtual_bytes as f64),
            open_fds,
            max_fds,
        })
    }
}

/// From `/proc/self/stat`: user plus system ticks, the start time in ticks
/// after boot, and the virtual memory size in bytes. The command name (in
/// parentheses) may hold spaces and parentheses, so fields are counted
/// from the last `)`.
fn parse_stat(text: &str) -> Option<(u64, u64, u64)> {
    let after_name = &text[text.rfind(')')? + 1..];
    // Field 3 (state) is the first after the name.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let ticks = field(14)?.checked_add(field(15)?)?;
    Some((ticks, field(22)?, field(23)?))
}

/// The boot time (`btime`) from `/proc/stat`, in seconds since the epoch.
fn parse_btime(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

/// A `kB` value from `/proc/self/status`.
fn parse_status_kib(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find_map(|line| line.strip_prefix(key))?;
    line.split_whitespace().next()?.parse().ok()
}

/// The soft limit on open files from `/proc/self/limits`; `unlimited` is
/// left out.
fn parse_max_open_files(text: &str) -> Option<f64> {
    let line = text
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))?;
    line.split_whitespace()
        .next()?
        .parse::<u64>()
        .ok()
        .map(|n| n as f64)
}

/// The same metrics in the Prometheus text format 0.0.4, from the
/// OpenMetrics text the registry encodes. They differ, for what Stint
/// exports, in: a counter's family is named with its `_total` (its samples
/// already are); an `info` is a gauge named `_info`; there are no `# UNIT`
/// lines and no `# EOF`.
fn to_text_format(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = rest.split_once(' ').or(Some((rest, "")));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "gauge" | "histogram" | "summary" => (name.to_owned(), kind),
                _ => (name.to_owned(), "untyped"),
            };
            if let Some((help_name, text)) = help.take()
                && help_name == rest.split(' ').next().unwrap_or("")
            {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_as_prometheus_asks() {
        use Format::{OpenMetrics, Text};
        for (accept, expected) in [
            (None, Text),
            (Some(""), Text),
            (Some("*/*"), Text),
            (Some("text/plain"), Text),
            (Some("text/plain; version=0.0.4"), Text),
            (Some("application/openmetrics-text"), OpenMetrics),
            // What Prometheus 2.x sends by default.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
                ),
                OpenMetrics,
            ),
            // A scraper configured for the classic format.
            (
                Some("text/plain;version=0.0.4;q=1,application/openmetrics-text;q=0.5"),
                Text,
            ),
            (
                Some("application/openmetrics-text; q=0.3, text/plain; q=0.2"),
                OpenMetrics,
            ),
            (Some("application/openmetrics-text;q=0"), Text),
            (Some("application/openmetrics-text;version=9.9.9"), Text),
            (Some("application/vnd.google.protobuf"), Text),
            (
                Some("application/openmetrics-text;q=bogus, text/plain"),
                Text,
            ),
            (
                Some("APPLICATION/OPENMETRICS-TEXT; VERSION=1.0.0"),
                OpenMetrics,
            ),
        ] {
            assert_eq!(Format::negotiate(accept), expected, "{accept:?}");
        }
        assert_eq!(parse_q("0.5"), Some(500));
        assert_eq!(parse_q("1.000"), Some(1000));
        assert_eq!(parse_q("1.5"), None);
        assert_eq!(parse_q("0.1234"), None);
        assert_eq!(parse_q("2"), None);
    }

    #[test]
    fn the_text_format_names_counter_families_with_total() {
        let openmetrics = "# HELP stint_tokens_minted Tokens minted.\n\
            # TYPE stint_tokens_minted counter\n\
            stint_tokens_minted_total 3\n\
            # HELP stint_build The broker's version.\n\
            # TYPE stint_build info\n\
            stint_build_info{version=\"1.2.3\"} 1\n\
            # HELP process_start_time_seconds Start time.\n\
            # TYPE process_start_time_seconds gauge\n\
            # UNIT process_start_time_seconds seconds\n\
            process_start_time_seconds 1.5\n\
            # EOF\n";
        assert_eq!(
            to_text_format(openmetrics),
            "# HELP stint_tokens_minted_total Tokens minted.\n\
             # TYPE stint_tokens_minted_total counter\n\
             stint_tokens_minted_total 3\n\
             # HELP stint_build_info The broker's version.\n\
             # TYPE stint_build_info gauge\n\
             stint_build_info{version=\"1.2.3\"} 1\n\
             # HELP process_start_time_seconds Start time.\n\
             # TYPE process_start_time_seconds gauge\n\
             process_start_time_seconds 1.5\n"
        );
    }

    #[test]
    fn reads_proc_files() {
        // A command name with spaces and parentheses; fields as in proc(5).
        let stat = "4242 (stint d) (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 50 0 0 20 0 5 0 123456 987654321 2048 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((300, 123_456, 987_654_321)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
        assert_eq!(
            parse_btime("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1_700_000_000)
        );
        assert_eq!(
            parse_status_kib("Name:\tstintd\nVmRSS:\t   12345 kB\n", "VmRSS:"),
            Some(12_345)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(parse_max_open_files(limits), Some(1024.0));
        assert_eq!(
            parse_max_open_files("Max open files  unlimited  unlimited  files\n"),
            None
        );
        let live = ProcessStats::read().expect("/proc/self is readable on Linux");
        assert!(live.cpu_seconds.is_some_and(|s| s >= 0.0));
        assert!(live.resident_bytes.is_some_and(|b| b > 0.0));
        assert!(live.open_fds.is_some_and(|n| n >= 3.0));
    }

    #[test]
    fn a_scrape_token_is_compared_whole() {
        let metrics = Metrics::with_scrape_token(Some(ScrapeToken::new(&"t".repeat(40))));
        let bearer = |t: &str| format!("Bearer {t}");
        assert_eq!(
            metrics.authorize(Some(bearer(&"t".repeat(40)).as_bytes())),
            Access::Full
        );
        for wrong in [
            bearer(&"t".repeat(39)),
            bearer(&"t".repeat(41)),
            bearer(&"u".repeat(40)),
            format!("Basic {}", "t".repeat(40)),
            "t".repeat(40),
        ] {
            assert_eq!(metrics.authorize(Some(wrong.as_bytes())), Access::Refused);
        }
        assert_eq!(metrics.authorize(None), Access::Refused);
        let open = Metrics::new();
        assert_eq!(open.authorize(None), Access::Anonymous);
        assert_eq!(open.authorize(Some(b"Bearer x")), Access::Refused);
    }
}
