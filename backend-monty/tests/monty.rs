//! Monty-specific behaviour in both modes: limits, crash isolation of worker mode, and
//! snapshots that resume in another process.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

#[global_allocator]
static ALLOC: monty_alloc::LimitedAllocator = monty_alloc::LimitedAllocator;

use std::sync::Arc;
use std::time::Duration;

use agentkernel_backend_monty::{MontyConfig, MontyMode, MontyRuntime, WorkerCommand};
use agentkernel_core::conformance::{count_host_processes_where, limited, test_spec};
use agentkernel_core::{
    ExecRequest, ExecStatus, LimitKind, NoTools, Runtime, Sandbox, SandboxSpec, Snapshot,
};

fn runtime(mode: MontyMode) -> MontyRuntime {
    MontyRuntime::new(MontyConfig {
        mode,
        worker: Some(WorkerCommand {
            executable: env!("CARGO_BIN_EXE_agentkernel-monty-worker").into(),
            args: Vec::new(),
        }),
    })
    .unwrap()
}

async fn run(sb: &mut Box<dyn Sandbox>, code: &str) -> agentkernel_core::ExecOutcome {
    sb.exec(ExecRequest::new(code), Arc::new(NoTools))
        .await
        .unwrap()
}

const MODES: [MontyMode; 2] = [MontyMode::Worker, MontyMode::InProcess];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_stop_programs_and_the_kernel_stays_up() {
    for mode in MODES {
        let rt = runtime(mode);
        let spec = limited(|l| l.memory_bytes = Some(64 << 20));
        let mut sb = rt.create(&spec).await.unwrap();
        let out = run(&mut sb, "print('before')\ns = 'a' * 10**10").await;
        assert_eq!(
            out.status,
            ExecStatus::Killed {
                limit: LimitKind::Memory
            },
            "{mode:?}"
        );
        assert_eq!(out.stdout.text(), "before\n");
        sb.reset().await.unwrap();
        let out = run(
            &mut sb,
            "x = []\nwhile True:\n    x.append('y' * 100000 + str(len(x)))",
        )
        .await;
        assert_eq!(
            out.status,
            ExecStatus::Killed {
                limit: LimitKind::Memory
            },
            "{mode:?}"
        );
        sb.shutdown().await.unwrap();

        let mut sb = rt.create(&test_spec()).await.unwrap();
        let out = sb
            .exec(
                ExecRequest::new("n = 0\nwhile True:\n    n += 1")
                    .with_timeout(Duration::from_secs(1)),
                Arc::new(NoTools),
            )
            .await
            .unwrap();
        assert_eq!(
            out.status,
            ExecStatus::Killed {
                limit: LimitKind::WallTime
            },
            "{mode:?}"
        );
        sb.reset().await.unwrap();
        assert_eq!(run(&mut sb, "print(6 * 7)").await.stdout.text(), "42\n");
        sb.shutdown().await.unwrap();
    }
}

/// A program whose syntax tree is deep enough to overflow Monty's native stack (200 000
/// chained additions: Monty 0.0.23 guards parentheses but not this) aborts its worker; the
/// kernel (this test process) reports it and carries on, and the next runs are healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_stack_overflow_ends_only_its_worker() {
    let rt = runtime(MontyMode::Worker);
    let mut sb = rt.create(&test_spec()).await.unwrap();
    assert_eq!(run(&mut sb, "x = 41").await.status, ExecStatus::Ok);
    let code = format!("y = {}", vec!["1"; 200_000].join("+"));
    let out = run(&mut sb, &code).await;
    match &out.status {
        ExecStatus::Crashed { reason } => assert!(reason.contains("SIG"), "{reason}"),
        other => panic!("expected the worker to crash, got {other:?}"),
    }
    // That sandbox is lost until reset; a reset gives a healthy interpreter.
    assert!(
        sb.exec(ExecRequest::new("print(1)"), Arc::new(NoTools))
            .await
            .is_err()
    );
    sb.reset().await.unwrap();
    assert_eq!(run(&mut sb, "print(6 * 7)").await.stdout.text(), "42\n");
    sb.shutdown().await.unwrap();
    // Other sandboxes never noticed.
    let mut other = rt.create(&test_spec()).await.unwrap();
    assert_eq!(
        run(&mut other, "print('fine')").await.stdout.text(),
        "fine\n"
    );
    other.shutdown().await.unwrap();
}

