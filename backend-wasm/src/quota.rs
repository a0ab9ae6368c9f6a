//! File-size and `/tmp` limits inside the guest, and no opening of FIFOs or devices.
//!
//! WASI has no such limits of its own, so the host shadows the guest's file-writing
//! imports (`descriptor.write`, `write-via-stream`, `append-via-stream`, `set-size`) with
//! checked versions. A write that would make a file larger than `file_size_bytes`, or the
//! sandbox's private `/tmp` directory hold more than `tmp_bytes`, is refused:
//! - positioned writes and truncations (`descriptor.write`, `set-size`) fail with `EFBIG` /
//!   `ENOSPC`, as on the process backend;
//! - writes through a file stream (what Python's `f.write` uses) stop the run with the limit
//!   named ([`QuotaExceeded`]): the guest's libc turns every stream error into `EIO`, so an
//!   error code there would be a misleading one.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use agentkernel_core::LimitKind;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::filesystem::types::{
    DescriptorFlags, ErrorCode, HostDescriptor, OpenFlags, PathFlags,
};
use wasmtime_wasi::p2::{
    DynOutputStream, FsError, OutputStream, Pollable, StreamError, StreamResult,
};

use crate::state::State;

/// The WASI filesystem interface the guest imports (and this module shadows).
const FILESYSTEM_TYPES: &str = "wasi:filesystem/types@0.2.12";

/// One sandbox's file limits and how much of `/tmp` it uses.
#[derive(Clone)]
pub struct Quota {
    inner: Arc<QuotaInner>,
}

struct QuotaInner {
    file_size: Option<u64>,
    tmp_dir: PathBuf,
    tmp_cap: u64,
    /// Bytes `/tmp` held at the last scan, plus growth charged since (an over-estimate:
    /// deletions are only seen by the next scan).
    tmp_used: Mutex<u64>,
    /// The host files and directories the guest opened (alive while the guest, or a
    /// stream of it, holds them): one host file descriptor each.
    open_files: Mutex<Vec<Weak<File>>>,
}

/// Host file descriptors one sandbox's guest may hold open at once (files and directories
/// it opened; its preopens are not counted). The guest's own descriptor table (the WASI
/// preview-1 adapter inside the component) holds 128 entries, stdio and preopens included,
/// so this is what a program meets first. Past it `open` fails with `OSError` (`ENOMEM`:
/// WASI has no `EMFILE`, and `ENOMEM` is what the guest's own full table answers too).
pub const MAX_OPEN_FILES: usize = 64;

/// The open files of every wasm guest in this process, against [`open_files_budget`].
static ALL_OPEN_FILES: Mutex<Vec<Weak<File>>> = Mutex::new(Vec::new());

/// Host file descriptors all wasm guests of this process may hold together: a quarter of
/// the process's soft `RLIMIT_NOFILE` (at least 32), so guests can never take the
/// descriptors the kernel itself needs (its database, MCP pipes, process jails, other
/// sandboxes' preopens).
pub fn open_files_budget() -> usize {
    static BUDGET: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BUDGET.get_or_init(|| {
        let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map(|(soft, _hard)| soft)
            .unwrap_or(1024);
        usize::try_from(soft / 4).unwrap_or(usize::MAX).max(32)
    })
}

/// Whether `open` (holding at most `cap` alive) has room for one more, forgetting the
/// closed ones when it looks full.
fn has_room(open: &mut Vec<Weak<File>>, cap: usize) -> bool {
    if open.len() >= cap {
        open.retain(|f| f.strong_count() > 0);
    }
    open.len() < cap
}

/// Why a write is refused.
enum Refusal {
    TooLarge,
    NoSpace,
}

/// A trap that stops a run whose file write broke a limit.
#[derive(Debug)]
pub struct QuotaExceeded(pub LimitKind);

impl std::fmt::Display for QuotaExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a file write broke the {} limit", self.0)
    }
}

impl std::error::Error for QuotaExceeded {}

impl Refusal {
    fn limit(&self) -> LimitKind {
        match self {
            Refusal::TooLarge => LimitKind::FileSize,
            Refusal::NoSpace => LimitKind::Disk,
        }
    }

    fn code(&self) -> ErrorCode {
        match self {
            Refusal::TooLarge => ErrorCode::FileTooLarge,
            Refusal::NoSpace => ErrorCode::InsufficientSpace,
        }
    }
}

