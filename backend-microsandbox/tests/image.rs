//! The guest image builds from Debian packages and boots under QEMU `-M microvm` to a
//! working Python (`scripts/build-microvm-image --check`). Skips, saying why, on a machine
//! without QEMU, cpio or Debian package lists.

use std::path::Path;
use std::process::Command;

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
            println!("skipped: {cmd} is missing ({fix})");
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
        println!("skipped: {stderr}");
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
