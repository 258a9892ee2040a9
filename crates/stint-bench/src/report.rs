//! Each run's figures, the medians over runs, and the verdict against the
//! targets (computed here, never written by hand).

use crate::broker::AuditCounters;
use crate::load::LoadReport;
use crate::machine::{CpuUse, average_cpus};
use crate::stats::{Measurement, median, median_duration};
use std::time::Duration;

/// Mint throughput must be at least this fraction of the floor's (the
/// median of the runs' ratios; issue 18).
pub(crate) const TARGET_RATIO: f64 = 0.7;
/// A mint's audit record must take at most this many bytes: half of the
/// 441 the record took before issue 18 (the benchmark's own request).
pub(crate) const TARGET_AUDIT_BYTES: f64 = 220.0;
/// Mint throughput must be at least this many times oidc-provider's, when
/// it is measured (the median of the runs' ratios).
pub(crate) const TARGET_PEER_RATIO: f64 = 10.0;
/// Mint p99 latency must be under this.
pub(crate) const TARGET_P99: Duration = Duration::from_millis(10);
/// Other processes using more CPUs than this during a measurement make
/// its figures noisy enough to say so.
const NOISY_NEIGHBOURS_CPUS: f64 = 0.2;

/// One run: the floor, then mint, under the same load.
#[derive(Debug, Clone)]
pub(crate) struct RunResult {
    pub(crate) floor: LoadReport,
    pub(crate) mint: LoadReport,
    /// oidc-provider, with `--oidc-provider`.
    pub(crate) peer: Option<LoadReport>,
    /// The audit writer's work during the mint load (warm-up included), if
    /// the broker's metrics could be read.
    pub(crate) audit: Option<AuditCounters>,
    /// The measured window's length.
    pub(crate) window: Duration,
}

impl RunResult {
    /// Mint throughput over the floor's.
    pub(crate) fn ratio(&self) -> f64 {
        let floor = self.floor.measurement.per_second;
        if floor > 0.0 {
            self.mint.measurement.per_second / floor
        } else {
            0.0
        }
    }

    /// Mint throughput over the peer's, if it was measured.
    pub(crate) fn peer_ratio(&self) -> Option<f64> {
        let peer = self.peer.as_ref()?.measurement.per_second;
        (peer > 0.0).then(|| self.mint.measurement.per_second / peer)
    }

    pub(crate) fn errors(&self) -> u64 {
        self.floor.measurement.errors
            + self.mint.measurement.errors
            + self.peer.as_ref().map_or(0, |peer| peer.measurement.errors)
    }

    /// The most CPUs other processes used during either measurement.
    fn neighbours_cpus(&self) -> Option<f64> {
        [self.floor.cpu, self.mint.cpu]
            .into_iter()
            .flatten()
            .map(|cpu| average_cpus(cpu.others_seconds, self.window))
            .reduce(f64::max)
    }

    /// The run's lines: one per target, the audit's group commit, the ratio.
    pub(crate) fn lines(&self) -> Vec<String> {
        let mut lines = vec![
            format!("  floor: {}", figures(&self.floor.measurement)),
            format!("  mint:  {}", figures(&self.mint.measurement)),
        ];
        if let Some(peer) = &self.peer {
            lines.push(format!("  oidc-provider: {}", figures(&peer.measurement)));
        }
        for (target, report) in [("floor", &self.floor), ("mint", &self.mint)] {
            if let Some(cpu) = report.cpu {
                lines.push(format!(
                    "  cpu during {target}: {}",
                    describe_cpu(cpu, &report.measurement, self.window)
                ));
            }
        }
        if let Some(audit) = self.audit {
            lines.push(format!("  audit: {}", describe_group_commit(audit)));
        }
        for (target, report) in [("floor", &self.floor), ("mint", &self.mint)] {
            if let Some(error) = &report.first_error {
                lines.push(format!("  first {target} error: {error}"));
            }
        }
        lines.push(format!("  ratio mint/floor: {:.2}", self.ratio()));
        if let Some(ratio) = self.peer_ratio() {
            lines.push(format!("  ratio mint/oidc-provider: {ratio:.1}"));
        }
        lines
    }
}

