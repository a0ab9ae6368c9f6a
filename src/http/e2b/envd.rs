//! envd (`E2b-Sandbox-Port: 49983`): files (`GET`/`POST /files`), the Connect-RPC
//! `filesystem.Filesystem` calls `Stat`, `ListDir`, `MakeDir`, `Move`, `Remove`, the
//! `process.Process/Start` stream (`commands.run`), and `GET /health`
//! (docs/e2b-protocol.md §5–6).
//!
//! Paths: `/home/user` (and `/workspace`, the workspace's path inside the sandbox) is the
//! sandbox's workspace; a relative path is relative to it. Every other path (`/tmp`, the
//! sandbox's own tmpfs, among them) is refused with `invalid_argument`.
//!
//! Files are read and written from the host, in the workspace's host directory, with
//! [`agentkernel_core::fsat::Dir`]: each path component is opened with `openat2`
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, so a symlink the program planted is never
//! followed (it is refused: "is a symlink"). This works while a program runs (E2B's
//! `files.write` from an `on_stdout` callback is answered during the run, which a file
//! operation through the busy session could not be). Sizes: a file read or written is at
//! most [`MAX_FILE_BYTES`].
//!
//! Commands run inside the sandbox, through its session: a small Python program starts
//! `cmd args` with `subprocess` (in the workspace, with the sandbox's environment plus the
//! command's `envs`), copies its stdout and stderr to the session's as they come (so they
//! stream), enforces the command's timeout (`connect-timeout-ms`) itself by killing the
//! command's process group, and returns the exit status as its last expression's value.
//! `/bin/bash` is used when the sandbox has it, else `sh`. Commands queue behind a running
//! execution of the same sandbox. The program's globals are untouched (the helper runs in
//! a namespace of its own).
//!
//! Refused with Connect `unimplemented`: PTYs, stdin, `Process/Connect`, `SendSignal`,
//! `List`, `Update`, and the watch RPCs.

use std::ffi::OsString;
use std::io::Write as _;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as AxPath, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use agentkernel_core::fsat::{Dir, Kind};
use agentkernel_core::{ExecRequest, ExecStatus, StreamKind};

use super::connect::{
    self, Code, ConnectError, DataEvent, EndEvent, EntryInfo, EntryResponse, FileType,
    ListDirRequest, ListDirResponse, MoveRequest, PathRequest, ProcessEvent, StartRequest,
    StartResponse,
};
use super::{E2bSandbox, E2bState, HOME, ViewState, plain_error};
use crate::http::{ExecEnd, ExecEvent, SandboxEntry};
use std::sync::Arc;

/// The largest file `files.read` or `files.write` moves, 100 MiB.
pub const MAX_FILE_BYTES: usize = 100 << 20;
/// The largest Connect message accepted.
const MAX_MESSAGE: usize = 1 << 20;
/// The workspace's path inside the sandbox.
const SANDBOX_HOME: &str = "/workspace";

/// envd's routes.
pub fn routes(state: E2bState) -> Router {
    Router::new()
        .route("/health", get(|| async { StatusCode::NO_CONTENT }))
        .route("/files", get(read_file).post(write_files))
        .route("/filesystem.Filesystem/{method}", post(filesystem))
        .route("/process.Process/{method}", post(process))
        .fallback(|uri: axum::http::Uri| async move {
            plain_error(
                StatusCode::NOT_IMPLEMENTED,
                &format!(
                    "{}: this envd route is not supported by agentkernel",
                    uri.path()
                ),
            )
        })
        .with_state(state)
}

// ---------------------------------------------------------------- paths

/// A path of the E2B user's, resolved: components below the workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPath {
    /// The components under the workspace (empty: the workspace itself).
    pub parts: Vec<OsString>,
}

impl UserPath {
    /// `path` as the user wrote it: absolute under `/home/user` or `/workspace`, or
    /// relative to `/home/user`. `..` may not climb above the workspace.
    pub fn parse(path: &str) -> Result<UserPath, String> {
        if path.as_bytes().contains(&0) {
            return Err(format!("path {path:?} holds a NUL byte"));
        }
        let rest = if path.is_empty() || path == "~" {
            ""
        } else if let Some(r) = path.strip_prefix("~/") {
            r
        } else if path.starts_with('/') {
            let Some(r) = [HOME, SANDBOX_HOME].iter().find_map(|root| {
                path.strip_prefix(root)
                    .filter(|r| r.is_empty() || r.starts_with('/'))
            }) else {
                return Err(format!(
                    "path {path} is outside /home/user: agentkernel's files API reaches only the sandbox's workspace, /home/user (/tmp is the sandbox's own and not reachable from outside); use a path under /home/user"
                ));
            };
            r
        } else {
            path
        };
        let mut parts: Vec<OsString> = Vec::new();
        for c in rest.split('/') {
            match c {
                "" | "." => {}
                ".." => {
                    if parts.pop().is_none() {
                        return Err(format!(
                            "path {path} leaves /home/user: agentkernel's files API reaches only the workspace"
                        ));
                    }
                }
                c => parts.push(OsString::from(c)),
            }
        }
        Ok(UserPath { parts })
    }

    /// As the user sees it: `/home/user/…`.
    pub fn display(&self) -> String {
        let mut s = HOME.to_owned();
        for p in &self.parts {
            s.push('/');
            s.push_str(&p.to_string_lossy());
        }
        s
    }

