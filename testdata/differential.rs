// The differential program set, shared by the backends' tests with `include!`: the
// programs in testdata/programs, and how each ends under the host's native `python3`.
// (Included, not a crate: test helpers of different crates.)

/// The programs of `testdata/programs`, sorted.
#[allow(dead_code)]
fn differential_programs() -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/programs");
    let mut out: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "py"))
        .collect();
    out.sort();
    out
}

/// How a run ended, comparable across backends: stdout, exit code and, for an uncaught
/// exception, its last traceback line (`Type: message`).
#[derive(Debug, PartialEq)]
struct Ending {
    stdout: String,
    code: i32,
    exception: Option<String>,
}

impl Ending {
    /// How a sandbox's run ended.
    #[allow(dead_code)]
    fn of(out: &agentkernel_core::ExecOutcome) -> Ending {
        Ending {
            stdout: out.stdout.text(),
            code: out.status.exit_code(),
            exception: match &out.status {
                agentkernel_core::ExecStatus::Exception {
                    type_name, message, ..
                } => Some(format!("{type_name}: {message}")),
                _ => None,
            },
        }
    }

    /// How `path` ends under the host's `python3`.
    #[allow(dead_code)]
    fn native(path: &std::path::Path) -> Ending {
        Self::native_with_stderr(path).0
    }

    /// [`Ending::native`], and what `python3` wrote to stderr.
    #[allow(dead_code)]
    fn native_with_stderr(path: &std::path::Path) -> (Ending, String) {
        let out = std::process::Command::new("python3")
            .arg(path)
            .env("PYTHONIOENCODING", "utf-8")
            .output()
            .expect("run python3");
        let code = out.status.code().expect("python3 exited");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let ending = Ending {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            code,
            exception: (code == 1)
                .then(|| stderr.trim_end().lines().last().unwrap_or("").to_owned()),
        };
        (ending, stderr.into_owned())
    }
}
