//! File-size, `/tmp`, workspace, open-file and directory-listing limits inside the guest,
//! no opening of FIFOs or devices, and no symlinks that leave their preopen.
//!
//! WASI has no such limits of its own, so the host shadows the guest's file-writing and
//! file-creating imports (`descriptor.write`, `write-via-stream`, `append-via-stream`,
//! `set-size`, `open-at`, `create-directory-at`, `symlink-at`, `link-at`, `rename-at`) and
//! `read-directory` with checked versions (`open-at` is done here entirely, see
//! `open_at`). Refused are:
//! - a write that would make a file larger than `file_size_bytes`;
//! - growth of the sandbox's private `/tmp` past `tmp_bytes`, where every file, directory
//!   and symlink created there is charged at least one block ([`ENTRY_BYTES`]), so the cap
//!   bounds its inodes too;
//! - within one run, more than [`HOST_DIR_ENTRIES_PER_RUN`] new entries or
//!   [`HOST_DIR_FILE_SIZES_PER_RUN`] × `file_size_bytes` of growth in the host directories
//!   the guest may write besides `/tmp` (the workspace and writable mounts): the workspace
//!   quota is checked between runs, these bound what one run can do to the host's disk and
//!   inodes;
//! - an `open` past [`MAX_OPEN_FILES`] for the sandbox or [`open_files_budget`] for all
//!   guests of the process;
//! - renames and hard links between `/tmp` and another directory (`EXDEV`, as between the
//!   process backend's tmpfs and its workspace), which would move usage out of its account;
//! - opening anything but a regular file or directory (`EACCES`), judged on the descriptor
//!   opened without blocking;
//! - a symlink whose target is absolute or has `..` (`EPERM`, [`agentkernel_core::symlink_target_descends`]);
//! - a directory listing past [`LISTING_BYTES`] of host memory for the sandbox (`ENOMEM`).
//!
//! Files deleted from `/tmp` but still open stay charged to it until closed.
//!
//! How a refusal shows:
//! - creations, positioned writes and truncations (`descriptor.write`, `set-size`) fail
//!   with `ENOSPC` (`/tmp`), `EDQUOT` (the per-run caps) or `EFBIG`, as on the process
//!   backend;
//! - writes through a file stream (what Python's `f.write` uses) stop the run with the limit
//!   named ([`QuotaExceeded`]): the guest's libc turns every stream error into `EIO`, so an
//!   error code there would be a misleading one.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use agentkernel_core::LimitKind;
use wasmtime::component::{Linker, Resource, ResourceTable};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::filesystem::types::{
    DescriptorFlags, ErrorCode, HostDescriptor, OpenFlags, PathFlags,
};
use wasmtime_wasi::p2::{
    DynOutputStream, FsError, OutputStream, Pollable, ReaddirIterator, StreamError, StreamResult,
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
    /// What the current run added to the host directories outside `/tmp`.
    run: Mutex<RunUsage>,
    /// The guest's directory listings (resource table index) and what each was charged,
    /// against [`LISTING_BYTES`].
    listings: Mutex<HashMap<u32, u64>>,
}

/// Entries and bytes one run added outside `/tmp` (the workspace and writable mounts).
#[derive(Default)]
struct RunUsage {
    entries: u64,
    bytes: u64,
}

/// What each file, directory or symlink created in `/tmp` is charged at least, in bytes
/// (one block): so the `/tmp` cap bounds its inodes (`tmp_bytes / ENTRY_BYTES`, 16,384 for
/// the default 64 MiB), not only the bytes in its files.
pub const ENTRY_BYTES: u64 = 4096;

/// Files, directories and links one run may create in the workspace and writable mounts
/// (the same cap as every backend's, [`agentkernel_core::WORKSPACE_ENTRIES_PER_RUN`]).
pub const HOST_DIR_ENTRIES_PER_RUN: u64 = agentkernel_core::WORKSPACE_ENTRIES_PER_RUN;

/// Bytes by which one run may grow files in the workspace and writable mounts, in total:
/// this many times `file_size_bytes` (see [`agentkernel_core::Limits::workspace_growth_bytes`]).
pub const HOST_DIR_FILE_SIZES_PER_RUN: u64 = agentkernel_core::WORKSPACE_FILE_SIZES_PER_RUN;

/// Host file descriptors one sandbox's guest may hold open at once (files and directories
/// it opened; its preopens are not counted). The guest's own descriptor table (the WASI
/// preview-1 adapter inside the component) holds 128 entries, stdio and preopens included,
/// so this is what a program meets first. Past it `open` fails with `OSError` (`ENOMEM`:
/// WASI has no `EMFILE`, and `ENOMEM` is what the guest's own full table answers too).
pub const MAX_OPEN_FILES: usize = 64;

