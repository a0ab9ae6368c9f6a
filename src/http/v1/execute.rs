//! `POST /v1/sandboxes/{id}/execute`: runs code in the sandbox's interpreter (its globals
//! persist between executions).
//!
//! Without `stream`, the answer is one [`ExecutionResult`]. With `"stream": true` it is
//! NDJSON (`application/x-ndjson`), one [`StreamEvent`] a line as things happen: `stdout` and
//! `stderr` chunks (text; a UTF-8 character is never split between two), an `error` when
//! the program raised, and a last `end` with the status, exit code and timings. Tool calls
//! are listed in the `end` event (the kernel reports them when the run ends, not live).
//!
//! The client closing the connection stops the execution: the program and what it started
//! are killed and the sandbox's interpreter starts afresh (its variables are lost, its
//! workspace's files kept).

use std::convert::Infallible;
use std::time::Duration;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use agentkernel_core::{ExecOutcome, ExecRequest, ExecStatus, StreamKind, Timings, ToolCallRecord};

use super::sandboxes::secs;
use crate::http::{
    ApiError, ErrorDetail, ErrorResponses, ExecEnd, ExecEvent, Execution, JsonBody, KeyId,
    OutputText, ServerState,
};

/// The request body.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteBody {
    /// Python source (at most 1 MiB).
    pub code: String,
    /// Wall-clock seconds for this execution (default: the sandbox's timeout, which is also
    /// the most it may ask for).
    #[serde(default)]
    pub timeout_secs: Option<f64>,
    /// Answer NDJSON events as they happen instead of one object at the end.
    #[serde(default)]
    pub stream: bool,
}

/// An uncaught exception: its class, `str()` and formatted traceback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExceptionInfo {
    /// The exception's class name, e.g. `ValueError`.
    pub name: String,
    /// `str(exception)`.
    pub value: String,
    /// The traceback as Python prints it.
    pub traceback: String,
}

/// How an execution ended, shared by [`ExecutionResult`] and the `end` event.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EndInfo {
    /// `ok`, `exception`, `exited`, `killed`, `crashed`, `cancelled` (stopped before its end:
    /// see `reason`) or `failed` (the kernel could not run it: see `failure`).
    pub status: String,
    /// The exit code a shell would show (0 ok, 1 exception, the program's own for
    /// `exited`, 124 timeout, 137 other limit kills, 70 crash); none when cancelled or failed.
    pub exit_code: Option<i32>,
    /// Which limit stopped it (`killed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    /// Why it crashed or was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Why the kernel could not run it (`failed`, in the stream only: the one-object form
    /// answers an error status instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<ErrorDetailOwned>,
    /// From its start to its end, as the server saw it, in milliseconds.
    pub duration_ms: f64,
    /// The kernel's per-phase timings (none when cancelled or failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub timings: Option<Timings>,
    /// The tool calls it made, in order of completion: `name`, `duration` (ms), `ok`,
    /// `error`.
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub tool_calls: Vec<ToolCallRecord>,
    /// Whether stdout went past the output limit (the rest was dropped).
    #[serde(default)]
    pub stdout_truncated: bool,
    /// Whether stderr went past the output limit.
    #[serde(default)]
    pub stderr_truncated: bool,
}

/// [`ErrorDetail`] that can also be read back (clients, tests).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetailOwned {
    /// Stable identifier.
    pub code: String,
    /// What went wrong.
    pub message: String,
    /// What to do about it.
    pub hint: String,
}

impl From<ErrorDetail> for ErrorDetailOwned {
    fn from(d: ErrorDetail) -> Self {
        ErrorDetailOwned {
            code: d.code.to_owned(),
            message: d.message,
            hint: d.hint,
        }
    }
}

/// The one-object answer.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExecutionResult {
    /// How it ended.
    #[serde(flatten)]
    pub end: EndInfo,
    /// What it wrote to stdout (up to the output limit).
    pub stdout: String,
    /// What it wrote to stderr (up to the output limit).
    pub stderr: String,
    /// The uncaught exception (`exception`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ExceptionInfo>,
    /// The value of the program's last expression (`ok` only, when its last statement is an
    /// expression whose value is not `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<ValueInfo>,
    /// What the program displayed, in order: matplotlib figures (`plt.show()`, figures
    /// still open at its end, `display(fig)`) as PNG, `display(obj)` of other objects as
    /// text. At most 16, each PNG at most 512 KiB.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub displays: Vec<DisplayInfo>,
}

