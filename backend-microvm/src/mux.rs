//! The guest agent over one command's stdin and stdout: how the `msb` engine (whose guest
//! offers exec streams, not serial ports) speaks the same protocol as every other backend.
//!
//! In the guest, `guest/mux.py` ([`MUX_SOURCE`], run as `python3 -I -u -c MUX_SOURCE`) reads the
//! agent's source and a config from its stdin, starts the agent with fd 3 a socket and fds 1
//! and 2 pipes, forwards the rest of its stdin to the agent's control socket, and tags
//! everything the agent says (control, stdout, stderr, and finally its exit status) into
//! frames on its stdout. On the host, [`start`] runs a pump that undoes the framing into three
//! in-memory streams, so a plain [`GuestConn`] drives the agent; when the agent is gone the
//! streams end, which the connection reports as [`ExecEnd::GuestGone`](agentkernel_core::guest::ExecEnd).
//!
//! The transport is two channels of byte chunks, so the same code runs over microsandbox's
//! exec stream and, in this module's tests, over a local `python3` process.

use std::time::Instant;

use agentkernel_core::guest::{GuestConn, Hello, length_prefixed};
use agentkernel_core::{Error, Result};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, watch};

/// The guest-side multiplexer, run as `python3 -I -u -c MUX_SOURCE`.
pub const MUX_SOURCE: &str = include_str!("../guest/mux.py");

/// Bytes buffered per stream between the pump and the connection.
const STREAM_BUFFER: usize = 1 << 20;

/// Largest frame the guest's multiplexer sends (it reads at most 64 KiB at a time).
const MAX_FRAME: usize = 1 << 20;

/// How the agent ended, as the multiplexer saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentExit {
    /// Exit status as a shell reports it (128 + signal for a signal); -1 when unknown (the
    /// multiplexer died or sent no valid status).
    pub code: i32,
    /// Whether the guest kernel's OOM killer struck while the agent ran.
    pub oom: bool,
}

/// The host side of a multiplexed agent.
pub struct MuxAgent {
    /// The protocol connection over the demultiplexed streams.
    pub conn: GuestConn<DuplexStream, DuplexStream, DuplexStream>,
    /// Becomes `Some` when the agent is gone.
    pub exit: watch::Receiver<Option<AgentExit>>,
}

impl MuxAgent {
    /// How the agent ended, if it has.
    pub fn exited(&self) -> Option<AgentExit> {
        *self.exit.borrow()
    }
}

/// Starts the agent behind a multiplexer whose stdout arrives on `incoming` and whose stdin
/// is fed through `outgoing`: sends it `agent_source` and `config` (see `mux.py`), then waits
/// for the agent's hello until `deadline`.
pub async fn start(
    incoming: mpsc::Receiver<Vec<u8>>,
    outgoing: mpsc::Sender<Vec<u8>>,
    agent_source: &str,
    config: &Value,
    deadline: Instant,
) -> Result<(MuxAgent, Hello)> {
    let gone = || Error::SandboxLost {
        reason: "the guest's multiplexer ended before the agent started".into(),
    };
    outgoing
        .send(length_prefixed(agent_source.as_bytes()))
        .await
        .map_err(|_| gone())?;
    outgoing
        .send(length_prefixed(config.to_string().as_bytes()))
        .await
        .map_err(|_| gone())?;
    let (control, control_pump) = tokio::io::duplex(STREAM_BUFFER);
    let (stdout, stdout_pump) = tokio::io::duplex(STREAM_BUFFER);
    let (stderr, stderr_pump) = tokio::io::duplex(STREAM_BUFFER);
    let (exit_tx, exit) = watch::channel(None);
    tokio::spawn(pump(
        incoming,
        outgoing,
        control_pump,
        stdout_pump,
        stderr_pump,
        exit_tx,
    ));
    let mut conn = GuestConn::new(control, stdout, stderr);
    let hello = conn.hello(deadline).await?;
    Ok((MuxAgent { conn, exit }, hello))
}

