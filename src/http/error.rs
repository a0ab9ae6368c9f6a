//! Every refusal of the HTTP server, in one shape: `{"error": {"code", "message", "hint"}}`
//! with the right status ([`ApiError`]), and the JSON body extractor whose rejections take
//! that shape too ([`JsonBody`]).

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use agentkernel_core::Error;

/// An HTTP refusal: a status, a stable machine-readable `code`, what went wrong and what to
/// do about it; `retry_after` (seconds) becomes a `Retry-After` header.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// Stable identifier, e.g. `sandbox_not_found`.
    pub code: &'static str,
    /// What went wrong.
    pub message: String,
    /// What to do about it.
    pub hint: String,
    /// Seconds after which a retry may succeed (429 and 503).
    pub retry_after: Option<u64>,
}

/// The wire form of [`ApiError`].
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The refusal.
    pub error: ErrorDetail,
}

/// `{"code", "message", "hint"}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable identifier.
    pub code: &'static str,
    /// What went wrong.
    pub message: String,
    /// What to do about it.
    pub hint: String,
}

/// The refusals every route may answer, for the OpenAPI document.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // only its derived documentation is used
pub enum ErrorResponses {
    /// A refusal of the request: 400 bad input, 401 no or bad key, 404, 409, 413, 429
    /// (with `Retry-After`).
    #[response(
        status = "4XX",
        description = "refused: `{\"error\": {\"code\", \"message\", \"hint\"}}`"
    )]
    Client(ErrorBody),
    /// The server could not do it: 503 (a backend unavailable, shutting down), 500.
    #[response(
        status = "5XX",
        description = "failed: `{\"error\": {\"code\", \"message\", \"hint\"}}`"
    )]
    Server(ErrorBody),
}

impl ApiError {
    /// A refusal with `status`, `code`, `message` and `hint`.
    pub fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            hint: hint.into(),
            retry_after: None,
        }
    }

    /// 400 `invalid_request`.
    pub fn bad_request(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message, hint)
    }

    /// 404 for sandbox `id` (also for one another key owns: its existence is not revealed).
    pub fn sandbox_not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "sandbox_not_found",
            format!("no sandbox {id:?}"),
            "list yours with GET /v1/sandboxes; a sandbox ends when deleted, after its idle timeout or its maximum lifetime",
        )
    }

    /// With a `Retry-After` of `secs`.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message.clone(),
                hint: self.hint.clone(),
            },
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.status, self.code, self.message)
    }
}

impl From<Error> for ApiError {
    /// The kernel's error kinds, each with its status; the kernel's own hint is kept.
    fn from(e: Error) -> Self {
        let hint = e.hint().map(str::to_owned).unwrap_or_default();
        // The message without the " Hint: ..." the kernel's Display appends.
        let full = e.to_string();
        let message = match full.find(". Hint: ") {
            Some(at) => full[..at].to_owned(),
            None => full.clone(),
        };
        let (status, code, retry) = match &e {
            Error::InvalidRequest { .. } => (StatusCode::BAD_REQUEST, "invalid_request", None),
            Error::Unsupported { .. } => (StatusCode::BAD_REQUEST, "unsupported", None),
            Error::Unavailable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "backend_unavailable",
                Some(30),
            ),
            Error::ToolSource { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "tool_source_unavailable",
                Some(30),
            ),
            Error::PoolExhausted { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "pool_exhausted", Some(1))
            }
            Error::WorkspaceBusy { .. } => (StatusCode::CONFLICT, "workspace_busy", None),
            Error::LimitExceeded { .. } => (StatusCode::CONFLICT, "limit_exceeded", None),
            Error::SandboxLost { .. } => (StatusCode::GONE, "sandbox_gone", None),
            Error::Io { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "io_error", None),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal", None),
        };
        let hint = if hint.is_empty() {
            match code {
                "io_error" => {
                    "see the server's log; check the data dir's disk space and permissions"
                        .to_owned()
                }
                "limit_exceeded" => {
                    "free some room (e.g. delete files from the workspace), then retry".to_owned()
                }
                _ => "this is a bug in AgentKernel: please report it with the server's log"
                    .to_owned(),
            }
        } else {
            hint
        };
        ApiError {
            status,
            code,
            message,
            hint,
            retry_after: retry,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// `axum::Json`, whose rejections are [`ApiError`]s: 413 `body_too_large` past the body
/// cap, 400 `invalid_json` for anything else (bad syntax, wrong fields, no JSON content
/// type).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    axum::Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(JsonBody(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let text = rejection.body_text();
    match rejection {
        _ if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "the request body is over the server's body cap",
            "send a smaller body: put large data in files instead of the program",
        ),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "the request body is not declared as JSON",
            "send the header Content-Type: application/json",
        ),
        _ => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the request body is not valid for this route: {text}"),
            "send a JSON object with the fields this route documents (see /openapi.json or docs/http.md)",
        ),
    }
}
