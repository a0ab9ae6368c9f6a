//! The jail: how a sandbox process is born.
//!
//! Everything is prepared in the parent ([`JailPlan`]) so that the forked child only makes
//! system calls. The child (run from `pre_exec`, i.e. after `fork` and before `exec`):
//!
//! 1. starts a new session, drops supplementary groups (when root), puts the control socket
//!    on fd 3 and the lifeline on fd 4, joins the sandbox's cgroups;
//! 2. `unshare`s user, mount, pid, net, ipc, uts and cgroup namespaces and reports
//!    `UNSHARED(pid)`; the host writes its uid/gid maps (sandbox uid/gid 1000 ↔ the host
//!    user, or `nobody` when the host runs as root) and releases it through the go pipe;
//!    it switches to uid/gid 1000;
//!    When the sandbox has a host workspace, it then makes a tmpfs (size- and inode-capped)
//!    with `fsopen`/`fsmount`, not attached anywhere, on fd [`LAYER_FD`]: the workspace's
//!    write layer;
//! 3. forks: the parent ("outer", still in the host's pid namespace) closes every fd,
//!    reports `PID1(pid)` and waits; the child is pid 1 of the new pid namespace and
//!    carries on (it dies with SIGKILL when the outer process dies). The outer process
//!    keeps the write layer's fd, so the host can open the layer through
//!    `/proc/<outer>/fd/LAYER_FD` (the sandbox cannot: it is not in the sandbox's pid
//!    namespace and pid 1 closes the fd before exec);
//! 4. builds a new root on a tmpfs: read-only binds of `/usr` (and `/bin`, `/lib*` or their
//!    symlinks), the interpreter's prefix, a few harmless `/etc` files and the extra mounts;
//!    `/workspace` read-write (an overlay over the host directory whose upper layer is the
//!    capped tmpfs made before the fork, see `layer.rs`); size-capped tmpfs `/tmp` and `/dev/shm`; fresh `/proc`; a
//!    minimal `/dev`. Bind sources are opened once, right after `unshare` while the process
//!    is still the caller's uid, into fixed fds and bound from `/proc/self/fd/N`;
//! 5. `pivot_root`s into it, detaches the host root, remounts `/` read-only;
//! 6. applies rlimits, landlock (where the kernel has it) and the
//!    seccomp filters (which also set `no_new_privs`), marks stray fds close-on-exec and
//!    reports `READY`; then `exec`s the interpreter, which loses every capability.
//!
//! A failed step reports `FAILED(step, errno)` and exits 127, so the host can say which.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use seccompiler::BpfProgram;

/// Report record tags (child → host, 5 bytes: tag, u32 little-endian).
pub(crate) const TAG_UNSHARED: u8 = 1;
pub(crate) const TAG_PID1: u8 = 2;
pub(crate) const TAG_LANDLOCK: u8 = 3;
pub(crate) const TAG_FAILED: u8 = 4;
pub(crate) const TAG_READY: u8 = 5;
/// Whether `/workspace` got its write layer (1) or is the host directory itself (0).
pub(crate) const TAG_LAYER: u8 = 6;

/// Landlock outcome as reported in a `TAG_LANDLOCK` record.
pub(crate) const LANDLOCK_NONE: u32 = 0;
pub(crate) const LANDLOCK_PARTIAL: u32 = 1;
pub(crate) const LANDLOCK_FULL: u32 = 2;

/// uid and gid of the sandbox user inside the jail.
pub(crate) const SANDBOX_ID: u32 = 1000;

/// Where the new root is assembled before `pivot_root` (a tmpfs is mounted over it in the
/// child's private mount namespace; the host's `/tmp` is untouched).
const NEWROOT: &str = "/tmp";

