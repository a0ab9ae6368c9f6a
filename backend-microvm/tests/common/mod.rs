//! Shared by the VM tests: the guest image, built (or found cached) by the project's script
//! (`microvm_image`, from the workspace's shared test helpers), runtimes on it, and [`skip::skip`].

#![allow(dead_code, reason = "each test file uses a part")]

pub mod skip;

use agentkernel_backend_microvm::{MicroVmConfig, MicroVmRuntime};

pub use agentkernel_testkit::microvm_image;

/// Why the guest image cannot be built on this machine (a tool `scripts/setup` installs is
/// missing), or `None`.
pub fn image_unbuildable() -> Option<String> {
    for cmd in ["qemu-system-x86_64", "cpio", "apt-get"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {cmd}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!(
                "{cmd} is missing, so the microVM image cannot be built (scripts/setup installs it)"
            ));
        }
    }
    None
}

/// A runtime on the built image keeping `pool_size` warm VMs, or why this machine cannot
/// build the image.
pub fn image_runtime(pool_size: usize) -> Result<MicroVmRuntime, String> {
    if let Some(why) = image_unbuildable() {
        return Err(why);
    }
    let image = microvm_image().ok_or("the microVM image cannot be built on this machine")?;
    Ok(MicroVmRuntime::new(MicroVmConfig {
        image: Some(image),
        pool_size,
        ..MicroVmConfig::default()
    }))
}

/// [`image_runtime`], or `None` after [`skip::skip`] recorded why `test` is skipped.
pub fn runtime(test: &str, pool_size: usize) -> Option<MicroVmRuntime> {
    image_runtime(pool_size)
        .inspect_err(|why| skip::skip(test, why))
        .ok()
}

/// The conformance suite's [`agentkernel_core::conformance::Target`] for microVMs: a
/// sandbox's program processes live inside the VM; on the host there is only the VM's
/// process, which runs under the sandbox's id (QEMU's `-name`, the msb sandbox's name).
pub struct VmProcesses;

impl agentkernel_core::conformance::Target for VmProcesses {
    fn host_marker(&self, sb: &dyn agentkernel_core::Sandbox, _marker: &str) -> String {
        sb.id().to_owned()
    }
}
