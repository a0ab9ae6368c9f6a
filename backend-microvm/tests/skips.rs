//! A VM test that cannot run here says so: `SKIPPED <backend> <test>: <reason>` on stderr and, with
//! `AGENTKERNEL_SKIP_LOG` set, the same line appended to that file (CI reads it). Checked by
//! running this test binary again on a `PATH` without QEMU, so the shared runtime helper
//! (`common::runtime`, what every VM test starts with) has to skip.

mod common;

use std::process::Command;

/// Set in the child run: the child is the test that skips.
const CHILD: &str = "AGENTKERNEL_SKIP_TEST_CHILD";

#[test]
fn a_vm_test_without_qemu_says_it_skipped_on_stderr_and_in_the_skip_log() {
    if std::env::var_os(CHILD).is_some() {
        assert!(
            common::runtime("skips::child", 0).is_none(),
            "the child found QEMU on a PATH without it"
        );
        return;
    }
    // A PATH holding only `sh`: no qemu-system-x86_64, cpio or apt-get.
    let bin = tempfile::tempdir().unwrap();
    let sh = Command::new("sh")
        .args(["-c", "command -v sh"])
        .output()
        .unwrap();
    let sh = String::from_utf8(sh.stdout).unwrap();
    std::os::unix::fs::symlink(sh.trim(), bin.path().join("sh")).unwrap();
    let log = bin.path().join("skips.log");
    std::fs::write(&log, "SKIPPED earlier: kept\n").unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_vm_test_without_qemu_says_it_skipped_on_stderr_and_in_the_skip_log",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env("PATH", bin.path())
        .env("AGENTKERNEL_SKIP_LOG", &log)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the child failed: {stderr}");
    let line = "SKIPPED microvm skips::child: qemu-system-x86_64 is missing";
    assert!(stderr.contains(line), "stderr: {stderr}");
    let logged = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = logged.lines().collect();
    assert_eq!(lines.len(), 2, "{logged}");
    assert_eq!(lines[0], "SKIPPED earlier: kept", "the log is appended to");
    assert!(lines[1].starts_with(line), "{logged}");
}