    /// Inside the sandbox: `/workspace/…`.
    fn in_sandbox(&self) -> String {
        let mut s = SANDBOX_HOME.to_owned();
        for p in &self.parts {
            s.push('/');
            s.push_str(&p.to_string_lossy());
        }
        s
    }

    fn name(&self) -> String {
        self.parts
            .last()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| "user".to_owned())
    }
}

/// A file-operation failure, as a Connect code and a readable message.
type FsError = ConnectError;

fn io_error(path: &UserPath, e: &std::io::Error) -> FsError {
    let p = path.display();
    match e.raw_os_error() {
        Some(libc::ENOENT) => ConnectError::new(Code::NotFound, format!("{p} does not exist")),
        Some(libc::ELOOP) => ConnectError::new(
            Code::InvalidArgument,
            format!(
                "{p} is, or goes through, a symlink: agentkernel's files API never follows symlinks in the workspace (use the real path)"
            ),
        ),
        Some(libc::ENOTDIR) => ConnectError::new(
            Code::InvalidArgument,
            format!("{p}: a component of the path is not a directory"),
        ),
        Some(libc::EISDIR) => {
            ConnectError::new(Code::InvalidArgument, format!("{p} is a directory"))
        }
        Some(libc::EEXIST) => ConnectError::new(Code::AlreadyExists, format!("{p} exists")),
        Some(libc::EACCES | libc::EPERM) => {
            ConnectError::new(Code::PermissionDenied, format!("{p}: permission denied"))
        }
        Some(libc::ENOSPC | libc::EDQUOT) => ConnectError::new(
            Code::ResourceExhausted,
            format!("{p}: no space left for the workspace"),
        ),
        Some(libc::EINVAL) => ConnectError::new(
            Code::InvalidArgument,
            format!("{p} is not a regular file or directory"),
        ),
        _ => ConnectError::new(Code::Internal, format!("{p}: {e}")),
    }
}

/// The sandbox's workspace for a file operation, and the filesystem ids to run it with:
/// through the sandbox's own root when known and current (see [`super::view`]), found anew
/// when stale and the sandbox is idle, else the host directory.
async fn workspace(
    state: &E2bState,
    entry: &Arc<SandboxEntry>,
    e2b: &E2bSandbox,
) -> Result<(Dir, Option<(u32, u32)>), FsError> {
    let known = e2b.view.lock().map(|v| v.clone()).unwrap_or_default();
    let view = match known {
        ViewState::Found(v) if v.is_current() => Some(v),
        ViewState::Absent => None,
        _ => match e2b.queue.clone().try_lock_owned() {
            Ok(_turn) if !entry.is_busy() => state.discover_view(entry, e2b).await,
            _ => None,
        },
    };
    if let Some(v) = view {
        match v.workspace() {
            Ok(dir) => return Ok((dir, v.fsids)),
            Err(e) => {
                tracing::warn!(sandbox = %entry.id, error = %e, "the sandbox's /workspace could not be opened through its root; using the host directory")
            }
        }
    }
    let dir = Dir::open_root(&entry.session().workspace().path).map_err(|e| {
        ConnectError::new(
            Code::Unavailable,
            format!("the sandbox's workspace cannot be opened: {e}"),
        )
    })?;
    // What is created there belongs to the directory's owner (the sandbox's user while it
    // lives, as root), never to this process.
    let (uid, gid) = dir
        .owner()
        .map_err(|e| ConnectError::new(Code::Internal, e.to_string()))?;
    Ok((dir, super::view::fsids_unless_mine(uid, gid)))
}

/// The directory holding `path`'s last component (created, with its parents, when
/// `create`), and that component's name. `None` for the workspace itself.
fn parent_of(ws: &Dir, path: &UserPath, create: bool) -> Result<(Dir, Option<OsString>), FsError> {
    let mut dir = ws
        .try_clone()
        .map_err(|e| ConnectError::new(Code::Internal, e.to_string()))?;
    let Some((last, dirs)) = path.parts.split_last() else {
        return Ok((dir, None));
    };
    for (i, part) in dirs.iter().enumerate() {
        let sub = UserPath {
            parts: path.parts[..=i].to_vec(),
        };
        dir = match dir.open_dir(part) {
            Ok(d) => d,
            Err(e)
                if matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::ELOOP))
                    && dir
                        .stat(part)
                        .ok()
                        .flatten()
                        .is_some_and(|st| st.file_type == libc::S_IFLNK) =>
            {
                return Err(io_error(
                    &sub,
                    &std::io::Error::from_raw_os_error(libc::ELOOP),
                ));
            }
            Err(e) if create && e.raw_os_error() == Some(libc::ENOENT) => {
                match dir.mkdir(part) {
                    Err(e) if e.raw_os_error() != Some(libc::EEXIST) => {
                        return Err(io_error(&sub, &e));
                    }
                    _ => {}
                }
                dir.open_dir(part).map_err(|e| io_error(&sub, &e))?
            }
            Err(e) => return Err(io_error(&sub, &e)),
        };
    }
    Ok((dir, Some(last.clone())))
}

