// Shared by integration tests (`include!`d): the test-only Python environment.

/// The python of the test venv (official `mcp` SDK, pandas), installed by
/// `scripts/test-deps` on first use and cached across runs.
#[allow(dead_code)]
pub fn test_python() -> std::path::PathBuf {
    static PYTHON: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .ancestors()
                .find(|p| p.join("scripts/test-deps").is_file())
                .expect("repository root with scripts/test-deps");
            let out = std::process::Command::new(root.join("scripts/test-deps"))
                .stderr(std::process::Stdio::inherit())
                .output()
                .expect("running scripts/test-deps");
            assert!(out.status.success(), "scripts/test-deps failed");
            let path = String::from_utf8(out.stdout).expect("utf-8 path");
            std::path::PathBuf::from(path.trim())
        })
        .clone()
}

/// `testdata/<name>` as an absolute path.
#[allow(dead_code)]
pub fn testdata(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|p| p.join("testdata").join(name))
        .find(|p| p.exists())
        .expect("testdata file")
}

/// Runs `cmd` with `stdin` piped in, capturing stdout and stderr.
#[allow(dead_code)]
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
