//! Ending a sandbox: a kill or a shutdown leaves no process behind.

use super::*;

/// When a run is killed, every process it started is gone, including children that
/// ignore SIGTERM in sessions of their own (checked by scanning the host's `/proc`): the
/// run that starts them is the one killed by its time limit, so only the kill can end
/// them (what an earlier run left behind would also end when the next run starts). A
/// backend without subprocesses whose sandbox is a host process of its own (monty's worker)
/// is checked for that process; one that runs in the kernel's own process (wasm, monty
/// in-process) has no process to leave behind, and the check is reported skipped ([`skip`]).
pub async fn kill_leaves_no_process(rt: &dyn Runtime) {
    if !rt.capabilities().subprocess {
        sandbox_process_is_gone_after(rt, "kill_leaves_no_process", Ending::Kill).await;
        return;
    }
    let marker = format!("ak-orphan-{}", uuid::Uuid::new_v4().simple());
    let mut sb = rt.create(&test_spec()).await.expect("create");
    let on_host = target().host_marker(sb.as_ref(), &marker);
    let code = format!(
        r#"
import os, signal, subprocess
subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 120; : {marker}"], start_new_session=True)
if os.fork() == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.setsid()
    os.execv("/bin/sh", ["sh", "-c", "trap '' TERM; sleep 120; : {marker}"])
print("spawned", flush=True)
while True:
    pass
"#
    );
    let expected = if on_host == marker { 2 } else { 1 };
    // The children are watched for while the run that started them goes on.
    let (out, seen) = tokio::join!(
        sb.exec(
            ExecRequest::new(code).with_timeout(Duration::from_secs(5)),
            Arc::new(NoTools)
        ),
        wait_for_processes(&on_host, expected),
    );
    let out = out.expect("exec");
    assert!(seen, "the check cannot see the sandbox's children");
    assert_eq!(
        out.status,
        ExecStatus::Killed {
            limit: LimitKind::WallTime
        }
    );
    assert_eq!(out.stdout.text(), "spawned\n");
    assert_eq!(
        count_host_processes(&on_host),
        0,
        "processes of a killed run survived it"
    );
    sb.shutdown().await.expect("shutdown");
}

/// Dropping or shutting down a sandbox kills its processes too (for a backend without
/// subprocesses: its own host process, as in [`kill_leaves_no_process`]).
pub async fn shutdown_leaves_no_process(rt: &dyn Runtime) {
    if !rt.capabilities().subprocess {
        sandbox_process_is_gone_after(rt, "shutdown_leaves_no_process", Ending::Shutdown).await;
        return;
    }
    let marker = format!("ak-orphan-{}", uuid::Uuid::new_v4().simple());
    let mut sb = rt.create(&test_spec()).await.expect("create");
    let on_host = target().host_marker(sb.as_ref(), &marker);
    let code = format!(
        "import subprocess\nsubprocess.Popen(['sh', '-c', \"trap '' TERM; sleep 120; : {marker}\"], start_new_session=True)\nprint('ok')"
    );
    let out = sb
        .exec(ExecRequest::new(code), Arc::new(NoTools))
        .await
        .expect("exec");
    assert_ok(&out);
    assert!(
        wait_for_processes(&on_host, 1).await,
        "the check cannot see the sandbox's child"
    );
    sb.shutdown().await.expect("shutdown");
    assert_eq!(
        count_host_processes(&on_host),
        0,
        "processes outlived shutdown"
    );
}

/// Runs a busy loop in `sb` with a 1 s time limit and checks the run was killed by it.
async fn kill_a_busy_loop_by_its_time_limit(sb: &mut dyn Sandbox) {
    let out = sb
        .exec(
            ExecRequest::new("while True:\n    pass").with_timeout(Duration::from_secs(1)),
            Arc::new(NoTools),
        )
        .await
        .expect("exec");
    assert_eq!(
        out.status,
        ExecStatus::Killed {
            limit: LimitKind::WallTime
        }
    );
}

/// How [`sandbox_process_is_gone_after`] ends a sandbox.
#[derive(Clone, Copy)]
enum Ending {
    /// A run killed by its wall-time limit (then the sandbox is shut down).
    Kill,
    /// `shutdown`.
    Shutdown,
}

/// For a backend without subprocesses: the sandbox's own host processes (found by a marker
/// variable in the sandbox's environment, which such a backend's process is started with)
/// are gone after `ending`. Skipped ([`skip`]) where the sandbox is not a host process.
async fn sandbox_process_is_gone_after(rt: &dyn Runtime, check: &str, ending: Ending) {
    if let Some(reason) = no_sandbox_process(&rt.capabilities()) {
        skip(check, rt.name(), &reason);
        return;
    }
    // Such a backend's sandbox process is started with the sandbox's environment.
    let marker = format!("ak-sandbox-{}", uuid::Uuid::new_v4().simple());
    let mut spec = test_spec();
    spec.env
        .insert("AGENTKERNEL_CONFORMANCE_MARKER".into(), marker.clone());
    let mut sb = rt.create(&spec).await.expect("create");
    let needle = format!("AGENTKERNEL_CONFORMANCE_MARKER={marker}");
    let count = || {
        count_host_processes_where("environ", |environ| {
            environ
                .split(|b| *b == 0)
                .any(|var| var == needle.as_bytes())
        })
    };
    let out = sb
        .exec(ExecRequest::new("print('up')"), Arc::new(NoTools))
        .await
        .expect("exec");
    assert_ok(&out);
    let mut seen = 0;
    for _ in 0..200 {
        seen = count();
        if seen > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        seen > 0,
        "{}: the check cannot see the sandbox's process in the host's /proc",
        rt.name()
    );
    match ending {
        Ending::Kill => {
            kill_a_busy_loop_by_its_time_limit(sb.as_mut()).await;
            assert_eq!(
                count(),
                0,
                "{}: the process of a killed sandbox survived the kill",
                rt.name()
            );
            sb.shutdown().await.expect("shutdown");
        }
        Ending::Shutdown => {
            sb.shutdown().await.expect("shutdown");
            assert_eq!(
                count(),
                0,
                "{}: the sandbox's process outlived shutdown",
                rt.name()
            );
        }
    }
}
