//! Fire-and-forget tasks: the seed's "async middleware", durable across kernel restarts.
//!
//! [`Tasks::submit`] stores the task ([`TaskStore`]) and returns its id at once; workers
//! ([`Tasks::run_workers`]) claim queued tasks, run each in a fresh sandbox of the kernel,
//! and record the result. Any number of processes may share one store: each claims
//! atomically, and holds a lease on what it runs that it renews while it runs; when a
//! worker dies (even `kill -9`), any worker sees the lease expire and recovers its tasks.
//!
//! Task states: `queued` → `running` → `succeeded` (the program exited 0) | `failed` (an
//! exception, a non-zero exit or a limit kill; or a kernel-side failure with no attempts
//! left) | `lost` (its kernel stopped while it ran; the error says which and when) |
//! `cancelled`. Kernel-side failures (no sandbox could be started or the pool was exhausted,
//! the sandbox was lost) are retried up to `max_attempts` with a back-off; whatever the
//! program did (an exception, an exit status, a limit kill, a crash) never is. A task whose kernel died
//! is marked `lost` (default: the program may have had side effects) or, with
//! `requeue_lost`, re-queued while attempts are left. Nothing is ever dropped silently.

mod store;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agentkernel_core::{Error, ExecRequest, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

pub use store::{Claimed, SqlStore, SqliteStore, TaskStore};

use crate::agent::TaskResult;
use crate::kernel::Kernel;

/// What a task runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRequest {
    /// The Python program.
    pub code: String,
    /// Wall-clock limit (default: the kernel's); stored as seconds, `timeout_secs`.
    #[serde(
        default,
        rename = "timeout_secs",
        with = "opt_secs",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Named workspace mounted at `/workspace` (default: the kernel's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
}

impl TaskRequest {
    /// A task running `code` with the kernel's defaults.
    pub fn new(code: impl Into<String>) -> Self {
        TaskRequest {
            code: code.into(),
            timeout: None,
            workspace: None,
        }
    }

    /// The same task with a wall-clock limit of its own.
    pub fn with_timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }
}

/// An optional duration as (fractional) seconds; a negative or non-finite number is refused.
mod opt_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_f64(d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<f64>::deserialize(d)?
            .map(|secs| {
                Duration::try_from_secs_f64(secs).map_err(|_| {
                    serde::de::Error::custom(format!(
                        "timeout_secs = {secs} is not a positive number of seconds"
                    ))
                })
            })
            .transpose()
    }
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for a worker.
    Queued,
    /// A worker runs it.
    Running,
    /// The program ran to its end with exit status 0.
    Succeeded,
    /// The program failed, or the kernel could not run it.
    Failed,
    /// Its kernel stopped while it ran.
    Lost,
    /// Cancelled.
    Cancelled,
}

impl TaskState {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Lost => "lost",
            TaskState::Cancelled => "cancelled",
        }
    }

    /// Whether the task is over.
    pub fn is_final(self) -> bool {
        !matches!(self, TaskState::Queued | TaskState::Running)
    }
}

impl std::str::FromStr for TaskState {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "queued" => TaskState::Queued,
            "running" => TaskState::Running,
            "succeeded" => TaskState::Succeeded,
            "failed" => TaskState::Failed,
            "lost" => TaskState::Lost,
            "cancelled" => TaskState::Cancelled,
            other => {
                return Err(Error::invalid(
                    format!("unknown task state {other:?}"),
                    "use queued, running, succeeded, failed, lost or cancelled",
                ));
            }
        })
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A task as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Id.
    pub id: String,
    /// State.
    pub state: TaskState,
    /// What it runs.
    pub request: TaskRequest,
    /// Submission time (ms since the Unix epoch).
    pub created_at: i64,
    /// Start of the last attempt.
    pub started_at: Option<i64>,
    /// When it ended.
    pub finished_at: Option<i64>,
    /// Attempts started.
    pub attempts: u32,
    /// Attempts allowed for kernel-side failures.
    pub max_attempts: u32,
    /// Worker running it (while running).
    pub owner: Option<String>,
    /// The program's result, once it ran.
    pub result: Option<TaskResult>,
    /// Why it failed on the kernel side, was lost or cancelled.
    pub error: Option<String>,
}