fn entry_info(
    path: &UserPath,
    st: &agentkernel_core::fsat::Stat,
    target: Option<String>,
) -> EntryInfo {
    let file_type = match st.kind {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::File,
        Kind::Other if st.file_type == libc::S_IFLNK => FileType::Symlink,
        Kind::Other => FileType::Unspecified,
    };
    let t = st.mtime.unwrap_or(std::time::UNIX_EPOCH);
    EntryInfo {
        name: path.name(),
        file_type,
        path: path.display(),
        size: i64::try_from(st.size).unwrap_or(i64::MAX),
        mode: st.mode & 0o777,
        permissions: permissions(st),
        owner: "user".into(),
        group: "user".into(),
        modified_time: super::rfc3339(t),
        is_symlink: target.is_some(),
        symlink_target: target,
        metadata: Default::default(),
    }
}

fn permissions(st: &agentkernel_core::fsat::Stat) -> String {
    let mut s = String::with_capacity(10);
    s.push(match st.kind {
        Kind::Dir => 'd',
        Kind::File => '-',
        Kind::Other if st.file_type == libc::S_IFLNK => 'l',
        Kind::Other => '?',
    });
    for shift in [6, 3, 0] {
        let bits = (st.mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// `path`'s entry (the link itself for a symlink).
fn stat(ws: &Dir, path: &UserPath) -> Result<EntryInfo, FsError> {
    let (dir, name) = parent_of(ws, path, false)?;
    let name = name.unwrap_or_else(|| OsString::from("."));
    let st = dir
        .stat(&name)
        .map_err(|e| io_error(path, &e))?
        .ok_or_else(|| io_error(path, &std::io::Error::from_raw_os_error(libc::ENOENT)))?;
    let target = (st.file_type == libc::S_IFLNK)
        .then(|| dir.read_link(&name).ok())
        .flatten()
        .map(|t| t.to_string_lossy().into_owned());
    Ok(entry_info(path, &st, target))
}

/// The deepest listing `ListDir` walks (the program decides how deep its tree goes: the
/// recursion and the answer stay bounded whatever it made).
pub const MAX_LIST_DEPTH: u32 = 32;
/// The most entries one `ListDir` answers.
pub const MAX_LIST_ENTRIES: usize = 100_000;
/// The most bytes of paths and link targets one `ListDir` answers (entries are counted,
/// but a deep tree's paths are long: this bounds the answer's memory whatever the names).
pub const MAX_LIST_BYTES: usize = 16 << 20;

fn list_dir(ws: &Dir, path: &UserPath, depth: u32) -> Result<Vec<EntryInfo>, FsError> {
    if depth > MAX_LIST_DEPTH {
        return Err(ConnectError::new(
            Code::InvalidArgument,
            format!(
                "a listing of depth {depth} was asked for; agentkernel lists at most {MAX_LIST_DEPTH} levels: list a deeper directory by its path"
            ),
        ));
    }
    let (parent, name) = parent_of(ws, path, false)?;
    let dir = match &name {
        Some(n) => parent.open_dir(n).map_err(|e| io_error(path, &e))?,
        None => parent,
    };
    let mut out = Vec::new();
    walk(&dir, path, depth.max(1), &mut out, &mut 0)?;
    Ok(out)
}

fn walk(
    dir: &Dir,
    at: &UserPath,
    depth: u32,
    out: &mut Vec<EntryInfo>,
    bytes: &mut usize,
) -> Result<(), FsError> {
    let mut names = dir.names().map_err(|e| io_error(at, &e))?;
    names.sort();
    for n in names {
        if out.len() >= MAX_LIST_ENTRIES || *bytes > MAX_LIST_BYTES {
            return Err(ConnectError::new(
                Code::ResourceExhausted,
                format!(
                    "{} holds more than {MAX_LIST_ENTRIES} entries (or {} MiB of names) at the depth asked for: list with a smaller depth or a deeper path",
                    at.display(),
                    MAX_LIST_BYTES >> 20
                ),
            ));
        }
        let mut p = at.clone();
        p.parts.push(n.clone());
        let Some(st) = dir.stat(&n).map_err(|e| io_error(&p, &e))? else {
            continue;
        };
        let target = (st.file_type == libc::S_IFLNK)
            .then(|| dir.read_link(&n).ok())
            .flatten()
            .map(|t| t.to_string_lossy().into_owned());
        let info = entry_info(&p, &st, target);
        *bytes += info.path.len() + info.symlink_target.as_ref().map_or(0, String::len);
        out.push(info);
        if st.kind == Kind::Dir && depth > 1 {
            let sub = dir.open_dir(&n).map_err(|e| io_error(&p, &e))?;
            walk(&sub, &p, depth - 1, out, bytes)?;
        }
    }
    Ok(())
}

/// `path` opened for reading, with its size then (at most [`MAX_FILE_BYTES`]).
fn open_for_read(ws: &Dir, path: &UserPath) -> Result<(std::fs::File, u64), FsError> {
    let (dir, name) = parent_of(ws, path, false)?;
    let Some(name) = name else {
        return Err(io_error(
            path,
            &std::io::Error::from_raw_os_error(libc::EISDIR),
        ));
    };
    let file = dir.open_file(&name).map_err(|e| {
        if dir
            .stat(&name)
            .ok()
            .flatten()
            .is_some_and(|s| s.kind == Kind::Dir)
        {
            io_error(path, &std::io::Error::from_raw_os_error(libc::EISDIR))
        } else {
            io_error(path, &e)
        }
    })?;
    let size = file.metadata().map_err(|e| io_error(path, &e))?.len();
    if size > MAX_FILE_BYTES as u64 {
        return Err(too_large(path));
    }
    Ok((file, size))
}

fn too_large(path: &UserPath) -> FsError {
    ConnectError::new(
        Code::ResourceExhausted,
        format!(
            "{} is over agentkernel's file size cap for the files API ({} MiB); move large data from inside the sandbox (commands.run / run_code)",
            path.display(),
            MAX_FILE_BYTES >> 20
        ),
    )
}

/// Writes `data` to `path` (parents created; an existing file, or a symlink in its place,
/// replaced, never followed): a part file renamed into place.
fn write_file(ws: &Dir, path: &UserPath, data: &[u8]) -> Result<(), FsError> {
    use std::os::unix::fs::PermissionsExt as _;
    let (dir, name) = parent_of(ws, path, true)?;
    let Some(name) = name else {
        return Err(io_error(
            path,
            &std::io::Error::from_raw_os_error(libc::EISDIR),
        ));
    };
    let mut tmp = OsString::from(".ak-upload-");
    tmp.push(uuid::Uuid::new_v4().simple().to_string());
    let mut part = agentkernel_core::fsat::Part {
        dir: &dir,
        name: Some(&tmp),
    };
    let mut file = dir.create_new(&tmp).map_err(|e| io_error(path, &e))?;
    file.write_all(data).map_err(|e| io_error(path, &e))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(|e| io_error(path, &e))?;
    drop(file);
    agentkernel_core::fsat::rename_into_place(&dir, &tmp, &name).map_err(|e| io_error(path, &e))?;
    part.name = None;
    Ok(())
}

fn remove(ws: &Dir, path: &UserPath) -> Result<(), FsError> {
    let (dir, name) = parent_of(ws, path, false)?;
    let Some(name) = name else {
        return Err(ConnectError::new(
            Code::InvalidArgument,
            "refusing to remove /home/user itself",
        ));
    };
    if dir.stat(&name).map_err(|e| io_error(path, &e))?.is_none() {
        return Err(io_error(
            path,
            &std::io::Error::from_raw_os_error(libc::ENOENT),
        ));
    }
    dir.remove_all(&name).map_err(|e| io_error(path, &e))
}

fn make_dir(ws: &Dir, path: &UserPath) -> Result<EntryInfo, FsError> {
    let (dir, name) = parent_of(ws, path, true)?;
    let Some(name) = name else {
        return Err(io_error(
            path,
            &std::io::Error::from_raw_os_error(libc::EEXIST),
        ));
    };
    dir.mkdir(&name).map_err(|e| io_error(path, &e))?;
    if let Ok(d) = dir.open_dir(&name) {
        let _ = d.chmod(0o755);
    }
    stat(ws, path)
}

fn rename(ws: &Dir, from: &UserPath, to: &UserPath) -> Result<EntryInfo, FsError> {
    let (src_dir, src) = parent_of(ws, from, false)?;
    let (dst_dir, dst) = parent_of(ws, to, true)?;
    let (Some(src), Some(dst)) = (src, dst) else {
        return Err(ConnectError::new(
            Code::InvalidArgument,
            "cannot move /home/user itself",
        ));
    };
    let same_parent = from.parts[..from.parts.len() - 1] == to.parts[..to.parts.len() - 1];
    let moved = if same_parent {
        src_dir.rename(&src, &dst)
    } else {
        // Across directories: a regular file only (a hard link, then the old name goes).
        dst_dir
            .link_from(&src_dir, &src, &dst)
            .and_then(|()| src_dir.unlink(&src))
    };
    moved.map_err(|e| match e.raw_os_error() {
        Some(libc::EPERM | libc::EXDEV) if !same_parent => ConnectError::new(
            Code::Unimplemented,
            "moving a directory to another directory is not supported by agentkernel's files API; use commands.run(\"mv …\")",
        ),
        _ => io_error(from, &e),
    })?;
    stat(ws, to)
}

/// Runs the file operation `f` off the async threads, with the filesystem ids `fsids`.
async fn blocking<T: Send + 'static>(
    fsids: Option<(u32, u32)>,
    f: impl FnOnce() -> Result<T, FsError> + Send + 'static,
) -> Result<T, FsError> {
    super::view::run_as(fsids, f).await.unwrap_or_else(|| {
        Err(ConnectError::new(
            Code::Internal,
            "a file operation's thread ended without an answer",
        ))
    })
}

// ---------------------------------------------------------------- /files

/// An error of the plain `/files` routes: `{"code": <status>, "message"}`, the status from
/// the Connect code (what `handle_envd_api_exception` maps).
fn files_error(e: ConnectError) -> Response {
    plain_error(
        StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &e.message,
    )
}

#[derive(Debug, Deserialize)]
struct FilesQuery {
    path: Option<String>,
}

/// Uploads in flight at once, over all sandboxes: each buffers up to [`MAX_FILE_BYTES`] (a
/// multipart one about three times that while it is parsed; downloads stream and take no
/// place), so this bounds the host memory the files API can take, whatever clients send at
/// once.
static TRANSFERS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);
/// How long an upload's body may take to arrive (100 MiB at about 1 MB/s).
const UPLOAD_DEADLINE: Duration = Duration::from_secs(120);

async fn read_file(
    State(state): State<E2bState>,
    headers: HeaderMap,
    Query(q): Query<FilesQuery>,
) -> Response {
    let (entry, e2b) = match state.registry.authorize(&state.server, &headers) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let path = match UserPath::parse(q.path.as_deref().unwrap_or("")) {
        Ok(p) => p,
        Err(m) => return plain_error(StatusCode::BAD_REQUEST, &m),
    };
    let (ws, fsids) = match workspace(&state, &entry, &e2b).await {
        Ok(w) => w,
        Err(e) => return files_error(e),
    };
    match blocking(fsids, move || open_for_read(&ws, &path)).await {
        Ok((file, size)) => {
            use tokio::io::AsyncReadExt as _;
            // Streamed, never whole in memory (so a download takes no transfer place): at
            // most the length the file had when it was opened, so the length is known first
            // (a file the program changes meanwhile is read as it then is, cut there).
            let data =
                tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file).take(size));
            (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
                    (header::CONTENT_LENGTH, size.to_string()),
                ],
                Body::from_stream(data),
            )
                .into_response()
        }
        Err(e) => files_error(e),
    }
}

