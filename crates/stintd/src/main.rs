//! `stintd`: parse arguments, set up logging, run the broker library.

use anyhow::Context as _;
use clap::parser::ValueSource;
use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand, ValueEnum};
use std::ffi::OsStr;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use stint_core::jose::Algorithm;
use stint_core::policy::Policy;

/// mimalloc instead of glibc's malloc: the mint path allocates per request
/// on several threads at once, where glibc's arenas spent about a tenth of
/// the broker's CPU (`perf` under `stint-bench` load: `_int_malloc`,
/// `_int_free`, `malloc_consolidate`); with mimalloc `stint-bench` mints
/// about a quarter more per second (20.6k to 26.2k, median of five runs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use stint_server::config::DEFAULT_DEV_PORT;
use stint_server::{Config, Limits, PolicySource, Rate, StartError, StoreConfig, TlsFiles};
use stint_store::{PostgresStoreSettings, PostgresTls, StorePassword};
use tracing_subscriber::EnvFilter;

mod console;
mod core_dumps;

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

    /// Where the audit log lives, and the store (with the signing keys)
    /// unless --store puts it elsewhere.
    #[arg(long, env = "STINTD_DATA_DIR", default_value = "./stint-data")]
    data_dir: PathBuf,

    /// Where the store lives: `sqlite:` (the default: DATA_DIR/stint.db), or
    /// a PostgreSQL database,
    /// postgres://USER@HOST[:PORT]/DATABASE[?sslmode=verify-full&sslrootcert=FILE]
    /// (sslmode verify-full, the default, or require, which means the same;
    /// disable only for a loopback host). Without a password: give it in
    /// --store-password-file or STINTD_STORE_PASSWORD.
    #[arg(long, env = "STINTD_STORE", value_name = "URL")]
    store: Option<String>,

    /// A file holding the PostgreSQL store role's password (one line).
    #[arg(long, env = "STINTD_STORE_PASSWORD_FILE", value_name = "FILE")]
    store_password_file: Option<PathBuf>,

    /// The CA bundle (PEM) the PostgreSQL store's certificate must chain
    /// to [default: the URL's sslrootcert, else Mozilla's roots].
    #[arg(long, env = "STINTD_STORE_CA_FILE", value_name = "FILE")]
    store_ca_file: Option<PathBuf>,

    /// Connections to the PostgreSQL store that requests and sweeps
    /// share, at most (the change listener and the audit writer have one
    /// each beside them).
    #[arg(long, env = "STINTD_STORE_POOL_SIZE", default_value_t = stint_store::postgres::DEFAULT_POOL_SIZE)]
    store_pool_size: usize,

    /// Seconds one PostgreSQL store operation may take, connecting
    /// included, before it fails.
    #[arg(long, env = "STINTD_STORE_TIMEOUT", default_value_t = stint_store::postgres::DEFAULT_TIMEOUT.as_secs())]
    store_timeout: u64,

    /// The address to listen on [default: 127.0.0.1:8780].
    #[arg(long, env = "STINTD_LISTEN")]
    listen: Option<SocketAddr>,

    /// The policy file (TOML); re-read on SIGHUP.
    #[arg(long, env = "STINTD_POLICY")]
    policy: Option<PathBuf>,

    /// The issuer URL [default: derived from the listener, e.g. https://127.0.0.1:8780].
    #[arg(long, env = "STINTD_ISSUER")]
    issuer: Option<String>,

    /// The proxy in front terminates TLS: serve plain HTTP on --listen,
    /// whatever the address. Needs --trusted-proxy and an https --issuer.
    /// Keep the port reachable from the proxy only (a NetworkPolicy, a
    /// firewall): what arrives there is in the clear.
    #[arg(long, env = "STINTD_TLS_TERMINATED_BY_PROXY")]
    tls_terminated_by_proxy: bool,

    /// A proxy (ADDRESS or ADDRESS/PREFIX) whose Forwarded or
    /// X-Forwarded-For header names the client, for the per-source limits,
    /// the request log and the audit; repeatable (comma-separated in the
    /// variable). A forwarding header from any other address is refused.
    #[arg(
        long = "trusted-proxy",
        value_name = "NETWORK",
        env = "STINTD_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_parser = stint_server::forwarded::Network::parse
    )]
    trusted_proxies: Vec<stint_server::forwarded::Network>,

    /// The header the trusted proxies set. Only that one is read: proxies
    /// pass the other through as the client sent it.
    #[arg(long, env = "STINTD_FORWARDED_HEADER", value_enum, default_value_t = ForwardedHeaderArg::XForwardedFor)]
    forwarded_header: ForwardedHeaderArg,

    /// TLS certificate chain (PEM). Required unless --dev on loopback.
    /// Re-read with the key (and --client-ca-file) on SIGHUP: renewals
    /// need no restart.
    #[arg(long, env = "STINTD_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// TLS private key (PEM).
    #[arg(long, env = "STINTD_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// The signature algorithm of new signing keys.
    #[arg(long, env = "STINTD_SIGNING_ALG", value_enum, default_value_t = SigningAlg::Es256)]
    signing_alg: SigningAlg,

    /// How long a rotated-in signing key is published before it signs, in
    /// seconds (0-3600): verifiers that cached the JWK set before a
    /// rotation have the new key by then. The JWK set's max-age is never
    /// longer. Give every replica the same value.
    #[arg(long, env = "STINTD_KEY_PUBLISH_LEAD", default_value_t = 300)]
    key_publish_lead: u64,

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

    /// Fail closed once the store has not answered for this many seconds
    /// (1-300): no mint (503), every token inactive at introspection, the
    /// feed's streams ended, /readyz 503, until it answers again.
    #[arg(long, env = "STINTD_STORE_FAIL_CLOSED_AFTER", default_value_t = 10)]
    store_fail_closed_after: u64,

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

    /// Start a new audit file once audit.jsonl holds this much (bytes, or
    /// with a K, M or G suffix; 0: never; at least 4K).
    #[arg(long, env = "STINTD_AUDIT_ROTATE_SIZE", default_value = "64M", value_parser = parse_size)]
    audit_rotate_size: u64,

    /// Start a new audit file once audit.jsonl's first record is this many
    /// seconds old (0: never).
    #[arg(long, env = "STINTD_AUDIT_ROTATE_INTERVAL", default_value_t = 86_400)]
    audit_rotate_interval: u64,

    /// How often the audit log's head is signed with the signing key, in
    /// seconds (1-3600), when anything was recorded since the last
    /// checkpoint. Records after the last checkpoint are vouched for by
    /// nothing but the hash chain.
    #[arg(long, env = "STINTD_AUDIT_CHECKPOINT_INTERVAL", default_value_t = 60)]
    audit_checkpoint_interval: u64,
    /// A file holding a bearer token (32 to 1024 printable characters) that
    /// /metrics then requires (`Authorization: Bearer`, Prometheus'
    /// `authorization.credentials_file`). Without it /metrics is open to
    /// anyone who can reach the listener, and leaves out the policy's
    /// workflow names.
    #[arg(long, env = "STINTD_METRICS_TOKEN_FILE")]
    metrics_token_file: Option<PathBuf>,

    /// An RSA private key (PEM: PKCS#8 or PKCS#1; or DER), 2048 to 4096
    /// bits, that signs federation tokens (RS256) for the policy's oidc
    /// targets. Repeatable: the first signs, all are published in the JWK
    /// set (to rotate, add the new key second, wait past the relying
    /// parties' JWKS cache lifetime, move it first, later drop the old).
    /// Make one with `openssl genpkey -algorithm RSA -pkeyopt
    /// rsa_keygen_bits:3072 -out federation.pem`; keep it mode 0600. In
    /// STINTD_FEDERATION_KEY, separate files with commas.
    #[arg(
        long = "federation-key",
        value_name = "FILE",
        env = "STINTD_FEDERATION_KEY",
        value_delimiter = ','
    )]
    federation_keys: Vec<PathBuf>,

    /// Seal the signing keys in the store with this key-encryption key: a
    /// file of 32 random bytes (head -c 32 /dev/urandom > FILE; mode 0600),
    /// kept apart from the store's backups. Giving it for the first time
    /// retires the key kept in the clear; losing it loses the keys (a new
    /// one is not made over them: the start fails).
    #[arg(long, value_name = "FILE", env = "STINTD_KEY_ENCRYPTION_KEY_FILE")]
    key_encryption_key_file: Option<PathBuf>,

    /// Log filter, in RUST_LOG syntax.
    #[arg(long, env = "STINTD_LOG", default_value = "info")]
    log: String,

    /// Log as JSON lines instead of text. Text is in colour on a terminal
    /// unless NO_COLOR is set (to anything but the empty string).
    #[arg(long, env = "STINTD_LOG_JSON")]
    log_json: bool,

    #[command(flatten)]
    limits: LimitArgs,

    #[command(flatten)]
    console: console::ConsoleArgs,
}