/// A state change, for [`Tasks::events`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEvent {
    /// Task id.
    pub id: String,
    /// Its new state.
    pub state: TaskState,
}

/// How workers behave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskConfig {
    /// Tasks run at once by this process.
    pub concurrency: usize,
    /// Attempts for kernel-side failures (and for `requeue_lost`).
    pub max_attempts: u32,
    /// How long a claim holds without renewal; a worker renews every third of it. A task
    /// whose worker died is recovered (lost or re-queued) once this has passed.
    pub lease: Duration,
    /// Re-queue (instead of marking `lost`) tasks whose kernel died, while attempts are left.
    pub requeue_lost: bool,
    /// Name of this machine, the first part of worker ids (`node/random`) shown on tasks.
    pub node: String,
    /// Whether [`Tasks::open`] starts workers in the background (default: yes).
    pub start_workers: bool,
    /// How often idle workers look for new tasks (other processes may submit).
    pub poll: Duration,
}

impl Default for TaskConfig {
    fn default() -> Self {
        TaskConfig {
            concurrency: 2,
            max_attempts: 3,
            lease: Duration::from_secs(10),
            requeue_lost: false,
            node: std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_owned())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "local".into()),
            start_workers: true,
            poll: Duration::from_millis(200),
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Submits, tracks and runs tasks on one kernel and one store. Cheap to clone.
#[derive(Clone)]
pub struct Tasks {
    store: Arc<dyn TaskStore>,
    kernel: Kernel,
    config: TaskConfig,
    /// `node/boot-id`: unique to this process.
    owner: String,
    events: broadcast::Sender<TaskEvent>,
    wake: Arc<tokio::sync::Notify>,
    /// Stops the background workers of [`Tasks::open`] when the last handle goes.
    workers: Option<Arc<StopOnDrop>>,
}

/// Sends the stop signal when dropped.
struct StopOnDrop(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(stop) = self.0.take() {
            let _ = stop.send(());
        }
    }
}

impl std::fmt::Debug for Tasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tasks")
            .field("owner", &self.owner)
            .field("config", &self.config)
            .finish()
    }
}

impl Tasks {
    /// Tasks of `kernel` stored in `store`.
    pub fn new(kernel: Kernel, store: Arc<dyn TaskStore>, config: TaskConfig) -> Tasks {
        let owner = format!("{}/{}", config.node, uuid::Uuid::new_v4().simple());
        Tasks {
            store,
            kernel,
            config,
            owner,
            events: broadcast::channel(1024).0,
            wake: Arc::new(tokio::sync::Notify::new()),
            workers: None,
        }
    }

    /// Tasks of `kernel` in a store of its own, with its workers running: what a library
    /// user wants by default. The store is the SQLite database `tasks-<identity>.db` in the
    /// kernel's data dir, `<identity>` being [`Kernel::identity`] (backend, limits,
    /// environment, workspace, mounts, tool names): a task runs only on a kernel configured
    /// as the one that submitted it (a restart of the same program included), never on the
    /// CLI's workers (`tasks.db`) nor on a program with other tools or limits. Workers run in
    /// the background (needs a Tokio runtime) until the last clone of the returned handle is
    /// dropped; with [`TaskConfig::start_workers`] off, run them with [`Tasks::run_workers`].
    ///
    /// ```no_run
    /// # async fn demo(kernel: agentkernel::Kernel) -> agentkernel::Result<()> {
    /// use agentkernel::{TaskConfig, TaskRequest, Tasks};
    /// let tasks = Tasks::open(kernel, TaskConfig::default()).await?;
    /// let id = tasks.submit(TaskRequest::new("print('later')")).await?;
    /// let done = tasks.wait(&id, None, |_| {}).await?;
    /// assert_eq!(done.result.expect("ran").output, "later\n");
    /// # Ok(()) }
    /// ```
    pub async fn open(kernel: Kernel, config: TaskConfig) -> Result<Tasks> {
        let data = kernel.data_dir().to_path_buf();
        agentkernel_core::hostdirs::private_dir(&data)?;
        let path = data.join(format!("tasks-{}.db", kernel.identity()));
        let store: Arc<dyn TaskStore> = Arc::new(SqlStore::open_sqlite(&path).await?);
        let start = config.start_workers;
        let mut tasks = Tasks::new(kernel, store, config);
        if start {
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let workers = tasks.clone();
            tokio::spawn(async move {
                let stopped = async {
                    let _ = stopped.await;
                };
                if let Err(e) = workers.run_workers(None, stopped).await {
                    tracing::error!(error = %e, "the task workers stopped");
                }
            });
            tasks.workers = Some(Arc::new(StopOnDrop(Some(stop))));
        }
        Ok(tasks)
    }

