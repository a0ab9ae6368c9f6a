//! `/v1/sandboxes/{id}/files/{path}`: the files of a sandbox's workspace (`/workspace` in
//! the sandbox), streamed both ways.
//!
//! - `GET` a file: its bytes (`application/octet-stream`), streamed; `GET` a directory (or
//!   `/files` alone, the workspace itself): `{"path", "entries": [{"name", "type", "size",
//!   "modified"}]}`.
//! - `PUT` a file: the body becomes the file (parents created), written to a part file
//!   first (at most the sandbox's file-size limit, 413 past it, and the old file untouched),
//!   then put in place: an existing file is rewritten in place (its inode kept, so a
//!   sandbox whose overlay cached it sees the new content), anything else is replaced by a
//!   rename. 201 `{"path", "size"}`.
//!
//! The process backend's write layer is an overlay on the workspace that caches what the
//! interpreter already opened: a file or directory deleted here that the running
//! interpreter had opened may still appear to it until its interpreter restarts (a new
//! sandbox, or a run killed by a limit). New files and rewritten ones are seen at once.
//! - `DELETE`: a file, or a directory with everything in it. 204.
//!
//! A workspace is untrusted: the program may have planted symlinks (to `/etc`, to another
//! workspace). Every step is taken relative to an open directory with
//! [`agentkernel_core::fsat`] (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), so a
//! symlink is never followed, not even one swapped in between a check and a use: a path
//! through or to one is refused (400 `symlink_refused`), and `..` is refused before anything
//! is opened (400 `invalid_path`). Paths are relative to the workspace; `/workspace/...` is
//! accepted too. `/tmp` is the sandbox's private memory and is not reachable from the host.
//! A change occupies the sandbox like an execution: one while an execution runs, or an
//! execution while one is under way, is refused (409); the program's own writes reach the
//! workspace when it ends.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt as _;
use std::time::UNIX_EPOCH;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt as _;

use agentkernel_core::fsat::{Dir, Kind, Part, rename_into_place};

use crate::http::{ApiError, ErrorResponses, KeyId, SandboxEntry, ServerState};

/// Largest upload when the sandbox has no file-size limit.
const MAX_UPLOAD_WITHOUT_LIMIT: u64 = 1 << 30;
/// Most entries a directory listing returns.
const MAX_ENTRIES: usize = 10_000;

/// One entry of a directory listing.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileEntry {
    /// Its name.
    pub name: String,
    /// `file`, `dir`, `symlink` or `other`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Size in bytes.
    pub size: u64,
    /// Last change of its content, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified: Option<f64>,
}

/// A directory listing.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileList {
    /// The directory, relative to the workspace (`""` for the workspace itself).
    pub path: String,
    /// Its entries, by name.
    pub entries: Vec<FileEntry>,
    /// Whether entries past the first 10,000 were left out.
    pub truncated: bool,
}

/// What `PUT` answers.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileWritten {
    /// The file, relative to the workspace.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
}

/// The components of `path`, relative to the workspace: 400 for `..`, a NUL, an absolute
/// path outside `/workspace`, or an over-long path.
pub fn parse_path(path: &str) -> Result<Vec<OsString>, ApiError> {
    let bad = |why: &str| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            format!("{path:?} is not a path in the workspace: {why}"),
            "give a path relative to the workspace (e.g. data/in.csv, or /workspace/data/in.csv), without '..'",
        )
    };
    if path.len() > 4096 {
        return Err(bad("it is over 4096 bytes"));
    }
    if path.contains('\0') {
        return Err(bad("it holds a NUL byte"));
    }
    let rel = match path.strip_prefix('/') {
        None => path,
        Some(abs) => match abs.strip_prefix("workspace") {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
            _ => return Err(bad("only /workspace is reachable")),
        },
    };
    let mut parts = Vec::new();
    for part in rel.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(bad("'..' is not allowed")),
            p if p.len() > 255 => return Err(bad("a name is over 255 bytes")),
            p => parts.push(OsString::from(p)),
        }
    }
    Ok(parts)
}

