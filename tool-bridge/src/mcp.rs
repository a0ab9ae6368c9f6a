//! MCP servers as tool sources, through `rmcp` (the official Rust SDK).
//!
//! One [`McpServer`] per configured server: a child process over stdio or a remote server over
//! streamable HTTP. It is connected at registry build time, its tools listed with `tools/list`,
//! and re-listed when the server sends `notifications/tools/list_changed` (the stubs under
//! `/tools/<server>/` are rewritten then). A server that dies is restarted on the next call.
//! Credentials (the server's `env` and `headers`) stay on the host, and their values are
//! redacted from anything the server sends back.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use agentkernel_core::{Error, Result, ToolError, ToolErrorKind};
use rmcp::model::{CallToolRequestParams, CallToolResult, ContentBlock};
use rmcp::service::{NotificationContext, Peer, RoleClient, RunningService, ServiceError};
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, ServiceExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;

use crate::stubs::{self, StubTool};

/// How to reach one MCP server: `command` (stdio child process) or `url` (streamable HTTP).
///
/// In `agentkernel.toml`:
///
/// ```toml
/// [mcp_servers.github]
/// command = "npx"
/// args = ["-y", "@modelcontextprotocol/server-github"]
/// env = { GITHUB_TOKEN = "${GITHUB_TOKEN}" }
///
/// [mcp_servers.search]
/// url = "http://127.0.0.1:8931/mcp"
/// headers = { Authorization = "Bearer ${SEARCH_TOKEN}" }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServerConfig {
    /// Program to start (stdio transport).
    pub command: Option<String>,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment of the server process (credentials go here; never into the sandbox).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory of the server process.
    pub cwd: Option<PathBuf>,
    /// Endpoint of a streamable HTTP server.
    pub url: Option<String>,
    /// HTTP headers sent to `url` (e.g. `Authorization`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Per-call timeout for this server's tools, overriding the policy's when shorter.
    #[serde(default, with = "opt_secs", rename = "timeout_secs")]
    pub timeout: Option<Duration>,
}

