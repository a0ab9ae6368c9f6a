//! Turning a [`SandboxSpec`] into a [`JailPlan`]: which host paths appear where, with which
//! flags, and which limits apply. Runs in the parent, where allocation and errors are fine.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use agentkernel_core::{Error, Result, SandboxSpec};

use crate::jail::{
    MOUNT_ATTR_NODEV, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY, RootOp, SANDBOX_ID, SOURCE_FD_BASE,
    locked_flags, open_no_symlinks, under_root,
};
use crate::python::{GuestAgent, HostPython, NativeAgent};

/// `/etc` entries copied (bind-mounted read-only) from the host when present: none holds a
/// secret, and the dynamic loader, `alternatives` symlinks and TLS roots need them.
const ETC_BINDS: &[&str] = &[
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "alternatives",
    "ssl/certs",
    "ssl/openssl.cnf",
    "ca-certificates",
    "mime.types",
    "os-release",
    "debian_version",
    "protocols",
    "services",
    // Debian's matplotlib reads its defaults here (the mpl-data copy links to it), and
    // fontconfig its configuration.
    "matplotlibrc",
    "fonts",
];

/// Top-level system paths: bound read-only when directories, recreated when symlinks
/// (merged-/usr distributions link `/bin` → `usr/bin`).
const SYSTEM_TOP: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom"];

fn cstr(s: impl AsRef<[u8]>) -> Result<CString> {
    CString::new(s.as_ref())
        .map_err(|_| Error::invalid("a path contains a NUL byte", "remove NUL bytes from paths"))
}

fn path_str(p: &Path) -> Result<String> {
    p.to_str().map(str::to_owned).ok_or_else(|| {
        Error::invalid(
            format!("path {} is not UTF-8", p.display()),
            "use UTF-8 paths",
        )
    })
}

/// Builder of the root-building steps, keeping the bind sources open.
#[derive(Default)]
pub(crate) struct RootPlan {
    pub ops: Vec<RootOp>,
    pub sources: Vec<(CString, bool)>,
    made: BTreeSet<String>,
}

impl RootPlan {
    /// Creates `guest` and its ancestors (as plain directories of the new root).
    fn mkdirs(&mut self, guest: &str) -> Result<()> {
        let mut cur = String::new();
        for part in guest.split('/').filter(|p| !p.is_empty()) {
            cur.push('/');
            cur.push_str(part);
            if self.made.insert(cur.clone()) {
                self.ops.push(RootOp::Mkdir(cstr(under_root(&cur))?));
            }
        }
        Ok(())
    }

    fn parent_of(&mut self, guest: &str) -> Result<()> {
        if let Some(parent) = Path::new(guest).parent() {
            self.mkdirs(&path_str(parent)?)?;
        }
        Ok(())
    }

    /// Bind-mounts host `host` at `guest`, read-only unless `writable`. The host path is
    /// opened now; the child binds through `/proc/self/fd/N`.
    pub fn bind(&mut self, host: &Path, guest: &str, writable: bool) -> Result<()> {
        self.bind_source(host, guest, writable, false)
    }

    /// Like [`RootPlan::bind`] for a path the caller chose (workspace, extra mounts): it
    /// must be canonical, and the child refuses any symlink along it when opening it, so a
    /// symlink planted by a sandbox cannot redirect the mount.
    pub fn bind_user(&mut self, host: &Path, guest: &str, writable: bool) -> Result<()> {
        require_no_symlinks(host)?;
        self.bind_source(host, guest, writable, true)
    }

    /// [`RootPlan::bind_user`], or the attach of `host`'s tree when `trees` has one.
    fn bind_user_or_tree(
        &mut self,
        host: &Path,
        guest: &str,
        writable: bool,
        trees: &[(PathBuf, std::os::fd::RawFd)],
    ) -> Result<()> {
        match trees.iter().find(|(p, _)| p == host) {
            Some((_, fd)) if writable => {
                require_no_symlinks(host)?;
                self.parent_of(guest)?;
                self.made.insert(guest.to_owned());
                self.ops.push(RootOp::MoveTree {
                    fd: *fd,
                    dst: cstr(under_root(guest))?,
                });
                Ok(())
            }
            _ => self.bind_user(host, guest, writable),
        }
    }

