//! The `Kernel`: one configured backend plus default sandbox settings and tools.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentkernel_core::{
    Error, ExecOutcome, ExecRequest, Limits, NoTools, Pool, PoolConfig, Result, Runtime, Sandbox,
    SandboxSpec, ToolHost, Workspace, Workspaces,
};
use agentkernel_tool_bridge::{ToolPolicy, ToolRegistry};

use crate::backends::BackendSettings;
pub use crate::backends::{BACKENDS, Backend, compiled_backends, default_backend};
#[cfg(feature = "microvm")]
use crate::config::MicroVmSettings;

/// A kernel's tools and their policy, if it has tools.
pub(crate) type KernelTools = Option<(ToolRegistry, ToolPolicy)>;

/// The tool host for one execution: a new gate (fresh call budget), or [`NoTools`].
pub(crate) fn gate(tools: &KernelTools) -> Arc<dyn ToolHost> {
    match tools {
        Some((reg, policy)) => reg.gate_with(policy.clone()),
        None => Arc::new(NoTools),
    }
}

/// Configures a [`Kernel`].
#[derive(Clone)]
pub struct KernelBuilder {
    backend: String,
    spec: SandboxSpec,
    tools: Option<ToolRegistry>,
    tool_policy: Option<ToolPolicy>,
    backend_settings: BackendSettings,
    named_workspace: Option<String>,
    data_dir: Option<PathBuf>,
    protected: Vec<PathBuf>,
    workspace_quota: Option<u64>,
    pool: Option<PoolConfig>,
    session_idle: Duration,
    /// A setting refused when it was given (message, hint), reported by `build`.
    invalid: Option<(String, &'static str)>,
}

impl Default for KernelBuilder {
    fn default() -> Self {
        KernelBuilder {
            backend: default_backend().into(),
            spec: SandboxSpec::default(),
            tools: None,
            tool_policy: None,
            backend_settings: BackendSettings::default(),
            named_workspace: None,
            data_dir: None,
            protected: Vec::new(),
            workspace_quota: None,
            pool: None,
            session_idle: crate::session::DEFAULT_IDLE_TIMEOUT,
            invalid: None,
        }
    }
}

impl KernelBuilder {
    /// Chooses the backend: a [`Backend`] or a name (see [`BACKENDS`]); default: the first
    /// compiled one ([`default_backend`], `process` in the default build).
    pub fn backend(mut self, name: impl Into<String>) -> Self {
        self.backend = name.into();
        self
    }

    /// Replaces all limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.spec.limits = limits;
        self
    }