/// What clients may take and for how long (docs/threat-model.md, "Denial
/// of service", says why each default is what it is). A source is an IPv4
/// address or an IPv6 /64.
#[derive(Debug, Args)]
#[command(next_help_heading = "Limits")]
struct LimitArgs {
    /// Seconds from a connection to its first byte.
    #[arg(long, env = "STINTD_FIRST_BYTE_TIMEOUT", default_value_t = DEFAULT.first_byte_timeout.as_secs())]
    first_byte_timeout: u64,

    /// Seconds to finish a TLS handshake.
    #[arg(long, env = "STINTD_HANDSHAKE_TIMEOUT", default_value_t = DEFAULT.handshake_timeout.as_secs())]
    handshake_timeout: u64,

    /// Seconds from a connection to its first request, and for an HTTP/1
    /// request's headers.
    #[arg(long, env = "STINTD_HEADER_TIMEOUT", default_value_t = DEFAULT.header_timeout.as_secs())]
    header_timeout: u64,

    /// Seconds to receive a request body (408 beyond).
    #[arg(long, env = "STINTD_BODY_TIMEOUT", default_value_t = DEFAULT.body_timeout.as_secs())]
    body_timeout: u64,

    /// Seconds a connection may stay open with no request in flight.
    #[arg(long, env = "STINTD_IDLE_TIMEOUT", default_value_t = DEFAULT.idle_timeout.as_secs())]
    idle_timeout: u64,

    /// Connections served at once (more are closed on accept).
    #[arg(long, env = "STINTD_MAX_CONNECTIONS", default_value_t = DEFAULT.max_connections)]
    max_connections: usize,

    /// Of those, the last ones kept for health, discovery, keys, status
    /// lists and revocation.
    #[arg(long, env = "STINTD_RESERVED_CONNECTIONS", default_value_t = DEFAULT.reserved_connections)]
    reserved_connections: usize,

    /// Connections one source may hold.
    #[arg(long, env = "STINTD_MAX_CONNECTIONS_PER_SOURCE", default_value_t = DEFAULT.max_connections_per_source)]
    max_connections_per_source: usize,

    /// Requests in flight at once, revocations aside (503 beyond).
    #[arg(long, env = "STINTD_MAX_IN_FLIGHT", default_value_t = DEFAULT.max_in_flight)]
    max_in_flight: usize,