/// Names of the steps, indexed by the step number in a `TAG_FAILED` record.
pub(crate) const STEP_NAMES: &[&str] = &[
    "setsid",
    "dropping supplementary groups",
    "moving fds",
    "joining the cgroup",
    "unshare (user namespaces may be disabled: see `agentkernel doctor`)",
    "waiting for uid/gid maps",
    "fork of pid 1",
    "setting the parent-death signal",
    "making mounts private",
    "mounting the new root",
    "building the new root",
    "pivot_root",
    "detaching the host root",
    "remounting / read-only",
    "sethostname",
    "switching to the sandbox user",
    "chdir",
    "setrlimit",
    "landlock",
    "seccomp",
    "closing fds",
    "opening mount sources",
    "making the workspace's write layer",
];
const S_SETSID: u8 = 0;
const S_GROUPS: u8 = 1;
const S_FDS: u8 = 2;
const S_CGROUP: u8 = 3;
const S_UNSHARE: u8 = 4;
const S_MAPS: u8 = 5;
const S_FORK: u8 = 6;
const S_PDEATH: u8 = 7;
const S_PRIVATE: u8 = 8;
const S_ROOTFS: u8 = 9;
pub(crate) const S_BUILD: u8 = 10;
const S_PIVOT: u8 = 11;
const S_DETACH: u8 = 12;
const S_RO: u8 = 13;
const S_HOSTNAME: u8 = 14;
const S_USER: u8 = 15;
const S_CHDIR: u8 = 16;
const S_RLIMIT: u8 = 17;
const S_LANDLOCK: u8 = 18;
const S_SECCOMP: u8 = 19;
const S_CLOSE: u8 = 20;
pub(crate) const S_SOURCES: u8 = 21;

/// One step of building the new root. Paths are absolute, under [`NEWROOT`].
#[derive(Debug)]
pub(crate) enum RootOp {
    Mkdir(CString),
    Symlink {
        target: CString,
        link: CString,
    },
    WriteFile {
        path: CString,
        data: Vec<u8>,
    },
    /// Bind `src` (usually `/proc/self/fd/N`) onto `dst` (created first: a directory or an
    /// empty file), then remount it with `remount` flags (read-only, nosuid, ... plus the
    /// flags the source mount has locked).
    Bind {
        src: CString,
        dst: CString,
        dir: bool,
        remount: libc::c_ulong,
        /// `MOUNT_ATTR_*` flags applied to the whole bound tree (submounts included), or 0.
        recursive_attrs: u64,
    },
    Tmpfs {
        dst: CString,
        data: CString,
    },
    Proc {
        dst: CString,
    },
    /// Attach the detached mount tree `fd` (an idmapped copy of a host directory made by
    /// the host, see `hostids::idmapped_tree`) at `dst` (created first) with `move_mount`.
    MoveTree {
        fd: RawFd,
        dst: CString,
    },
    /// The workspace: an overlay at `dst` with the host directory bound at `lower` (under
    /// the new root, detached once the overlay holds it) as its lower layer and the write
    /// layer on [`LAYER_FD`] as its upper (`data`: the overlay's options). Where the kernel
    /// cannot make it (no write layer, no overlay in a user namespace, no user xattrs on
    /// tmpfs before Linux 6.6), `lower` is moved to `dst` instead: the host directory
    /// itself, as before, reported with `TAG_LAYER` 0.
    Overlay {
        lower: CString,
        dst: CString,
        data: CString,
    },
    /// The ipc namespace's message-queue file system, read-only. Best effort: where it
    /// cannot be mounted, the guest's init finds no such mount and never resets in place.
    Mqueue {
        dst: CString,
    },
}

/// Everything the child needs, prepared by the parent.
pub(crate) struct JailPlan {
    pub drop_groups: bool,
    pub cgroup_procs: Vec<CString>,
    pub control_fd: RawFd,
    pub lifeline_fd: RawFd,
    pub report_fd: RawFd,
    pub go_fd: RawFd,
    pub ops: Vec<RootOp>,
    pub workdir: CString,
    pub rlimits: Vec<(libc::__rlimit_resource_t, u64, u64)>,
    pub writable_dirs: Vec<String>,
    pub landlock: bool,
    pub seccomp: Vec<BpfProgram>,
    /// Host paths of bind sources, opened by the child into fds `SOURCE_FD_BASE + i`;
    /// `true` marks paths that must not traverse any symlink (workspace, user mounts).
    pub sources: Vec<(CString, bool)>,
    /// Detached mount trees the child attaches (`RootOp::MoveTree`); kept open across the
    /// child's first fd sweep. At most [`MAX_TREES`].
    pub trees: Vec<RawFd>,
    /// `size=` and `nr_inodes=` of the workspace's write layer (`None`: no host workspace).
    pub layer: Option<(CString, CString)>,
}

