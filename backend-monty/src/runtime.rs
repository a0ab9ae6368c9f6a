//! The monty backend's `Runtime`: configuration, the two modes, capabilities, `doctor`.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use agentkernel_core::{
    Capabilities, CapturedOutput, Check, CheckState, Diagnosis, Error, ExecOutcome, ExecRequest,
    ExecStatus, Isolation, Language, LimitKind, LimitSet, NoTools, Result, Runtime, Sandbox,
    SandboxSpec, Snapshot, StartupClass, Timings, ToolHost,
    admission::{Admitted, AdmittedExec},
};
use agentkernel_jail::{GuestAgent, JailConfig, JailRuntime, JailSandbox, NativeAgent};
use async_trait::async_trait;

use crate::engine::{HostDir, MountPoint, PrivateDir, SessionConfig, limit_of};
use crate::inprocess::InProcessSandbox;
use crate::tools::BoundTools;

/// Where Monty runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MontyMode {
    /// A jailed worker process per sandbox (the jail, `agentkernel-jail`): an abort, a stack
    /// overflow or a memory blow-up ends that worker, never the kernel. The default.
    #[default]
    Worker,
    /// A thread of the kernel's own process: microseconds, for trusted code only.
    InProcess,
}

impl std::str::FromStr for MontyMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "worker" => Ok(MontyMode::Worker),
            "in_process" | "in-process" => Ok(MontyMode::InProcess),
            other => Err(Error::invalid(
                format!("unknown monty mode {other:?}"),
                "use `worker` (isolated, the default) or `in_process` (trusted code only)",
            )),
        }
    }
}

/// The program worker mode runs in the jail: a binary whose entry point calls
/// [`crate::worker::main`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerCommand {
    /// The binary on the host.
    pub executable: PathBuf,
    /// Its arguments (e.g. `__monty-worker`, which makes the `agentkernel` binary the worker).
    pub args: Vec<String>,
}

static DEFAULT_WORKER: OnceLock<WorkerCommand> = OnceLock::new();

/// Sets the worker a [`MontyConfig`] without one uses (the `agentkernel` binary points it
/// at itself). First call wins.
pub fn set_default_worker(cmd: WorkerCommand) {
    let _ = DEFAULT_WORKER.set(cmd);
}

/// Options of the monty backend.
#[derive(Debug, Clone, Default)]
pub struct MontyConfig {
    /// Where Monty runs.
    pub mode: MontyMode,
    /// Worker mode's program; default: [`set_default_worker`]'s (what
    /// `agentkernel::run_worker_if_requested` sets), else `$AGENTKERNEL_MONTY_WORKER` (the
    /// `agentkernel` binary is given its hidden worker argument), else `agentkernel-monty-worker` beside the running
    /// binary (or one directory up, for test binaries in `target/*/deps`).
    pub worker: Option<WorkerCommand>,
}

fn find_worker() -> Result<WorkerCommand> {
    if let Some(cmd) = DEFAULT_WORKER.get() {
        return Ok(cmd.clone());
    }
    if let Some(p) = std::env::var_os("AGENTKERNEL_MONTY_WORKER") {
        let executable = PathBuf::from(p);
        // The `agentkernel` binary is a worker when asked by its hidden first argument.
        let args = if executable.file_name().is_some_and(|n| n == "agentkernel") {
            vec![crate::WORKER_ARG.to_owned()]
        } else {
            Vec::new()
        };
        return Ok(WorkerCommand { executable, args });
    }
    let exe = std::env::current_exe().map_err(|e| Error::io("finding the running binary", e))?;
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    for candidate in [
        dir.join("agentkernel-monty-worker"),
        dir.join("../agentkernel-monty-worker"),
    ] {
        if candidate.is_file() {
            return Ok(WorkerCommand {
                executable: candidate.canonicalize().unwrap_or(candidate),
                args: Vec::new(),
            });
        }
    }
    Err(Error::Unavailable {
        backend: "monty",
        reason: "no monty worker binary was found for worker mode".into(),
        hint: "call `agentkernel::run_worker_if_requested()` first thing in your `main` (the binary becomes its own worker; the `agentkernel` CLI does), or set AGENTKERNEL_MONTY_WORKER to the `agentkernel` binary or to `agentkernel-monty-worker` (cargo build -p agentkernel-backend-monty), or use `monty-inprocess` for trusted code".into(),
    })
}

