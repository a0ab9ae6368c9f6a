//! The HTTP server (`agentkernel serve --listen ADDR`, feature `server`): the native `/v1`
//! API over the kernel's sessions, on axum.
//!
//! Layout, so that a second API (E2B's, in `e2b/`) can share everything but its routes:
//! - this module: [`ServerConfig`], the shared [`ServerState`] (the kernels, the live
//!   sandboxes, the API keys, the caps, the metrics, the shutdown state), [`router`] and
//!   [`serve`];
//! - `sandboxes.rs`: the sandbox table and its reaper, and executions ([`Execution`]: live
//!   output events, then the end; dropping it stops the program) — what any API's handlers
//!   call;
//! - `auth.rs`: API keys and the middleware; `error.rs`: [`ApiError`] (every refusal's JSON
//!   shape and status) and [`JsonBody`]; `metrics.rs`: the Prometheus counters;
//! - `v1/`: the native routes; `health.rs`: `/healthz`, `/readyz`, `/metrics`.
//!
//! Another set of routes plugs in as `Router<ServerState>` merged in [`router`]: its
//! handlers take `State<ServerState>` and `Extension<KeyId>` (set by [`auth::require_key`])
//! and use [`ServerState::create_sandbox`], [`ServerState::sandbox`],
//! [`ServerState::execute`], [`ServerState::close_sandbox`].
//!
//! Security: without API keys the server listens only on loopback ([`check_listen`]);
//! request bodies are capped ([`ServerLimits::max_body_bytes`]); host directories are
//! never named over HTTP (sandboxes get a named workspace, or a fresh one of their own).

pub mod auth;
pub mod e2b;
mod error;
mod health;
pub mod metrics;
pub mod sandboxes;
pub mod v1;

pub use auth::{ApiKeys, KeyId};
pub use error::{ApiError, ErrorBody, ErrorDetail, ErrorResponses, JsonBody};
pub use sandboxes::{
    ExecEnd, ExecEvent, Execution, Occupied, OutputText, SandboxEntry, SandboxOptions, StopReason,
    Utf8Chunker,
};

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use tokio_util::sync::CancellationToken;

use agentkernel_core::{Error, Result};

use crate::kernel::Kernel;

/// The address `agentkernel serve --listen` binds when given none: loopback, port 8765.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8765);

/// The caps of a server.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Live sandboxes in all (default 64). Past it: 429 `too_many_sandboxes`.
    pub max_sandboxes: usize,
    /// Live sandboxes per API key (default 16). Past it: 429 `too_many_sandboxes`.
    pub max_sandboxes_per_key: usize,
    /// Largest request body in bytes (default 4 MiB): 413 past it.
    pub max_body_bytes: usize,
    /// Idle timeout of a sandbox that asks for none (default 10 min).
    pub idle_timeout: Duration,
    /// Largest idle timeout a sandbox may ask for (default 24 h).
    pub max_idle_timeout: Duration,
    /// Lifetime of a sandbox that asks for none (default 1 h).
    pub lifetime: Duration,
    /// Largest lifetime a sandbox may ask for (default 24 h).
    pub max_lifetime: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_sandboxes: 64,
            max_sandboxes_per_key: 16,
            max_body_bytes: 4 << 20,
            idle_timeout: Duration::from_secs(600),
            max_idle_timeout: Duration::from_secs(24 * 3600),
            lifetime: Duration::from_secs(3600),
            max_lifetime: Duration::from_secs(24 * 3600),
        }
    }
}

/// What [`serve`] runs with.
#[derive(Clone)]
pub struct ServerConfig {
    /// The kernels, one per backend served; the first is the default backend. Their
    /// session idle timeout should be at least [`ServerLimits::max_idle_timeout`]: the
    /// server closes idle sandboxes itself.
    pub kernels: Vec<Kernel>,
    /// API keys; none makes an open server (loopback only).
    pub api_keys: ApiKeys,
    /// Caps.
    pub limits: ServerLimits,
    /// How long running executions may go on after a shutdown signal before they are
    /// stopped (default 10 s).
    pub shutdown_grace: Duration,
}

