//! The `msb` engine: a microVM per run from the `microsandbox` crate (0.7.11), which boots
//! libkrun guests through its `msb` runtime executable. It needs real KVM (see [`crate::kvm`]):
//! under PVM or without `/dev/kvm` the `qemu` engine runs instead.
//!
//! Nothing is downloaded: the runtime pair comes from the PyPI wheel `microsandbox==0.7.11`
//! (it contains `msb` and `libkrunfw.so.5.6.1`), and the guest's root filesystem is a local
//! directory built from Debian packages, bound as the guest's `/` (no image pull). The
//! `microsandbox` crate reads `MSB_PATH`, `MSB_LIBKRUNFW_PATH` and `MSB_HOME` from the
//! environment itself; [`MsbEngine::from_env`] checks them first so a missing file is reported
//! with what to do, not as a failed boot.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agentkernel_core::{Error, LimitKind, Result};
use microsandbox::sandbox::DestroyOptions;
use microsandbox::{Backend, LocalBackend, MicrosandboxError, Sandbox};

/// The `msb` runtime executable (from the wheel `microsandbox==0.7.11`).
pub const MSB_PATH_ENV: &str = "MSB_PATH";
/// The libkrun firmware library `libkrunfw.so.5.6.1` (from the same wheel).
pub const MSB_LIBKRUNFW_ENV: &str = "MSB_LIBKRUNFW_PATH";
/// microsandbox's state directory (its database, sandbox directories, logs).
pub const MSB_HOME_ENV: &str = "MSB_HOME";
/// The guest root filesystem: a directory with `python3` in `usr/bin`.
pub const ROOTFS_ENV: &str = "AGENTKERNEL_MSB_ROOTFS";

/// The `msb` version this build's `microsandbox` crate speaks to (it is pinned with `=`).
const RUNTIME_VERSION: &str = "0.7.11";
/// How long a sandbox may take to boot before the run is abandoned.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a sandbox gets to shut down gracefully before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Beyond the program's timeout (which the guest agent enforces with SIGKILL), how long the
/// host waits for the guest agent's answer before it counts the sandbox as lost.
const ANSWER_GRACE: Duration = Duration::from_secs(10);

const WHEEL_HINT: &str = "install the PyPI wheel microsandbox==0.7.11 (e.g. `pip download \
     microsandbox==0.7.11 --no-deps` and unzip it), then set MSB_PATH to its `msb` and \
     MSB_LIBKRUNFW_PATH to its `libkrunfw.so.5.6.1`";

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

