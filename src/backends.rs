//! The backends: every one AgentKernel knows ([`BACKENDS`]), the ones this build has (a
//! registration each, by Cargo feature), the typed [`Backend`], and how a backend is made
//! from the kernel's settings.

use std::sync::Arc;

use agentkernel_core::{Error, Result, Runtime};

#[cfg(feature = "process")]
use std::path::PathBuf;

#[cfg(feature = "microvm")]
use crate::config::MicroVmSettings;

/// Every backend AgentKernel knows, with whether this build has it and what it is.
pub const BACKENDS: &[(&str, &str)] = &[
    (
        "process",
        "host CPython in a namespace + seccomp + landlock jail (default)",
    ),
    (
        "wasm",
        "CPython compiled to WASI on wasmtime: no OS access but what is granted, ms starts",
    ),
    (
        "monty",
        "Monty, a Python-subset interpreter in Rust, in a jailed worker process per sandbox",
    ),
    (
        "monty-inprocess",
        "Monty on a thread of the kernel itself: microsecond starts, trusted code only",
    ),
    (
        "microvm",
        "a full Linux microVM per sandbox (QEMU microvm; software emulation without real KVM)",
    ),
];

/// Names of the backends compiled into this build.
pub fn compiled_backends() -> Vec<&'static str> {
    REGISTERED.iter().map(|r| r.name).collect()
}

/// A backend of this build, typed (the variants follow the compiled Cargo features; names
/// as strings stay for configuration: [`crate::KernelBuilder::backend`] takes either).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// `process`: host CPython in a namespace + seccomp + landlock jail.
    #[cfg(feature = "process")]
    Process,
    /// `wasm`: CPython compiled to WASI on wasmtime.
    #[cfg(feature = "wasm")]
    Wasm,
    /// `monty`: Monty in a jailed worker process (the `monty` feature also turns on
    /// `process`, whose jail it runs in).
    #[cfg(feature = "monty")]
    Monty,
    /// `monty-inprocess`: Monty on a thread of the kernel (trusted code only).
    #[cfg(feature = "monty")]
    MontyInProcess,
    /// `microvm`: a Linux microVM per sandbox.
    #[cfg(feature = "microvm")]
    MicroVm,
}

impl Backend {
    /// Its name, as configuration and the CLI spell it.
    pub fn name(self) -> &'static str {
        match self {
            #[cfg(feature = "process")]
            Backend::Process => "process",
            #[cfg(feature = "wasm")]
            Backend::Wasm => "wasm",
            #[cfg(feature = "monty")]
            Backend::Monty => "monty",
            #[cfg(feature = "monty")]
            Backend::MontyInProcess => "monty-inprocess",
            #[cfg(feature = "microvm")]
            Backend::MicroVm => "microvm",
        }
    }
}

impl From<Backend> for String {
    fn from(b: Backend) -> String {
        b.name().to_owned()
    }
}

/// The backend a kernel uses when none is named: the first compiled one (`process` in the
/// default build).
pub fn default_backend() -> &'static str {
    compiled_backends().first().copied().unwrap_or("process")
}

/// The known backend nearest to a misspelt `name` (at most two edits away).
fn nearest_backend(name: &str) -> Option<&'static str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let here = row[j + 1];
                row[j + 1] = (prev + usize::from(ca != *cb))
                    .min(row[j] + 1)
                    .min(here + 1);
                prev = here;
            }
        }
        row[b.len()]
    }
    let name = name.to_ascii_lowercase();
    BACKENDS
        .iter()
        .map(|(b, _)| (distance(&name, b), *b))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, b)| b)
}

/// What a backend is built with besides its name. Each setting exists only in a build that
/// has its backend (the `[sandbox] python` and `[microvm]` settings of `agentkernel.toml` are
/// still read, and checked, by every build; a build without the backend has nothing to pass
/// them to).
#[derive(Debug, Clone, Default)]
pub(crate) struct BackendSettings {
    /// Interpreter for the process backend (`None`: its default).
    #[cfg(feature = "process")]
    pub(crate) python: Option<PathBuf>,
    /// How the microvm backend starts VMs.
    #[cfg(feature = "microvm")]
    pub(crate) microvm: MicroVmSettings,
}

