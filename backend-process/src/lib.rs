//! # agentkernel-backend-process
//!
//! The default backend: the host's own `python3` (so the user's installed packages work) in
//! a Linux jail. Each sandbox is one interpreter process tree in fresh user, mount, pid,
//! net, ipc, uts and cgroup namespaces, with:
//!
//! - a new root on a tmpfs: read-only binds of `/usr`, the interpreter's prefix and a few
//!   harmless `/etc` files; `/workspace` read-write (a host workspace through an overlay
//!   whose capped write layer the host copies back); size-capped `/tmp` and `/dev/shm`; a
//!   fresh `/proc`; a minimal `/dev` — nothing else of the host's files;
//! - no network (an empty network namespace; landlock also denies TCP where available);
//! - `no_new_privs`, a seccomp filter (policy as data, reviewed as a golden file), landlock where
//!   the kernel has it, rlimits, and cgroup memory/pids limits where a cgroup is writable;
//! - sandbox uid 1000, mapped to the calling user (to `nobody` when the caller is root);
//! - pid 1 of the namespace is the guest's init: when it dies, the kernel kills every
//!   process of the sandbox; the host kills it on timeout, shutdown or drop.
//!
//! The jail is the `agentkernel-jail` crate's (which the `monty` backend's worker mode runs
//! in too); this crate is the host's CPython in it, with the process backend's
//! capabilities. The guest agent and protocol are [`agentkernel_core::guest`]'s.
//!
//! ```no_run
//! use std::sync::Arc;
//! use agentkernel_core::{ExecRequest, NoTools, Runtime, SandboxSpec};
//! use agentkernel_backend_process::{ProcessConfig, ProcessRuntime};
//!
//! # async fn demo() -> agentkernel_core::Result<()> {
//! let rt = ProcessRuntime::new(ProcessConfig::default())?;
//! let mut sb = rt.create(&SandboxSpec::default()).await?;
//! let out = sb.exec(ExecRequest::new("print(6 * 7)"), Arc::new(NoTools)).await?;
//! assert_eq!(out.stdout.text(), "42\n");
//! sb.shutdown().await?;
//! # Ok(()) }
//! ```

#[cfg(not(target_os = "linux"))]
compile_error!("agentkernel-backend-process needs Linux (namespaces, seccomp, landlock)");

mod runtime;

pub use agentkernel_jail::{HostPython, JailSandbox as ProcessSandbox};
pub use runtime::{ProcessConfig, ProcessRuntime};
