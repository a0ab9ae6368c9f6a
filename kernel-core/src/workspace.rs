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
