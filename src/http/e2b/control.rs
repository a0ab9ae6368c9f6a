//! E2B's control API (`E2B_API_URL`): create, list, get, kill, set the timeout of and
//! connect to sandboxes. Every refusal is `{"code": <status>, "message": "… (hint)"}`, the
//! only error shape the SDK's generated client parses (docs/e2b-protocol.md §3).
//!
//! Timeouts: E2B's `timeout` (create, `set_timeout`, connect) is the time from now at which
//! the sandbox ends, whether used or not. Here it is the sandbox's lifetime (default 300 s,
//! E2B's; capped at the server's maximum lifetime, 24 h by default); an E2B sandbox gets the
//! server's largest idle timeout, so it is never closed for idleness before its E2B timeout
//! (unless the server's maximum idle timeout is shorter than the timeout asked for).
//! `set_timeout` sets the lifetime anew from now (it may shorten it, as on E2B); connect
//! extends it when the `timeout` given ends later than the current end.
//!
//! Templates: every `templateID` means "the server's default backend" (E2B's
//! `code-interpreter-v1` and `base` among them); it is reported back as given.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{CLIENT_ID, E2bState, ENVD_VERSION, e2b_error, plain_error, rfc3339};
use crate::http::{KeyId, SandboxEntry, SandboxOptions};

/// E2B's default sandbox timeout, when create gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// The control routes, behind their API-key check (`require_key`).
pub fn routes(state: E2bState) -> Router {
    Router::new()
        .route("/sandboxes", post(create).get(list))
        .route("/v2/sandboxes", post(create).get(list))
        .route("/sandboxes/{id}", get(info).delete(kill))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/sandboxes/{id}/connect", post(connect))
        .route("/v2/sandboxes/{id}/connect", post(connect))
        .fallback(unsupported)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_key,
        ))
        .with_state(state)
}

/// The API key check of the control API: `X-API-Key` (what the SDK sends) or
/// `Authorization: Bearer`, one of the server's keys; an open server lets everyone in.
async fn require_key(State(state): State<E2bState>, mut req: Request, next: Next) -> Response {
    let keys = &state.server.keys;
    if keys.is_empty() {
        req.extensions_mut().insert(KeyId::anonymous());
        return next.run(req).await;
    }
    let headers = req.headers();
    let key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .or_else(|| {
            headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
        });
    match key.and_then(|k| keys.check(k)) {
        Some(who) => {
            req.extensions_mut().insert(who);
            next.run(req).await
        }
        None => plain_error(
            StatusCode::UNAUTHORIZED,
            "the API key is missing or not one of this server's: set E2B_API_KEY to a key of its --api-keys file",
        ),
    }
}

/// Routes of E2B's API that agentkernel does not have: 501 with what is missing (501,
/// not 404, which the SDK reads as "sandbox not found", nor 409, "already paused").
async fn unsupported(method: Method, uri: Uri) -> Response {
    let path = uri.path();
    let what = if path.contains("template") {
        "templates and template builds are not supported by agentkernel; use the default template (any templateID runs the server's default backend)"
    } else if path.ends_with("/pause") || path.ends_with("/resume") {
        "pause and resume are not supported by agentkernel (no snapshots on its backends); keep the sandbox running, or set a longer timeout"
    } else if path.contains("snapshot") || path.ends_with("/fork") {
        "snapshots and fork are not supported by agentkernel"
    } else if path.ends_with("/metrics") || path.ends_with("/logs") {
        "sandbox metrics and logs are not supported by agentkernel; see the server's /metrics and its log"
    } else if path.ends_with("/network") {
        "network settings are not supported by agentkernel: its sandboxes have no network"
    } else if path.ends_with("/refreshes") {
        "refreshes are not supported by agentkernel; use set_timeout"
    } else {
        "this part of the E2B API is not supported by agentkernel (see docs/e2b.md for what is)"
    };
    plain_error(
        StatusCode::NOT_IMPLEMENTED,
        &format!("{method} {path}: {what}"),
    )
}

