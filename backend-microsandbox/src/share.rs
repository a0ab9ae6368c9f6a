//! Shared directories without a shared file system: the host's workspace (and read-only
//! mounts such as the generated `/tools` package) are copied into the VM as *bundles* over
//! the supervisor's port, and what a program changed in a writable one comes back the same
//! way after each exec. A mounted 9p or virtiofs share would block snapshots, and pooled
//! VMs are restored from a snapshot.
//!
//! A bundle is a sequence of entries: a 4-byte big-endian length, a JSON [`Entry`] header,
//! then `size` bytes of content. Only regular files and directories travel; symlinks and
//! special files are not shared (in either direction).
//!
//! What comes back from the guest is untrusted: [`apply`] accepts only plain relative paths
//! (no `..`, no absolute paths), never follows a symlink on the host (a directory on the
//! way that is a symlink is an error; a file is opened with `O_NOFOLLOW`), strips set-id
//! bits, and caps each file at the sandbox's file-size limit.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use agentkernel_core::{Error, Result};

/// One bundle entry's header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Path relative to the shared directory, `/`-separated.
    pub path: String,
    /// `"file"` or `"dir"`.
    pub kind: String,
    /// Permission bits.
    pub mode: u32,
    /// Content bytes that follow (0 for a directory).
    pub size: u64,
}

/// What a scan found at one path: enough to tell whether it changed since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    dir: bool,
    size: u64,
    mtime: Option<SystemTime>,
    mode: u32,
}

/// The regular files and directories under a directory, by relative path.
pub type Manifest = BTreeMap<String, Stamp>;

/// Scans `top` (symlinks and special files are skipped; a missing `top` is empty).
pub fn scan(top: &Path) -> Manifest {
    let mut found = Manifest::new();
    let mut todo = vec![String::new()];
    while let Some(rel) = todo.pop() {
        let Ok(entries) = fs::read_dir(top.join(&rel)) else {
            continue;
        };
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue; // not UTF-8: cannot be named in a bundle
            };
            let r = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let Ok(meta) = fs::symlink_metadata(top.join(&r)) else {
                continue;
            };
            let mode = meta.permissions().mode() & 0o777;
            if meta.is_dir() {
                found.insert(
                    r.clone(),
                    Stamp {
                        dir: true,
                        size: 0,
                        mtime: None,
                        mode,
                    },
                );
                todo.push(r);
            } else if meta.is_file() {
                found.insert(
                    r,
                    Stamp {
                        dir: false,
                        size: meta.len(),
                        mtime: meta.modified().ok(),
                        mode,
                    },
                );
            }
        }
    }
    found
}

/// What changed from `before` to `now`: paths to (re)send, and the top-most paths deleted.
pub fn diff(before: &Manifest, now: &Manifest) -> (Vec<String>, Vec<String>) {
    let changed = now
        .iter()
        .filter(|(path, stamp)| before.get(*path) != Some(stamp))
        .map(|(path, _)| path.clone())
        .collect();
    let deleted = before
        .keys()
        .filter(|path| !now.contains_key(*path))
        .filter(|path| match path.rsplit_once('/') {
            None => true,
            Some((parent, _)) => now.contains_key(parent),
        })
        .cloned()
        .collect();
    (changed, deleted)
}

/// A bundle of `paths` under `top` (paths that vanished meanwhile are left out).
pub fn bundle(top: &Path, paths: &[String]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for rel in paths {
        let path = top.join(rel);
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let (kind, body) = if meta.is_dir() {
            ("dir", Vec::new())
        } else if meta.is_file() {
            match fs::read(&path) {
                Ok(body) => ("file", body),
                Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
            }
        } else {
            continue;
        };
        let head = serde_json::to_vec(&Entry {
            path: rel.clone(),
            kind: kind.into(),
            mode: meta.permissions().mode() & 0o777,
            size: body.len() as u64,
        })
        .map_err(|e| Error::Internal(format!("encoding a bundle entry: {e}")))?;
        out.extend_from_slice(&(head.len() as u32).to_be_bytes());
        out.extend_from_slice(&head);
        out.extend_from_slice(&body);
    }
    Ok(out)
}

fn bad(what: impl Into<String>) -> Error {
    Error::SandboxLost {
        reason: format!("the guest sent a bad file bundle: {}", what.into()),
    }
}

/// `rel` as a path under `top`, if it is a plain relative path.
fn checked(top: &Path, rel: &str) -> Result<PathBuf> {
    let path = Path::new(rel);
    let plain = !rel.is_empty()
        && rel.len() < 4096
        && path.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        return Err(bad(format!("path {rel:?} is not a plain relative path")));
    }
    Ok(top.join(path))
}

/// Creates the directories from `top` down to `dir`, refusing any that is a symlink.
fn make_dirs(top: &Path, dir: &Path) -> Result<()> {
    let rel = dir.strip_prefix(top).unwrap_or(Path::new(""));
    let mut at = top.to_path_buf();
    for part in rel.components() {
        at.push(part);
        match fs::symlink_metadata(&at) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                // A file (or symlink) where the guest has a directory: the guest's wins, but
                // never by following a link.
                fs::remove_file(&at)
                    .map_err(|e| Error::io(format!("replacing {}", at.display()), e))?;
                fs::create_dir(&at)
                    .map_err(|e| Error::io(format!("creating {}", at.display()), e))?;
            }
            Err(_) => fs::create_dir(&at)
                .map_err(|e| Error::io(format!("creating {}", at.display()), e))?,
        }
    }
    Ok(())
}

fn remove(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(_) => return Ok(()),
    }
    .map_err(|e| Error::io(format!("removing {}", path.display()), e))
}

