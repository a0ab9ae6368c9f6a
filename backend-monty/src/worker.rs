//! Worker mode's guest agent: Monty in its own jailed process, speaking the guest protocol.
//!
//! The jail (`agentkernel-jail`) starts this program (bound read-only at
//! `/agentkernel/agent`) instead of CPython, with the same fds: the control socket on fd 3,
//! the lifeline on fd 4, stdout and stderr on pipes. It answers the frames the Python agent
//! answers (`exec` → `tool_call`s → `done`, with a sentinel on both streams after each exec)
//! plus `save` / `load` for snapshots, and a reset command on the lifeline by starting a
//! fresh session. As pid 1 of the sandbox's pid namespace it first forks: pid 1 only waits
//! and exits with the worker's status (so an abort or a stack overflow ends the sandbox
//! with a signal the host reports, and never the kernel).
//!
//! The memory budget comes in [`MEMORY_ENV`] (the jail sets no `RLIMIT_AS` for this agent):
//! Monty's allocator counts every live byte of the worker against a soft limit
//! (`MemoryError`) and ends it with exit code [`monty_types::OOM_EXIT_CODE`] past a hard one
//! a few MiB above, which the host reports as a memory kill.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use agentkernel_core::{ExecStatus, ToolError, ToolErrorKind};
use base64::Engine as _;
use monty_types::{MontyException, PrintWriterCallback};
use serde_json::{Value, json};

use agentkernel_core::empty_dir;

use crate::engine::{Host, HostDir, MountPoint, Session, SessionConfig};

const CONTROL_FD: i32 = 3;
const LIFELINE_FD: i32 = 4;
const MAX_FRAME: usize = 64 << 20;
const RESET_TOKEN_LEN: usize = 32;
/// Monty's own time budget per exec: the host kills the sandbox at the real deadline.
const NO_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Runs the worker; never returns.
pub fn main() -> ! {
    // SAFETY: getpid cannot fail.
    if unsafe { libc::getpid() } == 1 {
        init();
    }
    let code = match agent() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("agentkernel monty worker: {e}");
            1
        }
    };
    std::process::exit(code)
}

/// Pid 1: forks the agent and mirrors its end.
fn init() {
    // SAFETY: the process is single-threaded here (nothing has spawned a thread yet), so
    // the child may run arbitrary code after fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        std::process::exit(127);
    }
    if pid == 0 {
        return;
    }
    // SAFETY: closing fds this process no longer uses (the agent has its own copies).
    unsafe {
        libc::close(CONTROL_FD);
        libc::close(LIFELINE_FD);
    }
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid pointer to an int.
        let got = unsafe { libc::waitpid(-1, &mut status, 0) };
        if got == pid {
            let code = if libc::WIFSIGNALED(status) {
                128 + libc::WTERMSIG(status)
            } else {
                libc::WEXITSTATUS(status)
            };
            std::process::exit(code);
        }
        if got < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            std::process::exit(127);
        }
    }
}

/// The environment variable the jail passes the memory limit in (instead of an
/// `RLIMIT_AS`, which would count this binary's own mappings).
pub const MEMORY_ENV: &str = "AGENTKERNEL_MONTY_MEMORY";

/// The memory budget: the sandbox's limit, taken out of the environment (the program must
/// not see it), less a margin for the allocator's hard ceiling above it.
fn memory_budget() -> Option<usize> {
    let limit: usize = std::env::var(MEMORY_ENV).ok()?.parse().ok()?;
    // SAFETY: single-threaded here; nothing else reads the environment concurrently.
    unsafe { std::env::remove_var(MEMORY_ENV) };
    Some(limit.saturating_sub(8 << 20).max(limit / 2))
}

fn protections() -> BTreeMap<String, String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| matches!(*k, "Seccomp" | "NoNewPrivs" | "CapEff" | "Seccomp_filters"))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

/// What the session sees: the jail's `/workspace` and `/tmp`, and its environment.
fn session_config(memory: Option<usize>) -> SessionConfig {
    let mount = |p: &str| MountPoint {
        guest: p.into(),
        host: HostDir::Path(PathBuf::from(p)),
        writable: true,
        write_limit: None,
    };
    SessionConfig {
        mounts: vec![mount("/workspace"), mount("/tmp")],
        env: std::env::vars().collect(),
        memory_bytes: memory,
    }
}

struct Channel {
    sock: UnixStream,
}

impl Channel {
    fn send(&mut self, msg: &Value) -> std::io::Result<()> {
        let body = serde_json::to_vec(msg)?;
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        self.sock.write_all(&frame)
    }

