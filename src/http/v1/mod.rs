//! The native API, under `/v1` (see docs/http.md for the wire formats):
//! - `POST /v1/sandboxes`, `GET /v1/sandboxes`, `GET /v1/sandboxes/{id}`,
//!   `DELETE /v1/sandboxes/{id}` (`sandboxes.rs`);
//! - `POST /v1/sandboxes/{id}/execute`, one JSON object or an NDJSON stream of events
//!   (`execute.rs`);
//! - `GET|PUT|DELETE /v1/sandboxes/{id}/files/{path}`, the workspace's files (`files.rs`);
//! - `GET /v1/tools`, `GET /v1/workspaces`, `DELETE /v1/workspaces/{name}` (`catalog.rs`).

mod catalog;
mod execute;
mod files;
mod sandboxes;

pub use catalog::{ToolList, WorkspaceList, WorkspaceSummary};
pub use files::{FileEntry, FileList, FileWritten, parse_path};

pub use execute::{
    EndInfo, ErrorDetailOwned, ExceptionInfo, ExecuteBody, ExecutionResult, StreamEvent,
};
pub use sandboxes::{CreateSandboxBody, LimitsBody, SandboxInfo, SandboxList};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};

use super::ServerState;

/// The `/v1` routes.
pub fn routes() -> Router<ServerState> {
    Router::new()
        .route(
            "/v1/sandboxes",
            post(sandboxes::create).get(sandboxes::list),
        )
        .route(
            "/v1/sandboxes/{id}",
            get(sandboxes::get).delete(sandboxes::delete),
        )
        .route("/v1/sandboxes/{id}/execute", post(execute::execute))
        .route("/v1/sandboxes/{id}/files", get(files::list_root))
        .route("/v1/sandboxes/{id}/files/", get(files::list_root))
        .route(
            "/v1/sandboxes/{id}/files/{*path}",
            get(files::get)
                .delete(files::delete)
                // Uploads are streamed to disk and capped by the file-size limit instead.
                .put(files::put)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/tools", get(catalog::tools))
        .route("/v1/workspaces", get(catalog::workspaces))
        .route("/v1/workspaces/{name}", delete(catalog::delete_workspace))
}
