//! The shared conformance suite on monty's in-process mode.

#[global_allocator]
static ALLOC: monty_alloc::LimitedAllocator = monty_alloc::LimitedAllocator;

use agentkernel_backend_monty::{MontyConfig, MontyMode, MontyRuntime};

fn runtime() -> MontyRuntime {
    MontyRuntime::new(MontyConfig {
        mode: MontyMode::InProcess,
        worker: None,
    })
    .expect("in-process monty")
}

agentkernel_core::conformance_suite!(runtime());
