//! `agentkernel serve`: the session server (see [`agentkernel::serve`]) on the data dir's
//! socket.

use std::process::ExitCode;
use std::time::Duration;

use super::Error;
use super::common::{ToolArgs, data_dir};

/// `agentkernel serve`'s arguments.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Exit after S seconds with no open session (default: run until killed).
    #[arg(long, value_name = "S")]
    pub idle_exit: Option<f64>,
    #[command(flatten)]
    pub tools: ToolArgs,
}

/// Serves sessions until idle (or killed).
pub async fn run(args: ServeArgs) -> Result<ExitCode, Error> {
    let config = args.tools.config()?;
    let kernel = config.kernel_builder().await.and_then(|b| b.build())?;
    let idle = args
        .idle_exit
        .and_then(|s| Duration::try_from_secs_f64(s).ok());
    let socket = agentkernel::serve::socket_path(&data_dir());
    agentkernel::serve::serve(kernel, &socket, idle).await?;
    Ok(ExitCode::SUCCESS)
}
