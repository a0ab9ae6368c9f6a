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
//! set-id or group/other write, the directory's owner when root).
//!
//! Each apply copies only what changed since the last one. The layer remembers, per name,
//! how the entry looked when it was handled (inode, change time, size, mode: [`Stamp`]) and
//! which host inode it became, so:
//! - a regular file is copied when it is new or changed (its data extents only: holes stay
//!   holes); a file with several names is copied once per apply and its other names are
//!   hard links to that copy, as in the layer (no name multiplies its bytes on the host);
//! - a directory is created; its mode is set when the program set it; an *opaque* one
//!   (`user.overlay.opaque`: the program removed the directory and made a new one) first
//!   loses what the host has and the layer has not, once;
//! - a whiteout (a character device 0:0) deletes the host entry, once;
//! - a name copied before and gone from the layer since is deleted from the host when the
//!   host still has it as copied (an overlay leaves no whiteout in a directory the program
//!   made, so without this a program could copy files out, delete them, and make more);
//! - a host tool's change to a file the program has not touched since is kept;
//! - a symlink is copied only when its target descends
//!   ([`agentkernel_core::symlink_target_descends`]); one leaving the workspace is not, and
//!   the host entry of that name goes (the program replaced it);
//! - FIFOs, sockets and devices are not copied;
//! - an entry that cannot be copied is skipped and counted (the first one is named in the
//!   program's stderr), never the rest of the apply.
//!
//! Records follow names, as a tree: a directory renamed in the layer is copied under its
//! new name and its old host copy is deleted whole. One apply writes at most the layer's
//! caps (bytes and entries), whatever the program moves while it runs; a file is read at
//! most its allocated size, and all-zero chunks stay holes. So the host workspace grows by
//! at most what the layer holds: its caps bound the run.
//!
//! The layer lasts as long as the sandbox (an overlay's upper layer cannot be emptied while
//! mounted), so the caps hold over a sandbox's life: a session's runs share them.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use agentkernel_core::fsat::{
    Dir, Kind, Owner, Part, Stat, ensure_dir, host_mode, rename_into_place,
};

/// Directories nested deeper than this in the layer are not copied back (each level holds
/// two fds while it is copied).
pub(crate) const MAX_DEPTH: usize = 128;

/// Bytes copied per read.
const CHUNK: usize = 1 << 20;

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
    /// What the applies so far copied; held by one apply at a time (tool calls may come
    /// concurrently).
    copied: Mutex<Copied>,
}

/// What one [`Layer::apply`] did.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    /// Files, directories and links written to the host.
    pub written: u64,
    /// Host entries deleted.
    pub removed: u64,
    /// Workspace paths not copied back (or not deleted).
    pub skipped: u64,
    /// The first of them, with why.
    pub first_skipped: Vec<(PathBuf, String)>,
}

