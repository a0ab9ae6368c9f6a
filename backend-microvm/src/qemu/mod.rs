//! The `qemu` engine's machine: QEMU `-M microvm` booting the image of
//! `scripts/build-microvm-image` (software emulation, TCG, unless KVM is real), with four
//! virtio-serial ports, each a Unix socket QEMU listens on:
//!
//! | port | guest device     | what                                                   |
//! |------|------------------|--------------------------------------------------------|
//! | 1    | `/dev/vport0p1`  | the guest agent's control channel ([`GuestConn`])      |
//! | 2, 3 | `/dev/vport0p2/3`| the program's stdout and stderr                        |
//! | 4    | `/dev/vport0p4`  | the supervisor (root in the guest): [`SysConn`]        |
//!
//! A VM either boots (seconds) or is restored from a state file saved by [`QemuVm::save`]
//! (QMP `migrate` to a file; restored with `-incoming`), then stays paused until the host
//! has connected to every port. There is no network device: `-nodefaults` and no `-netdev`.

pub mod share;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use agentkernel_core::guest::{GuestConn, Hello};
use agentkernel_core::{Error, Result};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// The host side of the guest agent's ports.
pub type AgentConn = GuestConn<UnixStream, UnixStream, UnixStream>;

/// The ports, in the guest's order (`/dev/vport0p1..4`).
const PORTS: [&str; 4] = ["ctl", "out", "err", "sys"];

/// How to start a VM.
#[derive(Debug, Clone)]
pub struct MachineSpec {
    /// Directory with `vmlinuz` and `initrd.img`.
    pub image: PathBuf,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Use KVM (only when the probe says it is real hardware virtualization).
    pub kvm: bool,
}

/// A running VM: QEMU, its QMP monitor and the supervisor's port. The agent's ports are
/// taken by [`QemuVm::agent`] once its hello arrived.
pub struct QemuVm {
    child: tokio::process::Child,
    qmp: Qmp,
    /// The supervisor's port.
    pub sys: SysConn,
    agent_ports: Option<[UnixStream; 3]>,
    /// Holds the sockets and the console log.
    dir: tempfile::TempDir,
    /// The name QEMU runs under (`agentkernel-vm-<id>`, visible in `ps`).
    pub name: String,
}

/// The host's TSC frequency in kHz: the guest kernel cannot calibrate it under TCG.
fn tsc_khz() -> u64 {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("cpu MHz"))
                .and_then(|l| l.split_once(':'))
                .and_then(|(_, v)| v.trim().parse::<f64>().ok())
        })
        .map_or(2_000_000, |mhz| (mhz * 1000.0) as u64)
}

/// The installed QEMU's version line, or why there is none (for `doctor`).
pub fn qemu_version() -> std::result::Result<String, String> {
    match std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
    {
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .to_owned()),
        Ok(out) => Err(format!(
            "qemu-system-x86_64 --version failed ({})",
            out.status
        )),
        Err(e) => Err(format!(
            "no qemu-system-x86_64 ({e}): apt-get install qemu-system-x86"
        )),
    }
}

fn lost(what: impl Into<String>) -> Error {
    Error::SandboxLost {
        reason: what.into(),
    }
}

impl QemuVm {
    /// Boots `spec`'s image and waits (until `deadline`) for the supervisor's `ready`.
    pub async fn boot(spec: &MachineSpec, deadline: Instant) -> Result<QemuVm> {
        let mut vm = QemuVm::launch(spec, None).await?;
        match vm.sys.recv(deadline).await {
            Ok(msg) if msg["type"] == "ready" => Ok(vm),
            Ok(other) => Err(lost(format!(
                "the supervisor said {other} instead of ready"
            ))),
            Err(e) => Err(lost(format!(
                "{e}; the guest console ended with: {}",
                vm.console_tail()
            ))),
        }
    }

    /// Starts a VM from a state file saved by [`QemuVm::save`] for the same `spec` (image
    /// and memory), and lets it run once every port is connected.
    pub async fn restore(spec: &MachineSpec, state: &Path, deadline: Instant) -> Result<QemuVm> {
        let mut vm = QemuVm::launch(spec, Some(state)).await?;
        loop {
            let status = vm.qmp.execute("query-status", json!({})).await?;
            match status["status"].as_str() {
                Some("inmigrate") if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Some("paused" | "prelaunch" | "postmigrate") => break,
                other => {
                    return Err(lost(format!(
                        "restoring the VM state failed (status {other:?})"
                    )));
                }
            }
        }
        vm.qmp.execute("cont", json!({})).await?;
        Ok(vm)
    }

