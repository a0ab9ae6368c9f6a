//! The registry and gate against a real MCP server (testdata/mcp_server.py, built on the official
//! `mcp` SDK from PyPI), without a sandbox: policy, validation, faults and recovery.

use std::time::Duration;

use agentkernel_core::{ToolErrorKind, ToolHost};
use agentkernel_tool_bridge::{FunctionTool, McpServerConfig, ToolPolicy, ToolRegistry};
use serde_json::json;

use agentkernel_testkit::{test_python, testdata};

const TOKEN: &str = "tok-8c1f2a9e77d4";

async fn registry(policy: ToolPolicy) -> ToolRegistry {
    let server = McpServerConfig::stdio(
        test_python().to_string_lossy(),
        [testdata("mcp_server.py").to_string_lossy()],
    )
    .with_env("TEST_TOKEN", TOKEN)
    // Not a secret by its name: must not be redacted.
    .with_env("APP_MODE", "production-mode");
    ToolRegistry::builder()
        .mcp_server("test", server)
        .function(FunctionTool::new(
            "calc",
            "mul",
            "Multiplies.",
            json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}),
            |a| async move { Ok(json!(a["a"].as_i64().unwrap_or(0) * a["b"].as_i64().unwrap_or(0))) },
        ))
        .policy(policy)
        .build()
        .await
        .expect("registry with the test MCP server")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_tools_are_listed_called_and_converted() {
    let reg = registry(ToolPolicy::default()).await;
    let names: Vec<String> = reg.catalog().into_iter().map(|e| e.name).collect();
    for expected in ["calc.mul", "test.add", "test.word_stats", "test.crash"] {
        assert!(
            names.contains(&expected.to_owned()),
            "{expected} missing from {names:?}"
        );
    }
    let gate = reg.gate();
    assert_eq!(
        gate.call("test.add", json!({"a": 2, "b": 40}))
            .await
            .unwrap(),
        json!(42)
    );
    assert_eq!(
        gate.call(
            "test.word_stats",
            json!({"text": "a bb ccc", "min_length": 2})
        )
        .await
        .unwrap(),
        json!({"words": 2, "longest": "ccc"})
    );
    assert_eq!(
        gate.call("calc.mul", json!({"a": 6, "b": 7}))
            .await
            .unwrap(),
        json!(42)
    );
    // Ordinary config values are not mistaken for secrets.
    assert_eq!(
        gate.call("test.echo", json!({"text": "running in production-mode"}))
            .await
            .unwrap(),
        json!("running in production-mode")
    );
    // Only the SDK's wrapper of a non-object result is unwrapped, not a dict with a
    // "result" key.
    assert_eq!(
        gate.call("test.result_dict", json!({})).await.unwrap(),
        json!({"result": "ok-string"})
    );
    // A description carrying the credential is redacted before it reaches the stubs.
    let stub =
        std::fs::read_to_string(reg.stubs_dir().join("test/token_in_description.py")).unwrap();
    assert!(
        !stub.contains(TOKEN) && stub.contains("[redacted]"),
        "{stub}"
    );
    // The generated stub exists with a typed signature.
    let stub = std::fs::read_to_string(reg.stubs_dir().join("test/word_stats.py")).unwrap();
    assert!(
        stub.contains("def word_stats(text: str, *, min_length: int = 1) -> Any:"),
        "{stub}"
    );
    reg.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_and_faults_give_the_documented_errors_and_the_server_recovers() {
    let policy = ToolPolicy {
        allow: vec!["test.*".into()],
        timeout: Duration::from_millis(1500),
        max_result_bytes: 100_000,
        max_calls: 50,
        ..ToolPolicy::default()
    };
    let reg = registry(policy).await;
    let gate = reg.gate();

    let e = gate
        .call("test.add", json!({"a": "two", "b": 1}))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ToolErrorKind::InvalidArguments, "{e}");
    assert!(e.message.contains("not of type \"integer\""), "{e}");

    let e = gate
        .call("calc.mul", json!({"a": 1, "b": 1}))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ToolErrorKind::Denied, "{e}");

    let e = gate.call("test.nope", json!({})).await.unwrap_err();
    assert_eq!(e.kind, ToolErrorKind::NotFound, "{e}");

    let e = gate
        .call("test.slow", json!({"seconds": 30}))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ToolErrorKind::Timeout, "{e}");

    let e = gate
        .call("test.huge", json!({"size": 1_000_000}))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ToolErrorKind::LimitExceeded, "{e}");

    let e = gate
        .call("test.fail", json!({"message": "upstream said no"}))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ToolErrorKind::Failed, "{e}");
    assert!(e.message.contains("upstream said no"), "{e}");

    let before = reg.mcp_generation("test").await;
    let e = gate.call("test.crash", json!({})).await.unwrap_err();
    assert_eq!(e.kind, ToolErrorKind::Failed, "{e}");
    assert!(e.message.contains("restarted"), "{e}");
    // The next call works, on a new server process.
    assert_eq!(
        gate.call("test.add", json!({"a": 1, "b": 1}))
            .await
            .unwrap(),
        json!(2)
    );
    assert_ne!(reg.mcp_generation("test").await, before);

    // A server killed between calls is noticed: the next call just works, on a new process.
    let pid = gate.call("test.pid", json!({})).await.unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let new_pid = gate
        .call("test.pid", json!({}))
        .await
        .expect("the call after an idle death");
    assert_ne!(new_pid, pid);

    // Credentials are redacted from results.
    let leaked = gate.call("test.leak_token", json!({})).await.unwrap();
    assert!(!leaked.to_string().contains(TOKEN), "{leaked}");
    assert_eq!(
        gate.call("test.has_token", json!({})).await.unwrap(),
        json!(true)
    );
    reg.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_budget_is_per_gate() {
    let reg = registry(ToolPolicy {
        max_calls: 2,
        ..ToolPolicy::default()
    })
    .await;
    let gate = reg.gate();
    for _ in 0..2 {
        gate.call("calc.mul", json!({"a": 1, "b": 2}))
            .await
            .unwrap();
    }
    let e = gate
        .call("calc.mul", json!({"a": 1, "b": 2}))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ToolErrorKind::LimitExceeded, "{e}");
    // A new execution gets a new budget.
    reg.gate()
        .call("calc.mul", json!({"a": 1, "b": 2}))
        .await
        .unwrap();
    reg.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_changed_notification_adds_the_new_tool_and_its_stub() {
    let reg = registry(ToolPolicy::default()).await;
    let gate = reg.gate();
    assert_eq!(
        gate.call("test.add_late_tool", json!({})).await.unwrap(),
        json!("added")
    );
    let stub = reg.stubs_dir().join("test/late.py");
    let mut waited = 0;
    while !stub.exists() && waited < 100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    assert!(stub.exists(), "stub for the late tool was not written");
    assert_eq!(
        gate.call("test.late", json!({"x": 4})).await.unwrap(),
        json!(40)
    );
    reg.shutdown().await;
}

