//! Fire-and-forget tasks on the SQLite store: the library API, retries of kernel-side
//! failures, cancellation, and `kill -9` of a worker process in the middle of 200 tasks.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use agentkernel_testkit::run_with_stdin;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentkernel::tasks::{
    SqlStore, SqliteStore, TaskConfig, TaskRequest, TaskState, TaskStore, Tasks,
};
use agentkernel::{Kernel, PoolConfig};

async fn store_in(dir: &std::path::Path) -> Arc<dyn TaskStore> {
    Arc::new(
        SqliteStore::open_sqlite(&dir.join("tasks.db"))
            .await
            .unwrap(),
    )
}

/// Runs `tasks`' workers in the background until the sender is used.
fn start_workers(
    tasks: &Tasks,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<agentkernel::Result<()>>,
) {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let tasks = tasks.clone();
    let worker = tokio::spawn(async move {
        tasks
            .run_workers(None, async {
                let _ = stop_rx.await;
            })
            .await
    });
    (stop_tx, worker)
}

fn fast() -> TaskConfig {
    TaskConfig {
        poll: Duration::from_millis(50),
        lease: Duration::from_secs(2),
        ..TaskConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_returns_at_once_and_workers_run_tasks_to_their_end() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = Kernel::builder().data_dir(dir.path()).build().unwrap();
    let tasks = Tasks::new(kernel, store_in(dir.path()).await, fast());
    let mut events = tasks.events();
    // Stored before any worker exists.
    let ok = tasks
        .submit(TaskRequest::new("print(6 * 7)"))
        .await
        .unwrap();
    let bad = tasks
        .submit(TaskRequest::new("raise ValueError('no')"))
        .await
        .unwrap();
    let slow = tasks
        .submit(TaskRequest {
            timeout: Some(Duration::from_secs(30)),
            ..TaskRequest::new("import time\ntime.sleep(30)")
        })
        .await
        .unwrap();
    assert_eq!(
        tasks.status(&ok).await.unwrap().unwrap().state,
        TaskState::Queued
    );
    assert_eq!(events.recv().await.unwrap().state, TaskState::Queued);

    let (stop_tx, worker) = start_workers(&tasks);
    let mut seen = Vec::new();
    let done = tasks
        .wait(&ok, Some(Duration::from_secs(60)), |r| seen.push(r.state))
        .await
        .unwrap();
    assert_eq!(done.state, TaskState::Succeeded);
    assert_eq!(done.result.unwrap().output, "42\n");
    assert_eq!(seen.last(), Some(&TaskState::Succeeded));
    let failed = tasks
        .wait(&bad, Some(Duration::from_secs(60)), |_| {})
        .await
        .unwrap();
    assert_eq!(failed.state, TaskState::Failed);
    assert_eq!(failed.attempts, 1, "program errors are never retried");
    assert_eq!(failed.result.unwrap().exit_code, 1);

    // Cancel kills the running sandbox.
    let mut running = false;
    for _ in 0..200 {
        if tasks.status(&slow).await.unwrap().unwrap().state == TaskState::Running {
            running = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(running);
    assert_eq!(tasks.cancel(&slow).await.unwrap(), TaskState::Running);
    let cancelled = tasks
        .wait(&slow, Some(Duration::from_secs(20)), |_| {})
        .await
        .unwrap();
    assert_eq!(cancelled.state, TaskState::Cancelled);
    let listed = tasks.list(Some(TaskState::Cancelled), 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, slow);
    stop_tx.send(()).unwrap();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_side_failures_are_retried_and_bad_requests_refused() {
    let dir = tempfile::tempdir().unwrap();
    // A pool of one sandbox that the test holds: the task's first attempt cannot get one.
    let kernel = Kernel::builder()
        .data_dir(dir.path())
        .pool(PoolConfig {
            min_idle: 0,
            max_size: 1,
            acquire_timeout: Duration::from_millis(100),
            ..PoolConfig::default()
        })
        .build()
        .unwrap();
    let held = kernel.sandbox().await.unwrap();
    let tasks = Tasks::new(kernel, store_in(dir.path()).await, fast());
    let id = tasks
        .submit(TaskRequest::new("print('second try')"))
        .await
        .unwrap();
    let (stop_tx, worker) = start_workers(&tasks);
    for _ in 0..200 {
        let rec = tasks.status(&id).await.unwrap().unwrap();
        if rec.attempts >= 1 && rec.state == TaskState::Queued {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    held.shutdown().await.unwrap();
    let rec = tasks
        .wait(&id, Some(Duration::from_secs(60)), |_| {})
        .await
        .unwrap();
    assert_eq!(rec.state, TaskState::Succeeded, "{rec:?}");
    assert_eq!(rec.attempts, 2);
    assert!(rec.error.unwrap_or_default().contains("attempt 1 of 3"));
    assert_eq!(rec.result.unwrap().output, "second try\n");

    for bad in [
        TaskRequest::new(""),
        TaskRequest::new("pass").with_timeout(Duration::ZERO),
        TaskRequest {
            workspace: Some("../x".into()),
            ..TaskRequest::new("pass")
        },
    ] {
        assert!(tasks.submit(bad).await.is_err());
    }
    stop_tx.send(()).unwrap();
    worker.await.unwrap().unwrap();
}

/// An `agentkernel worker` process on the data dir `data` and the store `store_url`
/// (default: SQLite in `data`).
fn worker_process(data: &std::path::Path, store_url: Option<&str>) -> std::process::Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agentkernel"));
    cmd.args(["worker", "--concurrency", "2"])
        .env("AGENTKERNEL_DATA_DIR", data)
        .env_remove("AGENTKERNEL_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    match store_url {
        Some(url) => cmd.env("AGENTKERNEL_TASK_STORE", url),
        None => cmd.env_remove("AGENTKERNEL_TASK_STORE"),
    };
    cmd.spawn().unwrap()
}

/// Host processes whose environment contains `needle`.
fn processes_with_env(needle: &str) -> usize {
    agentkernel_core::conformance::count_host_processes_where("environ", |env| {
        env.split(|&b| b == 0).any(|v| v == needle.as_bytes())
    })
}

/// Submits `n` tasks, each appending its number to the shared workspace's `log` when it
/// completes; returns their ids in order.
async fn submit_logged(tasks: &Tasks, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let code = format!(
            "import time\ntime.sleep(0.05)\nwith open('/workspace/log', 'a') as f:\n    f.write('{i}\\n')\n"
        );
        let req = TaskRequest {
            workspace: Some("shared".into()),
            ..TaskRequest::new(code)
        };
        ids.push(tasks.submit(req).await.unwrap());
    }
    ids
}

/// How many times each task number appears in the shared workspace's log.
fn completions(kernel: &Kernel) -> HashMap<usize, usize> {
    let ws = kernel.workspaces().get("shared").unwrap().unwrap();
    let log = std::fs::read_to_string(ws.path.join("log")).unwrap_or_default();
    let mut runs: HashMap<usize, usize> = HashMap::new();
    for line in log.lines() {
        *runs.entry(line.parse().unwrap()).or_default() += 1;
    }
    runs
}

async fn wait_all_final(
    store: &Arc<dyn TaskStore>,
    limit: Duration,
) -> Vec<agentkernel::tasks::TaskRecord> {
    let deadline = Instant::now() + limit;
    loop {
        let all = store.list(None, 1000).await.unwrap();
        if all.iter().all(|r| r.state.is_final()) {
            return all;
        }
        assert!(Instant::now() < deadline, "tasks did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// 200 tasks; the worker process is `kill -9`ed mid-run and restarted. Every task ends
/// succeeded, failed or lost (with a reason); none is missing; none ran to completion twice.
async fn kill_dash_nine_mid_run(
    data: &std::path::Path,
    store: Arc<dyn TaskStore>,
    store_url: Option<&str>,
) {
    let kernel = Kernel::builder().data_dir(data).build().unwrap();
    let tasks = Tasks::new(kernel.clone(), store.clone(), fast());
    let ids = submit_logged(&tasks, 200).await;

    let mut first = worker_process(data, store_url);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let all = store.list(None, 1000).await.unwrap();
        let succeeded = all
            .iter()
            .filter(|r| r.state == TaskState::Succeeded)
            .count();
        let running = all.iter().filter(|r| r.state == TaskState::Running).count();
        if succeeded >= 20 && running >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the worker made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();

    let mut second = worker_process(data, store_url);
    let all = wait_all_final(&store, Duration::from_secs(240)).await;
    second.kill().unwrap();
    second.wait().unwrap();
    // Nothing of either killed worker lingers (host /proc): not a half-started sandbox,
    // nor a sandbox kept alive by one.
    let mut lingering = usize::MAX;
    for _ in 0..200 {
        lingering = processes_with_env(&format!("AGENTKERNEL_DATA_DIR={}", data.display()));
        if lingering == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        lingering, 0,
        "processes of the killed workers are still running"
    );

    assert_eq!(all.len(), 200, "no task may vanish");
    let by_state = |s| all.iter().filter(|r| r.state == s).count();
    let (ok, lost, failed) = (
        by_state(TaskState::Succeeded),
        by_state(TaskState::Lost),
        by_state(TaskState::Failed),
    );
    assert_eq!(ok + lost + failed, 200, "{all:?}");
    assert!(lost >= 1, "the killed worker was running a task");
    for r in all.iter().filter(|r| r.state == TaskState::Lost) {
        assert!(
            r.error
                .as_deref()
                .unwrap_or("")
                .contains("stopped while it was running"),
            "{r:?}"
        );
    }
    // At most once each, and exactly once for every task recorded as succeeded.
    let runs = completions(&kernel);
    assert!(
        runs.values().all(|&n| n == 1),
        "a task ran to completion twice"
    );
    for (i, id) in ids.iter().enumerate() {
        let r = all.iter().find(|r| &r.id == id).unwrap();
        if r.state == TaskState::Succeeded {
            assert_eq!(runs.get(&i), Some(&1), "task {i} succeeded without running");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_mid_run_loses_nothing_on_sqlite() {
    let data = tempfile::tempdir().unwrap();
    let store = store_in(data.path()).await;
    kill_dash_nine_mid_run(data.path(), store, None).await;
}

/// A real PostgreSQL server, started by scripts/test-postgres and stopped on drop.
struct Postgres {
    dir: tempfile::TempDir,
    url: String,
}

impl Postgres {
    fn start() -> Postgres {
        let dir = tempfile::tempdir().unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/test-postgres");
        let out = Command::new(script)
            .arg("start")
            .arg(dir.path())
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        assert!(out.status.success(), "scripts/test-postgres start failed");
        let url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        Postgres { dir, url }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/test-postgres");
        let _ = Command::new(script)
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_mid_run_loses_nothing_on_postgres() {
    let pg = Postgres::start();
    let data = tempfile::tempdir().unwrap();
    let store: Arc<dyn TaskStore> = Arc::new(SqlStore::open(&pg.url).await.unwrap());
    kill_dash_nine_mid_run(data.path(), store, Some(&pg.url)).await;
}

/// Two worker processes share one PostgreSQL queue: every task runs exactly once, and both
/// take part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_a_postgres_queue_without_double_claims() {
    let pg = Postgres::start();
    let data = tempfile::tempdir().unwrap();
    let store: Arc<dyn TaskStore> = Arc::new(SqlStore::open(&pg.url).await.unwrap());
    let kernel = Kernel::builder().data_dir(data.path()).build().unwrap();
    let tasks = Tasks::new(kernel.clone(), store.clone(), fast());
    let mut a = worker_process(data.path(), Some(&pg.url));
    let mut b = worker_process(data.path(), Some(&pg.url));
    let ids = submit_logged(&tasks, 60).await;
    let all = wait_all_final(&store, Duration::from_secs(240)).await;
    a.kill().unwrap();
    b.kill().unwrap();
    let _ = (a.wait(), b.wait());
    assert_eq!(all.len(), 60);
    assert!(
        all.iter()
            .all(|r| r.state == TaskState::Succeeded && r.attempts == 1),
        "{all:?}"
    );
    let runs = completions(&kernel);
    for i in 0..ids.len() {
        assert_eq!(
            runs.get(&i),
            Some(&1),
            "task {i} ran {:?} times",
            runs.get(&i)
        );
    }
    let owners: std::collections::HashSet<&str> =
        all.iter().filter_map(|r| r.owner.as_deref()).collect();
    assert_eq!(
        owners.len(),
        2,
        "both workers should have run tasks: {owners:?}"
    );
}

#[test]
fn cli_submit_prints_the_id_at_once_and_wait_shows_progress_and_result() {
    let data = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_agentkernel");
    let mut submit = Command::new(bin);
    submit
        .args(["task", "submit", "-"])
        .env("AGENTKERNEL_DATA_DIR", data.path())
        // The background worker it starts goes away soon after the test.
        .env("AGENTKERNEL_WORKER_IDLE_SECS", "2");
    let out = run_with_stdin(submit, "import time\ntime.sleep(1)\nprint('done')\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(id.len(), 32, "{id}");

    let wait = Command::new(bin)
        .args(["task", "wait", &id, "--timeout", "120"])
        .env("AGENTKERNEL_DATA_DIR", data.path())
        .env("AGENTKERNEL_WORKER_IDLE_SECS", "2")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&wait.stderr);
    assert_eq!(String::from_utf8_lossy(&wait.stdout), "done\n", "{stderr}");
    assert_eq!(wait.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!("task {id}: succeeded")),
        "{stderr}"
    );

    let list = Command::new(bin)
        .args(["task", "list", "--json"])
        .env("AGENTKERNEL_DATA_DIR", data.path())
        .output()
        .unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["state"], "succeeded");

    let unknown = Command::new(bin)
        .args(["task", "status", "nope"])
        .env("AGENTKERNEL_DATA_DIR", data.path())
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(2));
}

/// A worker that is stopped (not killed) says at once what happened to the tasks it ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_marks_its_running_tasks_lost_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = Kernel::builder().data_dir(dir.path()).build().unwrap();
    let tasks = Tasks::new(kernel, store_in(dir.path()).await, fast());
    let id = tasks
        .submit(TaskRequest {
            timeout: Some(Duration::from_secs(60)),
            ..TaskRequest::new("import time\ntime.sleep(60)")
        })
        .await
        .unwrap();
    let (stop_tx, worker) = start_workers(&tasks);
    let mut running = false;
    for _ in 0..400 {
        if tasks.status(&id).await.unwrap().unwrap().state == TaskState::Running {
            running = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(running);
    stop_tx.send(()).unwrap();
    worker.await.unwrap().unwrap();
    let rec = tasks.status(&id).await.unwrap().unwrap();
    assert_eq!(rec.state, TaskState::Lost, "{rec:?}");
    assert!(
        rec.error
            .unwrap_or_default()
            .contains("stopped while it ran")
    );
}

/// A library user's tasks: `Tasks::open` keeps them in a store of the kernel's own (by its
/// configuration) and runs them with workers it starts itself. A kernel configured
/// otherwise (another time limit) does not see them; the same configuration (a restart of
/// the program) does, and runs what was left queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_library_kernel_has_a_store_of_its_own_and_runs_its_workers() {
    let data = tempfile::tempdir().unwrap();
    let kernel = |secs: u64| {
        Kernel::builder()
            .data_dir(data.path())
            .timeout(Duration::from_secs(secs))
            .build()
            .unwrap()
    };
    let tasks = Tasks::open(kernel(20), TaskConfig::default())
        .await
        .unwrap();
    let id = tasks
        .submit(TaskRequest::new("print('ran by its own workers')"))
        .await
        .unwrap();
    let done = tasks
        .wait(&id, Some(Duration::from_secs(60)), |_| {})
        .await
        .unwrap();
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    assert_eq!(done.result.unwrap().output, "ran by its own workers\n");
    drop(tasks);

    // Queued without workers: another configuration does not see it, the same one runs it.
    let queued = Tasks::open(
        kernel(20),
        TaskConfig {
            start_workers: false,
            ..TaskConfig::default()
        },
    )
    .await
    .unwrap();
    let id = queued
        .submit(TaskRequest::new("print('later')"))
        .await
        .unwrap();
    let other = Tasks::open(kernel(21), TaskConfig::default())
        .await
        .unwrap();
    assert!(other.status(&id).await.unwrap().is_none());
    let same = Tasks::open(kernel(20), TaskConfig::default())
        .await
        .unwrap();
    let done = same
        .wait(&id, Some(Duration::from_secs(60)), |_| {})
        .await
        .unwrap();
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    let stores = std::fs::read_dir(data.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("tasks-"))
        .count();
    assert!(stores >= 2, "one store per configuration");
    assert!(
        !data.path().join("tasks.db").exists(),
        "the CLI's store is not used"
    );
}

/// Claims hammered from eight claimers at once on one store (one task per claim, 300 queued):
/// every task is claimed exactly once. Store level, no sandboxes: the claim statement's
/// atomicity alone.
async fn concurrent_claims_never_share_a_task(store: Arc<dyn TaskStore>) {
    let now = 1_000;
    for i in 0..300 {
        store
            .insert(&format!("t{i:03}"), &TaskRequest::new("pass"), 3, now)
            .await
            .unwrap();
    }
    let mut claimers = tokio::task::JoinSet::new();
    for w in 0..8 {
        let store = store.clone();
        claimers.spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = store
                    .claim(&format!("w{w}"), i64::MAX / 2, now, 1)
                    .await
                    .unwrap();
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|c| c.id));
            }
        });
    }
    let mut seen = HashMap::new();
    while let Some(mine) = claimers.join_next().await {
        for id in mine.unwrap() {
            *seen.entry(id).or_insert(0u32) += 1;
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "claimed more than once: {twice:?}");
    assert_eq!(seen.len(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_on_postgres_never_share_a_task() {
    let pg = Postgres::start();
    concurrent_claims_never_share_a_task(Arc::new(SqlStore::open(&pg.url).await.unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_on_sqlite_never_share_a_task() {
    let dir = tempfile::tempdir().unwrap();
    concurrent_claims_never_share_a_task(store_in(dir.path()).await).await;
}
