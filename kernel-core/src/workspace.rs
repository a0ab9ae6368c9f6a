//! Named, persistent workspaces: directories under the data dir, mounted at `/workspace`.
//!
//! `Workspaces::default_root()` is `$AGENTKERNEL_DATA_DIR/workspaces`, else
//! `$XDG_DATA_HOME/agentkernel/workspaces`, else `~/.local/share/agentkernel/workspaces`.
//! Names are short and safe (`[A-Za-z0-9][A-Za-z0-9._-]{0,63}`), so no name can reach outside
//! the root. A workspace is created on first use and lives until deleted.
//!
//! The quota is checked between runs: a run may finish above it (each single file is capped
//! at the quota by the file-size limit), after which [`Workspace::check_quota`] refuses
//! further runs until files are removed. Nothing is deleted automatically.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::exec::LimitKind;

/// Empties `dir` without removing it, for a sandbox reset (its private `/tmp`, a private
/// workspace). Symlinks are removed, never followed. Any failure is an error: a reset that
/// leaves files behind is not a reset.
pub fn empty_dir(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Exclusive use of a workspace directory by one running program, across sandboxes,
/// backends and processes: an `flock` on the directory itself, taken by every backend for
/// the whole of an exec (including the microVM's copies in and out) and released when
/// dropped. Two programs never write one workspace at the same time; the second waits.
///
/// The lock is advisory for other host processes (they are not sandboxes); what protects
/// the host from a workspace changing under it is that every host-side file operation on a
/// workspace is fd-relative and never follows a symlink.
#[derive(Debug)]
pub struct WorkspaceLock {
    _dir: std::fs::File,
}

impl WorkspaceLock {
    /// [`WorkspaceLock::acquire`] when there is a workspace (`None`: a private one, nothing
    /// to lock). Backends call this at the start of each exec with the exec's time limit as
    /// `wait`; the run then gets its whole time limit once it has the lock.
    ///
    /// # Errors
    /// As [`WorkspaceLock::acquire`].
    pub async fn of(
        workspace: Option<&Path>,
        wait: std::time::Duration,
    ) -> Result<Option<WorkspaceLock>> {
        match workspace {
            Some(dir) => Ok(Some(Self::acquire(dir, wait).await?)),
            None => Ok(None),
        }
    }

    /// Takes the lock on `dir`, waiting up to `wait` for another program to finish with it.
    /// `dir` is opened without following a symlink at its last component.
    ///
    /// # Errors
    /// [`Error::WorkspaceBusy`] when another program held it for the whole of `wait`;
    /// [`Error::Io`] when `dir` cannot be opened.
    pub async fn acquire(dir: &Path, wait: std::time::Duration) -> Result<WorkspaceLock> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(dir)
            .map_err(|e| Error::io(format!("opening workspace {} to lock it", dir.display()), e))?;
        let started = std::time::Instant::now();
        let mut said = false;
        loop {
            // SAFETY: flock on an fd owned by `file`.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(WorkspaceLock { _dir: file });
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(Error::io(
                    format!("locking workspace {}", dir.display()),
                    err,
                ));
            }
            if started.elapsed() >= wait {
                return Err(Error::WorkspaceBusy {
                    path: dir.to_path_buf(),
                    waited: wait,
                });
            }
            if !said {
                tracing::info!(workspace = %dir.display(), "another program runs with this workspace: waiting for it");
                said = true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// What [`WorkspaceLock::remove_escaping_symlinks`] did: the links it removed (path in the
/// workspace, target) and the directories it could not look into.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweptLinks {
    /// Removed symlinks: their path relative to the workspace and their target.
    pub removed: Vec<(PathBuf, PathBuf)>,
    /// Directories that could not be opened (a program made them unreadable to this user).
    pub unchecked: Vec<PathBuf>,
}

impl SweptLinks {
    /// A note for the run's caller, `None` when nothing was removed or left unchecked.
    pub fn note(&self) -> Option<String> {
        if self.removed.is_empty() && self.unchecked.is_empty() {
            return None;
        }
        let mut note = String::new();
        if let Some((path, target)) = self.removed.first() {
            note.push_str(&format!(
                "agentkernel: removed {} symlink(s) from the workspace whose target leaves it (e.g. {} -> {}); links there may only point down (no `..`, not absolute)\n",
                self.removed.len(),
                path.display(),
                target.display()
            ));
        }
        if let Some(dir) = self.unchecked.first() {
            note.push_str(&format!(
                "agentkernel: could not check {} workspace director(ies) for symlinks (e.g. {}): they are not readable; make them readable to use them from the host\n",
                self.unchecked.len(),
                dir.display()
            ));
        }
        Some(note)
    }
}

/// Whether a symlink to `target` resolves below the directory that holds it, wherever that
/// directory is and wherever the link is later moved: a relative path of plain names (and
/// `.`), no `..` and no root. Checking where a `..` lands when the link is made is not
/// enough: the link (or a directory holding it) can be renamed to a shallower place
/// afterwards, and a name in the target can itself be a link (`s -> .` makes `s/..` the
/// parent of the link's directory, however `s/..` reads). Links whose targets only descend
/// compose: following any number of them never climbs, so no chain of them leaves the
/// directory, for a sandbox or for the host. Every backend holds workspaces to this.
pub fn symlink_target_descends(target: &Path) -> bool {
    use std::path::Component;
    target
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// The longest chain of nested directories the sweep follows down (deeper ones are
/// reported as unchecked).
const SWEEP_MAX_DEPTH: usize = 256;

impl WorkspaceLock {
    /// Removes every symlink under the locked workspace whose target does not only descend
    /// ([`symlink_target_descends`]); see [`remove_escaping_symlinks`].
    ///
    /// # Errors
    /// As [`remove_escaping_symlinks`].
    pub fn remove_escaping_symlinks(&self) -> std::io::Result<SweptLinks> {
        remove_escaping_symlinks(&self._dir)
    }

    /// A second handle on the locked directory (the lock stays with `self`), for a sweep
    /// on another thread.
    ///
    /// # Errors
    /// When the descriptor cannot be duplicated.
    pub fn dir(&self) -> std::io::Result<std::fs::File> {
        self._dir.try_clone()
    }
}

/// Removes every symlink under the directory `top` (an open directory: the workspace a
/// [`WorkspaceLock`] holds) whose target does not only descend ([`symlink_target_descends`]),
/// so nothing a program left there leads a host program (or a later sandbox's host-side
/// copy) outside it. Call it once the program's processes are gone. Fd-relative throughout:
/// directories are listed through their open descriptors (a mode the program set on the
/// workspace later does not stop it), entered with `O_NOFOLLOW` only when their turn comes
/// (at most one open descriptor per level, `SWEEP_MAX_DEPTH` levels), and no symlink is
/// ever followed.
///
/// # Errors
/// Only when `top` itself cannot be listed; what cannot be looked into below is in
/// [`SweptLinks::unchecked`].
pub fn remove_escaping_symlinks(top: &std::fs::File) -> std::io::Result<SweptLinks> {
    use std::ffi::CString;
    use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::rc::Rc;

    let mut swept = SweptLinks::default();
    let top = Rc::new(OwnedFd::from(top.try_clone()?));
    // Directories still to visit: their parent's descriptor and their name (the top: none).
    let mut todo: Vec<(Rc<OwnedFd>, Option<CString>, PathBuf, usize)> =
        vec![(top, None, PathBuf::new(), 0)];
    while let Some((parent, name, rel, depth)) = todo.pop() {
        let dir = match &name {
            None => parent,
            Some(name) => {
                // SAFETY: openat relative to a directory fd we own; O_NOFOLLOW and
                // O_DIRECTORY: a link swapped in for the directory is not entered.
                let fd = unsafe {
                    libc::openat(
                        parent.as_raw_fd(),
                        name.as_ptr(),
                        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                    )
                };
                drop(parent);
                if fd < 0 {
                    swept.unchecked.push(rel);
                    continue;
                }
                // SAFETY: a fresh fd from openat, owned by nobody else.
                Rc::new(unsafe { OwnedFd::from_raw_fd(fd) })
            }
        };
        let entries = match dir_entries(dir.as_fd()) {
            Ok(e) => e,
            Err(e) if name.is_none() => return Err(e),
            Err(_) => {
                swept.unchecked.push(rel);
                continue;
            }
        };
        for (cname, d_type) in entries {
            let kind = entry_type(&dir, &cname, d_type);
            let path = rel.join(std::ffi::OsStr::from_bytes(cname.as_bytes()));
            if kind == libc::DT_LNK {
                let Ok(target) = crate::fsat::read_link_at(dir.as_fd(), &cname) else {
                    continue;
                };
                let target = PathBuf::from(target);
                if !symlink_target_descends(&target) {
                    // SAFETY: unlinkat of a name in a directory fd we own (removes the
                    // link itself, never what it points to).
                    if unsafe { libc::unlinkat(dir.as_raw_fd(), cname.as_ptr(), 0) } == 0 {
                        swept.removed.push((path, target));
                    }
                }
            } else if kind == libc::DT_DIR {
                if depth + 1 >= SWEEP_MAX_DEPTH {
                    swept.unchecked.push(path);
                } else {
                    todo.push((dir.clone(), Some(cname), path, depth + 1));
                }
            }
        }
    }
    Ok(swept)
}

/// The entries of the open directory `dir` (not `.` and `..`): each name with its `d_type`
/// (`DT_UNKNOWN` on file systems that do not say), read through the descriptor itself (a
/// duplicate, listed from its start), so no path is resolved again and the directory's
/// current mode does not matter.
///
/// # Errors
/// When the descriptor cannot be duplicated or listed.
pub fn dir_entries(
    dir: std::os::fd::BorrowedFd<'_>,
) -> std::io::Result<Vec<(std::ffi::CString, u8)>> {
    use std::os::fd::AsRawFd;
    // SAFETY: dup of a valid fd; fdopendir takes ownership of the duplicate (closedir
    // below closes it).
    let dup = unsafe { libc::fcntl(dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fdopendir on the fresh duplicate.
    let stream = unsafe { libc::fdopendir(dup) };
    if stream.is_null() {
        let e = std::io::Error::last_os_error();
        // SAFETY: fdopendir failed, so the duplicate is still ours to close.
        unsafe { libc::close(dup) };
        return Err(e);
    }
    // The duplicate shares its offset with `dir`: list from the start.
    // SAFETY: a valid stream.
    unsafe { libc::rewinddir(stream) };
    let mut out = Vec::new();
    loop {
        // SAFETY: readdir on a valid stream; the entry is valid until the next call and
        // is copied at once.
        let entry = unsafe { libc::readdir(stream) };
        if entry.is_null() {
            break;
        }
        // SAFETY: d_name is a NUL-terminated name inside the entry.
        let name = unsafe { std::ffi::CStr::from_ptr((*entry).d_name.as_ptr()) };
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            // SAFETY: reading a field of the valid entry.
            out.push((name.to_owned(), unsafe { (*entry).d_type }));
        }
    }
    // SAFETY: closes the stream and the duplicate it owns, once.
    unsafe { libc::closedir(stream) };
    Ok(out)
}

/// The type of `name` in the directory `dir` as a `DT_*` value, from `d_type` or, when
/// that is `DT_UNKNOWN`, `fstatat` without following a link.
fn entry_type(dir: &std::os::fd::OwnedFd, name: &std::ffi::CStr, d_type: u8) -> u8 {
    use std::os::fd::AsRawFd;
    if d_type != libc::DT_UNKNOWN {
        return d_type;
    }
    // SAFETY: an all-zero `stat` is a valid value for fstatat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstatat of a name relative to a valid fd, not following a link.
    if unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    } != 0
    {
        return libc::DT_UNKNOWN;
    }
    match st.st_mode & libc::S_IFMT {
        libc::S_IFLNK => libc::DT_LNK,
        libc::S_IFDIR => libc::DT_DIR,
        _ => libc::DT_REG,
    }
}

/// The workspaces under one root directory.
#[derive(Debug, Clone)]
pub struct Workspaces {
    root: PathBuf,
    quota: Option<u64>,
}

/// One named workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    /// Its name.
    pub name: String,
    /// Host directory (mounted at `/workspace`).
    pub path: PathBuf,
    /// Most bytes it may hold, if limited.
    pub quota: Option<u64>,
}

/// What [`Workspaces::list`] reports per workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceInfo {
    /// Name.
    pub name: String,
    /// Host directory.
    pub path: PathBuf,
    /// Disk space used, in bytes.
    pub bytes: u64,
    /// Number of files.
    pub files: u64,
    /// Last modification of the directory itself, as seconds since the Unix epoch.
    pub modified: Option<u64>,
}

/// Checks `name` is a safe workspace name; the error says what is allowed.
pub fn validate_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            format!("{name:?} is not a valid workspace name"),
            "use 1-64 characters: letters, digits, '.', '_' and '-', starting with a letter or digit",
        ))
    }
}

