//! The exit codes of the `agentkernel` binary, besides 0, 1 and a program's own (`run` and
//! `task wait` exit with the program's code: 1 on an uncaught exception, 124 on a timeout,
//! 137 on another limit kill, as [`agentkernel::ExecStatus::exit_code`] says).

/// Bad input (unknown backend, missing file, bad limits), like clap's.
pub const USAGE: u8 = 2;
/// The backend cannot run on this machine (sysexits' `EX_UNAVAILABLE`).
pub const UNAVAILABLE: u8 = 69;
/// A failure of AgentKernel itself (sysexits' `EX_SOFTWARE`); also a task that was lost or
/// failed in the kernel (`task wait`).
pub const INTERNAL: u8 = 70;
/// `task wait`: the task was still unfinished at `--timeout` (sysexits' `EX_TEMPFAIL`: try
/// again later).
pub const TEMPFAIL: u8 = 75;
/// `task wait`: the task was cancelled (128 + SIGINT, as a shell reports a program stopped
/// by Ctrl-C).
pub const CANCELLED: u8 = 130;
