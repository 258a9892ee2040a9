//! `demo-connector`: what a connector built on the SDK looks like. It runs
//! one job of two steps against `demo-target`, each step with a token that
//! carries only that step's scope and is revoked the moment the step ends,
//! and shows the target refusing a finished step's token.
//!
//! ```sh
//! demo-connector --credentials stint-data/dev-client.json --target http://127.0.0.1:8790
//! ```

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use stint_client::{Client, StepToken};

/// Run a two-step job against demo-target.
#[derive(Debug, Parser)]
struct Args {
    /// The broker's credentials file (`stintd --dev` writes it).
    #[arg(long, default_value = "stint-data/dev-client.json")]
    credentials: PathBuf,
    /// demo-target's URL.
    #[arg(long, default_value = "http://127.0.0.1:8790")]
    target: String,
    /// The job id [default: demo-SECONDS].
    #[arg(long)]
    job: Option<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("demo-connector: {error}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

async fn run(args: Args) -> Result<()> {
    let client = Client::from_dev_client_file(&args.credentials).await?;
    let http = reqwest::Client::new();
    let job_id = args.job.unwrap_or_else(|| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        format!("demo-{now}")
    });
    let job = client.job(job_id.clone());
    println!("job {job_id}");

    // Step 1: read the Q3 report.
    let read = job
        .step("read")
        .scope("read:demo/reports/q3")
        .audience("demo-api")
        .ttl(Duration::from_secs(60))
        .request()
        .await?;
    describe("read", &read);
    let (status, report) = call(&http, "GET", &args.target, "q3", read.token(), None).await?;
    println!("[read]  GET /reports/q3 -> {status} {report}");
    expect(status == 200, "the read step could not read its report")?;
    let spent = read.token().to_owned();
    read.finish().await?;
    println!("[read]  finished: the broker acknowledged the revocation");
    let (status, answer) = call(&http, "GET", &args.target, "q3", &spent, None).await?;
    println!("[read]  the same token again -> {status} {answer}");
    expect(status == 401, "a finished step's token was still accepted")?;

    // Step 2: write a summary, and only that.
    let write = job
        .step("write")
        .scope("write:demo/reports/q3-summary")
        .audience("demo-api")
        .ttl(Duration::from_secs(60))
        .request()
        .await?;
    describe("write", &write);
    let summary = format!("summary: {report}");
    let (status, answer) = call(
        &http,
        "PUT",
        &args.target,
        "q3-summary",
        write.token(),
        Some(summary),
    )
    .await?;
    println!("[write] PUT /reports/q3-summary -> {status} {answer}");
    expect(status == 200, "the write step could not write its report")?;
    let (status, answer) = call(
        &http,
        "PUT",
        &args.target,
        "q4",
        write.token(),
        Some("not mine to write".into()),
    )
    .await?;
    println!("[write] PUT /reports/q4 with the same token -> {status} {answer}");
    expect(status == 403, "a token was accepted outside its scope")?;
    write.finish().await?;
    println!("[write] finished: the broker acknowledged the revocation");

    job.complete().await?;
    println!("job {job_id} complete: every token it held is revoked, and it gets no new ones");
    Ok(())
}

fn describe(step: &str, token: &StepToken) {
    let label = format!("[{step}]");
    println!(
        "{label:<7} token minted for {} (expires in {} s)",
        token.scopes().collect::<Vec<_>>().join(" "),
        token.expires_in()
    );
}

async fn call(
    http: &reqwest::Client,
    method: &str,
    target: &str,
    report: &str,
    token: &str,
    body: Option<String>,
) -> Result<(u16, String)> {
    let url = format!("{target}/reports/{report}");
    let request = match method {
        "PUT" => http.put(&url).body(body.unwrap_or_default()),
        _ => http.get(&url),
    };
    let response = request.bearer_auth(token).send().await?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    Ok((status, text.trim_end().to_owned()))
}

fn expect(ok: bool, what: &str) -> Result<()> {
    if ok { Ok(()) } else { Err(what.into()) }
}
