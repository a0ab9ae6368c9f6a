//! The guest image builds from Debian packages and boots under QEMU `-M microvm` to a
//! working Python (`scripts/build-microvm-image --check`). Skips on a machine without QEMU,
//! cpio or Debian package lists, saying so (`common/skip.rs`).

use std::path::Path;
use std::process::Command;

#[path = "common/skip.rs"]
mod skip;

const TEST: &str = "the_image_builds_and_boots_to_python";

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_image_builds_and_boots_to_python() {
    for (cmd, fix) in [
        ("qemu-system-x86_64", "apt-get install qemu-system-x86"),
        ("cpio", "apt-get install cpio"),
        ("apt-get", "a Debian/Ubuntu machine"),
    ] {
        if !have(cmd) {
            skip::skip(TEST, &format!("{cmd} is missing ({fix})"));
            return;
        }
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-microvm-image");
    let out = Command::new(script)
        .arg("--check")
        .output()
        .expect("run the script");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(69) {
        skip::skip(TEST, &stderr);
        return;
    }
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("AK-PROBE python 3.11") && stderr.contains("result 42"),
        "{stderr}"
    );
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    for file in ["vmlinuz", "initrd.img"] {
        assert!(Path::new(&dir).join(file).is_file(), "{dir}/{file}");
    }
}
