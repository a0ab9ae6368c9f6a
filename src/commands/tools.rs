//! `agentkernel tools`: the tool catalog as a sandbox sees it.

use std::process::ExitCode;

use clap::Subcommand;

use super::Error;
use super::common::{ToolArgs, print};

/// `agentkernel tools`'s subcommands.
#[derive(Subcommand)]
pub enum ToolsCommand {
    /// Show the tool catalog as a sandbox sees it: import line, signature, description, and
    /// whether the policy allows it. Starts the configured MCP servers to list their tools.
    List {
        #[command(flatten)]
        tools: ToolArgs,
        /// Print JSON (with the JSON Schemas) instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `tools` subcommand.
pub async fn run(cmd: ToolsCommand) -> Result<ExitCode, Error> {
    match cmd {
        ToolsCommand::List { tools, json } => list(&tools, json).await,
    }
}

/// `tools list`.
async fn list(args: &ToolArgs, json: bool) -> Result<ExitCode, Error> {
    let registry = args.config()?.tool_registry().await?;
    let catalog = registry.as_ref().map(|r| r.catalog()).unwrap_or_default();
    let text = if json {
        serde_json::to_string_pretty(&catalog)
            .map_err(|e| agentkernel::Error::Internal(e.to_string()))?
            + "\n"
    } else if catalog.is_empty() {
        "no tools: add MCP servers or a tools directory in agentkernel.toml, or pass --mcp / --tools-dir\n".to_owned()
    } else {
        use std::fmt::Write as _;
        let mut out = String::new();
        for e in &catalog {
            let denied = if e.allowed {
                ""
            } else {
                "   [not allowed by the policy]"
            };
            let _ = writeln!(out, "{}{}{denied}", e.name, e.signature);
            let _ = writeln!(out, "    {}", e.import);
            for line in e
                .description
                .lines()
                .filter(|l| !l.trim().is_empty())
                .take(3)
            {
                let _ = writeln!(out, "    {}", line.trim());
            }
        }
        out
    };
    print(&text);
    if let Some(r) = registry {
        r.shutdown().await;
    }
    Ok(ExitCode::SUCCESS)
}
