//! The operator console's handlers, through real HTTP: sign-in against a
//! strict OpenID provider (PKCE, state, nonce, single-use codes), the
//! session cookie, the security headers, CSRF and origin checks, escaping,
//! and the broker's approval rules applied through the console.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::TimeDelta;
use stint_console::{CONTENT_SECURITY_POLICY, HINT_COOKIE, LOGIN_COOKIE, SESSION_COOKIE};
use stint_tests::console::{Browser, ConsoleHarness, ELEVATED, HarnessOptions, STANDING};
use stint_tests::oidc::{Misbehave, OidcProvider};
use stint_tests::{Value, json};

async fn signed_in(h: &ConsoleHarness, user: &str) -> Browser {
    let browser = h.browser();
    let page = browser.sign_in(user).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(browser.cookie(SESSION_COOKIE).is_some());
    browser
}

fn records(h: &ConsoleHarness, event: &str) -> Vec<Value> {
    h.broker
        .audit_records()
        .into_iter()
        .filter(|r| r["event"] == event)
        .collect()
}

fn assert_security_headers(page: &stint_tests::console::Page) {
    let header = |name: &str| {
        page.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name}"))
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(header("content-security-policy"), CONTENT_SECURITY_POLICY);
    assert_eq!(
        CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    );
    assert_eq!(header("referrer-policy"), "no-referrer");
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert_eq!(header("cache-control"), "no-store");
    assert_eq!(header("x-frame-options"), "DENY");
}

#[tokio::test]
async fn sign_in_uses_pkce_state_and_nonce_and_sets_a_host_cookie() {
    let h = ConsoleHarness::start().await;
    let browser = h.browser();
    // Not signed in: the sign-in page, with every security header.
    let page = browser.get("/approvals").await;
    assert_eq!(page.status, 401);
    assert!(page.body.contains("Sign in with corp"), "{}", page.body);
    assert_security_headers(&page);

    let authorization = browser.start_sign_in("/approvals").await;
    let login = browser.cookie(LOGIN_COOKIE).expect("a sign-in cookie");
    assert!(
        !authorization.contains(&login),
        "the sealed sign-in stays in its cookie"
    );
    let callback = browser.authorize(&authorization, "alice").await;
    let page = browser.callback(&callback).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_security_headers(&page);
    assert!(page.body.contains("Signed in as <strong>alice</strong>"));
    assert!(!page.body.contains("code="), "no code in the page");

    // The cookie, exactly.
    let cookies = page.set_cookies();
    let session = cookies
        .iter()
        .find(|c| c.starts_with(&format!("{SESSION_COOKIE}=")))
        .unwrap();
    let id = browser.cookie(SESSION_COOKIE).unwrap();
    assert_eq!(id.len(), 43, "32 random bytes, base64url");
    assert_eq!(
        *session,
        format!("{SESSION_COOKIE}={id}; Path=/; Max-Age=28800; Secure; HttpOnly; SameSite=Strict")
    );
    assert!(cookies.contains(&format!(
        "{HINT_COOKIE}=1; Path=/; Max-Age=28800; Secure; HttpOnly; SameSite=Lax"
    )));
    assert!(cookies.contains(&format!(
        "{LOGIN_COOKIE}=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Lax"
    )));
    assert!(browser.cookie(LOGIN_COOKIE).is_none());

    // What the provider saw: S256 PKCE whose verifier came back, state and
    // nonce, and the console's client secret with Basic.
    let seen = h.idp.seen();
    let asked = &seen.authorizations[0];
    assert_eq!(asked["code_challenge_method"], "S256");
    assert_eq!(asked["response_type"], "code");
    assert_eq!(asked["scope"], "openid");
    assert_eq!(asked["redirect_uri"], format!("{}/callback", h.origin));
    assert!(asked["state"].len() >= 43 && asked["nonce"].len() >= 43);
    assert_ne!(asked["state"], asked["nonce"]);
    let (form, basic) = &seen.token_requests[0];
    assert!(basic, "client_secret_basic");
    assert!(!form.contains_key("client_secret"));
    let verifier = &form["code_verifier"];
    use base64::Engine as _;
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ));
    assert_eq!(challenge, asked["code_challenge"]);

    // Signed in, and audited with the identity.
    let page = browser.get("/approvals").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Signed in as <strong>alice</strong>"));
    let signed = records(&h, "operator_signed_in");
    assert_eq!(signed.len(), 1);
    assert_eq!(signed[0]["decision"], "allow");
    assert_eq!(signed[0]["operator"], "alice");
    assert_eq!(signed[0]["via"], "console");
    assert_eq!(signed[0]["federated_sub"], OidcProvider::subject("alice"));
}

