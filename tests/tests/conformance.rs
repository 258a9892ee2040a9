//! Conformance with the RFCs the broker speaks: RFC 8693 (repeated
//! `audience` and `resource`), RFC 7662 (an unusable token is inactive, not
//! an error) and OpenID Connect Discovery 1.0 (checked by an independent
//! implementation, the `openidconnect` crate).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use stint_proto::{INTROSPECTION_PATH, TOKEN_PATH};
use stint_tests::TestBroker;

async fn reply(response: stint_tests::reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// RFC 8693 section 2.1: `audience` and `resource` may each be given more
/// than once. A Stint token has one audience, so they must agree; several
/// targets are `invalid_target` (section 2.2.2), not a malformed request.
#[tokio::test]
async fn repeated_audience_and_resource_are_accepted_when_they_agree() {
    let broker = TestBroker::start().await;
    let base = [
        ("grant_type", "client_credentials"),
        ("step", "read"),
        ("scope", "read:demo/a"),
    ];
    let form = |extra: &[(&'static str, &'static str)]| {
        let mut form = base.to_vec();
        form.extend_from_slice(extra);
        form
    };

    let (status, body) = reply(
        broker
            .post_form(
                TOKEN_PATH,
                &form(&[
                    ("audience", "demo-api"),
                    ("audience", "demo-api"),
                    ("resource", "demo-api"),
                ]),
            )
            .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, claims) = stint_tests::decode_jwt(body["access_token"].as_str().unwrap());
    assert_eq!(claims["aud"], "demo-api");

    for (extra, what) in [
        (
            &[("audience", "demo-api"), ("audience", "other-api")][..],
            "two audiences",
        ),
        (
            &[("resource", "demo-api"), ("resource", "other-api")][..],
            "two resources",
        ),
        (
            &[
                ("audience", "demo-api"),
                ("resource", "demo-api"),
                ("resource", "other-api"),
            ][..],
            "a resource that differs",
        ),
    ] {
        let (status, body) = reply(broker.post_form(TOKEN_PATH, &form(extra)).await).await;
        assert_eq!(status, 400, "{what}: {body}");
        assert_eq!(body["error"], "invalid_target", "{what}: {body}");
    }

    // Every other parameter still may not repeat (RFC 6749 section 3.2).
    let (status, body) = reply(
        broker
            .post_form(
                TOKEN_PATH,
                &form(&[("audience", "demo-api"), ("step", "read")]),
            )
            .await,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_request", "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("\"step\" is repeated"),
        "{body}"
    );
}

/// RFC 7662 section 2.2: a token that is not active (malformed, oversized,
/// not a JWT, badly signed, not ours) is `{"active": false}`; only a request
/// without a token is an error.
#[tokio::test]
async fn an_unusable_token_is_inactive_and_a_missing_one_is_an_error() {
    let broker = TestBroker::start().await;
    let minted = broker.mint("read", "read:demo/a", &[]).await;
    let token = minted["access_token"].as_str().unwrap();
    let mut tampered = token.to_owned();
    tampered.pop();
    tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
    let oversized = "a".repeat(64 * 1024 - 100);
    for (candidate, what) in [
        ("not-a-token", "not a JWT"),
        ("a.b.c", "three segments of nothing"),
        ("eyJhbGciOiJub25lIn0.e30.", "alg none"),
        (tampered.as_str(), "a bad signature"),
        (oversized.as_str(), "oversized"),
        ("%%%", "junk"),
    ] {
        let response = broker
            .post_form(INTROSPECTION_PATH, &[("token", candidate)])
            .await;
        let (status, body) = reply(response).await;
        assert_eq!((status, body), (200, json!({"active": false})), "{what}");
    }
    assert_eq!(broker.introspect(token).await["active"], true);

    for form in [&[][..], &[("token", "")][..]] {
        let (status, body) = reply(broker.post_form(INTROSPECTION_PATH, form).await).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"], "invalid_request", "{body}");
    }
}