impl Workspaces {
    /// AgentKernel's data directory: `$AGENTKERNEL_DATA_DIR`, else
    /// `$XDG_DATA_HOME/agentkernel`, else `~/.local/share/agentkernel`. Workspaces live in
    /// its `workspaces/`, the task store in `tasks.db`.
    pub fn data_dir() -> PathBuf {
        crate::hostdirs::data_dir()
    }

    /// The default root: `workspaces/` in [`Workspaces::data_dir`].
    pub fn default_root() -> PathBuf {
        Self::data_dir().join("workspaces")
    }

    /// Workspaces under `root` (created, with the workspace, on first [`Workspaces::open`]).
    pub fn at(root: impl Into<PathBuf>) -> Workspaces {
        Workspaces {
            root: root.into(),
            quota: None,
        }
    }

    /// Gives every workspace opened from here a quota of `bytes`.
    pub fn with_quota(mut self, bytes: u64) -> Self {
        self.quota = Some(bytes);
        self
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, name: &str) -> Result<PathBuf> {
        validate_name(name)?;
        Ok(self.root.join(name))
    }

    /// The root, created if missing, with the caller's symlinks resolved (backends refuse
    /// workspace paths through symlinks).
    fn real_root(&self) -> Result<PathBuf> {
        // The root (and the data dir, when it is the root's parent) is checked as AgentKernel's
        // own (owned by this user, writable by no one else): whoever controls it controls what
        // gets mounted.
        if self.root.parent() == Some(crate::hostdirs::data_dir().as_path()) {
            crate::hostdirs::private_dir(&crate::hostdirs::data_dir())?;
        }
        crate::hostdirs::private_dir(&self.root)?;
        self.root.canonicalize().map_err(|e| {
            Error::io(
                format!("resolving workspace root {}", self.root.display()),
                e,
            )
        })
    }

