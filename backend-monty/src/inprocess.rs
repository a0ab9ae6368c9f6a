//! In-process mode: the session runs on a dedicated thread of the kernel's own process.
//!
//! Each sandbox owns one thread with a big stack ([`STACK_BYTES`]: deeply nested code
//! overflows Monty's native stack much later than on a default 2 MiB thread). A Rust panic
//! inside the interpreter is caught (`catch_unwind`) and loses only that sandbox; an abort
//! (a stack overflow past the guard page, an allocator failure) takes the kernel down,
//! which is why untrusted code belongs in worker mode.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use agentkernel_core::{
    CapturedOutput, Error, ExecOutcome, ExecRequest, ExecStatus, LimitKind, OutputSink, Result,
    Sandbox, Snapshot, StreamKind, Timings, ToolCallRecord, ToolError, ToolErrorKind, ToolHost,
    ToolSpec,
};
use async_trait::async_trait;
use monty_types::{MontyException, PrintWriterCallback};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::engine::{Host, Session, SessionConfig};
use crate::tools::{POSITIONAL_KEY, bind, rewrite_imports};

/// Stack of a sandbox thread.
pub const STACK_BYTES: usize = 64 << 20;

/// How long past its deadline a run may go before the host gives up on its thread (Monty
/// checks its clock between operations; one huge operation can overshoot).
const GRACE: Duration = Duration::from_secs(2);

struct Run {
    code: String,
    timeout: Duration,
    tools: Arc<dyn ToolHost>,
    cap: usize,
    sink: Option<OutputSink>,
    handle: tokio::runtime::Handle,
}

struct Finished {
    status: ExecStatus,
    stdout: CapturedOutput,
    tool_calls: Vec<ToolCallRecord>,
    tool_time: Duration,
}

enum Command {
    Exec(Box<Run>, oneshot::Sender<Finished>),
    Reset(oneshot::Sender<std::result::Result<(), String>>),
    Dump(oneshot::Sender<std::result::Result<Vec<u8>, String>>),
}

/// The exec-time host of an in-process run.
struct LocalHost<'a> {
    run: &'a Run,
    deadline: Instant,
    stdout: CapturedOutput,
    catalog: Option<Vec<ToolSpec>>,
    calls: Vec<ToolCallRecord>,
    tool_time: Duration,
}

impl LocalHost<'_> {
    fn write(&mut self, text: &str) {
        self.stdout.push(text.as_bytes(), self.run.cap);
        if let Some(sink) = &self.run.sink {
            sink(StreamKind::Stdout, text.as_bytes());
        }
    }
}

impl PrintWriterCallback for LocalHost<'_> {
    fn stdout_write(
        &mut self,
        output: std::borrow::Cow<'_, str>,
    ) -> std::result::Result<(), MontyException> {
        self.write(&output);
        Ok(())
    }

    fn stdout_push(&mut self, end: char) -> std::result::Result<(), MontyException> {
        let mut buf = [0u8; 4];
        self.write(end.encode_utf8(&mut buf));
        Ok(())
    }
}

