//! # agentkernel-backend-microsandbox
//!
//! The `microvm` backend: a full Linux VM per sandbox, so programs get a whole OS
//! (`subprocess`, a shell, their own kernel) behind a hardware-style boundary.
//!
//! - **Engine `qemu`** (this crate's working engine): QEMU `-M microvm` with the Debian
//!   cloud kernel and an initramfs built from Debian packages by
//!   `scripts/build-microvm-image` ([`image`]). KVM only when the [`kvm`] probe finds real
//!   hardware virtualization; otherwise software emulation (TCG), which is what runs on
//!   machines whose `/dev/kvm` is PVM.
//! - **Engine `msb`** (microsandbox/libkrun, feature `msb`, off by default): needs real KVM.
//!   The `msb` module runs one program per sandbox; it is not yet selected by the runtime,
//!   and `doctor` says why it is unavailable ([`msb_unavailable_reason`]).
//!
//! Inside the VM ([`qemu`]): `/init` starts the *supervisor* (`guest/supervisor.py`, root) on
//! virtio-serial port 4; it starts the shared guest agent (`agentkernel_core::guest`) as
//! uid 1000 on ports 1-3, applies the sandbox's limits, and copies shared directories in and
//! out ([`share`]): there is no shared file system, because a mounted one would block the
//! snapshots that pooled VMs are restored from. [`runtime`] ties it together: template
//! states per memory size, a pool of warm VMs, and [`MicroVmSandbox`].

pub mod image;
pub mod kvm;
#[cfg(feature = "msb")]
pub mod msb;
#[cfg(any(feature = "msb", test))]
pub mod mux;
pub mod qemu;
pub mod runtime;
pub mod share;

pub use runtime::{MicroVmConfig, MicroVmRuntime, MicroVmSandbox};

/// Why the `msb` engine (microsandbox on libkrun) does not run here.
pub fn msb_unavailable_reason(kvm: &kvm::KvmProbe) -> String {
    if kvm.is_real() {
        if cfg!(feature = "msb") {
            "not yet selected by the microvm runtime: the qemu engine runs instead (with KVM)"
                .into()
        } else {
            "not built in (feature `msb` is off): the qemu engine runs instead (with KVM)".into()
        }
    } else {
        format!(
            "needs hardware KVM, and {}; the qemu engine runs instead",
            kvm.reason()
        )
    }
}
