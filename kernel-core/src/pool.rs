//! [`Pool`]: pre-warmed sandboxes of any backend, itself a [`Runtime`].
//!
//! A pool keeps up to `max_size` sandboxes of one [`SandboxSpec`] alive. A background task
//! keeps `min_idle` of them ready, so [`Runtime::create`] usually just hands one out (a
//! *hit*); otherwise it creates one (a *miss*) or, at `max_size`, waits up to
//! `acquire_timeout` for one to come back and then fails with [`Error::PoolExhausted`].
//!
//! A sandbox "shut down" by its user goes back to the pool instead: in the background it is
//! reset to a clean state (a sandbox never carries one user's globals or files to the next)
//! and becomes idle again; it is replaced instead when it crashed, hit a limit, failed to
//! reset, or served `max_uses` executions. Idle sandboxes beyond `min_idle` retire after
//! `idle_ttl`. Requests for a different spec bypass the pool.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::admission::{Admitted, AdmittedExec};
use crate::error::{Error, Result};
use crate::exec::{ExecOutcome, ExecStatus};
use crate::runtime::{Capabilities, Diagnosis, Runtime, Sandbox, Snapshot};
use crate::spec::SandboxSpec;
use crate::tools::ToolHost;

/// How a [`Pool`] sizes and recycles its sandboxes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// Sandboxes kept ready (created in the background).
    pub min_idle: usize,
    /// Most sandboxes alive at once (idle, in use, or being created).
    pub max_size: usize,
    /// Executions a sandbox serves before it is replaced (0: no limit).
    pub max_uses: u32,
    /// How long a sandbox beyond `min_idle` may stay idle (`idle_ttl_secs` in config).
    #[serde(with = "secs", rename = "idle_ttl_secs")]
    pub idle_ttl: Duration,
    /// How long `create` waits for a free sandbox when `max_size` are in use
    /// (`acquire_timeout_secs` in config).
    #[serde(with = "secs", rename = "acquire_timeout_secs")]
    pub acquire_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            min_idle: 2,
            max_size: 8,
            max_uses: 100,
            idle_ttl: Duration::from_secs(300),
            acquire_timeout: Duration::from_secs(10),
        }
    }
}

impl PoolConfig {
    /// Checks the numbers; the error says which to fix.
    pub fn validate(&self) -> Result<()> {
        if self.max_size == 0 || self.min_idle > self.max_size {
            return Err(Error::invalid(
                format!(
                    "pool sizes min_idle {} / max_size {} are inconsistent",
                    self.min_idle, self.max_size
                ),
                "use max_size >= 1 and min_idle <= max_size",
            ));
        }
        Ok(())
    }
}

mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Duration::try_from_secs_f64(f64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Counters of a [`Pool`] since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStats {
    /// Acquires served by an idle sandbox.
    pub hits: u64,
    /// Acquires that had to create (or wait for) a sandbox.
    pub misses: u64,
    /// Sandboxes created (in the background or on a miss).
    pub creations: u64,
    /// Returned sandboxes reset for reuse.
    pub resets: u64,
    /// Returned sandboxes shut down and replaced (crashed, killed, worn out, reset failed).
    pub replaced: u64,
    /// Creations or resets that failed.
    pub failures: u64,
    /// Acquires that gave up after `acquire_timeout`.
    pub exhausted: u64,
    /// Requests for another spec, passed straight to the backend.
    pub bypassed: u64,
    /// Idle sandboxes now.
    pub idle: usize,
    /// Sandboxes alive now (idle, in use, or being created/reset).
    pub live: usize,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    creations: AtomicU64,
    resets: AtomicU64,
    replaced: AtomicU64,
    failures: AtomicU64,
    exhausted: AtomicU64,
    bypassed: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A place in the pool (one of `max_size`); wakes waiters when freed.
struct Slot {
    _permit: OwnedSemaphorePermit,
    changed: Arc<Notify>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.changed.notify_waiters();
    }
}

struct Idle {
    sandbox: Box<dyn Sandbox>,
    slot: Slot,
    uses: u32,
    since: Instant,
}

struct Inner {
    runtime: Arc<dyn Runtime>,
    spec: SandboxSpec,
    config: PoolConfig,
    idle: Mutex<VecDeque<Idle>>,
    slots: Arc<Semaphore>,
    /// Something changed: a sandbox became idle, a slot was freed, or the pool needs refilling.
    changed: Arc<Notify>,
    counters: Counters,
    closed: std::sync::atomic::AtomicBool,
}

/// Pre-warmed sandboxes of one backend and spec. Cheap to clone; a [`Runtime`] itself.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("backend", &self.inner.runtime.name())
            .field("config", &self.inner.config)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Pool {
    /// A pool of `runtime` sandboxes made with `spec`. Starts filling to `min_idle` in the
    /// background at once (needs a Tokio runtime).
    pub fn new(runtime: Arc<dyn Runtime>, spec: SandboxSpec, config: PoolConfig) -> Result<Pool> {
        config.validate()?;
        crate::admission::admit(&*runtime, &spec)?;
        let inner = Arc::new(Inner {
            slots: Arc::new(Semaphore::new(config.max_size)),
            runtime,
            spec,
            config,
            idle: Mutex::new(VecDeque::new()),
            changed: Arc::new(Notify::new()),
            counters: Counters::default(),
            closed: false.into(),
        });
        tokio::spawn(maintain(Arc::downgrade(&inner)));
        Ok(Pool { inner })
    }

    /// The counters and current sizes.
    pub fn stats(&self) -> PoolStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PoolStats {
            hits: get(&c.hits),
            misses: get(&c.misses),
            creations: get(&c.creations),
            resets: get(&c.resets),
            replaced: get(&c.replaced),
            failures: get(&c.failures),
            exhausted: get(&c.exhausted),
            bypassed: get(&c.bypassed),
            idle: self.inner.idle.lock().map(|i| i.len()).unwrap_or(0),
            live: self.inner.config.max_size - self.inner.slots.available_permits(),
        }
    }

    /// The spec pooled sandboxes are made with.
    pub fn spec(&self) -> &SandboxSpec {
        &self.inner.spec
    }

    /// Waits until at least `n` (at most `min_idle`) sandboxes are idle, or `timeout` passes;
    /// returns whether they are. For start-up ("warm before serving") and tests.
    pub async fn wait_idle(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.stats().idle >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.stats().idle >= n;
            }
        }
    }

    /// Stops refilling and shuts down every idle sandbox (ones in use are shut down when
    /// returned).
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.changed.notify_waiters();
        let idle: Vec<Idle> = self
            .inner
            .idle
            .lock()
            .map(|mut i| i.drain(..).collect())
            .unwrap_or_default();
        for i in idle {
            let _ = i.sandbox.shutdown().await;
        }
    }

    async fn acquire(&self) -> Result<Box<dyn Sandbox>> {
        let inner = &self.inner;
        let deadline = tokio::time::Instant::now() + inner.config.acquire_timeout;
        let mut counted_miss = false;
        loop {
            let notified = inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(idle) = inner.pop_idle() {
                if !counted_miss {
                    bump(&inner.counters.hits);
                }
                inner.changed.notify_waiters(); // the maintainer may refill
                return Ok(Box::new(Pooled::new(
                    self,
                    idle.sandbox,
                    idle.slot,
                    idle.uses,
                )));
            }
            if !counted_miss {
                bump(&inner.counters.misses);
                counted_miss = true;
            }
            if let Some(slot) = inner.try_slot() {
                let sandbox = inner.create().await?;
                return Ok(Box::new(Pooled::new(self, sandbox, slot, 0)));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                bump(&inner.counters.exhausted);
                return Err(Error::PoolExhausted {
                    max_size: inner.config.max_size,
                    waited: inner.config.acquire_timeout,
                });
            }
        }
    }
}

impl Inner {
    fn pop_idle(&self) -> Option<Idle> {
        self.idle.lock().ok()?.pop_back()
    }

    fn try_slot(&self) -> Option<Slot> {
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        Some(Slot {
            _permit: permit,
            changed: self.changed.clone(),
        })
    }

    async fn create(&self) -> Result<Box<dyn Sandbox>> {
        match self.runtime.create(&self.spec).await {
            Ok(s) => {
                bump(&self.counters.creations);
                Ok(s)
            }
            Err(e) => {
                bump(&self.counters.failures);
                Err(e)
            }
        }
    }

    fn push_idle(&self, idle: Idle) {
        if self.closed.load(Ordering::SeqCst) {
            // Closed while this one was being created or reset: stop it instead.
            tokio::spawn(async move {
                let _ = idle.sandbox.shutdown().await;
            });
            return;
        }
        if let Ok(mut q) = self.idle.lock() {
            q.push_back(idle);
        }
        self.changed.notify_waiters();
    }