impl ServerConfig {
    /// A server of `kernel` (its backend the only one), open, with the default caps.
    pub fn new(kernel: Kernel) -> Self {
        ServerConfig {
            kernels: vec![kernel],
            api_keys: ApiKeys::none(),
            limits: ServerLimits::default(),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Refuses to listen on `addr` when it is not loopback and there are no API keys: anyone
/// who can reach the address could run code.
pub fn check_listen(addr: &SocketAddr, keys: &ApiKeys) -> Result<()> {
    if keys.is_empty() && !addr.ip().is_loopback() {
        return Err(Error::invalid(
            format!(
                "refusing to listen on {addr} without API keys: anyone who can reach it could run code"
            ),
            "give --api-keys FILE (one key a line, e.g. from `openssl rand -hex 32`), or listen on loopback (127.0.0.1:PORT)",
        ));
    }
    Ok(())
}

/// Parses a `--listen` address: `IP:PORT`, `[IPv6]:PORT`, or `localhost:PORT`.
pub fn parse_listen(text: &str) -> Result<SocketAddr> {
    let bad = || {
        Error::invalid(
            format!("{text:?} is not an address to listen on"),
            "give IP:PORT, e.g. 127.0.0.1:8765, [::1]:8765 or localhost:8765 (port 0 picks a free one)",
        )
    };
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    match text.rsplit_once(':') {
        Some((host, port)) if host.eq_ignore_ascii_case("localhost") => {
            let port: u16 = port.parse().map_err(|_| bad())?;
            Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
        }
        _ => Err(bad()),
    }
}

/// What every handler shares: cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct ServerState(Arc<StateInner>);

impl std::ops::Deref for ServerState {
    type Target = StateInner;
    fn deref(&self) -> &StateInner {
        &self.0
    }
}

/// The fields of [`ServerState`].
pub struct StateInner {
    /// The kernels, one per backend; the first is the default.
    pub kernels: Vec<Kernel>,
    /// API keys.
    pub keys: ApiKeys,
    /// Caps.
    pub limits: ServerLimits,
    /// Counters for `/metrics`.
    pub metrics: metrics::Metrics,
    table: sandboxes::Table,
    /// Set once a shutdown began: new sandboxes and executions are refused (503).
    draining: AtomicBool,
    /// Cancelled when the shutdown grace ran out: every running execution stops.
    kill: CancellationToken,
    /// Executions running now.
    running: AtomicUsize,
    /// Woken whenever an execution ends.
    running_changed: tokio::sync::Notify,
    shutdown_grace: Duration,
    readiness: health::ReadinessCache,
    /// The OpenAPI document, as served.
    openapi: String,
    /// The default kernel's tasks and their workers (opened when the server starts).
    tasks: tokio::sync::OnceCell<crate::tasks::Tasks>,
}

impl ServerState {
    /// The state of a server with `config`.
    pub fn new(config: ServerConfig) -> Result<Self> {
        if config.kernels.is_empty() {
            return Err(Error::invalid(
                "a server needs at least one kernel",
                "pass the kernel of each backend to serve in ServerConfig::kernels",
            ));
        }
        Ok(ServerState(Arc::new(StateInner {
            kernels: config.kernels,
            keys: config.api_keys,
            limits: config.limits,
            metrics: metrics::Metrics::default(),
            table: sandboxes::Table::default(),
            draining: AtomicBool::new(false),
            kill: CancellationToken::new(),
            running: AtomicUsize::new(0),
            running_changed: tokio::sync::Notify::new(),
            shutdown_grace: config.shutdown_grace,
            readiness: health::ReadinessCache::default(),
            openapi: openapi().to_json().map_err(|e| {
                Error::Internal(format!("the OpenAPI document does not serialise: {e}"))
            })?,
            tasks: tokio::sync::OnceCell::new(),
        })))
    }

    /// The kernel of `backend` (the default one for `None`).
    pub fn kernel(&self, backend: Option<&str>) -> Result<&Kernel, ApiError> {
        match backend {
            None => Ok(&self.kernels[0]),
            Some(name) => self
                .kernels
                .iter()
                .find(|k| k.runtime().name() == name)
                .ok_or_else(|| {
                    let served: Vec<&str> =
                        self.kernels.iter().map(|k| k.runtime().name()).collect();
                    ApiError::bad_request(
                        format!("backend {name:?} is not served here"),
                        format!(
                            "use one of: {} (the server chooses with `agentkernel serve --backend NAME`)",
                            served.join(", ")
                        ),
                    )
                }),
        }
    }

    /// The default kernel's tasks (their store in its data dir, their workers started on
    /// first use: [`serve`] starts them, so tasks left queued run again).
    pub async fn tasks(&self) -> Result<&crate::tasks::Tasks, ApiError> {
        self.tasks
            .get_or_try_init(|| {
                crate::tasks::Tasks::open(self.kernels[0].clone(), Default::default())
            })
            .await
            .map_err(ApiError::from)
    }

    /// Whether a shutdown began.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// 503 while shutting down.
    pub fn refuse_if_draining(&self) -> Result<(), ApiError> {
        if self.is_draining() {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is shutting down",
                "retry against another server, or after it restarts",
            )
            .retry_after(5));
        }
        Ok(())
    }

    /// Executions running now.
    pub fn running_executions(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// The shutdown: refuse new work, let running executions go on up to the grace, stop
    /// the rest, then close every sandbox.
    async fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + self.shutdown_grace;
        loop {
            let changed = self.running_changed.notified();
            if self.running_executions() == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                tracing::warn!(
                    running = self.running_executions(),
                    "shutdown grace over: stopping the running executions"
                );
                break;
            }
        }
        self.kill.cancel();
        self.close_all().await;
    }
}

