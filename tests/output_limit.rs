//! The output limit holds for what the CLI passes through live, not only for what it
//! captures: a program printing far more than the limit delivers at most the limit to the
//! caller, and the run ends naming the limit.

use std::process::{Command, Stdio};

#[test]
fn cli_passthrough_stops_at_the_output_limit() {
    passthrough_stops_at_the_output_limit("process");
}

/// The same on wasm, whose guest writes through the host's stream: the run is stopped there.
#[test]
fn cli_passthrough_stops_at_the_output_limit_on_wasm() {
    passthrough_stops_at_the_output_limit("wasm");
}

/// The same on monty in the kernel's own process, whose engine prints through the host.
#[test]
fn cli_passthrough_stops_at_the_output_limit_on_monty_inprocess() {
    passthrough_stops_at_the_output_limit("monty-inprocess");
}

fn passthrough_stops_at_the_output_limit(backend: &str) {
    // 64 MiB on stdout (the default limit is 1 MiB), then a line that must never arrive;
    // a program that catches the limit's exception gets no further.
    let program = "line = 'x' * 1023\nfor _ in range(64 << 10):\n    try:\n        print(line)\n    except Exception:\n        pass\nprint('UNREACHED')\n";
    let data = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentkernel"))
        .args(["run", "--backend", backend, "--timeout", "120", "-"])
        .env("AGENTKERNEL_DATA_DIR", data.path())
        .env_remove("AGENTKERNEL_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agentkernel");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(program.as_bytes()).expect("write program");
    }
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let limit = agentkernel::core::Limits::default().output_bytes;
    assert!(
        out.stdout.len() <= limit,
        "{backend}: the caller received {} bytes, more than the {limit}-byte limit; stderr: {stderr}",
        out.stdout.len()
    );
    assert!(out.stdout.len() >= limit / 2, "{} bytes", out.stdout.len());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("UNREACHED"));
    assert_ne!(out.status.code(), Some(0), "stderr: {stderr}");
    assert!(
        stderr.contains("killed: output size limit exceeded"),
        "{backend}: the limit is not named: {stderr}"
    );
}
