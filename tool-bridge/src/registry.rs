//! The [`ToolRegistry`] (every tool from every source, and the generated `/tools` package) and
//! the [`ToolGate`] (one execution's view of it, with the policy checked on every call).

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use agentkernel_core::{
    Error, Mount, Result, ToolError, ToolErrorKind, ToolFn, ToolHost, ToolSpec, tool_fn,
};
use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;
use tracing::Instrument;

use crate::mcp::{McpServer, McpServerConfig};
use crate::policy::ToolPolicy;
use crate::stubs::{self, StubTool};

/// A tool implemented by a Rust closure or async fn of the library user.
pub struct FunctionTool {
    server: String,
    tool: String,
    description: String,
    input_schema: Value,
    output_schema: Option<Value>,
    call: ToolFn,
}

impl FunctionTool {
    /// Tool `server.tool`, described by `description`, taking arguments that match
    /// `input_schema` (a JSON Schema object); `f` gets the validated JSON arguments.
    ///
    /// ```
    /// use agentkernel_tool_bridge::FunctionTool;
    /// use serde_json::json;
    ///
    /// let add = FunctionTool::new(
    ///     "calc", "add", "Adds two integers.",
    ///     json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}),
    ///     |args| async move { Ok(json!(args["a"].as_i64().unwrap_or(0) + args["b"].as_i64().unwrap_or(0))) },
    /// );
    /// ```
    pub fn new<F, Fut>(
        server: impl Into<String>,
        tool: impl Into<String>,
        description: impl Into<String>,
        input_schema: Value,
        f: F,
    ) -> Self
    where
        F: Fn(Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, ToolError>> + Send + 'static,
    {
        FunctionTool {
            server: server.into(),
            tool: tool.into(),
            description: description.into(),
            input_schema,
            output_schema: None,
            call: tool_fn(f),
        }
    }

    /// Tool `server.tool` whose arguments and result are Rust types: the input schema is
    /// derived from `A` and the output schema from `R` (`schemars::JsonSchema`); the
    /// arguments reach `f` deserialized (arguments that do not fit are the program's
    /// `ValueError`), and its result goes back serialized.
    ///
    /// ```
    /// use agentkernel_tool_bridge::{FunctionTool, JsonSchema};
    /// use serde::Deserialize;
    ///
    /// #[derive(Deserialize, JsonSchema)]
    /// struct Add {
    ///     a: i64,
    ///     b: i64,
    /// }
    ///
    /// let add = FunctionTool::typed("calc", "add", "Adds two integers.", |args: Add| async move {
    ///     Ok(args.a + args.b)
    /// });
    /// ```
    pub fn typed<A, R, F, Fut>(
        server: impl Into<String>,
        tool: impl Into<String>,
        description: impl Into<String>,
        f: F,
    ) -> Self
    where
        A: serde::de::DeserializeOwned + schemars::JsonSchema + Send + 'static,
        R: serde::Serialize + schemars::JsonSchema + Send + 'static,
        F: Fn(A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, ToolError>> + Send + 'static,
    {
        let schema = |s: schemars::Schema| {
            let mut v = s.to_value();
            if let Some(o) = v.as_object_mut() {
                // Keys a tool schema does not need (and a sandbox's signature ignores).
                o.remove("$schema");
                o.remove("title");
            }
            v
        };
        let input_schema = schema(schemars::schema_for!(A));
        let output_schema = schema(schemars::schema_for!(R));
        let f = Arc::new(f);
        FunctionTool::new(server, tool, description, input_schema, move |args| {
            let f = f.clone();
            async move {
                let args: A = serde_json::from_value(args).map_err(|e| {
                    ToolError::new(
                        agentkernel_core::ToolErrorKind::InvalidArguments,
                        format!("the arguments do not fit: {e}"),
                    )
                })?;
                let out = f(args).await?;
                serde_json::to_value(out).map_err(|e| {
                    ToolError::new(
                        agentkernel_core::ToolErrorKind::Failed,
                        format!("the tool's result could not be encoded: {e}"),
                    )
                })
            }
        })
        .with_output_schema(output_schema)
    }

    /// Declares the JSON Schema of the result (shown in `tools list`).
    pub fn with_output_schema(mut self, schema: Value) -> Self {
        self.output_schema = Some(schema);
        self
    }
}

impl fmt::Debug for FunctionTool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FunctionTool({}.{})", self.server, self.tool)
    }
}

