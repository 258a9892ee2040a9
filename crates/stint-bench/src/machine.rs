//! Facts about the machine that are cheap to get and that matter when
//! reading the figures. Each is best effort: `None` when unknown.

use std::path::Path;
use std::time::Duration;

/// The kernel's unit for process CPU times in `/proc` (`USER_HZ`), which
/// Linux fixes at 100 on every architecture it reports to user space.
const TICKS_PER_SECOND: f64 = 100.0;

/// The CPUs this process may use.
pub(crate) fn cpu_count() -> Option<usize> {
    std::thread::available_parallelism().ok().map(usize::from)
}

/// The CPU model, from `/proc/cpuinfo` (Linux).
pub(crate) fn cpu_model() -> Option<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_owned())
    })
}

/// The type of the file system holding `path` (e.g. `ext4`, `tmpfs`), from
/// the mount table (Linux): the type of the longest mount point that is an
/// ancestor of `path`.
pub(crate) fn filesystem_type(path: &Path) -> Option<String> {
    let path = path.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mount_containing(&mounts, &path).map(str::to_owned)
}

/// In mount-table text, the file system type of the deepest mount point
/// containing `path`; later lines win ties (they are mounted on top).
fn mount_containing<'m>(mounts: &'m str, path: &Path) -> Option<&'m str> {
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _device = fields.next()?;
            let mount_point = Path::new(fields.next()?);
            let kind = fields.next()?;
            path.starts_with(mount_point)
                .then(|| (mount_point.components().count(), kind))
        })
        .max_by_key(|(depth, _)| *depth)
        .map(|(_, kind)| kind)
}

/// Whether fsync on this file system reaches a disk.
pub(crate) fn fsync_is_real(kind: &str) -> bool {
    !matches!(kind, "tmpfs" | "ramfs")
}

/// CPU counters at one instant, in ticks: this process's CPU time, and
/// the whole machine's busy time (every process, and time stolen by the
/// hypervisor).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct CpuSample {
    process_ticks: u64,
    machine_busy_ticks: u64,
}

/// How the CPUs were used between two samples, in CPU seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct CpuUse {
    /// This process: the servers and the load generator.
    pub(crate) process_seconds: f64,
    /// Everything else on the machine, which makes the figures noisy.
    pub(crate) others_seconds: f64,
}

impl CpuSample {
    /// Read `/proc/self/stat` and `/proc/stat` (Linux).
    pub(crate) fn now() -> Option<Self> {
        let process = std::fs::read_to_string("/proc/self/stat").ok()?;
        let machine = std::fs::read_to_string("/proc/stat").ok()?;
        Some(Self {
            process_ticks: process_ticks(&process)?,
            machine_busy_ticks: machine_busy_ticks(&machine)?,
        })
    }

    /// The use of the CPUs since `earlier`.
    pub(crate) fn since(self, earlier: Self) -> CpuUse {
        let process = self.process_ticks.saturating_sub(earlier.process_ticks);
        let busy = self
            .machine_busy_ticks
            .saturating_sub(earlier.machine_busy_ticks);
        CpuUse {
            process_seconds: process as f64 / TICKS_PER_SECOND,
            others_seconds: busy.saturating_sub(process) as f64 / TICKS_PER_SECOND,
        }
    }
}

/// The average number of CPUs that `cpu_seconds` kept busy over `window`.
pub(crate) fn average_cpus(cpu_seconds: f64, window: Duration) -> f64 {
    let seconds = window.as_secs_f64();
    if seconds > 0.0 {
        cpu_seconds / seconds
    } else {
        0.0
    }
}

/// User plus system time from `/proc/self/stat` text: fields 14 and 15,
/// counted after the parenthesized command name (which may hold spaces).
fn process_ticks(stat: &str) -> Option<u64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

/// Busy ticks from the `cpu` line of `/proc/stat` text: user, nice,
/// system, irq, softirq and steal, not idle or iowait (guest time is
/// already inside user time).
fn machine_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let counters: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let total: u64 = counters.iter().sum();
    let idle = counters.get(3)? + counters.get(4)?;
    total.checked_sub(idle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn others_are_the_machine_busy_time_not_spent_by_this_process() {
        let before = CpuSample {
            process_ticks: 1000,
            machine_busy_ticks: 5000,
        };
        let after = CpuSample {
            process_ticks: 1150,
            machine_busy_ticks: 5200,
        };
        let used = after.since(before);
        assert!((used.process_seconds - 1.5).abs() < 1e-9);
        assert!((used.others_seconds - 0.5).abs() < 1e-9);
        assert!((average_cpus(used.process_seconds, Duration::from_secs(3)) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn the_deepest_mount_point_wins() {
        let mounts = "/dev/vda / ext4 rw 0 0\n\
                      tmpfs /tmp tmpfs rw 0 0\n\
                      tmpfs /tmpfoo tmpfs rw 0 0\n";
        assert_eq!(
            mount_containing(mounts, Path::new("/tmp/x/y")),
            Some("tmpfs")
        );
        assert_eq!(
            mount_containing(mounts, Path::new("/work/target")),
            Some("ext4")
        );
        assert_eq!(mount_containing(mounts, Path::new("/tmpx")), Some("ext4"));
    }

    #[test]
    fn process_ticks_are_user_plus_system() {
        let stat = "4242 (stint bench) R 1 2 3 4 5 6 7 8 9 10 150 25 0 0 20 0 3";
        assert_eq!(process_ticks(stat), Some(175));
    }

    #[test]
    fn machine_busy_ticks_leave_out_idle_and_iowait() {
        let stat = "cpu  100 5 20 800 10 1 2 3 0 0\ncpu0 50 2 10 400 5 0 1 1 0 0\n";
        assert_eq!(machine_busy_ticks(stat), Some(131));
    }
}
