//! The shared conformance suite on monty's in-process mode.

#[global_allocator]
static ALLOC: monty_alloc::LimitedAllocator = monty_alloc::LimitedAllocator;

use agentkernel_backend_monty::{MontyConfig, MontyMode, MontyRuntime};

fn runtime() -> MontyRuntime {
    MontyRuntime::new(MontyConfig {
        mode: MontyMode::InProcess,
        worker: None,
    })
    .expect("in-process monty")
}

agentkernel_core::conformance_suite!(runtime());

/// A check that does not apply is reported, not passed silently: run as a child of this
/// test binary with `AGENTKERNEL_SKIP_LOG` set, `kill_leaves_no_process` (in-process mode
/// has no process of its own) prints its `SKIPPED` line to stderr and appends it to the log.
#[test]
fn a_check_that_does_not_apply_is_reported_skipped() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("skips.txt");
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "kill_leaves_no_process", "--nocapture"])
        .env(agentkernel_core::conformance::SKIP_LOG_ENV, &log)
        .output()
        .expect("run the check in a child");
    assert!(out.status.success(), "{out:?}");
    let expected = "SKIPPED monty kill_leaves_no_process (does not apply): ";
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(expected), "stderr: {stderr}");
    let logged = std::fs::read_to_string(&log).expect("the skip log was written");
    assert_eq!(logged.lines().count(), 1, "{logged}");
    assert!(logged.starts_with(expected), "{logged}");
    assert!(logged.contains("isolation InProcess"), "{logged}");
}