#[tokio::test]
async fn a_public_client_sends_its_client_id_and_no_secret() {
    let h = ConsoleHarness::start_with(HarnessOptions {
        client_secret: None,
        ..HarnessOptions::default()
    })
    .await;
    signed_in(&h, "bob").await;
    let (form, basic) = &h.idp.seen().token_requests[0];
    assert!(!basic);
    assert_eq!(form["client_id"], "stint-console");
}

#[tokio::test]
async fn state_must_match_this_browsers_sign_in_and_comes_back_once() {
    let h = ConsoleHarness::start().await;
    let browser = h.browser();
    let authorization = browser.start_sign_in("/approvals").await;
    let callback = browser.authorize(&authorization, "alice").await;

    // Another state.
    let forged = callback.replace("state=", "state=x");
    let page = browser.callback(&forged).await;
    assert_eq!(page.status, 400, "{}", page.body);
    assert!(page.body.contains("state does not match"), "{}", page.body);
    assert!(browser.cookie(SESSION_COOKIE).is_none());

    // The right callback in another browser (no sign-in cookie): an
    // attacker's callback pushed to a victim (login CSRF) fails.
    let victim = h.browser();
    let page = victim.callback(&callback).await;
    assert_eq!(page.status, 400);
    assert!(page.body.contains("no sign-in was started in this browser"));
    assert!(victim.cookie(SESSION_COOKIE).is_none());

    // The refused tries cleared the cookie: a fresh sign-in, then the same
    // callback again with the sign-in cookie put back is refused.
    let authorization = browser.start_sign_in("/approvals").await;
    let login = browser.cookie(LOGIN_COOKIE).unwrap();
    let callback = browser.authorize(&authorization, "alice").await;
    assert_eq!(browser.callback(&callback).await.status, 200);
    let replay = h.browser();
    replay.set_cookie(LOGIN_COOKIE, Some(&login));
    let page = replay.callback(&callback).await;
    assert_eq!(page.status, 400);
    assert!(
        page.body.contains("already come back once"),
        "{}",
        page.body
    );
    assert!(replay.cookie(SESSION_COOKIE).is_none());
}

#[tokio::test]
async fn a_replayed_or_injected_code_is_refused() {
    let h = ConsoleHarness::start().await;
    let browser = h.browser();
    let authorization = browser.start_sign_in("/approvals").await;
    let first = browser.authorize(&authorization, "alice").await;
    assert_eq!(browser.callback(&first).await.status, 200);
    let used_code = reqwest_query(&first, "code");

    // A new sign-in whose callback carries the used code: the provider
    // refuses it (one use), and no session is made.
    let attacker = h.browser();
    let authorization = attacker.start_sign_in("/approvals").await;
    let fresh = attacker.authorize(&authorization, "mallory").await;
    let injected = with_query(&fresh, "code", &used_code);
    let page = attacker.callback(&injected).await;
    assert_eq!(page.status, 502, "{}", page.body);
    assert!(page.body.contains("invalid_grant"), "{}", page.body);
    assert!(attacker.cookie(SESSION_COOKIE).is_none());

    // A code issued to another sign-in (another PKCE verifier): refused.
    let a = h.browser();
    let first_auth = a.start_sign_in("/approvals").await;
    let victims_callback = a.authorize(&first_auth, "alice").await;
    let b = h.browser();
    let second_auth = b.start_sign_in("/approvals").await;
    let own = b.authorize(&second_auth, "mallory").await;
    let swapped = with_query(&own, "code", &reqwest_query(&victims_callback, "code"));
    let page = b.callback(&swapped).await;
    assert_eq!(page.status, 502, "{}", page.body);
    assert!(b.cookie(SESSION_COOKIE).is_none());
    let errors = h.idp.seen().token_errors;
    assert_eq!(errors, ["invalid_grant", "invalid_grant"], "{errors:?}");
}

fn reqwest_query(url: &str, name: &str) -> String {
    reqwest::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(n, _)| n == name)
        .unwrap()
        .1
        .into_owned()
}

fn with_query(url: &str, name: &str, value: &str) -> String {
    let mut parsed = reqwest::Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(n, v)| {
            if n == name {
                (n.into_owned(), value.to_owned())
            } else {
                (n.into_owned(), v.into_owned())
            }
        })
        .collect();
    parsed.query_pairs_mut().clear().extend_pairs(pairs);
    parsed.into()
}

use stint_tests::reqwest;