/// A remote server over streamable HTTP, authenticated by a header that stays on the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamable_http_server_with_a_bearer_token() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = tokio::process::Command::new(test_python())
        .arg(testdata("mcp_server.py"))
        .args(["--http", &port.to_string()])
        .env("TEST_TOKEN", TOKEN)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut up = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "the HTTP MCP server did not start");
    let url = format!("http://127.0.0.1:{port}/mcp");

    // Without the token the server refuses, and the error says which server.
    let err = ToolRegistry::builder()
        .mcp_server("remote", McpServerConfig::http(&url))
        .build()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("remote") && err.contains("401"), "{err}");

    let reg = ToolRegistry::builder()
        .mcp_server(
            "remote",
            McpServerConfig::http(&url).with_header("Authorization", format!("Bearer {TOKEN}")),
        )
        .build()
        .await
        .expect("registry with the HTTP MCP server");
    let gate = reg.gate();
    assert_eq!(
        gate.call("remote.add", json!({"a": 40, "b": 2}))
            .await
            .unwrap(),
        json!(42)
    );
    let leaked = gate.call("remote.leak_token", json!({})).await.unwrap();
    assert_eq!(leaked, json!("the token is [redacted]"));
    reg.shutdown().await;
    server.kill().await.unwrap();
}
