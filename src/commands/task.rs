//! `agentkernel task`: fire-and-forget tasks in the task store (submitted here, run by a
//! worker: see [`super::worker`]).

use std::process::ExitCode;
use std::time::Duration;

use agentkernel::ExecStatus;
use agentkernel::tasks::{TaskRecord, TaskRequest, TaskState, Tasks};
use clap::Subcommand;

use super::common::{data_dir, print, read_program};
use super::{Error, exit_code};

/// `agentkernel task`'s subcommands.
#[derive(Subcommand)]
pub enum TaskCommand {
    /// Store a task and print its id at once. Starts a background worker if none runs.
    Submit {
        /// Program file, or - for standard input.
        #[arg(value_name = "FILE|-", default_value = "-")]
        file: String,
        /// Wall-clock limit of the program in seconds.
        #[arg(long, value_name = "S")]
        timeout: Option<f64>,
        /// Named workspace mounted at /workspace.
        #[arg(long, value_name = "NAME")]
        workspace: Option<String>,
        /// Do not start a background worker.
        #[arg(long)]
        no_worker: bool,
    },
    /// Show a task.
    Status {
        /// Task id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Wait for a task, showing its progress on stderr; then print its output and exit with
    /// its exit code (70 if it was lost or failed in the kernel, 130 if cancelled, 75 if
    /// still unfinished at --timeout).
    Wait {
        /// Task id.
        id: String,
        /// Give up after S seconds.
        #[arg(long, value_name = "S")]
        timeout: Option<f64>,
        /// Print the final record as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List tasks, newest first.
    List {
        /// Only tasks in this state (queued, running, succeeded, failed, lost, cancelled).
        #[arg(long)]
        state: Option<String>,
        /// At most N tasks.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a task (a running one is killed).
    Cancel {
        /// Task id.
        id: String,
    },
}

/// Runs a `task` subcommand.
pub async fn run(cmd: TaskCommand) -> Result<ExitCode, Error> {
    let tasks = task_client().await?;
    match cmd {
        TaskCommand::Submit {
            file,
            timeout,
            workspace,
            no_worker,
        } => {
            let code = read_program(&file)?;
            let timeout = match timeout.map(Duration::try_from_secs_f64).transpose() {
                Ok(t) if t.is_none_or(|t| !t.is_zero()) => t,
                _ => {
                    return Err(agentkernel::Error::invalid(
                        format!(
                            "--timeout {} is not a positive number of seconds",
                            timeout.unwrap_or_default()
                        ),
                        "pass e.g. --timeout 30",
                    )
                    .into());
                }
            };
            let req = TaskRequest {
                code,
                timeout,
                workspace,
            };
            let id = tasks.submit(req).await?;
            print(&format!("{id}\n"));
            if !no_worker {
                start_worker();
            }
            Ok(ExitCode::SUCCESS)
        }
        TaskCommand::Status { id, json } => {
            let rec = tasks.status(&id).await?.ok_or_else(|| {
                agentkernel::Error::invalid(
                    format!("no task with id {id:?}"),
                    "see `agentkernel task list`",
                )
            })?;
            if json {
                print(&(serde_json::to_string_pretty(&rec).unwrap_or_default() + "\n"));
            } else {
                print(&(describe_task(&rec) + "\n"));
            }
            Ok(ExitCode::SUCCESS)
        }
        TaskCommand::List { state, limit, json } => {
            let state = state.map(|s| s.parse::<TaskState>()).transpose()?;
            let list = tasks.list(state, limit).await?;
            if json {
                print(&(serde_json::to_string_pretty(&list).unwrap_or_default() + "\n"));
            } else {
                print(
                    &list
                        .iter()
                        .map(|r| describe_task(r) + "\n")
                        .collect::<String>(),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        TaskCommand::Cancel { id } => {
            let was = tasks.cancel(&id).await?;
            if was.is_final() {
                print(&format!("task {id} had already ended ({was})\n"));
            } else {
                print(&format!("task {id} cancelled (was {was})\n"));
            }
            Ok(ExitCode::SUCCESS)
        }
        TaskCommand::Wait { id, timeout, json } => {
            start_worker();
            let timeout = timeout.and_then(|t| Duration::try_from_secs_f64(t).ok());
            let started = std::time::Instant::now();
            let rec = tasks
                .wait(&id, timeout, |r| {
                    eprintln!(
                        "agentkernel: task {}: {} (after {:.1} s)",
                        r.id,
                        describe_state(r),
                        started.elapsed().as_secs_f64()
                    );
                })
                .await?;
            if json {
                print(&(serde_json::to_string_pretty(&rec).unwrap_or_default() + "\n"));
            } else if let Some(result) = &rec.result {
                print(&result.output);
                eprint!("{}", result.stderr);
                if let ExecStatus::Exception { traceback, .. } = &result.status {
                    eprint!("{traceback}");
                }
            }
            let code = match rec.state {
                TaskState::Succeeded => 0,
                // The program's own exit code (1 to 255: it failed).
                TaskState::Failed => rec.result.as_ref().map_or(exit_code::INTERNAL, |r| {
                    u8::try_from(r.exit_code.clamp(1, 255)).unwrap_or(1)
                }),
                TaskState::Lost => exit_code::INTERNAL,
                TaskState::Cancelled => exit_code::CANCELLED,
                TaskState::Queued | TaskState::Running => {
                    eprintln!(
                        "agentkernel: task {id} is still {} after the timeout",
                        rec.state
                    );
                    exit_code::TEMPFAIL
                }
            };
            if let Some(err) = &rec.error
                && rec.state != TaskState::Succeeded
                && !json
            {
                eprintln!("agentkernel: task {id}: {err}");
            }
            Ok(ExitCode::from(code))
        }
    }
}

/// Starts a background worker unless one runs; only warns when that fails (the task is
/// stored: a worker started later runs it).
fn start_worker() {
    if let Err(e) = agentkernel::serve::ensure_worker(&data_dir()) {
        eprintln!("agentkernel: warning: could not start a worker: {e}; run `agentkernel worker`");
    }
}

/// A task handle without workers (for the task commands).
async fn task_client() -> Result<Tasks, agentkernel::Error> {
    let store = Tasks::default_store().await?;
    let kernel = agentkernel::Kernel::builder().build()?;
    Ok(Tasks::new(kernel, store, Default::default()))
}

/// A task's state, with its attempt when it runs.
fn describe_state(r: &TaskRecord) -> String {
    match r.state {
        TaskState::Running => format!("running (attempt {})", r.attempts),
        s => s.to_string(),
    }
}

/// One line about a task for `task status` and `task list`.
fn describe_task(r: &TaskRecord) -> String {
    let mut line = format!("{}  {:<9}", r.id, describe_state(r));
    if let Some(res) = &r.result {
        line += &format!("  exit {}", res.exit_code);
    }
    if let Some(e) = &r.error {
        line += &format!("  ({e})");
    }
    line
}
