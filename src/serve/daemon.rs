//! Background daemons of the `agentkernel` binary: the session server (started by
//! `run --session`, see [`super::Client::start_server`]) and the task worker (started by
//! `task submit` and `task wait`, see [`ensure_worker`]). Both are this binary run again,
//! detached, and exit after a while with nothing to do.

use std::ffi::OsString;
use std::fs::File;
use std::path::Path;

use agentkernel_core::{Error, Result, hostdirs};

/// Opens (creating it) `worker.lock` in `data_dir`, the data dir itself created private if
/// missing. A running `agentkernel worker` holds a shared lock on it for its whole life, so
/// whoever gets an exclusive one knows that no worker runs.
pub fn worker_lock(data_dir: &Path) -> Result<File> {
    hostdirs::private_dir(data_dir)?;
    hostdirs::private_file()
        .create(true)
        .truncate(false)
        .write(true)
        .open(data_dir.join("worker.lock"))
        .map_err(|e| Error::io("opening the worker lock", e))
}

/// Starts `agentkernel worker` (this binary) in the background on `data_dir` unless one
/// holds its [`worker_lock`]; whether it started one. It exits after a minute without work
/// (`$AGENTKERNEL_WORKER_IDLE_SECS` to change that).
pub fn ensure_worker(data_dir: &Path) -> Result<bool> {
    let lock = worker_lock(data_dir)?;
    if lock.try_lock().is_err() {
        return Ok(false); // a worker holds it (shared)
    }
    drop(lock);
    spawn_background(
        data_dir,
        "worker",
        "AGENTKERNEL_WORKER_IDLE_SECS",
        "60",
        &[],
    )?;
    Ok(true)
}

/// Starts `agentkernel SUBCOMMAND --idle-exit S ARGS..` (this binary: the running
/// executable) detached from this process (its own process group, stdin and stdout
/// closed, stderr appended to `SUBCOMMAND.log` in `data_dir`, mode 0600). S is `$idle_env`
/// when it is a positive number, else `default_idle`.
pub fn spawn_background(
    data_dir: &Path,
    subcommand: &str,
    idle_env: &str,
    default_idle: &str,
    args: &[OsString],
) -> Result<()> {
    hostdirs::private_dir(data_dir)?;
    let log_name = format!("{subcommand}.log");
    let log = hostdirs::private_file()
        .create(true)
        .append(true)
        .open(data_dir.join(&log_name))
        .map_err(|e| Error::io(format!("opening {log_name}"), e))?;
    // A log made 0644 by an older version becomes its owner's alone.
    hostdirs::restrict_to_owner(&log)
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
