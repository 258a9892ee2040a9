//! Token Status Lists: every token points at its status, the broker serves
//! the list signed, and revocations by token and by job show in it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use stint_core::status_list::{INVALID, StatusList, VALID};
use stint_proto::REVOCATION_PATH;
use stint_tests::{TestBroker, decode_jwt, verify_signature};

struct Fetched {
    status: u16,
    etag: String,
    claims: Value,
}

async fn fetch(broker: &TestBroker, uri: &str, if_none_match: Option<&str>) -> Fetched {
    let mut request = broker.http.get(uri);
    if let Some(etag) = if_none_match {
        request = request.header("if-none-match", etag);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    assert!(
        response.headers()["cache-control"].to_str().unwrap() == "public, no-cache",
        "caches revalidate: a stale copy would hide revocations"
    );
    if status == 304 {
        return Fetched {
            status,
            etag,
            claims: Value::Null,
        };
    }
    assert_eq!(
        response.headers()["content-type"],
        "application/statuslist+jwt"
    );
    let token = response.text().await.unwrap();
    let (header, _) = decode_jwt(&token);
    assert_eq!(header["typ"], "statuslist+jwt");
    let claims = verify_signature(&token, &broker.keys().await);
    Fetched {
        status,
        etag,
        claims,
    }
}

fn list_of(claims: &Value) -> StatusList {
    StatusList::decode(
        claims["status_list"]["bits"].as_u64().unwrap() as u8,
        claims["status_list"]["lst"].as_str().unwrap(),
    )
    .unwrap()
}

/// Mint a token for `job`; its status list URI and index.
async fn minted(broker: &TestBroker, job: &str) -> (String, String, u64) {
    let body = broker.mint("read", "read:demo/a", &[("job", job)]).await;
    let token = body["access_token"].as_str().unwrap().to_owned();
    let (_, claims) = decode_jwt(&token);
    let reference = &claims["status"]["status_list"];
    (
        token,
        reference["uri"].as_str().unwrap().to_owned(),
        reference["idx"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn revoked_tokens_read_back_as_invalid_in_the_signed_list() {
    let broker = TestBroker::start().await;
    let (token, uri, idx) = minted(&broker, "job-s1").await;
    assert!(
        uri.starts_with(&format!("{}/v1/status/", broker.issuer())),
        "{uri}"
    );
    let (_, uri_b, idx_b) = minted(&broker, "job-s1").await;
    let (_, uri_c, idx_c) = minted(&broker, "job-s2").await;
    assert_eq!(
        (uri_b.as_str(), uri_c.as_str()),
        (uri.as_str(), uri.as_str())
    );
    assert!(idx != idx_b && idx_b != idx_c, "indexes are never shared");

    let first = fetch(&broker, &uri, None).await;
    assert_eq!(first.status, 200);
    assert_eq!(
        first.claims["sub"],
        uri.as_str(),
        "sub is the URI tokens name"
    );
    assert_eq!(first.claims["ttl"], 60);
    assert_eq!(
        first.claims["exp"].as_i64().unwrap() - first.claims["iat"].as_i64().unwrap(),
        300
    );
    let list = list_of(&first.claims);
    assert_eq!(list.get(idx), Ok(VALID));
    // Unchanged: 304.
    assert_eq!(fetch(&broker, &uri, Some(&first.etag)).await.status, 304);

    let response = broker
        .post_form(REVOCATION_PATH, &[("token", &token)])
        .await;
    assert_eq!(response.status(), 200);
    let after = fetch(&broker, &uri, Some(&first.etag)).await;
    assert_eq!(after.status, 200, "the list changed: a new ETag");
    assert_ne!(after.etag, first.etag);
    let list = list_of(&after.claims);
    assert_eq!(list.get(idx), Ok(INVALID));
    assert_eq!(list.get(idx_b), Ok(VALID));

    // A job's revocation marks every one of its tokens, and only those.
    let response = broker.post_form("/v1/jobs/job-s1/revoke", &[]).await;
    assert_eq!(response.status(), 200);
    let list = list_of(&fetch(&broker, &uri, None).await.claims);
    assert_eq!(list.get(idx_b), Ok(INVALID));
    assert_eq!(list.get(idx_c), Ok(VALID));

    let missing = broker
        .http
        .get(broker.url("/v1/status/no-such-list"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn the_earlier_runs_lists_survive_a_restart_and_take_later_revocations() {
    let mut broker = TestBroker::start().await;
    let (token, old_uri, revoked_idx) = minted(&broker, "job-r1").await;
    let (_, _, kept_idx) = minted(&broker, "job-r1").await;
    let (_, _, job_idx) = minted(&broker, "job-r3").await;
    let (_, _, other_idx) = minted(&broker, "job-r4").await;
    let response = broker
        .post_form(REVOCATION_PATH, &[("token", &token)])
        .await;
    assert_eq!(response.status(), 200);

    broker.restart().await;
    let old = list_of(&fetch(&broker, &old_uri, None).await.claims);
    assert_eq!(
        old.get(revoked_idx),
        Ok(INVALID),
        "a revocation before the restart"
    );
    assert_eq!(
        old.get(kept_idx),
        Ok(VALID),
        "a live token of the earlier run stays valid"
    );
    assert_eq!(old.get(job_idx), Ok(VALID));
    assert_eq!(
        old.get(other_idx + 1),
        Ok(INVALID),
        "an index the earlier run never handed out is not VALID"
    );

    // A revocation after the restart reaches the earlier run's tokens.
    let response = broker.post_form("/v1/jobs/job-r3/revoke", &[]).await;
    assert_eq!(response.status(), 200);
    let old = list_of(&fetch(&broker, &old_uri, None).await.claims);
    assert_eq!(old.get(job_idx), Ok(INVALID));
    assert_eq!(old.get(other_idx), Ok(VALID));

    let (_, new_uri, new_idx) = minted(&broker, "job-r2").await;
    assert_ne!(new_uri, old_uri, "a new run starts a new list");
    assert_eq!(
        list_of(&fetch(&broker, &new_uri, None).await.claims).get(new_idx),
        Ok(VALID)
    );

    // And a second restart keeps both runs' lists.
    broker.restart().await;
    let old = list_of(&fetch(&broker, &old_uri, None).await.claims);
    assert_eq!(
        (old.get(revoked_idx), old.get(kept_idx), old.get(job_idx)),
        (Ok(INVALID), Ok(VALID), Ok(INVALID))
    );
    assert_eq!(
        list_of(&fetch(&broker, &new_uri, None).await.claims).get(new_idx),
        Ok(VALID)
    );
}

#[tokio::test]
async fn revoking_a_step_reaches_introspection_the_list_and_verifiers() {
    use std::time::Duration;
    use stint_client::{Credentials, Error, Verifier};
    let mut broker = TestBroker::start().await;
    let read = broker
        .mint("read", "read:demo/a", &[("job", "job-steps")])
        .await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let write = broker
        .mint("write", "write:demo/a", &[("job", "job-steps")])
        .await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let verifier = Verifier::builder(broker.issuer())
        .audience("demo-api")
        .revocation_feed(
            Credentials::new("demo-api", stint_tests::test_secret("demo-api")),
            Duration::from_secs(30),
        )
        .build()
        .await
        .unwrap();
    let response = broker
        .post_form("/v1/jobs/job-steps/steps/read/revoke", &[])
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(broker.introspect(&read).await["active"], false);
    assert_eq!(
        broker.introspect(&write).await["active"],
        true,
        "another step"
    );
    let (_, read_claims) = decode_jwt(&read);
    let (_, write_claims) = decode_jwt(&write);
    let uri = read_claims["status"]["status_list"]["uri"]
        .as_str()
        .unwrap();
    let list = list_of(&fetch(&broker, uri, None).await.claims);
    assert_eq!(
        list.get(
            read_claims["status"]["status_list"]["idx"]
                .as_u64()
                .unwrap()
        ),
        Ok(INVALID)
    );
    assert_eq!(
        list.get(
            write_claims["status"]["status_list"]["idx"]
                .as_u64()
                .unwrap()
        ),
        Ok(VALID)
    );
    stint_tests::eventually(
        Duration::from_secs(10),
        "the verifier hears of it",
        || async { matches!(verifier.verify(&read).await, Err(Error::Revoked)).then_some(()) },
    )
    .await;
    verifier.verify(&write).await.unwrap();
    // The revoked step mints no more for this job; the other step does.
    let again = broker
        .try_mint("read", "read:demo/a", &[("job", "job-steps")])
        .await;
    assert_eq!(again.status(), 400);
    broker
        .mint("write", "write:demo/b", &[("job", "job-steps")])
        .await;
    // Durable.
    broker.restart().await;
    assert_eq!(broker.introspect(&read).await["active"], false);
    assert_eq!(broker.introspect(&write).await["active"], true);
}