/// Host memory one sandbox's open directory listings may hold, in bytes as
/// `listing_cost` counts them (16 MiB). `wasmtime-wasi` reads a whole directory into host
/// memory when the guest starts listing it and keeps it until the guest drops the listing:
/// without this bound, 1,500 `os.scandir` iterators over a 2,000-entry `/tmp` held 880 MB
/// of the kernel's memory (none of it in the guest's `--memory`). Past it, `read-directory`
/// fails with `ENOMEM` until the guest drops listings.
pub const LISTING_BYTES: u64 = 16 << 20;

/// What a listing costs besides its names: the stream itself (a resource table entry).
const LISTING_BASE_BYTES: u64 = 1024;

/// What each entry of a listing costs besides its name: the entry, its `Result` slot in
/// `wasmtime-wasi`'s vector and the allocator's share.
const LISTING_ENTRY_BYTES: u64 = 64;

/// Entries one sandbox's resource table may hold (open files, streams, listings,
/// pollables...): wasmtime's default is a million, hundreds of MB of host memory. A guest
/// has at most 128 descriptors (its adapter's table) and two streams each, so this is far
/// above what a program uses; past it the call that adds one fails (the run crashes).
pub const MAX_RESOURCES: usize = 10_000;

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
    /// A per-run cap on the workspace and writable mounts.
    RunQuota,
}

/// A trap that stops a run whose write (to a file, or to its output) broke a limit.
#[derive(Debug)]
pub struct QuotaExceeded(pub LimitKind);

impl std::fmt::Display for QuotaExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a write broke the {} limit", self.0)
    }
}

impl std::error::Error for QuotaExceeded {}

impl Refusal {
    fn limit(&self) -> LimitKind {
        match self {
            Refusal::TooLarge => LimitKind::FileSize,
            Refusal::NoSpace | Refusal::RunQuota => LimitKind::Disk,
        }
    }

