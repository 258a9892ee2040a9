//! Federated ID token claims, after the signature: whatever JSON a
//! trusted issuer vouches for, the workloads it binds to are exactly those
//! whose every claim matcher matches (checked here with a plain claim
//! walk and glob matcher of its own), and the job it names is its job
//! claims' values joined with `-`, or an error naming the missing one.
#![no_main]
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// The claim at `path`, as text, walked here without `ClaimPath`.
fn walk(claims: &Value, path: &str) -> Option<String> {
    let mut value = claims;
    for name in path.split('/') {
        value = value.get(name)?;
    }
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    (text.len() <= stint_core::federation::MAX_CLAIM_VALUE_LEN).then_some(text)
}

/// `*` matches any run of characters; nothing else is special.
fn glob(pattern: &str, value: &str) -> bool {
    let pieces: Vec<&str> = pattern.split('*').collect();
    if pieces.len() == 1 {
        return pattern == value;
    }
    let (first, last) = (pieces[0], pieces[pieces.len() - 1]);
    if value.len() < first.len() + last.len() || !value.starts_with(first) || !value.ends_with(last)
    {
        return false;
    }
    let mut rest = &value[first.len()..value.len() - last.len()];
    for piece in &pieces[1..pieces.len() - 1] {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    true
}

fuzz_target!(|data: &[u8]| {
    let Ok(claims) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let policy = stint_fuzz::policy();
    for issuer in policy.trusted_issuers() {
        let bound: Vec<&str> = policy
            .workloads_for_identity(issuer.name(), &claims)
            .iter()
            .map(|w| w.name())
            .collect();
        for workload in policy.workloads() {
            let expected = workload.bindings().iter().any(|binding| {
                binding.issuer() == issuer.name()
                    && binding.matchers().iter().all(|(path, pattern)| {
                        walk(&claims, path.as_str()).is_some_and(|v| glob(pattern.as_str(), &v))
                    })
            });
            assert_eq!(
                bound.contains(&workload.name()),
                expected,
                "{} under {}",
                workload.name(),
                issuer.name()
            );
        }
        match issuer.job_from_claims(&claims) {
            Ok(None) => assert!(issuer.job_claims().is_empty()),
            Ok(Some(job)) => {
                let parts: Vec<String> = issuer
                    .job_claims()
                    .iter()
                    .map(|path| walk(&claims, path.as_str()).expect("a job claim is present"))
                    .collect();
                assert_eq!(job, parts.join("-"));
            }
            Err(message) => assert!(
                issuer
                    .job_claims()
                    .iter()
                    .any(|path| walk(&claims, path.as_str()).is_none()
                        && message.contains(path.as_str())),
                "{message}"
            ),
        }
    }
});