/// One thing a program displayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DisplayInfo {
    /// `image/png` or `text/plain`.
    pub mime: String,
    /// The image as standard base64, or the text.
    pub data: String,
}

fn displays_of(outcome: &ExecOutcome) -> Vec<DisplayInfo> {
    outcome
        .displays
        .iter()
        .map(|d| DisplayInfo {
            mime: d.mime.clone(),
            data: d.data.clone(),
        })
        .collect()
}

/// The value of a program's last expression, as Jupyter shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ValueInfo {
    /// Its `repr()`, at most 64 KiB (cut at a character boundary and marked).
    pub repr: String,
    /// The value as JSON, when it is plain JSON (dicts, lists, strings, numbers, booleans,
    /// null) of at most 64 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub json: Option<serde_json::Value>,
    /// Whether `repr` was cut.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

fn value_of(outcome: &ExecOutcome) -> Option<ValueInfo> {
    outcome.value.as_ref().map(|v| ValueInfo {
        repr: v.repr.clone(),
        json: v.json.clone(),
        truncated: v.truncated,
    })
}

/// One line of the NDJSON stream.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    /// Text the program wrote to stdout.
    Stdout {
        /// The text.
        text: String,
    },
    /// Text the program wrote to stderr.
    Stderr {
        /// The text.
        text: String,
    },
    /// Something the program displayed (after its output, before `result`; see
    /// [`ExecutionResult::displays`]).
    Display(DisplayInfo),
    /// The value of the program's last expression (just before `end`; see
    /// [`ExecutionResult::value`]).
    Result(ValueInfo),
    /// The program raised an exception it did not catch (just before `end`).
    Error(ExceptionInfo),
    /// The last event.
    End(EndInfo),
}

fn exception_of(outcome: &ExecOutcome) -> Option<ExceptionInfo> {
    match &outcome.status {
        ExecStatus::Exception {
            type_name,
            message,
            traceback,
        } => Some(ExceptionInfo {
            name: type_name.clone(),
            value: message.clone(),
            traceback: traceback.clone(),
        }),
        _ => None,
    }
}

fn end_info(end: &ExecEnd, duration: Duration) -> EndInfo {
    let mut info = EndInfo {
        status: end.status().to_owned(),
        duration_ms: duration.as_secs_f64() * 1000.0,
        ..EndInfo::default()
    };
    match end {
        ExecEnd::Finished(o) => {
            info.exit_code = Some(o.status.exit_code());
            match &o.status {
                ExecStatus::Killed { limit } => {
                    info.limit = Some(
                        serde_json::to_value(limit)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_else(|| limit.to_string()),
                    )
                }
                ExecStatus::Crashed { reason } => info.reason = Some(reason.clone()),
                _ => {}
            }
            info.timings = Some(o.timings);
            info.tool_calls = o.tool_calls.clone();
            info.stdout_truncated = o.stdout.truncated;
            info.stderr_truncated = o.stderr.truncated;
        }
        ExecEnd::Failed(e) => {
            let api = ApiError::from(clone_error(e));
            info.failure = Some(api.body().error.into());
        }
        ExecEnd::Stopped(why) => info.reason = Some(why.to_string()),
    }
    info
}

/// The kernel's error is not `Clone`; what the wire needs of it is its kind and text.
fn clone_error(e: &agentkernel_core::Error) -> agentkernel_core::Error {
    use agentkernel_core::Error as E;
    match e {
        E::InvalidRequest { message, hint } => E::InvalidRequest {
            message: message.clone(),
            hint: hint.clone(),
        },
        E::SandboxLost { reason } => E::SandboxLost {
            reason: reason.clone(),
        },
        E::WorkspaceBusy { path, waited } => E::WorkspaceBusy {
            path: path.clone(),
            waited: *waited,
        },
        E::LimitExceeded { limit, detail } => E::LimitExceeded {
            limit: *limit,
            detail: detail.clone(),
        },
        other => E::Internal(other.to_string()),
    }
}

/// Runs code in the sandbox's interpreter: one [`ExecutionResult`], or with `stream` an
/// NDJSON stream of [`StreamEvent`]s (`application/x-ndjson`). Closing the connection stops
/// the execution.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/execute", tag = "execute",
    params(("id" = String, Path, description = "sandbox id")),
    request_body = ExecuteBody,
    responses(
        (status = 200, description = "the execution ended (one object), or its events (one a line, `stream`)",
            content((ExecutionResult = "application/json"), (StreamEvent = "application/x-ndjson"))),
        ErrorResponses))]