impl Host for LocalHost<'_> {
    fn call_tool(&mut self, name: &str, args: Value) -> std::result::Result<Value, ToolError> {
        let started = Instant::now();
        let args = if args.get(POSITIONAL_KEY).is_some() {
            let catalog = self.catalog.get_or_insert_with(|| self.run.tools.catalog());
            bind(catalog, name, args)
        } else {
            Ok(args)
        };
        let result = args.and_then(|args| {
            let (tools, deadline) = (&self.run.tools, self.deadline);
            self.run
                .handle
                .block_on(async move {
                    tokio::time::timeout_at(deadline.into(), tools.call(name, args)).await
                })
                .unwrap_or_else(|_| {
                    Err(ToolError::new(
                        ToolErrorKind::Timeout,
                        "the run's time limit was reached while the tool ran",
                    ))
                })
        });
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

/// The sandbox thread: owns the session, serves commands until the sandbox is dropped.
fn serve(session: Session, config: SessionConfig, commands: mpsc::Receiver<Command>) {
    let mut session = Some(session);
    while let Ok(cmd) = commands.recv() {
        match cmd {
            Command::Exec(run, reply) => {
                let deadline = Instant::now() + run.timeout;
                let mut host = LocalHost {
                    run: &run,
                    deadline,
                    stdout: CapturedOutput::default(),
                    catalog: None,
                    calls: Vec::new(),
                    tool_time: Duration::ZERO,
                };
                let status = match session.as_mut() {
                    None => ExecStatus::Crashed {
                        reason: "the interpreter was lost by an earlier panic".into(),
                    },
                    Some(s) => {
                        let ran = std::panic::catch_unwind(AssertUnwindSafe(|| {
                            s.exec(&run.code, run.timeout, &mut host)
                        }));
                        ran.unwrap_or_else(|panic| {
                            session = None;
                            let what = panic
                                .downcast_ref::<&str>()
                                .map(|s| (*s).to_owned())
                                .or_else(|| panic.downcast_ref::<String>().cloned())
                                .unwrap_or_default();
                            ExecStatus::Crashed {
                                reason: format!("the interpreter panicked: {what}"),
                            }
                        })
                    }
                };
                let _ = reply.send(Finished {
                    status,
                    stdout: host.stdout,
                    tool_calls: host.calls,
                    tool_time: host.tool_time,
                });
            }
            Command::Reset(reply) => {
                let fresh = Session::new(config.clone());
                let _ = reply.send(fresh.as_ref().map(|_| ()).map_err(Clone::clone));
                session = fresh.ok();
            }
            Command::Dump(reply) => {
                let _ = reply.send(match &session {
                    Some(s) => s.dump(),
                    None => Err("the interpreter was lost by an earlier panic".into()),
                });
            }
        }
    }
}

/// A sandbox of in-process mode.
pub(crate) struct InProcessSandbox {
    id: String,
    commands: mpsc::Sender<Command>,
    wall_time: Duration,
    output_cap: usize,
    lost: Option<String>,
    /// Directories the session maps (`/tmp`, a workspace of its own); removed on drop.
    dirs: Vec<tempfile::TempDir>,
}

impl InProcessSandbox {
    /// Starts the sandbox thread with a session from `config` (or one restored from
    /// `snapshot`).
    pub(crate) fn start(
        id: String,
        config: SessionConfig,
        dirs: Vec<tempfile::TempDir>,
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
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("monty-{id}"))
            .stack_size(STACK_BYTES)
            .spawn(move || serve(session, config, rx))
            .map_err(|e| Error::io("starting a monty sandbox thread", e))?;
        Ok(InProcessSandbox {
            id,
            commands: tx,
            wall_time,
            output_cap,
            lost: None,
            dirs,
        })
    }

    fn send(&self, cmd: Command) -> Result<()> {
        self.commands
            .send(cmd)
            .map_err(|_| Error::sandbox_lost(Some("its interpreter thread ended")))
    }
}

#[async_trait]
impl Sandbox for InProcessSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    async fn exec(&mut self, req: ExecRequest, tools: Arc<dyn ToolHost>) -> Result<ExecOutcome> {
        if let Some(reason) = &self.lost {
            return Err(Error::sandbox_lost(Some(reason)));
        }
        let timeout = req.timeout.unwrap_or(self.wall_time);
        if timeout.is_zero() {
            return Err(Error::invalid(
                "timeout is zero",
                "give a timeout of at least 1 ms",
            ));
        }
        let started = Instant::now();
        let code = if crate::tools::mentions_tools(&req.code) {
            rewrite_imports(&req.code, &tools.catalog()).into_owned()
        } else {
            req.code
        };
        let (reply, done) = oneshot::channel();
        self.send(Command::Exec(
            Box::new(Run {
                code,
                timeout,
                tools,
                cap: self.output_cap,
                sink: req.output,
                handle: tokio::runtime::Handle::current(),
            }),
            reply,
        ))?;
        let finished = match tokio::time::timeout(timeout + GRACE, done).await {
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
                    stdout: CapturedOutput::default(),
                    tool_calls: Vec::new(),
                    tool_time: Duration::ZERO,
                }
            }
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
        Ok(ExecOutcome {
            status: finished.status,
            stdout: finished.stdout,
            stderr: CapturedOutput::default(),
            timings: Timings {
                exec: started.elapsed(),
                tool_calls: finished.tool_time,
                ..Timings::default()
            },
            tool_calls: finished.tool_calls,
        })
    }

    async fn reset(&mut self) -> Result<()> {
        for d in &self.dirs {
            crate::engine::empty_dir(d.path());
        }
        let (reply, done) = oneshot::channel();
        if self.send(Command::Reset(reply)).is_err()
            || self
                .lost
                .as_deref()
                .is_some_and(|l| l.starts_with("killed after"))
        {
            return Err(Error::sandbox_lost(self.lost.as_deref()));
        }
        done.await
            .map_err(|_| Error::sandbox_lost(Some("its interpreter thread ended")))?
            .map_err(Error::Internal)?;
        self.lost = None;
        Ok(())
    }

    async fn snapshot(&mut self) -> Result<Snapshot> {
        if let Some(reason) = &self.lost {
            return Err(Error::sandbox_lost(Some(reason)));
        }
        let (reply, done) = oneshot::channel();
        self.send(Command::Dump(reply))?;
        let data = done
            .await
            .map_err(|_| Error::sandbox_lost(Some("its interpreter thread ended")))?
            .map_err(Error::Internal)?;
        Ok(Snapshot {
            backend: "monty".into(),
            data,
        })
    }

    async fn shutdown(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}
