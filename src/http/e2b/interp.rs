//! The code interpreter (`E2b-Sandbox-Port: 49999`): `POST /execute`, what `run_code`
//! sends (docs/e2b-protocol.md §4).
//!
//! The code runs in the sandbox's session, so globals persist between calls (and between
//! `Sandbox.connect`s). The answer streams NDJSON as things happen: `stdout`/`stderr` lines
//! (with a timestamp) while the program runs, then a `result` line (`is_main_result:
//! false`) for each thing it displayed (a matplotlib figure as `png`, `display(obj)` as
//! `text`), a `result` line with `is_main_result: true` for the value of the last expression (its `repr`, with one pair of
//! surrounding quotes stripped as E2B does), an `error` line (name, value, traceback) if it
//! raised, then `number_of_executions` and `end_of_execution`.
//!
//! Concurrency: executions (and `commands.run`) on one sandbox wait for each other in
//! arrival order, as on E2B's single kernel; one started through the native API meanwhile
//! makes this one a 409. The client closing the connection stops the execution (the
//! sandbox's interpreter restarts, its variables lost).
//!
//! Refused (400, which the SDK shows as `SandboxException`): a `language` other than
//! Python, a `context_id`, and per-execution `env_vars` (give `envs` at create instead).

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use agentkernel_core::{ExecOutcome, ExecRequest, ExecStatus, StreamKind};

use super::E2bState;
use crate::http::{ExecEnd, ExecEvent, Execution, OutputText};

/// The interpreter's routes.
pub fn routes(state: E2bState) -> Router {
    Router::new()
        .route("/execute", post(execute))
        .route("/health", axum::routing::get(|| async { Json("OK") }))
        .fallback(unsupported)
        .with_state(state)
}

async fn unsupported(uri: axum::http::Uri) -> Response {
    let path = uri.path();
    let what = if path.starts_with("/contexts") {
        "code contexts are not supported by agentkernel: each sandbox is one Python context (create another sandbox for another)"
    } else {
        "this code interpreter route is not supported by agentkernel (only POST /execute)"
    };
    text(StatusCode::NOT_IMPLEMENTED, &format!("{path}: {what}"))
}

fn text(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message.to_owned(),
    )
        .into_response()
}

/// What `run_code` sends.
#[derive(Debug, Deserialize)]
struct ExecuteBody {
    code: String,
    #[serde(default)]
    context_id: Option<String>,
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    env_vars: Option<BTreeMap<String, String>>,
}

async fn execute(State(state): State<E2bState>, headers: HeaderMap, body: Bytes) -> Response {
    let (entry, e2b) = match state.registry.authorize(&state.server, &headers) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let body: ExecuteBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("the body is not what run_code sends: {e}"),
            );
        }
    };
    if let Some(lang) = body.language.as_deref()
        && !lang.eq_ignore_ascii_case("python")
    {
        return text(
            StatusCode::BAD_REQUEST,
            &format!("language {lang:?} is not supported by agentkernel; python only"),
        );
    }
    if body.context_id.is_some() {
        return text(
            StatusCode::BAD_REQUEST,
            "code contexts are not supported by agentkernel: leave context out (each sandbox is one Python context)",
        );
    }
    if body.env_vars.as_ref().is_some_and(|e| !e.is_empty()) {
        return text(
            StatusCode::BAD_REQUEST,
            "per-execution envs are not supported by agentkernel: give envs to Sandbox.create(envs=...)",
        );
    }
    let req = ExecRequest::new(body.code);
    if let Err(e) = req.check_size() {
        return text(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string());
    }
    // Queued behind the sandbox's running execution or command, like E2B's kernel.
    let turn = e2b
        .turn(&entry, entry.limits.wall_time + Duration::from_secs(10))
        .await;
    let execution = match state.server.execute(&entry, req) {
        Ok(x) => x,
        Err(e) => {
            return text(e.status, &format!("{} ({})", e.message, e.hint));
        }
    };
    stream(execution, turn, entry.executions())
}

/// One NDJSON line.
fn line(v: Value) -> Bytes {
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}

fn output_line(kind: StreamKind, text: String) -> Bytes {
    let kind = match kind {
        StreamKind::Stdout => "stdout",
        StreamKind::Stderr => "stderr",
    };
    line(
        json!({"type": kind, "text": text, "timestamp": super::rfc3339(std::time::SystemTime::now())}),
    )
}

