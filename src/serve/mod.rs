//! The session server behind `agentkernel run --session NAME`, and its client.
//!
//! Sessions keep a live interpreter, so they need a process that outlives one CLI call:
//! `agentkernel serve` holds a [`Kernel`](crate::Kernel) and its sessions and answers on a
//! Unix socket in the data dir (`agentkernel.sock`, mode 0600: only its user can connect).
//! `run --session` starts one in the background when none answers. It exits after
//! `idle_exit` with no open session.
//!
//! The protocol is one JSON object per line each way:
//! `{"op": "exec", "session": NAME, "code": CODE, "timeout_secs": S?}` →
//! `{"ok": true, "outcome": ExecOutcome}`; `{"op": "list"}` → `{"ok": true, "sessions": [...]}`;
//! `{"op": "close", "session": NAME}` → `{"ok": true, "closed": bool}`; errors are
//! `{"ok": false, "error": MESSAGE, "usage": bool}`.
//!
//! This module holds the protocol ([`Request`], [`Response`], [`socket_path`]); the server
//! ([`serve`]) is in `server.rs`, the client ([`Client`], [`request`]) in `client.rs`, and
//! the starting of background daemons (the session server, the task worker:
//! [`spawn_background`], [`ensure_worker`]) in `daemon.rs`.

mod client;
mod daemon;
mod server;

pub use client::{Client, ClientError, request};
pub use daemon::{ensure_worker, spawn_background, worker_lock};
pub use server::serve;

use std::path::{Path, PathBuf};

use agentkernel_core::ExecOutcome;
use serde::{Deserialize, Serialize};

use crate::session::SessionInfo;

/// A request to the session server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Run code in a session (started on first use).
    Exec {
        /// Session name.
        session: String,
        /// The program.
        code: String,
        /// Wall-clock limit in seconds.
        #[serde(default)]
        timeout_secs: Option<f64>,
    },
    /// List open sessions.
    List,
    /// Close a session.
    Close {
        /// Session name.
        session: String,
    },
}

/// The server's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Response {
    /// An exec's outcome.
    Outcome {
        /// Always true.
        ok: bool,
        /// What the program did.
        outcome: Box<ExecOutcome>,
    },
    /// The open sessions.
    Sessions {
        /// Always true.
        ok: bool,
        /// One entry per session.
        sessions: Vec<SessionInfo>,
    },
    /// Whether a session was closed.
    Closed {
        /// Always true.
        ok: bool,
        /// Whether it existed.
        closed: bool,
    },
    /// The request failed.
    Failed {
        /// Always false.
        ok: bool,
        /// What went wrong (with the hint).
        error: String,
        /// Whether it was bad input (as opposed to the kernel failing).
        usage: bool,
    },
}

/// The socket path in `data_dir`.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("agentkernel.sock")
}
