//! Who may read which revocations: the feed's stream and its snapshot.
//!
//! A revocation by token names only its `jti` (random, meaningless without
//! the token) and one by approval only the approval's id; every
//! authenticated reader gets those, since any verifier may be shown such a
//! token. Revocations by job, step and workload name a workload and its
//! job ids, which are its own business, so a reader gets them only for the
//! workloads it has a reason to know:
//!
//! - a workload with the `admin` capability: every workload;
//! - any workload: its own;
//! - a workload that serves audiences (`serves`, a resource server, such as
//!   a verify-only workload): every workload with a step that may mint a
//!   token for one of them (a step that lists the audience, or lists none
//!   and so accepts any).
//!
//! Pure: a function of the policy and the reader. The broker computes it
//! when a stream opens and again at every policy reload (closing the
//! stream if its reader is gone).

use crate::policy::{Policy, Workload};
use std::collections::BTreeSet;

/// What one reader may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedAccess {
    /// Every revocation.
    All,
    /// Revocations naming no workload, and those naming one of these.
    Workloads(BTreeSet<String>),
}

impl FeedAccess {
    /// The access `reader` has under `policy`.
    pub fn for_reader(policy: &Policy, reader: &Workload) -> Self {
        if reader.is_admin() {
            return Self::All;
        }
        let mut visible = BTreeSet::from([reader.name().to_owned()]);
        if !reader.serves().is_empty() {
            for workload in policy.workloads() {
                if mints_for_any(policy, workload, reader.serves()) {
                    visible.insert(workload.name().to_owned());
                }
            }
        }
        Self::Workloads(visible)
    }

    /// Whether this access shows every revocation that can touch a token
    /// for `audience`: those of every workload that may mint for it. A
    /// verifier of that audience that follows the feed with less would
    /// miss revocations without knowing it.
    pub fn covers_audience(&self, policy: &Policy, audience: &str) -> bool {
        let audiences = [audience.to_owned()];
        policy
            .workloads()
            .filter(|w| mints_for_any(policy, w, &audiences))
            .all(|w| self.sees(Some(w.name())))
    }

    /// Whether a revocation naming workload `sub` (or none) may be shown.
    pub fn sees(&self, sub: Option<&str>) -> bool {
        match (self, sub) {
            (Self::All, _) | (_, None) => true,
            (Self::Workloads(visible), Some(sub)) => visible.contains(sub),
        }
    }
}

/// Whether some step `workload` may run can mint a token for one of
/// `audiences`.
fn mints_for_any(policy: &Policy, workload: &Workload, audiences: &[String]) -> bool {
    workload
        .workflows()
        .iter()
        .filter_map(|name| policy.workflow(name))
        .flat_map(|workflow| workflow.steps())
        .any(|step| {
            step.audiences().is_empty() || step.audiences().iter().any(|a| audiences.contains(a))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::hash_hex;

    fn policy() -> Policy {
        let secret = hash_hex("s");
        let text = format!(
            r#"
[workloads.builder]
secret_sha256 = "{secret}"
workflows = ["build"]

[workloads.deployer]
secret_sha256 = "{secret}"
workflows = ["deploy"]

[workloads.anywhere]
secret_sha256 = "{secret}"
workflows = ["open"]

[workloads.orders-api]
secret_sha256 = "{secret}"
serves = ["https://orders.example"]

[workloads.registry]
secret_sha256 = "{secret}"
serves = ["https://registry.example"]

[workloads.ops]
secret_sha256 = "{secret}"
capabilities = ["admin"]

[workflows.build]
review_by = 2099-01-01
[workflows.build.steps.push]
scopes = ["write:registry/app/*"]
audiences = ["https://registry.example"]

[workflows.deploy]
review_by = 2099-01-01
[workflows.deploy.steps.ship]
scopes = ["write:orders/config"]
audiences = ["https://orders.example"]

[workflows.open]
review_by = 2099-01-01
[workflows.open.steps.any]
scopes = ["read:x/y"]
"#
        );
        Policy::parse("test", &text).unwrap()
    }

    fn access(name: &str) -> FeedAccess {
        let policy = policy();
        FeedAccess::for_reader(&policy, policy.workload(name).unwrap())
    }

    #[test]
    fn each_reader_sees_what_it_has_a_reason_to_know() {
        assert_eq!(access("ops"), FeedAccess::All);
        let orders = access("orders-api");
        assert!(orders.sees(Some("deployer")), "mints for its audience");
        assert!(
            orders.sees(Some("anywhere")),
            "a step without audiences mints for any"
        );
        assert!(orders.sees(Some("orders-api")), "its own");
        assert!(!orders.sees(Some("builder")), "mints only for the registry");
        assert!(
            orders.sees(None),
            "token and approval revocations name no workload"
        );
        let builder = access("builder");
        assert!(builder.sees(Some("builder")));
        assert!(!builder.sees(Some("deployer")));
        assert!(!builder.sees(Some("anywhere")));
        assert!(builder.sees(None));
        let registry = access("registry");
        assert!(registry.sees(Some("builder")));
        assert!(!registry.sees(Some("deployer")));
    }

    #[test]
    fn coverage_of_an_audience_is_every_workload_that_may_mint_for_it() {
        let policy = policy();
        assert!(access("orders-api").covers_audience(&policy, "https://orders.example"));
        assert!(!access("orders-api").covers_audience(&policy, "https://registry.example"));
        assert!(access("registry").covers_audience(&policy, "https://registry.example"));
        // A job sees only itself: not enough for any audience others mint for.
        assert!(!access("builder").covers_audience(&policy, "https://registry.example"));
        assert!(access("ops").covers_audience(&policy, "https://registry.example"));
    }

    #[test]
    fn a_verify_only_workload_mints_nothing_and_is_named_so() {
        let policy = policy();
        let orders = policy.workload("orders-api").unwrap();
        assert!(orders.is_verify_only());
        assert!(orders.workflows().is_empty());
        assert!(!policy.workload("builder").unwrap().is_verify_only());
        assert!(!policy.workload("ops").unwrap().is_verify_only());
    }
}
