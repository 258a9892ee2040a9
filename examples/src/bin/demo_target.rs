//! `demo-target`: a stand-in for the system a connector works on. It keeps
//! a few "reports" in memory and lets a request read or write one only if
//! it carries a Stint token for `demo-api` that allows exactly that:
//! `read:demo/reports/NAME` to GET, `write:demo/reports/NAME` to PUT.
//!
//! Tokens are verified offline with the SDK's `Verifier`, and then, because
//! this demo wants to show revocation, the broker is asked whether the
//! token is still active (`verify_active`, with no cache).
//!
//! ```sh
//! demo-target --credentials stint-data/dev-client.json --listen 127.0.0.1:8790
//! ```

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::get;
use clap::Parser;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stint_client::{Credentials, Verifier};
use stint_proto::DevClient;

/// A demo service protected by Stint tokens.
#[derive(Debug, Parser)]
struct Args {
    /// The broker's credentials file (`stintd --dev` writes it): the issuer,
    /// and the client this service introspects tokens as.
    #[arg(long, default_value = "stint-data/dev-client.json")]
    credentials: PathBuf,
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8790")]
    listen: SocketAddr,
}

struct Service {
    verifier: Verifier,
    reports: Mutex<BTreeMap<String, String>>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let dev: DevClient = serde_json::from_slice(&std::fs::read(&args.credentials)?)?;
    let verifier = Verifier::builder(&dev.issuer)
        .audience("demo-api")
        .introspection(
            Credentials::new(dev.client_id, dev.client_secret),
            Duration::ZERO,
        )
        .build()
        .await?;
    let mut reports = BTreeMap::new();
    reports.insert("q3".to_owned(), "revenue up 4%".to_owned());
    let service = Arc::new(Service {
        verifier,
        reports: Mutex::new(reports),
    });
    let app = axum::Router::new()
        .route("/reports/{name}", get(read).put(write))
        .with_state(service);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("demo-target listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

/// Check the bearer token: verified, active, and allowing `action` on the
/// report. The error is the status and a line saying why.
async fn authorize(
    service: &Service,
    headers: &HeaderMap,
    action: &str,
    name: &str,
) -> Result<String, (StatusCode, String)> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or((StatusCode::UNAUTHORIZED, "no bearer token\n".to_owned()))?;
    let verified = service
        .verifier
        .verify_active(token)
        .await
        .map_err(|e| (StatusCode::UNAUTHORIZED, format!("{e}\n")))?;
    let resource = format!("demo/reports/{name}");
    if !verified.allows(action, &resource) {
        return Err((
            StatusCode::FORBIDDEN,
            format!("the token does not allow {action}:{resource}\n"),
        ));
    }
    Ok(format!("job {} step {}", verified.job(), verified.step()))
}

async fn read(
    State(service): State<Arc<Service>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<String, (StatusCode, String)> {
    let who = authorize(&service, &headers, "read", &name).await?;
    let reports = service
        .reports
        .lock()
        .map_err(|_| (StatusCode::INTERNAL_SERVER_ERROR, "poisoned\n".to_owned()))?;
    let report = reports
        .get(&name)
        .ok_or((StatusCode::NOT_FOUND, format!("no report {name}\n")))?;
    println!("demo-target: {who} read report {name}");
    Ok(format!("{report}\n"))
}

async fn write(
    State(service): State<Arc<Service>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Result<String, (StatusCode, String)> {
    let who = authorize(&service, &headers, "write", &name).await?;
    if body.len() > 4096 {
        return Err((StatusCode::PAYLOAD_TOO_LARGE, "too long\n".to_owned()));
    }
    service
        .reports
        .lock()
        .map_err(|_| (StatusCode::INTERNAL_SERVER_ERROR, "poisoned\n".to_owned()))?
        .insert(name.clone(), body);
    println!("demo-target: {who} wrote report {name}");
    Ok("stored\n".to_owned())
}
