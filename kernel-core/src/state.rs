//! Where a sandbox is: running, or lost and why (never both, never neither).

use crate::error::{Error, Result};

/// The state of a sandbox whose guest can die or be killed: [`SandboxState::Live`] with what
/// a running guest holds (its process or VM and the connection to it), or
/// [`SandboxState::Lost`] with what ended it, until a reset starts a new guest. Backends keep
/// one instead of a pair of options, which would allow "live and lost".
#[derive(Debug)]
pub enum SandboxState<L> {
    /// The guest runs.
    Live(L),
    /// The guest is gone; the reason is reported by [`Error::SandboxLost`].
    Lost(String),
}

impl<L> SandboxState<L> {
    /// The live guest, or [`Error::SandboxLost`] with the reason it ended.
    pub fn live(&mut self) -> Result<&mut L> {
        match self {
            SandboxState::Live(live) => Ok(live),
            SandboxState::Lost(reason) => Err(Error::SandboxLost {
                reason: reason.clone(),
            }),
        }
    }

    /// The live guest, if there is one.
    pub fn as_live(&self) -> Option<&L> {
        match self {
            SandboxState::Live(live) => Some(live),
            SandboxState::Lost(_) => None,
        }
    }

    /// The live guest, if there is one (mutably).
    pub fn as_live_mut(&mut self) -> Option<&mut L> {
        match self {
            SandboxState::Live(live) => Some(live),
            SandboxState::Lost(_) => None,
        }
    }

    /// Whether the guest runs.
    pub fn is_live(&self) -> bool {
        matches!(self, SandboxState::Live(_))
    }

    /// Marks the sandbox lost for `reason` and hands back the guest that was live, for the
    /// caller to end (kill and wait). A sandbox already lost keeps its first reason.
    pub fn lose(&mut self, reason: impl Into<String>) -> Option<L> {
        match std::mem::replace(self, SandboxState::Lost(reason.into())) {
            SandboxState::Live(live) => Some(live),
            lost @ SandboxState::Lost(_) => {
                *self = lost;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_sandbox_keeps_its_first_reason() {
        let mut state = SandboxState::Live(7);
        assert_eq!(*state.live().unwrap(), 7);
        assert_eq!(state.lose("killed by the timeout limit"), Some(7));
        assert_eq!(state.lose("it was shut down"), None);
        let e = state.live().unwrap_err().to_string();
        assert!(e.contains("killed by the timeout limit"), "{e}");
        assert!(!state.is_live());
    }
}
