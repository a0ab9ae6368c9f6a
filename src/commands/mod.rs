//! The subcommands of the `agentkernel` binary, one module each: its clap arguments and a
//! `run` function that does the work through the library and prints the result. A command
//! returns its exit code, or an [`Error`] that `main` prints (the one place that does).

pub mod common;
pub mod doctor;
pub mod error;
pub mod exit_code;
pub mod run;
pub mod serve;
pub mod session;
pub mod task;
pub mod tools;
pub mod worker;
pub mod workspace;

pub use error::Error;
