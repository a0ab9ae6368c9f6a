//! `/v1/tasks`: fire-and-forget programs ([`crate::Tasks`] of the default kernel, in its
//! store in the data dir, run by the server's workers): submit, get, wait, list, cancel,
//! and the state changes as NDJSON. A submitted task is in the store before the answer, so
//! it is never lost: one running when the server stops is marked `lost` when the server
//! next starts (see `Tasks`). Tasks are shared by every key of a server, like named
//! workspaces.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::sandboxes::secs;
use crate::http::sandboxes::SANDBOX_PREFIX;
use crate::http::{ApiError, ErrorResponses, JsonBody, ServerState};
use crate::tasks::{TaskRecord, TaskRequest, TaskState, Tasks};

/// `POST /v1/tasks`'s body.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitTaskBody {
    /// Python source (at most 1 MiB).
    pub code: String,
    /// Wall-clock seconds (default: the server's timeout, which is also the most).
    #[serde(default)]
    pub timeout_secs: Option<f64>,
    /// Named workspace mounted at `/workspace` (default: none).
    #[serde(default)]
    pub workspace: Option<String>,
}

/// A task: `id`, `state` (`queued`, `running`, `succeeded`, `failed`, `lost`,
/// `cancelled`), `request`, times in ms since the Unix epoch, `attempts`, `result`
/// (`output`, `stderr`, `success`, `status`, `exit_code`, `timings`, `tool_calls`) once it
/// ran, `error` for a kernel-side failure.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = Object)]
pub struct TaskInfo(pub TaskRecord);

/// `GET /v1/tasks`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskList {
    /// Newest first.
    pub tasks: Vec<TaskInfo>,
}

/// `GET /v1/tasks` filters.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TaskListQuery {
    /// Only tasks in this state.
    #[serde(default)]
    pub state: Option<String>,
    /// At most this many (default 100, at most 1000).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// How long `wait` waits.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Seconds to wait at most (default 30, at most 3600); the current record is answered
    /// when they pass.
    #[serde(default)]
    pub timeout_secs: Option<f64>,
}

async fn tasks(state: &ServerState) -> Result<&Tasks, ApiError> {
    state.tasks().await
}

async fn record(tasks: &Tasks, id: &str) -> Result<TaskRecord, ApiError> {
    tasks.status(id).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "task_not_found",
            format!("no task {id:?}"),
            "list tasks with GET /v1/tasks",
        )
    })
}

/// Submits a task: it is stored at once and run by the server's workers.
#[utoipa::path(post, path = "/v1/tasks", tag = "tasks", request_body = SubmitTaskBody,
    responses((status = 202, description = "stored", body = TaskInfo), ErrorResponses))]
pub(super) async fn submit(
    State(state): State<ServerState>,
    JsonBody(body): JsonBody<SubmitTaskBody>,
) -> Result<Response, ApiError> {
    state.refuse_if_draining()?;
    let mut req = TaskRequest::new(body.code);
    let max = state.kernels[0].spec().limits.wall_time;
    if let Some(s) = body.timeout_secs {
        let t = secs("timeout_secs", s)?;
        if t > max {
            return Err(ApiError::bad_request(
                format!(
                    "timeout_secs {s} is above the server's timeout of {} s",
                    max.as_secs_f64()
                ),
                "ask for less",
            ));
        }
        req = req.with_timeout(t);
    }
    if let Some(ws) = &body.workspace {
        if ws.starts_with(SANDBOX_PREFIX) {
            return Err(ApiError::bad_request(
                format!("workspace names starting with {SANDBOX_PREFIX:?} belong to sandboxes"),
                "choose another name",
            ));
        }
        agentkernel_core::validate_workspace_name(ws)?;
    }
    req.workspace = body.workspace;
    agentkernel_core::ExecRequest::new(req.code.clone()).check_size()?;
    let tasks = tasks(&state).await?;
    let id = tasks.submit(req).await?;
    let rec = record(tasks, &id).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(TaskInfo(rec))).into_response())
}