    async fn launch(spec: &MachineSpec, incoming: Option<&Path>) -> Result<QemuVm> {
        let dir = tempfile::Builder::new()
            .prefix("agentkernel-vm-")
            .tempdir()
            .map_err(|e| Error::io("creating the VM's directory", e))?;
        let sock = |name: &str| dir.path().join(format!("{name}.sock"));
        let name = format!(
            "agentkernel-vm-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let mut cmd = tokio::process::Command::new("qemu-system-x86_64");
        cmd.args(["-name", &name, "-M", "microvm", "-nodefaults"])
            .args(["-accel", if spec.kvm { "kvm" } else { "tcg" }])
            .args(["-smp", &spec.vcpus.to_string()])
            .args(["-no-user-config", "-nographic", "-no-reboot", "-S"])
            .args(["-m", &spec.memory_mib.to_string()])
            .arg("-serial")
            .arg(format!("file:{}", dir.path().join("console.log").display()))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", sock("qmp").display()))
            .arg("-kernel")
            .arg(spec.image.join("vmlinuz"))
            .arg("-initrd")
            .arg(spec.image.join("initrd.img"))
            .arg("-append")
            .arg(format!(
                "console=ttyS0 quiet panic=-1 norandmaps tsc_early_khz={} ak.agent=1",
                tsc_khz()
            ))
            .args(["-device", "virtio-serial-device"]);
        for (i, port) in PORTS.iter().enumerate() {
            cmd.arg("-chardev")
                .arg(format!(
                    "socket,id={port},path={},server=on,wait=off",
                    sock(port).display()
                ))
                .arg("-device")
                .arg(format!(
                    "virtserialport,chardev={port},nr={},name=ak.{port}",
                    i + 1
                ));
        }
        if let Some(state) = incoming {
            // Read by `cat`: QEMU 7.2 has no `file:` migration URI yet.
            cmd.arg("-incoming").arg(format!(
                "exec:cat {}",
                shlex::try_quote(&state.display().to_string())
                    .map_err(|_| Error::Internal("state path with a NUL".into()))?
            ));
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut child = spawn_tied(cmd).await.map_err(|e| Error::Unavailable {
            backend: "microvm",
            reason: format!("cannot run qemu-system-x86_64: {e}"),
            hint: "apt-get install qemu-system-x86".into(),
        })?;
        // QEMU creates the sockets before it starts the guest (-S): connect to each.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut connect = async |path: PathBuf| -> Result<UnixStream> {
            loop {
                match UnixStream::connect(&path).await {
                    Ok(s) => return Ok(s),
                    Err(_) if Instant::now() < deadline => {
                        if let Ok(Some(status)) = child.try_wait() {
                            return Err(Error::Unavailable {
                                backend: "microvm",
                                reason: format!("qemu exited at start ({status})"),
                                hint: "run scripts/build-microvm-image --check to see why".into(),
                            });
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(e) => return Err(Error::io("connecting to the VM's ports", e)),
                }
            }
        };
        let qmp = Qmp::connect(connect(sock("qmp")).await?).await?;
        let ctl = connect(sock("ctl")).await?;
        let out = connect(sock("out")).await?;
        let err = connect(sock("err")).await?;
        let sys = SysConn::new(connect(sock("sys")).await?);
        let mut vm = QemuVm {
            child,
            qmp,
            sys,
            agent_ports: Some([ctl, out, err]),
            dir,
            name,
        };
        if incoming.is_none() {
            vm.qmp.execute("cont", json!({})).await?;
        }
        Ok(vm)
    }

    /// Saves the VM's whole state to `path` (QMP `migrate`); the VM is paused afterwards
    /// and should be shut down.
    pub async fn save(&mut self, path: &Path, deadline: Instant) -> Result<()> {
        let uri = format!(
            "exec:cat > {}",
            shlex::try_quote(&path.display().to_string())
                .map_err(|_| Error::Internal("state path with a NUL".into()))?
        );
        self.qmp.execute("migrate", json!({ "uri": uri })).await?;
        loop {
            let info = self.qmp.execute("query-migrate", json!({})).await?;
            match info["status"].as_str() {
                Some("completed") => return Ok(()),
                Some("failed" | "cancelled") => {
                    return Err(Error::Internal(format!(
                        "saving the VM state failed: {}",
                        info["error-desc"]
                    )));
                }
                _ if Instant::now() > deadline => {
                    return Err(Error::Internal("saving the VM state timed out".into()));
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Waits for the guest agent's hello (after the supervisor's `start`) and hands out its
    /// connection.
    pub async fn agent(&mut self, deadline: Instant) -> Result<(AgentConn, Hello)> {
        let [ctl, out, err] = self
            .agent_ports
            .take()
            .ok_or_else(|| Error::Internal("the agent's ports were taken already".into()))?;
        let mut conn = GuestConn::new(ctl, out, err);
        let sys = &mut self.sys;
        let died = async {
            while sys.agent_exit.is_none() {
                if sys.recv(deadline).await.is_err() {
                    break;
                }
            }
        };
        let hello = tokio::select! {
            hello = conn.hello(deadline) => hello,
            () = died => Err(lost(format!(
                "the guest agent ended before it started ({})",
                self.sys.agent_exit.as_ref().map_or("no status".into(), ToString::to_string)
            ))),
        };
        match hello {
            Ok(hello) => Ok((conn, hello)),
            Err(e) => Err(lost(format!(
                "{e}; the guest console ended with: {}",
                self.console_tail()
            ))),
        }
    }

    /// The last lines of the guest console (for error messages).
    pub fn console_tail(&self) -> String {
        let console = std::fs::read_to_string(self.console_log()).unwrap_or_default();
        console
            .lines()
            .rev()
            .take(12)
            .collect::<Vec<_>>()
            .join(" / ")
    }

    /// The guest console's log file.
    pub fn console_log(&self) -> PathBuf {
        self.dir.path().join("console.log")
    }

    /// Whether QEMU is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops the VM at once (SIGKILL to QEMU) and waits for QEMU to exit.
    pub async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// A piece of work for the spawner thread.
type Job = Box<dyn FnOnce() + Send>;

/// The thread that forks every QEMU (see [`spawn_tied`]), or `None` if it could not start.
static SPAWNER: OnceLock<Option<Sender<Job>>> = OnceLock::new();

/// Starts `cmd` (QEMU) so that it cannot outlive this process: the child asks the kernel
/// for `SIGKILL` when its parent dies (`PR_SET_PDEATHSIG`, set between fork and exec), so a
/// kernel process ended by `kill -9`, `SIGTERM` or a crash takes its VMs with it, whatever
/// the guest is doing.
///
/// Why a dedicated thread: the parent-death signal fires when the *thread* that forked the
/// child exits, not the process, and tokio's worker and blocking threads come and go (a VM
/// would be killed when the thread that happened to start it retired). So every QEMU is
/// forked by one thread that lives as long as the process: its job channel's sender is a
/// static that is never dropped, so it never returns. (The alternative, a lifeline pipe
/// watched by a wrapper process, costs one more process per VM.)
async fn spawn_tied(mut cmd: tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("agentkernel-vm-spawner".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job();
                }
            })
            .ok()
            .map(|_| tx)
    });
    let Some(spawner) = spawner else {
        return Err(std::io::Error::other(
            "the thread that starts VMs could not be created",
        ));
    };
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (prctl, getppid, _exit); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then nothing would come.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let handle = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        // The child is registered with this runtime's process driver.
        let _entered = handle.enter();
        let _ = tx.send(cmd.spawn());
    });
    spawner
        .send(job)
        .map_err(|_| std::io::Error::other("the thread that starts VMs is gone"))?;
    rx.await
        .map_err(|_| std::io::Error::other("the thread that starts VMs did not answer"))?
}

/// A QMP monitor connection (JSON lines).
struct Qmp {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Qmp {
    async fn connect(stream: UnixStream) -> Result<Qmp> {
        let (r, w) = stream.into_split();
        let mut qmp = Qmp {
            reader: BufReader::new(r),
            writer: w,
        };
        qmp.read_message().await?; // the greeting
        qmp.execute("qmp_capabilities", json!({})).await?;
        Ok(qmp)
    }

