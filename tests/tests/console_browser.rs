//! The console end to end in a real browser: Debian's Chromium, headless,
//! driven over WebDriver by its chromedriver. One browser session: operator
//! alice signs in through the identity provider and approves, signs out;
//! bob signs in and approves; the waiting job gets its token, and the audit
//! chain verifies. Screenshots of the request page (phone and desktop
//! sizes) are written under `target/console-screenshots/`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use stint_tests::console::{ConsoleHarness, ELEVATED, STANDING};
use stint_tests::webdriver::Driver;

fn screenshots() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("console-screenshots")
}

/// Sign in as `user` from wherever the browser is (a sign-in page).
async fn sign_in(driver: &Driver, user: &str) {
    let start = driver.find("main a.button").await;
    driver.click(&start).await;
    // The identity provider's page.
    let button = driver.find(&format!("#as-{user}")).await;
    driver.click(&button).await;
    // Signed in; a request's page (it has decisions on it) is one click
    // further, never reached by itself from another site's navigation.
    let go_on = driver.find("#continue").await;
    driver.click(&go_on).await;
}

#[tokio::test]
async fn two_operators_approve_in_a_browser_and_the_job_mints() {
    let h = ConsoleHarness::start().await;
    let id = h
        .request_elevation("job-browser", "hotfix for INC-4711 <b>now</b>")
        .await;
    // A phone-sized window first.
    let driver = Driver::start(390, 844).await;

    // The webhook's link, opened by someone signed out.
    let link = format!("{}/approvals/{id}", h.origin);
    driver.goto(&link).await;
    driver.wait_for_text("Sign in with corp").await;
    sign_in(&driver, "alice").await;
    // Back on the request's page, signed in (the session cookie is
    // Secure, HttpOnly, SameSite=Strict, and the browser keeps it).
    driver.find("#duration").await;
    assert!(driver.url().await.ends_with(&format!("/approvals/{id}")));
    let source = driver.source().await;
    assert!(source.contains("Signed in as <strong>alice</strong>"));
    assert!(source.contains(STANDING) && source.contains(ELEVATED));
    assert!(
        source.contains("hotfix for INC-4711 &lt;b&gt;now&lt;/b&gt;"),
        "{source}"
    );
    let cookies = driver.cookies().await;
    let session = cookies
        .iter()
        .find(|c| c["name"] == stint_console::SESSION_COOKIE)
        .unwrap_or_else(|| panic!("the browser kept no session cookie: {cookies:?}"));
    assert_eq!(session["httpOnly"], true);
    assert_eq!(session["secure"], true);
    assert_eq!(session["sameSite"], "Strict");
    assert_eq!(session["path"], "/");
    let phone = driver
        .screenshot(&screenshots().join("approval-request-phone.png"))
        .await;

    let comment = driver.find("#approve-comment").await;
    driver.type_into(&comment, "checked the diff").await;
    let approve = driver.find("button[value='approve']").await;
    driver.click(&approve).await;
    driver.wait_for_text("Approved: 1 of 2 approvals.").await;

    // Sign out; bob signs in in the same browser.
    let sign_out = driver.find("form.signout button").await;
    driver.click(&sign_out).await;
    driver.wait_for_text("Sign in with corp").await;
    driver.goto(&link).await;
    sign_in(&driver, "bob").await;
    driver.find("#duration").await;
    assert!(
        driver
            .source()
            .await
            .contains("Signed in as <strong>bob</strong>")
    );
    driver.resize(1280, 900).await;
    let desktop = driver
        .screenshot(&screenshots().join("approval-request-desktop.png"))
        .await;
    let duration = driver.find("#duration").await;
    driver.clear(&duration).await;
    driver.type_into(&duration, "15m").await;
    let approve = driver.find("button[value='approve']").await;
    driver.click(&approve).await;
    driver
        .wait_for_text("Approved: the quorum is reached (2 of 2)")
        .await;
    driver
        .screenshot(&screenshots().join("approval-approved-desktop.png"))
        .await;

    // The waiting job polls and gets its token.
    let token = h
        .broker
        .mint(
            "deploy",
            &format!("{STANDING} {ELEVATED}"),
            &[
                ("job", "job-browser"),
                ("approval_id", &id),
                ("reason", "hotfix for INC-4711 <b>now</b>"),
            ],
        )
        .await;
    let (_, claims) = stint_tests::decode_jwt(token["access_token"].as_str().unwrap());
    assert_eq!(claims["elev"], id.as_str());
    assert!(claims["scope"].as_str().unwrap().contains(ELEVATED));

    // The live page lists it; the audit page says the chain verifies.
    driver.goto(&format!("{}/live", h.origin)).await;
    driver.wait_for_text(claims["jti"].as_str().unwrap()).await;
    driver
        .screenshot(&screenshots().join("live-desktop.png"))
        .await;
    driver.goto(&format!("{}/audit", h.origin)).await;
    driver.wait_for_text("<strong>VERIFIED</strong>").await;

    // And independently of the console: every link of the file checks out,
    // with both approvals made through it.
    let file = std::fs::File::open(h.broker.audit_path()).unwrap();
    stint_core::audit::verify(std::io::BufReader::new(file)).expect("the audit chain verifies");
    let granted: Vec<_> = h
        .broker
        .audit_records()
        .into_iter()
        .filter(|r| r["event"] == "approval_granted")
        .collect();
    assert_eq!(granted.len(), 2);
    assert_eq!(granted[0]["operator"], "alice");
    assert_eq!(granted[1]["operator"], "bob");
    assert!(granted.iter().all(|r| r["via"] == "console"));
    for shot in [phone, desktop] {
        assert!(std::fs::metadata(&shot).unwrap().len() > 10_000, "{shot:?}");
    }
}