    fn bind_source(
        &mut self,
        host: &Path,
        guest: &str,
        writable: bool,
        strict: bool,
    ) -> Result<()> {
        let meta = std::fs::metadata(host)
            .map_err(|e| Error::io(format!("inspecting {} for the sandbox", host.display()), e))?;
        let dir = meta.is_dir();
        let is_device = !dir && host.starts_with("/dev");
        let mut remount = locked_flags(host) | libc::MS_NOSUID;
        if !is_device {
            remount |= libc::MS_NODEV;
        }
        if !writable {
            remount |= libc::MS_RDONLY;
        }
        self.parent_of(guest)?;
        self.made.insert(guest.to_owned());
        let fd = SOURCE_FD_BASE + self.sources.len() as i32;
        self.ops.push(RootOp::Bind {
            src: cstr(format!("/proc/self/fd/{fd}"))?,
            dst: cstr(under_root(guest))?,
            dir,
            remount,
            recursive_attrs: match (is_device, writable) {
                (true, _) => 0,
                (false, true) => MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
                (false, false) => MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
            },
        });
        self.sources
            .push((cstr(host.as_os_str().as_bytes())?, strict));
        Ok(())
    }

    fn symlink(&mut self, target: &Path, guest: &str) -> Result<()> {
        self.parent_of(guest)?;
        self.ops.push(RootOp::Symlink {
            target: cstr(target.as_os_str().as_bytes())?,
            link: cstr(under_root(guest))?,
        });
        Ok(())
    }

    fn file(&mut self, guest: &str, data: impl Into<Vec<u8>>) -> Result<()> {
        self.parent_of(guest)?;
        self.ops.push(RootOp::WriteFile {
            path: cstr(under_root(guest))?,
            data: data.into(),
        });
        Ok(())
    }

    fn mqueue(&mut self, guest: &str) -> Result<()> {
        self.parent_of(guest)?;
        self.made.insert(guest.to_owned());
        self.ops.push(RootOp::Mqueue {
            dst: cstr(under_root(guest))?,
        });
        Ok(())
    }

    fn tmpfs(&mut self, guest: &str, data: String) -> Result<()> {
        self.parent_of(guest)?;
        self.made.insert(guest.to_owned());
        self.ops.push(RootOp::Tmpfs {
            dst: cstr(under_root(guest))?,
            data: cstr(data)?,
        });
        Ok(())
    }
}

/// Binds the interpreter's directories outside `/usr` at their own paths.
fn bind_python(p: &mut RootPlan, python: &HostPython) -> Result<()> {
    for dir in &python.extra_dirs {
        // These become the sandbox's own (empty) file systems: an interpreter there would
        // vanish from under itself, and the sandbox would die before it said hello.
        if let Some(hidden) = ["/tmp", "/dev", "/proc", "/workspace"]
            .into_iter()
            .find(|top| dir.starts_with(top))
        {
            return Err(Error::invalid(
                format!(
                    "the interpreter's directory {} is under {hidden}, which every sandbox replaces with its own",
                    dir.display()
                ),
                "install or create the interpreter (or its venv) elsewhere, e.g. under your home directory, and point AGENTKERNEL_PYTHON at it",
            ));
        }
        p.bind(dir, &path_str(dir)?, false)?;
    }
    Ok(())
}

