//! The `StepToken` guard's promise at process exit, tested on a real
//! program: `guard-at-exit` mints a token, prints it and returns from
//! `main` without `finish()` or `Client::flush()`. Once the process has
//! exited, the broker must already say the token is inactive (no polling:
//! the revocation is acknowledged before the process ends).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;
use stint_client::Client;

#[tokio::test(flavor = "multi_thread")]
async fn a_guard_dropped_as_main_returns_is_revoked_before_the_process_exits() {
    let dir = tempfile::tempdir().unwrap();
    let config = stint_server::Config::dev(dir.path().join("data"), "127.0.0.1:0".parse().unwrap());
    let server = stint_server::start(config).await.unwrap();
    let credentials = server.dev_client_path().unwrap().to_owned();
    let client = Client::from_dev_client_file(&credentials).await.unwrap();

    let cases: [(&[&str], bool); 8] = [
        (&[], true),
        (&["--current-thread"], true),
        (&["--in-task"], true),
        (&["--current-thread", "--in-task"], true),
        (&["--fail"], false),
        (&["--panic"], false),
        (&["--current-thread", "--panic"], false),
        // Many in flight at once: all revoked before the exit.
        (&["--in-task", "--count", "20"], true),
    ];
    for (flags, succeeds) in cases {
        let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_guard-at-exit"))
            .arg("--credentials")
            .arg(&credentials)
            .args(flags)
            .output();
        // Bounded: the revocation may hold the exit up for at most
        // EXIT_REVOCATION_TIMEOUT.
        let output = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("guard-at-exit ends")
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.success(),
            succeeds,
            "{flags:?}: {:?}\n{stdout}\n{stderr}",
            output.status
        );
        assert!(stdout.lines().count() >= 1, "{flags:?}: {stdout}");
        for token in stdout.lines() {
            assert!(token.starts_with("ey"), "{flags:?}: {stdout}");
            let answer = client.introspect(token).await.unwrap();
            assert!(
                !answer.active,
                "{flags:?}: the token is revoked by the time the process has exited"
            );
        }
    }
    server.shutdown().await;
}

/// A broker gone by the time the program ends cannot hold its exit up for
/// more than EXIT_REVOCATION_TIMEOUT in all, however many guards it drops.
#[tokio::test(flavor = "multi_thread")]
async fn a_broker_gone_at_exit_holds_the_exit_up_a_bounded_time() {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let dir = tempfile::tempdir().unwrap();
    let config = stint_server::Config::dev(dir.path().join("data"), "127.0.0.1:0".parse().unwrap());
    let server = stint_server::start(config).await.unwrap();
    let credentials = server.dev_client_path().unwrap().to_owned();
    let count = 10;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_guard-at-exit"))
        .arg("--credentials")
        .arg(&credentials)
        .args(["--in-task", "--wait", "--count", &count.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    for _ in 0..count {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the tokens are minted")
            .unwrap();
        assert!(line.is_some_and(|token| token.starts_with("ey")));
    }
    server.shutdown().await;
    let started = std::time::Instant::now();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"\n").await.unwrap();
    drop(stdin);
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("guard-at-exit ends")
        .unwrap();
    let took = started.elapsed();
    assert!(status.success(), "{status:?}");
    // One deadline for all ten, not ten in a row (that would be 50 s);
    // the margin is for a loaded machine.
    assert!(
        took < stint_client::EXIT_REVOCATION_TIMEOUT + Duration::from_secs(10),
        "the exit was held up {took:?}"
    );
}
