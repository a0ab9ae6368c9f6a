//! The official E2B SDKs against `agentkernel serve` (issue 19, point 3): the real binary
//! listens on a free loopback port with an API key and a real MCP tool server
//! (`testdata/mcp_server.py`, tools `tools.demo.*`), and `tests/e2b/sdk_check.py`, run by
//! the test venv's python (`scripts/test-deps`: `e2b` and `e2b-code-interpreter` pinned in
//! `testdata/requirements.txt`), drives every call of the issue through the unmodified
//! sync and async SDKs: create, run_code (state, streaming callbacks during the run,
//! errors, final expressions), files, commands, get_info, set_timeout, list, connect, kill,
//! and a tool import in an E2B-created sandbox. Then `tests/e2b/refusals_check.py` checks what
//! is refused and how it reads in Python: files through a planted symlink (the host
//! directory it points to stays empty), `/tmp` and `..` paths, PTY, watch_dir, other
//! languages, pause, a command past its timeout (the interpreter's state survives), a
//! wrong or missing access token, an unknown API key. Each script prints PASS/FAIL per
//! check; the test passes only when both exit 0.
#![cfg(all(feature = "server", feature = "cli", feature = "process"))]

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agentkernel_testkit::skip;

/// Kills the server when the test ends, however it ends.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM first (graceful shutdown closes the sandboxes), then SIGKILL.
        // SAFETY: kill(2) on the pid of our own child, which we have not reaped yet.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_official_e2b_sdks_work_unmodified_against_agentkernel_serve() {
    use std::os::unix::fs::PermissionsExt as _;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // The venv of this checkout's testdata/requirements.txt (what testkit::test_python does,
    // with the script named from this crate's own directory).
    let venv = Command::new(root.join("scripts/test-deps"))
        .stderr(Stdio::inherit())
        .output()
        .expect("running scripts/test-deps");
    assert!(venv.status.success(), "scripts/test-deps failed");
    let python = std::path::PathBuf::from(String::from_utf8_lossy(&venv.stdout).trim());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let key = format!("e2b-test-{}", uuid_like());
    let keys = dir.path().join("keys");
    std::fs::write(&keys, format!("{key}\n")).unwrap();
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_agentkernel"))
        .args(["serve", "--listen", "127.0.0.1:0", "--api-keys"])
        .arg(&keys)
        .arg("--mcp")
        .arg(format!(
            "demo={} {}",
            python.display(),
            root.join("testdata/mcp_server.py").display()
        ))
        .env("AGENTKERNEL_DATA_DIR", &data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting agentkernel serve");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let server = Server(child);
    // Its stderr is kept, to show when it fails.
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push_str(&format!("{line}\n"));
        }
    });
    // The one stdout line: "agentkernel: listening on http://ADDR".
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first).unwrap();
    let Some(url) = first.trim().strip_prefix("agentkernel: listening on ") else {
        drop(server);
        let log = log.lock().unwrap().clone();
        if log.contains("unavailable") || log.contains("not available") {
            skip(
                "process",
                "the_official_e2b_sdks_work_unmodified_against_agentkernel_serve",
                &format!("the server's backend cannot run here: {}", log.trim()),
            );
            return;
        }
        panic!("the server did not start: {first:?}\n{log}");
    };
    let url = url.to_owned();

    // Ambient E2B_* variables (E2B_DOMAIN, E2B_DEBUG, ...) would change what the SDK does.
    let run = |script: &str, extra: &[(&str, &str)]| {
        let mut check = Command::new(&python);
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy().into_owned();
            if name.starts_with("E2B_") && !name.starts_with("E2B_CHECK_ONLY") {
                check.env_remove(&name);
            }
        }
        check
            .arg(root.join("tests/e2b").join(script))
            .current_dir(root)
            .env("E2B_API_URL", &url)
            .env("E2B_SANDBOX_URL", &url)
            .env("E2B_API_KEY", &key)
            .envs(extra.iter().copied());
        let out = check.output().expect("running a check script");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        println!("{text}");
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        (
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let sdk = run(
        "sdk_check.py",
        &[
            (
                "E2B_CHECK_TOOL_CODE",
                "from tools.demo import add\nadd(a=20, b=22)",
            ),
            ("E2B_CHECK_TOOL_EXPECT", "42"),
        ],
    );
    // A host directory the sandbox's program links to: writing through the link must be
    // refused and leave it empty.
    let host_dir = dir.path().join("host-dir");
    std::fs::create_dir(&host_dir).unwrap();
    let refusals = run(
        "refusals_check.py",
        &[("E2B_CHECK_HOST_DIR", host_dir.to_str().unwrap())],
    );
    drop(server);
    let log = log.lock().unwrap().clone();
    for (name, (status, text, stderr)) in [("sdk_check", &sdk), ("refusals_check", &refusals)] {
        assert!(
            status.success(),
            "{name} failed ({status}):\n{text}\n{stderr}\nserver log:\n{log}"
        );
    }
    assert!(sdk.1.contains("PASS sync.run_code.streaming") && sdk.1.contains("PASS async.tools"));
    assert!(std::fs::read_dir(&host_dir).unwrap().next().is_none());
}

/// A random-enough key for one test run (no rand crate needed: the time and the pid).
fn uuid_like() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{:x}{:08x}", t.as_nanos(), std::process::id())
}