fn figures(m: &Measurement) -> String {
    format!(
        "{:>6.0} req/s  p50 {}  p99 {}  ({} requests, {} errors)",
        m.per_second,
        millis(m.p50),
        millis(m.p99),
        m.completed,
        m.errors
    )
}

fn describe_cpu(cpu: CpuUse, m: &Measurement, window: Duration) -> String {
    let per_request = if m.completed > 0 {
        cpu.process_seconds * 1e6 / m.completed as f64
    } else {
        0.0
    };
    format!(
        "this process {:.2} CPUs ({per_request:.0} µs per request, load generator included); other processes {:.2} CPUs",
        average_cpus(cpu.process_seconds, window),
        average_cpus(cpu.others_seconds, window),
    )
}

fn describe_group_commit(audit: AuditCounters) -> String {
    let per_fsync = if audit.fsyncs > 0.0 {
        audit.records / audit.fsyncs
    } else {
        0.0
    };
    format!(
        "{:.0} records made durable in {:.0} fsyncs ({per_fsync:.1} records per fsync, warm-up included), {:.0} bytes per record",
        audit.records,
        audit.fsyncs,
        bytes_per_record(audit).unwrap_or(0.0)
    )
}

/// The log's growth over the records written (nearly all mints; the
/// periodic checkpoints are among them).
fn bytes_per_record(audit: AuditCounters) -> Option<f64> {
    (audit.records > 0.0).then(|| audit.bytes / audit.records)
}

/// A latency in milliseconds, two decimals.
fn millis(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1000.0)
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

/// The medians of one target's figures over the runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Medians {
    pub(crate) per_second: f64,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
}

impl Medians {
    fn of(measurements: &[Measurement]) -> Self {
        let per_second: Vec<f64> = measurements.iter().map(|m| m.per_second).collect();
        let p50: Vec<Duration> = measurements.iter().map(|m| m.p50).collect();
        let p99: Vec<Duration> = measurements.iter().map(|m| m.p99).collect();
        Self {
            per_second: median(&per_second).unwrap_or_default(),
            p50: median_duration(&p50).unwrap_or_default(),
            p99: median_duration(&p99).unwrap_or_default(),
        }
    }

    fn figures(&self) -> String {
        format!(
            "{:>6.0} req/s  p50 {}  p99 {}",
            self.per_second,
            millis(self.p50),
            millis(self.p99)
        )
    }
}

/// The medians over all runs, and the verdicts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Summary {
    pub(crate) runs: usize,
    pub(crate) mint: Medians,
    pub(crate) floor: Medians,
    /// The median of the runs' ratios.
    pub(crate) ratio: f64,
    /// Errors over all runs, both targets.
    pub(crate) errors: u64,
    /// The most CPUs other processes used during any measurement.
    pub(crate) neighbours_cpus: Option<f64>,
    /// The median over runs of the audit log's bytes per record, where the
    /// log could be measured.
    pub(crate) audit_bytes: Option<f64>,
    /// oidc-provider's medians and the median of mint/peer, if measured.
    pub(crate) peer: Option<(Medians, f64)>,
}

