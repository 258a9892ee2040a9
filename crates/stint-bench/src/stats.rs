//! The arithmetic of the report: percentiles of one measurement, medians
//! across runs.

use std::time::Duration;

/// What one target did during one measured window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Measurement {
    /// Successful requests that completed inside the window.
    pub(crate) completed: u64,
    /// Failed requests (non-200, bad body, transport errors, timeouts),
    /// counted over warm-up and window both.
    pub(crate) errors: u64,
    /// Requests per second: `completed` over the window's length.
    pub(crate) per_second: f64,
    /// Median latency.
    pub(crate) p50: Duration,
    /// 99th-percentile latency.
    pub(crate) p99: Duration,
}

impl Measurement {
    /// Summarize the latencies of the requests that completed in a window
    /// of `window` length. `latencies` is sorted in place.
    pub(crate) fn from_latencies(
        latencies: &mut [Duration],
        errors: u64,
        window: Duration,
    ) -> Self {
        latencies.sort_unstable();
        let completed = latencies.len() as u64;
        let seconds = window.as_secs_f64();
        Self {
            completed,
            errors,
            per_second: if seconds > 0.0 {
                completed as f64 / seconds
            } else {
                0.0
            },
            p50: percentile(latencies, 50).unwrap_or_default(),
            p99: percentile(latencies, 99).unwrap_or_default(),
        }
    }
}

/// The nearest-rank percentile of `sorted` (ascending): the smallest sample
/// such that at least `percent`% of the samples are at most it, i.e. the
/// sample of 1-based rank `ceil(percent * n / 100)` (at least 1). So for the
/// samples 1..=100, p50 is 50 and p99 is 99; for 1..=10, p99 is 10. `None`
/// for no samples.
pub(crate) fn percentile<T: Copy>(sorted: &[T], percent: usize) -> Option<T> {
    let rank = (percent.min(100) * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

/// The median of `values`: the middle value of an odd count, the mean of
/// the two middle values of an even count. `None` for no values.
pub(crate) fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted.get(middle).copied()
    } else {
        let low = sorted.get(middle.checked_sub(1)?)?;
        let high = sorted.get(middle)?;
        Some((low + high) / 2.0)
    }
}

/// The median of durations, by way of [`median`] in seconds.
pub(crate) fn median_duration(values: &[Duration]) -> Option<Duration> {
    let seconds: Vec<f64> = values.iter().map(Duration::as_secs_f64).collect();
    median(&seconds).and_then(|s| Duration::try_from_secs_f64(s).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_of_one_to_a_hundred() {
        let samples: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&samples, 50), Some(50));
        assert_eq!(percentile(&samples, 99), Some(99));
        assert_eq!(percentile(&samples, 100), Some(100));
        assert_eq!(percentile(&samples, 0), Some(1));
    }

    #[test]
    fn nearest_rank_rounds_the_rank_up() {
        let samples: Vec<u32> = (1..=10).collect();
        assert_eq!(percentile(&samples, 99), Some(10));
        assert_eq!(percentile(&samples, 50), Some(5));
        let samples: Vec<u32> = (1..=1000).collect();
        assert_eq!(percentile(&samples, 99), Some(990));
        assert_eq!(percentile(&[7u32], 99), Some(7));
        assert_eq!(percentile::<u32>(&[], 50), None);
    }

    #[test]
    fn median_of_three_runs_is_the_middle_one_in_any_order() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[10.0, 30.0, 20.0]), Some(20.0));
        assert_eq!(median(&[5.0]), Some(5.0));
    }

    #[test]
    fn median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn median_duration_works_in_seconds() {
        let runs = [
            Duration::from_millis(3),
            Duration::from_millis(9),
            Duration::from_millis(4),
        ];
        assert_eq!(median_duration(&runs), Some(Duration::from_millis(4)));
    }

    #[test]
    fn a_measurement_counts_requests_over_the_window() {
        let mut latencies: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        let m = Measurement::from_latencies(&mut latencies, 2, Duration::from_secs(2));
        assert_eq!(m.completed, 100);
        assert_eq!(m.errors, 2);
        assert!((m.per_second - 50.0).abs() < 1e-9);
        assert_eq!(m.p50, Duration::from_micros(50));
        assert_eq!(m.p99, Duration::from_micros(99));
    }
}