/// The fd of the workspace's write layer (a detached tmpfs mount) in the jail's processes:
/// pid 1 until it execs, the outer process for the sandbox's life.
pub(crate) const LAYER_FD: RawFd = SOURCE_FD_BASE - 1;

/// Most detached trees (idmapped writable directories) one jail can attach.
pub(crate) const MAX_TREES: usize = 8;

/// First fd number of the bind sources in the child.
pub(crate) const SOURCE_FD_BASE: RawFd = 512;

/// Where the child moves the plan's fds before it closes every other one: whatever numbers
/// they had in the host (a server holds thousands of fds), in the child they sit below
/// [`FIRST_PLAN_FD`] and so never under [`LAYER_FD`] or the bind sources. The control
/// socket and the lifeline go to 3 and 4, where the agent expects them.
pub(crate) const REPORT_FD: RawFd = 5;
/// See [`REPORT_FD`].
pub(crate) const GO_FD: RawFd = 6;
/// The detached trees' fds in the child: `TREE_FD_BASE + i` (what `RootOp::MoveTree` names).
pub(crate) const TREE_FD_BASE: RawFd = 7;
/// Every fd of the plan is at least this in the host ([`high_fd`]), so that none is a
/// target of the moves above.
pub(crate) const FIRST_PLAN_FD: RawFd = TREE_FD_BASE + MAX_TREES as RawFd;

/// Mount flags that a bind of `path` must keep when remounted inside a user namespace
/// (the kernel refuses to clear flags the original mount has locked).
pub(crate) fn locked_flags(path: &Path) -> libc::c_ulong {
    use nix::sys::statvfs::{FsFlags, statvfs};
    let Ok(st) = statvfs(path) else { return 0 };
    let f = st.flags();
    let mut out = 0;
    if f.contains(FsFlags::ST_NOEXEC) {
        out |= libc::MS_NOEXEC;
    }
    if f.contains(FsFlags::ST_NOATIME) {
        out |= libc::MS_NOATIME;
    }
    if f.contains(FsFlags::ST_NODIRATIME) {
        out |= libc::MS_NODIRATIME;
    }
    if f.contains(FsFlags::ST_RELATIME) {
        out |= libc::MS_RELATIME;
    }
    if f.contains(FsFlags::ST_RDONLY) {
        out |= libc::MS_RDONLY;
    }
    out
}

/// Path under the new root for guest path `guest` (absolute).
pub(crate) fn under_root(guest: &str) -> String {
    format!("{NEWROOT}{guest}")
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn write_all(fd: RawFd, mut data: &[u8]) -> bool {
    while !data.is_empty() {
        // SAFETY: `data` is a valid buffer of `data.len()` bytes for the duration of the call.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return false;
        }
        data = &data[n as usize..];
    }
    true
}

fn record(fd: RawFd, tag: u8, value: u32) {
    let v = value.to_le_bytes();
    write_all(fd, &[tag, v[0], v[1], v[2], v[3]]);
}

/// Reports a failed step and exits. Only system calls: safe after fork.
fn fail(report: RawFd, step: u8) -> ! {
    fail_at(report, step, 0)
}

/// Like [`fail`], naming the index of the failed root-building operation too.
fn fail_at(report: RawFd, step: u8, op: usize) -> ! {
    let e = errno() as u32 & 0xFFFF;
    let op = (op.min(255) as u32) << 16;
    record(report, TAG_FAILED, (u32::from(step) << 24) | op | e);
    // SAFETY: _exit is async-signal-safe and never returns.
    unsafe { libc::_exit(127) }
}

fn check(report: RawFd, step: u8, rc: libc::c_int) {
    if rc < 0 {
        fail(report, step);
    }
}

