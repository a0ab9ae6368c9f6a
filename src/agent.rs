//! The seed's entry point: `create_agent().execute_task(code)`.

use std::time::Duration;

use agentkernel_core::{ExecOutcome, ExecStatus, Result, Timings, ToolCallRecord};
use serde::{Deserialize, Serialize};

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
        }
    }
}

/// An agent's handle on the kernel: runs generated programs as tasks.
#[derive(Clone)]
pub struct Agent {
    kernel: Kernel,
}

impl Agent {
    /// Wraps a configured kernel.
    pub fn new(kernel: Kernel) -> Self {
        Agent { kernel }
    }

    /// Runs `code` in a fresh sandbox and returns its result. A Python exception is a
    /// result with `success == false`, not an error.
    pub async fn execute_task(&self, code: impl Into<String>) -> Result<TaskResult> {
        Ok(self.kernel.execute(code).await?.into())
    }

    /// Like [`Agent::execute_task`] with a timeout for this task alone.
    pub async fn execute_task_with_timeout(
        &self,
        code: impl Into<String>,
        timeout: Duration,
    ) -> Result<TaskResult> {
        let req = agentkernel_core::ExecRequest::new(code).with_timeout(timeout);
        Ok(self.kernel.execute_request(req).await?.into())
    }

    /// The kernel behind this agent.
    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }
}

/// An agent on the default kernel (process backend, default limits, no tools).
pub fn create_agent() -> Result<Agent> {
    Ok(Agent::new(Kernel::builder().build()?))
}
