//! Test helpers: the wasm runtime, with its guest component built on first use.

use agentkernel_backend_wasm::WasmRuntime;

pub use agentkernel_testkit::wasm_guest;

/// A wasm runtime over the freshly built guest.
pub fn runtime() -> WasmRuntime {
    WasmRuntime::with_guest(wasm_guest())
}