/// The create body (`NewSandbox`); unknown keys are ignored, as E2B's server does.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct NewSandbox {
    #[serde(rename = "templateID")]
    template_id: Option<String>,
    timeout: Option<f64>,
    metadata: Option<BTreeMap<String, String>>,
    env_vars: Option<BTreeMap<String, String>>,
    auto_pause: Option<bool>,
    #[serde(rename = "allow_internet_access")]
    allow_internet_access: Option<bool>,
    volume_mounts: Option<Value>,
}

fn bad_request(message: &str) -> Response {
    plain_error(StatusCode::BAD_REQUEST, message)
}

fn parse<T: for<'de> Deserialize<'de> + Default>(body: &Bytes) -> Result<T, Response> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        bad_request(&format!(
            "the request body is not the JSON expected: {e} (send a JSON object as the E2B SDK does)"
        ))
    })
}

/// `timeout` seconds as a lifetime: at least 1 s, at most the server's maximum.
fn lifetime(state: &E2bState, timeout: Option<f64>) -> Result<Duration, Response> {
    let Some(t) = timeout else {
        return Ok(DEFAULT_TIMEOUT.min(state.server.limits.max_lifetime));
    };
    if !t.is_finite() || t < 0.0 {
        return Err(bad_request(&format!(
            "timeout {t} is not a number of seconds (give a positive number)"
        )));
    }
    let max = state.server.limits.max_lifetime;
    // Clamped before the conversion: a huge number would not fit a Duration.
    Ok(Duration::from_secs_f64(t.clamp(1.0, max.as_secs_f64().max(1.0))).min(max))
}

async fn create(
    State(state): State<E2bState>,
    Extension(who): Extension<KeyId>,
    body: Bytes,
) -> Response {
    let body: NewSandbox = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if body.auto_pause == Some(true) {
        return bad_request(
            "autoPause is not supported by agentkernel (no snapshots on its backends): leave it off",
        );
    }
    if body.allow_internet_access == Some(true) {
        return bad_request(
            "allow_internet_access is not supported by agentkernel: its sandboxes have no network; leave it out",
        );
    }
    if body
        .volume_mounts
        .as_ref()
        .is_some_and(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()))
    {
        return bad_request(
            "volumeMounts are not supported by agentkernel; each sandbox has its own workspace at /home/user",
        );
    }
    let lifetime = match lifetime(&state, body.timeout) {
        Ok(l) => l,
        Err(r) => return r,
    };
    let template = body
        .template_id
        .unwrap_or_else(|| "code-interpreter-v1".to_owned());
    let options = SandboxOptions {
        lifetime: Some(lifetime),
        // No idle timeout on E2B: the sandbox lives until its timeout.
        idle_timeout: Some(state.server.limits.max_idle_timeout),
        metadata: body.metadata.unwrap_or_default(),
        session: crate::session::SessionOptions {
            limits: None,
            env: body.env_vars.unwrap_or_default(),
            tools: None,
        },
        ..SandboxOptions::default()
    };
    let entry = match state.server.create_sandbox(&who, options).await {
        Ok(e) => e,
        Err(e) => return e2b_error(e),
    };
    let token = state
        .registry
        .insert(&state.server, &entry.id, &who, &template);
    // Finds the sandbox's root for envd's file operations (see `view`).
    if let Some(e2b) = state.registry.get(&entry.id) {
        let _turn = e2b.queue.clone().lock_owned().await;
        state.discover_view(&entry, &e2b).await;
    }
    (
        StatusCode::CREATED,
        Json(sandbox_json(&entry, &template, &token)),
    )
        .into_response()
}

/// The `Sandbox` answer of create and connect.
fn sandbox_json(entry: &SandboxEntry, template: &str, token: &str) -> Value {
    json!({
        "templateID": template,
        "sandboxID": entry.id,
        "clientID": CLIENT_ID,
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": token,
    })
}

