//! In-process mode: the session runs in the kernel's own process, on a big stack.
//!
//! A run that cannot call tools (its code mentions neither `tools` nor `_agentkernel`, so
//! no tool helper can be reached) runs right on the caller's thread, switched (`psm`) to a
//! [`STACK_BYTES`] stack mapped once per thread and reused, inside `block_in_place` on a
//! multi-threaded runtime: no thread hop and no fresh stack, which would each cost more
//! than the run. A run that may call tools runs on a pooled sandbox thread with a stack as big, so
//! it can block on the async tool host. Deeply nested code overflows Monty's native stack
//! much later than on a default 2 MiB thread.
//!
//! A Rust panic inside the interpreter is caught (`catch_unwind`) and loses only that
//! sandbox; an abort (a native stack overflow, an allocator failure) takes the kernel down,
//! which is why untrusted code belongs in worker mode.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use agentkernel_core::admission::AdmittedExec;
use agentkernel_core::{
    CapturedOutput, Error, ExecOutcome, ExecStatus, ExprValue, LimitKind, OutputSink, Result,
    Sandbox, Snapshot, StreamKind, Timings, ToolCallRecord, ToolError, ToolErrorKind, ToolHost,
    WorkspaceLock,
};
use async_trait::async_trait;
use monty_types::{ExcType, MontyException, PrintWriterCallback};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::engine::{Host, PrivateDir, Session, SessionConfig};
use crate::tools::{BoundTools, mentions_tools};

/// Stack a run gets.
pub const STACK_BYTES: usize = 64 << 20;

/// How long past its deadline a run on a sandbox thread may go before the host gives up on
/// it (Monty checks its clock between operations; one huge operation can overshoot).
const GRACE: Duration = Duration::from_secs(2);

/// One exec's inputs.
struct Run {
    code: String,
    timeout: Duration,
    /// Bound as in [`BoundTools`].
    tools: Arc<BoundTools>,
    cap: usize,
    sink: Option<OutputSink>,
    /// For tool calls (only runs on a sandbox thread can make them).
    handle: Option<tokio::runtime::Handle>,
    /// Held for as long as the run (an abandoned run's thread keeps it until it ends).
    _workspace: Option<WorkspaceLock>,
}

/// One exec's results.
struct Finished {
    status: ExecStatus,
    value: Option<ExprValue>,
    stdout: CapturedOutput,
    tool_calls: Vec<ToolCallRecord>,
    tool_time: Duration,
}

/// The exec-time host of an in-process run.
struct LocalHost<'a> {
    run: &'a Run,
    deadline: Instant,
    stdout: CapturedOutput,
    calls: Vec<ToolCallRecord>,
    tool_time: Duration,
    /// The output passed the limit while a live sink was attached: the run ends
    /// `Killed{Output}` whatever the program does about the exception it gets.
    output_exceeded: bool,
}

impl LocalHost<'_> {
    /// Keeps `text` up to the cap and passes the kept bytes to the live sink (the
    /// `OutputSink` contract: never more than the output limit). With a sink attached,
    /// passing the limit stops the program.
    fn write(&mut self, text: &str) -> std::result::Result<(), MontyException> {
        let before = self.stdout.bytes.len();
        self.stdout.push(text.as_bytes(), self.run.cap);
        if let Some(sink) = &self.run.sink {
            let kept = &self.stdout.bytes[before..];
            if !kept.is_empty() {
                sink(StreamKind::Stdout, kept);
            }
            if self.stdout.truncated {
                self.output_exceeded = true;
                return Err(MontyException::new(
                    ExcType::RuntimeError,
                    Some("output size limit exceeded".into()),
                ));
            }
        }
        Ok(())
    }
}

impl PrintWriterCallback for LocalHost<'_> {
    fn stdout_write(
        &mut self,
        output: std::borrow::Cow<'_, str>,
    ) -> std::result::Result<(), MontyException> {
        self.write(&output)
    }

    fn stdout_push(&mut self, end: char) -> std::result::Result<(), MontyException> {
        let mut buf = [0u8; 4];
        self.write(end.encode_utf8(&mut buf))
    }
}

