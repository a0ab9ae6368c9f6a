//! # agentkernel-backend-wasm
//!
//! CPython compiled to WASI, run by wasmtime (issue 5, not built yet): a pre-initialised
//! component built by the project's set-up from PyPI's `componentize-py`, epoch interruption
//! for wall time, `StoreLimits` for memory, and tools through a WIT `host-call` import.
//!
//! This crate is deliberately empty until then: the facade exposes no `wasm` backend, so no
//! caller can mistake a placeholder for a sandbox.