    /// A sandbox came back: reset it for the next user, or replace it.
    async fn give_back(&self, mut sandbox: Box<dyn Sandbox>, slot: Slot, uses: u32, healthy: bool) {
        let worn = self.config.max_uses > 0 && uses >= self.config.max_uses;
        if !healthy || worn || self.closed.load(Ordering::SeqCst) {
            bump(&self.counters.replaced);
            let _ = sandbox.shutdown().await;
            drop(slot); // frees the place; the maintainer refills
            return;
        }
        match sandbox.reset().await {
            Ok(()) => {
                bump(&self.counters.resets);
                self.push_idle(Idle {
                    sandbox,
                    slot,
                    uses,
                    since: Instant::now(),
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "resetting a returned sandbox failed; replacing it");
                bump(&self.counters.failures);
                bump(&self.counters.replaced);
                let _ = sandbox.shutdown().await;
            }
        }
    }
}

/// The background task: keeps `min_idle` sandboxes ready and retires stale ones.
async fn maintain(pool: Weak<Inner>) {
    let mut backoff = Duration::ZERO;
    loop {
        let Some(inner) = pool.upgrade() else { return };
        if inner.closed.load(Ordering::SeqCst) {
            return;
        }
        let notified = inner.changed.clone();
        let notified = notified.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();

        // Retire idle sandboxes beyond min_idle that waited longer than idle_ttl.
        let expired: Vec<Idle> = match inner.idle.lock() {
            Ok(mut q) => {
                let mut out = Vec::new();
                while q.len() > inner.config.min_idle
                    && q.front()
                        .is_some_and(|i| i.since.elapsed() > inner.config.idle_ttl)
                {
                    out.extend(q.pop_front());
                }
                out
            }
            Err(_) => Vec::new(),
        };
        for i in expired {
            let _ = i.sandbox.shutdown().await;
        }

        // Refill, one at a time.
        let idle = inner.idle.lock().map(|q| q.len()).unwrap_or(0);
        if idle < inner.config.min_idle
            && let Some(slot) = inner.try_slot()
        {
            match inner.create().await {
                Ok(sandbox) => {
                    backoff = Duration::ZERO;
                    inner.push_idle(Idle {
                        sandbox,
                        slot,
                        uses: 0,
                        since: Instant::now(),
                    });
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pre-warming a sandbox failed");
                    backoff =
                        (backoff * 2).clamp(Duration::from_millis(100), Duration::from_secs(10));
                }
            }
        }
        let wait = if backoff.is_zero() {
            inner.config.idle_ttl.min(Duration::from_secs(1))
        } else {
            backoff
        };
        drop(inner);
        let _ = tokio::time::timeout(wait, notified).await;
        if !backoff.is_zero() {
            tokio::time::sleep(backoff).await;
        }
    }
}

#[async_trait]
impl Runtime for Pool {
    fn name(&self) -> &'static str {
        self.inner.runtime.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.runtime.capabilities()
    }

    async fn create_admitted(&self, spec: Admitted<'_>) -> Result<Box<dyn Sandbox>> {
        if *spec != self.inner.spec {
            bump(&self.inner.counters.bypassed);
            return self.inner.runtime.create_admitted(spec).await;
        }
        self.acquire().await
    }

    async fn diagnose(&self) -> Diagnosis {
        self.inner.runtime.diagnose().await
    }

    async fn restore_admitted(
        &self,
        spec: Admitted<'_>,
        snapshot: &Snapshot,
    ) -> Result<Box<dyn Sandbox>> {
        self.inner.runtime.restore_admitted(spec, snapshot).await
    }
}

/// A sandbox on loan from the pool. `shutdown` (or drop) gives it back.
struct Pooled {
    sandbox: Option<Box<dyn Sandbox>>,
    slot: Option<Slot>,
    uses: u32,
    healthy: bool,
    pool: Weak<Inner>,
    id: String,
}

impl Pooled {
    fn new(pool: &Pool, sandbox: Box<dyn Sandbox>, slot: Slot, uses: u32) -> Self {
        Pooled {
            id: sandbox.id().to_owned(),
            sandbox: Some(sandbox),
            slot: Some(slot),
            uses,
            healthy: true,
            pool: Arc::downgrade(&pool.inner),
        }
    }

    fn live(&mut self) -> Result<&mut Box<dyn Sandbox>> {
        self.sandbox
            .as_mut()
            .ok_or_else(|| Error::Internal("pooled sandbox used after return".into()))
    }

    /// Hands the sandbox back to the pool (in the background), or shuts it down if the pool
    /// is gone.
    fn give_back(&mut self) {
        let (Some(sandbox), Some(slot)) = (self.sandbox.take(), self.slot.take()) else {
            return;
        };
        let (uses, healthy) = (self.uses, self.healthy);
        match (self.pool.upgrade(), tokio::runtime::Handle::try_current()) {
            (Some(pool), Ok(handle)) => {
                handle.spawn(async move { pool.give_back(sandbox, slot, uses, healthy).await });
            }
            // No pool or no runtime: dropping the sandbox kills it.
            _ => drop((sandbox, slot)),
        }
    }
}

#[async_trait]
impl Sandbox for Pooled {
    fn id(&self) -> &str {
        &self.id
    }

    fn host_root(&self) -> Option<crate::HostRoot> {
        self.sandbox.as_ref()?.host_root()
    }

    async fn exec_admitted(
        &mut self,
        req: AdmittedExec,
        tools: Arc<dyn ToolHost>,
    ) -> Result<ExecOutcome> {
        self.uses = self.uses.saturating_add(1);
        // Suspect until the exec completes: a cancelled exec (its future dropped) leaves the
        // sandbox in an unknown state.
        self.healthy = false;
        let result = self.live()?.exec_admitted(req, tools).await;
        self.healthy = true;
        // A limit kill or crash leaves the sandbox dead or suspect: replace it on return.
        if !matches!(
            &result,
            Ok(ExecOutcome {
                status: ExecStatus::Ok | ExecStatus::Exception { .. } | ExecStatus::Exited { .. },
                ..
            })
        ) {
            self.healthy = false;
        }
        result
    }

    async fn reset(&mut self) -> Result<()> {
        self.live()?.reset().await?;
        self.healthy = true;
        Ok(())
    }

    async fn snapshot(&mut self) -> Result<Snapshot> {
        self.live()?.snapshot().await
    }

    async fn shutdown(mut self: Box<Self>) -> Result<()> {
        self.give_back();
        Ok(())
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.give_back();
    }
}
