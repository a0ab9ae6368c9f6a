//! Differential test: every program in `testdata/programs` prints the same stdout and ends
//! with the same exit status (and, for an uncaught exception, the same exception) on the
//! wasm backend as under the host's native `python3`.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use agentkernel_core::conformance::test_spec;
use agentkernel_core::{ExecRequest, ExecStatus, NoTools, Runtime};

fn programs() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/programs");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "py"))
        .collect();
    out.sort();
    out
}

/// How a run ended, comparable across the two: exit code and, for an uncaught exception,
/// its last traceback line (`Type: message`).
#[derive(Debug, PartialEq)]
struct Ending {
    stdout: String,
    code: i32,
    exception: Option<String>,
}

fn native(path: &PathBuf) -> Ending {
    let out = std::process::Command::new("python3")
        .arg(path)
        .env("PYTHONIOENCODING", "utf-8")
        .output()
        .expect("run python3");
    let code = out.status.code().expect("python3 exited");
    let stderr = String::from_utf8_lossy(&out.stderr);
    Ending {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        code,
        exception: (code == 1).then(|| stderr.trim_end().lines().last().unwrap_or("").to_owned()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_output_matches_native_python() {
    let rt = common::runtime();
    let programs = programs();
    assert!(
        programs.len() >= 40,
        "the differential set has {} programs",
        programs.len()
    );
    let mut mismatches = Vec::new();
    for path in &programs {
        let code = std::fs::read_to_string(path).expect("read program");
        let mut sb = rt.create(&test_spec()).await.expect("create");
        let out = sb
            .exec(ExecRequest::new(code), Arc::new(NoTools))
            .await
            .expect("exec");
        sb.shutdown().await.expect("shutdown");
        let wasm = Ending {
            stdout: out.stdout.text(),
            code: out.status.exit_code(),
            exception: match &out.status {
                ExecStatus::Exception {
                    type_name, message, ..
                } => Some(format!("{type_name}: {message}")),
                _ => None,
            },
        };
        let expected = native(path);
        if wasm != expected {
            mismatches.push(format!(
                "{}:\n  native: {expected:?}\n  wasm:   {wasm:?}\n  wasm stderr: {}",
                path.display(),
                out.stderr.text()
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} programs differ:\n{}",
        mismatches.len(),
        programs.len(),
        mismatches.join("\n")
    );
}
