//! Shared by the VM tests: the guest image, built (or found cached) by the project's script
//! (`microvm_image`, from the workspace's shared test helpers), and runtimes on it.

use agentkernel_backend_microsandbox::{MicroVmConfig, MicroVmRuntime};

include!("../../../testdata/test_deps.rs");

/// A runtime on the built image keeping `pool_size` warm VMs, or `None` (after printing why
/// the test is skipped) on a machine that cannot build the image.
pub fn runtime(pool_size: usize) -> Option<MicroVmRuntime> {
    Some(MicroVmRuntime::new(MicroVmConfig {
        image: Some(microvm_image()?),
        pool_size,
        ..MicroVmConfig::default()
    }))
}
