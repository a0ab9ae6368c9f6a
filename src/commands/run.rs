//! `agentkernel run`: one program in a fresh sandbox (or in a session of the session
//! server, with `--session`), its output passed through and its exit code returned.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use agentkernel::core::{OutputSink, StreamKind};
use agentkernel::{ExecRequest, ExecStatus};

use super::Error;
use super::common::{ToolArgs, data_dir, parse_mib, read_program};

/// `agentkernel run`'s arguments.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Backend: process (default), wasm, monty, monty-inprocess, microvm.
    #[arg(long)]
    pub backend: Option<String>,
    /// Mounted read-write at /workspace; files persist across runs. A NAME (letters, digits,
    /// '.', '_', '-') is a named workspace under the data dir
    /// ($AGENTKERNEL_DATA_DIR or ~/.local/share/agentkernel); a PATH (containing '/', e.g.
    /// ./data) is that host directory. Either is created if missing.
    #[arg(long, value_name = "NAME|PATH")]
    pub workspace: Option<String>,
    /// Wall-clock limit in seconds [default: 30, or the config's].
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    pub timeout: Option<f64>,
    /// Memory limit in MiB (or with a unit: 256M, 1G, 512MiB) [default: 512, or the
    /// config's].
    #[arg(long, value_name = "MIB", value_parser = parse_mib)]
    pub memory: Option<u64>,
    /// Run in session NAME: globals persist across runs (kept by a background session
    /// server, started on first use), and /workspace is the named workspace NAME.
    #[arg(long, value_name = "NAME")]
    pub session: Option<String>,
    #[command(flatten)]
    pub tools: ToolArgs,
    /// Print one JSON object {exit_code, stdout, stderr, status, timings, value, ...}
    /// instead of passing output through (`value`: the last expression's value, `{repr,
    /// json}`, or null). Without --json the value is not printed, as `python3 file.py`
    /// prints none.
    #[arg(long)]
    pub json: bool,
    /// Program file, or - for standard input.
    #[arg(value_name = "FILE|-", default_value = "-")]
    pub file: String,
}

/// Runs the program.
pub async fn run(args: RunArgs) -> Result<ExitCode, Error> {
    let config = args.tools.config()?;
    let timeout = args.timeout.or(config.sandbox.timeout_secs).unwrap_or(30.0);
    let memory = args.memory.or(config.sandbox.memory_mib).unwrap_or(512);
    let backend = args
        .backend
        .clone()
        .or_else(|| config.sandbox.backend.clone())
        .unwrap_or_else(|| agentkernel::default_backend().into());
    if !(timeout.is_finite() && timeout > 0.0) {
        return Err(agentkernel::Error::invalid(
            format!("--timeout {timeout} is not a positive number of seconds"),
            "pass e.g. --timeout 30",
        )
        .into());
    }
    let code = read_program(&args.file)?;
    if let Some(name) = &args.session {
        if args.workspace.is_some() {
            return Err(agentkernel::Error::invalid(
                "--session and --workspace together",
                "a session's /workspace is the named workspace of the session's name",
            )
            .into());
        }
        return run_in_session(&args, name, code, timeout).await;
    }
    // Before any MCP server of the config starts: a workspace must not hold what the host
    // trusts (the config itself, a server's script, the home or data dir).
    if let Some(ws) = args.workspace.as_ref().filter(|w| w.contains('/')) {
        config.check_workspace(std::path::Path::new(ws))?;
    }
    let mut builder = config
        .kernel_builder()
        .await?
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
    let kernel = builder.build()?;
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
    let outcome = kernel.execute_request(req).await?;
    Ok(report(
        &outcome,
        &args,
        &backend,
        timeout,
        Some(memory),
        false,
    ))
}

/// `run --session`: the code goes to the session server (started if none answers).
async fn run_in_session(
    args: &RunArgs,
    name: &str,
    code: String,
    timeout: f64,
) -> Result<ExitCode, Error> {
    let client = agentkernel::serve::Client::new(data_dir());
    let outcome = client
        .exec(name, code, Some(timeout), &args.tools.serve_args())
        .await?;
    // The session server's memory limit is its own: not named here.
    Ok(report(&outcome, args, "session", timeout, None, !args.json))
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
            // The last expression's value ({repr, json?, truncated?}), null when none.
            "value": outcome.value,
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