async fn write_files(
    State(state): State<E2bState>,
    headers: HeaderMap,
    Query(q): Query<FilesQuery>,
    body: Body,
) -> Response {
    let (entry, e2b) = match state.registry.authorize(&state.server, &headers) {
        Ok(x) => x,
        Err(r) => return r,
    };
    // A place among the uploads, waited for at most a minute (a few clients holding them
    // cannot stall everyone's uploads longer: 503, which the SDK retries).
    let Ok(Ok(_transfer)) =
        tokio::time::timeout(Duration::from_secs(60), TRANSFERS.acquire()).await
    else {
        return plain_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "agentkernel's file uploads are all busy: retry in a moment",
        );
    };
    if headers.contains_key(header::CONTENT_ENCODING)
        && headers
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| v.as_bytes() != b"identity")
    {
        return plain_error(
            StatusCode::BAD_REQUEST,
            "compressed uploads are not supported by agentkernel: write without gzip=True",
        );
    }
    // The body within a deadline: a client sending it slowly keeps its place no longer.
    let body = match tokio::time::timeout(
        UPLOAD_DEADLINE,
        axum::body::to_bytes(body, MAX_FILE_BYTES + (64 << 10)),
    )
    .await
    {
        Ok(Ok(b)) => b,
        Err(_) => {
            return plain_error(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "the upload did not arrive within {} s: send it faster, or in smaller files",
                    UPLOAD_DEADLINE.as_secs()
                ),
            );
        }
        Ok(Err(_)) => {
            return plain_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "the upload is over agentkernel's file size cap ({} MiB) or was cut off",
                    MAX_FILE_BYTES >> 20
                ),
            );
        }
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    // (user path, data) of each file.
    let files: Vec<(String, Bytes)> = if content_type.starts_with("multipart/form-data") {
        match parse_multipart(&content_type, &body) {
            Ok(parts) => parts
                .into_iter()
                .map(|(filename, data)| (q.path.clone().unwrap_or(filename), data))
                .collect(),
            Err(m) => return plain_error(StatusCode::BAD_REQUEST, &m),
        }
    } else {
        match &q.path {
            Some(p) => vec![(p.clone(), body)],
            None => {
                return plain_error(
                    StatusCode::BAD_REQUEST,
                    "an upload without multipart needs ?path=",
                );
            }
        }
    };
    if files.is_empty() {
        return plain_error(StatusCode::BAD_REQUEST, "the upload holds no file");
    }
    if let Err(r) = within_quota(&entry, files.iter().map(|(_, d)| d.len() as u64).sum()).await {
        return r;
    }
    let (ws, fsids) = match workspace(&state, &entry, &e2b).await {
        Ok(w) => w,
        Err(e) => return files_error(e),
    };
    let mut written = Vec::new();
    for (p, data) in files {
        let path = match UserPath::parse(&p) {
            Ok(p) => p,
            Err(m) => return plain_error(StatusCode::BAD_REQUEST, &m),
        };
        if data.len() > MAX_FILE_BYTES {
            return files_error(too_large(&path));
        }
        let (ws, shown) = match ws.try_clone() {
            Ok(ws) => (ws, path.clone()),
            Err(e) => return files_error(ConnectError::new(Code::Internal, e.to_string())),
        };
        if let Err(err) = blocking(fsids, move || write_file(&ws, &shown, &data)).await {
            return files_error(err);
        }
        written.push(json!({"name": path.name(), "type": "file", "path": path.display()}));
    }
    axum::Json(written).into_response()
}

