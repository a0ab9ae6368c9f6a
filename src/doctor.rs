//! `agentkernel doctor`: which backends work on this machine, and which protections hold.

use agentkernel_core::{Check, CheckState};
use serde::Serialize;

use crate::backends::{BACKENDS, BackendSettings, compiled_backends};

/// What doctor found about one backend.
#[derive(Debug, Clone, Serialize)]
pub struct BackendReport {
    /// Backend name.
    pub backend: String,
    /// Compiled into this binary.
    pub compiled: bool,
    /// A sandbox can run here.
    pub available: bool,
    /// Why not (and how to fix it).
    pub reason: Option<String>,
    /// Findings: prerequisites and protections.
    pub checks: Vec<Check>,
}

/// Checks every known backend on this machine (starting a real sandbox for each one that is
/// compiled in).
pub async fn doctor() -> Vec<BackendReport> {
    let compiled = compiled_backends();
    let mut out = Vec::new();
    for (name, what) in BACKENDS {
        if !compiled.contains(name) {
            let checks = Vec::new();
            out.push(BackendReport {
                backend: (*name).into(),
                compiled: false,
                available: false,
                reason: Some(format!("not in this build ({what})")),
                checks,
            });
            continue;
        }
        let report = match BackendSettings::default().make_runtime(name) {
            Ok(rt) => {
                let d = rt.diagnose().await;
                BackendReport {
                    backend: (*name).into(),
                    compiled: true,
                    available: d.available,
                    reason: d.reason,
                    checks: d.checks,
                }
            }
            Err(e) => BackendReport {
                backend: (*name).into(),
                compiled: true,
                available: false,
                reason: Some(e.to_string()),
                checks: vec![Check {
                    name: "prerequisites".into(),
                    state: CheckState::Failed,
                    detail: e.to_string(),
                }],
            },
        };
        out.push(report);
    }
    out
}
