//! One program at a time runs with a workspace, whatever the backends and processes: two
//! `agentkernel run` processes given the same `--workspace` (here on different backends)
//! take turns, and a run that cannot get the workspace within its time limit fails saying
//! why. Judged from the host: the order of the lines both programs append to one file.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Starts `agentkernel run` of `program` on `backend` with `workspace`.
fn start(backend: &str, workspace: &Path, data: &Path, timeout: u32, program: &str) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentkernel"))
        .args([
            "run",
            "--backend",
            backend,
            "--timeout",
            &timeout.to_string(),
        ])
        .arg("--workspace")
        .arg(workspace)
        .arg("-")
        .env("AGENTKERNEL_DATA_DIR", data)
        .env_remove("AGENTKERNEL_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agentkernel");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(program.as_bytes())
        .expect("write program");
    child
}

/// A program that appends `<name> start`, sleeps `secs`, then appends `<name> end`.
fn program(name: &str, secs: f32) -> String {
    format!(
        "import time\n\
         with open('/workspace/log', 'a') as f:\n    f.write('{name} start\\n')\n\
         time.sleep({secs})\n\
         with open('/workspace/log', 'a') as f:\n    f.write('{name} end\\n')\n\
         print('{name} done')\n"
    )
}

/// Waits until the host file `log` holds `line` (the first program is inside its run).
fn wait_for_line(log: &Path, line: &str, first: &mut Child) {
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        if std::fs::read_to_string(log).is_ok_and(|s| s.lines().any(|l| l == line)) {
            return;
        }
        if let Ok(Some(status)) = first.try_wait() {
            panic!("the first run ended ({status}) before it wrote {line:?}");
        }
        assert!(
            Instant::now() < until,
            "{line:?} never appeared in {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn finish(child: Child, what: &str) -> Output {
    let out = child.wait_with_output().expect("wait");
    eprintln!(
        "{what}: {}; stdout {:?}; stderr {:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn two_backends_take_turns_on_one_workspace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let workspace = dir.path().join("ws");
    std::fs::create_dir(&workspace).expect("mkdir");
    let data = dir.path().join("data");
    let log = workspace.join("log");

    // wasm first, holding the workspace for 4 s; process starts while it sleeps.
    let mut first = start("wasm", &workspace, &data, 60, &program("A", 4.0));
    wait_for_line(&log, "A start", &mut first);
    let second = start("process", &workspace, &data, 60, &program("B", 0.0));
    let a = finish(first, "wasm run");
    let b = finish(second, "process run");
    assert!(
        a.status.success() && b.status.success(),
        "both runs succeed"
    );

    let lines = std::fs::read_to_string(&log).expect("read log");
    assert_eq!(
        lines.lines().collect::<Vec<_>>(),
        ["A start", "A end", "B start", "B end"],
        "the process run wrote the workspace while the wasm run still had it"
    );
}

#[test]
fn a_run_that_cannot_get_the_workspace_in_its_time_limit_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let workspace = dir.path().join("ws");
    std::fs::create_dir(&workspace).expect("mkdir");
    let data = dir.path().join("data");
    let log = workspace.join("log");

    // wasm first: its writes reach the host directory as they happen, so the test sees A
    // start (a process sandbox's reach it when its exec ends).
    let mut first = start("wasm", &workspace, &data, 60, &program("A", 8.0));
    wait_for_line(&log, "A start", &mut first);
    // monty in the kernel's own process: 1 s to get the workspace, which A holds for 8 s.
    let second = start("monty-inprocess", &workspace, &data, 1, &program("B", 0.0));
    let b = finish(second, "monty run");
    let a = finish(first, "wasm run");
    assert!(a.status.success(), "the first run is unaffected");
    assert!(!b.status.success(), "the second run cannot have succeeded");
    let stderr = String::from_utf8_lossy(&b.stderr);
    assert!(
        stderr.contains("stayed in use by another program") && stderr.contains("its own workspace"),
        "the error says why and what to do: {stderr}"
    );
    let lines = std::fs::read_to_string(&log).expect("read log");
    assert!(
        !lines.contains("B "),
        "the refused program ran anyway: {lines:?}"
    );
}
