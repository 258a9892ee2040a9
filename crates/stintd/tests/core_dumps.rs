//! The real `stintd` is non-dumpable and may not dump core, seen from
//! outside the process.
//!
//! Linux keeps the dumpable flag to itself (`PR_GET_DUMPABLE` only reads
//! one's own), but proc(5) documents a visible effect: while a process is
//! not dumpable, the files in `/proc/<pid>` (`status`, `environ`, `fd`,
//! ...; not the directory itself) belong to root instead of the process's
//! effective user. That tells only for a process that does
//! not run as root, so when the test runs as root it runs `stintd` as an
//! unprivileged user (65532, the container image's). A control process
//! that does not make itself non-dumpable, run the same way, shows the
//! difference is real. The core limit is in `/proc/<pid>/limits`.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use stint_tests::Daemon;

const STINTD: &str = env!("CARGO_BIN_EXE_stintd");

/// The unprivileged user a root test runs the processes as.
const UNPRIVILEGED: u32 = 65532;

/// The effective uid in `/proc/<pid>/status` (`Uid: real effective saved fs`).
fn effective_uid(pid: &str) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// The owner of `/proc/<pid>/status`, which the kernel resets to root while
/// the process is not dumpable (proc(5), "/proc/pid").
fn proc_owner(pid: u32) -> u32 {
    std::fs::metadata(format!("/proc/{pid}/status"))
        .unwrap()
        .uid()
}

/// Who the processes under test run as, and a directory they own holding
/// copies of `binaries` (mode 0755) that they can run: a checkout under a
/// root-only home would not be reachable by 65532, and a binary its user
/// cannot read would be made non-dumpable by the kernel at exec, which
/// would prove nothing.
struct Sandbox {
    uid: u32,
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new(binaries: &[&Path]) -> Self {
        let me = effective_uid("self");
        let uid = if me == 0 { UNPRIVILEGED } else { me };
        let dir = tempfile::tempdir().unwrap();
        for binary in binaries {
            let copy = dir.path().join(binary.file_name().unwrap());
            std::fs::copy(binary, &copy).unwrap();
            std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        if me == 0 {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(uid)).unwrap();
        }
        Self { uid, dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self, name: &str) -> Command {
        let mut command = Command::new(self.path(name));
        if effective_uid("self") == 0 {
            command.uid(self.uid).gid(self.uid);
        }
        command
    }
}

fn find_on_path(name: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| panic!("{name} is not on PATH"))
}

#[tokio::test]
async fn stintd_is_not_dumpable_and_has_no_core_limit() {
    let sleep = find_on_path("sleep");
    let sandbox = Sandbox::new(&[Path::new(STINTD), &sleep]);

    // The control: an ordinary process of the same user owns its /proc
    // files, so root-owned ones below mean something.
    let mut control = sandbox
        .command("sleep")
        .arg("60")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let control_pid = control.id();
    assert_eq!(effective_uid(&control_pid.to_string()), sandbox.uid);
    let control_owner = proc_owner(control_pid);
    control.kill().unwrap();
    control.wait().unwrap();
    assert_eq!(
        control_owner, sandbox.uid,
        "a dumpable process of uid {} should own /proc/<pid>/status",
        sandbox.uid
    );

    let data = sandbox.path("data");
    let daemon = Daemon::start_command(sandbox.command("stintd").args([
        "--dev",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]));
    let pid = daemon.pid().unsigned_abs();
    assert_eq!(effective_uid(&pid.to_string()), sandbox.uid);
    assert_eq!(
        proc_owner(pid),
        0,
        "stintd (uid {}) still owns /proc/{pid}/status: it is dumpable",
        sandbox.uid
    );

    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|line| line.starts_with("Max core file size"))
        .unwrap();
    assert_eq!(
        core.split_whitespace().skip(4).take(2).collect::<Vec<_>>(),
        ["0", "0"],
        "soft and hard core limits: {core}"
    );

    // Non-dumpable makes /proc/self/fd root's; the broker still counts its
    // own descriptors for the process metrics (a process may always read
    // its own).
    let metrics = stint_tests::reqwest::get(daemon.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let open_fds = metrics
        .lines()
        .find_map(|line| line.strip_prefix("process_open_fds "))
        .unwrap_or_else(|| panic!("no process_open_fds in /metrics:\n{metrics}"));
    assert!(open_fds.trim().parse::<f64>().unwrap() > 0.0, "{open_fds}");
}
