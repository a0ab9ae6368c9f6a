//! The shared conformance suite on monty's worker mode (jailed worker processes).

use agentkernel_backend_monty::{MontyConfig, MontyMode, MontyRuntime, WorkerCommand};

fn runtime() -> MontyRuntime {
    MontyRuntime::new(MontyConfig {
        mode: MontyMode::Worker,
        worker: Some(WorkerCommand {
            executable: env!("CARGO_BIN_EXE_agentkernel-monty-worker").into(),
            args: Vec::new(),
        }),
    })
    .expect("monty worker mode")
}

agentkernel_core::conformance_suite!(runtime());
