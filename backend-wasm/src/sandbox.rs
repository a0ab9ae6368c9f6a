//! One wasm sandbox: a guest instance in its own store, with a private `/tmp`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentkernel_core::SandboxState;
use agentkernel_core::admission::AdmittedExec;
use agentkernel_core::{
    Error, ExecOutcome, ExecStatus, ExprValue, LimitKind, Result, Sandbox, SandboxSpec, Snapshot,
    StreamKind, Timings, ToolHost, WorkspaceLock,
};
use async_trait::async_trait;
use wasmtime::{Store, StoreLimitsBuilder, Trap, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::bindings::{Agent, Outcome};
use crate::engine::{Prepared, engine, internal};
use crate::quota::{Quota, QuotaExceeded};
use crate::state::{Capture, ExecState, Limiter, State};

/// A sandbox of the wasm backend.
pub struct WasmSandbox {
    id: String,
    prepared: Arc<Prepared>,
    spec: SandboxSpec,
    /// The host directory behind the guest's `/tmp` (private to this sandbox).
    tmp: tempfile::TempDir,
    quota: Quota,
    state: SandboxState<Live>,
}

/// A running guest instance.
struct Live {
    store: Store<State>,
    agent: Agent,
    stdout: Capture,
    stderr: Capture,
}

impl WasmSandbox {
    pub(crate) async fn start(prepared: Arc<Prepared>, spec: SandboxSpec) -> Result<Self> {
        let tmp = take_tmp()?;
        let quota = Quota::new(
            spec.limits.file_size_bytes,
            tmp.path().to_path_buf(),
            spec.limits.tmp_bytes,
        );
        let live = instantiate(&prepared, &spec, tmp.path(), &quota).await?;
        Ok(WasmSandbox {
            id: format!("wasm-{}", uuid::Uuid::new_v4().simple()),
            prepared,
            spec,
            tmp,
            quota,
            state: SandboxState::Live(live),
        })
    }
}

/// Emptied `/tmp` directories of finished sandboxes, for new ones: making a directory is on
/// a sandbox's start path (~0.1 ms), emptying one happens after its shutdown, off that path.
static SPARE_TMP: std::sync::Mutex<Vec<tempfile::TempDir>> = std::sync::Mutex::new(Vec::new());

/// At most this many spare `/tmp` directories are kept.
const SPARE_TMP_MAX: usize = 32;

/// Name prefix of each process's parent directory of sandbox `/tmp`s (followed by its pid).
const TMP_PARENT_PREFIX: &str = "agentkernel-wasm-";

/// A `/tmp` directory for a new sandbox: an emptied spare, or a new one.
fn take_tmp() -> Result<tempfile::TempDir> {
    if let Some(tmp) = SPARE_TMP.lock().ok().and_then(|mut spare| spare.pop()) {
        return Ok(tmp);
    }
    tempfile::Builder::new()
        .prefix("tmp-")
        .permissions(private_dir())
        .tempdir_in(tmp_parent()?)
        .map_err(|e| Error::io("creating the sandbox's /tmp", e))
}

/// Mode `0700`: a sandbox's `/tmp` (and the directory holding them) is this user's alone,
/// so nothing a program leaves there (files are created `0600` too) is readable by other
/// users of the host, during the run or after it.
fn private_dir() -> std::fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    std::fs::Permissions::from_mode(0o700)
}

/// Takes back a finished sandbox's `/tmp` (its guest is gone): kept as a spare only when
/// everything in it could be removed; otherwise (or with enough spares) it is deleted.
fn give_back_tmp(tmp: tempfile::TempDir) {
    if agentkernel_core::empty_dir(tmp.path()).is_ok()
        && let Ok(mut spare) = SPARE_TMP.lock()
        && spare.len() < SPARE_TMP_MAX
    {
        spare.push(tmp);
    }
}

