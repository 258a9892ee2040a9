//! The least-privilege report on the Policy page: `stint policy review`'s
//! analysis (`stint-evidence`) of this broker's audit log, every file of
//! it kept in the data directory (or its chain in the store), read and
//! verified from its start, at most every [`MAX_AGE`] (a log of a million
//! records takes seconds to read).

use std::io::BufReader;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stint_core::audit::{ChainError, Verifier};
use stint_evidence::{Observations, Report, Settings};
use stint_server::operators::{AuditLocation, OperatorApi};

/// How long a report is shown before it is computed again.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(300);
/// The most store records read for one report.
const MAX_STORE_RECORDS: usize = 5_000_000;

/// A report and what it rests on.
#[derive(Debug)]
pub(crate) struct Computed {
    pub(crate) report: Report,
    /// Records whose chain links were checked.
    pub(crate) verified: u64,
    /// Where they were read from.
    pub(crate) source: String,
    /// Why reading stopped early, if it did (the chain breaks there).
    pub(crate) stopped: Option<String>,
}

/// A report, or why none could be made.
pub(crate) type Made = Arc<Result<Computed, String>>;

/// The last report, and when it was made.
#[derive(Debug, Default)]
pub(crate) struct Reports {
    last: tokio::sync::Mutex<Option<(Instant, Made)>>,
}

impl Reports {
    /// The report, computed again if older than [`MAX_AGE`]. One at a time.
    pub(crate) async fn get(&self, api: &OperatorApi) -> Made {
        let mut last = self.last.lock().await;
        if let Some((at, report)) = last.as_ref()
            && at.elapsed() < MAX_AGE
        {
            return Arc::clone(report);
        }
        let computed = Arc::new(compute(api).await);
        *last = Some((Instant::now(), Arc::clone(&computed)));
        computed
    }
}

async fn compute(api: &OperatorApi) -> Result<Computed, String> {
    let now = api.now();
    let settings = Settings::new(now);
    let policy = api.policy();
    let keys = api.audit_keys();
    let (observations, verified, source, stopped) = match api.audit_location().clone() {
        AuditLocation::File { path, .. } => {
            let window = settings.window_days;
            tokio::task::spawn_blocking(move || {
                // The whole chain: the rotated files beside it, oldest
                // first, then the current one.
                let files = stint_server::audit::chain_files(&path).map_err(|e| {
                    format!("cannot list the audit files beside {}: {e}", path.display())
                })?;
                let source = if files.len() > 1 {
                    format!(
                        "{} and the {} rotated files before it",
                        path.display(),
                        files.len() - 1
                    )
                } else {
                    path.display().to_string()
                };
                let mut observations = Observations::new(now, window);
                let mut verifier = Verifier::new(keys);
                let mut stopped = None;
                let last = files.len() - 1;
                for (i, file) in files.iter().enumerate() {
                    let opened = std::fs::File::open(file)
                        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
                    let read =
                        verifier.file_each(BufReader::with_capacity(256 * 1024, opened), |line| {
                            // A verified line is a record; one the analysis
                            // cannot read is skipped (it counts it).
                            let _ = observations.line(line);
                        });
                    match read {
                        Ok(()) => {}
                        // The broker is writing the current file's last
                        // line: the rest is read next time.
                        Err(ChainError::Incomplete { .. }) if i == last => {}
                        Err(error) => {
                            stopped = Some(format!(
                                "{}: the chain does not verify: {error}",
                                file.display()
                            ));
                            break;
                        }
                    }
                }
                Ok::<_, String>((observations, verifier.report().records, source, stopped))
            })
            .await
            .map_err(|_| "the report could not be computed".to_owned())??
        }
        AuditLocation::Store { chain } => {
            let mut observations = Observations::new(now, settings.window_days);
            let mut verifier = Verifier::new(keys);
            verifier.begin_file();
            let mut position = 0u64;
            let mut stopped = None;
            'read: while (position as usize) < MAX_STORE_RECORDS {
                let lines = api
                    .audit_records(position, 1000)
                    .await
                    .map_err(|refused| refused.description)?;
                if lines.is_empty() {
                    break;
                }
                for line in &lines {
                    position += 1;
                    if let Err(error) = verifier.line(line.as_bytes(), position) {
                        stopped = Some(format!("the chain does not verify: {error}"));
                        break 'read;
                    }
                    let _ = observations.line(line.as_bytes());
                }
            }
            let records = verifier.report().records;
            (
                observations,
                records,
                format!("chain {chain} in the store"),
                stopped,
            )
        }
    };
    let report = stint_evidence::analyse(&policy, &observations, &settings);
    Ok(Computed {
        report,
        verified,
        source,
        stopped,
    })
}
