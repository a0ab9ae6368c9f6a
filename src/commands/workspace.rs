//! `agentkernel workspace`: the named workspaces in the data dir.

use std::process::ExitCode;

use agentkernel::Workspaces;
use clap::Subcommand;

use super::Error;
use super::common::print;

/// `agentkernel workspace`'s subcommands.
#[derive(Subcommand)]
pub enum WorkspaceCommand {
    /// List named workspaces with their size.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the host directory of a workspace (creating it if missing).
    Path {
        /// Workspace name.
        name: String,
    },
    /// Delete a workspace and every file in it.
    Delete {
        /// Workspace name.
        name: String,
        /// Required: deleting cannot be undone.
        #[arg(long)]
        yes: bool,
    },
}

/// Runs a `workspace` subcommand.
pub fn run(cmd: WorkspaceCommand) -> Result<ExitCode, Error> {
    let workspaces = Workspaces::at(Workspaces::default_root());
    let text = match cmd {
        WorkspaceCommand::List { json } => {
            let list = workspaces.list()?;
            if json {
                serde_json::to_string_pretty(&list)
                    .map_err(|e| agentkernel::Error::Internal(e.to_string()))?
                    + "\n"
            } else if list.is_empty() {
                format!(
                    "no workspaces in {} (create one with `agentkernel run --workspace NAME`)\n",
                    workspaces.root().display()
                )
            } else {
                let mut out = String::new();
                for w in list {
                    out += &format!(
                        "{:<24} {:>12} bytes {:>8} files  {}\n",
                        w.name,
                        w.bytes,
                        w.files,
                        w.path.display()
                    );
                }
                out
            }
        }
        WorkspaceCommand::Path { name } => format!("{}\n", workspaces.open(&name)?.path.display()),
        WorkspaceCommand::Delete { name, yes } => {
            if !yes {
                return Err(agentkernel::Error::invalid(
                    format!("deleting workspace {name:?} removes all its files"),
                    "add --yes to confirm",
                )
                .into());
            }
            if !workspaces.delete(&name)? {
                return Err(agentkernel::Error::invalid(
                    format!("no workspace named {name:?}"),
                    "see `agentkernel workspace list`",
                )
                .into());
            }
            format!("deleted workspace {name}\n")
        }
    };
    print(&text);
    Ok(ExitCode::SUCCESS)
}
