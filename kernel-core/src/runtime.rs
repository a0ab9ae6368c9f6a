//! The two traits a backend implements, and how it describes itself.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::admission::{Admitted, AdmittedExec};
use crate::error::Result;
use crate::exec::{ExecOutcome, ExecRequest, LimitKind};
use crate::spec::SandboxSpec;
use crate::tools::ToolHost;

/// How strongly a backend separates the program from the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// Runs inside the kernel's own process (only for trusted code).
    #[default]
    InProcess,
    /// A WebAssembly guest: memory-safe by construction, no OS access but what is granted.
    Wasm,
    /// A separate OS process in namespaces with seccomp/landlock.
    OsProcess,
    /// A virtual machine with its own kernel.
    MicroVm,
}

/// Rough cost of creating a sandbox, so callers can decide whether to pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartupClass {
    /// Under a millisecond.
    Microseconds,
    /// A few milliseconds.
    Milliseconds,
    /// Tens of milliseconds (a process start).
    TensOfMilliseconds,
    /// Seconds (a VM boot).
    #[default]
    Seconds,
}

/// The limits a backend enforces, as a set of [`LimitKind`]s (one per field of
/// [`crate::Limits`]; `tmp_bytes` is [`LimitKind::Disk`]). Asking for a limit outside the set
/// is refused by core's admission ([`crate::admission`]) with [`crate::Error::Unsupported`],
/// never ignored. Serialized as the list of its kinds.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitSet(u8);

impl LimitSet {
    /// No limit at all.
    pub const NONE: LimitSet = LimitSet(0);
    /// Every limit of [`crate::Limits`].
    pub const ALL: LimitSet = LimitSet::of(&LimitKind::ALL);

    /// The set of `kinds`.
    pub const fn of(kinds: &[LimitKind]) -> LimitSet {
        let mut bits = 0u8;
        let mut i = 0;
        while i < kinds.len() {
            bits |= 1 << kinds[i] as u8;
            i += 1;
        }
        LimitSet(bits)
    }

    /// This set with `kind` added.
    pub const fn with(self, kind: LimitKind) -> LimitSet {
        LimitSet(self.0 | 1 << kind as u8)
    }

    /// This set without `kind`.
    pub const fn without(self, kind: LimitKind) -> LimitSet {
        LimitSet(self.0 & !(1 << kind as u8))
    }

    /// Whether `kind` is in the set.
    pub const fn contains(self, kind: LimitKind) -> bool {
        self.0 & (1 << kind as u8) != 0
    }

    /// The kinds in the set, in [`LimitKind::ALL`]'s order.
    pub fn iter(self) -> impl Iterator<Item = LimitKind> {
        LimitKind::ALL
            .into_iter()
            .filter(move |k| self.contains(*k))
    }
}

impl std::fmt::Debug for LimitSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl Serialize for LimitSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for LimitSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let kinds = Vec::<LimitKind>::deserialize(d)?;
        Ok(LimitSet::of(&kinds))
    }
}

/// The language a backend runs, and so how a program using what it lacks is answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Language {
    /// Full CPython: its standard library and every module the sandbox can import.
    CPython,
    /// A Python subset (Monty): a program that uses a module, builtin or syntax the subset
    /// lacks is answered with a Python exception when it runs (`ModuleNotFoundError`,
    /// `NameError`, `AttributeError`, `NotImplementedError`, `TypeError`, `SyntaxError`),
    /// never ignored; user-defined classes are among what it lacks.
    #[default]
    PythonSubset,
}

