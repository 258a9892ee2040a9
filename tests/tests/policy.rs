//! Policy loading, reloading and review dates, through the running broker.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use stint_proto::TOKEN_PATH;
use stint_server::{Config, PolicySource, StartError};
use stint_tests::{BrokerOptions, TestBroker, Value, policy_with};

/// `file:line:column` of the first quote on the line containing `needle`.
fn position_of(file: &str, text: &str, needle: &str) -> String {
    let (index, line) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains(needle))
        .unwrap();
    format!("{file}:{}:{}", index + 1, line.find('"').unwrap() + 1)
}

async fn mint_status(broker: &TestBroker, step: &str, scope: &str) -> (u16, Value) {
    let response = broker
        .post_form(
            TOKEN_PATH,
            &[
                ("grant_type", "client_credentials"),
                ("step", step),
                ("scope", scope),
                ("audience", "a"),
            ],
        )
        .await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// The records of `event`, in order.
fn events<'a>(records: &'a [Value], event: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["event"] == event).collect()
}

const DEPLOY_STEP: &str = r#"
[workflows.demo.steps.deploy]
scopes = ["deploy:k8s/staging/*"]
"#;

#[tokio::test]
async fn a_valid_reload_takes_effect_and_is_audited() {
    let broker = TestBroker::start().await;
    assert_eq!(
        mint_status(&broker, "deploy", "deploy:k8s/staging/web")
            .await
            .0,
        400
    );

    std::fs::write(
        broker.policy_path.as_ref().unwrap(),
        policy_with(DEPLOY_STEP),
    )
    .unwrap();
    broker.server().reload_policy().await.unwrap();
    assert_eq!(
        mint_status(&broker, "deploy", "deploy:k8s/staging/web")
            .await
            .0,
        200
    );

    let records = broker.audit_records();
    let loads = events(&records, "policy_loaded");
    assert_eq!(loads.len(), 2);
    assert_ne!(loads[0]["policy_sha256"], loads[1]["policy_sha256"]);
    // Each load lists what every step allows and each workflow's review
    // date, for `stint policy suggest`.
    assert!(loads[0]["allows"].is_object(), "{}", loads[0]);
    assert_eq!(loads[0]["allows"].get("demo/deploy"), None);
    assert_eq!(
        loads[1]["allows"]["demo/deploy"],
        serde_json::json!(["deploy:k8s/staging/*"])
    );
    assert!(loads[1]["reviews"]["demo"].is_string(), "{}", loads[1]);
    let metrics = broker.metrics().await;
    assert!(metrics.contains("stint_policy_loads_total{result=\"loaded\"} 2"));
    // The reload added a step: a widening, counted.
    assert!(
        metrics.contains("stint_policy_widened_steps_total{workflow=\"demo\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_invalid_reload_is_refused_audited_and_the_old_policy_stays() {
    let broker = TestBroker::start().await;
    let broken = policy_with(DEPLOY_STEP).replace("deploy:k8s/staging/*", "deploy:*/staging");
    let path = broker.policy_path.clone().unwrap();
    std::fs::write(&path, &broken).unwrap();
    let errors = broker
        .server()
        .reload_policy()
        .await
        .unwrap_err()
        .to_string();
    let at = position_of(&path.display().to_string(), &broken, "deploy:*/staging");
    assert!(
        errors.contains(&format!(
            "{at}: workflows.demo.steps.deploy.scopes[0]: invalid scope pattern"
        )),
        "{errors}"
    );

    // The old policy is still in force: read works, deploy does not exist.
    assert_eq!(mint_status(&broker, "read", "read:demo/x").await.0, 200);
    assert_eq!(
        mint_status(&broker, "deploy", "deploy:k8s/staging/web")
            .await
            .0,
        400
    );

    let records = broker.audit_records();
    let refused: Vec<_> = records
        .iter()
        .filter(|r| r["event"] == "policy_refused")
        .collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["decision"], "deny");
    assert!(refused[0]["detail"].as_str().unwrap().contains(&at));
    assert!(
        broker
            .metrics()
            .await
            .contains("stint_policy_loads_total{result=\"refused\"} 1")
    );

    // An unreadable file is refused the same way.
    std::fs::remove_file(broker.policy_path.as_ref().unwrap()).unwrap();
    assert!(broker.server().reload_policy().await.is_err());
    assert_eq!(mint_status(&broker, "read", "read:demo/x").await.0, 200);
}

#[tokio::test]
async fn an_overdue_review_is_reported_and_enforced_when_asked() {
    let overdue = policy_with("").replace("review_by = 2099-01-01", "review_by = 2020-01-01");
    let broker = TestBroker::start_with(BrokerOptions {
        policy: Some(overdue.clone()),
        ..BrokerOptions::default()
    })
    .await;
    assert_eq!(
        mint_status(&broker, "read", "read:demo/x").await.0,
        200,
        "not enforced: reported only"
    );
    // Minted, and its record says the workflow was overdue.
    let records = broker.audit_records();
    let minted = records
        .iter()
        .rfind(|r| r["event"] == "token_minted")
        .unwrap();
    assert_eq!(minted["reason"], "review_overdue", "{minted}");
    let metrics = broker.metrics().await;
    assert!(
        metrics.contains("stint_policy_workflows_review_overdue 1\n"),
        "{metrics}"
    );

    std::fs::write(
        broker.policy_path.as_ref().unwrap(),
        format!("enforce_review = true\n{overdue}"),
    )
    .unwrap();
    broker.server().reload_policy().await.unwrap();
    let (status, body) = mint_status(&broker, "read", "read:demo/x").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unauthorized_client")),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("review date")
    );
    assert!(
        broker
            .metrics()
            .await
            .contains("stint_tokens_denied_total{reason=\"review_overdue\"} 1")
    );
}

