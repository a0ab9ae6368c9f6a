//! The `agentkernel` command-line tool.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use agentkernel::core::{CheckState, OutputSink, StreamKind};
use agentkernel::{Config, Error, ExecRequest, ExecStatus, McpServerConfig};
use clap::{Parser, Subcommand};

/// Exit code for bad input (unknown backend, missing file, bad limits), like clap's.
const EXIT_USAGE: u8 = 2;
/// Exit code when the backend cannot run on this machine (sysexits' EX_UNAVAILABLE).
const EXIT_UNAVAILABLE: u8 = 69;
/// Exit code for a failure of AgentKernel itself (sysexits' EX_SOFTWARE).
const EXIT_INTERNAL: u8 = 70;

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
    /// Manage named workspaces (persistent directories mounted at /workspace).
    #[command(subcommand)]
    Workspace(WorkspaceCommand),
    /// Show which backends work on this machine, why not, and which protections are active.
    Doctor {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ToolsCommand {
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

#[derive(Subcommand)]
enum WorkspaceCommand {
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

/// Where tools come from: `agentkernel.toml` plus command-line additions.
#[derive(clap::Args)]
struct ToolArgs {
    /// Configuration file (default: $AGENTKERNEL_CONFIG, else ./agentkernel.toml if present).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Add an MCP server: NAME=COMMAND (a stdio server, split like a shell would) or NAME=URL
    /// (streamable HTTP). Its tools import as `tools.NAME.<tool>`. Repeatable.
    #[arg(long = "mcp", value_name = "NAME=COMMAND")]
    mcp: Vec<String>,
    /// Directory of plain Python tool modules, importable as `tools.<module>`.
    #[arg(long, value_name = "DIR")]
    tools_dir: Option<PathBuf>,
    /// Allow only these tools (`server.tool`, `server.*`); repeatable. Default: the config's
    /// `[tools] allow`, else all.
    #[arg(long = "allow-tool", value_name = "PATTERN")]
    allow_tool: Vec<String>,
}

impl ToolArgs {
    /// The configuration file with the command line's additions applied.
    fn config(&self) -> Result<Config, Error> {
        let mut config = Config::discover(self.config.as_deref())?.unwrap_or_default();
        for spec in &self.mcp {
            let (name, target) = spec.split_once('=').ok_or_else(|| {
                Error::invalid(
                    format!("--mcp {spec:?} is not NAME=COMMAND"),
                    "e.g. --mcp 'everything=npx -y @modelcontextprotocol/server-everything'",
                )
            })?;
            let server = if target.starts_with("http://") || target.starts_with("https://") {
                McpServerConfig::http(target)
            } else {
                let words = shlex::split(target)
                    .filter(|w| !w.is_empty())
                    .ok_or_else(|| {
                        Error::invalid(
                            format!("--mcp {name}: cannot split the command {target:?}"),
                            "quote it like a shell command, e.g. --mcp 'fs=npx -y @modelcontextprotocol/server-filesystem /data'",
                        )
                    })?;
                McpServerConfig::stdio(&words[0], &words[1..])
            };
            server.validate(name)?;
            config.mcp_servers.insert(name.to_owned(), server);
        }
        if let Some(dir) = &self.tools_dir {
            config.tools.dir = Some(dir.clone());
        }
        if !self.allow_tool.is_empty() {
            config.tools.allow = Some(self.allow_tool.clone());
        }
        config.policy()?;
        Ok(config)
    }
}

#[derive(clap::Args)]
struct RunArgs {
    /// Backend: process (default), wasm, monty, microvm.
    #[arg(long)]
    backend: Option<String>,
    /// Mounted read-write at /workspace; files persist across runs. A NAME (letters, digits,
    /// '.', '_', '-') is a named workspace under the data dir
    /// ($AGENTKERNEL_DATA_DIR or ~/.local/share/agentkernel); a PATH (containing '/', e.g.
    /// ./data) is that host directory. Either is created if missing.
    #[arg(long, value_name = "NAME|PATH")]
    workspace: Option<String>,
    /// Wall-clock limit in seconds [default: 30, or the config's].
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    timeout: Option<f64>,
    /// Memory limit in MiB [default: 512, or the config's].
    #[arg(long, value_name = "MIB")]
    memory: Option<u64>,
    #[command(flatten)]
    tools: ToolArgs,
    /// Print one JSON object {exit_code, stdout, stderr, status, timings, ...} instead of
    /// passing output through.
    #[arg(long)]
    json: bool,
    /// Program file, or - for standard input.
    #[arg(value_name = "FILE|-", default_value = "-")]
    file: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("AGENTKERNEL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
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
        Err(e) => return fail(&Error::io("starting the async runtime", e)),
    };
    runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run(args).await,
            Command::Tools(ToolsCommand::List { tools, json }) => tools_list(&tools, json).await,
            Command::Workspace(cmd) => workspace(cmd),
            Command::Doctor { json } => doctor(json).await,
        }
    })
}

