//! Host side of the guest protocol.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::stream::SentinelStream;
use super::{MAX_CONCURRENT_TOOL_CALLS, MAX_FRAME_BYTES, MAX_GUEST_FRAME_BYTES};
use crate::error::{Error, Result};
use crate::exec::{
    DisplayData, ExecRequest, ExecStatus, ExprValue, LimitKind, StreamKind, ToolCallRecord,
};
use crate::output::CapturedOutput;
use crate::tools::{ToolError, ToolHost};

/// What the guest agent reports when it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Python version, e.g. `3.11.2`.
    pub python: String,
    /// The interpreter's path inside the sandbox.
    pub executable: String,
    /// The agent's pid inside the sandbox.
    pub pid: u32,
    /// Selected lines of `/proc/self/status` (`Seccomp`, `NoNewPrivs`, `CapEff`).
    pub protections: BTreeMap<String, String>,
    /// The token of the reset this agent was started by, if any.
    #[serde(default)]
    pub reset_token: Option<String>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum HostMsg<'a> {
    Exec {
        id: u64,
        code: &'a str,
        sentinel: &'a str,
    },
    /// Native agents only: save the interpreter state (answered by `saved`).
    Save,
    /// Native agents only: replace the interpreter state (answered by `loaded`).
    Load { data: String },
    ToolResult {
        id: u64,
        ok: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        value: Option<Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<ToolError>,
    },
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum GuestMsg {
    Hello(Hello),
    ToolCall {
        id: u64,
        name: String,
        args: Value,
    },
    Done {
        id: u64,
        /// The guest reports `ok`, `exception` or `exited` in `ExecStatus`'s own format.
        status: ExecStatus,
        sentinels: BTreeMap<String, bool>,
        /// The value of the program's last expression, if it has one (see [`GuestValue`]).
        #[serde(default)]
        value: Option<GuestValue>,
    },
    /// Something the program displayed (see [`DisplayData`]), sent while it runs.
    Display {
        mime: String,
        data: String,
    },
    Error {
        message: String,
    },
    Saved {
        /// Base64 of the state.
        data: String,
    },
    Loaded,
}

/// The value of the program's last expression as the guest reports it in `done`:
/// `{"repr": str, "json": str | null, "truncated": bool}`, where `json` is the value's JSON
/// *text* (so the host parses it itself, within its cap) and `truncated` says the guest cut
/// `repr` at [`ExprValue::MAX_REPR_BYTES`]. The host takes it through
/// [`ExprValue::from_guest`] and keeps it only for a program that ended `ok`.
#[derive(Deserialize)]
struct GuestValue {
    repr: String,
    #[serde(default)]
    json: Option<String>,
    #[serde(default)]
    truncated: bool,
}

impl GuestValue {
    fn checked(self) -> ExprValue {
        ExprValue::from_guest(
            self.repr.as_bytes(),
            self.json.as_deref().map(str::as_bytes),
            self.truncated,
        )
    }
}

/// How an exec ended, as far as the protocol can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEnd {
    /// The agent reported the program's end (ok, exception or `sys.exit`).
    Finished(ExecStatus),
    /// The deadline passed; the caller must kill the sandbox.
    TimedOut,
    /// The control channel closed: the agent died. The caller classifies why (exit status,
    /// OOM counters...).
    GuestGone,
}

/// Everything one exec produced.
#[derive(Debug, Clone)]
pub struct ExecReport {
    /// How it ended.
    pub end: ExecEnd,
    /// Captured stdout.
    pub stdout: CapturedOutput,
    /// Captured stderr.
    pub stderr: CapturedOutput,
    /// Tool calls made.
    pub tool_calls: Vec<ToolCallRecord>,
    /// Sum of tool call durations.
    pub tool_time: Duration,
    /// A limit the host enforced while the program ran: the output limit, when output
    /// passes through live ([`ExecRequest::output`]) and a stream went past it. `end` is
    /// then [`ExecEnd::TimedOut`] (the caller kills the sandbox) and
    /// [`ExecReport::into_outcome`] reports this limit.
    pub limit: Option<LimitKind>,
    /// The value of the program's last expression, as the guest's `done` reported it
    /// (bounded and validated); the outcome keeps it only if the program ended `ok`.
    pub value: Option<ExprValue>,
    /// What the program displayed, validated ([`DisplayData::from_guest`]), at most
    /// [`DisplayData::MAX_PER_EXEC`].
    pub displays: Vec<DisplayData>,
}

