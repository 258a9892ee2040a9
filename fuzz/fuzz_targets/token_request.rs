//! Token requests end to end through the pure core: form, step request,
//! decision. Never panics; a grant never exceeds the step's allowance.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use stint_core::chrono::DateTime;
use stint_core::decision::{DecisionContext, StepRequest, decide};
use stint_core::form::FormParams;
use stint_core::policy::Policy;
use stint_core::revocation::RevocationSet;
use stint_core::scope::covered;

fn policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| {
        Policy::parse(
            "fuzz.toml",
            r#"
[workloads.w]
secret_sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
workflows = ["a", "b"]
[workflows.a]
review_by = 2099-01-01
[workflows.a.steps.read]
scopes = ["read:demo/**", "read:gh/*/web"]
[workflows.b]
review_by = 2099-01-01
[workflows.b.steps.read]
scopes = ["read:other/x"]
[workflows.b.steps.deploy]
scopes = ["deploy:k8s/staging/*"]
audiences = ["k8s"]
max_ttl = "10m"
"#,
        )
        .expect("the fuzz policy is valid")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(form) = FormParams::parse(data) else {
        return;
    };
    let Ok(request) = StepRequest::from_params(&form) else {
        return;
    };
    let policy = policy();
    let workload = policy.workload("w").expect("workload w");
    let revocations = RevocationSet::new();
    let context = DecisionContext {
        policy,
        revocations: &revocations,
        now: DateTime::from_timestamp(1_800_000_000, 0).expect("a valid time"),
    };
    if let Ok(grant) = decide(context, workload, &request, || "job".into()) {
        let (_, step) = policy
            .resolve_step(workload, &format!("{}/{}", grant.workflow(), grant.step()))
            .expect("a granted step exists");
        assert!(grant.scopes().iter().all(|s| covered(step.scopes(), s)));
        assert!(grant.ttl() <= step.max_ttl());
    }
});
