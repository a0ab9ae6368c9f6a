//! Per-sandbox cgroups: aggregate memory and process limits for the whole sandbox.
//!
//! rlimits bound each process; a cgroup bounds the sandbox as a whole and lets the host tell
//! an out-of-memory kill from other deaths. cgroup v2 is used when this process sits in a
//! delegated cgroup with the `memory` and `pids` controllers available to its children; v1
//! (`/sys/fs/cgroup/{memory,pids}`) is the fallback; without either, rlimits alone apply and
//! `doctor` says so.

use std::fs;
use std::path::{Path, PathBuf};

use agentkernel_core::Limits;

const ROOT: &str = "/sys/fs/cgroup";

/// Which cgroup mechanism this machine offers to the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupSupport {
    /// cgroup v2: sandboxes are created under this directory.
    V2 {
        /// Parent directory of sandbox cgroups.
        parent: PathBuf,
    },
    /// cgroup v1: sandbox cgroups under these controller directories.
    V1 {
        /// Parent in the memory hierarchy, if writable.
        memory: Option<PathBuf>,
        /// Parent in the pids hierarchy, if writable.
        pids: Option<PathBuf>,
    },
    /// No usable cgroup: only rlimits apply.
    None {
        /// Why.
        reason: String,
    },
}

impl CgroupSupport {
    /// Human description for `doctor`.
    pub fn describe(&self) -> String {
        match self {
            CgroupSupport::V2 { parent } => {
                format!("cgroup v2 memory+pids under {}", parent.display())
            }
            CgroupSupport::V1 { memory, pids } => format!(
                "cgroup v1: memory {}, pids {}",
                memory
                    .as_ref()
                    .map_or("unavailable".into(), |p| p.display().to_string()),
                pids.as_ref()
                    .map_or("unavailable".into(), |p| p.display().to_string())
            ),
            CgroupSupport::None { reason } => reason.clone(),
        }
    }
}

/// Our own cgroup path in the hierarchy named `controller` ("" for v2).
fn own_path(controller: &str) -> Option<PathBuf> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        if ctrls.split(',').any(|c| c == controller) {
            return Some(PathBuf::from(path.trim_start_matches('/')));
        }
    }
    None
}

fn probe_dir(parent: &Path) -> bool {
    let probe = parent.join(format!("agentkernel-probe-{}", std::process::id()));
    let ok = fs::create_dir(&probe).is_ok();
    let _ = fs::remove_dir(&probe);
    ok
}

/// Finds what this machine offers. Cheap enough to call once per runtime.
pub fn detect() -> CgroupSupport {
    let root = Path::new(ROOT);
    if root.join("cgroup.controllers").exists() {
        let Some(own) = own_path("") else {
            return CgroupSupport::None {
                reason: "cgroup v2 is mounted but /proc/self/cgroup has no v2 entry".into(),
            };
        };
        let parent = root.join(own);
        let subtree = fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
        let has = |c: &str| subtree.split_whitespace().any(|s| s == c);
        if !(has("memory") && has("pids")) {
            // Enabling controllers for children only works where this cgroup has no
            // processes of its own (or is the root).
            let _ = fs::write(parent.join("cgroup.subtree_control"), "+memory +pids");
            let subtree =
                fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
            if !(subtree.contains("memory") && subtree.contains("pids")) {
                return CgroupSupport::None {
                    reason: format!(
                        "cgroup v2: memory/pids controllers are not delegated to {} (run agentkernel in a delegated cgroup, e.g. `systemd-run --user -p Delegate=yes --scope agentkernel ...`)",
                        parent.display()
                    ),
                };
            }
        }
        if !probe_dir(&parent) {
            return CgroupSupport::None {
                reason: format!(
                    "cgroup v2: {} is not writable by this user",
                    parent.display()
                ),
            };
        }
        return CgroupSupport::V2 { parent };
    }
    let v1 = |controller: &str| -> Option<PathBuf> {
        let base = root.join(controller);
        if !base.join("cgroup.procs").exists() {
            return None;
        }
        let parent = base.join(own_path(controller)?);
        probe_dir(&parent).then_some(parent)
    };
    let (memory, pids) = (v1("memory"), v1("pids"));
    if memory.is_none() && pids.is_none() {
        return CgroupSupport::None {
            reason:
                "no writable cgroup (v2 not delegated, v1 memory/pids not writable): rlimits only"
                    .into(),
        };
    }
    CgroupSupport::V1 { memory, pids }
}

/// The cgroup(s) of one sandbox. Removed when dropped (after its processes are gone).
#[derive(Debug)]
pub struct SandboxCgroup {
    dirs: Vec<PathBuf>,
    /// `cgroup.procs` files the sandbox's first process writes its pid into.
    pub procs_files: Vec<PathBuf>,
    /// File whose `oom_kill N` line counts OOM kills in the sandbox.
    oom_file: Option<PathBuf>,
}

