//! Load on the HTTP server (issue 19), with a real HTTP client against a server on a free
//! loopback port and real `process` sandboxes from a warm pool:
//! - 1,000 executions from 50 concurrent clients: none lost, none failed, each answer the
//!   one its request asked for (every program prints what only its request knows, and adds
//!   to a counter its sandbox keeps, so a crossed answer or a lost run shows);
//! - 200 concurrent streaming executions whose clients hang up at random points: every
//!   sandbox still answers afterwards and is deleted, and the host is left with no sandbox
//!   process (scanned in `/proc` by a marker in the sandboxes' environment) and no leftover
//!   in the data dir's workspaces.
//!
//! Nothing here is timed: a run takes as long as the machine needs.

#![cfg(all(feature = "server", feature = "process"))]
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::path::Path;
use std::time::{Duration, Instant};

use agentkernel::http::{ApiKeys, ServerConfig, ServerLimits, ServerState};
use agentkernel::{Kernel, PoolConfig};
use agentkernel_core::conformance::count_host_processes_where;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A server in this process; dropping `stop` shuts it down.
struct Server {
    base: String,
    data: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<agentkernel::Result<()>>,
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn shutdown(mut self) -> tempfile::TempDir {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(120), &mut self.done)
            .await
            .expect("the server stopped within 120 s")
            .unwrap()
            .unwrap();
        self.data
    }
}