impl McpServerConfig {
    /// A stdio server: `command` with `args`.
    pub fn stdio(
        command: impl Into<String>,
        args: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        McpServerConfig {
            command: Some(command.into()),
            args: args.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// A streamable HTTP server at `url`.
    pub fn http(url: impl Into<String>) -> Self {
        McpServerConfig {
            url: Some(url.into()),
            ..Self::default()
        }
    }

    /// Adds an environment variable of the server process.
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Adds an HTTP header.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(key.into(), value.into());
        self
    }

    /// Checks that exactly one transport is configured.
    pub fn validate(&self, name: &str) -> Result<()> {
        match (&self.command, &self.url) {
            (Some(c), None) if !c.trim().is_empty() => {
                if !self.headers.is_empty() {
                    return Err(Error::invalid(
                        format!("MCP server {name:?}: `headers` only apply to `url` servers"),
                        "move credentials of a command server into `env`",
                    ));
                }
                Ok(())
            }
            (None, Some(u)) if u.starts_with("http://") || u.starts_with("https://") => {
                if !self.args.is_empty() || !self.env.is_empty() || self.cwd.is_some() {
                    return Err(Error::invalid(
                        format!(
                            "MCP server {name:?}: `args`, `env` and `cwd` only apply to `command` servers"
                        ),
                        "use `headers` for credentials of a `url` server",
                    ));
                }
                Ok(())
            }
            (Some(_), Some(_)) => Err(Error::invalid(
                format!("MCP server {name:?} has both `command` and `url`"),
                "give exactly one: `command` for a local server, `url` for a remote one",
            )),
            _ => Err(Error::invalid(
                format!("MCP server {name:?} needs a non-empty `command` or an http(s) `url`"),
                "e.g. command = \"npx\", args = [\"-y\", \"@modelcontextprotocol/server-everything\"]",
            )),
        }
    }

    /// Values that must never reach the sandbox: every header value, the values of `env`
    /// variables whose name says they are secret (`*TOKEN*`, `*KEY*`, `*SECRET*`,
    /// `*PASSWORD*`, `*PASS*`, `*AUTH*`, `*CREDENTIAL*`, `*PRIVATE*`), command-line
    /// arguments given to an option so named (`--api-key VALUE`, `--token=VALUE`), and a
    /// user name, password or query values inside `url`. Only values of 6+ characters
    /// (shorter ones would redact ordinary words).
    fn secrets(&self) -> Vec<String> {
        const SECRET_WORDS: &[&str] = &[
            "TOKEN",
            "KEY",
            "SECRET",
            "PASSWORD",
            "PASS",
            "AUTH",
            "CREDENTIAL",
            "PRIVATE",
        ];
        let mut values: Vec<&str> = self.headers.values().map(String::as_str).collect();
        let secret_name = |k: &str| {
            let k = k.to_ascii_uppercase();
            SECRET_WORDS.iter().any(|w| k.contains(w))
        };
        values.extend(
            self.env
                .iter()
                .filter_map(|(k, v)| secret_name(k).then_some(v.as_str())),
        );
        // `--token VALUE` and `--token=VALUE` (any option whose name says it is secret).
        for (i, arg) in self.args.iter().enumerate() {
            if !arg.starts_with('-') {
                continue;
            }
            match arg.split_once('=') {
                Some((name, value)) if secret_name(name) => values.push(value),
                None if secret_name(arg) => {
                    values.extend(self.args.get(i + 1).map(String::as_str));
                }
                _ => {}
            }
        }
        let mut url_parts: Vec<String> = Vec::new();
        if let Some(url) = &self.url {
            let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
            let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
            if let Some((userinfo, _)) = authority.rsplit_once('@') {
                url_parts.extend(userinfo.split(':').map(str::to_owned));
            }
            if let Some((_, query)) = rest.split_once('?') {
                let query = query.split('#').next().unwrap_or("");
                url_parts.extend(
                    query
                        .split('&')
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(_, v)| v.to_owned()),
                );
            }
        }
        values.extend(url_parts.iter().map(String::as_str));
        let mut out: Vec<String> = Vec::new();
        for v in values {
            // Also the token without its scheme ("Bearer abc" → "abc").
            for s in [v, v.rsplit(' ').next().unwrap_or("")] {
                if s.len() >= 6 && !out.iter().any(|o| o == s) {
                    out.push(s.to_owned());
                }
            }
        }
        // Longest first, so a token is not half-replaced by one of its parts.
        out.sort_by_key(|s| std::cmp::Reverse(s.len()));
        out
    }
}

mod opt_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<f64>::deserialize(d)?
            .map(|v| Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// One tool of a server, as listed.
#[derive(Clone)]
pub(crate) struct McpTool {
    /// Python-facing name.
    pub py: String,
    /// The server's own name for it.
    pub raw: String,
    pub description: String,
    pub input_schema: Value,
    pub output_schema: Option<Value>,
    pub validator: Option<Arc<jsonschema::Validator>>,
}

/// Lines of the server's stderr kept for the host's error messages (never the sandbox's).
const STDERR_TAIL_LINES: usize = 20;
/// Longest a server may take to start, answer the handshake and list its tools.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Most tools taken from one server.
const MAX_TOOLS: usize = 2000;

/// Receives notifications from one server.
#[derive(Clone)]
struct Handler {
    server: Weak<McpServer>,
}

impl ClientHandler for Handler {
    fn on_tool_list_changed(
        &self,
        context: NotificationContext<RoleClient>,
    ) -> impl std::future::Future<Output = ()> + Send + '_ {
        let server = self.server.clone();
        let peer = context.peer.clone();
        // Re-list outside the notification handler: the answer arrives through the same
        // service loop that is running this handler.
        tokio::spawn(async move {
            if let Some(server) = server.upgrade()
                && let Err(e) = tokio::time::timeout(START_TIMEOUT, server.refresh(&peer))
                    .await
                    .unwrap_or_else(|_| Err(Error::Internal("re-listing timed out".into())))
            {
                tracing::warn!(server = %server.name, error = %e, "re-listing tools after list_changed failed");
            }
        });
        std::future::ready(())
    }
}

