//! Shared directories without a shared file system: the host's workspace (and read-only
//! mounts such as the generated `/tools` package) are copied into the VM as *bundles* over
//! the supervisor's port, and what a program changed in a writable one comes back the same
//! way after each exec. A mounted 9p or virtiofs share would block snapshots, and pooled
//! VMs are restored from a snapshot.
//!
//! A bundle is a stream of entries, each a 4-byte big-endian length, a JSON [`Entry`]
//! header, then the bytes of the file's data extents; an entry of kind `"end"` ends it.
//! Only regular files and directories travel; symlinks and special files are not shared (in
//! either direction). Bundles are streamed in both directions ([`send_bundle`],
//! [`apply_stream`]): neither side ever holds a whole bundle in memory, and the caller
//! bounds the whole transfer by the run's deadline. Files are sparse-aware: only their
//! data extents travel (`SEEK_DATA`/`SEEK_HOLE`), holes stay holes, and the host skips
//! all-zero blocks when it writes a file back, so a file's disk use is not inflated by the
//! copy. Sizes are capped in *apparent* size (holes included): [`send_bundle`] and
//! [`apply_stream`] take a total cap (the VM's memory size, as the runtime calls them).
//!
//! What comes back from the guest is untrusted: [`apply_stream`] accepts only plain relative
//! paths (no `..`, no absolute paths), strips set-id bits and group/other write, caps each
//! file at the sandbox's file-size limit and the total at its cap, and, when the host runs
//! as root, gives every file and directory it creates to the owner of the host directory.
//! The host directory is not trusted to stay still either (another program may write it
//! meanwhile): it is opened once, and every path beneath it is resolved from that fd one
//! component at a time without following any symlink (`openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, see `src/fsat.rs`); files are written to a new
//! file renamed into place, and modes and owners set with `fchmod`/`fchown` on open fds.
//! [`scan`] and [`send_bundle`] read the host directory the same way.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Component, Path};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use agentkernel_core::{Error, LimitKind, Result};

use agentkernel_core::fsat::{
    Dir, Kind, Owner, Part, changed_meanwhile, ensure_dir, host_mode, rename_into_place,
};

/// One bundle entry's header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Path relative to the shared directory, `/`-separated (empty for `"end"`).
    #[serde(default)]
    pub path: String,
    /// `"file"`, `"dir"`, or `"end"` (the bundle's last entry).
    pub kind: String,
    /// Permission bits.
    #[serde(default)]
    pub mode: u32,
    /// The file's apparent size (holes included; 0 for a directory).
    #[serde(default)]
    pub size: u64,
    /// The file's data extents, `(offset, length)`, ascending and within `size`; their
    /// bytes follow the header in this order and the rest of the file is a hole. `None`:
    /// one extent, the whole file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extents: Option<Vec<(u64, u64)>>,
}

