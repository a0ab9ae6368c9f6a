//! A program runs in a QEMU microVM through the guest protocol: the image from
//! `scripts/build-microvm-image`, the guest agent on virtio-serial. Skips, saying why, on a
//! machine without QEMU or cpio.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentkernel_backend_microsandbox::qemu::QemuVm;
use agentkernel_core::guest::ExecEnd;
use agentkernel_core::{ExecRequest, ExecStatus, NoTools};

fn image() -> Option<PathBuf> {
    for cmd in ["qemu-system-x86_64", "cpio", "apt-get"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {cmd}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            println!("skipped: {cmd} is missing (apt-get install qemu-system-x86 cpio)");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_runs_in_the_vm_with_a_subprocess() {
    let Some(image) = image() else { return };
    let started = Instant::now();
    let mut vm = QemuVm::boot(&image, 512, Duration::from_secs(120))
        .await
        .expect("boot");
    println!(
        "booted in {:.1} s: Python {}",
        started.elapsed().as_secs_f64(),
        vm.hello.python
    );
    assert!(vm.hello.python.starts_with("3.11"), "{:?}", vm.hello);
    let code = "import subprocess, os\nprint(6 * 7)\nprint(subprocess.run(['sh', '-c', 'echo from-a-shell; uname -s'], capture_output=True, text=True).stdout, end='')\nprint(os.getcwd())\nraise ValueError('boom')";
    let report = vm
        .conn
        .exec(
            &ExecRequest::new(code),
            Arc::new(NoTools),
            1 << 20,
            Instant::now() + Duration::from_secs(60),
        )
        .await
        .expect("exec");
    assert_eq!(
        report.stdout.text(),
        "42\nfrom-a-shell\nLinux\n/workspace\n",
        "stderr: {}",
        report.stderr.text()
    );
    match report.end {
        ExecEnd::Finished(ExecStatus::Exception { type_name, .. }) => {
            assert_eq!(type_name, "ValueError")
        }
        other => panic!("expected the program's exception, got {other:?}"),
    }
    vm.shutdown().await;
}
