//! The server's counters, rendered as Prometheus text by `GET /metrics`: executions by
//! backend and status, their latency histogram by backend, sandboxes created, closed and
//! live, and each kernel's pool counters.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency histogram's buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The counters.
#[derive(Default)]
pub struct Metrics {
    executions: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    latency: Mutex<BTreeMap<&'static str, Histogram>>,
    created: AtomicU64,
    closed: AtomicU64,
}

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Metrics {
    /// One execution on `backend` ended with `status` after `took`.
    pub fn execution(&self, backend: &'static str, status: &'static str, took: Duration) {
        if let Ok(mut m) = self.executions.lock() {
            *m.entry((backend, status)).or_default() += 1;
        }
        if let Ok(mut m) = self.latency.lock() {
            let h = m.entry(backend).or_default();
            let secs = took.as_secs_f64();
            for (i, le) in BUCKETS.iter().enumerate() {
                if secs <= *le {
                    h.counts[i] += 1;
                }
            }
            h.count += 1;
            h.sum += secs;
        }
    }

    /// A sandbox was created.
    pub fn sandbox_created(&self) {
        self.created.fetch_add(1, Ordering::Relaxed);
    }

    /// A sandbox was closed.
    pub fn sandbox_closed(&self) {
        self.closed.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of these counters, `live` sandboxes, and `pools`
    /// (backend name, its pool's counters).
    pub fn render(&self, live: usize, pools: &[(&str, agentkernel_core::PoolStats)]) -> String {
        let mut out = String::new();
        out.push_str("# HELP agentkernel_executions_total Executions that ended, by backend and status.\n# TYPE agentkernel_executions_total counter\n");
        if let Ok(m) = self.executions.lock() {
            for ((backend, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "agentkernel_executions_total{{backend=\"{backend}\",status=\"{status}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP agentkernel_execution_duration_seconds Time from an execution's start to its end.\n# TYPE agentkernel_execution_duration_seconds histogram\n");
        if let Ok(m) = self.latency.lock() {
            for (backend, h) in m.iter() {
                for (i, le) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "agentkernel_execution_duration_seconds_bucket{{backend=\"{backend}\",le=\"{le}\"}} {}",
                        h.counts[i]
                    );
                }
                let _ = writeln!(
                    out,
                    "agentkernel_execution_duration_seconds_bucket{{backend=\"{backend}\",le=\"+Inf\"}} {}\nagentkernel_execution_duration_seconds_sum{{backend=\"{backend}\"}} {}\nagentkernel_execution_duration_seconds_count{{backend=\"{backend}\"}} {}",
                    h.count, h.sum, h.count
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP agentkernel_sandboxes_live Sandboxes open now.\n# TYPE agentkernel_sandboxes_live gauge\nagentkernel_sandboxes_live {live}"
        );
        let _ = writeln!(
            out,
            "# HELP agentkernel_sandboxes_created_total Sandboxes created.\n# TYPE agentkernel_sandboxes_created_total counter\nagentkernel_sandboxes_created_total {}",
            self.created.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP agentkernel_sandboxes_closed_total Sandboxes closed (deleted, idle, expired or at shutdown).\n# TYPE agentkernel_sandboxes_closed_total counter\nagentkernel_sandboxes_closed_total {}",
            self.closed.load(Ordering::Relaxed)
        );
        if !pools.is_empty() {
            let stats = serde_json::to_value(pools.iter().map(|p| &p.1).collect::<Vec<_>>())
                .unwrap_or_default();
            out.push_str("# HELP agentkernel_pool Counters of each backend's warm pool (one series per PoolStats field).\n# TYPE agentkernel_pool gauge\n");
            for ((backend, _), fields) in pools.iter().zip(stats.as_array().into_iter().flatten()) {
                for (field, value) in fields.as_object().into_iter().flatten() {
                    if let Some(n) = value.as_f64() {
                        let _ = writeln!(
                            out,
                            "agentkernel_pool{{backend=\"{backend}\",field=\"{field}\"}} {n}"
                        );
                    }
                }
            }
        }
        out
    }
}
