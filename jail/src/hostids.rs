//! Which host user a sandbox is, and how its writable directories keep their owner.
//!
//! Started by an ordinary user, a sandbox's uid 1000 is that user on the host, and what it
//! writes in `/workspace` belongs to that user, as it should.
//!
//! Started by root, a sandbox must be nobody else on the host: each sandbox gets a host
//! uid (and gid) of its own from [`UID_RANGE`], held by a lease (an `flock`ed file under
//! [`LEASE_DIR`]) for the sandbox's life, so no other sandbox or host process shares it
//! (one running as `nobody` cannot signal it). Its workspace and writable mounts are then
//! bound through an *idmapped mount* ([`idmapped_tree`]): the directory owner's uid and
//! gid on disk appear as the sandbox's on the mount, so the sandbox can write there and
//! everything it creates is stored as the directory's owner — no ownership changes on the
//! host, before or after. A file system without idmapped mounts (NFS, older kernels) falls
//! back to handing the directory itself to the sandbox's uid and giving every entry the
//! sandbox's uid owns back to the directory's owner when the sandbox ends
//! ([`restore_owner`]).

use std::ffi::CString;
use std::io::{Read as _, Write as _};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use agentkernel_core::{Error, Result};

use crate::jail::{
    AT_RECURSIVE, MOUNT_ATTR_IDMAP, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOSUID, MountAttr,
    open_no_symlinks,
};

/// Host uids (and gids) given to sandboxes started by root: 65,536 ids from 1,879,048,192
/// (0x70000000), above the range systemd gives containers and below its "foreign" range,
/// used by no distribution's users.
pub const UID_RANGE: std::ops::Range<u32> = 0x7000_0000..0x7001_0000;

/// Where root's kernels keep one lock file per leased uid (on a tmpfs: leases never
/// outlive a reboot).
pub const LEASE_DIR: &str = "/run/agentkernel/uids";

/// The host ids a sandbox's uid/gid 1000 maps to, with the lease that keeps them its own.
#[derive(Debug)]
pub(crate) struct HostIds {
    pub uid: u32,
    pub gid: u32,
    /// `Some` when leased from [`UID_RANGE`] (root); released when dropped.
    _lease: Option<std::fs::File>,
}

impl HostIds {
    /// The caller's own ids, or (as root) a fresh pair leased from [`UID_RANGE`].
    pub(crate) fn for_new_sandbox() -> Result<HostIds> {
        // SAFETY: geteuid/getegid cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        if uid != 0 {
            return Ok(HostIds {
                uid,
                gid,
                _lease: None,
            });
        }
        let (id, lease) = lease(Path::new(LEASE_DIR))?;
        Ok(HostIds {
            uid: id,
            gid: id,
            _lease: Some(lease),
        })
    }

    /// Whether these ids are a sandbox's own (leased), not the caller's.
    pub(crate) fn leased(&self) -> bool {
        self._lease.is_some()
    }
}

/// Leases one id of [`UID_RANGE`]: takes an exclusive `flock` on `dir/<id>`, trying ids
/// from a random start. The lock (not the file) is the lease: it ends with the process.
fn lease(dir: &Path) -> Result<(u32, std::fs::File)> {
    use std::os::unix::fs::OpenOptionsExt;
    let unavailable = |reason: String| Error::Unavailable {
        backend: "process",
        reason,
        hint: format!(
            "as root, each sandbox runs as its own host uid, leased under {LEASE_DIR}: make \
             that directory creatable (mode 0700, owned by root), or run as an ordinary user"
        ),
    };
    // Created 0711 and checked to be root's and writable by no one else: a lease directory
    // another user planted or can write would let them hand out (or hold) sandbox uids.
    agentkernel_core::hostdirs::private_dir(dir).map_err(|e| unavailable(e.to_string()))?;
    let count = UID_RANGE.end - UID_RANGE.start;
    let start = u32::from_le_bytes(
        uuid::Uuid::new_v4().as_bytes()[..4]
            .try_into()
            .expect("4 bytes"),
    ) % count;
    for i in 0..count {
        let id = UID_RANGE.start + (start + i) % count;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(dir.join(id.to_string()))
            .map_err(|e| unavailable(format!("opening a uid lease in {}: {e}", dir.display())))?;
        // SAFETY: flock on an fd owned by `file`.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok((id, file));
        }
    }
    Err(unavailable(format!("all {count} sandbox uids are in use")))
}