impl MsbEngine {
    /// The engine described by `MSB_PATH`, `MSB_LIBKRUNFW_PATH`, `MSB_HOME` and
    /// `AGENTKERNEL_MSB_ROOTFS`. The error says which is missing or wrong and how to fix it.
    /// It also reads the version embedded in `msb` (nothing is run), which must be
    /// 0.7.11, and asks microsandbox to resolve its runtime pair the way a launch does (that
    /// checks presence only: a wrong `libkrunfw` shows only when a sandbox starts).
    pub fn from_env() -> std::result::Result<MsbEngine, String> {
        let msb = env_path(MSB_PATH_ENV)
            .ok_or_else(|| env_problem(MSB_PATH_ENV, "is not set", WHEEL_HINT))?;
        if !is_executable(&msb) {
            return Err(env_problem(
                MSB_PATH_ENV,
                &format!("({}) is not an executable file", msb.display()),
                &format!("{WHEEL_HINT} (an unzip that drops modes needs `chmod +x msb`)"),
            ));
        }
        let libkrunfw = env_path(MSB_LIBKRUNFW_ENV)
            .ok_or_else(|| env_problem(MSB_LIBKRUNFW_ENV, "is not set", WHEEL_HINT))?;
        if !libkrunfw.is_file() {
            return Err(env_problem(
                MSB_LIBKRUNFW_ENV,
                &format!("({}) is not a file", libkrunfw.display()),
                WHEEL_HINT,
            ));
        }
        let home = env_path(MSB_HOME_ENV).ok_or_else(|| {
            env_problem(
                MSB_HOME_ENV,
                "is not set",
                "set it to a directory for microsandbox's state (created if missing; a short \
                 path, since sandbox sockets live under it)",
            )
        })?;
        if home.exists() && !home.is_dir() {
            return Err(env_problem(
                MSB_HOME_ENV,
                &format!("({}) is not a directory", home.display()),
                "point it at a directory (created if missing)",
            ));
        }
        let rootfs = env_path(ROOTFS_ENV).ok_or_else(|| {
            env_problem(
                ROOTFS_ENV,
                "is not set",
                "set it to a root filesystem directory with python3 (e.g. one unpacked from \
                 Debian packages); it is bound as the guest's / and nothing is pulled",
            )
        })?;
        if !rootfs.join("usr/bin/python3").exists() {
            return Err(env_problem(
                ROOTFS_ENV,
                &format!("({}) has no usr/bin/python3", rootfs.display()),
                "point it at a root filesystem directory with python3 installed",
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

    /// Runs `python3 -c code` in a new sandbox of `memory_mib` MiB (one vCPU, no network) and
    /// returns its (stdout, stderr, exit code); the sandbox is stopped and removed afterwards.
    /// The root filesystem directory is bound writable, as microsandbox binds it: what a
    /// program writes there stays, so concurrent runs share it.
    ///
    /// Errors: [`Error::Unavailable`] when no sandbox could be started (runtime files, KVM,
    /// root filesystem), [`Error::LimitExceeded`] ([`LimitKind::WallTime`]) when the program
    /// ran longer than `timeout` (its output is lost), [`Error::SandboxLost`] when the sandbox
    /// stopped answering or died during the run.
    pub async fn run_python(
        &self,
        code: &str,
        memory_mib: u32,
        timeout: Duration,
    ) -> Result<(String, String, i32)> {
        let name = format!(
            "agentkernel-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        microsandbox::with_backend(
            self.backend.clone(),
            self.run_in(&name, code, memory_mib, timeout),
        )
        .await
    }

    async fn run_in(
        &self,
        name: &str,
        code: &str,
        memory_mib: u32,
        timeout: Duration,
    ) -> Result<(String, String, i32)> {
        let lifetime = BOOT_TIMEOUT + timeout + ANSWER_GRACE + STOP_TIMEOUT;
        let rootfs = self.rootfs.clone();
        let create = Sandbox::builder(name)
            .image_with(|image| image.bind(rootfs))
            .memory(memory_mib)
            .cpus(1)
            .disable_network()
            .ephemeral(true)
            // A backstop: the runtime ends the sandbox even if this process vanishes.
            .max_duration(lifetime.as_secs())
            .create();
        let sandbox = match tokio::time::timeout(BOOT_TIMEOUT, create).await {
            Ok(Ok(sandbox)) => sandbox,
            Ok(Err(e)) => return Err(self.start_failed(&e)),
            Err(_) => {
                // The create future is gone; a half-started sandbox may remain.
                if let Ok(handle) = Sandbox::get(name).await {
                    let force = DestroyOptions {
                        force: true,
                        timeout: STOP_TIMEOUT,
                    };
                    if let Err(e) = handle.destroy_with(force).await {
                        tracing::warn!(sandbox = name, error = %e, "msb: could not remove a sandbox that did not boot");
                    }
                }
                return Err(Error::Unavailable {
                    backend: "microvm",
                    reason: format!("the msb engine's sandbox did not boot in {BOOT_TIMEOUT:?}"),
                    hint: start_hint(),
                });
            }
        };

        let exec = sandbox.exec_with("python3", |e| e.args(["-c", code]).timeout(timeout));
        let result = match tokio::time::timeout(timeout + ANSWER_GRACE, exec).await {
            Ok(Ok(out)) => Ok((
                String::from_utf8_lossy(out.stdout_bytes()).into_owned(),
                String::from_utf8_lossy(out.stderr_bytes()).into_owned(),
                out.status().code,
            )),
            Ok(Err(MicrosandboxError::ExecTimeout(after))) => Err(Error::LimitExceeded {
                limit: LimitKind::WallTime,
                detail: format!("python3 ran longer than {after:?} and was killed"),
            }),
            Ok(Err(MicrosandboxError::ExecFailed(failed))) => Err(Error::Unavailable {
                backend: "microvm",
                reason: format!("the msb guest could not start python3: {}", failed.message),
                hint: format!(
                    "{ROOTFS_ENV} ({}) must hold a working python3 for the guest",
                    self.rootfs.display()
                ),
            }),
            Ok(Err(e)) => Err(Error::SandboxLost {
                reason: format!("the msb sandbox failed during the run: {e}"),
            }),
            Err(_) => Err(Error::SandboxLost {
                reason: format!(
                    "the msb guest did not answer within {:?}",
                    timeout + ANSWER_GRACE
                ),
            }),
        };

        // Stop and remove it; a graceful stop first, then force.
        let graceful = DestroyOptions {
            force: false,
            timeout: STOP_TIMEOUT,
        };
        if let Err(e) = sandbox.destroy_with(graceful).await {
            tracing::debug!(sandbox = name, error = %e, "msb: graceful stop failed, killing");
            let force = DestroyOptions {
                force: true,
                timeout: STOP_TIMEOUT,
            };
            if let Err(e) = sandbox.destroy_with(force).await {
                tracing::warn!(sandbox = name, error = %e, "msb: could not remove the sandbox");
            }
        }
        result
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
         under MSB_HOME; the qemu engine runs without it",
        kvm.reason()
    )
}
