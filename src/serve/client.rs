//! The client of the session server: one request at a time over its Unix socket
//! ([`request`]), and [`Client`], which speaks for the `agentkernel run --session` and
//! `agentkernel session` commands (starting a server in the background when a session run
//! finds none).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agentkernel_core::{Error, ExecOutcome};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::{Request, Response, socket_path};
use crate::session::SessionInfo;

/// Sends one request to the server on `socket`; `None` if no server answers there.
pub async fn request(socket: &Path, req: &Request) -> Option<std::io::Result<Response>> {
    let stream = UnixStream::connect(socket).await.ok()?;
    Some(
        async {
            let (read, mut write) = stream.into_split();
            let mut line = serde_json::to_vec(req)?;
            line.push(b'\n');
            write.write_all(&line).await?;
            let mut lines = BufReader::new(read).lines();
            let answer = lines.next_line().await?.ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the session server closed the connection",
                )
            })?;
            serde_json::from_str(&answer).map_err(std::io::Error::other)
        }
        .await,
    )
}

/// Why the session server did not do what a [`Client`] asked.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a failure, worded by the server (with its hint).
    #[error("{message}")]
    Failed {
        /// What went wrong.
        message: String,
        /// Whether it was bad input (as opposed to the kernel failing).
        usage: bool,
    },
    /// No server could be reached or started, talking to it failed, or its answer was not
    /// one for the request.
    #[error(transparent)]
    Kernel(#[from] Error),
}

/// A client of the session server of one data dir (on its [`socket_path`]).
#[derive(Debug, Clone)]
pub struct Client {
    data_dir: PathBuf,
}

impl Default for Client {
    /// The client of the default data dir ([`crate::Workspaces::data_dir`]).
    fn default() -> Self {
        Client::new(crate::Workspaces::data_dir())
    }
}

impl Client {
    /// The client of the server in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Client {
            data_dir: data_dir.into(),
        }
    }

    /// The server's socket.
    pub fn socket(&self) -> PathBuf {
        socket_path(&self.data_dir)
    }

    /// Sends one request; `None` if no server answers.
    pub async fn request(&self, req: &Request) -> Option<std::io::Result<Response>> {
        request(&self.socket(), req).await
    }

    /// Runs `code` in session `session` (opened on first use) and returns its outcome. When
    /// no server answers, starts one in the background ([`Client::start_server`] with
    /// `serve_args`) and waits up to 30 s for it to listen.
    pub async fn exec(
        &self,
        session: &str,
        code: String,
        timeout_secs: Option<f64>,
        serve_args: &[OsString],
    ) -> Result<ExecOutcome, ClientError> {
        let socket = self.socket();
        let req = Request::Exec {
            session: session.to_owned(),
            code,
            timeout_secs,
        };
        let mut answer = request(&socket, &req).await;
        if answer.is_none() {
            self.start_server(serve_args)?;
            for _ in 0..600 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if UnixStream::connect(&socket).await.is_ok() {
                    break;
                }
            }
            answer = request(&socket, &req).await;
        }
        match answer {
            None => Err(Error::Unavailable {
                backend: "process",
                reason: format!("no session server answers on {}", socket.display()),
                hint: "see serve.log in the data dir, or start one with `agentkernel serve`".into(),
            }
            .into()),
            Some(answer) => match answer_of(answer)? {
                Response::Outcome { outcome, .. } => Ok(*outcome),
                _ => Err(unexpected()),
            },
        }
    }

    /// The open sessions; `None` if no server runs (so none are open).
    pub async fn list(&self) -> Result<Option<Vec<SessionInfo>>, ClientError> {
        let Some(answer) = self.request(&Request::List).await else {
            return Ok(None);
        };
        match answer_of(answer)? {
            Response::Sessions { sessions, .. } => Ok(Some(sessions)),
            _ => Err(unexpected()),
        }
    }

    /// Closes session `session` (its workspace stays): whether it was open; `None` if no
    /// server runs.
    pub async fn close(&self, session: &str) -> Result<Option<bool>, ClientError> {
        let req = Request::Close {
            session: session.to_owned(),
        };
        let Some(answer) = self.request(&req).await else {
            return Ok(None);
        };
        match answer_of(answer)? {
            Response::Closed { closed, .. } => Ok(Some(closed)),
            _ => Err(unexpected()),
        }
    }

    /// Starts `agentkernel serve` (this binary) in the background on this data dir, with
    /// `serve_args` (e.g. `--config FILE`, `--mcp NAME=COMMAND`) after its idle exit:
    /// `$AGENTKERNEL_SERVE_IDLE_SECS`, else 600 s. See [`super::spawn_background`].
    pub fn start_server(&self, serve_args: &[OsString]) -> Result<(), Error> {
        super::spawn_background(
            &self.data_dir,
            "serve",
            "AGENTKERNEL_SERVE_IDLE_SECS",
            "600",
            serve_args,
        )
    }
}

/// A server's answer, its failure as [`ClientError::Failed`].
fn answer_of(answer: std::io::Result<Response>) -> Result<Response, ClientError> {
    match answer {
        Err(e) => Err(Error::io("talking to the session server", e).into()),
        Ok(Response::Failed { error, usage, .. }) => Err(ClientError::Failed {
            message: error,
            usage,
        }),
        Ok(response) => Ok(response),
    }
}

fn unexpected() -> ClientError {
    Error::Internal("unexpected answer from the session server".into()).into()
}
