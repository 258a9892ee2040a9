//! `stint exec`: a token that lives exactly as long as a command.
//!
//! The token goes to the child in one environment variable; the workload's
//! client secret or platform ID token does not (`STINT_CLIENT_SECRET` and
//! `STINT_SUBJECT_TOKEN` are removed from the child's environment, and `stint` makes itself non-dumpable so that the child,
//! running as the same user, cannot read it from `/proc`). `SIGINT`,
//! `SIGTERM`, `SIGHUP` and `SIGQUIT` sent to `stint` are passed on to the
//! child, and `stint` itself does not die of them: it waits for the child to
//! exit, revokes the token (waiting for the broker's acknowledgement, with
//! retries), and only then exits, with the child's status. So the token is
//! revoked whether the command succeeds, fails, is killed by a signal, or
//! `stint` is asked to stop. What no program can survive, `SIGKILL` of
//! `stint` itself, leaves the token to expire at its `exp`.
//!
//! With `--target NAME`, the step token is exchanged for each target's
//! native credential before the command starts. A PostgreSQL login goes to
//! the child's environment only, as libpq reads it (`PGHOST`, `PGPORT`,
//! `PGDATABASE`, `PGUSER`, `PGPASSWORD`, `PGSSLMODE`; never in its
//! arguments, never printed), with its id in
//! `STINT_TARGET_CREDENTIAL_ID_<NAME>`. If an exchange fails, the command
//! is not run. However the command ends, each credential is revoked, then
//! the step token (which revokes its credentials too, at the broker).
//!
//! A GitHub installation token goes to the child as `GH_TOKEN` and
//! `GITHUB_TOKEN` for github.com (what `gh` and most GitHub tooling read;
//! for GitHub Enterprise Server instead only `GH_HOST`,
//! `GH_ENTERPRISE_TOKEN` and `GITHUB_ENTERPRISE_TOKEN`), and git gets
//! it over HTTPS from `stint git-credential`, which the child's git
//! configuration (`GIT_CONFIG_COUNT`, `GIT_CONFIG_KEY_n`, never a file)
//! names as the only credential helper for the token's host.

use crate::{EXIT_FAILURE, EXIT_UNAVAILABLE, Failure, output};
use rustix::process::{Pid, Signal, kill_process};
use std::os::unix::process::ExitStatusExt as _;
use stint_client::{StepToken, TargetCredential};
use tokio::signal::unix::{Signal as SignalStream, SignalKind, signal};

/// The signals `stint exec` catches and forwards.
pub(crate) struct Signals {
    interrupt: SignalStream,
    terminate: SignalStream,
    hangup: SignalStream,
    quit: SignalStream,
}

impl Signals {
    /// Catch `SIGINT` and `SIGTERM` from now on: call it before minting,
    /// so that no moment exists where a token is out and a signal would
    /// kill `stint` without revoking it.
    pub(crate) fn catch() -> Result<Self, Failure> {
        // The secret is in this process's environment; a child running as
        // the same user could otherwise read /proc/<stint>/environ.
        if let Err(error) =
            rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        {
            output::stderr_line(format_args!(
                "stint: warning: could not make the process non-dumpable: {error}"
            ));
        }
        let failed =
            |e: std::io::Error| Failure::new(EXIT_FAILURE, format!("cannot catch signals: {e}"));
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).map_err(failed)?,
            terminate: signal(SignalKind::terminate()).map_err(failed)?,
            hangup: signal(SignalKind::hangup()).map_err(failed)?,
            quit: signal(SignalKind::quit()).map_err(failed)?,
        })
    }
}

impl Signals {
    /// The number of a signal caught and not yet handled, if any.
    async fn pending(&mut self) -> Option<u8> {
        tokio::select! {
            biased;
            _ = self.interrupt.recv() => Some(2),
            _ = self.terminate.recv() => Some(15),
            _ = self.hangup.recv() => Some(1),
            _ = self.quit.recv() => Some(3),
            () = std::future::ready(()) => None,
        }
    }
}

