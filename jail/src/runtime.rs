//! [`JailRuntime`]: what every sandbox of one jail configuration shares (the agent, the
//! compiled seccomp filters, cgroup and landlock support), how a sandbox starts, and the
//! `doctor` checks of the jail's protections.

use std::sync::Arc;
use std::time::Instant;

use agentkernel_core::{
    Check, CheckState, Diagnosis, Error, ExecRequest, ExecStatus, NoTools, Result, Sandbox,
    SandboxSpec, admission::Admitted,
};
use seccompiler::BpfProgram;

use crate::cgroup::{self, CgroupSupport};
use crate::python::{GuestAgent, HostPython, NativeAgent};
use crate::sandbox::{self, JailSandbox};
use crate::seccomp;

/// What a jail runs and how.
#[derive(Debug, Clone)]
pub struct JailConfig {
    /// The backend the jail serves (in errors and logs), e.g. `"process"`.
    pub backend: &'static str,
    /// The guest agent: the host's CPython (its [`crate::HostPython`] found by
    /// [`crate::discover_python`]) or a native agent (Monty's worker).
    pub agent: GuestAgent,
    /// Give sandboxes a host workspace through an overlay with a capped write layer (see
    /// `layer.rs`) instead of the host directory itself. Where the kernel cannot make the
    /// layer, and with this off, the program's writes reach the host as they happen, with
    /// only the file-size limit on them, and symlinks leaving the workspace are removed by
    /// a sweep at the end of each exec (`doctor` says which).
    pub workspace_layer: bool,
}

/// What every sandbox of one runtime shares (computed once).
pub(crate) struct Inner {
    /// [`JailConfig::backend`].
    pub backend: &'static str,
    pub agent: GuestAgent,
    pub seccomp: Vec<BpfProgram>,
    pub cgroups: CgroupSupport,
    pub landlock_abi: Option<i32>,
    /// [`JailConfig::workspace_layer`].
    pub workspace_layer: bool,
}

/// A jail configuration, ready to start sandboxes. Cheap to clone.
#[derive(Clone)]
pub struct JailRuntime {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for JailRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JailRuntime")
            .field("agent", &self.inner.agent)
            .field("cgroups", &self.inner.cgroups)
            .field("landlock_abi", &self.inner.landlock_abi)
            .finish()
    }
}

/// Raises this process's soft limit on open files to its hard limit, as Go's runtime does
/// at start: each live sandbox holds a handful of fds in the host (its control socket,
/// lifeline, output pipes, pidfd), so a server with hundreds of sandboxes needs more than
/// the usual soft limit of 1024. Best effort. Sandboxes get their own limit in the jail
/// (`plan::rlimits`), whatever this one is.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit with a pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// The landlock ABI version the kernel offers, if any.
pub(crate) fn landlock_abi() -> Option<i32> {
    const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
    // SAFETY: landlock_create_ruleset(NULL, 0, VERSION) only returns a number.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    (v > 0).then_some(v as i32)
}

impl JailRuntime {
    /// Checks the agent, compiles the seccomp filters and probes cgroups and landlock.
    /// Fails with [`Error::Unavailable`] when this machine cannot run the backend.
    pub fn new(config: JailConfig) -> Result<Self> {
        if !cfg!(target_os = "linux") {
            return Err(Error::Unavailable {
                backend: "process",
                reason: "the jail uses Linux namespaces".into(),
                hint: "run on Linux, or use another backend".into(),
            });
        }
        if let GuestAgent::Native(native) = &config.agent
            && (!native.executable.is_absolute() || !native.executable.is_file())
        {
            return Err(Error::Unavailable {
                backend: config.backend,
                reason: format!(
                    "the guest agent {} is not a file",
                    native.executable.display()
                ),
                hint: "give the absolute path of the agent binary".into(),
            });
        }
        raise_open_files_limit();
        Ok(JailRuntime {
            inner: Arc::new(Inner {
                backend: config.backend,
                agent: config.agent,
                seccomp: seccomp::filters()?,
                cgroups: cgroup::detect(),
                landlock_abi: landlock_abi(),
                workspace_layer: config.workspace_layer,
            }),
        })
    }

    /// This runtime with landlock switched off, as on a kernel without it (which the
    /// backend supports): for tests that check what the other layers hold on their own.
    #[doc(hidden)]
    pub fn without_landlock(self) -> Self {
        let inner = &self.inner;
        JailRuntime {
            inner: Arc::new(Inner {
                backend: inner.backend,
                agent: inner.agent.clone(),
                seccomp: inner.seccomp.clone(),
                cgroups: inner.cgroups.clone(),
                landlock_abi: None,
                workspace_layer: inner.workspace_layer,
            }),
        }
    }

    /// The interpreter sandboxes run (`None` when they run a native agent).
    pub fn python(&self) -> Option<&HostPython> {
        match &self.inner.agent {
            GuestAgent::Python(p) => Some(p),
            GuestAgent::Native(_) => None,
        }
    }