impl Summary {
    pub(crate) fn of(runs: &[RunResult]) -> Self {
        let mint: Vec<Measurement> = runs.iter().map(|r| r.mint.measurement).collect();
        let floor: Vec<Measurement> = runs.iter().map(|r| r.floor.measurement).collect();
        let ratios: Vec<f64> = runs.iter().map(RunResult::ratio).collect();
        Self {
            runs: runs.len(),
            mint: Medians::of(&mint),
            floor: Medians::of(&floor),
            ratio: median(&ratios).unwrap_or_default(),
            errors: runs.iter().map(RunResult::errors).sum(),
            neighbours_cpus: runs
                .iter()
                .filter_map(RunResult::neighbours_cpus)
                .reduce(f64::max),
            peer: {
                let peer: Vec<Measurement> = runs
                    .iter()
                    .filter_map(|r| r.peer.as_ref().map(|p| p.measurement))
                    .collect();
                let ratios: Vec<f64> = runs.iter().filter_map(RunResult::peer_ratio).collect();
                median(&ratios).map(|ratio| (Medians::of(&peer), ratio))
            },
            audit_bytes: median(
                &runs
                    .iter()
                    .filter_map(|r| r.audit.and_then(bytes_per_record))
                    .collect::<Vec<_>>(),
            ),
        }
    }

    pub(crate) fn p99_met(&self) -> bool {
        self.mint.p99 < TARGET_P99
    }

    pub(crate) fn ratio_met(&self) -> bool {
        self.ratio >= TARGET_RATIO
    }

    /// The audit record's size met (or not measured: no metrics).
    pub(crate) fn audit_bytes_met(&self) -> bool {
        self.audit_bytes
            .is_none_or(|bytes| bytes <= TARGET_AUDIT_BYTES)
    }

    /// Mint at least [`TARGET_PEER_RATIO`] times the peer (or the peer not
    /// measured).
    pub(crate) fn peer_ratio_met(&self) -> bool {
        self.peer
            .is_none_or(|(_, ratio)| ratio >= TARGET_PEER_RATIO)
    }

    /// Every target met, and no request failed.
    pub(crate) fn passes(&self) -> bool {
        self.p99_met()
            && self.ratio_met()
            && self.audit_bytes_met()
            && self.peer_ratio_met()
            && self.errors == 0
    }