/// The file-system layout of a sandbox for `spec` running `agent`. A writable host
/// directory listed in `trees` (with a detached, idmapped copy of its mount: see
/// `hostids`) is attached from that tree instead of bound.
pub(crate) fn root_plan(
    spec: &SandboxSpec,
    agent: &GuestAgent,
    trees: &[(PathBuf, std::os::fd::RawFd)],
    layered: bool,
) -> Result<RootPlan> {
    let mut p = RootPlan::default();
    p.bind(Path::new("/usr"), "/usr", false)?;
    for name in SYSTEM_TOP {
        let host = Path::new("/").join(name);
        let Ok(meta) = std::fs::symlink_metadata(&host) else {
            continue;
        };
        let guest = format!("/{name}");
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&host)
                .map_err(|e| Error::io(format!("reading link {}", host.display()), e))?;
            p.symlink(&target, &guest)?;
        } else if meta.is_dir() {
            p.bind(&host, &guest, false)?;
        }
    }
    match agent {
        GuestAgent::Python(python) => bind_python(&mut p, python)?,
        GuestAgent::Native(native) => {
            p.bind(&native.executable, NativeAgent::GUEST_PATH, false)?;
        }
    }

    p.mkdirs("/etc")?;
    for name in ETC_BINDS {
        let host = Path::new("/etc").join(name);
        if host.exists() {
            p.bind(&host, &format!("/etc/{name}"), false)?;
        }
    }
    p.file(
        "/etc/passwd",
        format!("root:x:0:0:root:/root:/bin/sh\nsandbox:x:{SANDBOX_ID}:{SANDBOX_ID}:sandbox:/tmp:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"),
    )?;
    p.file(
        "/etc/group",
        format!("root:x:0:\nsandbox:x:{SANDBOX_ID}:\nnogroup:x:65534:\n"),
    )?;
    p.file("/etc/hostname", "sandbox\n")?;
    p.file("/etc/hosts", "127.0.0.1 localhost sandbox\n::1 localhost\n")?;
    p.file("/etc/resolv.conf", "")?;

    p.tmpfs("/dev", "mode=0755,size=64k".into())?;
    for dev in DEVICES {
        p.bind(&Path::new("/dev").join(dev), &format!("/dev/{dev}"), true)?;
    }
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        p.symlink(Path::new(target), link)?;
    }
    // The ipc namespace's POSIX message queues, listed by the guest's init at each reset
    // (read-only: programs make queues with `mq_open`, not through this directory).
    p.mqueue("/dev/mqueue")?;
    let tmp_opts = |size: u64| {
        format!(
            "mode=1777,size={size},nr_inodes={},uid={SANDBOX_ID},gid={SANDBOX_ID}",
            tmpfs_inodes(size)
        )
    };
    p.tmpfs("/dev/shm", tmp_opts(spec.limits.tmp_bytes))?;
    p.ops.push(RootOp::Proc {
        dst: cstr(under_root("/proc"))?,
    });
    p.tmpfs("/tmp", tmp_opts(spec.limits.tmp_bytes))?;
    match &spec.workspace {
        Some(ws) if !layered => p.bind_user_or_tree(ws, "/workspace", true, trees)?,
        Some(ws) => {
            // The host directory is the lower layer of an overlay whose upper is the capped
            // write layer (see `layer.rs`); staged at WORKSPACE_LOWER, detached once the
            // overlay holds it.
            p.bind_user_or_tree(ws, WORKSPACE_LOWER, true, trees)?;
            p.made.insert("/workspace".to_owned());
            let layer = format!("/proc/self/fd/{}", crate::jail::LAYER_FD);
            p.ops.push(RootOp::Overlay {
                lower: cstr(under_root(WORKSPACE_LOWER))?,
                dst: cstr(under_root("/workspace"))?,
                data: cstr(format!(
                    "lowerdir={},upperdir={layer}/upper,workdir={layer}/work,userxattr",
                    under_root(WORKSPACE_LOWER)
                ))?,
            });
        }
        None => p.tmpfs(
            "/workspace",
            format!(
                "mode=0755,size={},nr_inodes={},uid={SANDBOX_ID},gid={SANDBOX_ID}",
                spec.limits.tmp_bytes,
                tmpfs_inodes(spec.limits.tmp_bytes)
            ),
        )?,
    }
    for m in &spec.mounts {
        p.bind_user_or_tree(&m.host, &path_str(&m.guest)?, m.writable, trees)?;
    }
    Ok(p)
}

/// Where the host workspace is bound in the new root until the overlay at `/workspace`
/// holds it (then it is detached and removed).
const WORKSPACE_LOWER: &str = "/.workspace-lower";