    async fn read_message(&mut self) -> Result<Value> {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(60), self.reader.read_line(&mut line))
            .await
            .map_err(|_| Error::Internal("QEMU's monitor stopped answering".into()))?
            .map_err(|e| Error::io("reading QEMU's monitor", e))?;
        if n == 0 {
            return Err(lost("QEMU exited"));
        }
        serde_json::from_str(&line)
            .map_err(|e| Error::Internal(format!("QEMU's monitor sent {line:?}: {e}")))
    }

    async fn execute(&mut self, command: &str, arguments: Value) -> Result<Value> {
        let mut msg = serde_json::to_vec(&json!({"execute": command, "arguments": arguments}))
            .map_err(|e| Error::Internal(e.to_string()))?;
        msg.push(b'\n');
        self.writer
            .write_all(&msg)
            .await
            .map_err(|e| Error::io("writing to QEMU's monitor", e))?;
        loop {
            let reply = self.read_message().await?;
            if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = reply.get("error") {
                return Err(Error::Internal(format!("QEMU refused {command}: {err}")));
            }
            // An event: skip it.
        }
    }
}

/// The host side of the supervisor's port: frames of a 4-byte big-endian length and JSON,
/// some followed by a raw payload. Remembers the agent's death when it is reported while
/// the host waits for something else.
pub struct SysConn {
    stream: UnixStream,
    /// The `agent_exit` message, once the supervisor sent it.
    pub agent_exit: Option<Value>,
}

/// Largest message the supervisor may send (not counting payloads).
const MAX_SYS_FRAME: usize = 1 << 20;

impl SysConn {
    fn new(stream: UnixStream) -> SysConn {
        SysConn {
            stream,
            agent_exit: None,
        }
    }

