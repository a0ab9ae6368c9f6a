//! The workspace's write layer: how a run's writes to a host workspace are capped.
//!
//! A sandbox never writes the host workspace directly. The jail mounts `/workspace` as an
//! overlay: the host directory is its lower layer (read through, never written by the
//! sandbox) and its upper layer is a tmpfs of the jail's own, made with `size=` and
//! `nr_inodes=` caps (`jail::make_layer`, sizes from `plan::layer_caps`). Everything the
//! program creates, changes or deletes lands in that tmpfs, so the kernel itself refuses
//! (`ENOSPC`) the write or the file past the cap, whatever the program does.
//!
//! The host holds an fd to the tmpfs (opened through the jail's outer process, which the
//! sandbox cannot reach) and copies the layer's changes into the host directory with
//! [`Layer::apply`]: before each tool call (so host tools see the program's files), at the
//! end of each exec and when the sandbox ends. The layer is untrusted input: it is read
//! relative to directory fds and never through a symlink, and written into the host
//! directory with [`agentkernel_core::fsat`] (new file renamed into place, modes without
//! set-id or group/other write, the directory's owner when root):
//! - a regular file is copied (skipped when the host file has its size, mtime and mode:
//!   copied before);
//! - a directory is created; an *opaque* one (`user.overlay.opaque`: the program removed the
//!   directory and made a new one) first loses what the host has and the layer has not;
//! - a whiteout (a character device 0:0) deletes the host entry;
//! - a symlink is copied only when its target descends
//!   ([`agentkernel_core::symlink_target_descends`]); one leaving the workspace is not, and
//!   the host entry of that name goes (the program replaced it);
//! - FIFOs, sockets and devices are not copied.
//!
//! The layer lasts as long as the sandbox (an overlay's upper layer cannot be emptied while
//! mounted), so the caps hold over a sandbox's life: a session's runs share them.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use agentkernel_core::fsat::{Dir, Kind, Owner, Part, ensure_dir, host_mode, rename_into_place};

/// Directories nested deeper than this in the layer are not copied back (each level holds
/// two fds while it is copied).
pub(crate) const MAX_DEPTH: usize = 128;

/// Bytes copied per read.
const CHUNK: usize = 1 << 20;

/// Zero blocks of this size are skipped when copying, so holes stay holes.
const ZERO_BLOCK: usize = 4096;

/// Why sandboxes of this process got no write layer, when one did not (for `doctor`).
static UNAVAILABLE: Mutex<Option<String>> = Mutex::new(None);

/// Records (and logs, once) that a sandbox's workspace got no write layer and why.
pub(crate) fn unavailable(why: &str) {
    let mut last = UNAVAILABLE.lock().unwrap_or_else(|e| e.into_inner());
    if last.is_none() {
        tracing::warn!(%why, "no write layer for the workspace");
    }
    *last = Some(why.to_owned());
}

/// Why a sandbox of this process got no write layer, if one did not.
pub(crate) fn unavailable_reason() -> Option<String> {
    UNAVAILABLE.lock().ok().and_then(|l| l.clone())
}

/// A sandbox's workspace write layer, as the host holds it.
#[derive(Debug)]
pub(crate) struct Layer {
    /// The tmpfs root (for its usage).
    root: OwnedFd,
    /// Its `upper` directory: the overlay's upper layer.
    upper: Dir,
    /// Blocks and inodes the tmpfs used right after the jail started.
    baseline: (u64, u64),
    /// Its caps: bytes and inodes.
    caps: (u64, u64),
    /// One apply at a time (tool calls may come concurrently).
    applying: Mutex<()>,
}

/// What one [`Layer::apply`] did.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    /// Files, directories and links written to the host.
    pub written: u64,
    /// Host entries deleted.
    pub removed: u64,
    /// Workspace paths not copied back, with why.
    pub skipped: Vec<(PathBuf, &'static str)>,
}

impl Applied {
    /// A line for the program's stderr when something was not copied back.
    pub(crate) fn note(&self) -> Option<String> {
        let (first, why) = self.skipped.first()?;
        let more = match self.skipped.len() {
            1 => String::new(),
            n => format!(" and {} more", n - 1),
        };
        Some(format!(
            "agentkernel: /workspace/{} was not copied to the host ({why}){more}\n",
            first.display()
        ))
    }
}

