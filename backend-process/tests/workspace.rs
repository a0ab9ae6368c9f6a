//! The workspace after a process sandbox: what a program leaves there is untrusted input to
//! the host, what one run adds is capped, and no two sandboxes write it at once. Judged
//! from the host.
//!
//! By default (`ProcessConfig::workspace_layer`) a sandbox writes a capped layer over the
//! workspace that the host copies back (`layer.rs`); with it turned off (and where the
//! kernel cannot make the layer) it writes the host directory itself and a sweep removes
//! escaping symlinks: both are tested here.

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

/// A process runtime and a spec with a fresh workspace (the temp dir holding it, its path);
/// `live`: with [`ProcessConfig::workspace_layer`] turned off.
fn with_a_workspace(live: bool) -> (ProcessRuntime, tempfile::TempDir, PathBuf, SandboxSpec) {
    let rt = ProcessRuntime::new(ProcessConfig {
        workspace_layer: !live,
        ..ProcessConfig::default()
    })
    .expect("process backend available");
    let root = tempfile::tempdir().expect("tempdir");
    let ws = root.path().join("ws");
    std::fs::create_dir(&ws).expect("ws");
    let spec = SandboxSpec {
        workspace: Some(ws.clone()),
        ..SandboxSpec::default()
    };
    (rt, root, ws, spec)
}

/// A live workspace (no write layer): links whose target is absolute, climbs with `..`
/// (directly or through a link to `.`), or sits deep in a directory, made by the program
/// and by a process it left running, are gone from the host workspace once the sandbox
/// ends; links that only descend stay, and the run's stderr says what was removed.
#[tokio::test]
async fn symlinks_leaving_the_workspace_do_not_outlive_the_sandbox() {
    let (rt, _root, ws, spec) = with_a_workspace(true);
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
    for live in [false, true] {
        a_sandbox_keeps_its_workspace_until_its_processes_are_gone_on(live).await;
    }
}

async fn a_sandbox_keeps_its_workspace_until_its_processes_are_gone_on(live: bool) {
    let (rt, _root, ws, spec) = with_a_workspace(live);
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

/// A live workspace: a sandbox dropped without `shutdown` (a caller that panicked, a
/// cancelled task) still sweeps: a link its left-running process made after the exec is
/// gone once it is dropped.
#[tokio::test]
async fn a_dropped_sandbox_leaves_no_escaping_symlink() {
    let (rt, _root, ws, spec) = with_a_workspace(true);
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

/// Runs `code` in `sb` with a 60 s limit and `tools`.
async fn run_with(
    sb: &mut Box<dyn agentkernel_core::Sandbox>,
    code: &str,
    tools: Arc<dyn agentkernel_core::ToolHost>,
) -> agentkernel_core::ExecOutcome {
    sb.exec(
        ExecRequest::new(code).with_timeout(Duration::from_secs(60)),
        tools,
    )
    .await
    .expect("exec")
}

/// Every entry under `dir` (not following links), as paths below it.
fn entries_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("list").flatten() {
            found.push(entry.path().strip_prefix(dir).expect("below").to_path_buf());
            if entry.file_type().expect("type").is_dir() {
                todo.push(entry.path());
            }
        }
    }
    found.sort();
    found
}

