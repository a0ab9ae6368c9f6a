//! The `msb` engine: a microVM per sandbox from the `microsandbox` crate (0.7.11), which
//! boots libkrun guests through its `msb` runtime executable. It needs real KVM (see
//! [`crate::kvm`]): under PVM or without `/dev/kvm` the `qemu` engine runs instead.
//!
//! Nothing is pulled at run time: the runtime pair comes from the PyPI wheel
//! `microsandbox==0.7.11` (`scripts/fetch-msb-runtime` unpacks its `msb` and
//! `libkrunfw.so.5.6.1`), and the guest's root filesystem is the microVM image's `rootfs/`
//! (built from Debian packages by `scripts/build-microvm-image`), bound as the guest's `/`.
//! [`MsbEngine::from_env`] finds and checks them, so a missing file is reported with what to
//! do, not as a failed boot.
//!
//! A sandbox ([`MsbSandbox`]) is one VM: the workspace and mounts are bound into it (virtiofs;
//! no copying), `/tmp` is a tmpfs of the spec's size, and there is no network. The shared
//! guest agent runs as uid 1000 behind the stdio multiplexer ([`crate::mux`]), started by one
//! long-lived exec as root, so every backend speaks the same protocol.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentkernel_core::admission::AdmittedExec;
use agentkernel_core::guest::{
    AGENT_SOURCE, ExecFrame, ExecReport, GuestBackend, GuestSandbox, Hello, agent_exit_status,
};
use agentkernel_core::{Error, ExecOutcome, ExecStatus, Result, SandboxSpec, Snapshot, ToolHost};
use agentkernel_core::{ExecRequest, SandboxState};
use async_trait::async_trait;
use microsandbox::sandbox::DestroyOptions;
use microsandbox::{Backend, ExecEvent, LocalBackend, MicrosandboxError, Sandbox};
use serde_json::json;
use tokio::sync::mpsc;

use crate::mux::{self, AgentExit, MUX_SOURCE, MuxAgent};

/// The `msb` runtime executable (from the wheel `microsandbox==0.7.11`).
pub const MSB_PATH_ENV: &str = "MSB_PATH";
/// The libkrun firmware library `libkrunfw.so.5.6.1` (from the same wheel).
pub const MSB_LIBKRUNFW_ENV: &str = "MSB_LIBKRUNFW_PATH";
/// microsandbox's state directory (its database, sandbox directories, logs).
pub const MSB_HOME_ENV: &str = "MSB_HOME";
/// The guest root filesystem: a directory with `python3` in `usr/bin`.
pub const ROOTFS_ENV: &str = "AGENTKERNEL_MSB_ROOTFS";

/// The `msb` version this build's `microsandbox` crate speaks to (it is pinned with `=`).
pub const RUNTIME_VERSION: &str = "0.7.11";
/// How long a sandbox may take to boot before the run is abandoned.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a sandbox gets to shut down gracefully before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the host waits for the multiplexer's report of the agent's exit.
const ANSWER_GRACE: Duration = Duration::from_secs(10);
/// The longest a sandbox lives: microsandbox's own backstop, for when this process is gone.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The guest user programs run as (root only inside the VM starts them).
const SANDBOX_UID: u32 = 1000;

const WHEEL_HINT: &str = "run scripts/fetch-msb-runtime (it fetches the PyPI wheel \
     microsandbox==0.7.11 and unpacks `msb` and `libkrunfw.so.5.6.1`), or set MSB_PATH and \
     MSB_LIBKRUNFW_PATH to those files";

/// The `msb` engine's configuration: the runtime files, microsandbox's home and the guest
/// root filesystem, as found in the environment, and a microsandbox local backend for them.
#[derive(Clone)]
pub struct MsbEngine {
    msb: PathBuf,
    libkrunfw: PathBuf,
    home: PathBuf,
    rootfs: PathBuf,
    backend: Arc<dyn Backend>,
}

impl std::fmt::Debug for MsbEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsbEngine")
            .field("msb", &self.msb)
            .field("libkrunfw", &self.libkrunfw)
            .field("home", &self.home)
            .field("rootfs", &self.rootfs)
            .finish_non_exhaustive()
    }
}

