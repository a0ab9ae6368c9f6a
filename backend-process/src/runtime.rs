//! The process backend's `Runtime`: the host's CPython in the jail
//! (`agentkernel_jail`), with this backend's capabilities.

use std::path::PathBuf;

use agentkernel_core::admission::Admitted;
use agentkernel_core::{
    Capabilities, Diagnosis, Isolation, Language, LimitSet, Result, Runtime, Sandbox, SandboxSpec,
    StartupClass,
};
use agentkernel_jail::{GuestAgent, HostPython, JailConfig, JailRuntime, JailSandbox};
use async_trait::async_trait;

/// Options of the process backend.
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    /// Interpreter to run; default: `$AGENTKERNEL_PYTHON`, else `python3` on `PATH`.
    pub python: Option<PathBuf>,
    /// Give sandboxes a host workspace through an overlay with a capped write layer
    /// instead of the host directory itself (default: on). Where the kernel cannot make the
    /// layer, and with this off, the program's writes reach the host as they happen, with
    /// only the file-size limit on them, and symlinks leaving the workspace are removed by
    /// a sweep at the end of each exec (`doctor` says which).
    pub workspace_layer: bool,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        ProcessConfig {
            python: None,
            workspace_layer: true,
        }
    }
}

/// The jailed-CPython backend. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ProcessRuntime {
    jail: JailRuntime,
}

impl ProcessRuntime {
    /// Finds the interpreter, compiles the seccomp filters and probes cgroups and landlock.
    /// Fails with [`agentkernel_core::Error::Unavailable`] when this machine cannot run the
    /// backend.
    pub fn new(config: ProcessConfig) -> Result<Self> {
        let python = agentkernel_jail::discover_python(config.python.as_deref())?;
        Ok(ProcessRuntime {
            jail: JailRuntime::new(JailConfig {
                backend: "process",
                agent: GuestAgent::Python(python),
                workspace_layer: config.workspace_layer,
            })?,
        })
    }

    /// This runtime with landlock switched off, as on a kernel without it (which the
    /// backend supports): for tests that check what the other layers hold on their own.
    #[doc(hidden)]
    pub fn without_landlock(self) -> Self {
        ProcessRuntime {
            jail: self.jail.without_landlock(),
        }
    }

    /// The interpreter sandboxes run.
    pub fn python(&self) -> Option<&HostPython> {
        self.jail.python()
    }

    /// Like [`Runtime::create`], returning the concrete type (for [`JailSandbox::hello`]).
    /// The spec is admitted as by [`Runtime::create`].
    pub async fn create_sandbox(&self, spec: &SandboxSpec) -> Result<JailSandbox> {
        let admitted = agentkernel_core::admission::admit(self, spec)?;
        self.jail.create_sandbox(admitted).await
    }
}

#[async_trait]
impl Runtime for ProcessRuntime {
    fn name(&self) -> &'static str {
        "process"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            isolation: Isolation::OsProcess,
            language: Language::CPython,
            native_extensions: true,
            workspace: true,
            subprocess: true,
            reset: true,
            startup: StartupClass::TensOfMilliseconds,
            limits: LimitSet::ALL,
            // Everything not stated here is denied (Capabilities' default is deny-all).
            ..Capabilities::default()
        }
    }

    async fn create_admitted(&self, spec: Admitted<'_>) -> Result<Box<dyn Sandbox>> {
        Ok(Box::new(self.jail.create_sandbox(spec).await?))
    }

    async fn diagnose(&self) -> Diagnosis {
        self.jail.diagnose().await
    }
}
