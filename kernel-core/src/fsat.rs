//! File operations relative to a directory fd, never following a symlink: how the host
//! writes a sandbox's files into (and reads the host's files out of) a host directory that
//! other programs may be changing at the same time (the microVM's copies, the process
//! backend's workspace layer).
//!
//! A [`Dir`] is an open directory. Every name passed to it is one path component, resolved with
//! `openat2(2)` and `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS` (or with a
//! `*at` call that does not follow a final symlink: `mkdirat`, `unlinkat`, `renameat`,
//! `fstatat(AT_SYMLINK_NOFOLLOW)`), and permissions are changed with `fchmod` on an fd already
//! open. So swapping a directory for a symlink between a check and a use cannot redirect
//! anything: the directory we hold is the one we checked, and a symlink is never resolved.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_NO_SYMLINKS: u64 = 0x04;
const RESOLVE_BENEATH: u64 = 0x08;

/// `struct open_how` of `openat2(2)`.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `openat2(dir, name, flags, mode)` resolving beneath `dir` and refusing every symlink.
fn openat2(dir: RawFd, name: &CStr, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u64,
        mode: u64::from(mode),
        resolve: RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: `name` is NUL-terminated and outlives the call; `how` is a correctly sized
    // `struct open_how`; `dir` is an fd the caller holds open.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            name.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// What is at a name in a directory (the link itself for a symlink).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symlink, a FIFO, a socket, a device.
    Other,
}

/// What [`Dir::stat`] found.
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    /// What kind of entry it is.
    pub kind: Kind,
    /// Permission bits (with set-id and sticky bits).
    pub mode: u32,
    /// Its size in bytes.
    pub size: u64,
    /// When its content last changed.
    pub mtime: Option<SystemTime>,
    /// The file type bits (`st_mode & S_IFMT`): tells a symlink from a FIFO or a device.
    pub file_type: u32,
    /// The device number of a device node (0 otherwise).
    pub rdev: u64,
    /// Its inode number.
    pub ino: u64,
    /// How many names it has.
    pub nlink: u64,
    /// When it (content, mode, owner or links) last changed, in seconds and nanoseconds
    /// since the epoch: unlike the mtime, a program cannot set it back.
    pub ctime: (i64, i64),
}

/// An open directory; names are resolved beneath it and never through a symlink.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
}

/// The target of the symlink `name` in the open directory `dir`, read without following
/// it (`EINVAL` when `name` is not a symlink).
///
/// # Errors
/// As `readlinkat(2)`; `ENAMETOOLONG` for a target that does not fit in `PATH_MAX`.
pub fn read_link_at(dir: std::os::fd::BorrowedFd<'_>, name: &CStr) -> io::Result<OsString> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: `name` is NUL-terminated, `buf` is a valid buffer of the given length, the
    // fd is open for the borrow.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    if n >= buf.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    buf.truncate(n);
    Ok(OsString::from_vec(buf))
}

/// How deep [`Dir::remove_all`] goes before giving up.
const MAX_DEPTH: usize = 512;

impl Dir {
    /// Opens the directory `path` (the trusted root, e.g. a configured workspace; a symlink
    /// in `path` itself is followed, as the user wrote it).
    pub fn open_root(path: &Path) -> io::Result<Dir> {
        let c = cstr(path.as_os_str())?;
        // SAFETY: `c` is NUL-terminated and outlives the call.
        let fd = check(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: the kernel just returned this fd to us, and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Dir { fd })
    }

    /// The directory `name` in this one: `ELOOP` for a symlink, `ENOTDIR` for anything else
    /// that is not a directory, `ENOENT` when missing.
    pub fn open_dir(&self, name: &OsStr) -> io::Result<Dir> {
        let fd = openat2(
            self.fd.as_raw_fd(),
            &cstr(name)?,
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )?;
        Ok(Dir { fd })
    }

    /// The regular file `name`, opened for reading (`ELOOP` for a symlink, `EINVAL` for
    /// anything that is not a regular file: a FIFO is never waited on).
    pub fn open_file(&self, name: &OsStr) -> io::Result<File> {
        let fd = openat2(
            self.fd.as_raw_fd(),
            &cstr(name)?,
            libc::O_RDONLY | libc::O_NONBLOCK,
            0,
        )?;
        let file = File::from(fd);
        if !file.metadata()?.is_file() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(file)
    }

