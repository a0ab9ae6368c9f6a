//! # agentkernel-core
//!
//! The contracts every other AgentKernel crate shares, and nothing backend-specific:
//!
//! - [`Runtime`] and [`Sandbox`]: what a backend implements (one `Runtime` per backend; a
//!   `Sandbox` is one live interpreter whose state persists across [`Sandbox::exec`] calls).
//! - [`ToolHost`]: how a sandbox reaches the agent's tools on the host (implemented by
//!   `agentkernel-tool-bridge`; [`FnTools`] is a small closure-based host for library users
//!   and tests).
//! - [`SandboxSpec`] / [`Limits`] (what a sandbox may do), [`ExecRequest`] /
//!   [`ExecOutcome`] (one run of a program), [`Capabilities`] (what a backend can do, so
//!   callers never guess), and the one [`Error`] enum, whose messages say what to do next.
//! - [`Pool`]: pre-warmed sandboxes of any backend, itself a [`Runtime`]; [`Workspaces`]:
//!   named persistent directories mounted at `/workspace`; [`hostdirs`]: the data and cache
//!   directories, checked to be the user's own.
//! - [`tool_abi`]: how a host tool appears in Python (names, signatures, argument binding,
//!   the generated `tools` package), shared by the tool bridge and every backend.
//! - [`guest`]: the Python guest agent, the framed JSON protocol spoken over a socket by
//!   every backend that runs its agent in its own process or VM, and the one exec state
//!   machine they share ([`guest::GuestSandbox`], with each backend's hooks); [`SandboxState`]
//!   (live or lost, never both).
//! - `conformance` (feature `conformance`): async checks, one module per area, that take any
//!   [`Runtime`] and verify the contract, run by each backend on its own harness (skipped
//!   checks reported with their reason) — output capture, exceptions, every limit, state,
//!   reset, workspaces and escape attempts checked from the host side.
//! - [`admission`]: every spec and request checked once, against the backend's
//!   [`Capabilities`], before a backend sees it.
//!
//! A Python exception is an [`ExecOutcome`] with [`ExecStatus::Exception`], never an
//! [`Error`]: `Error` is reserved for the kernel failing to do what was asked.
//!
//! ```
//! use agentkernel_core::{Limits, SandboxSpec};
//! use std::time::Duration;
//!
//! let spec = SandboxSpec {
//!     limits: Limits { wall_time: Duration::from_secs(5), ..Limits::default() },
//!     ..SandboxSpec::default()
//! };
//! assert!(spec.validate().is_ok());
//! ```

pub mod admission;
mod error;
mod exec;
pub mod fsat;
pub mod guest;
pub mod hostdirs;
mod output;
mod pool;
mod runtime;
mod spec;
mod state;
pub mod tool_abi;
mod tools;
mod workspace;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use admission::{Admitted, AdmittedExec};
pub use error::{Error, Result};
pub use exec::{
    DisplayData, ExecOutcome, ExecRequest, ExecStatus, ExprValue, LimitKind, OutputSink,
    StreamKind, Timings, ToolCallRecord,
};
pub use hostdirs::cache_dir;
pub use output::CapturedOutput;
pub use pool::{Pool, PoolConfig, PoolStats};
pub use runtime::{
    Capabilities, Check, CheckState, Diagnosis, HostRoot, Isolation, Language, LimitSet, Runtime,
    Sandbox, Snapshot, StartupClass,
};
pub use spec::{
    Limits, Mount, NetworkPolicy, SandboxSpec, WORKSPACE_BYTES_PER_RUN, WORKSPACE_ENTRIES_PER_RUN,
    WORKSPACE_FILE_SIZES_PER_RUN, default_env,
};
pub use state::SandboxState;
pub use tools::{FnTools, NoTools, ToolError, ToolErrorKind, ToolFn, ToolHost, ToolSpec, tool_fn};
pub use workspace::{
    SweptLinks, Workspace, WorkspaceInfo, WorkspaceLock, Workspaces, dir_entries, empty_dir,
    remove_escaping_symlinks, symlink_target_descends, validate_name as validate_workspace_name,
};
