//! The native API, under `/v1` (see docs/http.md for the wire formats):
//! - `POST /v1/sandboxes`, `GET /v1/sandboxes`, `GET /v1/sandboxes/{id}`,
//!   `DELETE /v1/sandboxes/{id}` (`sandboxes.rs`);
//! - `POST /v1/sandboxes/{id}/execute`, one JSON object or an NDJSON stream of events
//!   (`execute.rs`);
//! - `GET|PUT|DELETE /v1/sandboxes/{id}/files/{path}`, the workspace's files (`files.rs`);
//! - `GET /v1/tools`, `GET /v1/workspaces`, `DELETE /v1/workspaces/{name}` (`catalog.rs`);
//! - `POST|GET /v1/tasks`, `GET /v1/tasks/{id}`, `GET /v1/tasks/{id}/wait`,
//!   `POST /v1/tasks/{id}/cancel`, `GET /v1/tasks/{id}/events` (`tasks.rs`).

mod catalog;
mod execute;
mod files;
mod sandboxes;
mod tasks;

pub use catalog::{ToolList, WorkspaceList, WorkspaceSummary};
pub use files::{FileEntry, FileList, FileWritten, parse_path};
pub use tasks::{SubmitTaskBody, TaskInfo, TaskList};

pub use execute::{
    DisplayInfo, EndInfo, ErrorDetailOwned, ExceptionInfo, ExecuteBody, ExecutionResult,
    StreamEvent, ValueInfo,
};
pub use sandboxes::{CreateSandboxBody, LimitsBody, SandboxInfo, SandboxList};

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ServerState;

/// The `/v1` routes, each with its OpenAPI operation (so the document cannot miss one).
/// Uploads are not held to the JSON body cap: they are streamed to disk and capped by the
/// sandbox's file-size limit (a raw body is not subject to `DefaultBodyLimit`).
pub fn routes() -> OpenApiRouter<ServerState> {
    OpenApiRouter::new()
        .routes(routes!(sandboxes::create, sandboxes::list))
        .routes(routes!(sandboxes::get, sandboxes::delete))
        .routes(routes!(execute::execute))
        .routes(routes!(files::list_root))
        .routes(routes!(files::get, files::put, files::delete))
        .routes(routes!(catalog::tools))
        .routes(routes!(catalog::workspaces))
        .routes(routes!(catalog::delete_workspace))
        .routes(routes!(tasks::submit, tasks::list))
        .routes(routes!(tasks::get))
        .routes(routes!(tasks::wait))
        .routes(routes!(tasks::cancel))
        .routes(routes!(tasks::events))
}
