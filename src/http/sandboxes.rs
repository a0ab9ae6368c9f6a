//! The live sandboxes of a server and their executions, whatever API asks for them.
//!
//! A sandbox is a kernel session ([`crate::Session`]) named by the sandbox's id: its
//! interpreter keeps its globals between executions, and its workspace is a named one (the
//! caller's, or a fresh `sbx-…` one of its own, deleted with it). The table counts live
//! sandboxes per key and in all (creation past a cap is a 429), and its reaper closes
//! sandboxes idle for their idle timeout or past their lifetime.
//!
//! An execution runs in a task of its own, so that whoever asked for it can go away: its
//! output reaches the [`Execution`] as [`ExecEvent`]s as it is written, then one
//! [`ExecEvent::End`]. Dropping the `Execution` before its end (the HTTP client closed the
//! connection) stops the program: the run is abandoned and the sandbox reset (the program
//! and what it started are killed; the interpreter starts afresh, its variables lost, its
//! workspace's files kept). Closing the sandbox or the server's shutdown stops it the same
//! way. One execution at a time runs in a sandbox; another meanwhile is refused (409).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::http::StatusCode;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

use agentkernel_core::{Error, ExecOutcome, ExecRequest, Limits, OutputSink, StreamKind};

use super::{ApiError, KeyId, ServerState};
use crate::kernel::Kernel;
use crate::session::{Session, SessionOptions};

/// The prefix of sandbox ids, and of the workspaces made for sandboxes (a caller cannot
/// name a workspace with it).
pub const SANDBOX_PREFIX: &str = "sbx-";

/// What a new sandbox asks for (already parsed from whichever API's body).
#[derive(Debug, Clone, Default)]
pub struct SandboxOptions {
    /// Backend (`None`: the server's default).
    pub backend: Option<String>,
    /// Named workspace (`None`: a fresh one of its own, deleted with it).
    pub workspace: Option<String>,
    /// Limits (each at most the kernel's) and environment.
    pub session: SessionOptions,
    /// Idle timeout (`None`: the server's default).
    pub idle_timeout: Option<Duration>,
    /// Lifetime from now (`None`: the server's default).
    pub lifetime: Option<Duration>,
    /// The caller's own labels, returned as they are.
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// One live sandbox.
pub struct SandboxEntry {
    /// Its id (`sbx-` and 32 hex digits).
    pub id: String,
    /// The key that created it.
    pub owner: KeyId,
    /// Its backend's name.
    pub backend: &'static str,
    /// Its workspace's name.
    pub workspace: String,
    /// Whether its workspace was made for it (and is deleted with it).
    pub own_workspace: bool,
    /// Its limits.
    pub limits: Limits,
    /// The caller's labels.
    pub metadata: std::collections::BTreeMap<String, String>,
    /// Its idle timeout.
    pub idle_timeout: Duration,
    /// When it was created.
    pub created_at: SystemTime,
    session: Session,
    kernel: Kernel,
    deadline: Mutex<(Instant, SystemTime)>,
    last_used: Mutex<Instant>,
    busy: AtomicBool,
    executions: AtomicU64,
    /// Cancelled when it closes (or the server's grace ran out): a running execution stops.
    kill: CancellationToken,
    close_reason: Mutex<Option<String>>,
}

impl std::fmt::Debug for SandboxEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxEntry")
            .field("id", &self.id)
            .field("backend", &self.backend)
            .finish()
    }
}