impl ExecReport {
    /// Keeps a display the guest sent, within the per-exec cap.
    fn add_display(&mut self, mime: &str, data: &str) {
        if self.displays.len() < DisplayData::MAX_PER_EXEC
            && let Some(d) = DisplayData::from_guest(mime, data)
        {
            self.displays.push(d);
        }
    }

    /// The outcome of an exec that ended with `status` and took `exec` in all (the limit
    /// kill is logged here, once for every backend; an uncaught `MemoryError` is a memory
    /// kill: [`ExecStatus::memory_error_as_kill`], and the caller ends a sandbox it did not
    /// kill itself).
    pub fn into_outcome(self, status: ExecStatus, exec: Duration) -> crate::exec::ExecOutcome {
        let status = match self.limit {
            Some(limit) => ExecStatus::Killed { limit },
            None => status.memory_error_as_kill(),
        };
        if let ExecStatus::Killed { limit } = &status {
            tracing::info!(%limit, "sandbox killed by a limit");
        }
        // Only a program that ran to its end evaluated its last expression.
        let value = self.value.filter(|_| status == ExecStatus::Ok);
        crate::exec::ExecOutcome {
            status,
            stdout: self.stdout,
            stderr: self.stderr,
            timings: crate::exec::Timings {
                exec,
                tool_calls: self.tool_time,
                ..crate::exec::Timings::default()
            },
            tool_calls: self.tool_calls,
            value,
            displays: self.displays,
        }
    }
}

/// The host's connection to one guest agent: control channel plus output pipes.
pub struct GuestConn<C, O, E> {
    control: C,
    rbuf: Vec<u8>,
    stdout: O,
    stderr: E,
    out_state: SentinelStream,
    err_state: SentinelStream,
    next_id: u64,
}

type ToolJoin = (u64, String, std::result::Result<Value, ToolError>, Duration);

