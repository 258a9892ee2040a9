//! `guard-at-exit`: what becomes of a step's token when the program ends
//! without finishing the step.
//!
//! It mints a token for one step, prints it, and ends: `main` returns with
//! the `StepToken` guard dropped, with no `finish()` and no
//! `Client::flush()`, the way a program that returns early (or with `?`)
//! does. The token is revoked all the same before the process exits: the
//! end of the Tokio runtime waits for the revocation the drop started (at
//! most `stint_client::EXIT_REVOCATION_TIMEOUT`).
//!
//! ```sh
//! T=$(guard-at-exit --credentials stint-data/dev-client.json)
//! stint introspect "$T"     # inactive, exit 3
//! ```
//!
//! `--current-thread` uses a current-thread runtime instead of the
//! multi-thread one `#[tokio::main]` builds; `--in-task` leaves each guard
//! with a task still running when `main` returns (the runtime drops it as
//! it shuts down); `--fail` returns an error with `?` while the guards are
//! held; `--panic` panics while they are held (the runtime is dropped as
//! the panic unwinds); `--count N` mints N tokens; `--wait` waits for a line on standard
//! input before it ends.

#![allow(clippy::panic)] // --panic shows a panicking step.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use stint_client::Client;

/// Mint a token for one step, print it, and end without finishing the step.
#[derive(Debug, Parser)]
struct Args {
    /// The broker's credentials file (`stintd --dev` writes it).
    #[arg(long, default_value = "stint-data/dev-client.json")]
    credentials: PathBuf,
    /// Run on a current-thread runtime.
    #[arg(long)]
    current_thread: bool,
    /// Hand the guard to a task that is still running when main returns.
    #[arg(long)]
    in_task: bool,
    /// Return an error while the guard is held.
    #[arg(long)]
    fail: bool,
    /// Panic while the guard is held.
    #[arg(long)]
    panic: bool,
    /// How many tokens to mint (one per step guard).
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// Wait for a line on standard input before ending.
    #[arg(long)]
    wait: bool,
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    let args = Args::parse();
    let result = if args.current_thread {
        on_current_thread(args)
    } else {
        on_multi_thread(args)
    };
    // Both runtimes have been dropped here, and the revocation is done.
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("guard-at-exit: {error}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn on_multi_thread(args: Args) -> Result<()> {
    run(args).await
}

#[tokio::main(flavor = "current_thread")]
async fn on_current_thread(args: Args) -> Result<()> {
    run(args).await
}

async fn run(args: Args) -> Result<()> {
    let client = Client::from_dev_client_file(&args.credentials).await?;
    let mut steps = Vec::new();
    for _ in 0..args.count {
        let step = client
            .step("read")
            .scope("read:demo/reports")
            .audience("demo-api")
            .ttl(Duration::from_secs(300))
            .request()
            .await?;
        println!("{}", step.token());
        steps.push(step);
    }
    if args.wait {
        tokio::task::spawn_blocking(|| std::io::stdin().read_line(&mut String::new())).await??;
    }
    if args.in_task {
        for step in steps {
            tokio::spawn(async move {
                let _held = step;
                std::future::pending::<()>().await;
            });
        }
        return Ok(());
    }
    if args.fail {
        let _held = steps;
        return Err("the step's work failed".into());
    }
    if args.panic {
        let _held = steps;
        panic!("the step's work panicked");
    }
    Ok(())
}
