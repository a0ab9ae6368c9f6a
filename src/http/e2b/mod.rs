//! E2B compatibility: the wire formats the official E2B SDKs speak, so that unmodified E2B
//! code runs against `agentkernel serve` (issue 19, point 3).
//!
//! `docs/e2b-protocol.md` is the digest of what the SDKs (`e2b` 2.63.0,
//! `e2b-code-interpreter` 2.11.5) send and expect, call by call; `docs/e2b.md` says what is
//! supported, refused, and how E2B's notions map onto ours; `tests/e2b/sdk_check.py` is the
//! real-client check (run by `tests/e2b.rs`).
//!
//! One listener serves E2B's three "hosts". [`dispatch`] (a middleware in front of the whole
//! router) picks by the request:
//! - `E2b-Sandbox-Id` header → the sandbox's envd (`E2b-Sandbox-Port: 49983`, [`envd`]:
//!   files, filesystem and process RPCs) or its code interpreter (`49999`, [`interp`]:
//!   `POST /execute`). The API key is not sent there: these requests carry
//!   `X-Access-Token`, the per-sandbox random secret the create answer gave
//!   (`envdAccessToken`), checked in constant time ([`Registry::authorize`]).
//! - a path of E2B's control API (`/sandboxes…`, `/v2/…`, `/templates…`, …) → [`control`],
//!   behind its own API-key check (`X-API-Key`, the server's keys) whose refusals take
//!   E2B's error shape `{"code": <status>, "message": "…"}`.
//! - anything else → the native API, unchanged.
//!
//! An E2B sandbox is a normal sandbox of the server (a kernel session: state persists, the
//! kernel's tools are importable, caps and reaper apply); [`Registry`] only adds what E2B
//! needs on top: its access token, its template name, and a queue so that executions and
//! commands on one sandbox run one after another, as E2B's single kernel does.

// The handlers' helpers return the finished refusal (`Response`, 128 bytes), made at most
// once per request: boxing it would buy nothing.
#![allow(clippy::result_large_err)]

pub mod connect;
pub mod control;
pub mod envd;
pub mod interp;
pub mod view;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;
use tower::ServiceExt as _;

use super::{KeyId, SandboxEntry, ServerState};

/// The envd version the server reports: at least 0.5.7 (streamed octet-stream uploads), below
/// 0.6.2 (file metadata, which the SDK then refuses itself). See docs/e2b-protocol.md §1.
pub const ENVD_VERSION: &str = "0.5.7";
/// envd's port, in `E2b-Sandbox-Port`.
pub const ENVD_PORT: &str = "49983";
/// The code interpreter's port.
pub const INTERPRETER_PORT: &str = "49999";
/// The home directory E2B programs expect; it is the sandbox's workspace.
pub const HOME: &str = "/home/user";
/// `clientID` in E2B's answers.
pub const CLIENT_ID: &str = "agentkernel";

/// What E2B adds to a sandbox of the server.
#[derive(Debug)]
pub struct E2bSandbox {
    /// Who created it (the sandbox is looked up in the server's table as theirs).
    pub owner: KeyId,
    /// The `envdAccessToken`: 256 random bits as hex.
    pub token: String,
    /// The template name it was created with (reported back as it was).
    pub template: String,
    /// Held by a running execution or command: the next one waits (E2B queues them too).
    pub queue: Arc<tokio::sync::Mutex<()>>,
    /// The sandbox's root as its programs see it, once found (see [`view`]).
    pub view: Mutex<ViewState>,
}

/// What is known of an E2B sandbox's [`view::RootView`].
#[derive(Debug, Clone, Default)]
pub enum ViewState {
    /// Not looked for yet.
    #[default]
    Unknown,
    /// Looked for, not found (a backend without a host process): the host directory is used.
    Absent,
    /// Found (maybe stale: check [`view::RootView::is_current`]).
    Found(Arc<view::RootView>),
}