pub(super) async fn execute(
    State(state): State<ServerState>,
    Extension(who): Extension<KeyId>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ExecuteBody>,
) -> Result<Response, ApiError> {
    let entry = state.sandbox(&who, &id)?;
    let mut req = ExecRequest::new(body.code);
    req.check_size().map_err(ApiError::from)?;
    if let Some(s) = body.timeout_secs {
        let t = secs("timeout_secs", s)?;
        if t > entry.limits.wall_time {
            return Err(ApiError::bad_request(
                format!(
                    "timeout_secs {s} is above the sandbox's timeout of {} s",
                    entry.limits.wall_time.as_secs_f64()
                ),
                "ask for less, or create the sandbox with a larger limits.timeout_secs (up to the server's)",
            ));
        }
        req = req.with_timeout(t);
    }
    let execution = state.execute(&entry, req)?;
    if body.stream {
        return Ok(stream_response(execution));
    }
    // The handler's future owns the execution: a client that goes away drops it, which
    // stops the program.
    let mut out = (Vec::new(), Vec::new());
    let mut execution = execution;
    let (end, duration) = loop {
        match execution.next().await {
            Some(ExecEvent::Output { stream, bytes }) => match stream {
                StreamKind::Stdout => out.0.extend_from_slice(&bytes),
                StreamKind::Stderr => out.1.extend_from_slice(&bytes),
            },
            Some(ExecEvent::End { end, duration }) => break (end, duration),
            None => {
                return Err(ApiError::from(agentkernel_core::Error::Internal(
                    "an execution ended without its end".into(),
                )));
            }
        }
    };
    let (stdout, stderr, error, value, displays) = match &end {
        ExecEnd::Finished(o) => (
            o.stdout.text(),
            o.stderr.text(),
            exception_of(o),
            value_of(o),
            displays_of(o),
        ),
        ExecEnd::Failed(e) => return Err(ApiError::from(clone_error(e))),
        ExecEnd::Stopped(_) => (
            String::from_utf8_lossy(&out.0).into_owned(),
            String::from_utf8_lossy(&out.1).into_owned(),
            None,
            None,
            Vec::new(),
        ),
    };
    Ok(axum::Json(ExecutionResult {
        end: end_info(&end, duration),
        stdout,
        stderr,
        error,
        value,
        displays,
    })
    .into_response())
}

/// The NDJSON answer: the body is a stream that owns the execution, so a client closing
/// the connection (hyper drops the body) stops it.
fn stream_response(execution: Execution) -> Response {
    struct Streaming {
        execution: Execution,
        text: OutputText,
        done: bool,
    }
    let start = Streaming {
        execution,
        text: OutputText::default(),
        done: false,
    };
    let stream = futures_util::stream::unfold(start, |mut s| async move {
        if s.done {
            return None;
        }
        loop {
            let mut lines = Vec::new();
            match s.execution.next().await {
                Some(ExecEvent::Output { stream, bytes }) => {
                    let text = s.text.push(stream, &bytes);
                    if text.is_empty() {
                        continue;
                    }
                    lines.push(match stream {
                        StreamKind::Stdout => StreamEvent::Stdout { text },
                        StreamKind::Stderr => StreamEvent::Stderr { text },
                    });
                }
                Some(ExecEvent::End { end, duration }) => {
                    for (kind, text) in s.text.finish() {
                        lines.push(match kind {
                            StreamKind::Stdout => StreamEvent::Stdout { text },
                            StreamKind::Stderr => StreamEvent::Stderr { text },
                        });
                    }
                    if let ExecEnd::Finished(o) = &end {
                        lines.extend(displays_of(o).into_iter().map(StreamEvent::Display));
                        if let Some(v) = value_of(o) {
                            lines.push(StreamEvent::Result(v));
                        }
                        if let Some(e) = exception_of(o) {
                            lines.push(StreamEvent::Error(e));
                        }
                    }
                    lines.push(StreamEvent::End(end_info(&end, duration)));
                    s.done = true;
                }
                None => {
                    lines.push(StreamEvent::End(EndInfo {
                        status: "failed".into(),
                        reason: Some("the execution's task ended without its end".into()),
                        ..EndInfo::default()
                    }));
                    s.done = true;
                }
            }
            let mut bytes = Vec::new();
            for line in &lines {
                if serde_json::to_writer(&mut bytes, line).is_ok() {
                    bytes.push(b'\n');
                }
            }
            return Some((Ok::<Bytes, Infallible>(Bytes::from(bytes)), s));
        }
    });
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}
