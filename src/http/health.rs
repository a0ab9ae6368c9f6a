//! `GET /healthz` (the process answers; no key needed), `GET /readyz` (each backend can
//! start a sandbox and the data dir is writable; no key needed, for load balancers' probes;
//! the answer is cached 10 s, since a backend's check starts a sandbox) and `GET /metrics`
//! (Prometheus text; behind the key like the API).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ErrorResponses, ServerState};

/// How long a readiness answer is reused.
const READY_TTL: Duration = Duration::from_secs(10);

/// The last readiness answer and when it was made; `checking` lets one request at a time
/// make a new one (a backend's check starts a sandbox: probes arriving together share it).
#[derive(Default)]
pub(super) struct ReadinessCache(Mutex<Option<(Instant, Readiness)>>, tokio::sync::Mutex<()>);

impl ReadinessCache {
    fn fresh(&self) -> Option<Readiness> {
        self.0
            .lock()
            .ok()
            .and_then(|c| c.clone())
            .filter(|(at, _)| at.elapsed() < READY_TTL)
            .map(|(_, r)| r)
    }
}

/// `GET /readyz`'s answer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// Whether every backend and the store are ready (and the server is not shutting down).
    pub ready: bool,
    /// Whether a shutdown began.
    pub draining: bool,
    /// Each backend served.
    pub backends: Vec<BackendReadiness>,
    /// The data dir (named workspaces).
    pub store: StoreReadiness,
}

/// One backend's readiness.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BackendReadiness {
    /// Its name.
    pub name: String,
    /// Whether it can start a sandbox here.
    pub ready: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The data dir's readiness.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StoreReadiness {
    /// Whether a file can be written in it.
    pub ready: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The routes without a key.
pub(super) fn open_routes() -> OpenApiRouter<ServerState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(openapi_json))
}

/// The routes behind the key.
pub(super) fn authed_routes() -> OpenApiRouter<ServerState> {
    OpenApiRouter::new().routes(routes!(metrics))
}

/// This API's OpenAPI 3.1 document, generated from the handlers and their types (no key).
#[utoipa::path(get, path = "/openapi.json", tag = "health",
    responses((status = 200, description = "the OpenAPI document", content_type = "application/json")))]
async fn openapi_json(State(state): State<ServerState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.openapi.clone(),
    )
        .into_response()
}

/// Liveness: the process answers (no key).
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "`{\"status\": \"ok\"}`")))]
async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// Readiness: every backend can start a sandbox and the data dir is writable (no key;
/// cached 10 s).
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, description = "ready", body = Readiness),
              (status = 503, description = "not ready, or shutting down", body = Readiness)))]
async fn readyz(State(state): State<ServerState>) -> Response {
    let mut report = match state.readiness.fresh() {
        Some(r) => r,
        None => {
            let _checking = state.readiness.1.lock().await;
            // Another request may have made one meanwhile.
            match state.readiness.fresh() {
                Some(r) => r,
                None => {
                    let r = check(&state).await;
                    if let Ok(mut c) = state.readiness.0.lock() {
                        *c = Some((Instant::now(), r.clone()));
                    }
                    r
                }
            }
        }
    };
    report.draining = state.is_draining();
    report.ready = report.ready && !report.draining;
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(report)).into_response()
}

async fn check(state: &ServerState) -> Readiness {
    let mut backends = Vec::new();
    for kernel in &state.kernels {
        let runtime = kernel.runtime();
        let (ready, reason) =
            match tokio::time::timeout(Duration::from_secs(30), runtime.diagnose()).await {
                Ok(d) => (d.available, d.reason),
                Err(_) => (false, Some("its check took over 30 s".to_owned())),
            };
        backends.push(BackendReadiness {
            name: runtime.name().to_owned(),
            ready,
            reason,
        });
    }
    let root = state.kernels[0].workspaces().root().to_owned();
    let store = match tokio::task::spawn_blocking(move || probe_dir(&root)).await {
        Ok(Ok(())) => StoreReadiness {
            ready: true,
            reason: None,
        },
        Ok(Err(e)) => StoreReadiness {
            ready: false,
            reason: Some(e),
        },
        Err(e) => StoreReadiness {
            ready: false,
            reason: Some(format!("the check panicked: {e}")),
        },
    };
    Readiness {
        ready: store.ready && backends.iter().all(|b| b.ready),
        draining: false,
        backends,
        store,
    }
}

/// Whether a file can be made (and removed) in `dir`.
fn probe_dir(dir: &std::path::Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let probe = dir.join(format!(".readyz-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| format!("writing in {}: {e}", dir.display()))?;
    std::fs::remove_file(&probe).map_err(|e| format!("removing {}: {e}", probe.display()))
}

/// Prometheus text: executions by backend and status, their latency, sandboxes, pools.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain"),
              ErrorResponses))]
async fn metrics(State(state): State<ServerState>) -> Response {
    let pools: Vec<(&str, agentkernel_core::PoolStats)> = state
        .kernels
        .iter()
        .filter_map(|k| k.pool_stats().map(|s| (k.runtime().name(), s)))
        .collect();
    let text = state.metrics.render(state.live_sandboxes(), &pools);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