impl Host for LocalHost<'_> {
    fn call_tool(&mut self, name: &str, args: Value) -> std::result::Result<Value, ToolError> {
        let started = Instant::now();
        let result = match &self.run.handle {
            None => Err(ToolError::new(
                ToolErrorKind::Failed,
                "tools cannot be called from this run",
            )),
            Some(handle) => {
                let (tools, deadline) = (&self.run.tools, self.deadline);
                handle
                    .block_on(async move {
                        tokio::time::timeout_at(deadline.into(), tools.call(name, args)).await
                    })
                    .unwrap_or_else(|_| {
                        Err(ToolError::new(
                            ToolErrorKind::Timeout,
                            "the run's time limit was reached while the tool ran",
                        ))
                    })
            }
        };
        let took = started.elapsed();
        self.tool_time += took;
        self.calls.push(ToolCallRecord {
            name: name.to_owned(),
            duration: took,
            ok: result.is_ok(),
            error: result.as_ref().err().map(|e| e.kind),
        });
        result
    }
}

/// Runs `run` in the session in `slot`, catching a panic (which loses the session).
fn run_in(slot: &Mutex<Option<Session>>, run: &Run) -> Finished {
    let mut host = LocalHost {
        run,
        deadline: Instant::now() + run.timeout,
        stdout: CapturedOutput::default(),
        calls: Vec::new(),
        tool_time: Duration::ZERO,
        output_exceeded: false,
    };
    let mut session = slot.lock().unwrap_or_else(PoisonError::into_inner);
    let (status, value) = match session.as_mut() {
        None => (
            ExecStatus::Crashed {
                reason: "the interpreter was lost by an earlier panic".into(),
            },
            None,
        ),
        Some(s) => {
            let ran = std::panic::catch_unwind(AssertUnwindSafe(|| {
                s.exec(&run.code, run.timeout, &mut host)
            }));
            ran.unwrap_or_else(|panic| {
                *session = None;
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                (
                    ExecStatus::Crashed {
                        reason: format!("the interpreter panicked: {what}"),
                    },
                    None,
                )
            })
        }
    };
    let status = if host.output_exceeded {
        ExecStatus::Killed {
            limit: LimitKind::Output,
        }
    } else {
        status
    };
    // The same bounds and checks as a value from a guest process.
    let value = value.filter(|_| status == ExecStatus::Ok).map(|v| {
        ExprValue::from_guest(
            v.repr.as_bytes(),
            v.json.as_deref().map(str::as_bytes),
            v.truncated,
        )
    });
    Finished {
        status,
        value,
        stdout: host.stdout,
        tool_calls: host.calls,
        tool_time: host.tool_time,
    }
}

/// Work for a sandbox thread.
type Job = Box<dyn FnOnce() + Send>;

/// Idle sandbox threads, each waiting for its next [`Job`]: starting a thread with a big
/// stack costs more than a whole in-process run, so they are reused.
static IDLE_THREADS: Mutex<Vec<mpsc::Sender<Job>>> = Mutex::new(Vec::new());

/// Idle sandbox threads kept at most (each reserves [`STACK_BYTES`] of address space; only
/// the pages a program touched are memory).
const MAX_IDLE_THREADS: usize = 16;

/// Runs `job` on an idle sandbox thread, or on a new one.
fn on_big_stack(mut job: Job) -> std::io::Result<()> {
    loop {
        let idle = IDLE_THREADS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match idle {
            Some(thread) => match thread.send(job) {
                Ok(()) => return Ok(()),
                Err(mpsc::SendError(back)) => job = back, // that thread ended: try another
            },
            None => break,
        }
    }
    let (me, jobs) = mpsc::channel::<Job>();
    let _ = me.send(job);
    std::thread::Builder::new()
        .name("monty-sandbox".into())
        .stack_size(STACK_BYTES)
        .spawn(move || {
            while let Ok(job) = jobs.recv() {
                job();
                let mut idle = IDLE_THREADS.lock().unwrap_or_else(PoisonError::into_inner);
                if idle.len() >= MAX_IDLE_THREADS {
                    return;
                }
                idle.push(me.clone());
            }
        })?;
    Ok(())
}

/// Runs `f` on this thread with a [`STACK_BYTES`] stack, letting a multi-threaded tokio
/// runtime move its other tasks elsewhere meanwhile.
fn inline<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
            tokio::task::block_in_place(|| on_cached_stack(f))
        }
        _ => on_cached_stack(f),
    }
}

/// A [`STACK_BYTES`] stack mapped once per thread and reused by every inline run on it
/// (mapping a fresh one per run, as `stacker::grow` does, costs more than the run), with
/// an inaccessible guard page below it.
struct CachedStack {
    map: *mut libc::c_void,
    len: usize,
}

impl Drop for CachedStack {
    fn drop(&mut self) {
        // SAFETY: `map`/`len` are exactly the mapping made in `map_stack`, unmapped once.
        unsafe { libc::munmap(self.map, self.len) };
    }
}