const OPEN_TREE_CLONE: libc::c_uint = 1;

/// A detached copy of the mount tree at `dir` (canonical, no symlink anywhere along it),
/// idmapped so that `dir`'s owner and group on disk appear as `ids` (and nothing else is
/// mapped: other owners show as the overflow id), with `nosuid` and `nodev`. Returns the
/// owner's `(uid, gid)` too. `Ok(None)` when the file system (or kernel) cannot idmap.
///
/// Only root can make one (it needs `CAP_SYS_ADMIN` over the file system).
pub(crate) fn idmapped_tree(dir: &Path, ids: &HostIds) -> Result<Option<(OwnedFd, u32, u32)>> {
    let path = CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::invalid("a path contains a NUL byte", "remove NUL bytes"))?;
    let raw = open_no_symlinks(&path);
    if raw < 0 {
        return Err(Error::io(
            format!("opening {} for the sandbox", dir.display()),
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: a fresh fd from openat2, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let st = nix::sys::stat::fstat(&fd)
        .map_err(|e| Error::io(format!("inspecting {}", dir.display()), e.into()))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return Err(Error::invalid(
            format!("{} is not a directory", dir.display()),
            "pass a directory",
        ));
    }
    let userns = idmap_userns(st.st_uid, st.st_gid, ids)?;
    // SAFETY: open_tree on an fd we own with an empty path; returns a new fd or -1.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint
                | OPEN_TREE_CLONE
                | libc::O_CLOEXEC as libc::c_uint
                | AT_RECURSIVE,
        )
    } as RawFd;
    if tree < 0 {
        return Ok(unsupported(dir, "open_tree"));
    }
    // SAFETY: a fresh fd from open_tree, owned by nobody else.
    let tree = unsafe { OwnedFd::from_raw_fd(tree) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: mount_setattr on the detached tree we own, with a correctly sized attr.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Ok(unsupported(dir, "mount_setattr(MOUNT_ATTR_IDMAP)"));
    }
    Ok(Some((tree, st.st_uid, st.st_gid)))
}

fn unsupported<T>(dir: &Path, call: &str) -> Option<T> {
    tracing::warn!(
        dir = %dir.display(),
        error = %std::io::Error::last_os_error(),
        "{call} failed: no idmapped mount here; the directory is handed to the sandbox's uid and its entries given back when the sandbox ends"
    );
    None
}