/// The monty backend. Cheap to clone.
#[derive(Clone)]
pub struct MontyRuntime {
    mode: MontyMode,
    /// Worker mode: the jail (`agentkernel-jail`) running the worker.
    jail: Option<JailRuntime>,
}

impl std::fmt::Debug for MontyRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MontyRuntime")
            .field("mode", &self.mode)
            .finish()
    }
}

impl MontyRuntime {
    /// The backend in `config.mode`. In-process mode needs `monty_alloc::LimitedAllocator`
    /// as the program's global allocator (the `agentkernel` binary installs it), or memory
    /// limits would silently not hold; worker mode needs the worker binary and the jail.
    pub fn new(config: MontyConfig) -> Result<Self> {
        match config.mode {
            MontyMode::InProcess => {
                // Arms the allocator's count (no hard ceiling: an overrun must not abort
                // the kernel; Monty raises at its next check instead).
                monty_alloc::set_limit(None, false).map_err(|_| Error::Unavailable {
                    backend: "monty",
                    reason: "in-process mode needs monty_alloc::LimitedAllocator as the global allocator, to enforce memory limits".into(),
                    hint: "add `#[global_allocator] static A: monty_alloc::LimitedAllocator = monty_alloc::LimitedAllocator;` to your binary, or use worker mode".into(),
                })?;
                Ok(MontyRuntime {
                    mode: MontyMode::InProcess,
                    jail: None,
                })
            }
            MontyMode::Worker => {
                let worker = match config.worker {
                    Some(w) => w,
                    None => find_worker()?,
                };
                // A binary that is its own worker must count its memory: the worker would
                // refuse to start, with a less helpful message, at every sandbox.
                let own = std::env::current_exe().is_ok_and(|exe| exe == worker.executable);
                if own && monty_types::LIVE_MEMORY.load(std::sync::atomic::Ordering::Relaxed) == 0 {
                    return Err(Error::Unavailable {
                        backend: "monty",
                        reason: "this binary is its own monty worker, but monty_alloc::LimitedAllocator is not its global allocator (a worker's memory limit would not hold)".into(),
                        hint: "add `#[global_allocator] static A: agentkernel::monty_alloc::LimitedAllocator = agentkernel::monty_alloc::LimitedAllocator;` to your binary".into(),
                    });
                }
                let jail = JailRuntime::new(JailConfig {
                    backend: "monty",
                    agent: GuestAgent::Native(NativeAgent {
                        executable: worker.executable,
                        args: worker.args,
                        label: format!("monty {}", monty_types::MONTY_VERSION),
                        memory_exit_code: Some(monty_types::OOM_EXIT_CODE),
                        memory_env: Some(crate::worker::MEMORY_ENV.into()),
                    }),
                    workspace_layer: false,
                })?;
                Ok(MontyRuntime {
                    mode: MontyMode::Worker,
                    jail: Some(jail),
                })
            }
        }
    }

    /// The mode sandboxes run in.
    pub fn mode(&self) -> MontyMode {
        self.mode
    }

    async fn start(
        &self,
        admitted: Admitted<'_>,
        snapshot: Option<&[u8]>,
    ) -> Result<Box<dyn Sandbox>> {
        let spec = admitted.spec();
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        match &self.jail {
            None => Ok(Box::new(in_process(id, spec, snapshot)?)),
            Some(jail) => {
                let mut inner = jail.create_sandbox(admitted).await?;
                if let Some(bytes) = snapshot {
                    inner.load_state(bytes).await?;
                }
                Ok(Box::new(WorkerSandbox {
                    inner,
                    lost: None,
                    wall_time: spec.limits.wall_time,
                }))
            }
        }
    }
}