    /// The existing regular file `name`, opened for writing in place (`ELOOP` for a
    /// symlink, `EINVAL` for anything that is not a regular file; a FIFO is never waited
    /// on). For a writer whose readers hold the file's inode (an overlay mounted on the
    /// directory caches it): a file renamed into place would be a new inode they never see.
    pub fn open_existing_for_write(&self, name: &OsStr) -> io::Result<File> {
        let fd = openat2(
            self.fd.as_raw_fd(),
            &cstr(name)?,
            libc::O_WRONLY | libc::O_NONBLOCK,
            0,
        )?;
        let file = File::from(fd);
        if !file.metadata()?.is_file() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(file)
    }

    /// Creates the file `name` (which must not exist) with mode 0600, for writing.
    pub fn create_new(&self, name: &OsStr) -> io::Result<File> {
        let fd = openat2(
            self.fd.as_raw_fd(),
            &cstr(name)?,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
            0o600,
        )?;
        Ok(File::from(fd))
    }

    /// Creates the directory `name` with mode 0700.
    pub fn mkdir(&self, name: &OsStr) -> io::Result<()> {
        let c = cstr(name)?;
        // SAFETY: `c` is NUL-terminated and outlives the call; the fd is open.
        check(unsafe { libc::mkdirat(self.fd.as_raw_fd(), c.as_ptr(), 0o700) }).map(drop)
    }