/// This process's directory of sandbox `/tmp`s, `agentkernel-wasm-<pid>-…` in the system's
/// temporary directory. It outlives the process (spares, and directories of sandboxes still
/// being dropped at exit); the first wasm sandbox of a later process removes it.
fn tmp_parent() -> Result<&'static std::path::Path> {
    static PARENT: std::sync::OnceLock<std::result::Result<std::path::PathBuf, String>> =
        std::sync::OnceLock::new();
    PARENT
        .get_or_init(|| {
            let system = std::env::temp_dir();
            remove_dead_tmp_parents(&system);
            tempfile::Builder::new()
                .prefix(&format!("{TMP_PARENT_PREFIX}{}-", std::process::id()))
                .permissions(private_dir())
                .tempdir_in(&system)
                .map(tempfile::TempDir::keep)
                .map_err(|e| e.to_string())
        })
        .as_deref()
        .map_err(|e| {
            Error::io(
                "creating the directory of the wasm sandboxes' /tmp",
                std::io::Error::other(e.clone()),
            )
        })
}

/// Removes the `/tmp` parents of processes that are gone from `dir`. (A kernel in another
/// pid namespace sharing this temporary directory would look gone: give each its own.)
pub(crate) fn remove_dead_tmp_parents(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(TMP_PARENT_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        // No signal is sent: this only asks whether the process exists.
        let gone = matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        );
        if gone && entry.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Where the guest finds the standard library outside its snapshot (read-only; the same path
/// it had at build time, `STDLIB_MOUNT` in guest/wasm_agent.py). A spec cannot mount over
/// it: kernel-core reserves the path.
const STDLIB_MOUNT: &str = "/python";

/// The guest's environment: the defaults, the spec's variables, and `PWD`.
fn guest_env(spec: &SandboxSpec) -> Vec<(String, String)> {
    let mut env = spec.guest_env();
    let pwd = if spec.workspace.is_some() {
        "/workspace"
    } else {
        "/tmp"
    };
    // The spec may set its own PWD.
    env.entry("PWD".into()).or_insert_with(|| pwd.into());
    env.into_iter().collect()
}

async fn instantiate(
    prepared: &Prepared,
    spec: &SandboxSpec,
    tmp: &Path,
    quota: &Quota,
) -> Result<Live> {
    let stdout = Capture::new(StreamKind::Stdout);
    let stderr = Capture::new(StreamKind::Stderr);
    let env = guest_env(spec);
    let mut wasi = WasiCtxBuilder::new();
    wasi.stdout(stdout.clone())
        .stderr(stderr.clone())
        .envs(&env)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        // File operations run on the calling thread instead of tokio's blocking pool: a
        // thread hand-off per call cost more than the calls themselves (a back-to-back cold
        // start went from ~3.8 ms to ~2.4 ms). Local file operations do not wait on anyone:
        // opening a FIFO or device, which could, is refused (`quota::is_special`).
        .allow_blocking_current_thread(true);
    let preopen = |wasi: &mut WasiCtxBuilder, host: &Path, guest: &str, writable: bool| {
        let perms = if writable {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        wasi.preopened_dir(host, guest, perms)
            .map(|_| ())
            .map_err(|e| {
                Error::Internal(format!("opening {} for the guest: {e:#}", host.display()))
            })
    };
    preopen(&mut wasi, &prepared.stdlib, STDLIB_MOUNT, false)?;
    preopen(&mut wasi, tmp, "/tmp", true)?;
    if let Some(ws) = &spec.workspace {
        preopen(&mut wasi, ws, "/workspace", true)?;
    }
    for m in &spec.mounts {
        preopen(&mut wasi, &m.host, &m.guest.to_string_lossy(), m.writable)?;
    }
    let mut limits = StoreLimitsBuilder::new().trap_on_grow_failure(false);
    if let Some(bytes) = spec.limits.memory_bytes {
        limits = limits.memory_size(usize::try_from(bytes).unwrap_or(usize::MAX));
    }
    let state = State {
        wasi: wasi.build(),
        table: {
            let mut table = wasmtime::component::ResourceTable::new();
            table.set_max_capacity(crate::quota::MAX_RESOURCES);
            table
        },
        limits: Limiter {
            inner: limits.build(),
            memory_refused: false,
        },
        quota: quota.clone(),
        exec: ExecState::default(),
    };
    let mut store = Store::new(engine(), state);
    store.limiter(|s| &mut s.limits);
    // Instantiation and `configure` run without a program deadline, but never forever.
    let setup_deadline = Instant::now() + Duration::from_secs(30);
    set_deadline(&mut store, setup_deadline);
    let agent = prepared
        .pre
        .instantiate_async(&mut store)
        .await
        .map_err(|e| {
            if e.chain()
                .any(|c| c.is::<wasmtime::PoolConcurrencyLimitError>())
            {
                Error::Unavailable {
                    backend: "wasm",
                    reason: format!(
                        "{} wasm sandboxes are alive in this process already",
                        crate::engine::POOL_SLOTS
                    ),
                    hint: "shut some down (or use a Pool with a max_size below that)".into(),
                }
            } else {
                internal(e)
            }
        })?;
    agent
        .call_configure(&mut store, &env)
        .await
        .map_err(internal)?;
    Ok(Live {
        store,
        agent,
        stdout,
        stderr,
    })
}

/// Interrupts the guest at `deadline`; until then it yields to the async runtime at every
/// epoch tick, so a busy guest never starves the kernel's other tasks.
fn set_deadline(store: &mut Store<State>, deadline: Instant) {
    store.epoch_deadline_callback(move |_| {
        Ok(if Instant::now() >= deadline {
            UpdateDeadline::Interrupt
        } else {
            UpdateDeadline::Yield(1)
        })
    });
    store.set_epoch_deadline(1);
}

#[async_trait]
impl Sandbox for WasmSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    async fn exec_admitted(
        &mut self,
        req: AdmittedExec,
        tools: Arc<dyn ToolHost>,
    ) -> Result<ExecOutcome> {
        let live = self.state.live()?;
        let timeout = req.timeout.unwrap_or(self.spec.limits.wall_time);
        // One program at a time per workspace (the guest stops with this exec).
        let _workspace = WorkspaceLock::of(self.spec.workspace.as_deref(), timeout).await?;
        let started = Instant::now();
        let deadline = started + timeout;
        let cap = self.spec.limits.output_bytes;
        self.quota.begin_run();
        live.stdout.begin(cap, req.output.clone());
        live.stderr.begin(cap, req.output.clone());
        live.store.data_mut().exec = ExecState {
            tools: Some(tools),
            ..ExecState::default()
        };
        live.store.data_mut().limits.memory_refused = false;
        set_deadline(&mut live.store, deadline);
        // The epoch callback stops wasm at the deadline; this stops a wait on a host tool.
        let result = tokio::time::timeout_at(
            (deadline + crate::engine::EPOCH_TICK).into(),
            live.agent.call_run(&mut live.store, &req.code),
        )
        .await;
        let exec_state = std::mem::take(&mut live.store.data_mut().exec);
        let memory_refused = live.store.data().limits.memory_refused;
        let stdout = live.stdout.finish();
        let mut stderr = live.stderr.finish();
        // A run that did not return (a trap, an exit, the deadline) leaves an instance that
        // cannot be entered again: the sandbox is lost until reset.
        let mut value = None;
        let (status, trapped) = match result {
            // The wall time has two layers: the epoch deadline interrupts guest code (a
            // `Trap::Interrupt` below); this one ends a run waiting in a host call, which
            // the epoch cannot interrupt, and says so.
            Err(_elapsed) => {
                stderr.push_live(
                    format!(
                        "agentkernel: the run was ended at its {timeout:?} time limit while it waited for a host call (a tool call, a sleep)\n"
                    )
                    .as_bytes(),
                    cap,
                    req.output.as_ref(),
                    agentkernel_core::StreamKind::Stderr,
                );
                (
                    ExecStatus::Killed {
                        limit: LimitKind::WallTime,
                    },
                    true,
                )
            }
            Ok(Err(err)) => (trap_status(&err, memory_refused), true),
            Ok(Ok(Outcome::Ok(reported))) => {
                // Bounded and checked again: the guest is not trusted with the caps.
                value = reported.map(|v| {
                    ExprValue::from_guest(
                        v.repr.as_bytes(),
                        v.json.as_deref().map(str::as_bytes),
                        v.truncated,
                    )
                });
                (ExecStatus::Ok, false)
            }
            Ok(Ok(Outcome::Exited(code))) => (ExecStatus::Exited { code }, false),
            Ok(Ok(Outcome::Exception(e))) => {
                // An uncaught MemoryError is a memory kill, which ends the sandbox as a
                // trap does.
                let status = ExecStatus::Exception {
                    type_name: e.type_name,
                    message: e.message,
                    traceback: e.traceback,
                }
                .memory_error_as_kill();
                let killed = matches!(status, ExecStatus::Killed { .. });
                (status, killed)
            }
        };
        if trapped {
            self.state.lose(match &status {
                ExecStatus::Killed { limit } => format!("the previous run hit the {limit} limit"),
                ExecStatus::Crashed { reason } => format!("the guest crashed: {reason}"),
                _ => "the program exited the interpreter".into(),
            });
        }
        Ok(ExecOutcome {
            status,
            stdout,
            stderr,
            timings: Timings {
                exec: started.elapsed(),
                tool_calls: exec_state.tool_time,
                ..Timings::default()
            },
            tool_calls: exec_state.tool_calls,
            value,
            displays: Vec::new(),
        })
    }

    async fn reset(&mut self) -> Result<()> {
        drop(self.state.lose("it was reset"));
        agentkernel_core::empty_dir(self.tmp.path())
            .map_err(|e| Error::io("emptying the sandbox's /tmp", e))?;
        self.quota.reset();
        self.state = SandboxState::Live(
            instantiate(&self.prepared, &self.spec, self.tmp.path(), &self.quota).await?,
        );
        Ok(())
    }

    async fn snapshot(&mut self) -> Result<Snapshot> {
        Err(Error::unsupported(
            "snapshot",
            "wasm",
            "the wasm backend cannot save a sandbox's state; `reset` returns it to the pre-initialised state",
        ))
    }

    async fn shutdown(self: Box<Self>) -> Result<()> {
        // What the program left in `/tmp` is gone before shutdown returns (a process that
        // exits right after leaves nothing behind; no guest call runs now, so nothing
        // writes there meanwhile). Files the guest still holds open keep their blocks until
        // the instance is dropped below.
        let emptied = agentkernel_core::empty_dir(self.tmp.path());
        // Resetting the instance's memory slot and making the `/tmp` directory a spare
        // (emptied again once the guest is gone) happen off the caller's path. (If no
        // thread can be started, the closure, and the sandbox with it, drops here.)
        let _ = std::thread::Builder::new()
            .name("agentkernel-wasm-drop".into())
            .spawn(move || {
                let WasmSandbox { state, tmp, .. } = *self;
                // The guest first: nothing may write to the directory while it is emptied.
                drop(state);
                give_back_tmp(tmp);
            });
        emptied.map_err(|e| Error::io("emptying the sandbox's /tmp", e))
    }
}

/// What a trap out of the guest means for the program (`os._exit(n)` is a WASI exit).
fn trap_status(err: &wasmtime::Error, memory_refused: bool) -> ExecStatus {
    if let Some(exit) = err.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return ExecStatus::Exited { code: exit.0 };
    }
    if let Some(QuotaExceeded(limit)) = err.downcast_ref::<QuotaExceeded>() {
        return ExecStatus::Killed { limit: *limit };
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => ExecStatus::Killed {
            limit: LimitKind::WallTime,
        },
        _ if memory_refused => ExecStatus::Killed {
            limit: LimitKind::Memory,
        },
        Some(Trap::StackOverflow) => ExecStatus::Crashed {
            reason: "the guest's stack overflowed (deep recursion in native code)".into(),
        },
        _ => ExecStatus::Crashed {
            reason: format!("{err:#}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tmp_parents_of_gone_processes_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        let me = std::process::id();
        for name in [
            format!("{TMP_PARENT_PREFIX}{gone}-abc"),
            format!("{TMP_PARENT_PREFIX}{me}-def"),
            format!("{TMP_PARENT_PREFIX}notapid"),
            "unrelated-1".to_string(),
        ] {
            std::fs::create_dir_all(dir.path().join(&name).join("tmp-x")).unwrap();
        }
        remove_dead_tmp_parents(dir.path());
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                format!("{TMP_PARENT_PREFIX}{me}-def"),
                format!("{TMP_PARENT_PREFIX}notapid"),
                "unrelated-1".to_string()
            ]
        );
    }
}