/// A user namespace whose only mapping is `owner`/`group` → `ids` (what an idmapped mount
/// needs): made by a child that unshares one and waits while we write its maps.
fn idmap_userns(owner: u32, group: u32, ids: &HostIds) -> Result<OwnedFd> {
    let io = |what: &str, e: std::io::Error| Error::io(format!("idmapped mount: {what}"), e);
    let mut ready = [0; 2];
    let mut release = [0; 2];
    // SAFETY: pipe2 writes two fds into each array.
    unsafe {
        if libc::pipe2(ready.as_mut_ptr(), libc::O_CLOEXEC) < 0
            || libc::pipe2(release.as_mut_ptr(), libc::O_CLOEXEC) < 0
        {
            return Err(io("pipe", std::io::Error::last_os_error()));
        }
    }
    // SAFETY: the four fds were just created and are owned by nobody else.
    let (ready_r, ready_w, release_r, release_w) = unsafe {
        (
            OwnedFd::from_raw_fd(ready[0]),
            OwnedFd::from_raw_fd(ready[1]),
            OwnedFd::from_raw_fd(release[0]),
            OwnedFd::from_raw_fd(release[1]),
        )
    };
    // SAFETY: the child only makes async-signal-safe system calls (close_range, unshare,
    // write, read, _exit) on fds it inherited; it never returns into Rust code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io("fork", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: as above, in the child.
        unsafe {
            // Keep only our two ends. The fork copied every fd of this multi-threaded
            // process, among them other threads' pipes (another sandbox's helper waiting
            // for its release): holding those would keep that helper, and the thread
            // waiting for it, blocked until we exit, and us until it does.
            crate::jail::close_all_but(&[ready_w.as_raw_fd(), release_r.as_raw_fd()]);
            let ok = libc::unshare(libc::CLONE_NEWUSER) == 0;
            let byte = [u8::from(ok)];
            libc::write(ready_w.as_raw_fd(), byte.as_ptr().cast(), 1);
            let mut b = [0u8; 1];
            libc::read(release_r.as_raw_fd(), b.as_mut_ptr().cast(), 1);
            libc::_exit(0);
        }
    }
    drop(ready_w);
    drop(release_r);
    let result = (|| {
        let mut byte = [0u8; 1];
        std::fs::File::from(ready_r)
            .read_exact(&mut byte)
            .map_err(|e| io("waiting for the helper", e))?;
        if byte[0] != 1 {
            return Err(io(
                "unshare(CLONE_NEWUSER)",
                std::io::Error::other("the helper could not make a user namespace"),
            ));
        }
        let proc = PathBuf::from(format!("/proc/{pid}"));
        std::fs::write(proc.join("uid_map"), format!("{owner} {} 1\n", ids.uid))
            .map_err(|e| io("writing uid_map", e))?;
        std::fs::write(proc.join("setgroups"), "deny").map_err(|e| io("writing setgroups", e))?;
        std::fs::write(proc.join("gid_map"), format!("{group} {} 1\n", ids.gid))
            .map_err(|e| io("writing gid_map", e))?;
        std::fs::File::open(proc.join("ns/user"))
            .map(OwnedFd::from)
            .map_err(|e| io("opening the user namespace", e))
    })();
    // An explicit byte, not only EOF: a copy of the write end held by a process forked
    // meanwhile by another thread would delay the EOF until that process exits.
    let _ = std::fs::File::from(release_w).write_all(&[1]);
    // SAFETY: waitpid on our own child.
    unsafe {
        let mut status = 0;
        while libc::waitpid(pid, &mut status, 0) < 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
        {}
    }
    result
}

/// Gives every entry under `dir` (and `dir` itself) owned by `from` back to `uid`/`gid`,
/// without following any symlink (each directory is opened relative to its parent with
/// `O_NOFOLLOW`, each entry changed with `fchownat(AT_SYMLINK_NOFOLLOW)`), so a sandbox
/// that left symlinks behind cannot redirect the change outside `dir`.
pub(crate) fn restore_owner(dir: &Path, from: u32, uid: u32, gid: u32) -> std::io::Result<()> {
    let path = CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open with a NUL-terminated path; returns a new fd or -1.
    let raw = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd, owned by nobody else.
    let top = unsafe { OwnedFd::from_raw_fd(raw) };
    chown_if(top.as_raw_fd(), c"", libc::AT_EMPTY_PATH, from, uid, gid)?;
    restore_below(top, from, uid, gid, 0)
}