/// Refuses an upload that would take the workspace over its quota (the quota checked before
/// each run holds for the files API too): 507, which the SDK raises as
/// `NotEnoughSpaceException` (and does not retry, as it would a 429).
async fn within_quota(entry: &SandboxEntry, incoming: u64) -> Result<(), Response> {
    let ws = entry.session().workspace().clone();
    let Some(quota) = ws.quota else {
        return Ok(());
    };
    let used = match tokio::task::spawn_blocking(move || ws.usage()).await {
        Ok(Ok(used)) => used,
        Ok(Err(e)) => {
            return Err(files_error(ConnectError::new(
                Code::Internal,
                e.to_string(),
            )));
        }
        Err(e) => {
            return Err(files_error(ConnectError::new(
                Code::Internal,
                e.to_string(),
            )));
        }
    };
    if used.saturating_add(incoming) > quota {
        return Err(plain_error(
            StatusCode::INSUFFICIENT_STORAGE,
            &format!(
                "the workspace holds {used} bytes and its quota is {quota}: this upload of {incoming} bytes does not fit; remove files first"
            ),
        ));
    }
    Ok(())
}

/// The `file` parts of a `multipart/form-data` body: (filename, data).
pub fn parse_multipart(content_type: &str, body: &[u8]) -> Result<Vec<(String, Bytes)>, String> {
    let boundary = content_type
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("boundary="))
        .map(|b| b.trim_matches('"'))
        .filter(|b| !b.is_empty())
        .ok_or("the multipart upload has no boundary")?;
    // RFC 2046: at most 70 characters.
    if boundary.len() > 70 {
        return Err("the multipart boundary is longer than 70 characters (RFC 2046)".into());
    }
    let delim = format!("\r\n--{boundary}");
    let mut data = Vec::with_capacity(body.len() + 2);
    data.extend_from_slice(b"\r\n");
    data.extend_from_slice(body);
    // Linear in the body whatever the boundary (a naive search is quadratic in a crafted one).
    let find = |hay: &[u8], needle: &[u8], from: usize| -> Option<usize> {
        memchr::memmem::find(hay.get(from..)?, needle).map(|i| i + from)
    };
    let mut out = Vec::new();
    let mut at = find(&data, delim.as_bytes(), 0).ok_or("the multipart upload has no part")?;
    loop {
        at += delim.len();
        if data.get(at..at + 2) == Some(b"--") {
            break;
        }
        let head_start = at + 2;
        let head_end =
            find(&data, b"\r\n\r\n", head_start).ok_or("a multipart part has no header end")?;
        let head = String::from_utf8_lossy(&data[head_start..head_end]).into_owned();
        let next =
            find(&data, delim.as_bytes(), head_end + 4).ok_or("the multipart upload is cut off")?;
        let content = Bytes::copy_from_slice(&data[head_end + 4..next]);
        let disposition = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))
            .unwrap_or("");
        let param = |key: &str| {
            disposition
                .split(';')
                .map(str::trim)
                .find_map(|p| p.strip_prefix(key).map(|v| v.trim_matches('"').to_owned()))
        };
        if param("name=").as_deref() == Some("file") {
            out.push((param("filename=").unwrap_or_default(), content));
        }
        at = next;
    }
    Ok(out)
}