    /// Revocation requests in flight at once: their own capacity (503
    /// beyond).
    #[arg(long, env = "STINTD_MAX_REVOCATIONS_IN_FLIGHT", default_value_t = DEFAULT.max_revocations_in_flight)]
    max_revocations_in_flight: usize,

    /// Requests in flight for one client authenticated by HTTP Basic (429
    /// beyond).
    #[arg(long, env = "STINTD_MAX_IN_FLIGHT_PER_CLIENT", default_value_t = DEFAULT.max_in_flight_per_client)]
    max_in_flight_per_client: usize,

    /// Requests in flight from one source without an Authorization header
    /// that authenticates (429 beyond).
    #[arg(long, env = "STINTD_MAX_UNAUTHENTICATED_IN_FLIGHT_PER_SOURCE", default_value_t = DEFAULT.max_unauthenticated_in_flight_per_source)]
    max_unauthenticated_in_flight_per_source: usize,

    /// Token requests a second one client may make, sustained (429 beyond).
    #[arg(long, env = "STINTD_TOKEN_RATE_PER_CLIENT", default_value_t = DEFAULT.token_rate_per_client.per_second)]
    token_rate_per_client: u32,

    /// Token requests one client may make at once after a quiet spell.
    #[arg(long, env = "STINTD_TOKEN_BURST_PER_CLIENT", default_value_t = DEFAULT.token_rate_per_client.burst)]
    token_burst_per_client: u32,

    /// Token requests a second one source may make, sustained (429 beyond).
    #[arg(long, env = "STINTD_TOKEN_RATE_PER_SOURCE", default_value_t = DEFAULT.token_rate_per_source.per_second)]
    token_rate_per_source: u32,

    /// Token requests one source may make at once after a quiet spell.
    #[arg(long, env = "STINTD_TOKEN_BURST_PER_SOURCE", default_value_t = DEFAULT.token_rate_per_source.burst)]
    token_burst_per_source: u32,

    /// Sources (and clients) the rate limiters track apart; new ones past
    /// that share one budget.
    #[arg(long, env = "STINTD_MAX_TRACKED_SOURCES", default_value_t = DEFAULT.max_tracked_sources)]
    max_tracked_sources: usize,

    /// Seconds over which repeated refusals of unauthenticated requests
    /// from one source are audited as one counted record (1-60).
    #[arg(long, env = "STINTD_AUDIT_AGGREGATION_INTERVAL", default_value_t = DEFAULT.audit_aggregation_interval.as_secs())]
    audit_aggregation_interval: u64,

    /// Sources whose refusals are counted apart; past that, together.
    #[arg(long, env = "STINTD_AUDIT_AGGREGATION_SOURCES", default_value_t = DEFAULT.audit_aggregation_sources)]
    audit_aggregation_sources: usize,

    /// Concurrent requests on one HTTP/2 connection.
    #[arg(long, env = "STINTD_MAX_STREAMS_PER_CONNECTION", default_value_t = DEFAULT.max_streams_per_connection)]
    max_streams_per_connection: u32,
}

/// The library's defaults, which the flags show and start from.
const DEFAULT: Limits = Limits::DEFAULT;

impl LimitArgs {
    fn limits(&self) -> Limits {
        Limits {
            first_byte_timeout: Duration::from_secs(self.first_byte_timeout),
            handshake_timeout: Duration::from_secs(self.handshake_timeout),
            header_timeout: Duration::from_secs(self.header_timeout),
            body_timeout: Duration::from_secs(self.body_timeout),
            idle_timeout: Duration::from_secs(self.idle_timeout),
            max_connections: self.max_connections,
            reserved_connections: self.reserved_connections,
            max_connections_per_source: self.max_connections_per_source,
            max_in_flight: self.max_in_flight,
            max_revocations_in_flight: self.max_revocations_in_flight,
            max_in_flight_per_client: self.max_in_flight_per_client,
            max_unauthenticated_in_flight_per_source: self.max_unauthenticated_in_flight_per_source,
            token_rate_per_client: Rate {
                per_second: self.token_rate_per_client,
                burst: self.token_burst_per_client,
            },
            token_rate_per_source: Rate {
                per_second: self.token_rate_per_source,
                burst: self.token_burst_per_source,
            },
            max_tracked_sources: self.max_tracked_sources,
            audit_aggregation_interval: Duration::from_secs(self.audit_aggregation_interval),
            audit_aggregation_sources: self.audit_aggregation_sources,
            max_streams_per_connection: self.max_streams_per_connection,
        }
    }
}

/// Whether log text is coloured: on a terminal, unless `NO_COLOR` is set to
/// something other than the empty string (<https://no-color.org>).
fn log_in_color(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(OsStr::is_empty)
}

const AFTER_HELP: &str = "Every option can also be set through the environment variable shown.\n\
Examples:\n  stintd --dev\n  stintd --policy /etc/stint/policy.toml --tls-cert cert.pem --tls-key key.pem --listen 0.0.0.0:8443 --issuer https://stint.example.com:8443";