impl BackendSettings {
    /// Builds the runtime named `name`: its registration's maker, or an error that says
    /// whether the backend exists but is not in this build, or the name is unknown (with
    /// the nearest known name).
    pub(crate) fn make_runtime(&self, name: &str) -> Result<Arc<dyn Runtime>> {
        if let Some(registered) = REGISTERED.iter().find(|r| r.name == name) {
            return (registered.make)(self, name);
        }
        if BACKENDS.iter().any(|(b, _)| *b == name) {
            return Err(Error::invalid(
                format!("backend {name:?} is not part of this build"),
                format!("use one of: {}", compiled_backends().join(", ")),
            ));
        }
        Err(Error::invalid(
            match nearest_backend(name) {
                Some(near) => format!("unknown backend {name:?} (did you mean {near:?}?)"),
                None => format!("unknown backend {name:?}"),
            },
            format!(
                "use one of: {} (known: {})",
                compiled_backends().join(", "),
                BACKENDS
                    .iter()
                    .map(|(b, _)| *b)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))
    }
}

/// How a backend of this build is made from the kernel's settings (`name` is the name it was
/// asked by, for a maker that serves two: monty's two modes).
type Maker = fn(&BackendSettings, &str) -> Result<Arc<dyn Runtime>>;

/// One backend of this build: its name and how to make it.
struct Registration {
    name: &'static str,
    make: Maker,
}

/// The backends this build has, one registration each (in [`default_backend`]'s order of
/// preference); each exists only with its Cargo feature. Adding a backend is adding its
/// registration here and its entry to [`BACKENDS`].
const REGISTERED: &[Registration] = &[
    #[cfg(feature = "process")]
    Registration {
        name: "process",
        make: make_process,
    },
    #[cfg(feature = "wasm")]
    Registration {
        name: "wasm",
        make: make_wasm,
    },
    #[cfg(feature = "monty")]
    Registration {
        name: "monty",
        make: make_monty,
    },
    #[cfg(feature = "monty")]
    Registration {
        name: "monty-inprocess",
        make: make_monty,
    },
    #[cfg(feature = "microvm")]
    Registration {
        name: "microvm",
        make: make_microvm,
    },
];

#[cfg(feature = "process")]
fn make_process(settings: &BackendSettings, _: &str) -> Result<Arc<dyn Runtime>> {
    let rt = agentkernel_backend_process::ProcessRuntime::new(
        agentkernel_backend_process::ProcessConfig {
            python: settings.python.clone(),
            ..Default::default()
        },
    )?;
    Ok(Arc::new(rt))
}

#[cfg(feature = "wasm")]
fn make_wasm(_: &BackendSettings, _: &str) -> Result<Arc<dyn Runtime>> {
    Ok(Arc::new(agentkernel_backend_wasm::WasmRuntime::new()))
}

#[cfg(feature = "monty")]
fn make_monty(_: &BackendSettings, name: &str) -> Result<Arc<dyn Runtime>> {
    use agentkernel_backend_monty::{MontyConfig, MontyMode, MontyRuntime};
    let mode = if name == "monty-inprocess" {
        MontyMode::InProcess
    } else {
        MontyMode::Worker
    };
    Ok(Arc::new(MontyRuntime::new(MontyConfig {
        mode,
        worker: None,
    })?))
}

#[cfg(feature = "microvm")]
fn make_microvm(settings: &BackendSettings, _: &str) -> Result<Arc<dyn Runtime>> {
    use agentkernel_backend_microvm::{MicroVmConfig, MicroVmRuntime};
    let defaults = MicroVmConfig::default();
    let wanted = &settings.microvm;
    Ok(Arc::new(MicroVmRuntime::new(MicroVmConfig {
        pool_size: wanted.pool_size.unwrap_or(defaults.pool_size),
        vcpus: wanted.vcpus.unwrap_or(defaults.vcpus),
        snapshots: wanted.snapshots.unwrap_or(defaults.snapshots),
        engine: match &wanted.engine {
            Some(engine) => engine.parse()?,
            None => defaults.engine,
        },
        ..defaults
    })))
}