/// Child half of [`a_snapshot_resumes_in_another_process`]: restores the snapshot file it
/// is given in a fresh process and runs a program against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by a_snapshot_resumes_in_another_process in a child process"]
async fn child_restores_a_snapshot() {
    let path = std::env::var("AK_TEST_SNAPSHOT").unwrap();
    let mode = match std::env::var("AK_TEST_MODE").unwrap().as_str() {
        "worker" => MontyMode::Worker,
        _ => MontyMode::InProcess,
    };
    let snapshot = Snapshot {
        backend: "monty".into(),
        data: std::fs::read(path).unwrap(),
    };
    let rt = runtime(mode);
    let mut sb = rt
        .restore(&SandboxSpec::default(), &snapshot)
        .await
        .unwrap();
    let out = run(&mut sb, "print(x + 1, inc(x))").await;
    println!("CHILD-RESULT {}", out.stdout.text().trim());
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_resumes_in_another_process() {
    let dir = tempfile::tempdir().unwrap();
    for (saver, restorer) in [
        (MontyMode::Worker, "in_process"),
        (MontyMode::InProcess, "worker"),
    ] {
        let rt = runtime(saver);
        let mut sb = rt.create(&test_spec()).await.unwrap();
        let out = run(&mut sb, "x = 41\ndef inc(v):\n    return v + 1").await;
        assert_eq!(out.status, ExecStatus::Ok);
        let snap = sb.snapshot().await.unwrap();
        assert_eq!(snap.backend, "monty");
        sb.shutdown().await.unwrap();
        let path = dir.path().join("session.snap");
        std::fs::write(&path, &snap.data).unwrap();
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_restores_a_snapshot",
                "--ignored",
                "--nocapture",
            ])
            .env("AK_TEST_SNAPSHOT", &path)
            .env("AK_TEST_MODE", restorer)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&child.stdout);
        assert!(
            stdout.contains("CHILD-RESULT 42 42"),
            "saved in {saver:?}, restored in {restorer}: {stdout}\n{}",
            String::from_utf8_lossy(&child.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_files_are_the_only_files() {
    for mode in MODES {
        let ws = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s3cret").unwrap();
        let spec = SandboxSpec {
            workspace: Some(ws.path().canonicalize().unwrap()),
            ..test_spec()
        };
        let rt = runtime(mode);
        let mut sb = rt.create(&spec).await.unwrap();
        let secret = outside.path().join("secret");
        let code = format!(
            "from pathlib import Path\nPath('/workspace/out.txt').write_text('hi')\n\
             for p in ['{}', '/etc/passwd', '/workspace/../{}']:\n    try:\n        print(Path(p).read_text())\n    except OSError as e:\n        print(type(e).__name__)",
            secret.display(),
            secret.strip_prefix("/").unwrap().display()
        );
        let out = run(&mut sb, &code).await;
        assert_eq!(out.status, ExecStatus::Ok, "{mode:?}");
        assert!(
            !out.stdout.text().contains("s3cret"),
            "{mode:?}: {}",
            out.stdout.text()
        );
        assert!(
            !out.stdout.text().contains("root:"),
            "{mode:?}: {}",
            out.stdout.text()
        );
        assert_eq!(
            std::fs::read_to_string(ws.path().join("out.txt")).unwrap(),
            "hi"
        );
        sb.shutdown().await.unwrap();
    }
}

/// The worker takes its memory setting out of its environment before any program runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_memory_setting_is_not_visible() {
    let rt = runtime(MontyMode::Worker);
    let mut sb = rt.create(&test_spec()).await.unwrap();
    let out = run(
        &mut sb,
        "import os\nprint(os.getenv('AGENTKERNEL_MONTY_MEMORY'), 'AGENTKERNEL_MONTY_MEMORY' in os.environ)",
    )
    .await;
    assert_eq!(out.stdout.text(), "None False\n", "{:?}", out.status);
    sb.shutdown().await.unwrap();
}

/// A restored session obeys the limits of the sandbox it is restored into, not those of
/// the one its snapshot was taken in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_session_has_the_new_sandboxes_limits() {
    let rt = runtime(MontyMode::InProcess);
    let mut sb = rt.create(&test_spec()).await.unwrap();
    assert_eq!(run(&mut sb, "x = 41").await.status, ExecStatus::Ok);
    let snap = sb.snapshot().await.unwrap();
    // 200 MiB fits the default 512 MiB limit...
    let out = run(&mut sb, "s = 'a' * (200 * 2**20)\ns = None\nprint(x + 1)").await;
    assert_eq!(out.stdout.text(), "42\n", "{:?}", out.status);
    sb.shutdown().await.unwrap();
    // ...but not the 64 MiB one of the sandbox the snapshot is restored into.
    let spec = limited(|l| l.memory_bytes = Some(64 << 20));
    let mut restored = rt.restore(&spec, &snap).await.unwrap();
    let out = run(&mut restored, "s = 'a' * (200 * 2**20)\nprint(x + 1)").await;
    assert_eq!(
        out.status,
        ExecStatus::Killed {
            limit: LimitKind::Memory
        }
    );
    restored.shutdown().await.unwrap();
}