/// A function tool once registered.
struct FnEntry {
    description: String,
    input_schema: Value,
    output_schema: Option<Value>,
    validator: Arc<jsonschema::Validator>,
    call: ToolFn,
}

/// Where a tool comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolSource {
    /// A Rust function of the host program.
    Rust,
    /// An MCP server.
    Mcp,
    /// A Python module of the local tools directory (runs inside the sandbox).
    Python,
}

/// One entry of the catalog as the sandbox sees it (`agentkernel tools list`).
#[derive(Debug, Clone, Serialize)]
pub struct CatalogEntry {
    /// `server.tool` (what `_agentkernel.call_tool` takes); for Python modules, the module.
    pub name: String,
    /// The import: `from tools.<server> import <tool>`.
    pub import: String,
    /// Python signature, e.g. `(a: int, b: int) -> Any`.
    pub signature: String,
    /// The description (docstring).
    pub description: String,
    /// Where it comes from.
    pub source: ToolSource,
    /// Whether the registry's policy lets a sandbox call it.
    pub allowed: bool,
    /// JSON Schema of the arguments (absent for Python modules).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Value>,
    /// JSON Schema of the result, when declared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Value>,
}

/// Builds a [`ToolRegistry`].
#[derive(Default)]
pub struct ToolRegistryBuilder {
    functions: Vec<FunctionTool>,
    mcp: Vec<(String, McpServerConfig)>,
    python_dir: Option<PathBuf>,
    policy: ToolPolicy,
}

impl fmt::Debug for ToolRegistryBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ToolRegistryBuilder")
            .field("functions", &self.functions)
            .field("mcp", &self.mcp.iter().map(|(n, _)| n).collect::<Vec<_>>())
            .field("python_dir", &self.python_dir)
            .finish()
    }
}

impl ToolRegistryBuilder {
    /// Adds a Rust tool.
    pub fn function(mut self, tool: FunctionTool) -> Self {
        self.functions.push(tool);
        self
    }

    /// Adds an MCP server; its tools appear as `tools.<name>.<tool>`.
    pub fn mcp_server(mut self, name: impl Into<String>, config: McpServerConfig) -> Self {
        self.mcp.push((name.into(), config));
        self
    }

