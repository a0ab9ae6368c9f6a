//! The one error type of AgentKernel. Every variant's message says what failed and what to
//! do next; [`Error::hint`] returns the "what to do" part alone.

use crate::exec::LimitKind;

/// What to do about [`Error::SandboxLost`].
const SANDBOX_LOST_HINT: &str = "call reset() or create a new sandbox";

/// What to do about [`Error::WorkspaceBusy`].
const WORKSPACE_BUSY_HINT: &str = "one program at a time runs with a workspace: wait for the other to finish (this run waits up to its time limit), or give this run its own workspace";

/// What to do about [`Error::PoolExhausted`].
const POOL_HINT: &str =
    "shut down sandboxes you are done with, or raise the pool's max_size or acquire_timeout";

/// Result alias used across AgentKernel.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the kernel itself.
///
/// A Python exception raised by the sandboxed program is *not* an `Error`: it is reported as
/// [`crate::ExecStatus::Exception`] in an [`crate::ExecOutcome`].
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backend cannot do this at all (by design, not because of this machine).
    #[error("{operation} is not supported by the {backend} backend. Hint: {hint}")]
    Unsupported {
        /// What was asked, e.g. "snapshot".
        operation: String,
        /// The backend's name.
        backend: &'static str,
        /// What to do instead.
        hint: String,
    },
    /// The backend exists but cannot run on this machine right now.
    #[error("the {backend} backend is unavailable here: {reason}. Hint: {hint}")]
    Unavailable {
        /// The backend's name.
        backend: &'static str,
        /// Why it cannot run.
        reason: String,
        /// How to make it run (or which backend to use instead).
        hint: String,
    },
    /// A tool source (an MCP server, a tools directory) could not be started or listed.
    #[error("tool source {source_name:?}: {message}. Hint: {hint}")]
    ToolSource {
        /// Its name in the configuration.
        source_name: String,
        /// What went wrong.
        message: String,
        /// How to fix it.
        hint: String,
    },
    /// The caller asked for something malformed (bad limit, bad path, unknown backend...).
    #[error("invalid request: {message}. Hint: {hint}")]
    InvalidRequest {
        /// What is wrong.
        message: String,
        /// How to fix it.
        hint: String,
    },
    /// A limit stopped an operation of the kernel itself (as opposed to a program run,
    /// whose limit kills are reported in [`crate::ExecStatus::Killed`]).
    #[error("{limit} limit exceeded: {detail}")]
    LimitExceeded {
        /// Which limit.
        limit: LimitKind,
        /// Details.
        detail: String,
    },
    /// Every sandbox of a pool stayed in use for the whole acquire timeout.
    #[error(
        "no sandbox came free within {waited:?}: all {max_size} sandboxes of the pool are in use. Hint: {POOL_HINT}"
    )]
    PoolExhausted {
        /// The pool's `max_size`.
        max_size: usize,
        /// How long the acquire waited.
        waited: std::time::Duration,
    },
    /// Another program ran with the same workspace for the whole wait (one program at a
    /// time writes a workspace: see [`crate::WorkspaceLock`]).
    #[error(
        "workspace {} stayed in use by another program for {waited:?}. Hint: {WORKSPACE_BUSY_HINT}",
        path.display()
    )]
    WorkspaceBusy {
        /// The workspace directory.
        path: std::path::PathBuf,
        /// How long this run waited.
        waited: std::time::Duration,
    },
    /// The sandbox died or was killed earlier and cannot run more code.
    #[error("the sandbox is no longer running ({reason}). Hint: {SANDBOX_LOST_HINT}")]
    SandboxLost {
        /// What ended it.
        reason: String,
    },
    /// An operating-system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What the kernel was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A bug in AgentKernel or a guest that broke the protocol.
    #[error(
        "internal error: {0}. This is a bug in AgentKernel (or a guest that broke the protocol); please report it"
    )]
    Internal(String),
}

impl Error {
    /// [`Error::SandboxLost`] for a sandbox with no live guest: `reason` says what ended it
    /// (a killed run), and no reason means it was shut down.
    pub fn sandbox_lost(reason: Option<&str>) -> Self {
        Error::SandboxLost {
            reason: reason.unwrap_or("it was shut down").to_owned(),
        }
    }

    /// Shorthand for [`Error::Io`] with a context message.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Shorthand for [`Error::InvalidRequest`].
    pub fn invalid(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::InvalidRequest {
            message: message.into(),
            hint: hint.into(),
        }
    }

    /// Shorthand for [`Error::ToolSource`].
    pub fn tool_source(
        source_name: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Error::ToolSource {
            source_name: source_name.into(),
            message: message.into(),
            hint: hint.into(),
        }
    }

    /// Shorthand for [`Error::Unsupported`].
    pub fn unsupported(
        operation: impl Into<String>,
        backend: &'static str,
        hint: impl Into<String>,
    ) -> Self {
        Error::Unsupported {
            operation: operation.into(),
            backend,
            hint: hint.into(),
        }
    }

    /// Whether the same request may succeed if it is simply tried again later (a pool or
    /// workspace busy now, a sandbox lost, an I/O failure, a tool server or backend that is
    /// down), as opposed to a permanent refusal that only a changed request fixes (malformed,
    /// unsupported by the backend, over a limit). Task retries and HTTP status codes are
    /// chosen by it. Every variant is classified here, so a new one must be too.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::InvalidRequest { .. }
            | Error::Unsupported { .. }
            | Error::LimitExceeded { .. } => false,
            Error::Unavailable { .. }
            | Error::ToolSource { .. }
            | Error::PoolExhausted { .. }
            | Error::WorkspaceBusy { .. }
            | Error::SandboxLost { .. }
            | Error::Io { .. }
            | Error::Internal(_) => true,
        }
    }

    /// The "what to do next" part of the message, where the variant has one.
    pub fn hint(&self) -> Option<&str> {
        match self {
            Error::Unsupported { hint, .. }
            | Error::Unavailable { hint, .. }
            | Error::ToolSource { hint, .. }
            | Error::InvalidRequest { hint, .. } => Some(hint),
            Error::SandboxLost { .. } => Some(SANDBOX_LOST_HINT),
            Error::PoolExhausted { .. } => Some(POOL_HINT),
            Error::WorkspaceBusy { .. } => Some(WORKSPACE_BUSY_HINT),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn busy_and_lost_are_transient_and_bad_requests_are_not() {
        let busy = Error::PoolExhausted {
            max_size: 1,
            waited: Duration::from_secs(1),
        };
        assert!(busy.is_transient());
        assert!(Error::sandbox_lost(None).is_transient());
        assert!(!Error::invalid("bad", "fix it").is_transient());
        assert!(!Error::unsupported("x", "process", "y").is_transient());
    }
}
