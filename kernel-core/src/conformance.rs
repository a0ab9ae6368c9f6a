//! The conformance suite: async checks that any [`Runtime`] must pass.
//!
//! Each check creates its own sandboxes, panics with a precise message on failure, and
//! consults [`Capabilities`](crate::Capabilities) first: a backend that lacks a capability
//! must answer [`Error::Unsupported`], never a silent wrong result. Escape attempts are
//! checked from the host side (the planted secret is not in the output, the host process
//! survived, the listener saw no connection, the host file does not exist...).
//!
//! A backend runs the whole suite with one macro in its integration tests:
//!
//! ```ignore
//! agentkernel_core::conformance_suite!(my_backend::MyRuntime::new().unwrap());
//! ```
//!
//! Programs call host tools through the `_agentkernel` module every backend provides:
//! `_agentkernel.call_tool(name, {args})`, raising `LookupError`, `ValueError`,
//! `PermissionError`, `TimeoutError` or `_agentkernel.ToolError` on failure.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::{
    Error, ExecOutcome, ExecRequest, ExecStatus, FnTools, LimitKind, Limits, NetworkPolicy,
    NoTools, Runtime, Sandbox, SandboxSpec, ToolError, ToolErrorKind, ToolHost,
};

/// A spec with limits suited to tests.
pub fn test_spec() -> SandboxSpec {
    SandboxSpec {
        limits: Limits {
            wall_time: Duration::from_secs(30),
            ..Limits::default()
        },
        ..SandboxSpec::default()
    }
}

/// [`test_spec`] with one change to its limits, e.g. `limited(|l| l.processes = Some(8))`.
pub fn limited(change: impl FnOnce(&mut Limits)) -> SandboxSpec {
    let mut spec = test_spec();
    change(&mut spec.limits);
    spec
}

/// Creates a sandbox for `spec`, runs `code` once, shuts it down.
pub async fn run_once(rt: &dyn Runtime, spec: &SandboxSpec, code: &str) -> ExecOutcome {
    let mut sb = rt
        .create(spec)
        .await
        .unwrap_or_else(|e| panic!("{}: create failed: {e}", rt.name()));
    let out = sb
        .exec(ExecRequest::new(code), Arc::new(NoTools))
        .await
        .unwrap_or_else(|e| panic!("{}: exec failed: {e}", rt.name()));
    sb.shutdown().await.expect("shutdown");
    out
}

/// Whether `out` is a subset interpreter's clear refusal of a Python feature it lacks: an
/// exception naming it (`ModuleNotFoundError: No module named 'errno'`, `AttributeError:
/// module 'sys' has no attribute 'exit'`, `TypeError: print() 'file' argument is not
/// supported`...). Only backends whose capabilities say they are not full CPython may
/// answer so; the check then prints what was refused and judges what it still can.
pub fn refused_by_subset(rt: &dyn Runtime, out: &ExecOutcome) -> bool {
    let refused = rt.capabilities().language != crate::Language::CPython
        && matches!(&out.status, ExecStatus::Exception { type_name, .. }
            if ["AttributeError", "ModuleNotFoundError", "NotImplementedError", "NameError", "TypeError"]
                .contains(&type_name.as_str()));
    if refused
        && let ExecStatus::Exception {
            type_name, message, ..
        } = &out.status
    {
        eprintln!(
            "{}: refused as unsupported: {type_name}: {message}",
            rt.name()
        );
    }
    refused
}

/// Environment variable naming a file [`skip`] appends its lines to, so a CI script can
/// list (and grep for) every check that did not run: `AGENTKERNEL_SKIP_LOG=skips.txt cargo
/// test ...`, then `grep SKIPPED skips.txt`.
pub const SKIP_LOG_ENV: &str = "AGENTKERNEL_SKIP_LOG";

/// Reports that `check` does not apply to `backend`, and why: a check that does not run
/// must say so, never pass silently. Prints `SKIPPED <backend> <check> (does not apply):
/// <reason>` straight to stderr (not through `eprintln!`, which the test harness swallows
/// for passing tests) and, when the environment variable
/// `AGENTKERNEL_SKIP_LOG` ([`SKIP_LOG_ENV`]) names a file, appends the same line to it
/// (created if missing; a file that cannot be written fails the test, so a CI script that
/// set it never reads a partial list). Usable from any test, not only this suite:
///
/// ```ignore
/// if !available { return agentkernel_core::conformance::skip("my_test", "qemu", "no /dev/kvm"); }
/// ```
pub fn skip(check: &str, backend: &str, reason: &str) {
    let line = format!("SKIPPED {backend} {check} (does not apply): {reason}");
    {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "{line}");
    }
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV) {
        use std::io::Write;
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = written {
            panic!(
                "{SKIP_LOG_ENV}={}: cannot append the skip line: {e}",
                std::path::Path::new(&path).display()
            );
        }
    }
}

fn assert_ok(out: &ExecOutcome) {
    assert_eq!(
        out.status,
        ExecStatus::Ok,
        "program failed; stdout={:?} stderr={:?}",
        out.stdout.text(),
        out.stderr.text()
    );
}

/// stdout and stderr are captured separately and completely, exec by exec.
pub async fn output_capture(rt: &dyn Runtime) {
    let mut sb = rt.create(&test_spec()).await.expect("create");
    let out = sb
        .exec(
            ExecRequest::new(
                "import sys\nprint('out', 1)\nprint('err', 2, file=sys.stderr)\nprint('ünïcödé ✓')",
            ),
            Arc::new(NoTools),
        )
        .await
        .expect("exec");
    if refused_by_subset(rt, &out) {
        // No stderr: what was printed before the refusal is still captured, exec by exec.
        assert_eq!(out.stdout.text(), "out 1\n");
        let out = sb
            .exec(
                ExecRequest::new("print('ünïcödé ✓', end='')"),
                Arc::new(NoTools),
            )
            .await
            .expect("exec");
        assert_eq!(out.stdout.text(), "ünïcödé ✓");
        sb.shutdown().await.expect("shutdown");
        return;
    }
    assert_ok(&out);
    assert_eq!(out.stdout.text(), "out 1\nünïcödé ✓\n");
    assert_eq!(out.stderr.text(), "err 2\n");
    assert!(!out.stdout.truncated);
    // Output of one exec never bleeds into the next.
    let out = sb
        .exec(
            ExecRequest::new("print('second', end='')"),
            Arc::new(NoTools),
        )
        .await
        .expect("exec");
    assert_eq!(out.stdout.text(), "second");
    assert_eq!(out.stderr.text(), "");
    sb.shutdown().await.expect("shutdown");
}

