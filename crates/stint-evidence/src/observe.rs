//! What the audit log shows, read one record at a time: each step's mints
//! (by concrete scope, with their jobs), the policy loads with what each
//! allowed, repeated elevations and denied needs. Memory grows with the
//! distinct jobs, steps and scopes, not with the records.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use stint_core::audit::EventKind;

/// The fields of an audit record this reads (others are skipped).
#[derive(Debug, Deserialize)]
struct Record {
    time: String,
    event: EventKind,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    workflow: Option<String>,
    #[serde(default)]
    step: Option<String>,
    #[serde(default)]
    job: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    approval_id: Option<String>,
    #[serde(default)]
    operator: Option<String>,
    #[serde(default)]
    policy_sha256: Option<String>,
    #[serde(default)]
    allows: Option<BTreeMap<String, Vec<String>>>,
    #[serde(default)]
    reviews: Option<BTreeMap<String, String>>,
    #[serde(default)]
    shadows: Option<BTreeMap<String, Vec<String>>>,
    #[serde(default)]
    would_deny: Vec<String>,
}

/// How one concrete scope was granted to a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScopeUse {
    pub(crate) mints: u64,
    /// Seconds since the epoch.
    pub(crate) first: i64,
    pub(crate) last: i64,
}

/// One step's mints in the window.
#[derive(Debug, Default)]
pub(crate) struct StepUse {
    /// Each job, with its first mint.
    pub(crate) jobs: HashMap<String, i64>,
    /// Each concrete scope granted.
    pub(crate) scopes: BTreeMap<String, ScopeUse>,
    /// Each scope granted under an approval, with the approvals.
    pub(crate) elevated: BTreeMap<String, BTreeSet<String>>,
    /// Each scope only a pattern marked for removal granted.
    pub(crate) would_deny: BTreeMap<String, ScopeUse>,
}

/// A policy load.
#[derive(Debug, Clone)]
pub(crate) struct Load {
    pub(crate) time: i64,
    pub(crate) sha256: Option<String>,
    /// `workflow/step` to patterns; `None` when the record does not say
    /// (written by an older broker, or a policy too large to list).
    pub(crate) allows: Option<Arc<BTreeMap<String, Vec<String>>>>,
    /// Workflow to `review_by`, when the record says.
    pub(crate) reviews: Option<Arc<BTreeMap<String, String>>>,
    /// `workflow/step` to its patterns marked for removal, when the record
    /// says.
    pub(crate) shadows: Option<Arc<BTreeMap<String, Vec<String>>>>,
}

/// The most operator approvals kept for `stint policy review` (later ones
/// are counted only).
pub(crate) const MAX_APPROVALS: usize = 10_000;

/// An operator's approval of an elevation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Approved {
    pub(crate) time: i64,
    /// `workflow/step`.
    pub(crate) step: String,
    pub(crate) scopes: Vec<String>,
    pub(crate) operator: String,
    pub(crate) approval_id: String,
}

/// Everything read so far.
#[derive(Debug)]
pub struct Observations {
    pub(crate) now: i64,
    pub(crate) window_start: i64,
    /// By (workflow, step).
    pub(crate) steps: HashMap<(String, String), StepUse>,
    pub(crate) loads: Vec<Load>,
    /// Scopes refused as outside a step: (step as asked, scope) to count.
    pub(crate) needs: BTreeMap<(String, String), u64>,
    /// Operators' approvals in the window, the first [`MAX_APPROVALS`].
    pub(crate) approvals: Vec<Approved>,
    /// Approvals in the window beyond those.
    pub(crate) approvals_not_kept: u64,
    pub(crate) records: u64,
    /// Records after `now` (ignored: the report is as of `now`).
    pub(crate) after_now: u64,
    /// The latest record time at or before `now`.
    pub(crate) last: Option<i64>,
}

/// A record that cannot be read as one.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// Not an audit record.
    #[error("record {number} is not an audit record: {message}")]
    BadRecord { number: u64, message: String },
}

fn seconds(time: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(time)
        .ok()
        .map(|t| t.with_timezone(&Utc).timestamp())
}

/// `new`, as the same allocation as `old` when it is equal.
fn shared<T: PartialEq>(new: Option<T>, old: Option<&Arc<T>>) -> Option<Arc<T>> {
    new.map(|new| match old {
        Some(old) if **old == new => Arc::clone(old),
        _ => Arc::new(new),
    })
}