impl Layer {
    /// Opens the write layer that the jail's outer process `outer_pid` holds on
    /// `jail::LAYER_FD`; `caps` are its size and inode caps.
    pub(crate) fn open(outer_pid: u32, caps: (u64, u64)) -> io::Result<Layer> {
        let path = format!("/proc/{outer_pid}/fd/{}", crate::jail::LAYER_FD);
        let c =
            std::ffi::CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: `c` is NUL-terminated and outlives the call.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd the kernel just returned, owned by nobody else.
        let root = unsafe { OwnedFd::from_raw_fd(fd) };
        let upper = Dir::from_fd(root.try_clone()?).open_dir(OsStr::new("upper"))?;
        let mut layer = Layer {
            root,
            upper,
            baseline: (0, 0),
            caps,
            applying: Mutex::new(()),
        };
        layer.baseline = layer.used()?;
        Ok(layer)
    }

    /// Blocks and inodes the tmpfs uses now.
    fn used(&self) -> io::Result<(u64, u64)> {
        let st = nix::sys::statvfs::fstatvfs(&self.root).map_err(io::Error::from)?;
        Ok((
            st.blocks().saturating_sub(st.blocks_free()),
            st.files().saturating_sub(st.files_free()),
        ))
    }

    /// Whether the program has written anything to the workspace since the jail started.
    pub(crate) fn is_used(&self) -> bool {
        self.used().map_or(true, |now| now != self.baseline)
    }

    /// A note for the program's stderr when the layer is full (a write was, or the next
    /// one will be, refused with `ENOSPC`).
    pub(crate) fn full_note(&self) -> Option<String> {
        let st = nix::sys::statvfs::fstatvfs(&self.root).ok()?;
        let full_bytes = st.blocks_available() == 0;
        let full_files = st.files_free() == 0;
        if !full_bytes && !full_files {
            return None;
        }
        let (bytes, files) = self.caps;
        Some(format!(
            "agentkernel: the workspace's write cap is reached ({}): a sandbox may add or change at most {} MiB and {} files, directories and links in a host workspace over its life (`No space left on device` past it); what it wrote is copied to the host. Start a new sandbox (or session) to write more\n",
            match (full_bytes, full_files) {
                (true, true) => "bytes and files",
                (true, false) => "bytes",
                _ => "files",
            },
            bytes >> 20,
            files.saturating_sub(3)
        ))
    }

    /// Copies what the layer holds into the host directory `host` (see the module doc).
    pub(crate) fn apply(&self, host: &File) -> io::Result<Applied> {
        let _one = self.applying.lock().unwrap_or_else(|e| e.into_inner());
        let host = Dir::from_fd(OwnedFd::from(host.try_clone()?));
        let owner: Owner = if agentkernel_core::hostdirs::euid() == 0 {
            Some(host.owner()?)
        } else {
            None
        };
        let mut out = Applied::default();
        let mut rel = PathBuf::new();
        apply_dir(&self.upper, &host, owner, &mut rel, 0, &mut out)?;
        Ok(out)
    }
}

/// `user.overlay.opaque` is `y`: the directory replaced the host's of that name.
fn is_opaque(dir: &Dir) -> io::Result<bool> {
    Ok(dir.xattr(c"user.overlay.opaque")?.as_deref() == Some(b"y"))
}

/// Whether `e` says the entry vanished or changed kind meanwhile (the program is still
/// running): skipped this time, copied by the next apply.
fn gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::EINVAL)
    )
}