struct Conn {
    service: RunningService<RoleClient, Handler>,
    generation: u64,
    /// Cleared when a stdio server's stderr closes, i.e. the process exited (rmcp does not
    /// notice a server that dies between calls).
    alive: Arc<AtomicBool>,
}

/// A configured MCP server and its live connection.
pub(crate) struct McpServer {
    /// Name in the config (and, made an identifier, the package under `tools`).
    pub name: String,
    pub py: String,
    config: McpServerConfig,
    secrets: Vec<String>,
    conn: tokio::sync::Mutex<Option<Conn>>,
    generation: AtomicU64,
    /// Shared, so looking a tool up for a call clones a pointer, not its schemas.
    tools: RwLock<Vec<Arc<McpTool>>>,
    /// Serialises re-listing (notifications may arrive in bursts).
    refreshing: tokio::sync::Mutex<()>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    stub_root: PathBuf,
    closed: AtomicBool,
}

/// Environment variables a stdio server inherits from the host (as the official SDKs do);
/// everything else it gets comes from its `env`.
const INHERITED_ENV: &[&str] = &[
    "HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "LANG", "LC_ALL", "TMPDIR",
];

impl McpServer {
    /// Connects to the server and lists its tools (writing their stubs under `stub_root`).
    pub async fn start(
        name: &str,
        config: McpServerConfig,
        stub_root: PathBuf,
    ) -> Result<Arc<Self>> {
        config.validate(name)?;
        let server = Arc::new(McpServer {
            name: name.to_owned(),
            py: stubs::python_name(name),
            secrets: config.secrets(),
            config,
            conn: tokio::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
            tools: RwLock::new(Vec::new()),
            refreshing: tokio::sync::Mutex::new(()),
            stderr_tail: Arc::new(Mutex::new(VecDeque::new())),
            stub_root,
            closed: AtomicBool::new(false),
        });
        server.peer().await?;
        Ok(server)
    }

    /// The tools as last listed.
    pub fn tools(&self) -> Vec<Arc<McpTool>> {
        self.tools.read().map(|t| t.clone()).unwrap_or_default()
    }

    /// The tool whose Python name is `py`.
    pub fn tool(&self, py: &str) -> Option<Arc<McpTool>> {
        self.tools.read().ok()?.iter().find(|t| t.py == py).cloned()
    }

    /// The Python names of its tools.
    pub fn tool_names(&self) -> Vec<String> {
        self.tools
            .read()
            .map(|t| t.iter().map(|t| t.py.clone()).collect())
            .unwrap_or_default()
    }

    /// The server's own timeout, if set.
    pub fn timeout(&self) -> Option<Duration> {
        self.config.timeout
    }

