//! The HTTP server (`agentkernel::http`, `agentkernel serve --listen`) driven by a real HTTP
//! client (reqwest) on a free loopback port, on real `process` sandboxes: every route, its
//! errors, the order of streamed events, a disconnect stopping the execution, API keys,
//! caps, idle and lifetime closing, the graceful shutdown, and the real binary.

#![cfg(all(feature = "server", feature = "process"))]
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentkernel::http::v1::{ExecutionResult, SandboxInfo, SandboxList, StreamEvent};
use agentkernel::http::{ApiKeys, ServerConfig, ServerLimits, ServerState};
use agentkernel::{FunctionTool, Kernel, ToolRegistry};
use reqwest::StatusCode;
use serde_json::{Value, json};

const KEY_A: &str = "key-a-0123456789abcdef";
const KEY_B: &str = "key-b-0123456789abcdef";

/// A server started in this process, and what the tests need of it.
struct Server {
    base: String,
    data: tempfile::TempDir,
    state: ServerState,
    /// Resolving it shuts the server down.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<agentkernel::Result<()>>,
    /// Released by the test: the `test.gate` tool returns once per notification.
    gate: Arc<tokio::sync::Notify>,
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Shuts the server down and waits until `serve` returned.
    async fn shutdown(mut self) -> tempfile::TempDir {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(60), &mut self.done)
            .await
            .expect("the server stopped within 60 s")
            .unwrap()
            .unwrap();
        self.data
    }

    fn workspaces(&self) -> Vec<String> {
        names_in(&self.data.path().join("workspaces"))
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A kernel on `process` in `data`, with the tool `test.gate` (returns "go" once the test
/// notifies `gate`).
async fn kernel(data: &Path, gate: Arc<tokio::sync::Notify>) -> Kernel {
    kernel_on(data, gate, None, None).await
}

/// [`kernel`] on the Python interpreter `python` (default: the kernel's own choice).
async fn kernel_on(
    data: &Path,
    gate: Arc<tokio::sync::Notify>,
    quota: Option<u64>,
    python: Option<&Path>,
) -> Kernel {
    let registry = ToolRegistry::builder()
        .function(FunctionTool::new(
            "test",
            "gate",
            "Waits until the test lets it return.",
            json!({"type": "object", "properties": {}}),
            move |_| {
                let gate = gate.clone();
                async move {
                    gate.notified().await;
                    Ok(json!("go"))
                }
            },
        ))
        .build()
        .await
        .unwrap();
    let mut builder = Kernel::builder()
        .backend("process")
        .data_dir(data)
        .timeout(Duration::from_secs(60))
        .session_idle_timeout(Duration::from_secs(24 * 3600))
        .tools(registry);
    if let Some(q) = quota {
        builder = builder.workspace_quota(q);
    }
    if let Some(p) = python {
        builder = builder.python(p);
    }
    builder.build().unwrap()
}

async fn start_with(keys: ApiKeys, limits: ServerLimits, grace: Duration) -> Server {
    start_on(keys, limits, grace, None, None).await
}

/// [`start_with`], the kernel's workspaces holding at most `quota` bytes when given and its
/// sandboxes on the Python interpreter `python` when given.
async fn start_on(
    keys: ApiKeys,
    limits: ServerLimits,
    grace: Duration,
    quota: Option<u64>,
    python: Option<&Path>,
) -> Server {
    let data = tempfile::tempdir().unwrap();
    let gate = Arc::new(tokio::sync::Notify::new());
    let config = ServerConfig {
        kernels: vec![kernel_on(data.path(), gate.clone(), quota, python).await],
        api_keys: keys,
        limits,
        shutdown_grace: grace,
    };
    let state = ServerState::new(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(agentkernel::http::serve_state(
        listener,
        state.clone(),
        async move {
            let _ = stopped.await;
        },
    ));
    Server {
        base,
        data,
        state,
        stop: Some(stop),
        done,
        gate,
    }
}

async fn start() -> Server {
    start_with(
        ApiKeys::none(),
        ServerLimits::default(),
        Duration::from_secs(10),
    )
    .await
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn create(s: &Server, body: Value) -> SandboxInfo {
    let r = client()
        .post(s.url("/v1/sandboxes"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json().await.unwrap()
}

async fn exec(s: &Server, id: &str, code: &str) -> ExecutionResult {
    let r = client()
        .post(s.url(&format!("/v1/sandboxes/{id}/execute")))
        .json(&json!({ "code": code }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

/// Asserts a JSON error answer: its status, code, and a non-empty message and hint.
async fn assert_error(r: reqwest::Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(r.status(), status);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        !body["error"]["message"].as_str().unwrap().is_empty(),
        "{body}"
    );
    assert!(
        !body["error"]["hint"].as_str().unwrap().is_empty(),
        "{body}"
    );
    body
}

/// Reads NDJSON events from a streaming response, one line at a time.
struct Events {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl Events {
    async fn next(&mut self) -> Option<StreamEvent> {
        loop {
            if let Some(at) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=at).collect();
                return Some(serde_json::from_slice(&line).unwrap());
            }
            let chunk = self.response.chunk().await.unwrap()?;
            self.buffer.extend_from_slice(&chunk);
        }
    }

    async fn rest(&mut self) -> Vec<StreamEvent> {
        let mut out = Vec::new();
        while let Some(e) = self.next().await {
            out.push(e);
        }
        out
    }
}

async fn stream(s: &Server, id: &str, code: &str) -> Events {
    let r = client()
        .post(s.url(&format!("/v1/sandboxes/{id}/execute")))
        .json(&json!({ "code": code, "stream": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    Events {
        response: r,
        buffer: Vec::new(),
    }
}

/// Host processes whose command line holds `marker` (the host's /proc sees every process
/// of every sandbox).
fn processes_with(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| c.windows(marker.len()).any(|w| w == marker.as_bytes()))
                .unwrap_or(false)
        })
        .count()
}

/// Waits up to 20 s for `f` to hold.
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(Instant::now() < until, "{what}: not within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A program that starts a child holding `marker` in its command line, prints `started`,
/// then runs until stopped.
fn runs_forever(marker: &str) -> String {
    format!(
        "import subprocess, sys, time\n\
         subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', '{marker}'])\n\
         print('started', flush=True)\n\
         while True:\n    time.sleep(0.1)\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_keeps_its_globals_and_every_route_answers() {
    let s = start().await;
    let c = client();
    assert_eq!(
        c.get(s.url("/healthz")).send().await.unwrap().status(),
        StatusCode::OK
    );
    let r = c.get(s.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let ready: Value = r.json().await.unwrap();
    assert_eq!(ready["backends"][0]["name"], "process");
    assert_eq!(ready["store"]["ready"], true);

    let sbx = create(
        &s,
        json!({"env": {"GREETING": "hi"}, "limits": {"memory_mib": 256, "timeout_secs": 20}, "metadata": {"user": "u1"}}),
    )
    .await;
    assert!(sbx.id.starts_with("sbx-"));
    assert_eq!(sbx.backend, "process");
    assert!(sbx.own_workspace);
    assert_eq!(sbx.limits.memory_mib, Some(256));
    assert_eq!(sbx.limits.timeout_secs, Some(20.0));
    assert_eq!(sbx.metadata["user"], "u1");
    assert_eq!(s.workspaces(), vec![sbx.id.clone()]);

    let out = exec(
        &s,
        &sbx.id,
        "import os\nx = 41\nprint(os.environ['GREETING'])",
    )
    .await;
    assert_eq!(out.end.status, "ok");
    assert_eq!(out.end.exit_code, Some(0));
    assert_eq!(out.stdout, "hi\n");
    let out = exec(&s, &sbx.id, "print(x + 1)\nraise KeyError('k')").await;
    assert_eq!(out.stdout, "42\n");
    assert_eq!(out.end.status, "exception");
    assert_eq!(out.end.exit_code, Some(1));
    let err = out.error.unwrap();
    assert_eq!((err.name.as_str(), err.value.as_str()), ("KeyError", "'k'"));
    assert!(err.traceback.contains("KeyError"), "{}", err.traceback);
    let out = exec(&s, &sbx.id, "import sys\nsys.exit(3)").await;
    assert_eq!(
        (out.end.status.as_str(), out.end.exit_code),
        ("exited", Some(3))
    );
    // A per-execution timeout kills the run; the next one starts a fresh interpreter.
    let r = c
        .post(s.url(&format!("/v1/sandboxes/{}/execute", sbx.id)))
        .json(&json!({"code": "import time\ntime.sleep(30)", "timeout_secs": 0.5}))
        .send()
        .await
        .unwrap();
    let out: ExecutionResult = r.json().await.unwrap();
    assert_eq!(out.end.status, "killed");
    assert_eq!(out.end.limit.as_deref(), Some("wall_time"));
    assert_eq!(out.end.exit_code, Some(124));

    let got: SandboxInfo = c
        .get(s.url(&format!("/v1/sandboxes/{}", sbx.id)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got.executions, 4);
    assert_eq!(got.state, "idle");
    let other = create(&s, json!({"workspace": "shared-notes"})).await;
    assert!(!other.own_workspace);
    let list: SandboxList = c
        .get(s.url("/v1/sandboxes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list.sandboxes.iter().map(|x| x.id.as_str()).collect();
    assert_eq!(ids, [sbx.id.as_str(), other.id.as_str()]);

    let metrics = c
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"agentkernel_executions_total{backend="process",status="ok"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("agentkernel_sandboxes_live 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"agentkernel_execution_duration_seconds_count{backend="process"} 4"#),
        "{metrics}"
    );

    for id in [&sbx.id, &other.id] {
        let r = c
            .delete(s.url(&format!("/v1/sandboxes/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }
    let r = c
        .get(s.url(&format!("/v1/sandboxes/{}", sbx.id)))
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::NOT_FOUND, "sandbox_not_found").await;
    let r = c
        .post(s.url(&format!("/v1/sandboxes/{}/execute", sbx.id)))
        .json(&json!({"code": "1"}))
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::NOT_FOUND, "sandbox_not_found").await;
    // The sandbox's own workspace went with it; the named one stays.
    assert_eq!(s.workspaces(), ["shared-notes"]);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_events_arrive_while_the_program_runs_in_order() {
    let s = start().await;
    let sbx = create(&s, json!({})).await;
    let mut events = stream(
        &s,
        &sbx.id,
        "import sys\nfrom tools.test import gate\n\
         print('before', flush=True)\n\
         gate()\n\
         print('after é', flush=True)\n\
         print('oops', file=sys.stderr, flush=True)\n\
         raise ValueError('bad value')",
    )
    .await;
    // The program waits in the tool until this test lets it go: the first chunk must
    // arrive while it still runs.
    let mut text = String::new();
    while text != "before\n" {
        match events.next().await.unwrap() {
            StreamEvent::Stdout { text: t } => text.push_str(&t),
            other => panic!("expected stdout first, got {other:?}"),
        }
    }
    let info: SandboxInfo = client()
        .get(s.url(&format!("/v1/sandboxes/{}", sbx.id)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info.state, "running");
    s.gate.notify_one();
    let rest = events.rest().await;
    let mut stdout = String::new();
    let mut stderr = String::new();
    let mut tail = Vec::new();
    for e in rest {
        match e {
            StreamEvent::Stdout { text } if tail.is_empty() => stdout.push_str(&text),
            StreamEvent::Stderr { text } if tail.is_empty() => stderr.push_str(&text),
            other => tail.push(other),
        }
    }
    assert_eq!(stdout, "after é\n");
    assert!(stderr.starts_with("oops\n"), "{stderr}");
    assert!(stderr.contains("ValueError: bad value"), "{stderr}");
    let [StreamEvent::Error(err), StreamEvent::End(end)] = &tail[..] else {
        panic!("expected error then end, got {tail:?}");
    };
    assert_eq!(
        (err.name.as_str(), err.value.as_str()),
        ("ValueError", "bad value")
    );
    assert_eq!(end.status, "exception");
    assert_eq!(end.exit_code, Some(1));
    assert_eq!(end.tool_calls.len(), 1);
    assert_eq!(end.tool_calls[0].name, "test.gate");
    assert!(end.timings.is_some());
    s.shutdown().await;
}

/// The value of the last expression comes back in both forms: as `value` of the one-object
/// answer and as a `result` event just before `end`; a program ending in a statement has
/// none, and a value that is not JSON has its repr only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_expression_value_comes_back_in_both_forms() {
    let s = start().await;
    let sbx = create(&s, json!({})).await;
    let out = exec(&s, &sbx.id, "x = {'a': [1, 2]}\nx").await;
    let value = out.value.expect("a value");
    assert_eq!(value.repr, "{'a': [1, 2]}");
    assert_eq!(value.json, Some(json!({"a": [1, 2]})));
    assert!(exec(&s, &sbx.id, "y = 1").await.value.is_none());
    let out = exec(&s, &sbx.id, "{1, 2}").await;
    let value = out.value.expect("a value");
    assert_eq!((value.repr.as_str(), value.json), ("{1, 2}", None));

    let events = stream(&s, &sbx.id, "print('p')\nx['a']").await.rest().await;
    // Output may come in several chunks: consecutive stdout events count as one.
    let mut kinds: Vec<&str> = events
        .iter()
        .map(|e| match e {
            StreamEvent::Stdout { .. } => "stdout",
            StreamEvent::Stderr { .. } => "stderr",
            StreamEvent::Display(_) => "display",
            StreamEvent::Result(_) => "result",
            StreamEvent::Error(_) => "error",
            StreamEvent::End(_) => "end",
        })
        .collect();
    kinds.dedup();
    assert_eq!(kinds, ["stdout", "result", "end"], "{events:?}");
    let printed: String = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Stdout { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(printed, "p\n");
    match &events[events.len() - 2] {
        StreamEvent::Result(v) => assert_eq!(v.json, Some(json!([1, 2]))),
        other => panic!("{other:?}"),
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_execution_while_one_runs_is_refused_with_409() {
    let s = start().await;
    let sbx = create(&s, json!({})).await;
    let mut events = stream(
        &s,
        &sbx.id,
        "from tools.test import gate\nprint('in', flush=True)\ngate()\nprint('out')",
    )
    .await;
    assert!(matches!(
        events.next().await,
        Some(StreamEvent::Stdout { .. })
    ));
    let r = client()
        .post(s.url(&format!("/v1/sandboxes/{}/execute", sbx.id)))
        .json(&json!({"code": "print(1)"}))
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::CONFLICT, "sandbox_busy").await;
    s.gate.notify_one();
    let rest = events.rest().await;
    assert!(
        matches!(rest.last(), Some(StreamEvent::End(e)) if e.status == "ok"),
        "{rest:?}"
    );
    // Free again.
    assert_eq!(exec(&s, &sbx.id, "print(2)").await.stdout, "2\n");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_connection_stops_the_execution() {
    let s = start().await;
    let sbx = create(&s, json!({})).await;
    exec(&s, &sbx.id, "kept = 1").await;

    // Streaming: the client reads the first event, then goes away.
    let marker = format!("ak-http-disconnect-{}", uuid_like());
    let mut events = stream(&s, &sbx.id, &runs_forever(&marker)).await;
    assert!(matches!(
        events.next().await,
        Some(StreamEvent::Stdout { .. })
    ));
    eventually("the program's child runs", async || {
        processes_with(&marker) == 1
    })
    .await;
    drop(events);
    eventually(
        "the program's child is gone after the disconnect",
        async || processes_with(&marker) == 0,
    )
    .await;
    eventually("the sandbox is free again", async || {
        let info: SandboxInfo = client()
            .get(s.url(&format!("/v1/sandboxes/{}", sbx.id)))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        info.state == "idle"
    })
    .await;
    // The interpreter was restarted (its globals are gone); the sandbox works.
    let out = exec(&s, &sbx.id, "print('kept' in globals())").await;
    assert_eq!(out.stdout, "False\n");

    // One-object form: the client gives up waiting.
    let marker = format!("ak-http-disconnect-{}", uuid_like());
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let url = s.url(&format!("/v1/sandboxes/{}/execute", sbx.id));
    let body = json!({"code": runs_forever(&marker)});
    let waited = tokio::spawn(async move { impatient.post(url).json(&body).send().await });
    eventually("the program's child runs", async || {
        processes_with(&marker) == 1
    })
    .await;
    assert!(waited.await.unwrap().unwrap_err().is_timeout());
    eventually(
        "the program's child is gone after the client gave up",
        async || processes_with(&marker) == 0,
    )
    .await;
    eventually("the sandbox is free again", async || {
        let r = client()
            .post(s.url(&format!("/v1/sandboxes/{}/execute", sbx.id)))
            .json(&json!({"code": "print('again')"}))
            .send()
            .await
            .unwrap();
        r.status() == StatusCode::OK
    })
    .await;
    let metrics = client()
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"agentkernel_executions_total{backend="process",status="cancelled"} 2"#),
        "{metrics}"
    );
    s.shutdown().await;
}

fn uuid_like() -> String {
    format!(
        "{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_json_errors_with_the_right_status() {
    let limits = ServerLimits {
        max_body_bytes: 64 << 10,
        ..ServerLimits::default()
    };
    let s = start_with(ApiKeys::none(), limits, Duration::from_secs(10)).await;
    let c = client();
    let post = |path: &str, body: &'static str| {
        c.post(s.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    assert_error(
        post("/v1/sandboxes", "{not json").await.unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid_json",
    )
    .await;
    assert_error(
        post("/v1/sandboxes", r#"{"bakend": "process"}"#)
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid_json",
    )
    .await;
    assert_error(
        post("/v1/sandboxes", r#"{"idle_timeout_secs": "soon"}"#)
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid_json",
    )
    .await;
    let r = c
        .post(s.url("/v1/sandboxes"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::BAD_REQUEST, "invalid_json").await;
    for (body, what) in [
        (json!({"backend": "nosuch"}), "not served"),
        (json!({"limits": {"memory_mib": 1 << 20}}), "memory_bytes"),
        (json!({"limits": {"timeout_secs": -1}}), "timeout_secs"),
        (json!({"limits": {"memory_mib": 1}}), "too small"),
        (json!({"idle_timeout_secs": 1e12}), "idle_timeout_secs"),
        (json!({"max_lifetime_secs": 0}), "max_lifetime_secs"),
        (json!({"workspace": "../etc"}), "valid"),
        (json!({"workspace": "sbx-mine"}), "sbx-"),
        (json!({"env": {"BAD=NAME": "x"}}), "BAD=NAME"),
    ] {
        let r = c
            .post(s.url("/v1/sandboxes"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let e = assert_error(r, StatusCode::BAD_REQUEST, "invalid_request").await;
        assert!(
            e["error"]["message"].as_str().unwrap().contains(what)
                || e["error"]["hint"].as_str().unwrap().contains(what),
            "{body}: {e}"
        );
    }
    let big = "x".repeat(100 << 10);
    let r = c
        .post(s.url("/v1/sandboxes"))
        .json(&json!({"metadata": {"k": big}}))
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large").await;

    let sbx = create(&s, json!({"limits": {"timeout_secs": 5}})).await;
    let exec_url = s.url(&format!("/v1/sandboxes/{}/execute", sbx.id));
    let r = c
        .post(&exec_url)
        .json(&json!({"code": "1", "timeout_secs": 6}))
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    let r = c
        .post(&exec_url)
        .json(&json!({"cod": "1"}))
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::BAD_REQUEST, "invalid_json").await;
    let r = c
        .post(s.url("/v1/sandboxes/sbx-nosuch/execute"))
        .json(&json!({"code": "1"}))
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::NOT_FOUND, "sandbox_not_found").await;
    let r = c
        .delete(s.url("/v1/sandboxes/../../etc"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // (`/v2/…` belongs to the E2B control API: docs/e2b.md.)
    let r = c.get(s.url("/v9/nothing")).send().await.unwrap();
    assert_error(r, StatusCode::NOT_FOUND, "route_not_found").await;
    let r = c.put(s.url("/v1/sandboxes")).send().await.unwrap();
    assert_error(r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
    // Uploads are streamed to disk, held to the file-size limit, not the JSON body cap.
    let r = c
        .put(s.url(&format!("/v1/sandboxes/{}/files/big.bin", sbx.id)))
        .body(vec![7u8; 200 << 10])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // The server still works after all that.
    assert_eq!(exec(&s, &sbx.id, "print(7)").await.stdout, "7\n");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_required_in_either_header_and_keys_see_only_their_sandboxes() {
    let keys = ApiKeys::from_keys([KEY_A, KEY_B]).unwrap();
    let s = start_with(keys, ServerLimits::default(), Duration::from_secs(10)).await;
    let c = client();
    // No key needed for the liveness probe only.
    assert_eq!(
        c.get(s.url("/healthz")).send().await.unwrap().status(),
        StatusCode::OK
    );
    let r = c.get(s.url("/v1/sandboxes")).send().await.unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_error(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    for bad in [
        ("authorization", "Bearer wrong-key-0123456789"),
        ("authorization", "Basic a2V5"),
        ("authorization", "Bearer "),
        ("x-api-key", "wrong-key-0123456789"),
        ("x-api-key", ""),
    ] {
        let r = c
            .get(s.url("/v1/sandboxes"))
            .header(bad.0, bad.1)
            .send()
            .await
            .unwrap();
        assert_error(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    let r = c.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Both headers: both must be keys.
    let r = c
        .get(s.url("/v1/sandboxes"))
        .bearer_auth(KEY_A)
        .header("x-api-key", "wrong-key-0123456789")
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let r = c
        .get(s.url("/v1/sandboxes"))
        .bearer_auth(KEY_A)
        .header("x-api-key", KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let r = c
        .post(s.url("/v1/sandboxes"))
        .bearer_auth(KEY_A)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let a: SandboxInfo = r.json().await.unwrap();
    let r = c
        .post(s.url(&format!("/v1/sandboxes/{}/execute", a.id)))
        .header("x-api-key", KEY_A)
        .json(&json!({"code": "print('as a')"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Key B neither sees nor touches key A's sandbox.
    let list: SandboxList = c
        .get(s.url("/v1/sandboxes"))
        .header("x-api-key", KEY_B)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(list.sandboxes.is_empty());
    for r in [
        c.get(s.url(&format!("/v1/sandboxes/{}", a.id)))
            .header("x-api-key", KEY_B)
            .send()
            .await
            .unwrap(),
        c.delete(s.url(&format!("/v1/sandboxes/{}", a.id)))
            .header("x-api-key", KEY_B)
            .send()
            .await
            .unwrap(),
        c.post(s.url(&format!("/v1/sandboxes/{}/execute", a.id)))
            .header("x-api-key", KEY_B)
            .json(&json!({"code": "1"}))
            .send()
            .await
            .unwrap(),
    ] {
        assert_error(r, StatusCode::NOT_FOUND, "sandbox_not_found").await;
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_caps_answer_429_with_retry_after() {
    let keys = ApiKeys::from_keys([KEY_A, KEY_B]).unwrap();
    let limits = ServerLimits {
        max_sandboxes: 3,
        max_sandboxes_per_key: 2,
        ..ServerLimits::default()
    };
    let s = start_with(keys, limits, Duration::from_secs(10)).await;
    let c = client();
    let make_idle = async |key: &str, idle: u64| {
        c.post(s.url("/v1/sandboxes"))
            .bearer_auth(key)
            .json(&json!({"idle_timeout_secs": idle}))
            .send()
            .await
            .unwrap()
    };
    let make = async |key: &str| make_idle(key, 3000).await;
    // Retry-After is when the reaper may free a place: the sooner idle timeout of the two.
    let retry_after = |r: &reqwest::Response| -> u64 {
        r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let first: SandboxInfo = make_idle(KEY_A, 400).await.json().await.unwrap();
    assert_eq!(make_idle(KEY_A, 300).await.status(), StatusCode::CREATED);
    let r = make(KEY_A).await;
    let after = retry_after(&r);
    assert!((200..=300).contains(&after), "Retry-After {after}");
    let e = assert_error(r, StatusCode::TOO_MANY_REQUESTS, "too_many_sandboxes").await;
    assert!(
        e["error"]["message"].as_str().unwrap().contains("per")
            || e["error"]["message"]
                .as_str()
                .unwrap()
                .contains("this API key")
    );
    // Key B has its own count, up to the total.
    assert_eq!(make(KEY_B).await.status(), StatusCode::CREATED);
    let r = make(KEY_B).await;
    // The server's cap: the soonest of anyone's (key A's 300 s one).
    let after = retry_after(&r);
    assert!((200..=300).contains(&after), "Retry-After {after}");
    let e = assert_error(r, StatusCode::TOO_MANY_REQUESTS, "too_many_sandboxes").await;
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maximum of 3"),
        "{e}"
    );
    // Deleting one makes room.
    let r = c
        .delete(s.url(&format!("/v1/sandboxes/{}", first.id)))
        .bearer_auth(KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(make(KEY_B).await.status(), StatusCode::CREATED);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_expired_sandboxes_are_closed() {
    let s = start().await;
    let idle = create(&s, json!({"idle_timeout_secs": 1})).await;
    let busy = create(&s, json!({"max_lifetime_secs": 2, "idle_timeout_secs": 60})).await;
    let marker = format!("ak-http-lifetime-{}", uuid_like());
    let mut events = stream(&s, &busy.id, &runs_forever(&marker)).await;
    assert!(matches!(
        events.next().await,
        Some(StreamEvent::Stdout { .. })
    ));
    // The run outlives the sandbox's lifetime: it is stopped, and says why.
    let rest = events.rest().await;
    let Some(StreamEvent::End(end)) = rest.last() else {
        panic!("no end: {rest:?}")
    };
    assert_eq!(end.status, "cancelled");
    assert!(
        end.reason.as_deref().unwrap().contains("lifetime"),
        "{end:?}"
    );
    eventually("the program's child is gone", async || {
        processes_with(&marker) == 0
    })
    .await;
    eventually("the idle sandbox is closed", async || {
        client()
            .get(s.url(&format!("/v1/sandboxes/{}", idle.id)))
            .send()
            .await
            .unwrap()
            .status()
            == StatusCode::NOT_FOUND
    })
    .await;
    let r = client()
        .get(s.url(&format!("/v1/sandboxes/{}", busy.id)))
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::NOT_FOUND, "sandbox_not_found").await;
    eventually("their workspaces are deleted", async || {
        s.workspaces().is_empty()
    })
    .await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_runs_finish_within_the_grace_then_stops_the_rest() {
    let s = start_with(
        ApiKeys::none(),
        ServerLimits::default(),
        Duration::from_secs(3),
    )
    .await;
    let short = create(&s, json!({})).await;
    let long = create(&s, json!({})).await;
    let marker = format!("ak-http-shutdown-{}", uuid_like());
    let mut forever = stream(&s, &long.id, &runs_forever(&marker)).await;
    assert!(matches!(
        forever.next().await,
        Some(StreamEvent::Stdout { .. })
    ));
    // This one waits in the tool until after the shutdown began, then ends by itself.
    let mut finishing = stream(
        &s,
        &short.id,
        "from tools.test import gate\nprint('waiting', flush=True)\ngate()\nprint('finished')",
    )
    .await;
    assert!(matches!(
        finishing.next().await,
        Some(StreamEvent::Stdout { .. })
    ));
    let state = s.state.clone();
    let base = s.base.clone();
    let gate = s.gate.clone();
    let data = tokio::spawn(s.shutdown());
    eventually("the shutdown began", async || state.is_draining()).await;
    // New work is refused meanwhile.
    let r = client()
        .post(format!("{base}/v1/sandboxes/{}/execute", short.id))
        .json(&json!({"code": "1"}))
        .send()
        .await;
    if let Ok(r) = r {
        assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "shutting_down").await;
    }
    gate.notify_one();
    let rest = finishing.rest().await;
    assert!(
        matches!(rest.last(), Some(StreamEvent::End(e)) if e.status == "ok"),
        "{rest:?}"
    );
    let rest = forever.rest().await;
    let Some(StreamEvent::End(end)) = rest.last() else {
        panic!("no end: {rest:?}")
    };
    assert_eq!(end.status, "cancelled");
    assert!(
        end.reason.as_deref().unwrap().contains("shut down"),
        "{end:?}"
    );
    let data = data.await.unwrap();
    assert_eq!(processes_with(&marker), 0);
    assert!(names_in(&data.path().join("workspaces")).is_empty());
    assert_eq!(state.live_sandboxes(), 0);
}

/// The `agentkernel` binary, with its data dir in `data`.
fn binary(data: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_agentkernel"));
    cmd.env("AGENTKERNEL_DATA_DIR", data)
        .env_remove("AGENTKERNEL_CONFIG")
        .kill_on_drop(true);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_http_prints_its_address_and_stops_on_sigterm() {
    use tokio::io::AsyncBufReadExt as _;
    let data = tempfile::tempdir().unwrap();
    let keys = data.path().join("keys");
    std::fs::write(&keys, format!("# test key\n{KEY_A}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mut child = binary(data.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--api-keys"])
        .arg(&keys)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the address within 60 s")
        .unwrap()
        .unwrap();
    let base = line
        .strip_prefix("agentkernel: listening on ")
        .unwrap_or_else(|| panic!("{line}"))
        .to_owned();
    let c = client();
    let r = c
        .post(format!("{base}/v1/sandboxes"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let sbx: SandboxInfo = c
        .post(format!("{base}/v1/sandboxes"))
        .bearer_auth(KEY_A)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let out: ExecutionResult = c
        .post(format!("{base}/v1/sandboxes/{}/execute", sbx.id))
        .bearer_auth(KEY_A)
        .json(&json!({"code": "print(6 * 7)"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(out.stdout, "42\n");
    let pid = child.id().unwrap() as i32;
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("it exits within 60 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(names_in(&data.path().join("workspaces")).is_empty());
}

/// The output of a `serve` that must refuse to start: a server that starts instead (it would
/// run until killed) fails the test after 60 s rather than hanging it.
async fn refused_within(
    run: impl std::future::Future<Output = std::io::Result<std::process::Output>>,
) -> std::process::Output {
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the server started instead of refusing (still running after 60 s)")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_refuses_an_open_non_loopback_address_and_a_shared_key_file() {
    let data = tempfile::tempdir().unwrap();
    let out = binary(data.path())
        .args(["serve", "--listen", "0.0.0.0:0"])
        .kill_on_drop(true)
        .output();
    let out = refused_within(out).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("without API keys") && err.contains("--api-keys"),
        "{err}"
    );

    let out = binary(data.path())
        .args(["serve", "--listen", "nowhere"])
        .kill_on_drop(true)
        .output();
    let out = refused_within(out).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:8765"));

    let keys: PathBuf = data.path().join("keys");
    std::fs::write(&keys, format!("{KEY_A}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let out = binary(data.path())
        .args(["serve", "--listen", "0.0.0.0:0", "--api-keys"])
        .arg(&keys)
        .kill_on_drop(true)
        .output();
    let out = refused_within(out).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_go_both_ways_and_never_through_a_symlink() {
    let s = start().await;
    let c = client();
    let sbx = create(&s, json!({"limits": {"file_size_bytes": 1 << 20}})).await;
    let files = |p: &str| s.url(&format!("/v1/sandboxes/{}/files/{p}", sbx.id));
    // Upload (parents made), then the program reads it and writes another.
    let r = c
        .put(files("data/in.txt"))
        .body("hello file")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let written: Value = r.json().await.unwrap();
    assert_eq!(written, json!({"path": "data/in.txt", "size": 10}));
    let out = exec(
        &s,
        &sbx.id,
        "import os\nprint(open('/workspace/data/in.txt').read())\n\
         open('/workspace/out.bin', 'wb').write(bytes(range(256)) * 4096)\n\
         os.symlink('data/in.txt', '/workspace/inner-link')",
    )
    .await;
    assert_eq!(out.stdout, "hello file\n", "{}", out.stderr);
    let r = c.get(files("out.bin")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    let bytes = r.bytes().await.unwrap();
    assert_eq!(bytes.len(), 256 * 4096);
    assert!(
        bytes
            .chunks(256)
            .all(|c| c.iter().enumerate().all(|(i, b)| *b as usize == i))
    );
    // `/workspace/...` names the same file.
    let r = c.get(files("/workspace/data/in.txt")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "hello file");
    // Listings: the workspace, and a directory.
    let list: agentkernel::http::v1::FileList = c
        .get(s.url(&format!("/v1/sandboxes/{}/files", sbx.id)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<(&str, &str)> = list
        .entries
        .iter()
        .map(|e| (e.name.as_str(), e.kind.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("data", "dir"),
            ("inner-link", "symlink"),
            ("out.bin", "file")
        ]
    );
    let list: agentkernel::http::v1::FileList = c
        .get(files("data"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.entries.len(), 1);
    assert_eq!(list.entries[0].size, 10);

    // Symlinks in the workspace are never followed, even ones leaving it (planted here
    // on the host: a backend without the write layer leaves them to the sweep).
    let ws = s.data.path().join("workspaces").join(&sbx.id);
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "host secret").unwrap();
    std::os::unix::fs::symlink(outside.path(), ws.join("evil-dir")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), ws.join("evil-file")).unwrap();
    for p in ["inner-link", "evil-file", "evil-dir/secret", "evil-dir"] {
        let r = c.get(files(p)).send().await.unwrap();
        assert_error(r, StatusCode::BAD_REQUEST, "symlink_refused").await;
    }
    let r = c
        .put(files("evil-dir/planted"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::BAD_REQUEST, "symlink_refused").await;
    assert!(!outside.path().join("planted").exists());
    // Writing over a link replaces the link, never its target.
    let r = c
        .put(files("evil-file"))
        .body("replaced")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        std::fs::read_to_string(outside.path().join("secret")).unwrap(),
        "host secret"
    );
    assert!(!ws.join("evil-file").is_symlink());
    // Deleting a link removes the link, not what it points at.
    let r = c.delete(files("evil-dir")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(outside.path().join("secret").exists());
    assert!(!ws.join("evil-dir").exists());

    for p in ["../escape", "a/../../escape", "/etc/passwd", "/tmp/x"] {
        let r = c.get(files(p)).send().await.unwrap();
        // A client may normalise `..` away; either way nothing outside is served.
        assert!(
            matches!(r.status(), StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND),
            "{p}: {}",
            r.status()
        );
    }
    let r = c
        .get(s.url(&format!(
            "/v1/sandboxes/{}/files/a%2F..%2F..%2Fescape",
            sbx.id
        )))
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::BAD_REQUEST, "invalid_path").await;
    let r = c.get(files("missing.txt")).send().await.unwrap();
    assert_error(r, StatusCode::NOT_FOUND, "file_not_found").await;
    let r = c.put(files("data")).body("x").send().await.unwrap();
    assert_error(r, StatusCode::CONFLICT, "is_a_directory").await;
    // Past the sandbox's file-size limit: 413, and nothing is left behind.
    let r = c
        .put(files("big.bin"))
        .body(vec![0u8; (1 << 20) + 1])
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::PAYLOAD_TOO_LARGE, "file_too_large").await;
    assert!(
        !names_in(&ws).iter().any(|n| n.contains("big.bin")),
        "{:?}",
        names_in(&ws)
    );
    // A file rewritten after the program read it: the program sees the new content.
    let r = c
        .put(files("data/in.txt"))
        .body("second")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let out = exec(&s, &sbx.id, "print(open('/workspace/data/in.txt').read())").await;
    assert_eq!(out.stdout, "second\n");
    let r = c
        .put(files("fresh.txt"))
        .body("new one")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let out = exec(&s, &sbx.id, "print(open('/workspace/fresh.txt').read())").await;
    assert_eq!(out.stdout, "new one\n");
    let r = c.delete(files("data")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(!ws.join("data").exists());

    // A change while an execution runs is refused.
    let mut events = stream(
        &s,
        &sbx.id,
        "from tools.test import gate\nprint('in', flush=True)\ngate()",
    )
    .await;
    assert!(matches!(
        events.next().await,
        Some(StreamEvent::Stdout { .. })
    ));
    let r = c.put(files("late.txt")).body("x").send().await.unwrap();
    assert_error(r, StatusCode::CONFLICT, "sandbox_busy").await;
    s.gate.notify_one();
    events.rest().await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tool_catalog_and_named_workspaces_are_listed() {
    let s = start().await;
    let c = client();
    let tools: Value = c
        .get(s.url("/v1/tools"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tools["tools"][0]["name"], "test.gate", "{tools}");
    assert!(tools["tools"][0]["input_schema"].is_object());
    let r = c
        .get(s.url("/v1/tools?backend=nosuch"))
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::BAD_REQUEST, "invalid_request").await;

    let sbx = create(&s, json!({"workspace": "notes"})).await;
    exec(&s, &sbx.id, "open('/workspace/a.txt', 'w').write('abc')").await;
    let own = create(&s, json!({})).await;
    let list: Value = c
        .get(s.url("/v1/workspaces"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        list,
        json!({"workspaces": [{"name": "notes", "bytes": list["workspaces"][0]["bytes"], "files": 1,
            "modified": list["workspaces"][0]["modified"], "in_use": true}]}),
        "a sandbox's own workspace is not listed"
    );
    let r = c
        .delete(s.url("/v1/workspaces/notes"))
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::CONFLICT, "workspace_in_use").await;
    let r = c
        .delete(s.url(&format!("/v1/workspaces/{}", own.id)))
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::NOT_FOUND, "workspace_not_found").await;
    c.delete(s.url(&format!("/v1/sandboxes/{}", sbx.id)))
        .send()
        .await
        .unwrap();
    let r = c
        .delete(s.url("/v1/workspaces/notes"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = c
        .delete(s.url("/v1/workspaces/notes"))
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::NOT_FOUND, "workspace_not_found").await;
    s.shutdown().await;
}

/// Every `$ref` in `v`.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_exactly_the_routes_served() {
    let keys = ApiKeys::from_keys([KEY_A]).unwrap();
    let s = start_with(keys, ServerLimits::default(), Duration::from_secs(10)).await;
    let c = client();
    // Served without a key, like the probes.
    let r = c.get(s.url("/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.push((method.to_uppercase(), path.clone()));
        }
    }
    documented.sort();
    let mut served: Vec<(String, String)> = [
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("GET", "/v1/sandboxes"),
        ("POST", "/v1/sandboxes"),
        ("GET", "/v1/sandboxes/{id}"),
        ("DELETE", "/v1/sandboxes/{id}"),
        ("POST", "/v1/sandboxes/{id}/execute"),
        ("GET", "/v1/sandboxes/{id}/files"),
        ("GET", "/v1/sandboxes/{id}/files/{path}"),
        ("PUT", "/v1/sandboxes/{id}/files/{path}"),
        ("DELETE", "/v1/sandboxes/{id}/files/{path}"),
        ("GET", "/v1/tools"),
        ("GET", "/v1/workspaces"),
        ("DELETE", "/v1/workspaces/{name}"),
        ("POST", "/v1/tasks"),
        ("GET", "/v1/tasks"),
        ("GET", "/v1/tasks/{id}"),
        ("GET", "/v1/tasks/{id}/wait"),
        ("POST", "/v1/tasks/{id}/cancel"),
        ("GET", "/v1/tasks/{id}/events"),
    ]
    .iter()
    .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
    .collect();
    served.sort();
    assert_eq!(documented, served);
    // Every documented operation is routed (a request reaches its handler: no
    // route_not_found, no 405), and other methods on its path are not.
    for (method, path) in &documented {
        let concrete = path
            .replace("{id}", "sbx-none")
            .replace("{path}", "x.txt")
            .replace("{name}", "none");
        let r = c
            .request(method.parse().unwrap(), s.url(&concrete))
            .bearer_auth(KEY_A)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_ne!(
            r.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        let body = r.text().await.unwrap();
        assert!(!body.contains("route_not_found"), "{method} {path}: {body}");
        let r = c
            .patch(s.url(&concrete))
            .bearer_auth(KEY_A)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "PATCH {path}");
    }
    // Every schema it refers to is in it.
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(all.iter().any(|r| r.ends_with("/ExecutionResult")));
    for r in all {
        let name = r.strip_prefix("#/components/schemas/").unwrap();
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "{r} is missing"
        );
    }
    for scheme in ["bearer", "api_key"] {
        assert!(doc["components"]["securitySchemes"][scheme].is_object());
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_submitted_waited_for_listed_and_cancelled() {
    let s = start().await;
    let c = client();
    let r = c
        .post(s.url("/v1/tasks"))
        .json(&json!({"code": "print(6 * 7)", "timeout_secs": 20}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let task: Value = r.json().await.unwrap();
    let id = task["id"].as_str().unwrap().to_owned();
    assert!(matches!(
        task["state"].as_str(),
        Some("queued" | "running" | "succeeded")
    ));
    // Its states as NDJSON, ending with the final one.
    let events = c
        .get(s.url(&format!("/v1/tasks/{id}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(events.headers()["content-type"], "application/x-ndjson");
    let text = events.text().await.unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last, json!({"id": id, "state": "succeeded"}), "{text}");
    let done: Value = c
        .get(s.url(&format!("/v1/tasks/{id}/wait?timeout_secs=60")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(done["state"], "succeeded");
    assert_eq!(done["result"]["output"], "42\n");
    assert_eq!(done["result"]["exit_code"], 0);

    // A long one, cancelled while it runs or waits.
    let long: Value = c
        .post(s.url("/v1/tasks"))
        .json(&json!({"code": "import time\ntime.sleep(60)"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let long_id = long["id"].as_str().unwrap().to_owned();
    let r = c
        .post(s.url(&format!("/v1/tasks/{long_id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let before: Value = r.json().await.unwrap();
    assert!(matches!(
        before["previous_state"].as_str(),
        Some("queued" | "running")
    ));
    let ended: Value = c
        .get(s.url(&format!("/v1/tasks/{long_id}/wait?timeout_secs=60")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ended["state"], "cancelled");

    let list: Value = c
        .get(s.url("/v1/tasks?state=succeeded"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id.as_str()]);
    let all: Value = c
        .get(s.url("/v1/tasks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all["tasks"].as_array().unwrap().len(), 2);

    for (r, status, code) in [
        (
            c.get(s.url("/v1/tasks/nosuch")).send().await.unwrap(),
            StatusCode::NOT_FOUND,
            "task_not_found",
        ),
        (
            c.post(s.url("/v1/tasks/nosuch/cancel"))
                .send()
                .await
                .unwrap(),
            StatusCode::NOT_FOUND,
            "task_not_found",
        ),
        (
            c.get(s.url("/v1/tasks?state=done")).send().await.unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            c.post(s.url("/v1/tasks"))
                .json(&json!({"code": "1", "timeout_secs": 1e9}))
                .send()
                .await
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            c.post(s.url("/v1/tasks"))
                .json(&json!({"code": "1", "workspace": "sbx-x"}))
                .send()
                .await
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ] {
        assert_error(r, status, code).await;
    }
    s.shutdown().await;
}

/// An E2B sandbox made through the control API: (id, envd headers).
async fn e2b_sandbox(s: &Server) -> (String, reqwest::header::HeaderMap) {
    let r = client()
        .post(s.url("/sandboxes"))
        .json(&json!({"templateID": "code-interpreter-v1", "timeout": 300}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.unwrap();
    let id = v["sandboxID"].as_str().unwrap().to_owned();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("E2b-Sandbox-Id", id.parse().unwrap());
    headers.insert("E2b-Sandbox-Port", "49983".parse().unwrap());
    headers.insert(
        "X-Access-Token",
        v["envdAccessToken"].as_str().unwrap().parse().unwrap(),
    );
    (id, headers)
}

/// A multipart upload of one file named `name` with `boundary`.
fn multipart(boundary: &str, name: &str, data: &[u8]) -> (String, Vec<u8>) {
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// What a sandbox's program can make its envd do is bounded: a listing deeper than
/// `MAX_LIST_DEPTH` is refused before any walk (a program can make its tree as deep as it
/// likes), a multipart boundary past RFC 2046's 70 characters is refused, and an upload that
/// would take the workspace over its quota is refused with 507 and leaves no file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2b_envd_bounds_listings_boundaries_and_the_workspace_quota() {
    use agentkernel::http::e2b::envd::MAX_LIST_DEPTH;
    let s = start_on(
        ApiKeys::none(),
        ServerLimits::default(),
        Duration::from_secs(10),
        Some(1 << 20),
        None,
    )
    .await;
    let (id, headers) = e2b_sandbox(&s).await;
    let list = |depth: u64| {
        client()
            .post(s.url("/filesystem.Filesystem/ListDir"))
            .headers(headers.clone())
            .header("Content-Type", "application/json")
            .header("Connect-Protocol-Version", "1")
            .json(&json!({"path": "/home/user", "depth": depth}))
            .send()
    };
    let r = list(u64::from(MAX_LIST_DEPTH)).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let r = list(u64::from(u32::MAX)).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["code"], "invalid_argument", "{err}");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains(&format!("at most {MAX_LIST_DEPTH}")),
        "{err}"
    );

    let upload = |content_type: String, body: Vec<u8>| {
        client()
            .post(s.url("/files"))
            .headers(headers.clone())
            .header("Content-Type", content_type)
            .body(body)
            .send()
    };
    let (ct, body) = multipart(&"b".repeat(70), "ok.txt", b"fits");
    let r = upload(ct, body).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let (ct, body) = multipart(&"b".repeat(71), "long.txt", b"x");
    let r = upload(ct, body).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("70 characters"));

    // What the sandbox's program sees at /home/user/NAME (None: no such file).
    let read = |name: &'static str| {
        let r = client()
            .get(s.url(&format!("/files?path=/home/user/{name}")))
            .headers(headers.clone())
            .send();
        async move {
            let r = r.await.unwrap();
            match r.status() {
                StatusCode::OK => Some(r.bytes().await.unwrap().len()),
                StatusCode::NOT_FOUND => None,
                other => panic!("reading {name}: {other} {}", r.text().await.unwrap()),
            }
        }
    };
    assert_eq!(
        read("ok.txt").await,
        Some(4),
        "the upload landed in the workspace"
    );
    assert_eq!(read("long.txt").await, None);
    // 700 KiB fits the 1 MiB quota; 700 KiB more does not.
    let (ct, body) = multipart("q", "first.bin", &vec![1u8; 700 << 10]);
    let r = upload(ct, body).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    // The quota counts the host workspace, where a run's writes (and uploads, which land
    // where the program's writes do) are copied when it ends: after a run, the second
    // upload would take it over.
    assert_eq!(exec(&s, &id, "1").await.end.status, "ok");
    let (ct, body) = multipart("q", "second.bin", &vec![2u8; 700 << 10]);
    let r = upload(ct, body).await.unwrap();
    assert_eq!(r.status(), StatusCode::INSUFFICIENT_STORAGE);
    assert!(r.text().await.unwrap().contains("quota"));
    assert_eq!(read("first.bin").await, Some(700 << 10));
    assert_eq!(
        read("second.bin").await,
        None,
        "the refused upload left a file"
    );
    s.shutdown().await;
}

/// A session's host root (what E2B's files API works in) is its own sandbox's root, taken
/// from the sandbox's init process: two sessions each see the file their own program wrote
/// in `/tmp`, and not the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_host_root_is_its_own_sandboxs_root() {
    use std::os::fd::AsRawFd as _;
    let data = tempfile::tempdir().unwrap();
    let k = kernel(data.path(), Arc::new(tokio::sync::Notify::new())).await;
    let a = k.session("root-a").await.unwrap();
    let b = k.session("root-b").await.unwrap();
    for (s, who) in [(&a, "a"), (&b, "b")] {
        let out = s
            .exec(format!("open('/tmp/who', 'w').write('{who}')"))
            .await
            .unwrap();
        assert!(out.status.is_ok(), "{out:?}");
    }
    for (s, who) in [(&a, "a"), (&b, "b")] {
        let Some(root) = s.host_root().await else {
            panic!("the process backend's session has no host root");
        };
        // The O_PATH descriptor, walked through /proc/self/fd as the host sees it.
        let seen =
            std::fs::read_to_string(format!("/proc/self/fd/{}/tmp/who", root.root.as_raw_fd()))
                .unwrap();
        assert_eq!(seen, who);
        let id = |p: &str| {
            use std::os::unix::fs::MetadataExt as _;
            let m = std::fs::metadata(p).unwrap();
            (m.dev(), m.ino())
        };
        assert_ne!(
            id(&format!("/proc/self/fd/{}", root.root.as_raw_fd())),
            id("/"),
            "the host root is the server's own /"
        );
    }
    drop((a, b));
}

/// A small deterministic generator (xorshift64): the same "random" bodies on every run, so
/// that a failure replays.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a, T: ?Sized>(&mut self, from: &[&'a T]) -> &'a T {
        from[(self.next() % from.len() as u64) as usize]
    }

    /// A JSON value made of the fields the routes know, with numbers at the edges (huge,
    /// negative, fractional, past u64) and strings that are paths, NULs and long runs.
    fn value(&mut self, depth: u32) -> Value {
        const KEYS: &[&str] = &[
            "backend",
            "workspace",
            "limits",
            "env",
            "idle_timeout_secs",
            "max_lifetime_secs",
            "metadata",
            "timeout_secs",
            "cpu_secs",
            "memory_mib",
            "output_bytes",
            "processes",
            "file_size_bytes",
            "code",
            "stream",
            "templateID",
            "timeout",
            "envVars",
            "autoPause",
            "volumeMounts",
            "x",
        ];
        const STRINGS: &[&str] = &[
            "", "process", "wasm", "nope", "../x", "/etc", "a\u{0}b", "sbx-x", "print(1)", "1/0",
            "é✓", "ws-1",
        ];
        match self.next() % if depth == 0 { 4 } else { 7 } {
            0 => json!(self.pick(STRINGS)),
            1 => {
                let n: &[f64] = &[0.0, -1.0, 0.5, 1e-9, 1e18, 1e300, -1e300, 4294967296.0];
                json!(n[(self.next() % n.len() as u64) as usize])
            }
            2 => json!(self.next() >> (self.next() % 64)),
            3 => match self.next() % 3 {
                0 => Value::Null,
                1 => json!(true),
                _ => json!("x".repeat((self.next() % 5000) as usize)),
            },
            4 => Value::Array(
                (0..self.next() % 4)
                    .map(|_| self.value(depth - 1))
                    .collect(),
            ),
            _ => Value::Object(
                (0..self.next() % 5)
                    .map(|_| (self.pick(KEYS).to_owned(), self.value(depth - 1)))
                    .collect(),
            ),
        }
    }
}

/// Request bodies made at random from the fields the routes know (and numbers, strings and
/// shapes they do not expect) never crash a route: every answer is a 2xx or a 4xx (never a
/// 500, never a dropped connection, which is what a panicking handler gives), and the
/// server still runs code afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_request_bodies_never_crash_a_route() {
    let s = start().await;
    let sbx = create(&s, json!({})).await;
    let c = client();
    let mut g = Gen(0x9e37_79b9_7f4a_7c15);
    let routes = [
        "/v1/sandboxes".to_owned(),
        format!("/v1/sandboxes/{}/execute", sbx.id),
        "/v1/tasks".to_owned(),
        "/sandboxes".to_owned(),
        format!("/sandboxes/{}/timeout", sbx.id),
    ];
    let mut answered = std::collections::BTreeMap::<u16, usize>::new();
    for i in 0..400 {
        let route = &routes[i % routes.len()];
        // Mostly objects (the routes' shape), sometimes anything, sometimes not JSON at all.
        let body = match g.next() % 10 {
            0 => b"{\"code\": \"print(1)\"".to_vec(),
            1 => serde_json::to_vec(&g.value(2)).unwrap(),
            _ => {
                let mut fields: serde_json::Map<String, Value> = (0..g.next() % 6)
                    .map(|_| {
                        let k = g.pick(&["code", "timeout_secs", "limits", "timeout", "x"]);
                        (k.to_owned(), g.value(2))
                    })
                    .collect();
                // Half the time a real program, so that the routes get past the parse.
                if g.next().is_multiple_of(2) {
                    fields.insert("code".into(), json!(g.pick(&["print(1)", "1/0", "x"])));
                }
                serde_json::to_vec(&Value::Object(fields)).unwrap()
            }
        };
        let r = c
            .post(s.url(route))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{route} {}: {e}", String::from_utf8_lossy(&body)));
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        assert!(
            status.is_success() || status.is_client_error(),
            "{route} answered {status} to {}: {text}",
            String::from_utf8_lossy(&body)
        );
        *answered.entry(status.as_u16()).or_default() += 1;
        // Sandboxes created along the way are closed (the caps stay free).
        if status == StatusCode::CREATED
            && let Ok(v) = serde_json::from_str::<Value>(&text)
            && let Some(id) = v["id"].as_str().or(v["sandboxID"].as_str())
        {
            let r = c.delete(s.url(&format!("/v1/sandboxes/{id}"))).send().await;
            assert!(r.unwrap().status().is_success());
        }
    }
    println!("answers by status: {answered:?}");
    // Both refusals and acceptances were exercised.
    assert!(answered.keys().any(|s| *s < 300) && answered.keys().any(|s| *s >= 400));
    assert_eq!(exec(&s, &sbx.id, "print(6 * 7)").await.stdout, "42\n");
    s.shutdown().await;
}

/// `display(obj)` works without matplotlib: each object comes back as its repr, in order,
/// at most 16 of one execution (the host drops the rest), also from a program that then
/// raises.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn displayed_objects_come_back_as_text_at_most_16_an_execution() {
    let s = start().await;
    let sbx = create(&s, json!({})).await;
    let out = exec(
        &s,
        &sbx.id,
        "display({'a': 1}, 'x')\nfor i in range(20):\n    display(i)",
    )
    .await;
    assert_eq!(out.displays.len(), 16, "{out:?}");
    assert!(out.displays.iter().all(|d| d.mime == "text/plain"));
    assert_eq!(out.displays[0].data, "{'a': 1}");
    assert_eq!(out.displays[1].data, "'x'");
    assert_eq!(out.displays[15].data, "13");
    let out = exec(&s, &sbx.id, "display([1])\n1/0").await;
    assert_eq!(out.end.status, "exception");
    assert_eq!(out.displays.len(), 1);
    assert_eq!(out.displays[0].data, "[1]");
    // A task's stored result keeps them too.
    let c = client();
    let task: Value = c
        .post(s.url("/v1/tasks"))
        .json(&json!({"code": "display('t')"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let done: Value = c
        .get(s.url(&format!(
            "/v1/tasks/{}/wait?timeout_secs=60",
            task["id"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        done["result"]["displays"],
        json!([{"mime": "text/plain", "data": "'t'"}]),
        "{done}"
    );
    s.shutdown().await;
}

/// The first of the host's Python interpreters that imports matplotlib (`python3` on the
/// PATH, then the system's, where `scripts/setup` installs it).
fn python_with_matplotlib() -> Option<PathBuf> {
    ["python3", "/usr/bin/python3"]
        .into_iter()
        .find(|p| {
            std::process::Command::new(p)
                .args(["-I", "-c", "import matplotlib"])
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(PathBuf::from)
}

/// Whether `data` is base64 of a PNG image.
fn is_png(data: &str) -> bool {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(data)
        .is_ok_and(|b| b.starts_with(b"\x89PNG\r\n\x1a\n") && b.len() > 1000)
}

/// What a program displays comes back, in order, as a notebook shows it: `plt.show()` and
/// a figure left open at the end as PNG images, `display(obj)` as text; in the one-object
/// answer (`displays`), as stream events (`display`, before `result`), and through E2B's
/// `/execute` as `result` lines that are not the main one (`png`, `text`). No more than 16
/// of one execution are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figures_and_displayed_objects_come_back_as_png_and_text() {
    let Some(python) = python_with_matplotlib() else {
        agentkernel_testkit::skip(
            "process",
            "figures_and_displayed_objects_come_back_as_png_and_text",
            "no Python of this machine imports matplotlib: run ./scripts/setup (it installs python3-matplotlib)",
        );
        return;
    };
    let s = start_on(
        ApiKeys::none(),
        ServerLimits::default(),
        Duration::from_secs(10),
        None,
        Some(&python),
    )
    .await;
    let sbx = create(&s, json!({})).await;
    let program = "import matplotlib.pyplot as plt\n\
                   plt.plot([1, 2, 3], [1, 4, 9])\n\
                   plt.show()\n\
                   display({'a': 1})\n\
                   fig = plt.figure()\n\
                   plt.plot([3, 2, 1])\n\
                   7";
    let out = exec(&s, &sbx.id, program).await;
    assert_eq!(out.end.status, "ok", "{out:?}");
    let kinds: Vec<&str> = out.displays.iter().map(|d| d.mime.as_str()).collect();
    assert_eq!(
        kinds,
        ["image/png", "text/plain", "image/png"],
        "{}",
        out.stderr
    );
    assert!(is_png(&out.displays[0].data) && is_png(&out.displays[2].data));
    assert_eq!(out.displays[1].data, "{'a': 1}");
    assert_eq!(out.value.expect("the last expression").repr, "7");
    assert!(
        !out.stderr.contains("non-interactive"),
        "show() warned: {}",
        out.stderr
    );

    // Streamed: the displays, then the value, then the end.
    let events = stream(&s, &sbx.id, "plt.plot([1, 2])\nplt.show()\n'done'")
        .await
        .rest()
        .await;
    let kinds: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Display(d) => Some(d.mime.as_str()),
            StreamEvent::Result(_) => Some("result"),
            StreamEvent::End(_) => Some("end"),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, ["image/png", "result", "end"], "{events:?}");

    // At most 16 of one execution.
    let out = exec(&s, &sbx.id, "for i in range(20):\n    display(i)").await;
    assert_eq!(out.displays.len(), 16);
    assert_eq!(out.displays[15].data, "15");

    // Through E2B's interpreter.
    let (id, mut headers) = e2b_sandbox(&s).await;
    headers.insert("E2b-Sandbox-Port", "49999".parse().unwrap());
    let text = client()
        .post(s.url("/execute"))
        .headers(headers)
        .json(&json!({"code": "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()\n3"}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let results: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "result")
        .collect();
    assert_eq!(results.len(), 2, "{id}: {text}");
    assert_eq!(results[0]["is_main_result"], false);
    assert!(is_png(results[0]["png"].as_str().unwrap_or("")), "{text}");
    assert_eq!(results[1]["is_main_result"], true);
    assert_eq!(results[1]["text"], "3");
    s.shutdown().await;
}

/// A sandbox created with `tools` calls only those, within the server's policy: `[]` and a
/// pattern naming no tool of the server refuse the call (`PermissionError` in the program,
/// the tool never runs), a pattern naming it lets it through, a malformed pattern is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_calls_only_the_tools_it_was_created_with() {
    let s = start().await;
    let call = "from tools.test import gate\ntry:\n    print(gate())\nexcept PermissionError as e:\n    print('refused:', e)";
    for (tools, expect) in [
        (json!([]), "refused:"),
        (json!(["other.*"]), "refused:"),
        (json!(["test.*"]), "go"),
        (json!(["test.gate"]), "go"),
    ] {
        let sbx = create(&s, json!({ "tools": tools })).await;
        // A permit for the gate, taken only if the call reaches the tool.
        s.gate.notify_one();
        let out = exec(&s, &sbx.id, call).await;
        assert!(out.stdout.starts_with(expect), "tools {tools}: {out:?}");
        if expect == "refused:" {
            // The tool never ran: the permit is still there for the next call.
            let probe = create(&s, json!({})).await;
            assert_eq!(exec(&s, &probe.id, call).await.stdout, "go\n");
        }
    }
    let r = client()
        .post(s.url("/v1/sandboxes"))
        .json(&json!({"tools": ["a*b"]}))
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    s.shutdown().await;
}

/// A session already open is handed back only to a caller asking for the options it was
/// started with: an allow-list asked for is never silently dropped (nor widened).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_not_handed_back_with_other_options() {
    use agentkernel::SessionOptions;
    let data = tempfile::tempdir().unwrap();
    let k = kernel(data.path(), Arc::new(tokio::sync::Notify::new())).await;
    let no_tools = SessionOptions {
        tools: Some(vec![]),
        ..SessionOptions::default()
    };
    let first = k
        .session_with_options("opts", "opts", &no_tools)
        .await
        .unwrap();
    let again = k
        .session_with_options("opts", "opts", &no_tools)
        .await
        .unwrap();
    assert_eq!(first.name(), again.name());
    // Default options are no options: a plain session is handed back for them.
    let plain = k.session("plain").await.unwrap();
    let same = k
        .session_with_options("plain", "plain", &SessionOptions::default())
        .await
        .unwrap();
    assert_eq!(plain.name(), same.name());
    for other in [
        SessionOptions::default(),
        SessionOptions {
            tools: Some(vec!["*".into()]),
            ..SessionOptions::default()
        },
    ] {
        let Err(err) = k.session_with_options("opts", "opts", &other).await else {
            panic!("a session with other options was handed back");
        };
        assert!(err.to_string().contains("other options"), "{err}");
    }
}