impl Applied {
    /// A line for the program's stderr when something was not copied back.
    pub(crate) fn note(&self) -> Option<String> {
        let (first, why) = self.first_skipped.first()?;
        let more = match self.skipped {
            0 | 1 => String::new(),
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
            copied: Mutex::new(Copied::default()),
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

    /// Copies what the layer changed since the last apply into the host directory `host`
    /// (see the module doc). An entry that cannot be copied is skipped (and said in the
    /// result), never the rest; `Err` only when the host directory cannot be used at all.
    pub(crate) fn apply(&self, host: &File) -> io::Result<Applied> {
        let mut copied = self.copied.lock().unwrap_or_else(|e| e.into_inner());
        let host = Dir::from_fd(OwnedFd::from(host.try_clone()?));
        let owner: Owner = if agentkernel_core::hostdirs::euid() == 0 {
            Some(host.owner()?)
        } else {
            None
        };
        let mut walk = Walk {
            host_root: &host,
            owner,
            rel: PathBuf::new(),
            linked: HashMap::new(),
            budget: self.caps,
            orphans: Vec::new(),
            out: Applied::default(),
        };
        walk.forget_orphans(std::mem::take(&mut copied.orphans));
        let before = std::mem::take(&mut copied.root);
        copied.root = walk.dir(&self.upper, &host, 0, false, before);
        copied.orphans = std::mem::take(&mut walk.orphans);
        Ok(walk.out)
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

/// What an apply made of one name of the layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum What {
    /// Copied as a regular file.
    File,
    /// Made as a directory.
    Dir,
    /// Copied as a symlink.
    Link,
    /// A whiteout: the host entry was deleted.
    Whiteout,
    /// Not copied (a FIFO, a socket, a symlink leaving the workspace, too deep).
    NotCopied,
}

/// The records of one directory: its names an apply handled, and how.
type Names = HashMap<OsString, Stamp>;

/// How a name of the layer looked when an apply handled it, and what it became on the host;
/// a directory's own names hang below it (records follow names, not inodes: a directory
/// renamed in the layer is a new name whose host copy starts empty, and the old name's
/// whole host copy is forgotten).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    what: What,
    /// The layer entry's inode, change time, size and mode then.
    ino: u64,
    ctime: (i64, i64),
    size: u64,
    mode: u32,
    /// The inode of the host entry written for it (0: none was written).
    host_ino: u64,
    /// A directory's records.
    children: Names,
}

impl Stamp {
    fn of(st: &Stat, what: What, host_ino: u64) -> Stamp {
        Stamp {
            what,
            ino: st.ino,
            ctime: st.ctime,
            size: st.size,
            mode: st.mode,
            host_ino,
            children: Names::new(),
        }
    }

    /// Whether the layer's entry `st` is still what this stamp saw (nothing to copy). A
    /// directory's change time moves with its entries: its inode and mode are what count.
    fn unchanged(&self, st: &Stat) -> bool {
        self.ino == st.ino
            && self.mode == st.mode
            && (self.what == What::Dir || (self.ctime == st.ctime && self.size == st.size))
    }
}

/// What a layer's applies remember between them: the records of the layer's root
/// ([`Stamp`]s, a tree), and the host copies an apply could not delete yet. With them an
/// apply copies only what changed since the last one (a host tool's change to a file the
/// program no longer touches is kept), applies a whiteout once, and deletes from the host
/// what it copied there and the program deleted or renamed since (an overlay leaves no
/// whiteout in a directory the program made).
#[derive(Debug, Default)]
pub(crate) struct Copied {
    root: Names,
    /// Host copies of names gone from the layer that could not be deleted yet (path from
    /// the workspace's root): retried by the next apply.
    orphans: Vec<(PathBuf, Stamp)>,
}

/// Most host copies waiting to be deleted that a layer remembers (the rest are dropped).
const MAX_ORPHANS: usize = 10_000;

/// Most skipped paths an apply keeps (the rest are counted).
const SKIPPED_KEPT: usize = 1;

/// One apply's walk over the layer.
struct Walk<'a> {
    /// The host workspace's root.
    host_root: &'a Dir,
    owner: Owner,
    /// The path being handled, from the workspace's root.
    rel: PathBuf,
    /// Files with more than one name copied by this apply: layer inode → the path of the
    /// name copied and the host inode it became (its other names are linked to it).
    linked: HashMap<u64, (PathBuf, u64)>,
    /// What this apply may still write: bytes and entries (the layer's caps: one apply
    /// never writes more than the layer can hold, whatever the program moves meanwhile).
    budget: (u64, u64),
    orphans: Vec<(PathBuf, Stamp)>,
    out: Applied,
}

/// The error when an apply used up its budget.
fn budget_spent() -> io::Error {
    io::Error::other(
        "this copy wrote as much as the workspace's cap holds (the program kept changing files while it ran); the rest is copied next time",
    )
}

impl Walk<'_> {
    /// Records that the current path was not copied, and why.
    fn skip(&mut self, why: impl std::fmt::Display) {
        self.out.skipped += 1;
        if self.out.first_skipped.len() < SKIPPED_KEPT {
            self.out
                .first_skipped
                .push((self.rel.clone(), why.to_string()));
        }
    }