impl SandboxEntry {
    /// Whether an execution runs in it now.
    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::SeqCst)
    }

    /// Occupies the sandbox (as an execution does) until the guard is dropped: for work
    /// that must not overlap an execution, e.g. changing its workspace's files. 409 when
    /// it is busy.
    pub fn occupy(&self) -> Result<Occupied<'_>, ApiError> {
        if self
            .busy
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Err(busy(&self.id));
        }
        self.touch();
        Ok(Occupied(self))
    }

    /// Executions so far.
    pub fn executions(&self) -> u64 {
        self.executions.load(Ordering::SeqCst)
    }

    /// When it will be closed for its lifetime.
    pub fn expires_at(&self) -> SystemTime {
        self.deadline.lock().map(|d| d.1).unwrap_or(self.created_at)
    }

    /// Sets its remaining lifetime to `lifetime` from now (E2B's `set_timeout`).
    pub fn set_lifetime(&self, lifetime: Duration) {
        if let Ok(mut d) = self.deadline.lock() {
            *d = (Instant::now() + lifetime, SystemTime::now() + lifetime);
        }
    }

    /// Its session (the interpreter and workspace).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Seconds since its last use.
    pub fn idle_for(&self) -> Duration {
        self.last_used
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }

    fn touch(&self) {
        if let Ok(mut t) = self.last_used.lock() {
            *t = Instant::now();
        }
    }

    /// How long until the reaper may close it (the sooner of its idle timeout, unless it is
    /// running, and its lifetime), as things stand now.
    fn closes_in(&self) -> Duration {
        let lifetime = self
            .deadline
            .lock()
            .map(|d| d.0.saturating_duration_since(Instant::now()))
            .unwrap_or_default();
        if self.is_busy() {
            // The reaper never closes a running sandbox for idleness.
            return lifetime;
        }
        lifetime.min(self.idle_timeout.saturating_sub(self.idle_for()))
    }

    fn expired(&self) -> bool {
        self.deadline
            .lock()
            .map(|d| Instant::now() >= d.0)
            .unwrap_or(false)
    }
}

/// The live sandboxes, and the places reserved by creations under way (counted against
/// the caps before the sandbox exists, so concurrent creations cannot overshoot them).
#[derive(Default)]
pub(super) struct Table {
    inner: Mutex<TableInner>,
}

#[derive(Default)]
struct TableInner {
    live: HashMap<String, Arc<SandboxEntry>>,
    reserved: HashMap<KeyId, usize>,
}

impl TableInner {
    fn count(&self, owner: &KeyId) -> usize {
        self.live.values().filter(|e| &e.owner == owner).count()
            + self.reserved.get(owner).copied().unwrap_or(0)
    }

    fn total(&self) -> usize {
        self.live.len() + self.reserved.values().sum::<usize>()
    }

    /// Seconds until a place under a cap may free up: the soonest the reaper may close one
    /// of the sandboxes counted (of `owner`, or of anyone), at least 1 (a creation under way
    /// may also fail and give its place back), rounded up.
    fn retry_after(&self, owner: Option<&KeyId>) -> u64 {
        self.live
            .values()
            .filter(|e| owner.is_none_or(|o| &e.owner == o))
            .map(|e| e.closes_in())
            .min()
            .map_or(1, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
            .max(1)
    }
}

/// A place held in the table for a creation under way; given back when dropped (the
/// creation failed) or settled when the sandbox takes its place.
struct Reservation<'a> {
    table: &'a Table,
    owner: KeyId,
    held: bool,
}

impl Reservation<'_> {
    /// Gives the place back in `t` (locked by the caller).
    fn release(&mut self, t: &mut TableInner) {
        if std::mem::take(&mut self.held)
            && let Some(n) = t.reserved.get_mut(&self.owner)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                t.reserved.remove(&self.owner);
            }
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.held
            && let Ok(mut t) = self.table.inner.lock()
        {
            self.release(&mut t);
        }
    }
}

fn poisoned() -> ApiError {
    ApiError::from(Error::Internal(
        "the sandbox table's lock was poisoned".into(),
    ))
}