// ---------------------------------------------------------------- Connect unary: filesystem

fn connect_error(e: &ConnectError) -> Response {
    (
        StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, connect::CONTENT_TYPE_UNARY_JSON)],
        serde_json::to_string(e).unwrap_or_default(),
    )
        .into_response()
}

fn connect_ok<T: serde::Serialize>(msg: &T) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, connect::CONTENT_TYPE_UNARY_JSON)],
        serde_json::to_string(msg).unwrap_or_else(|_| "{}".into()),
    )
        .into_response()
}

fn unary<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ConnectError> {
    serde_json::from_slice(body).map_err(|e| {
        ConnectError::new(
            Code::InvalidArgument,
            format!("the request is not the message expected: {e}"),
        )
    })
}

fn user_path(p: &str) -> Result<UserPath, ConnectError> {
    UserPath::parse(p).map_err(|m| ConnectError::new(Code::InvalidArgument, m))
}

async fn filesystem(
    State(state): State<E2bState>,
    AxPath(method): AxPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (entry, e2b) = match state.registry.authorize(&state.server, &headers) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let result: Result<Response, ConnectError> = async {
        let (ws, fsids) = workspace(&state, &entry, &e2b).await?;
        match method.as_str() {
            "Stat" => {
                let req: PathRequest = unary(&body)?;
                let path = user_path(&req.path)?;
                let entry_info = blocking(fsids, move || stat(&ws, &path)).await?;
                Ok(connect_ok(&EntryResponse { entry: entry_info }))
            }
            "ListDir" => {
                let req: ListDirRequest = unary(&body)?;
                let path = user_path(&req.path)?;
                let entries = blocking(fsids, move || list_dir(&ws, &path, req.depth)).await?;
                Ok(connect_ok(&ListDirResponse { entries }))
            }
            "Remove" => {
                let req: PathRequest = unary(&body)?;
                let path = user_path(&req.path)?;
                blocking(fsids, move || remove(&ws, &path)).await?;
                Ok(connect_ok(&json!({})))
            }
            "MakeDir" => {
                let req: PathRequest = unary(&body)?;
                let path = user_path(&req.path)?;
                let info = blocking(fsids, move || make_dir(&ws, &path)).await?;
                Ok(connect_ok(&EntryResponse { entry: info }))
            }
            "Move" => {
                let req: MoveRequest = unary(&body)?;
                let (from, to) = (user_path(&req.source)?, user_path(&req.destination)?);
                let info = blocking(fsids, move || rename(&ws, &from, &to)).await?;
                Ok(connect_ok(&EntryResponse { entry: info }))
            }
            "WatchDir" | "CreateWatcher" | "GetWatcherEvents" | "RemoveWatcher" => {
                Err(ConnectError::new(
                    Code::Unimplemented,
                    "watch_dir is not supported by agentkernel; poll with files.list",
                ))
            }
            other => Err(ConnectError::new(
                Code::Unimplemented,
                format!("filesystem.Filesystem/{other} is not supported by agentkernel"),
            )),
        }
    }
    .await;
    result.unwrap_or_else(|e| connect_error(&e))
}

// ---------------------------------------------------------------- Connect: process

/// Pids handed out in `start` events (unique per server).
static NEXT_PID: AtomicU32 = AtomicU32::new(1000);