/// An in-process sandbox for `spec`: `/workspace` and `/tmp` map to real directories (a
/// private temporary one each, made on first use, unless the spec names a workspace).
fn in_process(id: String, spec: &SandboxSpec, snapshot: Option<&[u8]>) -> Result<InProcessSandbox> {
    let mut dirs = Vec::new();
    let mut private = || {
        let d = Arc::new(PrivateDir::default());
        dirs.push(d.clone());
        HostDir::Private(d)
    };
    let workspace = match &spec.workspace {
        Some(w) => {
            std::fs::create_dir_all(w)
                .map_err(|e| Error::io(format!("creating the workspace {}", w.display()), e))?;
            HostDir::Path(w.clone())
        }
        None => private(),
    };
    let tmp = private();
    let mut mounts = vec![
        MountPoint {
            guest: "/workspace".into(),
            host: workspace,
            writable: true,
            write_limit: spec.limits.file_size_bytes,
        },
        MountPoint {
            guest: "/tmp".into(),
            host: tmp,
            writable: true,
            write_limit: Some(
                spec.limits
                    .file_size_bytes
                    .map_or(spec.limits.tmp_bytes, |f| f.min(spec.limits.tmp_bytes)),
            ),
        },
    ];
    for m in &spec.mounts {
        mounts.push(MountPoint {
            guest: m.guest.to_string_lossy().into_owned(),
            host: HostDir::Path(m.host.clone()),
            writable: m.writable,
            write_limit: spec.limits.file_size_bytes,
        });
    }
    let config = SessionConfig {
        mounts,
        env: spec.guest_env(),
        memory_bytes: spec
            .limits
            .memory_bytes
            .and_then(|m| usize::try_from(m).ok()),
    };
    InProcessSandbox::start(
        id,
        config,
        dirs,
        spec.workspace.clone(),
        spec.limits.wall_time,
        spec.limits.output_bytes,
        snapshot,
    )
}

/// A sandbox of worker mode: a jailed worker process, with tool imports rewritten and tool
/// arguments bound on the host, and Monty's own limit errors reported as limit kills.
struct WorkerSandbox {
    inner: JailSandbox,
    lost: Option<String>,
    /// The spec's wall-time limit (a request's timeout overrides it).
    wall_time: Duration,
}

impl WorkerSandbox {
    /// The outcome of a run whose wall time ran out in the host's import rewrite, before
    /// the worker got it. A killed run ends its sandbox's processes on every backend, so
    /// the worker is killed the way any timed-out run's is (the process backend's kill at
    /// the deadline of a run given 1 ms); `reset` revives it.
    async fn killed_before_start(&mut self, started: Instant) -> Result<ExecOutcome> {
        let limit = LimitKind::WallTime;
        let stop = ExecRequest::new("while True:\n    pass").with_timeout(Duration::from_millis(1));
        let out = self.inner.exec(stop, Arc::new(NoTools)).await?;
        self.lost = Some(format!("it was stopped by the {limit} limit"));
        Ok(ExecOutcome {
            status: ExecStatus::Killed { limit },
            stdout: CapturedOutput::default(),
            stderr: CapturedOutput::default(),
            timings: Timings {
                exec: started.elapsed(),
                ..out.timings
            },
            tool_calls: Vec::new(),
            value: None,
            displays: Vec::new(),
        })
    }
}

#[async_trait]
impl Sandbox for WorkerSandbox {
    fn id(&self) -> &str {
        self.inner.id()
    }

    async fn exec_admitted(
        &mut self,
        req: AdmittedExec,
        tools: Arc<dyn ToolHost>,
    ) -> Result<ExecOutcome> {
        if let Some(reason) = &self.lost {
            return Err(Error::sandbox_lost(Some(reason)));
        }
        let started = Instant::now();
        let timeout = req.timeout.unwrap_or(self.wall_time);
        let deadline = started + timeout;
        let tools = Arc::new(BoundTools::new(tools));
        // The rewrite counts against the run's wall time: the worker gets what is left.
        let req = match tools.rewrite(&req.code, deadline)? {
            Some(Cow::Owned(code)) => req.with_code(code),
            Some(Cow::Borrowed(_)) => req,
            None => return self.killed_before_start(started).await,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return self.killed_before_start(started).await;
        }
        let req = req.with_timeout(left);
        let mut out = self.inner.exec_admitted(req, tools).await?;
        if let ExecStatus::Exception {
            type_name, message, ..
        } = &out.status
            && let Some(limit) = limit_of(type_name, message)
        {
            self.lost = Some(format!("it was stopped by the {limit} limit"));
            out.status = ExecStatus::Killed { limit };
        }
        Ok(out)
    }

    async fn reset(&mut self) -> Result<()> {
        self.inner.reset().await?;
        self.lost = None;
        Ok(())
    }

