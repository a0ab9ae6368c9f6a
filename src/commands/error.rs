//! How a command fails: [`Error`], which `main` prints as one line on stderr with its exit
//! code.

use agentkernel::serve::ClientError;

use super::exit_code;

/// Why a command failed.
#[derive(Debug)]
pub enum Error {
    /// An error of the library: printed in the command line's words ([`in_cli_words`]),
    /// the exit code chosen by its kind.
    Kernel(agentkernel::Error),
    /// An error the session server worded: printed as it is, with this exit code.
    Server {
        /// The server's message (with its hint).
        message: String,
        /// The exit code.
        code: u8,
    },
}

impl From<agentkernel::Error> for Error {
    fn from(e: agentkernel::Error) -> Self {
        Error::Kernel(e)
    }
}

impl From<ClientError> for Error {
    /// A session run's failure: the server's bad-input errors exit with
    /// [`exit_code::USAGE`], its others with [`exit_code::INTERNAL`].
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Failed { message, usage } => Error::Server {
                message,
                code: if usage {
                    exit_code::USAGE
                } else {
                    exit_code::INTERNAL
                },
            },
            ClientError::Kernel(e) => Error::Kernel(e),
        }
    }
}

impl Error {
    /// The line to print (after `agentkernel: error: `).
    pub fn message(&self) -> String {
        match self {
            Error::Kernel(e) => in_cli_words(&e.to_string()),
            Error::Server { message, .. } => message.clone(),
        }
    }

    /// The exit code: [`exit_code::USAGE`] for bad input, [`exit_code::UNAVAILABLE`] when a
    /// backend or tool source cannot run here, [`exit_code::INTERNAL`] otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Kernel(
                agentkernel::Error::InvalidRequest { .. } | agentkernel::Error::Unsupported { .. },
            ) => exit_code::USAGE,
            Error::Kernel(
                agentkernel::Error::Unavailable { .. } | agentkernel::Error::ToolSource { .. },
            ) => exit_code::UNAVAILABLE,
            Error::Kernel(_) => exit_code::INTERNAL,
            Error::Server { code, .. } => *code,
        }
    }
}

/// The library speaks of builder methods (`` `.timeout(Duration::from_secs(30))` ``); the
/// command line of flags (`` `--timeout 30` ``): rewrites the one into the other in an
/// error's text, so that a hint speaks the caller's language.
pub fn in_cli_words(text: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::in_cli_words;

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
}