/// Most extents one entry may list (a file with more sends the rest as one extent): keeps
/// headers small.
pub const MAX_EXTENTS: usize = 1000;
/// Largest entry header accepted.
const MAX_ENTRY_HEADER: usize = 1 << 16;
/// How much of a file is read or written at a time.
const CHUNK: usize = 256 << 10;
/// The block size at which the host skips all-zero data when writing a file back.
const ZERO_BLOCK: usize = 4096;

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
        let Ok(Some(dir)) = walk(&root, &parts, false, None) else {
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

/// The apparent size of all the files in `manifest` (holes included).
pub fn apparent_total(manifest: &Manifest) -> u64 {
    manifest
        .values()
        .filter(|s| !s.dir)
        .fold(0u64, |sum, s| sum.saturating_add(s.size))
}

/// The apparent size of the files in `manifest` other than `sent`.
pub fn apparent_total_except(manifest: &Manifest, sent: &[String]) -> u64 {
    let resent: u64 = sent
        .iter()
        .filter_map(|p| manifest.get(p))
        .filter(|s| !s.dir)
        .fold(0u64, |sum, s| sum.saturating_add(s.size));
    apparent_total(manifest).saturating_sub(resent)
}

/// The error for a host directory whose files are more than a VM takes.
pub fn too_big(top: &Path, total: u64, cap: u64) -> Error {
    Error::LimitExceeded {
        limit: LimitKind::Memory,
        detail: format!(
            "{} holds {} MiB of files (apparent size, holes of sparse files included), over the {} MiB a microvm sandbox copies in (its memory size); remove large or sparse files from it, or raise the memory limit",
            top.display(),
            total >> 20,
            cap >> 20
        ),
    }
}

/// An entry's frame: its length and its JSON header.
fn frame(entry: &Entry) -> Result<Vec<u8>> {
    let head = serde_json::to_vec(entry)
        .map_err(|e| Error::Internal(format!("encoding a bundle entry: {e}")))?;
    let mut out = (head.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&head);
    Ok(out)
}

/// The frame that ends a bundle.
pub fn end_frame() -> Vec<u8> {
    frame(&Entry {
        path: String::new(),
        kind: "end".into(),
        mode: 0,
        size: 0,
        extents: None,
    })
    .unwrap_or_default()
}

/// Streams a bundle of `paths` under `top` to `out`, then the end entry (paths that
/// vanished meanwhile, or turned into symlinks or special files, are left out). Files are
/// opened beneath `top` without following a symlink, so a swapped-in symlink cannot bring
/// a host file into the VM; only their data extents are read and sent, a chunk at a time.
/// `others` is the apparent size of the files the VM holds already (not sent): with the
/// files sent it must stay within `cap`, else [`too_big`] (the stream is then incomplete,
/// and the caller gives up the VM).
pub async fn send_bundle<W: AsyncWrite + Unpin>(
    top: &Path,
    paths: &[String],
    out: &mut W,
    others: u64,
    cap: u64,
) -> Result<()> {
    let sent = |e: io::Error| Error::io("sending files to the VM", e);
    let mut total = others;
    if let Ok(root) = Dir::open_root(top) {
        let mut buf = vec![0u8; CHUNK];
        for rel in paths {
            let parts: Vec<&OsStr> = Path::new(rel)
                .components()
                .map(Component::as_os_str)
                .collect();
            let Some((name, dirs)) = parts.split_last() else {
                continue;
            };
            let Ok(Some(parent)) = walk(&root, dirs, false, None) else {
                continue;
            };
            let Ok(Some(st)) = parent.stat(name) else {
                continue;
            };
            match st.kind {
                Kind::Dir => {
                    let head = frame(&Entry {
                        path: rel.clone(),
                        kind: "dir".into(),
                        mode: st.mode & 0o777,
                        size: 0,
                        extents: None,
                    })?;
                    out.write_all(&head).await.map_err(sent)?;
                }
                Kind::File => {
                    let file = match parent.open_file(name) {
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
                    let reading =
                        |e: io::Error| Error::io(format!("reading {}", top.join(rel).display()), e);
                    let meta = file.metadata().map_err(reading)?;
                    let size = meta.len();
                    total = total.saturating_add(size);
                    if total > cap {
                        return Err(too_big(top, total, cap));
                    }
                    let extents = agentkernel_core::fsat::data_extents(&file, size, MAX_EXTENTS)
                        .map_err(reading)?;
                    let head = frame(&Entry {
                        path: rel.clone(),
                        kind: "file".into(),
                        mode: meta.permissions().mode() & 0o777,
                        size,
                        extents: Some(extents.clone()),
                    })?;
                    out.write_all(&head).await.map_err(sent)?;
                    for (offset, len) in extents {
                        let mut done = 0;
                        while done < len {
                            let want = (len - done).min(CHUNK as u64) as usize;
                            let chunk = &mut buf[..want];
                            // A file that shrank meanwhile reads as zeros past its end: the
                            // entry still carries exactly the bytes its header announced.
                            let got = file.read_at(chunk, offset + done).map_err(reading)?;
                            chunk[got..].fill(0);
                            out.write_all(chunk).await.map_err(sent)?;
                            done += want as u64;
                        }
                    }
                }
                Kind::Other => {}
            }
        }
    }
    out.write_all(&end_frame()).await.map_err(sent)?;
    out.flush().await.map_err(sent)
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

/// Opens the directories `parts` beneath `root`, one component at a time. `create`:
/// create (or replace) what is missing, giving new directories to `owner`; otherwise
/// answer `None` where a part is missing or not a directory.
fn walk(root: &Dir, parts: &[&OsStr], create: bool, owner: Owner) -> io::Result<Option<Dir>> {
    let mut at = root.try_clone()?;
    for part in parts {
        at = if create {
            ensure_dir(&at, part, owner)?
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

/// Where a read from the guest's stream failed: a bad bundle.
fn truncated(e: io::Error) -> Error {
    bad(format!("the stream ended or failed: {e}"))
}

/// Reads the extents of one file from `input` into `file` (new, empty), skipping all-zero
/// blocks so holes stay holes, then sets its apparent size.
async fn fill<R: AsyncRead + Unpin>(
    file: &File,
    input: &mut R,
    extents: &[(u64, u64)],
    size: u64,
    buf: &mut [u8],
) -> Result<io::Result<()>> {
    let mut failed = None;
    for &(offset, len) in extents {
        let mut done = 0;
        while done < len {
            let want = (len - done).min(buf.len() as u64) as usize;
            let chunk = &mut buf[..want];
            input.read_exact(chunk).await.map_err(truncated)?;
            if failed.is_none() {
                for (i, block) in chunk.chunks(ZERO_BLOCK).enumerate() {
                    if block.iter().any(|&b| b != 0)
                        && let Err(e) =
                            file.write_all_at(block, offset + done + (i * ZERO_BLOCK) as u64)
                    {
                        failed = Some(e);
                        break;
                    }
                }
            }
            done += want as u64;
        }
    }
    Ok(match failed {
        Some(e) => Err(e),
        None => file.set_len(size),
    })
}

/// Applies what the guest streams for the shared directory `top`: deletes `deleted`, then
/// writes the bundle's entries as they arrive, until its end entry. A file over `max_file`
/// bytes, or files over `max_total` bytes together (apparent sizes, holes included), are an
/// error. Answers how many files were written.
///
/// `top` is opened once; every path beneath it is resolved from that fd one component at a
/// time, refusing symlinks (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`); each
/// file is written to a new file (all-zero blocks skipped, so it is as sparse as the
/// guest's) renamed into place, and modes (see [`host_mode`]) and owners are set with
/// `fchmod`/`fchown` on open fds, so another program changing the directory meanwhile
/// cannot redirect a write, a deletion or a chmod outside it. When this process runs as
/// root, what it creates belongs to `top`'s owner, not to root.
pub async fn apply_stream<R: AsyncRead + Unpin>(
    top: &Path,
    deleted: &[String],
    input: &mut R,
    max_file: Option<u64>,
    max_total: u64,
) -> Result<usize> {
    let failed = |what: &str, rel: &str, e: io::Error| {
        let hint = if e.raw_os_error() == Some(libc::ENOSYS) {
            " (openat2 needs Linux 5.6 or later)"
        } else {
            " (if another program writes this directory while a sandbox runs, stop it)"
        };
        Error::io(format!("{what} {rel} in {}{hint}", top.display()), e)
    };
    let root = Dir::open_root(top).map_err(|e| failed("opening", ".", e))?;
    let owner: Owner = if agentkernel_core::hostdirs::euid() == 0 {
        Some(root.owner().map_err(|e| failed("stat", ".", e))?)
    } else {
        None
    };
    for rel in deleted {
        let parts = checked(rel)?;
        let Some((name, dirs)) = parts.split_last() else {
            continue;
        };
        let parent = walk(&root, dirs, false, None).map_err(|e| failed("removing", rel, e))?;
        if let Some(parent) = parent {
            parent
                .remove_all(name)
                .map_err(|e| failed("removing", rel, e))?;
        }
    }
    let mut files = 0;
    let mut total: u64 = 0;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let mut len = [0u8; 4];
        input.read_exact(&mut len).await.map_err(truncated)?;
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_ENTRY_HEADER {
            return Err(bad("an entry header too large"));
        }
        let mut head = vec![0u8; len];
        input.read_exact(&mut head).await.map_err(truncated)?;
        let entry: Entry =
            serde_json::from_slice(&head).map_err(|e| bad(format!("header: {e}")))?;
        if entry.kind == "end" {
            return Ok(files);
        }
        let parts = checked(&entry.path)?;
        let rel = entry.path.as_str();
        match entry.kind.as_str() {
            "dir" => {
                if entry.size != 0 || entry.extents.as_ref().is_some_and(|e| !e.is_empty()) {
                    return Err(bad(format!("directory {rel} with content")));
                }
                let dir = walk(&root, &parts, true, owner)
                    .map_err(|e| failed("creating", rel, e))?
                    .ok_or_else(|| failed("creating", rel, changed_meanwhile()))?;
                dir.chmod(host_mode(entry.mode, true))
                    .map_err(|e| failed("chmod", rel, e))?;
            }
            "file" => {
                let size = entry.size;
                if let Some(max) = max_file
                    && size > max
                {
                    return Err(bad(format!(
                        "{rel} is {size} bytes, over the file-size limit of {max}"
                    )));
                }
                total = total.saturating_add(size);
                if total > max_total {
                    return Err(bad(format!(
                        "the files the program left in {} add up to more than {} MiB (apparent size, holes of sparse files included), the most a microvm sandbox copies back (its memory size); write less there, or raise the memory limit",
                        top.display(),
                        max_total >> 20
                    )));
                }
                let extents = entry.extents.clone().unwrap_or_else(|| {
                    if size > 0 {
                        vec![(0, size)]
                    } else {
                        Vec::new()
                    }
                });
                let mut end = 0u64;
                for &(offset, len) in &extents {
                    let within = offset
                        .checked_add(len)
                        .is_some_and(|e| offset >= end && e <= size);
                    if !within {
                        return Err(bad(format!("{rel}: extents out of order or past its size")));
                    }
                    end = offset + len;
                }
                if extents.len() > MAX_EXTENTS {
                    return Err(bad(format!("{rel}: too many extents")));
                }
                let Some((name, dirs)) = parts.split_last() else {
                    return Err(bad("an empty path"));
                };
                let parent = walk(&root, dirs, true, owner)
                    .map_err(|e| failed("writing", rel, e))?
                    .ok_or_else(|| failed("writing", rel, changed_meanwhile()))?;
                let tmp = OsString::from(format!(
                    ".agentkernel-{}.part",
                    uuid::Uuid::new_v4().simple()
                ));
                let file = parent
                    .create_new(&tmp)
                    .map_err(|e| failed("writing", rel, e))?;
                // Removes the part file unless it was renamed into place, also when this
                // future is dropped at the deadline mid-file.
                let mut part = Part {
                    dir: &parent,
                    name: Some(tmp.as_os_str()),
                };
                // The stream is read to the entry's end whatever happens to the file, so an
                // error writing the file is reported as the file's, not as a bad bundle.
                let written = fill(&file, input, &extents, size, &mut buf)
                    .await?
                    .and_then(|()| {
                        // fchmod and fchown on the open file: no path is followed.
                        file.set_permissions(fs::Permissions::from_mode(host_mode(
                            entry.mode, false,
                        )))?;
                        if let Some((uid, gid)) = owner {
                            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
                        }
                        rename_into_place(&parent, &tmp, name)
                    });
                written.map_err(|e| failed("writing", rel, e))?;
                part.name = None;
                files += 1;
            }
            other => return Err(bad(format!("entry kind {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// A whole bundle of `paths` in memory (no cap).
    fn bundle(top: &Path, paths: &[String]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        block_on(send_bundle(top, paths, &mut out, 0, u64::MAX))?;
        Ok(out)
    }

    /// Applies the entries `data` (an end entry is added).
    fn apply(top: &Path, deleted: &[String], data: &[u8], max_file: Option<u64>) -> Result<usize> {
        let mut data = data.to_vec();
        data.extend(end_frame());
        block_on(apply_stream(
            top,
            deleted,
            &mut &data[..],
            max_file,
            u64::MAX,
        ))
    }

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

    /// Blocks a file takes on disk, in bytes.
    fn on_disk(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::symlink_metadata(path).unwrap().blocks() * 512
    }

    /// A sparse file of `size` bytes with a few bytes of data at its start and end.
    fn sparse(path: &Path, size: u64) {
        let f = File::create(path).unwrap();
        f.set_len(size).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"tail", size - 4).unwrap();
    }

    #[test]
    fn sparse_files_travel_as_their_data_and_stay_sparse() {
        let src = tempfile::tempdir().unwrap();
        let size = 64 << 20;
        sparse(&src.path().join("big"), size);
        let data = bundle(src.path(), &["big".to_owned()]).unwrap();
        assert!(
            data.len() < 1 << 20,
            "a 64 MiB sparse file with 8 bytes of data took {} bytes of bundle",
            data.len()
        );
        let dst = tempfile::tempdir().unwrap();
        assert_eq!(apply(dst.path(), &[], &data, None).unwrap(), 1);
        let back = dst.path().join("big");
        assert_eq!(fs::metadata(&back).unwrap().len(), size);
        let mut head = [0u8; 4];
        let file = File::open(&back).unwrap();
        file.read_exact_at(&mut head, 0).unwrap();
        assert_eq!(&head, b"head");
        file.read_exact_at(&mut head, size - 4).unwrap();
        assert_eq!(&head, b"tail");
        assert!(on_disk(&back) < 1 << 20, "{} bytes on disk", on_disk(&back));
        // A guest that sends the zeros anyway (one whole extent) gets a sparse file too.
        let zeros = vec![0u8; 8 << 20];
        let mut data = entry("zeros", "file", 0o644, &zeros);
        data.extend(entry("dense", "file", 0o644, &[7u8; 1 << 20]));
        apply(dst.path(), &[], &data, None).unwrap();
        assert_eq!(
            fs::metadata(dst.path().join("zeros")).unwrap().len(),
            8 << 20
        );
        assert!(on_disk(&dst.path().join("zeros")) < 64 << 10);
        assert!(on_disk(&dst.path().join("dense")) >= 1 << 20);
    }

    #[test]
    fn totals_are_capped_in_apparent_size_both_ways() {
        let src = tempfile::tempdir().unwrap();
        for i in 0..4 {
            sparse(&src.path().join(format!("s{i}")), 100 << 20);
        }
        let paths: Vec<String> = (0..4).map(|i| format!("s{i}")).collect();
        let mut out = Vec::new();
        let e = block_on(send_bundle(src.path(), &paths, &mut out, 0, 256 << 20)).unwrap_err();
        assert!(
            matches!(&e, Error::LimitExceeded { limit: LimitKind::Memory, detail } if detail.contains("256 MiB") && detail.contains("raise the memory limit")),
            "{e}"
        );
        assert!(
            out.len() < 1 << 20,
            "stopped at the cap, not after reading it all"
        );
        // Files the VM holds already count too.
        let mut out = Vec::new();
        assert!(
            block_on(send_bundle(
                src.path(),
                &paths[..1],
                &mut out,
                200 << 20,
                256 << 20
            ))
            .is_err()
        );
        // Back from the guest: the same in apparent size.
        let data = bundle(src.path(), &paths).unwrap();
        let dst = tempfile::tempdir().unwrap();
        let e = block_on(apply_stream(
            dst.path(),
            &[],
            &mut &data[..],
            None,
            256 << 20,
        ))
        .unwrap_err();
        assert!(e.to_string().contains("256 MiB"), "{e}");
        assert!(
            fs::read_dir(dst.path()).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".part"))
        );
    }

    #[test]
    fn written_back_files_are_not_group_or_world_writable_and_belong_to_the_owner() {
        let top = tempfile::tempdir().unwrap();
        let euid = agentkernel_core::hostdirs::euid();
        let owner = if euid == 0 {
            std::os::unix::fs::chown(top.path(), Some(4321), Some(4322)).unwrap();
            (4321, 4322)
        } else {
            use std::os::unix::fs::MetadataExt;
            let m = fs::metadata(top.path()).unwrap();
            (m.uid(), m.gid())
        };
        let mut data = entry("open", "dir", 0o777, b"");
        data.extend(entry("open/deeper/f", "file", 0o6777, b"x"));
        data.extend(entry("g", "file", 0o666, b"x"));
        apply(top.path(), &[], &data, None).unwrap();
        for (name, want) in [
            ("open", 0o755),
            ("open/deeper", 0o700),
            ("open/deeper/f", 0o755),
            ("g", 0o644),
        ] {
            use std::os::unix::fs::MetadataExt;
            let m = fs::symlink_metadata(top.path().join(name)).unwrap();
            assert_eq!(m.mode() & 0o7777, want, "{name}");
            assert_eq!((m.uid(), m.gid()), owner, "{name}");
        }
    }

    fn one(path: &str, body: &[u8]) -> Vec<u8> {
        let head = serde_json::to_vec(&Entry {
            path: path.into(),
            kind: "file".into(),
            mode: 0o4755,
            size: body.len() as u64,
            extents: None,
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
            extents: None,
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
