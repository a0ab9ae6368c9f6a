//! Skips that say so: a test that cannot run here calls [`skip`], which prints
//! `SKIPPED <backend> <test>: <reason>` on stderr (the backend is `msb` for the `msb::`
//! checks, else `microvm`; the same format as `agentkernel_testkit::skip`) and, when `AGENTKERNEL_SKIP_LOG` names a file, appends
//! the same line to it (CI reads that file, and fails a run where a backend that `doctor`
//! reports as working was skipped).

/// Records that `test` is skipped because of `reason` (one line; newlines become `; `).
pub fn skip(test: &str, reason: &str) {
    let reason = reason.trim().replace('\n', "; ");
    let backend = if test.starts_with("msb::") {
        "msb"
    } else {
        "microvm"
    };
    let line = format!("SKIPPED {backend} {test}: {reason}\n");
    {
        use std::io::Write as _;
        // Straight to fd 2: `eprint!` is swallowed by the test harness for passing tests.
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
    if let Some(path) = std::env::var_os("AGENTKERNEL_SKIP_LOG") {
        use std::io::Write as _;
        // One write of the whole line in append mode: lines of tests running in parallel do
        // not interleave.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut log| log.write_all(line.as_bytes()))
            .unwrap_or_else(|e| {
                panic!(
                    "cannot append to AGENTKERNEL_SKIP_LOG={}: {e}",
                    std::path::Path::new(&path).display()
                )
            });
    }
}
