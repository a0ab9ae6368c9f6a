//! Shared by the VM tests: the guest image, built (or found cached) by the project's script.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The image directory, or `None` (after printing why the test is skipped) on a machine
/// without QEMU, cpio or apt.
pub fn image() -> Option<PathBuf> {
    static IMAGE: OnceLock<Option<PathBuf>> = OnceLock::new();
    IMAGE.get_or_init(build).clone()
}

fn build() -> Option<PathBuf> {
    for (cmd, fix) in [
        ("qemu-system-x86_64", "apt-get install qemu-system-x86"),
        ("cpio", "apt-get install cpio"),
        ("apt-get", "a Debian/Ubuntu machine"),
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {cmd}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            println!("skipped: {cmd} is missing ({fix})");
            return None;
        }
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-microvm-image");
    let out = Command::new(script).output().expect("run the image script");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}
