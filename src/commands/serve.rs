//! `agentkernel serve`: without `--listen`, the session server (see [`agentkernel::serve`])
//! on the data dir's socket; with `--listen ADDR`, the HTTP server (see
//! [`agentkernel::http`], feature `server`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::Error;
use super::common::{ToolArgs, data_dir};

/// `agentkernel serve`'s arguments.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Exit after S seconds with no open session (default: run until killed). Session
    /// server only.
    #[arg(long, value_name = "S")]
    pub idle_exit: Option<f64>,
    /// Serve the HTTP API on ADDR (IP:PORT, [IPv6]:PORT or localhost:PORT; port 0 picks a
    /// free one) instead of the session socket. Default with no value: 127.0.0.1:8765. A
    /// non-loopback address needs --api-keys. The bound address is printed on stdout.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:8765")]
    pub listen: Option<String>,
    /// API keys of the HTTP server: one a line (blank and # lines ignored); the file must
    /// not be readable by others (chmod 600). Without it the server is open, and loopback
    /// only.
    #[arg(long, value_name = "FILE")]
    pub api_keys: Option<PathBuf>,
    /// Backends the HTTP server offers (repeatable; the first is the default). Default: the
    /// configuration's backend.
    #[arg(long = "backend", value_name = "NAME")]
    pub backends: Vec<String>,
    /// Seconds running executions may go on after SIGTERM/SIGINT before they are stopped.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub shutdown_grace: f64,
    /// Live sandboxes of the HTTP server in all.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_sandboxes: usize,
    /// Live sandboxes per API key.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub max_sandboxes_per_key: usize,
    #[command(flatten)]
    pub tools: ToolArgs,
}

/// Serves sessions until idle (or killed), or HTTP until SIGTERM/SIGINT.
pub async fn run(args: ServeArgs) -> Result<ExitCode, Error> {
    if let Some(listen) = &args.listen {
        return serve_http(&args, listen).await;
    }
    let config = args.tools.config()?;
    let kernel = config.kernel_builder().await.and_then(|b| b.build())?;
    let idle = args
        .idle_exit
        .and_then(|s| Duration::try_from_secs_f64(s).ok());
    let socket = agentkernel::serve::socket_path(&data_dir());
    agentkernel::serve::serve(kernel, &socket, idle).await?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "server"))]
async fn serve_http(_args: &ServeArgs, _listen: &str) -> Result<ExitCode, Error> {
    Err(agentkernel::Error::invalid(
        "this agentkernel was built without the HTTP server",
        "build it with the `server` feature (a default one)",
    )
    .into())
}

#[cfg(feature = "server")]
async fn serve_http(args: &ServeArgs, listen: &str) -> Result<ExitCode, Error> {
    use agentkernel::http::{self, ApiKeys, ServerConfig, ServerLimits};
    let addr = http::parse_listen(listen)?;
    let keys = match &args.api_keys {
        Some(path) => ApiKeys::from_file(path)?,
        None => ApiKeys::none(),
    };
    // Refused before anything starts.
    http::check_listen(&addr, &keys)?;
    let grace = Duration::try_from_secs_f64(args.shutdown_grace).map_err(|_| {
        agentkernel::Error::invalid(
            format!(
                "--shutdown-grace {} is not a number of seconds",
                args.shutdown_grace
            ),
            "give e.g. --shutdown-grace 10",
        )
    })?;
    let limits = ServerLimits {
        max_sandboxes: args.max_sandboxes,
        max_sandboxes_per_key: args.max_sandboxes_per_key,
        ..ServerLimits::default()
    };
    let config = args.tools.config()?;
    let mut kernels = Vec::new();
    let names: Vec<Option<&str>> = if args.backends.is_empty() {
        vec![None]
    } else {
        args.backends.iter().map(|b| Some(b.as_str())).collect()
    };
    for name in names {
        let mut builder = config.kernel_builder().await?;
        if let Some(name) = name {
            builder = builder.backend(name);
        }
        // The server closes idle sandboxes itself (each has its own idle timeout).
        builder = builder.session_idle_timeout(limits.max_idle_timeout);
        kernels.push(builder.build()?);
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| agentkernel::Error::io(format!("listening on {addr}"), e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| agentkernel::Error::io("reading the listening address", e))?;
    if keys.is_empty() {
        eprintln!(
            "agentkernel: no API keys: any local user or program that can reach {bound} can run code (give --api-keys FILE to require a key)"
        );
    }
    // One line on stdout, which a parent reads to find the port (with --listen ...:0).
    super::common::print(&format!("agentkernel: listening on http://{bound}\n"));
    let server = ServerConfig {
        kernels,
        api_keys: keys,
        limits,
        shutdown_grace: grace,
    };
    http::serve(listener, server, http::shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}