impl ServerState {
    fn reserve(&self, owner: &KeyId) -> Result<Reservation<'_>, ApiError> {
        let mut t = self.table.inner.lock().map_err(|_| poisoned())?;
        let caps = &self.limits;
        if t.total() >= caps.max_sandboxes {
            return Err(too_many(
                format!(
                    "the server runs its maximum of {} sandboxes",
                    caps.max_sandboxes
                ),
                t.retry_after(None),
            ));
        }
        if t.count(owner) >= caps.max_sandboxes_per_key {
            return Err(too_many(
                format!(
                    "this API key has its maximum of {} live sandboxes",
                    caps.max_sandboxes_per_key
                ),
                t.retry_after(Some(owner)),
            ));
        }
        *t.reserved.entry(owner.clone()).or_default() += 1;
        Ok(Reservation {
            table: &self.table,
            owner: owner.clone(),
            held: true,
        })
    }

    /// Creates a sandbox for `owner` (429 past a cap, 400 for bad options, 503 while
    /// shutting down or when the backend cannot start one).
    pub async fn create_sandbox(
        &self,
        owner: &KeyId,
        options: SandboxOptions,
    ) -> Result<Arc<SandboxEntry>, ApiError> {
        self.refuse_if_draining()?;
        let kernel = self.kernel(options.backend.as_deref())?.clone();
        let idle_timeout = bounded(
            "idle_timeout_secs",
            options.idle_timeout,
            self.limits.idle_timeout,
            self.limits.max_idle_timeout,
        )?;
        let lifetime = bounded(
            "max_lifetime_secs",
            options.lifetime,
            self.limits.lifetime,
            self.limits.max_lifetime,
        )?;
        if let Some(ws) = &options.workspace {
            if ws.starts_with(SANDBOX_PREFIX) {
                return Err(ApiError::bad_request(
                    format!("workspace names starting with {SANDBOX_PREFIX:?} belong to sandboxes"),
                    "choose another name, or leave the workspace out to get a fresh one",
                ));
            }
            agentkernel_core::validate_workspace_name(ws).map_err(ApiError::from)?;
        }
        let mut reservation = self.reserve(owner)?;
        let id = format!("{SANDBOX_PREFIX}{}", uuid::Uuid::new_v4().simple());
        let (workspace, own_workspace) = match options.workspace {
            Some(ws) => (ws, false),
            None => (id.clone(), true),
        };
        let started = kernel
            .session_with_options(&id, &workspace, &options.session)
            .await;
        let session = match started {
            Ok(s) => s,
            Err(e) => {
                if own_workspace {
                    let _ = kernel.workspaces().delete(&workspace);
                }
                return Err(e.into());
            }
        };
        let limits = options
            .session
            .limits
            .clone()
            .unwrap_or_else(|| kernel.spec().limits.clone());
        let now = (Instant::now(), SystemTime::now());
        let entry = Arc::new(SandboxEntry {
            id: id.clone(),
            owner: owner.clone(),
            backend: kernel.runtime().name(),
            workspace,
            own_workspace,
            limits,
            metadata: options.metadata,
            idle_timeout,
            created_at: now.1,
            session,
            kernel,
            deadline: Mutex::new((now.0 + lifetime, now.1 + lifetime)),
            last_used: Mutex::new(now.0),
            busy: AtomicBool::new(false),
            executions: AtomicU64::new(0),
            kill: self.kill.child_token(),
            close_reason: Mutex::new(None),
        });
        {
            let mut t = self.table.inner.lock().map_err(|_| poisoned())?;
            t.live.insert(id, entry.clone());
            // The live entry counts from now on, instead of the reservation.
            reservation.release(&mut t);
        }
        if self.is_draining() {
            // The shutdown's close may have run meanwhile: this one is closed here.
            self.close_entry(&entry, "the server is shutting down")
                .await;
            return Err(self.refuse_if_draining().err().unwrap_or_else(poisoned));
        }
        self.metrics.sandbox_created();
        Ok(entry)
    }

    /// `owner`'s sandbox `id` (404 if none, or another key's).
    pub fn sandbox(&self, owner: &KeyId, id: &str) -> Result<Arc<SandboxEntry>, ApiError> {
        let t = self.table.inner.lock().map_err(|_| poisoned())?;
        t.live
            .get(id)
            .filter(|e| &e.owner == owner)
            .cloned()
            .ok_or_else(|| ApiError::sandbox_not_found(id))
    }

    /// `owner`'s live sandboxes, oldest first.
    pub fn sandboxes(&self, owner: &KeyId) -> Vec<Arc<SandboxEntry>> {
        let mut out: Vec<Arc<SandboxEntry>> = self
            .table
            .inner
            .lock()
            .map(|t| {
                t.live
                    .values()
                    .filter(|e| &e.owner == owner)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by_key(|e| e.created_at);
        out
    }

    /// The workspaces live sandboxes use (of any key).
    pub fn workspaces_in_use(&self) -> std::collections::BTreeSet<String> {
        self.table
            .inner
            .lock()
            .map(|t| t.live.values().map(|e| e.workspace.clone()).collect())
            .unwrap_or_default()
    }

    /// Live sandboxes in all.
    pub fn live_sandboxes(&self) -> usize {
        self.table.inner.lock().map(|t| t.live.len()).unwrap_or(0)
    }

    /// Closes `owner`'s sandbox `id`: a running execution stops, the interpreter ends, a
    /// workspace made for it is deleted. 404 if there is none.
    pub async fn close_sandbox(&self, owner: &KeyId, id: &str) -> Result<(), ApiError> {
        let entry = self.sandbox(owner, id)?;
        self.close_entry(&entry, "it was deleted").await;
        Ok(())
    }

    /// Takes `entry` out of the table (404 from now on), stops its execution and closes it.
    async fn close_entry(&self, entry: &Arc<SandboxEntry>, reason: &str) {
        let removed = self
            .table
            .inner
            .lock()
            .map(|mut t| t.live.remove(&entry.id).is_some())
            .unwrap_or(false);
        if let Ok(mut r) = entry.close_reason.lock()
            && r.is_none()
        {
            *r = Some(reason.to_owned());
        }
        entry.kill.cancel();
        if let Err(e) = entry.kernel.close_session(&entry.id).await {
            tracing::warn!(sandbox = %entry.id, error = %e, "closing a sandbox failed");
        }
        if entry.own_workspace
            && let Err(e) = entry.kernel.workspaces().delete(&entry.workspace)
        {
            tracing::warn!(sandbox = %entry.id, error = %e, "deleting a sandbox's workspace failed");
        }
        if removed {
            tracing::info!(sandbox = %entry.id, reason, "sandbox closed");
            self.metrics.sandbox_closed();
        }
    }

    /// Closes every sandbox (the shutdown's last step).
    pub(super) async fn close_all(&self) {
        let all: Vec<Arc<SandboxEntry>> = self
            .table
            .inner
            .lock()
            .map(|t| t.live.values().cloned().collect())
            .unwrap_or_default();
        for entry in all {
            self.close_entry(&entry, "the server shut down").await;
        }
    }

    /// Starts `req` (its `output` is replaced) in `entry`: 409 if one runs there already,
    /// 503 while shutting down. See the module doc for what the [`Execution`] gets and what
    /// dropping it does.
    pub fn execute(
        &self,
        entry: &Arc<SandboxEntry>,
        mut req: ExecRequest,
    ) -> Result<Execution, ApiError> {
        self.refuse_if_draining()?;
        if entry.kill.is_cancelled() {
            return Err(ApiError::sandbox_not_found(&entry.id));
        }
        if entry
            .busy
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Err(busy(&entry.id));
        }
        entry.touch();
        self.running.fetch_add(1, Ordering::SeqCst);
        let (tx, events) = mpsc::unbounded_channel();
        let out = tx.clone();
        let sink: OutputSink = Arc::new(move |stream, bytes: &[u8]| {
            let _ = out.send(ExecEvent::Output {
                stream,
                bytes: bytes.to_vec(),
            });
        });
        req.output = Some(sink);
        let stop = entry.kill.child_token();
        let guard = stop.clone().drop_guard();
        let (state, entry) = (self.clone(), entry.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let ran = tokio::select! {
                out = entry.session.exec_request(req) => Some(out),
                _ = stop.cancelled() => None,
            };
            let end = match ran {
                Some(Ok(outcome)) => ExecEnd::Finished(Box::new(outcome)),
                Some(Err(e)) => ExecEnd::Failed(e),
                None => {
                    // The run was abandoned (its future dropped): the program goes on
                    // until the sandbox is reset (or closed, by whoever closes it).
                    let closing = entry.close_reason.lock().ok().and_then(|r| r.clone());
                    let reason = if state.kill.is_cancelled() {
                        // Its sandbox is closed next, by the shutdown.
                        StopReason::Shutdown
                    } else if let Some(why) = closing {
                        StopReason::SandboxClosed(why)
                    } else {
                        if let Err(e) = entry.session.reset().await {
                            tracing::warn!(sandbox = %entry.id, error = %e, "resetting a sandbox after a stopped execution failed");
                        }
                        StopReason::ClientGone
                    };
                    ExecEnd::Stopped(reason)
                }
            };
            let elapsed = started.elapsed();
            state
                .metrics
                .execution(entry.backend, end.status(), elapsed);
            entry.executions.fetch_add(1, Ordering::SeqCst);
            entry.touch();
            entry.busy.store(false, Ordering::SeqCst);
            state.running.fetch_sub(1, Ordering::SeqCst);
            state.running_changed.notify_waiters();
            let _ = tx.send(ExecEvent::End {
                end,
                duration: elapsed,
            });
        });
        Ok(Execution {
            events,
            _stop: guard,
        })
    }
}