    /// Wall-clock limit per run.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.spec.limits.wall_time = limit;
        self
    }

    /// Wall-clock limit per run, in seconds (a negative, infinite or NaN number is refused
    /// by [`KernelBuilder::build`], naming it).
    #[deprecated(note = "use `timeout(Duration)`: seconds are for the CLI and agentkernel.toml")]
    pub fn timeout_secs(mut self, secs: f64) -> Self {
        match Duration::try_from_secs_f64(secs) {
            Ok(limit) => self.spec.limits.wall_time = limit,
            Err(_) => {
                self.invalid = Some((
                    format!("timeout_secs({secs}) is not a time limit"),
                    "give a positive number of seconds, e.g. timeout_secs(30.0), or timeout(Duration)",
                ))
            }
        }
        self
    }

    /// Memory limit in MiB.
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.spec.limits.memory_bytes = Some(mib.saturating_mul(1 << 20));
        self
    }

    /// Host directory mounted read-write at `/workspace` (created if missing).
    pub fn workspace(mut self, dir: impl Into<PathBuf>) -> Self {
        self.spec.workspace = Some(dir.into());
        self.named_workspace = None;
        self
    }

    /// The named, persistent workspace `name` (under the data dir, created on first use)
    /// mounted at `/workspace`.
    pub fn named_workspace(mut self, name: impl Into<String>) -> Self {
        self.named_workspace = Some(name.into());
        self.spec.workspace = None;
        self
    }

    /// The data directory: named workspaces live in its `workspaces/` (default:
    /// [`Workspaces::data_dir`]).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// A host file or directory the host trusts (e.g. the configuration file in use): a
    /// workspace or writable mount that is, or holds, it is refused at [`KernelBuilder::build`],
    /// as are `/`, the home directory and AgentKernel's data and cache dirs.
    pub fn protect_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.protected.push(path.into());
        self
    }

    /// Quota of every named workspace, in bytes (checked between runs; see
    /// [`agentkernel_core::Workspace::check_quota`]).
    pub fn workspace_quota(mut self, bytes: u64) -> Self {
        self.workspace_quota = Some(bytes);
        self
    }

    /// Keeps pre-warmed sandboxes (see [`Pool`]): `execute` then starts from a warm one.
    pub fn pool(mut self, config: PoolConfig) -> Self {
        self.pool = Some(config);
        self
    }

    /// How long a session may stay unused before its sandbox is shut down (its workspace
    /// stays). Default 30 minutes.
    pub fn session_idle_timeout(mut self, idle: Duration) -> Self {
        self.session_idle = idle;
        self
    }

    /// Adds an environment variable of the sandbox (nothing else from the host leaks in).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.spec.env.insert(key.into(), value.into());
        self
    }

    /// Replaces the whole sandbox spec.
    pub fn spec(mut self, spec: SandboxSpec) -> Self {
        self.spec = spec;
        self
    }

    /// The tools programs may call: every sandbox mounts the registry's `tools` package at
    /// `/tools`, and every execution gets a fresh [`agentkernel_tool_bridge::ToolGate`] (the
    /// registry's policy, a new call budget).
    pub fn tools(mut self, registry: ToolRegistry) -> Self {
        self.tools = Some(registry);
        self
    }

    /// The tool policy of this kernel's sandboxes (allow-list, timeout, caps, budget),
    /// instead of the registry's own: one registry can serve kernels with different rights.
    pub fn tool_policy(mut self, policy: ToolPolicy) -> Self {
        self.tool_policy = Some(policy);
        self
    }

    /// How the microvm backend starts VMs (`[microvm]` in `agentkernel.toml`; feature
    /// `microvm`).
    #[cfg(feature = "microvm")]
    pub fn microvm(mut self, settings: MicroVmSettings) -> Self {
        self.backend_settings.microvm = settings;
        self
    }

    /// Interpreter for the process backend (default: `$AGENTKERNEL_PYTHON` or `python3`;
    /// feature `process`).
    #[cfg(feature = "process")]
    pub fn python(mut self, path: impl Into<PathBuf>) -> Self {
        self.backend_settings.python = Some(path.into());
        self
    }

    /// Checks the configuration and starts the backend (and the pool's warm-up, which needs
    /// a Tokio runtime).
    pub fn build(mut self) -> Result<Kernel> {
        if let Some((message, hint)) = self.invalid.take() {
            return Err(Error::invalid(message, hint));
        }
        let data_dir = self.data_dir.clone().unwrap_or_else(Workspaces::data_dir);
        let mut workspaces = Workspaces::at(data_dir.join("workspaces"));
        if let Some(q) = self.workspace_quota {
            workspaces = workspaces.with_quota(q);
            // One file can never exceed the quota.
            let cap = self.spec.limits.file_size_bytes.map_or(q, |f| f.min(q));
            self.spec.limits.file_size_bytes = Some(cap);
        }
        let mut workspace = None;
        if let Some(name) = &self.named_workspace {
            let ws = workspaces.open(name)?;
            self.spec.workspace = Some(ws.path.clone());
            workspace = Some(ws);
        }
        if let Some(ws) = self.spec.workspace.take() {
            std::fs::create_dir_all(&ws)
                .map_err(|e| Error::io(format!("creating workspace {}", ws.display()), e))?;
            // The caller's own symlinks are resolved here, once; backends then refuse any
            // symlink in the path (a sandbox could plant one).
            let real = std::fs::canonicalize(&ws)
                .map_err(|e| Error::io(format!("resolving workspace {}", ws.display()), e))?;
            agentkernel_core::hostdirs::check_workspace_dir(&real, &data_dir, &self.protected)?;
            self.spec.workspace = Some(real);
        }
        for m in self.spec.mounts.iter().filter(|m| m.writable) {
            let real = std::fs::canonicalize(&m.host)
                .map_err(|e| Error::io(format!("resolving mount {}", m.host.display()), e))?;
            agentkernel_core::hostdirs::check_workspace_dir(&real, &data_dir, &self.protected)?;
        }
        if let Some(reg) = &self.tools {
            if let Some(m) = self
                .spec
                .mounts
                .iter()
                .find(|o| o.guest.starts_with("/tools"))
            {
                return Err(Error::invalid(
                    format!(
                        "the spec already mounts {} at {}, where the tool package goes",
                        m.host.display(),
                        m.guest.display()
                    ),
                    "mount it elsewhere; /tools belongs to the tool registry",
                ));
            }
            self.spec.mounts.extend(reg.mounts());
        }
        self.spec.validate()?;
        let tools = match (self.tools, self.tool_policy) {
            (Some(reg), policy) => {
                let policy = policy.unwrap_or_else(|| reg.policy().clone());
                policy
                    .validate()
                    .map_err(|m| Error::invalid(m, "fix the tool policy"))?;
                Some((reg, policy))
            }
            (None, Some(_)) => {
                return Err(Error::invalid(
                    "a tool policy was given but no tools",
                    "pass a ToolRegistry with .tools(...)",
                ));
            }
            (None, None) => None,
        };
        let mut runtime = self.backend_settings.make_runtime(&self.backend)?;
        let mut pool = None;
        if let Some(config) = self.pool {
            let p = Pool::new(runtime, self.spec.clone(), config)?;
            runtime = Arc::new(p.clone());
            pool = Some(p);
        }
        Ok(Kernel {
            runtime,
            pool,
            spec: self.spec,
            tools,
            workspace,
            workspaces,
            sessions: crate::session::Sessions::new(self.session_idle),
        })
    }
}

