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

agentkernel_core::conformance_suite!(
    runtime(),
    extra: vec![agentkernel_core::conformance::libtest_mimic::Trial::test(
        "a_check_that_does_not_apply_is_reported_skipped",
        || {
            a_check_that_does_not_apply_is_reported_skipped();
            Ok(())
        },
    )]
);

/// A check that does not apply is reported, not passed silently: run as a child of this
/// test binary with `AGENTKERNEL_SKIP_LOG` set, `kill_leaves_no_process` (in-process mode
/// has no process of its own) is reported ignored with the reason, prints its `SKIPPED`
/// line to stderr and appends it to the log; the summary counts it ignored, not passed.
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
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("kill_leaves_no_process ... ignored (does not apply: "),
        "stdout: {stdout}"
    );
    assert!(
        stdout.contains("0 passed; 0 failed; 1 ignored"),
        "stdout: {stdout}"
    );
    let logged = std::fs::read_to_string(&log).expect("the skip log was written");
    assert_eq!(logged.lines().count(), 1, "{logged}");
    assert!(logged.starts_with(expected), "{logged}");
    assert!(logged.contains("isolation InProcess"), "{logged}");
}
