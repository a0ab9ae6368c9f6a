//! The `Kernel`: one configured backend plus default sandbox settings and tools.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentkernel_core::{
    Error, ExecOutcome, ExecRequest, Limits, NoTools, Result, Runtime, Sandbox, SandboxSpec,
    ToolHost,
};
use agentkernel_tool_bridge::{ToolPolicy, ToolRegistry};

/// Every backend AgentKernel knows, with whether this build has it and what it is.
pub const BACKENDS: &[(&str, &str)] = &[
    (
        "process",
        "host CPython in a namespace + seccomp + landlock jail (default)",
    ),
    ("wasm", "CPython on WebAssembly (wasmtime): planned"),
    (
        "monty",
        "Monty, an in-process Python-subset interpreter: planned",
    ),
    ("microvm", "a full Linux microVM per sandbox: planned"),
];

/// Names of the backends compiled into this build.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut out = Vec::new();
    if cfg!(feature = "process") {
        out.push("process");
    }
    out
}

/// Builds the runtime named `name`.
pub(crate) fn make_runtime(name: &str, python: Option<PathBuf>) -> Result<Arc<dyn Runtime>> {
    match name {
        #[cfg(feature = "process")]
        "process" => {
            let rt = agentkernel_backend_process::ProcessRuntime::new(
                agentkernel_backend_process::ProcessConfig { python },
            )?;
            Ok(Arc::new(rt))
        }
        _ if BACKENDS.iter().any(|(b, _)| *b == name) => {
            let _ = python;
            Err(Error::invalid(
                format!("backend {name:?} is not part of this build"),
                format!("use one of: {}", compiled_backends().join(", ")),
            ))
        }
        _ => Err(Error::invalid(
            format!("unknown backend {name:?}"),
            format!(
                "use one of: {} (known: {})",
                compiled_backends().join(", "),
                BACKENDS
                    .iter()
                    .map(|(b, _)| *b)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// Configures a [`Kernel`].
#[derive(Clone)]
pub struct KernelBuilder {
    backend: String,
    spec: SandboxSpec,
    tools: Option<ToolRegistry>,
    tool_policy: Option<ToolPolicy>,
    python: Option<PathBuf>,
}

impl Default for KernelBuilder {
    fn default() -> Self {
        KernelBuilder {
            backend: "process".into(),
            spec: SandboxSpec::default(),
            tools: None,
            tool_policy: None,
            python: None,
        }
    }
}

impl KernelBuilder {
    /// Chooses the backend by name (see [`BACKENDS`]); default `process`.
    pub fn backend(mut self, name: impl Into<String>) -> Self {
        self.backend = name.into();
        self
    }

    /// Replaces all limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.spec.limits = limits;
        self
    }

    /// Wall-clock limit per run, in seconds.
    pub fn timeout_secs(mut self, secs: f64) -> Self {
        self.spec.limits.wall_time = Duration::try_from_secs_f64(secs).unwrap_or(Duration::ZERO);
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

    /// Interpreter for the process backend (default: `$AGENTKERNEL_PYTHON` or `python3`).
    pub fn python(mut self, path: impl Into<PathBuf>) -> Self {
        self.python = Some(path.into());
        self
    }

    /// Checks the configuration and starts the backend.
    pub fn build(mut self) -> Result<Kernel> {
        if let Some(ws) = self.spec.workspace.take() {
            std::fs::create_dir_all(&ws)
                .map_err(|e| Error::io(format!("creating workspace {}", ws.display()), e))?;
            // The caller's own symlinks are resolved here, once; backends then refuse any
            // symlink in the path (a sandbox could plant one).
            let real = std::fs::canonicalize(&ws)
                .map_err(|e| Error::io(format!("resolving workspace {}", ws.display()), e))?;
            self.spec.workspace = Some(real);
        }
        if let Some(reg) = &self.tools {
            for m in reg.mounts() {
                if !self.spec.mounts.iter().any(|o| o.guest == m.guest) {
                    self.spec.mounts.push(m);
                }
            }
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
        let runtime = make_runtime(&self.backend, self.python)?;
        Ok(Kernel {
            runtime,
            spec: self.spec,
            tools,
        })
    }
}

/// A configured backend: runs programs in fresh sandboxes, or hands out sandboxes for
/// multi-step work.
#[derive(Clone)]
pub struct Kernel {
    runtime: Arc<dyn Runtime>,
    spec: SandboxSpec,
    tools: Option<(ToolRegistry, ToolPolicy)>,
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
        let booted = Instant::now();
        let mut sandbox = self.runtime.create(&self.spec).await?;
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
        match &self.tools {
            Some((reg, policy)) => reg.gate_with(policy.clone()),
            None => Arc::new(NoTools),
        }
    }

    /// The tool registry, if the kernel has tools.
    pub fn tool_registry(&self) -> Option<&ToolRegistry> {
        self.tools.as_ref().map(|(reg, _)| reg)
    }
}
