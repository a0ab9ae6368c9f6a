//! Finding the host's Python interpreter and the directories it needs inside the jail.

use std::path::{Path, PathBuf};
use std::process::Command;

use agentkernel_core::{Error, Result};

/// What a sandbox of the process backend runs as its guest agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestAgent {
    /// The host's CPython running the Python guest agent ([`agentkernel_core::guest`]).
    Python(HostPython),
    /// A native binary that speaks the same guest protocol (the monty worker).
    Native(NativeAgent),
}

/// A native guest agent: a host binary bound read-only into the jail at
/// [`NativeAgent::GUEST_PATH`] and run there with `args`, in place of the interpreter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeAgent {
    /// The binary on the host (an absolute path; dynamically linked only against what
    /// `/usr` and `/lib*` provide, which the jail binds).
    pub executable: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its own name for what it runs, shown by `doctor` (e.g. `monty 0.0.23`).
    pub label: String,
    /// An exit code that means "out of memory" (monty's allocator exits 65), reported as
    /// a memory-limit kill.
    pub memory_exit_code: Option<i32>,
    /// When set, the agent enforces the memory limit itself (it counts its allocations)
    /// and gets it in this environment variable, in bytes, instead of an `RLIMIT_AS`
    /// (which would count a large binary's mappings, not the program's memory).
    pub memory_env: Option<String>,
}

impl NativeAgent {
    /// Where the binary appears inside the sandbox.
    pub const GUEST_PATH: &'static str = "/agentkernel/agent";
}

/// The host interpreter the jail runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPython {
    /// Path of the interpreter binary in a real directory (shims such as pyenv's resolved; a
    /// virtualenv's `bin/python` kept, as it is what activates the venv).
    pub executable: PathBuf,
    /// Python version, e.g. `3.11.2`.
    pub version: String,
    /// Directories outside `/usr` that the interpreter needs (its prefix, a virtualenv),
    /// bind-mounted read-only at the same path inside the jail.
    pub extra_dirs: Vec<PathBuf>,
}

const PROBE: &str = r#"
import json, os, sys
print(json.dumps({
    # The directory is resolved, not the file: a virtualenv's `bin/python` is a symlink to
    # the base interpreter, and only invoking it by its venv path activates the venv.
    "executable": os.path.join(os.path.realpath(os.path.dirname(sys.executable)), os.path.basename(sys.executable)),
    "version": sys.version.split()[0],
    "dirs": sorted({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}),
}))
"#;

/// Finds the interpreter: `explicit` if given, else `$AGENTKERNEL_PYTHON`, else `python3` on
/// `PATH` (the interpreter a user gets by typing `python3`, so their packages work).
pub fn discover(explicit: Option<&Path>) -> Result<HostPython> {
    let candidate: PathBuf = match explicit {
        Some(p) => p.to_path_buf(),
        None => std::env::var_os("AGENTKERNEL_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("python3")),
    };
    let out = Command::new(&candidate)
        .args(["-I", "-c", PROBE])
        .output()
        .map_err(|e| Error::Unavailable {
            backend: "process",
            reason: format!("cannot run {}: {e}", candidate.display()),
            hint: "install Python 3 (e.g. `apt-get install python3`) or set AGENTKERNEL_PYTHON to an interpreter".into(),
        })?;
    if !out.status.success() {
        return Err(Error::Unavailable {
            backend: "process",
            reason: format!(
                "{} failed ({}): {}",
                candidate.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            hint: "set AGENTKERNEL_PYTHON to a working Python 3 interpreter".into(),
        });
    }
    #[derive(serde::Deserialize)]
    struct Probe {
        executable: PathBuf,
        version: String,
        dirs: Vec<PathBuf>,
    }
    let probe: Probe = serde_json::from_slice(&out.stdout).map_err(|e| Error::Unavailable {
        backend: "process",
        reason: format!("{} printed something unexpected: {e}", candidate.display()),
        hint: "set AGENTKERNEL_PYTHON to a plain CPython 3 interpreter".into(),
    })?;
    if !probe.version.starts_with('3') {
        return Err(Error::Unavailable {
            backend: "process",
            reason: format!("{} is Python {}", candidate.display(), probe.version),
            hint: "AgentKernel needs Python 3: set AGENTKERNEL_PYTHON".into(),
        });
    }
    let mut extra_dirs: Vec<PathBuf> = probe
        .dirs
        .into_iter()
        .filter(|d| !d.starts_with("/usr") && d.is_dir() && d != Path::new("/"))
        .collect();
    extra_dirs.sort();
    extra_dirs.dedup();
    // A directory inside another one is covered by the outer bind.
    let outer = extra_dirs.clone();
    extra_dirs.retain(|d| !outer.iter().any(|o| o != d && d.starts_with(o)));
    Ok(HostPython {
        executable: probe.executable,
        version: probe.version,
        extra_dirs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovers_a_real_interpreter() {
        let py = discover(None).expect("python3 on PATH");
        assert!(py.executable.is_absolute());
        assert!(py.executable.exists());
        assert!(py.version.starts_with('3'));
        assert!(py.extra_dirs.iter().all(|d| !d.starts_with("/usr")));
    }

    #[test]
    fn a_virtualenv_interpreter_keeps_its_venv_path() {
        let dir = tempfile::tempdir().unwrap();
        let venv = dir.path().join("venv");
        let made = Command::new("python3")
            .args(["-m", "venv", "--without-pip"])
            .arg(&venv)
            .status()
            .unwrap();
        assert!(made.success());
        let py = discover(Some(&venv.join("bin/python"))).unwrap();
        let real_venv = venv.canonicalize().unwrap();
        assert_eq!(py.executable, real_venv.join("bin/python"));
        assert!(
            py.extra_dirs.iter().any(|d| d == &real_venv),
            "{:?}",
            py.extra_dirs
        );
    }

    #[test]
    fn missing_interpreter_is_unavailable_with_hint() {
        let err = discover(Some(Path::new("/nonexistent/python3"))).unwrap_err();
        assert!(matches!(err, Error::Unavailable { .. }), "{err}");
        assert!(err.to_string().contains("AGENTKERNEL_PYTHON"), "{err}");
    }
}