/// Prints a one-line error and returns the matching exit code.
fn fail(e: &Error) -> ExitCode {
    eprintln!("agentkernel: error: {e}");
    ExitCode::from(match e {
        Error::InvalidRequest { .. } | Error::Unsupported { .. } => EXIT_USAGE,
        Error::Unavailable { .. } | Error::ToolSource { .. } => EXIT_UNAVAILABLE,
        _ => EXIT_INTERNAL,
    })
}

fn read_program(file: &str) -> Result<String, Error> {
    if file == "-" {
        let mut code = String::new();
        std::io::stdin().read_to_string(&mut code).map_err(|e| {
            Error::invalid(
                format!("cannot read the program from standard input: {e}"),
                "pipe a UTF-8 Python program in, or pass a FILE",
            )
        })?;
        return Ok(code);
    }
    std::fs::read_to_string(file).map_err(|e| {
        Error::invalid(
            format!("cannot read program file {file}: {e}"),
            "pass an existing Python file, or - to read standard input",
        )
    })
}

async fn run(args: RunArgs) -> ExitCode {
    let config = match args.tools.config() {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let timeout = args.timeout.or(config.sandbox.timeout_secs).unwrap_or(30.0);
    let memory = args.memory.or(config.sandbox.memory_mib).unwrap_or(512);
    let backend = args
        .backend
        .clone()
        .or_else(|| config.sandbox.backend.clone())
        .unwrap_or_else(|| "process".into());
    if !(timeout.is_finite() && timeout > 0.0) {
        return fail(&Error::invalid(
            format!("--timeout {timeout} is not a positive number of seconds"),
            "pass e.g. --timeout 30",
        ));
    }
    let code = match read_program(&args.file) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let mut builder = match config.kernel_builder().await {
        Ok(b) => b,
        Err(e) => return fail(&e),
    };
    builder = builder
        .backend(&backend)
        .timeout_secs(timeout)
        .memory_mib(memory);
    if let Some(ws) = &args.workspace {
        builder = if ws.contains('/') {
            builder.workspace(ws)
        } else {
            builder.named_workspace(ws)
        };
    }
    let kernel = match builder.build() {
        Ok(k) => k,
        Err(e) => return fail(&e),
    };
    let mut req = ExecRequest::new(code);
    if !args.json {
        let sink: OutputSink = Arc::new(|stream, bytes: &[u8]| {
            // A closed stdout (e.g. `| head`) must not kill the run.
            let _ = match stream {
                StreamKind::Stdout => std::io::stdout()
                    .lock()
                    .write_all(bytes)
                    .and_then(|()| std::io::stdout().flush()),
                StreamKind::Stderr => std::io::stderr().lock().write_all(bytes),
            };
        });
        req = req.with_output(sink);
    }
    let outcome = match kernel.execute_request(req).await {
        Ok(o) => o,
        Err(e) => return fail(&e),
    };
    let exit = outcome.status.exit_code();
    if args.json {
        let value = serde_json::json!({
            "exit_code": exit,
            "status": outcome.status,
            "stdout": outcome.stdout.text(),
            "stderr": outcome.stderr.text(),
            "stdout_truncated": outcome.stdout.truncated,
            "stderr_truncated": outcome.stderr.truncated,
            "timings": outcome.timings,
            "tool_calls": outcome.tool_calls,
            "backend": backend,
        });
        println!("{value}");
    } else {
        if outcome.stdout.truncated || outcome.stderr.truncated {
            eprintln!(
                "agentkernel: output truncated (stdout {} bytes, stderr {} bytes written; kept {} each)",
                outcome.stdout.total_bytes,
                outcome.stderr.total_bytes,
                kernel.spec().limits.output_bytes
            );
        }
        match &outcome.status {
            ExecStatus::Exception { traceback, .. } => eprint!("{traceback}"),
            ExecStatus::Killed { limit } => {
                let detail = match limit {
                    agentkernel::LimitKind::WallTime => format!(" ({timeout} s)"),
                    agentkernel::LimitKind::Memory => format!(" ({memory} MiB)"),
                    _ => String::new(),
                };
                eprintln!("agentkernel: killed: {limit} limit exceeded{detail}");
            }
            ExecStatus::Crashed { reason } => {
                eprintln!("agentkernel: the sandbox crashed: {reason}")
            }
            ExecStatus::Ok | ExecStatus::Exited { .. } => {}
        }
    }
    ExitCode::from(u8::try_from(exit.clamp(0, 255)).unwrap_or(1))
}

async fn tools_list(args: &ToolArgs, json: bool) -> ExitCode {
    let registry = match args.config() {
        Ok(c) => match c.tool_registry().await {
            Ok(r) => r,
            Err(e) => return fail(&e),
        },
        Err(e) => return fail(&e),
    };
    let catalog = registry.as_ref().map(|r| r.catalog()).unwrap_or_default();
    let text = if json {
        match serde_json::to_string_pretty(&catalog) {
            Ok(s) => s + "\n",
            Err(e) => return fail(&Error::Internal(e.to_string())),
        }
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
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    if let Some(r) = registry {
        r.shutdown().await;
    }
    ExitCode::SUCCESS
}

fn workspace(cmd: WorkspaceCommand) -> ExitCode {
    let workspaces = agentkernel::Workspaces::at(agentkernel::Workspaces::default_root());
    let result = match cmd {
        WorkspaceCommand::List { json } => workspaces.list().and_then(|list| {
            if json {
                serde_json::to_string_pretty(&list)
                    .map(|s| s + "\n")
                    .map_err(|e| Error::Internal(e.to_string()))
            } else if list.is_empty() {
                Ok(format!(
                    "no workspaces in {} (create one with `agentkernel run --workspace NAME`)\n",
                    workspaces.root().display()
                ))
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
                Ok(out)
            }
        }),
        WorkspaceCommand::Path { name } => workspaces
            .open(&name)
            .map(|w| format!("{}\n", w.path.display())),
        WorkspaceCommand::Delete { name, yes } => {
            if !yes {
                Err(Error::invalid(
                    format!("deleting workspace {name:?} removes all its files"),
                    "add --yes to confirm",
                ))
            } else {
                workspaces.delete(&name).and_then(|found| {
                    if found {
                        Ok(format!("deleted workspace {name}\n"))
                    } else {
                        Err(Error::invalid(
                            format!("no workspace named {name:?}"),
                            "see `agentkernel workspace list`",
                        ))
                    }
                })
            }
        }
    };
    match result {
        Ok(text) => {
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

async fn doctor(json: bool) -> ExitCode {
    let reports = agentkernel::doctor().await;
    let default_ok = reports
        .iter()
        .any(|r| r.backend == "process" && r.available);
    use std::fmt::Write as _;
    let mut text = String::new();
    if json {
        match serde_json::to_string_pretty(&reports) {
            Ok(s) => text = s + "\n",
            Err(e) => return fail(&Error::Internal(e.to_string())),
        }
    } else {
        let _ = writeln!(text, "AgentKernel {} doctor\n", env!("CARGO_PKG_VERSION"));
        for r in &reports {
            let head = match (r.compiled, r.available) {
                (false, _) => "not built",
                (true, true) => "available",
                (true, false) => "UNAVAILABLE",
            };
            let _ = writeln!(text, "backend {:<8} {head}", r.backend);
            if let Some(reason) = &r.reason {
                let _ = writeln!(text, "    {reason}");
            }
            for c in &r.checks {
                let mark = match c.state {
                    CheckState::Active => "ok  ",
                    CheckState::Partial => "part",
                    CheckState::Inactive => "off ",
                    CheckState::Failed => "FAIL",
                };
                let _ = writeln!(text, "    [{mark}] {:<13} {}", c.name, c.detail);
            }
            text.push('\n');
        }
    }
    // A closed pipe (`doctor | head`) is not worth a panic.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    if default_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
