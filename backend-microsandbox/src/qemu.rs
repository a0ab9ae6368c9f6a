//! The `qemu` engine's VM (issue 9, in progress): QEMU `-M microvm` booting the image of
//! `scripts/build-microvm-image` with the guest agent on three virtio-serial ports (control,
//! stdout, stderr), each a Unix socket QEMU listens on, and [`GuestConn`] on the host side:
//! the same protocol as the process backend. Software emulation (TCG) unless KVM is real.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use agentkernel_core::guest::{GuestConn, Hello};
use agentkernel_core::{Error, Result};
use tokio::net::UnixStream;

use crate::kvm::KvmProbe;

/// A booted VM and the connection to its guest agent.
pub struct QemuVm {
    child: tokio::process::Child,
    /// The guest agent's connection.
    pub conn: GuestConn<UnixStream, UnixStream, UnixStream>,
    /// What the agent reported at start.
    pub hello: Hello,
    /// Holds the sockets and the console log.
    dir: tempfile::TempDir,
}

/// The ports, in the guest's order (`/dev/vport0p1..3`).
const PORTS: [&str; 3] = ["ctl", "out", "err"];

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

impl QemuVm {
    /// Boots the image in `image` (a directory with `vmlinuz` and `initrd.img`) with
    /// `memory_mib` of RAM and waits (up to `timeout`) for the guest agent's hello.
    pub async fn boot(image: &Path, memory_mib: u32, timeout: Duration) -> Result<QemuVm> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("creating the VM's directory", e))?;
        let sock = |name: &str| dir.path().join(format!("{name}.sock"));
        let accel = if KvmProbe::detect().is_real() {
            "kvm"
        } else {
            "tcg"
        };
        let mut cmd = tokio::process::Command::new("qemu-system-x86_64");
        cmd.args(["-M", "microvm", "-accel", accel, "-smp", "1", "-nodefaults"])
            .args(["-no-user-config", "-nographic", "-no-reboot"])
            .args(["-m", &memory_mib.to_string()])
            .arg("-serial")
            .arg(format!("file:{}", dir.path().join("console.log").display()))
            .arg("-kernel")
            .arg(image.join("vmlinuz"))
            .arg("-initrd")
            .arg(image.join("initrd.img"))
            .arg("-append")
            .arg(format!(
                "console=ttyS0 quiet panic=-1 tsc_early_khz={} ak.agent=1",
                tsc_khz()
            ))
            .args(["-device", "virtio-serial-device"]);
        for (i, name) in PORTS.iter().enumerate() {
            cmd.arg("-chardev")
                .arg(format!(
                    "socket,id={name},path={},server=on,wait=off",
                    sock(name).display()
                ))
                .arg("-device")
                .arg(format!(
                    "virtserialport,chardev={name},nr={},name=ak.{name}",
                    i + 1
                ));
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| Error::Unavailable {
            backend: "microvm",
            reason: format!("cannot run qemu-system-x86_64: {e}"),
            hint: "apt-get install qemu-system-x86".into(),
        })?;
        let deadline = Instant::now() + timeout;
        let mut streams = Vec::new();
        for name in PORTS {
            loop {
                match UnixStream::connect(sock(name)).await {
                    Ok(s) => {
                        streams.push(s);
                        break;
                    }
                    Err(_) if Instant::now() < deadline => {
                        if let Ok(Some(status)) = child.try_wait() {
                            return Err(Error::Unavailable {
                                backend: "microvm",
                                reason: format!("qemu exited at start ({status})"),
                                hint: "run scripts/build-microvm-image --check to see why".into(),
                            });
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => return Err(Error::io("connecting to the VM's ports", e)),
                }
            }
        }
        let err = streams
            .pop()
            .ok_or_else(|| Error::Internal("no port".into()))?;
        let out = streams
            .pop()
            .ok_or_else(|| Error::Internal("no port".into()))?;
        let ctl = streams
            .pop()
            .ok_or_else(|| Error::Internal("no port".into()))?;
        let mut conn = GuestConn::new(ctl, out, err);
        let hello = match conn.hello(deadline).await {
            Ok(h) => h,
            Err(e) => {
                let _ = child.start_kill();
                let console =
                    std::fs::read_to_string(dir.path().join("console.log")).unwrap_or_default();
                return Err(Error::SandboxLost {
                    reason: format!(
                        "{e}; the guest console ended with: {}",
                        console
                            .lines()
                            .rev()
                            .take(5)
                            .collect::<Vec<_>>()
                            .join(" / ")
                    ),
                });
            }
        };
        Ok(QemuVm {
            child,
            conn,
            hello,
            dir,
        })
    }

    /// The guest console's log file.
    pub fn console_log(&self) -> PathBuf {
        self.dir.path().join("console.log")
    }

    /// Stops the VM and waits for QEMU to exit.
    pub async fn shutdown(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}
