//! The workspace after a process sandbox: what a program leaves there is untrusted input to
//! the host, and no two sandboxes write it at once. Judged from the host.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agentkernel_backend_process::{ProcessConfig, ProcessRuntime};
use agentkernel_core::{Error, ExecRequest, ExecStatus, NoTools, Runtime, SandboxSpec};

/// Every symlink under `dir` (not followed) with its target.
fn links_under(dir: &Path) -> Vec<(PathBuf, PathBuf)> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("list").flatten() {
            let kind = entry.file_type().expect("type");
            if kind.is_symlink() {
                found.push((
                    entry.path().strip_prefix(dir).expect("below").to_path_buf(),
                    std::fs::read_link(entry.path()).expect("readlink"),
                ));
            } else if kind.is_dir() {
                todo.push(entry.path());
            }
        }
    }
    found.sort();
    found
}

/// Waits (`tries` × 50 ms) for the link a left-running process makes at `path`; the test
/// needs it.
async fn wait_for_link(path: &Path, tries: u32) {
    for _ in 0..tries {
        if path.symlink_metadata().is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the background process never made {} (the test needs it)",
        path.display()
    );
}

/// A process runtime and a spec with a fresh workspace (the temp dir holding it, its path).
fn with_a_workspace() -> (ProcessRuntime, tempfile::TempDir, PathBuf, SandboxSpec) {
    let rt = ProcessRuntime::new(ProcessConfig::default()).expect("process backend available");
    let root = tempfile::tempdir().expect("tempdir");
    let ws = root.path().join("ws");
    std::fs::create_dir(&ws).expect("ws");
    let spec = SandboxSpec {
        workspace: Some(ws.clone()),
        ..SandboxSpec::default()
    };
    (rt, root, ws, spec)
}

/// Links whose target is absolute, climbs with `..` (directly or through a link to `.`),
/// or sits deep in a directory, made by the program and by a process it left running, are
/// gone from the host workspace once the sandbox ends; links that only descend stay, and
/// the run's stderr says what was removed.
#[tokio::test]
async fn symlinks_leaving_the_workspace_do_not_outlive_the_sandbox() {
    let (rt, _root, ws, spec) = with_a_workspace();
    let mut sb = rt.create(&spec).await.expect("create");
    let program = r#"
import os, subprocess, sys
os.chdir('/workspace')
os.makedirs('sub/deep/er')
open('sub/file', 'w').write('x')
os.symlink('/etc/passwd', 'abs')
os.symlink('../outside', 'up')
os.symlink('.', 'dot')
os.symlink('dot/../outside', 'through_dot')
os.symlink('../../../..', 'sub/deep/er/climb')
os.symlink('sub/file', 'good')
os.symlink('file', 'sub/good2')
# Left running: makes one more after this exec has returned.
subprocess.Popen([sys.executable, '-c', "import os, time; time.sleep(1.5); os.symlink('/root', '/workspace/late')"], start_new_session=True)
print('made')
"#;
    let out = sb
        .exec(
            ExecRequest::new(program).with_timeout(Duration::from_secs(30)),
            Arc::new(NoTools),
        )
        .await
        .expect("exec");
    assert_eq!(out.status, ExecStatus::Ok, "{}", out.stderr.text());
    assert_eq!(out.stdout.text(), "made\n");
    let note = out.stderr.text();
    assert!(
        note.contains("removed 4 symlink(s) from the workspace"),
        "the caller is told: {note}"
    );
    let after_exec = links_under(&ws);
    assert_eq!(
        after_exec,
        [
            (PathBuf::from("dot"), PathBuf::from(".")),
            (PathBuf::from("good"), PathBuf::from("sub/file")),
            (PathBuf::from("sub/good2"), PathBuf::from("file")),
        ],
        "only links that descend are left once the exec returns"
    );
    // Let the left-behind process make its link, then end the sandbox.
    wait_for_link(&ws.join("late"), 100).await;
    sb.shutdown().await.expect("shutdown");
    assert_eq!(
        links_under(&ws),
        after_exec,
        "a link made after the exec returned is gone once the sandbox is"
    );
}

/// A process an exec leaves running may write the workspace until its time limit, so the
/// sandbox keeps the workspace until it ends: another sandbox waits for it (and is refused
/// after its own time limit, with the workspace named) instead of sharing it.
#[tokio::test]
async fn a_sandbox_keeps_its_workspace_until_its_processes_are_gone() {
    let (rt, _root, ws, spec) = with_a_workspace();
    let mut a = rt.create(&spec).await.expect("create a");
    let mut b = rt.create(&spec).await.expect("create b");
    let out = a
        .exec(
            ExecRequest::new(
                "import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', \"import time\\nwhile True:\\n    open('/workspace/a', 'a').write('a')\\n    time.sleep(0.05)\"], start_new_session=True)\nprint('left running')",
            )
            .with_timeout(Duration::from_secs(60)),
            Arc::new(NoTools),
        )
        .await
        .expect("exec a");
    assert_eq!(out.stdout.text(), "left running\n", "{}", out.stderr.text());
    let refused = b
        .exec(
            ExecRequest::new("open('/workspace/b', 'w').write('b')")
                .with_timeout(Duration::from_secs(2)),
            Arc::new(NoTools),
        )
        .await;
    assert!(
        matches!(refused, Err(Error::WorkspaceBusy { .. })),
        "b ran while a's process could still write the workspace: {refused:?}"
    );
    assert!(!ws.join("b").exists(), "b's program ran");
    a.shutdown().await.expect("shutdown a");
    let grown = std::fs::metadata(ws.join("a")).expect("a's file").len();
    let out = b
        .exec(
            ExecRequest::new("open('/workspace/b', 'w').write('b')\nprint('ok')")
                .with_timeout(Duration::from_secs(30)),
            Arc::new(NoTools),
        )
        .await
        .expect("b runs once a is gone");
    assert_eq!(out.stdout.text(), "ok\n", "{}", out.stderr.text());
    assert_eq!(
        std::fs::metadata(ws.join("a")).expect("a's file").len(),
        grown,
        "a's process wrote on after a ended"
    );
    b.shutdown().await.expect("shutdown b");
}

/// A sandbox dropped without `shutdown` (a caller that panicked, a cancelled task) still
/// sweeps: a link its left-running process made after the exec is gone once it is dropped.
#[tokio::test]
async fn a_dropped_sandbox_leaves_no_escaping_symlink() {
    let (rt, _root, ws, spec) = with_a_workspace();
    let mut sb = rt.create(&spec).await.expect("create");
    let out = sb
        .exec(
            ExecRequest::new(
                "import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', \"import os, time; time.sleep(0.5); os.symlink('/etc', '/workspace/late')\"], start_new_session=True)",
            )
            .with_timeout(Duration::from_secs(30)),
            Arc::new(NoTools),
        )
        .await
        .expect("exec");
    assert_eq!(out.status, ExecStatus::Ok, "{}", out.stderr.text());
    wait_for_link(&ws.join("late"), 200).await;
    drop(sb);
    assert_eq!(
        links_under(&ws),
        [],
        "the link outlived the dropped sandbox"
    );
}