/// The `ListedSandbox` keys (also those of `SandboxDetail`).
fn listed_json(entry: &SandboxEntry, template: &str) -> Value {
    let limits = &entry.limits;
    json!({
        "templateID": template,
        "sandboxID": entry.id,
        "clientID": CLIENT_ID,
        "startedAt": rfc3339(entry.created_at),
        "endAt": rfc3339(entry.expires_at()),
        "cpuCount": 1,
        "memoryMB": limits.memory_bytes.map(|b| b >> 20).unwrap_or(0),
        "diskSizeMB": entry.session().workspace().quota.map(|b| b >> 20).unwrap_or(0),
        "state": "running",
        "envdVersion": ENVD_VERSION,
        "metadata": entry.metadata,
    })
}

/// The template a sandbox was created with (`base` for one made through the native API).
fn template_of(state: &E2bState, id: &str) -> String {
    state
        .registry
        .get(id)
        .map(|e| e.template.clone())
        .unwrap_or_else(|| "base".to_owned())
}

async fn list(State(state): State<E2bState>, Extension(who): Extension<KeyId>) -> Response {
    // Only sandboxes made through E2B: the others have no envdAccessToken to reach them by.
    let all: Vec<Value> = state
        .server
        .sandboxes(&who)
        .iter()
        .filter(|e| state.registry.get(&e.id).is_some())
        .map(|e| listed_json(e, &template_of(&state, &e.id)))
        .collect();
    Json(all).into_response()
}

fn not_found(id: &str) -> Response {
    plain_error(
        StatusCode::NOT_FOUND,
        &format!(
            "sandbox {id} was not found (it was killed, or its timeout ended; list yours with Sandbox.list())"
        ),
    )
}

/// `who`'s E2B sandbox `id`.
fn lookup(
    state: &E2bState,
    who: &KeyId,
    id: &str,
) -> Result<std::sync::Arc<SandboxEntry>, Response> {
    let e2b = state.registry.get(id).ok_or_else(|| not_found(id))?;
    if &e2b.owner != who {
        return Err(not_found(id));
    }
    state.server.sandbox(who, id).map_err(|_| {
        state.registry.remove(id);
        not_found(id)
    })
}

async fn info(
    State(state): State<E2bState>,
    Extension(who): Extension<KeyId>,
    Path(id): Path<String>,
) -> Response {
    match lookup(&state, &who, &id) {
        Ok(entry) => Json(listed_json(&entry, &template_of(&state, &id))).into_response(),
        Err(r) => r,
    }
}

async fn kill(
    State(state): State<E2bState>,
    Extension(who): Extension<KeyId>,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = lookup(&state, &who, &id) {
        return r;
    }
    state.registry.remove(&id);
    match state.server.close_sandbox(&who, &id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) if e.status == StatusCode::NOT_FOUND => not_found(&id),
        Err(e) => e2b_error(e),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TimeoutBody {
    timeout: Option<f64>,
}

async fn set_timeout(
    State(state): State<E2bState>,
    Extension(who): Extension<KeyId>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let body: TimeoutBody = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(t) = body.timeout else {
        return bad_request("the body has no timeout: send {\"timeout\": SECONDS}");
    };
    let entry = match lookup(&state, &who, &id) {
        Ok(e) => e,
        Err(r) => return r,
    };
    match lifetime(&state, Some(t)) {
        Ok(l) => {
            entry.set_lifetime(l);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(r) => r,
    }
}

async fn connect(
    State(state): State<E2bState>,
    Extension(who): Extension<KeyId>,
    Path(id): Path<String>,
    _headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: TimeoutBody = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let entry = match lookup(&state, &who, &id) {
        Ok(e) => e,
        Err(r) => return r,
    };
    if let Some(t) = body.timeout {
        match lifetime(&state, Some(t)) {
            // Extended, never shortened, as E2B does on connect.
            Ok(l) if SystemTime::now() + l > entry.expires_at() => entry.set_lifetime(l),
            Ok(_) => {}
            Err(r) => return r,
        }
    }
    let Some(e2b) = state.registry.get(&id) else {
        return not_found(&id);
    };
    Json(sandbox_json(&entry, &e2b.template, &e2b.token)).into_response()
}
