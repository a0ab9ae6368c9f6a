//! The `agentkernel` command-line tool: the top-level parser, logging, the async runtime,
//! and the dispatch to [`commands`] (one module per subcommand). Errors are printed here,
//! in one place.

mod commands;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use commands::Error;
use commands::doctor::DoctorArgs;
use commands::run::RunArgs;
use commands::serve::ServeArgs;
use commands::session::SessionCommand;
use commands::task::TaskCommand;
use commands::tools::ToolsCommand;
use commands::worker::WorkerArgs;
use commands::workspace::WorkspaceCommand;

#[derive(Parser)]
#[command(
    name = "agentkernel",
    version,
    about = "Run agent-written Python in a sandbox"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a Python program in a fresh sandbox. Its stdout/stderr pass through; the exit
    /// status is the program's (1 on an uncaught exception, 124 on timeout, 137 on another
    /// limit kill).
    Run(RunArgs),
    /// Work with the tools programs can import (`from tools.<server> import <tool>`).
    #[command(subcommand)]
    Tools(ToolsCommand),
    /// Fire-and-forget tasks: submit returns an id at once; a worker runs them.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Serve sessions on a Unix socket in the data dir (started automatically by
    /// `run --session` when none is running).
    Serve(ServeArgs),
    /// List or close the sessions of the running session server.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Run queued tasks (started automatically by `task submit` when none is running).
    Worker(WorkerArgs),
    /// Manage named workspaces (persistent directories mounted at /workspace).
    #[command(subcommand)]
    Workspace(WorkspaceCommand),
    /// Show which backends work on this machine, why not, and which protections are active.
    Doctor(DoctorArgs),
}

/// Counts allocations, so the monty backend's memory limits hold (in the kernel for
/// `monty-inprocess`, and in this binary's own `__monty-worker` processes).
#[cfg(feature = "monty")]
#[global_allocator]
static ALLOC: monty_alloc::LimitedAllocator = monty_alloc::LimitedAllocator;

fn main() -> ExitCode {
    // Before anything else (no threads yet: the worker forks when it is pid 1).
    agentkernel::run_worker_if_requested();
    let cli = Cli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("AGENTKERNEL_LOG").unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("warn,agentkernel_backend_wasm=info")
        });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&agentkernel::Error::io("starting the async runtime", e).into()),
    };
    // Printed while the runtime still runs (it is dropped after).
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => fail(&e),
    }
}

/// Prints a command's error as one line and returns its exit code.
fn fail(e: &Error) -> ExitCode {
    eprintln!("agentkernel: error: {}", e.message());
    ExitCode::from(e.exit_code())
}

/// Runs the command.
async fn dispatch(command: Command) -> Result<ExitCode, Error> {
    match command {
        Command::Run(args) => commands::run::run(args).await,
        Command::Tools(cmd) => commands::tools::run(cmd).await,
        Command::Workspace(cmd) => commands::workspace::run(cmd),
        Command::Task(cmd) => commands::task::run(cmd).await,
        Command::Worker(args) => commands::worker::run(args).await,
        Command::Serve(args) => commands::serve::run(args).await,
        Command::Session(cmd) => commands::session::run(cmd).await,
        Command::Doctor(args) => commands::doctor::run(args).await,
    }
}
