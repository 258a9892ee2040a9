//! Standard output and standard error, written as a Unix tool writes them.
//!
//! Rust ignores `SIGPIPE`, so a write to a pipe whose reader has gone
//! (`stint verify "$T" | true`, `... | head -n 1`) fails with `EPIPE`
//! instead of ending the process, and `println!` panics on that error. So
//! nothing in `stint` prints with `println!` or `eprintln!`:
//!
//! - A command's standard output is collected in a [`Stdout`] and written
//!   in one piece when the command is done (`stint token` writes it before
//!   giving the token up). A reader that takes only the first lines of a
//!   short answer (`| head -n 3`) then gets it as it would from `cat` of a
//!   short file.
//! - If the reader has gone, `stint` says nothing and exits with 141, the
//!   status a shell reports for a tool that `SIGPIPE` ended (128 + 13), so
//!   `set -o pipefail` scripts see what they see with `cat` or `grep`. What
//!   the command did stays done, except `stint token`'s token, which no one
//!   received: it is revoked. Any other write error (`> /dev/full`) is a
//!   failure (exit 1) with its reason on standard error.
//! - Standard error is written line by line, best effort: a message that
//!   cannot be written is dropped, as there is nowhere else to say it.

use crate::{EXIT_FAILURE, Failure};
use serde::Serialize;
use std::fmt::{self, Write as _};
use std::io::Write as _;

/// The exit status of a `stint` whose standard output was closed early:
/// what a shell reports for a process that `SIGPIPE` ended.
pub(crate) const EXIT_CLOSED_PIPE: u8 = 128 + 13;

/// A command's standard output, written in one piece by [`Stdout::flush`].
#[derive(Debug, Default)]
pub(crate) struct Stdout {
    text: String,
}

impl Stdout {
    /// One line of output.
    pub(crate) fn line(&mut self, line: impl fmt::Display) {
        // Writing to a String cannot fail; a Display impl that fails would
        // panic in `format!` too.
        let _ = writeln!(self.text, "{line}");
    }

    /// `value` as pretty JSON, and a newline.
    pub(crate) fn json(&mut self, value: &impl Serialize) -> Result<(), Failure> {
        let text = serde_json::to_string_pretty(value)
            .map_err(|e| Failure::new(EXIT_FAILURE, format!("cannot print JSON: {e}")))?;
        self.line(text);
        Ok(())
    }

    /// Write what was collected to standard output, and flush it.
    pub(crate) fn flush(&mut self) -> Result<(), Failure> {
        let text = std::mem::take(&mut self.text);
        if text.is_empty() {
            return Ok(());
        }
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
            .map_err(|error| {
                if error.kind() == std::io::ErrorKind::BrokenPipe {
                    Failure::closed_pipe()
                } else {
                    Failure::new(
                        EXIT_FAILURE,
                        format!("cannot write to standard output: {error}"),
                    )
                }
            })
    }
}

/// Write one line to standard error, if it can be written.
pub(crate) fn stderr_line(line: impl fmt::Display) {
    let mut stderr = std::io::stderr().lock();
    // Nowhere else to report that standard error is gone.
    let _ = writeln!(stderr, "{line}");
}
