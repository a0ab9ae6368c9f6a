//! # agentkernel-backend-microvm
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
//!   The runtime selects it ([`EngineKind::Auto`]) where the [`kvm`] probe finds hardware
//!   KVM and its runtime files are there (`scripts/fetch-msb-runtime`); its root filesystem
//!   is the image's `rootfs/`. Its guest agent talks through one exec stream (`mux.rs`); no
//!   pool or snapshots (libkrun is made to boot in a fraction of a second on real KVM; not
//!   measured here). `doctor` says
//!   which engine runs and why.
//!
//! Inside the VM ([`qemu`]): `/init` starts the *supervisor* (`guest/supervisor.py`, root) on
//! virtio-serial port 4; it starts the shared guest agent (`agentkernel_core::guest`) as
//! uid 1000 on ports 1-3, applies the sandbox's limits, and copies shared directories in and
//! out ([`qemu::share`]): there is no shared file system, because a mounted one would block the
//! snapshots that pooled VMs are restored from. [`runtime`] ties it together: template
//! states per memory size, a pool of warm VMs, and [`MicroVmSandbox`]. Both engines run the
//! exec state machine every guest-protocol backend shares (`agentkernel_core::guest`).
//!
//! Layout: `src/qemu/` the qemu engine (the VM and its ports, `share.rs` the copy in and
//! out); `src/msb.rs` and `src/mux.rs` the msb engine and its one-stream multiplexer;
//! `src/runtime.rs` engine selection, the warm pool, the qemu sandbox; `guest/` everything
//! that runs inside the VM (`init`, `supervisor.py`, `mux.py`), embedded with `include_str!`.
//! The guest agent itself is shared with the process backend and lives in
//! `kernel-core/src/guest/` (with `program.py`, which the wasm guest imports too).

pub mod image;
pub mod kvm;
#[cfg(feature = "msb")]
pub mod msb;
#[cfg(any(feature = "msb", test))]
pub mod mux;
pub mod qemu;
pub mod runtime;

pub use runtime::{EngineKind, MicroVmConfig, MicroVmRuntime, MicroVmSandbox};
