//! `stint`: Stint from the shell. Mint a token for a step, run a command
//! with one (`stint exec`), revoke, introspect, verify offline, and check
//! policy files and audit logs.
//!
//! Exit codes: 0 success; 1 failure (bad file, bad configuration such as
//! a broker certificate no trusted CA issued, unexpected answer); 2 usage
//! error; 3 denied (the broker refused, a token was rejected, or `stint
//! introspect` found it inactive); 4 the broker is unavailable (worth a
//! retry); 5 an approval is pending (`--no-wait`); 6 `stint policy suggest
//! --fail-on` found what it was told to fail on; 141 standard output
//! was closed before everything was written (see `output`). `stint exec`
//! exits with its child's status (128 + N if the child was killed by
//! signal N).

mod exec;
mod output;
mod suggest;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use stint_client::{Client, Credentials, Error, Verifier};
use stint_core::ttl::Ttl;
use stint_proto::DevClient;

/// Exit code: a failure that is neither a denial nor unavailability.
const EXIT_FAILURE: u8 = 1;
/// Exit code: the broker refused, or a token was rejected.
const EXIT_DENIED: u8 = 3;
/// Exit code: the broker could not be reached or is temporarily unavailable.
const EXIT_UNAVAILABLE: u8 = 4;
/// Exit code: an approval is pending (`--no-wait`, or the wait ran out).
const EXIT_PENDING: u8 = 5;

/// Stint from the shell: short-lived, step-scoped tokens.
#[derive(Debug, Parser)]
#[command(name = "stint", version, about, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const AFTER_HELP: &str = "\
The broker and credentials come from the environment:
  STINT_URL            the broker's issuer URL, e.g. https://stint.example.com
  STINT_CLIENT_ID      the client id
  STINT_CLIENT_SECRET  the client secret (never a flag: flags show in `ps`)
  STINT_CA_FILE        a PEM CA bundle to trust besides the system's roots
  STINT_SUBJECT_TOKEN_FILE  the platform's ID token (GitHub Actions, GitLab
                       CI, Kubernetes) to authenticate with instead of a secret
  STINT_SUBJECT_TOKEN  the same token, as the variable's value
or from --credentials FILE (the dev-client.json shape: issuer, client_id,
client_secret). Operators (approvals, approve, deny) authenticate with
  STINT_OPERATOR_KEY   an operator key from `stintd new-operator`, or
  STINT_OPERATOR_TOKEN_FILE  an OIDC ID token the policy binds to an operator.

Exit codes: 0 ok, 1 failure (including configuration: a broker
certificate that no trusted CA issued needs --ca-file), 2 usage, 3 denied
or rejected (and `stint introspect`: the token is not active), 4 broker
unavailable (a retry may help), 5 approval pending (--no-wait), 6 a
`stint policy suggest --fail-on` finding, 141 the
output was closed early (`| head`; said nothing, as a tool SIGPIPE ends);
`stint exec` exits with its command's status.";

