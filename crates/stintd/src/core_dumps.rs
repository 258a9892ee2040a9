//! No core dumps: a crash dump (or a debugger attached by the same user)
//! would hold the signing keys, the TLS key and every secret the broker has
//! read. `main` calls [`forbid`] before anything else, so no secret is in
//! memory yet when it takes effect.

/// Make this process non-dumpable (Linux: `prctl(PR_SET_DUMPABLE, 0)`,
/// which also stops processes of the same user from attaching with ptrace
/// or reading `/proc/<pid>/mem` and `environ`) and set its core-size limit
/// to zero, soft and hard (`RLIMIT_CORE`, belt and braces: it also covers
/// a kernel whose `core_pattern` pipes dumps to a helper, and the
/// non-Linux systems without `PR_SET_DUMPABLE`).
///
/// Both calls only lower what the process may do, so they need no
/// privilege; an error is returned, not ignored, because a broker that
/// cannot promise this should not start.
pub(crate) fn forbid() -> Result<(), String> {
    #[cfg(target_os = "linux")]
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(|e| format!("cannot make the process non-dumpable (PR_SET_DUMPABLE): {e}"))?;
    #[cfg(unix)]
    rustix::process::setrlimit(
        rustix::process::Resource::Core,
        rustix::process::Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )
    .map_err(|e| format!("cannot set the core file size limit to 0 (RLIMIT_CORE): {e}"))?;
    Ok(())
}
