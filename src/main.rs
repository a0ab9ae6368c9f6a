//! The `agentkernel` command-line tool.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

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
    /// Fire-and-forget tasks: submit returns an id at once; a worker runs them.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Serve sessions on a Unix socket in the data dir (started automatically by
    /// `run --session` when none is running).
    Serve {
        /// Exit after S seconds with no open session (default: run until killed).
        #[arg(long, value_name = "S")]
        idle_exit: Option<f64>,
        #[command(flatten)]
        tools: ToolArgs,
    },
    /// List or close the sessions of the running session server.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Run queued tasks (started automatically by `task submit` when none is running).
    Worker(WorkerArgs),
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
enum SessionCommand {
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

#[derive(Subcommand)]
enum TaskCommand {
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

#[derive(clap::Args)]
struct WorkerArgs {
    /// Tasks run at once.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// Exit after S seconds with nothing to do (default: run until killed).
    #[arg(long, value_name = "S")]
    idle_exit: Option<f64>,
    /// Re-queue tasks whose worker died (instead of marking them lost), while attempts are
    /// left. Only for programs that are safe to run twice.
    #[arg(long)]
    requeue_lost: bool,
    #[command(flatten)]
    tools: ToolArgs,
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
    /// Configuration file (default: $AGENTKERNEL_CONFIG; ./agentkernel.toml is never read
    /// implicitly, since a sandbox could have written it).
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
    /// Backend: process (default), wasm, monty, monty-inprocess, microvm.
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
    /// Memory limit in MiB (or with a unit: 256M, 1G, 512MiB) [default: 512, or the
    /// config's].
    #[arg(long, value_name = "MIB", value_parser = parse_mib)]
    memory: Option<u64>,
    /// Run in session NAME: globals persist across runs (kept by a background session
    /// server, started on first use), and /workspace is the named workspace NAME.
    #[arg(long, value_name = "NAME")]
    session: Option<String>,
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
        Err(e) => return fail(&Error::io("starting the async runtime", e)),
    };
    runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run(args).await,
            Command::Tools(ToolsCommand::List { tools, json }) => tools_list(&tools, json).await,
            Command::Workspace(cmd) => workspace(cmd),
            Command::Task(cmd) => task(cmd).await,
            Command::Worker(args) => worker(args).await,
            Command::Serve { idle_exit, tools } => serve(idle_exit, &tools).await,
            Command::Session(cmd) => session(cmd).await,
            Command::Doctor { json } => doctor(json).await,
        }
    })
}

/// Prints a one-line error and returns the matching exit code.
fn fail(e: &Error) -> ExitCode {
    eprintln!("agentkernel: error: {}", in_cli_words(&e.to_string()));
    ExitCode::from(match e {
        Error::InvalidRequest { .. } | Error::Unsupported { .. } => EXIT_USAGE,
        Error::Unavailable { .. } | Error::ToolSource { .. } => EXIT_UNAVAILABLE,
        _ => EXIT_INTERNAL,
    })
}

