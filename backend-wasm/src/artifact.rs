//! The guest component: where it is cached, how its inputs are hashed, and how it is
//! compiled once per machine.
//!
//! `scripts/build-wasm-guest` builds the component from the inputs below with PyPI's
//! `componentize-py` and stores it as `<cache>/wasm/guest-<key>.wasm`, where `<key>` is the
//! first 16 hex digits of the SHA-256 of the inputs concatenated in this order. This crate
//! embeds the same inputs, so it finds exactly the component its own guest sources describe;
//! any change to them means a new key and a rebuild. The native code wasmtime compiles from
//! the component is cached beside it, keyed by the component and the engine's configuration;
//! when a new one is compiled, those unused for 3 days are removed ([`prune_stale`]).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The guest program (the component's Python application).
pub const GUEST_AGENT: &str = include_str!("../guest/wasm_agent.py");
/// The build step that exports the standard library outside the snapshot.
pub const GUEST_STDLIB_EXPORT: &str = include_str!("../guest/export_stdlib.py");
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
        GUEST_STDLIB_EXPORT,
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

/// The standard library directory that belongs to the component at `guest`: beside it, as
/// `<name>.stdlib` (the build writes `guest-<key>.stdlib` next to `guest-<key>.wasm`).
/// Sandboxes see it read-only at `/python`; it holds the modules outside the snapshot.
pub fn stdlib_path(guest: &Path) -> PathBuf {
    guest.with_extension("stdlib")
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

/// Where the SHA-256 of the compiled guest at `compiled` is recorded when it is written.
pub fn digest_path(compiled: &Path) -> PathBuf {
    compiled.with_extension("cwasm.sha256")
}

/// Caches `native` (compiled guest code) at `compiled` with its SHA-256 beside it, both
/// written atomically and readable by their owner only.
pub fn store_compiled(compiled: &Path, native: &[u8]) -> std::io::Result<()> {
    write_atomically(compiled, native)?;
    write_atomically(
        &digest_path(compiled),
        hex(&Sha256::digest(native)).as_bytes(),
    )
}

/// The compiled guest at `compiled`, if it can be trusted as what this user's kernel wrote:
/// a regular file (not a symlink) owned by this user and writable by no one else, whose
/// SHA-256 is the one recorded beside it (same checks) when it was compiled. The kernel
/// loads it as native code, so anything else is refused (`Err` says why; the caller then
/// compiles anew and overwrites it); `Ok(None)` when there is none.
pub fn load_trusted_compiled(compiled: &Path) -> Result<Option<Vec<u8>>, String> {
    use std::io::Read as _;
    use std::os::unix::fs::MetadataExt;
    let read_owned = |path: &Path| -> Result<Option<Vec<u8>>, String> {
        let mut file = match agentkernel_core::hostdirs::private_file()
            .read(true)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let meta = file
            .metadata()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let me = agentkernel_core::hostdirs::euid();
        if !meta.is_file() || meta.uid() != me || meta.mode() & 0o022 != 0 {
            return Err(format!(
                "{} is not a file only you could have written (owner uid {}, mode {:o})",
                path.display(),
                meta.uid(),
                meta.mode() & 0o7777
            ));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        file.read_to_end(&mut bytes)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Some(bytes))
    };
    let Some(native) = read_owned(compiled)? else {
        return Ok(None);
    };
    let recorded = read_owned(&digest_path(compiled))?
        .ok_or_else(|| format!("{} has no recorded digest", compiled.display()))?;
    if recorded != hex(&Sha256::digest(&native)).as_bytes() {
        return Err(format!(
            "{} does not match the digest recorded when it was compiled",
            compiled.display()
        ));
    }
    Ok(Some(native))
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

/// How long a compiled guest nobody loaded stays in the cache.
pub const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(3 * 24 * 3600);

/// Marks the compiled guest at `path` as used now, so [`prune_stale`] keeps it.
pub fn touch(path: &Path) {
    if let Ok(file) = std::fs::File::options().append(true).open(path) {
        let _ = file.set_modified(std::time::SystemTime::now());
    }
}

/// Removes the compiled guests (and their lock files) beside `keep` that were last used
/// more than `max_age` ago: each wasmtime upgrade, configuration change or guest rebuild
/// leaves a ~45 MB file behind. Returns how many were removed.
pub fn prune_stale(keep: &Path, max_age: std::time::Duration) -> usize {
    let Some(dir) = keep.parent() else { return 0 };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path == keep || !(name.starts_with("compiled-") && name.ends_with(".cwasm")) {
            if name.starts_with("compiled-")
                && name.ends_with(".cwasm.sha256")
                && !path.with_extension("").exists()
            {
                let _ = std::fs::remove_file(&path); // the digest of a pruned guest
            }
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > max_age);
        if old && std::fs::remove_file(&path).is_ok() {
            let _ = std::fs::remove_file(path.with_extension("lock"));
            removed += 1;
        }
    }
    removed
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiled_guests_unused_for_days_are_pruned_and_the_current_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, age_days: u64| {
            let path = dir.path().join(name);
            std::fs::write(&path, b"x").unwrap();
            std::fs::write(path.with_extension("lock"), b"").unwrap();
            let when =
                std::time::SystemTime::now() - std::time::Duration::from_secs(age_days * 24 * 3600);
            std::fs::File::options()
                .append(true)
                .open(&path)
                .unwrap()
                .set_modified(when)
                .unwrap();
            path
        };
        let keep = file("compiled-keep.cwasm", 10);
        let stale = file("compiled-stale.cwasm", 4);
        let recent = file("compiled-recent.cwasm", 1);
        let guest = file("guest-0123.wasm", 10);
        assert_eq!(prune_stale(&keep, STALE_AFTER), 1);
        assert!(!stale.exists() && !stale.with_extension("lock").exists());
        assert!(keep.exists() && recent.exists() && guest.exists());
        // Using a compiled guest keeps it.
        touch(&recent);
        assert_eq!(prune_stale(&keep, std::time::Duration::from_secs(3600)), 0);
        assert!(recent.exists());
    }

    #[test]
    fn a_compiled_guest_is_loaded_only_with_its_digest_and_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let compiled = dir.path().join("compiled-x.cwasm");
        assert_eq!(load_trusted_compiled(&compiled), Ok(None));
        store_compiled(&compiled, b"native code").unwrap();
        assert_eq!(
            load_trusted_compiled(&compiled),
            Ok(Some(b"native code".to_vec()))
        );
        // Replaced by someone else's code: refused.
        write_atomically(&compiled, b"other code!").unwrap();
        let err = load_trusted_compiled(&compiled).unwrap_err();
        assert!(err.contains("does not match the digest"), "{err}");
        // Writable by others: refused, whatever its digest.
        store_compiled(&compiled, b"native code").unwrap();
        std::fs::set_permissions(&compiled, std::fs::Permissions::from_mode(0o666)).unwrap();
        let err = load_trusted_compiled(&compiled).unwrap_err();
        assert!(err.contains("not a file only you"), "{err}");
        // A symlink in its place: refused, never followed.
        store_compiled(&compiled, b"native code").unwrap();
        let real = dir.path().join("elsewhere.cwasm");
        std::fs::rename(&compiled, &real).unwrap();
        std::os::unix::fs::symlink(&real, &compiled).unwrap();
        assert!(load_trusted_compiled(&compiled).is_err());
        // No recorded digest: refused.
        std::fs::remove_file(&compiled).unwrap();
        std::fs::rename(&real, &compiled).unwrap();
        std::fs::remove_file(digest_path(&compiled)).unwrap();
        let err = load_trusted_compiled(&compiled).unwrap_err();
        assert!(err.contains("no recorded digest"), "{err}");
        if agentkernel_core::hostdirs::euid() == 0 {
            store_compiled(&compiled, b"native code").unwrap();
            std::os::unix::fs::chown(&compiled, Some(65534), None).unwrap();
            let err = load_trusted_compiled(&compiled).unwrap_err();
            assert!(err.contains("owner uid 65534"), "{err}");
        }
    }

    #[test]
    fn key_is_stable_and_short() {
        assert_eq!(guest_key(), guest_key());
        assert_eq!(guest_key().len(), 16);
    }
}