/// One more mint of `scope` at `time`.
fn count(uses: &mut BTreeMap<String, ScopeUse>, scope: String, time: i64) {
    let entry = uses.entry(scope).or_insert(ScopeUse {
        mints: 0,
        first: time,
        last: time,
    });
    entry.mints += 1;
    entry.first = entry.first.min(time);
    entry.last = entry.last.max(time);
}

impl Observations {
    /// Nothing read yet; the window is the `window_days` before `now`.
    pub fn new(now: DateTime<Utc>, window_days: u32) -> Self {
        let now = now.timestamp();
        Self {
            now,
            window_start: now - i64::from(window_days) * 86_400,
            steps: HashMap::new(),
            loads: Vec::new(),
            needs: BTreeMap::new(),
            approvals: Vec::new(),
            approvals_not_kept: 0,
            records: 0,
            after_now: 0,
            last: None,
        }
    }

    /// Read one record (a line of the log, verified already).
    pub fn line(&mut self, bytes: &[u8]) -> Result<(), ObserveError> {
        self.records += 1;
        let record: Record =
            serde_json::from_slice(bytes).map_err(|e| ObserveError::BadRecord {
                number: self.records,
                message: e.to_string(),
            })?;
        self.record(record)
    }

    fn record(&mut self, record: Record) -> Result<(), ObserveError> {
        let Some(time) = seconds(&record.time) else {
            return Err(ObserveError::BadRecord {
                number: self.records,
                message: format!("time {:?} is not RFC 3339", record.time),
            });
        };
        if time > self.now {
            self.after_now += 1;
            return Ok(());
        }
        self.last = Some(self.last.map_or(time, |last| last.max(time)));
        match record.event {
            // Every load counts, in or before the window: a pattern's age
            // is read from them.
            EventKind::PolicyLoaded => {
                // A reload of the same policy shares its lists with the
                // load before: memory grows with changes, not reloads.
                let previous = self.loads.last();
                let allows = shared(record.allows, previous.and_then(|l| l.allows.as_ref()));
                let shadows = shared(record.shadows, previous.and_then(|l| l.shadows.as_ref()));
                let reviews = shared(record.reviews, previous.and_then(|l| l.reviews.as_ref()));
                self.loads.push(Load {
                    time,
                    sha256: record.policy_sha256,
                    allows,
                    reviews,
                    shadows,
                });
            }
            _ if time < self.window_start => {}
            EventKind::TokenMinted => {
                let (Some(workflow), Some(step)) = (record.workflow, record.step) else {
                    return Ok(());
                };
                let use_ = self.steps.entry((workflow, step)).or_default();
                if let Some(job) = record.job {
                    use_.jobs.entry(job).or_insert(time);
                }
                for scope in record.would_deny {
                    count(&mut use_.would_deny, scope, time);
                }
                for scope in record.scopes {
                    // Under an approval, the scopes beyond the step's own
                    // are told apart against the policy later.
                    if let Some(approval) = &record.approval_id {
                        use_.elevated
                            .entry(scope.clone())
                            .or_default()
                            .insert(approval.clone());
                    }
                    count(&mut use_.scopes, scope, time);
                }
            }
            EventKind::ApprovalGranted => {
                let (Some(step), Some(operator), Some(approval_id)) =
                    (record.step, record.operator, record.approval_id)
                else {
                    return Ok(());
                };
                if self.approvals.len() < MAX_APPROVALS {
                    self.approvals.push(Approved {
                        time,
                        step,
                        scopes: record.scopes,
                        operator,
                        approval_id,
                    });
                } else {
                    self.approvals_not_kept += 1;
                }
            }
            EventKind::TokenDenied if record.reason.as_deref() == Some("scope_not_allowed") => {
                let step = match (record.workflow, record.step) {
                    (Some(workflow), Some(step)) if !step.contains('/') => {
                        format!("{workflow}/{step}")
                    }
                    (_, Some(step)) => step,
                    (_, None) => return Ok(()),
                };
                for scope in record.scopes {
                    *self.needs.entry((step.clone(), scope)).or_default() += 1;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Records read.
    pub fn records(&self) -> u64 {
        self.records
    }
}
