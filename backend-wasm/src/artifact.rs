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

/// AgentKernel's cache directory: `$XDG_CACHE_HOME/agentkernel`, else `~/.cache/agentkernel`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("agentkernel");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".cache").join("agentkernel")
}

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

/// Where the compiled form of `component` (its bytes) for an engine whose compatibility
/// hash is `engine_hash` is cached.
pub fn compiled_path(component: &[u8], engine_hash: u64) -> PathBuf {
    let mut h = Sha256::new();
    h.update(component);
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
