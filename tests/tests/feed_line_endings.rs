//! A verifier behind a proxy that rewrites the revocation feed's line
//! endings (LF into CRLF, or into CR, as the SSE format allows) still
//! hears each revocation the moment it is made.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};
use stint_client::{Credentials, Error, Verifier};
use stint_proto::DevClient;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Relay one connection to `upstream` as HTTP/1.0 (so that the body is
/// close-delimited, not chunked), replacing every LF of an event stream's
/// body with `eol`.
async fn relay(mut client: TcpStream, upstream: std::net::SocketAddr, eol: &'static [u8]) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte).await.unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8(head)
        .unwrap()
        .replacen(" HTTP/1.1\r\n", " HTTP/1.0\r\n", 1);
    let mut server = TcpStream::connect(upstream).await.unwrap();
    server.write_all(text.as_bytes()).await.unwrap();
    let mut response_head = Vec::new();
    while !response_head.ends_with(b"\r\n\r\n") {
        if server.read(&mut byte).await.unwrap_or(0) == 0 {
            return;
        }
        response_head.push(byte[0]);
    }
    let is_stream = String::from_utf8_lossy(&response_head)
        .to_ascii_lowercase()
        .contains("content-type: text/event-stream");
    if client.write_all(&response_head).await.is_err() {
        return;
    }
    let mut buffer = [0u8; 4096];
    loop {
        let n = match server.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut out = Vec::with_capacity(n * 2);
        for &b in &buffer[..n] {
            if is_stream && b == b'\n' {
                out.extend_from_slice(eol);
            } else {
                out.push(b);
            }
        }
        if client.write_all(&out).await.is_err() {
            return;
        }
    }
}

async fn revoked_through_proxy(eol: &'static [u8]) {
    let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", proxy.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let mut config =
        stint_server::Config::dev(dir.path().join("data"), "127.0.0.1:0".parse().unwrap());
    // Tokens and metadata name the proxy: the verifier only talks to it.
    config.issuer = Some(issuer.clone());
    let broker = stint_server::start(config).await.unwrap();
    let upstream = broker.local_addr();
    let relay_task = tokio::spawn(async move {
        loop {
            let (client, _) = proxy.accept().await.unwrap();
            tokio::spawn(relay(client, upstream, eol));
        }
    });
    let dev: DevClient =
        serde_json::from_slice(&std::fs::read(broker.dev_client_path().unwrap()).unwrap()).unwrap();
    // A staleness bound far longer than the test: the status lists are not
    // polled, so only the feed can tell of the revocation.
    let verifier = Verifier::builder(&issuer)
        .audience("demo-api")
        .revocation_feed(
            Credentials::new(&dev.client_id, &dev.client_secret),
            Duration::from_secs(60),
        )
        .build()
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let direct = format!("http://{upstream}");
    let minted: serde_json::Value = http
        .post(format!("{direct}{}", stint_proto::TOKEN_PATH))
        .basic_auth(&dev.client_id, Some(&dev.client_secret))
        .form(&[
            ("grant_type", "client_credentials"),
            ("step", "read"),
            ("scope", "read:demo/a"),
            ("audience", "demo-api"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = minted["access_token"].as_str().expect("a token").to_owned();
    verifier.verify(&token).await.unwrap();
    // Made now or before the stream is open, the revocation reaches the
    // verifier through the feed: live, or in the backlog after its
    // snapshot's position.
    let revoked = http
        .post(format!("{direct}{}", stint_proto::REVOCATION_PATH))
        .basic_auth(&dev.client_id, Some(&dev.client_secret))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match verifier.verify(&token).await {
            Err(Error::Revoked) => break,
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => panic!("{eol:?}: expected Revoked from the feed, got {other:?}"),
        }
    }
    relay_task.abort();
    broker.shutdown().await;
}

#[tokio::test]
async fn a_feed_rewritten_to_crlf_still_revokes() {
    revoked_through_proxy(b"\r\n").await;
}

#[tokio::test]
async fn a_feed_rewritten_to_cr_still_revokes() {
    revoked_through_proxy(b"\r").await;
}