impl SandboxCgroup {
    /// Creates the cgroup(s) for sandbox `id` with `limits`. `Ok(None)` when the machine
    /// has no usable cgroup; `Err` says what failed (anything already created is removed;
    /// rlimits still apply, and the failure is recorded for `doctor`:
    /// [`last_setup_failure`]).
    pub fn create(
        support: &CgroupSupport,
        id: &str,
        limits: &Limits,
    ) -> Result<Option<SandboxCgroup>, String> {
        let created = Self::try_create(support, id, limits);
        if let Err(why) = &created
            && let Ok(mut last) = LAST_SETUP_FAILURE.lock()
        {
            *last = Some(why.clone());
        }
        created
    }

    fn try_create(
        support: &CgroupSupport,
        id: &str,
        limits: &Limits,
    ) -> Result<Option<SandboxCgroup>, String> {
        let name = format!("agentkernel-{id}");
        // Dropped on an error: removes what was made.
        let mut cg = SandboxCgroup {
            dirs: Vec::new(),
            procs_files: Vec::new(),
            oom_file: None,
        };
        let mkdir = |dir: &PathBuf| {
            fs::create_dir(dir).map_err(|e| format!("creating cgroup {}: {e}", dir.display()))
        };
        let write = |file: PathBuf, value: String| {
            fs::write(&file, &value)
                .map_err(|e| format!("writing {value} to {}: {e}", file.display()))
        };
        match support {
            CgroupSupport::V2 { parent } => {
                let dir = parent.join(&name);
                mkdir(&dir)?;
                cg.dirs.push(dir.clone());
                if let Some(m) = limits.memory_bytes {
                    write(dir.join("memory.max"), m.to_string())?;
                    let _ = fs::write(dir.join("memory.swap.max"), "0");
                }
                if let Some(p) = limits.processes {
                    write(dir.join("pids.max"), p.to_string())?;
                }
                cg.procs_files.push(dir.join("cgroup.procs"));
                cg.oom_file = Some(dir.join("memory.events"));
            }
            CgroupSupport::V1 { memory, pids } => {
                if let Some(parent) = memory {
                    let dir = parent.join(&name);
                    mkdir(&dir)?;
                    cg.dirs.push(dir.clone());
                    if let Some(m) = limits.memory_bytes {
                        write(dir.join("memory.limit_in_bytes"), m.to_string())?;
                        let _ = fs::write(dir.join("memory.memsw.limit_in_bytes"), m.to_string());
                    }
                    cg.procs_files.push(dir.join("cgroup.procs"));
                    cg.oom_file = Some(dir.join("memory.oom_control"));
                }
                if let Some(parent) = pids {
                    let dir = parent.join(&name);
                    mkdir(&dir)?;
                    cg.dirs.push(dir.clone());
                    if let Some(p) = limits.processes {
                        write(dir.join("pids.max"), p.to_string())?;
                    }
                    cg.procs_files.push(dir.join("cgroup.procs"));
                }
            }
            CgroupSupport::None { .. } => return Ok(None),
        }
        Ok(Some(cg))
    }

    /// How many processes of the sandbox the OOM killer has killed so far.
    pub fn oom_kills(&self) -> u64 {
        let Some(file) = &self.oom_file else { return 0 };
        fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// The last sandbox cgroup set-up failure in this process, for `doctor`.
static LAST_SETUP_FAILURE: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Why the last sandbox cgroup could not be set up in this process, if one could not.
pub fn last_setup_failure() -> Option<String> {
    LAST_SETUP_FAILURE.lock().ok().and_then(|l| l.clone())
}

impl Drop for SandboxCgroup {
    fn drop(&mut self) {
        let dirs: Vec<PathBuf> = self
            .dirs
            .drain(..)
            .filter(|d| fs::remove_dir(d).is_err())
            .collect();
        if dirs.is_empty() {
            return;
        }
        // The sandbox was killed but its processes are still leaving: retry off this thread
        // (which may be an async worker) for a moment.
        std::thread::spawn(move || {
            for _ in 0..100 {
                if dirs
                    .iter()
                    .all(|d| fs::remove_dir(d).is_ok() || !d.exists())
                {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            tracing::warn!(?dirs, "could not remove a sandbox cgroup");
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_setup_is_an_error_remembered_for_doctor_and_leaves_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        // A memory parent that works and a pids parent that does not: the memory cgroup
        // made first must be removed again.
        let memory = tmp.path().join("memory");
        fs::create_dir(&memory).expect("mkdir");
        let support = CgroupSupport::V1 {
            memory: Some(memory.clone()),
            pids: Some(tmp.path().join("no-such-pids-hierarchy")),
        };
        // No limit files: in a real cgroup they are virtual, here they would be real files.
        let limits = Limits {
            memory_bytes: None,
            processes: None,
            ..Limits::default()
        };
        let Err(err) = SandboxCgroup::create(&support, "t1", &limits) else {
            panic!("set-up with a missing pids hierarchy succeeded");
        };
        assert!(err.contains("creating cgroup"), "{err}");
        assert_eq!(last_setup_failure().as_deref(), Some(err.as_str()));
        assert_eq!(
            fs::read_dir(&memory).expect("list").count(),
            0,
            "the half-made cgroup is removed"
        );
    }
}
