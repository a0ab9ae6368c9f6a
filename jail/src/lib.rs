//! # agentkernel-jail
//!
//! The Linux jail that both the `process` backend (the host's CPython) and the `monty`
//! backend's worker mode (Monty's native worker) run their guest agent in; neither backend
//! knows the other. Each sandbox is one agent process tree in fresh user, mount, pid, net,
//! ipc, uts and cgroup namespaces, with:
//!
//! - a new root on a tmpfs: read-only binds of `/usr`, the interpreter's prefix and a few
//!   harmless `/etc` files; `/workspace` read-write (a host workspace through an overlay
//!   whose capped write layer the host copies back: `layer.rs`); size-capped `/tmp` and
//!   `/dev/shm`; a fresh `/proc`; a minimal `/dev` — nothing else of the host's files
//!   (`plan.rs` builds the plan, `jail.rs` carries it out in the child);
//! - no network (an empty network namespace; landlock also denies TCP where available);
//! - `no_new_privs`, a seccomp filter (`seccomp.rs`: the policy as data, with its reviewed
//!   golden file `seccomp-policy.x86_64.txt`), landlock where the kernel has it, rlimits, and
//!   cgroup memory/pids limits where a cgroup is writable (`cgroup.rs`);
//! - a host uid of its own per sandbox when run as root (`hostids.rs`), else the caller's;
//! - pid 1 of the namespace is the guest's init: when it dies, the kernel kills every
//!   process of the sandbox; the host kills it on timeout, shutdown or drop.
//!
//! [`JailRuntime`] holds one configuration ([`JailConfig`]: the backend's name, the
//! [`GuestAgent`], the write layer) and starts [`JailSandbox`]es, which run the exec state
//! machine every guest-protocol backend shares (`agentkernel_core::guest::GuestSandbox`).
//! Backends admit specs against their own capabilities before the jail sees them.

#[cfg(not(target_os = "linux"))]
compile_error!("agentkernel-jail needs Linux (namespaces, seccomp, landlock)");

mod cgroup;
mod hostids;
mod jail;
mod layer;
mod plan;
mod python;
mod runtime;
mod sandbox;
mod seccomp;

pub use cgroup::CgroupSupport;
pub use python::{GuestAgent, HostPython, NativeAgent, discover as discover_python};
pub use runtime::{JailConfig, JailRuntime};
pub use sandbox::JailSandbox;
