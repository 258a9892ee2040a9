//! The broker under test: the real `stint-server` library, started in this
//! process as `stintd --dev` starts it (demo policy, ES256, plain HTTP on
//! loopback, the durable audit log in the data directory), with the
//! per-client and per-source limits lifted: the benchmark is one client on
//! one address asking as fast as it can, and measures the broker, not its
//! rate limiter.

use crate::load::{self, RequestTemplate};
use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use stint_proto::DevClient;
use stint_server::{Config, Rate, RunningServer};
use tokio::time::Instant;

/// The mint request's form body: the demo workflow's `read` step.
pub(crate) const MINT_FORM: &str =
    "grant_type=client_credentials&step=read&scope=read:demo/bench&audience=bench-api";

/// How long a metrics scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// A running broker and its demo client's credentials.
pub(crate) struct Broker {
    server: RunningServer,
    client: DevClient,
    audit_file: std::path::PathBuf,
}

impl Broker {
    /// Start the broker in dev mode with its data in `data_dir`.
    pub(crate) async fn start(data_dir: &Path) -> Result<Self> {
        let listen = "127.0.0.1:0".parse()?;
        let mut config = Config::dev(data_dir.to_path_buf(), listen);
        let unlimited = Rate {
            per_second: 1_000_000,
            burst: 1_000_000,
        };
        config.limits.token_rate_per_client = unlimited;
        config.limits.token_rate_per_source = unlimited;
        config.limits.max_in_flight_per_client = config.limits.max_in_flight;
        let server = stint_server::start(config)
            .await
            .context("starting the broker")?;
        let client = read_dev_client(&server)?;
        Ok(Self {
            server,
            client,
            audit_file: data_dir.join(stint_server::AUDIT_FILE),
        })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    pub(crate) fn issuer(&self) -> &str {
        self.server.issuer()
    }

    /// The mint request, addressed to `addr` (the floor gets the very same
    /// request, so the client side costs the same for both).
    pub(crate) fn mint_request(&self, addr: SocketAddr) -> Result<RequestTemplate> {
        RequestTemplate::basic_form_post(
            addr,
            stint_proto::TOKEN_PATH,
            &self.client.client_id,
            &self.client.client_secret,
            MINT_FORM,
        )
    }

    /// The audit writer's counters, from `/metrics`.
    pub(crate) async fn audit_counters(&self) -> Result<AuditCounters> {
        let addr = self.local_addr();
        let deadline = Instant::now() + SCRAPE_TIMEOUT;
        let request = RequestTemplate::new(
            Method::GET,
            addr,
            "/metrics",
            HeaderMap::new(),
            Bytes::new(),
        )?;
        let mut sender = load::connect(addr, deadline).await?;
        let (status, body) = load::exchange(&mut sender, request.build(), deadline).await?;
        if status != StatusCode::OK {
            bail!("GET /metrics answered {status}");
        }
        let mut counters = AuditCounters::parse(&String::from_utf8_lossy(&body))?;
        counters.bytes = audit_bytes(&self.audit_file)?;
        Ok(counters)
    }

    pub(crate) async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

fn read_dev_client(server: &RunningServer) -> Result<DevClient> {
    let path = server
        .dev_client_path()
        .context("the dev broker wrote no client credentials")?;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The bytes of the audit log, its rotated files included.
fn audit_bytes(current: &Path) -> Result<f64> {
    let files = stint_server::audit::chain_files(current)
        .with_context(|| format!("listing the files of {}", current.display()))?;
    let mut total = 0u64;
    for file in files {
        total += std::fs::metadata(&file)
            .with_context(|| format!("reading {}", file.display()))?
            .len();
    }
    Ok(total as f64)
}

/// How many audit records were made durable, in how many fsyncs, and the
/// log's size in bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct AuditCounters {
    pub(crate) records: f64,
    pub(crate) fsyncs: f64,
    pub(crate) bytes: f64,
}

impl AuditCounters {
    /// Read the group-commit histogram's sum and count out of the
    /// OpenMetrics text.
    fn parse(metrics: &str) -> Result<Self> {
        let value = |name: &str| {
            metric_value(metrics, name).with_context(|| format!("no {name} in /metrics"))
        };
        Ok(Self {
            records: value("stint_audit_batch_records_sum")?,
            fsyncs: value("stint_audit_batch_records_count")?,
            bytes: 0.0,
        })
    }

    /// The counters' growth since `earlier`.
    pub(crate) fn since(self, earlier: Self) -> Self {
        Self {
            records: self.records - earlier.records,
            fsyncs: self.fsyncs - earlier.fsyncs,
            bytes: self.bytes - earlier.bytes,
        }
    }
}

/// The value of the unlabelled sample `name` in OpenMetrics text.
fn metric_value(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        (fields.next()? == name).then(|| fields.next()?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_counters_come_from_the_batch_histogram() {
        let text = "# TYPE stint_audit_batch_records histogram\n\
                    stint_audit_batch_records_sum 1234.0\n\
                    stint_audit_batch_records_count 56\n\
                    stint_audit_batch_records_bucket{le=\"1.0\"} 3\n\
                    stint_audit_records_total 1234\n";
        let counters = AuditCounters::parse(text).unwrap();
        assert_eq!(
            counters,
            AuditCounters {
                records: 1234.0,
                fsyncs: 56.0,
                bytes: 0.0,
            }
        );
        assert!(AuditCounters::parse("stint_tokens_minted_total 3\n").is_err());
    }
}
