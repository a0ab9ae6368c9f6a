//! The session server: [`serve`] answers the protocol of [`super`] on a Unix socket with a
//! [`Kernel`]'s sessions.

use std::path::Path;
use std::time::Duration;

use agentkernel_core::{Error, ExecRequest, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::{Request, Response};
use crate::kernel::Kernel;

/// Serves `kernel`'s sessions on `socket` until `idle_exit` passes with no open session and
/// no connection.
pub async fn serve(kernel: Kernel, socket: &Path, idle_exit: Option<Duration>) -> Result<()> {
    let dir = socket
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    agentkernel_core::hostdirs::private_dir(dir)?;
    // One server per socket: held for the server's life, so two servers started at once
    // (two `run --session` racing) cannot both take over the path.
    let lock_path = socket.with_extension("sock.lock");
    let lock = agentkernel_core::hostdirs::private_file()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| Error::io(format!("opening {}", lock_path.display()), e))?;
    if lock.try_lock().is_err() || UnixStream::connect(socket).await.is_ok() {
        return Err(Error::invalid(
            format!("a session server already runs on {}", socket.display()),
            "use it (agentkernel run --session NAME), or stop it first",
        ));
    }
    // Bound inside a directory only its owner can enter, restricted to its owner, then
    // moved into place: there is no moment when another user could connect (the socket's
    // first mode comes from the umask, but no one else can reach it through the 0700
    // directory).
    let staging_dir = dir.join(format!(".sock-staging.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging_dir);
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&staging_dir)
            .map_err(|e| Error::io(format!("creating {}", staging_dir.display()), e))?;
    }
    let staging = staging_dir.join("agentkernel.sock");
    let bound = UnixListener::bind(&staging)
        .map_err(|e| Error::io(format!("listening on {}", staging.display()), e))
        .and_then(|l| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| Error::io("restricting the socket to its owner", e))?;
            std::fs::rename(&staging, socket)
                .map_err(|e| Error::io(format!("moving the socket to {}", socket.display()), e))?;
            Ok(l)
        });
    let _ = std::fs::remove_dir_all(&staging_dir);
    let listener = bound?;
    tracing::info!(socket = %socket.display(), "session server listening");
    let active = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut idle_since = tokio::time::Instant::now();
    loop {
        let accept = tokio::time::timeout(Duration::from_secs(1), listener.accept()).await;
        match accept {
            Ok(Ok((stream, _))) => {
                let kernel = kernel.clone();
                let active = active.clone();
                active.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    if let Err(e) = handle(&kernel, stream).await {
                        tracing::debug!(error = %e, "session client went away");
                    }
                    active.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                });
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "accepting a connection failed"),
            Err(_) => {}
        }
        let busy =
            active.load(std::sync::atomic::Ordering::SeqCst) > 0 || !kernel.sessions().is_empty();
        if busy {
            idle_since = tokio::time::Instant::now();
        } else if idle_exit.is_some_and(|limit| idle_since.elapsed() >= limit) {
            let _ = std::fs::remove_file(socket);
            drop(lock);
            return Ok(());
        }
    }
}

async fn handle(kernel: &Kernel, stream: UnixStream) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(req) => answer(kernel, req).await,
            Err(e) => Response::Failed {
                ok: false,
                error: format!("bad request: {e}"),
                usage: true,
            },
        };
        let mut out = serde_json::to_vec(&response).unwrap_or_default();
        out.push(b'\n');
        write.write_all(&out).await?;
    }
    Ok(())
}

async fn answer(kernel: &Kernel, req: Request) -> Response {
    let failed = |e: Error| Response::Failed {
        ok: false,
        usage: matches!(e, Error::InvalidRequest { .. } | Error::Unsupported { .. }),
        error: e.to_string(),
    };
    match req {
        Request::Exec {
            session,
            code,
            timeout_secs,
        } => {
            let mut exec = ExecRequest::new(code);
            if let Some(t) = timeout_secs.and_then(|t| Duration::try_from_secs_f64(t).ok()) {
                exec = exec.with_timeout(t);
            }
            match kernel.session(&session).await {
                Ok(s) => match s.exec_request(exec).await {
                    Ok(outcome) => Response::Outcome {
                        ok: true,
                        outcome: Box::new(outcome),
                    },
                    Err(e) => failed(e),
                },
                Err(e) => failed(e),
            }
        }
        Request::List => Response::Sessions {
            ok: true,
            sessions: kernel.sessions(),
        },
        Request::Close { session } => match kernel.close_session(&session).await {
            Ok(closed) => Response::Closed { ok: true, closed },
            Err(e) => failed(e),
        },
    }
}