const VERIFY_AUDIT_HELP: &str = "Exit status: 0 if the chain is whole and every checkpoint whose key is known verifies (and --max-unsigned holds), 1 otherwise.\n\
A checkpoint signed by a key that is not given is reported, not trusted: the records after the last verified checkpoint are what someone able to write the files could have forged, edited or cut.\n\
With a PostgreSQL store the audit log is in the database, one chain per broker process: give no files, and --store (and its password, as for the broker) to verify every chain there.\n\
Examples:\n  stintd verify-audit /var/lib/stint/audit*.jsonl\n  stintd verify-audit --jwks jwks.json --max-unsigned 0 audit-*.jsonl\n  STINTD_STORE_PASSWORD_FILE=pw stintd --store postgres://stint@db/stint verify-audit --key-encryption-key-file kek";

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
    /// Walk an audit log's hash chain, rotated files and all, and check its
    /// signed checkpoints; name the first broken record, and say how many
    /// records follow the last verified checkpoint.
    #[command(after_help = VERIFY_AUDIT_HELP)]
    VerifyAudit {
        /// The audit files: DATA_DIR/audit.jsonl and any rotated
        /// DATA_DIR/audit-*.jsonl, in any order (DATA_DIR/audit*.jsonl).
        /// None with a PostgreSQL --store: its chains are verified.
        files: Vec<PathBuf>,
        /// Check checkpoints with the keys in this JWK set (the broker's
        /// /.well-known/jwks.json, saved where the broker cannot write);
        /// repeatable. With --jwks, the data directory's store is not read.
        #[arg(long)]
        jwks: Vec<PathBuf>,
        /// Check checkpoints with the keys in this data directory's store
        /// [default, without --jwks: the directory of the last file, if it
        /// holds stint.db].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Fail if more than this many records follow the last verified
        /// checkpoint (0 for the files of a broker that stopped cleanly).
        #[arg(long)]
        max_unsigned: Option<u64>,
        /// The key-encryption key the store's signing keys are sealed
        /// with (as the broker's --key-encryption-key-file).
        #[arg(long, value_name = "FILE", env = "STINTD_KEY_ENCRYPTION_KEY_FILE")]
        key_encryption_key_file: Option<PathBuf>,
    },
    /// Copy each audit chain of a PostgreSQL --store into DIR/CHAIN.jsonl,
    /// as it stands (what `stint policy suggest --chain` and `stint audit
    /// verify` read). Verify the store first with verify-audit.
    ExportAudit {
        /// A directory to write into (made if missing); files already
        /// there are never overwritten.
        dir: PathBuf,
        /// Only this chain [default: every chain].
        #[arg(long, value_name = "ID")]
        chain: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ForwardedHeaderArg {
    /// X-Forwarded-For (nginx, HAProxy, cloud load balancers).
    XForwardedFor,
    /// Forwarded (RFC 7239).
    Forwarded,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SigningAlg {
    /// ECDSA P-256 (ES256).
    Es256,
    /// Ed25519 (EdDSA).
    Ed25519,
}

fn main() -> ExitCode {
    // First, before any key or secret is read (the subcommands make
    // secrets too): no core dump, no same-user ptrace.
    if let Err(error) = core_dumps::forbid() {
        eprintln!("stintd: {error}; refusing to run, so that no crash dump can hold a key");
        return ExitCode::FAILURE;
    }
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    let store_url_from_env = matches.value_source("store") == Some(ValueSource::EnvVariable);
    match cli.command {
        Some(Command::NewClient { ref name }) => return report(new_client(name)),
        Some(Command::NewOperator { ref name }) => return report(new_operator(name)),
        Some(Command::CheckPolicy { ref file }) => return report(check_policy(file)),
        Some(Command::ExportAudit { ref dir, ref chain }) => {
            let env_password = std::env::var("STINTD_STORE_PASSWORD").ok();
            return report(
                store_config(&cli, store_url_from_env, env_password)
                    .and_then(|store| export_audit(store, dir, chain.as_deref())),
            );
        }
        Some(Command::VerifyAudit {
            ref files,
            ref jwks,
            ref data_dir,
            max_unsigned,
            ref key_encryption_key_file,
        }) if files.is_empty() => {
            let env_password = std::env::var("STINTD_STORE_PASSWORD").ok();
            return report(
                store_config(&cli, store_url_from_env, env_password).and_then(|store| {
                    verify_audit_in_store(
                        store,
                        jwks,
                        max_unsigned,
                        key_encryption_key_file.as_deref(),
                    )
                }),
            );
        }
        Some(Command::VerifyAudit {
            ref files,
            ref jwks,
            ref data_dir,
            max_unsigned,
            ref key_encryption_key_file,
        }) => {
            return report(verify_audit(
                files,
                jwks,
                data_dir.as_deref(),
                max_unsigned,
                key_encryption_key_file.as_deref(),
            ));
        }
        None => {}
    }
    let filter = EnvFilter::try_new(&cli.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(log_in_color(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .with_writer(std::io::stderr);
    if cli.log_json {
        subscriber.json().init();
    } else {
        subscriber.init();
    }
    let mut config = config_from(&cli);
    let env_password = std::env::var("STINTD_STORE_PASSWORD").ok();
    match store_config(&cli, store_url_from_env, env_password) {
        Ok(store) => config.store = store,
        Err(error) => {
            eprintln!("stintd: {error:#}");
            return ExitCode::from(2);
        }
    }
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
    // The broker's settings first: their errors name the flag to change,
    // before the console binds anything.
    if let Err(error) = config.validate() {
        eprintln!("stintd: {error}");
        return ExitCode::from(2);
    }
    let result = runtime.block_on(async {
        let prepared = console::prepare(&cli.console, cli.dev, &mut config)
            .await
            .map_err(StartError::Frontend)?;
        stint_server::run(config, |server| {
            let console = match prepared {
                Some(prepared) => Some(prepared.start(server)?),
                None => None,
            };
            // The banner goes to stdout; logs go to stderr.
            println!("{}", server.banner());
            if let Some(origin) = console {
                println!("console:  {origin}/ (operators sign in there)");
            }
            Ok(())
        })
        .await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error @ (StartError::Config(_) | StartError::Frontend(_))) => {
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
        // Set from --store by `store_config`, which reads files.
        store: StoreConfig::Sqlite,
        issuer: cli.issuer.clone(),
        policy,
        tls,
        dev: cli.dev,
        signing_alg: match cli.signing_alg {
            SigningAlg::Es256 => Algorithm::ES256,
            SigningAlg::Ed25519 => Algorithm::EdDSA,
        },
        key_publish_lead: std::time::Duration::from_secs(cli.key_publish_lead),
        limits: cli.limits.limits(),
        federation_ca: cli.federation_ca_file.clone(),
        client_certificates: cli.client_ca_file.clone().map(|ca| {
            stint_server::ClientCertificates {
                ca,
                required: cli.require_client_cert,
            }
        }),
        approval_interval: std::time::Duration::from_secs(cli.approval_interval),
        feed_keepalive: std::time::Duration::from_secs(cli.feed_keepalive),
        store_fail_closed_after: std::time::Duration::from_secs(cli.store_fail_closed_after),
        feed_max_streams: cli.feed_max_streams,
        feed_max_streams_per_client: cli.feed_max_streams_per_client,
        audit: stint_server::AuditSettings {
            rotate_size: cli.audit_rotate_size,
            rotate_interval: std::time::Duration::from_secs(cli.audit_rotate_interval),
            checkpoint_interval: std::time::Duration::from_secs(cli.audit_checkpoint_interval),
        },
        metrics_token_file: cli.metrics_token_file.clone(),
        federation_keys: cli.federation_keys.clone(),
        trusted_proxies: stint_server::forwarded::TrustedProxies::new(
            cli.trusted_proxies.clone(),
            match cli.forwarded_header {
                ForwardedHeaderArg::XForwardedFor => {
                    stint_server::forwarded::ForwardedHeader::XForwardedFor
                }
                ForwardedHeaderArg::Forwarded => {
                    stint_server::forwarded::ForwardedHeader::Forwarded
                }
            },
        ),
        tls_terminated_by_proxy: cli.tls_terminated_by_proxy,
        // Set by console::prepare when the console runs.
        live_tokens: false,
        dev_operators_issuer: None,
        console_url: None,
        key_encryption_key_file: cli.key_encryption_key_file.clone(),
        webhook: match (&cli.approval_webhook_url, &cli.approval_webhook_secret_file) {
            (Some(url), Some(secret_file)) => Some(stint_server::WebhookTarget {
                url: url.clone(),
                secret_file: secret_file.clone(),
            }),
            _ => None,
        },
    }
}

/// The store from `--store` and its flags. `url_from_env`: the URL came
/// from STINTD_STORE, which others on the machine cannot read (a command
/// line they can), so a password in it is accepted, with a warning.
/// `env_password`: STINTD_STORE_PASSWORD.
fn store_config(
    cli: &Cli,
    url_from_env: bool,
    env_password: Option<String>,
) -> anyhow::Result<StoreConfig> {
    let url = match cli.store.as_deref().map(str::trim) {
        None | Some("sqlite" | "sqlite:") => {
            if cli.store_password_file.is_some() || cli.store_ca_file.is_some() {
                anyhow::bail!(
                    "--store-password-file and --store-ca-file are for a PostgreSQL store (--store postgres://...)"
                );
            }
            return Ok(StoreConfig::Sqlite);
        }
        Some(url) if stint_store::postgres::is_postgres_url(url) => url,
        Some(_) => anyhow::bail!(
            "--store must be sqlite: (the store in --data-dir, the default) or a PostgreSQL URL, postgres://USER@HOST[:PORT]/DATABASE"
        ),
    };
    let mut settings = if url_from_env {
        PostgresStoreSettings::parse_url(url)?
    } else {
        PostgresStoreSettings::parse_url_for_cli(url)?
    };
    let url_password = !settings.password.is_empty();
    let sources = [
        url_password,
        cli.store_password_file.is_some(),
        env_password.is_some(),
    ];
    if sources.iter().filter(|given| **given).count() > 1 {
        anyhow::bail!(
            "the PostgreSQL store's password is given more than once: give one of --store-password-file, STINTD_STORE_PASSWORD, or a password in STINTD_STORE"
        );
    }
    if let Some(file) = &cli.store_password_file {
        settings.password = StorePassword::new(read_password_file(file)?);
    } else if let Some(password) = env_password {
        settings.password = StorePassword::new(password);
    } else if url_password {
        tracing::warn!(
            "STINTD_STORE holds the store's password; --store-password-file (a file only stintd's user can read) is preferred"
        );
    }
    if let Some(ca_file) = &cli.store_ca_file {
        match &mut settings.tls {
            PostgresTls::Require {
                ca_file: slot @ None,
            } => *slot = Some(ca_file.clone()),
            PostgresTls::Require { ca_file: Some(_) } => {
                anyhow::bail!("--store-ca-file and the URL's sslrootcert both give a CA: give one")
            }
            PostgresTls::Disable => {
                anyhow::bail!("--store-ca-file does not go with sslmode=disable")
            }
        }
    }
    settings.pool_size = cli.store_pool_size;
    settings.timeout = Duration::from_secs(cli.store_timeout);
    settings.validate()?;
    Ok(StoreConfig::Postgres(settings))
}

/// A password file's first line (a trailing newline is not part of it).
fn read_password_file(file: &std::path::Path) -> anyhow::Result<String> {
    use std::io::Read as _;
    use std::os::unix::fs::PermissionsExt as _;
    /// A password file is one line; anything longer is the wrong file.
    const MAX_PASSWORD_FILE: u64 = 4096;
    let opened = std::fs::File::open(file)
        .with_context(|| format!("cannot read --store-password-file {}", file.display()))?;
    if let Ok(metadata) = opened.metadata()
        && metadata.permissions().mode() & 0o077 != 0
    {
        eprintln!(
            "stintd: warning: --store-password-file {} is readable by group or others; chmod 600 it",
            file.display()
        );
    }
    let mut text = String::new();
    opened
        .take(MAX_PASSWORD_FILE + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read --store-password-file {}", file.display()))?;
    if text.len() as u64 > MAX_PASSWORD_FILE {
        anyhow::bail!(
            "--store-password-file {} is larger than {MAX_PASSWORD_FILE} bytes",
            file.display()
        );
    }
    let password = text.strip_suffix('\n').unwrap_or(&text);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() || password.contains(['\n', '\r']) {
        anyhow::bail!(
            "--store-password-file {} must hold the password on one line",
            file.display()
        );
    }
    Ok(password.to_owned())
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

/// `64M` and the like: bytes, with an optional K, M or G (binary) suffix.
fn parse_size(text: &str) -> Result<u64, String> {
    let (digits, unit) = match text.strip_suffix(['K', 'k', 'M', 'm', 'G', 'g']) {
        Some(digits) => (digits, text.get(digits.len()..).unwrap_or_default()),
        None => (text, ""),
    };
    let shift = match unit {
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        _ => 0,
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("{text:?} is not a size: give bytes, or a number with K, M or G"))
}

/// The keys of the `--jwks` files, and a line naming each file.
fn keys_from_jwks(jwks: &[PathBuf]) -> anyhow::Result<(stint_core::jose::KeySet, Vec<String>)> {
    let mut trusted = stint_core::jose::KeySet::new();
    let mut sources = Vec::new();
    for path in jwks {
        let document =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let keys = stint_server::keys::public_keys_from_jwks(&document)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        sources.push(format!("{} ({} keys)", path.display(), keys.len()));
        keys.into_iter().for_each(|key| trusted.insert(key));
    }
    Ok((trusted, sources))
}

/// Records read from the store at a time when exporting.
const EXPORT_BATCH: usize = 10_000;

fn export_audit(store: StoreConfig, dir: &Path, only: Option<&str>) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    let StoreConfig::Postgres(settings) = store else {
        anyhow::bail!(
            "export-audit reads a PostgreSQL --store (with SQLite the audit log is already a file: DATA_DIR/audit*.jsonl)"
        );
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| anyhow::anyhow!("cannot make {}: {e}", dir.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let store = stint_store::PostgresStore::open(&settings).await?;
        let chains: Vec<(String, u64)> = stint_store::Store::audit_chains(&store)
            .await?
            .into_iter()
            .filter(|(chain, _)| only.is_none_or(|only| only == chain))
            .collect();
        if chains.is_empty() {
            anyhow::bail!(
                "{}",
                match only {
                    Some(chain) => format!("the store holds no audit chain {chain:?}"),
                    None => "the store holds no audit chain".to_owned(),
                }
            );
        }
        for (chain, count) in chains {
            // A chain id is a timestamp and hex, never a path: checked
            // all the same before it names a file.
            if chain.is_empty()
                || !chain
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
                || chain.starts_with('.')
            {
                anyhow::bail!(
                    "the store holds a chain named {chain:?}, which is not a chain id: not exported"
                );
            }
            let path = dir.join(format!("{chain}.jsonl"));
            if path.exists() {
                anyhow::bail!("cannot create {}: it exists (nothing is overwritten)", path.display());
            }
            // Written beside it and moved into place once whole, so that a
            // file of that name is always a whole chain.
            let partial = dir.join(format!("{chain}.jsonl.partial"));
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&partial)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", partial.display()))?;
            let written = async {
                let mut out = std::io::BufWriter::new(file);
                let mut from = 0u64;
                // Only the records counted: a live chain grows meanwhile.
                while from < count {
                    let want = usize::try_from(count - from)
                        .unwrap_or(usize::MAX)
                        .min(EXPORT_BATCH);
                    let records =
                        stint_store::Store::audit_records(&store, &chain, from, want).await?;
                    if records.is_empty() {
                        anyhow::bail!(
                            "chain {chain}: {count} records were counted, only {from} could be read in order: positions are missing (run verify-audit)"
                        );
                    }
                    for record in &records {
                        out.write_all(record.as_bytes())?;
                        out.write_all(b"\n")?;
                    }
                    from += records.len() as u64;
                }
                out.into_inner()
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", partial.display()))?
                    .sync_all()?;
                // Never over a file that appeared meanwhile.
                std::fs::hard_link(&partial, &path)
                    .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
                anyhow::Ok(from)
            }
            .await;
            let _ = std::fs::remove_file(&partial);
            let from = written?;
            println!("chain {chain}: {from} records -> {}", path.display());
        }
        anyhow::Ok(())
    })
}

/// `verify-audit` with no files: every audit chain in the PostgreSQL store.
fn verify_audit_in_store(
    store: StoreConfig,
    jwks: &[PathBuf],
    max_unsigned: Option<u64>,
    key_encryption_key_file: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let StoreConfig::Postgres(settings) = store else {
        anyhow::bail!(
            "give the audit files (DATA_DIR/audit*.jsonl), or a PostgreSQL --store whose audit chains to verify"
        );
    };
    let (mut trusted, mut sources) = keys_from_jwks(jwks)?;
    let kek = key_encryption_key_file
        .map(stint_server::keys::read_key_encryption_key)
        .transpose()
        .map_err(|e| anyhow::anyhow!(e))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let reports = runtime.block_on(async {
        let store = stint_store::PostgresStore::open(&settings).await?;
        if jwks.is_empty() {
            let keys = stint_server::keys::public_keys_in_store(&store, kek.as_ref())
                .await
                .map_err(|e| anyhow::anyhow!("cannot read the signing keys: {e}"))?;
            sources.push(format!("the store ({} keys)", keys.len()));
            keys.into_iter().for_each(|key| trusted.insert(key));
        }
        anyhow::Ok(stint_server::audit_store::verify_store(&store, &trusted).await?)
    })?;
    println!("keys: {}", sources.join(", "));
    if reports.is_empty() {
        anyhow::bail!("the store holds no audit chain");
    }
    let mut broken = 0;
    for chain in &reports {
        match &chain.result {
            Ok(r) => {
                let unsigned = max_unsigned.is_some_and(|max| r.unsigned > max);
                println!(
                    "chain {}: {} records, intact, head {}; checkpoints: {} verified, {} signed by keys not given; {} records after the last verified checkpoint{}; other chains' heads it vouched for: {} found",
                    chain.chain,
                    r.records,
                    r.head,
                    r.verified_checkpoints,
                    r.unverified_checkpoints,
                    r.unsigned,
                    if unsigned {
                        " (more than --max-unsigned)"
                    } else {
                        ""
                    },
                    chain.peers_confirmed,
                );
                for missing in &chain.peers_missing {
                    println!(
                        "chain {}: vouched for chain {missing} (id@records), which the store no longer holds as it was: deleted or cut short",
                        chain.chain
                    );
                }
                if unsigned || !chain.peers_missing.is_empty() {
                    broken += 1;
                }
            }
            Err(error) => {
                println!("chain {}: BROKEN: {error}", chain.chain);
                broken += 1;
            }
        }
    }
    if broken > 0 {
        anyhow::bail!("{broken} of {} audit chains did not verify", reports.len());
    }
    println!("{} audit chains verified", reports.len());
    Ok(())
}

fn verify_audit(
    files: &[PathBuf],
    jwks: &[PathBuf],
    data_dir: Option<&std::path::Path>,
    max_unsigned: Option<u64>,
    key_encryption_key_file: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let (mut trusted, mut sources) = keys_from_jwks(jwks)?;
    let store = match data_dir {
        Some(dir) => Some(dir.join(stint_server::STORE_FILE)),
        None if jwks.is_empty() => files
            .last()
            .and_then(|file| file.parent())
            .map(|dir| dir.join(stint_server::STORE_FILE))
            .filter(|store| store.exists()),
        None => None,
    };
    if let Some(store) = &store {
        let kek = key_encryption_key_file
            .map(stint_server::keys::read_key_encryption_key)
            .transpose()
            .map_err(|e| anyhow::anyhow!(e))?;
        let keys = stint_server::keys::stored_public_keys(store, kek.as_ref())
            .map_err(|e| anyhow::anyhow!("cannot read the signing keys: {e}"))?;
        sources.push(format!("{} ({} keys)", store.display(), keys.len()));
        keys.into_iter().for_each(|key| trusted.insert(key));
    }

    let checked = stint_server::audit::verify_files(files, trusted)?;
    let r = &checked.report;
    let names = match checked.files.as_slice() {
        [one] => one.display().to_string(),
        many => format!(
            "{} files ({} ... {})",
            many.len(),
            many.first()
                .map(|f| f.display().to_string())
                .unwrap_or_default(),
            many.last()
                .map(|f| f.display().to_string())
                .unwrap_or_default()
        ),
    };
    println!(
        "{names}: {} records, chain intact, head {}",
        r.records, r.head
    );
    if let Some(from) = &r.continues_from {
        println!(
            "starts at record {}, continuing {} (not given): the records before it are not checked",
            r.first_seq, from.file
        );
    }
    for note in &checked.notes {
        println!("note: {note}");
    }
    if sources.is_empty() {
        println!(
            "keys: none given (--jwks FILE or --data-dir DIR): no checkpoint signature is checked"
        );
    } else {
        println!("keys: {}", sources.join(", "));
    }
    println!(
        "checkpoints: {} verified, {} signed by keys not given{}",
        r.verified_checkpoints,
        r.unverified_checkpoints,
        if r.unknown_kids.is_empty() {
            String::new()
        } else {
            format!(" ({})", r.unknown_kids.join(", "))
        }
    );
    match r.last_verified_checkpoint {
        Some(seq) => println!(
            "last verified checkpoint: record {seq}; {} records follow it, vouched for by nothing but the chain",
            r.unsigned
        ),
        None => println!(
            "no verified checkpoint: {} records are vouched for by nothing but the chain",
            r.unsigned
        ),
    }
    if r.adopted > 0 {
        println!(
            "{} records were written by a broker run that stopped without signing them (a crash or kill -9, or records added while no broker ran); a later checkpoint covers them",
            r.adopted
        );
    }
    eprintln!(
        "(keep the head hash elsewhere: a tail cut back to a checkpoint is only detectable against it)"
    );
    if !sources.is_empty() {
        // With keys to check against, a checkpoint no key verifies is a
        // log re-signed by someone else's key (or a key left out); and
        // with keys given explicitly, a log with records but no verified
        // checkpoint at all is vouched for by nothing. Neither passes.
        if r.unverified_checkpoints > 0 {
            anyhow::bail!(
                "{} checkpoints are signed by keys not given: the log may have been rewritten and signed again; give those keys' JWK set with --jwks if they are the broker's",
                r.unverified_checkpoints
            );
        }
        let explicit = !jwks.is_empty() || data_dir.is_some();
        if explicit
            && r.last_verified_checkpoint.is_none()
            && r.records > 0
            && max_unsigned.is_none_or(|max| r.unsigned > max)
        {
            anyhow::bail!(
                "no checkpoint verifies with the keys given: nothing vouches for these {} records (--max-unsigned N accepts up to N such records)",
                r.records
            );
        }
    }
    if let Some(max) = max_unsigned
        && r.unsigned > max
    {
        anyhow::bail!(
            "{} records follow the last verified checkpoint, more than --max-unsigned {max}",
            r.unsigned
        );
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every example `stintd --help` shows is a configuration the broker
    /// accepts.
    #[test]
    fn the_help_examples_are_valid_configurations() {
        let examples: Vec<&str> = AFTER_HELP
            .lines()
            .skip_while(|line| !line.starts_with("Examples:"))
            .skip(1)
            .map(str::trim)
            .filter(|line| line.starts_with("stintd"))
            .collect();
        assert!(examples.len() >= 2, "{AFTER_HELP}");
        for example in examples {
            let cli = Cli::try_parse_from(example.split_whitespace())
                .unwrap_or_else(|e| panic!("{example}: {e}"));
            assert_eq!(config_from(&cli).validate(), Ok(()), "{example}");
        }
    }

    /// deploy/stintd.service's `ExecStart` is a configuration the broker
    /// accepts.
    #[test]
    fn the_systemd_units_command_line_is_a_valid_configuration() {
        let unit = include_str!("../../../deploy/stintd.service");
        let (_, exec) = unit.split_once("\nExecStart=").unwrap();
        let mut command = String::new();
        for line in exec.lines() {
            match line.trim().strip_suffix('\\') {
                Some(continued) => command.push_str(continued),
                None => {
                    command.push_str(line.trim());
                    break;
                }
            }
        }
        let args = command.split_whitespace().map(|arg| {
            // The unit names the installed binary; clap wants a name.
            arg.strip_prefix("/usr/local/bin/").unwrap_or(arg)
        });
        let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{command}: {e}"));
        assert!(cli.policy.is_some() && cli.tls_cert.is_some(), "{command}");
        assert_eq!(config_from(&cli).validate(), Ok(()), "{command}");
    }

    /// The policy in deploy/kubernetes' ConfigMap loads, so that the
    /// manifests applied as they are start a broker.
    #[test]
    fn the_kubernetes_configmaps_policy_loads() {
        let manifest = include_str!("../../../deploy/kubernetes/configmap-policy.yaml");
        let (_, block) = manifest.split_once("\n  policy.toml: |\n").unwrap();
        let text: String = block
            .lines()
            .take_while(|line| line.is_empty() || line.starts_with("    "))
            .map(|line| format!("{}\n", line.get(4..).unwrap_or_default()))
            .collect();
        assert!(text.contains("[workflows."), "{text}");
        let policy = Policy::parse("configmap-policy.yaml", &text)
            .unwrap_or_else(|errors| panic!("{errors}"));
        assert!(policy.workflows().count() > 0);
    }

    fn store(args: &[&str], from_env: bool, password: Option<&str>) -> anyhow::Result<StoreConfig> {
        let cli = Cli::try_parse_from(["stintd"].iter().chain(args)).unwrap();
        store_config(&cli, from_env, password.map(str::to_owned))
    }

    #[test]
    fn the_store_is_sqlite_unless_told_otherwise() {
        assert_eq!(store(&[], false, None).unwrap(), StoreConfig::Sqlite);
        assert_eq!(
            store(&["--store", "sqlite:"], false, None).unwrap(),
            StoreConfig::Sqlite
        );
        assert!(store(&["--store", "/var/lib/x"], false, None).is_err());
        assert!(store(&["--store-ca-file", "ca.pem"], false, None).is_err());
    }

    #[test]
    fn a_postgres_store_takes_its_password_from_one_place_not_the_command_line() {
        let url = "postgres://stint@db.example.com/stint";
        let StoreConfig::Postgres(settings) = store(&["--store", url], false, Some("pw")).unwrap()
        else {
            panic!("not postgres");
        };
        assert_eq!(settings.password, StorePassword::new("pw".into()));
        assert_eq!(settings.tls, PostgresTls::Require { ca_file: None });

        let with_password = "postgres://stint:hunter22@db.example.com/stint";
        let error = store(&["--store", with_password], false, None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("password"), "{error}");
        assert!(!error.contains("hunter22"), "{error}");
        // From STINTD_STORE it is accepted (with a warning), but not twice.
        assert!(store(&["--store", with_password], true, None).is_ok());
        assert!(store(&["--store", with_password], true, Some("pw")).is_err());

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\n").unwrap();
        let file = file.to_str().unwrap();
        let StoreConfig::Postgres(settings) = store(
            &[
                "--store",
                url,
                "--store-password-file",
                file,
                "--store-ca-file",
                "/ca.pem",
            ],
            false,
            None,
        )
        .unwrap() else {
            panic!("not postgres");
        };
        assert_eq!(settings.password, StorePassword::new("from-file".into()));
        assert_eq!(
            settings.tls,
            PostgresTls::Require {
                ca_file: Some("/ca.pem".into())
            }
        );
        assert!(
            store(
                &["--store", url, "--store-password-file", file],
                false,
                Some("pw")
            )
            .is_err()
        );
    }

    #[test]
    fn no_color_turns_colour_off_unless_empty() {
        assert!(log_in_color(true, None));
        assert!(!log_in_color(true, Some(OsStr::new("1"))));
        assert!(!log_in_color(true, Some(OsStr::new("false"))));
        assert!(log_in_color(true, Some(OsStr::new(""))));
        assert!(!log_in_color(false, None));
    }

    #[test]
    fn the_limit_flags_default_to_the_library_defaults() {
        let cli = Cli::parse_from(["stintd"]);
        assert_eq!(cli.limits.limits(), Limits::default());
        let cli = Cli::parse_from([
            "stintd",
            "--token-rate-per-client",
            "7",
            "--first-byte-timeout",
            "2",
        ]);
        assert_eq!(cli.limits.limits().token_rate_per_client.per_second, 7);
        assert_eq!(
            cli.limits.limits().first_byte_timeout,
            Duration::from_secs(2)
        );
    }
}