fn shown(parts: &[OsString]) -> String {
    parts
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// An I/O failure on `path` as an API error.
fn io_error(path: &str, e: std::io::Error) -> ApiError {
    match e.raw_os_error() {
        Some(ELOOP | EXDEV) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "symlink_refused",
            format!("{path:?} is, or goes through, a symbolic link"),
            "the server never follows links in a workspace: use the path of the file itself",
        ),
        Some(ENOENT) | Some(ENOTDIR) => ApiError::new(
            StatusCode::NOT_FOUND,
            "file_not_found",
            format!("no file {path:?} in the workspace"),
            "list the workspace with GET /v1/sandboxes/{id}/files",
        ),
        Some(EINVAL) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "not_a_file",
            format!("{path:?} is not a regular file"),
            "only regular files and directories are served",
        ),
        Some(ENOSPC) | Some(EDQUOT) => ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "no_space",
            format!("no room left writing {path:?}"),
            "free space on the server, or delete files from the workspace",
        ),
        _ => ApiError::from(agentkernel_core::Error::io(
            format!("accessing {path:?}"),
            e,
        )),
    }
}

// Errno values (Linux) the mapping above names.
const ENOENT: i32 = 2;
const EEXIST: i32 = 17;
const EXDEV: i32 = 18;
const ENOTDIR: i32 = 20;
const EINVAL: i32 = 22;
const ENOSPC: i32 = 28;
const ELOOP: i32 = 40;
const EDQUOT: i32 = 122;

/// The workspace's directory, opened (the trusted root: the kernel resolved it).
fn root(entry: &SandboxEntry) -> Result<Dir, ApiError> {
    let path = &entry.session().workspace().path;
    Dir::open_root(path).map_err(|e| io_error("", e))
}

/// The directory of `parts` (all of them), never through a symlink.
fn open_dirs(root: Dir, parts: &[OsString], shown: &str) -> Result<Dir, ApiError> {
    let mut dir = root;
    for part in parts {
        dir = open_dir(&dir, part, shown)?;
    }
    Ok(dir)
}

/// The directory `part` of `dir`: a symlink there is refused as one (the kernel may
/// answer `ENOTDIR` or `ELOOP` for it).
fn open_dir(dir: &Dir, part: &OsStr, shown: &str) -> Result<Dir, ApiError> {
    dir.open_dir(part).map_err(|e| {
        let is_link = matches!(dir.stat(part), Ok(Some(st)) if st.file_type == S_IFLNK);
        if is_link {
            io_error(shown, std::io::Error::from_raw_os_error(ELOOP))
        } else {
            io_error(shown, e)
        }
    })
}

/// The workspace's top directory.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/files", tag = "files",
    params(("id" = String, Path, description = "sandbox id")),
    responses((status = 200, description = "its entries", body = FileList), ErrorResponses))]
pub(super) async fn list_root(
    State(state): State<ServerState>,
    Extension(who): Extension<KeyId>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    read(state, who, id, String::new()).await
}

/// A file's bytes (streamed), or a directory's entries.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/files/{*path}", tag = "files",
    params(("id" = String, Path, description = "sandbox id"),
           ("path" = String, Path, description = "path in the workspace")),
    responses((status = 200, description = "the file's bytes, or the directory's entries",
        content((Vec<u8> = "application/octet-stream"), (FileList = "application/json"))),
        ErrorResponses))]
pub(super) async fn get(
    State(state): State<ServerState>,
    Extension(who): Extension<KeyId>,
    Path((id, path)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    read(state, who, id, path).await
}

async fn read(
    state: ServerState,
    who: KeyId,
    id: String,
    path: String,
) -> Result<Response, ApiError> {
    let entry = state.sandbox(&who, &id)?;
    let parts = parse_path(&path)?;
    let name = shown(&parts);
    let root = root(&entry)?;
    let Some((last, parents)) = parts.split_last() else {
        return Ok(axum::Json(listing(&root, &name)?).into_response());
    };
    let parent = open_dirs(root, parents, &name)?;
    let stat = parent
        .stat(last)
        .map_err(|e| io_error(&name, e))?
        .ok_or_else(|| io_error(&name, std::io::Error::from_raw_os_error(ENOENT)))?;
    if stat.kind == Kind::Dir {
        let dir = parent.open_dir(last).map_err(|e| io_error(&name, e))?;
        return Ok(axum::Json(listing(&dir, &name)?).into_response());
    }
    let file = parent.open_file(last).map_err(|e| io_error(&name, e))?;
    let size = file.metadata().map_err(|e| io_error(&name, e))?.len();
    let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file));
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    Ok(response)
}