    fn code(&self) -> ErrorCode {
        match self {
            Refusal::TooLarge => ErrorCode::FileTooLarge,
            Refusal::NoSpace => ErrorCode::InsufficientSpace,
            Refusal::RunQuota => ErrorCode::Quota,
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
                run: Mutex::new(RunUsage::default()),
                listings: Mutex::new(HashMap::new()),
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

    /// Starts a run: its caps on the workspace and writable mounts start from zero.
    pub fn begin_run(&self) {
        *self.inner.run.lock().unwrap_or_else(|e| e.into_inner()) = RunUsage::default();
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

    /// Refuses (`ENOMEM`) a listing costing `cost` bytes (`None`: more than
    /// [`LISTING_BYTES`]) when the guest's live listings (those still in `table`) and it
    /// would hold more than [`LISTING_BYTES`].
    fn admit_listing(&self, table: &ResourceTable, cost: Option<u64>) -> Result<(), ErrorCode> {
        let Some(cost) = cost else {
            return Err(ErrorCode::InsufficientMemory);
        };
        let mut listings = self
            .inner
            .listings
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // A listing the guest dropped is gone from the table (or its index holds something
        // else: every listing is recorded here when made).
        listings.retain(|&rep, _| {
            table
                .get::<ReaddirIterator>(&Resource::new_borrow(rep))
                .is_ok()
        });
        let held: u64 = listings.values().sum();
        if held.saturating_add(cost) > LISTING_BYTES {
            return Err(ErrorCode::InsufficientMemory);
        }
        Ok(())
    }

    /// Records a listing the guest just started (resource table index `rep`).
    fn record_listing(&self, rep: u32, cost: u64) {
        self.inner
            .listings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(rep, cost);
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

    /// Checks (and charges) one new file, directory or link in the directory `dir`.
    fn charge_entry(&self, dir: &File) -> Result<(), Refusal> {
        if self.in_tmp(dir) {
            return self.charge_tmp(ENTRY_BYTES);
        }
        let mut run = self.inner.run.lock().unwrap_or_else(|e| e.into_inner());
        if run.entries >= HOST_DIR_ENTRIES_PER_RUN {
            return Err(Refusal::RunQuota);
        }
        run.entries += 1;
        Ok(())
    }

    /// Bytes of the files this guest deleted from `/tmp` but holds open.
    fn unlinked_open_tmp_usage(&self) -> u64 {
        let open = self
            .inner
            .open_files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        unlinked_usage(&open, self)
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
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let growth = end.saturating_sub(size);
        if growth == 0 {
            return Ok(());
        }
        if !in_tmp {
            let mut run = self.inner.run.lock().unwrap_or_else(|e| e.into_inner());
            let cap = self
                .inner
                .file_size
                .map_or(agentkernel_core::WORKSPACE_BYTES_PER_RUN, |max| {
                    max.saturating_mul(HOST_DIR_FILE_SIZES_PER_RUN)
                });
            if run.bytes.saturating_add(growth) > cap {
                return Err(Refusal::RunQuota);
            }
            run.bytes += growth;
            return Ok(());
        }
        self.charge_tmp(growth)
    }

    /// Charges `growth` bytes to `/tmp`, or refuses them.
    fn charge_tmp(&self, growth: u64) -> Result<(), Refusal> {
        let mut used = self
            .inner
            .tmp_used
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if *used + growth > self.inner.tmp_cap {
            // The estimate says no: count what is really there before refusing, including
            // files deleted from `/tmp` that the guest still holds open (their blocks stay
            // allocated until closed, and no directory listing shows them).
            *used = dir_usage(&self.inner.tmp_dir) + self.unlinked_open_tmp_usage();
            if *used + growth > self.inner.tmp_cap {
                return Err(Refusal::NoSpace);
            }
        }
        *used += growth;
        Ok(())
    }
}

/// Bytes held by files the guest still has open in `/tmp` but has deleted, counted like
/// [`dir_usage`] counts a file.
fn unlinked_usage(open: &[Weak<File>], quota: &Quota) -> u64 {
    open.iter()
        .filter_map(Weak::upgrade)
        .filter_map(|f| {
            let m = f.metadata().ok()?;
            (m.nlink() == 0 && quota.in_tmp(&f))
                .then(|| (m.blocks() * 512).max(m.len()).max(ENTRY_BYTES))
        })
        .sum()
}

/// What listing the directory `dir` costs the host, in bytes: [`LISTING_BASE_BYTES`] plus,
/// per entry, its name and [`LISTING_ENTRY_BYTES`]; `None` past `limit` (counting stops
/// there, so a directory of a million entries is not read to the end). Only names are read
/// (`getdents`), not each entry's metadata as the listing itself will.
fn listing_cost(dir: &File, limit: u64) -> Option<u64> {
    let mut cost = LISTING_BASE_BYTES;
    // Unreadable: the listing itself will fail and hold nothing.
    let Ok(entries) = cap_primitives::fs::read_base_dir(dir) else {
        return Some(cost);
    };
    for entry in entries.flatten() {
        cost += entry.file_name().len() as u64 + LISTING_ENTRY_BYTES;
        if cost > limit {
            return None;
        }
    }
    Some(cost)
}

/// Bytes the entries under `dir` hold (allocated blocks, like `du`), each file, directory
/// and symlink counted as at least [`ENTRY_BYTES`].
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
                total += ENTRY_BYTES;
            } else {
                total += (m.blocks() * 512).max(m.len()).max(ENTRY_BYTES);
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
                Ok((open_at(state, fd, path_flags, path, oflags, flags)?,))
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.read-directory",
        |mut store, (fd,): (Resource<Descriptor>,)| {
            Box::new(async move {
                let state = store.data_mut();
                let quota = state.quota.clone();
                let mut cost = None;
                if let Descriptor::Dir(dir) = state.table.get(&fd)? {
                    let c = listing_cost(&dir.dir, LISTING_BYTES);
                    if let Err(code) = quota.admit_listing(&state.table, c) {
                        return Ok((Err(code),));
                    }
                    cost = c;
                }
                let r = HostDescriptor::read_directory(&mut state.filesystem(), fd).await;
                let r = split(r)?;
                if let (Ok(stream), Some(cost)) = (&r, cost) {
                    quota.record_listing(stream.rep(), cost);
                }
                Ok((r,))
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.create-directory-at",
        |mut store, (fd, path): (Resource<Descriptor>, String)| {
            Box::new(async move {
                let state = store.data_mut();
                if let Err(code) = charge_new_entry(state, &fd) {
                    return Ok((Err(code),));
                }
                let r =
                    HostDescriptor::create_directory_at(&mut state.filesystem(), fd, path).await;
                Ok((split(r)?,))
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.symlink-at",
        |mut store, (fd, target, path): (Resource<Descriptor>, String, String)| {
            Box::new(async move {
                let state = store.data_mut();
                // A link whose target leaves the preopen (absolute, or with `..`) is
                // refused (`EPERM`, `PermissionError`): the guest could not follow it, but
                // the host and other programs using the directory would.
                if !agentkernel_core::symlink_target_descends(Path::new(&target)) {
                    return Ok((Err(ErrorCode::NotPermitted),));
                }
                if let Err(code) = charge_new_entry(state, &fd) {
                    return Ok((Err(code),));
                }
                let r = HostDescriptor::symlink_at(&mut state.filesystem(), fd, target, path).await;
                Ok((split(r)?,))
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.link-at",
        |mut store,
         (fd, flags, old_path, new_fd, new_path): (
            Resource<Descriptor>,
            PathFlags,
            String,
            Resource<Descriptor>,
            String,
        )| {
            Box::new(async move {
                let state = store.data_mut();
                if let Err(code) =
                    across_tmp(state, &fd, &new_fd).and_then(|()| charge_new_entry(state, &new_fd))
                {
                    return Ok((Err(code),));
                }
                let r = HostDescriptor::link_at(
                    &mut state.filesystem(),
                    fd,
                    flags,
                    old_path,
                    new_fd,
                    new_path,
                )
                .await;
                Ok((split(r)?,))
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.rename-at",
        |mut store,
         (fd, old_path, new_fd, new_path): (
            Resource<Descriptor>,
            String,
            Resource<Descriptor>,
            String,
        )| {
            Box::new(async move {
                let state = store.data_mut();
                if let Err(code) = across_tmp(state, &fd, &new_fd) {
                    return Ok((Err(code),));
                }
                let r = HostDescriptor::rename_at(
                    &mut state.filesystem(),
                    fd,
                    old_path,
                    new_fd,
                    new_path,
                )
                .await;
                Ok((split(r)?,))
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

/// The guest's `open-at`, done here rather than by `wasmtime-wasi` (whose flag handling it
/// follows) so that no open can block and the file's type is judged on the open
/// descriptor itself, not on a `stat` before it (another writer of the workspace could swap
/// the file for a FIFO in between):
/// - the host opens with `O_NONBLOCK | O_NOCTTY`: a FIFO opens at once (or fails, `ENXIO`,
///   for writing without a reader) instead of waiting for its other end, a file under a
///   lease fails instead of waiting for the lease to break, a terminal is never adopted;
/// - then `fstat` on that descriptor: anything but a regular file or directory (FIFO,
///   socket, device) is closed again and refused with `EACCES` (`PermissionError`);
/// - the open-file caps ([`MAX_OPEN_FILES`], [`open_files_budget`]) and the charge for a new
///   file apply as before; files created in `/tmp` are `0600`.
fn open_at(
    state: &mut State,
    fd: Resource<Descriptor>,
    path_flags: PathFlags,
    path: String,
    oflags: OpenFlags,
    flags: DescriptorFlags,
) -> wasmtime::Result<Result<Resource<Descriptor>, ErrorCode>> {
    use cap_primitives::fs::{FollowSymlinks, OpenOptions, OpenOptionsExt};
    use wasmtime_wasi::OpenMode;

    let quota = state.quota.clone();
    let Descriptor::Dir(dir) = state.table.get(&fd)? else {
        return Ok(Err(ErrorCode::NotDirectory));
    };
    let (parent, perms) = (dir.dir.clone(), dir.perms);

    // The options `wasmtime-wasi` would give the OS (its `Dir::open_at`).
    let mut opts = OpenOptions::new();
    let mut open_mode = OpenMode::empty();
    let create = oflags.contains(OpenFlags::CREATE);
    if create {
        if oflags.contains(OpenFlags::EXCLUSIVE) {
            opts.create_new(true);
        } else {
            opts.create(true);
        }
        opts.write(true);
        open_mode |= OpenMode::WRITE;
    }
    if oflags.contains(OpenFlags::TRUNCATE) {
        opts.truncate(true).write(true);
        open_mode |= OpenMode::WRITE;
    }
    if flags.contains(DescriptorFlags::READ) {
        opts.read(true);
        open_mode |= OpenMode::READ;
    }
    if flags.contains(DescriptorFlags::WRITE) {
        opts.write(true);
        open_mode |= OpenMode::WRITE;
    } else {
        // Opened for reading at least; `perms` refuse writes later.
        opts.read(true);
        open_mode |= OpenMode::READ;
    }
    opts._cap_fs_ext_follow(if path_flags.contains(PathFlags::SYMLINK_FOLLOW) {
        FollowSymlinks::Yes
    } else {
        FollowSymlinks::No
    });
    if flags.contains(DescriptorFlags::FILE_INTEGRITY_SYNC)
        || flags.contains(DescriptorFlags::DATA_INTEGRITY_SYNC)
        || flags.contains(DescriptorFlags::REQUESTED_WRITE_SYNC)
    {
        return Ok(Err(ErrorCode::Unsupported));
    }
    if oflags.contains(OpenFlags::DIRECTORY)
        && (create || oflags.contains(OpenFlags::EXCLUSIVE) || oflags.contains(OpenFlags::TRUNCATE))
    {
        return Ok(Err(ErrorCode::Invalid));
    }
    if perms.write_not_permitted() && (create || open_mode.contains(OpenMode::WRITE)) {
        return Ok(Err(ErrorCode::NotPermitted));
    }
    opts.custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY);
    let in_tmp = quota.in_tmp(&parent);
    opts.mode(if in_tmp { 0o600 } else { 0o666 });

    if let Err(code) = quota.admit_open() {
        return Ok(Err(code));
    }
    // A new file (`O_CREAT` of a missing one) is charged before it exists.
    if create
        && stat(&parent, &path).is_none()
        && let Err(refusal) = quota.charge_entry(&parent)
    {
        return Ok(Err(refusal.code()));
    }
    let opened = match cap_primitives::fs::open(&parent, Path::new(&path), &opts) {
        Ok(file) => file,
        Err(e) => return Ok(Err(ErrorCode::from(e))),
    };
    let kind = match opened.metadata() {
        Ok(meta) => meta.file_type(),
        Err(e) => return Ok(Err(ErrorCode::from(e))),
    };
    let descriptor = if kind.is_dir() {
        Descriptor::Dir(wasmtime_wasi::filesystem::Dir::new(
            opened, perms, open_mode, true,
        ))
    } else if oflags.contains(OpenFlags::DIRECTORY) {
        return Ok(Err(ErrorCode::NotDirectory));
    } else if kind.is_file() {
        // Back to a plain descriptor, as `wasmtime-wasi` would have opened it (for a
        // regular file `O_NONBLOCK` changes nothing, but its flags are the guest's to see).
        if let Err(e) = clear_nonblock(&opened) {
            return Ok(Err(ErrorCode::from(std::io::Error::from(e))));
        }
        Descriptor::File(wasmtime_wasi::filesystem::File::new(
            opened, perms, open_mode, true,
        ))
    } else {
        // A FIFO, socket or device: never handed to the guest (reading a FIFO would wait
        // for a writer past any time limit; WASI has no `mknod`, but the host's workspace
        // can hold them).
        return Ok(Err(ErrorCode::Access));
    };
    let opened = state.table.push(descriptor)?;
    match state.table.get(&opened)? {
        Descriptor::File(f) => quota.track_open(&f.file),
        Descriptor::Dir(d) => quota.track_open(&d.dir),
    }
    Ok(Ok(opened))
}

/// Clears `O_NONBLOCK` on `file`.
fn clear_nonblock(file: &File) -> nix::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(file, FcntlArg::F_GETFL)?);
    fcntl(file, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))?;
    Ok(())
}

/// What `path` under `dir` is (following symlinks, resolved inside `dir` as the guest's
/// open would be); `None` when it is missing (a file to create) or unreachable (the open
/// decides).
fn stat(dir: &std::fs::File, path: &str) -> Option<cap_primitives::fs::Metadata> {
    use cap_primitives::fs::FollowSymlinks;
    cap_primitives::fs::stat(dir, Path::new(path), FollowSymlinks::Yes).ok()
}
/// Charges a new entry in the directory `fd` (nothing when it is not a directory: the
/// operation itself then fails).
fn charge_new_entry(state: &mut State, fd: &Resource<Descriptor>) -> Result<(), ErrorCode> {
    let Ok(Descriptor::Dir(dir)) = state.table.get(fd) else {
        return Ok(());
    };
    state
        .quota
        .charge_entry(&dir.dir)
        .map_err(|refusal| refusal.code())
}

/// Refuses (`EXDEV`) a rename or hard link between `/tmp` and another directory: it would
/// move usage out of the account that charged it.
fn across_tmp(
    state: &mut State,
    from: &Resource<Descriptor>,
    to: &Resource<Descriptor>,
) -> Result<(), ErrorCode> {
    let (Ok(Descriptor::Dir(a)), Ok(Descriptor::Dir(b))) =
        (state.table.get(from), state.table.get(to))
    else {
        return Ok(());
    };
    if state.quota.in_tmp(&a.dir) != state.quota.in_tmp(&b.dir) {
        return Err(ErrorCode::CrossDevice);
    }
    Ok(())
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