/// An uncaught exception is an outcome with type, message and a traceback naming the line,
/// which stderr shows too (as a terminal would); the sandbox stays usable.
pub async fn exception_with_traceback(rt: &dyn Runtime) {
    let mut sb = rt.create(&test_spec()).await.expect("create");
    let out = sb
        .exec(
            ExecRequest::new(
                "def f(n):\n    raise ValueError(f'boom {n}')\n\nprint('before')\nf(7)\n",
            ),
            Arc::new(NoTools),
        )
        .await
        .expect("an exception is an outcome, not an error");
    match &out.status {
        ExecStatus::Exception {
            type_name,
            message,
            traceback,
        } => {
            assert_eq!(type_name, "ValueError");
            assert_eq!(message, "boom 7");
            assert!(
                traceback.contains("line 5"),
                "traceback lacks the call line: {traceback}"
            );
            assert!(
                traceback.contains("raise ValueError"),
                "traceback lacks source: {traceback}"
            );
            assert!(
                traceback.trim_end().ends_with("ValueError: boom 7"),
                "{traceback}"
            );
            // Stderr shows it too, as a terminal would.
            assert_eq!(out.stderr.text(), *traceback, "stderr");
        }
        other => panic!("expected an exception, got {other:?}"),
    }
    assert_eq!(out.stdout.text(), "before\n");
    let out = sb
        .exec(ExecRequest::new("print('still alive')"), Arc::new(NoTools))
        .await
        .expect("exec");
    assert_eq!(out.stdout.text(), "still alive\n");
    assert_eq!(out.stderr.text(), "", "the next run's stderr is its own");
    sb.shutdown().await.expect("shutdown");
}

/// `sys.exit(n)` is reported as `Exited { code: n }`, with the status `python3` itself
/// would exit with (`n & 0xFF`: -1 is 255, 2**40 is 0).
pub async fn exit_code_is_reported(rt: &dyn Runtime) {
    let out = run_once(rt, &test_spec(), "import sys\nprint('bye')\nsys.exit(3)").await;
    if refused_by_subset(rt, &out) {
        assert_eq!(out.stdout.text(), "bye\n");
        return;
    }
    assert_eq!(out.status, ExecStatus::Exited { code: 3 });
    assert_eq!(out.stdout.text(), "bye\n");
    for (arg, code) in [("-1", 255), ("2**40", 0), ("300", 44)] {
        let out = run_once(rt, &test_spec(), &format!("import sys\nsys.exit({arg})")).await;
        assert_eq!(out.status, ExecStatus::Exited { code }, "sys.exit({arg})");
    }
}

/// Globals persist across `exec` calls on one sandbox.
pub async fn state_persists_across_exec(rt: &dyn Runtime) {
    let mut sb = rt.create(&test_spec()).await.expect("create");
    let out = sb
        .exec(
            ExecRequest::new("x = 41\ndef inc(v):\n    return v + 1"),
            Arc::new(NoTools),
        )
        .await
        .expect("exec");
    assert_ok(&out);
    let out = sb
        .exec(ExecRequest::new("print(inc(x))"), Arc::new(NoTools))
        .await
        .expect("exec");
    assert_ok(&out);
    assert_eq!(out.stdout.text(), "42\n");
    sb.shutdown().await.expect("shutdown");
}

/// `reset` forgets globals and files in `/tmp` (or the backend says Unsupported).
pub async fn reset_clears_state(rt: &dyn Runtime) {
    let mut sb = rt.create(&test_spec()).await.expect("create");
    let out = sb
        .exec(
            ExecRequest::new("secret = 1\nopen('/tmp/left-over', 'w').write('x')"),
            Arc::new(NoTools),
        )
        .await
        .expect("exec");
    assert_ok(&out);
    match sb.reset().await {
        Ok(()) => {
            assert!(
                rt.capabilities().reset,
                "reset worked but capabilities say it does not"
            );
            let out = sb
                .exec(
                    ExecRequest::new(
                        "from pathlib import Path\ntry:\n    secret\n    defined = True\nexcept NameError:\n    defined = False\nprint(defined, Path('/tmp/left-over').exists())",
                    ),
                    Arc::new(NoTools),
                )
                .await
                .expect("exec after reset");
            assert_eq!(out.stdout.text(), "False False\n");
        }
        Err(Error::Unsupported { .. }) => assert!(!rt.capabilities().reset),
        Err(e) => panic!("reset failed: {e}"),
    }
    sb.shutdown().await.expect("shutdown");
}

/// `snapshot` works or answers Unsupported, as capabilities say.
pub async fn snapshot_matches_capabilities(rt: &dyn Runtime) {
    let mut sb = rt.create(&test_spec()).await.expect("create");
    match sb.snapshot().await {
        Ok(snap) => {
            assert!(
                rt.capabilities().snapshot,
                "snapshot worked but capabilities say it does not"
            );
            assert_eq!(snap.backend, rt.name());
        }
        Err(Error::Unsupported { .. }) => assert!(!rt.capabilities().snapshot),
        Err(e) => panic!("snapshot failed: {e}"),
    }
    sb.shutdown().await.expect("shutdown");
}

/// A network allow-list is refused with Unsupported unless the backend can enforce one.
pub async fn network_allow_list_matches_capabilities(rt: &dyn Runtime) {
    let spec = SandboxSpec {
        network: NetworkPolicy::AllowList(vec!["example.com:443".into()]),
        ..test_spec()
    };
    match rt.create(&spec).await {
        Ok(sb) => {
            assert!(
                rt.capabilities().network_allow_list,
                "allow-list accepted but not a capability"
            );
            sb.shutdown().await.expect("shutdown");
        }
        Err(Error::Unsupported { .. }) => assert!(!rt.capabilities().network_allow_list),
        Err(e) => panic!("unexpected error: {e}"),
    }
}

