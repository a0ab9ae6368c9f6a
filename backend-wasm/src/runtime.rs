//! The wasm [`Runtime`]: capabilities, sandbox creation, and `doctor` checks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use agentkernel_core::{
    Capabilities, Check, CheckState, Diagnosis, Error, ExecRequest, Isolation, Language, LimitKind,
    LimitSet, NoTools, Result, Runtime, Sandbox, SandboxSpec, StartupClass, admission::Admitted,
};
use async_trait::async_trait;

use crate::artifact;
use crate::engine::{self, Prepared};
use crate::sandbox::WasmSandbox;

/// CPython compiled to WASI, run by wasmtime.
#[derive(Debug, Clone)]
pub struct WasmRuntime {
    guest: PathBuf,
}

impl Default for WasmRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl WasmRuntime {
    /// Uses the guest component [`artifact::guest_path`] names (built by
    /// `scripts/build-wasm-guest`). Never fails: a missing guest is reported by `create`
    /// and `diagnose` as [`Error::Unavailable`] with the command that builds it.
    pub fn new() -> Self {
        WasmRuntime {
            guest: artifact::guest_path(),
        }
    }

    /// Uses the guest component at `path`.
    pub fn with_guest(path: impl Into<PathBuf>) -> Self {
        WasmRuntime { guest: path.into() }
    }

    /// The guest component this runtime runs.
    pub fn guest(&self) -> &Path {
        &self.guest
    }

    /// The compiled and linked guest, shared by every runtime of this process that uses the
    /// same file. The first call compiles it (or loads the cached native code).
    async fn prepared(&self) -> Result<Arc<Prepared>> {
        // One preparation at a time: concurrent first sandboxes wait for one compile
        // instead of each compiling the guest.
        static PREPARED: tokio::sync::Mutex<Option<HashMap<PathBuf, Arc<Prepared>>>> =
            tokio::sync::Mutex::const_new(None);
        let mut cache = PREPARED.lock().await;
        let cache = cache.get_or_insert_default();
        if let Some(p) = cache.get(&self.guest) {
            return Ok(p.clone());
        }
        if !self.guest.is_file() {
            return Err(engine::missing_guest(&self.guest, "no such file"));
        }
        let path = self.guest.clone();
        let prepared = tokio::task::spawn_blocking(move || engine::prepare(&path))
            .await
            .map_err(engine::internal)??;
        cache.insert(self.guest.clone(), prepared.clone());
        Ok(prepared)
    }
}

#[async_trait]
impl Runtime for WasmRuntime {
    fn name(&self) -> &'static str {
        "wasm"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            isolation: Isolation::Wasm,
            language: Language::CPython,
            workspace: true,
            reset: true,
            startup: StartupClass::Milliseconds,
            // A wasm guest runs on one thread: its CPU time is its wall time. There are no
            // processes in a wasm guest: any process limit holds.
            limits: LimitSet::ALL.without(LimitKind::CpuTime),
            // Everything not stated here is denied (Capabilities' default is deny-all).
            ..Capabilities::default()
        }
    }

    async fn create_admitted(&self, spec: Admitted<'_>) -> Result<Box<dyn Sandbox>> {
        let prepared = self.prepared().await?;
        Ok(Box::new(
            WasmSandbox::start(prepared, spec.spec().clone()).await?,
        ))
    }

    async fn diagnose(&self) -> Diagnosis {
        let mut checks = vec![Check {
            name: "guest component".into(),
            state: if self.guest.is_file() {
                CheckState::Active
            } else {
                CheckState::Failed
            },
            detail: format!(
                "{} (CPython for WASI from componentize-py {}; inputs key {})",
                self.guest.display(),
                artifact::COMPONENTIZE_PY_VERSION.trim(),
                artifact::guest_key()
            ),
        }];
        let started = std::time::Instant::now();
        let probe = async {
            let mut sb = self.create(&SandboxSpec::default()).await?;
            let out = sb
                .exec(
                    ExecRequest::new("import sys; print(sys.version.split()[0])"),
                    Arc::new(NoTools),
                )
                .await?;
            sb.shutdown().await?;
            Ok::<_, Error>(out)
        }
        .await;
        match probe {
            Ok(out) if out.status.is_ok() => {
                checks.push(Check {
                    name: "sandbox starts".into(),
                    state: CheckState::Active,
                    detail: format!(
                        "CPython {} on wasmtime {} ({} ms, including a first compile if any)",
                        out.stdout.text().trim(),
                        wasmtime_version(),
                        started.elapsed().as_millis()
                    ),
                });
                for (name, detail) in [
                    ("wall-time limit", "epoch interruption (10 ms ticks)"),
                    (
                        "memory limit",
                        "wasmtime StoreLimits on linear memory: MemoryError in Python",
                    ),
                    (
                        "file-size, /tmp, workspace and open-file limits",
                        "checked host-side on every file write, create and open",
                    ),
                    (
                        "filesystem",
                        "only /tmp (private), /workspace, /tools and /python (the standard library, read-only) are visible",
                    ),
                    ("network", "no sockets (no TCP, UDP or name lookup)"),
                ] {
                    checks.push(Check {
                        name: name.into(),
                        state: CheckState::Active,
                        detail: detail.into(),
                    });
                }
                Diagnosis {
                    available: true,
                    reason: None,
                    checks,
                }
            }
            Ok(out) => Diagnosis {
                available: false,
                reason: Some(format!(
                    "the probe program failed: {:?} {}",
                    out.status,
                    out.stderr.text()
                )),
                checks,
            },
            Err(e) => Diagnosis {
                available: false,
                reason: Some(match e.hint() {
                    Some(hint) => format!("{e} ({hint})"),
                    None => e.to_string(),
                }),
                checks,
            },
        }
    }
}

/// The wasmtime version this backend is built with (pinned in the workspace manifest).
pub fn wasmtime_version() -> &'static str {
    "48.0.8"
}
