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
use std::sync::atomic::{AtomicU64, Ordering};
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

    /// Values that must never reach the sandbox (env and header values of 6+ characters).
    fn secrets(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for v in self.env.values().chain(self.headers.values()) {
            // Also the token without its scheme ("Bearer abc" → "abc").
            for s in [v.as_str(), v.rsplit(' ').next().unwrap_or("")] {
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

/// Lines of the server's stderr kept for error messages.
const STDERR_TAIL_LINES: usize = 20;

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
                && let Err(e) = server.refresh(&peer).await
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
    tools: RwLock<Vec<McpTool>>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    stub_root: PathBuf,
}

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
            stderr_tail: Arc::new(Mutex::new(VecDeque::new())),
            stub_root,
        });
        server.peer().await?;
        Ok(server)
    }

    /// The tools as last listed.
    pub fn tools(&self) -> Vec<McpTool> {
        self.tools.read().map(|t| t.clone()).unwrap_or_default()
    }

    /// The server's own timeout, if set.
    pub fn timeout(&self) -> Option<Duration> {
        self.config.timeout
    }

    /// A peer to send requests to, connecting (again) when there is no live connection.
    async fn peer(self: &Arc<Self>) -> Result<(Peer<RoleClient>, u64)> {
        let mut conn = self.conn.lock().await;
        if let Some(c) = conn.as_ref() {
            if !c.service.is_closed() {
                return Ok((c.service.peer().clone(), c.generation));
            }
            tracing::info!(server = %self.name, "MCP server connection closed; reconnecting");
        }
        let handler = Handler {
            server: Arc::downgrade(self),
        };
        let service = self.connect(handler).await?;
        let peer = service.peer().clone();
        self.refresh(&peer).await?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        *conn = Some(Conn {
            service,
            generation,
        });
        Ok((peer, generation))
    }

    async fn connect(&self, handler: Handler) -> Result<RunningService<RoleClient, Handler>> {
        let started = if let Some(command) = &self.config.command {
            let mut cmd = tokio::process::Command::new(command);
            cmd.args(&self.config.args).envs(&self.config.env);
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
                self.keep_stderr(stderr);
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

    /// Reads the child's stderr into a short ring buffer (and the debug log).
    fn keep_stderr(&self, stderr: tokio::process::ChildStderr) {
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
        });
    }

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

    /// Lists the server's tools and rewrites its stubs.
    async fn refresh(&self, peer: &Peer<RoleClient>) -> Result<()> {
        let listed = peer.list_all_tools().await.map_err(|e| {
            Error::tool_source(
                &self.name,
                format!("tools/list failed: {}", self.redact(&e.to_string())),
                "the server must implement tools/list",
            )
        })?;
        let mut tools: Vec<McpTool> = Vec::new();
        for t in listed {
            let py = stubs::python_name(&t.name);
            if tools.iter().any(|o| o.py == py) {
                tracing::warn!(server = %self.name, tool = %t.name, "two tools map to the same Python name {py}; keeping the first");
                continue;
            }
            let input_schema = Value::Object((*t.input_schema).clone());
            let validator = match jsonschema::validator_for(&input_schema) {
                Ok(v) => Some(Arc::new(v)),
                Err(e) => {
                    tracing::warn!(server = %self.name, tool = %t.name, error = %e, "input schema does not compile; arguments go unvalidated");
                    None
                }
            };
            tools.push(McpTool {
                py,
                raw: t.name.to_string(),
                description: t.description.as_deref().unwrap_or("").to_owned(),
                input_schema,
                output_schema: t.output_schema.map(|s| Value::Object((*s).clone())),
                validator,
            });
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
        if let Ok(mut slot) = self.tools.write() {
            *slot = tools;
        }
        Ok(())
    }

    /// Calls tool `raw` with `args` and turns the answer into the value Python sees.
    pub async fn call(
        self: &Arc<Self>,
        raw: &str,
        args: serde_json::Map<String, Value>,
    ) -> std::result::Result<Value, ToolError> {
        let (peer, generation) = self
            .peer()
            .await
            .map_err(|e| ToolError::new(ToolErrorKind::Failed, self.redact(&e.to_string())))?;
        let params = CallToolRequestParams::new(raw.to_owned()).with_arguments(args);
        match peer.call_tool(params).await {
            Ok(result) => self.convert(result),
            Err(e) => {
                let gone = matches!(
                    e,
                    ServiceError::TransportClosed | ServiceError::TransportSend(_)
                );
                if gone {
                    self.forget(generation).await;
                    // Give the stderr reader a moment to catch the server's last words.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err(ToolError::new(
                        ToolErrorKind::Failed,
                        format!(
                            "MCP server {:?} went away during the call ({e}); it will be restarted for the next call{}",
                            self.name,
                            self.stderr_suffix()
                        ),
                    ))
                } else {
                    Err(ToolError::new(
                        ToolErrorKind::Failed,
                        format!(
                            "MCP server {:?}: {}",
                            self.name,
                            self.redact(&e.to_string())
                        ),
                    ))
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

    fn convert(&self, result: CallToolResult) -> std::result::Result<Value, ToolError> {
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
            Some(v) => unwrap_result(v),
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
            other => other,
        }
    }

    /// Stops the server (kills a child process).
    pub async fn shutdown(&self) {
        if let Some(c) = self.conn.lock().await.take() {
            let _ = c.service.cancel().await;
        }
    }
}

/// Servers built on the official SDKs wrap a non-object result as `{"result": value}` in
/// structured content; Python gets the value itself.
fn unwrap_result(v: Value) -> Value {
    match v {
        Value::Object(mut m) if m.len() == 1 && m.contains_key("result") => {
            m.remove("result").unwrap_or(Value::Null)
        }
        other => other,
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