fn apply_dir(
    upper: &Dir,
    host: &Dir,
    owner: Owner,
    rel: &mut PathBuf,
    depth: usize,
    out: &mut Applied,
) -> io::Result<()> {
    let names = upper.names()?;
    if depth > 0 && is_opaque(upper)? {
        let keep: HashSet<&OsString> = names.iter().collect();
        for name in host.names()? {
            if !keep.contains(&name) {
                host.remove_all(&name)?;
                out.removed += 1;
            }
        }
    }
    for name in names {
        let Some(st) = upper.stat(&name)? else {
            continue;
        };
        rel.push(&name);
        let done = apply_entry(upper, host, &name, &st, owner, rel, depth, out);
        rel.pop();
        done?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn apply_entry(
    upper: &Dir,
    host: &Dir,
    name: &OsStr,
    st: &agentkernel_core::fsat::Stat,
    owner: Owner,
    rel: &mut PathBuf,
    depth: usize,
    out: &mut Applied,
) -> io::Result<()> {
    match st.file_type {
        libc::S_IFCHR if st.rdev == 0 => {
            // A whiteout: the program deleted this.
            host.remove_all(name)?;
            out.removed += 1;
        }
        libc::S_IFDIR => {
            if depth + 1 >= MAX_DEPTH {
                out.skipped
                    .push((rel.clone(), "directories nested too deep"));
                return Ok(());
            }
            let sub = match upper.open_dir(name) {
                Ok(d) => d,
                Err(e) if gone(&e) => return Ok(()),
                Err(e) => return Err(e),
            };
            let made = ensure_dir(host, name, owner)?;
            made.chmod(host_mode(st.mode, true))?;
            out.written += 1;
            apply_dir(&sub, &made, owner, rel, depth + 1, out)?;
        }
        libc::S_IFREG => copy_file(upper, host, name, st, owner, out)?,
        libc::S_IFLNK => {
            let target = match upper.read_link(name) {
                Ok(t) => t,
                Err(e) if gone(&e) => return Ok(()),
                Err(e) => return Err(e),
            };
            if agentkernel_core::symlink_target_descends(Path::new(&target)) {
                let tmp = part_name();
                host.symlink(&target, &tmp)?;
                let mut part = Part {
                    dir: host,
                    name: Some(&tmp),
                };
                if let Some((uid, gid)) = owner {
                    host.chown_link(&tmp, uid, gid)?;
                }
                rename_into_place(host, &tmp, name)?;
                part.name = None;
                out.written += 1;
            } else {
                host.remove_all(name)?;
                out.skipped
                    .push((rel.clone(), "a symlink leaving the workspace"));
            }
        }
        _ => out
            .skipped
            .push((rel.clone(), "a FIFO, socket or device is never copied")),
    }
    Ok(())
}

fn part_name() -> OsString {
    OsString::from(format!(
        ".agentkernel-{}.part",
        uuid::Uuid::new_v4().simple()
    ))
}

/// Copies the layer's regular file `name` over the host's, unless the host file has its
/// size, mtime and (host) mode: copied before, or only opened for writing (an overlay copies
/// a file up when it is opened to write).
fn copy_file(
    upper: &Dir,
    host: &Dir,
    name: &OsStr,
    st: &agentkernel_core::fsat::Stat,
    owner: Owner,
    out: &mut Applied,
) -> io::Result<()> {
    if let Some(h) = host.stat(name)?
        && h.kind == Kind::File
        && h.size == st.size
        && h.mtime == st.mtime
        && h.mode == host_mode(st.mode, false)
    {
        return Ok(());
    }
    let mut src = match upper.open_file(name) {
        Ok(f) => f,
        Err(e) if gone(&e) => return Ok(()),
        Err(e) => return Err(e),
    };
    let meta = src.metadata()?;
    let tmp = part_name();
    let dst = host.create_new(&tmp)?;
    let mut part = Part {
        dir: host,
        name: Some(&tmp),
    };
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for (i, block) in buf[..n].chunks(ZERO_BLOCK).enumerate() {
            if block.iter().any(|&b| b != 0) {
                dst.write_all_at(block, at + (i * ZERO_BLOCK) as u64)?;
            }
        }
        at += n as u64;
    }
    dst.set_len(at)?;
    // fchmod, fchown and futimens on the open file: no path is followed.
    dst.set_permissions(std::fs::Permissions::from_mode(host_mode(st.mode, false)))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&dst, Some(uid), Some(gid))?;
    }
    if let Ok(mtime) = meta.modified() {
        dst.set_times(std::fs::FileTimes::new().set_modified(mtime))?;
    }
    rename_into_place(host, &tmp, name)?;
    part.name = None;
    out.written += 1;
    Ok(())
}
