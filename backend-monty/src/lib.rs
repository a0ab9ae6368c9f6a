//! # agentkernel-backend-monty
//!
//! pydantic's [Monty](https://github.com/pydantic/monty), a Python-subset interpreter
//! written in Rust, as a backend: microseconds to start, tools as Monty external
//! functions paused and resumed on the host, sessions that dump to bytes.
//!
//! Two modes ([`MontyMode`]), one `Runtime`:
//!
//! - **worker** (default, for untrusted code): each sandbox is a small worker process
//!   ([`worker`]) in the jail (`agentkernel-jail`: namespaces, seccomp, landlock, rlimits),
//!   speaking the guest protocol of `agentkernel_core::guest`. An abort, a native stack
//!   overflow or a memory blow-up ends that worker; the kernel reports it and lives on.
//!   Memory is counted per worker by Monty's allocator (`monty_alloc`), the limit passed in
//!   the worker's environment.
//! - **in_process** (trusted code): the session runs in the kernel on a 64 MiB stack (the
//!   caller's thread switched to a cached stack, or a pooled thread when the run may call
//!   tools: `inprocess`); panics are caught, but an abort ends the kernel, and the memory
//!   limit counts the whole process's allocations (so it needs `monty_alloc` as the global
//!   allocator, which the `agentkernel` binary installs).
//!
//! Layout:
//!
//! - [`engine`]: one Monty REPL session: feeds programs, answers name lookups, tool calls
//!   and file operations ([`monty_fs`] mounts: `/workspace`, `/tmp`), maps Monty's limit
//!   errors to limit kills. Shared by both modes.
//! - [`tools`]: tool imports rewritten to helper calls on the host; positional arguments
//!   bound to the tool's schema as the generated CPython stubs would.
//! - [`convert`]: Monty values ↔ JSON.
//! - [`worker`]: worker mode's guest agent (`agentkernel-monty-worker`, or the
//!   `agentkernel` binary run with the hidden first argument `__monty-worker`).
//! - `inprocess`: in-process mode's sandbox.
//! - `runtime`: [`MontyRuntime`], capabilities and `doctor`.
//!
//! Monty runs a subset of Python: what it lacks fails with a Python exception naming it
//! (`ModuleNotFoundError: No module named 'random'`, `NotImplementedError`, ...); the
//! compatibility table in this crate's README.md lists what the shared differential
//! programs need.

pub mod convert;
pub mod engine;
mod inprocess;
mod runtime;
pub mod tools;
pub mod worker;

pub use runtime::{MontyConfig, MontyMode, MontyRuntime, WorkerCommand, set_default_worker};

/// The hidden first argument that makes a binary whose `main` checks for it (the
/// `agentkernel` binary, or any calling `agentkernel::run_worker_if_requested`) the worker.
pub const WORKER_ARG: &str = "__monty-worker";