/// `size=` and `nr_inodes=` of the workspace's write layer (see `layer.rs`) for `spec`:
/// what one run may add to a host workspace on every backend
/// ([`Limits::workspace_growth_bytes`](agentkernel_core::Limits::workspace_growth_bytes),
/// [`WORKSPACE_ENTRIES_PER_RUN`](agentkernel_core::WORKSPACE_ENTRIES_PER_RUN)), no more
/// than the memory limit (the layer is memory), plus the layer's own three directories.
pub(crate) fn layer_caps(spec: &SandboxSpec) -> (u64, u64) {
    let l = &spec.limits;
    let bytes = l
        .workspace_growth_bytes()
        .min(l.memory_bytes.unwrap_or(u64::MAX));
    (bytes, agentkernel_core::WORKSPACE_ENTRIES_PER_RUN + 3)
}

/// The write layer's `size=` and `nr_inodes=` values for the jail (`None`: no host
/// workspace, so no layer).
pub(crate) fn layer_options(spec: &SandboxSpec) -> Result<Option<(CString, CString)>> {
    if spec.workspace.is_none() {
        return Ok(None);
    }
    let (bytes, inodes) = layer_caps(spec);
    Ok(Some((cstr(bytes.to_string())?, cstr(inodes.to_string())?)))
}

/// Bytes of a tmpfs's size cap per inode it may hold: a tmpfs of `size` bytes holds at most
/// `size / TMPFS_BYTES_PER_INODE` files, directories and symlinks (at least
/// [`TMPFS_MIN_INODES`]). Without a cap a tmpfs allows millions of (empty) files whatever
/// its size, each costing kernel memory that the size cap does not count.
pub(crate) const TMPFS_BYTES_PER_INODE: u64 = 8 << 10;

/// The fewest inodes a sandbox tmpfs gets, however small its size cap.
pub(crate) const TMPFS_MIN_INODES: u64 = 256;

/// The `nr_inodes=` of a sandbox tmpfs of `size` bytes.
pub(crate) fn tmpfs_inodes(size: u64) -> u64 {
    (size / TMPFS_BYTES_PER_INODE).max(TMPFS_MIN_INODES)
}

/// Guest directories the sandbox may write (for landlock).
pub(crate) fn writable_dirs(spec: &SandboxSpec) -> Vec<String> {
    let mut dirs = vec![
        "/workspace".to_owned(),
        "/tmp".to_owned(),
        "/dev/shm".to_owned(),
    ];
    dirs.extend(
        spec.mounts
            .iter()
            .filter(|m| m.writable)
            .filter_map(|m| m.guest.to_str().map(str::to_owned)),
    );
    dirs
}

/// `(resource, soft, hard)` rlimits for `spec`.
pub(crate) fn rlimits(spec: &SandboxSpec) -> Vec<(libc::__rlimit_resource_t, u64, u64)> {
    let l = &spec.limits;
    let mut out = vec![(libc::RLIMIT_CORE, 0, 0), (libc::RLIMIT_NOFILE, 4096, 4096)];
    if let Some(m) = l.memory_bytes {
        out.push((libc::RLIMIT_AS, m, m));
    }
    if let Some(n) = l.processes {
        out.push((libc::RLIMIT_NPROC, u64::from(n), u64::from(n)));
    }
    if let Some(f) = l.file_size_bytes {
        out.push((libc::RLIMIT_FSIZE, f, f));
    }
    if let Some(c) = l.cpu_time {
        let secs = c.as_secs().max(1);
        // SIGXCPU at the soft limit (Python dies of it); SIGKILL a second later regardless.
        out.push((libc::RLIMIT_CPU, secs, secs + 1));
    }
    out
}

/// Refuses a host path that is relative or goes through a symlink: mounts and ownership
/// changes must not be redirectable by whoever can write a directory along the path.
pub(crate) fn require_no_symlinks(path: &Path) -> Result<()> {
    let canonical = std::fs::canonicalize(path)
        .map_err(|e| Error::io(format!("resolving {}", path.display()), e))?;
    if canonical != path {
        return Err(Error::invalid(
            format!(
                "{} is not a canonical path (it is {})",
                path.display(),
                canonical.display()
            ),
            "pass the real, absolute path without symlinks",
        ));
    }
    Ok(())
}

