//! The shared conformance suite, run against the wasm backend.

mod common;

agentkernel_core::conformance_suite!(common::runtime());