impl<C, O, E> GuestConn<C, O, E>
where
    C: AsyncRead + AsyncWrite + Unpin + Send,
    O: AsyncRead + Unpin + Send,
    E: AsyncRead + Unpin + Send,
{
    /// Wraps a control channel and the guest's stdout/stderr pipes.
    pub fn new(control: C, stdout: O, stderr: E) -> Self {
        GuestConn {
            control,
            rbuf: Vec::new(),
            stdout,
            stderr,
            out_state: SentinelStream::new(StreamKind::Stdout),
            err_state: SentinelStream::new(StreamKind::Stderr),
            next_id: 0,
        }
    }

    /// Waits for the agent's `hello`. Output the interpreter printed before it (e.g. a
    /// startup error) is returned in the error message.
    pub async fn hello(&mut self, deadline: Instant) -> Result<Hello> {
        let mut early = CapturedOutput::default();
        loop {
            if let Some(msg) = self.take_frame()? {
                return match msg {
                    GuestMsg::Hello(h) => Ok(h),
                    _ => Err(Error::Internal("guest spoke before saying hello".into())),
                };
            }
            let mut chunk = [0u8; 4096];
            tokio::select! {
                n = self.control.read_buf(&mut self.rbuf) => {
                    let n = n.map_err(|e| Error::io("reading from the guest agent", e))?;
                    if n == 0 {
                        // Give the interpreter a moment to finish printing why it died.
                        let _ = tokio::time::timeout(Duration::from_millis(200), self.stderr.read_to_end(&mut early.bytes)).await;
                        return Err(Error::SandboxLost {
                            reason: format!(
                                "the guest interpreter exited during start-up{}",
                                describe_output(&early)
                            ),
                        });
                    }
                }
                n = self.stderr.read(&mut chunk) => {
                    if let Ok(n) = n { early.push(&chunk[..n], 16 << 10); }
                }
                () = tokio::time::sleep_until(deadline.into()) => {
                    return Err(Error::SandboxLost {
                        reason: format!("the guest agent did not start in time{}", describe_output(&early)),
                    });
                }
            }
        }
    }

    /// After the host asked the guest's init to reset the sandbox (with `token`): waits for
    /// the new agent's `hello` and discards everything the previous agent (and its
    /// children) left in the output pipes, up to the new agent's `token` mark.
    pub async fn restarted(&mut self, token: &str, deadline: Instant) -> Result<Hello> {
        let mark = format!("\u{1e}AK-RESET-{token}\u{1e}").into_bytes();
        let mut discard = CapturedOutput::default();
        let mut out_done = self.out_state.feed(&[], &mark, &mut discard, 0, None);
        let mut err_done = self.err_state.feed(&[], &mark, &mut discard, 0, None);
        let mut hello = None;
        let mut out_buf = vec![0u8; 64 << 10];
        let mut err_buf = vec![0u8; 64 << 10];
        enum Read {
            Control(std::io::Result<usize>),
            Out(std::io::Result<usize>),
            Err(std::io::Result<usize>),
            Late,
        }
        loop {
            // Frames the previous program left on the control socket (it may have forged
            // any, before init killed it) all come before the new agent's hello: drop
            // everything until a hello with this reset's token.
            while hello.is_none()
                && let Some(msg) = self.take_frame()?
            {
                if let GuestMsg::Hello(h) = msg
                    && h.reset_token.as_deref() == Some(token)
                {
                    hello = Some(h);
                }
            }
            if out_done
                && err_done
                && let Some(h) = hello.take()
            {
                return Ok(h);
            }
            let read = tokio::select! {
                n = self.control.read_buf(&mut self.rbuf), if hello.is_none() => Read::Control(n),
                n = self.stdout.read(&mut out_buf), if !out_done => Read::Out(n),
                n = self.stderr.read(&mut err_buf), if !err_done => Read::Err(n),
                () = tokio::time::sleep_until(deadline.into()) => Read::Late,
            };
            let gone = || Error::SandboxLost {
                reason: "the sandbox did not come back from a reset".into(),
            };
            match read {
                Read::Control(Ok(n)) if n > 0 => {}
                Read::Out(Ok(n)) if n > 0 => {
                    out_done = self
                        .out_state
                        .feed(&out_buf[..n], &mark, &mut discard, 0, None);
                }
                Read::Err(Ok(n)) if n > 0 => {
                    err_done = self
                        .err_state
                        .feed(&err_buf[..n], &mark, &mut discard, 0, None);
                }
                _ => return Err(gone()),
            }
        }
    }

    /// Asks the agent for its interpreter state (agents that can save it: the native monty
    /// worker; the Python agent answers with an error). The state travels base64-encoded in
    /// one guest frame, so it is limited to about 750 KiB.
    pub async fn save_state(&mut self, deadline: Instant) -> Result<Vec<u8>> {
        use base64::Engine as _;
        match self.request(&HostMsg::Save, deadline).await? {
            GuestMsg::Saved { data } => base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|e| Error::Internal(format!("the guest sent bad state: {e}"))),
            _ => Err(Error::Internal(
                "the guest answered save with something else".into(),
            )),
        }
    }

    /// Replaces the agent's interpreter state with `data` from [`GuestConn::save_state`].
    pub async fn load_state(&mut self, data: &[u8], deadline: Instant) -> Result<()> {
        use base64::Engine as _;
        let data = base64::engine::general_purpose::STANDARD.encode(data);
        match self.request(&HostMsg::Load { data }, deadline).await? {
            GuestMsg::Loaded => Ok(()),
            _ => Err(Error::Internal(
                "the guest answered load with something else".into(),
            )),
        }
    }

    /// Sends `msg` and waits for the guest's one answer (an `error` answer is an error).
    async fn request(&mut self, msg: &HostMsg<'_>, deadline: Instant) -> Result<GuestMsg> {
        let io = |e| Error::io("talking to the guest agent", e);
        tokio::time::timeout_at(deadline.into(), write_frame(&mut self.control, msg))
            .await
            .map_err(|_| Error::sandbox_lost(Some("the guest agent stopped answering")))?
            .map_err(io)?;
        loop {
            if let Some(answer) = self.take_frame()? {
                return match answer {
                    GuestMsg::Error { message } => Err(Error::Internal(format!(
                        "the guest agent refused: {message}"
                    ))),
                    other => Ok(other),
                };
            }
            match tokio::time::timeout_at(deadline.into(), self.control.read_buf(&mut self.rbuf))
                .await
            {
                Ok(Ok(n)) if n > 0 => {}
                Ok(Err(e)) => return Err(io(e)),
                _ => {
                    return Err(Error::sandbox_lost(Some(
                        "the guest agent stopped answering",
                    )));
                }
            }
        }
    }

    /// Runs `req.code` in the guest. Output is capped at `cap` bytes per stream; tool calls
    /// go to `tools`; at `deadline` it returns [`ExecEnd::TimedOut`] with the output so far.
    pub async fn exec(
        &mut self,
        req: &ExecRequest,
        tools: Arc<dyn ToolHost>,
        cap: usize,
        deadline: Instant,
    ) -> Result<ExecReport> {
        self.exec_watching(req, tools, cap, deadline, std::future::pending())
            .await
    }

    /// [`GuestConn::exec`] for a guest whose control channel does not close when the agent
    /// dies (a virtio-serial port): `gone` resolves when something else learns of the death
    /// (the microVM's supervisor), and the exec then ends with [`ExecEnd::GuestGone`] and the
    /// output printed until then.
    pub async fn exec_watching(
        &mut self,
        req: &ExecRequest,
        tools: Arc<dyn ToolHost>,
        cap: usize,
        deadline: Instant,
        gone: impl Future<Output = ()>,
    ) -> Result<ExecReport> {
        self.run_exec(req, tools, cap, deadline, gone, None).await
    }

    /// [`GuestConn::exec`] for the Python agent under the guest's init (process backend),
    /// whose end the program cannot forge: the caller has just sent `token` to the guest's
    /// init (out of the program's reach, on the lifeline), and init writes
    /// [`exec_end_mark`]`(token)` on both output streams once the agent stopped after its
    /// `done` and every other process of the sandbox is dead. Until both marks arrive the
    /// exec goes on, whatever `done` frames or sentinels the program writes; its status is
    /// the last `done` the agent sent before the marks.
    pub async fn exec_ended_by_init(
        &mut self,
        req: &ExecRequest,
        tools: Arc<dyn ToolHost>,
        cap: usize,
        deadline: Instant,
        token: &str,
    ) -> Result<ExecReport>
    where
        C: std::os::fd::AsRawFd,
    {
        let fd = self.control.as_raw_fd();
        self.run_exec(
            req,
            tools,
            cap,
            deadline,
            std::future::pending(),
            Some((token, fd)),
        )
        .await
    }

    async fn run_exec(
        &mut self,
        req: &ExecRequest,
        tools: Arc<dyn ToolHost>,
        cap: usize,
        deadline: Instant,
        gone: impl Future<Output = ()>,
        init: Option<(&str, std::os::fd::RawFd)>,
    ) -> Result<ExecReport> {
        let init_token = init.map(|(token, _)| token);
        let mut gone = std::pin::pin!(gone);
        self.next_id += 1;
        let id = self.next_id;
        let sentinel = format!("\u{1e}AK-END-{}\u{1e}", uuid::Uuid::new_v4().simple());
        // Where this exec's output ends on each stream: init's mark, or the agent's sentinel.
        let end_mark = match init_token {
            Some(token) => exec_end_mark(token),
            None => sentinel.clone(),
        };
        let mut report = ExecReport {
            end: ExecEnd::GuestGone,
            stdout: CapturedOutput::default(),
            stderr: CapturedOutput::default(),
            tool_calls: Vec::new(),
            tool_time: Duration::ZERO,
            limit: None,
            value: None,
            displays: Vec::new(),
        };
        let sink = req.output.as_ref();
        let exec = HostMsg::Exec {
            id,
            code: &req.code,
            sentinel: &sentinel,
        };
        match tokio::time::timeout_at(deadline.into(), write_frame(&mut self.control, &exec)).await
        {
            Err(_) => {
                report.end = ExecEnd::TimedOut;
                return Ok(report);
            }
            Ok(Err(_)) => return Ok(report), // GuestGone
            Ok(Ok(())) => {}
        }

        let mut calls: JoinSet<ToolJoin> = JoinSet::new();
        let mut status: Option<ExecStatus> = None;
        // `*_seen`: this exec's sentinel arrived on the stream (whatever follows it belongs
        // to the next exec). `*_done`: nothing more to wait for on it (seen, never written,
        // or the pipe closed).
        let (mut out_seen, mut err_seen) = (false, false);
        let (mut out_done, mut err_done) = (false, false);
        let mut out_buf = vec![0u8; 64 << 10];
        let mut err_buf = vec![0u8; 64 << 10];

        loop {
            while let Some(msg) = self.take_frame()? {
                match msg {
                    GuestMsg::ToolCall { id, name, args } => {
                        if calls.len() >= MAX_CONCURRENT_TOOL_CALLS {
                            return Err(Error::Internal(format!(
                                "guest started more than {MAX_CONCURRENT_TOOL_CALLS} concurrent tool calls"
                            )));
                        }
                        let tools = tools.clone();
                        let span = tracing::info_span!("tool_call", tool = %name, call_id = id);
                        calls.spawn(
                            async move {
                                let started = Instant::now();
                                let result = tools.call(&name, args).await;
                                let took = started.elapsed();
                                tracing::info!(
                                    ok = result.is_ok(),
                                    ms = took.as_secs_f64() * 1e3,
                                    "tool call finished"
                                );
                                (id, name, result, took)
                            }
                            .instrument(span),
                        );
                    }
                    GuestMsg::Done {
                        id: done_id,
                        status: st,
                        sentinels,
                        value,
                    } => {
                        if done_id != id {
                            return Err(Error::Internal(format!(
                                "guest finished exec {done_id} while {id} was running"
                            )));
                        }
                        if matches!(st, ExecStatus::Killed { .. } | ExecStatus::Crashed { .. }) {
                            return Err(Error::Internal(
                                "guest claimed a status only the host may assign".into(),
                            ));
                        }
                        status = Some(st);
                        report.value = value.map(GuestValue::checked);
                        // A stream the agent could not write its sentinel to will never
                        // show one: stop waiting for it. (Under init, init's marks always
                        // come, and only they end the exec.)
                        if init_token.is_none() {
                            out_done |= !sentinels.get("stdout").copied().unwrap_or(false);
                            err_done |= !sentinels.get("stderr").copied().unwrap_or(false);
                        }
                    }
                    GuestMsg::Display { mime, data } => report.add_display(&mime, &data),
                    GuestMsg::Hello(_) => {
                        return Err(Error::Internal("guest said hello twice".into()));
                    }
                    GuestMsg::Saved { .. } | GuestMsg::Loaded => {
                        return Err(Error::Internal("guest answered a request not made".into()));
                    }
                    GuestMsg::Error { message } => {
                        return Err(Error::Internal(format!("guest agent error: {message}")));
                    }
                }
            }
            if sink.is_some() && (report.stdout.truncated || report.stderr.truncated) {
                // Output passes through live, and no caller gets more than the limit: the
                // run ends here, named by it.
                report.limit = Some(LimitKind::Output);
                report.end = ExecEnd::TimedOut;
                break;
            }
            out_done |= self.out_state.eof;
            err_done |= self.err_state.eof;
            if init_token.is_some() && out_seen && err_seen {
                // Init marked the end: the agent is stopped and alone, so its `done` (sent
                // before it stopped) is already in the socket. The last one counts: a
                // program may have forged earlier ones.
                if let Some((_, fd)) = init {
                    self.read_queued_frames(fd)?;
                }
                while let Some(msg) = self.take_frame()? {
                    match msg {
                        GuestMsg::Done {
                            id: done_id,
                            status: st,
                            value,
                            ..
                        } if done_id == id
                            && !matches!(
                                st,
                                ExecStatus::Killed { .. } | ExecStatus::Crashed { .. }
                            ) =>
                        {
                            status = Some(st);
                            report.value = value.map(GuestValue::checked);
                        }
                        // A tool call the stopped agent can no longer wait for.
                        GuestMsg::ToolCall { .. } => {}
                        GuestMsg::Display { mime, data } => report.add_display(&mime, &data),
                        _ => {
                            return Err(Error::Internal(
                                "guest sent an unexpected frame at the end of an exec".into(),
                            ));
                        }
                    }
                }
                calls.abort_all();
                let Some(st) = status else {
                    return Err(Error::Internal(
                        "the program stopped its interpreter before its run ended".into(),
                    ));
                };
                report.end = ExecEnd::Finished(st);
                return Ok(report);
            }
            if init_token.is_none()
                && let Some(st) = &status
                && out_done
                && err_done
            {
                // A stream that closed (or lost its sentinel) has no marker to wait for:
                // whatever it held belongs to this exec.
                if !out_seen {
                    self.out_state.emit_all(&mut report.stdout, cap, sink);
                }
                if !err_seen {
                    self.err_state.emit_all(&mut report.stderr, cap, sink);
                }
                report.end = ExecEnd::Finished(st.clone());
                return Ok(report);
            }

            tokio::select! {
                n = self.control.read_buf(&mut self.rbuf) => {
                    let n = n.map_err(|e| Error::io("reading from the guest agent", e))?;
                    if n == 0 {
                        self.drain_after_death(&mut report, cap, req).await;
                        return Ok(report);
                    }
                }
                n = self.stdout.read(&mut out_buf), if !out_done => {
                    match n {
                        Ok(0) | Err(_) => self.out_state.eof = true,
                        Ok(n) => {
                            out_seen = self.out_state.feed(&out_buf[..n], end_mark.as_bytes(), &mut report.stdout, cap, sink);
                            out_done = out_seen;
                        }
                    }
                }
                n = self.stderr.read(&mut err_buf), if !err_done => {
                    match n {
                        Ok(0) | Err(_) => self.err_state.eof = true,
                        Ok(n) => {
                            err_seen = self.err_state.feed(&err_buf[..n], end_mark.as_bytes(), &mut report.stderr, cap, sink);
                            err_done = err_seen;
                        }
                    }
                }
                Some(joined) = calls.join_next() => {
                    let (call_id, name, result, took) = joined
                        .map_err(|e| Error::Internal(format!("tool call task failed: {e}")))?;
                    report.tool_time += took;
                    report.tool_calls.push(ToolCallRecord {
                        name,
                        duration: took,
                        ok: result.is_ok(),
                        error: result.as_ref().err().map(|e| e.kind),
                    });
                    let msg = match result {
                        Ok(value) => HostMsg::ToolResult { id: call_id, ok: true, value: Some(value), error: None },
                        Err(error) => HostMsg::ToolResult { id: call_id, ok: false, value: None, error: Some(error) },
                    };
                    match tokio::time::timeout_at(deadline.into(), write_frame(&mut self.control, &msg)).await {
                        Err(_) => { report.end = ExecEnd::TimedOut; break; }
                        Ok(Err(_)) => { self.drain_after_death(&mut report, cap, req).await; return Ok(report); }
                        Ok(Ok(())) => {}
                    }
                }
                () = &mut gone => {
                    self.drain_after_death(&mut report, cap, req).await;
                    return Ok(report);
                }
                () = tokio::time::sleep_until(deadline.into()) => {
                    report.end = ExecEnd::TimedOut;
                    break;
                }
            }
        }
        // Timed out: keep what was printed so far.
        calls.abort_all();
        self.out_state.emit_all(&mut report.stdout, cap, sink);
        self.err_state.emit_all(&mut report.stderr, cap, sink);
        Ok(report)
    }

    /// After the agent died, collect what is left in the pipes (briefly: the rest of the
    /// sandbox is being torn down and the pipes close with it).
    async fn drain_after_death(&mut self, report: &mut ExecReport, cap: usize, req: &ExecRequest) {
        let sink = req.output.as_ref();
        let grace = Instant::now() + Duration::from_millis(500);
        drain(
            &mut self.stdout,
            &mut self.out_state,
            &mut report.stdout,
            cap,
            sink,
            grace,
        )
        .await;
        drain(
            &mut self.stderr,
            &mut self.err_state,
            &mut report.stderr,
            cap,
            sink,
            grace,
        )
        .await;
        report.end = ExecEnd::GuestGone;
    }

    /// Moves what the control socket `fd` (this connection's) holds right now into the
    /// read buffer, without waiting for more. Reads the socket directly: the runtime may not
    /// have seen its readiness yet, and what the agent sent before it stopped must count.
    fn read_queued_frames(&mut self, fd: std::os::fd::RawFd) -> Result<()> {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            // SAFETY: `recv` writes at most `buf.len()` bytes into `buf`, which we own; `fd`
            // is the control socket, kept open by `self.control`.
            let n =
                unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            match usize::try_from(n) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    self.rbuf.extend_from_slice(&buf[..n]);
                    if self.rbuf.len() > 4 * MAX_GUEST_FRAME_BYTES {
                        return Err(Error::Internal(
                            "guest queued too many frames at the end of an exec".into(),
                        ));
                    }
                }
                Err(_) => {
                    let e = std::io::Error::last_os_error();
                    match e.kind() {
                        std::io::ErrorKind::Interrupted => {}
                        std::io::ErrorKind::WouldBlock => return Ok(()),
                        _ => return Err(Error::io("reading from the guest agent", e)),
                    }
                }
            }
        }
    }

    /// Parses one complete frame from the read buffer, if there is one.
    fn take_frame(&mut self) -> Result<Option<GuestMsg>> {
        if self.rbuf.len() < 4 {
            return Ok(None);
        }
        let len =
            u32::from_be_bytes([self.rbuf[0], self.rbuf[1], self.rbuf[2], self.rbuf[3]]) as usize;
        if len > MAX_GUEST_FRAME_BYTES {
            return Err(Error::Internal(format!(
                "guest sent a {len}-byte frame (limit {MAX_GUEST_FRAME_BYTES})"
            )));
        }
        if self.rbuf.len() < 4 + len {
            return Ok(None);
        }
        let msg = serde_json::from_slice(&self.rbuf[4..4 + len])
            .map_err(|e| Error::Internal(format!("guest sent a malformed frame: {e}")));
        self.rbuf.drain(..4 + len);
        msg.map(Some)
    }
}

/// What the guest's init writes on stdout and stderr at the end of an exec started with
/// `token` (see [`GuestConn::exec_ended_by_init`]).
pub fn exec_end_mark(token: &str) -> String {
    format!("\u{1e}AK-END-{token}\u{1e}")
}

/// Moves everything `reader` still yields (until end-of-file or `until`) into `out`.
async fn drain<R: AsyncRead + Unpin>(
    reader: &mut R,
    state: &mut SentinelStream,
    out: &mut CapturedOutput,
    cap: usize,
    sink: Option<&crate::exec::OutputSink>,
    until: Instant,
) {
    let mut buf = vec![0u8; 64 << 10];
    while !state.eof {
        match tokio::time::timeout_at(until.into(), reader.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                state.feed(&buf[..n], &[], out, cap, sink);
            }
            _ => break,
        }
    }
    state.emit_all(out, cap, sink);
}

async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> std::io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    if body.len() > MAX_FRAME_BYTES {
        return Err(std::io::Error::other("frame too large"));
    }
    w.write_all(&super::length_prefixed(&body)).await?;
    w.flush().await
}

fn describe_output(out: &CapturedOutput) -> String {
    let text = out.text();
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!("; it printed: {text}")
    }
}
