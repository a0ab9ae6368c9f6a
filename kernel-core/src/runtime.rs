//! The two traits a backend implements, and how it describes itself.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::exec::{ExecOutcome, ExecRequest};
use crate::spec::SandboxSpec;
use crate::tools::ToolHost;

/// How strongly a backend separates the program from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// Runs inside the kernel's own process (only for trusted code).
    InProcess,
    /// A WebAssembly guest: memory-safe by construction, no OS access but what is granted.
    Wasm,
    /// A separate OS process in namespaces with seccomp/landlock.
    OsProcess,
    /// A virtual machine with its own kernel.
    MicroVm,
}

/// Rough cost of creating a sandbox, so callers can decide whether to pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartupClass {
    /// Under a millisecond.
    Microseconds,
    /// A few milliseconds.
    Milliseconds,
    /// Tens of milliseconds (a process start).
    TensOfMilliseconds,
    /// Seconds (a VM boot).
    Seconds,
}

/// Which [`crate::Limits`] a backend enforces. Asking for a limit it does not enforce is an
/// [`crate::Error::Unsupported`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitSupport {
    /// `wall_time`.
    pub wall_time: bool,
    /// `cpu_time`.
    pub cpu_time: bool,
    /// `memory_bytes`.
    pub memory: bool,
    /// `processes`.
    pub processes: bool,
    /// `file_size_bytes`.
    pub file_size: bool,
    /// `output_bytes`.
    pub output: bool,
    /// `tmp_bytes`.
    pub tmp: bool,
}

/// What a backend can do. Callers (and the conformance suite) read this instead of guessing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Isolation class.
    pub isolation: Isolation,
    /// Runs full CPython (as opposed to a subset interpreter).
    pub full_cpython: bool,
    /// Can import native extension modules (pip packages such as numpy) from the host.
    pub native_extensions: bool,
    /// Mounts a host workspace at `/workspace`.
    pub workspace: bool,
    /// Can allow network access to an allow-list (everything else is always denied).
    pub network_allow_list: bool,
    /// Programs can start subprocesses.
    pub subprocess: bool,
    /// [`Sandbox::snapshot`] works.
    pub snapshot: bool,
    /// [`Sandbox::reset`] works.
    pub reset: bool,
    /// Cost of [`Runtime::create`].
    pub startup: StartupClass,
    /// Enforced limits.
    pub limits: LimitSupport,
}

/// The saved state of a sandbox, to resume it later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Backend that made it (only it can restore it).
    pub backend: String,
    /// Opaque state.
    pub data: Vec<u8>,
}

/// State of one protection or prerequisite, as found on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckState {
    /// Present and in force.
    Active,
    /// Works, but weaker than the best case (e.g. partially enforced).
    Partial,
    /// Not in force on this machine; the sandbox still works without it.
    Inactive,
    /// A prerequisite is missing: the backend cannot run.
    Failed,
}

/// One line of `agentkernel doctor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// What was checked, e.g. "seccomp filter".
    pub name: String,
    /// What was found.
    pub state: CheckState,
    /// Details: versions, reasons, fixes.
    pub detail: String,
}

/// What a backend found out about this machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnosis {
    /// Whether a sandbox can be created here.
    pub available: bool,
    /// If not, why, and how to fix it.
    pub reason: Option<String>,
    /// Individual findings (prerequisites and protections).
    pub checks: Vec<Check>,
}

/// A sandbox backend. One value per backend; cheap to share (`Arc<dyn Runtime>`).
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Short stable name, e.g. `"process"`.
    fn name(&self) -> &'static str;

    /// What this backend can do.
    fn capabilities(&self) -> Capabilities;

    /// Creates a sandbox. Fails with [`crate::Error::Unsupported`] when `spec` asks for
    /// something this backend cannot enforce, and [`crate::Error::Unavailable`] when this
    /// machine cannot run the backend.
    async fn create(&self, spec: &SandboxSpec) -> Result<Box<dyn Sandbox>>;

    /// Checks this machine: prerequisites, which protections are in force, and whether a
    /// sandbox actually starts. Backs `agentkernel doctor`.
    async fn diagnose(&self) -> Diagnosis;

    /// Starts a sandbox from a [`Snapshot`] made by [`Sandbox::snapshot`] (possibly in another
    /// process), with `spec`. Backends without snapshots answer [`crate::Error::Unsupported`].
    async fn restore(&self, spec: &SandboxSpec, snapshot: &Snapshot) -> Result<Box<dyn Sandbox>> {
        let _ = (spec, snapshot);
        Err(crate::Error::unsupported(
            "restoring a snapshot",
            self.name(),
            "use a backend whose capabilities include snapshot (see `agentkernel doctor`)",
        ))
    }
}

/// One live sandbox. State (interpreter globals, files in `/tmp`) persists across
/// [`Sandbox::exec`] calls until [`Sandbox::reset`] or [`Sandbox::shutdown`].
///
/// Dropping a sandbox kills it too; `shutdown` does so and waits until it is gone.
#[async_trait]
pub trait Sandbox: Send {
    /// Unique id of this sandbox (for logs).
    fn id(&self) -> &str;

    /// Runs a program. A Python exception or a limit kill is an `Ok` outcome; `Err` means the
    /// kernel could not run it (e.g. [`crate::Error::SandboxLost`] after an earlier kill).
    async fn exec(&mut self, req: ExecRequest, tools: Arc<dyn ToolHost>) -> Result<ExecOutcome>;

    /// Makes the sandbox as clean as a new one (globals, `/tmp`, processes), or answers
    /// [`crate::Error::Unsupported`]. Also revives a sandbox that was killed.
    async fn reset(&mut self) -> Result<()>;

    /// Saves the sandbox's state, or answers [`crate::Error::Unsupported`].
    async fn snapshot(&mut self) -> Result<Snapshot>;

    /// Stops the sandbox and waits until every process of it is gone.
    async fn shutdown(self: Box<Self>) -> Result<()>;
}
