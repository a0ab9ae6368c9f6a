//! `/v1/sandboxes`: create, list, get, delete.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::http::{
    ApiError, ErrorResponses, JsonBody, KeyId, SandboxEntry, SandboxOptions, ServerState,
};
use crate::session::SessionOptions;

/// `POST /v1/sandboxes`'s body (every field optional; unknown fields are refused).
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandboxBody {
    /// Backend (default: the server's first).
    #[serde(default)]
    pub backend: Option<String>,
    /// Named workspace mounted at `/workspace` (shared by every key of the server, kept
    /// after the sandbox); default: a fresh one of its own, deleted with it.
    #[serde(default)]
    pub workspace: Option<String>,
    /// Limits, each at most the server's (default: the server's).
    #[serde(default)]
    pub limits: Option<LimitsBody>,
    /// Environment variables of the sandbox.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Seconds without use after which the sandbox is closed.
    #[serde(default)]
    pub idle_timeout_secs: Option<f64>,
    /// Seconds after which the sandbox is closed, used or not.
    #[serde(default)]
    pub max_lifetime_secs: Option<f64>,
    /// The caller's labels, returned as they are (at most 32, each at most 256 bytes).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// The tools its programs may call, as patterns over `server.tool` (`"github.*"`,
    /// `"github.create_issue"`, `"*"`), within the server's tool policy (a call passes only
    /// when both allow it); `[]`: none. Default: all the server's policy allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<String>>,
}

/// Limits of a sandbox over the wire; each omitted one is the server's.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsBody {
    /// Wall-clock seconds one execution may take (its default timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<f64>,
    /// CPU seconds per process over the sandbox's life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_secs: Option<f64>,
    /// Memory in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// Bytes kept of each of stdout and stderr per execution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_bytes: Option<u64>,
    /// Processes (and threads) at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<u32>,
    /// Largest file the program may write, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_size_bytes: Option<u64>,
}

impl LimitsBody {
    /// The wire form of `limits`.
    pub fn of(limits: &agentkernel_core::Limits) -> Self {
        LimitsBody {
            timeout_secs: Some(limits.wall_time.as_secs_f64()),
            cpu_secs: limits.cpu_time.map(|d| d.as_secs_f64()),
            memory_mib: limits.memory_bytes.map(|b| b >> 20),
            output_bytes: Some(limits.output_bytes as u64),
            processes: limits.processes,
            file_size_bytes: limits.file_size_bytes,
        }
    }

    /// `base` with these limits over it.
    fn apply(&self, base: &agentkernel_core::Limits) -> Result<agentkernel_core::Limits, ApiError> {
        let mut l = base.clone();
        if let Some(s) = self.timeout_secs {
            l.wall_time = secs("limits.timeout_secs", s)?;
        }
        if let Some(s) = self.cpu_secs {
            l.cpu_time = Some(secs("limits.cpu_secs", s)?);
        }
        if let Some(m) = self.memory_mib {
            l.memory_bytes = Some(m.saturating_mul(1 << 20));
        }
        if let Some(b) = self.output_bytes {
            l.output_bytes = usize::try_from(b).unwrap_or(usize::MAX);
        }
        if let Some(p) = self.processes {
            l.processes = Some(p);
        }
        if let Some(b) = self.file_size_bytes {
            l.file_size_bytes = Some(b);
        }
        Ok(l)
    }
}

/// A positive, finite number of seconds as a duration (400 otherwise).
pub(super) fn secs(name: &str, s: f64) -> Result<Duration, ApiError> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            ApiError::bad_request(
                format!("{name} = {s} is not a positive number of seconds"),
                format!("give {name} as a number of seconds above 0, e.g. 30"),
            )
        })
}

/// A sandbox as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SandboxInfo {
    /// Its id.
    pub id: String,
    /// Its backend.
    pub backend: String,
    /// Its workspace's name.
    pub workspace: String,
    /// Whether its workspace is its own (deleted with it).
    pub own_workspace: bool,
    /// `running` while an execution runs in it, else `idle`.
    pub state: String,
    /// Executions so far.
    pub executions: u64,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: f64,
    /// When its lifetime ends, seconds since the Unix epoch.
    pub expires_at: f64,
    /// Its idle timeout in seconds.
    pub idle_timeout_secs: f64,
    /// Seconds since its last use.
    pub idle_secs: f64,
    /// Its limits.
    pub limits: LimitsBody,
    /// The caller's labels.
    pub metadata: BTreeMap<String, String>,
}

