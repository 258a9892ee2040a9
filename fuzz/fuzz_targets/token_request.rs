//! Token requests end to end through the pure core: form, step request,
//! decision. Never panics; a grant never exceeds its step's allowance (its
//! scopes covered by the step's standing scopes, its lifetime within the
//! step's maximum, its audience one the step allows); a request that needs
//! an approval names only scopes the step's elevation covers and its
//! standing grant does not.
#![no_main]
use libfuzzer_sys::fuzz_target;
use stint_core::chrono::DateTime;
use stint_core::decision::{DecisionContext, StepRequest, Verdict, decide};
use stint_core::form::FormParams;
use stint_core::revocation::RevocationSet;
use stint_core::scope::covered;

fuzz_target!(|data: &[u8]| {
    let Ok(form) = FormParams::parse(data) else {
        return;
    };
    let Ok(request) = StepRequest::from_params(&form) else {
        return;
    };
    let policy = stint_fuzz::policy();
    let workload = policy.workload(stint_fuzz::CLIENT_ID).expect("workload w");
    let revocations = RevocationSet::new();
    let context = DecisionContext {
        policy,
        revocations: &revocations,
        now: DateTime::from_timestamp(stint_fuzz::NOW, 0).expect("a valid time"),
    };
    let step_of = |workflow: &str, step: &str| {
        policy
            .resolve_step(workload, &format!("{workflow}/{step}"))
            .expect("a decided step exists")
            .1
    };
    match decide(context, workload, &request, || "job".into()) {
        Ok(Verdict::Granted(grant)) => {
            let step = step_of(grant.workflow(), grant.step());
            assert!(grant.scopes().iter().all(|s| covered(step.scopes(), s)));
            assert!(grant.ttl() <= step.max_ttl());
            assert!(
                step.audiences().is_empty()
                    || step.audiences().iter().any(|a| a == grant.audience()),
                "audience {:?} is not the step's",
                grant.audience()
            );
            assert!(grant.approval().is_none());
        }
        Ok(Verdict::NeedsApproval(needed)) => {
            let step_ref = needed.step_ref();
            let (workflow, step) = step_ref.split_once('/').expect("workflow/step");
            let step = step_of(workflow, step);
            let elevation = step.elevation().expect("only a step with an elevation");
            assert!(!needed.elevated_scopes().is_empty());
            for scope in needed.elevated_scopes() {
                assert!(
                    covered(elevation.scopes(), scope),
                    "{scope} is not in the elevation"
                );
                assert!(!covered(step.scopes(), scope), "{scope} needs no approval");
            }
        }
        Err(_) => {}
    }
});
