//! The sandbox's workspace as its programs see it, for envd's file operations.
//!
//! Why not the host directory: the `process` backend mounts the workspace through an
//! overlay (the host directory is its lower layer). A name a program looked up and did not
//! find stays "not found" in the overlay's cache, whatever the host adds to the lower layer
//! afterwards, so a file written into the host directory while the program polls for it
//! (E2B's `files.write` from an `on_stdout` callback) would never appear to it. Writes must
//! go through the overlay itself.
//!
//! How: when an E2B sandbox is created (and when its view went stale), a one-line execution
//! creates a marker file with a fresh random name in the sandbox's private `/tmp`; the server then finds a process whose
//! `/proc/PID/root` holds that marker (never the server's own root; none when two roots
//! hold it) and keeps an `O_PATH` descriptor of that root (the
//! sandbox's root directory, with its mounts: `/workspace` is the overlay). File operations
//! open `workspace` beneath it (`O_NOFOLLOW`) and go on with [`Dir`] (`openat2`
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), so nothing the program planted redirects them.
//! The descriptor, not the pid, is what is kept: a pid reused later cannot point it
//! elsewhere. Before each use the marker is looked for again; when the sandbox's
//! interpreter was replaced (a reset after a limit kill or a client going away), the old
//! root has lost its mounts and the marker, and the view is found anew at the next idle
//! moment. Meanwhile, and on backends where no process holds the marker (wasm, monty,
//! microvm), the host directory is used: correct for files the program has not looked for.
//!
//! Credentials: the overlay belongs to the sandbox's user namespace, where only the
//! sandbox's uid is mapped. A server running as root (mapped to no id there) cannot create
//! files in it (`EOVERFLOW`), so operations run on a thread of their own with its
//! filesystem uid and gid set to the host ids the sandbox's uid 1000 maps to
//! (`setfsuid`/`setfsgid` act on the calling thread only).

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use agentkernel_core::fsat::Dir;

/// A handle on one sandbox's root directory.
#[derive(Debug)]
pub struct RootView {
    root: OwnedFd,
    marker: CString,
    /// The host uid and gid of the sandbox's user, when they are not this process's.
    pub fsids: Option<(u32, u32)>,
}

/// The marker's path in the sandbox for `token` (random, per sandbox).
pub fn marker_path(token: &str) -> String {
    format!("/tmp/.agentkernel-e2b-{}", &token[..token.len().min(32)])
}

/// The execution that leaves the marker (a single expression: the program's globals are
/// untouched).
pub fn marker_program(token: &str) -> String {
    format!("(lambda: open({:?}, 'w').close())()", marker_path(token))
}

impl RootView {
    /// Looks for the process whose root holds the marker named `token`. A root that is the
    /// server's own `/` never counts, and when processes of two different roots hold the
    /// marker (someone copied it), none is chosen: the caller falls back to the host
    /// directory.
    pub fn find(token: &str) -> Option<RootView> {
        let marker = CString::new(marker_path(token).trim_start_matches('/')).ok()?;
        let me = std::process::id().to_string();
        let host_root = dev_ino_path(c"/")?;
        let mut found: Option<(RootView, (u64, u64))> = None;
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
                continue;
            }
            let Ok(path) = CString::new(format!("/proc/{name}/root")) else {
                continue;
            };
            // SAFETY: a NUL-terminated path; the fd returned is owned below.
            let fd = unsafe {
                libc::open(
                    path.as_ptr(),
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                )
            };
            if fd < 0 {
                continue;
            }
            // SAFETY: the kernel just returned this fd to us.
            let root = unsafe { OwnedFd::from_raw_fd(fd) };
            let Some(id) = dev_ino_fd(&root) else {
                continue;
            };
            if id == host_root {
                continue;
            }
            let view = RootView {
                root,
                marker: marker.clone(),
                fsids: None,
            };
            if !view.is_current() {
                continue;
            }
            match &found {
                Some((_, first)) if *first != id => {
                    tracing::warn!(
                        "two sandbox roots hold the same E2B marker: using the host directory for this sandbox's files"
                    );
                    return None;
                }
                Some(_) => {}
                None => {
                    let fsids = mapped_ids(&name);
                    found = Some((RootView { fsids, ..view }, id));
                }
            }
        }
        found.map(|(v, _)| v)
    }

    /// Whether the marker is still there (the sandbox's interpreter is the one found).
    pub fn is_current(&self) -> bool {
        // SAFETY: an all-zero stat is valid to overwrite.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a NUL-terminated name, a valid out-pointer, an fd we hold open.
        let rc = unsafe {
            libc::fstatat(
                self.root.as_raw_fd(),
                self.marker.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        rc == 0 && st.st_mode & libc::S_IFMT == libc::S_IFREG
    }

    /// The sandbox's `/workspace` (never through a symlink).
    pub fn workspace(&self) -> std::io::Result<Dir> {
        // SAFETY: a NUL-terminated literal; the fd is ours and owned below.
        let fd = unsafe {
            libc::openat(
                self.root.as_raw_fd(),
                c"workspace".as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this fd to us.
        Ok(Dir::from_fd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }
}

fn dev_ino_path(path: &std::ffi::CStr) -> Option<(u64, u64)> {
    // SAFETY: an all-zero stat is valid to overwrite; a NUL-terminated path.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above, with a valid out-pointer.
    (unsafe { libc::stat(path.as_ptr(), &mut st) } == 0).then_some((st.st_dev, st.st_ino))
}

fn dev_ino_fd(fd: &OwnedFd) -> Option<(u64, u64)> {
    // SAFETY: an all-zero stat is valid to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: an fd we hold open (O_PATH fds support fstat), a valid out-pointer.
    (unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } == 0).then_some((st.st_dev, st.st_ino))
}

/// The host ids the sandbox's uid and gid 1000 map to, from `/proc/PID/{uid,gid}_map`, when
/// they differ from this process's effective ids.
fn mapped_ids(pid: &str) -> Option<(u32, u32)> {
    let host_of = |file: &str| -> Option<u32> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
        text.lines().find_map(|l| {
            let f: Vec<u32> = l
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            match f.as_slice() {
                [inside, outside, count] if (*inside..inside + count).contains(&1000) => {
                    Some(outside + (1000 - inside))
                }
                _ => None,
            }
        })
    };
    let (uid, gid) = (host_of("uid_map")?, host_of("gid_map")?);
    // SAFETY: geteuid/getegid cannot fail.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    (uid != euid || gid != egid).then_some((uid, gid))
}

/// Runs `f` on a thread of its own whose filesystem ids are `fsids` (when given).
pub async fn run_as<T: Send + 'static>(
    fsids: Option<(u32, u32)>,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        if let Some((uid, gid)) = fsids {
            // SAFETY: setfsgid/setfsuid change this thread's filesystem ids only (the
            // raw system calls are per thread); the thread ends after `f`.
            unsafe {
                libc::syscall(libc::SYS_setfsgid, gid);
                libc::syscall(libc::SYS_setfsuid, uid);
            }
        }
        let _ = tx.send(f());
    });
    rx.await.ok()
}
