//! The `msb` engine end to end: the shared conformance suite on a runtime that must use it.
//! Runs only where the KVM probe finds hardware KVM and the engine's files are there (see
//! `MsbEngine::from_env`: `scripts/fetch-msb-runtime` and the microVM image); elsewhere each
//! check records that it skipped and why (`common/skip.rs`).
#![cfg(feature = "msb")]

use std::sync::OnceLock;

use agentkernel_backend_microvm::kvm::KvmProbe;
use agentkernel_backend_microvm::msb::MsbEngine;
use agentkernel_backend_microvm::{EngineKind, MicroVmConfig, MicroVmRuntime};

use agentkernel_testkit::microvm_image;

mod common;
use common::skip;

/// A runtime on the msb engine (a new one per check: each check runs on its own tokio
/// runtime, and microsandbox's backend holds connections made on the runtime that used it
/// first), or why this machine cannot run it.
fn runtime() -> Result<MicroVmRuntime, String> {
    static IMAGE: OnceLock<Result<std::path::PathBuf, String>> = OnceLock::new();
    let image = IMAGE
        .get_or_init(|| {
            let kvm = KvmProbe::detect();
            if !kvm.is_real() {
                return Err(kvm.reason());
            }
            let image = microvm_image()
                .ok_or("the microVM image (the engine's root filesystem) cannot be built")?;
            let engine = MsbEngine::from_env(Some(&image.join("rootfs")))?;
            println!("msb engine: {engine:?}");
            Ok(image)
        })
        .clone()?;
    Ok(MicroVmRuntime::new(MicroVmConfig {
        image: Some(image),
        engine: EngineKind::Msb,
        ..MicroVmConfig::default()
    }))
}

/// Runs one conformance check on the msb runtime, or says it is skipped and why
/// (`SKIPPED msb msb::<check>: <reason>`, also in `$AGENTKERNEL_SKIP_LOG`).
macro_rules! msb_checks {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                match runtime() {
                    Ok(rt) => {
                        agentkernel_core::conformance::set_target(common::VmProcesses);
                        agentkernel_core::conformance::$name(&rt).await
                    }
                    Err(reason) => skip::skip(concat!("msb::", stringify!($name)), &reason),
                }
            }
        )*
    };
}

// The whole suite, as `conformance_suite!` runs it on the qemu engine.
msb_checks!(
    output_capture,
    exception_with_traceback,
    exit_code_is_reported,
    state_persists_across_exec,
    reset_clears_state,
    snapshot_matches_capabilities,
    network_allow_list_matches_capabilities,
    admission_is_the_same_on_every_backend,
    wall_time_limit_kills,
    cpu_time_limit_kills,
    memory_limit_holds,
    output_limit_truncates,
    process_limit_holds,
    file_size_limit_holds,
    tmp_is_capped,
    workspace_persists_across_sandboxes,
    environment_is_explicit,
    tool_calls_round_trip,
    live_output_arrives_as_printed,
    escape_read_planted_file,
    escape_read_etc_shadow,
    escape_host_processes,
    escape_network,
    escape_write_host_usr,
    kill_leaves_no_process,
    shutdown_leaves_no_process,
    programs_over_the_size_cap_are_refused,
);