    /// A directory of plain Python modules (`data_analysis.py`, packages too), mounted
    /// read-only and importable as `tools.<module>`. They run inside the sandbox.
    pub fn python_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.python_dir = Some(dir.into());
        self
    }

    /// The policy of the gates this registry hands out (see [`ToolRegistry::gate`]).
    pub fn policy(mut self, policy: ToolPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Starts the MCP servers, lists every tool and writes the `/tools` package.
    pub async fn build(self) -> Result<ToolRegistry> {
        self.policy
            .validate()
            .map_err(|m| Error::invalid(m, "fix the [tools] policy"))?;
        let stubs_dir = tempfile::Builder::new()
            .prefix("agentkernel-tools-")
            .tempdir()
            .map_err(|e| Error::io("creating the tool stub directory", e))?;
        let root = stubs_dir.path().to_path_buf();
        stubs::make_dir(&root).map_err(|e| Error::io("creating the tool stub directory", e))?;

        // Names: each server or local module is one entry under `tools`.
        let mut names: BTreeMap<String, String> = BTreeMap::new();
        let mut claim = |py: String, what: String| -> Result<()> {
            if py.starts_with('_') {
                return Err(Error::invalid(
                    format!("{what}: names under `tools` may not start with '_'"),
                    "rename it",
                ));
            }
            if let Some(other) = names.insert(py.clone(), what.clone())
                && other != what
            {
                return Err(Error::invalid(
                    format!("{what} and {other} would both be `tools.{py}`"),
                    "give them different names",
                ));
            }
            Ok(())
        };

        let mut functions: BTreeMap<String, FnEntry> = BTreeMap::new();
        let mut fn_servers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for f in self.functions {
            if !stubs::is_identifier(&f.server) || !stubs::is_identifier(&f.tool) {
                return Err(Error::invalid(
                    format!(
                        "Rust tool {}.{}: server and tool names must be Python identifiers",
                        f.server, f.tool
                    ),
                    "use letters, digits and '_' (e.g. \"calc\", \"add_numbers\")",
                ));
            }
            claim(f.server.clone(), format!("Rust tools of {:?}", f.server))?;
            let validator = jsonschema::validator_for(&f.input_schema).map_err(|e| {
                Error::invalid(
                    format!(
                        "Rust tool {}.{}: input schema is not valid JSON Schema: {e}",
                        f.server, f.tool
                    ),
                    "fix the schema passed to FunctionTool::new",
                )
            })?;
            let qualified = format!("{}.{}", f.server, f.tool);
            if functions.contains_key(&qualified) {
                return Err(Error::invalid(
                    format!("Rust tool {qualified} registered twice"),
                    "register each tool once",
                ));
            }
            fn_servers
                .entry(f.server.clone())
                .or_default()
                .push(qualified.clone());
            functions.insert(
                qualified,
                FnEntry {
                    description: f.description,
                    input_schema: f.input_schema,
                    output_schema: f.output_schema,
                    validator: Arc::new(validator),
                    call: f.call,
                },
            );
        }
        for (name, _) in &self.mcp {
            claim(stubs::python_name(name), format!("MCP server {name:?}"))?;
        }
        let local = match &self.python_dir {
            Some(dir) => {
                let (dir, modules) = local_modules(dir)?;
                for m in &modules {
                    claim(m.clone(), format!("local module {m:?}"))?;
                }
                stubs::make_dir(&root.join(stubs::LOCAL_DIR))
                    .map_err(|e| Error::io("creating the tool stub directory", e))?;
                Some((dir, modules))
            }
            None => None,
        };

        for (server, qualified) in &fn_servers {
            let tools: Vec<StubTool<'_>> = qualified
                .iter()
                .filter_map(|q| {
                    let e = functions.get(q)?;
                    Some(StubTool {
                        server,
                        tool: q.split_once('.').map(|(_, t)| t).unwrap_or(q),
                        description: &e.description,
                        input_schema: &e.input_schema,
                        output_schema: e.output_schema.as_ref(),
                    })
                })
                .collect();
            stubs::write_server(&root, server, &tools)
                .map_err(|e| Error::io("writing tool stubs", e))?;
        }

        // MCP servers start concurrently.
        let mut starting = tokio::task::JoinSet::new();
        for (name, config) in self.mcp {
            let root = root.clone();
            starting.spawn(async move { McpServer::start(&name, config, root).await });
        }
        let mut mcp = BTreeMap::new();
        let mut first_error = None;
        while let Some(joined) = starting.join_next().await {
            match joined {
                Ok(Ok(server)) => {
                    mcp.insert(server.py.clone(), server);
                }
                Ok(Err(e)) => first_error = first_error.or(Some(e)),
                Err(e) => {
                    first_error =
                        first_error.or(Some(Error::Internal(format!("MCP start task: {e}"))))
                }
            }
        }
        if let Some(e) = first_error {
            for s in mcp.values() {
                s.shutdown().await;
            }
            return Err(e);
        }

        let mut servers: Vec<(String, String)> = fn_servers
            .keys()
            .map(|s| (s.clone(), "Rust tools of the host".to_owned()))
            .collect();
        // Only the kind of source: a server's command line or URL may carry secrets.
        servers.extend(
            mcp.values()
                .map(|s| (s.py.clone(), "MCP server".to_owned())),
        );
        servers.sort();
        let local_names = local.as_ref().map(|(_, m)| m.clone()).unwrap_or_default();
        stubs::write_file(
            &root.join("__init__.py"),
            &stubs::root_package(&servers, &local_names),
        )
        .map_err(|e| Error::io("writing tool stubs", e))?;

        Ok(ToolRegistry {
            inner: Arc::new(Inner {
                functions,
                mcp,
                local,
                stubs: stubs_dir,
                policy: self.policy,
            }),
        })
    }
}

