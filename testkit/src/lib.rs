//! # agentkernel-testkit
//!
//! Helpers shared by the integration tests and benches of every AgentKernel crate (a
//! `publish = false` dev-dependency): the artifacts tests need, built or found cached by the
//! repository's own scripts (the test Python venv with the official MCP SDK, the wasm guest
//! component, the microvm guest image), paths under `testdata/`, and [`skip`], which reports
//! a test that cannot run on this machine the way `.ci/run` audits.
//!
//! The conformance suite itself lives in `agentkernel-core` (feature `conformance`); its
//! `skip` reports checks that do not apply to a backend, this one tests the machine lacks
//! something for.

/// Runs `scripts/<name>` (which prints a path on stdout) and answers that path.
pub fn script_output(name: &str) -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|p| p.join("scripts").join(name).is_file())
        .expect("repository root with scripts/");
    let out = std::process::Command::new(root.join("scripts").join(name))
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running scripts/{name}: {e}"));
    assert!(out.status.success(), "scripts/{name} failed");
    let path = String::from_utf8(out.stdout).expect("utf-8 path");
    std::path::PathBuf::from(path.trim())
}

/// The python of the test venv (official `mcp` SDK, pandas), installed by
/// `scripts/test-deps` on first use and cached across runs.
pub fn test_python() -> std::path::PathBuf {
    static PYTHON: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PYTHON.get_or_init(|| script_output("test-deps")).clone()
}

/// The wasm backend's guest component, built by `scripts/build-wasm-guest` on first use
/// (a no-op when it is up to date) into the cache the backend reads by default.
pub fn wasm_guest() -> std::path::PathBuf {
    static GUEST: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    GUEST
        .get_or_init(|| script_output("build-wasm-guest"))
        .clone()
}

/// `testdata/<name>` as an absolute path.
pub fn testdata(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|p| p.join("testdata").join(name))
        .find(|p| p.exists())
        .expect("testdata file")
}

/// Runs `cmd` with `stdin` piped in, capturing stdout and stderr.
pub fn run_with_stdin(mut cmd: std::process::Command, stdin: &str) -> std::process::Output {
    use std::io::Write as _;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

/// Reports that `test` did not run on `backend`, and why: a `SKIPPED <backend> <test>:
/// <reason>` line written straight to stderr (not through `eprintln!`, which the test
/// harness swallows for passing tests), and appended to the file `$AGENTKERNEL_SKIP_LOG`
/// names, where `.ci/run` looks for skips of backends that `doctor` says work here.
pub fn skip(backend: &str, test: &str, reason: &str) {
    use std::io::Write as _;
    let line = format!("SKIPPED {backend} {test}: {reason}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Some(path) = std::env::var_os("AGENTKERNEL_SKIP_LOG").filter(|p| !p.is_empty())
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        let _ = f.write_all(line.as_bytes());
    }
}

/// The microvm guest image, built (or found cached) by `scripts/build-microvm-image`, or
/// `None` after reporting `test` as skipped (see [`skip`]) on a machine without QEMU, cpio
/// or apt (`scripts/setup` installs them).
pub fn microvm_image_for(test: &str) -> Option<std::path::PathBuf> {
    let image = microvm_image();
    if image.is_none() {
        skip(
            "microvm",
            test,
            "QEMU, cpio or apt-get is missing (scripts/setup installs them)",
        );
    }
    image
}

/// The microvm guest image (see [`microvm_image_for`]), or `None` without QEMU, cpio or apt.
pub fn microvm_image() -> Option<std::path::PathBuf> {
    static IMAGE: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    IMAGE
        .get_or_init(|| {
            for cmd in ["qemu-system-x86_64", "cpio", "apt-get"] {
                let found = std::process::Command::new("sh")
                    .args(["-c", &format!("command -v {cmd}")])
                    .output()
                    .is_ok_and(|o| o.status.success());
                if !found {
                    return None;
                }
            }
            Some(script_output("build-microvm-image"))
        })
        .clone()
}