fn listing(dir: &Dir, name: &str) -> Result<FileList, ApiError> {
    let mut names = dir.names().map_err(|e| io_error(name, e))?;
    names.sort();
    let truncated = names.len() > MAX_ENTRIES;
    names.truncate(MAX_ENTRIES);
    let mut entries = Vec::with_capacity(names.len());
    for n in names {
        // Gone meanwhile: left out.
        let Ok(Some(st)) = dir.stat(&n) else { continue };
        let kind = match st.kind {
            Kind::Dir => "dir",
            Kind::File => "file",
            _ if st.file_type == S_IFLNK => "symlink",
            _ => "other",
        };
        entries.push(FileEntry {
            name: n.to_string_lossy().into_owned(),
            kind: kind.to_owned(),
            size: st.size,
            modified: st
                .mtime
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs_f64()),
        });
    }
    Ok(FileList {
        path: name.to_owned(),
        entries,
        truncated,
    })
}

const S_IFLNK: u32 = 0o120000;

/// Writes a file (streamed; parents made; at most the sandbox's file-size limit).
#[utoipa::path(put, path = "/v1/sandboxes/{id}/files/{*path}", tag = "files",
    params(("id" = String, Path, description = "sandbox id"),
           ("path" = String, Path, description = "path in the workspace")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, description = "written", body = FileWritten), ErrorResponses))]
pub(super) async fn put(
    State(state): State<ServerState>,
    Extension(who): Extension<KeyId>,
    Path((id, path)): Path<(String, String)>,
    body: Body,
) -> Result<Response, ApiError> {
    let entry = state.sandbox(&who, &id)?;
    // Held until the file is in place: an execution meanwhile is refused (409), and this
    // is refused while one runs (the program's writes reach the workspace when it ends).
    let _occupied = entry.occupy()?;
    let parts = parse_path(&path)?;
    let name = shown(&parts);
    let Some((last, parents)) = parts.split_last() else {
        return Err(ApiError::bad_request(
            "PUT needs a file path, not the workspace itself",
            "e.g. PUT /v1/sandboxes/{id}/files/data/in.csv",
        ));
    };
    let cap = entry
        .limits
        .file_size_bytes
        .unwrap_or(MAX_UPLOAD_WITHOUT_LIMIT);
    let root = root(&entry)?;
    let owner = root.owner().ok();
    // Parents are created (owned like the workspace); an existing one must be a real
    // directory.
    let mut parent = root;
    for part in parents {
        parent = match parent.stat(part).map_err(|e| io_error(&name, e))? {
            Some(_) => open_dir(&parent, part, &name)?,
            None => {
                let made = match parent.mkdir(part) {
                    Ok(()) => true,
                    Err(e) if e.raw_os_error() == Some(EEXIST) => false,
                    Err(e) => return Err(io_error(&name, e)),
                };
                let d = open_dir(&parent, part, &name)?;
                if made {
                    let _ = d.chmod(0o755);
                    if let Some((uid, gid)) = owner {
                        // Only root can give it away; otherwise it is this server's already.
                        let _ = d.chown(uid, gid);
                    }
                }
                d
            }
        };
    }
    if let Some(st) = parent.stat(last).map_err(|e| io_error(&name, e))?
        && st.kind == Kind::Dir
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "is_a_directory",
            format!("{name:?} is a directory"),
            "delete it first, or write to a path inside it",
        ));
    }
    let part_name = OsString::from(format!(
        ".{}.part-{}",
        last.to_string_lossy(),
        uuid::Uuid::new_v4().simple()
    ));
    if part_name.as_bytes().len() > 255 {
        return Err(ApiError::bad_request(
            format!("the name of {name:?} is too long to write safely"),
            "use a name under 200 bytes",
        ));
    }
    let std_file = parent
        .create_new(&part_name)
        .map_err(|e| io_error(&name, e))?;
    let mut part = Part {
        dir: &parent,
        name: Some(part_name.as_os_str()),
    };
    if let Some((uid, gid)) = owner {
        let _ = std::os::unix::fs::fchown(&std_file, Some(uid), Some(gid));
    }
    {
        use std::os::unix::fs::PermissionsExt as _;
        let _ = std_file.set_permissions(std::fs::Permissions::from_mode(0o644));
    }
    let mut file = tokio::fs::File::from_std(std_file);
    let mut size: u64 = 0;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request(
                format!("reading the upload failed: {e}"),
                "send the whole body again",
            )
        })?;
        size += chunk.len() as u64;
        if size > cap {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "file_too_large",
                format!("the upload is over the sandbox's file-size limit of {cap} bytes"),
                "upload a smaller file, or create the sandbox with a larger limits.file_size_bytes (up to the server's)",
            ));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| io_error(&name, e))?;
    }
    file.flush().await.map_err(|e| io_error(&name, e))?;
    drop(file);
    put_in_place(&parent, &part_name, last, &name).await?;
    part.name = None;
    Ok((
        StatusCode::CREATED,
        axum::Json(FileWritten { path: name, size }),
    )
        .into_response())
}