/// Applies what the guest sent for the shared directory `top`: deletes `deleted`, then
/// writes the bundle's entries. Files larger than `max_file` are an error. Answers how many
/// files were written.
pub fn apply(top: &Path, deleted: &[String], data: &[u8], max_file: Option<u64>) -> Result<usize> {
    for rel in deleted {
        let path = checked(top, rel)?;
        if let Some(parent) = path.parent() {
            make_dirs(top, parent)?;
        }
        remove(&path)?;
    }
    let mut rest = data;
    let mut files = 0;
    while !rest.is_empty() {
        let (len, after) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| bad("truncated header length"))?;
        let len = u32::from_be_bytes(*len) as usize;
        if len > after.len() || len > 1 << 16 {
            return Err(bad("truncated header"));
        }
        let entry: Entry =
            serde_json::from_slice(&after[..len]).map_err(|e| bad(format!("header: {e}")))?;
        let after = &after[len..];
        let size = usize::try_from(entry.size).map_err(|_| bad("size"))?;
        if size > after.len() {
            return Err(bad("truncated content"));
        }
        let (body, next) = after.split_at(size);
        rest = next;
        let path = checked(top, &entry.path)?;
        let mode = entry.mode & 0o777;
        match entry.kind.as_str() {
            "dir" => {
                make_dirs(top, &path)?;
                fs::set_permissions(&path, fs::Permissions::from_mode(mode | 0o700))
                    .map_err(|e| Error::io(format!("chmod {}", path.display()), e))?;
            }
            "file" => {
                if let Some(max) = max_file
                    && entry.size > max
                {
                    return Err(bad(format!(
                        "{} is {} bytes, over the file-size limit",
                        entry.path, entry.size
                    )));
                }
                if let Some(parent) = path.parent() {
                    make_dirs(top, parent)?;
                }
                if fs::symlink_metadata(&path).is_ok_and(|m| !m.is_file()) {
                    remove(&path)?;
                }
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
                file.write_all(body)
                    .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
                file.set_permissions(fs::Permissions::from_mode(mode | 0o600))
                    .map_err(|e| Error::io(format!("chmod {}", path.display()), e))?;
                files += 1;
            }
            other => return Err(bad(format!("entry kind {other:?}"))),
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_round_trips_and_changes_are_found() {
        let src = tempfile::tempdir().unwrap();
        fs::create_dir_all(src.path().join("a/b")).unwrap();
        fs::write(src.path().join("a/b/f.txt"), "hello").unwrap();
        fs::write(src.path().join("top.bin"), [0u8, 1, 2]).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.path().join("link")).unwrap();
        let before = Manifest::new();
        let now = scan(src.path());
        assert!(!now.contains_key("link"), "symlinks are not shared");
        let (changed, deleted) = diff(&before, &now);
        assert!(deleted.is_empty());
        let data = bundle(src.path(), &changed).unwrap();
        let dst = tempfile::tempdir().unwrap();
        assert_eq!(apply(dst.path(), &[], &data, None).unwrap(), 2);
        assert_eq!(
            fs::read_to_string(dst.path().join("a/b/f.txt")).unwrap(),
            "hello"
        );
        fs::remove_dir_all(src.path().join("a")).unwrap();
        let (changed, deleted) = diff(&now, &scan(src.path()));
        assert!(changed.is_empty());
        assert_eq!(
            deleted,
            vec!["a".to_owned()],
            "only the top-most deleted path"
        );
        apply(dst.path(), &deleted, &[], None).unwrap();
        assert!(!dst.path().join("a").exists());
    }

    fn one(path: &str, body: &[u8]) -> Vec<u8> {
        let head = serde_json::to_vec(&Entry {
            path: path.into(),
            kind: "file".into(),
            mode: 0o4755,
            size: body.len() as u64,
        })
        .unwrap();
        let mut out = (head.len() as u32).to_be_bytes().to_vec();
        out.extend(head);
        out.extend(body);
        out
    }

    #[test]
    fn a_hostile_bundle_cannot_leave_the_directory() {
        let outside = tempfile::tempdir().unwrap();
        let top = tempfile::tempdir().unwrap();
        for path in ["../escaped", "/tmp/escaped", "a/../../escaped", ""] {
            assert!(
                apply(top.path(), &[], &one(path, b"x"), None).is_err(),
                "{path}"
            );
            assert!(
                apply(top.path(), &[path.to_owned()], &[], None).is_err(),
                "{path}"
            );
        }
        // A symlink in the host directory is never followed: not for a file, not for a
        // directory on the way, not for a deletion.
        std::os::unix::fs::symlink(outside.path(), top.path().join("dir-link")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("f"), top.path().join("file-link")).unwrap();
        fs::write(outside.path().join("keep"), "kept").unwrap();
        apply(top.path(), &[], &one("file-link", b"x"), None).unwrap();
        apply(top.path(), &[], &one("dir-link/f", b"x"), None).unwrap();
        apply(top.path(), &["dir-link".to_owned()], &[], None).unwrap();
        assert!(
            !outside.path().join("f").exists(),
            "wrote through a symlink"
        );
        assert_eq!(
            fs::read_to_string(outside.path().join("keep")).unwrap(),
            "kept"
        );
        // Set-id bits are dropped; files over the size limit are refused.
        apply(top.path(), &[], &one("tool", b"#!"), None).unwrap();
        let mode = fs::metadata(top.path().join("tool"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755);
        assert!(apply(top.path(), &[], &one("big", &[0; 100]), Some(10)).is_err());
        // Truncated data is an error, not a panic.
        let data = one("t", b"abc");
        assert!(apply(top.path(), &[], &data[..data.len() - 1], None).is_err());
    }
}