/// Holds a sandbox busy ([`SandboxEntry::occupy`]) until dropped.
#[derive(Debug)]
pub struct Occupied<'a>(&'a SandboxEntry);

impl Drop for Occupied<'_> {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.store(false, Ordering::SeqCst);
    }
}

fn busy(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "sandbox_busy",
        format!("sandbox {id} is busy: an execution (or a change of its files) is under way"),
        "wait for it to end (one thing at a time runs in a sandbox), or create another sandbox",
    )
}

/// 429, with `Retry-After` the seconds until the reaper may free a place.
fn too_many(message: String, retry_after: u64) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_sandboxes",
        format!("{message}; the soonest one closes by itself in {retry_after} s"),
        "delete sandboxes you are done with (DELETE /v1/sandboxes/{id}), or retry after Retry-After seconds",
    )
    .retry_after(retry_after)
}

/// `asked` (or `default`), refused above `max` or at zero.
fn bounded(
    name: &str,
    asked: Option<Duration>,
    default: Duration,
    max: Duration,
) -> Result<Duration, ApiError> {
    match asked {
        None => Ok(default.min(max)),
        Some(d) if d.is_zero() || d > max => Err(ApiError::bad_request(
            format!("{name} must be above 0 and at most {}", max.as_secs()),
            format!("give {name} between 1 and {}", max.as_secs()),
        )),
        Some(d) => Ok(d),
    }
}

