//! # agentkernel-backend-wasm
//!
//! CPython compiled to WASI, run by wasmtime: strong isolation without any OS jail, and
//! millisecond starts.
//!
//! - **Guest** (`guest/`): a small Python program (`wasm_agent.py`, plus the runner shared
//!   with the process backend, `kernel-core/src/guest/program.py`) and a WIT world
//!   (`guest/wit/agentkernel.wit`: export `configure` and `run`, import `host-call`).
//!   `scripts/build-wasm-guest` turns them into a pre-initialised component with PyPI's
//!   `componentize-py`: the interpreter and the modules agent programs use most are already
//!   imported in its snapshot. The rest of the standard library is exported beside it,
//!   compiled (`guest/export_stdlib.py`), and mounted read-only at `/python` in every sandbox:
//!   the snapshot stays small, because every sandbox pays for its size when its memory is
//!   reset. Both are cached by a hash of those inputs ([`artifact`]).
//! - **Engine** ([`engine`]): one wasmtime engine per process, an epoch ticker thread, the
//!   component compiled once per machine (native code cached beside it) and linked into an
//!   `InstancePre`, so a sandbox is a new store plus an instantiation.
//! - **Sandbox** (`sandbox`): WASI with only the sandbox's private `/tmp`, the workspace at
//!   `/workspace`, the read-only standard library at `/python`, and the spec's mounts (e.g.
//!   the read-only `/tools` package) preopened; no
//!   sockets. Limits: epoch interruption for wall time, `StoreLimits` for memory (Python
//!   sees `MemoryError`), host-side checks of every file write and create ([`quota`]) for file size,
//!   `/tmp` (bytes and inodes), the workspace within a run and open files, and capped
//!   output; `host-call` arguments are capped before they are parsed. File operations run on the calling thread (no blocking-pool
//!   hand-off), and opening a FIFO or device is refused, so none can wait forever. A trap (deadline, exit, crash) loses the instance; `reset`
//!   instantiates a fresh one from the pre-initialised snapshot.
//! - **Tools**: `_agentkernel.call_tool` (and the generated `tools.<server>.<tool>`
//!   functions) call the `host-call` import, served by the exec's `ToolHost`.

pub mod artifact;
mod bindings;
pub mod engine;
pub mod quota;
mod runtime;
mod sandbox;
mod state;

pub use runtime::{WasmRuntime, wasmtime_version};
pub use sandbox::WasmSandbox;
