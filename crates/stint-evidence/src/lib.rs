//! Least privilege from evidence.
//!
//! Read a verified audit log one record at a time ([`Observations`]),
//! analyse it against the policy file ([`analyse`]): for each step and
//! each of its patterns, the jobs, the mints, the concrete scopes it
//! matched, first and last use, and a [`Status`]. [`propose`] turns the
//! findings into the policy file with unused patterns removed and
//! wildcards that matched only a few scopes narrowed to them, comments and
//! layout kept. It never widens: every scope the proposal grants, the
//! policy granted.
//!
//! The evidence is the grant, not the use at the target ([`EVIDENCE`]).
//! No I/O here: `stint policy suggest` reads the files.

mod observe;
mod propose;
mod render;
mod report;
mod review;

pub use observe::{Observations, ObserveError};
pub use propose::{ProposeError, propose, unified_diff};
pub use render::table;
pub use report::{
    Candidate, Drift, EVIDENCE, Need, Overdue, PatternFinding, Report, Settings, Status,
    StepFinding, Verification, analyse, proposal_is_narrower,
};
pub use review::review_markdown;