/// The OpenAPI document's frame: what the handlers do not say (title, security schemes).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "AgentKernel",
        description = "Run agent-written Python in sandboxes: the native API (docs/http.md)."
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&SecuritySchemes),
    security(("bearer" = []), ("api_key" = []))
)]
struct ApiDoc;

struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
    }
}

/// The routes without a key, those behind it, and the OpenAPI document of both (made from
/// the same registrations, so it lists exactly the routes served).
fn parts() -> (
    Router<ServerState>,
    Router<ServerState>,
    utoipa::openapi::OpenApi,
) {
    use utoipa::OpenApi as _;
    let (open, mut doc) = utoipa_axum::router::OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(health::open_routes())
        .split_for_parts();
    let (authed, authed_doc) = utoipa_axum::router::OpenApiRouter::new()
        .merge(v1::routes())
        .merge(health::authed_routes())
        .split_for_parts();
    doc.merge(authed_doc);
    // axum's catch-all `{*path}` is OpenAPI's `{path}`.
    let paths = std::mem::take(&mut doc.paths.paths);
    doc.paths.paths = paths
        .into_iter()
        .map(|(path, item)| (path.replace("{*", "{"), item))
        .collect();
    (open, authed, doc)
}

/// The OpenAPI 3.1 document of [`router`] (served at `/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    parts().2
}

/// The whole API: the native routes under `/v1` and the health routes, behind the API-key
/// middleware (except `/healthz`, `/readyz` and `/openapi.json`), with the body cap, and
/// JSON for unknown routes. Another API (E2B's) merges its `Router<ServerState>` here.
pub fn router(state: ServerState) -> Router {
    let (open, authed, _) = parts();
    let authed = authed.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        auth::require_key,
    ));
    Router::new()
        .merge(open)
        .merge(authed)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // E2B's traffic (by its headers and paths) goes to the E2B routes: see `e2b`.
        .layer(axum::middleware::from_fn_with_state(
            e2b::E2bRouters::new(state.clone()),
            e2b::dispatch,
        ))
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .with_state(state)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "route_not_found",
        format!("no route {}", uri.path()),
        "see docs/http.md for the routes (all under /v1, plus /healthz, /readyz and /metrics)",
    )
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not a method of {}", uri.path()),
        "see docs/http.md for each route's methods",
    )
}