/// The E2B sandboxes, by id. Entries of sandboxes the server closed (deleted through the
/// native API, reaped) are dropped when next looked up or when a sandbox is created.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<HashMap<String, Arc<E2bSandbox>>>>,
}

impl Registry {
    /// Records a sandbox just created for `owner` and returns its token.
    pub fn insert(&self, state: &ServerState, id: &str, owner: &KeyId, template: &str) -> String {
        let token = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        if let Ok(mut m) = self.inner.lock() {
            m.retain(|id, e| state.sandbox(&e.owner, id).is_ok());
            m.insert(
                id.to_owned(),
                Arc::new(E2bSandbox {
                    owner: owner.clone(),
                    token: token.clone(),
                    template: template.to_owned(),
                    queue: Arc::default(),
                    view: Mutex::default(),
                }),
            );
        }
        token
    }

    /// The E2B side of sandbox `id`, if it was created through E2B.
    pub fn get(&self, id: &str) -> Option<Arc<E2bSandbox>> {
        self.inner.lock().ok().and_then(|m| m.get(id).cloned())
    }

    /// Drops `id` (killed).
    pub fn remove(&self, id: &str) {
        if let Ok(mut m) = self.inner.lock() {
            m.remove(id);
        }
    }

    /// The live sandbox a request with `headers` is for, after checking its
    /// `X-Access-Token` in constant time. Refusals are what the SDK reads well: 502 "The
    /// sandbox … was not found" for an unknown or closed sandbox (→
    /// `SandboxNotRunningException`), 401 for a missing or wrong token.
    pub fn authorize(
        &self,
        state: &ServerState,
        headers: &HeaderMap,
    ) -> Result<(Arc<SandboxEntry>, Arc<E2bSandbox>), Response> {
        let id = headers
            .get("e2b-sandbox-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let gone = || {
            plain_error(
                StatusCode::BAD_GATEWAY,
                &format!("The sandbox {id} was not found"),
            )
        };
        let Some(e2b) = self.get(&id) else {
            return Err(gone());
        };
        let sent = headers
            .get("x-access-token")
            .map(|v| v.as_bytes())
            .unwrap_or(b"");
        if !bool::from(sent.ct_eq(e2b.token.as_bytes())) {
            return Err(plain_error(
                StatusCode::UNAUTHORIZED,
                "the X-Access-Token is not this sandbox's envdAccessToken: connect with Sandbox.connect(id) to get it",
            ));
        }
        match state.sandbox(&e2b.owner, &id) {
            Ok(entry) => Ok((entry, e2b)),
            Err(_) => {
                self.remove(&id);
                Err(gone())
            }
        }
    }
}

/// The state of the E2B routes: the server's, and the E2B sandboxes.
#[derive(Clone)]
pub struct E2bState {
    /// The server.
    pub server: ServerState,
    /// The E2B sandboxes.
    pub registry: Registry,
}

impl E2bSandbox {
    /// Waits for this sandbox's turn (executions and commands queue, as on E2B), and then
    /// for an abandoned run to be cleaned up: a client that went away releases the turn at
    /// once, while the server resets the sandbox a moment longer. Gives up waiting on the
    /// latter after `limit` (an execution started through the native API; the caller then
    /// gets its 409).
    pub async fn turn(
        &self,
        entry: &SandboxEntry,
        limit: std::time::Duration,
    ) -> tokio::sync::OwnedMutexGuard<()> {
        let turn = self.queue.clone().lock_owned().await;
        let deadline = tokio::time::Instant::now() + limit;
        while entry.is_busy() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        turn
    }
}

