//! `stintd`: parse arguments, set up logging, run the broker library.

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use stint_core::jose::Algorithm;
use stint_core::policy::Policy;
use stint_server::config::DEFAULT_DEV_PORT;
use stint_server::{Config, Limits, PolicySource, StartError, TlsFiles};
use tracing_subscriber::EnvFilter;

/// Stint: short-lived, step-scoped tokens for automation.
#[derive(Debug, Parser)]
#[command(name = "stintd", version, about, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// Development mode: the built-in demo policy (unless --policy is
    /// given), plain HTTP allowed on a loopback address, and
    /// DATA_DIR/dev-client.json with the demo client's credentials.
    #[arg(long, env = "STINTD_DEV")]
    dev: bool,

    /// Where the store, the audit log and the signing keys live.
    #[arg(long, env = "STINTD_DATA_DIR", default_value = "./stint-data")]
    data_dir: PathBuf,

    /// The address to listen on [default: 127.0.0.1:8780].
    #[arg(long, env = "STINTD_LISTEN")]
    listen: Option<SocketAddr>,

    /// The policy file (TOML); re-read on SIGHUP.
    #[arg(long, env = "STINTD_POLICY")]
    policy: Option<PathBuf>,

    /// The issuer URL [default: derived from the listener, e.g. https://127.0.0.1:8780].
    #[arg(long, env = "STINTD_ISSUER")]
    issuer: Option<String>,

    /// TLS certificate chain (PEM). Required unless --dev on loopback.
    #[arg(long, env = "STINTD_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// TLS private key (PEM).
    #[arg(long, env = "STINTD_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// The signature algorithm of new signing keys.
    #[arg(long, env = "STINTD_SIGNING_ALG", value_enum, default_value_t = SigningAlg::Es256)]
    signing_alg: SigningAlg,

    /// Accept TLS client certificates chaining to this CA bundle (PEM):
    /// workloads bound to a certificate SAN authenticate with
    /// tls_client_auth (RFC 8705), and their tokens are certificate-bound.
    #[arg(long, env = "STINTD_CLIENT_CA_FILE", requires = "tls_cert")]
    client_ca_file: Option<PathBuf>,

    /// With --client-ca-file: refuse TLS connections without a client
    /// certificate.
    #[arg(long, env = "STINTD_REQUIRE_CLIENT_CERT", requires = "client_ca_file")]
    require_client_cert: bool,

    /// Extra CA certificates (PEM) to trust when fetching the keys of the
    /// policy's trusted OIDC issuers, besides the web roots.
    #[arg(long, env = "STINTD_FEDERATION_CA_FILE")]
    federation_ca_file: Option<PathBuf>,

    /// Announce approval requests and decisions to this URL (JSON with a
    /// Slack-compatible `text`, signed in the stint-signature header).
    #[arg(
        long,
        env = "STINTD_APPROVAL_WEBHOOK_URL",
        requires = "approval_webhook_secret_file"
    )]
    approval_webhook_url: Option<String>,

    /// The webhook's HMAC secret: a file of at least 32 bytes.
    #[arg(
        long,
        env = "STINTD_APPROVAL_WEBHOOK_SECRET_FILE",
        requires = "approval_webhook_url"
    )]
    approval_webhook_secret_file: Option<PathBuf>,

    /// How often a job waiting for an approval may poll, in seconds (1-60).
    #[arg(long, env = "STINTD_APPROVAL_INTERVAL", default_value_t = 5)]
    approval_interval: u64,

    /// How often a quiet revocation feed stream sends a keep-alive, in
    /// seconds (1-300): verifiers notice a dead connection after about
    /// twice this.
    #[arg(long, env = "STINTD_FEED_KEEPALIVE", default_value_t = 15)]
    feed_keepalive: u64,

    /// The most revocation feed streams open at once (503 beyond; 0 turns
    /// the stream off and verifiers poll the status lists).
    #[arg(long, env = "STINTD_FEED_MAX_STREAMS", default_value_t = 2048)]
    feed_max_streams: usize,

    /// The most feed streams one client may hold open (429 beyond).
    #[arg(
        long,
        env = "STINTD_FEED_MAX_STREAMS_PER_CLIENT",
        default_value_t = 256
    )]
    feed_max_streams_per_client: usize,

    /// A file holding a bearer token (32 to 1024 printable characters) that
    /// /metrics then requires (`Authorization: Bearer`, Prometheus'
    /// `authorization.credentials_file`). Without it /metrics is open to
    /// anyone who can reach the listener, and leaves out the policy's
    /// workflow names.
    #[arg(long, env = "STINTD_METRICS_TOKEN_FILE")]
    metrics_token_file: Option<PathBuf>,

    /// Log filter, in RUST_LOG syntax.
    #[arg(long, env = "STINTD_LOG", default_value = "info")]
    log: String,

    /// Log as JSON lines instead of text.
    #[arg(long, env = "STINTD_LOG_JSON")]
    log_json: bool,
}

const AFTER_HELP: &str = "Every option can also be set through the environment variable shown.\n\
Examples:\n  stintd --dev\n  stintd --policy /etc/stint/policy.toml --tls-cert cert.pem --tls-key key.pem --listen 0.0.0.0:8443";