    /// The store named by `$AGENTKERNEL_TASK_STORE` (`postgres://...` or a SQLite path),
    /// else the SQLite database `tasks.db` in [`crate::Workspaces::data_dir`].
    pub async fn default_store() -> Result<Arc<dyn TaskStore>> {
        if let Ok(url) = std::env::var("AGENTKERNEL_TASK_STORE")
            && !url.is_empty()
        {
            return Ok(Arc::new(SqlStore::open(&url).await?));
        }
        let data = agentkernel_core::Workspaces::data_dir();
        agentkernel_core::hostdirs::private_dir(&data)?;
        Ok(Arc::new(
            SqlStore::open_sqlite(&data.join("tasks.db")).await?,
        ))
    }

    /// This process's worker id (`node/boot`).
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Stores a task and returns its id once it is durable. Workers (here or in another
    /// process) pick it up.
    pub async fn submit(&self, request: TaskRequest) -> Result<String> {
        if request.code.is_empty() {
            return Err(Error::invalid(
                "the task has no code",
                "pass a Python program",
            ));
        }
        if request.timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::invalid(
                "the task's timeout is zero",
                "give a positive time limit, e.g. `TaskRequest::with_timeout(Duration::from_secs(30))`",
            ));
        }
        if let Some(ws) = &request.workspace {
            agentkernel_core::validate_workspace_name(ws)?;
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        self.store
            .insert(&id, &request, self.config.max_attempts, now_ms())
            .await?;
        let _ = self.events.send(TaskEvent {
            id: id.clone(),
            state: TaskState::Queued,
        });
        self.wake.notify_one();
        Ok(id)
    }

    /// The task's record, `None` if unknown.
    pub async fn status(&self, id: &str) -> Result<Option<TaskRecord>> {
        self.store.get(id).await
    }

    /// Tasks, newest first, optionally in one state.
    pub async fn list(&self, state: Option<TaskState>, limit: u32) -> Result<Vec<TaskRecord>> {
        self.store.list(state, limit).await
    }

    /// Cancels a task (a running one is killed by its worker within a poll interval).
    /// Returns the state it was in.
    pub async fn cancel(&self, id: &str) -> Result<TaskState> {
        let state = self
            .store
            .cancel(id, now_ms())
            .await?
            .ok_or_else(|| unknown(id))?;
        self.wake.notify_one();
        Ok(state)
    }

    /// State changes seen by this process (its submissions and what its workers do).
    pub fn events(&self) -> broadcast::Receiver<TaskEvent> {
        self.events.subscribe()
    }