    async fn snapshot(&mut self) -> Result<Snapshot> {
        if let Some(reason) = &self.lost {
            return Err(Error::sandbox_lost(Some(reason)));
        }
        Ok(Snapshot {
            backend: "monty".into(),
            data: self.inner.save_state().await?,
        })
    }

    async fn shutdown(self: Box<Self>) -> Result<()> {
        Box::new(self.inner).shutdown().await
    }
}

#[async_trait]
impl Runtime for MontyRuntime {
    fn name(&self) -> &'static str {
        "monty"
    }

    fn capabilities(&self) -> Capabilities {
        let worker = self.mode == MontyMode::Worker;
        Capabilities {
            isolation: if worker {
                Isolation::OsProcess
            } else {
                Isolation::InProcess
            },
            language: Language::PythonSubset,
            workspace: true,
            snapshot: true,
            reset: true,
            startup: if worker {
                StartupClass::TensOfMilliseconds
            } else {
                StartupClass::Microseconds
            },
            // Monty programs cannot start processes at all, so any process limit holds. The
            // file-size limit is enforced as a cap on all bytes written per mount (stricter
            // than per file). A thread's CPU time is not capped: in-process mode has no
            // CPU-time limit, worker mode's is its process's.
            limits: if worker {
                LimitSet::ALL
            } else {
                LimitSet::ALL.without(LimitKind::CpuTime)
            },
            // Everything not stated here is denied (Capabilities' default is deny-all).
            ..Capabilities::default()
        }
    }

    async fn create_admitted(&self, spec: Admitted<'_>) -> Result<Box<dyn Sandbox>> {
        self.start(spec, None).await
    }

    async fn restore_admitted(
        &self,
        spec: Admitted<'_>,
        snapshot: &Snapshot,
    ) -> Result<Box<dyn Sandbox>> {
        if snapshot.backend != "monty" {
            return Err(Error::invalid(
                format!("a snapshot of the {} backend", snapshot.backend),
                "restore it with the backend that made it",
            ));
        }
        self.start(spec, Some(&snapshot.data)).await
    }

    async fn diagnose(&self) -> Diagnosis {
        let mut checks = vec![Check {
            name: "monty".into(),
            state: CheckState::Active,
            detail: format!(
                "Monty {} (a Python subset: no classes with inheritance, generators, eval, stdlib beyond json/re/math/datetime/collections/...)",
                monty_types::MONTY_VERSION
            ),
        }];
        match &self.jail {
            None => checks.push(Check {
                name: "mode".into(),
                state: CheckState::Partial,
                detail: format!(
                    "in_process: a thread of the kernel ({} MiB stack), panics caught; an abort or native stack overflow ends the kernel, and memory is counted process-wide. Trusted code only",
                    crate::inprocess::STACK_BYTES >> 20
                ),
            }),
            Some(jail) => {
                checks.push(Check {
                    name: "mode".into(),
                    state: CheckState::Active,
                    detail: "worker: one jailed process per sandbox (the process backend's namespaces, seccomp, landlock, rlimits); a crash ends only that worker".into(),
                });
                let jail_checks = jail.diagnose().await;
                checks.extend(jail_checks.checks.into_iter().map(|mut c| {
                    c.name = format!("jail/{}", c.name);
                    c
                }));
            }
        }
        let started = Instant::now();
        let probe = async {
            let mut sb = self.create(&SandboxSpec::default()).await?;
            let out = sb
                .exec(ExecRequest::new("print(6 * 7)"), Arc::new(NoTools))
                .await;
            sb.shutdown().await?;
            out
        };
        let (available, reason) = match probe.await {
            Ok(out) if out.status == ExecStatus::Ok && out.stdout.text() == "42\n" => {
                checks.push(Check {
                    name: "probe".into(),
                    state: CheckState::Active,
                    detail: format!(
                        "a sandbox started and ran print(6 * 7) in {:.2} ms",
                        started.elapsed().as_secs_f64() * 1e3
                    ),
                });
                (true, None)
            }
            Ok(out) => (
                false,
                Some(format!(
                    "a probe sandbox printed {:?} with status {:?}",
                    out.stdout.text(),
                    out.status
                )),
            ),
            Err(e) => (false, Some(e.to_string())),
        };
        Diagnosis {
            available,
            reason,
            checks,
        }
    }
}