impl Quota {
    /// Limits for a sandbox whose `/tmp` is the host directory `tmp_dir`.
    pub fn new(file_size: Option<u64>, tmp_dir: PathBuf, tmp_cap: u64) -> Self {
        // Open files are matched by their real path (`/proc/self/fd`): compare with the
        // directory's real path too ($TMPDIR may be behind a symlink).
        let tmp_dir = std::fs::canonicalize(&tmp_dir).unwrap_or(tmp_dir);
        Quota {
            inner: Arc::new(QuotaInner {
                file_size,
                tmp_dir,
                tmp_cap,
                tmp_used: Mutex::new(0),
                open_files: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Forgets the usage count (after `/tmp` was emptied).
    pub fn reset(&self) {
        *self
            .inner
            .tmp_used
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = 0;
    }

    /// Refuses an `open` when this sandbox, or all wasm guests together, hold as many host
    /// files open as they may ([`MAX_OPEN_FILES`], [`open_files_budget`]).
    fn admit_open(&self) -> Result<(), ErrorCode> {
        let mut mine = self
            .inner
            .open_files
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !has_room(&mut mine, MAX_OPEN_FILES) {
            return Err(ErrorCode::InsufficientMemory);
        }
        let mut all = ALL_OPEN_FILES.lock().unwrap_or_else(|e| e.into_inner());
        if !has_room(&mut all, open_files_budget()) {
            return Err(ErrorCode::InsufficientMemory);
        }
        Ok(())
    }

    /// Counts a file or directory the guest just opened.
    fn track_open(&self, file: &Arc<File>) {
        self.inner
            .open_files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(file));
        ALL_OPEN_FILES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(file));
    }

    /// Whether `file` lives under this sandbox's `/tmp`.
    fn in_tmp(&self, file: &File) -> bool {
        use std::os::fd::AsRawFd;
        std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .is_ok_and(|p| p.starts_with(&self.inner.tmp_dir))
    }

    /// Checks (and charges) a write that makes `file` end at `end` bytes.
    fn check(&self, file: &File, in_tmp: bool, end: u64) -> Result<(), Refusal> {
        if self.inner.file_size.is_some_and(|max| end > max) {
            return Err(Refusal::TooLarge);
        }
        if !in_tmp {
            return Ok(());
        }
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let growth = end.saturating_sub(size);
        if growth == 0 {
            return Ok(());
        }
        let mut used = self
            .inner
            .tmp_used
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if *used + growth > self.inner.tmp_cap {
            // The estimate says no: count what is really there before refusing.
            *used = dir_usage(&self.inner.tmp_dir);
            if *used + growth > self.inner.tmp_cap {
                return Err(Refusal::NoSpace);
            }
        }
        *used += growth;
        Ok(())
    }
}

/// Bytes the files under `dir` hold (allocated blocks, like `du`).
fn dir_usage(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += (m.blocks() * 512).max(m.len());
            }
        }
    }
    total
}

fn file_of(state: &mut State, fd: &Resource<Descriptor>) -> wasmtime::Result<Option<Arc<File>>> {
    Ok(match state.table.get(fd)? {
        Descriptor::File(f) => Some(f.file.clone()),
        Descriptor::Dir(_) => None,
    })
}

/// A trap stays a trap; an error code becomes the import's `error-code`.
fn split<T>(r: Result<T, FsError>) -> wasmtime::Result<Result<T, ErrorCode>> {
    match r {
        Ok(v) => Ok(Ok(v)),
        Err(e) => e.downcast().map(Err),
    }
}