/// Core admits every spec and request before a backend sees it, so every backend answers
/// alike: a CPU-time limit and a network allow-list are accepted exactly where the
/// capabilities include them and otherwise refused with admission's own error; a zero
/// timeout is refused with admission's error and leaves the sandbox usable.
pub async fn admission_is_the_same_on_every_backend(rt: &dyn Runtime) {
    let caps = rt.capabilities();
    let cpu = limited(|l| l.cpu_time = Some(Duration::from_secs(5)));
    let network = SandboxSpec {
        network: NetworkPolicy::AllowList(vec!["example.com:443".into()]),
        ..test_spec()
    };
    for (what, spec) in [("a cpu_time limit", cpu), ("a network allow-list", network)] {
        let expected = crate::admission::admit(rt.name(), &caps, &spec)
            .err()
            .map(|e| e.to_string());
        match (rt.create(&spec).await, expected) {
            (Ok(sb), None) => sb.shutdown().await.expect("shutdown"),
            (Err(e), Some(refusal)) => {
                assert_eq!(e.to_string(), refusal, "{}: {what}", rt.name());
                assert!(matches!(e, Error::Unsupported { .. }), "{e}");
            }
            (Ok(_), Some(refusal)) => {
                panic!(
                    "{}: {what} was accepted, but admission refuses it: {refusal}",
                    rt.name()
                )
            }
            (Err(e), None) => panic!(
                "{}: {what} is within the capabilities, but the backend refused it: {e}",
                rt.name()
            ),
        }
    }
    let mut sb = rt.create(&test_spec()).await.expect("create");
    let zero = || ExecRequest::new("print('ran')").with_timeout(Duration::ZERO);
    let refusal = crate::admission::AdmittedExec::admit(zero())
        .err()
        .expect("admission refuses a zero timeout")
        .to_string();
    match sb.exec(zero(), Arc::new(NoTools)).await {
        Err(e) => assert_eq!(e.to_string(), refusal, "{}", rt.name()),
        Ok(out) => panic!("{}: a zero timeout ran: {:?}", rt.name(), out.status),
    }
    let out = sb
        .exec(ExecRequest::new("print('ran')"), Arc::new(NoTools))
        .await
        .expect("the sandbox still runs after a refused request");
    assert_ok(&out);
    assert_eq!(out.stdout.text(), "ran\n");
    sb.shutdown().await.expect("shutdown");
}

/// An infinite loop is killed at the wall-time limit; output printed before is kept; the
/// sandbox is then lost until `reset`.
pub async fn wall_time_limit_kills(rt: &dyn Runtime) {
    let mut sb = rt.create(&test_spec()).await.expect("create");
    let started = std::time::Instant::now();
    let out = sb
        .exec(
            ExecRequest::new("print('started', flush=True)\nwhile True:\n    pass")
                .with_timeout(Duration::from_secs(1)),
            Arc::new(NoTools),
        )
        .await
        .expect("a timeout is an outcome");
    assert_eq!(
        out.status,
        ExecStatus::Killed {
            limit: LimitKind::WallTime
        }
    );
    assert_eq!(out.stdout.text(), "started\n");
    assert!(started.elapsed() >= Duration::from_secs(1));
    match sb
        .exec(ExecRequest::new("print(1)"), Arc::new(NoTools))
        .await
    {
        Err(Error::SandboxLost { .. }) => {}
        other => panic!("a killed sandbox must report SandboxLost, got {other:?}"),
    }
    if rt.capabilities().reset {
        sb.reset().await.expect("reset revives a killed sandbox");
        let out = sb
            .exec(ExecRequest::new("print(1)"), Arc::new(NoTools))
            .await
            .expect("exec");
        assert_eq!(out.stdout.text(), "1\n");
    }
    sb.shutdown().await.expect("shutdown");
}

/// A CPU-bound loop is killed at the CPU-time limit (or Unsupported).
pub async fn cpu_time_limit_kills(rt: &dyn Runtime) {
    let spec = limited(|l| l.cpu_time = Some(Duration::from_secs(1)));
    if !rt.capabilities().limits.contains(LimitKind::CpuTime) {
        assert!(matches!(
            rt.create(&spec).await,
            Err(Error::Unsupported { .. })
        ));
        return;
    }
    let out = run_once(rt, &spec, "while True:\n    pass").await;
    assert_eq!(
        out.status,
        ExecStatus::Killed {
            limit: LimitKind::CpuTime
        }
    );
}

/// A huge allocation ends the run as a memory kill (`Killed { limit: Memory }`) on every
/// backend, whether the kernel killed the sandbox or the interpreter raised `MemoryError`
/// (which the program did not catch); a `MemoryError` the program raises itself stays an
/// exception.
pub async fn memory_limit_holds(rt: &dyn Runtime) {
    let spec = limited(|l| l.memory_bytes = Some(256 << 20));
    for code in [
        "s = 'a' * (3 * 2**29)",
        "b = bytearray(3 * 2**29)",
        "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 2**20))",
        "chunks = []\nwhile True:\n    chunks.append('x' * (16 * 2**20) + str(len(chunks)))",
    ] {
        let out = run_once(rt, &spec, code).await;
        if refused_by_subset(rt, &out) {
            continue;
        }
        // One meaning on every backend: the memory limit stopped it.
        assert_eq!(
            out.status,
            ExecStatus::Killed {
                limit: LimitKind::Memory
            },
            "{code:?}: {}",
            out.stderr.text()
        );
    }
    // A MemoryError the program raises itself is its exception, not a memory kill.
    let out = run_once(rt, &spec, "raise MemoryError('not really')").await;
    if !refused_by_subset(rt, &out) {
        assert!(
            matches!(&out.status, ExecStatus::Exception { type_name, .. } if type_name == "MemoryError"),
            "{:?}",
            out.status
        );
    }
}

/// Output past the cap is dropped, counted, and flagged.
pub async fn output_limit_truncates(rt: &dyn Runtime) {
    let spec = limited(|l| l.output_bytes = 1000);
    let out = run_once(
        rt,
        &spec,
        "import sys\nprint('x' * 5000)\nprint('y' * 3000, file=sys.stderr)",
    )
    .await;
    if refused_by_subset(rt, &out) {
        // No stderr: stdout alone must still be capped.
        assert_eq!(out.stdout.bytes.len(), 1000);
        assert!(out.stdout.truncated);
        return;
    }
    assert_ok(&out);
    assert_eq!(out.stdout.bytes.len(), 1000);
    assert!(out.stdout.truncated);
    assert_eq!(out.stdout.total_bytes, 5001);
    assert_eq!(out.stderr.bytes.len(), 1000);
    assert!(out.stderr.truncated);
}

