//! # agentkernel-backend-microsandbox
//!
//! A full Linux microVM per sandbox (issue 9, not built yet): QEMU `-M microvm` with a Debian
//! kernel and an initramfs built from Debian packages (software emulation where KVM is not
//! real), or microsandbox/libkrun on real KVM. Control runs over virtio-serial with the same
//! guest agent and framed protocol as the process backend (`agentkernel_core::guest`).
//!
//! Empty until then: the facade exposes no `microvm` backend.
