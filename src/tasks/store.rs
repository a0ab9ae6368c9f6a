//! Where tasks live: the [`TaskStore`] trait and [`SqlStore`], one implementation for
//! SQLite (embedded, the default) and PostgreSQL (feature `postgres`: many kernels on many
//! machines share one queue).
//!
//! Every state change is one SQL statement (or one transaction), so a kernel killed at any
//! moment leaves each task in exactly one state. Times are milliseconds since the Unix epoch.

use std::path::Path;

use agentkernel_core::{Error, Result};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::{AnyPoolOptions, AnyRow};

use super::{TaskRecord, TaskRequest, TaskState};
use crate::agent::TaskResult;

/// A task handed to a worker by [`TaskStore::claim`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claimed {
    /// Task id.
    pub id: String,
    /// What to run.
    pub request: TaskRequest,
    /// This attempt's number (1 for the first).
    pub attempt: u32,
    /// Attempts allowed for kernel-side failures.
    pub max_attempts: u32,
}

/// Durable storage of tasks, shared by every kernel that works the same queue.
#[async_trait]
pub trait TaskStore: Send + Sync {
    /// Stores a new queued task. Returns only once it is durable.
    async fn insert(
        &self,
        id: &str,
        request: &TaskRequest,
        max_attempts: u32,
        now: i64,
    ) -> Result<()>;

    /// Atomically moves up to `limit` queued tasks that are due to `running`, owned by
    /// `owner` until `lease_until`. Two workers never claim the same task.
    async fn claim(
        &self,
        owner: &str,
        lease_until: i64,
        now: i64,
        limit: u32,
    ) -> Result<Vec<Claimed>>;

    /// Extends the lease of `owner`'s running tasks.
    async fn renew(&self, owner: &str, lease_until: i64) -> Result<()>;

    /// Ends a task `owner` runs, in `state`; `false` if it no longer owns it (then nothing
    /// changes).
    async fn finish(
        &self,
        id: &str,
        owner: &str,
        state: TaskState,
        result: Option<&TaskResult>,
        error: Option<&str>,
        now: i64,
    ) -> Result<bool>;

    /// Puts a task `owner` runs back in the queue, due at `run_after` (a kernel-side failure
    /// with attempts left).
    async fn requeue(&self, id: &str, owner: &str, run_after: i64, error: &str) -> Result<bool>;

    /// Cancels a task: a queued one at once, a running one by flagging it for its worker.
    /// Returns the state it was in, `None` if unknown.
    async fn cancel(&self, id: &str, now: i64) -> Result<Option<TaskState>>;

    /// Ids of the tasks `owner` runs, as the store sees it.
    async fn running(&self, owner: &str) -> Result<Vec<String>>;

    /// Running tasks of `owner` flagged for cancellation.
    async fn cancel_requests(&self, owner: &str) -> Result<Vec<String>>;

    /// One task.
    async fn get(&self, id: &str) -> Result<Option<TaskRecord>>;

    /// Tasks, newest first, optionally in one state.
    async fn list(&self, state: Option<TaskState>, limit: u32) -> Result<Vec<TaskRecord>>;

    /// Tasks whose worker is gone (`running` with a lease that expired): re-queued when
    /// `requeue` and attempts are left, else marked `lost` with the reason. Returns how many.
    async fn recover(&self, now: i64, requeue: bool) -> Result<u64>;
}

fn db_err(what: &str) -> impl Fn(sqlx::Error) -> Error + '_ {
    move |e| Error::Internal(format!("task store: {what}: {e}"))
}

/// The SQL store: SQLite ([`SqlStore::open_sqlite`]) or PostgreSQL
/// ([`SqlStore::connect_postgres`]). The same statements serve both; on PostgreSQL claims
/// take rows with `FOR UPDATE SKIP LOCKED`, so concurrent workers never wait on or
/// double-claim a task.
#[derive(Debug, Clone)]
pub struct SqlStore {
    pool: sqlx::AnyPool,
    postgres: bool,
}

/// The SQLite store is the SQL store on SQLite.
pub type SqliteStore = SqlStore;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    request TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    attempts BIGINT NOT NULL DEFAULT 0,
    max_attempts BIGINT NOT NULL,
    run_after BIGINT NOT NULL,
    owner TEXT,
    lease_until BIGINT,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    result TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS tasks_due ON tasks (state, run_after, created_at);";