/// Check what can be checked before a token is minted.
pub(crate) fn check_command(env_var: &str, command: &[String]) -> Result<(), Failure> {
    if env_var.is_empty() || env_var.contains(['=', '\0']) {
        return Err(Failure::new(
            2,
            format!("{env_var:?} is not an environment variable name"),
        ));
    }
    if command.is_empty() {
        return Err(Failure::new(2, "no command given"));
    }
    Ok(())
}

/// Check the `--target` names given (each is already a well-formed name):
/// none twice, as one step token is exchanged once per target.
/// The audience the step token is asked for: a step token is exchanged
/// only at the target it was minted for (its `aud`), so with `--target`
/// the audience is the target's name, and one `--target` per exec.
pub(crate) fn check_targets(
    targets: &[String],
    audience: Option<&str>,
) -> Result<Option<String>, Failure> {
    for (index, target) in targets.iter().enumerate() {
        if targets[..index].contains(target) {
            return Err(Failure::new(2, format!("--target {target} is given twice")));
        }
    }
    match (targets, audience) {
        ([], audience) => Ok(audience.map(str::to_owned)),
        ([target], None) => Ok(Some(target.clone())),
        ([target], Some(audience)) if audience == target => Ok(Some(target.clone())),
        ([target], Some(audience)) => Err(Failure::new(
            2,
            format!(
                "--audience {audience}: a step token is exchanged only at the target it is for; with --target {target} its audience is {target} (leave --audience out)"
            ),
        )),
        _ => Err(Failure::new(
            2,
            "one --target per stint exec: a step token is exchanged only at the target it is for (its audience); run one stint exec per target",
        )),
    }
}

/// The prefix of the variable that names a target credential's id.
const CREDENTIAL_ID_VAR_PREFIX: &str = "STINT_TARGET_CREDENTIAL_ID_";

/// Variables of `stint`'s environment that would make libpq use something
/// else than the login given (another address, a service file's host):
/// removed from the command's environment when it gets a PostgreSQL login.
const CONFLICTING_LIBPQ_VARS: [&str; 2] = ["PGHOSTADDR", "PGSERVICE"];

