//! What a sandbox is allowed to do: limits, mounts, network, environment.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Resource limits of a sandbox. Each backend enforces those its [`crate::LimitSet`]
/// lists; asking for one it cannot enforce is refused by core's admission with
/// [`Error::Unsupported`] ([`crate::admission`]), never ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Wall-clock time one `exec` may take before the sandbox is killed.
    pub wall_time: Duration,
    /// CPU time each process of the sandbox may use over the sandbox's life (`None`: no limit
    /// beyond `wall_time`).
    pub cpu_time: Option<Duration>,
    /// Memory of the sandbox in bytes (`None`: unlimited). Allocations past it fail
    /// (Python sees `MemoryError`) or the sandbox is killed, reported as
    /// [`crate::LimitKind::Memory`].
    pub memory_bytes: Option<u64>,
    /// Bytes kept of each of stdout and stderr per `exec`; the rest is counted and dropped.
    pub output_bytes: usize,
    /// Processes (and threads) the sandbox may run at once (`None`: unlimited).
    pub processes: Option<u32>,
    /// Largest file the sandbox may write, in bytes (`None`: unlimited).
    pub file_size_bytes: Option<u64>,
    /// Size of the sandbox's private `/tmp`, in bytes.
    pub tmp_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            wall_time: Duration::from_secs(30),
            cpu_time: None,
            memory_bytes: Some(512 << 20),
            output_bytes: 1 << 20,
            processes: Some(64),
            file_size_bytes: Some(256 << 20),
            tmp_bytes: 64 << 20,
        }
    }
}

/// Files, directories and links one run may add to the host directories a sandbox writes
/// (its workspace; on `wasm` its writable mounts too). The spec has no limit of this kind;
/// this bounds the host inodes a single run can use (a named workspace's byte quota is
/// checked between runs). How each backend holds it is in its `SECURITY.md` section.
pub const WORKSPACE_ENTRIES_PER_RUN: u64 = 10_000;

/// How many times the file-size limit one run may add to the host directories a sandbox
/// writes, in bytes (see [`Limits::workspace_growth_bytes`]).
pub const WORKSPACE_FILE_SIZES_PER_RUN: u64 = 4;

/// Bytes one run may add to the host directories a sandbox writes when there is no
/// file-size limit (1 GiB: 4 × the default file-size limit is the same).
pub const WORKSPACE_BYTES_PER_RUN: u64 = 1 << 30;

/// Smallest memory limit accepted: below it the interpreter cannot start.
pub const MIN_MEMORY_BYTES: u64 = 32 << 20;

impl Limits {
    /// Bytes by which one run may grow the host directories a sandbox writes, in total:
    /// [`WORKSPACE_FILE_SIZES_PER_RUN`] × the file-size limit (each file is also capped by
    /// that), or [`WORKSPACE_BYTES_PER_RUN`] without one.
    pub fn workspace_growth_bytes(&self) -> u64 {
        self.file_size_bytes.map_or(WORKSPACE_BYTES_PER_RUN, |max| {
            max.saturating_mul(WORKSPACE_FILE_SIZES_PER_RUN)
        })
    }

    /// Checks that every limit is usable; the error names the bad one and a usable range.
    pub fn validate(&self) -> Result<()> {
        if self.wall_time.is_zero() {
            return Err(Error::invalid(
                "wall_time is zero",
                "give a wall-time limit of at least 1 ms, e.g. `.timeout(Duration::from_secs(30))`",
            ));
        }
        if self.cpu_time.is_some_and(|t| t < Duration::from_secs(1)) {
            return Err(Error::invalid(
                "cpu_time is below one second",
                "the CPU limit has one-second resolution: use at least 1 s",
            ));
        }
        if let Some(m) = self.memory_bytes
            && m < MIN_MEMORY_BYTES
        {
            return Err(Error::invalid(
                format!("memory limit of {} MiB is too small", m >> 20),
                "use at least 32 MiB (the interpreter needs it to start)",
            ));
        }
        if self.processes == Some(0) {
            return Err(Error::invalid(
                "process limit is zero",
                "allow at least 1 process (the interpreter itself)",
            ));
        }
        if self.tmp_bytes == 0 {
            return Err(Error::invalid(
                "tmp size is zero",
                "give /tmp at least 1 MiB",
            ));
        }
        Ok(())
    }
}

/// A host directory made visible inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Directory on the host.
    pub host: PathBuf,
    /// Absolute path inside the sandbox, e.g. `/tools` or `/data`.
    pub guest: PathBuf,
    /// Whether the sandbox may write to it.
    pub writable: bool,
}