/// The fallback where a writable directory cannot be idmapped (see `hostids`): hand the
/// directory itself (not its contents) to the sandbox's host uid so it can write there.
/// Returns the owner and group it had, to give everything back when the sandbox ends, or
/// `None` when nothing changed. `ws` must already have passed [`require_no_symlinks`]; it
/// is opened without following symlinks and changed through that fd.
pub(crate) fn hand_over(ws: &Path, uid: u32, gid: u32) -> Result<Option<(u32, u32)>> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let fd = open_no_symlinks(&cstr(ws.as_os_str().as_bytes())?);
    if fd < 0 {
        return Err(Error::io(
            format!("opening workspace {}", ws.display()),
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: a fresh fd from openat2, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let st = nix::sys::stat::fstat(&fd)
        .map_err(|e| Error::io(format!("inspecting workspace {}", ws.display()), e.into()))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return Err(Error::invalid(
            format!("workspace {} is not a directory", ws.display()),
            "pass a directory",
        ));
    }
    if st.st_uid == uid {
        return Ok(None);
    }
    // SAFETY: fchownat on an O_PATH fd we own, with an empty path and AT_EMPTY_PATH.
    let rc = unsafe { libc::fchownat(fd.as_raw_fd(), c"".as_ptr(), uid, gid, libc::AT_EMPTY_PATH) };
    if rc < 0 {
        return Err(Error::io(
            format!("handing workspace {} to the sandbox user", ws.display()),
            std::io::Error::last_os_error(),
        ));
    }
    tracing::info!(workspace = %ws.display(), uid, "workspace directory handed to the sandbox user until it ends");
    Ok(Some((st.st_uid, st.st_gid)))
}

/// Guest-side mount targets of a plan (for tests).
#[cfg(test)]
pub(crate) fn guest_paths(plan: &RootPlan) -> Vec<PathBuf> {
    plan.ops
        .iter()
        .filter_map(|op| match op {
            RootOp::Bind { dst, .. } | RootOp::Tmpfs { dst, .. } => {
                Some(PathBuf::from(dst.to_str().ok()?))
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interpreter_under_tmp_is_refused_with_a_hint() {
        let mut py = crate::python::discover(None).unwrap();
        py.extra_dirs.push(PathBuf::from("/tmp/somewhere/venv"));
        let Err(err) = root_plan(&SandboxSpec::default(), &GuestAgent::Python(py), &[], true)
        else {
            panic!("an interpreter under /tmp was accepted");
        };
        assert!(err.to_string().contains("under /tmp"), "{err}");
        assert!(
            err.hint().is_some_and(|h| h.contains("AGENTKERNEL_PYTHON")),
            "{err}"
        );
    }

    #[test]
    fn plan_binds_usr_read_only_and_workspace_writable() {
        let ws = tempfile::tempdir().unwrap();
        let spec = SandboxSpec {
            workspace: Some(ws.path().to_path_buf()),
            ..SandboxSpec::default()
        };
        let py = crate::python::discover(None).unwrap();
        let plan = root_plan(&spec, &GuestAgent::Python(py), &[], true).unwrap();
        let usr = plan
            .ops
            .iter()
            .find_map(|op| match op {
                RootOp::Bind { dst, remount, .. } if dst.as_bytes() == b"/tmp/usr" => {
                    Some(*remount)
                }
                _ => None,
            })
            .expect("/usr is bound");
        assert_ne!(usr & libc::MS_RDONLY, 0);
        let wsf = plan
            .ops
            .iter()
            .find_map(|op| match op {
                RootOp::Bind { dst, remount, .. } if dst.as_bytes() == b"/tmp/.workspace-lower" => {
                    Some(*remount)
                }
                _ => None,
            })
            .expect("workspace is bound");
        assert_eq!(wsf & libc::MS_RDONLY, 0);
        assert!(
            plan.ops.iter().any(|op| matches!(op, RootOp::Overlay { dst, .. } if dst.as_bytes() == b"/tmp/workspace")),
            "the workspace is an overlay"
        );
        assert!(guest_paths(&plan).iter().all(|p| !p.ends_with("shadow")));
    }
}
