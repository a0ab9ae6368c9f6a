//! The guest supervisor's copy-back rules, checked without a VM: `guest/supervisor.py` is
//! plain Python (only its `main()` needs the guest), so the host's `python3` runs its
//! `send_bundle` (the copy back, root in the guest) on a host directory where what the scan
//! found as regular files and a directory has since been replaced by a symlink to a file
//! outside, a FIFO and a symlink to a directory outside. In a VM this only happens if a
//! process of the program runs during the copy back, which the host prevents (the `freeze`
//! before it, checked by `vm.rs::the_programs_processes_cannot_race_the_copies`); these
//! rules are the second line, checked here on their own.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the supervisor's `send_bundle` on `top` for `found` (a Python dict literal of what
/// a scan found), writing the bundle into `out` through the supervisor's own `Port`.
const SEND: &str = r#"
import sys
path, top, out, found = sys.argv[1], sys.argv[2], sys.argv[3], eval(sys.argv[4])
g = {"__name__": "supervisor"}
exec(compile(open(path).read(), path, "exec"), g)
g["send_bundle"](g["Port"](out), top, list(found), found)
"#;

/// The entries of a bundle: (path, kind, the bytes of a file's extents).
fn entries(bundle: &[u8]) -> Vec<(String, String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let n = u32::from_be_bytes(bundle[at..at + 4].try_into().unwrap()) as usize;
        let head: serde_json::Value = serde_json::from_slice(&bundle[at + 4..at + 4 + n]).unwrap();
        at += 4 + n;
        let kind = head["kind"].as_str().unwrap().to_owned();
        if kind == "end" {
            assert_eq!(at, bundle.len(), "bytes after the end entry");
            return out;
        }
        let mut data = Vec::new();
        for extent in head["extents"].as_array().into_iter().flatten() {
            let len = extent[1].as_u64().unwrap() as usize;
            data.extend_from_slice(&bundle[at..at + len]);
            at += len;
        }
        out.push((head["path"].as_str().unwrap().to_owned(), kind, data));
    }
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
}

#[test]
fn the_copy_back_never_follows_a_symlink_nor_waits_on_a_fifo() {
    let test = "supervisor::the_copy_back_never_follows_a_symlink_nor_waits_on_a_fifo";
    let found = Command::new("sh")
        .args(["-c", "command -v python3"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        common::skip::skip(test, "python3 is missing on the host");
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let top = base.path().join("workspace");
    let outside = base.path().join("outside");
    std::fs::create_dir_all(&top).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), "outside secret").unwrap();
    std::fs::write(top.join("mine"), "mine").unwrap();
    // Found as regular files and a directory; now a symlink, a FIFO, a symlink.
    std::os::unix::fs::symlink("../outside/secret", top.join("link")).unwrap();
    mkfifo(&top.join("fifo"));
    std::os::unix::fs::symlink("../outside", top.join("sub")).unwrap();
    let out = base.path().join("bundle");
    std::fs::write(&out, "").unwrap();
    let scan = "{'mine': ('file', 4, 0, 0o644), 'link': ('file', 14, 0, 0o644), \
                'fifo': ('file', 0, 0, 0o644), 'sub': ('dir', 0, 0, 0o755), \
                'sub/secret': ('file', 14, 0, 0o644)}";
    let supervisor = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/supervisor.py");
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(SEND)
        .arg(&supervisor)
        .arg(&top)
        .arg(&out)
        .arg(scan)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the copy back still runs after 30 s (waiting on the FIFO?)");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "send_bundle failed: {status}");
    let bundle = std::fs::read(&out).unwrap();
    let got = entries(&bundle);
    assert_eq!(
        got,
        [("mine".to_owned(), "file".to_owned(), b"mine".to_vec())],
        "the copy back sent more than the one regular file"
    );
    assert!(
        !String::from_utf8_lossy(&bundle).contains("outside secret"),
        "a file outside the directory was copied back"
    );
}