    /// Starts a sandbox for a spec its backend admitted (against the backend's
    /// capabilities: the jail does not know them).
    pub async fn create_sandbox(&self, spec: Admitted<'_>) -> Result<JailSandbox> {
        self.start_sandbox(spec.spec()).await
    }

    /// What its sandboxes share (this crate's tests start sandboxes from it directly).
    #[cfg(test)]
    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    async fn start_sandbox(&self, spec: &SandboxSpec) -> Result<JailSandbox> {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let live = sandbox::start(&self.inner, spec, &id).await?;
        tracing::debug!(sandbox = %id, backend = self.inner.backend, "jailed sandbox started");
        Ok(JailSandbox::new(id, self.inner.clone(), spec.clone(), live))
    }
}

impl JailRuntime {
    /// Checks this machine as `doctor` shows it: the agent, a probe sandbox started with the
    /// default spec, and which of the jail's protections are in force there (read back from
    /// the host where they can be: the installed seccomp filters, the init's rlimits).
    pub async fn diagnose(&self) -> Diagnosis {
        let inner = &self.inner;
        let mut checks = vec![match &inner.agent {
            GuestAgent::Python(python) => Check {
                name: "python".into(),
                state: CheckState::Active,
                detail: format!(
                    "{} (Python {})",
                    python.executable.display(),
                    python.version
                ),
            },
            GuestAgent::Native(native) => Check {
                name: "agent".into(),
                state: CheckState::Active,
                detail: format!("{} ({})", native.executable.display(), native.label),
            },
        }];
        let started = Instant::now();
        let mut enforced_landlock = None;
        // The probe sandbox gets a workspace of its own, so its write layer is tried too.
        let probe_ws = std::env::temp_dir()
            .canonicalize()
            .map(|t| {
                t.join(format!(
                    "agentkernel-doctor-{}",
                    uuid::Uuid::new_v4().simple()
                ))
            })
            .and_then(|d| std::fs::create_dir(&d).map(|()| d))
            .ok();
        let mut layered = None;
        let probe = async {
            let spec = SandboxSpec {
                workspace: probe_ws.clone(),
                ..SandboxSpec::default()
            };
            let mut sb = self.start_sandbox(&spec).await?;
            layered = Some(sb.workspace_layered());
            let hello = sb.hello().map(|h| {
                let field = |k: &str| h.protections.get(k).map(String::as_str);
                (
                    field("Seccomp") == Some("2"),
                    field("NoNewPrivs") == Some("1"),
                )
            });
            let landlock = sb.landlock_state();
            let memory_counted_by_agent = matches!(
                &self.inner.agent,
                GuestAgent::Native(NativeAgent {
                    memory_env: Some(_),
                    ..
                })
            );
            let expected: Vec<_> = crate::plan::rlimits(&SandboxSpec::default())
                .into_iter()
                .filter(|(r, _, _)| *r != libc::RLIMIT_AS || !memory_counted_by_agent)
                .collect();
            let rlimits = sb.verify_rlimits(&expected);
            let installed = sb.installed_filter_digests();
            let out = sb
                .exec(ExecRequest::new("print('ok')"), Arc::new(NoTools))
                .await;
            Box::new(sb).shutdown().await?;
            Ok::<_, Error>((out?, hello, landlock, rlimits, installed))
        };
        let mut rlimits_found = Err("no probe sandbox ran".to_owned());
        let (available, reason) = match probe.await {
            Ok((out, hello, landlock, rlimits, installed))
                if out.status == ExecStatus::Ok && out.stdout.text() == "ok\n" =>
            {
                checks.push(Check {
                    name: "namespaces".into(),
                    state: CheckState::Active,
                    detail: format!(
                        "user, mount, pid, net, ipc, uts, cgroup; sandbox started and ran in {:.0} ms",
                        started.elapsed().as_secs_f64() * 1e3
                    ),
                });
                if let Some((seccomp, nnp)) = hello {
                    let (policy_state, policy) = installed_policy(installed, &inner.seccomp);
                    checks.push(Check {
                        name: "seccomp".into(),
                        state: match (seccomp, policy_state) {
                            (false, _) => CheckState::Failed,
                            (true, state) => state,
                        },
                        detail: format!(
                            "filter mode in the guest; denies {} syscalls, namespace clone flags, clone3, TIOCSTI, AF_VSOCK; {policy}",
                            seccomp::denied_syscall_names().count()
                        ),
                    });
                    checks.push(Check {
                        name: "no_new_privs".into(),
                        state: if nnp {
                            CheckState::Active
                        } else {
                            CheckState::Failed
                        },
                        detail: "set in the guest".into(),
                    });
                }
                enforced_landlock = landlock;
                rlimits_found = rlimits;
                (true, None)
            }
            Ok((out, _, _, _, _)) => (
                false,
                Some(format!(
                    "a probe sandbox ran but printed {:?} with status {:?}",
                    out.stdout.text(),
                    out.status
                )),
            ),
            Err(e) => (false, Some(e.to_string())),
        };
        checks.push(Check {
            name: "landlock".into(),
            state: match enforced_landlock {
                Some(crate::jail::LANDLOCK_FULL) => CheckState::Active,
                Some(crate::jail::LANDLOCK_PARTIAL) => CheckState::Partial,
                _ => CheckState::Inactive,
            },
            detail: match inner.landlock_abi {
                Some(v) => format!("kernel ABI {v}: writes only to /workspace, /tmp, /dev/shm; no TCP; no signals out (ABI 6+)"),
                None => "not offered by this kernel (namespaces and seccomp still apply)".into(),
            },
        });
        if let Some(dir) = &probe_ws {
            let _ = std::fs::remove_dir_all(dir);
        }
        let (bytes, files) = crate::plan::layer_caps(&SandboxSpec::default());
        checks.push(Check {
            name: "workspace".into(),
            state: match layered {
                Some(true) => CheckState::Active,
                _ => CheckState::Inactive,
            },
            detail: match (layered, self.inner.workspace_layer) {
                (Some(true), _) => format!(
                    "a host workspace is an overlay whose write layer is a tmpfs of the sandbox's own: at most {} MiB (4 × the file-size limit, at most the memory limit) and {} files, directories and links added per sandbox; copied to the host before each tool call, at each exec's end and at the sandbox's end",
                    bytes >> 20,
                    files.saturating_sub(3)
                ),
                (_, false) => "off (the backend turns it off, e.g. ProcessConfig::workspace_layer = false): programs write the host workspace directly, capped by the file-size limit only".into(),
                (Some(false), true) => crate::layer::unavailable_reason().unwrap_or_else(|| "the kernel could not make it".into()),
                (None, true) => "not tried: the probe sandbox did not start".into(),
            },
        });
        // The probe sandbox above tried to set its cgroup up: a failure there is reported,
        // not hidden behind the machine's cgroup support.
        let setup_failure = cgroup::last_setup_failure();
        checks.push(Check {
            name: "cgroup".into(),
            state: match (&inner.cgroups, &setup_failure) {
                (CgroupSupport::None { .. }, _) => CheckState::Inactive,
                (_, Some(_)) => CheckState::Failed,
                _ => CheckState::Active,
            },
            detail: match &setup_failure {
                Some(why) if !matches!(inner.cgroups, CgroupSupport::None { .. }) => format!(
                    "{}, but a sandbox's cgroup could not be set up ({why}): limits hold per process only",
                    inner.cgroups.describe()
                ),
                _ => inner.cgroups.describe(),
            },
        });
        let who = if agentkernel_core::hostdirs::euid() == 0 {
            let r = crate::hostids::UID_RANGE;
            format!(
                "each sandbox runs as a host uid of its own ({}..{}, leased under {}), its workspace idmapped to it",
                r.start,
                r.end,
                crate::hostids::LEASE_DIR
            )
        } else {
            format!(
                "sandbox runs as host uid {}",
                agentkernel_core::hostdirs::euid()
            )
        };
        checks.push(Check {
            name: "rlimits".into(),
            // Read back from the host's /proc for the probe sandbox's init, not assumed.
            state: match &rlimits_found {
                Ok(()) => CheckState::Active,
                Err(_) => CheckState::Failed,
            },
            detail: match &rlimits_found {
                Err(why) => format!("not as set: {why}"),
                Ok(()) => match &inner.agent {
                GuestAgent::Native(NativeAgent {
                    memory_env: Some(var),
                    ..
                }) => format!(
                    "processes, file size, CPU, core=0 (memory: counted by the agent's own allocator, limit in {var}); {who}"
                ),
                _ => format!(
                    "address space, processes, file size, CPU, core=0; {who}"
                ),
                },
            },
        });
        Diagnosis {
            available,
            reason,
            checks,
        }
    }
}

/// What `doctor` says of the filters a probe sandbox runs under, compared with the policy the
/// runtime compiled (`policy`, which a unit test holds equal to the reviewed golden file
/// [`seccomp::GOLDEN_PATH`]): active when they are exactly its filters, partial
/// when they differ; still active (filter mode was seen) when they cannot be read back.
fn installed_policy(
    installed: std::result::Result<Vec<String>, String>,
    policy: &[BpfProgram],
) -> (CheckState, String) {
    let expected: Vec<String> = policy.iter().map(|p| seccomp::digest(p)).collect();
    match installed {
        Ok(installed) if installed == expected => (
            CheckState::Active,
            format!(
                "the {} installed filters are the reviewed policy ({})",
                installed.len(),
                seccomp::GOLDEN_PATH
            ),
        ),
        Ok(installed) => (
            CheckState::Partial,
            format!(
                "the installed filters differ from the reviewed policy ({}): installed {installed:?}, policy {expected:?}",
                seccomp::GOLDEN_PATH
            ),
        ),
        Err(why) => (
            CheckState::Active,
            format!("the installed filters could not be compared with the reviewed policy: {why}"),
        ),
    }
}
