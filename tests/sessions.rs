//! Sessions, named workspaces and the kernel's pool, on real sandboxes.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use agentkernel_testkit::run_with_stdin;

use std::process::Command;
use std::time::Duration;

use agentkernel::{Error, ExecStatus, Kernel, LimitKind, PoolConfig};

fn kernel_in(data: &std::path::Path) -> Kernel {
    Kernel::builder().data_dir(data).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_keeps_globals_and_its_workspace_outlives_the_kernel() {
    let data = tempfile::tempdir().unwrap();
    {
        let kernel = kernel_in(data.path());
        let s = kernel.session("conv-1").await.unwrap();
        s.exec("x = 41\nopen('/workspace/notes.txt', 'w').write('remember me')")
            .await
            .unwrap();
        let out = kernel
            .session("conv-1")
            .await
            .unwrap()
            .exec("print(x + 1)")
            .await
            .unwrap();
        assert_eq!(out.stdout.text(), "42\n");
        assert_eq!(kernel.sessions().len(), 1);
        assert_eq!(kernel.sessions()[0].execs, 2);
        // Another session has its own globals and workspace.
        let other = kernel.session("conv-2").await.unwrap();
        let out = other
            .exec("import os\nprint('x' in globals(), os.listdir('/workspace'))")
            .await
            .unwrap();
        assert_eq!(out.stdout.text(), "False []\n");
    }
    // A new kernel (a restart) on the same data dir sees the files, not the globals.
    let kernel = kernel_in(data.path());
    let out = kernel
        .session("conv-1")
        .await
        .unwrap()
        .exec("print(open('/workspace/notes.txt').read(), 'x' in globals())")
        .await
        .unwrap();
    assert_eq!(out.stdout.text(), "remember me False\n");
    let names: Vec<String> = kernel
        .workspaces()
        .list()
        .unwrap()
        .into_iter()
        .map(|w| w.name)
        .collect();
    assert_eq!(names, ["conv-1", "conv-2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_is_closed_and_restarts_on_the_same_files() {
    let data = tempfile::tempdir().unwrap();
    let kernel = Kernel::builder()
        .data_dir(data.path())
        .session_idle_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let s = kernel.session("idle").await.unwrap();
    s.exec("y = 1\nopen('/workspace/f', 'w').write('kept')")
        .await
        .unwrap();
    let mut closed = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if kernel.sessions().is_empty() {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "the idle session was not closed: {:?}",
        kernel.sessions()
    );
    // The old handle says so; a new session of that name starts fresh on the same files.
    let err = s.exec("print(y)").await.unwrap_err();
    assert!(matches!(err, Error::SandboxLost { .. }), "{err}");
    let out = kernel
        .session("idle")
        .await
        .unwrap()
        .exec("print('y' in globals(), open('/workspace/f').read())")
        .await
        .unwrap();
    assert_eq!(out.stdout.text(), "False kept\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_quota_stops_further_runs_until_files_are_removed() {
    let data = tempfile::tempdir().unwrap();
    let kernel = Kernel::builder()
        .data_dir(data.path())
        .workspace_quota(256 * 1024)
        .build()
        .unwrap();
    let s = kernel.session("quota").await.unwrap();
    // One file larger than the quota is cut by the file-size limit.
    let out = s
        .exec("open('/workspace/huge', 'wb').write(b'x' * (1 << 20))")
        .await
        .unwrap();
    assert!(
        matches!(
            &out.status,
            ExecStatus::Killed {
                limit: LimitKind::FileSize
            } | ExecStatus::Exception { .. }
        ),
        "{:?}",
        out.status
    );
    let ws = kernel.workspaces().get("quota").unwrap().unwrap();
    let written = std::fs::metadata(ws.path.join("huge"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(
        written <= 256 * 1024,
        "a single file grew past the quota: {written}"
    );
    // Several files under the cap each can still pass the quota in one run...
    let s = kernel.session("quota").await.unwrap();
    let _ = s.reset().await;
    s.exec("import os\nos.remove('/workspace/huge') if os.path.exists('/workspace/huge') else None\nfor i in range(3):\n    open(f'/workspace/part{i}', 'wb').write(b'y' * (200 * 1024))").await.unwrap();
    // ...after which runs are refused with a clear error, and no file is lost.
    let err = s.exec("print(1)").await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::LimitExceeded {
                limit: LimitKind::Disk,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("over its quota"), "{err}");
    for i in 0..3 {
        std::fs::remove_file(ws.path.join(format!("part{i}"))).unwrap();
    }
    assert_eq!(
        s.exec("print('ok again')").await.unwrap().stdout.text(),
        "ok again\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_and_missing_snapshots_say_what_to_do() {
    let data = tempfile::tempdir().unwrap();
    let kernel = kernel_in(data.path());
    for bad in ["../escape", "", "a/b", ".hidden"] {
        let err = kernel.session(bad).await.unwrap_err();
        assert!(matches!(err, Error::InvalidRequest { .. }), "{bad}: {err}");
    }
    let s = kernel.session("snap").await.unwrap();
    let err = s.save().await.unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    let snapshot = agentkernel::core::Snapshot {
        backend: "process".into(),
        data: vec![],
    };
    let err = kernel.resume_session("snap", &snapshot).await.unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_kernel_serves_runs_from_warm_sandboxes() {
    let kernel = Kernel::builder()
        .pool(PoolConfig {
            min_idle: 1,
            max_size: 2,
            ..PoolConfig::default()
        })
        .build()
        .unwrap();
    let mut warmed = false;
    for _ in 0..600 {
        if kernel.pool_stats().unwrap().idle >= 1 {
            warmed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(warmed, "{:?}", kernel.pool_stats());
    let out = kernel.execute("print('warm')").await.unwrap();
    assert_eq!(out.stdout.text(), "warm\n");
    let stats = kernel.pool_stats().unwrap();
    assert_eq!(stats.hits, 1, "{stats:?}");
}

#[test]
fn cli_named_workspaces_persist_across_runs() {
    let data = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_agentkernel");
    let run = |code: &str| {
        let mut cmd = Command::new(bin);
        cmd.args(["run", "--workspace", "proj", "-"])
            .env("AGENTKERNEL_DATA_DIR", data.path());
        run_with_stdin(cmd, code)
    };
    assert!(
        run("open('/workspace/a.txt', 'w').write('hello')")
            .status
            .success()
    );
    let out = run("print(open('/workspace/a.txt').read())");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = Command::new(bin)
        .args(["workspace", "list", "--json"])
        .env("AGENTKERNEL_DATA_DIR", data.path())
        .output()
        .unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(listed[0]["name"], "proj");
    assert_eq!(listed[0]["files"], 1);
    let refused = Command::new(bin)
        .args(["workspace", "delete", "proj"])
        .env("AGENTKERNEL_DATA_DIR", data.path())
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let deleted = Command::new(bin)
        .args(["workspace", "delete", "proj", "--yes"])
        .env("AGENTKERNEL_DATA_DIR", data.path())
        .output()
        .unwrap();
    assert!(deleted.status.success());
    assert!(!data.path().join("workspaces/proj").exists());
    let bad = run("print(1)");
    assert!(
        bad.status.success(),
        "a deleted workspace is recreated on use"
    );
    let out = Command::new(bin)
        .args(["run", "--workspace", "no good", "-"])
        .env("AGENTKERNEL_DATA_DIR", data.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid workspace name"));
}

/// `run --session` keeps globals across CLI invocations through a background session
/// server, which goes away once its sessions are closed.
#[test]
fn cli_sessions_keep_state_across_invocations() {
    let data = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_agentkernel");
    let run = |code: &str| {
        let mut cmd = Command::new(bin);
        cmd.args(["run", "--session", "chat", "-"])
            .env("AGENTKERNEL_DATA_DIR", data.path())
            .env("AGENTKERNEL_SERVE_IDLE_SECS", "1");
        run_with_stdin(cmd, code)
    };
    let first = run("x = 41\nopen('/workspace/kept', 'w').write('yes')");
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let second = run("print(x + 1)");
    assert_eq!(
        String::from_utf8_lossy(&second.stdout),
        "42\n",
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    // The last expression's value comes through the session server too.
    let mut cmd = Command::new(bin);
    cmd.args(["run", "--session", "chat", "--json", "-"])
        .env("AGENTKERNEL_DATA_DIR", data.path())
        .env("AGENTKERNEL_SERVE_IDLE_SECS", "1");
    let valued = run_with_stdin(cmd, "x");
    let v: serde_json::Value = serde_json::from_slice(&valued.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&valued.stderr));
    });
    assert_eq!(v["value"], serde_json::json!({"repr": "41", "json": 41}));
    let failing = run("raise KeyError('k')");
    assert_eq!(failing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&failing.stderr).contains("KeyError"));

    // Only this user can talk to the session server.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(data.path().join("agentkernel.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let list = Command::new(bin)
        .args(["session", "list", "--json"])
        .env("AGENTKERNEL_DATA_DIR", data.path())
        .output()
        .unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(listed[0]["name"], "chat");
    assert_eq!(listed[0]["execs"], 4);
    let close = Command::new(bin)
        .args(["session", "close", "chat"])
        .env("AGENTKERNEL_DATA_DIR", data.path())
        .output()
        .unwrap();
    assert!(close.status.success());
    // The workspace outlives the session; the server exits once idle.
    assert_eq!(
        std::fs::read_to_string(data.path().join("workspaces/chat/kept")).unwrap(),
        "yes"
    );
    let socket = data.path().join("agentkernel.sock");
    let mut gone = false;
    for _ in 0..300 {
        if !socket.exists() {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(gone, "the idle session server did not exit");
}

/// On a backend that snapshots (monty), a session's state can be saved as plain bytes (here
/// through JSON, as a task store or a file would keep it) and resumed by another kernel.
#[cfg(feature = "monty")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monty_session_saved_in_one_kernel_resumes_in_another() {
    // The monty worker is the `agentkernel` binary itself (as when the CLI runs it).
    agentkernel_backend_monty::set_default_worker(agentkernel_backend_monty::WorkerCommand {
        executable: env!("CARGO_BIN_EXE_agentkernel").into(),
        args: vec![agentkernel_backend_monty::WORKER_ARG.into()],
    });
    let data = tempfile::tempdir().unwrap();
    let monty_kernel = || {
        Kernel::builder()
            .data_dir(data.path())
            .backend("monty")
            .build()
            .unwrap()
    };
    let saved = {
        let kernel = monty_kernel();
        let s = kernel.session("paused").await.unwrap();
        s.exec("x = 41\nnotes = {'step': 'fetched'}").await.unwrap();
        let snapshot = s.save().await.unwrap();
        assert_eq!(snapshot.backend, "monty");
        serde_json::to_vec(&snapshot).unwrap()
    };
    let kernel = monty_kernel();
    let snapshot: agentkernel::core::Snapshot = serde_json::from_slice(&saved).unwrap();
    let s = kernel.resume_session("paused", &snapshot).await.unwrap();
    let out = s.exec("print(x + 1, notes['step'])").await.unwrap();
    assert_eq!(out.stdout.text(), "42 fetched\n", "{:?}", out.status);
    // A snapshot of another backend is refused with a clear error, not misread.
    let foreign = agentkernel::core::Snapshot {
        backend: "process".into(),
        data: snapshot.data.clone(),
    };
    let err = kernel.resume_session("other", &foreign).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidRequest { .. } | Error::Unsupported { .. }
        ),
        "{err}"
    );
}

/// A session's exec that leaves processes behind (a `sleep` in its own session, a child
/// that ignores SIGTERM), run with `--timeout 3` as through the CLI: the host runs none of
/// them once the exec's time limit is over, while the session itself goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_background_processes_end_at_its_time_limit() {
    let data = tempfile::tempdir().unwrap();
    let kernel = kernel_in(data.path());
    let s = kernel.session("bg").await.unwrap();
    // `sleep` takes fractional seconds: the argument marks these processes on the host.
    let marker = format!("600.{}", std::process::id());
    let code = format!(
        r#"
import os, subprocess, sys, time
subprocess.Popen(["sleep", "{marker}"], start_new_session=True)
subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)", "{marker}"])
def running():
    n = 0
    for p in os.listdir("/proc"):
        try:
            if p.isdigit() and "{marker}" in open("/proc/%s/cmdline" % p).read():
                n += 1
        except OSError:
            pass
    return n
for _ in range(500):
    if running() == 2:
        break
    time.sleep(0.01)
print("running", running())
kept = 1
"#
    );
    let out = s
        .exec_request(agentkernel::ExecRequest::new(code).with_timeout(Duration::from_secs(3)))
        .await
        .unwrap();
    assert_eq!(out.stdout.text(), "running 2\n", "{}", out.stderr.text());
    let mut gone = false;
    for _ in 0..600 {
        if agentkernel::core::conformance::count_host_processes(&marker) == 0 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        gone,
        "a background process outlived its session exec's time limit"
    );
    let out = s.exec("print(kept)").await.unwrap();
    assert_eq!(out.stdout.text(), "1\n", "{}", out.stderr.text());
    kernel.close_session("bg").await.unwrap();
}

/// A session whose run a limit killed is not handed back dead: its next run starts a fresh
/// interpreter on the same workspace (the variables are gone, the files are kept) and says
/// so at the start of its stderr; the run after that is ordinary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_killed_by_a_limit_is_restarted_by_its_next_run() {
    let data = tempfile::tempdir().unwrap();
    let kernel = Kernel::builder()
        .data_dir(data.path())
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let s = kernel.session("killed").await.unwrap();
    s.exec("x = 1\nopen('/workspace/kept', 'w').write('kept')")
        .await
        .unwrap();
    let out = s.exec("while True: pass").await.unwrap();
    assert_eq!(
        out.status,
        ExecStatus::Killed {
            limit: LimitKind::WallTime
        }
    );
    let out = kernel
        .session("killed")
        .await
        .unwrap()
        .exec("print('x' in globals(), open('/workspace/kept').read())")
        .await
        .unwrap();
    assert_eq!(out.status, ExecStatus::Ok, "{}", out.stderr.text());
    assert_eq!(out.stdout.text(), "False kept\n");
    assert!(
        out.stderr
            .text()
            .contains("agentkernel: session \"killed\" was restarted"),
        "{}",
        out.stderr.text()
    );
    let out = s.exec("y = 2\nprint(y)").await.unwrap();
    assert_eq!(out.stdout.text(), "2\n");
    assert_eq!(
        out.stderr.text(),
        "",
        "only the first run after the kill says so"
    );
}

/// A kernel given a workspace directory runs its sessions there (not in a named workspace
/// of the session's name); `session_with_workspace` still picks a named one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernels_workspace_is_its_sessions_workspace() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kernel = Kernel::builder()
        .data_dir(data.path())
        .workspace(dir.path())
        .build()
        .unwrap();
    let out = kernel
        .session("s1")
        .await
        .unwrap()
        .exec("open('/workspace/from-session', 'w').write('here')")
        .await
        .unwrap();
    assert_eq!(out.status, ExecStatus::Ok, "{}", out.stderr.text());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("from-session")).unwrap(),
        "here"
    );
    assert!(kernel.workspaces().list().unwrap().is_empty());
    let named = kernel.session_with_workspace("s2", "other").await.unwrap();
    named
        .exec("open('/workspace/x', 'w').write('x')")
        .await
        .unwrap();
    assert!(!dir.path().join("x").exists());
}
