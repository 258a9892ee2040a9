//! The example end to end: a broker, `demo-target` and `demo-connector`,
//! the last two as the real binaries.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

#[tokio::test(flavor = "multi_thread")]
async fn the_connector_runs_its_job_against_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let config = stint_server::Config::dev(dir.path().join("data"), "127.0.0.1:0".parse().unwrap());
    let server = stint_server::start(config).await.unwrap();
    let credentials = server.dev_client_path().unwrap().to_owned();

    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut target = Command::new(env!("CARGO_BIN_EXE_demo-target"))
        .arg("--credentials")
        .arg(&credentials)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for its "listening" line.
    let mut lines = BufReader::new(target.stdout.take().unwrap()).lines();
    let first = tokio::task::spawn_blocking(move || {
        let line = lines.next();
        (line, lines)
    })
    .await
    .unwrap();
    let (line, _rest) = first;
    assert!(line.unwrap().unwrap().contains("listening"));

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_demo-connector"))
        .arg("--credentials")
        .arg(&credentials)
        .args([
            "--target",
            &format!("http://127.0.0.1:{port}"),
            "--job",
            "demo-test",
        ])
        .output()
        .await
        .unwrap();
    let _ = target.kill();
    let _ = target.wait();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in [
        "[read]  GET /reports/q3 -> 200 revenue up 4%",
        "[read]  the same token again -> 401",
        "[write] PUT /reports/q3-summary -> 200 stored",
        "[write] PUT /reports/q4 with the same token -> 403",
        "job demo-test complete",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    server.shutdown().await;
}