    /// The final block.
    pub(crate) fn lines(&self) -> Vec<String> {
        let mut lines = vec![
            format!(
                "median of {} run{}:",
                self.runs,
                if self.runs == 1 { "" } else { "s" }
            ),
            format!(
                "mint  (ES256, durable audit): {}   (target p99 < {} ms: {})",
                self.mint.figures(),
                TARGET_P99.as_millis(),
                verdict(self.p99_met())
            ),
            format!("floor (bare hyper + ES256):   {}", self.floor.figures()),
            format!(
                "ratio mint/floor: {:.2}   (target >= {TARGET_RATIO}: {})",
                self.ratio,
                verdict(self.ratio_met())
            ),
        ];
        if let Some((peer, ratio)) = &self.peer {
            lines.push(format!(
                "oidc-provider (Node.js, in memory): {}",
                peer.figures()
            ));
            lines.push(format!(
                "ratio mint/oidc-provider: {ratio:.1}   (target >= {TARGET_PEER_RATIO:.0}: {})",
                verdict(self.peer_ratio_met())
            ));
        }
        if let Some(bytes) = self.audit_bytes {
            lines.push(format!(
                "audit bytes per record: {bytes:.0}   (target <= {TARGET_AUDIT_BYTES:.0}: {})",
                verdict(self.audit_bytes_met())
            ));
        }
        lines.push(if self.errors == 0 {
            "errors: 0".to_owned()
        } else {
            format!(
                "errors: {} over all runs: these figures are NOT a valid measurement",
                self.errors
            )
        });
        if let Some(cpus) = self.neighbours_cpus {
            let noisy = if cpus > NOISY_NEIGHBOURS_CPUS {
                ": the figures are noisy"
            } else {
                ""
            };
            lines.push(format!(
                "other processes used at most {cpus:.2} CPUs during a measurement{noisy}"
            ));
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(per_second: f64, p99_ms: u64, errors: u64) -> LoadReport {
        LoadReport {
            measurement: Measurement {
                completed: 1,
                errors,
                per_second,
                p50: Duration::from_millis(1),
                p99: Duration::from_millis(p99_ms),
            },
            first_error: None,
            cpu: None,
        }
    }

    fn run(mint: f64, floor: f64, mint_p99_ms: u64) -> RunResult {
        RunResult {
            floor: report(floor, 2, 0),
            mint: report(mint, mint_p99_ms, 0),
            peer: None,
            audit: None,
            window: Duration::from_secs(1),
        }
    }

    #[test]
    fn the_summary_takes_medians_and_computes_verdicts() {
        let runs = [
            run(800.0, 1000.0, 12),
            run(600.0, 1000.0, 8),
            run(750.0, 1000.0, 9),
        ];
        let summary = Summary::of(&runs);
        assert_eq!(summary.mint.per_second, 750.0);
        assert_eq!(summary.mint.p99, Duration::from_millis(9));
        assert!((summary.ratio - 0.75).abs() < 1e-9);
        assert!(summary.p99_met() && summary.ratio_met() && summary.passes());
        assert!(summary.lines().iter().all(|line| !line.contains("NOT")));
    }

    #[test]
    fn busy_neighbours_are_reported_as_noise() {
        let mut busy = run(600.0, 1000.0, 5);
        busy.mint.cpu = Some(CpuUse {
            process_seconds: 1.0,
            others_seconds: 0.5,
        });
        let summary = Summary::of(&[run(600.0, 1000.0, 5), busy]);
        assert_eq!(summary.neighbours_cpus, Some(0.5));
        assert!(summary.lines().iter().any(|line| line.contains("noisy")));
        assert_eq!(Summary::of(&[run(600.0, 1000.0, 5)]).neighbours_cpus, None);
    }

    #[test]
    fn the_audit_record_size_is_the_median_of_the_runs() {
        let with_log = |bytes_per_record: f64| {
            let mut r = run(800.0, 1000.0, 5);
            r.audit = Some(AuditCounters {
                records: 1000.0,
                fsyncs: 100.0,
                bytes: 1000.0 * bytes_per_record,
            });
            r
        };
        let summary = Summary::of(&[with_log(441.0), with_log(200.0), with_log(210.0)]);
        assert_eq!(summary.audit_bytes, Some(210.0));
        assert!(summary.audit_bytes_met() && summary.passes());
        let fat = Summary::of(&[with_log(441.0)]);
        assert!(!fat.audit_bytes_met() && !fat.passes());
        assert!(
            fat.lines()
                .iter()
                .any(|l| l.contains("audit bytes per record: 441"))
        );
    }

    #[test]
    fn the_peer_ratio_is_the_median_of_the_runs() {
        let against = |peer: f64| {
            let mut r = run(800.0, 1000.0, 5);
            r.peer = Some(report(peer, 20, 0));
            r
        };
        let summary = Summary::of(&[against(100.0), against(50.0), against(70.0)]);
        let (medians, ratio) = summary.peer.unwrap();
        assert_eq!(medians.per_second, 70.0);
        assert!((ratio - 800.0 / 70.0).abs() < 1e-9);
        assert!(summary.peer_ratio_met() && summary.passes());
        let close = Summary::of(&[against(100.0)]);
        assert!(!close.peer_ratio_met() && !close.passes());
        assert!(
            close
                .lines()
                .iter()
                .any(|l| l.contains("mint/oidc-provider: 8.0"))
        );
        assert_eq!(Summary::of(&[run(800.0, 1000.0, 5)]).peer, None);
    }

    #[test]
    fn missed_targets_and_errors_fail() {
        let slow = Summary::of(&[run(690.0, 1000.0, 10)]);
        assert!(!slow.p99_met() && !slow.ratio_met() && !slow.passes());
        assert!(slow.lines().iter().any(|line| line.contains("NOT met")));

        let mut broken = run(900.0, 1000.0, 1);
        broken.mint = report(900.0, 1, 3);
        let summary = Summary::of(&[broken]);
        assert!(summary.p99_met() && summary.ratio_met());
        assert_eq!(summary.errors, 3);
        assert!(!summary.passes());
    }
}
