//! # agentkernel-backend-microsandbox
//!
//! A full Linux microVM per sandbox (issue 9, in progress): QEMU `-M microvm` with a Debian
//! kernel and an initramfs built from Debian packages (software emulation where KVM is not
//! real), or microsandbox/libkrun on real KVM. Control runs over virtio-serial with the same
//! guest agent and framed protocol as the process backend (`agentkernel_core::guest`).
//!
//! Built so far:
//! - [`kvm`], the probe that tells real hardware KVM from PVM (which `doctor` reports);
//! - the guest image: `scripts/build-microvm-image` assembles the Debian cloud kernel and an
//!   initramfs (busybox, python3 minimal, the virtio modules, `guest/init`) from Debian
//!   packages, cached by their versions; `--check` boots it once under QEMU `-M microvm`
//!   and requires Python to print 6*7 (`tests/image.rs`);
//! - [`qemu::QemuVm`]: boots that image with the guest agent on virtio-serial ports and
//!   speaks the guest protocol to it (`tests/vm.rs` runs a program in it).
//!
//! The facade exposes no `microvm` backend yet.

pub mod kvm;
pub mod qemu;