    /// Sends `msg`, followed by `payload`, by `deadline`.
    pub async fn send(&mut self, msg: &Value, payload: &[u8], deadline: Instant) -> Result<()> {
        let data = serde_json::to_vec(msg).map_err(|e| Error::Internal(e.to_string()))?;
        let frame = agentkernel_core::guest::length_prefixed(&data);
        let write = async {
            self.stream.write_all(&frame).await?;
            self.stream.write_all(payload).await
        };
        tokio::time::timeout_at(deadline.into(), write)
            .await
            .map_err(|_| lost("the guest supervisor did not take a message in time"))?
            .map_err(|e| lost(format!("the supervisor's port closed: {e}")))
    }

    /// The port itself, to stream a bundle after a message (the caller bounds the time).
    pub fn stream(&mut self) -> &mut UnixStream {
        &mut self.stream
    }

    /// The next message from the supervisor (an `agent_exit` is recorded and returned too).
    pub async fn recv(&mut self, deadline: Instant) -> Result<Value> {
        let read = async {
            let mut head = [0u8; 4];
            self.stream.read_exact(&mut head).await?;
            let len = u32::from_be_bytes(head) as usize;
            if len > MAX_SYS_FRAME {
                return Err(std::io::Error::other("frame too large"));
            }
            let mut body = vec![0u8; len];
            self.stream.read_exact(&mut body).await?;
            serde_json::from_slice::<Value>(&body).map_err(std::io::Error::other)
        };
        let msg = tokio::time::timeout_at(deadline.into(), read)
            .await
            .map_err(|_| lost("the guest supervisor did not answer in time"))?
            .map_err(|e| lost(format!("the guest supervisor's port failed: {e}")))?;
        if msg["type"] == "agent_exit" {
            self.agent_exit = Some(msg.clone());
        }
        Ok(msg)
    }

    /// Sends `msg` (+ `payload`) and waits for the reply of type `expect` (skipping an
    /// `agent_exit`, which is recorded). An `error` reply is an error.
    pub async fn call(
        &mut self,
        msg: &Value,
        payload: &[u8],
        expect: &str,
        deadline: Instant,
    ) -> Result<Value> {
        self.send(msg, payload, deadline).await?;
        self.reply(expect, deadline).await
    }

    /// Waits for the reply of type `expect` (skipping an `agent_exit`, which is recorded).
    /// An `error` reply is an error.
    pub async fn reply(&mut self, expect: &str, deadline: Instant) -> Result<Value> {
        loop {
            let reply = self.recv(deadline).await?;
            match reply["type"].as_str() {
                Some(t) if t == expect => return Ok(reply),
                Some("agent_exit") => continue,
                Some("error") => {
                    return Err(lost(format!(
                        "the guest supervisor failed: {}",
                        reply["message"].as_str().unwrap_or("?")
                    )));
                }
                _ => return Err(lost(format!("the guest supervisor sent {reply}"))),
            }
        }
    }
}