/// Closes idle and expired sandboxes, once a second.
pub(super) async fn reap(state: ServerState) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let due: Vec<(Arc<SandboxEntry>, &'static str)> = state
            .table
            .inner
            .lock()
            .map(|t| {
                t.live
                    .values()
                    .filter_map(|e| {
                        if e.expired() {
                            Some((e.clone(), "its lifetime ended"))
                        } else if !e.is_busy() && e.idle_for() >= e.idle_timeout {
                            Some((e.clone(), "it was idle for its idle timeout"))
                        } else {
                            None
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        for (entry, reason) in due {
            state.close_entry(&entry, reason).await;
        }
    }
}

/// What an [`Execution`] receives.
#[derive(Debug)]
pub enum ExecEvent {
    /// Bytes the program wrote, as they were written.
    Output {
        /// Which stream.
        stream: StreamKind,
        /// The bytes (a chunk may end inside a UTF-8 character: see [`Utf8Chunker`]).
        bytes: Vec<u8>,
    },
    /// The execution ended; nothing follows.
    End {
        /// How.
        end: ExecEnd,
        /// From its start to its end, as the server saw it.
        duration: Duration,
    },
}

/// How an execution ended.
#[derive(Debug)]
pub enum ExecEnd {
    /// The program ran: its outcome (an exception or a limit kill among them).
    Finished(Box<ExecOutcome>),
    /// The kernel could not run it.
    Failed(Error),
    /// It was stopped before its end.
    Stopped(StopReason),
}

impl ExecEnd {
    /// The status word of the wire formats and metrics: `ok`, `exception`, `exited`,
    /// `killed`, `crashed`, `failed` or `cancelled`.
    pub fn status(&self) -> &'static str {
        use agentkernel_core::ExecStatus as S;
        match self {
            ExecEnd::Finished(o) => match o.status {
                S::Ok => "ok",
                S::Exception { .. } => "exception",
                S::Exited { .. } => "exited",
                S::Killed { .. } => "killed",
                S::Crashed { .. } => "crashed",
            },
            ExecEnd::Failed(_) => "failed",
            ExecEnd::Stopped(_) => "cancelled",
        }
    }
}

/// Why an execution was stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// Whoever asked for it went away (the HTTP connection closed).
    ClientGone,
    /// Its sandbox was closed (the reason given).
    SandboxClosed(String),
    /// The server's shutdown grace ran out.
    Shutdown,
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::ClientGone => f.write_str("the client went away"),
            StopReason::SandboxClosed(why) => write!(f, "the sandbox was closed: {why}"),
            StopReason::Shutdown => f.write_str("the server shut down before the execution ended"),
        }
    }
}