/// The importable module names in a local tools directory (`x.py` files and packages).
fn local_modules(dir: &Path) -> Result<(PathBuf, Vec<String>)> {
    let dir = dir.canonicalize().map_err(|e| {
        Error::invalid(
            format!("tools directory {}: {e}", dir.display()),
            "point `.python_dir(..)` (`[tools] dir` in agentkernel.toml) at an existing directory of .py files",
        )
    })?;
    let entries =
        std::fs::read_dir(&dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
    let mut modules = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let module = if let Some(stem) = name.strip_suffix(".py") {
            stem.to_owned()
        } else if path.join("__init__.py").is_file() {
            name
        } else {
            continue;
        };
        if stubs::is_identifier(&module) && !module.starts_with('_') {
            modules.push(module);
        }
    }
    modules.sort();
    Ok((dir, modules))
}

struct Inner {
    functions: BTreeMap<String, FnEntry>,
    mcp: BTreeMap<String, Arc<McpServer>>,
    local: Option<(PathBuf, Vec<String>)>,
    stubs: tempfile::TempDir,
    policy: ToolPolicy,
}

/// Every tool from every source, the generated `/tools` package, and the default policy.
/// Cheap to clone (shared).
#[derive(Clone)]
pub struct ToolRegistry {
    inner: Arc<Inner>,
}

impl fmt::Debug for ToolRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ToolRegistry")
            .field(
                "functions",
                &self.inner.functions.keys().collect::<Vec<_>>(),
            )
            .field("mcp", &self.inner.mcp.keys().collect::<Vec<_>>())
            .field("stubs", &self.inner.stubs.path())
            .finish()
    }
}

/// A tool found by name.
enum Route<'a> {
    Function(&'a FnEntry),
    Mcp(&'a Arc<McpServer>, Arc<crate::mcp::McpTool>),
}

impl ToolRegistry {
    /// Starts building a registry.
    pub fn builder() -> ToolRegistryBuilder {
        ToolRegistryBuilder::default()
    }

    /// The registry's default policy.
    pub fn policy(&self) -> &ToolPolicy {
        &self.inner.policy
    }

    /// Host directory holding the generated `tools` package.
    pub fn stubs_dir(&self) -> &Path {
        self.inner.stubs.path()
    }

    /// What a sandbox must mount to see the tools: the package at `/tools` (read-only) and the
    /// local modules at `/tools/_local` (read-only).
    pub fn mounts(&self) -> Vec<Mount> {
        let mut out = vec![Mount {
            host: self.stubs_dir().to_path_buf(),
            guest: PathBuf::from("/tools"),
            writable: false,
        }];
        if let Some((dir, _)) = &self.inner.local {
            out.push(Mount {
                host: dir.clone(),
                guest: PathBuf::from("/tools").join(stubs::LOCAL_DIR),
                writable: false,
            });
        }
        out
    }

    /// A gate for one execution with the registry's policy.
    pub fn gate(&self) -> Arc<ToolGate> {
        self.gate_with(self.inner.policy.clone())
    }

    /// A gate for one execution with `policy` (a per-sandbox allow-list, say).
    pub fn gate_with(&self, policy: ToolPolicy) -> Arc<ToolGate> {
        Arc::new(ToolGate {
            registry: self.clone(),
            policy,
            calls: AtomicU32::new(0),
        })
    }

    /// The catalog as the sandbox sees it: Rust and MCP tools, then local Python modules.
    pub fn catalog(&self) -> Vec<CatalogEntry> {
        let policy = &self.inner.policy;
        let mut out = Vec::new();
        for (q, e) in &self.inner.functions {
            let (server, tool) = q.split_once('.').unwrap_or(("", q));
            out.push(CatalogEntry {
                name: q.clone(),
                import: format!("from tools.{server} import {tool}"),
                signature: format!(
                    "{} -> {}",
                    stubs::signature(&e.input_schema),
                    stubs::return_hint(e.output_schema.as_ref())
                ),
                description: e.description.clone(),
                source: ToolSource::Rust,
                allowed: policy.allows(q),
                input_schema: Some(e.input_schema.clone()),
                output_schema: e.output_schema.clone(),
            });
        }
        for server in self.inner.mcp.values() {
            for t in server.tools() {
                let q = format!("{}.{}", server.py, t.py);
                out.push(CatalogEntry {
                    import: format!("from tools.{} import {}", server.py, t.py),
                    signature: format!(
                        "{} -> {}",
                        stubs::signature(&t.input_schema),
                        stubs::return_hint(t.output_schema.as_ref())
                    ),
                    description: t.description.clone(),
                    source: ToolSource::Mcp,
                    allowed: policy.allows(&q),
                    name: q,
                    input_schema: Some(t.input_schema.clone()),
                    output_schema: t.output_schema.clone(),
                });
            }
        }
        for m in self.inner.local.iter().flat_map(|(_, m)| m) {
            out.push(CatalogEntry {
                name: m.clone(),
                import: format!("import tools.{m}"),
                signature: String::new(),
                description: "local Python module (runs inside the sandbox)".into(),
                source: ToolSource::Python,
                allowed: true,
                input_schema: None,
                output_schema: None,
            });
        }
        out
    }

    fn route(&self, qualified: &str) -> Option<Route<'_>> {
        if let Some(f) = self.inner.functions.get(qualified) {
            return Some(Route::Function(f));
        }
        let (server, tool) = qualified.split_once('.')?;
        let s = self.inner.mcp.get(server)?;
        let t = s.tool(tool)?;
        Some(Route::Mcp(s, t))
    }

    fn known_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.functions.keys().cloned().collect();
        for s in self.inner.mcp.values() {
            names.extend(
                s.tool_names()
                    .into_iter()
                    .map(|t| format!("{}.{}", s.py, t)),
            );
        }
        names
    }

    /// Stops every MCP server (also done when the last clone is dropped, as child processes
    /// are killed on drop).
    pub async fn shutdown(&self) {
        for s in self.inner.mcp.values() {
            s.shutdown().await;
        }
    }

    /// Test hook: the current connection generation of MCP server `server` (changes when the
    /// server is restarted).
    pub async fn mcp_generation(&self, server: &str) -> Option<u64> {
        self.inner.mcp.get(server)?.generation().await
    }
}

