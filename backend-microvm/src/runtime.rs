//! [`MicroVmRuntime`] and [`MicroVmSandbox`]: one QEMU microVM per sandbox.
//!
//! How a sandbox starts:
//! 1. a *warm VM* is taken from the pool, or made: restored from the saved *template*
//!    state for its memory size (booted and saved once per image, memory size and QEMU
//!    version, then cached on disk), or booted when snapshots are off; the supervisor then
//!    starts a guest agent that imports what it needs (which also warms QEMU's translation
//!    cache) and waits;
//! 2. the host copies the read-only mounts (e.g. `/tools`) in (the workspace and other
//!    writable mounts are copied in by each exec, inside its deadline);
//! 3. the supervisor passes the sandbox's environment and limits to the agent, which
//!    applies them and says hello.
//!
//! After each exec, the program's processes are stopped (every process of the sandbox user
//! is killed but the agent, which is stopped until the next exec) and what the program
//! changed in `/workspace` is copied back to the host (also after a timeout or a memory
//! kill: the supervisor outlives the program), if that
//! ends within [`COPY_BACK_GRACE`] of the exec's deadline: otherwise the VM is killed and
//! the exec ends as killed at the wall-time limit, so no guest (one that wrote hundreds of
//! MiB, or a supervisor that stopped answering) holds a run past its deadline. `reset`
//! replaces the VM with a fresh one; `shutdown` kills QEMU.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentkernel_core::SandboxState;
use agentkernel_core::admission::AdmittedExec;
use agentkernel_core::guest::{
    Abort, ExecFrame, ExecReport, GuestBackend, GuestSandbox, Hello, agent_exit_status,
};
use agentkernel_core::{
    Capabilities, Check, CheckState, Diagnosis, Error, ExecOutcome, ExecRequest, ExecStatus,
    Isolation, Language, LimitKind, LimitSet, Result, Runtime, Sandbox, SandboxSpec, Snapshot,
    StartupClass, ToolHost, admission::Admitted,
};
use async_trait::async_trait;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::image::GuestImage;
use crate::kvm::KvmProbe;
use crate::qemu::share::{self, Manifest};
use crate::qemu::{AgentConn, MachineSpec, QemuVm, qemu_version};

/// Guest RAM when the spec sets no memory limit.
pub const DEFAULT_MEMORY_MIB: u32 = 512;
/// Smallest guest RAM: the kernel, the initramfs (in RAM) and Python need about this much.
pub const MIN_MEMORY_MIB: u32 = 192;
/// How long a boot, a restore or the agent's start may take (software emulation is slow,
/// more so on a loaded machine).
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the supervisor may take to copy files in.
const SUPERVISOR_TIMEOUT: Duration = Duration::from_secs(60);
/// How long past an exec's deadline stopping the program and copying its files back may
/// take: then the VM is killed whatever the guest is doing (files not back by then are
/// lost), so a wall-time limit lands within this of its deadline.
pub const COPY_BACK_GRACE: Duration = Duration::from_secs(5);

/// How the runtime starts VMs.
#[derive(Debug, Clone)]
pub struct MicroVmConfig {
    /// The guest image directory; `None`: the one `scripts/build-microvm-image` published
    /// (`$AGENTKERNEL_MICROVM_IMAGE` overrides).
    pub image: Option<PathBuf>,
    /// Restore VMs from a saved template state (seconds faster) instead of booting each.
    pub snapshots: bool,
    /// Warm VMs kept ready per memory size (restored, agent waiting); all sizes together
    /// never more than the number of CPU cores. 0 disables the pool.
    pub pool_size: usize,
    /// Virtual CPUs per VM.
    pub vcpus: u32,
    /// Which engine starts the VMs.
    pub engine: EngineKind,
}

/// Which engine runs the microvm backend's VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineKind {
    /// `msb` where the KVM probe finds hardware KVM, the build has feature `msb` and its
    /// runtime files are there; `qemu` otherwise.
    #[default]
    Auto,
    /// Always QEMU (with KVM when real, else software emulation).
    Qemu,
    /// Always microsandbox; sandboxes fail with the reason when it cannot run.
    Msb,
}

impl std::str::FromStr for EngineKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<EngineKind> {
        match s {
            "auto" => Ok(EngineKind::Auto),
            "qemu" => Ok(EngineKind::Qemu),
            "msb" => Ok(EngineKind::Msb),
            other => Err(Error::invalid(
                format!("unknown microvm engine {other:?}"),
                "use \"auto\", \"qemu\" or \"msb\"",
            )),
        }
    }
}

impl Default for MicroVmConfig {
    fn default() -> Self {
        MicroVmConfig {
            image: None,
            snapshots: true,
            pool_size: 1,
            vcpus: 1,
            engine: EngineKind::Auto,
        }
    }
}