/// Formats `n` in decimal into `buf` without allocating; returns the digits.
fn itoa(mut n: u32, buf: &mut [u8; 12]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

fn null() -> *const libc::c_char {
    std::ptr::null()
}

/// Runs in the forked child. Returns only in pid 1 of the new namespace, ready to exec.
///
/// # Safety
/// Must be called in a freshly forked child (from `pre_exec`): it changes the process's
/// namespaces, fds, root, credentials and exits the process on failure. It makes no heap
/// allocation until the landlock step, which runs single-threaded after glibc's `fork`.
pub(crate) unsafe fn enter(plan: &JailPlan) -> std::io::Result<()> {
    let report = REPORT_FD;
    // SAFETY: every libc call below gets valid, NUL-terminated strings owned by `plan`
    // (which outlives the call), stack buffers, or null where the API allows it.
    unsafe {
        // Every fd of the plan moves to its fixed low number (the parent made sure each is
        // at least FIRST_PLAN_FD, so no move overwrites another): the control socket and
        // lifeline to the fds the agent expects, the rest below the layer and the sources.
        // Until the report fd is in place a failure can only exit.
        // (dup3 with O_CLOEXEC: only 3 and 4 may reach the agent.)
        if libc::dup3(plan.report_fd, REPORT_FD, libc::O_CLOEXEC) < 0 {
            libc::_exit(127);
        }
        check(report, S_FDS, libc::dup2(plan.control_fd, 3));
        check(report, S_FDS, libc::dup2(plan.lifeline_fd, 4));
        check(
            report,
            S_FDS,
            libc::dup3(plan.go_fd, GO_FD, libc::O_CLOEXEC),
        );
        for (i, fd) in plan.trees.iter().enumerate() {
            let to = TREE_FD_BASE + i as RawFd;
            check(report, S_FDS, libc::dup3(*fd, to, libc::O_CLOEXEC));
        }
        check(report, S_SETSID, libc::setsid());
        if plan.drop_groups {
            check(report, S_GROUPS, libc::setgroups(0, std::ptr::null()));
        }
        // Drop every other fd inherited from the host now (we never exec before the fork
        // below, so CLOEXEC does not help yet): copies of other sandboxes' lifelines and
        // sockets would keep those sandboxes alive after the host dies, and our own copy of
        // the `go` pipe's write end would make the read below wait forever if it did.
        let mut keep = [-1; 7 + MAX_TREES];
        keep[..7].copy_from_slice(&[0, 1, 2, 3, 4, REPORT_FD, GO_FD]);
        for (i, slot) in keep[7..].iter_mut().take(plan.trees.len()).enumerate() {
            *slot = TREE_FD_BASE + i as RawFd;
        }
        close_all_but(&keep);

        let mut buf = [0u8; 12];
        let pid = itoa(libc::getpid() as u32, &mut buf);
        for procs in &plan.cgroup_procs {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 || !write_all(fd, pid) {
                fail(report, S_CGROUP);
            }
            libc::close(fd);
        }

        let flags = libc::CLONE_NEWUSER
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWCGROUP;
        check(report, S_UNSHARE, libc::unshare(flags));
        record(report, TAG_UNSHARED, libc::getpid() as u32);
        let mut go = [0u8; 1];
        if libc::read(GO_FD, go.as_mut_ptr().cast(), 1) != 1 {
            fail(report, S_MAPS);
        }
        // Become the sandbox user now: files the jail creates must belong to a uid mapped
        // in the namespace. Capabilities inside the namespace survive this (its uid 0 is
        // unmapped) and are lost at exec.
        // Open the bind sources now: after unshare (a mount can only be bound from the
        // namespace it lives in) and before dropping to the sandbox user (so directories
        // only the caller can traverse, like root's pyenv, are reachable).
        for (i, (src, strict)) in plan.sources.iter().enumerate() {
            let fd = if *strict {
                open_no_symlinks(src)
            } else {
                libc::open(src.as_ptr(), libc::O_PATH | libc::O_CLOEXEC)
            };
            if fd < 0 {
                fail_at(report, S_SOURCES, i);
            }
            check(
                report,
                S_SOURCES,
                libc::dup3(fd, SOURCE_FD_BASE + i as RawFd, libc::O_CLOEXEC),
            );
            libc::close(fd);
        }
        check(
            report,
            S_USER,
            libc::setresgid(SANDBOX_ID, SANDBOX_ID, SANDBOX_ID),
        );
        check(
            report,
            S_USER,
            libc::setresuid(SANDBOX_ID, SANDBOX_ID, SANDBOX_ID),
        );
        // The workspace's write layer, made here (still holding the namespace's
        // capabilities) so that the outer process can keep it. Best effort: without it the
        // overlay step falls back to the host directory itself.
        if let Some((size, inodes)) = &plan.layer {
            make_layer(size, inodes);
        }

        let child = libc::fork();
        if child < 0 {
            fail(report, S_FORK);
        }
        if child > 0 {
            outer(report, child);
        }

        // pid 1 of the new pid namespace from here on.
        check(
            report,
            S_PDEATH,
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0),
        );
        check(
            report,
            S_PRIVATE,
            libc::mount(
                null(),
                c"/".as_ptr(),
                null(),
                libc::MS_REC | libc::MS_PRIVATE,
                null().cast(),
            ),
        );
        check(
            report,
            S_ROOTFS,
            libc::mount(
                c"tmpfs".as_ptr(),
                c"/tmp".as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                c"mode=0755,size=4m".as_ptr().cast(),
            ),
        );
        for (i, op) in plan.ops.iter().enumerate() {
            let built = match op {
                RootOp::Overlay { lower, dst, data } => overlay(lower, dst, data).map(|layered| {
                    record(report, TAG_LAYER, u32::from(layered));
                }),
                _ => build(op),
            };
            if built.is_err() {
                fail_at(report, S_BUILD, i);
            }
        }
        // pid 1 keeps no handle on the write layer (the overlay holds it).
        libc::close(LAYER_FD);

        check(report, S_PIVOT, libc::chdir(c"/tmp".as_ptr()));
        check(
            report,
            S_PIVOT,
            libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int,
        );
        check(
            report,
            S_DETACH,
            libc::umount2(c".".as_ptr(), libc::MNT_DETACH),
        );
        check(report, S_DETACH, libc::chdir(c"/".as_ptr()));
        check(
            report,
            S_RO,
            libc::mount(
                null(),
                c"/".as_ptr(),
                null(),
                libc::MS_REMOUNT
                    | libc::MS_BIND
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV,
                null().cast(),
            ),
        );
        let host = c"sandbox";
        check(
            report,
            S_HOSTNAME,
            libc::sethostname(host.as_ptr(), host.count_bytes()),
        );

        check(report, S_CHDIR, libc::chdir(plan.workdir.as_ptr()));
        for (resource, soft, hard) in &plan.rlimits {
            let lim = libc::rlimit {
                rlim_cur: *soft,
                rlim_max: *hard,
            };
            check(report, S_RLIMIT, libc::setrlimit(*resource, &lim));
        }
    }

    let status = if plan.landlock {
        match restrict_landlock(&plan.writable_dirs) {
            Ok(s) => s,
            Err(()) => fail(report, S_LANDLOCK),
        }
    } else {
        LANDLOCK_NONE
    };
    record(report, TAG_LANDLOCK, status);

    for filter in &plan.seccomp {
        if seccompiler::apply_filter(filter).is_err() {
            fail(report, S_SECCOMP);
        }
    }
    // SAFETY: plain syscalls with integer arguments.
    unsafe {
        // Anything the host left open without CLOEXEC must not reach the interpreter.
        // fds 3 and 4 (control, lifeline) stay; the report fd is CLOEXEC already.
        check(
            report,
            S_CLOSE,
            libc::syscall(
                libc::SYS_close_range,
                5u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            ) as libc::c_int,
        );
    }
    record(report, TAG_READY, 0);
    Ok(())
}

