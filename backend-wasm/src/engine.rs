//! The process-wide wasmtime engine, its epoch ticker, and the guest component compiled
//! and linked once ([`Prepared`]): every sandbox is a fresh store instantiated from it.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use agentkernel_core::{Error, Result};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::artifact;
use crate::bindings::{Agent, AgentPre};
use crate::state::State;

/// How often the epoch advances: the granularity of wall-time checks inside wasm.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The engine every sandbox of this process shares (compiled code is per engine).
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        // Copy-on-write memory images: instantiating maps the snapshot's memory instead of
        // copying it.
        config.memory_init_cow(true);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling()));
        let engine = Engine::new(&config).expect("the wasmtime configuration is valid");
        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("agentkernel-wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .expect("spawn the epoch ticker thread");
        engine
    })
}

/// The pooling allocator's slots: instantiating a sandbox takes a slot whose memory and
/// tables are already mapped, and a slot given back keeps its touched pages resident (reset
/// to the snapshot's contents by copying), so the next sandbox does not fault them in again.
///
/// That reset copies the guest's whole memory back from the image, off the caller's path;
/// its cost follows the snapshot's size (3 ms at 22 MB), which is why the guest's snapshot
/// holds only the modules programs use most (guest/wasm_agent.py).
///
/// wasmtime's `pagemap_scan` would copy only written pages, but its scan stops after 32
/// runs of them (wasmtime 48) and CPython's writes scatter over more, so the rest is
/// released and faults in again in the next sandbox. Measured with criterion in one
/// session, alternating (22 MB snapshot): cold starts gained ~5% with it, and `pooled` lost
/// 60% (0.85–0.93 → 1.37–1.55 ms), since a warm sandbox's first program then pays those
/// faults.
fn pooling() -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(POOL_SLOTS)
        .total_core_instances(POOL_SLOTS * 16)
        .total_memories(POOL_SLOTS * 4)
        .total_tables(POOL_SLOTS * 16)
        .total_stacks(POOL_SLOTS)
        .max_core_instances_per_component(16)
        .max_memories_per_component(4)
        .max_tables_per_component(16)
        .table_elements(64 << 10)
        .max_component_instance_size(1 << 20)
        .max_core_instance_size(1 << 20)
        .linear_memory_keep_resident(64 << 20)
        .table_keep_resident(1 << 20);
    pool
}

/// Sandboxes of this backend alive at once in one process.
pub const POOL_SLOTS: u32 = 256;

/// The guest component, compiled and linked against the host's imports.
pub struct Prepared {
    /// Instantiates a new guest in a few milliseconds.
    pub pre: AgentPre<State>,
    /// The standard library outside the snapshot, mounted read-only at `/python`.
    pub stdlib: std::path::PathBuf,
}

/// Loads (compiling at most once per machine) and links the guest component at `path`.
pub fn prepare(path: &std::path::Path) -> Result<Arc<Prepared>> {
    let engine = engine();
    let meta = std::fs::metadata(path).map_err(|e| missing_guest(path, &e.to_string()))?;
    let stdlib = artifact::stdlib_path(path);
    if !stdlib.join("os.py").is_file() {
        return Err(Error::Unavailable {
            backend: "wasm",
            reason: format!(
                "the guest component {} has no standard library beside it ({} is missing or incomplete)",
                path.display(),
                stdlib.display()
            ),
            hint: format!("rebuild it with {}", artifact::BUILD_COMMAND),
        });
    }
    let compiled = artifact::compiled_path(path, &meta, engine_hash(engine));
    // The compiled guest is native code the kernel runs: its directories must be this
    // user's own (no one else could have put a file there).
    let cache = artifact::cache_dir();
    agentkernel_core::hostdirs::private_dir(&cache)?;
    if let Some(dir) = compiled.parent() {
        agentkernel_core::hostdirs::private_dir(dir)?;
    }
    // One compile per machine at a time: other processes wait here, then load its result.
    let _lock = artifact::lock(&compiled);
    let component = match load_compiled(engine, &compiled) {
        Some(c) => {
            artifact::touch(&compiled);
            c
        }
        None => {
            tracing::info!(guest = %path.display(), "compiling the wasm guest: once per machine, about 30 s");
            let bytes = std::fs::read(path).map_err(|e| missing_guest(path, &e.to_string()))?;
            let native = engine
                .precompile_component(&bytes)
                .map_err(|e| unusable_guest(path, "compile", e))?;
            if let Err(e) = artifact::store_compiled(&compiled, &native) {
                tracing::warn!(path = %compiled.display(), "cannot cache the compiled guest: {e}");
            }
            let pruned = artifact::prune_stale(&compiled, artifact::STALE_AFTER);
            if pruned > 0 {
                tracing::info!(pruned, "removed compiled wasm guests unused for 3 days");
            }
            // SAFETY: `native` was produced just now by `precompile_component` of this very
            // engine, which is exactly what `Component::deserialize` requires.
            unsafe { Component::deserialize(engine, &native) }.map_err(internal)?
        }
    };
    let mut linker: Linker<State> = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(internal)?;
    Agent::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s).map_err(internal)?;
    crate::quota::add_to_linker(&mut linker).map_err(internal)?;
    let pre = linker
        .instantiate_pre(&component)
        .map_err(|e| unusable_guest(path, "link", e))?;
    let pre = AgentPre::new(pre).map_err(internal)?;
    Ok(Arc::new(Prepared { pre, stdlib }))
}

fn load_compiled(engine: &Engine, path: &std::path::Path) -> Option<Component> {
    let native = match artifact::load_trusted_compiled(path) {
        Ok(Some(native)) => native,
        Ok(None) => return None,
        Err(why) => {
            tracing::warn!(
                "not loading a compiled guest that may not be ours, compiling anew: {why}"
            );
            return None;
        }
    };
    // SAFETY: these bytes are what `prepare` wrote from `precompile_component`: the file is
    // this user's own, in directories only this user can write, and matches the SHA-256
    // recorded when it was compiled (`load_trusted_compiled`); its name includes the
    // engine's compatibility hash, and wasmtime itself rejects bytes made by another engine
    // version or config.
    match unsafe { Component::deserialize(engine, &native) } {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(path = %path.display(), "ignoring a stale compiled guest: {e:#}");
            None
        }
    }
}

fn engine_hash(engine: &Engine) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    h.finish()
}

/// The error for a guest component that is there but does not `compile` or `link`.
fn unusable_guest(path: &std::path::Path, step: &str, e: wasmtime::Error) -> Error {
    Error::Unavailable {
        backend: "wasm",
        reason: format!(
            "the guest component {} does not {step}: {e:#}",
            path.display()
        ),
        hint: format!("rebuild it with {}", artifact::BUILD_COMMAND),
    }
}

/// The error for a guest component that is not there (or not readable).
pub fn missing_guest(path: &std::path::Path, why: &str) -> Error {
    Error::Unavailable {
        backend: "wasm",
        reason: format!(
            "the CPython guest component {} is missing ({why})",
            path.display()
        ),
        hint: format!(
            "build it with {} (needs python3 and PyPI for componentize-py), or point {} at one",
            artifact::BUILD_COMMAND,
            artifact::GUEST_ENV
        ),
    }
}

/// An unexpected wasmtime failure, as the kernel's error.
pub fn internal(e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("wasm: {e:#}"))
}