    /// The next frame; `None` when the host closed the socket.
    fn recv(&mut self) -> std::io::Result<Option<Value>> {
        let mut head = [0u8; 4];
        match self.sock.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let len = u32::from_be_bytes(head) as usize;
        if len > MAX_FRAME {
            return Err(std::io::Error::other("frame too large from host"));
        }
        let mut body = vec![0u8; len];
        self.sock.read_exact(&mut body)?;
        Ok(Some(serde_json::from_slice(&body)?))
    }
}

/// The exec-time host: output straight to fd 1, tool calls over the control socket.
struct WorkerHost<'a> {
    chan: &'a mut Channel,
    out: std::io::BufWriter<std::fs::File>,
    next_call: u64,
}

impl PrintWriterCallback for WorkerHost<'_> {
    fn stdout_write(&mut self, output: std::borrow::Cow<'_, str>) -> Result<(), MontyException> {
        let _ = self.out.write_all(output.as_bytes());
        Ok(())
    }

    fn stdout_push(&mut self, end: char) -> Result<(), MontyException> {
        let mut buf = [0u8; 4];
        let _ = self.out.write_all(end.encode_utf8(&mut buf).as_bytes());
        if end == '\n' {
            let _ = self.out.flush();
        }
        Ok(())
    }

    fn poll_flush(&mut self) -> Result<(), MontyException> {
        let _ = self.out.flush();
        Ok(())
    }
}

impl Host for WorkerHost<'_> {
    fn call_tool(&mut self, name: &str, args: Value) -> Result<Value, ToolError> {
        let _ = self.out.flush();
        self.next_call += 1;
        let id = self.next_call;
        let lost = |m: &str| ToolError::new(ToolErrorKind::Failed, m);
        self.chan
            .send(&json!({"type": "tool_call", "id": id, "name": name, "args": args}))
            .map_err(|_| lost("the host is gone"))?;
        let reply = match self.chan.recv() {
            Ok(Some(r)) => r,
            // The host closed the connection: nothing left to do.
            _ => std::process::exit(0),
        };
        if reply["type"] != "tool_result" || reply["id"] != id {
            return Err(lost("protocol error: unexpected reply to a tool call"));
        }
        if reply["ok"] == true {
            return Ok(reply.get("value").cloned().unwrap_or(Value::Null));
        }
        serde_json::from_value::<ToolError>(reply["error"].clone())
            .map_err(|_| lost("protocol error: malformed tool error"))
            .and_then(Err)
    }
}