fn chown_if(
    dirfd: RawFd,
    name: &std::ffi::CStr,
    flags: libc::c_int,
    from: u32,
    uid: u32,
    gid: u32,
) -> std::io::Result<bool> {
    // SAFETY: an all-zero `stat` is a valid value for fstatat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstatat into that buffer with a NUL-terminated name, relative to a valid fd.
    if unsafe {
        libc::fstatat(
            dirfd,
            name.as_ptr(),
            &mut st,
            flags | libc::AT_SYMLINK_NOFOLLOW,
        )
    } < 0
    {
        return Err(std::io::Error::last_os_error());
    }
    if st.st_uid == from {
        // SAFETY: fchownat with the same dirfd and name, never following a symlink.
        if unsafe {
            libc::fchownat(
                dirfd,
                name.as_ptr(),
                uid,
                gid,
                flags | libc::AT_SYMLINK_NOFOLLOW,
            )
        } < 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(st.st_mode & libc::S_IFMT == libc::S_IFDIR)
}

fn restore_below(dir: OwnedFd, from: u32, uid: u32, gid: u32, depth: u32) -> std::io::Result<()> {
    if depth > 256 {
        return Err(std::io::Error::other("directories nested too deeply"));
    }
    // `stream` owns the directory's fd and stays alive (borrowed by `iter`) until the
    // subdirectories below have been opened relative to it.
    let mut stream = nix::dir::Dir::from_fd(dir).map_err(std::io::Error::from)?;
    let fd = stream.as_raw_fd();
    let mut subdirs = Vec::new();
    for entry in stream.iter() {
        let entry = entry.map_err(std::io::Error::from)?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        match chown_if(fd, name, 0, from, uid, gid) {
            Ok(true) => subdirs.push(name.to_owned()),
            Ok(false) => {}
            // Gone meanwhile: nothing to give back.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    for name in subdirs {
        // SAFETY: openat relative to a directory fd we own, never following a symlink.
        let raw = unsafe {
            libc::openat(
                fd,
                name.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            // A directory swapped for something else meanwhile is not followed.
            continue;
        }
        // SAFETY: a fresh fd, owned by nobody else.
        let sub = unsafe { OwnedFd::from_raw_fd(raw) };
        restore_below(sub, from, uid, gid, depth + 1)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn restore_owner_gives_entries_back_and_never_follows_symlinks() {
        if agentkernel_core::hostdirs::euid() != 0 {
            return agentkernel_core::conformance::skip(
                "hostids::restore_owner_gives_entries_back_and_never_follows_symlinks",
                "process",
                "only root can chown",
            );
        }
        let sandbox = UID_RANGE.start + 77;
        let root = tempfile::tempdir().expect("tempdir");
        let ws = root.path().join("ws");
        let outside = root.path().join("outside.txt");
        std::fs::create_dir_all(ws.join("sub/deeper")).expect("dirs");
        std::fs::write(ws.join("a"), "a").expect("a");
        std::fs::write(ws.join("sub/deeper/b"), "b").expect("b");
        std::fs::write(&outside, "host file").expect("outside");
        std::os::unix::fs::symlink(&outside, ws.join("link")).expect("symlink");
        std::os::unix::fs::symlink(root.path(), ws.join("sub/up")).expect("symlink");
        for p in [
            ws.clone(),
            ws.join("a"),
            ws.join("sub"),
            ws.join("sub/deeper"),
            ws.join("sub/deeper/b"),
            outside.clone(),
        ] {
            std::os::unix::fs::chown(&p, Some(sandbox), Some(sandbox)).expect("chown");
        }
        for p in [ws.join("link"), ws.join("sub/up")] {
            std::os::unix::fs::lchown(&p, Some(sandbox), Some(sandbox)).expect("lchown");
        }
        restore_owner(&ws, sandbox, 4242, 4343).expect("restore");
        // The targets first: a walk that followed a link changed them (and not the link).
        let m = std::fs::metadata(&outside).expect("stat");
        assert_eq!(m.uid(), sandbox, "the symlink's target outside was changed");
        let m = std::fs::metadata(root.path()).expect("stat");
        assert_eq!(
            m.uid(),
            0,
            "the directory a symlink points up to was changed"
        );
        for p in [
            ws.clone(),
            ws.join("a"),
            ws.join("sub"),
            ws.join("sub/deeper"),
            ws.join("sub/deeper/b"),
            ws.join("link"),
            ws.join("sub/up"),
        ] {
            let m = std::fs::symlink_metadata(&p).expect("stat");
            assert_eq!((m.uid(), m.gid()), (4242, 4343), "{}", p.display());
        }
    }
}
