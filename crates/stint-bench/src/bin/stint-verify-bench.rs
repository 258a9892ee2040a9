//! `stint-verify-bench`: what the SDK's offline `Verifier` costs per token,
//! next to the least any verifier must do.
//!
//! It starts the broker library in this process (as `stintd --dev`, ES256,
//! on 127.0.0.1), mints `--tokens` real tokens through the SDK, builds a
//! `Verifier` for them, and then, in each of `--runs` runs, times
//! `--iterations` verifications of the tokens in turn, two ways:
//!
//! - **raw**: split the token, base64url-decode its signature, and check it
//!   with ring's ECDSA P-256 verification against the broker's public key,
//!   already decoded. No header, no claims, no checks: the floor.
//! - **sdk**: `Verifier::verify`, awaited, with the keys cached: header
//!   parse, `alg` pinned to the key, `typ`, signature, claims parsed,
//!   `iss`, `aud`, `nbf` and `exp` checked.
//!
//! It prints each run, then the medians and their ratio (target: within
//! 1.5x of raw). One thread; the machine's other load shows in the spread
//! of the runs.
//!
//! ```text
//! cargo run --release -p stint-bench --bin stint-verify-bench
//! ```

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::Parser;
use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use std::hint::black_box;
use std::time::{Duration, Instant};
use stint_client::{Client, Verifier};

/// The target: the SDK within this factor of raw signature verification.
const TARGET_RATIO: f64 = 1.5;

/// Offline token verification: the SDK against raw ring.
#[derive(Debug, Parser)]
struct Args {
    /// Distinct tokens to verify in turn.
    #[arg(long, default_value_t = 200)]
    tokens: usize,
    /// Verifications per way per run.
    #[arg(long, default_value_t = 20_000)]
    iterations: usize,
    /// Runs; the medians are reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.tokens == 0 || args.iterations == 0 || args.runs == 0 {
        bail!("--tokens, --iterations and --runs must be above zero");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(&args))
}

async fn run(args: &Args) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = stint_server::Config::dev(dir.path().join("data"), "127.0.0.1:0".parse()?);
    let server = stint_server::start(config).await?;
    let credentials = server
        .dev_client_path()
        .context("the dev broker wrote no credentials")?
        .to_owned();
    let client = Client::from_dev_client_file(&credentials).await?;
    let verifier = Verifier::builder(server.issuer())
        .audience("demo-api")
        .build()
        .await?;

    let mut tokens = Vec::with_capacity(args.tokens);
    for i in 0..args.tokens {
        let step = client
            .step("read")
            .scope(format!("read:demo/bench/{i}"))
            .audience("demo-api")
            .request()
            .await?;
        tokens.push(step.detach());
    }
    let public_key = public_key(server.issuer()).await?;

    println!("stint-verify-bench: offline verification of ES256 access tokens, one thread");
    println!(
        "{} distinct tokens, {} verifications per way per run, {} runs\n",
        args.tokens, args.iterations, args.runs
    );
    let mut raw_ns = Vec::with_capacity(args.runs);
    let mut sdk_ns = Vec::with_capacity(args.runs);
    for run in 1..=args.runs {
        let raw = time(args.iterations, |i| {
            raw_verify(&public_key, &tokens[i % tokens.len()])
        })?;
        let sdk = time_async(args.iterations, &tokens, &verifier).await?;
        let (raw, sdk) = (
            per_op_ns(raw, args.iterations),
            per_op_ns(sdk, args.iterations),
        );
        println!(
            "run {run}/{}: raw {raw:.0} ns/token, sdk {sdk:.0} ns/token, ratio {:.2}",
            args.runs,
            sdk / raw
        );
        raw_ns.push(raw);
        sdk_ns.push(sdk);
    }
    let raw = median(&mut raw_ns);
    let sdk = median(&mut sdk_ns);
    let ratio = sdk / raw;
    println!("\nmedian of {} runs:", args.runs);
    println!(
        "raw ring ES256 signature check: {raw:.0} ns/token ({:.0} tokens/s)",
        1e9 / raw
    );
    println!(
        "SDK Verifier::verify:           {sdk:.0} ns/token ({:.0} tokens/s)",
        1e9 / sdk
    );
    println!(
        "ratio sdk/raw: {ratio:.2}   (target <= {TARGET_RATIO}: {})",
        if ratio <= TARGET_RATIO {
            "met"
        } else {
            "NOT met"
        }
    );
    server.shutdown().await;
    Ok(())
}

/// The broker's ES256 public key as an uncompressed point, from its JWKS.
async fn public_key(issuer: &str) -> Result<Vec<u8>> {
    let jwks: serde_json::Value = reqwest::get(format!("{issuer}{}", stint_proto::JWKS_PATH))
        .await?
        .json()
        .await?;
    let key = &jwks["keys"][0];
    let coordinate = |name: &str| -> Result<Vec<u8>> {
        let text = key[name].as_str().context("the JWK lacks a coordinate")?;
        Ok(URL_SAFE_NO_PAD.decode(text)?)
    };
    let mut point = vec![0x04];
    point.extend(coordinate("x")?);
    point.extend(coordinate("y")?);
    Ok(point)
}

/// The least work that checks a compact JWS: split, decode the signature,
/// verify it over the signing input.
fn raw_verify(public_key: &[u8], token: &str) -> Result<()> {
    let (signing_input, signature) = token.rsplit_once('.').context("not a JWS")?;
    let signature = URL_SAFE_NO_PAD.decode(signature)?;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public_key)
        .verify(signing_input.as_bytes(), &signature)
        .map_err(|_| anyhow::anyhow!("bad signature"))
}

fn time(iterations: usize, mut op: impl FnMut(usize) -> Result<()>) -> Result<Duration> {
    let started = Instant::now();
    for i in 0..iterations {
        black_box(op(black_box(i)))?;
    }
    Ok(started.elapsed())
}

async fn time_async(iterations: usize, tokens: &[String], verifier: &Verifier) -> Result<Duration> {
    let started = Instant::now();
    for i in 0..iterations {
        let verified = verifier
            .verify(black_box(&tokens[i % tokens.len()]))
            .await?;
        black_box(verified);
    }
    Ok(started.elapsed())
}

fn per_op_ns(elapsed: Duration, iterations: usize) -> f64 {
    elapsed.as_secs_f64() * 1e9 / iterations as f64
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}