impl SqlStore {
    /// Opens (creating if needed) the SQLite database at `path`: WAL journal, synchronous
    /// writes (a task is on disk before `submit` returns).
    pub async fn open_sqlite(path: &Path) -> Result<SqlStore> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        // Created here, not by SQLite, so it is the owner's alone (it holds programs and
        // their output) and a symlink in its place is refused rather than followed.
        let db = agentkernel_core::hostdirs::private_file()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(format!("opening the task database {}", path.display()), e))?;
        agentkernel_core::hostdirs::restrict_to_owner(&db)
            .map_err(|e| Error::io(format!("restricting {}", path.display()), e))?;
        drop(db);
        sqlx::any::install_default_drivers();
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::raw_sql(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 30000;",
                    )
                    .execute(conn)
                    .await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(|e| {
                Error::Internal(format!("opening task database {}: {e}", path.display()))
            })?;
        Self::init(pool, false).await
    }

    /// Connects to PostgreSQL at `url` (`postgres://user:pass@host:port/db`), creating the
    /// table if needed.
    #[cfg(feature = "postgres")]
    pub async fn connect_postgres(url: &str) -> Result<SqlStore> {
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .connect(url)
            .await
            .map_err(|e| {
                Error::invalid(
                    format!("cannot connect to the PostgreSQL task store: {e}"),
                    "check the URL (postgres://user:password@host:port/database) and that the server runs",
                )
            })?;
        Self::init(pool, true).await
    }

    async fn init(pool: sqlx::AnyPool, postgres: bool) -> Result<SqlStore> {
        // Several kernels may start at once: creating the schema must not race.
        let mut conn = pool.acquire().await.map_err(db_err("connecting"))?;
        if postgres {
            sqlx::raw_sql("SELECT pg_advisory_lock(4242)")
                .execute(&mut *conn)
                .await
                .map_err(db_err("locking the schema"))?;
        }
        let created = sqlx::raw_sql(SCHEMA).execute(&mut *conn).await;
        if postgres {
            let _ = sqlx::raw_sql("SELECT pg_advisory_unlock(4242)")
                .execute(&mut *conn)
                .await;
        }
        created.map_err(db_err("creating the schema"))?;
        drop(conn);
        Ok(SqlStore { pool, postgres })
    }

    /// Opens the store named by `url`: `postgres://...` (feature `postgres`), `sqlite://PATH`
    /// or a plain file path (SQLite).
    pub async fn open(url: &str) -> Result<SqlStore> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            #[cfg(feature = "postgres")]
            return Self::connect_postgres(url).await;
            #[cfg(not(feature = "postgres"))]
            return Err(Error::invalid(
                "this build has no PostgreSQL support",
                "build agentkernel with `--features postgres`",
            ));
        }
        let path = url.strip_prefix("sqlite://").unwrap_or(url);
        Self::open_sqlite(Path::new(path)).await
    }
}

fn record(row: &AnyRow) -> Result<TaskRecord> {
    let get_s = |c: &str| row.try_get::<String, _>(c).map_err(db_err("reading a row"));
    let count = |c: &str| -> Result<u32> {
        let n: i64 = row.try_get(c).map_err(db_err("reading a row"))?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    };
    let state: String = get_s("state")?;
    let request: String = get_s("request")?;
    let result: Option<String> = row.try_get("result").map_err(db_err("reading a row"))?;
    Ok(TaskRecord {
        id: get_s("id")?,
        state: state.parse()?,
        request: serde_json::from_str(&request)
            .map_err(|e| Error::Internal(format!("task store: bad request JSON: {e}")))?,
        created_at: row.try_get("created_at").map_err(db_err("reading a row"))?,
        started_at: row.try_get("started_at").map_err(db_err("reading a row"))?,
        finished_at: row
            .try_get("finished_at")
            .map_err(db_err("reading a row"))?,
        attempts: count("attempts")?,
        max_attempts: count("max_attempts")?,
        owner: row.try_get("owner").map_err(db_err("reading a row"))?,
        result: result
            .map(|r| serde_json::from_str(&r))
            .transpose()
            .map_err(|e| Error::Internal(format!("task store: bad result JSON: {e}")))?,
        error: row.try_get("error").map_err(db_err("reading a row"))?,
    })
}

#[async_trait]
impl TaskStore for SqlStore {
    async fn insert(
        &self,
        id: &str,
        request: &TaskRequest,
        max_attempts: u32,
        now: i64,
    ) -> Result<()> {
        let req = serde_json::to_string(request).map_err(|e| Error::Internal(e.to_string()))?;
        sqlx::query(
            "INSERT INTO tasks (id, state, request, created_at, max_attempts, run_after) VALUES ($1, 'queued', $2, $3, $4, $3)",
        )
        .bind(id)
        .bind(req)
        .bind(now)
        .bind(i64::from(max_attempts))
        .execute(&self.pool)
        .await
        .map_err(db_err("storing a task"))?;
        Ok(())
    }