/// Closes every fd not in `keep` (at most 16, negative entries ignored; best effort:
/// `close_range`, Linux 5.9+).
/// Allocates nothing: this runs between fork and exec of a multi-threaded process.
///
/// # Safety
/// Only in the forked child: fds the rest of the process uses disappear.
pub(crate) unsafe fn close_all_but(keep: &[RawFd]) {
    let mut fds = [u32::MAX; 16];
    let mut n = 0;
    for &fd in keep.iter().take(fds.len()) {
        if let Ok(fd) = u32::try_from(fd) {
            fds[n] = fd;
            n += 1;
        }
    }
    let fds = &mut fds[..n];
    fds.sort_unstable(); // in place, no allocation
    let mut next = 0u32;
    for &fd in fds.iter() {
        if fd > next {
            // SAFETY: closing a range of fds; no pointers involved.
            unsafe { libc::syscall(libc::SYS_close_range, next, fd - 1, 0u32) };
        }
        next = next.max(fd.saturating_add(1));
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, next, u32::MAX, 0u32) };
}

/// Makes the workspace's write layer: a tmpfs of `size` bytes and `inodes` inodes holding
/// `upper` and `work` directories, as a detached mount on [`LAYER_FD`] (close-on-exec).
/// Leaves nothing on [`LAYER_FD`] when any step fails.
///
/// # Safety
/// Only in the forked child, after `unshare` (it needs the namespace's capabilities).
unsafe fn make_layer(size: &CString, inodes: &CString) {
    const FSOPEN_CLOEXEC: libc::c_uint = 1;
    const FSCONFIG_SET_STRING: libc::c_uint = 1;
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    const FSMOUNT_CLOEXEC: libc::c_uint = 1;
    // SAFETY: plain syscalls with NUL-terminated strings owned by the plan or static.
    unsafe {
        let fs = libc::syscall(libc::SYS_fsopen, c"tmpfs".as_ptr(), FSOPEN_CLOEXEC) as RawFd;
        if fs < 0 {
            return;
        }
        let mut ok = true;
        for (key, value) in [
            (c"size", size.as_c_str()),
            (c"nr_inodes", inodes.as_c_str()),
            (c"mode", c"0755"),
        ] {
            ok &= libc::syscall(
                libc::SYS_fsconfig,
                fs,
                FSCONFIG_SET_STRING,
                key.as_ptr(),
                value.as_ptr(),
                0,
            ) == 0;
        }
        ok &= libc::syscall(
            libc::SYS_fsconfig,
            fs,
            FSCONFIG_CMD_CREATE,
            null(),
            null(),
            0,
        ) == 0;
        let mnt = if ok {
            libc::syscall(
                libc::SYS_fsmount,
                fs,
                FSMOUNT_CLOEXEC,
                MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
            ) as RawFd
        } else {
            -1
        };
        libc::close(fs);
        if mnt < 0 {
            return;
        }
        if libc::mkdirat(mnt, c"upper".as_ptr(), 0o755) == 0
            && libc::mkdirat(mnt, c"work".as_ptr(), 0o700) == 0
        {
            libc::dup3(mnt, LAYER_FD, libc::O_CLOEXEC);
        }
        libc::close(mnt);
    }
}

