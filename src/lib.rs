//! # AgentKernel
//!
//! An execution substrate for AI agents: an agent hands it a Python program, AgentKernel
//! runs it in a sandbox and hands back the output. This crate is the facade: it picks a
//! backend, wires the agent's tools into it, and offers the library API and the
//! `agentkernel` command-line tool.
//!
//! The architecture, crate by crate:
//! - `agentkernel-core`: the `Runtime`/`Sandbox`/`ToolHost` contracts, admission of every
//!   spec and request against a backend's `Capabilities`, the tool ABI, the guest protocol
//!   and the exec state machine its backends share, the conformance suite;
//! - `agentkernel-backend-process` (feature `process`, default): host CPython in a
//!   namespace + seccomp + landlock jail;
//! - this crate: [`Kernel`] (backend + limits + tools + named workspaces, optionally a
//!   [`Pool`]), [`Session`]s, durable [`tasks`] (SQLite / PostgreSQL), the session server
//!   ([`serve`], with its client), `agentkernel.toml` ([`config`]), the backends this build
//!   has (one registration each, `backends.rs`), and the CLI (`src/main.rs` and
//!   `src/commands/`, feature `cli`);
//! - `agentkernel-tool-bridge`: the tool registry (Rust functions, MCP servers, local Python
//!   modules), the generated `/tools` package and the per-call policy;
//! - `agentkernel-backend-wasm` (feature `wasm`, default): CPython compiled to WASI on
//!   wasmtime;
//! - `agentkernel-backend-monty` (feature `monty`, default): the Monty Python-subset
//!   interpreter, in a jailed worker process (`monty`) or in-process (`monty-inprocess`);
//! - `agentkernel-backend-microvm` (feature `microvm`, default): a Linux microVM per
//!   sandbox under QEMU `-M microvm` (software emulation where KVM is not real).
//!
//! ```no_run
//! # async fn demo() -> agentkernel::Result<()> {
//! use agentkernel::{Kernel, create_agent};
//!
//! // The seed's entry point.
//! let agent = create_agent()?;
//! let result = agent.execute_task("print(6 * 7)").await?;
//! assert_eq!(result.output, "42\n");
//!
//! // The full API: choose the backend and limits, get the whole outcome.
//! let kernel = Kernel::builder()
//!     .backend("process")
//!     .timeout(std::time::Duration::from_secs(5))
//!     .memory_mib(256)
//!     .build()?;
//! let outcome = kernel.execute("import sys; print(sys.version_info[0])").await?;
//! assert_eq!(outcome.stdout.text(), "3\n");
//! # Ok(()) }
//! ```

mod agent;
mod backends;
pub mod config;
mod doctor;
#[cfg(feature = "server")]
pub mod http;
mod kernel;
pub mod serve;
pub mod session;
pub mod tasks;

pub use agent::{Agent, TaskResult, create_agent};
pub use agentkernel_core as core;
pub use agentkernel_core::{
    Capabilities, CapturedOutput, Error, ExecOutcome, ExecRequest, ExecStatus, FnTools, LimitKind,
    Limits, NoTools, OutputSink, Pool, PoolConfig, PoolStats, Result, Runtime, Sandbox,
    SandboxSpec, Snapshot, StreamKind, Timings, ToolCallRecord, ToolError, ToolErrorKind, ToolHost,
    Workspace, WorkspaceInfo, Workspaces,
};
pub use agentkernel_tool_bridge as tools;
pub use agentkernel_tool_bridge::{
    FunctionTool, JsonSchema, McpServerConfig, ToolPolicy, ToolRegistry,
};
pub use config::{Config, MicroVmSettings};
pub use doctor::{BackendReport, doctor};
pub use kernel::{BACKENDS, Backend, Kernel, KernelBuilder, compiled_backends, default_backend};
pub use session::{Session, SessionInfo, SessionOptions};
pub use tasks::{TaskConfig, TaskRecord, TaskRequest, TaskState, Tasks};

/// The allocator that counts a `monty` sandbox's memory (re-exported, so an embedder needs no
/// separately pinned dependency). `monty-inprocess` enforces its memory limit only in a
/// binary that installs it:
///
/// ```ignore
/// #[global_allocator]
/// static ALLOC: agentkernel::monty_alloc::LimitedAllocator = agentkernel::monty_alloc::LimitedAllocator;
/// ```
#[cfg(feature = "monty")]
pub use monty_alloc;

/// The global allocator an application embedding the kernel installs: Monty's counting
/// allocator with the `monty` feature (its memory limits need it), the system allocator
/// without it, so that the same two lines build with any set of backends:
///
/// ```ignore
/// #[global_allocator]
/// static ALLOC: agentkernel::Allocator = agentkernel::ALLOCATOR;
/// ```
#[cfg(feature = "monty")]
pub type Allocator = monty_alloc::LimitedAllocator;
/// See the `monty` build's documentation: the system allocator here.
#[cfg(not(feature = "monty"))]
pub type Allocator = std::alloc::System;

/// The value of [`Allocator`].
#[cfg(feature = "monty")]
pub const ALLOCATOR: Allocator = monty_alloc::LimitedAllocator;
/// The value of [`Allocator`].
#[cfg(not(feature = "monty"))]
pub const ALLOCATOR: Allocator = std::alloc::System;

/// The hidden first argument that makes a binary calling [`run_worker_if_requested`] the
/// `monty` backend's worker.
#[cfg(feature = "monty")]
pub use agentkernel_backend_monty::WORKER_ARG as MONTY_WORKER_ARG;

/// Makes the running binary its own `monty` worker, so that worker mode (the default `monty`
/// backend: Monty in a jailed process) needs no second binary. Call it first thing in
/// `main`, before any thread starts:
///
/// ```no_run
/// agentkernel::run_worker_if_requested();
/// // ... then the tokio runtime, a `Kernel` with backend "monty", and so on.
/// ```
///
/// `examples/embed_monty.rs` is a whole program.
///
/// When the jail starts this binary as a worker (with [`MONTY_WORKER_ARG`] as its first
/// argument), this call runs the worker and never returns. Otherwise it records this binary
/// as the worker every `monty` sandbox of the process starts, and returns. Without it, a
/// `monty` sandbox looks for `$AGENTKERNEL_MONTY_WORKER`, then `agentkernel-monty-worker` beside
/// the binary. Does nothing in a build without the `monty` feature.
pub fn run_worker_if_requested() {
    #[cfg(feature = "monty")]
    {
        if std::env::args_os()
            .nth(1)
            .is_some_and(|a| a == MONTY_WORKER_ARG)
        {
            agentkernel_backend_monty::worker::main();
        }
        if let Ok(exe) = std::env::current_exe() {
            agentkernel_backend_monty::set_default_worker(
                agentkernel_backend_monty::WorkerCommand {
                    executable: exe,
                    args: vec![MONTY_WORKER_ARG.into()],
                },
            );
        }
    }
}
