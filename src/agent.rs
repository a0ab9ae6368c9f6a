//! The seed's entry point: `create_agent().execute_task(code)`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agentkernel_core::{ExecOutcome, ExecStatus, ExprValue, Result, Timings, ToolCallRecord};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use crate::config::{Config, SandboxConfig};

use crate::kernel::Kernel;

/// What a task produced, in the shape of the Python prototype's `TaskResult`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResult {
    /// Everything the program printed to stdout.
    pub output: String,
    /// Everything it printed to stderr.
    pub stderr: String,
    /// Whether it ran to its end without error.
    pub success: bool,
    /// How it ended (exception details, limit kills...).
    pub status: ExecStatus,
    /// The exit code a shell would see.
    pub exit_code: i32,
    /// Per-phase timings.
    pub timings: Timings,
    /// Tool calls it made.
    pub tool_calls: Vec<ToolCallRecord>,
    /// The value of its last expression ([`ExecOutcome::value`]). Absent in results
    /// stored before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<ExprValue>,
    /// What it displayed ([`ExecOutcome::displays`]). Absent in results stored before it
    /// existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub displays: Vec<agentkernel_core::DisplayData>,
}

impl From<ExecOutcome> for TaskResult {
    fn from(o: ExecOutcome) -> Self {
        TaskResult {
            output: o.stdout.text(),
            stderr: o.stderr.text(),
            success: o.status.is_ok(),
            exit_code: o.status.exit_code(),
            status: o.status,
            timings: o.timings,
            tool_calls: o.tool_calls,
            value: o.value,
            displays: o.displays,
        }
    }
}

/// An agent's handle on the kernel: runs generated programs as tasks.
#[derive(Clone)]
pub struct Agent {
    kernel: Arc<OnceCell<Kernel>>,
    /// Configuration whose tools start on first use (MCP servers are async to start).
    pending: Option<Arc<Config>>,
}

impl Agent {
    /// Wraps a configured kernel.
    pub fn new(kernel: Kernel) -> Self {
        Agent {
            kernel: Arc::new(OnceCell::new_with(Some(kernel))),
            pending: None,
        }
    }

    /// Runs `code` in a fresh sandbox and returns its result. A Python exception is a
    /// result with `success == false`, not an error.
    pub async fn execute_task(&self, code: impl Into<String>) -> Result<TaskResult> {
        Ok(self.kernel().await?.execute(code).await?.into())
    }

    /// Like [`Agent::execute_task`] with a timeout for this task alone.
    pub async fn execute_task_with_timeout(
        &self,
        code: impl Into<String>,
        timeout: Duration,
    ) -> Result<TaskResult> {
        let req = agentkernel_core::ExecRequest::new(code).with_timeout(timeout);
        Ok(self.kernel().await?.execute_request(req).await?.into())
    }

    /// The kernel behind this agent (started on first use when the configuration has tools).
    pub async fn kernel(&self) -> Result<&Kernel> {
        self.kernel
            .get_or_try_init(|| async {
                match &self.pending {
                    Some(config) => config.kernel_builder().await?.build(),
                    None => Kernel::builder().build(),
                }
            })
            .await
    }
}

/// An agent on the default kernel, configured the way the seed's `create_agent()` is:
/// the file named by `$AGENTKERNEL_CONFIG` when set (never `./agentkernel.toml` implicitly:
/// see [`crate::config`]), else default limits; and
/// when no config names a tools directory, `./tools` (if it exists) provides local tool
/// modules, so `from tools.data_analysis import load_dataset` works as in the seed.
/// MCP servers start on the first task.
pub fn create_agent() -> Result<Agent> {
    let mut config = Config::discover(None)?.unwrap_or_default();
    if config.tools.dir.is_none() && Path::new("tools").is_dir() {
        config.tools.dir = Some(PathBuf::from("tools"));
    }
    if !config.has_tools() && config.sandbox == SandboxConfig::default() && config.pool.is_none() {
        return Ok(Agent::new(Kernel::builder().build()?));
    }
    Ok(Agent {
        kernel: Arc::new(OnceCell::new()),
        pending: Some(Arc::new(config)),
    })
}