/// The workspace's overlay (see [`RootOp::Overlay`]): `Ok(true)` with the write layer,
/// `Ok(false)` when the host directory had to be moved into place instead.
///
/// # Safety
/// Called only from [`enter`] in pid 1, with strings owned by the plan.
unsafe fn overlay(lower: &CString, dst: &CString, data: &CString) -> Result<bool, ()> {
    // SAFETY: NUL-terminated strings owned by the plan; plain mount syscalls.
    unsafe {
        if libc::mkdir(dst.as_ptr(), 0o755) < 0 && errno() != libc::EEXIST {
            return Err(());
        }
        let layered = libc::mount(
            c"overlay".as_ptr(),
            dst.as_ptr(),
            c"overlay".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr().cast(),
        ) == 0;
        if layered {
            // The overlay holds its lower layer: the staging mount can go.
            if libc::umount2(lower.as_ptr(), libc::MNT_DETACH) < 0 {
                return Err(());
            }
        } else if libc::mount(
            lower.as_ptr(),
            dst.as_ptr(),
            null(),
            libc::MS_MOVE,
            null().cast(),
        ) < 0
        {
            return Err(());
        }
        if libc::rmdir(lower.as_ptr()) < 0 {
            return Err(());
        }
        Ok(layered)
    }
}

/// The outer process: reports pid 1's host pid, closes everything but the workspace's
/// write layer, waits and mirrors its exit status. Never returns.
///
/// # Safety
/// Only called in the forked child, after the fork of pid 1.
unsafe fn outer(report: RawFd, child: libc::pid_t) -> ! {
    // SAFETY: plain syscalls on integers and a stack buffer.
    unsafe {
        record(report, TAG_PID1, child as u32);
        // Hold nothing else: the host's spawn() waits for every copy of its exec-error pipe
        // to close, and the host's output pipes must see EOF when the sandbox dies. The
        // write layer stays for the host to open (an fd of no other use).
        close_all_but(&[LAYER_FD]);
        let mut status = 0;
        loop {
            let r = libc::waitpid(child, &mut status, 0);
            if r == child {
                break;
            }
            if r < 0 && errno() != libc::EINTR {
                libc::_exit(1);
            }
        }
        let code = if libc::WIFSIGNALED(status) {
            128 + libc::WTERMSIG(status)
        } else {
            libc::WEXITSTATUS(status)
        };
        libc::_exit(code)
    }
}