#[tokio::test]
async fn the_nonce_and_audience_are_the_consoles() {
    let h = ConsoleHarness::start().await;
    h.idp.misbehave(Misbehave {
        nonce: Some("another-sign-in".into()),
        aud: None,
    });
    let browser = h.browser();
    let page = browser.sign_in("alice").await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(page.body.contains("nonce"), "{}", page.body);
    assert!(browser.cookie(SESSION_COOKIE).is_none());

    // Several audiences and no azp: not necessarily for this console.
    h.idp.misbehave(Misbehave {
        nonce: None,
        aud: Some(json!(["stint-console", "another-app"])),
    });
    let page = browser.sign_in("alice").await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(page.body.contains("azp"), "{}", page.body);

    // Another client's token: the broker's own check refuses it.
    h.idp.misbehave(Misbehave {
        nonce: None,
        aud: Some(json!("another-app")),
    });
    let page = browser.sign_in("alice").await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(browser.cookie(SESSION_COOKIE).is_none());

    // Someone the provider knows but the policy does not.
    h.idp.misbehave(Misbehave::default());
    let page = browser.sign_in("mallory").await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(
        page.body
            .contains("no operator signs in with this identity"),
        "{}",
        page.body
    );

    let refused: Vec<Value> = records(&h, "operator_signed_in")
        .into_iter()
        .filter(|r| r["decision"] == "deny")
        .collect();
    assert_eq!(refused.len(), 4, "{refused:?}");
    assert!(refused.iter().all(|r| r["via"] == "console"));
    assert!(refused[0]["detail"].as_str().unwrap().contains("nonce"));
}