/// With the write layer (the default), what a program creates, changes and deletes reaches
/// the host workspace when its exec ends: deletions, a directory removed and made anew
/// (only its new content is left), appends to a host file, nested directories, descending
/// links, sparse files (as sparse), modes without group/other write; a link leaving the
/// workspace and a FIFO never reach the host, and stderr says so. A second exec's
/// deletion reaches the host too.
#[tokio::test]
async fn workspace_changes_reach_the_host_when_each_exec_ends() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (rt, _root, ws, spec) = with_a_workspace(false);
    std::fs::write(ws.join("a"), "hi").unwrap();
    std::fs::create_dir_all(ws.join("sub")).unwrap();
    std::fs::write(ws.join("sub/s"), "s").unwrap();
    std::fs::create_dir_all(ws.join("keep")).unwrap();
    std::fs::write(ws.join("keep/k"), "k").unwrap();
    std::fs::write(ws.join("mod"), "old").unwrap();
    std::fs::write(ws.join("perm"), "p").unwrap();
    std::fs::set_permissions(ws.join("perm"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut sb = rt.create(&spec).await.expect("create");
    let out = run_with(
        &mut sb,
        r#"
import os, shutil
os.chdir('/workspace')
print(open('a').read())
open('b', 'w').write('new')
os.chmod('b', 0o777)
os.remove('a')
shutil.rmtree('sub'); os.mkdir('sub'); open('sub/t', 'w').write('t')
open('mod', 'a').write('+more')
os.chmod('perm', 0o700)
os.makedirs('d1/d2/d3'); open('d1/d2/d3/deep', 'w').write('deep')
os.symlink('b', 'good'); os.symlink('/etc/passwd', 'abs'); os.symlink('../x', 'up')
os.mkfifo('fifo')
with open('sparse', 'wb') as f:
    f.seek(8 << 20); f.write(b'x')
print('done')
"#,
        Arc::new(NoTools),
    )
    .await;
    assert_eq!(out.status, ExecStatus::Ok, "{}", out.stderr.text());
    assert_eq!(out.stdout.text(), "hi\ndone\n");
    let note = out.stderr.text();
    assert!(
        note.contains("was not copied to the host") && note.contains("2 more"),
        "the caller is told what did not reach the host: {note}"
    );
    // Judged on the host, before the sandbox ends.
    assert!(!ws.join("a").exists(), "a deletion reached the host");
    assert_eq!(std::fs::read_to_string(ws.join("b")).unwrap(), "new");
    assert_eq!(
        std::fs::metadata(ws.join("b"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o755,
        "no group/other write on the host"
    );
    assert_eq!(
        entries_under(&ws.join("sub")),
        [PathBuf::from("t")],
        "a directory made anew has only its new content"
    );
    assert_eq!(std::fs::read_to_string(ws.join("keep/k")).unwrap(), "k");
    assert_eq!(std::fs::read_to_string(ws.join("mod")).unwrap(), "old+more");
    assert_eq!(
        std::fs::metadata(ws.join("perm"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700,
        "a mode change alone reached the host"
    );
    assert_eq!(
        std::fs::read_to_string(ws.join("d1/d2/d3/deep")).unwrap(),
        "deep"
    );
    assert_eq!(
        links_under(&ws),
        [(PathBuf::from("good"), PathBuf::from("b"))],
        "only the descending link reached the host"
    );
    assert!(
        ws.join("fifo").symlink_metadata().is_err(),
        "a FIFO reached the host"
    );
    let sparse = std::fs::metadata(ws.join("sparse")).unwrap();
    assert_eq!(sparse.len(), (8 << 20) + 1);
    assert!(
        sparse.blocks() * 512 < 1 << 20,
        "the sparse file was filled in: {} blocks",
        sparse.blocks()
    );
    let out = run_with(
        &mut sb,
        "import os\nos.remove('/workspace/b')\nprint(sorted(os.listdir('/workspace')))",
        Arc::new(NoTools),
    )
    .await;
    assert_eq!(out.status, ExecStatus::Ok, "{}", out.stderr.text());
    assert!(
        !ws.join("b").exists(),
        "the second exec's deletion reached the host"
    );
    sb.shutdown().await.expect("shutdown");
}

/// One run cannot fill the host's inodes through its workspace: past
/// `WORKSPACE_ENTRIES_PER_RUN` new files it gets `ENOSPC` (errno 28), the host workspace
/// holds no more than that many entries, and stderr names the cap.
#[tokio::test]
async fn one_run_creates_a_bounded_number_of_workspace_entries() {
    let (rt, _root, ws, spec) = with_a_workspace(false);
    let mut sb = rt.create(&spec).await.expect("create");
    let out = run_with(
        &mut sb,
        r#"
import os
os.mkdir('/workspace/many')
n = 0
try:
    while n < 50000:
        open(f'/workspace/many/f{n}', 'w').close()
        n += 1
    print(n, 'no error')
except OSError as e:
    print(n, e.errno)
"#,
        Arc::new(NoTools),
    )
    .await;
    assert_eq!(out.status, ExecStatus::Ok, "{}", out.stderr.text());
    let cap = agentkernel_core::WORKSPACE_ENTRIES_PER_RUN as usize;
    let printed = out.stdout.text();
    let (made, errno) = printed.trim().split_once(' ').expect("two fields");
    let made: usize = made.parse().expect("a count");
    assert_eq!(errno, "28", "refused with ENOSPC: {printed}");
    assert!(
        made <= cap && made + 20 >= cap,
        "{made} files made, the cap is {cap}"
    );
    let on_host = entries_under(&ws).len();
    assert!(on_host <= cap, "the host workspace holds {on_host} entries");
    assert_eq!(on_host, made + 1, "every file made reached the host");
    assert!(
        out.stderr.text().contains("write cap is reached (files)"),
        "{}",
        out.stderr.text()
    );
    sb.shutdown().await.expect("shutdown");
}

/// One run cannot fill the host's disk through its workspace: with a 1 MiB file-size limit
/// it may add `WORKSPACE_FILE_SIZES_PER_RUN` MiB; writing 1 MiB files stops with `ENOSPC`
/// there, and the host workspace holds no more.
#[tokio::test]
async fn one_run_writes_a_bounded_number_of_workspace_bytes() {
    let (rt, _root, ws, mut spec) = with_a_workspace(false);
    spec.limits.file_size_bytes = Some(1 << 20);
    let cap = spec.limits.workspace_growth_bytes();
    assert_eq!(cap, agentkernel_core::WORKSPACE_FILE_SIZES_PER_RUN << 20);
    let mut sb = rt.create(&spec).await.expect("create");
    let out = run_with(
        &mut sb,
        r#"
n = 0
try:
    while n < 100:
        with open(f'/workspace/f{n}', 'wb') as f:
            f.write(b'x' * (1 << 20))
        n += 1
    print(n, 'no error')
except OSError as e:
    print(n, e.errno)
"#,
        Arc::new(NoTools),
    )
    .await;
    assert_eq!(out.status, ExecStatus::Ok, "{}", out.stderr.text());
    let printed = out.stdout.text();
    assert!(
        printed.trim().ends_with(" 28"),
        "refused with ENOSPC: {printed}"
    );
    let total: u64 = entries_under(&ws)
        .iter()
        .map(|p| std::fs::metadata(ws.join(p)).unwrap().len())
        .sum();
    assert!(
        total <= cap,
        "the host workspace holds {total} bytes, the cap is {cap}"
    );
    assert!(
        total >= cap - (2 << 20),
        "only {total} bytes reached the host"
    );
    sb.shutdown().await.expect("shutdown");
}

/// A host tool given a workspace path finds what the program wrote just before the call
/// (the layer is copied to the host before each tool call).
#[tokio::test]
async fn a_host_tool_sees_the_files_the_program_wrote() {
    let (rt, _root, ws, spec) = with_a_workspace(false);
    let dir = ws.clone();
    let tools = agentkernel_core::FnTools::new().with(
        "host.read",
        "Reads a workspace file on the host.",
        serde_json::json!({"type": "object", "properties": {"name": {"type": "string"}}}),
        move |args| {
            let path = dir.join(args["name"].as_str().unwrap_or(""));
            async move {
                Ok(serde_json::json!(
                    std::fs::read_to_string(path).unwrap_or_else(|e| format!("missing: {e}"))
                ))
            }
        },
    );
    let mut sb = rt.create(&spec).await.expect("create");
    let out = run_with(
        &mut sb,
        "import _agentkernel as ak\nopen('/workspace/data.csv', 'w').write('a,b\\n1,2\\n')\nprint(ak.call_tool('host.read', name='data.csv'))",
        Arc::new(tools),
    )
    .await;
    assert_eq!(out.status, ExecStatus::Ok, "{}", out.stderr.text());
    assert_eq!(out.stdout.text(), "a,b\n1,2\n\n");
    sb.shutdown().await.expect("shutdown");
}

/// What a process left running by the last exec writes reaches the host when the sandbox
/// ends, by `shutdown` or by a plain drop; a link leaving the workspace it makes does not.
#[tokio::test]
async fn what_a_left_running_process_writes_reaches_the_host_when_the_sandbox_ends() {
    for shutdown in [true, false] {
        let (rt, _root, ws, spec) = with_a_workspace(false);
        let mut sb = rt.create(&spec).await.expect("create");
        let out = run_with(
            &mut sb,
            "import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', \"import os; open('/workspace/late', 'w').write('late'); os.symlink('/etc', '/workspace/late-link')\"], start_new_session=True)",
            Arc::new(NoTools),
        )
        .await;
        assert_eq!(out.status, ExecStatus::Ok, "{}", out.stderr.text());
        // The process writes at once; give it ample time (it is not visible on the host
        // before the sandbox ends, so there is nothing to wait for).
        tokio::time::sleep(Duration::from_secs(2)).await;
        if shutdown {
            sb.shutdown().await.expect("shutdown");
        } else {
            drop(sb);
        }
        assert_eq!(
            std::fs::read_to_string(ws.join("late")).ok().as_deref(),
            Some("late"),
            "the late write reached the host (shutdown: {shutdown})"
        );
        assert_eq!(links_under(&ws), [], "the escaping link reached the host");
    }
}

/// A sandbox whose layer holds writes is not reset in place (its caps would be spent):
/// after a reset a program can again add nearly the whole cap.
#[tokio::test]
async fn a_reset_brings_a_fresh_write_layer() {
    let (rt, _root, ws, spec) = with_a_workspace(false);
    let mut sb = rt.create(&spec).await.expect("create");
    let fill = |dir: &str| {
        format!(
            "import os\nos.mkdir('/workspace/{dir}')\nfor i in range(9000):\n    open(f'/workspace/{dir}/f{{i}}', 'w').close()\nprint('ok')"
        )
    };
    let out = run_with(&mut sb, &fill("x"), Arc::new(NoTools)).await;
    assert_eq!(out.stdout.text(), "ok\n", "{}", out.stderr.text());
    sb.reset().await.expect("reset");
    let out = run_with(&mut sb, &fill("y"), Arc::new(NoTools)).await;
    assert_eq!(
        out.stdout.text(),
        "ok\n",
        "after the reset: {}",
        out.stderr.text()
    );
    assert_eq!(entries_under(&ws).len(), 2 + 2 * 9000);
    sb.shutdown().await.expect("shutdown");
}

/// A tool's failure with `e`'s message.
fn failed(e: std::io::Error) -> agentkernel_core::ToolError {
    agentkernel_core::ToolError::new(agentkernel_core::ToolErrorKind::Failed, e.to_string())
}

/// Tools for the copy-back tests: `host.sync` does nothing (the layer is copied to the host
/// before it runs), `host.append` appends to a host workspace file, `host.remove` deletes
/// one.
fn host_tools(ws: &Path) -> agentkernel_core::FnTools {
    let schema = serde_json::json!({"type": "object", "properties": {"name": {"type": "string"}}});
    let (append_dir, remove_dir) = (ws.to_path_buf(), ws.to_path_buf());
    agentkernel_core::FnTools::new()
        .with("host.sync", "Does nothing.", schema.clone(), |_| async {
            Ok(serde_json::json!(null))
        })
        .with(
            "host.append",
            "Appends `+tool` to a workspace file on the host.",
            schema.clone(),
            move |args| {
                let path = append_dir.join(args["name"].as_str().unwrap_or(""));
                async move {
                    use std::io::Write;
                    let mut f = std::fs::OpenOptions::new()
                        .append(true)
                        .open(&path)
                        .map_err(failed)?;
                    f.write_all(b"+tool").map_err(failed)?;
                    Ok(serde_json::json!(null))
                }
            },
        )
        .with(
            "host.remove",
            "Deletes a workspace file on the host.",
            schema,
            move |args| {
                let path = remove_dir.join(args["name"].as_str().unwrap_or(""));
                async move {
                    std::fs::remove_file(path).map_err(failed)?;
                    Ok(serde_json::json!(null))
                }
            },
        )
}

/// Renaming a directory does not leave its old copy on the host: in a directory the
/// program made (where an overlay records no whiteout for the old name), four rounds of a
/// directory of 3,000 files copied out, renamed, copied out again and deleted leave the host
/// with the program's view: an empty directory.
#[tokio::test]
async fn a_renamed_directory_leaves_no_copy_behind() {
    let (rt, _root, ws, spec) = with_a_workspace(false);
    let mut sb = rt.create(&spec).await.expect("create");
    let out = run_with(
        &mut sb,
        r#"
import os, shutil, _agentkernel as ak
os.makedirs('/workspace/P')
os.chdir('/workspace/P')
for r in range(4):
    os.makedirs(f'd{r}/s')
    for i in range(3000):
        open(f'd{r}/s/f{i}', 'w').close()
    ak.call_tool('host.sync')
    os.rename(f'd{r}', f'e{r}')
    ak.call_tool('host.sync')
    shutil.rmtree(f'e{r}')
    ak.call_tool('host.sync')
print(os.listdir('.'))
"#,
        Arc::new(host_tools(&ws)),
    )
    .await;
    assert_eq!(out.stdout.text(), "[]\n", "{}", out.stderr.text());
    let left = entries_under(&ws);
    assert!(
        left == [PathBuf::from("P")],
        "old copies were left on the host: {} entries, e.g. {:?}",
        left.len(),
        &left[..left.len().min(5)]
    );
    sb.shutdown().await.expect("shutdown");
}

/// A host tool that puts a file where a directory the program made (and no longer
/// changes) was keeps its file: the next copy does not put the directory back over it.
#[tokio::test]
async fn a_host_tools_file_in_place_of_a_directory_is_kept() {
    let (rt, _root, ws, spec) = with_a_workspace(false);
    let dir = ws.clone();
    let tools = host_tools(&ws).with(
        "host.replace",
        "Replaces workspace directory `name` with a file.",
        serde_json::json!({"type": "object", "properties": {"name": {"type": "string"}}}),
        move |args| {
            let path = dir.join(args["name"].as_str().unwrap_or(""));
            async move {
                std::fs::remove_dir_all(&path).map_err(failed)?;
                std::fs::write(&path, "the tool's").map_err(failed)?;
                Ok(serde_json::json!(null))
            }
        },
    );
    let mut sb = rt.create(&spec).await.expect("create");
    let out = run_with(
        &mut sb,
        "import os, _agentkernel as ak\nos.makedirs('/workspace/d')\nopen('/workspace/d/f', 'w').write('x')\nak.call_tool('host.replace', name='d')\nopen('/workspace/other', 'w').write('y')\nprint('ok')",
        Arc::new(tools),
    )
    .await;
    assert_eq!(out.stdout.text(), "ok\n", "{}", out.stderr.text());
    sb.shutdown().await.expect("shutdown");
    assert_eq!(std::fs::read_to_string(ws.join("d")).unwrap(), "the tool's");
    assert_eq!(std::fs::read_to_string(ws.join("other")).unwrap(), "y");
}

/// A host tool's change to a workspace file is not undone by the copy-back: the program
/// writes two files, a tool appends to one and deletes the other on the host, and once the
/// exec ends (and again when the sandbox ends) the host still has the tool's version.
#[tokio::test]
async fn a_host_tools_changes_survive_the_copy_back() {
    let (rt, _root, ws, spec) = with_a_workspace(false);
    let mut sb = rt.create(&spec).await.expect("create");
    let out = run_with(
        &mut sb,
        "import _agentkernel as ak\nopen('/workspace/a', 'w').write('prog')\nopen('/workspace/b', 'w').write('prog')\nak.call_tool('host.append', name='a')\nak.call_tool('host.remove', name='b')\nprint('ok')",
        Arc::new(host_tools(&ws)),
    )
    .await;
    assert_eq!(out.stdout.text(), "ok\n", "{}", out.stderr.text());
    assert_eq!(
        std::fs::read_to_string(ws.join("a")).unwrap(),
        "prog+tool",
        "the tool's append was overwritten at the exec's end"
    );
    assert!(
        !ws.join("b").exists(),
        "the file the tool deleted came back at the exec's end"
    );
    let out = run_with(&mut sb, "print('again')", Arc::new(NoTools)).await;
    assert_eq!(out.stdout.text(), "again\n");
    sb.shutdown().await.expect("shutdown");
    assert_eq!(std::fs::read_to_string(ws.join("a")).unwrap(), "prog+tool");
    assert!(!ws.join("b").exists());
}

/// Hard links do not multiply a run's bytes on the host: a 1 MiB file with 300 names (the
/// byte cap is 4 MiB) reaches the host as one file with 300 names, whose blocks fit the cap.
#[tokio::test]
async fn hard_links_are_not_copied_once_per_name() {
    use std::os::unix::fs::MetadataExt;
    let (rt, _root, ws, mut spec) = with_a_workspace(false);
    spec.limits.file_size_bytes = Some(1 << 20);
    let cap = spec.limits.workspace_growth_bytes();
    let mut sb = rt.create(&spec).await.expect("create");
    let out = run_with(
        &mut sb,
        "import os\nos.mkdir('/workspace/d')\nopen('/workspace/big', 'wb').write(os.urandom(1 << 20))\nfor i in range(300):\n    os.link('/workspace/big', f'/workspace/d/l{i}')\nprint('ok')",
        Arc::new(NoTools),
    )
    .await;
    assert_eq!(out.stdout.text(), "ok\n", "{}", out.stderr.text());
    let mut inodes = std::collections::HashMap::new();
    for p in entries_under(&ws) {
        let meta = std::fs::symlink_metadata(ws.join(&p)).unwrap();
        if meta.is_file() {
            inodes.insert(meta.ino(), meta.blocks() * 512);
        }
    }
    let bytes: u64 = inodes.values().sum();
    assert!(
        bytes <= cap,
        "the host holds {bytes} bytes in {} files for a {cap}-byte cap",
        inodes.len()
    );
    assert_eq!(std::fs::metadata(ws.join("d/l299")).unwrap().len(), 1 << 20);
    assert_eq!(
        std::fs::metadata(ws.join("big")).unwrap().nlink(),
        301,
        "the names are links to one file on the host"
    );
    sb.shutdown().await.expect("shutdown");
}

/// Copying files out and deleting them does not reset the cap: in a directory the program
/// made (where an overlay records no deletion), four rounds of 5,000 files, each copied to
/// the host by a tool call and then deleted, leave the host with no more than the cap (and
/// with what the program left: nothing).
#[tokio::test]
async fn files_copied_out_and_deleted_do_not_reset_the_cap() {
    let (rt, _root, ws, spec) = with_a_workspace(false);
    let mut sb = rt.create(&spec).await.expect("create");
    let out = run_with(
        &mut sb,
        r#"
import os, _agentkernel as ak
os.mkdir('/workspace/d')
for r in range(4):
    for i in range(5000):
        open(f'/workspace/d/r{r}-{i}', 'w').close()
    ak.call_tool('host.sync')
    for i in range(5000):
        os.remove(f'/workspace/d/r{r}-{i}')
    ak.call_tool('host.sync')
print(len(os.listdir('/workspace/d')))
"#,
        Arc::new(host_tools(&ws)),
    )
    .await;
    assert_eq!(out.stdout.text(), "0\n", "{}", out.stderr.text());
    let on_host = entries_under(&ws);
    assert!(
        on_host.len() <= agentkernel_core::WORKSPACE_ENTRIES_PER_RUN as usize,
        "the host workspace holds {} entries",
        on_host.len()
    );
    assert_eq!(on_host, [PathBuf::from("d")], "deletions reached the host");
    sb.shutdown().await.expect("shutdown");
}

/// A huge sparse file is copied by its data, not its size: 64 GiB apparent with 1 byte of
/// data reaches the host as sparse (a copy reading every byte would not finish in the
/// test's time).
#[tokio::test]
async fn a_huge_sparse_file_is_copied_by_its_data() {
    use std::os::unix::fs::MetadataExt;
    let (rt, _root, ws, mut spec) = with_a_workspace(false);
    spec.limits.file_size_bytes = None;
    let mut sb = rt.create(&spec).await.expect("create");
    let out = run_with(
        &mut sb,
        "f = open('/workspace/sparse', 'wb')\nf.seek(64 << 30)\nf.write(b'x')\nf.close()\nprint('ok')",
        Arc::new(NoTools),
    )
    .await;
    assert_eq!(out.stdout.text(), "ok\n", "{}", out.stderr.text());
    let meta = std::fs::metadata(ws.join("sparse")).unwrap();
    assert_eq!(meta.len(), (64 << 30) + 1);
    assert!(meta.blocks() * 512 < 1 << 20, "{} blocks", meta.blocks());
    sb.shutdown().await.expect("shutdown");
}

/// A directory the program only writes into keeps the host's mode (a group-writable
/// directory stays group-writable); one it chmods gets the program's mode.
#[tokio::test]
async fn a_directory_keeps_its_host_mode_unless_the_program_changes_it() {
    use std::os::unix::fs::PermissionsExt;
    let (rt, _root, ws, spec) = with_a_workspace(false);
    for d in ["shared", "mine"] {
        std::fs::create_dir(ws.join(d)).unwrap();
        std::fs::set_permissions(ws.join(d), std::fs::Permissions::from_mode(0o775)).unwrap();
    }
    let mut sb = rt.create(&spec).await.expect("create");
    let out = run_with(
        &mut sb,
        "import os\nopen('/workspace/shared/f', 'w').write('x')\nos.chmod('/workspace/mine', 0o700)\nprint('ok')",
        Arc::new(NoTools),
    )
    .await;
    assert_eq!(out.stdout.text(), "ok\n", "{}", out.stderr.text());
    let mode = |d: &str| std::fs::metadata(ws.join(d)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(std::fs::read_to_string(ws.join("shared/f")).unwrap(), "x");
    assert_eq!(mode("shared"), 0o775, "the host's mode was changed");
    assert_eq!(
        mode("mine"),
        0o700,
        "the program's chmod did not reach the host"
    );
    sb.shutdown().await.expect("shutdown");
}

/// Unmounts a test's mount when dropped (also when the test fails).
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// One entry the host cannot write does not lose the rest: the program writes five files,
/// then a file that is a mount point on the host (a bind mount: nothing can be renamed over
/// it), then five more; the mount point is named in stderr and keeps its content, and the
/// ten others reach the host (whatever order the layer lists them in). Needs root and
/// `mount` (skipped, with the reason printed, otherwise).
#[tokio::test]
async fn one_entry_that_cannot_be_copied_does_not_lose_the_rest() {
    let (rt, _root, ws, spec) = with_a_workspace(false);
    let pinned = ws.join("pinned");
    std::fs::write(&pinned, "old").unwrap();
    let bound = std::process::Command::new("mount")
        .arg("--bind")
        .arg(&pinned)
        .arg(&pinned)
        .status()
        .is_ok_and(|s| s.success());
    if !bound {
        println!("SKIPPED: mount --bind failed here (it needs root)");
        return;
    }
    let _unmount = Mounted(pinned.clone());
    let mut sb = rt.create(&spec).await.expect("create");
    let out = run_with(
        &mut sb,
        "for i in range(5):\n    open(f'/workspace/a{i}', 'w').write('a')\nopen('/workspace/pinned', 'a').write('+new')\nfor i in range(5):\n    open(f'/workspace/b{i}', 'w').write('b')\nprint('ok')",
        Arc::new(NoTools),
    )
    .await;
    sb.shutdown().await.expect("shutdown");
    assert_eq!(out.stdout.text(), "ok\n", "{}", out.stderr.text());
    for name in ["a0", "a4", "b0", "b4"] {
        assert!(ws.join(name).exists(), "{name} did not reach the host");
    }
    assert_eq!(entries_under(&ws).len(), 11);
    assert_eq!(std::fs::read_to_string(&pinned).unwrap(), "old");
    let note = out.stderr.text();
    assert!(
        note.contains("/workspace/pinned was not copied to the host"),
        "{note}"
    );
}