    /// A peer to send requests to, connecting (again) when there is no live connection.
    async fn peer(self: &Arc<Self>) -> Result<(Peer<RoleClient>, u64)> {
        let mut conn = self.conn.lock().await;
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::tool_source(
                &self.name,
                "the MCP server was shut down",
                "build a new tool registry",
            ));
        }
        if let Some(c) = conn.as_ref() {
            if !c.service.is_closed() && c.alive.load(Ordering::SeqCst) {
                return Ok((c.service.peer().clone(), c.generation));
            }
            tracing::info!(server = %self.name, "MCP server connection closed; reconnecting");
        }
        *conn = None;
        let handler = Handler {
            server: Arc::downgrade(self),
        };
        let alive = Arc::new(AtomicBool::new(true));
        let started = tokio::time::timeout(START_TIMEOUT, async {
            let service = self.connect(handler, alive.clone()).await?;
            let peer = service.peer().clone();
            self.refresh(&peer).await?;
            Ok::<_, Error>(service)
        })
        .await
        .map_err(|_| {
            Error::tool_source(
                &self.name,
                format!(
                    "the MCP server did not start and list its tools within {} s{}",
                    START_TIMEOUT.as_secs(),
                    self.stderr_suffix()
                ),
                "run its command by hand: it must speak MCP on stdin/stdout (or at `url`)",
            )
        })??;
        let peer = started.peer().clone();
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        *conn = Some(Conn {
            service: started,
            generation,
            alive,
        });
        Ok((peer, generation))
    }

    async fn connect(
        &self,
        handler: Handler,
        alive: Arc<AtomicBool>,
    ) -> Result<RunningService<RoleClient, Handler>> {
        let started = if let Some(command) = &self.config.command {
            let mut cmd = tokio::process::Command::new(command);
            cmd.args(&self.config.args).env_clear();
            for key in INHERITED_ENV {
                if let Some(v) = std::env::var_os(key) {
                    cmd.env(key, v);
                }
            }
            cmd.envs(&self.config.env);
            if let Some(cwd) = &self.config.cwd {
                cmd.current_dir(cwd);
            }
            let (transport, stderr) = TokioChildProcess::builder(cmd)
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| {
                    Error::tool_source(
                        &self.name,
                        format!("cannot start MCP server ({command}): {e}"),
                        "check `command` in its config: the program must exist on the host's PATH",
                    )
                })?;
            if let Some(stderr) = stderr {
                self.keep_stderr(stderr, alive);
            }
            handler.serve(transport).await.map_err(|e| e.to_string())
        } else if let Some(url) = &self.config.url {
            let mut headers = HashMap::new();
            for (k, v) in &self.config.headers {
                let name = http::HeaderName::try_from(k.as_str()).map_err(|e| {
                    Error::tool_source(
                        &self.name,
                        format!("bad header name {k:?}: {e}"),
                        "fix `headers`",
                    )
                })?;
                let value = http::HeaderValue::try_from(v.as_str()).map_err(|_| {
                    Error::tool_source(
                        &self.name,
                        format!("bad value for header {k:?}"),
                        "fix `headers`",
                    )
                })?;
                headers.insert(name, value);
            }
            let cfg = rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
                url.as_str(),
            )
            .custom_headers(headers);
            let transport = StreamableHttpClientTransport::from_config(cfg);
            handler.serve(transport).await.map_err(|e| e.to_string())
        } else {
            return Err(Error::Internal(
                "MCP server has no transport (validated earlier)".into(),
            ));
        };
        started.map_err(|e| {
            Error::tool_source(
                &self.name,
                format!(
                    "the MCP server did not complete the handshake: {}{}",
                    self.redact(&e),
                    self.stderr_suffix()
                ),
                "run the server's command by hand to see why it fails; it must speak MCP on stdio (or at `url`)",
            )
        })
    }

    /// Reads the child's stderr into a short ring buffer (and the debug log); its end means
    /// the process is gone.
    fn keep_stderr(&self, stderr: tokio::process::ChildStderr, alive: Arc<AtomicBool>) {
        let tail = self.stderr_tail.clone();
        let name = self.name.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::debug!(server = %name, "{line}");
                if let Ok(mut t) = tail.lock() {
                    if t.len() == STDERR_TAIL_LINES {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            }
            alive.store(false, Ordering::SeqCst);
        });
    }

    /// The last lines of the server's stderr, redacted, for host-side errors and logs.
    fn stderr_suffix(&self) -> String {
        let tail = self
            .stderr_tail
            .lock()
            .map(|t| {
                t.iter()
                    .rev()
                    .take(5)
                    .rev()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n  ")
            })
            .unwrap_or_default();
        if tail.is_empty() {
            String::new()
        } else {
            format!("\n  server stderr:\n  {}", self.redact(&tail))
        }
    }

    /// Lists the server's tools and rewrites its stubs (one listing at a time).
    async fn refresh(&self, peer: &Peer<RoleClient>) -> Result<()> {
        let _one_at_a_time = self.refreshing.lock().await;
        let listed = peer.list_all_tools().await.map_err(|e| {
            Error::tool_source(
                &self.name,
                format!("tools/list failed: {}", self.redact(&e.to_string())),
                "the server must implement tools/list",
            )
        })?;
        let mut tools: Vec<Arc<McpTool>> = Vec::new();
        for t in listed {
            // A name becomes a module name the sandbox reads, and cannot be rewritten (calls
            // need it): a tool whose name holds a credential is dropped.
            if self.redact(&t.name) != t.name {
                tracing::warn!(server = %self.name, "skipping a tool whose name contains a credential");
                continue;
            }
            let py = stubs::python_name(&t.name);
            if !stubs::is_tool_name(&py) {
                tracing::warn!(server = %self.name, "skipping a tool whose name cannot be a Python module ({} bytes)", t.name.len());
                continue;
            }
            if tools.iter().any(|o| o.py == py) {
                tracing::warn!(server = %self.name, tool = %py, "two tools map to the same Python name; keeping the first");
                continue;
            }
            if tools.len() == MAX_TOOLS {
                tracing::warn!(server = %self.name, "more than {MAX_TOOLS} tools; ignoring the rest");
                break;
            }
            // Descriptions and schemas end up in files the sandbox reads: redact them too.
            let input_schema = self.redact_value(Value::Object((*t.input_schema).clone()));
            let validator = match jsonschema::validator_for(&input_schema) {
                Ok(v) => Some(Arc::new(v)),
                Err(e) => {
                    tracing::warn!(server = %self.name, tool = %py, error = %e, "input schema does not compile; arguments go unvalidated");
                    None
                }
            };
            tools.push(Arc::new(McpTool {
                py,
                raw: t.name.to_string(),
                description: self.redact(t.description.as_deref().unwrap_or("")),
                input_schema,
                output_schema: t
                    .output_schema
                    .map(|s| self.redact_value(Value::Object((*s).clone()))),
                validator,
            }));
        }
        // The catalog first, then the files: a program that sees a new stub can call it.
        if let Ok(mut slot) = self.tools.write() {
            *slot = tools.clone();
        }
        let stub_tools: Vec<StubTool<'_>> = tools
            .iter()
            .map(|t| StubTool {
                server: &self.py,
                tool: &t.py,
                description: &t.description,
                input_schema: &t.input_schema,
                output_schema: t.output_schema.as_ref(),
            })
            .collect();
        stubs::write_server(&self.stub_root, &self.py, &stub_tools).map_err(|e| {
            Error::io(
                format!("writing tool stubs for MCP server {:?}", self.name),
                e,
            )
        })?;
        tracing::debug!(server = %self.name, tools = tools.len(), "listed MCP tools");
        Ok(())
    }

    /// Calls tool `tool` with `args` and turns the answer into the value Python sees.
    pub async fn call(
        self: &Arc<Self>,
        tool: &McpTool,
        args: serde_json::Map<String, Value>,
    ) -> std::result::Result<Value, ToolError> {
        let mut retried = false;
        loop {
            let (peer, generation) = self.peer().await.map_err(|e| {
                tracing::warn!(server = %self.name, error = %e, "MCP server unavailable");
                ToolError::new(
                    ToolErrorKind::Failed,
                    format!(
                        "MCP server {:?} is unavailable (the host's log says why)",
                        self.name
                    ),
                )
            })?;
            let params = CallToolRequestParams::new(tool.raw.clone()).with_arguments(args.clone());
            match peer.call_tool(params).await {
                Ok(result) => return self.convert(tool, result),
                // The request never left: the connection was already dead. Safe to retry once.
                Err(ServiceError::TransportSend(_)) if !retried => {
                    self.forget(generation).await;
                    retried = true;
                }
                Err(e @ (ServiceError::TransportClosed | ServiceError::TransportSend(_))) => {
                    self.forget(generation).await;
                    // Give the stderr reader a moment to catch the server's last words.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    tracing::warn!(server = %self.name, "MCP server went away during a call ({e}){}", self.stderr_suffix());
                    return Err(ToolError::new(
                        ToolErrorKind::Failed,
                        format!(
                            "MCP server {:?} went away during the call; it will be restarted for the next call",
                            self.name
                        ),
                    ));
                }
                Err(e) => {
                    return Err(ToolError::new(
                        ToolErrorKind::Failed,
                        format!(
                            "MCP server {:?}: {}",
                            self.name,
                            self.redact(&e.to_string())
                        ),
                    ));
                }
            }
        }
    }

    /// Drops connection `generation` (if still current), so the next call reconnects.
    pub async fn forget(&self, generation: u64) {
        let mut conn = self.conn.lock().await;
        if conn.as_ref().is_some_and(|c| c.generation == generation) {
            *conn = None;
        }
    }

    /// The current connection's generation, if connected.
    pub async fn generation(&self) -> Option<u64> {
        self.conn.lock().await.as_ref().map(|c| c.generation)
    }

    fn convert(
        &self,
        tool: &McpTool,
        result: CallToolResult,
    ) -> std::result::Result<Value, ToolError> {
        if result.is_error == Some(true) {
            let text = content_text(&result.content);
            return Err(ToolError::new(
                ToolErrorKind::Failed,
                self.redact(if text.is_empty() {
                    "the tool reported an error"
                } else {
                    &text
                }),
            ));
        }
        let value = match result.structured_content {
            // The official SDKs wrap a non-object result as {"result": value} and say so in
            // the output schema; unwrap exactly then.
            Some(Value::Object(mut m))
                if stubs::is_result_wrapper(tool.output_schema.as_ref())
                    && m.len() == 1
                    && m.contains_key("result") =>
            {
                m.remove("result").unwrap_or(Value::Null)
            }
            Some(v) => v,
            None => content_value(&result.content),
        };
        Ok(self.redact_value(value))
    }

    /// Replaces every credential value in `s` with `[redacted]`.
    pub fn redact(&self, s: &str) -> String {
        let mut out = s.to_owned();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "[redacted]");
            }
        }
        out
    }

    fn redact_value(&self, v: Value) -> Value {
        if self.secrets.is_empty() {
            return v;
        }
        match v {
            Value::String(s) => Value::String(self.redact(&s)),
            Value::Array(items) => {
                Value::Array(items.into_iter().map(|i| self.redact_value(i)).collect())
            }
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(k, v)| (self.redact(&k), self.redact_value(v)))
                    .collect(),
            ),
            // A numeric credential (an account number, a PIN) returned as a JSON number.
            Value::Number(n) if self.redact(&n.to_string()) != n.to_string() => {
                Value::String(self.redact(&n.to_string()))
            }
            other => other,
        }
    }

    /// Stops the server for good (kills a child process); later calls fail.
    pub async fn shutdown(&self) {
        let mut conn = self.conn.lock().await;
        self.closed.store(true, Ordering::SeqCst);
        if let Some(c) = conn.take() {
            let _ = c.service.cancel().await;
        }
    }
}