#[tokio::test]
async fn an_invalid_policy_at_start_up_stops_the_broker_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    let text = policy_with("").replace(r#"scopes = ["write:demo/**"]"#, r#"scopes = ["write"]"#);
    std::fs::write(&path, &text).unwrap();
    let at = position_of(&path.display().to_string(), &text, r#"["write"]"#);
    let mut config = Config::dev(dir.path().join("data"), "127.0.0.1:0".parse().unwrap());
    config.policy = PolicySource::File(path.clone());
    let Err(error) = stint_server::start(config).await else {
        panic!("an invalid policy must stop the broker");
    };
    assert!(matches!(error, StartError::Policy(_)));
    let message = error.to_string();
    assert!(
        message.contains(&format!("{at}: workflows.demo.steps.write.scopes[0]")),
        "{message}"
    );
    // The refusal itself was audited.
    let records =
        stint_tests::audit_records(&dir.path().join("data").join(stint_server::AUDIT_FILE));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["event"], "policy_refused");
}

#[tokio::test]
async fn the_example_policy_in_deploy_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/policy.example.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let policy = stint_core::policy::Policy::parse(path, &text).unwrap_or_else(|e| panic!("{e}"));
    assert!(policy.workloads().count() >= 2);
}

/// A pattern marked for removal still grants; each mint that needed it is
/// audited as `would_deny` and counted.
#[tokio::test]
async fn a_pattern_marked_for_removal_still_grants_and_each_mint_that_needed_it_is_told() {
    const SHADOWED: &str = r#"
[workflows.demo.steps.deploy]
scopes = ["deploy:k8s/staging/*", "deploy:k8s/staging/web"]
shadow = ["deploy:k8s/staging/*"]
"#;
    let broker = TestBroker::start_with(BrokerOptions {
        policy: Some(policy_with(SHADOWED)),
        ..BrokerOptions::default()
    })
    .await;
    // Only the marked pattern grants this one.
    assert_eq!(
        mint_status(&broker, "deploy", "deploy:k8s/staging/api")
            .await
            .0,
        200
    );
    // An unmarked pattern grants this one too: removal would not refuse it.
    assert_eq!(
        mint_status(&broker, "deploy", "deploy:k8s/staging/web")
            .await
            .0,
        200
    );
    let records = broker.audit_records();
    let mints = events(&records, "token_minted");
    assert_eq!(mints.len(), 2);
    assert_eq!(
        mints[0]["would_deny"],
        serde_json::json!(["deploy:k8s/staging/api"])
    );
    assert_eq!(mints[1].get("would_deny"), None, "{}", mints[1]);
    let load = records
        .iter()
        .find(|r| r["event"] == "policy_loaded")
        .unwrap();
    assert_eq!(
        load["shadows"]["demo/deploy"],
        serde_json::json!(["deploy:k8s/staging/*"])
    );
    let metrics = broker.metrics().await;
    assert!(
        metrics.contains("stint_policy_shadow_grants_total{workflow=\"demo\"} 1"),
        "{metrics}"
    );
}
