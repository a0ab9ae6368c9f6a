//! Rust bindings of the guest's WIT world (`guest/wit/agentkernel.wit`).
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "guest/wit",
    world: "agent",
    imports: { default: async },
    exports: { default: async },
});