/// The `microvm` backend: engine `qemu`, or `msb` where [`EngineKind`] selects it.
#[derive(Clone)]
pub struct MicroVmRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    config: MicroVmConfig,
    image: std::result::Result<GuestImage, String>,
    kvm: KvmProbe,
    /// Template state files by memory size (one creation at a time).
    templates: tokio::sync::Mutex<HashMap<u32, PathBuf>>,
    /// Warm VMs by memory size, and how many are being made.
    pool: Mutex<HashMap<u32, (Vec<QemuVm>, usize)>>,
    /// Whether the msb engine runs the sandboxes instead of QEMU.
    msb: MsbState,
}

/// The msb engine, when it runs this runtime's sandboxes, or why it does not.
enum MsbState {
    #[cfg(feature = "msb")]
    Selected(crate::msb::MsbEngine),
    NotSelected(String),
}

impl MsbState {
    fn select(
        engine: EngineKind,
        kvm: &KvmProbe,
        image: &std::result::Result<GuestImage, String>,
    ) -> MsbState {
        if engine == EngineKind::Qemu {
            return MsbState::NotSelected("the configuration asks for the qemu engine".into());
        }
        if engine == EngineKind::Auto && !kvm.is_real() {
            return MsbState::NotSelected(format!("needs hardware KVM, and {}", kvm.reason()));
        }
        if engine == EngineKind::Auto
            && let Err(e) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
        {
            return MsbState::NotSelected(format!(
                "cannot open /dev/kvm read-write ({e}): add this user to the `kvm` group"
            ));
        }
        #[cfg(feature = "msb")]
        {
            let rootfs = image.as_ref().ok().map(|i| i.dir.join("rootfs"));
            match crate::msb::MsbEngine::from_env(rootfs.as_deref()) {
                Ok(engine) => MsbState::Selected(engine),
                Err(why) => MsbState::NotSelected(why),
            }
        }
        #[cfg(not(feature = "msb"))]
        {
            let _ = image;
            MsbState::NotSelected(
                "not built in (feature `msb` is off; build with `--features msb`)".into(),
            )
        }
    }
}