const GUARD_BYTES: usize = 64 << 10;

fn map_stack() -> Option<CachedStack> {
    let len = STACK_BYTES + GUARD_BYTES;
    // SAFETY: an anonymous private mapping at an address the kernel chooses; checked below.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if map == libc::MAP_FAILED {
        return None;
    }
    let stack = CachedStack { map, len };
    // SAFETY: the lowest GUARD_BYTES of our own mapping (the stack grows down into it).
    if unsafe { libc::mprotect(map, GUARD_BYTES, libc::PROT_NONE) } != 0 {
        return None;
    }
    Some(stack)
}

thread_local! {
    static STACK: std::cell::RefCell<Option<CachedStack>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` on this thread's cached stack (or, if it cannot be mapped, on a fresh one).
fn on_cached_stack<T>(f: impl FnOnce() -> T) -> T {
    let Some(stack) = STACK.with(|s| s.borrow_mut().take()).or_else(map_stack) else {
        return stacker::grow(STACK_BYTES, f);
    };
    let mut f = Some(f);
    // SAFETY: [map + GUARD_BYTES, map + len) is a mapped, writable, page-aligned region of
    // STACK_BYTES (a multiple of any stack alignment), owned by this thread and used by
    // nothing else while it is out of the thread-local; the callback catches every panic, so
    // no unwind crosses the stack switch.
    let outcome = unsafe {
        psm::on_stack(stack.map.cast::<u8>().add(GUARD_BYTES), STACK_BYTES, || {
            std::panic::catch_unwind(AssertUnwindSafe(|| f.take().map(|f| f())))
        })
    };
    STACK.with(|s| *s.borrow_mut() = Some(stack));
    match outcome {
        Ok(Some(v)) => v,
        Ok(None) => unreachable!("the callback runs once"),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// A sandbox of in-process mode.
pub(crate) struct InProcessSandbox {
    id: String,
    session: Arc<Mutex<Option<Session>>>,
    config: SessionConfig,
    wall_time: Duration,
    output_cap: usize,
    lost: Option<String>,
    /// Private directories the session maps (`/tmp`, a workspace of its own), made on
    /// first use; removed on drop.
    dirs: Vec<Arc<PrivateDir>>,
    /// The host workspace, locked for each run (`None`: a private one).
    workspace: Option<std::path::PathBuf>,
}

impl InProcessSandbox {
    /// A sandbox with a session from `config` (or one restored from `snapshot`).
    pub(crate) fn start(
        id: String,
        config: SessionConfig,
        dirs: Vec<Arc<PrivateDir>>,
        workspace: Option<std::path::PathBuf>,
        wall_time: Duration,
        output_cap: usize,
        snapshot: Option<&[u8]>,
    ) -> Result<Self> {
        let session = match snapshot {
            Some(bytes) => Session::load(bytes, config.clone())
                .map_err(|e| Error::invalid(e, "restore a snapshot taken by the monty backend"))?,
            None => Session::new(config.clone())
                .map_err(|e| Error::invalid(e, "check the sandbox's workspace and mounts"))?,
        };
        Ok(InProcessSandbox {
            id,
            session: Arc::new(Mutex::new(Some(session))),
            config,
            wall_time,
            output_cap,
            lost: None,
            dirs,
            workspace,
        })
    }

    /// The session, unless a run abandoned after its timeout still holds it.
    fn session(&self) -> Result<std::sync::MutexGuard<'_, Option<Session>>> {
        match self.session.try_lock() {
            Ok(s) => Ok(s),
            Err(std::sync::TryLockError::Poisoned(p)) => Ok(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => Err(Error::sandbox_lost(Some(
                "a run it was killed in has not ended yet",
            ))),
        }
    }

    /// The outcome of a run whose wall time ran out before Monty started it (in the host's
    /// import rewrite). The session was not touched, but a killed run ends its sandbox on
    /// every backend: `reset` revives it.
    fn killed_before_start(&mut self, started: Instant) -> ExecOutcome {
        let limit = LimitKind::WallTime;
        self.lost = Some(format!("it was stopped by the {limit} limit"));
        ExecOutcome {
            status: ExecStatus::Killed { limit },
            stdout: CapturedOutput::default(),
            stderr: CapturedOutput::default(),
            timings: Timings {
                exec: started.elapsed(),
                ..Timings::default()
            },
            tool_calls: Vec::new(),
            value: None,
            displays: Vec::new(),
        }
    }
}

#[async_trait]
impl Sandbox for InProcessSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    async fn exec_admitted(
        &mut self,
        req: AdmittedExec,
        tools: Arc<dyn ToolHost>,
    ) -> Result<ExecOutcome> {
        if let Some(reason) = &self.lost {
            return Err(Error::sandbox_lost(Some(reason)));
        }
        let req = req.into_inner();
        let timeout = req.timeout.unwrap_or(self.wall_time);
        let workspace = WorkspaceLock::of(self.workspace.as_deref(), timeout).await?;
        let started = Instant::now();
        let deadline = started + timeout;
        let may_call_tools = mentions_tools(&req.code);
        let tools = Arc::new(BoundTools::new(tools));
        // The rewrite counts against the run's wall time: what is left of it is the run's.
        let rewritten = tools.rewrite(&req.code, deadline)?;
        let left = deadline.saturating_duration_since(Instant::now());
        let code = match rewritten {
            Some(std::borrow::Cow::Owned(rewritten)) => rewritten,
            Some(std::borrow::Cow::Borrowed(_)) => req.code,
            None => return Ok(self.killed_before_start(started)),
        };
        if left.is_zero() {
            return Ok(self.killed_before_start(started));
        }
        let sink = req.output.clone();
        let mut run = Run {
            code,
            timeout: left,
            tools,
            cap: self.output_cap,
            sink: req.output,
            handle: None,
            _workspace: workspace,
        };
        let finished = if may_call_tools {
            run.handle = Some(tokio::runtime::Handle::current());
            let slot = self.session.clone();
            let (reply, done) = oneshot::channel();
            on_big_stack(Box::new(move || {
                let _ = reply.send(run_in(&slot, &run));
            }))
            .map_err(|e| Error::io("starting a monty sandbox thread", e))?;
            match tokio::time::timeout(left + GRACE, done).await {
                Ok(Ok(f)) => f,
                Ok(Err(_)) => {
                    self.lost = Some("its interpreter thread ended".into());
                    return Err(Error::sandbox_lost(self.lost.as_deref()));
                }
                Err(_) => {
                    // The thread is still inside one operation; it cannot be stopped from
                    // outside. The sandbox is abandoned (the thread ends when the run does).
                    self.lost = Some(format!("killed after the {timeout:?} timeout"));
                    Finished {
                        status: ExecStatus::Killed {
                            limit: LimitKind::WallTime,
                        },
                        value: None,
                        stdout: CapturedOutput::default(),
                        tool_calls: Vec::new(),
                        tool_time: Duration::ZERO,
                    }
                }
            }
        } else {
            let slot = &self.session;
            inline(|| run_in(slot, &run))
        };
        match &finished.status {
            ExecStatus::Killed { limit } => {
                self.lost
                    .get_or_insert_with(|| format!("it was stopped by the {limit} limit"));
            }
            ExecStatus::Crashed { reason } => {
                self.lost = Some(reason.clone());
            }
            _ => {}
        }
        // An uncaught exception's traceback on stderr, as a terminal shows it.
        let mut stderr = CapturedOutput::default();
        if let ExecStatus::Exception { traceback, .. } = &finished.status {
            stderr.push_live(
                traceback.as_bytes(),
                self.output_cap,
                sink.as_ref(),
                StreamKind::Stderr,
            );
        }
        Ok(ExecOutcome {
            status: finished.status,
            stdout: finished.stdout,
            stderr,
            timings: Timings {
                exec: started.elapsed(),
                tool_calls: finished.tool_time,
                ..Timings::default()
            },
            tool_calls: finished.tool_calls,
            value: finished.value,
            displays: Vec::new(),
        })
    }

    async fn reset(&mut self) -> Result<()> {
        let fresh = Session::new(self.config.clone()).map_err(Error::Internal)?;
        *self.session()? = Some(fresh);
        for path in self.dirs.iter().filter_map(|d| d.created()) {
            agentkernel_core::empty_dir(&path)
                .map_err(|e| Error::io(format!("emptying {} for a reset", path.display()), e))?;
        }
        self.lost = None;
        Ok(())
    }

    async fn snapshot(&mut self) -> Result<Snapshot> {
        if let Some(reason) = &self.lost {
            return Err(Error::sandbox_lost(Some(reason)));
        }
        let data = match self.session()?.as_ref() {
            Some(s) => s.dump().map_err(Error::Internal)?,
            None => return Err(Error::sandbox_lost(Some("its interpreter panicked"))),
        };
        Ok(Snapshot {
            backend: "monty".into(),
            data,
        })
    }

    async fn shutdown(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}