/// A configured backend: runs programs in fresh sandboxes, or hands out sandboxes for
/// multi-step work.
#[derive(Clone)]
pub struct Kernel {
    runtime: Arc<dyn Runtime>,
    spec: SandboxSpec,
    pool: Option<Pool>,
    tools: KernelTools,
    /// The named workspace of `spec`, if one was chosen (for its quota).
    workspace: Option<Workspace>,
    workspaces: Workspaces,
    sessions: crate::session::Sessions,
}

impl Kernel {
    /// Starts configuring a kernel.
    pub fn builder() -> KernelBuilder {
        KernelBuilder::default()
    }

    /// The backend.
    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.runtime
    }

    /// The spec every sandbox of this kernel gets.
    pub fn spec(&self) -> &SandboxSpec {
        &self.spec
    }

    /// Runs `code` in a fresh sandbox and returns the outcome.
    pub async fn execute(&self, code: impl Into<String>) -> Result<ExecOutcome> {
        self.execute_request(ExecRequest::new(code)).await
    }

    /// Like [`Kernel::execute`] with a full request (timeout, live output).
    pub async fn execute_request(&self, req: ExecRequest) -> Result<ExecOutcome> {
        if let Some(ws) = &self.workspace {
            ws.check_quota()?;
        }
        self.execute_with_spec(&self.spec, req).await
    }

    /// Like [`Kernel::execute_request`] with the named workspace `name` at `/workspace`.
    pub async fn execute_in_workspace(&self, name: &str, req: ExecRequest) -> Result<ExecOutcome> {
        let ws = self.workspaces.open(name)?;
        ws.check_quota()?;
        let spec = SandboxSpec {
            workspace: Some(ws.path),
            ..self.spec.clone()
        };
        self.execute_with_spec(&spec, req).await
    }

    async fn execute_with_spec(&self, spec: &SandboxSpec, req: ExecRequest) -> Result<ExecOutcome> {
        let booted = Instant::now();
        let mut sandbox = self.runtime.create(spec).await?;
        let boot = booted.elapsed();
        let result = sandbox.exec(req, self.tools()).await;
        let torn = Instant::now();
        let shut = sandbox.shutdown().await;
        let mut outcome = result?;
        shut?;
        outcome.timings.boot = boot;
        outcome.timings.teardown = torn.elapsed();
        Ok(outcome)
    }

    /// A new sandbox with this kernel's spec, for several `exec` calls that share state.
    /// Pass [`Kernel::tools`] to each `exec` (a new gate per execution: a fresh call budget).
    pub async fn sandbox(&self) -> Result<Box<dyn Sandbox>> {
        self.runtime.create(&self.spec).await
    }

    /// The tool host for one execution: a new gate on the registry (its policy, a fresh
    /// call budget), or [`NoTools`] when the kernel has none.
    pub fn tools(&self) -> Arc<dyn ToolHost> {
        gate(&self.tools)
    }

    pub(crate) fn tools_handle(&self) -> KernelTools {
        self.tools.clone()
    }

    /// A digest of what a program run by this kernel can do and reach: the backend, limits,
    /// environment, network policy, workspace, mounts (the tool package's aside: it is made
    /// anew per process) and the tools' names. Two kernels with the same digest run a task
    /// the same way ([`crate::tasks::Tasks::open`] keeps a store per digest).
    pub fn identity(&self) -> String {
        use sha2::Digest as _;
        let mut tools: Vec<String> = self.tools().catalog().into_iter().map(|t| t.name).collect();
        tools.sort();
        let mounts: Vec<_> = self
            .spec
            .mounts
            .iter()
            .filter(|m| !m.guest.starts_with("/tools"))
            .collect();
        let what = serde_json::json!({
            "backend": self.runtime.name(),
            "limits": self.spec.limits,
            "env": self.spec.env,
            "network": self.spec.network,
            "workspace": self.spec.workspace,
            "mounts": mounts,
            "tools": tools,
        });
        let digest = sha2::Sha256::digest(what.to_string().as_bytes());
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }

    /// The data directory this kernel keeps its named workspaces (and a library's task
    /// stores) in.
    pub fn data_dir(&self) -> &std::path::Path {
        self.workspaces
            .root()
            .parent()
            .unwrap_or(self.workspaces.root())
    }

    /// The named workspaces of this kernel's data dir.
    pub fn workspaces(&self) -> &Workspaces {
        &self.workspaces
    }

    /// The pool's counters, when the kernel was built with [`KernelBuilder::pool`].
    pub fn pool_stats(&self) -> Option<agentkernel_core::PoolStats> {
        self.pool.as_ref().map(Pool::stats)
    }

    /// Session `name`: one sandbox kept for a conversation, created on first use. Globals
    /// persist across its `exec` calls. Its workspace is the kernel's own when the kernel
    /// has one ([`KernelBuilder::workspace`] or [`KernelBuilder::named_workspace`]), else the
    /// named workspace of the same name as the session.
    pub async fn session(&self, name: &str) -> Result<crate::Session> {
        let ws = match self.own_workspace() {
            Some(ws) => ws,
            None => self.workspaces.open(name)?,
        };
        self.sessions.get_or_start(self, name, ws).await
    }

    /// Like [`Kernel::session`] with the named workspace `workspace`.
    pub async fn session_with_workspace(
        &self,
        name: &str,
        workspace: &str,
    ) -> Result<crate::Session> {
        let ws = self.workspaces.open(workspace)?;
        self.sessions.get_or_start(self, name, ws).await
    }

    /// Like [`Kernel::session_with_workspace`] with `options` applied to the kernel's spec
    /// (stricter limits, more environment, fewer tools). A session of that name already open
    /// is returned when it was started with the same options, refused otherwise.
    pub async fn session_with_options(
        &self,
        name: &str,
        workspace: &str,
        options: &crate::session::SessionOptions,
    ) -> Result<crate::Session> {
        let ws = self.workspaces.open(workspace)?;
        self.sessions
            .start_with(self, name, ws, None, Some(options))
            .await
    }

    /// The kernel's own workspace: its named one, or the host directory it was given (named
    /// by its path).
    fn own_workspace(&self) -> Option<Workspace> {
        if let Some(ws) = &self.workspace {
            return Some(ws.clone());
        }
        self.spec.workspace.as_ref().map(|path| Workspace {
            name: path.display().to_string(),
            path: path.clone(),
            quota: None,
        })
    }

    /// Starts session `name` (its workspace chosen as by [`Kernel::session`]) from a snapshot made by
    /// [`crate::Session::save`], replacing an open session of that name. Backends without
    /// snapshots answer [`Error::Unsupported`].
    pub async fn resume_session(
        &self,
        name: &str,
        snapshot: &agentkernel_core::Snapshot,
    ) -> Result<crate::Session> {
        let ws = match self.own_workspace() {
            Some(ws) => ws,
            None => self.workspaces.open(name)?,
        };
        self.sessions
            .start_with(self, name, ws, Some(snapshot), None)
            .await
    }

    /// The open sessions.
    pub fn sessions(&self) -> Vec<crate::session::SessionInfo> {
        self.sessions.list()
    }

    /// Ends session `name` (its sandbox stops; its workspace stays). `false` if unknown.
    pub async fn close_session(&self, name: &str) -> Result<bool> {
        self.sessions.close(name).await
    }

    /// The tool registry, if the kernel has tools.
    pub fn tool_registry(&self) -> Option<&ToolRegistry> {
        self.tools.as_ref().map(|(reg, _)| reg)
    }
}