    /// What is at `name`, without following a symlink; `None` when nothing is there.
    pub fn stat(&self, name: &OsStr) -> io::Result<Option<Stat>> {
        let c = cstr(name)?;
        // SAFETY: an all-zero `stat` is a valid value for fstatat to overwrite.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is NUL-terminated, `st` is a valid out-pointer, the fd is open.
        let rc = unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOENT) => Ok(None),
                _ => Err(e),
            };
        }
        let mtime = u64::try_from(st.st_mtime).ok().map(|s| {
            SystemTime::UNIX_EPOCH + Duration::new(s, u32::try_from(st.st_mtime_nsec).unwrap_or(0))
        });
        Ok(Some(Stat {
            kind: match st.st_mode & libc::S_IFMT {
                libc::S_IFDIR => Kind::Dir,
                libc::S_IFREG => Kind::File,
                _ => Kind::Other,
            },
            mode: st.st_mode & 0o7777,
            size: u64::try_from(st.st_size).unwrap_or(0),
            mtime,
            file_type: st.st_mode & libc::S_IFMT,
            rdev: st.st_rdev,
            ino: st.st_ino,
            nlink: st.st_nlink,
            ctime: (st.st_ctime, st.st_ctime_nsec),
        }))
    }

    /// The directory open at `fd` (trusted: whatever the caller opened).
    pub fn from_fd(fd: OwnedFd) -> Dir {
        Dir { fd }
    }

    /// The target of the symlink `name` (`EINVAL` when it is not a symlink).
    pub fn read_link(&self, name: &OsStr) -> io::Result<OsString> {
        read_link_at(std::os::fd::AsFd::as_fd(&self.fd), &cstr(name)?)
    }

    /// Gives the symlink `name` (the link itself, never its target) to `uid`/`gid`.
    pub fn chown_link(&self, name: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
        let c = cstr(name)?;
        // SAFETY: `c` is NUL-terminated and outlives the call; the fd is open.
        check(unsafe {
            libc::fchownat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                uid,
                gid,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
        .map(drop)
    }

    /// Creates the symlink `name` pointing to `target` (`EEXIST` if `name` exists).
    pub fn symlink(&self, target: &OsStr, name: &OsStr) -> io::Result<()> {
        let (t, n) = (cstr(target)?, cstr(name)?);
        // SAFETY: both strings are NUL-terminated and outlive the call; the fd is open.
        check(unsafe { libc::symlinkat(t.as_ptr(), self.fd.as_raw_fd(), n.as_ptr()) }).map(drop)
    }

    /// The value of this directory's extended attribute `attr` (`None` when it has none
    /// by that name; at most 256 bytes are read).
    pub fn xattr(&self, attr: &CStr) -> io::Result<Option<Vec<u8>>> {
        let mut buf = [0u8; 256];
        // SAFETY: `attr` is NUL-terminated, `buf` is a valid buffer of the given length,
        // the fd is open.
        let n = unsafe {
            libc::fgetxattr(
                self.fd.as_raw_fd(),
                attr.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        match usize::try_from(n) {
            Ok(n) => Ok(Some(buf[..n].to_vec())),
            Err(_) => {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::ENODATA | libc::ENOTSUP) => Ok(None),
                    _ => Err(e),
                }
            }
        }
    }

    /// Another fd for this directory.
    pub fn try_clone(&self) -> io::Result<Dir> {
        Ok(Dir {
            fd: self.fd.try_clone()?,
        })
    }

    /// Removes `name` if it is not a directory (a symlink itself, never its target).
    pub fn unlink(&self, name: &OsStr) -> io::Result<()> {
        let c = cstr(name)?;
        // SAFETY: `c` is NUL-terminated and outlives the call; the fd is open.
        check(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) }).map(drop)
    }

    /// Removes the empty directory `name` (`ENOTEMPTY` when it is not empty, `ENOTDIR` when
    /// it is not a directory).
    pub fn remove_dir(&self, name: &OsStr) -> io::Result<()> {
        let c = cstr(name)?;
        // SAFETY: `c` is NUL-terminated and outlives the call; the fd is open.
        check(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) })
            .map(drop)
    }

    /// Makes `name` here a new hard link to `from`'s entry `from_name` (a symlink there is
    /// linked itself, never followed; `EEXIST` if `name` exists).
    pub fn link_from(&self, from: &Dir, from_name: &OsStr, name: &OsStr) -> io::Result<()> {
        let (f, n) = (cstr(from_name)?, cstr(name)?);
        // SAFETY: both strings are NUL-terminated and outlive the call; both fds are open.
        check(unsafe {
            libc::linkat(
                from.fd.as_raw_fd(),
                f.as_ptr(),
                self.fd.as_raw_fd(),
                n.as_ptr(),
                0,
            )
        })
        .map(drop)
    }

    /// Renames `from` to `to` within this directory, replacing a file or symlink at `to`
    /// (`EISDIR` if `to` is a directory).
    pub fn rename(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
        let (f, t) = (cstr(from)?, cstr(to)?);
        let fd = self.fd.as_raw_fd();
        // SAFETY: both names are NUL-terminated and outlive the call; the fd is open.
        check(unsafe { libc::renameat(fd, f.as_ptr(), fd, t.as_ptr()) }).map(drop)
    }

    /// Sets this directory's permission bits (on the open fd: no path is followed).
    pub fn chmod(&self, mode: u32) -> io::Result<()> {
        // SAFETY: the fd is open.
        check(unsafe { libc::fchmod(self.fd.as_raw_fd(), mode as libc::mode_t) }).map(drop)
    }

    /// This directory's owner: its uid and gid.
    pub fn owner(&self) -> io::Result<(u32, u32)> {
        // SAFETY: an all-zero `stat` is a valid value for fstat to overwrite.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is a valid out-pointer; the fd is open.
        check(unsafe { libc::fstat(self.fd.as_raw_fd(), &mut st) })?;
        Ok((st.st_uid, st.st_gid))
    }

    /// Gives this directory to `uid` and `gid` (on the open fd: no path is followed).
    pub fn chown(&self, uid: u32, gid: u32) -> io::Result<()> {
        // SAFETY: the fd is open.
        check(unsafe { libc::fchown(self.fd.as_raw_fd(), uid, gid) }).map(drop)
    }

    /// The names in this directory (without `.` and `..`).
    pub fn names(&self) -> io::Result<Vec<OsString>> {
        Ok(crate::dir_entries(std::os::fd::AsFd::as_fd(&self.fd))?
            .into_iter()
            .map(|(name, _)| OsString::from_vec(name.into_bytes()))
            .collect())
    }

    /// Removes `name` and, if it is a directory, everything beneath it; every step relative
    /// to an open directory and never through a symlink. Nothing there is not an error.
    pub fn remove_all(&self, name: &OsStr) -> io::Result<()> {
        self.remove_all_depth(name, 0)
    }

    fn remove_all_depth(&self, name: &OsStr, depth: usize) -> io::Result<()> {
        match self.unlink(name) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {}
            Err(e) => return Err(e),
        }
        if depth >= MAX_DEPTH {
            return Err(io::Error::other(format!(
                "more than {MAX_DEPTH} nested directories"
            )));
        }
        let dir = match self.open_dir(name) {
            Ok(dir) => dir,
            // Swapped for something else meanwhile: remove that instead.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                return self.unlink(name);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(e),
        };
        for child in dir.names()? {
            dir.remove_all_depth(&child, depth + 1)?;
        }
        match self.remove_dir(name) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other,
        }
    }
}