#[tokio::test]
async fn forms_need_the_sessions_csrf_token_and_this_origin() {
    let h = ConsoleHarness::start().await;
    let id = h.request_elevation("job-csrf", "hotfix").await;
    let browser = signed_in(&h, "alice").await;
    let page = browser.get(&format!("/approvals/{id}")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let csrf = page.csrf();
    let path = format!("/approvals/{id}/approve");

    // No token, a wrong one: refused.
    let page = browser.post(&path, &[("duration", "15m")]).await;
    assert_eq!(page.status, 403);
    assert!(page.body.contains("CSRF"));
    let page = browser
        .post(&path, &[("csrf", "AAAA"), ("duration", "15m")])
        .await;
    assert_eq!(page.status, 403);
    // Another signed-in operator's token is not this session's.
    let bob = signed_in(&h, "bob").await;
    let bobs = bob.get(&format!("/approvals/{id}")).await.csrf();
    assert_ne!(bobs, csrf);
    let page = browser
        .post(&path, &[("csrf", &bobs), ("duration", "15m")])
        .await;
    assert_eq!(page.status, 403);

    // The right token from another origin, from another site, or with no
    // Origin at all: refused before the form is read.
    let form = [("csrf", csrf.as_str()), ("duration", "15m")];
    for headers in [
        vec![
            ("origin", "https://evil.example"),
            ("sec-fetch-site", "cross-site"),
        ],
        vec![("origin", "https://evil.example")],
        vec![
            ("origin", h.origin.as_str()),
            ("sec-fetch-site", "same-site"),
        ],
        vec![
            ("origin", "https://evil.example"),
            ("sec-fetch-site", "same-origin"),
        ],
        vec![("origin", "null")],
        vec![("origin", "null"), ("sec-fetch-site", "cross-site")],
        vec![],
    ] {
        let page = browser.post_with(&path, &form, &headers).await;
        assert_eq!(page.status, 403, "{headers:?}: {}", page.body);
        assert_security_headers(&page);
    }
    let view = h.console_view(&id).await;
    assert_eq!(
        view["approvals"].as_array().unwrap().len(),
        0,
        "nothing counted"
    );

    // Everything right: counted. (From a `no-referrer` page a browser
    // sends `Origin: null`, and says same-origin in Sec-Fetch-Site.)
    let page = browser
        .post_with(
            &path,
            &form,
            &[("origin", "null"), ("sec-fetch-site", "same-origin")],
        )
        .await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(page.location().unwrap(), format!("/approvals/{id}"));
    let page = browser.get(&format!("/approvals/{id}")).await;
    assert!(
        page.body.contains("Approved: 1 of 2 approvals."),
        "{}",
        page.body
    );
    let view = h.console_view(&id).await;
    assert_eq!(view["approvals"][0]["operator"], "alice");
}

#[tokio::test]
async fn cross_site_subresource_requests_are_refused_but_links_work() {
    let h = ConsoleHarness::start().await;
    let browser = signed_in(&h, "alice").await;
    for (site, mode) in [
        ("cross-site", "no-cors"),
        ("cross-site", "cors"),
        ("same-site", "no-cors"),
    ] {
        let page = browser
            .get_with(
                "/approvals",
                &[("sec-fetch-site", site), ("sec-fetch-mode", mode)],
            )
            .await;
        assert_eq!(page.status, 403, "{site} {mode}");
        assert!(page.body.contains("cross-site request refused"));
    }
    // A link followed from elsewhere arrives without the Strict session
    // cookie (the browser keeps it back): a page of this origin goes on,
    // which carries the cookie. To a page with decisions on it only by a
    // click (another site must not have it one click away); to a list, by
    // itself.
    let session = browser.cookie(SESSION_COOKIE).unwrap();
    browser.set_cookie(SESSION_COOKIE, None);
    let cross = [
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-mode", "navigate"),
    ];
    let page = browser.get_with("/approvals/apr-x", &cross).await;
    assert_eq!(page.status, 200);
    assert!(
        page.body
            .contains(r#"<a class="button" id="continue" href="/approvals/apr-x">"#),
        "{}",
        page.body
    );
    assert!(
        !page.body.contains("http-equiv=\"refresh\""),
        "{}",
        page.body
    );
    let page = browser.get_with("/approvals", &cross).await;
    assert!(
        page.body
            .contains(r#"<meta http-equiv="refresh" content="0;url=/approvals">"#),
        "{}",
        page.body
    );
    // Same-origin and still no session: the sign-in page, not a loop.
    let page = browser
        .get_with(
            "/approvals/apr-x",
            &[
                ("sec-fetch-site", "same-origin"),
                ("sec-fetch-mode", "navigate"),
            ],
        )
        .await;
    assert_eq!(page.status, 401);
    assert!(
        page.body.contains("return_to=%2Fapprovals%2Fapr%2Dx"),
        "{}",
        page.body
    );
    browser.set_cookie(SESSION_COOKIE, Some(&session));
    let page = browser.get("/approvals/apr-x").await;
    assert_eq!(page.status, 404);
}

#[tokio::test]
async fn values_from_requests_render_as_text() {
    let h = ConsoleHarness::start().await;
    let id = h
        .request_elevation(
            "job-xss",
            r#"<script>alert("x")</script><img src=x onerror=y>"#,
        )
        .await;
    let browser = signed_in(&h, "alice").await;
    let page = browser.get(&format!("/approvals/{id}")).await;
    assert_eq!(page.status, 200);
    assert!(!page.body.contains("<script>"), "{}", page.body);
    assert!(!page.body.contains("<img"), "{}", page.body);
    assert!(
        page.body.contains(
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&lt;img src=x onerror=y&gt;"
        ),
        "{}",
        page.body
    );
    // And in the audit page (the requested record carries the reason).
    let page = browser.get("/audit?event=approval_requested").await;
    assert!(!page.body.contains("<script>"));
    assert!(page.body.contains("&lt;script&gt;"), "{}", page.body);
    // A filter value is echoed escaped too.
    let page = browser
        .get("/audit?workload=%22%3E%3Cscript%3Ex%3C%2Fscript%3E")
        .await;
    assert!(!page.body.contains("<script>x"), "{}", page.body);
    assert!(
        page.body.contains("&quot;&gt;&lt;script&gt;x"),
        "{}",
        page.body
    );
}

/// Post `verb` on request `id` with the page's CSRF token and `form`;
/// the request's page after.
async fn decide(
    browser: &Browser,
    id: &str,
    verb: &str,
    form: Vec<(&'static str, String)>,
) -> stint_tests::console::Page {
    let csrf = browser.get(&format!("/approvals/{id}")).await.csrf();
    let mut fields: Vec<(&str, String)> = vec![("csrf", csrf)];
    fields.extend(form);
    let form: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let page = browser
        .post(&format!("/approvals/{id}/{verb}"), &form)
        .await;
    assert_eq!(page.status, 303, "{}", page.body);
    browser.get(&format!("/approvals/{id}")).await
}

#[tokio::test]
async fn the_brokers_rules_hold_through_the_console() {
    let h = ConsoleHarness::start().await;
    let id = h.request_elevation("job-rules", "hotfix").await;
    let decide = |browser, verb, form| decide(browser, &id, verb, form);

    // carol owns demo-job: the page says so, and the broker refuses her.
    let carol = signed_in(&h, "carol").await;
    let page = carol.get(&format!("/approvals/{id}")).await;
    assert!(
        page.body
            .contains("You cannot decide this request: you own workload demo-job")
    );
    let page = decide(&carol, "approve", vec![]).await;
    assert!(page.body.contains("Refused: </strong>"), "{}", page.body);
    assert!(page.body.contains("a workload they own"), "{}", page.body);
    // dave is not in sre.
    let dave = signed_in(&h, "dave").await;
    let page = decide(&dave, "approve", vec![]).await;
    assert!(page.body.contains("Refused: </strong>"), "{}", page.body);
    // A denial needs a comment.
    let alice = signed_in(&h, "alice").await;
    let page = decide(&alice, "deny", vec![]).await;
    assert!(
        page.body.contains("a denial needs a comment"),
        "{}",
        page.body
    );
    // alice approves once, not twice.
    let page = decide(&alice, "approve", vec![("duration", "10m".into())]).await;
    assert!(page.body.contains("Approved: 1 of 2"), "{}", page.body);
    let page = decide(&alice, "approve", vec![]).await;
    assert!(page.body.contains("Refused: </strong>"), "{}", page.body);
    assert_eq!(
        h.console_view(&id).await["approvals"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let refused = records(&h, "approval_refused");
    // carol, dave, alice's denial without a comment (the broker's rule,
    // refused and audited by it), alice's second approval.
    assert_eq!(refused.len(), 4, "{refused:?}");
    assert_eq!(refused[0]["operator"], "carol");
    assert_eq!(refused[2]["detail"], "a denial needs a comment");
    assert!(refused.iter().all(|r| r["via"] == "console"
        && r["approval_id"] == id.as_str()
        && r["federated_iss"] == h.idp.issuer.as_str()
        && r["federated_sub"] == OidcProvider::subject(r["operator"].as_str().unwrap())));
    let granted = records(&h, "approval_granted");
    assert_eq!(granted.len(), 1);
    assert_eq!(granted[0]["operator"], "alice");
    assert_eq!(granted[0]["via"], "console");
    assert_eq!(granted[0]["federated_sub"], OidcProvider::subject("alice"));

    // Past its wait (10 minutes): refused, by the broker's clock.
    let bob = signed_in(&h, "bob").await;
    h.broker.clock.advance(TimeDelta::minutes(11));
    let page = decide(&bob, "approve", vec![]).await;
    assert!(page.body.contains("Refused: </strong>"), "{}", page.body);
    assert!(page.body.contains("expired"), "{}", page.body);
    assert_eq!(
        h.console_view(&id).await["approvals"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn two_operators_approve_and_the_waiting_job_gets_its_token() {
    let h = ConsoleHarness::start().await;
    let id = h.request_elevation("job-deploy", "ship the hotfix").await;
    for (user, expect) in [
        ("alice", "Approved: 1 of 2"),
        ("bob", "Approved: the quorum is reached"),
    ] {
        let browser = signed_in(&h, user).await;
        let page = browser.get("/approvals").await;
        assert!(page.body.contains(&id), "{user} sees the request");
        let page = browser.get(&format!("/approvals/{id}")).await;
        assert!(page.body.contains("ship the hotfix"));
        assert!(page.body.contains(STANDING) && page.body.contains(ELEVATED));
        let csrf = page.csrf();
        let page = browser
            .post(
                &format!("/approvals/{id}/approve"),
                &[("csrf", &csrf), ("duration", "15m"), ("comment", "ok")],
            )
            .await;
        assert_eq!(page.status, 303);
        let page = browser.get(&format!("/approvals/{id}")).await;
        assert!(page.body.contains(expect), "{}", page.body);
    }
    let token = h
        .broker
        .mint(
            "deploy",
            &format!("{STANDING} {ELEVATED}"),
            &[
                ("job", "job-deploy"),
                ("approval_id", &id),
                ("reason", "ship the hotfix"),
            ],
        )
        .await;
    let (_, claims) = stint_tests::decode_jwt(token["access_token"].as_str().unwrap());
    assert_eq!(claims["elev"], id.as_str());
}

#[tokio::test]
async fn sessions_end_when_idle_too_long_past_their_limit_and_on_sign_out() {
    let h = ConsoleHarness::start_with(HarnessOptions {
        idle_timeout: std::time::Duration::from_secs(60),
        absolute_timeout: std::time::Duration::from_secs(150),
        ..HarnessOptions::default()
    })
    .await;
    let browser = signed_in(&h, "alice").await;
    h.broker.clock.advance(TimeDelta::seconds(59));
    assert_eq!(browser.get("/approvals").await.status, 200);
    h.broker.clock.advance(TimeDelta::seconds(61));
    let page = browser.get("/approvals").await;
    assert_eq!(page.status, 401);
    assert!(page.body.contains("idle too long"), "{}", page.body);
    assert!(
        browser.cookie(SESSION_COOKIE).is_none(),
        "the cookie is cleared"
    );

    let browser = signed_in(&h, "alice").await;
    for _ in 0..3 {
        h.broker.clock.advance(TimeDelta::seconds(50));
        let page = browser.get("/approvals").await;
        if page.status != 200 {
            assert_eq!(page.status, 401);
            assert!(page.body.contains("time limit"), "{}", page.body);
            break;
        }
    }
    assert!(browser.cookie(SESSION_COOKIE).is_none(), "ended at 150 s");

    let browser = signed_in(&h, "bob").await;
    let session = browser.cookie(SESSION_COOKIE).unwrap();
    let csrf = browser.get("/approvals").await.csrf();
    let page = browser.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(page.status, 303);
    assert_eq!(page.location().unwrap(), "/login");
    assert!(page.set_cookies().contains(&format!(
        "{SESSION_COOKIE}=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Strict"
    )));
    browser.set_cookie(SESSION_COOKIE, Some(&session));
    assert_eq!(browser.get("/approvals").await.status, 401);
}

#[tokio::test]
async fn the_live_page_revokes_tokens_and_jobs_and_stops_workloads() {
    let h = ConsoleHarness::start().await;
    let first = h
        .broker
        .mint("read", "read:demo/docs", &[("job", "job-a")])
        .await;
    let first = first["access_token"].as_str().unwrap().to_owned();
    let (_, claims) = stint_tests::decode_jwt(&first);
    let jti = claims["jti"].as_str().unwrap().to_owned();
    let second = h
        .broker
        .mint("read", "read:demo/docs", &[("job", "job-b")])
        .await;
    let second = second["access_token"].as_str().unwrap().to_owned();

    let browser = signed_in(&h, "alice").await;
    let page = browser.get("/live").await;
    assert!(page.body.contains(&jti), "{}", page.body);
    assert!(page.body.contains("job-b"));
    let csrf = page.csrf();

    let page = browser
        .post(&format!("/live/tokens/{jti}/revoke"), &[("csrf", &csrf)])
        .await;
    assert_eq!(page.status, 303);
    assert_eq!(h.broker.introspect(&first).await["active"], false);
    assert_eq!(h.broker.introspect(&second).await["active"], true);
    let page = browser.get("/live").await;
    assert!(
        page.body.contains(&format!("Token {jti} revoked.")),
        "{}",
        page.body
    );
    assert!(
        !page.body.contains(&format!("<code>{jti}</code>")),
        "no longer listed"
    );

    let page = browser
        .post(
            "/live/jobs/revoke",
            &[("csrf", &csrf), ("workload", "demo-job"), ("job", "job-b")],
        )
        .await;
    assert_eq!(page.status, 303);
    assert_eq!(h.broker.introspect(&second).await["active"], false);

    let page = browser
        .post(
            "/live/workloads/demo-job/stop",
            &[("csrf", &csrf), ("comment", "leaked secret")],
        )
        .await;
    assert_eq!(page.status, 303);
    let refused = h.broker.try_mint("read", "read:demo/docs", &[]).await;
    assert_eq!(refused.status(), 400);
    let page = browser.get("/live").await;
    assert!(page.body.contains("STOPPED"), "{}", page.body);
    let page = browser
        .post("/live/workloads/demo-job/enable", &[("csrf", &csrf)])
        .await;
    assert_eq!(page.status, 303);
    // A token issued in the second of the stop is covered by it.
    h.broker.clock.advance(TimeDelta::seconds(1));
    h.broker.mint("read", "read:demo/docs", &[]).await;

    for (event, what) in [
        ("token_revoked", "jti"),
        ("job_revoked", "job"),
        ("workload_stopped", "sub"),
        ("workload_enabled", "sub"),
    ] {
        let found = records(&h, event);
        assert_eq!(found.len(), 1, "{event}: {found:?}");
        assert_eq!(found[0]["operator"], "alice", "{event}");
        assert_eq!(found[0]["via"], "console", "{event}");
        assert!(!found[0][what].is_null(), "{event}");
    }
    // Who did what, on the page, from the audit.
    let page = browser.get("/live").await;
    assert!(
        page.body.contains("<code>workload_stopped</code>"),
        "{}",
        page.body
    );
    assert!(page.body.contains("leaked secret"));
}

#[tokio::test]
async fn the_audit_page_verifies_the_chain_and_filters() {
    let h = ConsoleHarness::start().await;
    h.broker
        .mint("read", "read:demo/docs", &[("job", "job-audit")])
        .await;
    let browser = signed_in(&h, "alice").await;
    let page = browser.get("/audit").await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("<strong>VERIFIED</strong>"),
        "{}",
        page.body
    );
    // The head shown is the SHA-256 of a record of the file (the last one
    // when the page was made).
    let head_at = page.body.find("code class=\"hash\">").unwrap();
    let head = &page.body[head_at + 18..head_at + 18 + 64];
    let text = std::fs::read_to_string(h.broker.audit_path()).unwrap();
    let hashes: Vec<String> = text
        .lines()
        .map(|line| hex::encode(ring::digest::digest(&ring::digest::SHA256, line.as_bytes())))
        .collect();
    assert!(
        hashes.iter().any(|h| h == head),
        "head {head} is a record's hash"
    );
    let page = browser.get("/audit?event=token_minted&job=job-audit").await;
    assert!(page.body.contains("job-audit"));
    assert!(
        !page.body.contains("<code>policy_loaded</code>"),
        "{}",
        page.body
    );

    // Bytes appended by someone other than the broker are not read (only
    // what the broker made durable is); a record rewritten in place below
    // what was read breaks the chain, and the page says so.
    use std::io::Write as _;
    let path = h.broker.audit_path();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    writeln!(file, r#"{{"seq":999999,"event":"token_minted"}}"#).unwrap();
    drop(file);
    let page = browser.get("/audit").await;
    assert!(
        page.body.contains("<strong>VERIFIED</strong>"),
        "{}",
        page.body
    );
    // The last record the page read (the broker writes nothing meanwhile:
    // the page's reads are not audited), its decision changed in place.
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines.pop(); // the appended junk
    let last = lines.last_mut().unwrap();
    let changed = last.replace("\"decision\":\"allow\"", "\"decision\":\"ALLOW\"");
    assert_ne!(*last, changed, "{last}");
    *last = changed;
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let page = browser.get("/audit").await;
    assert!(
        page.body.contains("<strong>BROKEN: </strong>"),
        "{}",
        page.body
    );
}

#[tokio::test]
async fn the_policy_page_shows_review_dates() {
    let h = ConsoleHarness::start().await;
    let browser = signed_in(&h, "alice").await;
    h.broker
        .mint("read", "read:demo/docs", &[("job", "job-lp")])
        .await;
    let page = browser.get("/policy").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("2099-01-01"), "{}", page.body);
    assert!(page.body.contains("deploy:demo/prod/*"));
    // The least-privilege report, from the verified log: the read step's
    // pattern matched the one scope minted.
    assert!(page.body.contains("Least privilege"));
    assert!(page.body.contains("(every link checked)"), "{}", page.body);
    let row = page
        .body
        .split("<tr>")
        .find(|row| {
            row.contains("<code>demo/read</code>") && row.contains("<code>read:demo/**</code>")
        })
        .unwrap_or_else(|| panic!("no row for demo/read: {}", page.body));
    assert!(row.contains("<code>read:demo/docs</code>"), "{row}");
    assert!(
        ["USED", "NARROW", "INSUFFICIENT"]
            .iter()
            .any(|s| row.contains(&format!("<strong>{s}</strong>"))),
        "{row}"
    );
}

#[tokio::test]
async fn the_webhook_links_to_the_request_page() {
    use std::sync::{Arc, Mutex};
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let receiver = {
        let received = Arc::clone(&received);
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: axum::body::Bytes| {
                let received = Arc::clone(&received);
                async move {
                    received
                        .lock()
                        .unwrap()
                        .push(serde_json::from_slice(&body).unwrap());
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _server = tokio::spawn(async move { axum::serve(listener, receiver).await });
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("webhook.secret");
    std::fs::write(&secret_file, "a-webhook-secret-of-at-least-32-bytes!!\n").unwrap();
    let h = ConsoleHarness::start_with(HarnessOptions {
        webhook: Some(stint_server::WebhookTarget {
            url: format!("http://{addr}/hook"),
            secret_file,
        }),
        ..HarnessOptions::default()
    })
    .await;
    let id = h.request_elevation("job-hook", "hotfix").await;
    let event = stint_tests::eventually(
        std::time::Duration::from_secs(10),
        "the webhook event",
        || async { received.lock().unwrap().first().cloned() },
    )
    .await;
    let link = format!("{}/approvals/{id}", h.origin);
    assert!(
        event["text"]
            .as_str()
            .unwrap()
            .ends_with(&format!(" or open {link}")),
        "{event}"
    );
    assert_eq!(event["data"]["console_url"], link.as_str());
    let browser = signed_in(&h, "alice").await;
    let page = browser.get(&link).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains(">Approve</button>"), "{}", page.body);
}

#[tokio::test]
async fn the_api_records_an_id_token_operators_identity() {
    // The same domain code serves the API: an operator with an ID token
    // is recorded with it there too, on decisions and refusals.
    let h = ConsoleHarness::start().await;
    let api = |path: &str| h.broker.url(path);
    let http = &h.broker.http;
    let stop = http
        .post(api("/v1/workloads/other-job/stop"))
        .bearer_auth(h.idp.id_token("alice"))
        .json(&json!({"comment": "drill"}))
        .send()
        .await
        .unwrap();
    assert_eq!(stop.status(), 200);
    let id = h.request_elevation("job-api", "hotfix").await;
    let refused = http
        .post(api(&format!("/v1/approvals/{id}/approve")))
        .bearer_auth(h.idp.id_token("carol"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let unknown = http
        .post(api("/v1/workloads/no-such/stop"))
        .bearer_auth(h.idp.id_token("alice"))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404, "no such workload, before its body");

    let stopped = records(&h, "workload_stopped");
    assert_eq!(stopped[0]["operator"], "alice");
    assert_eq!(stopped[0]["federated_iss"], h.idp.issuer.as_str());
    assert_eq!(stopped[0]["federated_sub"], OidcProvider::subject("alice"));
    assert!(stopped[0]["via"].is_null(), "the API is not the console");
    let refused = records(&h, "approval_refused");
    assert_eq!(refused[0]["operator"], "carol");
    assert_eq!(refused[0]["federated_sub"], OidcProvider::subject("carol"));
}

#[tokio::test]
async fn groups_from_the_id_token_last_as_long_as_it() {
    let h = ConsoleHarness::start().await;
    let id = h.request_elevation("job-erin", "hotfix").await;
    let erin = signed_in(&h, "erin").await;
    // In sre by her ID token's groups claim.
    let page = erin.get(&format!("/approvals/{id}")).await;
    assert!(page.body.contains(">Approve</button>"), "{}", page.body);
    // Past the ID token's exp (300 s): the policy's groups only, until she
    // signs in again.
    h.broker.clock.advance(TimeDelta::seconds(301));
    let page = erin.get(&format!("/approvals/{id}")).await;
    assert_eq!(page.status, 200, "still signed in");
    assert!(!page.body.contains(">Approve</button>"), "{}", page.body);
    assert!(
        page.body.contains("only members of sre decide it"),
        "{}",
        page.body
    );
    let page = decide(&erin, &id, "approve", vec![]).await;
    assert!(page.body.contains("Refused: </strong>"), "{}", page.body);
    assert!(
        page.body.contains("not in an approver group"),
        "{}",
        page.body
    );
}

#[tokio::test]
async fn one_source_holds_a_bounded_share_of_the_consoles_connections() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let h = ConsoleHarness::start().await;
    let addr = h.origin.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    for _ in 0..stint_console::MAX_CONNECTIONS_PER_SOURCE {
        held.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    // One more from the same address: closed without an answer.
    let mut extra = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let _ = extra
        .write_all(b"GET /login HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), extra.read(&mut buf))
        .await
        .expect("closed at once, not left hanging");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // Once they are gone, the console serves again.
    drop(held);
    let page = stint_tests::eventually(
        std::time::Duration::from_secs(5),
        "the console serves again",
        || async {
            let page = h.browser().get("/login").await;
            (page.status == 200).then_some(page)
        },
    )
    .await;
    assert!(page.body.contains("Sign in"));
}

#[tokio::test]
async fn a_same_site_navigation_to_a_decision_page_needs_a_click() {
    let h = ConsoleHarness::start().await;
    let id = h.request_elevation("job-site", "hotfix").await;
    let browser = signed_in(&h, "alice").await;
    // A sibling subdomain's link sends the Strict cookie: still a click.
    let page = browser
        .get_with(
            &format!("/approvals/{id}"),
            &[
                ("sec-fetch-site", "same-site"),
                ("sec-fetch-mode", "navigate"),
            ],
        )
        .await;
    assert_eq!(page.status, 200);
    assert!(!page.body.contains(">Approve</button>"), "{}", page.body);
    assert!(page.body.contains(r#"id="continue""#), "{}", page.body);
    // Typed in, or from the console itself: the page.
    let page = browser.get(&format!("/approvals/{id}")).await;
    assert!(page.body.contains(">Approve</button>"));
}

#[tokio::test]
async fn sign_ins_are_limited_per_source() {
    let h = ConsoleHarness::start().await;
    let browser = h.browser();
    let mut statuses = Vec::new();
    for _ in 0..31 {
        statuses.push(
            browser
                .get("/login/start?return_to=/approvals")
                .await
                .status,
        );
    }
    assert!(statuses[..30].iter().all(|s| *s == 303), "{statuses:?}");
    assert_eq!(statuses[30], 429);
    let page = browser.get("/callback?state=x&code=y").await;
    assert_eq!(page.status, 429, "the callback counts too");
    assert_eq!(page.headers["retry-after"], "60");
}
