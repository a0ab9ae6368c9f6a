//! The shared conformance suite on the microvm backend (engine qemu; software emulation on
//! machines without real KVM). Needs QEMU and cpio (`scripts/setup` installs them); the
//! escape attempts are judged from the host side.

mod common;

use std::sync::OnceLock;

use agentkernel_backend_microvm::MicroVmRuntime;

/// One runtime for all checks, so the template state is made once; no warm pool (each
/// check's VMs live on that check's tokio runtime).
fn runtime() -> MicroVmRuntime {
    static RUNTIME: OnceLock<MicroVmRuntime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            common::image_runtime(0).unwrap_or_else(|why| {
                panic!("the microvm conformance suite cannot run ({why}): run scripts/setup")
            })
        })
        .clone()
}

agentkernel_core::conformance_suite!(runtime(), target: common::VmProcesses);