/// All text content joined (for error messages).
fn content_text(content: &[ContentBlock]) -> String {
    content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.as_str()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Unstructured content as Python will see it: one text block → `str` (or, when the text is
/// a JSON object or array, as many servers send their results, that value parsed); several
/// blocks → a list; other kinds of content → their MCP JSON form (a dict with `type`).
fn content_value(content: &[ContentBlock]) -> Value {
    let one = |c: &ContentBlock| match c.as_text() {
        Some(t) => {
            let trimmed = t.text.trim_start();
            let parsed = if trimmed.starts_with('{') || trimmed.starts_with('[') {
                serde_json::from_str::<Value>(&t.text).ok()
            } else {
                None
            };
            parsed.unwrap_or_else(|| Value::String(t.text.clone()))
        }
        None => serde_json::to_value(c).unwrap_or(Value::Null),
    };
    match content {
        [] => Value::Null,
        [single] => one(single),
        many => Value::Array(many.iter().map(one).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_values_named_as_secrets_count_as_credentials() {
        let c = McpServerConfig::stdio(
            "server",
            [
                "--api-key",
                "abcdef123",
                "--token=zyxwvu987",
                "--label",
                "plain-label",
            ],
        )
        .with_env("MY_SECRET", "90817263");
        let s = c.secrets();
        assert!(s.contains(&"abcdef123".to_owned()), "{s:?}");
        assert!(s.contains(&"zyxwvu987".to_owned()), "{s:?}");
        assert!(s.contains(&"90817263".to_owned()), "{s:?}");
        assert!(!s.contains(&"plain-label".to_owned()), "{s:?}");
    }
}