/// `from tools import (` left open, then `lines` continuation lines of `a,`, inside a `try`
/// that prints the refusal, then `tail`.
fn unclosed_tool_import(lines: usize, tail: &str) -> String {
    let mut code = String::from("try:\n    from tools import (\n");
    for _ in 0..lines {
        code.push_str("a,\n");
    }
    code.push_str(")\nexcept ImportError as e:\n    print('refused:', e)\n");
    code.push_str(tail);
    code
}

/// Runs `req` on a fresh sandbox of `mode` on its own thread and runtime, so a host step
/// that never yields cannot stall the test's runtime; `None` if it has not finished after
/// `guard` (a guard against hangs, not a timing assertion).
fn exec_on_a_thread(
    mode: MontyMode,
    req: ExecRequest,
    guard: Duration,
) -> Option<agentkernel_core::Result<agentkernel_core::ExecOutcome>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let out = rt.block_on(async {
            let mut sb = runtime(mode).create(&test_spec()).await.unwrap();
            let out = sb.exec(req, Arc::new(NoTools)).await;
            sb.shutdown().await.unwrap();
            out
        });
        let _ = tx.send(out);
    });
    rx.recv_timeout(guard).ok()
}

/// The audit's program: an unclosed `from tools import (` with a continuation line per
/// 3 bytes, just under the 1 MiB program-size cap (340k lines). The rewrite used to re-copy
/// the statement for every line (quadratic: a 2 MB program held the host 88 s, outside any
/// time limit); now it is linear and counted in the run's wall time. With a loop after the
/// import and a 1 s limit, the run ends as a wall-time kill (in a debug build the rewrite
/// alone may use up that second); with no loop and time to spare, it runs to its end.
/// The 60 s bound only guards against a hang; the assertions are on the outcomes.
#[test]
fn an_unclosed_tool_import_of_many_lines_is_rewritten_within_the_time_limit() {
    const LINES: usize = 340_000;
    let looping = unclosed_tool_import(LINES, "while True:\n    pass\n");
    let ending = unclosed_tool_import(LINES, "print('end')\n");
    assert!(
        looping.len() <= ExecRequest::MAX_CODE_BYTES,
        "{}",
        looping.len()
    );
    let guard = Duration::from_secs(60);
    for mode in MODES {
        let req = ExecRequest::new(looping.clone()).with_timeout(Duration::from_secs(1));
        let out = exec_on_a_thread(mode, req, guard)
            .unwrap_or_else(|| panic!("{mode:?}: the run had not ended after {guard:?}"))
            .unwrap();
        assert_eq!(
            out.status,
            ExecStatus::Killed {
                limit: LimitKind::WallTime
            },
            "{mode:?}: {:?}",
            out.stdout.text()
        );

        let req = ExecRequest::new(ending.clone()).with_timeout(Duration::from_secs(30));
        let out = exec_on_a_thread(mode, req, guard)
            .unwrap_or_else(|| panic!("{mode:?}: the run had not ended after {guard:?}"))
            .unwrap();
        assert_eq!(out.status, ExecStatus::Ok, "{mode:?}");
        assert_eq!(
            out.stdout.text(),
            "refused: cannot import name 'a' from 'tools'\nend\n",
            "{mode:?}"
        );
    }
}