/// Serves the API on `listener` until `shutdown` resolves (the CLI passes SIGTERM/SIGINT):
/// then stops accepting, lets running executions finish up to the grace, stops the rest
/// (their status says so) and closes every sandbox. Starts the reaper of idle and expired
/// sandboxes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let state = ServerState::new(config)?;
    serve_state(listener, state, shutdown).await
}

/// [`serve`] with a state made beforehand (to keep a handle on it, e.g. in tests).
pub async fn serve_state(
    listener: tokio::net::TcpListener,
    state: ServerState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("reading the listening address", e))?;
    check_listen(&addr, &state.keys)?;
    // The task workers start now: tasks queued before a restart run again.
    if let Err(e) = state.tasks().await {
        tracing::warn!(error = %e, "the task store could not be opened: task routes will fail");
    }
    let reaper = tokio::spawn(sandboxes::reap(state.clone()));
    let app = router(state.clone());
    // The drain runs beside axum's graceful shutdown (which waits for open responses, the
    // streams of running executions among them, and so for the drain to end them).
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let drainer = state.clone();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down");
        tokio::spawn(async move {
            drainer.drain().await;
            let _ = drained_tx.send(());
        });
    };
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(signal)
        .await
        .map_err(|e| Error::io("serving HTTP", e));
    // Sandboxes are all closed before returning, also when serving failed.
    if drained_rx.await.is_err() {
        state.kill.cancel();
        state.close_all().await;
    }
    reaper.abort();
    served
}

/// Resolves on SIGTERM or SIGINT (what the CLI shuts down on).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the server runs until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse_and_open_servers_stay_on_loopback() {
        assert_eq!(
            parse_listen("127.0.0.1:0").unwrap(),
            "127.0.0.1:0".parse().unwrap()
        );
        assert_eq!(
            parse_listen("localhost:8765").unwrap(),
            "127.0.0.1:8765".parse().unwrap()
        );
        assert_eq!(parse_listen("[::1]:9").unwrap(), "[::1]:9".parse().unwrap());
        for bad in [
            "",
            "8765",
            "example.com:80",
            "127.0.0.1",
            "1.2.3.4:99999",
            ":80",
        ] {
            assert!(
                parse_listen(bad)
                    .unwrap_err()
                    .to_string()
                    .contains("127.0.0.1:8765"),
                "{bad}"
            );
        }
        let none = ApiKeys::none();
        check_listen(&"127.0.0.1:1".parse().unwrap(), &none).unwrap();
        check_listen(&"[::1]:1".parse().unwrap(), &none).unwrap();
        for open in ["0.0.0.0:1", "192.168.1.2:1", "[::]:1"] {
            let e = check_listen(&open.parse().unwrap(), &none).unwrap_err();
            assert!(e.to_string().contains("--api-keys"), "{e}");
        }
        let keys = ApiKeys::from_keys(["0123456789abcdef0123"]).unwrap();
        check_listen(&"0.0.0.0:1".parse().unwrap(), &keys).unwrap();
    }

    /// Arbitrary `--listen` values never panic.
    #[test]
    fn arbitrary_listen_addresses_never_panic() {
        const PIECES: &[&str] = &[
            "localhost",
            ":",
            "[",
            "]",
            "::1",
            "127.0.0.1",
            "0",
            "65535",
            "65536",
            "-1",
            "é",
            "%",
            " ",
            "LOCALHOST",
            "1.2.3",
        ];
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut text = String::new();
            for i in 0..(seed % 6) as usize {
                text.push_str(
                    PIECES[(seed.rotate_left(i as u32 * 7) % PIECES.len() as u64) as usize],
                );
            }
            let _ = parse_listen(&text);
        }
    }
}