/// Waits until the control socket or the lifeline is readable; `true` for the lifeline.
fn wait_readable() -> std::io::Result<bool> {
    let mut fds = [
        libc::pollfd {
            fd: CONTROL_FD,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: LIFELINE_FD,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: poll on two valid pollfd structs.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n >= 0 {
            return Ok(fds[1].revents != 0);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Largest traceback (and message) sent in a `done` frame: the host refuses frames over
/// 1 MiB, and a traceback quotes its source line, which can be that long.
const MAX_REPORT_BYTES: usize = 64 << 10;

/// `s` cut to at most `max` bytes (at a character boundary), keeping its end (where a
/// traceback names the exception) and marking the cut.
fn keep_end(s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("[... {start} bytes cut ...]{}", &s[start..])
}

fn cap_status(status: ExecStatus) -> ExecStatus {
    match status {
        ExecStatus::Exception {
            type_name,
            message,
            traceback,
        } => ExecStatus::Exception {
            type_name,
            message: keep_end(message, MAX_REPORT_BYTES / 4),
            traceback: keep_end(traceback, MAX_REPORT_BYTES),
        },
        other => other,
    }
}

fn hello(chan: &mut Channel, reset_token: Option<&str>) -> std::io::Result<()> {
    chan.send(&json!({
        "type": "hello",
        "python": format!("monty {}", monty_types::MONTY_VERSION),
        "executable": std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_default(),
        // SAFETY: getpid cannot fail.
        "pid": unsafe { libc::getpid() },
        "protections": protections(),
        "reset_token": reset_token,
    }))
}

fn agent() -> Result<(), String> {
    let memory = memory_budget();
    if memory.is_some() {
        monty_alloc::set_limit(memory, false).map_err(str::to_owned)?;
    }
    // SAFETY: fd 3 is the control socket the jail passed us; nothing else owns it.
    let sock = unsafe { UnixStream::from_raw_fd(CONTROL_FD) };
    // SAFETY: fd 4 is the lifeline pipe's read end; nothing else owns it.
    let mut lifeline = unsafe { std::fs::File::from_raw_fd(LIFELINE_FD) };
    let mut chan = Channel { sock };
    let mut session = Session::new(session_config(memory))?;
    hello(&mut chan, None).map_err(|e| e.to_string())?;
    let io = |e: std::io::Error| e.to_string();
    loop {
        if wait_readable().map_err(io)? {
            let mut command = [0u8; 1 + RESET_TOKEN_LEN];
            let n = lifeline.read(&mut command).map_err(io)?;
            if n != command.len() || !matches!(command[0], b'R' | b'W') {
                return Ok(()); // EOF (the host is gone) or garbage: end the sandbox
            }
            let token = std::str::from_utf8(&command[1..]).map_err(|e| e.to_string())?;
            session.reset()?;
            // Fail closed: a worker that cannot empty them exits, and the host replaces the
            // sandbox.
            let wipe = |dir: &str| {
                empty_dir(std::path::Path::new(dir)).map_err(|e| format!("emptying {dir}: {e}"))
            };
            wipe("/tmp")?;
            if command[0] == b'W' {
                wipe("/workspace")?;
            }
            let mark = format!("\u{1e}AK-RESET-{token}\u{1e}");
            for fd in [1, 2] {
                // SAFETY: writing a buffer we own to our stdout/stderr.
                unsafe { libc::write(fd, mark.as_ptr().cast(), mark.len()) };
            }
            hello(&mut chan, Some(token)).map_err(io)?;
            continue;
        }
        let Some(msg) = chan.recv().map_err(io)? else {
            return Ok(());
        };
        match msg["type"].as_str() {
            Some("exec") => {
                let code = msg["code"].as_str().unwrap_or_default();
                let sentinel = msg["sentinel"].as_str().unwrap_or_default();
                // SAFETY: fd 1 is our stdout pipe; the `File` is forgotten below, so fd 1
                // stays open.
                let stdout = unsafe { std::fs::File::from_raw_fd(1) };
                let mut host = WorkerHost {
                    chan: &mut chan,
                    out: std::io::BufWriter::new(stdout),
                    next_call: 0,
                };
                let (status, value) = session.exec(code, NO_TIMEOUT, &mut host);
                let _ = host.out.flush();
                let (file, _) = host.out.into_parts();
                std::mem::forget(file);
                // Limit kills are the host's to declare: report Monty's own limit errors as
                // the exceptions they are, and the host classifies them.
                let status = match status {
                    ExecStatus::Killed { limit } => ExecStatus::Exception {
                        type_name: if limit == agentkernel_core::LimitKind::Memory {
                            "MemoryError".into()
                        } else {
                            "TimeoutError".into()
                        },
                        message: if limit == agentkernel_core::LimitKind::Memory {
                            "memory limit exceeded".into()
                        } else {
                            "time limit exceeded".into()
                        },
                        traceback: String::new(),
                    },
                    other => other,
                };
                let status = cap_status(status);
                // An uncaught exception's traceback on stderr, as a terminal shows it.
                if let ExecStatus::Exception { traceback, .. } = &status {
                    let mut err = std::io::stderr().lock();
                    let _ = err.write_all(traceback.as_bytes());
                    let _ = err.flush();
                }
                let mut written = serde_json::Map::new();
                for (name, fd) in [("stdout", 1), ("stderr", 2)] {
                    // SAFETY: writing a buffer we own to our stdout/stderr.
                    let n = unsafe { libc::write(fd, sentinel.as_ptr().cast(), sentinel.len()) };
                    written.insert(name.into(), Value::Bool(n == sentinel.len() as isize));
                }
                let mut done = json!({"type": "done", "id": msg["id"], "status": status, "sentinels": written});
                if let Some(v) = value {
                    // The guest protocol's `value` (kernel-core's guest::conn::GuestValue).
                    done["value"] =
                        json!({"repr": v.repr, "json": v.json, "truncated": v.truncated});
                }
                chan.send(&done).map_err(io)?;
            }
            Some("save") => {
                let answer = match session.dump() {
                    Ok(bytes) => {
                        json!({"type": "saved", "data": base64::engine::general_purpose::STANDARD.encode(bytes)})
                    }
                    Err(e) => json!({"type": "error", "message": e}),
                };
                chan.send(&answer).map_err(io)?;
            }
            Some("load") => {
                let loaded = base64::engine::general_purpose::STANDARD
                    .decode(msg["data"].as_str().unwrap_or_default())
                    .map_err(|e| e.to_string())
                    .and_then(|bytes| Session::load(&bytes, session_config(memory)));
                let answer = match loaded {
                    Ok(s) => {
                        session = s;
                        json!({"type": "loaded"})
                    }
                    Err(e) => json!({"type": "error", "message": e}),
                };
                chan.send(&answer).map_err(io)?;
            }
            other => {
                chan.send(
                    &json!({"type": "error", "message": format!("unexpected message {other:?}")}),
                )
                .map_err(io)?;
            }
        }
    }
}