impl E2bState {
    /// Looks for the sandbox's [`view::RootView`] (runs a one-line execution in it: call
    /// it while holding the sandbox's turn), and records what was found.
    pub async fn discover_view(
        &self,
        entry: &Arc<SandboxEntry>,
        e2b: &E2bSandbox,
    ) -> Option<Arc<view::RootView>> {
        // A fresh random marker each time: what an earlier program saw of one is no use.
        let marker = uuid::Uuid::new_v4().simple().to_string();
        let req = agentkernel_core::ExecRequest::new(view::marker_program(&marker));
        let found = match self.server.execute(entry, req) {
            Ok(run) => match run.finish().await {
                (super::ExecEnd::Finished(o), _) if o.status.is_ok() => {
                    // The sandbox's own root, from its init process (no search of /proc:
                    // a root found by its marker could be another sandbox's that was made
                    // to hold the same name), then checked to hold this marker.
                    match entry.session().host_root().await {
                        Some(root) => {
                            tokio::task::spawn_blocking(move || view::RootView::open(root, &marker))
                                .await
                                .ok()
                                .flatten()
                                .map(Arc::new)
                        }
                        None => None,
                    }
                }
                _ => None,
            },
            Err(_) => None,
        };
        if let Ok(mut v) = e2b.view.lock() {
            *v = match &found {
                Some(f) => ViewState::Found(f.clone()),
                None => ViewState::Absent,
            };
        }
        found
    }
}

/// The routers [`dispatch`] sends requests to.
#[derive(Clone)]
pub struct E2bRouters {
    control: Router,
    envd: Router,
    interpreter: Router,
}

impl E2bRouters {
    /// The E2B routes over `server`.
    pub fn new(server: ServerState) -> Self {
        let state = E2bState {
            server,
            registry: Registry::default(),
        };
        E2bRouters {
            control: control::routes(state.clone()),
            envd: envd::routes(state.clone()),
            interpreter: interp::routes(state),
        }
    }
}

/// Whether `path` is one of E2B's control API's (none of them is the native API's).
pub fn is_control_path(path: &str) -> bool {
    const PREFIXES: [&str; 9] = [
        "/sandboxes",
        "/v2/",
        "/v3/",
        "/templates",
        "/volumes",
        "/secrets",
        "/teams",
        "/access-tokens",
        "/api-keys",
    ];
    PREFIXES
        .iter()
        .any(|p| path == p.trim_end_matches('/') || path.starts_with(p))
}

/// The middleware in front of the whole router: E2B's sandbox traffic (by its
/// `E2b-Sandbox-Id` header) and control API (by path) go to the E2B routes, the rest on.
pub async fn dispatch(State(routers): State<E2bRouters>, req: Request, next: Next) -> Response {
    if let Some(port) = req.headers().get("e2b-sandbox-id").map(|_| {
        req.headers()
            .get("e2b-sandbox-port")
            .and_then(|v| v.to_str().ok())
            .unwrap_or(ENVD_PORT)
            .to_owned()
    }) {
        let router = match port.as_str() {
            ENVD_PORT => routers.envd,
            INTERPRETER_PORT => routers.interpreter,
            other => {
                return plain_error(
                    StatusCode::BAD_GATEWAY,
                    &format!(
                        "port {other} of the sandbox is not served by agentkernel (only envd, 49983, and the code interpreter, 49999)"
                    ),
                );
            }
        };
        return router.oneshot(req).await.into_response();
    }
    if is_control_path(req.uri().path()) {
        return routers.control.oneshot(req).await.into_response();
    }
    next.run(req).await
}

/// `{"code": <status>, "message": …}` with `status`: the shape every E2B client reads (the
/// control API's `Error` model; envd's `get_message`).
pub fn plain_error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({"code": status.as_u16(), "message": message});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(body.to_string()),
    )
        .into_response()
}

/// A server error ([`super::ApiError`]) in E2B's shape: its message and hint in `message`
/// (what the SDK shows), its status, and its `Retry-After`.
pub fn e2b_error(e: super::ApiError) -> Response {
    let mut resp = plain_error(e.status, &format!("{} ({})", e.message, e.hint));
    if let Some(secs) = e.retry_after
        && let Ok(v) = header::HeaderValue::from_str(&secs.to_string())
    {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// Now as RFC 3339 (E2B's timestamps).
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    connect::rfc3339_utc(d.as_secs() as i64, d.subsec_nanos())
}