/// What the sandbox may reach on the network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkPolicy {
    /// No network at all (the default).
    #[default]
    Deny,
    /// Only these `host:port` destinations.
    AllowList(Vec<String>),
}

/// Everything a backend needs to create a sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// Resource limits.
    pub limits: Limits,
    /// Network policy.
    pub network: NetworkPolicy,
    /// Host directory mounted read-write at `/workspace`; `None` gives a private, empty
    /// `/workspace` that disappears with the sandbox.
    pub workspace: Option<PathBuf>,
    /// Extra mounts.
    pub mounts: Vec<Mount>,
    /// The sandbox's environment, exactly: nothing leaks from the host's.
    pub env: BTreeMap<String, String>,
}

/// Guest paths the kernel owns; mounts may not shadow them.
/// The environment every sandbox starts with, on every backend; `SandboxSpec::env` adds to
/// or overrides it. Nothing comes from the host's environment.
pub fn default_env() -> [(&'static str, &'static str); 5] {
    [
        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
        ("HOME", "/tmp"),
        ("TMPDIR", "/tmp"),
        ("LANG", "C.UTF-8"),
        ("USER", "sandbox"),
    ]
}

const RESERVED_GUEST_PATHS: &[&str] = &[
    "/",
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/etc",
    "/proc",
    "/dev",
    "/tmp",
    "/workspace",
    // The wasm backend's standard library outside its snapshot (read-only, shared).
    "/python",
];

impl SandboxSpec {
    /// The environment the sandbox's program sees: [`default_env`], then this spec's
    /// variables over it.
    pub fn guest_env(&self) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = default_env()
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        env.extend(self.env.clone());
        env
    }

    /// Checks limits, mounts and environment; the error says which entry is wrong.
    pub fn validate(&self) -> Result<()> {
        self.limits.validate()?;
        if let Some(ws) = &self.workspace
            && !ws.is_dir()
        {
            return Err(Error::invalid(
                format!("workspace {} is not a directory", ws.display()),
                "create it first, or pass an existing directory",
            ));
        }
        for m in &self.mounts {
            if !m.host.is_dir() {
                return Err(Error::invalid(
                    format!("mount source {} is not a directory", m.host.display()),
                    "mount existing host directories only",
                ));
            }
            let g = m.guest.to_string_lossy();
            let clean = m.guest.is_absolute()
                && m.guest.components().all(|c| {
                    matches!(
                        c,
                        std::path::Component::RootDir | std::path::Component::Normal(_)
                    )
                });
            if !clean {
                return Err(Error::invalid(
                    format!("mount target {g} is not a plain absolute path"),
                    "use an absolute path without '..', e.g. /data",
                ));
            }
            if RESERVED_GUEST_PATHS
                .iter()
                .any(|r| m.guest == std::path::Path::new(r))
            {
                return Err(Error::invalid(
                    format!("mount target {g} is reserved by the kernel"),
                    "mount somewhere else, e.g. /data or /tools",
                ));
            }
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(Error::invalid(
                    format!("environment variable {k:?} is malformed"),
                    "names must be non-empty without '=' or NUL; values without NUL",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_spec_is_valid() {
        assert!(SandboxSpec::default().validate().is_ok());
    }

    #[test]
    fn tiny_memory_is_rejected_with_a_hint() {
        let spec = SandboxSpec {
            limits: Limits {
                memory_bytes: Some(1 << 20),
                ..Limits::default()
            },
            ..SandboxSpec::default()
        };
        let err = spec.validate().unwrap_err();
        assert!(err.to_string().contains("32 MiB"), "{err}");
    }

    #[test]
    fn mount_over_reserved_path_is_rejected() {
        let spec = SandboxSpec {
            mounts: vec![Mount {
                host: std::env::temp_dir(),
                guest: "/usr".into(),
                writable: false,
            }],
            ..SandboxSpec::default()
        };
        assert!(spec.validate().is_err());
        let spec = SandboxSpec {
            mounts: vec![Mount {
                host: std::env::temp_dir(),
                guest: "/data/../usr".into(),
                writable: false,
            }],
            ..SandboxSpec::default()
        };
        assert!(spec.validate().is_err());
        let spec = SandboxSpec {
            mounts: vec![Mount {
                host: std::env::temp_dir(),
                guest: "/python".into(),
                writable: true,
            }],
            ..SandboxSpec::default()
        };
        let err = spec.validate().unwrap_err().to_string();
        assert!(err.contains("/python is reserved"), "{err}");
    }
}
