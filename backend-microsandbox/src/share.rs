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
//! (no `..`, no absolute paths), strips set-id bits, and caps each file at the sandbox's
//! file-size limit. The host directory is not trusted to stay still either (another program
//! may write it meanwhile): it is opened once, and every path beneath it is resolved from
//! that fd one component at a time without following any symlink (`openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, see `src/fsat.rs`); files are written to a new
//! file renamed into place, and modes set with `fchmod` on open fds. [`scan`] and [`bundle`]
//! read the host directory the same way.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use agentkernel_core::{Error, Result};

use crate::fsat::{Dir, Kind};

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

/// Scans `top` (symlinks and special files are skipped; a missing `top` is empty). Every
/// directory is opened beneath `top` without following a symlink, so a directory swapped for
/// a symlink meanwhile is skipped, not listed.
pub fn scan(top: &Path) -> Manifest {
    let mut found = Manifest::new();
    let Ok(root) = Dir::open_root(top) else {
        return found;
    };
    let mut todo = vec![String::new()];
    while let Some(rel) = todo.pop() {
        let parts: Vec<&OsStr> = Path::new(&rel)
            .components()
            .map(Component::as_os_str)
            .collect();
        let Ok(Some(dir)) = walk(&root, &parts, false) else {
            continue;
        };
        let Ok(names) = dir.names() else {
            continue;
        };
        for name in names {
            let Ok(Some(st)) = dir.stat(&name) else {
                continue;
            };
            let Some(name) = name.to_str() else {
                continue; // not UTF-8: cannot be named in a bundle
            };
            let r = if rel.is_empty() {
                name.to_owned()
            } else {
                format!("{rel}/{name}")
            };
            let mode = st.mode & 0o777;
            match st.kind {
                Kind::Dir => {
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
                }
                Kind::File => {
                    found.insert(
                        r,
                        Stamp {
                            dir: false,
                            size: st.size,
                            mtime: st.mtime,
                            mode,
                        },
                    );
                }
                Kind::Other => {}
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

/// A bundle of `paths` under `top` (paths that vanished meanwhile, or turned into symlinks
/// or special files, are left out). Files are opened beneath `top` without following a
/// symlink, so a swapped-in symlink cannot bring a host file into the VM.
pub fn bundle(top: &Path, paths: &[String]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let Ok(root) = Dir::open_root(top) else {
        return Ok(out);
    };
    for rel in paths {
        let parts: Vec<&OsStr> = Path::new(rel)
            .components()
            .map(Component::as_os_str)
            .collect();
        let Some((name, dirs)) = parts.split_last() else {
            continue;
        };
        let Ok(Some(parent)) = walk(&root, dirs, false) else {
            continue;
        };
        let Ok(Some(st)) = parent.stat(name) else {
            continue;
        };
        let (kind, body, mode) = match st.kind {
            Kind::Dir => ("dir", Vec::new(), st.mode),
            Kind::File => {
                let mut file = match parent.open_file(name) {
                    Ok(file) => file,
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::ENOENT | libc::ELOOP | libc::EINVAL)
                        ) =>
                    {
                        continue;
                    }
                    Err(e) => {
                        return Err(Error::io(
                            format!(
                                "reading {} (check its permissions)",
                                top.join(rel).display()
                            ),
                            e,
                        ));
                    }
                };
                let mode = file.metadata().map_or(st.mode, |m| m.permissions().mode());
                let mut body = Vec::new();
                file.read_to_end(&mut body)
                    .map_err(|e| Error::io(format!("reading {}", top.join(rel).display()), e))?;
                ("file", body, mode)
            }
            Kind::Other => continue,
        };
        let head = serde_json::to_vec(&Entry {
            path: rel.clone(),
            kind: kind.into(),
            mode: mode & 0o777,
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

/// The components of `rel`, if it is a plain relative path (no `..`, `.`, or root).
fn checked(rel: &str) -> Result<Vec<&OsStr>> {
    let path = Path::new(rel);
    let plain = !rel.is_empty()
        && rel.len() < 4096
        && path.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        return Err(bad(format!("path {rel:?} is not a plain relative path")));
    }
    Ok(path.components().map(Component::as_os_str).collect())
}

/// How often one step is retried when the directory changes under it (another program
/// swapping a directory and a symlink, say) before giving up.
const ATTEMPTS: usize = 16;

fn changed_meanwhile() -> io::Error {
    io::Error::other("it kept changing while files were copied back")
}

/// The directory `name` in `parent`, created if missing; a file or symlink there is
/// replaced (the guest's directory wins, but never by following a link).
fn ensure_dir(parent: &Dir, name: &OsStr) -> io::Result<Dir> {
    for _ in 0..ATTEMPTS {
        match parent.open_dir(name) {
            Ok(dir) => return Ok(dir),
            Err(e) => match e.raw_os_error() {
                Some(libc::ENOENT) => match parent.mkdir(name) {
                    Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(e),
                    _ => {}
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

/// Opens the directories `parts` beneath `root`, one component at a time. `create`:
/// create (or replace) what is missing; otherwise answer `None` where a part is missing or
/// not a directory.
fn walk(root: &Dir, parts: &[&OsStr], create: bool) -> io::Result<Option<Dir>> {
    let mut at = root.try_clone()?;
    for part in parts {
        at = if create {
            ensure_dir(&at, part)?
        } else {
            match at.open_dir(part) {
                Ok(dir) => dir,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
                    ) =>
                {
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        };
    }
    Ok(Some(at))
}

/// Writes `body` as the file `name` in `parent`: into a new file (so nothing already there,
/// a hard link to a file elsewhere included, is written through), then renamed over `name`
/// (a symlink there is replaced, never followed; a directory there is removed first).
fn write_file(parent: &Dir, name: &OsStr, body: &[u8], mode: u32) -> io::Result<()> {
    let tmp = OsString::from(format!(
        ".agentkernel-{}.part",
        uuid::Uuid::new_v4().simple()
    ));
    let written = (|| -> io::Result<()> {
        let mut file = parent.create_new(&tmp)?;
        file.write_all(body)?;
        // fchmod on the open file: no path is followed.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        for _ in 0..ATTEMPTS {
            match parent.rename(&tmp, name) {
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
    })();
    if written.is_err() {
        let _ = parent.unlink(&tmp);
    }
    written
}

/// Applies what the guest sent for the shared directory `top`: deletes `deleted`, then
/// writes the bundle's entries. Files larger than `max_file` are an error. Answers how many
/// files were written.
///
/// `top` is opened once; every path beneath it is resolved from that fd one component at a
/// time, refusing symlinks (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), and modes
/// are set with `fchmod` on open fds, so another program changing the directory meanwhile
/// cannot redirect a write, a deletion or a chmod outside it.
pub fn apply(top: &Path, deleted: &[String], data: &[u8], max_file: Option<u64>) -> Result<usize> {
    let failed = |what: &str, rel: &str, e: io::Error| {
        let hint = if e.raw_os_error() == Some(libc::ENOSYS) {
            " (openat2 needs Linux 5.6 or later)"
        } else {
            " (if another program writes this directory while a sandbox runs, stop it)"
        };
        Error::io(format!("{what} {rel} in {}{hint}", top.display()), e)
    };
    let root = Dir::open_root(top).map_err(|e| failed("opening", ".", e))?;
    for rel in deleted {
        let parts = checked(rel)?;
        let Some((name, dirs)) = parts.split_last() else {
            continue;
        };
        let parent = walk(&root, dirs, false).map_err(|e| failed("removing", rel, e))?;
        if let Some(parent) = parent {
            parent
                .remove_all(name)
                .map_err(|e| failed("removing", rel, e))?;
        }
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
        let parts = checked(&entry.path)?;
        let rel = entry.path.as_str();
        let mode = entry.mode & 0o777;
        match entry.kind.as_str() {
            "dir" => {
                let dir = walk(&root, &parts, true)
                    .map_err(|e| failed("creating", rel, e))?
                    .ok_or_else(|| failed("creating", rel, changed_meanwhile()))?;
                dir.chmod(mode | 0o700)
                    .map_err(|e| failed("chmod", rel, e))?;
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
                let Some((name, dirs)) = parts.split_last() else {
                    return Err(bad("an empty path"));
                };
                let parent = walk(&root, dirs, true)
                    .map_err(|e| failed("writing", rel, e))?
                    .ok_or_else(|| failed("writing", rel, changed_meanwhile()))?;
                write_file(&parent, name, body, mode | 0o600)
                    .map_err(|e| failed("writing", rel, e))?;
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

    fn entry(path: &str, kind: &str, mode: u32, body: &[u8]) -> Vec<u8> {
        let head = serde_json::to_vec(&Entry {
            path: path.into(),
            kind: kind.into(),
            mode,
            size: body.len() as u64,
        })
        .unwrap();
        let mut out = (head.len() as u32).to_be_bytes().to_vec();
        out.extend(head);
        out.extend(body);
        out
    }

    /// The names in `dir` and its permission bits: what the tests check outside.
    fn look(dir: &Path) -> (Vec<String>, u32) {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mode = fs::symlink_metadata(dir).unwrap().permissions().mode() & 0o7777;
        (names, mode)
    }

    #[test]
    fn links_planted_in_the_host_directory_are_never_written_through() {
        let outside = tempfile::tempdir().unwrap();
        let top = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        fs::write(&victim, "kept").unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o640)).unwrap();
        fs::set_permissions(outside.path(), fs::Permissions::from_mode(0o750)).unwrap();
        // A hard link to a file outside (same file system), a symlinked directory, a
        // symlinked file, and a symlinked directory the guest's bundle names as a directory
        // with a mode (a chmod that followed it would change the outside directory).
        fs::hard_link(&victim, top.path().join("hard")).unwrap();
        std::os::unix::fs::symlink(outside.path(), top.path().join("dir-link")).unwrap();
        std::os::unix::fs::symlink(outside.path(), top.path().join("mode-link")).unwrap();
        std::os::unix::fs::symlink(&victim, top.path().join("file-link")).unwrap();
        let mut data = entry("hard", "file", 0o4777, b"evil");
        data.extend(entry("mode-link", "dir", 0o777, b""));
        data.extend(entry("dir-link/f", "file", 0o644, b"evil"));
        data.extend(entry("file-link", "file", 0o777, b"evil"));
        apply(top.path(), &[], &data, None).unwrap();
        assert_eq!(
            fs::read_to_string(&victim).unwrap(),
            "kept",
            "wrote through a link"
        );
        assert_eq!(
            fs::metadata(&victim).unwrap().permissions().mode() & 0o7777,
            0o640,
            "chmodded through a link"
        );
        assert_eq!(look(outside.path()), (vec!["victim".to_owned()], 0o750));
        // The guest's files took the links' places, inside.
        for name in ["hard", "dir-link/f", "file-link"] {
            let path = top.path().join(name);
            assert!(fs::symlink_metadata(&path).unwrap().is_file(), "{name}");
            assert_eq!(fs::read_to_string(&path).unwrap(), "evil", "{name}");
        }
        assert!(
            fs::symlink_metadata(top.path().join("mode-link"))
                .unwrap()
                .is_dir()
        );
        // A deletion beneath a symlinked directory deletes nothing outside.
        std::os::unix::fs::symlink(outside.path(), top.path().join("del-link")).unwrap();
        apply(top.path(), &["del-link/victim".to_owned()], &[], None).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "kept");
    }

    #[test]
    fn a_bundle_for_the_vm_never_reads_through_a_symlink() {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), "host secret").unwrap();
        let top = tempfile::tempdir().unwrap();
        fs::create_dir(top.path().join("dir")).unwrap();
        fs::write(top.path().join("dir/ok"), "shared").unwrap();
        let paths: Vec<String> = ["dir", "dir/ok", "dir/secret", "file"]
            .map(str::to_owned)
            .into();
        // What a scan found: a directory and files. Then another program swaps the
        // directory and a file for symlinks to the outside before the bundle is read.
        fs::remove_dir_all(top.path().join("dir")).unwrap();
        std::os::unix::fs::symlink(outside.path(), top.path().join("dir")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), top.path().join("file")).unwrap();
        let data = bundle(top.path(), &paths).unwrap();
        assert!(
            !String::from_utf8_lossy(&data).contains("host secret"),
            "a host file outside the directory went into the bundle"
        );
        assert!(scan(top.path()).is_empty(), "symlinks are not listed");
    }

    #[test]
    fn a_directory_swapped_for_a_symlink_during_apply_is_not_followed() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::time::{Duration, Instant};

        let outside = tempfile::tempdir().unwrap();
        fs::set_permissions(outside.path(), fs::Permissions::from_mode(0o750)).unwrap();
        let top = tempfile::tempdir().unwrap();
        let d = top.path().join("d");
        let swap = top.path().join("swap");
        // Another writer of the workspace: exchanges `d` (a directory) and `swap` (a symlink
        // to the outside directory) as fast as it can, atomically (RENAME_EXCHANGE), so a
        // check of `d` and a use of `d` see different things.
        let racer = {
            let stop = Arc::new(AtomicBool::new(false));
            let (d, swap, outside) = (d.clone(), swap.clone(), outside.path().to_path_buf());
            let flag = stop.clone();
            let handle = std::thread::spawn(move || {
                let a = std::ffi::CString::new(d.as_os_str().as_encoded_bytes()).unwrap();
                let b = std::ffi::CString::new(swap.as_os_str().as_encoded_bytes()).unwrap();
                let mut swaps = 0u64;
                while !flag.load(Ordering::Relaxed) {
                    // Put the pair back (a directory and a symlink) when `apply` replaced or
                    // removed one of them.
                    let link = |p: &Path| {
                        fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink())
                    };
                    if !link(&d) && !link(&swap) {
                        let _ = fs::remove_dir_all(&swap);
                        let _ = fs::remove_file(&swap);
                        let _ = std::os::unix::fs::symlink(&outside, &swap);
                    }
                    for p in [&d, &swap] {
                        if fs::symlink_metadata(p).is_err() {
                            let _ = fs::create_dir(p);
                        }
                    }
                    for _ in 0..64 {
                        // SAFETY: two NUL-terminated paths that outlive the call.
                        let rc = unsafe {
                            libc::renameat2(
                                libc::AT_FDCWD,
                                a.as_ptr(),
                                libc::AT_FDCWD,
                                b.as_ptr(),
                                libc::RENAME_EXCHANGE,
                            )
                        };
                        swaps += u64::from(rc == 0);
                    }
                }
                swaps
            });
            (stop, handle)
        };
        let mut data = entry("d", "dir", 0o777, b"");
        for k in 0..8 {
            data.extend(entry(&format!("d/f{k}"), "file", 0o644, b"escaped"));
        }
        data.extend(entry("d/sub", "dir", 0o777, b""));
        data.extend(entry("d/sub/g", "file", 0o644, b"escaped"));
        let started = Instant::now();
        let (mut applied, mut succeeded) = (0, 0);
        while applied < 400 && started.elapsed() < Duration::from_secs(5) {
            // Failing is fine (the directory keeps changing); leaving is not.
            succeeded += usize::from(apply(top.path(), &[], &data, None).is_ok());
            let _ = apply(top.path(), &["d/sub".to_owned()], &[], None);
            applied += 1;
            let seen = look(outside.path());
            assert_eq!(
                seen,
                (Vec::new(), 0o750),
                "after {applied} applies, something was written or chmodded outside"
            );
        }
        racer.0.store(true, Ordering::Relaxed);
        let swaps = racer.1.join().unwrap();
        assert!(swaps > 0, "the racer never swapped");
        assert!(
            succeeded > 0,
            "no apply completed: the race exercised no writes"
        );
        println!(
            "{applied} applies ({succeeded} complete) raced {swaps} swaps; nothing left the directory"
        );
        assert_eq!(look(outside.path()), (Vec::new(), 0o750));
    }
}