impl MicroVmRuntime {
    /// A runtime with `config`. Never fails: a missing image or QEMU makes `create` answer
    /// [`Error::Unavailable`] with the fix, and `doctor` explain.
    pub fn new(config: MicroVmConfig) -> MicroVmRuntime {
        let image = match &config.image {
            Some(dir) => GuestImage::at(dir),
            None => GuestImage::find(),
        };
        let kvm = KvmProbe::detect();
        let msb = MsbState::select(config.engine, &kvm, &image);
        MicroVmRuntime {
            inner: Arc::new(Inner {
                config,
                image,
                kvm,
                msb,
                templates: tokio::sync::Mutex::new(HashMap::new()),
                pool: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// A sandbox of the qemu engine, whichever engine [`Runtime::create`] would pick.
    /// The spec is admitted as by [`Runtime::create`].
    pub async fn create_sandbox(&self, spec: &SandboxSpec) -> Result<MicroVmSandbox> {
        let admitted = agentkernel_core::admission::admit(self, spec)?;
        self.start_qemu(admitted).await
    }

    async fn start_qemu(&self, spec: Admitted<'_>) -> Result<MicroVmSandbox> {
        let spec = spec.spec();
        let memory_mib = vm_memory_mib(spec)?;
        let mut shares = Vec::new();
        if let Some(host) = &spec.workspace {
            shares.push(Share::new(host, "/workspace", true));
        }
        for mount in &spec.mounts {
            shares.push(Share::new(
                &mount.host,
                &mount.guest.display().to_string(),
                mount.writable,
            ));
        }
        let mut sandbox = MicroVmSandbox {
            guest: GuestSandbox::new(
                SandboxState::Lost("it has not started".into()),
                QemuGuest {
                    inner: self.inner.clone(),
                    spec: spec.clone(),
                    memory_mib,
                    shares,
                    id: String::new(),
                },
            ),
        };
        sandbox.start().await?;
        Ok(sandbox)
    }

    /// Warm VMs ready in the pool (all memory sizes).
    pub fn warm_vms(&self) -> usize {
        let pool = self.inner.pool.lock().unwrap_or_else(|e| e.into_inner());
        pool.values().map(|(ready, _)| ready.len()).sum()
    }
}

/// The VM memory for an admitted `spec`, or why a VM that small cannot boot.
fn vm_memory_mib(spec: &SandboxSpec) -> Result<u32> {
    let memory_mib = spec.limits.memory_bytes.map_or(DEFAULT_MEMORY_MIB, |b| {
        u32::try_from(b >> 20).unwrap_or(u32::MAX)
    });
    if memory_mib < MIN_MEMORY_MIB {
        return Err(Error::invalid(
            format!("a {memory_mib} MiB microVM cannot start"),
            format!(
                "give the microvm backend at least {MIN_MEMORY_MIB} MiB (`.memory_mib({MIN_MEMORY_MIB})`)"
            ),
        ));
    }
    Ok(memory_mib)
}

impl Inner {
    fn image(&self) -> Result<&GuestImage> {
        self.image.as_ref().map_err(|why| Error::Unavailable {
            backend: "microvm",
            reason: why.clone(),
            hint: "run scripts/build-microvm-image (scripts/setup does), then `agentkernel doctor`"
                .into(),
        })
    }

    fn machine(&self, memory_mib: u32) -> Result<MachineSpec> {
        Ok(MachineSpec {
            image: self.image()?.dir.clone(),
            memory_mib,
            vcpus: self.config.vcpus,
            kvm: self.kvm.is_real(),
        })
    }

    /// A VM whose agent waits for its configuration: from the pool, else made now. Asks
    /// for the pool to be refilled.
    async fn take_vm(self: &Arc<Self>, memory_mib: u32) -> Result<QemuVm> {
        let pooled = {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            pool.entry(memory_mib).or_default().0.pop()
        };
        let from_pool = pooled.is_some();
        let vm = match pooled {
            Some(mut vm) => {
                if vm.running() {
                    vm
                } else {
                    self.warm_vm(memory_mib, false).await?
                }
            }
            None => self.warm_vm(memory_mib, false).await?,
        };
        tracing::debug!(from_pool, "took a warm microVM");
        self.refill(memory_mib);
        Ok(vm)
    }

    /// Starts background work until the pool for `memory_mib` holds `pool_size` VMs,
    /// keeping all memory sizes together at no more warm VMs than CPU cores.
    fn refill(self: &Arc<Self>, memory_mib: u32) {
        let wanted = self.config.pool_size;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let missing = {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            let total: usize = pool.values().map(|(r, m)| r.len() + m).sum();
            let (ready, making) = pool.entry(memory_mib).or_default();
            let missing = wanted
                .saturating_sub(ready.len() + *making)
                .min(cores.saturating_sub(total));
            *making += missing;
            missing
        };
        for _ in 0..missing {
            let inner = self.clone();
            tokio::spawn(async move {
                let made = inner.warm_vm(memory_mib, true).await;
                let mut pool = inner.pool.lock().unwrap_or_else(|e| e.into_inner());
                let (ready, making) = pool.entry(memory_mib).or_default();
                *making -= 1;
                match made {
                    Ok(vm) => ready.push(vm),
                    Err(e) => tracing::warn!("could not make a warm microVM: {e}"),
                }
            });
        }
    }

    /// Makes a VM whose agent waits for its configuration: restored from the template
    /// (whose agent waits already), or booted. `warm`: also run a throw-away program, so
    /// the first exec does not pay for the emulator's cold translation cache.
    async fn warm_vm(&self, memory_mib: u32, warm: bool) -> Result<QemuVm> {
        let machine = self.machine(memory_mib)?;
        let deadline = Instant::now() + START_TIMEOUT;
        let mut restored = None;
        if self.config.snapshots {
            let state = self.template(memory_mib).await?;
            match QemuVm::restore(&machine, &state, deadline).await {
                Ok(vm) => restored = Some(vm),
                Err(e) => {
                    // A damaged or stale state: forget it, boot this time.
                    tracing::warn!(
                        "restoring {} failed ({e}); booting instead",
                        state.display()
                    );
                    let _ = std::fs::remove_file(&state);
                    self.templates.lock().await.remove(&memory_mib);
                }
            }
        }
        let mut vm = match restored {
            Some(vm) => vm,
            None => booted_and_prepared(&machine, deadline).await?,
        };
        if warm {
            vm.sys
                .call(&json!({"type": "warm"}), &[], "warmed", deadline)
                .await?;
        }
        Ok(vm)
    }

    /// The template state for `memory_mib`: cached on disk, else made by booting a VM and
    /// saving it once its agent waits for a configuration.
    async fn template(&self, memory_mib: u32) -> Result<PathBuf> {
        let mut templates = self.templates.lock().await;
        if let Some(path) = templates.get(&memory_mib)
            && path.exists()
        {
            return Ok(path.clone());
        }
        let machine = self.machine(memory_mib)?;
        let image = self.image()?;
        let mut key = Sha256::new();
        key.update(&image.guest_sha);
        key.update(qemu_version().unwrap_or_default());
        key.update(format!("{memory_mib}/{}/{}", machine.vcpus, machine.kvm));
        let key = format!("{:x}", key.finalize());
        // Beside the image: pruning an old image prunes its states.
        let dir = image.dir.clone();
        let path = dir.join(format!("state-{}.bin", &key[..16]));
        if !path.exists() {
            tracing::info!(
                memory_mib,
                "booting a microVM to save its state (once per image)"
            );
            let deadline = Instant::now() + START_TIMEOUT;
            let mut vm = booted_and_prepared(&machine, deadline).await?;
            let partial = dir.join(format!(
                ".state-{}.{}",
                &key[..16],
                uuid::Uuid::new_v4().simple()
            ));
            let saved = vm.save(&partial, deadline).await;
            vm.kill().await;
            saved
                .and_then(|()| {
                    std::fs::rename(&partial, &path)
                        .map_err(|e| Error::io("storing the VM state", e))
                })
                .inspect_err(|_| {
                    let _ = std::fs::remove_file(&partial);
                })?;
        }
        templates.insert(memory_mib, path.clone());
        Ok(path)
    }
}

/// Boots a VM and has its supervisor start an agent that waits for its configuration.
async fn booted_and_prepared(machine: &MachineSpec, deadline: Instant) -> Result<QemuVm> {
    let mut vm = QemuVm::boot(machine, deadline).await?;
    vm.sys
        .call(&json!({"type": "prepare"}), &[], "prepared", deadline)
        .await?;
    Ok(vm)
}

#[async_trait]
impl Runtime for MicroVmRuntime {
    fn name(&self) -> &'static str {
        "microvm"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            isolation: Isolation::MicroVm,
            language: Language::CPython,
            workspace: true,
            subprocess: true,
            reset: true,
            startup: StartupClass::Seconds,
            limits: LimitSet::ALL,
            // Everything not stated here is denied (Capabilities' default is deny-all).
            ..Capabilities::default()
        }
    }

    async fn create_admitted(&self, spec: Admitted<'_>) -> Result<Box<dyn Sandbox>> {
        match &self.inner.msb {
            #[cfg(feature = "msb")]
            MsbState::Selected(engine) => {
                let memory_mib = vm_memory_mib(&spec)?;
                let vcpus = u8::try_from(self.inner.config.vcpus).unwrap_or(u8::MAX);
                Ok(Box::new(
                    crate::msb::MsbSandbox::start(engine.clone(), spec.spec(), memory_mib, vcpus)
                        .await?,
                ))
            }
            MsbState::NotSelected(why) if self.inner.config.engine == EngineKind::Msb => {
                Err(Error::Unavailable {
                    backend: "microvm",
                    reason: format!("the msb engine was asked for and cannot run: {why}"),
                    hint: "see `agentkernel doctor`; or set [microvm] engine = \"auto\"".into(),
                })
            }
            MsbState::NotSelected(_) => Ok(Box::new(self.start_qemu(spec).await?)),
        }
    }

    async fn diagnose(&self) -> Diagnosis {
        let inner = &self.inner;
        let mut checks = Vec::new();
        match &inner.msb {
            #[cfg(feature = "msb")]
            MsbState::Selected(engine) => {
                checks.push(Check {
                    name: "engine".into(),
                    state: CheckState::Active,
                    detail: format!(
                        "msb (microsandbox {} on libkrun) with {}: {}, root filesystem {}",
                        crate::msb::RUNTIME_VERSION,
                        inner.kvm.reason(),
                        engine.msb_path().display(),
                        engine.rootfs().display()
                    ),
                });
            }
            MsbState::NotSelected(why) => {
                checks.push(engine_check(&inner.kvm));
                checks.push(Check {
                    name: "msb engine".into(),
                    state: if inner.config.engine == EngineKind::Msb {
                        CheckState::Failed
                    } else {
                        CheckState::Inactive
                    },
                    detail: if inner.config.engine == EngineKind::Msb {
                        format!("{why}; the configuration asks for it, so sandboxes fail")
                    } else {
                        format!("{why}; the qemu engine runs instead")
                    },
                });
                checks.push(match qemu_version() {
                    Ok(v) => Check {
                        name: "qemu".into(),
                        state: CheckState::Active,
                        detail: v,
                    },
                    Err(e) => Check {
                        name: "qemu".into(),
                        state: CheckState::Failed,
                        detail: e,
                    },
                });
                checks.push(match &inner.image {
                    Ok(image) => Check {
                        name: "image".into(),
                        state: CheckState::Active,
                        detail: image.dir.display().to_string(),
                    },
                    Err(e) => Check {
                        name: "image".into(),
                        state: CheckState::Failed,
                        detail: e.clone(),
                    },
                });
            }
        }
        let mut reason = checks
            .iter()
            .find(|c| c.state == CheckState::Failed)
            .map(|c| format!("{}: {}", c.name, c.detail));
        if reason.is_none() {
            // A real sandbox: boot (or restore), run a program, and say how long it took.
            let started = Instant::now();
            let probe = async {
                let mut sb = self.create(&SandboxSpec::default()).await?;
                let out = sb
                    .exec(
                        ExecRequest::new("print(6 * 7)"),
                        Arc::new(agentkernel_core::NoTools),
                    )
                    .await?;
                sb.shutdown().await?;
                Ok::<_, Error>(out.stdout.text())
            };
            match probe.await {
                Ok(text) if text == "42\n" => checks.push(Check {
                    name: "probe sandbox".into(),
                    state: CheckState::Active,
                    detail: format!(
                        "a VM started and ran print(6*7) in {:.1} s",
                        started.elapsed().as_secs_f64()
                    ),
                }),
                Ok(text) => reason = Some(format!("the probe sandbox printed {text:?}")),
                Err(e) => reason = Some(format!("the probe sandbox failed: {e}")),
            }
        }
        Diagnosis {
            available: reason.is_none(),
            reason,
            checks,
        }
    }
}

/// The `engine` line of `doctor`: which engine runs, and why.
pub fn engine_check(kvm: &KvmProbe) -> Check {
    if kvm.is_real() {
        Check {
            name: "engine".into(),
            state: CheckState::Active,
            detail: format!("qemu with {}", kvm.reason()),
        }
    } else {
        Check {
            name: "engine".into(),
            state: CheckState::Partial,
            detail: format!(
                "qemu under software emulation: {}. The VM boundary is the same; programs run several times slower than under KVM",
                kvm.reason()
            ),
        }
    }
}

/// A host directory copied into the VM (and, when writable, back after each exec).
struct Share {
    host: PathBuf,
    guest: String,
    writable: bool,
    /// The host directory as of the last copy in either direction.
    manifest: Manifest,
}

impl Share {
    fn new(host: &Path, guest: &str, writable: bool) -> Share {
        Share {
            host: host.to_path_buf(),
            guest: guest.to_owned(),
            writable,
            manifest: Manifest::new(),
        }
    }

    /// Copies what changed on the host since the last copy into the VM, streamed, all of
    /// it (the supervisor's answer included) by `deadline`. The host directory's files may
    /// add up to `cap` bytes of apparent size (holes included): more is refused before
    /// anything is sent ([`share::too_big`], the VM stays usable).
    async fn push(&mut self, vm: &mut QemuVm, cap: u64, deadline: Instant) -> Result<()> {
        let now = share::scan(&self.host);
        let (changed, deleted) = share::diff(&self.manifest, &now);
        if changed.is_empty() && deleted.is_empty() && !self.manifest.is_empty() {
            return Ok(());
        }
        let total = share::apparent_total(&now);
        if total > cap {
            return Err(share::too_big(&self.host, total, cap));
        }
        let others = share::apparent_total_except(&now, &changed);
        let msg = json!({
            "type": "put", "dir": self.guest, "writable": self.writable, "deleted": deleted,
        });
        let transfer = async {
            vm.sys.send(&msg, &[], deadline).await?;
            share::send_bundle(&self.host, &changed, vm.sys.stream(), others, cap)
                .await
                .map_err(|e| Error::SandboxLost {
                    reason: format!("copying {} into the VM stopped: {e}", self.host.display()),
                })?;
            vm.sys.reply("put_done", deadline).await
        };
        match tokio::time::timeout_at(deadline.into(), transfer).await {
            Ok(Ok(_)) => {}
            Ok(Err(Error::SandboxLost { reason })) => {
                return Err(Error::SandboxLost {
                    reason: format!(
                        "copying {} into the VM failed: {reason}; if it does not fit in the VM's memory, raise the memory limit",
                        self.host.display(),
                    ),
                });
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(Error::SandboxLost {
                    reason: format!(
                        "copying {} into the VM did not finish in time",
                        self.host.display()
                    ),
                });
            }
        }
        self.manifest = now;
        Ok(())
    }

    /// Copies what the program changed in the VM back to the host, streamed, if the guest
    /// sends it all by `deadline` ([`Error::LimitExceeded`] otherwise; files already written
    /// stay). The files may add up to the VM's memory size in apparent size.
    async fn collect(
        &mut self,
        vm: &mut QemuVm,
        spec: &SandboxSpec,
        memory_mib: u32,
        deadline: Instant,
    ) -> Result<()> {
        let transfer = async {
            let reply = vm
                .sys
                .call(
                    &json!({"type": "collect", "dir": self.guest}),
                    &[],
                    "changes",
                    deadline,
                )
                .await?;
            let deleted: Vec<String> = reply["deleted"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            share::apply_stream(
                &self.host,
                &deleted,
                vm.sys.stream(),
                spec.limits.file_size_bytes,
                u64::from(memory_mib) << 20,
            )
            .await
        };
        // Every step under one deadline. A step that gave up at the deadline is late too,
        // whichever timer fired first.
        match tokio::time::timeout_at(deadline.into(), transfer).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if Instant::now() < deadline => return Err(e),
            _ => return Err(copy_back_late(&self.host)),
        }
        self.manifest = share::scan(&self.host);
        Ok(())
    }
}

/// One sandbox: a VM and its agent, run by the exec state machine every guest-protocol
/// backend shares ([`GuestSandbox`]) with this engine's hooks (`QemuGuest`).
pub struct MicroVmSandbox {
    guest: GuestSandbox<QemuGuest>,
}

/// What a qemu sandbox keeps besides its VM, and its exec hooks.
struct QemuGuest {
    inner: Arc<Inner>,
    spec: SandboxSpec,
    memory_mib: u32,
    shares: Vec<Share>,
    id: String,
}

struct Live {
    vm: QemuVm,
    conn: AgentConn,
    hello: Hello,
    /// The agent is stopped (SIGSTOP) and the program's other processes are gone: so since
    /// the last exec's copy back, until the next exec's copy in is done.
    frozen: bool,
}

impl MicroVmSandbox {
    /// What the guest agent reported at start.
    pub fn hello(&self) -> Option<&Hello> {
        self.guest.state.as_live().map(|l| &l.hello)
    }

    /// Takes a warm VM, copies the shared directories in, and starts the agent.
    async fn start(&mut self) -> Result<()> {
        let g = &mut self.guest.backend;
        let begun = Instant::now();
        let mut vm = g.inner.take_vm(g.memory_mib).await?;
        g.id = vm.name.clone();
        let took_vm = begun.elapsed();
        let cap = u64::from(g.memory_mib) << 20;
        for share in &mut g.shares {
            share.manifest = Manifest::new();
            // A writable share (the workspace) is copied in by the first exec, inside that
            // run's deadline; read-only ones (e.g. /tools) now.
            if !share.writable {
                share
                    .push(&mut vm, cap, Instant::now() + SUPERVISOR_TIMEOUT)
                    .await?;
            }
        }
        let pushed = begun.elapsed();
        let limits = &g.spec.limits;
        let config = json!({
            "type": "start",
            "entropy": host_entropy()?,
            "env": g.spec.guest_env(),
            "cwd": "/workspace",
            "limits": {
                "processes": limits.processes,
                "file_size_bytes": limits.file_size_bytes,
                "tmp_bytes": limits.tmp_bytes,
                "cpu_seconds": limits.cpu_time.map(|t| t.as_secs().max(1)),
            },
        });
        let deadline = Instant::now() + START_TIMEOUT;
        vm.sys.call(&config, &[], "started", deadline).await?;
        let configured = begun.elapsed();
        let (conn, hello) = vm.agent(deadline).await?;
        tracing::debug!(
            vm = %g.id,
            ?took_vm,
            ?pushed,
            ?configured,
            hello = ?begun.elapsed(),
            "microVM sandbox started"
        );
        self.guest.state = SandboxState::Live(Live {
            vm,
            conn,
            hello,
            frozen: false,
        });
        Ok(())
    }
}

impl QemuGuest {
    /// Stops the program's processes (the agent stays, stopped) and copies the writable
    /// shares back, all by `deadline`; on failure, why the VM must end and the error.
    async fn freeze_and_collect(
        &mut self,
        live: &mut Live,
        deadline: Instant,
    ) -> std::result::Result<(), (String, Error)> {
        match live
            .vm
            .sys
            .call(&json!({"type": "freeze"}), &[], "frozen", deadline)
            .await
        {
            Ok(_) => live.frozen = true,
            Err(e) => {
                let reason = format!("stopping the program's processes failed: {e}");
                let late = Instant::now() >= deadline;
                return Err((
                    reason,
                    if late {
                        copy_back_late(
                            &self
                                .shares
                                .first()
                                .map_or_else(PathBuf::new, |s| s.host.clone()),
                        )
                    } else {
                        e
                    },
                ));
            }
        }
        self.collect_all(live, deadline).await
    }

    /// Copies the writable shares back by `deadline`; on failure, why the VM must end and
    /// the error.
    async fn collect_all(
        &mut self,
        live: &mut Live,
        deadline: Instant,
    ) -> std::result::Result<(), (String, Error)> {
        for share in self.shares.iter_mut().filter(|s| s.writable) {
            if let Err(e) = share
                .collect(&mut live.vm, &self.spec, self.memory_mib, deadline)
                .await
            {
                return Err((format!("copying files back failed: {e}"), e));
            }
        }
        Ok(())
    }

    /// Stops every process of the program in the guest (the agent's too) by `deadline`, then
    /// copies the writable shares back: what a run that will not finish leaves is kept.
    async fn stop_and_collect(&mut self, live: &mut Live, deadline: Instant) {
        let msg = json!({"type": "stop"});
        let stop = live.vm.sys.call(&msg, &[], "stopped", deadline);
        // Sending has no deadline of its own: bound the whole call.
        let stopped = tokio::time::timeout_at(deadline.into(), stop).await;
        if matches!(stopped, Ok(Ok(_))) {
            let _ = self.collect_all(live, deadline).await;
        }
    }
}

/// When an exec ends at the latest once the program stopped: the copy back gets
/// [`COPY_BACK_GRACE`] past the deadline (or past now, when that is later).
fn copy_back_by(frame: &ExecFrame) -> Instant {
    frame.deadline.max(Instant::now()) + COPY_BACK_GRACE
}

#[async_trait]
impl GuestBackend for QemuGuest {
    type Live = Live;

    fn name(&self) -> &'static str {
        "microvm"
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn spec(&self) -> &SandboxSpec {
        &self.spec
    }

    // The default lock: one program at a time per workspace, from the copy in to the copy
    // back.

    async fn prepare(
        &mut self,
        live: &mut Live,
        frame: &ExecFrame,
        tools: Arc<dyn ToolHost>,
    ) -> std::result::Result<Arc<dyn ToolHost>, Abort> {
        // Copying files in counts against the exec's time too (a process the program left
        // running could slow the guest down): it may end at most COPY_BACK_GRACE late.
        let push_by = frame.deadline + COPY_BACK_GRACE;
        let cap = u64::from(self.memory_mib) << 20;
        for share in self.shares.iter_mut().filter(|s| s.writable) {
            // Bound the whole exchange (the push bounds each step too).
            match tokio::time::timeout_at(push_by.into(), share.push(&mut live.vm, cap, push_by))
                .await
            {
                Ok(Ok(())) => {}
                // Refused before anything was sent: the VM is as it was.
                Ok(Err(e @ Error::LimitExceeded { .. })) => return Err(Abort::Refuse(e)),
                Ok(Err(e)) if Instant::now() < push_by => {
                    return Err(Abort::End {
                        reason: format!("copying files in failed: {e}"),
                        then: Err(e),
                    });
                }
                _ => {
                    return Err(Abort::End {
                        reason: format!(
                            "copying files in did not end within {COPY_BACK_GRACE:?} of the {:?} timeout",
                            frame.timeout
                        ),
                        then: Ok(ExecStatus::Killed {
                            limit: LimitKind::WallTime,
                        }),
                    });
                }
            }
        }
        if live.frozen {
            // The agent waits for this exec: let it run again.
            let thawed = live
                .vm
                .sys
                .call(&json!({"type": "thaw"}), &[], "thawed", push_by)
                .await;
            if let Err(e) = thawed {
                return Err(Abort::End {
                    reason: format!("resuming the guest agent failed: {e}"),
                    then: Err(e),
                });
            }
            live.frozen = false;
        }
        Ok(tools)
    }

    async fn run(
        &mut self,
        live: &mut Live,
        req: &ExecRequest,
        tools: Arc<dyn ToolHost>,
        frame: &ExecFrame,
    ) -> Result<ExecReport> {
        let Live { vm, conn, .. } = live;
        let sys = &mut vm.sys;
        let deadline = frame.deadline;
        // The agent's ports do not close when it dies: the supervisor says so instead.
        let gone = async {
            while sys.agent_exit.is_none() {
                if sys.recv(deadline + START_TIMEOUT).await.is_err() {
                    break;
                }
            }
        };
        conn.exec_watching(req, tools, frame.output_cap, deadline, gone)
            .await
    }

    async fn finished(
        &mut self,
        live: &mut Live,
        status: ExecStatus,
        frame: &ExecFrame,
    ) -> std::result::Result<ExecStatus, Abort> {
        // Before anything is copied back, the program's processes stop: every process of
        // the sandbox user but the agent is killed and the agent stopped (its threads too),
        // so nothing changes the guest's workspace while the supervisor reads it. Whatever
        // the guest does from now on (a huge copy back, a supervisor that does not answer),
        // the exec ends by `copy_back_by`.
        match self.freeze_and_collect(live, copy_back_by(frame)).await {
            Ok(()) => Ok(status),
            Err((reason, e)) => Err(Abort::End {
                reason,
                then: match e {
                    // The copy back is part of the exec's time.
                    Error::LimitExceeded {
                        limit: LimitKind::WallTime,
                        ..
                    } => Ok(ExecStatus::Killed {
                        limit: LimitKind::WallTime,
                    }),
                    e => Err(e),
                },
            }),
        }
    }

    async fn timed_out(&mut self, live: &mut Live, frame: &ExecFrame) {
        // Stop the program, keep its files; the VM is ended next.
        self.stop_and_collect(live, copy_back_by(frame)).await;
    }

    async fn guest_gone(&mut self, mut live: Live, frame: &ExecFrame) -> ExecStatus {
        let exit = live.vm.sys.agent_exit.take();
        let code = exit
            .as_ref()
            .and_then(|e| e["status"].as_i64())
            .map(shell_code);
        let oom = exit.as_ref().is_some_and(|e| e["oom"] == true);
        let status = match exit {
            Some(_) => agent_exit_status(code, oom, self.spec.limits.cpu_time.is_some(), None),
            None => ExecStatus::Crashed {
                reason: format!(
                    "the VM stopped; its console ended with: {}",
                    live.vm.console_tail()
                ),
            },
        };
        if exit.is_some() {
            // What the program started may still run: stop it before the copy back.
            self.stop_and_collect(&mut live, copy_back_by(frame)).await;
        }
        live.vm.kill().await;
        status
    }

    async fn end(&mut self, live: Live) {
        live.vm.kill().await;
    }
}

/// What both engines answer to a snapshot (the capabilities say none).
pub(crate) fn no_snapshots() -> Error {
    Error::unsupported(
        "snapshots of a microVM sandbox",
        "microvm",
        "keep state in /workspace (it persists), or use the process or monty backend",
    )
}

/// The copy back of `host` did not finish in the time left.
fn copy_back_late(host: &Path) -> Error {
    Error::LimitExceeded {
        limit: LimitKind::WallTime,
        detail: format!(
            "copying the files the program changed back to {} did not finish within {COPY_BACK_GRACE:?} of the time limit, so the VM was killed and those files are lost; write less to the workspace, or raise the time limit",
            host.display()
        ),
    }
}

/// 32 fresh random bytes from the host, hex-encoded, for the guest's kernel RNG (VMs restored
/// from one state would otherwise share its random state).
fn host_entropy() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| Error::io("reading /dev/urandom", e))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// An exit status as Python's `os.waitstatus_to_exitcode` reports it (negative for a
/// signal), as a shell would (128 + signal).
fn shell_code(status: i64) -> i32 {
    if status < 0 {
        128 - status as i32
    } else {
        status as i32
    }
}

#[async_trait]
impl Sandbox for MicroVmSandbox {
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
        self.start().await
    }

