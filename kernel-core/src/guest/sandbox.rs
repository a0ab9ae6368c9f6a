//! One exec state machine for every backend that runs the guest agent over [`GuestConn`]
//! (process, and the microvm backend's qemu and msb engines).
//!
//! [`GuestSandbox`] holds a sandbox's [`SandboxState`] and its backend's [`GuestBackend`]
//! hooks, and runs an exec the same way for all of them:
//!
//! ```text
//! live? ─no─▶ SandboxLost
//!   │ yes
//! resolve the timeout ─▶ lock (hook) ─▶ prepare (hook: copy in, wrap tools)
//!   ─▶ run (hook: the protocol exchange) ──protocol error──▶ end the guest, Err
//!   │
//!   ├─ Finished(status) ─▶ finished (hook: copy back) ─▶ status
//!   ├─ TimedOut ─▶ timed_out (hook: keep files) ─▶ end the guest ─▶ Killed{limit}
//!   └─ GuestGone ─▶ guest_gone (hook: classify the exit, end the guest) ─▶ status
//!   ─▶ outcome; a kill ends the guest ─▶ after_exec (hook: notes)
//! ```
//!
//! A backend keeps only what differs: how it runs the exchange, what it does with files at
//! each end, how it classifies its guest's death and how it ends a guest.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tracing::Instrument;

use super::conn::{ExecEnd, ExecReport};
use crate::admission::AdmittedExec;
use crate::error::{Error, Result};
use crate::exec::{ExecOutcome, ExecRequest, ExecStatus, LimitKind, Timings};
use crate::output::CapturedOutput;
use crate::spec::SandboxSpec;
use crate::state::SandboxState;
use crate::tools::ToolHost;
use crate::workspace::WorkspaceLock;

/// The times of one exec, as the hooks see them.
#[derive(Debug, Clone, Copy)]
pub struct ExecFrame {
    /// The run's timeout (the request's, else the spec's wall-time limit).
    pub timeout: Duration,
    /// When the run started (after the workspace lock was taken).
    pub started: Instant,
    /// `started + timeout`.
    pub deadline: Instant,
    /// Bytes kept of each output stream.
    pub output_cap: usize,
}

/// Why a hook stops an exec before it produced an outcome of its own.
#[derive(Debug)]
pub enum Abort {
    /// The exec fails with this error; the guest was not touched and keeps running.
    Refuse(Error),
    /// The guest must end, for `reason` (reported by later execs as
    /// [`Error::SandboxLost`]); the exec then answers `then`: an outcome with this status
    /// and no output, or this error.
    End {
        /// Why the guest ended.
        reason: String,
        /// What the exec answers.
        then: Result<ExecStatus>,
    },
}

/// What a guest-protocol backend supplies to [`GuestSandbox`]. Every hook but
/// [`GuestBackend::run`], [`GuestBackend::guest_gone`] and [`GuestBackend::end`] has a
/// default that does nothing.
#[async_trait]
pub trait GuestBackend: Send + 'static {
    /// What a running guest holds (its process or VM and the connection to its agent).
    type Live: Send;

    /// The backend's name, e.g. `"process"` (for spans).
    fn name(&self) -> &'static str;

    /// The sandbox's id (for spans).
    fn id(&self) -> &str;

    /// The sandbox's spec (its wall time, output cap and workspace are read from it).
    fn spec(&self) -> &SandboxSpec;

    /// Takes what must be held while the program runs, waiting up to `timeout`, before the
    /// run's clock starts, and held until the exec ends (also when its future is dropped).
    /// The default: the spec's workspace's lock, so one program at a time runs with a
    /// workspace. A backend that must hold its lock longer (until processes an exec left
    /// running are gone) takes it itself and answers `None`.
    async fn lock(&mut self, timeout: Duration) -> Result<Option<WorkspaceLock>> {
        WorkspaceLock::of(self.spec().workspace.as_deref(), timeout).await
    }

    /// Gets the live guest ready for the run (files copied in, a stopped agent resumed) and
    /// answers the tools the run uses (the caller's, or a wrapper).
    async fn prepare(
        &mut self,
        live: &mut Self::Live,
        frame: &ExecFrame,
        tools: Arc<dyn ToolHost>,
    ) -> std::result::Result<Arc<dyn ToolHost>, Abort> {
        let _ = (live, frame);
        Ok(tools)
    }

    /// Runs the program: the protocol exchange with the agent, until it ends, the deadline
    /// passes or the guest dies. An error is a broken protocol: the guest is then ended.
    async fn run(
        &mut self,
        live: &mut Self::Live,
        req: &ExecRequest,
        tools: Arc<dyn ToolHost>,
        frame: &ExecFrame,
    ) -> Result<ExecReport>;

    /// The program finished (`status` as the agent reported it): what must happen before
    /// the outcome (copy files back); the status it answers.
    async fn finished(
        &mut self,
        live: &mut Self::Live,
        status: ExecStatus,
        frame: &ExecFrame,
    ) -> std::result::Result<ExecStatus, Abort> {
        let _ = (live, frame);
        Ok(status)
    }

    /// The deadline passed (or a host-side limit stopped the run): what to keep before the
    /// guest is ended (files the program wrote).
    async fn timed_out(&mut self, live: &mut Self::Live, frame: &ExecFrame) {
        let _ = (live, frame);
    }

    /// The agent died under the run: ends the guest and classifies how the run ended (exit
    /// status, OOM counters, a limit's signal).
    async fn guest_gone(&mut self, live: Self::Live, frame: &ExecFrame) -> ExecStatus;

    /// Ends a live guest and waits until it is gone.
    async fn end(&mut self, live: Self::Live);

    /// After the outcome is made (the guest may be gone): notes for the caller on the
    /// outcome's stderr. Not called when the exec fails with an error (a lock taken by
    /// [`GuestBackend::lock`] is released on every path, being the exec's own).
    async fn after_exec(&mut self, outcome: &mut ExecOutcome, req: &ExecRequest) {
        let _ = (outcome, req);
    }
}