/// One root-building step; `Err` leaves the cause in `errno`.
///
/// # Safety
/// Called only from [`enter`] in pid 1, with strings owned by the plan.
unsafe fn build(op: &RootOp) -> Result<(), ()> {
    let ok = |rc: libc::c_int| if rc < 0 { Err(()) } else { Ok(()) };
    // SAFETY: all pointers are NUL-terminated strings or buffers owned by `op`.
    unsafe {
        let mkdir = |path: &CString| {
            if libc::mkdir(path.as_ptr(), 0o755) < 0 && errno() != libc::EEXIST {
                Err(())
            } else {
                Ok(())
            }
        };
        match op {
            RootOp::Mkdir(path) => mkdir(path),
            RootOp::Symlink { target, link } => ok(libc::symlink(target.as_ptr(), link.as_ptr())),
            RootOp::WriteFile { path, data } => {
                let fd = libc::open(
                    path.as_ptr(),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
                    0o644,
                );
                ok(fd)?;
                let written = write_all(fd, data);
                libc::close(fd);
                if written { Ok(()) } else { Err(()) }
            }
            RootOp::Bind {
                src,
                dst,
                dir,
                remount,
                recursive_attrs,
            } => {
                if *dir {
                    mkdir(dst)?;
                } else {
                    let fd = libc::open(
                        dst.as_ptr(),
                        libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
                        0o644,
                    );
                    ok(fd)?;
                    libc::close(fd);
                }
                ok(libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    null(),
                    libc::MS_BIND | libc::MS_REC,
                    null().cast(),
                ))?;
                ok(libc::mount(
                    null(),
                    dst.as_ptr(),
                    null(),
                    libc::MS_REMOUNT | libc::MS_BIND | *remount,
                    null().cast(),
                ))?;
                if *recursive_attrs == 0 {
                    return Ok(());
                }
                // The remount above only changes the top mount; submounts of the source
                // (e.g. something mounted below /usr) need mount_setattr (Linux 5.12+).
                let attr = MountAttr {
                    attr_set: *recursive_attrs,
                    attr_clr: 0,
                    propagation: 0,
                    userns_fd: 0,
                };
                let rc = libc::syscall(
                    libc::SYS_mount_setattr,
                    libc::AT_FDCWD,
                    dst.as_ptr(),
                    AT_RECURSIVE,
                    &attr as *const MountAttr,
                    std::mem::size_of::<MountAttr>(),
                );
                if rc < 0 && errno() != libc::ENOSYS {
                    Err(())
                } else {
                    Ok(())
                }
            }
            RootOp::MoveTree { fd, dst } => {
                mkdir(dst)?;
                ok(libc::syscall(
                    libc::SYS_move_mount,
                    *fd,
                    c"".as_ptr(),
                    libc::AT_FDCWD,
                    dst.as_ptr(),
                    MOVE_MOUNT_F_EMPTY_PATH,
                ) as libc::c_int)?;
                libc::close(*fd);
                Ok(())
            }
            RootOp::Tmpfs { dst, data } => {
                mkdir(dst)?;
                ok(libc::mount(
                    c"tmpfs".as_ptr(),
                    dst.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    data.as_ptr().cast(),
                ))
            }
            // Handled by `overlay` in `enter`.
            RootOp::Overlay { .. } => Err(()),
            RootOp::Mqueue { dst } => {
                mkdir(dst)?;
                libc::mount(
                    c"mqueue".as_ptr(),
                    dst.as_ptr(),
                    c"mqueue".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY,
                    null().cast(),
                );
                Ok(())
            }
            RootOp::Proc { dst } => {
                mkdir(dst)?;
                ok(libc::mount(
                    c"proc".as_ptr(),
                    dst.as_ptr(),
                    c"proc".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    null().cast(),
                ))
            }
        }
    }
}