/// What the command's environment gets from one target credential.
#[derive(Debug)]
pub(crate) struct TargetEnv<'a> {
    /// The target's name.
    pub(crate) target: &'a str,
    /// The credential's id (not a secret).
    pub(crate) credential_id: &'a str,
    /// Its libpq variables; empty if it is not a PostgreSQL login.
    pub(crate) libpq: Vec<(&'static str, String)>,
    /// Its GitHub variables and git's host; empty if it is not a GitHub
    /// installation token.
    pub(crate) github: Vec<(&'static str, String)>,
    /// The host git reaches with it, for a GitHub token.
    pub(crate) git_host: Option<&'a str>,
    /// The token git's helper hands out, for a GitHub token.
    pub(crate) git_token: Option<String>,
}

impl<'a> TargetEnv<'a> {
    fn of(credential: &'a TargetCredential) -> Self {
        Self {
            target: credential.target(),
            credential_id: credential.credential_id(),
            libpq: credential.libpq_env(),
            github: credential.github_env(),
            git_host: credential.github().map(|g| g.git_host.as_str()),
            git_token: credential.github().map(|_| credential.secret().to_owned()),
        }
    }
}

/// `STINT_TARGET_CREDENTIAL_ID_<NAME>` of `target`: uppercased, `-` as `_`.
pub(crate) fn credential_id_var(target: &str) -> String {
    let name: String = target
        .chars()
        .map(|c| {
            if c == '-' {
                '_'
            } else {
                c.to_ascii_uppercase()
            }
        })
        .collect();
    format!("{CREDENTIAL_ID_VAR_PREFIX}{name}")
}

/// The variables the command gets from its target credentials, besides
/// the token in `token_var`. Two PostgreSQL logins would share the `PG*`
/// variables, and a token variable among them would be overwritten: both
/// are usage errors.
pub(crate) fn child_env(
    token_var: &str,
    credentials: &[TargetEnv<'_>],
) -> Result<Vec<(String, String)>, Failure> {
    let mut env = Vec::new();
    let mut postgres: Option<&str> = None;
    let mut github: Option<&str> = None;
    for credential in credentials {
        if !credential.libpq.is_empty() {
            if let Some(first) = postgres {
                return Err(Failure::new(
                    2,
                    format!(
                        "targets {first} and {} are both PostgreSQL logins, and would share the PG* variables: run one `stint exec` per PostgreSQL target",
                        credential.target
                    ),
                ));
            }
            postgres = Some(credential.target);
            env.extend(
                credential
                    .libpq
                    .iter()
                    .map(|(name, value)| ((*name).to_owned(), value.clone())),
            );
        }
        if credential.git_host.is_some() {
            if let Some(first) = github {
                return Err(Failure::new(
                    2,
                    format!(
                        "targets {first} and {} are both GitHub tokens, and would share GH_TOKEN and git's helper: run one `stint exec` per GitHub target",
                        credential.target
                    ),
                ));
            }
            github = Some(credential.target);
        }
        env.extend(
            credential
                .github
                .iter()
                .map(|(name, value)| ((*name).to_owned(), value.clone())),
        );
        if let (Some(host), Some(token)) = (credential.git_host, &credential.git_token) {
            env.extend(git_helper_env(host));
            env.push((GIT_TOKEN_VAR.to_owned(), token.clone()));
        }
        env.push((
            credential_id_var(credential.target),
            credential.credential_id.to_owned(),
        ));
    }
    if let Some((name, _)) = env.iter().find(|(name, _)| name == token_var) {
        return Err(Failure::new(
            2,
            format!("--env-var {name} is also a variable a target credential sets: choose another"),
        ));
    }
    Ok(env)
}

/// The variable that tells `stint git-credential` which host its token
/// is for.
const GIT_HOST_VAR: &str = "STINT_GIT_HOST";
/// The variable that holds the token `stint git-credential` answers with
/// (not GH_TOKEN: a GitHub Enterprise Server's token is not in it).
const GIT_TOKEN_VAR: &str = "STINT_GIT_TOKEN";
/// The most bytes `stint git-credential` reads of git's request.
const MAX_GIT_REQUEST_LEN: u64 = 64 * 1024;

/// git configuration, through the environment (git 2.31 and later), that
/// makes `stint git-credential` the only credential helper for `host`:
/// an empty value first clears the helpers configured elsewhere for it.
/// Appended after any `GIT_CONFIG_COUNT` entries `stint` itself was given.
fn git_helper_env(host: &str) -> Vec<(String, String)> {
    let first: usize = std::env::var("GIT_CONFIG_COUNT")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let stint = std::env::current_exe()
        .ok()
        .and_then(|path| path.to_str().map(str::to_owned))
        .unwrap_or_else(|| "stint".to_owned());
    // The helper runs through the shell: quote the path.
    let quoted = format!("'{}'", stint.replace('\'', "'\\''"));
    let key = format!("credential.https://{host}.helper");
    vec![
        (format!("GIT_CONFIG_KEY_{first}"), key.clone()),
        (format!("GIT_CONFIG_VALUE_{first}"), String::new()),
        (format!("GIT_CONFIG_KEY_{}", first + 1), key),
        (
            format!("GIT_CONFIG_VALUE_{}", first + 1),
            format!("!{quoted} git-credential"),
        ),
        ("GIT_CONFIG_COUNT".to_owned(), (first + 2).to_string()),
        (GIT_HOST_VAR.to_owned(), host.to_owned()),
    ]
}

/// `stint git-credential OPERATION`: git's credential helper protocol
/// (`key=value` lines on standard input). For `get` of `https` on the
/// token's host, answers `username=x-access-token` and the token; for
/// anything else, nothing, so git asks no one else with it.
pub(crate) fn git_credential(operation: &str) -> Result<u8, Failure> {
    use std::io::{BufRead as _, Read as _, Write as _};
    if operation != "get" {
        return Ok(0);
    }
    let mut protocol = None;
    let mut host = None;
    let stdin = std::io::stdin();
    for line in stdin.lock().take(MAX_GIT_REQUEST_LEN).lines() {
        let line = line.map_err(|e| Failure::new(EXIT_FAILURE, format!("git's request: {e}")))?;
        if line.is_empty() {
            break;
        }
        match line.split_once('=') {
            Some(("protocol", value)) => protocol = Some(value.to_owned()),
            Some(("host", value)) => host = Some(value.to_owned()),
            _ => {}
        }
    }
    let ours = std::env::var(GIT_HOST_VAR).ok();
    let token = std::env::var(GIT_TOKEN_VAR)
        .ok()
        .filter(|t| !t.is_empty() && !t.contains(['\n', '\r', '\0']));
    let matches = protocol.as_deref() == Some("https")
        && host.is_some()
        && ours.as_deref().is_some_and(|ours| {
            host.as_deref()
                .is_some_and(|h| h.eq_ignore_ascii_case(ours))
        });
    if let (true, Some(token)) = (matches, token) {
        let mut out = std::io::stdout().lock();
        writeln!(out, "username={}", stint_client::GIT_USERNAME)
            .and_then(|()| writeln!(out, "password={token}"))
            .and_then(|()| out.flush())
            .map_err(|e| Failure::new(EXIT_FAILURE, format!("cannot answer git: {e}")))?;
    }
    Ok(0)
}

/// What the step holds while its command runs.
struct Held {
    step: StepToken,
    credentials: Vec<TargetCredential>,
}

impl Held {
    /// Revoke each target credential, then the step token (which revokes
    /// the credentials too, at the broker). The step token's outcome is
    /// the outcome: a credential that could not be revoked alone is
    /// revoked with it.
    async fn release(self) -> Result<(), stint_client::Error> {
        for credential in self.credentials {
            let id = credential.credential_id().to_owned();
            let target = credential.target().to_owned();
            if let Err(error) = credential.finish().await {
                output::stderr_line(format_args!(
                    "stint: the credential {id} for target {target} could not be revoked alone ({error}); revoking the step's token revokes it"
                ));
            }
        }
        self.step.finish().await
    }
}

/// Run `command` with the token in `env_var`, and the credentials of
/// `targets` exchanged from it; revoke them all; return the exit code.
pub(crate) async fn run(
    step: StepToken,
    mut signals: Signals,
    env_var: &str,
    targets: &[String],
    command: &[String],
) -> Result<u8, Failure> {
    let mut held = Held {
        step,
        credentials: Vec::with_capacity(targets.len()),
    };
    let Some((program, args)) = command.split_first() else {
        return Err(revoke_then_fail(held, Failure::new(2, "no command given")).await);
    };
    // A signal that came while the token was being minted: do not start.
    if let Some(signal) = signals.pending().await {
        return stop_before_start(held, signal).await;
    }
    for target in targets {
        match held.step.target_credential(target).await {
            Ok(credential) => held.credentials.push(credential),
            Err(error) => {
                let mut failure = Failure::from(error);
                failure.message = format!("target {target}: {}", failure.message);
                return Err(revoke_then_fail(held, failure).await);
            }
        }
    }
    let env = match child_env(
        env_var,
        &held
            .credentials
            .iter()
            .map(TargetEnv::of)
            .collect::<Vec<_>>(),
    ) {
        Ok(env) => env,
        Err(failure) => return Err(revoke_then_fail(held, failure).await),
    };
    // A signal that came while the credentials were being exchanged.
    if let Some(signal) = signals.pending().await {
        return stop_before_start(held, signal).await;
    }
    let mut child = tokio::process::Command::new(program);
    child
        .args(args)
        .env_remove("STINT_CLIENT_SECRET")
        .env_remove("STINT_SUBJECT_TOKEN")
        .env_remove("STINT_SUBJECT_TOKEN_FILE")
        .env_remove("STINT_OPERATOR_KEY");
    if env.iter().any(|(name, _)| name == "PGPASSWORD") {
        for name in CONFLICTING_LIBPQ_VARS {
            child.env_remove(name);
        }
    }
    let spawned = child.envs(env).env(env_var, held.step.token()).spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            // As shells do: 127 for a missing command, 126 otherwise.
            let code = if error.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            let failure = Failure::new(code, format!("cannot run {program:?}: {error}"));
            return Err(revoke_then_fail(held, failure).await);
        }
    };
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(Pid::from_raw);
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            _ = signals.interrupt.recv() => forward(pid, Signal::INT),
            _ = signals.terminate.recv() => forward(pid, Signal::TERM),
            _ = signals.hangup.recv() => forward(pid, Signal::HUP),
            _ = signals.quit.recv() => forward(pid, Signal::QUIT),
        }
    };
    let code = match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => u8::try_from(code).unwrap_or(EXIT_FAILURE),
            (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(EXIT_FAILURE),
            (None, None) => EXIT_FAILURE,
        },
        Err(error) => {
            output::stderr_line(format_args!("stint: lost track of the command: {error}"));
            EXIT_FAILURE
        }
    };
    match held.release().await {
        Ok(()) => Ok(code),
        Err(error) => {
            output::stderr_line(format_args!(
                "stint: the step's token could not be revoked ({error}); it stays valid until it expires"
            ));
            // A step that succeeded but left its token alive has not
            // succeeded; a failed step keeps its own status.
            Ok(if code == 0 { EXIT_UNAVAILABLE } else { code })
        }
    }
}