/// Tasks, newest first.
#[utoipa::path(get, path = "/v1/tasks", tag = "tasks", params(TaskListQuery),
    responses((status = 200, description = "the tasks", body = TaskList), ErrorResponses))]
pub(super) async fn list(
    State(state): State<ServerState>,
    Query(q): Query<TaskListQuery>,
) -> Result<axum::Json<TaskList>, ApiError> {
    let filter = match &q.state {
        Some(s) => Some(s.parse::<TaskState>()?),
        None => None,
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let list = tasks(&state).await?.list(filter, limit).await?;
    Ok(axum::Json(TaskList {
        tasks: list.into_iter().map(TaskInfo).collect(),
    }))
}

/// One task.
#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks",
    params(("id" = String, Path, description = "task id")),
    responses((status = 200, description = "the task", body = TaskInfo), ErrorResponses))]
pub(super) async fn get(
    State(state): State<ServerState>,
    Path(id): Path<String>,
) -> Result<axum::Json<TaskInfo>, ApiError> {
    Ok(axum::Json(TaskInfo(
        record(tasks(&state).await?, &id).await?,
    )))
}

/// Waits until the task is over (or the wait's timeout passes) and answers its record.
#[utoipa::path(get, path = "/v1/tasks/{id}/wait", tag = "tasks",
    params(("id" = String, Path, description = "task id"), WaitQuery),
    responses((status = 200, description = "the task, over or as it is when the wait ends", body = TaskInfo),
        ErrorResponses))]
pub(super) async fn wait(
    State(state): State<ServerState>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> Result<axum::Json<TaskInfo>, ApiError> {
    let timeout = match q.timeout_secs {
        Some(s) => secs("timeout_secs", s)?.min(Duration::from_secs(3600)),
        None => Duration::from_secs(30),
    };
    let tasks = tasks(&state).await?;
    record(tasks, &id).await?;
    let rec = tasks.wait(&id, Some(timeout), |_| {}).await?;
    Ok(axum::Json(TaskInfo(rec)))
}

/// Cancels a task (a running one is killed by its worker): answers the state it was in.
#[utoipa::path(post, path = "/v1/tasks/{id}/cancel", tag = "tasks",
    params(("id" = String, Path, description = "task id")),
    responses((status = 200, description = "`{\"previous_state\": STATE}`"), ErrorResponses))]
pub(super) async fn cancel(
    State(state): State<ServerState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let tasks = tasks(&state).await?;
    record(tasks, &id).await?;
    let before = tasks.cancel(&id).await?;
    Ok(axum::Json(serde_json::json!({"previous_state": before})).into_response())
}

/// The task's states as NDJSON, one `{"id", "state"}` a line as it passes through them,
/// ending with its final one.
#[utoipa::path(get, path = "/v1/tasks/{id}/events", tag = "tasks",
    params(("id" = String, Path, description = "task id")),
    responses((status = 200, description = "one `{\"id\", \"state\"}` a line", content_type = "application/x-ndjson"),
        ErrorResponses))]
pub(super) async fn events(
    State(state): State<ServerState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let tasks = tasks(&state).await?.clone();
    record(&tasks, &id).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    // Ends when the task is over, or when the client went away (the channel closed).
    tokio::spawn(async move {
        let line = |rec: &TaskRecord| {
            let mut b = serde_json::to_vec(&serde_json::json!({"id": rec.id, "state": rec.state}))
                .unwrap_or_default();
            b.push(b'\n');
            Bytes::from(b)
        };
        let watch = tasks.wait(&id, None, |rec| {
            let _ = tx.send(line(rec));
        });
        tokio::select! {
            _ = watch => {}
            _ = tx.closed() => {}
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<Bytes, std::convert::Infallible>(b), rx))
    });
    let mut response = Body::from_stream(stream).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(response)
}