/// Moves bytes between the transport and the three streams until the agent is gone (its
/// exit frame, or the transport ending); the streams then end, so the connection sees EOF.
///
/// Nothing here waits on one stream while another has data: host → guest bytes have their
/// own task, and each guest → host stream is written by its own task from a queue, so a
/// stream nobody reads (stdout between execs) never holds up control frames or stderr.
/// Each queue holds at most [`QUEUE_CAP`] bytes; beyond that, chunks are dropped (output
/// the connection would discard past its cap anyway) and a warning is logged.
async fn pump(
    mut incoming: mpsc::Receiver<Vec<u8>>,
    outgoing: mpsc::Sender<Vec<u8>>,
    control: DuplexStream,
    stdout: DuplexStream,
    stderr: DuplexStream,
    exit: watch::Sender<Option<AgentExit>>,
) {
    let (mut from_host, to_host) = tokio::io::split(control);
    // Host → guest: ends when the connection is dropped, which drops `outgoing`, so the
    // multiplexer sees its stdin end and kills the agent.
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n) = from_host.read(&mut buf).await {
            if n == 0 || outgoing.send(buf[..n].to_vec()).await.is_err() {
                break;
            }
        }
    });
    let control = StreamQueue::spawn(to_host, "control");
    let stdout = StreamQueue::spawn(stdout, "stdout");
    let stderr = StreamQueue::spawn(stderr, "stderr");
    let mut frames = Deframer::default();
    let mut agent_exit = AgentExit {
        code: -1,
        oom: false,
    };
    'transport: while let Some(chunk) = incoming.recv().await {
        frames.push(&chunk);
        loop {
            match frames.next() {
                Ok(Some((b'c', payload))) => control.push(payload),
                Ok(Some((b'o', payload))) => stdout.push(payload),
                Ok(Some((b'e', payload))) => stderr.push(payload),
                Ok(Some((b'x', payload))) => {
                    agent_exit = parse_exit(&payload);
                    break 'transport;
                }
                Ok(Some((other, _))) => {
                    tracing::warn!(
                        tag = other,
                        "msb: unknown frame from the guest's multiplexer"
                    );
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!("msb: {e}; ending the connection");
                    break 'transport;
                }
            }
        }
    }
    // The exit is known before the streams end, so whoever sees EOF can read it.
    let _ = exit.send(Some(agent_exit));
    drop((control, stdout, stderr));
}

/// Largest backlog of one stream between the transport and the connection.
const QUEUE_CAP: usize = 64 << 20;

/// A byte-capped queue into one stream, drained by its own task.
struct StreamQueue {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    queued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    name: &'static str,
}

impl StreamQueue {
    fn spawn(
        mut stream: impl tokio::io::AsyncWrite + Unpin + Send + 'static,
        name: &'static str,
    ) -> StreamQueue {
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let queued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let drained = queued.clone();
        tokio::spawn(async move {
            while let Some(bytes) = rx.recv().await {
                drained.fetch_sub(bytes.len(), std::sync::atomic::Ordering::Relaxed);
                if stream.write_all(&bytes).await.is_err() {
                    break; // the connection is gone
                }
            }
            // All senders are gone: ending the stream tells the connection.
            let _ = stream.shutdown().await;
        });
        StreamQueue { tx, queued, name }
    }

    fn push(&self, bytes: Vec<u8>) {
        use std::sync::atomic::Ordering;
        if self.queued.load(Ordering::Relaxed) + bytes.len() > QUEUE_CAP {
            tracing::warn!(
                stream = self.name,
                "msb: dropping guest output nobody reads ({QUEUE_CAP} bytes queued)"
            );
            return;
        }
        self.queued.fetch_add(bytes.len(), Ordering::Relaxed);
        let _ = self.tx.send(bytes);
    }
}

/// The exit frame's JSON: `{"status": n, "oom": bool}` (negative status: the signal).
fn parse_exit(payload: &[u8]) -> AgentExit {
    let value: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
    let code = match value["status"].as_i64() {
        // Killed by a signal: as a shell reports it.
        Some(status) if status < 0 => 128 - i32::try_from(status).unwrap_or(-1),
        Some(status) => i32::try_from(status).unwrap_or(i32::MAX),
        None => -1,
    };
    AgentExit {
        code,
        oom: value["oom"] == true,
    }
}

/// Splits the multiplexer's stdout into (tag, payload) frames.
#[derive(Default)]
struct Deframer {
    buf: Vec<u8>,
}

