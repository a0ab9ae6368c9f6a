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
use std::os::unix::ffi::OsStrExt;

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
    /// The view of `root` (the sandbox's own root, from [`Session::host_root`]: taken from
    /// its init process, never found by searching), when the marker named `token` is in its
    /// `/tmp`: the interpreter that left it is the sandbox's current one.
    ///
    /// [`Session::host_root`]: crate::Session::host_root
    pub fn open(root: agentkernel_core::HostRoot, token: &str) -> Option<RootView> {
        let name = marker_path(token);
        let marker = CString::new(name.trim_start_matches("/tmp/")).ok()?;
        let view = RootView {
            root: root.root,
            marker,
            fsids: fsids_unless_mine(root.uid, root.gid),
        };
        view.is_current().then_some(view)
    }

    /// Whether the marker is still there (the sandbox's interpreter is the one found):
    /// `tmp` and the marker are opened beneath the root, never through a symlink.
    pub fn is_current(&self) -> bool {
        let Ok(root) = self.root.try_clone() else {
            return false;
        };
        let Ok(tmp) = Dir::from_fd(root).open_dir(std::ffi::OsStr::new("tmp")) else {
            return false;
        };
        let name = std::ffi::OsStr::from_bytes(self.marker.as_bytes());
        matches!(tmp.stat(name), Ok(Some(st)) if st.kind == agentkernel_core::fsat::Kind::File)
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

/// `(uid, gid)` as the filesystem ids [`run_as`] takes: `None` when they are this
/// process's own effective ids (nothing to switch).
pub fn fsids_unless_mine(uid: u32, gid: u32) -> Option<(u32, u32)> {
    // SAFETY: geteuid/getegid cannot fail.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    (uid != euid || gid != egid).then_some((uid, gid))
}

/// Runs `f` on a thread of its own whose filesystem ids are `fsids` (when given).
pub async fn run_as<T: Send + 'static>(
    fsids: Option<(u32, u32)>,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    // One thread per operation, and at most this many at once over all sandboxes: however
    // many requests arrive, the server's threads (and the directory fds they hold) stay
    // bounded; more wait their turn.
    static THREADS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(16);
    let place = THREADS.acquire().await.ok()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _place = place;
        if let Some((uid, gid)) = fsids {
            // SAFETY: the raw system calls act on this thread only (glibc's wrappers of
            // setgroups would broadcast to every thread; these do not); the thread ends
            // after `f`. setfsuid answers the previous id, never an error: asking again
            // (-1 changes nothing) tells whether it took.
            let took = unsafe {
                libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>());
                libc::syscall(libc::SYS_setfsgid, gid);
                libc::syscall(libc::SYS_setfsuid, uid);
                libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32 == uid
                    && libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32 == gid
            };
            if !took {
                // Fail closed: never act in the sandbox's root with this process's ids.
                return;
            }
        }
        let _ = tx.send(f());
    });
    rx.await.ok()
}
