//! Test helpers: the wasm runtime, with its guest component built on first use.

use std::path::PathBuf;
use std::sync::OnceLock;

use agentkernel_backend_wasm::WasmRuntime;

/// The guest component, built (or found up to date) by `scripts/build-wasm-guest` once per
/// test binary.
pub fn guest() -> PathBuf {
    static GUEST: OnceLock<PathBuf> = OnceLock::new();
    GUEST
        .get_or_init(|| {
            let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-wasm-guest");
            let out = std::process::Command::new(&script)
                .stderr(std::process::Stdio::inherit())
                .output()
                .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
            assert!(out.status.success(), "{} failed", script.display());
            PathBuf::from(String::from_utf8(out.stdout).expect("utf-8 path").trim())
        })
        .clone()
}

/// A wasm runtime over the freshly built guest.
pub fn runtime() -> WasmRuntime {
    WasmRuntime::with_guest(guest())
}
