//! What a guest instance's store holds: WASI state, limits, output capture, and the
//! current exec's tool host and call records. Implements the guest's `host-call` import.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use agentkernel_core::guest::MAX_GUEST_FRAME_BYTES;
use agentkernel_core::{
    CapturedOutput, OutputSink, StreamKind, ToolCallRecord, ToolErrorKind, ToolHost,
};
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::{AgentImports, ToolError};
use crate::quota::Quota;

/// Host state of one guest instance.
pub struct State {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limits: Limiter,
    pub quota: Quota,
    pub exec: ExecState,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Per-exec state: which tools the program may call and what it called.
#[derive(Default)]
pub struct ExecState {
    pub tools: Option<Arc<dyn ToolHost>>,
    pub tool_calls: Vec<ToolCallRecord>,
    pub tool_time: std::time::Duration,
}

impl AgentImports for State {
    async fn host_call(&mut self, name: String, args_json: String) -> Result<String, ToolError> {
        // The size cap comes before anything else looks at the bytes: parsing N bytes of
        // JSON such as `[0,0,…]` costs the host 16–30×N, outside the guest's memory limit.
        // The same cap as the process backend's guest frames (name and arguments).
        let frame_bytes = name.len().saturating_add(args_json.len());
        if frame_bytes > MAX_GUEST_FRAME_BYTES {
            drop(args_json);
            self.exec.tool_calls.push(ToolCallRecord {
                name,
                duration: std::time::Duration::ZERO,
                ok: false,
                error: Some(ToolErrorKind::LimitExceeded),
            });
            return Err(tool_error(
                ToolErrorKind::LimitExceeded,
                format!(
                    "the tool call's name and arguments are {frame_bytes} bytes, over the \
                     {MAX_GUEST_FRAME_BYTES}-byte limit: pass large data through a file in \
                     /workspace or /tmp instead"
                ),
            ));
        }
        let Some(tools) = self.exec.tools.clone() else {
            return Err(tool_error(
                ToolErrorKind::NotFound,
                "this sandbox has no tools".into(),
            ));
        };
        let args = serde_json::from_str(&args_json).map_err(|e| {
            tool_error(
                ToolErrorKind::InvalidArguments,
                format!("arguments are not JSON: {e}"),
            )
        })?;
        let started = Instant::now();
        let result = tools.call(&name, args).await;
        let duration = started.elapsed();
        self.exec.tool_time += duration;
        self.exec.tool_calls.push(ToolCallRecord {
            name,
            duration,
            ok: result.is_ok(),
            error: result.as_ref().err().map(|e| e.kind),
        });
        match result {
            Ok(value) => Ok(value.to_string()),
            Err(e) => Err(tool_error(e.kind, e.message)),
        }
    }
}

fn tool_error(kind: ToolErrorKind, message: String) -> ToolError {
    let kind = serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "failed".into());
    ToolError { kind, message }
}

/// Memory and instance limits, remembering whether a memory request was refused (so a
/// trap that follows is reported as the memory limit, not a crash).
pub struct Limiter {
    pub inner: StoreLimits,
    pub memory_refused: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = self.inner.memory_growing(current, desired, maximum)?;
        if !ok {
            self.memory_refused = true;
        }
        Ok(ok)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// One of the program's output streams: capped capture plus the exec's live sink.
#[derive(Clone)]
pub struct Capture {
    kind: StreamKind,
    shared: Arc<Mutex<CaptureState>>,
}

#[derive(Default)]
struct CaptureState {
    out: CapturedOutput,
    cap: usize,
    sink: Option<OutputSink>,
}

impl Capture {
    pub fn new(kind: StreamKind) -> Self {
        Capture {
            kind,
            shared: Arc::default(),
        }
    }

    /// Starts capturing a new exec's output.
    pub fn begin(&self, cap: usize, sink: Option<OutputSink>) {
        let mut s = self.lock();
        s.out = CapturedOutput::default();
        s.cap = cap;
        s.sink = sink;
    }

    /// Ends the exec's capture and answers what it printed.
    pub fn finish(&self) -> CapturedOutput {
        let mut s = self.lock();
        s.sink = None;
        std::mem::take(&mut s.out)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CaptureState> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `bytes` up to the cap and hands the kept bytes to the exec's sink (the
    /// `OutputSink` contract: never more than the output limit). `false` when a live sink is
    /// attached and the output has passed the limit: the run must stop (`Killed{Output}`).
    fn push(&self, bytes: &[u8]) -> bool {
        let mut s = self.lock();
        let cap = s.cap;
        let sink = s.sink.clone();
        let kept_before = s.out.bytes.len();
        s.out.push(bytes, cap);
        let kept = s.out.bytes[kept_before..].to_vec();
        let over = sink.is_some() && s.out.truncated;
        drop(s);
        if let Some(sink) = sink
            && !kept.is_empty()
        {
            sink(self.kind, &kept);
        }
        !over
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for Capture {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        if self.push(&bytes) {
            Ok(())
        } else {
            Err(wasmtime_wasi::p2::StreamError::Trap(wasmtime::Error::new(
                crate::quota::QuotaExceeded(agentkernel_core::LimitKind::Output),
            )))
        }
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(1 << 20)
    }
}

#[async_trait::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for Capture {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(if self.push(buf) {
            Ok(buf.len())
        } else {
            Err(std::io::Error::other("the output limit was exceeded"))
        })
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