/// One execution's access to the tools: checks the policy on every call and counts calls
/// against the budget. Make a new one per execution ([`ToolRegistry::gate`]).
pub struct ToolGate {
    registry: ToolRegistry,
    policy: ToolPolicy,
    calls: AtomicU32,
}

impl fmt::Debug for ToolGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ToolGate")
            .field("policy", &self.policy)
            .field("calls", &self.calls.load(Ordering::Relaxed))
            .finish()
    }
}

impl ToolGate {
    /// Calls made so far through this gate.
    pub fn calls(&self) -> u32 {
        self.calls.load(Ordering::Relaxed)
    }

    async fn checked_call(&self, name: &str, args: Value) -> Result<(Value, usize), ToolError> {
        // Every call counts, found or not, allowed or not.
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        if n > self.policy.max_calls {
            return Err(ToolError::new(
                ToolErrorKind::LimitExceeded,
                format!(
                    "tool call budget spent: at most {} calls per execution",
                    self.policy.max_calls
                ),
            ));
        }
        let route = self.registry.route(name).ok_or_else(|| {
            let known = self.registry.known_names();
            ToolError::new(
                ToolErrorKind::NotFound,
                if known.is_empty() {
                    format!("no tool named {name:?} (this sandbox has no tools)")
                } else {
                    format!("no tool named {name:?}; available: {}", known.join(", "))
                },
            )
        })?;
        if !self.policy.allows(name) {
            return Err(ToolError::new(
                ToolErrorKind::Denied,
                format!(
                    "tool {name} is not allowed in this sandbox (allowed: {})",
                    self.policy.allow.join(", ")
                ),
            ));
        }
        let args = match args {
            Value::Null => Value::Object(Default::default()),
            Value::Object(m) => Value::Object(m),
            other => {
                return Err(ToolError::new(
                    ToolErrorKind::InvalidArguments,
                    format!(
                        "{name}: arguments must be an object of keyword arguments, not {other}"
                    ),
                ));
            }
        };
        let arg_bytes = serde_json::to_vec(&args).map(|v| v.len()).unwrap_or(0);
        tracing::Span::current().record("arg_bytes", arg_bytes);
        if arg_bytes > self.policy.max_arg_bytes {
            return Err(ToolError::new(
                ToolErrorKind::LimitExceeded,
                format!(
                    "{name}: arguments of {arg_bytes} bytes exceed the cap of {} bytes",
                    self.policy.max_arg_bytes
                ),
            ));
        }
        let validator = match &route {
            Route::Function(f) => Some(&f.validator),
            Route::Mcp(_, t) => t.validator.as_ref(),
        };
        if let Some(v) = validator {
            let problems: Vec<String> = v
                .iter_errors(&args)
                .take(3)
                .map(|e| {
                    let at = e.instance_path().to_string();
                    if at.is_empty() {
                        e.to_string()
                    } else {
                        format!("{at}: {e}")
                    }
                })
                .collect();
            if !problems.is_empty() {
                return Err(ToolError::new(
                    ToolErrorKind::InvalidArguments,
                    format!("{name}: invalid arguments: {}", problems.join("; ")),
                ));
            }
        }
        let timeout = match &route {
            Route::Mcp(s, _) => s
                .timeout()
                .map_or(self.policy.timeout, |t| t.min(self.policy.timeout)),
            Route::Function(_) => self.policy.timeout,
        };
        let call = async {
            match &route {
                Route::Function(f) => (f.call)(args).await,
                Route::Mcp(s, t) => match args {
                    Value::Object(m) => s.call(t, m).await,
                    _ => Err(ToolError::new(
                        ToolErrorKind::InvalidArguments,
                        "arguments must be an object",
                    )),
                },
            }
        };
        let value = tokio::time::timeout(timeout, call).await.map_err(|_| {
            ToolError::new(
                ToolErrorKind::Timeout,
                format!(
                    "{name} did not answer within {}; the call was abandoned",
                    fmt_duration(timeout)
                ),
            )
        })??;
        let result_bytes = serde_json::to_vec(&value).map(|v| v.len()).unwrap_or(0);
        if result_bytes > self.policy.max_result_bytes {
            return Err(ToolError::new(
                ToolErrorKind::LimitExceeded,
                format!(
                    "{name}: result of {result_bytes} bytes exceeds the cap of {} bytes (tools.max_result_bytes)",
                    self.policy.max_result_bytes
                ),
            ));
        }
        Ok((value, result_bytes))
    }
}