    /// Charges one host entry written against the budget.
    fn charge_entry(&mut self) -> io::Result<()> {
        self.budget.1 = self.budget.1.checked_sub(1).ok_or_else(budget_spent)?;
        self.out.written += 1;
        Ok(())
    }

    /// Copies the layer's directory `upper` into the host directory `host`, given the
    /// records of its last copy (`before`); answers its new records. `prune`: it is opaque
    /// and new, so what the host has and it has not goes first.
    fn dir(
        &mut self,
        upper: &Dir,
        host: &Dir,
        depth: usize,
        prune: bool,
        mut before: Names,
    ) -> Names {
        let names = match upper.names() {
            Ok(names) => names,
            Err(e) => {
                self.skip(format_args!("could not list it: {e}"));
                return before;
            }
        };
        if prune {
            let keep: HashSet<&OsString> = names.iter().collect();
            match host.names() {
                Ok(host_names) => {
                    for name in host_names.iter().filter(|n| !keep.contains(n)) {
                        self.rel.push(name);
                        match host.remove_all(name) {
                            Ok(()) => self.out.removed += 1,
                            Err(e) => self.skip(format_args!("could not delete it: {e}")),
                        }
                        self.rel.pop();
                    }
                }
                Err(e) => self.skip(format_args!("could not list the host's copy: {e}")),
            }
        }
        let mut now = Names::with_capacity(names.len());
        for name in names {
            let mut prev = before.remove(&name);
            self.rel.push(&name);
            let done = match upper.stat(&name) {
                Ok(Some(st)) => self.entry(upper, host, &name, &st, &mut prev, depth),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            };
            match done {
                Ok(Some(stamp)) => {
                    now.insert(name, stamp);
                }
                // Gone meanwhile: forgotten below, like a name no longer listed.
                Ok(None) => {
                    if let Some(prev) = prev {
                        before.insert(name, prev);
                    }
                }
                Err(e) => {
                    self.skip(e);
                    // Still known, to be retried (or forgotten) by the next apply.
                    if let Some(prev) = prev {
                        now.insert(name, prev);
                    }
                }
            }
            self.rel.pop();
        }
        // Copied before and gone from the layer since: deleted where no whiteout says so.
        for (name, stamp) in before {
            self.rel.push(&name);
            self.forget(host, &name, stamp);
            self.rel.pop();
        }
        now
    }

    /// Handles one name of the layer; its stamp, or `None` when it vanished meanwhile.
    /// `prev` (the last apply's record) is taken when it is used up.
    fn entry(
        &mut self,
        upper: &Dir,
        host: &Dir,
        name: &OsStr,
        st: &Stat,
        prev: &mut Option<Stamp>,
        depth: usize,
    ) -> io::Result<Option<Stamp>> {
        let fresh = prev.as_ref().is_some_and(|p| p.unchanged(st));
        if fresh && st.file_type != libc::S_IFDIR {
            return Ok(prev.take());
        }
        // A new entry under an old name: what the old one left on the host goes first
        // (when the host still has it as written).
        if prev.as_ref().is_some_and(|p| p.ino != st.ino)
            && let Some(old) = prev.take()
        {
            self.forget(host, name, old);
        }
        let stamp = match st.file_type {
            libc::S_IFCHR if st.rdev == 0 => {
                // A whiteout: the program deleted this.
                host.remove_all(name)?;
                self.out.removed += 1;
                Stamp::of(st, What::Whiteout, 0)
            }
            libc::S_IFDIR => return self.directory(upper, host, name, st, prev, fresh, depth),
            libc::S_IFREG => match self.file(upper, host, name)? {
                Some(stamp) => stamp,
                None => return Ok(None),
            },
            libc::S_IFLNK => {
                let target = match upper.read_link(name) {
                    Ok(t) => t,
                    Err(e) if gone(&e) => return Ok(None),
                    Err(e) => return Err(e),
                };
                if agentkernel_core::symlink_target_descends(Path::new(&target)) {
                    self.charge_entry()?;
                    let tmp = part_name();
                    host.symlink(&target, &tmp)?;
                    let part = Part {
                        dir: host,
                        name: Some(&tmp),
                    };
                    if let Some((uid, gid)) = self.owner {
                        host.chown_link(&tmp, uid, gid)?;
                    }
                    let host_ino = host.stat(&tmp)?.map_or(0, |h| h.ino);
                    put_in_place(part, name)?;
                    Stamp::of(st, What::Link, host_ino)
                } else {
                    host.remove_all(name)?;
                    self.skip("a symlink leaving the workspace");
                    Stamp::of(st, What::NotCopied, 0)
                }
            }
            _ => {
                self.skip("a FIFO, socket or device is never copied");
                Stamp::of(st, What::NotCopied, 0)
            }
        };
        Ok(Some(stamp))
    }