/// Puts the complete part file `part` at `last`. An existing regular file there is
/// rewritten in place (same inode: a sandbox whose overlay cached the file sees the new
/// content), and the part removed; anything else there (nothing, a symlink) is replaced by
/// renaming the part into place, never followed.
async fn put_in_place(
    parent: &Dir,
    part: &OsStr,
    last: &OsStr,
    name: &str,
) -> Result<(), ApiError> {
    let existing = matches!(parent.stat(last), Ok(Some(st)) if st.kind == Kind::File);
    if existing {
        let from = parent.open_file(part).map_err(|e| io_error(name, e))?;
        let to = parent
            .open_existing_for_write(last)
            .map_err(|e| io_error(name, e))?;
        to.set_len(0).map_err(|e| io_error(name, e))?;
        let mut from = tokio::fs::File::from_std(from);
        let mut to = tokio::fs::File::from_std(to);
        tokio::io::copy(&mut from, &mut to)
            .await
            .map_err(|e| io_error(name, e))?;
        to.flush().await.map_err(|e| io_error(name, e))?;
        parent.unlink(part).map_err(|e| io_error(name, e))?;
        return Ok(());
    }
    rename_into_place(parent, part, last).map_err(|e| io_error(name, e))
}

/// Deletes a file, or a directory and everything in it.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}/files/{*path}", tag = "files",
    params(("id" = String, Path, description = "sandbox id"),
           ("path" = String, Path, description = "path in the workspace")),
    responses((status = 204, description = "deleted"), ErrorResponses))]
pub(super) async fn delete(
    State(state): State<ServerState>,
    Extension(who): Extension<KeyId>,
    Path((id, path)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let entry = state.sandbox(&who, &id)?;
    let _occupied = entry.occupy()?;
    let parts = parse_path(&path)?;
    let name = shown(&parts);
    let Some((last, parents)) = parts.split_last() else {
        return Err(ApiError::bad_request(
            "DELETE needs a path in the workspace, not the workspace itself",
            "delete the files in it one by one, or delete the sandbox (its own workspace goes with it)",
        ));
    };
    let parent = open_dirs(root(&entry)?, parents, &name)?;
    if parent.stat(last).map_err(|e| io_error(&name, e))?.is_none() {
        return Err(io_error(&name, std::io::Error::from_raw_os_error(ENOENT)));
    }
    // Never through a symlink: a symlink itself is removed, not its target.
    parent
        .remove_all(OsStr::new(last))
        .map_err(|e| io_error(&name, e))?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_in_the_workspace() {
        let ok = |p: &str| -> Vec<String> {
            parse_path(p)
                .unwrap()
                .iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(ok("a/b.txt"), ["a", "b.txt"]);
        assert_eq!(ok("/workspace/a//./b"), ["a", "b"]);
        assert!(ok("/workspace").is_empty());
        assert!(ok("").is_empty());
        for bad in [
            "../x",
            "a/../../x",
            "/etc/passwd",
            "/workspaces/x",
            "/tmp/x",
            "a\0b",
        ] {
            let e = parse_path(bad).unwrap_err();
            assert_eq!(e.code, "invalid_path", "{bad}");
        }
        assert!(parse_path(&"a/".repeat(3000)).is_err());
        assert!(parse_path(&"x".repeat(256)).is_err());
    }

    /// Arbitrary paths (random bytes from a set rich in separators, dots and multi-byte
    /// characters) never panic, and what is accepted has no `..`, no empty or over-long
    /// component and no NUL.
    #[test]
    fn arbitrary_paths_never_panic_or_escape() {
        const PIECES: &[&str] = &[
            "/",
            ".",
            "..",
            "a",
            "é",
            "\0",
            "\u{202e}",
            "workspace",
            "/workspace",
            "%2e",
            "\\",
            "~",
            " ",
            "\n",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let mut path = String::new();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 12) as usize;
            for i in 0..len {
                let pick = (seed.rotate_left(i as u32 * 5) % PIECES.len() as u64) as usize;
                path.push_str(PIECES[pick]);
            }
            if let Ok(parts) = parse_path(&path) {
                for p in parts {
                    let b = p.as_bytes();
                    assert!(
                        !b.is_empty() && b != b"." && b != b".." && !b.contains(&0),
                        "{path:?}"
                    );
                    assert!(!b.contains(&b'/') && b.len() <= 255, "{path:?}");
                }
            }
        }
    }
}