/// No more than `processes` processes can exist at once (or no subprocess at all).
pub async fn process_limit_holds(rt: &dyn Runtime) {
    let spec = limited(|l| l.processes = Some(8));
    let code = r#"
import os, time
started = 0
try:
    for _ in range(50):
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        started += 1
except OSError as e:
    print("refused", type(e).__name__)
print("started", started)
"#;
    let out = run_once(rt, &spec, code).await;
    if !rt.capabilities().subprocess {
        assert!(
            !matches!(out.status, ExecStatus::Ok),
            "fork must fail without subprocess support"
        );
        return;
    }
    assert_ok(&out);
    let text = out.stdout.text();
    assert!(text.contains("refused"), "fork was never refused: {text}");
    let started: u32 = text
        .lines()
        .find_map(|l| l.strip_prefix("started "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count in {text:?}"));
    assert!(
        started < 8,
        "{started} children started under a limit of 8 processes"
    );
}

/// Writing a file larger than `file_size_bytes` fails (`EFBIG`, or a kill naming the limit).
pub async fn file_size_limit_holds(rt: &dyn Runtime) {
    let spec = limited(|l| l.file_size_bytes = Some(1 << 20));
    let code = "import errno\ntry:\n    with open('/tmp/big', 'wb') as f:\n        f.write(b'x' * (2 << 20))\n    print('wrote')\nexcept OSError as e:\n    print('refused', errno.errorcode.get(e.errno))";
    let out = run_once(rt, &spec, code).await;
    match &out.status {
        ExecStatus::Ok => assert_eq!(out.stdout.text(), "refused EFBIG\n"),
        ExecStatus::Killed {
            limit: LimitKind::FileSize,
        } => {}
        _ if refused_by_subset(rt, &out) => subset_write_refused(rt, &spec, "/tmp/big", 2).await,
        other => panic!("expected EFBIG or a file-size kill, got {other:?}"),
    }
}

/// For a subset interpreter without `errno`: writing `mib` MiB to `path` must fail with an
/// `OSError` (or a limit kill).
async fn subset_write_refused(rt: &dyn Runtime, spec: &SandboxSpec, path: &str, mib: u32) {
    let code = format!(
        "from pathlib import Path\ntry:\n    Path('{path}').write_bytes(b'x' * ({mib} << 20))\n    print('wrote')\nexcept OSError as e:\n    print('refused', type(e).__name__)"
    );
    let out = run_once(rt, spec, &code).await;
    match &out.status {
        ExecStatus::Ok => assert!(
            out.stdout.text().starts_with("refused "),
            "{}",
            out.stdout.text()
        ),
        ExecStatus::Killed {
            limit: LimitKind::FileSize | LimitKind::Disk,
        } => {}
        other => panic!("expected a refused write or a limit kill, got {other:?}"),
    }
}

/// `/tmp` is private and capped at `tmp_bytes` (`ENOSPC`, or a kill naming the disk limit).
pub async fn tmp_is_capped(rt: &dyn Runtime) {
    let spec = limited(|l| l.tmp_bytes = 4 << 20);
    let code = "import errno\ntry:\n    with open('/tmp/fill', 'wb') as f:\n        for _ in range(16):\n            f.write(b'x' * (1 << 20))\n            f.flush()\n    print('wrote')\nexcept OSError as e:\n    print('refused', errno.errorcode.get(e.errno))";
    let out = run_once(rt, &spec, code).await;
    match &out.status {
        ExecStatus::Ok => assert_eq!(out.stdout.text(), "refused ENOSPC\n"),
        ExecStatus::Killed {
            limit: LimitKind::Disk,
        } => {}
        _ if refused_by_subset(rt, &out) => subset_write_refused(rt, &spec, "/tmp/fill", 16).await,
        other => panic!("expected ENOSPC or a disk kill, got {other:?}"),
    }
}

/// Files written to `/workspace` are on the host and visible to the next sandbox.
pub async fn workspace_persists_across_sandboxes(rt: &dyn Runtime) {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = SandboxSpec {
        workspace: Some(dir.path().to_path_buf()),
        ..test_spec()
    };
    let out = run_once(
        rt,
        &spec,
        "open('/workspace/note.txt', 'w').write('remember me')",
    )
    .await;
    assert_ok(&out);
    let on_host =
        std::fs::read_to_string(dir.path().join("note.txt")).expect("file is on the host");
    assert_eq!(on_host, "remember me");
    let out = run_once(rt, &spec, "print(open('/workspace/note.txt').read())").await;
    assert_eq!(out.stdout.text(), "remember me\n");
}

/// The environment is exactly what the spec says plus the backend's documented defaults:
/// none of the host's variables leak.
pub async fn environment_is_explicit(rt: &dyn Runtime) {
    let mut spec = test_spec();
    spec.env.insert("GREETING".into(), "hello".into());
    let out = run_once(
        rt,
        &spec,
        "import os, json\nprint(json.dumps(dict(os.environ)))",
    )
    .await;
    assert_ok(&out);
    let env: BTreeMap<String, String> =
        serde_json::from_str(out.stdout.text().trim()).expect("json env");
    assert_eq!(env.get("GREETING").map(String::as_str), Some("hello"));
    const DEFAULTS: &[&str] = &["PATH", "HOME", "TMPDIR", "LANG", "USER", "LC_CTYPE", "PWD"];
    for (name, value) in std::env::vars() {
        if DEFAULTS.contains(&name.as_str()) {
            continue;
        }
        assert!(
            !env.contains_key(&name),
            "host variable {name} leaked into the sandbox"
        );
        if value.len() >= 8 {
            assert!(
                !env.values().any(|v| v == &value),
                "the value of host variable {name} leaked"
            );
        }
    }
}

fn tools_for_test() -> FnTools {
    FnTools::new()
        .with(
            "add",
            "Adds a and b.",
            json!({"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}),
            |args| async move {
                let a = args["a"].as_i64().ok_or_else(|| ToolError::new(ToolErrorKind::InvalidArguments, "a must be an integer"))?;
                let b = args["b"].as_i64().ok_or_else(|| ToolError::new(ToolErrorKind::InvalidArguments, "b must be an integer"))?;
                Ok(json!({"sum": a + b}))
            },
        )
        .with("fail", "Always fails.", json!({"type": "object"}), |_| async move {
            Err(ToolError::new(ToolErrorKind::Failed, "upstream said no"))
        })
        // A buggy tool: panics while it runs, or before it returns its future.
        .with("boom", "Panics.", json!({"type": "object"}), |_| async move {
            if true {
                panic!("kaboom");
            }
            Ok(json!(null))
        })
        .with("boom_early", "Panics at once.", json!({"type": "object"}), |_| {
            if true {
                panic!("kaboom early");
            }
            async move { Ok(json!(null)) }
        })
}

/// Tool calls cross to the host and back; errors become the documented Python exceptions,
/// a tool's panic included (it fails that call, not the run); every call is logged in the
/// outcome.
pub async fn tool_calls_round_trip(rt: &dyn Runtime) {
    let tools: Arc<dyn ToolHost> = Arc::new(tools_for_test());
    let mut sb = rt.create(&test_spec()).await.expect("create");
    let code = r#"
import _agentkernel as ak
total = 0
for i in range(20):
    total += ak.call_tool("add", {"a": i, "b": 1})["sum"]
print("total", total)
print("kw", ak.call_tool("add", a=2, b=3)["sum"])
for name, args in [("nope", {}), ("add", {"a": "x", "b": 1}), ("fail", {}), ("boom", {}), ("boom_early", {})]:
    try:
        ak.call_tool(name, args)
    except Exception as e:
        print(name, type(e).__name__, e)
print("after", ak.call_tool("add", a=1, b=1)["sum"])
"#;
    let out = sb
        .exec(ExecRequest::new(code), tools.clone())
        .await
        .expect("exec");
    assert_ok(&out);
    let text = out.stdout.text();
    assert!(text.contains("total 210\n"), "{text}");
    assert!(text.contains("kw 5\n"), "{text}");
    assert!(text.contains("nope LookupError"), "{text}");
    assert!(
        text.contains("add ValueError a must be an integer"),
        "{text}"
    );
    // A subset interpreter without user exception classes raises RuntimeError instead.
    let tool_error = if rt.capabilities().language == crate::Language::CPython {
        "ToolError"
    } else {
        "RuntimeError"
    };
    assert!(
        text.contains(&format!("fail {tool_error} upstream said no")),
        "{text}"
    );
    // A tool that panics fails its call only: the program gets the tool's error and goes
    // on, the call log records the failure.
    for (name, what) in [("boom", "kaboom"), ("boom_early", "kaboom early")] {
        assert!(
            text.contains(&format!("{name} {tool_error} the tool panicked: {what}")),
            "{text}"
        );
    }
    assert!(text.contains("after 2\n"), "{text}");
    assert_eq!(out.tool_calls.len(), 27);
    assert_eq!(out.tool_calls.iter().filter(|c| c.ok).count(), 22);
    sb.shutdown().await.expect("shutdown");
}

/// What a program prints reaches the caller's [`crate::OutputSink`] as it is printed, not
/// when the exec ends: after each line (flushed) the program asks a host tool whether the
/// sink has it yet, and the tool waits for it (up to 20 s: a liveness bound, not a speed
/// test). Stdout and, where the interpreter has it, stderr.
pub async fn live_output_arrives_as_printed(rt: &dyn Runtime) {
    use std::sync::Mutex;
    type Seen = Arc<Mutex<[Vec<u8>; 2]>>;
    let seen: Seen = Arc::new(Mutex::new([Vec::new(), Vec::new()]));
    let sink: crate::OutputSink = {
        let seen = seen.clone();
        Arc::new(move |kind, bytes: &[u8]| {
            let i = usize::from(kind == crate::StreamKind::Stderr);
            seen.lock().unwrap_or_else(|e| e.into_inner())[i].extend_from_slice(bytes);
        })
    };
    let probe = {
        let seen = seen.clone();
        move |args: serde_json::Value| {
            let seen = seen.clone();
            async move {
                let text = args["text"]
                    .as_str()
                    .unwrap_or_default()
                    .as_bytes()
                    .to_vec();
                let i = usize::from(args["stream"] == "stderr");
                for _ in 0..2000 {
                    if seen.lock().unwrap_or_else(|e| e.into_inner())[i]
                        .windows(text.len())
                        .any(|w| w == text)
                    {
                        return Ok(json!(true));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok(json!(false))
            }
        }
    };
    let tools: Arc<dyn ToolHost> = Arc::new(FnTools::new().with(
        "probe.seen",
        "Whether the caller's output sink has received `text` on `stream` yet.",
        json!({"type": "object", "properties": {"text": {"type": "string"}, "stream": {"type": "string"}}}),
        probe,
    ));
    let full = rt.capabilities().language == crate::Language::CPython;
    let code = if full {
        r#"
import sys, _agentkernel as ak
seen = []
for i in range(3):
    print(f"line {i}", flush=True)
    seen.append(ak.call_tool("probe.seen", text=f"line {i}", stream="stdout"))
    print(f"warn {i}", file=sys.stderr, flush=True)
    seen.append(ak.call_tool("probe.seen", text=f"warn {i}", stream="stderr"))
    if not all(seen):
        break
print("seen", seen)
"#
    } else {
        r#"
import _agentkernel as ak
seen = []
for i in range(3):
    print(f"line {i}")
    seen.append(ak.call_tool("probe.seen", text=f"line {i}", stream="stdout"))
    if not all(seen):
        break
print("seen", seen)
"#
    };
    let mut sb = rt.create(&test_spec()).await.expect("create");
    let out = sb
        .exec(
            ExecRequest::new(code)
                .with_output(sink)
                .with_timeout(Duration::from_secs(120)),
            tools,
        )
        .await
        .expect("exec");
    assert_ok(&out);
    let expected = if full {
        "seen [True, True, True, True, True, True]\n"
    } else {
        "seen [True, True, True]\n"
    };
    assert!(
        out.stdout.text().ends_with(expected),
        "a line reached the sink only after the program went on: {:?}",
        out.stdout.text()
    );
    sb.shutdown().await.expect("shutdown");
}

/// A file planted on the host outside the sandbox's mounts cannot be read.
pub async fn escape_read_planted_file(rt: &dyn Runtime) {
    // Readable by every user of the host (a 0755 directory, a 0644 file), in the host's
    // temp dir and in `/var/tmp`: only the sandbox's own view of the file system keeps
    // them out, not file permissions.
    let mut dirs = vec![world_accessible_dir(&std::env::temp_dir(), 0o755)];
    if std::path::Path::new("/var/tmp").is_dir() {
        dirs.push(world_accessible_dir(
            std::path::Path::new("/var/tmp"),
            0o755,
        ));
    }
    let secret = format!("secret-{}", uuid::Uuid::new_v4());
    let mut paths = Vec::new();
    for dir in &dirs {
        let path = dir.path().join("planted.txt");
        std::fs::write(&path, &secret).expect("plant");
        set_mode(&path, 0o644);
        paths.push(path.display().to_string());
    }
    let code = format!(
        "import os\nfor h in {paths:?}:\n    for p in [h, '/proc/1/root' + h, '/proc/self/root' + h]:\n        try:\n            print(open(p).read())\n        except OSError as e:\n            print('denied', type(e).__name__)\n"
    );
    let out = run_once(rt, &test_spec(), &code).await;
    assert!(
        !out.stdout.text().contains(&secret),
        "the sandbox read a host file: {}",
        out.stdout.text()
    );
    assert!(
        out.stdout.text().contains("denied"),
        "{}",
        out.stdout.text()
    );
}

/// `/etc/shadow` (and the host's `/etc` beyond a harmless few files) is not readable. Where
/// the test runs as root, it also plants a world-readable file in the host's `/etc` (removed
/// afterwards): permissions would let any uid read that one, so only the sandbox's own
/// `/etc` keeps it out.
pub async fn escape_read_etc_shadow(rt: &dyn Runtime) {
    /// Removes the planted file however the check ends.
    struct Planted(std::path::PathBuf);
    impl Drop for Planted {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let secret = format!("etc-secret-{}", uuid::Uuid::new_v4().simple());
    let planted = std::path::PathBuf::from(format!("/etc/{secret}"));
    let root = crate::hostdirs::euid() == 0;
    let guard = (root && std::fs::write(&planted, &secret).is_ok()).then(|| {
        set_mode(&planted, 0o644);
        Planted(planted.clone())
    });
    if guard.is_none() {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {} escape_read_etc_shadow/planted (does not apply): only root can plant a file in the host's /etc",
            rt.name()
        );
    }
    let out = run_once(
        rt,
        &test_spec(),
        &format!(
            "try:\n    print(open('/etc/shadow').read())\nexcept OSError as e:\n    print('denied', type(e).__name__)\ntry:\n    print(open({planted:?}).read())\nexcept OSError as e:\n    print('planted denied', type(e).__name__)",
            planted = planted.display().to_string()
        ),
    )
    .await;
    assert!(
        !out.stdout.text().contains(&secret),
        "{}: the sandbox read a file planted in the host's /etc: {}",
        rt.name(),
        out.stdout.text()
    );
    assert!(
        out.stdout.text().starts_with("denied"),
        "{}",
        out.stdout.text()
    );
    if let Ok(host_shadow) = std::fs::read_to_string("/etc/shadow")
        && let Some(first) = host_shadow.lines().next()
    {
        assert!(!out.stdout.text().contains(first));
    }
}

/// Host processes are invisible and cannot be signalled: a victim process the host starts
/// and the host test process itself both survive the sandbox's attempts to kill them.
pub async fn escape_host_processes(rt: &dyn Runtime) {
    let marker = format!("ak-victim-{}", uuid::Uuid::new_v4().simple());
    let mut victim = std::process::Command::new("sh")
        .args(["-c", &format!("sleep 60; : {marker}")])
        .spawn()
        .expect("spawn victim");
    let code = format!(
        r#"
import os, signal
seen = []
try:
    pids = os.listdir('/proc')
except OSError:
    pids = []  # no /proc at all (wasm)
for pid in pids:
    if pid.isdigit():
        try:
            seen.append(open(f'/proc/{{pid}}/cmdline', 'rb').read().decode(errors='replace'))
        except OSError:
            pass
print('visible', '{marker}' in ' '.join(seen))
for pid in ({victim}, {me}):
    try:
        os.kill(pid, signal.SIGKILL)
        print('signalled', pid)
    except (OSError, AttributeError) as e:  # AttributeError: no os.kill at all (wasm)
        print('refused', type(e).__name__)
"#,
        victim = victim.id(),
        me = std::process::id()
    );
    let out = run_once(rt, &test_spec(), &code).await;
    let still_running = victim.try_wait().expect("try_wait").is_none();
    let _ = victim.kill();
    let _ = victim.wait();
    if refused_by_subset(rt, &out) {
        // No `os` process API at all: what matters is that the victim survived.
        assert!(still_running, "the host victim process was killed");
        return;
    }
    assert!(
        out.stdout.text().contains("visible False"),
        "{}",
        out.stdout.text()
    );
    assert!(
        still_running,
        "the sandbox killed a host process: {}",
        out.stdout.text()
    );
}

/// A TCP listener on the host is unreachable: on its loopback, on its outbound address and
/// on QEMU's user-network gateway (`10.0.2.2`; inside a VM `127.0.0.1` is the guest's own).
pub async fn escape_network(rt: &dyn Runtime) {
    // Listening on every address: inside a VM `127.0.0.1` is the guest's own, so the
    // program also tries the host's outbound address and QEMU's user-network gateway.
    let listener = TcpListener::bind("0.0.0.0:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let mut targets = vec!["127.0.0.1".to_owned(), "10.0.2.2".to_owned()];
    // The host's address on its default route (no packet is sent to find it).
    if let Ok(probe) = std::net::UdpSocket::bind("0.0.0.0:0")
        && probe.connect("192.0.2.1:9").is_ok()
        && let Ok(local) = probe.local_addr()
        && !local.ip().is_unspecified()
    {
        targets.push(local.ip().to_string());
    }
    let code = format!(
        "import socket\nfor host in {targets:?}:\n    try:\n        socket.create_connection((host, {port}), timeout=3)\n        print('connected', host)\n    except OSError as e:\n        print('refused', host, type(e).__name__)"
    );
    let out = run_once(rt, &test_spec(), &code).await;
    let accepted = listener.accept();
    assert!(
        matches!(&accepted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the host listener saw a connection from the sandbox"
    );
    assert!(
        !out.stdout.text().contains("connected"),
        "{}",
        out.stdout.text()
    );
}

/// A host directory of mode `mode` (e.g. 0755: every user may read it; 0777: write it)
/// under `parent`, removed when dropped.
fn world_accessible_dir(parent: &std::path::Path, mode: u32) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("agentkernel-escape-")
        .tempdir_in(parent)
        .expect("tempdir");
    set_mode(dir.path(), mode);
    dir
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// The host's `/usr` (and the sandbox's root) cannot be written, nor a host directory that
/// every user may write (mode 0777, in the host's temp dir and `/var/tmp`): file permissions
/// would let any uid in, so only the sandbox's view of the file system keeps it out.
pub async fn escape_write_host_usr(rt: &dyn Runtime) {
    let name = format!("agentkernel-escape-{}", uuid::Uuid::new_v4().simple());
    let mut open_dirs = vec![world_accessible_dir(&std::env::temp_dir(), 0o777)];
    if std::path::Path::new("/var/tmp").is_dir() {
        open_dirs.push(world_accessible_dir(
            std::path::Path::new("/var/tmp"),
            0o777,
        ));
    }
    let mut targets = vec![
        format!("/usr/{name}"),
        format!("/usr/bin/{name}"),
        format!("/{name}"),
        format!("/etc/{name}"),
    ];
    targets.extend(
        open_dirs
            .iter()
            .map(|d| d.path().join(&name).display().to_string()),
    );
    let code = format!(
        "for p in {targets:?}:\n    try:\n        open(p, 'w').write('x')\n        print('wrote', p)\n    except OSError as e:\n        print('refused', type(e).__name__)"
    );
    let out = run_once(rt, &test_spec(), &code).await;
    for dir in &open_dirs {
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(
            left.is_empty(),
            "{}: the sandbox wrote into the host's {}: {left:?}",
            rt.name(),
            dir.path().display()
        );
    }
    for host in [
        format!("/usr/{name}"),
        format!("/usr/bin/{name}"),
        format!("/{name}"),
        format!("/etc/{name}"),
    ] {
        assert!(
            !std::path::Path::new(&host).exists(),
            "the sandbox created {host} on the host"
        );
    }
    assert!(
        !out.stdout.text().contains("wrote"),
        "{}",
        out.stdout.text()
    );
}

/// A program over the program-size cap ([`ExecRequest::MAX_CODE_BYTES`], 1 MiB) is refused
/// with an [`Error::InvalidRequest`] that names the cap, before the backend does any work
/// on it; the sandbox carries on.
pub async fn programs_over_the_size_cap_are_refused(rt: &dyn Runtime) {
    let mut sb = rt.create(&test_spec()).await.expect("create");
    // 2 MiB of statements (not only a comment, so nothing may skip over it cheaply).
    let code = "x = 1\n".repeat((2 << 20) / 6);
    let refused = sb.exec(ExecRequest::new(code), Arc::new(NoTools)).await;
    match refused {
        Err(err @ Error::InvalidRequest { .. }) => {
            let msg = err.to_string();
            assert!(
                msg.contains("program-size cap of 1 MiB"),
                "{}: the refusal does not name the cap: {msg}",
                rt.name()
            );
        }
        Err(other) => panic!("{}: refused with the wrong error: {other}", rt.name()),
        Ok(out) => panic!(
            "{}: a 2 MiB program ran ({:?}): the backend's Sandbox::exec must call ExecRequest::check_size first",
            rt.name(),
            out.status
        ),
    }
    let out = sb
        .exec(ExecRequest::new("print(1)"), Arc::new(NoTools))
        .await
        .expect("exec after the refusal");
    assert_ok(&out);
    assert_eq!(out.stdout.text(), "1\n");
    sb.shutdown().await.expect("shutdown");
}

/// What identifies a sandbox's processes on the host: `marker` (which its programs put in
/// their command lines) for a backend whose processes are host processes, or the sandbox's
/// id for a microVM, whose processes live inside the VM: on the host there is only the
/// VM's process, which runs under the sandbox's id (QEMU's `-name`).
fn host_marker(rt: &dyn Runtime, sb: &dyn crate::Sandbox, marker: &str) -> String {
    if rt.capabilities().isolation == crate::Isolation::MicroVm {
        sb.id().to_owned()
    } else {
        marker.to_owned()
    }
}

/// When a run is killed, every process it started is gone, including children that
/// ignore SIGTERM in sessions of their own (checked by scanning the host's `/proc`): the
/// run that starts them is the one killed by its time limit, so only the kill can end
/// them (what an earlier run left behind would also end when the next run starts). A
/// backend without subprocesses whose sandbox is a host process of its own (monty's worker)
/// is checked for that process; one that runs in the kernel's own process (wasm, monty
/// in-process) has no process to leave behind, and the check is reported skipped ([`skip`]).
pub async fn kill_leaves_no_process(rt: &dyn Runtime) {
    if !rt.capabilities().subprocess {
        sandbox_process_is_gone_after(rt, "kill_leaves_no_process", Ending::Kill).await;
        return;
    }
    let marker = format!("ak-orphan-{}", uuid::Uuid::new_v4().simple());
    let mut sb = rt.create(&test_spec()).await.expect("create");
    let on_host = host_marker(rt, sb.as_ref(), &marker);
    let code = format!(
        r#"
import os, signal, subprocess
subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 120; : {marker}"], start_new_session=True)
if os.fork() == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.setsid()
    os.execv("/bin/sh", ["sh", "-c", "trap '' TERM; sleep 120; : {marker}"])
print("spawned", flush=True)
while True:
    pass
"#
    );
    let expected = if on_host == marker { 2 } else { 1 };
    // The children are watched for while the run that started them goes on.
    let (out, seen) = tokio::join!(
        sb.exec(
            ExecRequest::new(code).with_timeout(Duration::from_secs(5)),
            Arc::new(NoTools)
        ),
        wait_for_processes(&on_host, expected),
    );
    let out = out.expect("exec");
    assert!(seen, "the check cannot see the sandbox's children");
    assert_eq!(
        out.status,
        ExecStatus::Killed {
            limit: LimitKind::WallTime
        }
    );
    assert_eq!(out.stdout.text(), "spawned\n");
    assert_eq!(
        count_host_processes(&on_host),
        0,
        "processes of a killed run survived it"
    );
    sb.shutdown().await.expect("shutdown");
}

/// Dropping or shutting down a sandbox kills its processes too (for a backend without
/// subprocesses: its own host process, as in [`kill_leaves_no_process`]).
pub async fn shutdown_leaves_no_process(rt: &dyn Runtime) {
    if !rt.capabilities().subprocess {
        sandbox_process_is_gone_after(rt, "shutdown_leaves_no_process", Ending::Shutdown).await;
        return;
    }
    let marker = format!("ak-orphan-{}", uuid::Uuid::new_v4().simple());
    let mut sb = rt.create(&test_spec()).await.expect("create");
    let on_host = host_marker(rt, sb.as_ref(), &marker);
    let code = format!(
        "import subprocess\nsubprocess.Popen(['sh', '-c', \"trap '' TERM; sleep 120; : {marker}\"], start_new_session=True)\nprint('ok')"
    );
    let out = sb
        .exec(ExecRequest::new(code), Arc::new(NoTools))
        .await
        .expect("exec");
    assert_ok(&out);
    assert!(
        wait_for_processes(&on_host, 1).await,
        "the check cannot see the sandbox's child"
    );
    sb.shutdown().await.expect("shutdown");
    assert_eq!(
        count_host_processes(&on_host),
        0,
        "processes outlived shutdown"
    );
}

/// Runs a busy loop in `sb` with a 1 s time limit and checks the run was killed by it.
async fn kill_a_busy_loop_by_its_time_limit(sb: &mut dyn Sandbox) {
    let out = sb
        .exec(
            ExecRequest::new("while True:\n    pass").with_timeout(Duration::from_secs(1)),
            Arc::new(NoTools),
        )
        .await
        .expect("exec");
    assert_eq!(
        out.status,
        ExecStatus::Killed {
            limit: LimitKind::WallTime
        }
    );
}

/// How [`sandbox_process_is_gone_after`] ends a sandbox.
#[derive(Clone, Copy)]
enum Ending {
    /// A run killed by its wall-time limit (then the sandbox is shut down).
    Kill,
    /// `shutdown`.
    Shutdown,
}

/// For a backend without subprocesses: the sandbox's own host processes (found by a marker
/// variable in the sandbox's environment, which such a backend's process is started with)
/// are gone after `ending`. Skipped ([`skip`]) where the sandbox is not a host process.
async fn sandbox_process_is_gone_after(rt: &dyn Runtime, check: &str, ending: Ending) {
    let isolation = rt.capabilities().isolation;
    if matches!(
        isolation,
        crate::Isolation::InProcess | crate::Isolation::Wasm
    ) {
        skip(
            check,
            rt.name(),
            &format!(
                "its sandboxes run inside the kernel's own process (isolation {isolation:?}) and programs cannot start processes: there is no process to outlive the sandbox"
            ),
        );
        return;
    }
    // A microVM's sandbox is its VM process, which runs under the sandbox's id (QEMU's
    // `-name`); any other sandbox process is started with the sandbox's environment.
    let microvm = isolation == crate::Isolation::MicroVm;
    let marker = format!("ak-sandbox-{}", uuid::Uuid::new_v4().simple());
    let mut spec = test_spec();
    spec.env
        .insert("AGENTKERNEL_CONFORMANCE_MARKER".into(), marker.clone());
    let mut sb = rt.create(&spec).await.expect("create");
    let id = sb.id().to_owned();
    let needle = format!("AGENTKERNEL_CONFORMANCE_MARKER={marker}");
    let count = || {
        if microvm {
            count_host_processes(&id)
        } else {
            count_host_processes_where("environ", |environ| {
                environ
                    .split(|b| *b == 0)
                    .any(|var| var == needle.as_bytes())
            })
        }
    };
    let out = sb
        .exec(ExecRequest::new("print('up')"), Arc::new(NoTools))
        .await
        .expect("exec");
    assert_ok(&out);
    let mut seen = 0;
    for _ in 0..200 {
        seen = count();
        if seen > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        seen > 0,
        "{}: the check cannot see the sandbox's process in the host's /proc",
        rt.name()
    );
    match ending {
        Ending::Kill => {
            kill_a_busy_loop_by_its_time_limit(sb.as_mut()).await;
            assert_eq!(
                count(),
                0,
                "{}: the process of a killed sandbox survived the kill",
                rt.name()
            );
            sb.shutdown().await.expect("shutdown");
        }
        Ending::Shutdown => {
            sb.shutdown().await.expect("shutdown");
            assert_eq!(
                count(),
                0,
                "{}: the sandbox's process outlived shutdown",
                rt.name()
            );
        }
    }
}

/// Waits (up to 10 s, polling) until at least `n` host processes carry `marker`.
async fn wait_for_processes(marker: &str, n: usize) -> bool {
    for _ in 0..200 {
        if count_host_processes(marker) >= n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Number of host processes whose command line contains `marker`.
pub fn count_host_processes(marker: &str) -> usize {
    count_host_processes_where("cmdline", |cmd| {
        String::from_utf8_lossy(cmd).contains(marker)
    })
}

/// Number of host processes (other than this one) whose `/proc/PID/<file>` (`cmdline`,
/// `environ`, ...) satisfies `matches`.
pub fn count_host_processes_where(file: &str, matches: impl Fn(&[u8]) -> bool) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let me = std::process::id().to_string();
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.chars().all(|c| c.is_ascii_digit()) && name != me
        })
        .filter_map(|e| std::fs::read(e.path().join(file)).ok())
        .filter(|content| matches(content))
        .count()
}

/// Generates one `#[tokio::test]` per conformance check for the runtime built by `$make`.
#[macro_export]
macro_rules! conformance_suite {
    ($make:expr) => {
        $crate::conformance_suite!(@tests $make;
            output_capture, exception_with_traceback, exit_code_is_reported,
            state_persists_across_exec, reset_clears_state, snapshot_matches_capabilities,
            network_allow_list_matches_capabilities, admission_is_the_same_on_every_backend, wall_time_limit_kills, cpu_time_limit_kills,
            memory_limit_holds, output_limit_truncates, process_limit_holds, file_size_limit_holds,
            tmp_is_capped, workspace_persists_across_sandboxes, environment_is_explicit,
            tool_calls_round_trip, live_output_arrives_as_printed, escape_read_planted_file, escape_read_etc_shadow,
            escape_host_processes, escape_network, escape_write_host_usr, kill_leaves_no_process,
            shutdown_leaves_no_process, programs_over_the_size_cap_are_refused);
    };
    (@tests $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let rt = $make;
                $crate::conformance::$name(&rt).await;
            }
        )*
    };
}