    /// Handles a directory of the layer (see [`Walk::entry`]).
    #[allow(clippy::too_many_arguments)]
    fn directory(
        &mut self,
        upper: &Dir,
        host: &Dir,
        name: &OsStr,
        st: &Stat,
        prev: &mut Option<Stamp>,
        fresh: bool,
        depth: usize,
    ) -> io::Result<Option<Stamp>> {
        if depth + 1 >= MAX_DEPTH {
            if !fresh {
                self.skip("directories nested too deep");
            }
            return Ok(Some(Stamp::of(st, What::NotCopied, 0)));
        }
        let sub = match upper.open_dir(name) {
            Ok(d) => d,
            Err(e) if gone(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let existed = host.stat(name)?;
        if fresh && existed.is_some_and(|h| h.kind != Kind::Dir) {
            // A host tool put something else in the place of a directory the program no
            // longer changes: the tool's entry stays (and the records, for later).
            return Ok(prev.take());
        }
        let existed = existed.filter(|h| h.kind == Kind::Dir);
        if existed.is_none() {
            self.charge_entry()?;
        }
        let made = ensure_dir(host, name, self.owner)?;
        let host_ino = made.stat(OsStr::new("."))?.map_or(0, |h| h.ino);
        if !fresh {
            // A directory only copied up keeps the host's mode; one the program made or
            // chmodded gets its own.
            let kept = match (prev.as_ref(), existed) {
                (Some(p), _) => p.mode == st.mode,
                (None, Some(h)) => h.mode == st.mode,
                (None, None) => false,
            };
            if !kept {
                made.chmod(host_mode(st.mode, true))?;
            }
        }
        let prune = prev.is_none() && is_opaque(&sub)?;
        let before = prev.take().map(|p| p.children).unwrap_or_default();
        let mut stamp = Stamp::of(st, What::Dir, host_ino);
        stamp.children = self.dir(&sub, &made, depth + 1, prune, before);
        Ok(Some(stamp))
    }

    /// Deletes from the host what an earlier apply wrote for `name` (`stamp`), where the
    /// host still has it as written: a file or link of that host inode; a directory's
    /// recorded entries, then the directory itself if nothing else is left in it. What
    /// cannot be deleted now waits for the next apply ([`Copied::orphans`]).
    fn forget(&mut self, host: &Dir, name: &OsStr, mut stamp: Stamp) {
        let done = match stamp.what {
            What::File | What::Link => match host.stat(name) {
                Ok(Some(h)) if h.ino == stamp.host_ino => host.unlink(name).map(|()| {
                    self.out.removed += 1;
                }),
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            },
            What::Dir => match host.open_dir(name) {
                Ok(sub) => match sub.stat(OsStr::new(".")) {
                    Ok(Some(h)) if h.ino == stamp.host_ino => {
                        // Each child is forgotten (or waits as an orphan) on its own: a
                        // directory that then waits needs none of its records.
                        for (child, s) in std::mem::take(&mut stamp.children) {
                            self.rel.push(&child);
                            self.forget(&sub, &child, s);
                            self.rel.pop();
                        }
                        match host.remove_dir(name) {
                            Ok(()) => {
                                self.out.removed += 1;
                                Ok(())
                            }
                            Err(e)
                                if matches!(
                                    e.raw_os_error(),
                                    Some(libc::ENOTEMPTY | libc::ENOENT)
                                ) =>
                            {
                                Ok(())
                            }
                            Err(e) => Err(e),
                        }
                    }
                    // Not the directory written: nothing of ours to delete.
                    Ok(_) => Ok(()),
                    Err(e) => Err(e),
                },
                // Gone, or something else now: nothing of ours to delete.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
                    ) =>
                {
                    Ok(())
                }
                Err(e) => Err(e),
            },
            What::Whiteout | What::NotCopied => Ok(()),
        };
        if let Err(e) = done {
            self.skip(format_args!("could not delete its host copy yet: {e}"));
            if self.orphans.len() < MAX_ORPHANS {
                self.orphans.push((self.rel.clone(), stamp));
            }
        }
    }

    /// Retries deleting host copies an earlier apply could not delete.
    fn forget_orphans(&mut self, orphans: Vec<(PathBuf, Stamp)>) {
        for (path, stamp) in orphans {
            let Some((dir, last)) = self.host_dir_of(&path) else {
                continue; // its directory is gone: so is the copy
            };
            let last = last.to_owned();
            self.rel = path.clone();
            self.forget(&dir, &last, stamp);
        }
        self.rel = PathBuf::new();
    }

    /// Copies the layer's regular file `name` over the host's; its stamp (taken before its
    /// bytes are read, so a write meanwhile is copied by the next apply), or `None` when it
    /// vanished. A file with several names is copied once per apply, its other names linked.
    fn file(&mut self, upper: &Dir, host: &Dir, name: &OsStr) -> io::Result<Option<Stamp>> {
        let src = match upper.open_file(name) {
            Ok(f) => f,
            Err(e) if gone(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta = src.metadata()?;
        let st = Stat {
            kind: Kind::File,
            mode: meta.mode() & 0o7777,
            size: meta.size(),
            mtime: meta.modified().ok(),
            file_type: libc::S_IFREG,
            rdev: 0,
            ino: meta.ino(),
            nlink: meta.nlink(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        };
        if st.nlink > 1
            && let Some((path, host_ino)) = self.linked.get(&st.ino).cloned()
            && let Some(stamp) = self.link(host, name, &path, host_ino, &st)
        {
            return Ok(Some(stamp));
        }
        self.charge_entry()?;
        let tmp = part_name();
        let dst = host.create_new(&tmp)?;
        let part = Part {
            dir: host,
            name: Some(&tmp),
        };
        // At most what the file holds (plus a chunk): its extents cannot make the copy read
        // more than that, however the program punches and refills them meanwhile.
        let mut allowed = (meta.blocks() * 512).saturating_add(CHUNK as u64);
        for (at, len) in agentkernel_core::fsat::data_extents(&src, st.size, usize::MAX)? {
            let copied = copy_range(&src, &dst, at, len, &mut allowed, &mut self.budget.0)?;
            if copied < len && allowed == 0 {
                return Err(io::Error::other(
                    "it changed while it was copied; it is copied again next time",
                ));
            }
        }
        dst.set_len(st.size)?;
        // fchmod, fchown and futimens on the open file: no path is followed.
        dst.set_permissions(std::fs::Permissions::from_mode(host_mode(st.mode, false)))?;
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::fchown(&dst, Some(uid), Some(gid))?;
        }
        if let Some(mtime) = st.mtime {
            dst.set_times(std::fs::FileTimes::new().set_modified(mtime))?;
        }
        let host_ino = dst.metadata()?.ino();
        put_in_place(part, name)?;
        if st.nlink > 1 {
            self.linked.insert(st.ino, (self.rel.clone(), host_ino));
        }
        let mut stamp = Stamp::of(&st, What::File, host_ino);
        // Written while it was copied: a stamp that matches nothing, so the next apply
        // copies it again. (A write after this check that leaves size and change time as
        // they were is missed only where tmpfs change times are coarser than the write
        // rate: before Linux 6.13's fine-grained timestamps.)
        let after = src.metadata()?;
        if (after.ctime(), after.ctime_nsec()) != st.ctime || after.size() != st.size {
            stamp.ctime = (i64::MIN, 0);
        }
        Ok(Some(stamp))
    }

    /// Makes `name` a host link to the copy this apply already made of the same layer file
    /// (at `path`, host inode `host_ino`); `None` when that copy is no longer there as made.
    fn link(
        &mut self,
        host: &Dir,
        name: &OsStr,
        path: &Path,
        host_ino: u64,
        st: &Stat,
    ) -> Option<Stamp> {
        let (dir, first) = self.host_dir_of(path)?;
        if dir.stat(first).ok()??.ino != host_ino {
            return None;
        }
        self.charge_entry().ok()?;
        let tmp = part_name();
        host.link_from(&dir, first, &tmp).ok()?;
        let part = Part {
            dir: host,
            name: Some(&tmp),
        };
        put_in_place(part, name).ok()?;
        Some(Stamp::of(st, What::File, host_ino))
    }

    /// The host directory holding `path` (from the workspace's root) and its last name,
    /// opened one name at a time, never through a symlink.
    fn host_dir_of<'p>(&self, path: &'p Path) -> Option<(Dir, &'p OsStr)> {
        let last = path.file_name()?;
        let mut dir = self.host_root.try_clone().ok()?;
        for part in path.parent()?.iter() {
            dir = dir.open_dir(part).ok()?;
        }
        Some((dir, last))
    }
}

/// Renames the part file into `name`'s place (the part is then no longer removed).
fn put_in_place(mut part: Part<'_>, name: &OsStr) -> io::Result<()> {
    let tmp = part.name.expect("a part file not yet in place");
    rename_into_place(part.dir, tmp, name)?;
    part.name = None;
    Ok(())
}

/// Copies `len` bytes at `at` from `src` to the same place in `dst`, a chunk at a time (a
/// file shrinking meanwhile ends it early); all-zero chunks are not written (they stay
/// holes). Reads at most `allowed` bytes and writes at most `budget`, taking what it used
/// from both; answers how many bytes it read.
fn copy_range(
    src: &File,
    dst: &File,
    at: u64,
    len: u64,
    allowed: &mut u64,
    budget: &mut u64,
) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK.min(usize::try_from(len).unwrap_or(CHUNK)).max(1)];
    let (mut pos, end) = (at, at.saturating_add(len.min(*allowed)));
    while pos < end {
        let want = buf
            .len()
            .min(usize::try_from(end - pos).unwrap_or(usize::MAX));
        let n = match src.read_at(&mut buf[..want], pos) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let chunk = &buf[..n];
        if chunk.iter().any(|&b| b != 0) {
            *budget = budget.checked_sub(n as u64).ok_or_else(budget_spent)?;
            dst.write_all_at(chunk, pos)?;
        }
        pos += n as u64;
    }
    let read = pos - at;
    *allowed = allowed.saturating_sub(read);
    Ok(read)
}

fn part_name() -> OsString {
    OsString::from(format!(
        ".agentkernel-{}.part",
        uuid::Uuid::new_v4().simple()
    ))
}