fn fmt_duration(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64()).replace(".000 s", " s")
}

#[async_trait]
impl ToolHost for ToolGate {
    fn catalog(&self) -> Vec<ToolSpec> {
        self.registry
            .catalog()
            .into_iter()
            .filter(|e| e.source != ToolSource::Python && self.policy.allows(&e.name))
            .map(|e| ToolSpec {
                name: e.name,
                description: e.description,
                input_schema: e.input_schema.unwrap_or(Value::Null),
                output_schema: e.output_schema,
            })
            .collect()
    }

    async fn call(&self, name: &str, args: Value) -> Result<Value, ToolError> {
        // Names are `server.tool`, each at most 64 bytes: a longer one cannot exist, and
        // is not worth logging.
        if name.len() > 130 {
            self.calls.fetch_add(1, Ordering::Relaxed);
            return Err(ToolError::new(
                ToolErrorKind::NotFound,
                format!("no tool has a name of {} bytes", name.len()),
            ));
        }
        let (server, tool) = name.split_once('.').unwrap_or(("", name));
        let span = tracing::info_span!(
            "tool_call",
            server,
            tool,
            arg_bytes = tracing::field::Empty,
            outcome = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
            result_bytes = tracing::field::Empty,
        );
        let started = Instant::now();
        let result = self.checked_call(name, args).instrument(span.clone()).await;
        span.record("duration_ms", started.elapsed().as_secs_f64() * 1000.0);
        let _entered = span.enter();
        match result {
            Ok((value, bytes)) => {
                span.record("outcome", "ok");
                span.record("result_bytes", bytes);
                tracing::info!("tool call ok");
                Ok(value)
            }
            Err(e) => {
                span.record("outcome", tracing::field::debug(e.kind));
                match e.kind {
                    // These messages may quote argument values (the schema error names the
                    // offending value; a tool may echo its input): debug level only.
                    ToolErrorKind::InvalidArguments | ToolErrorKind::Failed => {
                        tracing::info!("tool call failed");
                        tracing::debug!(error = %e.message, "tool call failure detail");
                    }
                    _ => tracing::info!(error = %e.message, "tool call failed"),
                }
                Err(e)
            }
        }
    }
}
