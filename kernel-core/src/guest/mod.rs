//! The guest agent and its protocol, shared by every backend that runs real CPython in its
//! own process or VM (process, and microvm, whose supervisor starts it in the VM).
//!
//! The guest agent ([`AGENT_SOURCE`]) is a small Python program run as the interpreter's main
//! program (`python3 -c AGENT_SOURCE`). It expects:
//! - fd 3: a stream socket to the host (the *control* channel) carrying frames of a 4-byte
//!   big-endian length and a JSON message;
//! - fd 4 (only when it is pid 1 of a pid namespace): the read end of a *lifeline* pipe whose
//!   write end only the host holds; when the host dies, the guest's init exits and the
//!   kernel kills the whole namespace;
//! - fds 1 and 2: pipes the host reads as the program's stdout and stderr.
//!
//! Each `exec` runs in one persistent globals dict, so state survives between calls. At the
//! end of each `exec` a per-exec random mark is written to fds 1 and 2; the host reads each
//! stream up to it, so output of one exec never bleeds into the next. Under the guest's init
//! (process backend) init writes it, with a token the program cannot learn
//! ([`GuestConn::exec_ended_by_init`]); elsewhere the agent writes the exec's *sentinel*.
//! Tool calls go guest → host as `tool_call` frames and come back as `tool_result` frames;
//! inside the sandbox they are `_agentkernel.call_tool(name, args)`. The `done` frame that
//! ends an exec may carry the value of the program's last expression (`value`: repr and
//! JSON text, computed by `program.py`), which the host bounds and checks
//! ([`crate::ExprValue::from_guest`]).
//!
//! [`GuestConn`] is the host side: [`GuestConn::hello`] waits for the agent to start, and
//! [`GuestConn::exec`] runs one program, serving tool calls, capping output, and enforcing
//! the deadline. [`GuestSandbox`] is the one exec state machine around it that every such
//! backend shares; a backend supplies its [`GuestBackend`] hooks.

mod conn;
mod sandbox;
mod stream;

pub use conn::{ExecEnd, ExecReport, GuestConn, Hello, exec_end_mark};
pub use sandbox::{Abort, ExecFrame, GuestBackend, GuestSandbox};

use crate::exec::{ExecStatus, LimitKind};

/// Source of the guest agent, run with `python3 -I -u -c AGENT_SOURCE`: the shared
/// program runner ([`PROGRAM_SOURCE`]) followed by the process agent (`agent.py`).
pub const AGENT_SOURCE: &str = concat!(include_str!("program.py"), include_str!("agent.py"));

/// Source of the module that runs one program and reports how it ended, shared by every
/// backend that runs real CPython (the wasm guest imports it as `program`).
pub const PROGRAM_SOURCE: &str = include_str!("program.py");

/// Largest host → guest frame (64 MiB): a tool result larger than this is refused.
pub const MAX_FRAME_BYTES: usize = 64 << 20;

/// `body` framed as the guest protocols frame it: a 4-byte big-endian length, then the bytes.
/// Callers keep frames far below 4 GiB (see [`MAX_FRAME_BYTES`]).
pub fn length_prefixed(body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).expect("a protocol frame is far below 4 GiB");
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(body);
    frame
}

/// Largest guest → host frame (1 MiB): caps tool-call arguments, so a guest cannot make
/// the host parse (and hold) huge JSON. A larger frame is a protocol error.
pub const MAX_GUEST_FRAME_BYTES: usize = 1 << 20;

/// Tool calls one exec may have in flight at once; more is a protocol error.
pub const MAX_CONCURRENT_TOOL_CALLS: usize = 16;

/// How an exec ended when the guest agent died under it: `code` is its exit status as a
/// shell reports it (128 + signal for a signal, `None` if unknown), `oom` whether the
/// kernel's OOM killer struck meanwhile, `cpu_limited` whether a CPU-time limit was set
/// (the kernel ends an over-limit process with SIGKILL after SIGXCPU), and
/// `memory_exit_code` the code a native agent exits with when out of memory.
pub fn agent_exit_status(
    code: Option<i32>,
    oom: bool,
    cpu_limited: bool,
    memory_exit_code: Option<i32>,
) -> ExecStatus {
    let killed = |limit| ExecStatus::Killed { limit };
    match code {
        _ if oom => killed(LimitKind::Memory),
        Some(c) if Some(c) == memory_exit_code => killed(LimitKind::Memory),
        Some(c) if c == 128 + libc::SIGXCPU => killed(LimitKind::CpuTime),
        Some(c) if c == 128 + libc::SIGKILL && cpu_limited => killed(LimitKind::CpuTime),
        Some(c) if c == 128 + libc::SIGXFSZ => killed(LimitKind::FileSize),
        Some(c) if (0..128).contains(&c) => ExecStatus::Exited { code: c },
        Some(c) => ExecStatus::Crashed {
            reason: format!("the interpreter was killed by {}", signal_name(c - 128)),
        },
        None => ExecStatus::Crashed {
            reason: "the interpreter vanished".into(),
        },
    }
}

fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGABRT => "SIGABRT".into(),
        libc::SIGBUS => "SIGBUS".into(),
        libc::SIGXCPU => "SIGXCPU".into(),
        libc::SIGXFSZ => "SIGXFSZ".into(),
        libc::SIGTERM => "SIGTERM".into(),
        other => format!("signal {other}"),
    }
}
