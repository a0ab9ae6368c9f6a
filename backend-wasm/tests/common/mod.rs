//! Test helpers: the wasm runtime, with its guest component built on first use.

use agentkernel_backend_wasm::WasmRuntime;

include!("../../../testdata/test_deps.rs");

/// A wasm runtime over the freshly built guest.
pub fn runtime() -> WasmRuntime {
    WasmRuntime::with_guest(wasm_guest())
}