impl Deframer {
    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, `None` until one has arrived, or an error for a frame no
    /// multiplexer sends.
    fn next(&mut self) -> std::result::Result<Option<(u8, Vec<u8>)>, String> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > MAX_FRAME {
            return Err(format!(
                "a {len}-byte frame from the guest's multiplexer (at most {MAX_FRAME})"
            ));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        let tag = self.buf[0];
        let payload = self.buf[5..5 + len].to_vec();
        self.buf.drain(..5 + len);
        Ok(Some((tag, payload)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use agentkernel_core::guest::{AGENT_SOURCE, ExecEnd};
    use agentkernel_core::{ExecRequest, ExecStatus, NoTools};
    use serde_json::json;
    use tokio::io::AsyncWriteExt;
    use tokio::process::Command;

    use super::*;

    /// The multiplexer as a local process, its stdout and stdin as the transport.
    fn local_mux() -> (
        tokio::process::Child,
        mpsc::Receiver<Vec<u8>>,
        mpsc::Sender<Vec<u8>>,
    ) {
        let mut child = Command::new("python3")
            .args(["-I", "-u", "-c", MUX_SOURCE])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3");
        let mut out = child.stdout.take().expect("stdout");
        let mut input = child.stdin.take().expect("stdin");
        let (in_tx, in_rx) = mpsc::channel(16);
        let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(16);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            while let Ok(n) = out.read(&mut buf).await {
                if n == 0 || in_tx.send(buf[..n].to_vec()).await.is_err() {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            while let Some(bytes) = out_rx.recv().await {
                if input.write_all(&bytes).await.is_err() {
                    break;
                }
            }
        });
        (child, in_rx, out_tx)
    }

    fn config(limits: Value) -> Value {
        json!({"env": {"PATH": "/usr/bin:/bin", "AK_TEST": "mux"}, "cwd": "/tmp", "uid": null, "limits": limits})
    }

    /// A local multiplexer with an agent that said hello, under `limits`.
    async fn started(limits: Value) -> (tokio::process::Child, MuxAgent, Hello) {
        let (child, incoming, outgoing) = local_mux();
        let (agent, hello) = start(
            incoming,
            outgoing,
            AGENT_SOURCE,
            &config(limits),
            deadline(),
        )
        .await
        .expect("hello");
        (child, agent, hello)
    }

    fn deadline() -> Instant {
        Instant::now() + Duration::from_secs(30)
    }

    async fn run(agent: &mut MuxAgent, code: &str) -> agentkernel_core::guest::ExecReport {
        agent
            .conn
            .exec(
                &ExecRequest::new(code),
                Arc::new(NoTools),
                8 << 20,
                deadline(),
            )
            .await
            .expect("exec")
    }

    #[tokio::test]
    async fn the_agent_runs_programs_and_keeps_their_globals_through_the_multiplexer() {
        let (_child, mut agent, hello) = started(json!({})).await;
        assert!(hello.python.starts_with("3."), "{hello:?}");
        let report = run(
            &mut agent,
            "import os, sys\nx = 41\nprint(6*7)\nprint('err', file=sys.stderr)\nprint(os.environ['AK_TEST'], os.getcwd())",
        )
        .await;
        assert!(
            matches!(report.end, ExecEnd::Finished(ExecStatus::Ok)),
            "{:?}",
            report.end
        );
        assert_eq!(report.stdout.text(), "42\nmux /tmp\n");
        assert_eq!(report.stderr.text(), "err\n");
        // A large output crosses many frames and arrives whole.
        let report = run(&mut agent, "print(x + 1)\nprint('y' * 300000)").await;
        assert_eq!(
            report.stdout.text(),
            format!("42\n{}\n", "y".repeat(300_000))
        );
        // A large program crosses the control socket in many pieces, while a large output
        // comes back.
        let big = format!(
            "s = '{}'\nprint(len(s))\nprint('z' * 2000000)",
            "q".repeat(3 << 20)
        );
        let report = run(&mut agent, &big).await;
        assert_eq!(
            report.stdout.text(),
            format!("{}\n{}\n", 3 << 20, "z".repeat(2_000_000))
        );
        let report = run(&mut agent, "raise ValueError('bad')").await;
        assert!(
            matches!(&report.end, ExecEnd::Finished(ExecStatus::Exception { type_name, .. }) if type_name == "ValueError"),
            "{:?}",
            report.end
        );
        assert_eq!(agent.exited(), None);
    }

    #[tokio::test]
    async fn output_nobody_reads_does_not_hold_up_the_end_of_an_exec() {
        let (_child, mut agent, _) = started(json!({})).await;
        // A thread keeps printing after the program's end: once the connection has seen the
        // stdout sentinel it stops reading stdout, and the stderr sentinel and the `done`
        // frame must still get through.
        let report = run(
            &mut agent,
            "import sys, threading, time\n\
             def spam():\n    for _ in range(6000):\n        sys.stdout.write('b' * 1000 + '\\n')\n\
             threading.Thread(target=spam, daemon=True).start()\n\
             time.sleep(0.01)\nprint('main done', file=sys.stderr)",
        )
        .await;
        assert!(
            matches!(report.end, ExecEnd::Finished(ExecStatus::Ok)),
            "{:?}",
            report.end
        );
        assert_eq!(report.stderr.text(), "main done\n");
        let report = run(&mut agent, "import time; time.sleep(0.5); print('next')").await;
        assert!(report.stdout.text().ends_with("next\n"));
    }

    #[tokio::test]
    async fn the_agents_death_ends_the_exec_with_its_exit_status_and_output() {
        let (mut child, mut agent, _) = started(json!({})).await;
        let report = run(
            &mut agent,
            "print('bye', flush=True)\nimport os\nos._exit(7)",
        )
        .await;
        assert!(matches!(report.end, ExecEnd::GuestGone), "{:?}", report.end);
        assert_eq!(report.stdout.text(), "bye\n");
        agent.exit.wait_for(Option::is_some).await.expect("exit");
        assert_eq!(
            agent.exited(),
            Some(AgentExit {
                code: 7,
                oom: false
            })
        );
        // The multiplexer exits after reporting it.
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .expect("the multiplexer exits")
            .expect("wait");
        assert!(status.success(), "{status:?}");
    }

    #[tokio::test]
    async fn limits_from_the_config_bind_the_agent_and_a_signal_reads_like_a_shell() {
        let (_child, mut agent, _) = started(json!({"file_size_bytes": 1000})).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let big = dir.path().join("big");
        let code = format!(
            "import resource, signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n\
             print(resource.getrlimit(resource.RLIMIT_FSIZE))\n\
             try:\n    with open({:?}, 'wb') as f:\n        f.write(b'x' * 5000)\nexcept OSError as e:\n    print('refused', e.errno)",
            big.display().to_string()
        );
        let report = run(&mut agent, &code).await;
        assert_eq!(std::fs::metadata(&big).map(|m| m.len()).ok(), Some(1000));
        assert_eq!(report.stdout.text(), "(1000, 1000)\nrefused 27\n");
        let report = run(
            &mut agent,
            "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
        )
        .await;
        assert!(matches!(report.end, ExecEnd::GuestGone), "{:?}", report.end);
        agent.exit.wait_for(Option::is_some).await.expect("exit");
        assert_eq!(agent.exited().map(|e| e.code), Some(137));
    }

    #[tokio::test]
    async fn a_multiplexer_that_dies_ends_the_connection() {
        let (mut child, mut agent, _) = started(json!({})).await;
        child.kill().await.expect("kill the multiplexer");
        let report = run(&mut agent, "print(1)").await;
        assert!(matches!(report.end, ExecEnd::GuestGone), "{:?}", report.end);
        assert_eq!(agent.exited().map(|e| e.code), Some(-1));
    }

    #[test]
    fn frames_split_anywhere_come_out_whole_and_oversized_ones_are_refused() {
        let mut wire = Vec::new();
        for (tag, payload) in [
            (b'o', &b"hello"[..]),
            (b'c', b""),
            (b'x', b"{\"status\": -9}"),
        ] {
            wire.push(tag);
            wire.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
            wire.extend_from_slice(payload);
        }
        let mut frames = Deframer::default();
        let mut got = Vec::new();
        for byte in wire {
            frames.push(&[byte]);
            while let Some(frame) = frames.next().unwrap() {
                got.push(frame);
            }
        }
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], (b'o', b"hello".to_vec()));
        assert_eq!(got[1], (b'c', Vec::new()));
        assert_eq!(
            parse_exit(&got[2].1),
            AgentExit {
                code: 137,
                oom: false
            }
        );
        let mut frames = Deframer::default();
        frames.push(&[b'o', 0xff, 0xff, 0xff, 0xff]);
        assert!(frames.next().is_err());
    }
}