/// The library speaks of builder methods (`` `.timeout(Duration::from_secs(30))` ``); the
/// command line of flags (`` `--timeout 30` ``): rewrites the one into the other in an
/// error's text, so that a hint speaks the caller's language.
fn in_cli_words(text: &str) -> String {
    const FLAGS: &[(&str, &str)] = &[
        ("timeout", "--timeout"),
        ("memory_mib", "--memory"),
        ("workspace", "--workspace"),
        ("named_workspace", "--workspace"),
        ("python_dir", "--tools-dir"),
    ];
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("`.") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let call = after
            .find('(')
            .zip(after.find(")`"))
            .and_then(|(open, close)| {
                let flag = FLAGS.iter().find(|(m, _)| *m == &after[..open])?.1;
                (open < close).then(|| (flag, &after[open + 1..close], close))
            });
        match call {
            Some((flag, args, close)) => {
                let args = args
                    .trim_start_matches("Duration::from_secs(")
                    .trim_end_matches(')')
                    .trim_matches('"');
                if args.is_empty() || args == ".." {
                    out.push_str(&format!("`{flag}`"));
                } else {
                    out.push_str(&format!("`{flag} {args}`"));
                }
                rest = &after[close + 2..];
            }
            None => {
                out.push_str("`.");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
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
        .unwrap_or_else(|| agentkernel::default_backend().into());
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
    if let Some(name) = &args.session {
        if args.workspace.is_some() {
            return fail(&Error::invalid(
                "--session and --workspace together",
                "a session's /workspace is the named workspace of the session's name",
            ));
        }
        return run_in_session(&args, name, code, timeout).await;
    }
    // Before any MCP server of the config starts: a workspace must not hold what the host
    // trusts (the config itself, a server's script, the home or data dir).
    if let Some(ws) = args.workspace.as_ref().filter(|w| w.contains('/'))
        && let Err(e) = config.check_workspace(std::path::Path::new(ws))
    {
        return fail(&e);
    }
    let mut builder = match config.kernel_builder().await {
        Ok(b) => b,
        Err(e) => return fail(&e),
    };
    builder = builder
        .backend(&backend)
        .timeout(Duration::try_from_secs_f64(timeout).unwrap_or(Duration::MAX))
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
        // Never more than the output limit reaches the caller, whatever the backend does
        // past it (the `process` backend also ends the run there).
        let limit = kernel.spec().limits.output_bytes;
        req = req.with_output(agentkernel::core::CapturedOutput::capped_sink(sink, limit));
    }
    let outcome = match kernel.execute_request(req).await {
        Ok(o) => o,
        Err(e) => return fail(&e),
    };
    report(&outcome, &args, &backend, timeout, Some(memory), false)
}

/// Prints an outcome as `run` does and returns the program's exit code. `replay` prints the
/// captured output (when it was not passed through live).
fn report(
    outcome: &agentkernel::ExecOutcome,
    args: &RunArgs,
    backend: &str,
    timeout: f64,
    memory: Option<u64>,
    replay: bool,
) -> ExitCode {
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
        if replay {
            let _ = std::io::stdout().lock().write_all(&outcome.stdout.bytes);
            let _ = std::io::stderr().lock().write_all(&outcome.stderr.bytes);
        }
        if outcome.stdout.truncated || outcome.stderr.truncated {
            eprintln!(
                "agentkernel: output truncated (stdout {} bytes written, {} kept; stderr {} written, {} kept)",
                outcome.stdout.total_bytes,
                outcome.stdout.bytes.len(),
                outcome.stderr.total_bytes,
                outcome.stderr.bytes.len()
            );
        }
        match &outcome.status {
            ExecStatus::Exception { traceback, .. } => eprint!("{traceback}"),
            ExecStatus::Killed { limit } => {
                let detail = match limit {
                    agentkernel::LimitKind::WallTime => format!(" ({timeout} s)"),
                    agentkernel::LimitKind::Memory => {
                        memory.map(|m| format!(" ({m} MiB)")).unwrap_or_default()
                    }
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

/// `run --session`: the code goes to the session server (started if none answers).
async fn run_in_session(args: &RunArgs, name: &str, code: String, timeout: f64) -> ExitCode {
    let socket = agentkernel::serve::socket_path(&data_dir());
    let req = agentkernel::serve::Request::Exec {
        session: name.to_owned(),
        code,
        timeout_secs: Some(timeout),
    };
    let mut answer = agentkernel::serve::request(&socket, &req).await;
    if answer.is_none() {
        if let Err(e) = start_server(&args.tools) {
            return fail(&e);
        }
        for _ in 0..600 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if tokio::net::UnixStream::connect(&socket).await.is_ok() {
                break;
            }
        }
        answer = agentkernel::serve::request(&socket, &req).await;
    }
    use agentkernel::serve::Response;
    match answer {
        None => fail(&Error::Unavailable {
            backend: "process",
            reason: format!("no session server answers on {}", socket.display()),
            hint: "see serve.log in the data dir, or start one with `agentkernel serve`".into(),
        }),
        Some(Err(e)) => fail(&Error::io("talking to the session server", e)),
        Some(Ok(Response::Outcome { outcome, .. })) => {
            // The session server's memory limit is its own: not named here.
            report(&outcome, args, "session", timeout, None, !args.json)
        }
        Some(Ok(Response::Failed { error, usage, .. })) => {
            eprintln!("agentkernel: error: {error}");
            ExitCode::from(if usage { EXIT_USAGE } else { EXIT_INTERNAL })
        }
        Some(Ok(_)) => fail(&Error::Internal(
            "unexpected answer from the session server".into(),
        )),
    }
}

/// Starts `agentkernel serve` in the background with this run's tool options.
fn start_server(tools: &ToolArgs) -> Result<(), Error> {
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    if let Some(c) = &tools.config {
        args.extend(["--config".into(), c.into()]);
    }
    for m in &tools.mcp {
        args.extend(["--mcp".into(), m.into()]);
    }
    if let Some(d) = &tools.tools_dir {
        args.extend(["--tools-dir".into(), d.into()]);
    }
    for a in &tools.allow_tool {
        args.extend(["--allow-tool".into(), a.into()]);
    }
    spawn_background("serve", "AGENTKERNEL_SERVE_IDLE_SECS", "600", &args)
}

/// Starts `agentkernel SUBCOMMAND --idle-exit S ARGS..` detached from this process (its
/// own process group, stderr to `SUBCOMMAND.log` in the data dir). S is `$idle_env` when it
/// is a positive number, else `default_idle`.
fn spawn_background(
    subcommand: &str,
    idle_env: &str,
    default_idle: &str,
    args: &[std::ffi::OsString],
) -> Result<(), Error> {
    let dir = data_dir();
    agentkernel::core::hostdirs::private_dir(&dir)?;
    let log_name = format!("{subcommand}.log");
    let log = agentkernel::core::hostdirs::private_file()
        .create(true)
        .append(true)
        .open(dir.join(&log_name))
        .map_err(|e| Error::io(format!("opening {log_name}"), e))?;
    // A log made 0644 by an older version becomes its owner's alone.
    agentkernel::core::hostdirs::restrict_to_owner(&log)
        .map_err(|e| Error::io(format!("restricting {log_name}"), e))?;
    let exe =
        std::env::current_exe().map_err(|e| Error::io("finding the agentkernel binary", e))?;
    let idle = std::env::var(idle_env)
        .ok()
        .filter(|v| v.parse::<f64>().is_ok_and(|s| s > 0.0))
        .unwrap_or_else(|| default_idle.into());
    use std::os::unix::process::CommandExt as _;
    std::process::Command::new(exe)
        .args([subcommand, "--idle-exit", &idle])
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .map_err(|e| {
            Error::io(
                format!("starting a background `agentkernel {subcommand}`"),
                e,
            )
        })?;
    Ok(())
}

async fn serve(idle_exit: Option<f64>, tools: &ToolArgs) -> ExitCode {
    let config = match tools.config() {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let kernel = match config.kernel_builder().await.and_then(|b| b.build()) {
        Ok(k) => k,
        Err(e) => return fail(&e),
    };
    let idle = idle_exit.and_then(|s| Duration::try_from_secs_f64(s).ok());
    let socket = agentkernel::serve::socket_path(&data_dir());
    match agentkernel::serve::serve(kernel, &socket, idle).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

async fn session(cmd: SessionCommand) -> ExitCode {
    use agentkernel::serve::{Request, Response};
    let socket = agentkernel::serve::socket_path(&data_dir());
    let req = match &cmd {
        SessionCommand::List { .. } => Request::List,
        SessionCommand::Close { name } => Request::Close {
            session: name.clone(),
        },
    };
    match agentkernel::serve::request(&socket, &req).await {
        None => {
            if matches!(cmd, SessionCommand::List { json: true }) {
                println!("[]");
            } else {
                println!("no session server is running, so no sessions are open");
            }
            ExitCode::SUCCESS
        }
        Some(Err(e)) => fail(&Error::io("talking to the session server", e)),
        Some(Ok(Response::Sessions { sessions, .. })) => {
            if matches!(cmd, SessionCommand::List { json: true }) {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&sessions).unwrap_or_default()
                );
            } else if sessions.is_empty() {
                println!("no open sessions");
            } else {
                for s in sessions {
                    println!(
                        "{:<24} workspace {:<24} {} runs, idle {} s",
                        s.name, s.workspace, s.execs, s.idle_secs
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Some(Ok(Response::Closed { closed, .. })) => {
            if let SessionCommand::Close { name } = &cmd {
                if closed {
                    println!("closed session {name} (its workspace stays)");
                } else {
                    return fail(&Error::invalid(
                        format!("no open session {name:?}"),
                        "see `agentkernel session list`",
                    ));
                }
            }
            ExitCode::SUCCESS
        }
        Some(Ok(Response::Failed { error, .. })) => {
            eprintln!("agentkernel: error: {error}");
            ExitCode::from(EXIT_INTERNAL)
        }
        Some(Ok(_)) => fail(&Error::Internal(
            "unexpected answer from the session server".into(),
        )),
    }
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

/// The data dir: tasks.db, worker.lock and the workspaces live here.
fn data_dir() -> PathBuf {
    agentkernel::Workspaces::data_dir()
}

/// A task handle without workers (for the CLI's task commands).
async fn task_client() -> Result<agentkernel::tasks::Tasks, Error> {
    let store = agentkernel::tasks::Tasks::default_store().await?;
    let kernel = agentkernel::Kernel::builder().build()?;
    Ok(agentkernel::tasks::Tasks::new(
        kernel,
        store,
        Default::default(),
    ))
}

/// Starts `agentkernel worker` in the background unless one holds the worker lock.
fn ensure_worker() -> Result<bool, Error> {
    let dir = data_dir();
    agentkernel::core::hostdirs::private_dir(&dir)?;
    let lock = agentkernel::core::hostdirs::private_file()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("worker.lock"))
        .map_err(|e| Error::io("opening the worker lock", e))?;
    if lock.try_lock().is_err() {
        return Ok(false); // a worker holds it (shared)
    }
    drop(lock);
    // It exits after a minute without work (AGENTKERNEL_WORKER_IDLE_SECS to change that).
    spawn_background("worker", "AGENTKERNEL_WORKER_IDLE_SECS", "60", &[])?;
    Ok(true)
}

async fn task(cmd: TaskCommand) -> ExitCode {
    use agentkernel::tasks::{TaskRequest, TaskState};
    let tasks = match task_client().await {
        Ok(t) => t,
        Err(e) => return fail(&e),
    };
    let print = |text: String| {
        let _ = std::io::stdout().lock().write_all(text.as_bytes());
    };
    match cmd {
        TaskCommand::Submit {
            file,
            timeout,
            workspace,
            no_worker,
        } => {
            let code = match read_program(&file) {
                Ok(c) => c,
                Err(e) => return fail(&e),
            };
            let timeout = match timeout.map(Duration::try_from_secs_f64).transpose() {
                Ok(t) if t.is_none_or(|t| !t.is_zero()) => t,
                _ => {
                    return fail(&Error::invalid(
                        format!(
                            "--timeout {} is not a positive number of seconds",
                            timeout.unwrap_or_default()
                        ),
                        "pass e.g. --timeout 30",
                    ));
                }
            };
            let req = TaskRequest {
                code,
                timeout,
                workspace,
            };
            match tasks.submit(req).await {
                Ok(id) => {
                    print(format!("{id}\n"));
                    if !no_worker && let Err(e) = ensure_worker() {
                        eprintln!(
                            "agentkernel: warning: could not start a worker: {e}; run `agentkernel worker`"
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        TaskCommand::Status { id, json } => match tasks.status(&id).await {
            Ok(Some(rec)) => {
                if json {
                    print(serde_json::to_string_pretty(&rec).unwrap_or_default() + "\n");
                } else {
                    print(describe_task(&rec) + "\n");
                }
                ExitCode::SUCCESS
            }
            Ok(None) => fail(&Error::invalid(
                format!("no task with id {id:?}"),
                "see `agentkernel task list`",
            )),
            Err(e) => fail(&e),
        },
        TaskCommand::List { state, limit, json } => {
            let state = match state.map(|s| s.parse::<TaskState>()).transpose() {
                Ok(s) => s,
                Err(e) => return fail(&e),
            };
            match tasks.list(state, limit).await {
                Ok(list) if json => {
                    print(serde_json::to_string_pretty(&list).unwrap_or_default() + "\n");
                    ExitCode::SUCCESS
                }
                Ok(list) => {
                    print(list.iter().map(|r| describe_task(r) + "\n").collect());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        TaskCommand::Cancel { id } => match tasks.cancel(&id).await {
            Ok(was) if was.is_final() => {
                print(format!("task {id} had already ended ({was})\n"));
                ExitCode::SUCCESS
            }
            Ok(was) => {
                print(format!("task {id} cancelled (was {was})\n"));
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        TaskCommand::Wait { id, timeout, json } => {
            if let Err(e) = ensure_worker() {
                eprintln!(
                    "agentkernel: warning: could not start a worker: {e}; run `agentkernel worker`"
                );
            }
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
                .await;
            let rec = match rec {
                Ok(r) => r,
                Err(e) => return fail(&e),
            };
            if json {
                print(serde_json::to_string_pretty(&rec).unwrap_or_default() + "\n");
            } else if let Some(result) = &rec.result {
                print(result.output.clone());
                eprint!("{}", result.stderr);
                if let ExecStatus::Exception { traceback, .. } = &result.status {
                    eprint!("{traceback}");
                }
            }
            let code = match rec.state {
                TaskState::Succeeded => 0,
                TaskState::Failed => rec
                    .result
                    .as_ref()
                    .map_or(70, |r| r.exit_code.clamp(1, 255)),
                TaskState::Lost => 70,
                TaskState::Cancelled => 130,
                TaskState::Queued | TaskState::Running => {
                    eprintln!(
                        "agentkernel: task {id} is still {} after the timeout",
                        rec.state
                    );
                    75
                }
            };
            if let Some(err) = &rec.error
                && rec.state != TaskState::Succeeded
                && !json
            {
                eprintln!("agentkernel: task {id}: {err}");
            }
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
    }
}

fn describe_state(r: &agentkernel::tasks::TaskRecord) -> String {
    match r.state {
        agentkernel::tasks::TaskState::Running => format!("running (attempt {})", r.attempts),
        s => s.to_string(),
    }
}

fn describe_task(r: &agentkernel::tasks::TaskRecord) -> String {
    let mut line = format!("{}  {:<9}", r.id, describe_state(r));
    if let Some(res) = &r.result {
        line += &format!("  exit {}", res.exit_code);
    }
    if let Some(e) = &r.error {
        line += &format!("  ({e})");
    }
    line
}

async fn worker(args: WorkerArgs) -> ExitCode {
    let dir = data_dir();
    if let Err(e) = agentkernel::core::hostdirs::private_dir(&dir) {
        return fail(&e);
    }
    // A shared lock for as long as this worker lives: `task submit` sees a worker is running.
    let lock = agentkernel::core::hostdirs::private_file()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("worker.lock"));
    let _lock = match lock {
        Ok(f) => {
            let _ = f.lock_shared();
            f
        }
        Err(e) => return fail(&Error::io("opening the worker lock", e)),
    };
    let config = match args.tools.config() {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let kernel = match config.kernel_builder().await.and_then(|b| b.build()) {
        Ok(k) => k,
        Err(e) => return fail(&e),
    };
    let store = match agentkernel::tasks::Tasks::default_store().await {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let tasks = agentkernel::tasks::Tasks::new(
        kernel,
        store,
        agentkernel::tasks::TaskConfig {
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
    match tasks.run_workers(idle, stop).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
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

/// `--memory`: a whole number of MiB, or one with a unit (`K`/`KiB`, `M`/`MiB`,
/// `G`/`GiB`, any case), rounded up to whole MiB.
fn parse_mib(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let bad = || {
        format!(
            "{text:?} is not a size: give MiB as a whole number (e.g. 512) or with a unit (256M, 1G)"
        )
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let kib_per_unit: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => 1024,
        "g" | "gb" | "gib" => 1024 * 1024,
        "k" | "kb" | "kib" => 1,
        _ => return Err(bad()),
    };
    let mib = n
        .checked_mul(kib_per_unit)
        .map(|kib| kib.div_ceil(1024))
        .ok_or_else(bad)?;
    if mib == 0 {
        return Err(format!(
            "{text:?} is zero: a sandbox needs some memory (e.g. --memory 256)"
        ));
    }
    Ok(mib)
}

#[cfg(test)]
mod tests {
    use super::{in_cli_words, parse_mib};

    /// Library hints name builder methods; the CLI shows the flags instead, and leaves
    /// anything else alone.
    #[test]
    fn hints_are_rewritten_into_flags() {
        assert_eq!(
            in_cli_words("give one, e.g. `.timeout(Duration::from_secs(30))`."),
            "give one, e.g. `--timeout 30`."
        );
        assert_eq!(
            in_cli_words("e.g. `.workspace(\"./data\")`, or (`.named_workspace(NAME)`)"),
            "e.g. `--workspace ./data`, or (`--workspace NAME`)"
        );
        assert_eq!(in_cli_words("(`.memory_mib(64)`)"), "(`--memory 64`)");
        assert_eq!(
            in_cli_words("use `.timeout(..)` instead"),
            "use `--timeout` instead"
        );
        assert_eq!(
            in_cli_words("`.unknown(1)` and `.py` files"),
            "`.unknown(1)` and `.py` files"
        );
    }

    #[test]
    fn memory_sizes_take_units_and_refuse_nonsense() {
        assert_eq!(parse_mib("512"), Ok(512));
        assert_eq!(parse_mib("256M"), Ok(256));
        assert_eq!(parse_mib("256MiB"), Ok(256));
        assert_eq!(parse_mib("1G"), Ok(1024));
        assert_eq!(parse_mib("2gib"), Ok(2048));
        assert_eq!(parse_mib("1536K"), Ok(2));
        for bad in [
            "",
            "M",
            "-1",
            "1.5G",
            "256 apples",
            "0",
            "99999999999999999999",
        ] {
            let err = parse_mib(bad).unwrap_err();
            assert!(err.contains("e.g."), "{bad}: {err}");
        }
    }
}
