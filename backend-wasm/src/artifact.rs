//! The guest component: where it is cached, how its inputs are hashed, and how it is
//! compiled once per machine.
//!
//! `scripts/build-wasm-guest` builds the component from the inputs below with PyPI's
//! `componentize-py` and stores it as `<cache>/wasm/guest-<key>.wasm`, where `<key>` is the
//! first 16 hex digits of the SHA-256 of the inputs concatenated in this order. This crate
//! embeds the same inputs, so it finds exactly the component its own guest sources describe;
//! any change to them means a new key and a rebuild. The native code wasmtime compiles from
//! the component is cached beside it, keyed by the component and the engine's configuration.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The guest program (the component's Python application).
pub const GUEST_AGENT: &str = include_str!("../guest/wasm_agent.py");
/// The WIT world between host and guest.
pub const GUEST_WIT: &str = include_str!("../guest/wit/agentkernel.wit");
/// The `componentize-py` version the component is built with.
pub const COMPONENTIZE_PY_VERSION: &str = include_str!("../guest/componentize-py.version");

/// Environment variable naming a guest component to use instead of the cached one.
pub const GUEST_ENV: &str = "AGENTKERNEL_WASM_GUEST";

/// The command that builds the guest component (what error hints tell users to run).
pub const BUILD_COMMAND: &str = "./scripts/build-wasm-guest";

/// The cache key of the guest inputs (same as `scripts/build-wasm-guest` computes).
pub fn guest_key() -> String {
    let mut h = Sha256::new();
    for part in [
        GUEST_AGENT,
        agentkernel_core::guest::PROGRAM_SOURCE,
        GUEST_WIT,
        COMPONENTIZE_PY_VERSION,
    ] {
        h.update(part.as_bytes());
    }
    hex(&h.finalize()[..8])
}

pub use agentkernel_core::cache_dir;

/// Where the guest component is: `$AGENTKERNEL_WASM_GUEST`, else the cache entry for
/// [`guest_key`].
pub fn guest_path() -> PathBuf {
    match std::env::var_os(GUEST_ENV).filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => cache_dir()
            .join("wasm")
            .join(format!("guest-{}.wasm", guest_key())),
    }
}

/// Where the compiled form of the component at `guest` for an engine whose compatibility
/// hash is `engine_hash` is cached. Keyed by the component's path, size and modification
/// time (the cached guests' names already carry the hash of their inputs), so finding the
/// entry never reads the 27 MB component.
pub fn compiled_path(guest: &Path, meta: &std::fs::Metadata, engine_hash: u64) -> PathBuf {
    let mut h = Sha256::new();
    h.update(guest.as_os_str().as_encoded_bytes());
    h.update(meta.len().to_le_bytes());
    if let Ok(modified) = meta.modified()
        && let Ok(since) = modified.duration_since(std::time::UNIX_EPOCH)
    {
        h.update(since.as_nanos().to_le_bytes());
    }
    h.update(engine_hash.to_le_bytes());
    cache_dir()
        .join("wasm")
        .join(format!("compiled-{}.cwasm", hex(&h.finalize()[..8])))
}

/// Writes `bytes` to `path` atomically (a temporary file in the same directory, renamed).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::fs::write(tmp.path(), bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Takes an exclusive lock beside `path` (released when the file is dropped), so processes
/// that would produce the same cache entry take turns. `None` if the lock cannot be taken:
/// the caller then just does the work itself.
pub fn lock(path: &Path) -> Option<std::fs::File> {
    let lock_path = path.with_extension("lock");
    std::fs::create_dir_all(lock_path.parent()?).ok()?;
    let file = std::fs::File::create(&lock_path).ok()?;
    file.lock().ok()?;
    Some(file)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_stable_and_short() {
        assert_eq!(guest_key(), guest_key());
        assert_eq!(guest_key().len(), 16);
    }
}