impl SandboxInfo {
    /// The API's view of `e`.
    pub fn of(e: &SandboxEntry) -> Self {
        let epoch = |t: std::time::SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0)
        };
        SandboxInfo {
            id: e.id.clone(),
            backend: e.backend.to_owned(),
            workspace: e.workspace.clone(),
            own_workspace: e.own_workspace,
            state: if e.is_busy() { "running" } else { "idle" }.to_owned(),
            executions: e.executions(),
            created_at: epoch(e.created_at),
            expires_at: epoch(e.expires_at()),
            idle_timeout_secs: e.idle_timeout.as_secs_f64(),
            idle_secs: e.idle_for().as_secs_f64(),
            limits: LimitsBody::of(&e.limits),
            metadata: e.metadata.clone(),
        }
    }
}

/// `GET /v1/sandboxes`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SandboxList {
    /// The caller's live sandboxes, oldest first.
    pub sandboxes: Vec<SandboxInfo>,
}

/// Creates a sandbox.
#[utoipa::path(post, path = "/v1/sandboxes", tag = "sandboxes",
    request_body = CreateSandboxBody,
    responses((status = 201, description = "created", body = SandboxInfo), ErrorResponses))]
pub(super) async fn create(
    State(state): State<ServerState>,
    Extension(who): Extension<KeyId>,
    JsonBody(body): JsonBody<CreateSandboxBody>,
) -> Result<Response, ApiError> {
    let kernel = state.kernel(body.backend.as_deref())?;
    let limits = match &body.limits {
        Some(l) => Some(l.apply(&kernel.spec().limits)?),
        None => None,
    };
    if body.metadata.len() > 32
        || body
            .metadata
            .iter()
            .any(|(k, v)| k.len() > 256 || v.len() > 256)
    {
        return Err(ApiError::bad_request(
            "metadata is too large",
            "give at most 32 labels, each key and value at most 256 bytes",
        ));
    }
    let options = SandboxOptions {
        backend: body.backend,
        workspace: body.workspace,
        session: SessionOptions {
            limits,
            env: body.env,
            tools: body.tools,
        },
        idle_timeout: body
            .idle_timeout_secs
            .map(|s| secs("idle_timeout_secs", s))
            .transpose()?,
        lifetime: body
            .max_lifetime_secs
            .map(|s| secs("max_lifetime_secs", s))
            .transpose()?,
        metadata: body.metadata,
    };
    let entry = state.create_sandbox(&who, options).await?;
    Ok((StatusCode::CREATED, axum::Json(SandboxInfo::of(&entry))).into_response())
}

/// The caller's live sandboxes, oldest first.
#[utoipa::path(get, path = "/v1/sandboxes", tag = "sandboxes",
    responses((status = 200, description = "the caller's sandboxes", body = SandboxList), ErrorResponses))]
pub(super) async fn list(
    State(state): State<ServerState>,
    Extension(who): Extension<KeyId>,
) -> axum::Json<SandboxList> {
    axum::Json(SandboxList {
        sandboxes: state
            .sandboxes(&who)
            .iter()
            .map(|e| SandboxInfo::of(e))
            .collect(),
    })
}

/// One sandbox.
#[utoipa::path(get, path = "/v1/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path, description = "sandbox id")),
    responses((status = 200, description = "the sandbox", body = SandboxInfo), ErrorResponses))]
pub(super) async fn get(
    State(state): State<ServerState>,
    Extension(who): Extension<KeyId>,
    Path(id): Path<String>,
) -> Result<axum::Json<SandboxInfo>, ApiError> {
    let entry = state.sandbox(&who, &id)?;
    Ok(axum::Json(SandboxInfo::of(&entry)))
}

/// Closes a sandbox: a running execution stops, its own workspace is deleted.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path, description = "sandbox id")),
    responses((status = 204, description = "closed"), ErrorResponses))]
pub(super) async fn delete(
    State(state): State<ServerState>,
    Extension(who): Extension<KeyId>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.close_sandbox(&who, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