#[derive(Debug, Subcommand)]
enum Command {
    /// Mint a token for one step and print it.
    Token {
        #[command(flatten)]
        request: TokenArgs,
        #[command(flatten)]
        broker: BrokerArgs,
        /// Print the whole token response as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a command with a token for one step in its environment, and
    /// revoke the token when the command exits, however it exits.
    ///
    /// With --target, the token is first exchanged for each target's
    /// native credential, given to the command in its environment only
    /// and revoked when it exits, before the token. If an exchange fails,
    /// the command is not run.
    Exec {
        #[command(flatten)]
        request: TokenArgs,
        #[command(flatten)]
        broker: BrokerArgs,
        /// The environment variable that carries the token.
        #[arg(long, default_value = "STINT_TOKEN")]
        env_var: String,
        /// Exchange the step's token for a native credential of target
        /// NAME (one the step lists). The token is minted for NAME (its
        /// audience), since it is exchanged only at the target it is for:
        /// one --target per exec. A PostgreSQL login is set in the
        /// command's environment as PGHOST, PGPORT, PGDATABASE, PGUSER,
        /// PGPASSWORD, PGSSLMODE and (over TLS) PGCHANNELBINDING
        /// (PGHOSTADDR and PGSERVICE removed); the credential's id is in
        /// STINT_TARGET_CREDENTIAL_ID_<NAME> (uppercased, '-' as '_'). A
        /// GitHub installation token is set as GH_TOKEN and GITHUB_TOKEN
        /// for github.com (GitHub Enterprise Server: only GH_HOST,
        /// GH_ENTERPRISE_TOKEN and GITHUB_ENTERPRISE_TOKEN),
        /// and git over HTTPS to its host gets it through `stint
        /// git-credential`, set up as the command's credential helper.
        #[arg(long = "target", value_name = "NAME", value_parser = parse_target)]
        targets: Vec<String>,
        /// The command and its arguments.
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
    /// A git credential helper for `stint exec --target` with a GitHub
    /// target: answers git's `get` for the token's host with user
    /// x-access-token and the token (from STINT_GIT_TOKEN, which `stint exec`
    /// set), and nothing for any other host. `store` and `erase` do
    /// nothing: the token is revoked when the command exits.
    #[command(name = "git-credential", hide = true)]
    GitCredential {
        /// get, store or erase (git says which).
        operation: String,
    },
    /// Revoke a token, or every token of a job.
    Revoke {
        /// The token.
        #[arg(required_unless_present = "job", conflicts_with = "job")]
        token: Option<String>,
        /// Revoke every token of this job instead (and refuse new ones).
        #[arg(long)]
        job: Option<String>,
        /// With --job: only this step of the job.
        #[arg(long, requires = "job")]
        step: Option<String>,
        #[command(flatten)]
        broker: BrokerArgs,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ask the broker whether a token is active (RFC 7662). Exits 0 if it
    /// is, 3 if it is not (unknown, expired, revoked, or not this
    /// broker's), so that `if stint introspect "$T"` reads right; with
    /// --subject-token-file, a federated workload asks with its platform
    /// ID token.
    Introspect {
        /// The token.
        token: String,
        #[command(flatten)]
        broker: BrokerArgs,
        /// Print the broker's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Verify a token offline with the broker's published keys.
    Verify {
        /// The token.
        token: String,
        /// Require this audience (without it, any audience is accepted).
        #[arg(long)]
        audience: Option<String>,
        /// The broker's issuer URL.
        #[arg(long, env = "STINT_URL")]
        url: Option<String>,
        /// A PEM CA bundle to trust.
        #[arg(long, env = "STINT_CA_FILE")]
        ca_file: Option<PathBuf>,
        /// Print the claims as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Elevation requests: list them (all kept, or --pending), show one,
    /// or revoke an approval. For operators.
    Approvals {
        #[command(subcommand)]
        command: Option<ApprovalsCommand>,
        /// Only the requests still waiting for a decision.
        #[arg(long)]
        pending: bool,
        #[command(flatten)]
        operator: OperatorArgs,
        /// Print the broker's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Approve an elevation request (an operator; the request is approved
    /// once its quorum of distinct operators has).
    Approve {
        /// The request id (apr-...).
        id: String,
        /// Grant less than was asked: `15m`, `1h`.
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Why (recorded in the audit log).
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        operator: OperatorArgs,
        /// Print the broker's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Deny an elevation request, for good.
    Deny {
        /// The request id (apr-...).
        id: String,
        /// Why (required; recorded in the audit log).
        #[arg(long, required = true)]
        comment: String,
        #[command(flatten)]
        operator: OperatorArgs,
        /// Print the broker's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The emergency stop (operators): `stint workloads stop NAME` revokes
    /// every token of the workload and refuses it new ones until `stint
    /// workloads enable NAME`.
    Workloads {
        #[command(subcommand)]
        command: WorkloadsCommand,
    },
    /// Signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Policy files.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Audit logs.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ApprovalsCommand {
    /// One request in full: context, approvals so far, state.
    Show {
        /// The request id (apr-...).
        id: String,
        #[command(flatten)]
        operator: OperatorArgs,
        /// Print the broker's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke an approval: every token minted under it is revoked at once.
    Revoke {
        /// The request id (apr-...).
        id: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        operator: OperatorArgs,
        /// Print the broker's answer as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Where the broker is, and which operator is acting.
#[derive(Debug, Args)]
struct OperatorArgs {
    /// The broker's issuer URL.
    #[arg(long, env = "STINT_URL")]
    url: Option<String>,
    /// A PEM CA bundle to trust besides the system's roots.
    #[arg(long, env = "STINT_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Sign in with the OIDC ID token in this file instead of
    /// STINT_OPERATOR_KEY.
    #[arg(long, env = "STINT_OPERATOR_TOKEN_FILE")]
    operator_token_file: Option<PathBuf>,
}

/// The operator key, from the environment only (flags show in `ps`).
const OPERATOR_KEY_VAR: &str = "STINT_OPERATOR_KEY";

#[derive(Debug, Subcommand)]
enum WorkloadsCommand {
    /// Revoke every token of the workload and refuse it new ones.
    Stop {
        /// The workload.
        name: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        operator: OperatorArgs,
    },
    /// Let a stopped workload mint again (its earlier tokens stay revoked).
    Enable {
        /// The workload.
        name: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        operator: OperatorArgs,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Replace the broker's signing key (needs a client with the admin
    /// capability). The old key stays published until its tokens expire.
    Rotate {
        #[command(flatten)]
        broker: BrokerArgs,
        /// Print the broker's answer as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validate a policy file exactly as the broker does at load; warn of
    /// workflows due for review within --warn-days, and fail (exit 1) if
    /// one is past its review_by.
    Check {
        /// The policy file.
        file: PathBuf,
        /// Warn of a review_by this many days away or less.
        #[arg(long, value_name = "DAYS", default_value_t = 14, value_parser = clap::value_parser!(u32).range(0..=3660))]
        warn_days: u32,
    },
    /// From an audit log (verified first; a broken chain is refused), what
    /// each step's scope patterns were granted for, and the narrowed
    /// policy that evidence supports: unused patterns removed, wildcards
    /// that matched a few scopes narrowed to them. Never widens. The
    /// evidence is the grant, not the use at the target. Exit 6 on a
    /// --fail-on finding.
    Suggest(suggest::SuggestArgs),
    /// The evidence for recertifying one workflow, as a Markdown block for
    /// the pull request that moves its review_by forward: its steps'
    /// findings (as suggest makes them), the review_by status, the
    /// elevations approved in the window and by whom, and the changes that
    /// widened it.
    Review(suggest::ReviewArgs),
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Walk an audit log's hash chain; name the first broken record.
    Verify {
        /// The audit log.
        file: PathBuf,
    },
}

/// What to ask for.
#[derive(Debug, Args)]
struct TokenArgs {
    /// The step (`step` or `workflow/step`).
    #[arg(long)]
    step: String,
    /// A scope to ask for; repeat for several.
    #[arg(long = "scope", required = true, num_args = 1..)]
    scopes: Vec<String>,
    /// The job the step belongs to.
    #[arg(long, env = "STINT_JOB")]
    job: Option<String>,
    /// The system the token is for (its `aud`).
    #[arg(long)]
    audience: Option<String>,
    /// The token's lifetime: `90s`, `5m`, `1h` (capped at the step's maximum).
    #[arg(long, value_parser = parse_ttl)]
    ttl: Option<Duration>,
    /// Why the step needs its scopes: shown to operators when some need
    /// their approval.
    #[arg(long, env = "STINT_REASON")]
    reason: Option<String>,
    /// How long an elevation should last, if one is needed: `15m`, `1h`.
    #[arg(long, value_parser = parse_duration)]
    elevation_duration: Option<Duration>,
    /// If some scopes need an operator's approval, do not wait for it:
    /// print the request and exit 5.
    #[arg(long)]
    no_wait: bool,
}

/// Where the broker is and who we are.
#[derive(Debug, Args)]
struct BrokerArgs {
    /// The broker's issuer URL.
    #[arg(long, env = "STINT_URL")]
    url: Option<String>,
    /// The client id.
    #[arg(long, env = "STINT_CLIENT_ID")]
    client_id: Option<String>,
    /// Credentials file (dev-client.json shape); its issuer is used unless
    /// --url or STINT_URL is set.
    #[arg(long)]
    credentials: Option<PathBuf>,
    /// A PEM CA bundle to trust besides the system's roots.
    #[arg(long, env = "STINT_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Authenticate with the platform's ID token in this file (RFC 8693
    /// token exchange) instead of a client secret: a CI job or pod bound to
    /// a workload by the policy needs no secret at all.
    #[arg(long, env = "STINT_SUBJECT_TOKEN_FILE")]
    subject_token_file: Option<PathBuf>,
}

/// The platform ID token itself, from the environment (GitLab's
/// `id_tokens:` puts it in a variable): `STINT_SUBJECT_TOKEN`.
const SUBJECT_TOKEN_VAR: &str = "STINT_SUBJECT_TOKEN";

fn parse_duration(text: &str) -> Result<Duration, String> {
    stint_core::ttl::parse_duration_secs(text)
        .map(Duration::from_secs)
        .map_err(|e| e.to_string())
}

fn parse_target(text: &str) -> Result<String, String> {
    stint_client::check_target_name(text)
        .map(|()| text.to_owned())
        .map_err(|_| {
            format!(
                "a target name is a lowercase letter, then lowercase letters, digits and '-', at most {} bytes",
                stint_client::MAX_TARGET_NAME_LEN
            )
        })
}

fn parse_ttl(text: &str) -> Result<Duration, String> {
    Ttl::parse_policy(text)
        .map(|ttl| Duration::from_secs(u64::from(ttl.as_secs())))
        .map_err(|e| e.to_string())
}

/// A failure, with the exit code it maps to.
#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Standard output was closed before everything was written: exit as a
    /// tool that `SIGPIPE` ended, and say nothing (see [`output`]).
    fn closed_pipe() -> Self {
        Self::new(output::EXIT_CLOSED_PIPE, String::new())
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        if let Error::UntrustedCertificate { url, reason } = &error {
            // Configuration, not unavailability: a retry will not help.
            return Self::new(
                EXIT_FAILURE,
                format!(
                    "the broker's certificate is not trusted ({reason}, at {url}): give --ca-file FILE (or STINT_CA_FILE) with the CA that issued it, or use the name the certificate is for"
                ),
            );
        }
        let code = if matches!(error, Error::ApprovalPending(_)) {
            EXIT_PENDING
        } else if error.is_denial() {
            EXIT_DENIED
        } else if error.is_unavailable() {
            EXIT_UNAVAILABLE
        } else {
            EXIT_FAILURE
        };
        Self::new(code, error.to_string())
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // A usage error (on standard error), or --help or --version (on
        // standard output, which may be a closed pipe).
        Err(error) => {
            let printed = error.print();
            let code = u8::try_from(error.exit_code()).unwrap_or(EXIT_FAILURE);
            return match printed {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe && !error.use_stderr() => {
                    ExitCode::from(output::EXIT_CLOSED_PIPE)
                }
                _ => ExitCode::from(code),
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            output::stderr_line(format_args!(
                "stint: cannot start the async runtime: {error}"
            ));
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let mut out = output::Stdout::default();
    let result = runtime.block_on(run(cli.command, &mut out));
    // What a command printed goes out even if it failed afterwards; its
    // failure, if any, is what the exit status says.
    let written = out.flush();
    match result.and_then(|code| written.map(|()| code)) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            if !failure.message.is_empty() {
                output::stderr_line(format_args!("stint: {}", failure.message));
            }
            ExitCode::from(failure.code)
        }
    }
}

async fn run(command: Command, out: &mut output::Stdout) -> Result<u8, Failure> {
    match command {
        Command::Token {
            request,
            broker,
            json,
        } => {
            let client = connect(&broker).await?;
            let step = request_token(&client, &request).await?;
            let output = TokenOutput {
                token_type: "Bearer",
                expires_in: step.expires_in(),
                scope: step.scopes().collect::<Vec<_>>().join(" "),
                job: step.job().to_owned(),
                step: step.step().to_owned(),
                access_token: step.token().to_owned(),
            };
            if json {
                out.json(&output)?;
            } else {
                out.line(&output.access_token);
            }
            if let Err(failure) = out.flush() {
                // No one received the token: it must not outlive stint.
                if let Err(error) = step.finish().await {
                    output::stderr_line(format_args!(
                        "stint: the token could not be written, nor revoked ({error}); it stays valid until it expires"
                    ));
                }
                return Err(failure);
            }
            // The caller owns the token now: it is not revoked on exit.
            let _handed_over = step.detach();
            Ok(0)
        }
        Command::GitCredential { operation } => exec::git_credential(&operation),
        Command::Exec {
            request,
            broker,
            env_var,
            targets,
            command,
        } => {
            exec::check_command(&env_var, &command)?;
            let mut request = request;
            request.audience = exec::check_targets(&targets, request.audience.as_deref())?;
            let signals = exec::Signals::catch()?;
            let client = connect(&broker).await?;
            let step = request_token(&client, &request).await?;
            exec::run(step, signals, &env_var, &targets, &command).await
        }
        Command::Revoke {
            token,
            job,
            step,
            broker,
            json,
        } => {
            let client = connect(&broker).await?;
            if let (Some(job), Some(step)) = (&job, &step) {
                let response = client.revoke_step(job, step).await?;
                if json {
                    out.json(&response)?;
                } else {
                    out.line(format_args!(
                        "step {step} of job {job} revoked: its tokens are inactive and no new ones are issued"
                    ));
                }
                return Ok(0);
            }
            match (token, job) {
                (_, Some(job)) => {
                    let response = client.revoke_job(&job).await?;
                    if json {
                        out.json(&response)?;
                    } else {
                        out.line(format_args!(
                            "job {} revoked at {}: its tokens are inactive and no new ones are issued",
                            response.job, response.revoked_at
                        ));
                    }
                }
                (Some(token), None) => {
                    client.revoke(&token).await?;
                    if json {
                        out.json(&serde_json::json!({ "revoked": true }))?;
                    } else {
                        out.line(format_args!("revoked (or already inactive)"));
                    }
                }
                (None, None) => return Err(Failure::new(2, "give a token or --job")),
            }
            Ok(0)
        }
        Command::Introspect {
            token,
            broker,
            json,
        } => {
            let client = connect(&broker).await?;
            let answer = client.introspect(&token).await?;
            if json {
                out.json(&answer)?;
            } else if answer.active {
                out.line(format_args!("active"));
                let fields = [
                    ("sub", &answer.sub),
                    ("client_id", &answer.client_id),
                    ("aud", &answer.aud),
                    ("scope", &answer.scope),
                    ("job", &answer.job),
                    ("step", &answer.step),
                    ("workflow", &answer.workflow),
                    ("elev", &answer.elev),
                    ("jti", &answer.jti),
                ];
                for (name, value) in fields {
                    if let Some(value) = value {
                        out.line(format_args!("  {name}: {value}"));
                    }
                }
                if let Some(exp) = answer.exp {
                    out.line(format_args!("  exp: {exp} ({})", describe_expiry(exp)));
                }
            } else {
                out.line(format_args!(
                    "inactive (unknown, expired, revoked or not from this broker)"
                ));
            }
            // The status is the answer: `if stint introspect "$T"; then`.
            Ok(if answer.active { 0 } else { EXIT_DENIED })
        }
        Command::Verify {
            token,
            audience,
            url,
            ca_file,
            json,
        } => {
            let url = url.ok_or_else(|| {
                Failure::new(
                    2,
                    "the broker's URL is needed for its keys: set STINT_URL or --url",
                )
            })?;
            let mut builder = Verifier::builder(url);
            builder = match audience {
                Some(audience) => builder.audience(audience),
                None => builder.any_audience(),
            };
            if let Some(ca) = ca_file {
                builder = builder.ca_file(ca);
            }
            let verifier = builder.build().await?;
            let verified = verifier.verify(&token).await?;
            if json {
                out.json(verified.claims())?;
            } else {
                let claims = verified.claims();
                out.line(format_args!(
                    "valid (signature, issuer, audience and lifetime checked offline)"
                ));
                out.line(format_args!("  sub: {}", claims.sub));
                out.line(format_args!("  aud: {}", claims.aud));
                out.line(format_args!("  scope: {}", claims.scope));
                out.line(format_args!("  job: {}  step: {}", claims.job, claims.step));
                if let Some(approval) = &claims.elev {
                    out.line(format_args!(
                        "  elev: {approval} (elevated scopes approved by operators)"
                    ));
                }
                out.line(format_args!(
                    "  exp: {} ({})",
                    claims.exp,
                    describe_expiry(claims.exp)
                ));
                out.line(format_args!(
                    "  (offline: a revocation is only visible to `stint introspect`)"
                ));
            }
            Ok(0)
        }
        Command::Approvals {
            command,
            pending,
            operator,
            json,
        } => match command {
            None => {
                let client = connect_operator(&operator).await?;
                let approvals = client.approvals(pending).await?;
                if json {
                    out.json(&approvals)?;
                } else if approvals.is_empty() {
                    out.line(format_args!(
                        "no {}approval requests",
                        if pending { "pending " } else { "" }
                    ));
                } else {
                    for approval in &approvals {
                        out.line(format_args!("{}", summarize(approval)));
                    }
                }
                Ok(0)
            }
            Some(ApprovalsCommand::Show { id, operator, json }) => {
                let client = connect_operator(&operator).await?;
                let approval = client.approval(&id).await?;
                print_approval(out, &approval, json)
            }
            Some(ApprovalsCommand::Revoke {
                id,
                comment,
                operator,
                json,
            }) => {
                let client = connect_operator(&operator).await?;
                let approval = client.revoke_approval(&id, comment.as_deref()).await?;
                print_approval(out, &approval, json)
            }
        },
        Command::Approve {
            id,
            duration,
            comment,
            operator,
            json,
        } => {
            let client = connect_operator(&operator).await?;
            let approval = client.approve(&id, duration, comment.as_deref()).await?;
            print_approval(out, &approval, json)
        }
        Command::Deny {
            id,
            comment,
            operator,
            json,
        } => {
            let client = connect_operator(&operator).await?;
            let approval = client.deny(&id, &comment).await?;
            print_approval(out, &approval, json)
        }
        Command::Workloads { command } => {
            let (name, comment, operator, stopping) = match command {
                WorkloadsCommand::Stop {
                    name,
                    comment,
                    operator,
                } => (name, comment, operator, true),
                WorkloadsCommand::Enable {
                    name,
                    comment,
                    operator,
                } => (name, comment, operator, false),
            };
            let client = connect_operator(&operator).await?;
            if stopping {
                client.stop_workload(&name, comment.as_deref()).await?;
                out.line(format_args!(
                    "workload {name} stopped: every token it held is revoked, and it gets no new one until `stint workloads enable {name}`"
                ));
            } else {
                client.enable_workload(&name, comment.as_deref()).await?;
                out.line(format_args!(
                    "workload {name} enabled: it may mint again (its earlier tokens stay revoked)"
                ));
            }
            Ok(0)
        }
        Command::Keys {
            command: KeysCommand::Rotate { broker, json },
        } => {
            let client = connect(&broker).await?;
            let rotation = client.rotate_keys().await?;
            if json {
                out.json(&rotation)?;
            } else {
                out.line(format_args!(
                    "new signing key {} ({}), published now, signs from {}; {} stays published until {}",
                    rotation.kid,
                    rotation.alg,
                    rotation.signs_from,
                    rotation.retired_kid,
                    rotation.retired_key_published_until
                ));
            }
            Ok(0)
        }
        Command::Policy {
            command: PolicyCommand::Check { file, warn_days },
        } => check_policy(out, &file, warn_days),
        Command::Policy {
            command: PolicyCommand::Suggest(args),
        } => {
            use stint_core::Clock as _;
            suggest::run(out, &args, stint_core::SystemClock.now())
        }
        Command::Policy {
            command: PolicyCommand::Review(args),
        } => {
            use stint_core::Clock as _;
            suggest::review(out, &args, stint_core::SystemClock.now())
        }
        Command::Audit {
            command: AuditCommand::Verify { file },
        } => verify_audit(out, &file),
    }
}

#[derive(Debug, Serialize)]
struct TokenOutput {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    scope: String,
    job: String,
    step: String,
}

async fn request_token(
    client: &Client,
    request: &TokenArgs,
) -> Result<stint_client::StepToken, Failure> {
    let mut builder = client.step(&request.step).scopes(&request.scopes);
    if let Some(job) = &request.job {
        builder = builder.job(job);
    }
    if let Some(audience) = &request.audience {
        builder = builder.audience(audience);
    }
    if let Some(ttl) = request.ttl {
        builder = builder.ttl(ttl);
    }
    if let Some(reason) = &request.reason {
        builder = builder.reason(reason);
    }
    if let Some(duration) = request.elevation_duration {
        builder = builder.elevation_duration(duration);
    }
    let wait = !request.no_wait;
    builder = builder
        .wait_for_approval(wait)
        .on_approval_pending(move |pending| {
            output::stderr_line(format_args!("stint: {}", describe_pending(pending, wait)))
        });
    Ok(builder.request().await?)
}

/// What a person watching a job wait should read: the request, and what
/// the operators must do.
fn describe_pending(pending: &stint_client::PendingApproval, waiting: bool) -> String {
    let Some(approval) = &pending.approval else {
        return pending.description.clone();
    };
    let approved_by = approval
        .approvals
        .iter()
        .map(|a| a.operator.as_str())
        .collect::<Vec<_>>();
    let mut text = if approved_by.is_empty() {
        format!(
            "approval {id} requested for job {job}, step {step}: {scopes}\n  \
             needs {n} approval(s) from an operator in {groups}: `stint approve {id}` (or `stint deny {id} --comment ...`)",
            id = approval.id,
            job = approval.job,
            step = approval.step,
            scopes = approval.scopes.join(" "),
            n = approval.approvals_required,
            groups = approval.approver_groups.join(", "),
        )
    } else {
        format!(
            "approval {}: {} of {} approvals ({})",
            approval.id,
            approved_by.len(),
            approval.approvals_required,
            approved_by.join(", ")
        )
    };
    if waiting {
        text.push_str(&format!(
            "\n  waiting (polling every {} s; the request expires in {} s)",
            pending.interval, pending.expires_in
        ));
    }
    text
}

/// Build a client from the flags, the environment and the credentials file.
async fn connect(args: &BrokerArgs) -> Result<Client, Failure> {
    let subject = match (&args.subject_token_file, std::env::var(SUBJECT_TOKEN_VAR)) {
        (Some(file), _) => Some(stint_client::SubjectToken::File(file.clone())),
        (None, Ok(token)) if !token.trim().is_empty() => {
            Some(stint_client::SubjectToken::Value(token.trim().to_owned()))
        }
        _ => None,
    };
    if let Some(subject) = subject {
        let url = args.url.clone().ok_or_else(|| {
            Failure::new(
                2,
                "no broker: set STINT_URL or --url (with a subject token)",
            )
        })?;
        return build(
            Client::builder(url).subject_token(subject),
            args.ca_file.as_deref(),
        )
        .await;
    }
    let file = match &args.credentials {
        Some(path) => Some(read_credentials(path)?),
        None => None,
    };
    let url = args
        .url
        .clone()
        .or_else(|| file.as_ref().map(|f| f.issuer.clone()))
        .ok_or_else(|| Failure::new(2, "no broker: set STINT_URL, --url or --credentials"))?;
    let secret_from_env = std::env::var("STINT_CLIENT_SECRET").ok();
    let credentials = match (&args.client_id, secret_from_env, file) {
        (Some(id), Some(secret), _) => Credentials::new(id.clone(), secret),
        (None, _, Some(file)) => Credentials::new(file.client_id, file.client_secret),
        (Some(id), None, Some(file)) if *id == file.client_id => {
            Credentials::new(file.client_id, file.client_secret)
        }
        (Some(id), None, Some(file)) => {
            return Err(Failure::new(
                2,
                format!(
                    "the client id {id:?} is not the credentials file's ({:?}), and STINT_CLIENT_SECRET is not set",
                    file.client_id
                ),
            ));
        }
        _ => {
            return Err(Failure::new(
                2,
                "no credentials: set STINT_CLIENT_ID and STINT_CLIENT_SECRET, or give --credentials FILE",
            ));
        }
    };
    build(
        Client::builder(url).credentials(credentials),
        args.ca_file.as_deref(),
    )
    .await
}

/// Build an operator client from the flags and the environment.
async fn connect_operator(args: &OperatorArgs) -> Result<Client, Failure> {
    let url = args
        .url
        .clone()
        .ok_or_else(|| Failure::new(2, "no broker: set STINT_URL or --url"))?;
    let credential = match (&args.operator_token_file, std::env::var(OPERATOR_KEY_VAR)) {
        (Some(file), _) => stint_client::SubjectToken::File(file.clone()),
        (None, Ok(key)) if !key.trim().is_empty() => {
            stint_client::SubjectToken::Value(key.trim().to_owned())
        }
        _ => {
            return Err(Failure::new(
                2,
                "no operator credentials: set STINT_OPERATOR_KEY, or STINT_OPERATOR_TOKEN_FILE / --operator-token-file",
            ));
        }
    };
    build(
        Client::builder(url).operator(credential),
        args.ca_file.as_deref(),
    )
    .await
}

/// Trust `ca_file` too, and connect.
async fn build(
    mut builder: stint_client::ClientBuilder,
    ca_file: Option<&Path>,
) -> Result<Client, Failure> {
    if let Some(ca) = ca_file {
        builder = builder.ca_file(ca);
    }
    Ok(builder.build().await?)
}

/// One line per request, for `stint approvals`.
fn summarize(approval: &stint_client::ApprovalView) -> String {
    format!(
        "{id}  {state:<8}  {workload}  job {job}  step {step}  {scopes}  {got}/{needed} approvals  {when}",
        id = approval.id,
        state = approval.state,
        workload = approval.workload,
        job = approval.job,
        step = approval.step,
        scopes = approval.scopes.join(" "),
        got = approval.approvals.len(),
        needed = approval.approvals_required,
        when = match approval.state.as_str() {
            "pending" => format!("expires {}", describe_expiry(approval.expires_at)),
            "approved" => approval
                .approved_until
                .map(|until| format!("until {}", describe_expiry(until)))
                .unwrap_or_default(),
            _ => String::new(),
        },
    )
}

fn print_approval(
    out: &mut output::Stdout,
    approval: &stint_client::ApprovalView,
    json: bool,
) -> Result<u8, Failure> {
    if json {
        out.json(approval)?;
        return Ok(0);
    }
    out.line(format_args!("{}  {}", approval.id, approval.state));
    out.line(format_args!(
        "  workload: {} (client {})",
        approval.workload, approval.client_id
    ));
    out.line(format_args!(
        "  job: {}  step: {}",
        approval.job, approval.step
    ));
    out.line(format_args!("  audience: {}", approval.audience));
    out.line(format_args!("  scopes: {}", approval.scopes.join(" ")));
    if let Some(reason) = &approval.reason {
        out.line(format_args!("  reason: {reason}"));
    }
    out.line(format_args!(
        "  duration asked: {} s (at most {} s)",
        approval.duration_asked, approval.max_duration
    ));
    out.line(format_args!(
        "  approvals: {} of {} from {}",
        approval.approvals.len(),
        approval.approvals_required,
        approval.approver_groups.join(", ")
    ));
    for vote in &approval.approvals {
        out.line(format_args!(
            "    {} granted {} s{}",
            vote.operator,
            vote.duration,
            vote.comment
                .as_deref()
                .map(|c| format!(": {c}"))
                .unwrap_or_default()
        ));
    }
    match approval.state.as_str() {
        "pending" => out.line(format_args!(
            "  expires: {}",
            describe_expiry(approval.expires_at)
        )),
        "approved" => {
            if let Some(until) = approval.approved_until {
                out.line(format_args!(
                    "  approved until: {until} ({})",
                    describe_expiry(until)
                ));
            }
        }
        _ => {}
    }
    if let Some(by) = &approval.decided_by {
        out.line(format_args!("  decided by: {by}"));
    }
    if let Some(comment) = &approval.comment {
        out.line(format_args!("  comment: {comment}"));
    }
    Ok(0)
}

fn read_credentials(path: &Path) -> Result<DevClient, Failure> {
    let text = std::fs::read(path)
        .map_err(|e| Failure::new(EXIT_FAILURE, format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_slice(&text).map_err(|_| {
        Failure::new(
            EXIT_FAILURE,
            format!(
                "{} is not a credentials file (JSON with issuer, client_id and client_secret)",
                path.display()
            ),
        )
    })
}

fn check_policy(out: &mut output::Stdout, file: &Path, warn_days: u32) -> Result<u8, Failure> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Failure::new(EXIT_FAILURE, format!("cannot read {}: {e}", file.display())))?;
    let policy = stint_core::policy::Policy::parse(&file.display().to_string(), &text)
        .map_err(|errors| Failure::new(EXIT_FAILURE, errors.to_string()))?;
    let today = today();
    for workflow in policy.workflows() {
        let days = (workflow.review_by() - today).num_days();
        if (0..=i64::from(warn_days)).contains(&days) {
            output::stderr_line(format_args!(
                "warning: workflow {:?} is due for review in {days} days ({}): recertify it (stint policy review --workflow {}) and move review_by forward",
                workflow.name(),
                workflow.review_by(),
                workflow.name()
            ));
        }
    }
    let overdue = policy.review_warnings(today);
    for warning in &overdue {
        output::stderr_line(format_args!("error: {warning}"));
    }
    if !overdue.is_empty() {
        return Err(Failure::new(
            EXIT_FAILURE,
            format!(
                "{}: valid, but {} workflow{} past its review date",
                file.display(),
                overdue.len(),
                if overdue.len() == 1 { " is" } else { "s are" }
            ),
        ));
    }
    out.line(format_args!(
        "{}: ok ({} workloads, {} workflows)",
        file.display(),
        policy.workloads().count(),
        policy.workflows().count()
    ));
    Ok(0)
}

fn verify_audit(out: &mut output::Stdout, file: &Path) -> Result<u8, Failure> {
    let log = std::fs::File::open(file)
        .map_err(|e| Failure::new(EXIT_FAILURE, format!("cannot read {}: {e}", file.display())))?;
    let summary = stint_core::audit::verify(std::io::BufReader::new(log)).map_err(|error| {
        Failure::new(
            EXIT_FAILURE,
            format!("{}: chain broken: {error}", file.display()),
        )
    })?;
    out.line(format_args!(
        "{}: {} records, chain intact, head {}",
        file.display(),
        summary.records,
        summary.head
    ));
    Ok(0)
}

fn today() -> stint_core::chrono::NaiveDate {
    use stint_core::Clock as _;
    stint_core::SystemClock.now().date_naive()
}

fn describe_expiry(exp: i64) -> String {
    use stint_core::Clock as _;
    let left = exp - stint_core::SystemClock.now().timestamp();
    if left > 0 {
        format!("in {left} s")
    } else {
        format!("{} s ago", -left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("stint").chain(args.iter().copied()))
    }

    #[test]
    fn exec_takes_repeated_targets() {
        let cli = parse(&[
            "exec",
            "--step",
            "migrate",
            "--scope",
            "write:db/orders",
            "--target",
            "orders-db",
            "--target",
            "repo",
            "--",
            "psql",
            "-c",
            "select 1",
        ])
        .unwrap();
        let Command::Exec {
            targets, command, ..
        } = cli.command
        else {
            panic!("not exec");
        };
        assert_eq!(targets, ["orders-db", "repo"]);
        assert_eq!(command, ["psql", "-c", "select 1"]);

        let cli = parse(&["exec", "--step", "s", "--scope", "read:x", "--", "true"]).unwrap();
        let Command::Exec { targets, .. } = cli.command else {
            panic!("not exec");
        };
        assert!(targets.is_empty());
    }

    #[test]
    fn a_malformed_target_is_a_usage_error() {
        for bad in ["Orders", "1db", "orders_db", "urn:stint:target:db", ""] {
            let error = parse(&[
                "exec", "--step", "s", "--scope", "read:x", "--target", bad, "--", "true",
            ])
            .unwrap_err();
            assert_eq!(error.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn only_exec_takes_targets() {
        assert!(
            parse(&[
                "token", "--step", "s", "--scope", "read:x", "--target", "db"
            ])
            .is_err()
        );
    }

    #[test]
    fn a_broker_refusal_keeps_its_code_and_exit_status() {
        let failure = Failure::from(Error::OAuth {
            status: 400,
            code: "invalid_target".to_owned(),
            description: Some("the step does not list target orders-db".to_owned()),
        });
        assert_eq!(failure.code, EXIT_DENIED);
        assert!(
            failure.message.contains("invalid_target"),
            "{}",
            failure.message
        );
        assert!(
            failure.message.contains("does not list"),
            "{}",
            failure.message
        );
        let unavailable = Failure::from(Error::OAuth {
            status: 503,
            code: "temporarily_unavailable".to_owned(),
            description: None,
        });
        assert_eq!(unavailable.code, EXIT_UNAVAILABLE);
    }
}
