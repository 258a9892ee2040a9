//! Facts about the machine that are cheap to get and that matter when
//! reading the figures. Each is best effort: `None` when unknown.

use std::path::Path;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
