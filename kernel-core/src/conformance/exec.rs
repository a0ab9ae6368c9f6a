//! Running programs: output, exceptions, exit codes, the environment, live output, the program-size cap,
//! the last expression's value.

use super::*;

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
    if refused_by_subset(rt, "output_capture", &out) {
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
    if refused_by_subset(rt, "exit_code_is_reported", &out) {
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

/// The value of the last expression ([`crate::ExprValue`]): its repr, and JSON where the
/// value is plain JSON; none when the last statement is not an expression or the value is
/// `None` (as Jupyter shows none; `print(1)` returns `None`); none when the program raised,
/// in its last expression or in the value's repr; a huge repr capped (the outcome stays
/// small); kept state between execs of a session.
pub async fn last_expression_value(rt: &dyn Runtime) {
    use crate::ExprValue;
    let mut sb = rt.create(&test_spec()).await.expect("create");
    let mut run = async |code: &str| {
        sb.exec(ExecRequest::new(code), Arc::new(NoTools))
            .await
            .unwrap_or_else(|e| panic!("{}: exec of {code:?} failed: {e}", rt.name()))
    };
    let value = |out: &ExecOutcome, code: &str| -> Option<ExprValue> {
        assert_eq!(
            out.status,
            ExecStatus::Ok,
            "{code:?}: stdout={:?} stderr={:?}",
            out.stdout.text(),
            out.stderr.text()
        );
        out.value.clone()
    };
    let expect = |out: &ExecOutcome, code: &str, repr: &str, json: Option<serde_json::Value>| {
        let v = value(out, code).unwrap_or_else(|| panic!("{code:?}: no value"));
        assert_eq!(v.repr, repr, "{code:?}");
        assert_eq!(v.json, json, "{code:?}");
        assert!(!v.truncated, "{code:?}");
    };

    // State kept in the session: an assignment has no value, the name then has one.
    let out = run("x = 5").await;
    assert_eq!(value(&out, "x = 5"), None, "an assignment has no value");
    let out = run("x").await;
    expect(&out, "x", "5", Some(json!(5)));
    let out = run("x + 1").await;
    expect(&out, "x + 1", "6", Some(json!(6)));
    // A str's repr has its quotes; its JSON is the string.
    let out = run("'hi'").await;
    expect(&out, "'hi'", "'hi'", Some(json!("hi")));
    // Dicts and lists nest; a tuple is a JSON array.
    let code = "{'a': [1, 2.5, None, True], 'b': ('c',)}";
    let out = run(code).await;
    expect(
        &out,
        code,
        "{'a': [1, 2.5, None, True], 'b': ('c',)}",
        Some(json!({"a": [1, 2.5, null, true], "b": ["c"]})),
    );
    // Values JSON cannot express: repr only.
    let out = run("{1, 2, 3}").await;
    expect(&out, "{1, 2, 3}", "{1, 2, 3}", None);
    let out = run("b'ab'").await;
    expect(&out, "b'ab'", "b'ab'", None);
    let out = run("2 ** 70").await;
    expect(&out, "2 ** 70", "1180591620717411303424", None);
    // Only the last statement counts, and only an expression statement.
    let code = "y = [1]\ny.append(2)\ny";
    let out = run(code).await;
    expect(&out, code, "[1, 2]", Some(json!([1, 2])));
    for code in [
        "1 + 1\nz = 3",
        "print(1)",
        "None",
        "y.append(3)",
        "for i in range(2):\n    i",
    ] {
        let out = run(code).await;
        assert_eq!(value(&out, code), None, "{code:?} has no value");
    }
    let out = run("print(1)").await;
    assert_eq!(
        out.stdout.text(),
        "1\n",
        "the printed value is output, not a value"
    );
    // An exception in the last expression is the program's, with no value.
    let out = run("x = 7\n1 / 0").await;
    match &out.status {
        ExecStatus::Exception { type_name, .. } => assert_eq!(type_name, "ZeroDivisionError"),
        other => panic!("1 / 0: expected ZeroDivisionError, got {other:?}"),
    }
    assert_eq!(out.value, None, "a failed program has no value");
    let out = run("x").await;
    expect(&out, "x", "7", Some(json!(7)));
    // A huge repr is capped by the host, and the outcome stays small.
    let code = "'ab' * 1_000_000";
    let out = run(code).await;
    let v = value(&out, code).expect("a value");
    assert!(v.truncated, "{code:?} is cut");
    assert!(v.repr.starts_with("'abab"), "{}", &v.repr[..20]);
    assert!(v.repr.ends_with(ExprValue::TRUNCATED_MARK));
    assert!(v.repr.len() <= ExprValue::MAX_REPR_BYTES + ExprValue::TRUNCATED_MARK.len());
    assert_eq!(v.json, None, "JSON over its cap is dropped");
    let size = serde_json::to_vec(&out).expect("serialise").len();
    assert!(
        size < 4 * ExprValue::MAX_REPR_BYTES,
        "the outcome is {size} bytes"
    );
    // A repr that raises is the program's exception (CPython: Monty has no classes).
    if rt.capabilities().language == crate::Language::CPython {
        let code = "class R:\n    def __repr__(self):\n        raise ValueError('no repr')\nR()";
        let out = run(code).await;
        match &out.status {
            ExecStatus::Exception {
                type_name, message, ..
            } => {
                assert_eq!(
                    (type_name.as_str(), message.as_str()),
                    ("ValueError", "no repr")
                );
            }
            other => panic!("{code:?}: expected ValueError, got {other:?}"),
        }
        assert_eq!(out.value, None);
        // A repr of what no frame should carry raw (control characters, which the
        // protocol's JSON escapes sixfold, and a lone surrogate) still arrives, capped.
        let code = "class W:\n    def __repr__(self):\n        return '\\x01' * 1_000_000 + '\\ud800'\nW()";
        let out = run(code).await;
        let v = value(&out, code).expect("a value");
        assert!(v.truncated && v.repr.starts_with("\u{1}\u{1}"), "{code:?}");
        let code = "class S:\n    def __repr__(self):\n        return 'a\\ud800b'\nS()";
        let out = run(code).await;
        let v = value(&out, code).expect("a value");
        assert_eq!(v.repr, "a\\ud800b", "a lone surrogate arrives escaped");
        // The interpreter lives on.
        let out = run("x").await;
        expect(&out, "x", "7", Some(json!(7)));
    }
    sb.shutdown().await.expect("shutdown");
}