/// Replaces the filesystem's writing functions in `linker` with checked ones.
pub fn add_to_linker(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut types = linker.instance(FILESYSTEM_TYPES)?;
    types.func_wrap(
        "[method]descriptor.write-via-stream",
        |mut store, (fd, offset): (Resource<Descriptor>, u64)| {
            let state = store.data_mut();
            let file = file_of(state, &fd)?;
            let r = HostDescriptor::write_via_stream(&mut state.filesystem(), fd, offset);
            Ok((wrap_stream(state, split(r)?, file, Some(offset))?,))
        },
    )?;
    types.func_wrap(
        "[method]descriptor.append-via-stream",
        |mut store, (fd,): (Resource<Descriptor>,)| {
            let state = store.data_mut();
            let file = file_of(state, &fd)?;
            let r = HostDescriptor::append_via_stream(&mut state.filesystem(), fd);
            Ok((wrap_stream(state, split(r)?, file, None)?,))
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.write",
        |mut store, (fd, buf, offset): (Resource<Descriptor>, Vec<u8>, u64)| {
            Box::new(async move {
                let state = store.data_mut();
                if let Some(file) = file_of(state, &fd)? {
                    let quota = state.quota.clone();
                    let in_tmp = quota.in_tmp(&file);
                    if let Err(refusal) = quota.check(&file, in_tmp, offset + buf.len() as u64) {
                        return Ok((Err(refusal.code()),));
                    }
                }
                let r = HostDescriptor::write(&mut state.filesystem(), fd, buf, offset).await;
                Ok((split(r)?,))
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.open-at",
        |mut store,
         (fd, path_flags, path, oflags, flags): (
            Resource<Descriptor>,
            PathFlags,
            String,
            OpenFlags,
            DescriptorFlags,
        )| {
            Box::new(async move {
                let state = store.data_mut();
                if let Descriptor::Dir(dir) = state.table.get(&fd)?
                    && is_special_file(&dir.dir, &path)
                {
                    return Ok((Err(ErrorCode::Access),));
                }
                let quota = state.quota.clone();
                if let Err(code) = quota.admit_open() {
                    return Ok((Err(code),));
                }
                let r = HostDescriptor::open_at(
                    &mut state.filesystem(),
                    fd,
                    path_flags,
                    path,
                    oflags,
                    flags,
                )
                .await;
                let r = split(r)?;
                if let Ok(opened) = &r {
                    match state.table.get(opened)? {
                        Descriptor::File(f) => quota.track_open(&f.file),
                        Descriptor::Dir(d) => quota.track_open(&d.dir),
                    }
                }
                Ok((r,))
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.set-size",
        |mut store, (fd, size): (Resource<Descriptor>, u64)| {
            Box::new(async move {
                let state = store.data_mut();
                if let Some(file) = file_of(state, &fd)? {
                    let quota = state.quota.clone();
                    let in_tmp = quota.in_tmp(&file);
                    if let Err(refusal) = quota.check(&file, in_tmp, size) {
                        return Ok((Err(refusal.code()),));
                    }
                }
                let r = HostDescriptor::set_size(&mut state.filesystem(), fd, size).await;
                Ok((split(r)?,))
            })
        },
    )?;
    Ok(())
}

/// Whether `path` under `dir` is a FIFO, socket or device (following symlinks, resolved
/// inside `dir` as the guest's open would be). Opening a FIFO blocks until someone opens
/// its other end, which would stall the kernel's thread past any time limit; the guest
/// cannot make such files (WASI has no `mknod`), but a host workspace can hold them.
fn is_special_file(dir: &std::fs::File, path: &str) -> bool {
    use cap_primitives::fs::FollowSymlinks;
    match cap_primitives::fs::stat(dir, Path::new(path), FollowSymlinks::Yes) {
        Ok(meta) => {
            let kind = meta.file_type();
            !(kind.is_file() || kind.is_dir())
        }
        Err(_) => false, // missing (a file to create) or unreachable: the open decides
    }
}

/// Swaps the stream wasmtime-wasi made for one that checks each write.
fn wrap_stream(
    state: &mut State,
    r: Result<Resource<DynOutputStream>, ErrorCode>,
    file: Option<Arc<File>>,
    offset: Option<u64>,
) -> wasmtime::Result<Result<Resource<DynOutputStream>, ErrorCode>> {
    let (Ok(stream), Some(file)) = (r.as_ref(), file) else {
        return Ok(r);
    };
    let stream = Resource::<DynOutputStream>::new_own(stream.rep());
    let inner = state.table.delete(stream)?;
    let in_tmp = state.quota.in_tmp(&file);
    let wrapped: DynOutputStream = Box::new(QuotaStream {
        inner,
        file,
        position: offset,
        in_tmp,
        quota: state.quota.clone(),
    });
    Ok(Ok(state.table.push(wrapped)?))
}

/// A file's output stream that checks every write against the sandbox's [`Quota`].
struct QuotaStream {
    inner: DynOutputStream,
    file: Arc<File>,
    /// Where the next write lands; `None` when appending (the end of the file).
    position: Option<u64>,
    in_tmp: bool,
    quota: Quota,
}

impl OutputStream for QuotaStream {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        let start = match self.position {
            Some(p) => p,
            None => self.file.metadata().map(|m| m.len()).unwrap_or(0),
        };
        let len = bytes.len() as u64;
        if let Err(refusal) = self.quota.check(&self.file, self.in_tmp, start + len) {
            let trap = wasmtime::Error::new(QuotaExceeded(refusal.limit()));
            return Err(StreamError::Trap(trap));
        }
        self.inner.write(bytes)?;
        if let Some(p) = &mut self.position {
            *p += len;
        }
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        self.inner.check_write()
    }
}

#[async_trait::async_trait]
impl Pollable for QuotaStream {
    async fn ready(&mut self) {
        self.inner.ready().await;
    }
}