/// A running execution: its events, in order. Dropping it before [`ExecEvent::End`] stops
/// the program.
pub struct Execution {
    events: mpsc::UnboundedReceiver<ExecEvent>,
    _stop: DropGuard,
}

impl std::fmt::Debug for Execution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Execution")
    }
}

impl Execution {
    /// The next event; `None` after the end.
    pub async fn next(&mut self) -> Option<ExecEvent> {
        self.events.recv().await
    }

    /// Waits for the end, dropping output events (the outcome has the output).
    pub async fn finish(mut self) -> (ExecEnd, Duration) {
        while let Some(event) = self.next().await {
            if let ExecEvent::End { end, duration } = event {
                return (end, duration);
            }
        }
        (
            ExecEnd::Failed(Error::Internal(
                "an execution's task ended without its end".into(),
            )),
            Duration::ZERO,
        )
    }
}

/// An execution's two output streams, each decoded as it arrives ([`Utf8Chunker`]).
#[derive(Debug, Default)]
pub struct OutputText {
    stdout: Utf8Chunker,
    stderr: Utf8Chunker,
}

impl OutputText {
    /// The text `bytes` of `stream` completes (maybe empty).
    pub fn push(&mut self, stream: StreamKind, bytes: &[u8]) -> String {
        match stream {
            StreamKind::Stdout => self.stdout.push(bytes),
            StreamKind::Stderr => self.stderr.push(bytes),
        }
    }

    /// What is left of each stream at the end, stdout first, the empty ones left out.
    pub fn finish(&mut self) -> Vec<(StreamKind, String)> {
        [
            (StreamKind::Stdout, self.stdout.finish()),
            (StreamKind::Stderr, self.stderr.finish()),
        ]
        .into_iter()
        .filter(|(_, text)| !text.is_empty())
        .collect()
    }
}

/// Turns byte chunks into text without splitting a UTF-8 character between two chunks:
/// an incomplete character at a chunk's end waits for the next one; invalid bytes become
/// U+FFFD.
#[derive(Debug, Default)]
pub struct Utf8Chunker {
    pending: Vec<u8>,
}

impl Utf8Chunker {
    /// The text `bytes` completes (maybe empty).
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match e.error_len() {
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..valid + bad);
                        }
                        None => {
                            // An incomplete character at the end: kept for later.
                            self.pending.drain(..valid);
                            return out;
                        }
                    }
                }
            }
        }
    }

    /// What is left at the end (an incomplete character, as U+FFFD).
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_chunks_never_split_a_character() {
        let text = "héllo → wörld ✓";
        let bytes = text.as_bytes();
        for split in 0..bytes.len() {
            let mut c = Utf8Chunker::default();
            let mut out = c.push(&bytes[..split]);
            out.push_str(&c.push(&bytes[split..]));
            out.push_str(&c.finish());
            assert_eq!(out, text, "split at {split}");
        }
        // Random bytes (rich in UTF-8 lead and continuation bytes) cut at random places
        // read the same as the whole, decoded at once.
        let mut seed: u64 = 0x1234_5678_9abc_def1;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        const BYTES: &[u8] = &[
            b'a', 0x80, 0xbf, 0xc3, 0xa9, 0xe2, 0x86, 0x92, 0xf0, 0x9f, 0xff,
        ];
        for _ in 0..5_000 {
            let len = (next() % 24) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| BYTES[(next() % BYTES.len() as u64) as usize])
                .collect();
            let mut c = Utf8Chunker::default();
            let mut out = String::new();
            let mut at = 0;
            while at < bytes.len() {
                let end = (at + 1 + (next() % 4) as usize).min(bytes.len());
                out.push_str(&c.push(&bytes[at..end]));
                at = end;
            }
            out.push_str(&c.finish());
            assert_eq!(out, String::from_utf8_lossy(&bytes), "{bytes:x?}");
        }
        let mut c = Utf8Chunker::default();
        assert_eq!(c.push(b"a\xffb"), "a\u{FFFD}b");
        assert_eq!(c.push(b"\xe2\x86"), "");
        assert_eq!(c.finish(), "\u{FFFD}");
    }
}
