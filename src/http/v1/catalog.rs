//! `GET /v1/tools` (the tools programs can import, with their schemas) and the named
//! workspaces: `GET /v1/workspaces` (name, bytes, files), `DELETE /v1/workspaces/{name}`.
//! Named workspaces are shared by every key of a server; the workspaces made for sandboxes
//! (`sbx-…`) are not listed here and go with their sandbox.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::http::sandboxes::SANDBOX_PREFIX;
use crate::http::{ApiError, ErrorResponses, ServerState};

/// `?backend=NAME` (default: the server's first).
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BackendQuery {
    /// Backend.
    #[serde(default)]
    pub backend: Option<String>,
}

/// `GET /v1/tools`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ToolList {
    /// Each tool: `name` (`server.tool`: `from tools.server import tool`), `description`,
    /// `input_schema`, `output_schema`.
    #[schema(value_type = Vec<Object>)]
    pub tools: Vec<agentkernel_core::ToolSpec>,
}

/// One named workspace.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkspaceSummary {
    /// Its name.
    pub name: String,
    /// Disk space used, in bytes.
    pub bytes: u64,
    /// Number of files.
    pub files: u64,
    /// Last change of its top directory, seconds since the Unix epoch.
    pub modified: Option<u64>,
    /// Live sandboxes using it now (of any key).
    pub in_use: bool,
}

/// `GET /v1/workspaces`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkspaceList {
    /// The named workspaces, by name.
    pub workspaces: Vec<WorkspaceSummary>,
}

/// The tools programs can import, with their JSON Schemas.
#[utoipa::path(get, path = "/v1/tools", tag = "tools", params(BackendQuery),
    responses((status = 200, description = "the catalog", body = ToolList), ErrorResponses))]
pub(super) async fn tools(
    State(state): State<ServerState>,
    Query(q): Query<BackendQuery>,
) -> Result<axum::Json<ToolList>, ApiError> {
    let kernel = state.kernel(q.backend.as_deref())?;
    let mut tools = kernel.tools().catalog();
    tools.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(axum::Json(ToolList { tools }))
}

/// The named workspaces (shared by every key).
#[utoipa::path(get, path = "/v1/workspaces", tag = "workspaces",
    responses((status = 200, description = "the workspaces", body = WorkspaceList), ErrorResponses))]
pub(super) async fn workspaces(
    State(state): State<ServerState>,
) -> Result<axum::Json<WorkspaceList>, ApiError> {
    let list = state.kernels[0].workspaces().list()?;
    let used = state.workspaces_in_use();
    Ok(axum::Json(WorkspaceList {
        workspaces: list
            .into_iter()
            .filter(|w| !w.name.starts_with(SANDBOX_PREFIX))
            .map(|w| WorkspaceSummary {
                in_use: used.contains(&w.name),
                name: w.name,
                bytes: w.bytes,
                files: w.files,
                modified: w.modified,
            })
            .collect(),
    }))
}

/// Deletes a named workspace (409 while a sandbox uses it).
#[utoipa::path(delete, path = "/v1/workspaces/{name}", tag = "workspaces",
    params(("name" = String, Path, description = "workspace name")),
    responses((status = 204, description = "deleted"), ErrorResponses))]
pub(super) async fn delete_workspace(
    State(state): State<ServerState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "workspace_not_found",
            format!("no workspace {name:?}"),
            "list them with GET /v1/workspaces",
        )
    };
    if name.starts_with(SANDBOX_PREFIX) {
        return Err(not_found());
    }
    agentkernel_core::validate_workspace_name(&name)?;
    if state.workspaces_in_use().contains(&name) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "workspace_in_use",
            format!("workspace {name:?} is used by a live sandbox"),
            "delete the sandboxes using it first",
        ));
    }
    if state.kernels[0].workspaces().delete(&name)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found())
    }
}