    async fn snapshot(&mut self) -> Result<Snapshot> {
        Err(crate::runtime::no_snapshots())
    }

    async fn shutdown(mut self: Box<Self>) -> Result<()> {
        self.guest.lose("it was shut down").await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_read_like_a_shell() {
        assert_eq!(shell_code(3), 3);
        assert_eq!(shell_code(-9), 137);
    }

    #[test]
    fn vms_too_small_to_boot_are_refused() {
        let mut spec = SandboxSpec::default();
        spec.limits.memory_bytes = Some(64 << 20);
        assert!(matches!(
            vm_memory_mib(&spec),
            Err(Error::InvalidRequest { .. })
        ));
        spec.limits.memory_bytes = None;
        assert_eq!(vm_memory_mib(&spec).unwrap(), DEFAULT_MEMORY_MIB);
    }

    #[tokio::test]
    async fn an_msb_engine_that_cannot_run_is_refused_and_doctor_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let missing_image = dir.path().join("no-image");
        let rt = MicroVmRuntime::new(MicroVmConfig {
            image: Some(missing_image),
            engine: EngineKind::Msb,
            ..MicroVmConfig::default()
        });
        #[cfg_attr(
            not(feature = "msb"),
            allow(
                irrefutable_let_patterns,
                reason = "only msb builds can select the engine"
            )
        )]
        if let MsbState::NotSelected(why) = &rt.inner.msb {
            // Without the feature, or without the engine's files (no image here, so no root
            // filesystem unless AGENTKERNEL_MSB_ROOTFS names one).
            let e = rt.create(&SandboxSpec::default()).await.err().unwrap();
            assert!(
                matches!(&e, Error::Unavailable { reason, .. } if reason.contains(why.as_str())),
                "{e}"
            );
            let diagnosis = rt.diagnose().await;
            assert!(!diagnosis.available);
            let line = diagnosis
                .checks
                .iter()
                .find(|c| c.name == "msb engine")
                .expect("an msb engine line");
            assert_eq!(line.state, CheckState::Failed, "{line:?}");
        }
        // Asking for qemu never selects msb.
        let rt = MicroVmRuntime::new(MicroVmConfig {
            engine: EngineKind::Qemu,
            ..MicroVmConfig::default()
        });
        assert!(
            matches!(&rt.inner.msb, MsbState::NotSelected(why) if why.contains("qemu")),
            "msb was selected although qemu was asked for"
        );
        assert!("kvm".parse::<EngineKind>().is_err());
        assert_eq!("msb".parse::<EngineKind>().unwrap(), EngineKind::Msb);
    }
}
