//! The end of an exec: nothing the program started outlives it, and the program cannot
//! fake it. Both checked from the host (its `/proc`, the outcome it receives).

use std::sync::Arc;

use agentkernel_backend_process::{ProcessConfig, ProcessRuntime};
use agentkernel_core::conformance::{count_host_processes, test_spec};
use agentkernel_core::{ExecOutcome, ExecRequest, ExecStatus, NoTools, Runtime, Sandbox};

async fn sandbox() -> Box<dyn Sandbox> {
    let rt = ProcessRuntime::new(ProcessConfig::default()).expect("process backend");
    rt.create(&test_spec()).await.expect("sandbox")
}

async fn exec(sb: &mut Box<dyn Sandbox>, code: &str) -> ExecOutcome {
    sb.exec(ExecRequest::new(code), Arc::new(NoTools))
        .await
        .expect("exec")
}

/// Waits (polling, up to a minute) until no host process carries `marker`.
async fn gone_from_the_host(marker: &str) -> bool {
    for _ in 0..600 {
        if count_host_processes(marker) == 0 {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

/// A program that leaves three processes running (one in its own session, one ignoring
/// SIGTERM, one orphaned to init) and says how many it sees.
fn leave_processes(marker: &str) -> String {
    format!(
        r#"
import os, subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "{marker}"], start_new_session=True)
subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)", "{marker}"])
if os.fork() == 0:
    # An orphan: its parent exits, init adopts it.
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "{marker}"], start_new_session=True)
    os._exit(0)
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
    if running() == 3:
        break
    time.sleep(0.01)
print("running", running())
"#
    )
}

/// What an exec leaves running is billed to its time limit: it is killed when that limit
/// runs out, though the exec returned long before (host `/proc` scanned).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_processes_end_at_their_execs_time_limit() {
    let mut sb = sandbox().await;
    let marker = format!("ak-bg-limit-{}", std::process::id());
    let out = sb
        .exec(
            ExecRequest::new(leave_processes(&marker))
                .with_timeout(std::time::Duration::from_secs(3)),
            Arc::new(NoTools),
        )
        .await
        .expect("exec");
    assert_eq!(out.status, ExecStatus::Ok, "{}", out.stderr.text());
    assert_eq!(out.stdout.text(), "running 3\n");
    assert!(
        gone_from_the_host(&marker).await,
        "a background process outlived its exec's time limit"
    );
    // The sandbox goes on, with its globals.
    let out = exec(&mut sb, "x = 1\nprint('still here')").await;
    assert_eq!(out.stdout.text(), "still here\n", "{}", out.stderr.text());
    let out = exec(&mut sb, "print(x + 1)").await;
    assert_eq!(out.stdout.text(), "2\n", "{}", out.stderr.text());
    sb.shutdown().await.expect("shutdown");
}

/// Nothing an exec left running reaches into the next exec: it is killed before the next
/// program runs (the next program and the host's `/proc` see none of it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_processes_end_when_the_next_exec_starts() {
    let mut sb = sandbox().await;
    let marker = format!("ak-bg-next-{}", std::process::id());
    let out = exec(&mut sb, &leave_processes(&marker)).await;
    assert_eq!(out.status, ExecStatus::Ok, "{}", out.stderr.text());
    assert_eq!(out.stdout.text(), "running 3\n");
    let out = exec(
        &mut sb,
        &format!(
            "import os\nprint(sum(1 for p in os.listdir('/proc') if p.isdigit() and '{marker}' in open('/proc/%s/cmdline' % p).read()))"
        ),
    )
    .await;
    assert_eq!(out.stdout.text(), "0\n", "{}", out.stderr.text());
    assert_eq!(
        count_host_processes(&marker),
        0,
        "a background process outlived the start of the next exec"
    );
    sb.shutdown().await.expect("shutdown");
}

/// A program that digs the exec's sentinel, id and any token out of the agent's frames and
/// objects, prints a forged end on both streams and forges a `done` frame on the control
/// socket, then goes on: the exec still ends where the program really ends, with all its
/// output and its real outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_cannot_forge_the_end_of_its_exec() {
    let mut sb = sandbox().await;
    // A first exec, so the agent's frames also hold the previous exec's values.
    exec(&mut sb, "pass").await;
    let code = r#"
import gc, json, os, sys, time
msg, tokens, marks = None, set(), set()
f = sys._getframe()
while f is not None:
    for v in list(f.f_locals.values()):
        if isinstance(v, dict) and v.get("type") == "exec":
            msg = v
        if isinstance(v, str) and len(v) == 32 and v.isalnum():
            tokens.add(v)
    f = f.f_back
for o in gc.get_objects():
    if isinstance(o, dict):
        for v in list(o.values()):
            if isinstance(v, str) and "AK-" in v:
                marks.add(v)
            if isinstance(v, str) and len(v) == 32 and v.isalnum():
                tokens.add(v)
assert msg is not None, "the exec message was not found"
marks.add(msg["sentinel"])
marks.update("\x1eAK-END-" + t + "\x1e" for t in tokens)
print("before", flush=True)
for m in marks:
    os.write(1, m.encode())
    os.write(2, m.encode())
def frame(m):
    d = json.dumps(m).encode()
    return len(d).to_bytes(4, "big") + d
os.write(3, frame({"type": "done", "id": msg["id"], "status": {"kind": "ok"},
                   "sentinels": {"stdout": True, "stderr": True}}))
time.sleep(0.5)
print("after", flush=True)
raise ValueError("the real end")
"#;
    let out = exec(&mut sb, code).await;
    let stdout = out.stdout.text();
    assert!(
        stdout.contains("before") && stdout.contains("after"),
        "the host did not receive the complete output: {stdout:?}"
    );
    assert!(
        matches!(&out.status, ExecStatus::Exception { type_name, .. } if type_name == "ValueError"),
        "not the real outcome: {:?}",
        out.status
    );
    // The next exec is clean: nothing of the previous one bleeds into it.
    let out = exec(&mut sb, "print('next')").await;
    assert_eq!(out.status, ExecStatus::Ok, "{}", out.stderr.text());
    assert_eq!(out.stdout.text(), "next\n");
    sb.shutdown().await.expect("shutdown");
}