/// `repr` as E2B's `text/plain`: one pair of surrounding quotes stripped.
pub fn e2b_text(repr: &str) -> &str {
    let b = repr.as_bytes();
    if b.len() >= 2 && (b[0] == b'\'' || b[0] == b'"') && b[b.len() - 1] == b[0] {
        &repr[1..repr.len() - 1]
    } else {
        repr
    }
}

/// The closing lines of a finished execution: its result and error.
fn outcome_lines(o: &ExecOutcome, lines: &mut Vec<Bytes>) {
    // What it displayed (figures, `display(obj)`): results that are not the main one, as
    // E2B's kernel sends them (`png` as base64, or `text`).
    for d in &o.displays {
        let key = if d.mime == agentkernel_core::DisplayData::PNG {
            "png"
        } else {
            "text"
        };
        lines.push(line(
            json!({"type": "result", key: d.data, "is_main_result": false}),
        ));
    }
    if let Some(v) = &o.value {
        lines.push(line(json!({
            "type": "result",
            "text": e2b_text(&v.repr),
            "is_main_result": true,
        })));
    }
    let error = match &o.status {
        ExecStatus::Ok => None,
        ExecStatus::Exception {
            type_name,
            message,
            traceback,
        } => Some((type_name.clone(), message.clone(), traceback.clone())),
        ExecStatus::Exited { code } => Some(("SystemExit".into(), code.to_string(), String::new())),
        ExecStatus::Killed { limit } => Some((
            "SandboxLimitExceeded".into(),
            format!(
                "agentkernel stopped the program: it went past the sandbox's {limit} limit; the interpreter restarted, its variables are lost"
            ),
            String::new(),
        )),
        ExecStatus::Crashed { reason } => Some((
            "SandboxCrashed".into(),
            format!("the interpreter died: {reason}; it restarted, its variables are lost"),
            String::new(),
        )),
    };
    if let Some((name, value, traceback)) = error {
        lines.push(line(
            json!({"type": "error", "name": name, "value": value, "traceback": traceback}),
        ));
    }
}

/// The NDJSON answer. The body owns the execution and the sandbox's turn: a client that
/// goes away drops both, which stops the program and lets the next one in.
fn stream(
    execution: Execution,
    turn: tokio::sync::OwnedMutexGuard<()>,
    executions_before: u64,
) -> Response {
    struct Streaming {
        execution: Execution,
        _turn: tokio::sync::OwnedMutexGuard<()>,
        text: OutputText,
        count: u64,
        done: bool,
    }
    let start = Streaming {
        execution,
        _turn: turn,
        text: OutputText::default(),
        count: executions_before + 1,
        done: false,
    };
    let body = futures_util::stream::unfold(start, |mut s| async move {
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
                    lines.push(output_line(stream, text));
                }
                Some(ExecEvent::End { end, .. }) => {
                    for (kind, text) in s.text.finish() {
                        lines.push(output_line(kind, text));
                    }
                    match &end {
                        ExecEnd::Finished(o) => outcome_lines(o, &mut lines),
                        ExecEnd::Failed(e) => lines.push(line(json!({
                            "type": "error", "name": "AgentKernelError",
                            "value": e.to_string(), "traceback": "",
                        }))),
                        ExecEnd::Stopped(why) => lines.push(line(json!({
                            "type": "error", "name": "ExecutionStopped",
                            "value": why.to_string(), "traceback": "",
                        }))),
                    }
                    lines.push(line(
                        json!({"type": "number_of_executions", "execution_count": s.count}),
                    ));
                    lines.push(line(json!({"type": "end_of_execution"})));
                    s.done = true;
                }
                None => {
                    lines.push(line(json!({"type": "unexpected_end_of_execution"})));
                    s.done = true;
                }
            }
            let chunk: Vec<u8> = lines.concat();
            return Some((Ok::<_, std::convert::Infallible>(Bytes::from(chunk)), s));
        }
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pair_of_quotes_is_stripped_as_e2b_does() {
        assert_eq!(e2b_text("'hi'"), "hi");
        assert_eq!(e2b_text("\"it's\""), "it's");
        assert_eq!(e2b_text("42"), "42");
        assert_eq!(e2b_text("'"), "'");
        assert_eq!(e2b_text("'a\""), "'a\"");
        assert_eq!(e2b_text("''"), "");
    }
}