/// The helper that runs a command in the sandbox: `ak_args` etc. are set in its namespace.
const RUN_COMMAND: &str = r#"
import codecs, os, shutil, signal, subprocess, sys, threading
cmd = list(ak_args)
if not os.path.exists(cmd[0]):
    base = os.path.basename(cmd[0])
    found = shutil.which(base) or (shutil.which("sh") if base == "bash" else None)
    if found is None:
        raise FileNotFoundError(f"{cmd[0]}: not found in the sandbox")
    cmd[0] = found
if os.path.basename(cmd[0]) != "bash" and cmd[1:2] == ["-l"]:
    del cmd[1]
env = dict(os.environ)
env.update(ak_envs)
def pump(fd, out):
    dec = codecs.getincrementaldecoder("utf-8")("replace")
    while True:
        b = os.read(fd, 65536)
        if not b:
            break
        out.write(dec.decode(b))
        out.flush()
    out.write(dec.decode(b"", True))
    out.flush()
p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, cwd=ak_cwd, env=env, start_new_session=True)
ts = [threading.Thread(target=pump, args=(p.stdout.fileno(), sys.stdout)),
      threading.Thread(target=pump, args=(p.stderr.fileno(), sys.stderr))]
for t in ts:
    t.start()
try:
    rc = p.wait(timeout=ak_timeout)
except subprocess.TimeoutExpired:
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    rc = "timeout"
for t in ts:
    t.join()
ak_result = rc
"#;

/// The program that runs `req`'s command: one expression, so the caller's globals stay as
/// they were; its value is the exit code (negative: killed by that signal) or `'timeout'`.
fn command_program(req: &StartRequest, cwd: &UserPath, timeout: Option<Duration>) -> String {
    let mut args = vec![req.process.cmd.clone()];
    args.extend(req.process.args.iter().cloned());
    let ns = json!({
        "ak_args": args,
        "ak_envs": req.process.envs,
        "ak_cwd": cwd.in_sandbox(),
    });
    let timeout = match timeout {
        Some(t) => format!("{}", t.as_secs_f64()),
        None => "None".into(),
    };
    // JSON text is a Python literal here (strings, lists, dicts of strings).
    format!(
        "(lambda ns: (exec({src}, ns), ns['ak_result'])[1])(dict({ns}, ak_timeout={timeout}))",
        src = serde_json::to_string(RUN_COMMAND).unwrap_or_default(),
        ns = ns,
    )
}

fn stream_response(frames: futures_util::stream::BoxStream<'static, Bytes>) -> Response {
    use futures_util::StreamExt as _;
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, connect::CONTENT_TYPE_STREAM_JSON)],
        Body::from_stream(frames.map(Ok::<_, std::convert::Infallible>)),
    )
        .into_response()
}

fn stream_error(e: ConnectError) -> Response {
    let frame = Bytes::from(connect::encode_end_stream(Some(&e)));
    stream_response(Box::pin(futures_util::stream::once(async move { frame })))
}

