//! Host tool calls from the program: arguments, results, errors, panics.

use super::*;

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