pub(crate) const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
pub(crate) const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
pub(crate) const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub(crate) const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub(crate) const MOUNT_ATTR_NODEV: u64 = 0x4;
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_NO_SYMLINKS: u64 = 0x04;

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
pub(crate) struct MountAttr {
    pub attr_set: u64,
    pub attr_clr: u64,
    pub propagation: u64,
    pub userns_fd: u64,
}

/// `struct open_how` of `openat2(2)`.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Opens `path` as an `O_PATH` fd, refusing any symlink (or magic link) along the way, so a
/// sandbox that planted a symlink in a directory it can write cannot redirect a mount.
/// Returns -1 with `errno` set on failure (ELOOP for a symlink).
pub(crate) fn open_no_symlinks(path: &std::ffi::CStr) -> libc::c_int {
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: openat2 with a NUL-terminated path and a correctly sized open_how.
    unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        ) as libc::c_int
    }
}

/// Landlock: read and execute anywhere in the (already minimal) new root, write only under
/// `writable`; no TCP bind/connect; no signals to processes outside the sandbox.
fn restrict_landlock(writable: &[String]) -> Result<u32, ()> {
    use landlock::{
        ABI, Access, AccessFs, AccessNet, RestrictionStatus, Ruleset, RulesetAttr,
        RulesetCreatedAttr, RulesetStatus, Scope, path_beneath_rules,
    };
    let abi = ABI::V6;
    let status: RestrictionStatus = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .and_then(|r| r.handle_access(AccessNet::from_all(abi)))
        .and_then(|r| r.scope(Scope::Signal))
        .and_then(|r| r.create())
        .and_then(|r| r.add_rules(path_beneath_rules(["/"], AccessFs::from_read(abi))))
        .and_then(|r| r.add_rules(path_beneath_rules(writable, AccessFs::from_all(abi))))
        .and_then(|r| {
            r.add_rules(path_beneath_rules(
                [
                    "/dev/null",
                    "/dev/zero",
                    "/dev/full",
                    "/dev/random",
                    "/dev/urandom",
                ],
                AccessFs::from_all(abi),
            ))
        })
        .and_then(|r| r.restrict_self())
        .map_err(|_| ())?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => LANDLOCK_FULL,
        RulesetStatus::PartiallyEnforced => LANDLOCK_PARTIAL,
        RulesetStatus::NotEnforced => LANDLOCK_NONE,
    })
}

/// Moves `fd` to a number >= [`FIRST_PLAN_FD`] (close-on-exec) so that the child's moves of
/// the plan's fds to their low numbers can never clobber it.
pub(crate) fn high_fd(fd: OwnedFd) -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    if fd.as_raw_fd() >= FIRST_PLAN_FD {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC on a valid fd returns a new fd we own.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, FIRST_PLAN_FD) };
    if new < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `new` is a freshly created fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The second half of the symlinked-workspace fix: even a path that was canonical when
    /// the plan checked it cannot be redirected afterwards, because the jail opens it with
    /// `openat2(RESOLVE_NO_SYMLINKS)`, which refuses a symlink at any component (here the
    /// middle one and the last), while a real path opens.
    #[test]
    fn open_no_symlinks_refuses_a_symlink_anywhere_along_the_path() {
        let root = tempfile::tempdir().expect("tempdir");
        let real = root.path().join("real");
        std::fs::create_dir_all(real.join("ws")).expect("dirs");
        std::os::unix::fs::symlink(&real, root.path().join("link")).expect("symlink");
        std::os::unix::fs::symlink(real.join("ws"), real.join("wslink")).expect("symlink");
        let c =
            |p: std::path::PathBuf| CString::new(p.into_os_string().into_encoded_bytes()).unwrap();
        let fd = open_no_symlinks(&c(real.join("ws")));
        assert!(
            fd >= 0,
            "a real path must open: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: closing the fd we just opened.
        unsafe { libc::close(fd) };
        for bad in [root.path().join("link/ws"), real.join("wslink")] {
            let fd = open_no_symlinks(&c(bad.clone()));
            let err = std::io::Error::last_os_error();
            assert!(fd < 0, "{} opened through a symlink", bad.display());
            assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{}", bad.display());
        }
    }
}