/// The data extents of `file` (`size` bytes): `(offset, length)` from `SEEK_DATA` and
/// `SEEK_HOLE`; the whole file where the file system cannot tell. At most `max`
/// (the last one then runs to the end).
///
/// # Errors
/// As `lseek(2)`.
pub fn data_extents(file: &File, size: u64, max: usize) -> io::Result<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let seek = |at: u64, whence: libc::c_int| -> io::Result<Option<u64>> {
        let at =
            libc::off_t::try_from(at).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
        // SAFETY: lseek on an fd this function's caller holds open; no memory is passed.
        let got = unsafe { libc::lseek(fd, at, whence) };
        if got < 0 {
            let e = io::Error::last_os_error();
            // ENXIO: no data at or after `at`.
            return if e.raw_os_error() == Some(libc::ENXIO) {
                Ok(None)
            } else {
                Err(e)
            };
        }
        Ok(Some(got as u64))
    };
    let mut out = Vec::new();
    let mut at = 0;
    while at < size {
        let data = match seek(at, libc::SEEK_DATA) {
            Ok(Some(data)) => data,
            Ok(None) => break,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) => {
                out.push((at, size - at));
                break;
            }
            Err(e) => return Err(e),
        };
        if data >= size {
            break;
        }
        // The file may change between the two seeks (a writer punching or truncating it):
        // then what is known is only that no data starts before `data`; go on a page later
        // rather than take the rest of the file as data.
        let hole = match seek(data, libc::SEEK_HOLE)? {
            None => break, // truncated meanwhile
            Some(h) if h <= data => {
                at = data.saturating_add(4096);
                continue;
            }
            Some(h) => h.min(size),
        };
        if out.len() + 1 >= max {
            out.push((data, size - data));
            break;
        }
        out.push((data, hole - data));
        at = hole;
    }
    Ok(out)
}

/// How often one step is retried when the directory changes under it (another program
/// swapping a directory and a symlink, say) before giving up.
pub const ATTEMPTS: usize = 16;

/// The error when a step was retried [`ATTEMPTS`] times because the directory kept changing.
pub fn changed_meanwhile() -> io::Error {
    io::Error::other("it kept changing while files were copied back")
}

/// The uid and gid that files written back get (`None`: this process's own).
pub type Owner = Option<(u32, u32)>;

/// The directory `name` in `parent`, created if missing (and then given to `owner`); a
/// file or symlink there is replaced (the guest's directory wins, but never by following a
/// link).
pub fn ensure_dir(parent: &Dir, name: &OsStr, owner: Owner) -> io::Result<Dir> {
    let mut made = false;
    for _ in 0..ATTEMPTS {
        match parent.open_dir(name) {
            Ok(dir) => {
                if made && let Some((uid, gid)) = owner {
                    dir.chown(uid, gid)?;
                }
                return Ok(dir);
            }
            Err(e) => match e.raw_os_error() {
                Some(libc::ENOENT) => match parent.mkdir(name) {
                    Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(e),
                    made_now => made = made_now.is_ok(),
                },
                Some(libc::ELOOP | libc::ENOTDIR) => match parent.unlink(name) {
                    Err(e) if !matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EISDIR)) => {
                        return Err(e);
                    }
                    _ => {}
                },
                _ => return Err(e),
            },
        }
    }
    Err(changed_meanwhile())
}

/// Puts the new file `tmp` in `parent` in the place of `name`: a symlink there is
/// replaced, never followed; a directory there is removed first.
pub fn rename_into_place(parent: &Dir, tmp: &OsStr, name: &OsStr) -> io::Result<()> {
    for _ in 0..ATTEMPTS {
        match parent.rename(tmp, name) {
            Ok(()) => return Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EISDIR | libc::ENOTEMPTY | libc::EEXIST)
                ) =>
            {
                parent.remove_all(name)?;
            }
            Err(e) => return Err(e),
        }
    }
    Err(changed_meanwhile())
}

/// A part file being written: removed when dropped, unless `name` was taken (it was renamed
/// into place).
pub struct Part<'a> {
    /// The directory holding the part file.
    pub dir: &'a Dir,
    /// The part file's name; `None` once it was renamed into place.
    pub name: Option<&'a OsStr>,
}

impl Drop for Part<'_> {
    fn drop(&mut self) {
        if let Some(name) = self.name {
            let _ = self.dir.unlink(name);
        }
    }
}

/// Mode bits a file or directory written back gets: no set-id or sticky bits, no write for
/// group or others (a host workspace is not made world-writable by a guest), and the owner
/// can always read and write it (and enter a directory).
pub fn host_mode(guest_mode: u32, dir: bool) -> u32 {
    (guest_mode & 0o755) | if dir { 0o700 } else { 0o600 }
}
