//! `agentkernel session`: the sessions of the running session server (through
//! [`agentkernel::serve::Client`]).

use std::process::ExitCode;

use agentkernel::serve::{Client, ClientError};
use clap::Subcommand;

use super::common::data_dir;
use super::{Error, exit_code};

/// `agentkernel session`'s subcommands.
#[derive(Subcommand)]
pub enum SessionCommand {
    /// List open sessions.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Close a session (its workspace stays).
    Close {
        /// Session name.
        name: String,
    },
}

/// Runs a `session` subcommand.
pub async fn run(cmd: SessionCommand) -> Result<ExitCode, Error> {
    let client = Client::new(data_dir());
    match cmd {
        SessionCommand::List { json } => match client.list().await.map_err(server_error)? {
            None if json => println!("[]"),
            None => println!("no session server is running, so no sessions are open"),
            Some(sessions) if json => println!(
                "{}",
                serde_json::to_string_pretty(&sessions).unwrap_or_default()
            ),
            Some(sessions) if sessions.is_empty() => println!("no open sessions"),
            Some(sessions) => {
                for s in sessions {
                    println!(
                        "{:<24} workspace {:<24} {} runs, idle {} s",
                        s.name, s.workspace, s.execs, s.idle_secs
                    );
                }
            }
        },
        SessionCommand::Close { name } => match client.close(&name).await.map_err(server_error)? {
            None => println!("no session server is running, so no sessions are open"),
            Some(true) => println!("closed session {name} (its workspace stays)"),
            Some(false) => {
                return Err(agentkernel::Error::invalid(
                    format!("no open session {name:?}"),
                    "see `agentkernel session list`",
                )
                .into());
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}

/// The server's failures exit with [`exit_code::INTERNAL`] here, bad input or not.
fn server_error(e: ClientError) -> Error {
    match e {
        ClientError::Failed { message, .. } => Error::Server {
            message,
            code: exit_code::INTERNAL,
        },
        ClientError::Kernel(e) => Error::Kernel(e),
    }
}
