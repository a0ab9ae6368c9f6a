//! `reset` in place: the guest's init forks a fresh agent inside the same jail. Checks that
//! the fast path is taken, that nothing of the previous program survives it, and that it
//! falls back to a new jail when it cannot guarantee that.

use std::sync::Arc;

use agentkernel_backend_process::{ProcessConfig, ProcessRuntime};
use agentkernel_core::conformance::{count_host_processes, test_spec};
use agentkernel_core::{ExecOutcome, ExecRequest, ExecStatus, NoTools, Runtime, Sandbox};

async fn exec(sb: &mut Box<dyn Sandbox>, code: &str) -> ExecOutcome {
    let out = sb
        .exec(ExecRequest::new(code), Arc::new(NoTools))
        .await
        .expect("exec");
    assert!(
        matches!(out.status, ExecStatus::Ok),
        "{:?}\n{}",
        out.status,
        out.stderr.text()
    );
    out
}

const PID_NS: &str = "import os\nprint(os.readlink('/proc/self/ns/pid'))";

/// A new sandbox and its pid namespace (which a reset in place keeps, and a new jail does not).
async fn sandbox() -> (Box<dyn Sandbox>, String) {
    let rt = ProcessRuntime::new(ProcessConfig::default()).expect("process backend");
    let mut sb = rt.create(&test_spec()).await.expect("sandbox");
    let ns = exec(&mut sb, PID_NS).await.stdout.text();
    (sb, ns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_in_place_leaves_nothing_of_the_previous_program() {
    let (mut sb, ns_before) = sandbox().await;
    let marker = format!("ak-reset-{}", std::process::id());
    exec(
        &mut sb,
        &format!(
            r#"
import os, subprocess, sys, threading, time
secret = "previous user's data"
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "{marker}"])
open("/tmp/a", "w").write("x")
open("/dev/shm/b", "w").write("x")
open("/workspace/c", "w").write("x")
os.makedirs("/tmp/locked/deeper")
open("/tmp/locked/deeper/f", "w").write("x")
os.chmod("/tmp/locked/deeper", 0)
os.chmod("/tmp/locked", 0)
def chatter():
    while True:
        sys.stdout.write("LEAK\n"); sys.stdout.flush(); time.sleep(0.005)
threading.Thread(target=chatter, daemon=True).start()
time.sleep(0.05)
"#
        ),
    )
    .await;
    let mut started = false;
    for _ in 0..200 {
        if count_host_processes(&marker) == 1 {
            started = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(started, "the background process should be running");

    sb.reset().await.expect("reset");

    assert_eq!(
        count_host_processes(&marker),
        0,
        "a process survived the reset"
    );
    let out = exec(
        &mut sb,
        "import os\nprint('secret' in globals(), os.listdir('/tmp'), os.listdir('/dev/shm'), os.listdir('/workspace'))",
    )
    .await;
    assert_eq!(
        out.stdout.text(),
        "False [] [] []\n",
        "stderr: {}",
        out.stderr.text()
    );
    assert!(!out.stdout.text().contains("LEAK"));
    // Same jail (same pid namespace): the fast path was taken.
    assert_eq!(exec(&mut sb, PID_NS).await.stdout.text(), ns_before);
    // Exceptions are still reported as usual.
    let out = sb
        .exec(ExecRequest::new("1/0"), Arc::new(NoTools))
        .await
        .expect("exec");
    assert!(
        matches!(out.status, ExecStatus::Exception { ref type_name, .. } if type_name == "ZeroDivisionError")
    );
    sb.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_falls_back_to_a_new_jail_when_state_would_survive() {
    let (mut sb, ns_before) = sandbox().await;
    // A System V shared memory segment outlives its creator: init refuses to reset in
    // place, and the host starts a new jail instead (with a new IPC namespace).
    exec(
        &mut sb,
        "import ctypes\nlibc = ctypes.CDLL(None)\nassert libc.shmget(0, 4096, 0o1600) >= 0",
    )
    .await;
    sb.reset().await.expect("reset");
    let out = exec(
        &mut sb,
        "print(len(open('/proc/sysvipc/shm').read().splitlines()))",
    )
    .await;
    assert_eq!(
        out.stdout.text(),
        "1\n",
        "only the header line: no segment left"
    );
    assert_ne!(
        exec(&mut sb, PID_NS).await.stdout.text(),
        ns_before,
        "expected a new jail"
    );
    sb.shutdown().await.expect("shutdown");
}

/// Frames a program writes on the control socket before a reset (a forged hello, a tool
/// call, a done) must not reach the next program's execution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_forged_before_a_reset_are_dropped() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (mut sb, _) = sandbox().await;
    exec(
        &mut sb,
        r#"
import json, os, time
def frame(m):
    d = json.dumps(m).encode()
    return len(d).to_bytes(4, "big") + d
# A child (the agent itself waits stopped once the exec has ended, its threads too) writes
# after this exec has ended, while the host is not reading.
if os.fork() == 0:
    time.sleep(0.2)
    os.write(3, frame({"type": "hello", "python": "x", "executable": "x", "pid": 1, "protections": {}})
        + frame({"type": "tool_call", "id": 1, "name": "spy", "args": {}})
        + frame({"type": "done", "id": 3, "status": {"kind": "exited", "code": 7}, "sentinels": {"stdout": True, "stderr": True}}))
    os._exit(0)
"#,
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    sb.reset().await.expect("reset");
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let tools = agentkernel_core::FnTools::new().with(
        "spy",
        "Counts calls.",
        serde_json::json!({"type": "object"}),
        move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok(serde_json::json!(null)) }
        },
    );
    let out = sb
        .exec(ExecRequest::new("print('clean')"), Arc::new(tools))
        .await
        .expect("exec");
    assert_eq!(out.status, ExecStatus::Ok, "{}", out.stderr.text());
    assert_eq!(out.stdout.text(), "clean\n");
    assert_eq!(calls.load(Ordering::SeqCst), 0, "a forged tool call ran");
    sb.shutdown().await.expect("shutdown");
}

/// A program can change init's limits (same uid): the reset notices and starts a new jail,
/// so the next program does not inherit them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_init_limits_force_a_new_jail() {
    let (mut sb, ns_before) = sandbox().await;
    exec(
        &mut sb,
        "import resource\nresource.prlimit(1, resource.RLIMIT_NOFILE, (64, 64))\nprint(resource.prlimit(1, resource.RLIMIT_NOFILE))",
    )
    .await;
    sb.reset().await.expect("reset");
    let out = exec(
        &mut sb,
        "import resource\nprint(resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 64)",
    )
    .await;
    assert_eq!(out.stdout.text(), "True\n");
    assert_ne!(
        exec(&mut sb, PID_NS).await.stdout.text(),
        ns_before,
        "expected a new jail"
    );
    sb.shutdown().await.expect("shutdown");
}