/// A server on `process` with a warm pool, allowing `sandboxes` live sandboxes.
async fn start(sandboxes: usize) -> Server {
    let data = tempfile::tempdir().unwrap();
    let kernel = Kernel::builder()
        .backend("process")
        .data_dir(data.path())
        .timeout(Duration::from_secs(120))
        .session_idle_timeout(Duration::from_secs(24 * 3600))
        .pool(PoolConfig {
            min_idle: 8,
            max_size: sandboxes + 8,
            ..PoolConfig::default()
        })
        .build()
        .unwrap();
    let config = ServerConfig {
        kernels: vec![kernel],
        api_keys: ApiKeys::none(),
        limits: ServerLimits {
            max_sandboxes: sandboxes,
            max_sandboxes_per_key: sandboxes,
            ..ServerLimits::default()
        },
        shutdown_grace: Duration::from_secs(10),
    };
    let state = ServerState::new(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(agentkernel::http::serve_state(
        listener,
        state,
        async move {
            let _ = stopped.await;
        },
    ));
    Server {
        base,
        data,
        stop: Some(stop),
        done,
    }
}

/// A marker no other test uses, put in the sandboxes' environment.
fn marker(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("AK_LOAD_{what}_{}_{nanos:x}", std::process::id())
}

/// Host processes whose environment holds `marker` (as `NAME=1`).
fn processes_with(marker: &str) -> usize {
    let needle = format!("{marker}=1");
    count_host_processes_where("environ", |env| {
        env.split(|b| *b == 0).any(|var| var == needle.as_bytes())
    })
}

/// Waits (at most `within`) until `done` holds; whether it did.
async fn eventually(within: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done()
}

/// The entries of `dir` (none when it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn create(client: &reqwest::Client, base: &str, marker: &str) -> String {
    let r = client
        .post(format!("{base}/v1/sandboxes"))
        .json(&json!({ "env": { marker: "1" } }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

async fn delete(client: &reqwest::Client, base: &str, id: &str) {
    let r = client
        .delete(format!("{base}/v1/sandboxes/{id}"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "delete {id}: {}", r.status());
}

async fn execute(client: &reqwest::Client, base: &str, id: &str, code: &str) -> Value {
    let r = client
        .post(format!("{base}/v1/sandboxes/{id}/execute"))
        .json(&json!({ "code": code }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// A small deterministic generator (splitmix64): the test's "random" points, the same on
/// every run so that a failure can be replayed.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_executions_from_fifty_clients_are_all_answered_correctly() {
    const CLIENTS: usize = 50;
    const EACH: usize = 20;
    let s = start(CLIENTS).await;
    let marker = marker("exec");
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let (base, marker) = (s.base.clone(), marker.clone());
        clients.spawn(async move {
            let client = reqwest::Client::new();
            let id = create(&client, &base, &marker).await;
            let mut answered = 0;
            for i in 0..EACH {
                // What only this request knows, and a counter only this sandbox keeps.
                let tag = format!("client {c} request {i}");
                let code = if i == 0 {
                    format!("n = 1\nprint({tag:?}, n)")
                } else {
                    format!("n += 1\nprint({tag:?}, n)")
                };
                let body = execute(&client, &base, &id, &code).await;
                assert_eq!(body["status"], "ok", "{tag}: {body}");
                assert_eq!(
                    body["stdout"].as_str().unwrap(),
                    format!("{tag} {}\n", i + 1),
                    "{tag}: {body}"
                );
                answered += 1;
            }
            delete(&client, &base, &id).await;
            answered
        });
    }
    let mut answered = 0;
    while let Some(done) = clients.join_next().await {
        answered += done.unwrap();
    }
    assert_eq!(answered, CLIENTS * EACH, "executions lost");

    let client = reqwest::Client::new();
    let list: Value = client
        .get(s.url("/v1/sandboxes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["sandboxes"], json!([]), "sandboxes left: {list}");
    assert!(
        eventually(Duration::from_secs(60), || processes_with(&marker) == 0).await,
        "{} sandbox processes outlived their sandboxes",
        processes_with(&marker)
    );
    let data = s.shutdown().await;
    assert_eq!(
        entries(&data.path().join("workspaces")),
        Vec::<String>::new(),
        "workspaces of deleted sandboxes were left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_streams_cut_at_random_leave_nothing_behind() {
    const CLIENTS: u64 = 200;
    let s = start(CLIENTS as usize).await;
    let marker = marker("stream");
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let (base, marker) = (s.base.clone(), marker.clone());
        clients.spawn(async move {
            let client = reqwest::Client::new();
            let id = create(&client, &base, &marker).await;
            // A program that would print for ten minutes, with a child process of its own.
            let code = "import subprocess, sys, time\n\
                        subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n\
                        i = 0\n\
                        while True:\n    print('line', i, flush=True)\n    i += 1\n    time.sleep(0.01)\n";
            let mut r = client
                .post(format!("{base}/v1/sandboxes/{id}/execute"))
                .json(&json!({ "code": code, "stream": true }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            // Hang up after 0 to 2 KiB of the stream: before any event, mid-line, later.
            let cut = (mix(c) % 2048) as usize;
            let mut read = 0;
            while read < cut {
                match r.chunk().await.unwrap() {
                    Some(chunk) => read += chunk.len(),
                    None => panic!("client {c}: the stream ended by itself"),
                }
            }
            drop(r);
            // The run stops: the sandbox answers the next execution (it would be busy, 409,
            // for ten minutes otherwise).
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let r = client
                    .post(format!("{base}/v1/sandboxes/{id}/execute"))
                    .json(&json!({ "code": "print('after')" }))
                    .send()
                    .await
                    .unwrap();
                if r.status() == StatusCode::CONFLICT && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                assert_eq!(r.status(), StatusCode::OK, "client {c}");
                let body: Value = r.json().await.unwrap();
                // The stopped run's sandbox was reset: it runs the next program.
                assert_eq!(body["status"], "ok", "client {c}: {body}");
                assert_eq!(body["stdout"], "after\n", "client {c}: {body}");
                break;
            }
            delete(&client, &base, &id).await;
        });
    }
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }
    assert!(
        eventually(Duration::from_secs(120), || processes_with(&marker) == 0).await,
        "{} sandbox processes outlived their cut streams",
        processes_with(&marker)
    );
    let data = s.shutdown().await;
    assert_eq!(
        entries(&data.path().join("workspaces")),
        Vec::<String>::new(),
        "workspaces of deleted sandboxes were left"
    );
}