/// The value of `name`, if set and not empty.
fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// An error naming a variable that is unset or points at the wrong thing.
fn env_problem(name: &str, problem: &str, hint: &str) -> String {
    format!("{name} {problem}: {hint}")
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Where `scripts/fetch-msb-runtime` puts the runtime pair.
pub fn fetched_runtime_dir() -> PathBuf {
    agentkernel_core::cache_dir()
        .join("msb")
        .join(format!("runtime-{RUNTIME_VERSION}"))
}

/// `name`'s value, else `default` when that exists; `None` when neither.
fn env_or_default(name: &str, default: PathBuf) -> Option<PathBuf> {
    env_path(name).or_else(|| default.exists().then_some(default))
}

impl MsbEngine {
    /// The engine with its files found: `MSB_PATH` and `MSB_LIBKRUNFW_PATH`, else the pair
    /// `scripts/fetch-msb-runtime` fetched ([`fetched_runtime_dir`]); `MSB_HOME`, else
    /// `<cache>/msb/home`; `AGENTKERNEL_MSB_ROOTFS`, else `image_rootfs` (the microVM
    /// image's `rootfs/`). The error says which is missing or wrong and how to fix it.
    /// It also reads the version embedded in `msb` (nothing is run), which must be
    /// 0.7.11, and asks microsandbox to resolve its runtime pair the way a launch does (that
    /// checks presence only: a wrong `libkrunfw` shows only when a sandbox starts).
    pub fn from_env(image_rootfs: Option<&Path>) -> std::result::Result<MsbEngine, String> {
        let fetched = fetched_runtime_dir();
        let msb = env_or_default(MSB_PATH_ENV, fetched.join("msb"))
            .ok_or_else(|| env_problem(MSB_PATH_ENV, "is not set", WHEEL_HINT))?;
        if !is_executable(&msb) {
            return Err(env_problem(
                MSB_PATH_ENV,
                &format!("({}) is not an executable file", msb.display()),
                &format!("{WHEEL_HINT} (an unzip that drops modes needs `chmod +x msb`)"),
            ));
        }
        let libkrunfw = env_or_default(MSB_LIBKRUNFW_ENV, fetched.join("libkrunfw.so.5.6.1"))
            .ok_or_else(|| env_problem(MSB_LIBKRUNFW_ENV, "is not set", WHEEL_HINT))?;
        if !libkrunfw.is_file() {
            return Err(env_problem(
                MSB_LIBKRUNFW_ENV,
                &format!("({}) is not a file", libkrunfw.display()),
                WHEEL_HINT,
            ));
        }
        let home = env_path(MSB_HOME_ENV)
            .unwrap_or_else(|| agentkernel_core::cache_dir().join("msb").join("home"));
        if home.exists() && !home.is_dir() {
            return Err(env_problem(
                MSB_HOME_ENV,
                &format!("({}) is not a directory", home.display()),
                "point it at a directory (created if missing)",
            ));
        }
        let rootfs = env_path(ROOTFS_ENV)
            .or_else(|| image_rootfs.map(Path::to_path_buf))
            .ok_or_else(|| {
                env_problem(
                    ROOTFS_ENV,
                    "is not set and there is no microVM image",
                    "run scripts/build-microvm-image (its rootfs/ is the guest's root \
                     filesystem), or point the variable at a root filesystem directory with \
                     python3",
                )
            })?;
        if !rootfs.join("usr/bin/python3").exists() {
            return Err(env_problem(
                ROOTFS_ENV,
                &format!("({}) has no usr/bin/python3", rootfs.display()),
                "rebuild the image with scripts/build-microvm-image, or point the variable \
                 at a root filesystem directory with python3 installed",
            ));
        }
        match microsandbox::setup::resolve_runtime_version(&msb) {
            Ok(Some(version)) if version.to_string() == RUNTIME_VERSION => {}
            Ok(Some(version)) => {
                return Err(env_problem(
                    MSB_PATH_ENV,
                    &format!(
                        "({}) is msb {version}, and this build speaks to {RUNTIME_VERSION}",
                        msb.display()
                    ),
                    WHEEL_HINT,
                ));
            }
            Ok(None) => {
                return Err(env_problem(
                    MSB_PATH_ENV,
                    &format!("({}) carries no msb version", msb.display()),
                    WHEEL_HINT,
                ));
            }
            Err(e) => {
                return Err(env_problem(
                    MSB_PATH_ENV,
                    &format!("({}) is not a readable msb executable ({e})", msb.display()),
                    WHEEL_HINT,
                ));
            }
        }
        // microsandbox resolves the pair itself at launch; its environment variables win over
        // these, so it finds the same files either way.
        microsandbox::config::set_sdk_msb_path(&msb);
        microsandbox::config::set_sdk_libkrunfw_path(&libkrunfw);
        let local = LocalBackend::builder()
            .home(&home)
            .build_lazy()
            .map_err(|e| format!("microsandbox rejected its configuration: {e}"))?;
        // The runtime pair as a launch resolves it (from the same variables): presence only.
        local
            .config()
            .resolve_msb_path()
            .map_err(|e| format!("microsandbox cannot use the runtime pair: {e}: {WHEEL_HINT}"))?;
        Ok(MsbEngine {
            msb,
            libkrunfw,
            home,
            rootfs,
            backend: Arc::new(local),
        })
    }

    /// The `msb` runtime executable.
    pub fn msb_path(&self) -> &Path {
        &self.msb
    }

    /// The libkrun firmware library.
    pub fn libkrunfw_path(&self) -> &Path {
        &self.libkrunfw
    }

    /// microsandbox's state directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The guest root filesystem directory.
    pub fn rootfs(&self) -> &Path {
        &self.rootfs
    }

    /// Boots a sandbox named `name` for `spec`: `memory_mib` MiB and `vcpus` vCPUs, no
    /// network, the root filesystem bound as `/`, the workspace bound at `/workspace` (files
    /// appear owned by the sandbox user), the spec's mounts bound (read-only unless
    /// writable), and a private tmpfs of `tmp_bytes` at `/tmp`.
    async fn boot(
        &self,
        name: &str,
        spec: &SandboxSpec,
        memory_mib: u32,
        vcpus: u8,
    ) -> Result<Sandbox> {
        let rootfs = self.rootfs.clone();
        let mut builder = Sandbox::builder(name)
            .image_with(|image| image.bind(rootfs))
            .memory(memory_mib)
            .cpus(vcpus)
            .disable_network()
            .ephemeral(true)
            // A backstop: the runtime ends the sandbox even if this process vanishes.
            .max_duration(MAX_LIFETIME.as_secs())
            .volume("/tmp", |m| {
                m.tmpfs().size(
                    u32::try_from(spec.limits.tmp_bytes.div_ceil(1 << 20)).unwrap_or(u32::MAX),
                )
            });
        if let Some(ws) = &spec.workspace {
            let ws = ws.clone();
            builder = builder.volume("/workspace", move |m| {
                m.bind(ws).owner(SANDBOX_UID, SANDBOX_UID)
            });
        }
        for mount in &spec.mounts {
            let host = mount.host.clone();
            let writable = mount.writable;
            builder = builder.volume(mount.guest.display().to_string(), move |m| {
                // Owned by the sandbox user either way, so a host mode of 0700 does not hide
                // it; read-only mounts are enforced by the host's virtiofs server too.
                let m = m.bind(host).owner(SANDBOX_UID, SANDBOX_UID);
                if writable { m } else { m.readonly() }
            });
        }
        let create = microsandbox::with_backend(self.backend.clone(), builder.create());
        match tokio::time::timeout(BOOT_TIMEOUT, create).await {
            Ok(Ok(sandbox)) => Ok(sandbox),
            Ok(Err(e)) => Err(self.start_failed(&e)),
            Err(_) => {
                // The create future is gone; a half-started sandbox may remain.
                let leftover =
                    microsandbox::with_backend(self.backend.clone(), Sandbox::get(name)).await;
                if let Ok(handle) = leftover {
                    let force = DestroyOptions {
                        force: true,
                        timeout: STOP_TIMEOUT,
                    };
                    if let Err(e) = handle.destroy_with(force).await {
                        tracing::warn!(sandbox = name, error = %e, "msb: could not remove a sandbox that did not boot");
                    }
                }
                Err(Error::Unavailable {
                    backend: "microvm",
                    reason: format!("the msb engine's sandbox did not boot in {BOOT_TIMEOUT:?}"),
                    hint: start_hint(),
                })
            }
        }
    }

    /// [`Error::Unavailable`] for a sandbox that did not start, with a hint for its cause.
    fn start_failed(&self, e: &MicrosandboxError) -> Error {
        let hint = match e {
            MicrosandboxError::LibkrunfwNotFound(_)
            | MicrosandboxError::RuntimeNotInstalled(_)
            | MicrosandboxError::RuntimeIncomplete(_) => WHEEL_HINT.to_owned(),
            MicrosandboxError::InvalidConfig(_) => format!(
                "check {ROOTFS_ENV} ({}) and the memory size",
                self.rootfs.display()
            ),
            _ => start_hint(),
        };
        Error::Unavailable {
            backend: "microvm",
            reason: format!("the msb engine could not start a sandbox: {e}"),
            hint,
        }
    }
}

/// What to check when a sandbox did not start for a reason not tied to one setting.
fn start_hint() -> String {
    let kvm = crate::kvm::KvmProbe::detect();
    format!(
        "the msb engine needs hardware KVM ({}) and read-write access to /dev/kvm; its logs are \
         under MSB_HOME; set [microvm] engine = \"qemu\" in agentkernel.toml to use QEMU instead",
        kvm.reason()
    )
}

/// Stops and removes `sandbox`: gracefully first unless `force`, then by force.
async fn destroy(sandbox: &Sandbox, force: bool) {
    if !force {
        let graceful = DestroyOptions {
            force: false,
            timeout: STOP_TIMEOUT,
        };
        match sandbox.destroy_with(graceful).await {
            Ok(()) => return,
            Err(e) => {
                tracing::debug!(sandbox = sandbox.name(), error = %e, "msb: graceful stop failed, killing");
            }
        }
    }
    let forced = DestroyOptions {
        force: true,
        timeout: STOP_TIMEOUT,
    };
    if let Err(e) = sandbox.destroy_with(forced).await {
        tracing::warn!(sandbox = sandbox.name(), error = %e, "msb: could not remove the sandbox");
    }
}

/// A sandbox of the `msb` engine: a libkrun microVM with the guest agent behind the stdio
/// multiplexer ([`crate::mux`]), started by one long-lived exec. The workspace and mounts are
/// shared directories (virtiofs), so files need no copying; a timeout or the agent's death
/// ends the VM, and `reset` boots a new one.
pub struct MsbSandbox {
    guest: GuestSandbox<MsbGuest>,
}

/// What an msb sandbox keeps besides its VM, and its exec hooks (run by the exec state
/// machine every guest-protocol backend shares, [`GuestSandbox`]).
struct MsbGuest {
    engine: MsbEngine,
    spec: SandboxSpec,
    memory_mib: u32,
    vcpus: u8,
    id: String,
}

struct MsbLive {
    sandbox: Sandbox,
    agent: MuxAgent,
    hello: Hello,
}

impl MsbSandbox {
    /// Boots a VM for `spec` and starts its agent.
    pub async fn start(
        engine: MsbEngine,
        spec: &SandboxSpec,
        memory_mib: u32,
        vcpus: u8,
    ) -> Result<MsbSandbox> {
        let mut sandbox = MsbSandbox {
            guest: GuestSandbox::new(
                SandboxState::Lost("it has not started".into()),
                MsbGuest {
                    engine,
                    spec: spec.clone(),
                    memory_mib,
                    vcpus,
                    id: String::new(),
                },
            ),
        };
        sandbox.boot().await?;
        Ok(sandbox)
    }

    /// What the guest agent reported at start.
    pub fn hello(&self) -> Option<&Hello> {
        self.guest.state.as_live().map(|l| &l.hello)
    }

    async fn boot(&mut self) -> Result<()> {
        let name = format!(
            "agentkernel-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let g = &mut self.guest.backend;
        let sandbox = g.engine.boot(&name, &g.spec, g.memory_mib, g.vcpus).await?;
        g.id = name;
        match g.start_agent(&sandbox).await {
            Ok((agent, hello)) => {
                self.guest.state = SandboxState::Live(MsbLive {
                    sandbox,
                    agent,
                    hello,
                });
                Ok(())
            }
            Err(e) => {
                destroy(&sandbox, true).await;
                Err(e)
            }
        }
    }
}

impl MsbGuest {
    /// Runs the multiplexer as root (it drops to the sandbox user for the agent) and starts
    /// the agent through it.
    async fn start_agent(&self, sandbox: &Sandbox) -> Result<(MuxAgent, Hello)> {
        let mut handle = sandbox
            .exec_stream_with("python3", |e| {
                e.args(["-I", "-u", "-c", MUX_SOURCE]).stdin_pipe()
            })
            .await
            .map_err(|e| Error::Unavailable {
                backend: "microvm",
                reason: format!("the msb guest could not start python3: {e}"),
                hint: format!(
                    "{ROOTFS_ENV} ({}) must hold a working python3 for the guest",
                    self.engine.rootfs.display()
                ),
            })?;
        let sink = handle.take_stdin().ok_or_else(|| {
            Error::Internal("msb: the exec stream has no stdin although it was asked for".into())
        })?;
        let (in_tx, in_rx) = mpsc::channel::<Vec<u8>>(64);
        let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(64);
        let name = sandbox.name().to_owned();
        // Why the multiplexer could not start, if microsandbox says so.
        let failed = Arc::new(std::sync::Mutex::new(None::<String>));
        let failure = failed.clone();
        tokio::spawn(async move {
            while let Some(event) = handle.recv().await {
                let go_on = match event {
                    ExecEvent::Stdout(bytes) => in_tx.send(bytes.to_vec()).await.is_ok(),
                    ExecEvent::Stderr(bytes) => {
                        tracing::warn!(
                            sandbox = %name,
                            "msb: the guest's multiplexer says: {}",
                            String::from_utf8_lossy(&bytes).trim_end()
                        );
                        true
                    }
                    ExecEvent::Failed(f) => {
                        tracing::warn!(sandbox = %name, "msb: the guest could not start python3: {}", f.message);
                        *failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(f.message);
                        false
                    }
                    ExecEvent::Exited { .. } => false,
                    _ => true,
                };
                if !go_on {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            while let Some(bytes) = out_rx.recv().await {
                if sink.write(&bytes).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let limits = &self.spec.limits;
        let config = json!({
            "env": self.spec.guest_env(),
            "cwd": if self.spec.workspace.is_some() { "/workspace" } else { "/tmp" },
            "uid": SANDBOX_UID,
            "limits": {
                "processes": limits.processes,
                "file_size_bytes": limits.file_size_bytes,
                "cpu_seconds": limits.cpu_time.map(|t| t.as_secs().max(1)),
            },
        });
        let started = mux::start(
            in_rx,
            out_tx,
            AGENT_SOURCE,
            &config,
            Instant::now() + BOOT_TIMEOUT,
        )
        .await;
        let failure = failed.lock().unwrap_or_else(|e| e.into_inner()).take();
        match (started, failure) {
            (Err(_), Some(message)) => Err(Error::Unavailable {
                backend: "microvm",
                reason: format!("the msb guest could not start python3: {message}"),
                hint: format!(
                    "{ROOTFS_ENV} ({}) must hold a working python3 for the guest (rebuild the \
                     image with scripts/build-microvm-image)",
                    self.engine.rootfs.display()
                ),
            }),
            (started, _) => started,
        }
    }
}

#[async_trait]
impl GuestBackend for MsbGuest {
    type Live = MsbLive;

    fn name(&self) -> &'static str {
        "microvm"
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn spec(&self) -> &SandboxSpec {
        &self.spec
    }

    async fn run(
        &mut self,
        live: &mut MsbLive,
        req: &ExecRequest,
        tools: Arc<dyn ToolHost>,
        frame: &ExecFrame,
    ) -> Result<ExecReport> {
        live.agent
            .conn
            .exec(req, tools, frame.output_cap, frame.deadline)
            .await
    }

    // A timed-out run needs nothing kept: the workspace is shared, so what the program wrote
    // stays when the VM ends.

    async fn guest_gone(&mut self, live: MsbLive, _frame: &ExecFrame) -> ExecStatus {
        let mut exit = live.agent.exit.clone();
        let exit = tokio::time::timeout(ANSWER_GRACE, exit.wait_for(Option::is_some))
            .await
            .ok()
            .and_then(|r| r.ok().and_then(|e| *e));
        let status = match exit {
            Some(AgentExit { code, oom }) if code >= 0 => {
                agent_exit_status(Some(code), oom, self.spec.limits.cpu_time.is_some(), None)
            }
            _ => ExecStatus::Crashed {
                reason: "the msb sandbox stopped answering (its VM or multiplexer died)".into(),
            },
        };
        destroy(&live.sandbox, true).await;
        status
    }

    async fn end(&mut self, live: MsbLive) {
        destroy(&live.sandbox, true).await;
    }
}

#[async_trait]
impl agentkernel_core::Sandbox for MsbSandbox {
    fn id(&self) -> &str {
        &self.guest.backend.id
    }

    async fn exec_admitted(
        &mut self,
        req: AdmittedExec,
        tools: Arc<dyn ToolHost>,
    ) -> Result<ExecOutcome> {
        self.guest.exec(req, tools).await
    }

    async fn reset(&mut self) -> Result<()> {
        self.guest.lose("it was reset").await;
        self.boot().await
    }

    async fn snapshot(&mut self) -> Result<Snapshot> {
        Err(crate::runtime::no_snapshots())
    }

    async fn shutdown(mut self: Box<Self>) -> Result<()> {
        // A graceful stop first (not the forced end of a lost sandbox).
        if let Some(live) = self.guest.state.lose("it was shut down") {
            destroy(&live.sandbox, false).await;
        }
        Ok(())
    }
}

impl Drop for MsbSandbox {
    /// A sandbox dropped without `shutdown` (an error path, a cancelled request) must not
    /// leave its VM running until microsandbox's backstop: it is destroyed in the background.
    fn drop(&mut self) {
        if let Some(live) = self.guest.state.lose("it was dropped")
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move { destroy(&live.sandbox, true).await });
        }
    }
}
