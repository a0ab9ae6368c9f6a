//! `agentkernel worker`: runs queued tasks until killed or idle.

use std::process::ExitCode;
use std::time::Duration;

use agentkernel::tasks::{TaskConfig, Tasks};

use super::Error;
use super::common::{ToolArgs, data_dir};

/// `agentkernel worker`'s arguments.
#[derive(clap::Args)]
pub struct WorkerArgs {
    /// Tasks run at once.
    #[arg(long, default_value_t = 2)]
    pub concurrency: usize,
    /// Exit after S seconds with nothing to do (default: run until killed).
    #[arg(long, value_name = "S")]
    pub idle_exit: Option<f64>,
    /// Re-queue tasks whose worker died (instead of marking them lost), while attempts are
    /// left. Only for programs that are safe to run twice.
    #[arg(long)]
    pub requeue_lost: bool,
    #[command(flatten)]
    pub tools: ToolArgs,
}

/// Runs the worker.
pub async fn run(args: WorkerArgs) -> Result<ExitCode, Error> {
    // A shared lock for as long as this worker lives: `task submit` sees a worker is running.
    let lock = agentkernel::serve::worker_lock(&data_dir())?;
    let _ = lock.lock_shared();
    let config = args.tools.config()?;
    let kernel = config.kernel_builder().await.and_then(|b| b.build())?;
    let store = Tasks::default_store().await?;
    let tasks = Tasks::new(
        kernel,
        store,
        TaskConfig {
            concurrency: args.concurrency.max(1),
            requeue_lost: args.requeue_lost,
            ..Default::default()
        },
    );
    tracing::info!(owner = tasks.owner(), "worker started");
    let idle = args
        .idle_exit
        .and_then(|s| Duration::try_from_secs_f64(s).ok());
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    tasks.run_workers(idle, stop).await?;
    drop(lock);
    Ok(ExitCode::SUCCESS)
}