/// A guest-protocol sandbox: its state and its backend's hooks. A backend wraps it in its
/// own sandbox type, whose `exec_admitted` is [`GuestSandbox::exec`].
pub struct GuestSandbox<B: GuestBackend> {
    /// Live or lost.
    pub state: SandboxState<B::Live>,
    /// The backend's hooks and what they keep between execs.
    pub backend: B,
}

impl<B: GuestBackend> GuestSandbox<B> {
    /// A sandbox in `state`.
    pub fn new(state: SandboxState<B::Live>, backend: B) -> Self {
        GuestSandbox { state, backend }
    }

    /// Marks the sandbox lost for `reason` and ends its guest, if one was live.
    pub async fn lose(&mut self, reason: impl Into<String>) {
        if let Some(live) = self.state.lose(reason) {
            self.backend.end(live).await;
        }
    }

    /// Runs one admitted request (see the module's diagram).
    pub async fn exec(
        &mut self,
        req: AdmittedExec,
        tools: Arc<dyn ToolHost>,
    ) -> Result<ExecOutcome> {
        let span = tracing::info_span!("exec", backend = self.backend.name(), sandbox = %self.backend.id());
        self.exec_inner(req, tools).instrument(span).await
    }

    async fn exec_inner(
        &mut self,
        req: AdmittedExec,
        tools: Arc<dyn ToolHost>,
    ) -> Result<ExecOutcome> {
        self.state.live()?;
        let limits = &self.backend.spec().limits;
        let timeout = req.timeout.unwrap_or(limits.wall_time);
        let output_cap = limits.output_bytes;
        let _workspace = self.backend.lock(timeout).await?;
        let started = Instant::now();
        let frame = ExecFrame {
            timeout,
            started,
            deadline: started + timeout,
            output_cap,
        };
        let live = self.state.live()?;
        let tools = match self.backend.prepare(live, &frame, tools).await {
            Ok(tools) => tools,
            Err(abort) => return self.aborted(abort, &frame, &req).await,
        };
        let live = self.state.live()?;
        let report = match self.backend.run(live, &req, tools, &frame).await {
            Ok(report) => report,
            Err(e) => {
                // A guest that broke the protocol cannot be trusted to stop: end it.
                self.lose(format!("killed after a protocol error: {e}"))
                    .await;
                return Err(e);
            }
        };
        let status = match report.end.clone() {
            ExecEnd::Finished(status) => {
                let live = self.state.live()?;
                match self.backend.finished(live, status, &frame).await {
                    Ok(status) => status,
                    Err(Abort::Refuse(e)) => return Err(e),
                    Err(Abort::End { reason, then }) => {
                        self.lose(reason).await;
                        then?
                    }
                }
            }
            ExecEnd::TimedOut => {
                let live = self.state.live()?;
                self.backend.timed_out(live, &frame).await;
                let reason = match report.limit {
                    Some(limit) => format!("killed by the {limit} limit"),
                    None => format!("killed after the {timeout:?} timeout"),
                };
                self.lose(reason).await;
                ExecStatus::Killed {
                    limit: LimitKind::WallTime,
                }
            }
            ExecEnd::GuestGone => match self.state.lose("the interpreter exited") {
                Some(live) => self.backend.guest_gone(live, &frame).await,
                None => ExecStatus::Crashed {
                    reason: "the sandbox ended under the run".into(),
                },
            },
        };
        let mut outcome = report.into_outcome(status, started.elapsed());
        // A kill ends the sandbox on every backend (an uncaught MemoryError is one).
        if matches!(outcome.status, ExecStatus::Killed { .. }) && self.state.is_live() {
            self.lose("it hit its memory limit").await;
        }
        self.backend.after_exec(&mut outcome, &req).await;
        Ok(outcome)
    }

    /// The answer of an exec that `prepare` aborted before the program ran.
    async fn aborted(
        &mut self,
        abort: Abort,
        frame: &ExecFrame,
        req: &ExecRequest,
    ) -> Result<ExecOutcome> {
        let status = match abort {
            Abort::Refuse(e) => return Err(e),
            Abort::End { reason, then } => {
                self.lose(reason).await;
                then?
            }
        };
        let mut outcome = ExecOutcome {
            status,
            stdout: CapturedOutput::default(),
            stderr: CapturedOutput::default(),
            timings: Timings {
                exec: frame.started.elapsed(),
                ..Timings::default()
            },
            tool_calls: Vec::new(),
            value: None,
            displays: Vec::new(),
        };
        self.backend.after_exec(&mut outcome, req).await;
        Ok(outcome)
    }
}
