//! `stint introspect --subject-token-file`: a federated workload asks the
//! broker with its platform ID token, and the exit status says active (0)
//! or not (3).
//!
//! Needs the broker side of that contract (introspection accepting a
//! federated workload's ID token as `Authorization: Bearer`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Output;
use stint_tests::idp::TestIdp;
use stint_tests::{BrokerOptions, TestBroker, policy_with};
use tokio::process::Command;

fn assert_exit(output: &Output, code: i32, what: &str) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "{what}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn introspect_with_a_platform_id_token() {
    let idp = TestIdp::start().await;
    let policy = policy_with(&format!(
        "\n[issuers.github]\nurl = \"{}\"\npreset = \"github-actions\"\naudiences = [\"stint-test\"]\n\n\
         [workloads.web-deployer]\nworkflows = [\"demo\"]\n\n\
         [[workloads.web-deployer.federated]]\nissuer = \"github\"\n\
         claims = {{ repository = \"acme/web\", ref = \"refs/heads/main\" }}\n",
        idp.issuer
    ));
    let broker = TestBroker::start_with(BrokerOptions {
        policy: Some(policy),
        federation_ca: Some(idp.ca_file.clone()),
        ..BrokerOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let id_token_file = dir.path().join("id-token");
    std::fs::write(
        &id_token_file,
        idp.rs256_token(&idp.github_claims("acme/web", "refs/heads/main", "stint-test")),
    )
    .unwrap();
    let stint = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_stint"));
        command
            .env_clear()
            .env("STINT_URL", broker.issuer())
            .arg(args[0])
            .arg("--subject-token-file")
            .arg(&id_token_file)
            .args(&args[1..]);
        command
    };
    let output = stint(&[
        "token",
        "--step",
        "read",
        "--scope",
        "read:demo/a",
        "--audience",
        "demo-api",
    ])
    .output()
    .await
    .unwrap();
    assert_exit(&output, 0, "token by token exchange");
    let token = String::from_utf8_lossy(&output.stdout).trim().to_owned();

    let output = stint(&["introspect", &token]).output().await.unwrap();
    assert_exit(&output, 0, "introspect an active token");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.starts_with("active\n"), "{stdout}");
    assert!(stdout.contains("sub: web-deployer"), "{stdout}");

    let output = stint(&["revoke", &token]).output().await.unwrap();
    assert_exit(&output, 0, "revoke");
    let output = stint(&["introspect", "--json", &token])
        .output()
        .await
        .unwrap();
    assert_exit(&output, 3, "introspect a revoked token");
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(answer["active"], false);
}