    /// Workspace `name`, created if it does not exist.
    pub fn open(&self, name: &str) -> Result<Workspace> {
        validate_name(name)?;
        let path = self.real_root()?.join(name);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::invalid(
                    format!("{} exists and is not a directory", path.display()),
                    "remove it, or pick another workspace name",
                ));
            }
            Err(_) => std::fs::create_dir(&path)
                .or_else(|e| if path.is_dir() { Ok(()) } else { Err(e) })
                .map_err(|e| Error::io(format!("creating workspace {}", path.display()), e))?,
        }
        Ok(Workspace {
            name: name.to_owned(),
            path,
            quota: self.quota,
        })
    }

    /// Workspace `name` if it exists.
    pub fn get(&self, name: &str) -> Result<Option<Workspace>> {
        let path = self.path_of(name)?;
        Ok(path.is_dir().then(|| Workspace {
            name: name.to_owned(),
            path,
            quota: self.quota,
        }))
    }

    /// Every workspace, by name, with its size.
    pub fn list(&self) -> Result<Vec<WorkspaceInfo>> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("listing {}", self.root.display()), e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if validate_name(&name).is_err() || !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let (bytes, files) = disk_usage(&entry.path())?;
            let modified = entry
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_secs());
            out.push(WorkspaceInfo {
                name,
                path: entry.path(),
                bytes,
                files,
                modified,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Deletes workspace `name` and everything in it; `false` if it did not exist.
    pub fn delete(&self, name: &str) -> Result<bool> {
        let path = self.path_of(name)?;
        if !path.exists() {
            return Ok(false);
        }
        std::fs::remove_dir_all(&path)
            .map_err(|e| Error::io(format!("deleting workspace {}", path.display()), e))?;
        Ok(true)
    }
}

impl Workspace {
    /// Bytes of disk it uses now.
    pub fn usage(&self) -> Result<u64> {
        Ok(disk_usage(&self.path)?.0)
    }

    /// `Err(LimitExceeded)` when the workspace holds more than its quota.
    pub fn check_quota(&self) -> Result<()> {
        let Some(quota) = self.quota else {
            return Ok(());
        };
        let used = self.usage()?;
        if used > quota {
            return Err(Error::LimitExceeded {
                limit: LimitKind::Disk,
                detail: format!(
                    "workspace {:?} holds {used} bytes, over its quota of {quota} bytes; \
                     remove files from {} (or /workspace in a run) before running more code",
                    self.name,
                    self.path.display()
                ),
            });
        }
        Ok(())
    }
}

/// Disk use (allocated blocks) and file count under `dir`, not following symlinks.
fn disk_usage(dir: &Path) -> Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut bytes = 0u64;
    let mut files = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if d == dir => return Err(Error::io(format!("reading {}", d.display()), e)),
            Err(_) => continue, // unreadable subdirectory: skip, as `du` would report
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            bytes = bytes.saturating_add(meta.blocks().saturating_mul(512));
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                files += 1;
            }
        }
    }
    Ok((bytes, files))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape_the_root() {
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "/abs",
            ".hidden",
            "a b",
            "x\0",
            &"a".repeat(65),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["a", "conv-1", "My_Work.v2", &"a".repeat(64)] {
            assert!(validate_name(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn open_list_quota_delete() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspaces::at(dir.path()).with_quota(64 * 1024);
        let a = ws.open("alpha").unwrap();
        assert_eq!(ws.open("alpha").unwrap(), a, "open is idempotent");
        std::fs::write(a.path.join("small"), vec![1u8; 1000]).unwrap();
        assert!(a.check_quota().is_ok());
        std::fs::write(a.path.join("big"), vec![1u8; 200 * 1024]).unwrap();
        let e = a.check_quota().unwrap_err();
        assert!(
            matches!(
                e,
                Error::LimitExceeded {
                    limit: LimitKind::Disk,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("alpha"), "{e}");
        let list = ws.list().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!((list[0].name.as_str(), list[0].files), ("alpha", 2));
        assert!(list[0].bytes >= 200 * 1024);
        assert!(ws.delete("alpha").unwrap());
        assert!(!ws.delete("alpha").unwrap());
        assert!(ws.get("alpha").unwrap().is_none());
        assert!(ws.open("../etc").is_err());
    }
}
