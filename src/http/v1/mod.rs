//! The native API, under `/v1` (see docs/http.md for the wire formats):
//! - `POST /v1/sandboxes`, `GET /v1/sandboxes`, `GET /v1/sandboxes/{id}`,
//!   `DELETE /v1/sandboxes/{id}` (`sandboxes.rs`);
//! - `POST /v1/sandboxes/{id}/execute`, one JSON object or an NDJSON stream of events
//!   (`execute.rs`).

mod execute;
mod sandboxes;

pub use execute::{
    EndInfo, ErrorDetailOwned, ExceptionInfo, ExecuteBody, ExecutionResult, StreamEvent,
};
pub use sandboxes::{CreateSandboxBody, LimitsBody, SandboxInfo, SandboxList};

use axum::Router;
use axum::routing::{get, post};

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
}