/// A program over the 1 MiB program-size cap is refused before any host-side work, with
/// the cap named and what to do instead; the sandbox carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_over_the_size_cap_is_refused_with_the_cap_named() {
    let code = unclosed_tool_import(700_000, "");
    assert!(code.len() > 2_000_000);
    for mode in MODES {
        let mut sb = runtime(mode).create(&test_spec()).await.unwrap();
        let err = sb
            .exec(ExecRequest::new(code.clone()), Arc::new(NoTools))
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, agentkernel_core::Error::InvalidRequest { .. }),
            "{mode:?}: {msg}"
        );
        assert!(msg.contains("program-size cap of 1 MiB"), "{mode:?}: {msg}");
        assert!(msg.contains("workspace"), "{mode:?}: {msg}");
        assert_eq!(run(&mut sb, "print(1)").await.stdout.text(), "1\n");
        sb.shutdown().await.unwrap();
    }
}

/// A run whose wall time runs out in the host's import rewrite (a 1 ms limit, far less
/// than rewriting 340k lines takes) is a wall-time kill like any other: in worker mode the
/// worker process is gone afterwards (found by a marker in its environment), the sandbox
/// reports it was lost, and `reset` revives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_time_runs_out_in_the_import_rewrite_is_killed() {
    let code = unclosed_tool_import(340_000, "print('end')\n");
    for mode in MODES {
        let marker = format!("ak-rewrite-{}", uuid::Uuid::new_v4().simple());
        let mut spec = test_spec();
        spec.env.insert("AK_TEST_MARKER".into(), marker.clone());
        let needle = format!("AK_TEST_MARKER={marker}");
        let workers = || {
            count_host_processes_where("environ", |env| {
                env.split(|b| *b == 0).any(|v| v == needle.as_bytes())
            })
        };
        let mut sb = runtime(mode).create(&spec).await.unwrap();
        assert_eq!(run(&mut sb, "print(1)").await.stdout.text(), "1\n");
        if mode == MontyMode::Worker {
            assert!(workers() > 0, "the worker cannot be seen in /proc");
        }
        let out = sb
            .exec(
                ExecRequest::new(code.clone()).with_timeout(Duration::from_millis(1)),
                Arc::new(NoTools),
            )
            .await
            .unwrap();
        assert_eq!(
            out.status,
            ExecStatus::Killed {
                limit: LimitKind::WallTime
            },
            "{mode:?}"
        );
        assert_eq!(workers(), 0, "{mode:?}: the worker outlived the kill");
        assert!(
            matches!(
                sb.exec(ExecRequest::new("print(2)"), Arc::new(NoTools))
                    .await,
                Err(agentkernel_core::Error::SandboxLost { .. })
            ),
            "{mode:?}"
        );
        sb.reset().await.unwrap();
        assert_eq!(run(&mut sb, "print(3)").await.stdout.text(), "3\n");
        sb.shutdown().await.unwrap();
    }
}