    /// Waits until the task is over (whoever runs it), up to `timeout`; `on_change` sees
    /// each state it passes through. Returns the final record, or the current one on timeout.
    pub async fn wait(
        &self,
        id: &str,
        timeout: Option<Duration>,
        mut on_change: impl FnMut(&TaskRecord),
    ) -> Result<TaskRecord> {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut events = self.events.subscribe();
        let mut last = None;
        loop {
            let rec = self.store.get(id).await?.ok_or_else(|| unknown(id))?;
            if last != Some(rec.state) {
                on_change(&rec);
                last = Some(rec.state);
            }
            if rec.state.is_final() || deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                return Ok(rec);
            }
            // Woken by a local event, or poll (another process may run it).
            let sleep = tokio::time::sleep(self.config.poll);
            tokio::select! {
                _ = events.recv() => {}
                _ = sleep => {}
            }
        }
    }

    /// Runs workers until `stop` resolves (or forever): recovers tasks of dead workers, then
    /// claims and runs queued tasks, `concurrency` at a time. With `idle_exit`, returns after
    /// that long with nothing to do.
    pub async fn run_workers(
        &self,
        idle_exit: Option<Duration>,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<()> {
        tokio::pin!(stop);
        let recovered = self
            .store
            .recover(now_ms(), self.config.requeue_lost)
            .await?;
        if recovered > 0 {
            tracing::warn!(recovered, "recovered tasks whose kernel had stopped");
        }
        let mut running: tokio::task::JoinSet<()> = tokio::task::JoinSet::new();
        let mut handles: std::collections::HashMap<String, tokio::task::AbortHandle> =
            std::collections::HashMap::new();
        let mut last_renew = tokio::time::Instant::now();
        let mut last_recover = tokio::time::Instant::now();
        let mut idle_since = tokio::time::Instant::now();
        loop {
            while let Some(done) = running.try_join_next() {
                if let Err(e) = done
                    && !e.is_cancelled()
                {
                    tracing::error!(error = %e, "task runner panicked");
                }
            }
            handles.retain(|_, h| !h.is_finished());
            let free = self.config.concurrency.saturating_sub(handles.len());
            if free > 0 {
                let lease_until = now_ms() + ms(self.config.lease);
                let claimed = self
                    .store
                    .claim(
                        &self.owner,
                        lease_until,
                        now_ms(),
                        u32::try_from(free).unwrap_or(1),
                    )
                    .await?;
                for task in claimed {
                    let _ = self.events.send(TaskEvent {
                        id: task.id.clone(),
                        state: TaskState::Running,
                    });
                    let me = self.clone();
                    let id = task.id.clone();
                    let h = running.spawn(async move { me.run_one(task).await });
                    handles.insert(id, h);
                }
            }
            if !handles.is_empty() {
                idle_since = tokio::time::Instant::now();
            }
            // Cancellations of our running tasks: abort drops the run, which kills the sandbox.
            for id in self.store.cancel_requests(&self.owner).await? {
                if let Some(h) = handles.remove(&id) {
                    h.abort();
                }
                if self
                    .store
                    .finish(
                        &id,
                        &self.owner,
                        TaskState::Cancelled,
                        None,
                        Some("cancelled while running"),
                        now_ms(),
                    )
                    .await?
                {
                    let _ = self.events.send(TaskEvent {
                        id,
                        state: TaskState::Cancelled,
                    });
                }
            }
            if last_renew.elapsed() >= self.config.lease / 3 {
                self.store
                    .renew(&self.owner, now_ms() + ms(self.config.lease))
                    .await?;
                last_renew = tokio::time::Instant::now();
                self.reconcile(&mut handles).await?;
            }
            if last_recover.elapsed() >= self.config.lease {
                self.store
                    .recover(now_ms(), self.config.requeue_lost)
                    .await?;
                last_recover = tokio::time::Instant::now();
            }
            if let Some(limit) = idle_exit
                && handles.is_empty()
                && idle_since.elapsed() >= limit
            {
                return Ok(());
            }
            tokio::select! {
                _ = &mut stop => {
                    running.abort_all();
                    // Their sandboxes are gone with the runs: say so now rather than when
                    // the leases expire.
                    for id in handles.keys() {
                        if self.config.requeue_lost {
                            self.store.requeue(id, &self.owner, now_ms(), "its worker was stopped while it ran").await?;
                        } else {
                            self.store
                                .finish(id, &self.owner, TaskState::Lost, None, Some("its worker was stopped while it ran"), now_ms())
                                .await?;
                        }
                    }
                    return Ok(());
                }
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.config.poll) => {}
                Some(_) = running.join_next(), if !running.is_empty() => {}
            }
        }
    }

    /// Makes this worker and the store agree on what it runs: a run the store no longer
    /// gives us (recovered as lost after a stall, cancelled, finished) is stopped; a task the
    /// store still has running here without a run (its result could not be recorded) fails.
    async fn reconcile(
        &self,
        handles: &mut std::collections::HashMap<String, tokio::task::AbortHandle>,
    ) -> Result<()> {
        let mine: std::collections::HashSet<String> =
            self.store.running(&self.owner).await?.into_iter().collect();
        handles.retain(|id, h| {
            let keep = mine.contains(id);
            if !keep {
                h.abort();
            }
            keep
        });
        for id in mine.iter().filter(|id| !handles.contains_key(*id)) {
            let why = "its worker lost track of it (recording the result failed)";
            if self
                .store
                .finish(
                    id,
                    &self.owner,
                    TaskState::Failed,
                    None,
                    Some(why),
                    now_ms(),
                )
                .await?
            {
                let _ = self.events.send(TaskEvent {
                    id: id.clone(),
                    state: TaskState::Failed,
                });
            }
        }
        Ok(())
    }

    /// Runs one claimed task and records how it ended.
    async fn run_one(&self, task: Claimed) {
        let mut req = ExecRequest::new(task.request.code.clone());
        if let Some(t) = task.request.timeout {
            req = req.with_timeout(t);
        }
        let outcome = match &task.request.workspace {
            Some(ws) => self.kernel.execute_in_workspace(ws, req).await,
            None => self.kernel.execute_request(req).await,
        };
        let (state, result, error) = match outcome {
            // Whatever the program did (exception, exit, limit kill, crash) is its outcome:
            // never retried.
            Ok(o) => {
                let result = TaskResult::from(o);
                let state = if result.exit_code == 0 {
                    TaskState::Succeeded
                } else {
                    TaskState::Failed
                };
                (state, Some(result), None)
            }
            Err(e) => {
                if task.attempt < task.max_attempts && kernel_side(&e) {
                    self.retry(&task, &e.to_string()).await;
                    return;
                }
                (TaskState::Failed, None, Some(e.to_string()))
            }
        };
        match self
            .store
            .finish(
                &task.id,
                &self.owner,
                state,
                result.as_ref(),
                error.as_deref(),
                now_ms(),
            )
            .await
        {
            Ok(true) => {
                let _ = self.events.send(TaskEvent { id: task.id, state });
            }
            Ok(false) => {
                tracing::warn!(task = %task.id, "task was taken from this worker (cancelled or recovered) before it finished")
            }
            Err(e) => {
                tracing::error!(task = %task.id, error = %e, "recording a task's result failed")
            }
        }
    }

    async fn retry(&self, task: &Claimed, why: &str) {
        let backoff = Duration::from_millis(500 * 2u64.saturating_pow(task.attempt.min(10)));
        let reason = format!(
            "attempt {} of {} failed on the kernel side: {why}",
            task.attempt, task.max_attempts
        );
        tracing::warn!(task = %task.id, "{reason}; retrying in {backoff:?}");
        match self
            .store
            .requeue(&task.id, &self.owner, now_ms() + ms(backoff), &reason)
            .await
        {
            Ok(_) => {
                let _ = self.events.send(TaskEvent {
                    id: task.id.clone(),
                    state: TaskState::Queued,
                });
            }
            Err(e) => tracing::error!(task = %task.id, error = %e, "re-queuing failed"),
        }
    }
}

/// Whether an error is the kernel's fault (worth a retry), not the request's.
fn kernel_side(e: &Error) -> bool {
    e.is_transient()
}

fn unknown(id: &str) -> Error {
    Error::invalid(
        format!("no task with id {id:?}"),
        "see `agentkernel task list`",
    )
}
