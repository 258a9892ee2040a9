//! Every type the SDK's public functions return, and the types of their
//! public fields, can be named through `stint_client` alone: a user does
//! not have to depend on stint-proto or stint-core. This file names them
//! only that way; it does not compile if one is missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::time::Duration;
use stint_client::{Client, Error, Verifier};

/// Check, without running it, that `future` resolves to `Result<T, Error>`.
fn returns<T, F: Future<Output = Result<T, Error>>>(future: F) {
    drop(future);
}

/// The public fields whose types are the SDK's to name.
#[allow(dead_code)]
fn fields(
    introspection: stint_client::IntrospectionResponse,
    claims: stint_client::AccessTokenClaims,
    approval: stint_client::ApprovalView,
    pending: stint_client::PendingApproval,
    stopped: stint_client::WorkloadState,
    credential: stint_client::TargetCredential,
) {
    let _: Option<&stint_client::PostgresLogin> = credential.postgres();
    let _: Option<stint_client::Confirmation> = introspection.cnf;
    let _: Option<stint_client::Confirmation> = claims.cnf;
    let status: Option<stint_client::StatusClaim> = claims.status;
    let _: Option<stint_client::StatusReference> = status.map(|s| s.status_list);
    let _: Vec<stint_client::ApprovalVote> = approval.approvals;
    let _: Option<stint_client::ApprovalView> = pending.approval;
    let _: Option<i64> = stopped.tokens_revoked_before;
    let _: fn(stint_client::TokenError) -> Error = Error::InvalidToken;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_type_the_sdk_returns_is_named_by_the_sdk() {
    let dir = tempfile::tempdir().unwrap();
    let config = stint_server::Config::dev(dir.path().join("data"), "127.0.0.1:0".parse().unwrap());
    let broker = stint_server::start(config).await.unwrap();
    let client = Client::from_dev_client_file(broker.dev_client_path().unwrap())
        .await
        .unwrap();

    // Not sent: only their types are checked.
    returns::<stint_client::IntrospectionResponse, _>(client.introspect("t"));
    returns::<(), _>(client.revoke("t"));
    returns::<stint_client::JobRevocationResponse, _>(client.revoke_job("j"));
    returns::<stint_client::StepRevocationResponse, _>(client.revoke_step("j", "s"));
    returns::<stint_client::KeyRotationResponse, _>(client.rotate_keys());
    returns::<Vec<stint_client::ApprovalView>, _>(client.approvals(true));
    returns::<stint_client::ApprovalView, _>(client.approval("a"));
    returns::<stint_client::ApprovalView, _>(client.approve("a", None, None));
    returns::<stint_client::ApprovalView, _>(client.deny("a", "no"));
    returns::<stint_client::ApprovalView, _>(client.revoke_approval("a", None));
    returns::<stint_client::WorkloadState, _>(client.stop_workload("w", None));
    returns::<stint_client::WorkloadState, _>(client.enable_workload("w", None));
    returns::<stint_client::StepToken, _>(client.step("read").request());
    returns::<(), _>(client.job("j").complete());
    returns::<Verifier, _>(Verifier::builder(client.issuer()).build());

    // And the ones that need a real token.
    let step = client
        .step("read")
        .scope("read:demo/a")
        .audience("demo-api")
        .ttl(Duration::from_secs(60))
        .request()
        .await
        .unwrap();
    let verifier = Verifier::builder(client.issuer())
        .audience("demo-api")
        .build()
        .await
        .unwrap();
    let verified: stint_client::VerifiedToken = verifier.verify(step.token()).await.unwrap();
    let claims: &stint_client::AccessTokenClaims = verified.claims();
    let status: Option<&stint_client::StatusReference> =
        claims.status.as_ref().map(|s| &s.status_list);
    assert!(
        status.is_some(),
        "the dev broker gives tokens a status entry"
    );
    step.finish().await.unwrap();
    broker.shutdown().await;
}
