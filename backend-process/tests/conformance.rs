//! The shared conformance suite, run against the process backend.

use agentkernel_backend_process::{ProcessConfig, ProcessRuntime};

agentkernel_core::conformance_suite!(
    ProcessRuntime::new(ProcessConfig::default())
        .expect("the process backend must be available here")
);