    async fn claim(
        &self,
        owner: &str,
        lease_until: i64,
        now: i64,
        limit: u32,
    ) -> Result<Vec<Claimed>> {
        // One statement. SQLite runs it under the database's write lock; PostgreSQL locks
        // the chosen rows and skips rows another worker is claiming, so two workers never
        // claim the same task (and never wait on each other).
        let lock = if self.postgres {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE tasks SET state = 'running', owner = $1, lease_until = $2, started_at = $3,
                 attempts = attempts + 1
             WHERE id IN (SELECT id FROM tasks WHERE state = 'queued' AND run_after <= $3
                          ORDER BY created_at LIMIT $4{lock})
             RETURNING *"
        );
        // Safe: the only non-literal part is one of two constant clauses.
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(owner)
            .bind(lease_until)
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err("claiming tasks"))?;
        rows.iter()
            .map(|r| {
                let rec = record(r)?;
                Ok(Claimed {
                    id: rec.id,
                    request: rec.request,
                    attempt: rec.attempts,
                    max_attempts: rec.max_attempts,
                })
            })
            .collect()
    }

    async fn renew(&self, owner: &str, lease_until: i64) -> Result<()> {
        sqlx::query("UPDATE tasks SET lease_until = $1 WHERE owner = $2 AND state = 'running'")
            .bind(lease_until)
            .bind(owner)
            .execute(&self.pool)
            .await
            .map_err(db_err("renewing leases"))?;
        Ok(())
    }

    async fn finish(
        &self,
        id: &str,
        owner: &str,
        state: TaskState,
        result: Option<&TaskResult>,
        error: Option<&str>,
        now: i64,
    ) -> Result<bool> {
        let result = result
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| Error::Internal(e.to_string()))?;
        let done = sqlx::query(
            "UPDATE tasks SET state = $1, result = $2, error = COALESCE($3, error), finished_at = $4, lease_until = NULL
             WHERE id = $5 AND owner = $6 AND state = 'running'",
        )
        .bind(state.as_str())
        .bind(result)
        .bind(error)
        .bind(now)
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await
        .map_err(db_err("finishing a task"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn requeue(&self, id: &str, owner: &str, run_after: i64, error: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE tasks SET state = 'queued', owner = NULL, lease_until = NULL, run_after = $1, error = $2
             WHERE id = $3 AND owner = $4 AND state = 'running'",
        )
        .bind(run_after)
        .bind(error)
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await
        .map_err(db_err("re-queuing a task"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn cancel(&self, id: &str, now: i64) -> Result<Option<TaskState>> {
        // Conditional updates, no read-then-write: a claim committing in between cannot
        // leave a task marked cancelled while it runs.
        let queued = sqlx::query(
            "UPDATE tasks SET state = 'cancelled', finished_at = $1, error = 'cancelled before it started'
             WHERE id = $2 AND state = 'queued'",
        )
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(db_err("cancelling"))?;
        if queued.rows_affected() == 1 {
            return Ok(Some(TaskState::Queued));
        }
        let running = sqlx::query(
            "UPDATE tasks SET cancel_requested = 1 WHERE id = $1 AND state = 'running'",
        )
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(db_err("cancelling"))?;
        if running.rows_affected() == 1 {
            return Ok(Some(TaskState::Running));
        }
        Ok(self.get(id).await?.map(|r| r.state))
    }

    async fn running(&self, owner: &str) -> Result<Vec<String>> {
        sqlx::query_scalar("SELECT id FROM tasks WHERE owner = $1 AND state = 'running'")
            .bind(owner)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err("listing running tasks"))
    }

    async fn cancel_requests(&self, owner: &str) -> Result<Vec<String>> {
        sqlx::query_scalar(
            "SELECT id FROM tasks WHERE owner = $1 AND state = 'running' AND cancel_requested = 1",
        )
        .bind(owner)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("reading cancel requests"))
    }

    async fn get(&self, id: &str) -> Result<Option<TaskRecord>> {
        let row = sqlx::query("SELECT * FROM tasks WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err("reading a task"))?;
        row.as_ref().map(record).transpose()
    }

    async fn list(&self, state: Option<TaskState>, limit: u32) -> Result<Vec<TaskRecord>> {
        let rows =
            match state {
                Some(s) => sqlx::query(
                    "SELECT * FROM tasks WHERE state = $1 ORDER BY created_at DESC, id LIMIT $2",
                )
                .bind(s.as_str())
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await,
                None => {
                    sqlx::query("SELECT * FROM tasks ORDER BY created_at DESC, id LIMIT $1")
                        .bind(i64::from(limit))
                        .fetch_all(&self.pool)
                        .await
                }
            }
            .map_err(db_err("listing tasks"))?;
        rows.iter().map(record).collect()
    }

    async fn recover(&self, now: i64, requeue: bool) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE tasks SET
                 state = CASE WHEN cancel_requested = 1 THEN 'cancelled'
                              WHEN $1 AND attempts < max_attempts THEN 'queued' ELSE 'lost' END,
                 error = 'its worker (' || owner || ') stopped while it was running (attempt ' || attempts || '); its lease expired',
                 finished_at = CASE WHEN cancel_requested = 0 AND $1 AND attempts < max_attempts THEN NULL ELSE $2 END,
                 owner = NULL, lease_until = NULL
             WHERE state = 'running' AND lease_until < $2",
        )
        .bind(requeue)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(db_err("recovering tasks"))?;
        Ok(done.rows_affected())
    }
}
