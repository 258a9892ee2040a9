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

use crate::{EXIT_FAILURE, EXIT_UNAVAILABLE, Failure, output};
use rustix::process::{Pid, Signal, kill_process};
use std::os::unix::process::ExitStatusExt as _;
use stint_client::StepToken;
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

/// Run `command` with the token in `env_var`; revoke; return the exit code.
pub(crate) async fn run(
    step: StepToken,
    mut signals: Signals,
    env_var: &str,
    command: &[String],
) -> Result<u8, Failure> {
    let Some((program, args)) = command.split_first() else {
        return Err(revoke_then_fail(step, Failure::new(2, "no command given")).await);
    };
    // A signal that came while the token was being minted: do not start.
    tokio::select! {
        biased;
        _ = signals.interrupt.recv() => return stop_before_start(step, 2).await,
        _ = signals.terminate.recv() => return stop_before_start(step, 15).await,
        _ = signals.hangup.recv() => return stop_before_start(step, 1).await,
        _ = signals.quit.recv() => return stop_before_start(step, 3).await,
        () = std::future::ready(()) => {}
    }
    let spawned = tokio::process::Command::new(program)
        .args(args)
        .env_remove("STINT_CLIENT_SECRET")
        .env_remove("STINT_SUBJECT_TOKEN")
        .env_remove("STINT_SUBJECT_TOKEN_FILE")
        .env_remove("STINT_OPERATOR_KEY")
        .env(env_var, step.token())
        .spawn();
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
            return Err(revoke_then_fail(step, failure).await);
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
    match step.finish().await {
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

async fn stop_before_start(step: StepToken, signal: u8) -> Result<u8, Failure> {
    let failure = Failure::new(
        128 + signal,
        "stopped by a signal before the command started",
    );
    Err(revoke_then_fail(step, failure).await)
}

async fn revoke_then_fail(step: StepToken, failure: Failure) -> Failure {
    if let Err(error) = step.finish().await {
        output::stderr_line(format_args!(
            "stint: the token could not be revoked ({error}); it stays valid until it expires"
        ));
    }
    failure
}