fn forward(pid: Option<Pid>, signal: Signal) {
    if let Some(pid) = pid {
        // The child may have just exited; then there is nothing to do.
        let _ = kill_process(pid, signal);
    }
}

async fn stop_before_start(held: Held, signal: u8) -> Result<u8, Failure> {
    let failure = Failure::new(
        128 + signal,
        "stopped by a signal before the command started",
    );
    Err(revoke_then_fail(held, failure).await)
}

async fn revoke_then_fail(held: Held, failure: Failure) -> Failure {
    if let Err(error) = held.release().await {
        output::stderr_line(format_args!(
            "stint: the token could not be revoked ({error}); it stays valid until it expires"
        ));
    }
    failure
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(target: &'static str, id: &'static str) -> TargetEnv<'static> {
        TargetEnv {
            target,
            credential_id: id,
            libpq: vec![
                ("PGHOST", "db.internal".to_owned()),
                ("PGPORT", "5432".to_owned()),
                ("PGDATABASE", "orders".to_owned()),
                ("PGUSER", "stint_abc".to_owned()),
                ("PGPASSWORD", "pw-s3cret".to_owned()),
                ("PGSSLMODE", "verify-full".to_owned()),
            ],
            github: Vec::new(),
            git_host: None,
            git_token: None,
        }
    }

    impl TargetEnv<'static> {
        fn clone_for_test(&self) -> Self {
            Self {
                target: self.target,
                credential_id: self.credential_id,
                libpq: self.libpq.clone(),
                github: self.github.clone(),
                git_host: self.git_host,
                git_token: self.git_token.clone(),
            }
        }
    }

    fn other(target: &'static str, id: &'static str) -> TargetEnv<'static> {
        TargetEnv {
            target,
            credential_id: id,
            libpq: Vec::new(),
            github: Vec::new(),
            git_host: None,
            git_token: None,
        }
    }

    #[test]
    fn a_github_token_goes_to_gh_and_to_git_through_the_helper() {
        let token = TargetEnv {
            target: "github",
            credential_id: "tc-9",
            libpq: Vec::new(),
            github: vec![
                ("GH_TOKEN", "ghs_s3cret".to_owned()),
                ("GITHUB_TOKEN", "ghs_s3cret".to_owned()),
            ],
            git_host: Some("github.com"),
            git_token: Some("ghs_s3cret".to_owned()),
        };
        let second = TargetEnv {
            target: "github-two",
            credential_id: "tc-10",
            libpq: Vec::new(),
            github: Vec::new(),
            git_host: Some("ghe.example.com"),
            git_token: Some("ghs_other".to_owned()),
        };
        let twice = child_env("STINT_TOKEN", &[token.clone_for_test(), second]).unwrap_err();
        assert!(
            twice.message.contains("both GitHub tokens"),
            "{}",
            twice.message
        );
        assert!(!twice.message.contains("ghs_"), "{}", twice.message);
        let env = child_env("STINT_TOKEN", &[token]).unwrap();
        let get = |name: &str| {
            env.iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        assert_eq!(get("GH_TOKEN"), "ghs_s3cret");
        assert_eq!(get("GITHUB_TOKEN"), "ghs_s3cret");
        assert_eq!(get("STINT_GIT_HOST"), "github.com");
        assert_eq!(get("STINT_GIT_TOKEN"), "ghs_s3cret");
        let first: usize = std::env::var("GIT_CONFIG_COUNT")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert_eq!(get("GIT_CONFIG_COUNT"), (first + 2).to_string());
        assert_eq!(
            get(&format!("GIT_CONFIG_KEY_{first}")),
            "credential.https://github.com.helper"
        );
        assert_eq!(
            get(&format!("GIT_CONFIG_VALUE_{first}")),
            "",
            "clears other helpers"
        );
        let helper = get(&format!("GIT_CONFIG_VALUE_{}", first + 1));
        assert!(
            helper.starts_with("!'") && helper.ends_with("' git-credential"),
            "{helper}"
        );
        assert!(
            !helper.contains("ghs_"),
            "the token is never in git's configuration"
        );
    }

    #[test]
    fn a_postgres_login_and_its_id_go_to_the_environment() {
        let env = child_env("STINT_TOKEN", &[login("orders-db", "tc-1")]).unwrap();
        let names: Vec<_> = env.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            [
                "PGHOST",
                "PGPORT",
                "PGDATABASE",
                "PGUSER",
                "PGPASSWORD",
                "PGSSLMODE",
                "STINT_TARGET_CREDENTIAL_ID_ORDERS_DB"
            ]
        );
        assert!(env.contains(&("PGPASSWORD".to_owned(), "pw-s3cret".to_owned())));
        assert!(env.contains(&(
            "STINT_TARGET_CREDENTIAL_ID_ORDERS_DB".to_owned(),
            "tc-1".to_owned()
        )));
        assert!(child_env("STINT_TOKEN", &[]).unwrap().is_empty());
    }

    #[test]
    fn one_postgres_login_per_exec() {
        let failure = child_env(
            "STINT_TOKEN",
            &[login("orders-db", "tc-1"), login("users-db", "tc-2")],
        )
        .unwrap_err();
        assert_eq!(failure.code, 2);
        assert!(failure.message.contains("orders-db"), "{}", failure.message);
        assert!(failure.message.contains("users-db"), "{}", failure.message);
        assert!(
            !failure.message.contains("pw-s3cret"),
            "{}",
            failure.message
        );
        // Another kind beside it is fine.
        let env = child_env(
            "STINT_TOKEN",
            &[login("orders-db", "tc-1"), other("repo", "tc-2")],
        )
        .unwrap();
        assert_eq!(env.len(), 8);
        assert!(env.contains(&(
            "STINT_TARGET_CREDENTIAL_ID_REPO".to_owned(),
            "tc-2".to_owned()
        )));
    }

    #[test]
    fn the_token_variable_is_not_one_a_credential_sets() {
        for token_var in ["PGPASSWORD", "STINT_TARGET_CREDENTIAL_ID_ORDERS_DB"] {
            let failure = child_env(token_var, &[login("orders-db", "tc-1")]).unwrap_err();
            assert_eq!(failure.code, 2, "{token_var}");
        }
    }

    #[test]
    fn credential_id_variables_are_named_after_the_target() {
        assert_eq!(
            credential_id_var("orders-db-2"),
            "STINT_TARGET_CREDENTIAL_ID_ORDERS_DB_2"
        );
    }

    #[test]
    fn a_target_given_twice_is_a_usage_error() {
        let targets = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        assert_eq!(check_targets(&targets(&[]), None).unwrap(), None);
        assert_eq!(
            check_targets(&targets(&[]), Some("api"))
                .unwrap()
                .as_deref(),
            Some("api")
        );
        let failure = check_targets(&targets(&["a", "b", "a"]), None).unwrap_err();
        assert_eq!(failure.code, 2);
    }

    #[test]
    fn the_token_of_an_exec_with_a_target_is_for_that_target() {
        let targets = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            check_targets(&targets(&["db"]), None).unwrap().as_deref(),
            Some("db")
        );
        assert_eq!(
            check_targets(&targets(&["db"]), Some("db"))
                .unwrap()
                .as_deref(),
            Some("db")
        );
        assert_eq!(
            check_targets(&targets(&["db"]), Some("api"))
                .unwrap_err()
                .code,
            2
        );
        assert_eq!(
            check_targets(&targets(&["db", "repo"]), None)
                .unwrap_err()
                .code,
            2
        );
    }
}