async fn process(
    State(state): State<E2bState>,
    AxPath(method): AxPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (entry, e2b) = match state.registry.authorize(&state.server, &headers) {
        Ok(x) => x,
        Err(r) => return r,
    };
    if method != "Start" {
        let what = match method.as_str() {
            "SendSignal" => {
                "killing a command (CommandHandle.kill, commands.kill) is not supported by agentkernel: give commands.run a timeout instead"
            }
            "SendInput" | "StreamInput" | "CloseStdin" => {
                "stdin for commands is not supported by agentkernel"
            }
            "Connect" => "reconnecting to a running command is not supported by agentkernel",
            "Update" => "PTY is not supported by agentkernel",
            "List" => "listing commands is not supported by agentkernel",
            _ => "this process.Process call is not supported by agentkernel",
        };
        let e = ConnectError::new(Code::Unimplemented, what);
        return if method == "Connect" || method == "StreamInput" {
            stream_error(e)
        } else {
            connect_error(&e)
        };
    }
    let req: StartRequest = match connect::decode_stream_request(&body, MAX_MESSAGE) {
        Ok(r) => r,
        Err(e) => return stream_error(e.to_connect_error()),
    };
    if req.pty.is_some() {
        return stream_error(ConnectError::new(
            Code::Unimplemented,
            "PTY is not supported by agentkernel",
        ));
    }
    if req.stdin == Some(true) {
        return stream_error(ConnectError::new(
            Code::Unimplemented,
            "stdin for commands is not supported by agentkernel: run without stdin=True",
        ));
    }
    let cwd = match user_path(req.process.cwd.as_deref().unwrap_or(HOME)) {
        Ok(p) => p,
        Err(e) => return stream_error(e),
    };
    let timeout = headers
        .get("connect-timeout-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis);
    // The helper kills the command at its timeout, and before the sandbox's wall-time
    // limit would kill the interpreter (and its variables) instead: 2 s short of it.
    let wall = entry.limits.wall_time;
    let ceiling = wall
        .saturating_sub(Duration::from_secs(2))
        .max(Duration::from_secs(1));
    // Also a little before the client's own deadline (the same timeout), so that the
    // command's end, not the client giving up (which resets the interpreter), ends it.
    let before_client = |t: Duration| t.saturating_sub((t / 4).min(Duration::from_millis(500)));
    let helper_timeout = Some(timeout.map_or(ceiling, |t| before_client(t).min(ceiling)));
    let program = command_program(&req, &cwd, helper_timeout);
    let exec = ExecRequest::new(program);
    let turn = e2b
        .turn(&entry, entry.limits.wall_time + Duration::from_secs(10))
        .await;
    let execution = match state.server.execute(&entry, exec) {
        Ok(x) => x,
        Err(e) => {
            let code = match e.status {
                StatusCode::CONFLICT => Code::ResourceExhausted,
                StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
                _ => Code::Internal,
            };
            return stream_error(ConnectError::new(
                code,
                format!("{} ({})", e.message, e.hint),
            ));
        }
    };
    let pid = NEXT_PID.fetch_add(1, Ordering::Relaxed);
    let start = Bytes::from(StartResponse::frame(ProcessEvent::Start { pid }));
    struct Run {
        execution: crate::http::Execution,
        _turn: tokio::sync::OwnedMutexGuard<()>,
        done: bool,
    }
    let run = Run {
        execution,
        _turn: turn,
        done: false,
    };
    let events = futures_util::stream::unfold(run, |mut r| async move {
        if r.done {
            return None;
        }
        let frame = match r.execution.next().await {
            Some(ExecEvent::Output { stream, bytes }) => {
                StartResponse::frame(ProcessEvent::Data(match stream {
                    StreamKind::Stdout => DataEvent::Stdout(bytes),
                    StreamKind::Stderr => DataEvent::Stderr(bytes),
                }))
            }
            Some(ExecEvent::End { end, .. }) => {
                r.done = true;
                end_frames(&end)
            }
            None => {
                r.done = true;
                connect::encode_end_stream(Some(&ConnectError::new(
                    Code::Internal,
                    "the command's run ended without an end",
                )))
            }
        };
        Some((Bytes::from(frame), r))
    });
    use futures_util::StreamExt as _;
    let all = futures_util::stream::once(async move { start }).chain(events);
    stream_response(Box::pin(all))
}

/// The `end` event and the end of the stream, from how the helper ended.
fn end_frames(end: &ExecEnd) -> Vec<u8> {
    let mut out = Vec::new();
    let fail = |code: Code, message: String| {
        connect::encode_end_stream(Some(&ConnectError::new(code, message)))
    };
    match end {
        ExecEnd::Finished(o) => match (&o.status, o.value.as_ref().map(|v| v.repr.as_str())) {
            (ExecStatus::Ok, Some("'timeout'")) => {
                out.extend(fail(
                    Code::DeadlineExceeded,
                    "the command ran past its timeout and was killed".into(),
                ));
            }
            (ExecStatus::Ok, Some(rc)) => {
                let rc: i32 = rc.parse().unwrap_or(-1);
                let event = if rc >= 0 {
                    EndEvent {
                        exit_code: rc,
                        exited: true,
                        status: format!("exit status {rc}"),
                        error: None,
                    }
                } else {
                    EndEvent {
                        exit_code: 128 - rc,
                        exited: false,
                        status: format!("signal: {}", -rc),
                        error: None,
                    }
                };
                out.extend(StartResponse::frame(ProcessEvent::End(event)));
                out.extend(connect::encode_end_stream(None));
            }
            (
                ExecStatus::Exception {
                    type_name, message, ..
                },
                _,
            ) => {
                let event = EndEvent {
                    exit_code: 127,
                    exited: true,
                    status: "exit status 127".into(),
                    error: Some(format!("{type_name}: {message}")),
                };
                out.extend(StartResponse::frame(ProcessEvent::End(event)));
                out.extend(connect::encode_end_stream(None));
            }
            (ExecStatus::Killed { limit }, _) => out.extend(fail(
                Code::DeadlineExceeded,
                format!("the command went past the sandbox's {limit} limit and was killed"),
            )),
            (status, _) => out.extend(fail(
                Code::Internal,
                format!("the command's helper ended unexpectedly: {status:?}"),
            )),
        },
        ExecEnd::Failed(e) => out.extend(fail(Code::Unavailable, e.to_string())),
        ExecEnd::Stopped(why) => out.extend(fail(Code::Canceled, why.to_string())),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_paths_map_onto_the_workspace_and_nothing_else() {
        let p = |s: &str| UserPath::parse(s).map(|p| p.display());
        assert_eq!(p("/home/user/a/b.txt").unwrap(), "/home/user/a/b.txt");
        assert_eq!(p("a/./b.txt").unwrap(), "/home/user/a/b.txt");
        assert_eq!(p("/workspace/x").unwrap(), "/home/user/x");
        assert_eq!(p("/home/user").unwrap(), "/home/user");
        assert_eq!(p("a/../b").unwrap(), "/home/user/b");
        for bad in [
            "/tmp/x",
            "/etc/passwd",
            "/home/username",
            "..",
            "a/../../x",
            "/home/user/../x",
            "a\0b",
        ] {
            assert!(UserPath::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn multipart_bodies_as_the_sdk_sends_them() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"/home/user/a\"\r\nContent-Type: application/octet-stream\r\n\r\nline1\r\nline2\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"b\"\r\n\r\n\r\n--XyZ--\r\n";
        let parts = parse_multipart("multipart/form-data; boundary=XyZ", body).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].0, "/home/user/a");
        assert_eq!(&parts[0].1[..], b"line1\r\nline2");
        assert_eq!(parts[1].0, "b");
        assert!(parts[1].1.is_empty());
        assert!(parse_multipart("multipart/form-data", body).is_err());
        assert!(
            parse_multipart(
                "multipart/form-data; boundary=XyZ",
                b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\ncut"
            )
            .is_err()
        );
    }
}