#[derive(Debug, Subcommand)]
enum Command {
    /// Make a client secret for a workload: prints the secret (give it to
    /// the workload) and the policy lines with its SHA-256.
    NewClient {
        /// The workload's name.
        name: String,
    },
    /// Make a key for an operator (a person who approves elevations):
    /// prints the key (give it to them) and the policy lines with its
    /// SHA-256.
    NewOperator {
        /// The operator's name.
        name: String,
    },
    /// Validate a policy file, as the broker does at load, and exit.
    CheckPolicy {
        /// The policy file.
        file: PathBuf,
    },
    /// Walk an audit log's hash chain; name the first broken record.
    VerifyAudit {
        /// The audit log (DATA_DIR/audit.jsonl).
        file: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SigningAlg {
    /// ECDSA P-256 (ES256).
    Es256,
    /// Ed25519 (EdDSA).
    Ed25519,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::NewClient { ref name }) => return report(new_client(name)),
        Some(Command::NewOperator { ref name }) => return report(new_operator(name)),
        Some(Command::CheckPolicy { ref file }) => return report(check_policy(file)),
        Some(Command::VerifyAudit { ref file }) => return report(verify_audit(file)),
        None => {}
    }
    let filter = EnvFilter::try_new(&cli.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if cli.log_json {
        subscriber.json().init();
    } else {
        subscriber.init();
    }
    let config = config_from(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("stintd: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(stint_server::run(config, |server| {
        // The banner goes to stdout; logs go to stderr.
        println!("{}", server.banner());
    }));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error @ StartError::Config(_)) => {
            eprintln!("stintd: {error}");
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("stintd: {error}");
            ExitCode::FAILURE
        }
    }
}

fn config_from(cli: &Cli) -> Config {
    let policy = match &cli.policy {
        Some(path) => PolicySource::File(path.clone()),
        None => PolicySource::Demo,
    };
    let tls = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => None,
    };
    Config {
        listen: cli
            .listen
            .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_DEV_PORT))),
        data_dir: cli.data_dir.clone(),
        issuer: cli.issuer.clone(),
        policy,
        tls,
        dev: cli.dev,
        signing_alg: match cli.signing_alg {
            SigningAlg::Es256 => Algorithm::ES256,
            SigningAlg::Ed25519 => Algorithm::EdDSA,
        },
        limits: Limits::default(),
        federation_ca: cli.federation_ca_file.clone(),
        client_certificates: cli.client_ca_file.clone().map(|ca| {
            stint_server::ClientCertificates {
                ca,
                required: cli.require_client_cert,
            }
        }),
        approval_interval: std::time::Duration::from_secs(cli.approval_interval),
        feed_keepalive: std::time::Duration::from_secs(cli.feed_keepalive),
        feed_max_streams: cli.feed_max_streams,
        feed_max_streams_per_client: cli.feed_max_streams_per_client,
        metrics_token_file: cli.metrics_token_file.clone(),
        webhook: match (&cli.approval_webhook_url, &cli.approval_webhook_secret_file) {
            (Some(url), Some(secret_file)) => Some(stint_server::WebhookTarget {
                url: url.clone(),
                secret_file: secret_file.clone(),
            }),
            _ => None,
        },
    }
}

fn new_client(name: &str) -> anyhow::Result<()> {
    stint_core::ids::validate_name(name).map_err(|e| anyhow::anyhow!("the workload name {e}"))?;
    let secret = stint_core::secret::generate(&ring::rand::SystemRandom::new())
        .map_err(|_| anyhow::anyhow!("the system random number generator failed"))?;
    let hash = stint_core::secret::hash_hex(&secret);
    eprintln!(
        "Give this secret to workload {name:?} (it is shown once; the broker keeps only its hash):"
    );
    println!("{secret}");
    eprintln!(
        "\nAdd to the policy:\n\n[workloads.{name}]\nsecret_sha256 = \"{hash}\"\nworkflows = [\"WORKFLOW\"]  # the workflows it may run\n"
    );
    Ok(())
}

fn new_operator(name: &str) -> anyhow::Result<()> {
    stint_core::ids::validate_name(name).map_err(|e| anyhow::anyhow!("the operator name {e}"))?;
    let key = stint_core::secret::generate(&ring::rand::SystemRandom::new())
        .map_err(|_| anyhow::anyhow!("the system random number generator failed"))?;
    let hash = stint_core::secret::hash_hex(&key);
    eprintln!(
        "Give this key to operator {name:?} (it is shown once; the broker keeps only its hash).\nThey use it as STINT_OPERATOR_KEY with `stint approvals`, `stint approve`, `stint deny`:"
    );
    println!("{key}");
    eprintln!(
        "\nAdd to the policy:\n\n[operators.{name}]\nkey_sha256 = \"{hash}\"\ngroups = [\"GROUP\"]      # the approver groups they are in\nowns = []                # workloads whose requests they must not approve\n"
    );
    Ok(())
}

fn check_policy(file: &std::path::Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let policy = Policy::parse(&file.display().to_string(), &text)
        .map_err(|errors| anyhow::anyhow!("{errors}"))?;
    for warning in policy.review_warnings(chrono_today()) {
        eprintln!("warning: {warning}");
    }
    println!(
        "{}: ok ({} workloads, {} workflows)",
        file.display(),
        policy.workloads().count(),
        policy.workflows().count()
    );
    Ok(())
}

fn verify_audit(file: &std::path::Path) -> anyhow::Result<()> {
    let log =
        std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
    let summary = stint_core::audit::verify(std::io::BufReader::new(log))
        .map_err(|error| anyhow::anyhow!("{}: chain broken: {error}", file.display()))?;
    println!(
        "{}: {} records, chain intact, head {}",
        file.display(),
        summary.records,
        summary.head
    );
    eprintln!("(keep the head hash elsewhere: a cut-off tail is only detectable against it)");
    Ok(())
}

fn chrono_today() -> stint_core::chrono::NaiveDate {
    use stint_core::Clock as _;
    stint_core::SystemClock.now().date_naive()
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("stintd: {error:#}");
            ExitCode::FAILURE
        }
    }
}