/// What a backend can do. Callers (and the conformance suite) read this instead of guessing,
/// and core's admission ([`crate::admission`]) refuses every spec and request that asks for
/// more, before the backend sees it. The `Default` is deny-all: no limit, no workspace, the
/// weakest isolation; a backend states each thing it can do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Isolation class.
    pub isolation: Isolation,
    /// The language programs are written in.
    pub language: Language,
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
    pub limits: LimitSet,
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

    /// Creates a sandbox: core admits `spec` against [`Runtime::capabilities`] first
    /// ([`crate::admission::admit`]: [`crate::Error::InvalidRequest`] for a malformed spec,
    /// [`crate::Error::Unsupported`] for what this backend cannot enforce), then the backend
    /// starts it ([`Runtime::create_admitted`]). Backends do not override this.
    async fn create(&self, spec: &SandboxSpec) -> Result<Box<dyn Sandbox>> {
        let admitted = crate::admission::admit(self, spec)?;
        self.create_admitted(admitted).await
    }

    /// What a backend implements: starts a sandbox for a spec core admitted (so the
    /// backend refuses only what depends on this machine or its own configuration, e.g. a
    /// VM too small to boot); [`crate::Error::Unavailable`] when this machine cannot run it.
    async fn create_admitted(&self, spec: Admitted<'_>) -> Result<Box<dyn Sandbox>>;

    /// Checks this machine: prerequisites, which protections are in force, and whether a
    /// sandbox actually starts. Backs `agentkernel doctor`.
    async fn diagnose(&self) -> Diagnosis;

    /// Starts a sandbox from a [`Snapshot`] made by [`Sandbox::snapshot`] (possibly in another
    /// process), with `spec`, admitted as for [`Runtime::create`]; a backend whose
    /// capabilities lack `snapshot` answers [`crate::Error::Unsupported`]. Backends do not
    /// override this.
    async fn restore(&self, spec: &SandboxSpec, snapshot: &Snapshot) -> Result<Box<dyn Sandbox>> {
        let caps = self.capabilities();
        let admitted = crate::admission::admit(self, spec)?;
        if !caps.snapshot {
            return Err(crate::Error::unsupported(
                "restoring a snapshot",
                self.name(),
                "use a backend whose capabilities include snapshot (see `agentkernel doctor`)",
            ));
        }
        self.restore_admitted(admitted, snapshot).await
    }

    /// What a backend with snapshots implements: starts a sandbox from `snapshot` for an
    /// admitted spec.
    async fn restore_admitted(
        &self,
        spec: Admitted<'_>,
        snapshot: &Snapshot,
    ) -> Result<Box<dyn Sandbox>> {
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
    /// Core admits the request first ([`AdmittedExec::admit`]: the program-size cap, a
    /// non-zero timeout), then the backend runs it ([`Sandbox::exec_admitted`]). Backends do
    /// not override this.
    async fn exec(&mut self, req: ExecRequest, tools: Arc<dyn ToolHost>) -> Result<ExecOutcome> {
        let req = AdmittedExec::admit(req)?;
        self.exec_admitted(req, tools).await
    }

    /// What a backend implements: runs an admitted request.
    async fn exec_admitted(
        &mut self,
        req: AdmittedExec,
        tools: Arc<dyn ToolHost>,
    ) -> Result<ExecOutcome>;

    /// Makes the sandbox as clean as a new one (globals, `/tmp`, processes), or answers
    /// [`crate::Error::Unsupported`]. Also revives a sandbox that was killed.
    async fn reset(&mut self) -> Result<()>;

    /// Saves the sandbox's state, or answers [`crate::Error::Unsupported`].
    async fn snapshot(&mut self) -> Result<Snapshot>;

    /// Stops the sandbox and waits until every process of it is gone.
    async fn shutdown(self: Box<Self>) -> Result<()>;

    /// The sandbox's root directory as the host can reach it, for host-side file access
    /// that must see what the program sees (its mounts, e.g. an overlay over the
    /// workspace): an `O_PATH` descriptor taken from the sandbox's own init process, never
    /// found by searching. `None` (the default) where the backend has no such root on the
    /// host (wasm, monty, microvm) or the sandbox is not live. Whatever the program wrote
    /// under it is untrusted: walk it beneath the descriptor, never through a symlink
    /// ([`crate::fsat::Dir`]).
    fn host_root(&self) -> Option<HostRoot> {
        None
    }
}

/// A sandbox's root directory on the host (see [`Sandbox::host_root`]).
#[derive(Debug)]
pub struct HostRoot {
    /// `O_PATH` descriptor of the root directory, opened from the sandbox's init process
    /// (`/proc/PID/root`) while that process was known to be alive.
    pub root: std::os::fd::OwnedFd,
    /// The host uid the sandbox's user maps to (files created there must belong to it).
    pub uid: u32,
    /// The host gid the sandbox's user maps to.
    pub gid: u32,
}
