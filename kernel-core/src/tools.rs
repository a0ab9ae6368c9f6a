//! The host side of tool calls: what a sandbox can call, and how.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A tool as the sandbox sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// Name the program calls it by.
    pub name: String,
    /// What it does (becomes the Python docstring).
    pub description: String,
    /// JSON Schema of its arguments (an object schema).
    pub input_schema: Value,
    /// JSON Schema of its result, if known.
    pub output_schema: Option<Value>,
}

/// Why a tool call failed. Each kind becomes a different Python exception in the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolErrorKind {
    /// No tool of that name (Python: `LookupError`).
    NotFound,
    /// Arguments do not match the tool's schema (Python: `ValueError`).
    InvalidArguments,
    /// Policy forbids the call (Python: `PermissionError`).
    Denied,
    /// The tool took too long (Python: `TimeoutError`).
    Timeout,
    /// The tool ran and failed (Python: `ToolError`).
    Failed,
    /// The call broke a size cap or the call budget (Python: `ToolLimitError`, a `ToolError`).
    LimitExceeded,
}

/// A failed tool call, with the message the program will see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ToolError {
    /// Kind of failure.
    pub kind: ToolErrorKind,
    /// Message shown to the program (never secrets).
    pub message: String,
}

impl ToolError {
    /// A tool error of `kind` with `message`.
    pub fn new(kind: ToolErrorKind, message: impl Into<String>) -> Self {
        ToolError {
            kind,
            message: message.into(),
        }
    }
}

/// Where tool calls from a sandbox go. Implemented by `agentkernel-tool-bridge`'s registry;
/// backends only ever see this trait.
#[async_trait]
pub trait ToolHost: Send + Sync {
    /// The tools a sandbox may call.
    fn catalog(&self) -> Vec<ToolSpec>;

    /// Calls tool `name` with JSON `args` and returns its JSON result.
    async fn call(&self, name: &str, args: Value) -> Result<Value, ToolError>;
}

/// A `ToolHost` with no tools: every call is [`ToolErrorKind::NotFound`].
#[derive(Debug, Clone, Copy, Default)]
pub struct NoTools;

#[async_trait]
impl ToolHost for NoTools {
    fn catalog(&self) -> Vec<ToolSpec> {
        Vec::new()
    }

    async fn call(&self, name: &str, _args: Value) -> Result<Value, ToolError> {
        Err(ToolError::new(
            ToolErrorKind::NotFound,
            format!("no tool named {name:?} (this sandbox has no tools)"),
        ))
    }
}

/// A tool implemented by a Rust closure or async fn, boxed (see [`tool_fn`]).
pub type ToolFn = Box<
    dyn Fn(Value) -> Pin<Box<dyn Future<Output = Result<Value, ToolError>> + Send>> + Send + Sync,
>;

/// Boxes `f` (called with the JSON arguments) as a [`ToolFn`]. A panic in `f`, or in the
/// future it returns, fails that call with [`ToolErrorKind::Failed`] ("the tool panicked:
/// ..."): the program gets the tool's error and the run goes on.
pub fn tool_fn<F, Fut>(f: F) -> ToolFn
where
    F: Fn(Value) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, ToolError>> + Send + 'static,
{
    Box::new(move |args| {
        // A tool that panics fails that call (`ToolError`, kind `Failed`), not the run:
        // whether it panics making its future or while it runs.
        match std::panic::catch_unwind(AssertUnwindSafe(|| f(args))) {
            Ok(fut) => Box::pin(PanicToError(Box::pin(fut))),
            Err(payload) => Box::pin(std::future::ready(Err(panicked(payload.as_ref())))),
        }
    })
}

/// A tool's future whose panic becomes the call's [`ToolError`].
struct PanicToError<F>(Pin<Box<F>>);

impl<F: Future<Output = Result<Value, ToolError>>> Future for PanicToError<F> {
    type Output = Result<Value, ToolError>;

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(poll) => poll,
            Err(payload) => std::task::Poll::Ready(Err(panicked(payload.as_ref()))),
        }
    }
}

/// The error of a tool call whose code panicked with `payload`.
fn panicked(payload: &(dyn std::any::Any + Send)) -> ToolError {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned());
    ToolError::new(
        ToolErrorKind::Failed,
        format!("the tool panicked: {what} (a bug in the tool, not in the program)"),
    )
}

/// A `ToolHost` of Rust closures, for library users with a few in-process tools.
///
/// ```
/// use agentkernel_core::{FnTools, ToolHost};
/// use serde_json::json;
///
/// let tools = FnTools::new().with(
///     "add",
///     "Adds a and b.",
///     json!({"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}),
///     |args| async move { Ok(json!(args["a"].as_f64().unwrap_or(0.0) + args["b"].as_f64().unwrap_or(0.0))) },
/// );
/// assert_eq!(tools.catalog()[0].name, "add");
/// ```
#[derive(Default)]
pub struct FnTools {
    tools: BTreeMap<String, (ToolSpec, ToolFn)>,
}

impl FnTools {
    /// An empty set of tools.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tool; `f` receives the JSON arguments.
    pub fn with<F, Fut>(
        mut self,
        name: impl Into<String>,
        description: impl Into<String>,
        input_schema: Value,
        f: F,
    ) -> Self
    where
        F: Fn(Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, ToolError>> + Send + 'static,
    {
        let name = name.into();
        let spec = ToolSpec {
            name: name.clone(),
            description: description.into(),
            input_schema,
            output_schema: None,
        };
        self.tools.insert(name, (spec, tool_fn(f)));
        self
    }
}

impl fmt::Debug for FnTools {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnTools")
            .field("tools", &self.tools.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[async_trait]
impl ToolHost for FnTools {
    fn catalog(&self) -> Vec<ToolSpec> {
        self.tools.values().map(|(spec, _)| spec.clone()).collect()
    }

    async fn call(&self, name: &str, args: Value) -> Result<Value, ToolError> {
        match self.tools.get(name) {
            Some((_, f)) => f(args).await,
            None => Err(ToolError::new(
                ToolErrorKind::NotFound,
                format!(
                    "no tool named {name:?}; available: {}",
                    self.tools.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )),
        }
    }
}