/// File-status flags on the fds the agent shares with init (a non-blocking control socket or
/// stdout) are restored by the reset: the next program gets a working sandbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_fd_flags_are_restored_by_a_reset() {
    let (mut sb, ns_before) = sandbox().await;
    exec(
        &mut sb,
        "import os\nfor fd in (1, 2):\n    os.set_blocking(fd, False)",
    )
    .await;
    // The control socket too, from a thread after the exec has ended.
    exec(
        &mut sb,
        "import os, threading, time\nthreading.Thread(target=lambda: (time.sleep(0.2), os.set_blocking(3, False))).start()",
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    sb.reset().await.expect("reset");
    let out = exec(&mut sb, "import os, time\ntime.sleep(0.3)\nprint([os.get_blocking(fd) for fd in (1, 2)], 'x' * 100000 == 'x' * 100000)").await;
    assert_eq!(out.stdout.text(), "[True, True] True\n");
    assert_eq!(
        exec(&mut sb, PID_NS).await.stdout.text(),
        ns_before,
        "the fast path should still work"
    );
    sb.shutdown().await.expect("shutdown");
}

/// A POSIX message queue outlives the program that made it (and, like System V IPC, is not
/// a file under `/tmp`): the reset finds it and starts a new jail, so the next program
/// cannot open it. Landlock does not govern `mq_open`; it is off here, as on kernels
/// without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posix_message_queues_do_not_survive_a_reset() {
    let rt = ProcessRuntime::new(ProcessConfig::default())
        .expect("process backend")
        .without_landlock();
    let mut sb = rt.create(&test_spec()).await.expect("sandbox");
    let mq = r#"
import ctypes, os
rt = ctypes.CDLL("librt.so.1", use_errno=True)
rt.mq_open.restype = ctypes.c_int
rt.mq_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
"#;
    let made = exec(
        &mut sb,
        &format!(
            "{mq}\nfd = rt.mq_open(b'/ak-left', os.O_CREAT | os.O_RDWR, 0o600, None)\nprint(fd >= 0, ctypes.get_errno())"
        ),
    )
    .await;
    assert_eq!(made.stdout.text(), "True 0\n", "{}", made.stderr.text());
    sb.reset().await.expect("reset");
    let out = exec(
        &mut sb,
        &format!(
            "{mq}\nfd = rt.mq_open(b'/ak-left', os.O_RDWR, 0, None)\nprint(fd, os.strerror(ctypes.get_errno()) if fd < 0 else 'opened')"
        ),
    )
    .await;
    assert!(
        out.stdout.text().starts_with("-1 No such file"),
        "the next program opened the previous program's queue: {}{}",
        out.stdout.text(),
        out.stderr.text()
    );
    sb.shutdown().await.expect("shutdown");
}
