//! The microvm backend on this machine (QEMU, software emulation unless KVM is real): a
//! program with a subprocess runs in a VM, its files reach the host workspace and the next
//! VM, a pooled VM is handed out warm, and limits are judged from the host side. Skips on a
//! machine without QEMU, cpio or apt-get, saying so (`SKIPPED microvm <test>: <reason>` on stderr
//! and in `$AGENTKERNEL_SKIP_LOG`, see `common/skip.rs`).

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentkernel_core::conformance::{count_host_processes, test_spec};
use agentkernel_core::{
    Error, ExecRequest, ExecStatus, LimitKind, NoTools, Runtime, Sandbox, SandboxSpec,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_runs_in_a_vm_and_its_files_reach_the_host() {
    let Some(rt) = common::runtime("a_program_runs_in_a_vm_and_its_files_reach_the_host", 1) else {
        return;
    };
    let workspace = tempfile::tempdir().unwrap();
    std::fs::write(workspace.path().join("from-host.txt"), "hello VM").unwrap();
    let spec = SandboxSpec {
        workspace: Some(workspace.path().to_path_buf()),
        ..test_spec()
    };
    let started = Instant::now();
    let mut sb = rt.create_sandbox(&spec).await.expect("create");
    println!(
        "first sandbox (template restore) in {:.1} s: Python {}",
        started.elapsed().as_secs_f64(),
        sb.hello().map_or("?", |h| h.python.as_str())
    );
    let code = r#"
import os, subprocess
print(6 * 7)
print(subprocess.run(['sh', '-c', 'echo from-a-shell; uname -s; id -u'], capture_output=True, text=True).stdout, end='')
print(os.getcwd(), open('from-host.txt').read())
os.makedirs('out/deep', exist_ok=True)
open('out/deep/result.txt', 'w').write('written in the VM')
raise ValueError('boom')
"#;
    let out = sb
        .exec(ExecRequest::new(code), Arc::new(NoTools))
        .await
        .expect("exec");
    assert_eq!(
        out.stdout.text(),
        "42\nfrom-a-shell\nLinux\n1000\n/workspace hello VM\n",
        "stderr: {}",
        out.stderr.text()
    );
    assert!(
        matches!(&out.status, ExecStatus::Exception { type_name, .. } if type_name == "ValueError"),
        "{:?}",
        out.status
    );
    assert_eq!(
        std::fs::read_to_string(workspace.path().join("out/deep/result.txt")).unwrap(),
        "written in the VM",
        "a file written in the VM is on the host after the exec"
    );
    // A change made on the host between execs is seen by the next one; a deletion in the
    // VM reaches the host.
    std::fs::write(
        workspace.path().join("from-host.txt"),
        "changed on the host",
    )
    .unwrap();
    let out = sb
        .exec(
            ExecRequest::new(
                "import shutil\nprint(open('from-host.txt').read())\nshutil.rmtree('out')",
            ),
            Arc::new(NoTools),
        )
        .await
        .expect("exec");
    assert_eq!(
        out.stdout.text(),
        "changed on the host\n",
        "{}",
        out.stderr.text()
    );
    assert!(
        !workspace.path().join("out").exists(),
        "the deletion reached the host"
    );
    let vm_name = sb.id().to_owned();
    assert_eq!(
        count_host_processes(&vm_name),
        1,
        "one QEMU runs this sandbox"
    );
    Box::new(sb).shutdown().await.unwrap();
    assert_eq!(count_host_processes(&vm_name), 0, "shutdown ends the VM");

    // The pool makes a warm VM meanwhile: the next sandbox starts from it and sees the file.
    let waited = Instant::now();
    while rt.warm_vms() == 0 {
        assert!(
            waited.elapsed() < Duration::from_secs(120),
            "the pool never filled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    let mut sb = rt
        .create_sandbox(&spec)
        .await
        .expect("create from the pool");
    let created = started.elapsed();
    let out = sb
        .exec(
            ExecRequest::new("print(open('/workspace/from-host.txt').read())"),
            Arc::new(NoTools),
        )
        .await
        .expect("exec");
    println!(
        "pooled sandbox: create {:.2} s, then print {:.2} s",
        created.as_secs_f64(),
        (started.elapsed() - created).as_secs_f64()
    );
    assert_eq!(out.stdout.text(), "changed on the host\n");
    Box::new(sb).shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_ends_the_vm_and_keeps_the_files_written_before() {
    let Some(rt) = common::runtime(
        "a_timeout_ends_the_vm_and_keeps_the_files_written_before",
        0,
    ) else {
        return;
    };
    let workspace = tempfile::tempdir().unwrap();
    let spec = SandboxSpec {
        workspace: Some(workspace.path().to_path_buf()),
        ..test_spec()
    };
    let mut sb = rt.create(&spec).await.expect("create");
    let vm_name = sb.id().to_owned();
    let out = sb
        .exec(
            ExecRequest::new("open('partial.txt', 'w').write('saved')\nwhile True:\n    pass")
                .with_timeout(Duration::from_secs(2)),
            Arc::new(NoTools),
        )
        .await
        .expect("exec");
    assert_eq!(
        out.status,
        ExecStatus::Killed {
            limit: LimitKind::WallTime
        }
    );
    assert_eq!(count_host_processes(&vm_name), 0, "the VM is gone");
    assert_eq!(
        std::fs::read_to_string(workspace.path().join("partial.txt")).unwrap(),
        "saved"
    );
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vms_restored_from_one_state_do_not_share_random_numbers() {
    let Some(rt) = common::runtime("vms_restored_from_one_state_do_not_share_random_numbers", 0)
    else {
        return;
    };
    let mut seen = Vec::new();
    for _ in 0..2 {
        let mut sb = rt.create(&test_spec()).await.expect("create");
        let out = sb
            .exec(
                ExecRequest::new(
                    "import os, random\nprint(os.urandom(16).hex(), random.getrandbits(64))",
                ),
                Arc::new(NoTools),
            )
            .await
            .expect("exec");
        assert_eq!(out.status, ExecStatus::Ok, "{}", out.stderr.text());
        seen.push(out.stdout.text());
        sb.shutdown().await.unwrap();
    }
    assert_ne!(
        seen[0], seen[1],
        "two sandboxes drew the same random numbers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_lands_while_the_program_floods_the_workspace_and_tmp() {
    let test = "a_timeout_lands_while_the_program_floods_the_workspace_and_tmp";
    let Some(rt) = common::runtime(test, 0) else {
        return;
    };
    let workspace = tempfile::tempdir().unwrap();
    let mut spec = SandboxSpec {
        workspace: Some(workspace.path().to_path_buf()),
        ..test_spec()
    };
    spec.limits.memory_bytes = Some(1 << 30);
    let limits = spec.limits.clone();
    let mut sb = rt.create(&spec).await.expect("create");
    let vm_name = sb.id().to_owned();
    // Writes as fast as it can, forever: 8 MiB files over and over in /workspace (up to
    // 480 MiB of them, so the program itself fits in the guest's memory) and /tmp (up to
    // its cap), saying how far it got.
    let code = r#"
import sys
chunk = b'\xa5' * (8 << 20)
i = 0
while True:
    for d, n in (('/workspace', 60), ('/tmp', 7)):
        try:
            with open('%s/fill-%d' % (d, i % n), 'wb') as f:
                f.write(chunk)
        except OSError:
            pass
    i += 1
    print(i, flush=True)
"#;
    let timeout = Duration::from_secs(10);
    let started = Instant::now();
    let out = tokio::time::timeout(
        timeout + Duration::from_secs(180),
        sb.exec(
            ExecRequest::new(code).with_timeout(timeout),
            Arc::new(NoTools),
        ),
    )
    .await
    .expect("the exec never returned")
    .expect("exec");
    let took = started.elapsed();
    let mut total = 0;
    for entry in std::fs::read_dir(workspace.path()).unwrap() {
        let meta = entry.unwrap().metadata().unwrap();
        // What reached the host (if anything) stays within the caps.
        assert!(meta.len() <= limits.file_size_bytes.unwrap_or(u64::MAX));
        total += meta.len();
    }
    assert!(total <= limits.memory_bytes.unwrap_or(u64::MAX));
    println!(
        "a {timeout:?} timeout while writing ({} rounds of 8 MiB files) returned after {:.1} s; {} MiB reached the host",
        out.stdout.text().lines().last().unwrap_or("0"),
        took.as_secs_f64(),
        total >> 20
    );
    assert_eq!(
        out.status,
        ExecStatus::Killed {
            limit: LimitKind::WallTime
        },
        "{}",
        out.stderr.text()
    );
    // Not a speed check: a bound well above the copy-back grace (5 s) that a run which
    // waits on the guest's copy back without a deadline (a minute per step before) misses.
    let bound = timeout + Duration::from_secs(15);
    assert!(
        took < bound,
        "the run ended {:.1} s after its start, later than {bound:?}",
        took.as_secs_f64()
    );
    assert_eq!(count_host_processes(&vm_name), 0, "the VM is gone");
    sb.shutdown().await.unwrap();
}

/// The peak resident size of this process (`VmHWM`), in bytes, after resetting it when the
/// kernel allows (`clear_refs`), so a later read shows the peak since now.
fn reset_peak_rss() -> u64 {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    peak_rss()
}

fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib << 10)
}

/// A sparse file of `size` bytes with `head` at its start and `tail` at its end.
fn sparse_file(path: &std::path::Path, size: u64, head: &[u8], tail: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    f.write_all_at(head, 0).unwrap();
    f.write_all_at(tail, size - tail.len() as u64).unwrap();
}

/// Finding: 8 sparse files of 255 MiB apparent size (36 KB of disk) made the host read 2 GiB
/// into one buffer and hang past the run's time limit. Now the copy in is streamed and
/// capped in apparent size before anything is sent: the run ends at once with an error
/// naming the cap, the host's memory does not grow, and a sparse file under the cap
/// reaches the VM as its data (holes stay holes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sparse_workspace_is_capped_in_apparent_size_and_streamed() {
    let test = "a_sparse_workspace_is_capped_in_apparent_size_and_streamed";
    let Some(rt) = common::runtime(test, 0) else {
        return;
    };
    let workspace = tempfile::tempdir().unwrap();
    for i in 0..8 {
        sparse_file(
            &workspace.path().join(format!("sparse-{i}.bin")),
            255 << 20,
            b"data",
            b"end",
        );
    }
    let spec = SandboxSpec {
        workspace: Some(workspace.path().to_path_buf()),
        ..test_spec()
    };
    let mut sb = tokio::time::timeout(Duration::from_secs(300), rt.create(&spec))
        .await
        .expect("create never returned")
        .expect("create");
    let vm_name = sb.id().to_owned();
    let timeout = Duration::from_secs(5);
    let before = reset_peak_rss();
    let started = Instant::now();
    let run = tokio::time::timeout(
        timeout + Duration::from_secs(120),
        sb.exec(
            ExecRequest::new("print('ran')").with_timeout(timeout),
            Arc::new(NoTools),
        ),
    )
    .await
    .expect("the exec never returned");
    let took = started.elapsed();
    let grew = peak_rss().saturating_sub(before);
    println!(
        "a 2040 MiB (apparent) workspace: the run ended after {:.1} s, peak RSS grew {} MiB",
        took.as_secs_f64(),
        grew >> 20
    );
    assert!(
        took < timeout + Duration::from_secs(20),
        "the run ended {:.1} s after its start",
        took.as_secs_f64()
    );
    assert!(
        grew < 128 << 20,
        "the host's memory grew {} MiB",
        grew >> 20
    );
    let err = run.expect_err("a workspace of 2 GiB apparent size was copied into a 512 MiB VM");
    assert!(
        matches!(&err, Error::LimitExceeded { limit: LimitKind::Memory, detail }
            if detail.contains("512 MiB") && detail.contains("raise the memory limit")),
        "{err}"
    );
    // Under the cap, the same sandbox runs, and a sparse file arrives whole and sparse.
    for i in 0..8 {
        std::fs::remove_file(workspace.path().join(format!("sparse-{i}.bin"))).unwrap();
    }
    sparse_file(
        &workspace.path().join("big.bin"),
        100 << 20,
        b"head",
        b"tail",
    );
    let code = r#"
import os
st = os.stat('big.bin')
with open('big.bin', 'rb') as f:
    head = f.read(4)
    f.seek(st.st_size - 4)
    tail = f.read(4)
print(st.st_size, st.st_blocks * 512 < (1 << 20), head, tail)
"#;
    let before = reset_peak_rss();
    let out = sb
        .exec(
            ExecRequest::new(code).with_timeout(Duration::from_secs(60)),
            Arc::new(NoTools),
        )
        .await
        .expect("exec");
    let grew = peak_rss().saturating_sub(before);
    assert_eq!(out.status, ExecStatus::Ok, "{}", out.stderr.text());
    assert!(grew < 64 << 20, "the host's memory grew {} MiB", grew >> 20);
    assert_eq!(out.stdout.text(), "104857600 True b'head' b'tail'\n");
    sb.shutdown().await.unwrap();
    assert_eq!(count_host_processes(&vm_name), 0);
}

/// Finding: files written back were root-owned and mode 0777 in the host workspace (so
/// writable by every local user), and a 100 MiB sparse guest file took 101 MB of disk.
/// Checked on the host: owner (the workspace directory's owner when the host runs as root),
/// no group/other write, no set-id bits, and the blocks the sparse file takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_written_back_belong_to_the_workspace_owner_are_not_world_writable_and_stay_sparse() {
    use std::os::unix::fs::MetadataExt;
    let test =
        "files_written_back_belong_to_the_workspace_owner_are_not_world_writable_and_stay_sparse";
    let Some(rt) = common::runtime(test, 0) else {
        return;
    };
    let workspace = tempfile::tempdir().unwrap();
    let owner = if agentkernel_core::hostdirs::euid() == 0 {
        std::os::unix::fs::chown(workspace.path(), Some(4321), Some(4322)).unwrap();
        (4321, 4322)
    } else {
        let m = std::fs::metadata(workspace.path()).unwrap();
        (m.uid(), m.gid())
    };
    let spec = SandboxSpec {
        workspace: Some(workspace.path().to_path_buf()),
        ..test_spec()
    };
    let mut sb = rt.create(&spec).await.expect("create");
    let code = r#"
import os
os.makedirs('open/deeper', exist_ok=True)
open('open/deeper/f.txt', 'w').write('x')
open('setid', 'w').write('x')
for p, m in (('open', 0o777), ('open/deeper', 0o777), ('open/deeper/f.txt', 0o777), ('setid', 0o6777)):
    os.chmod(p, m)
with open('sparse.bin', 'wb') as f:
    f.write(b'head')
    f.seek((100 << 20) - 4)
    f.write(b'tail')
"#;
    let out = sb
        .exec(
            ExecRequest::new(code).with_timeout(Duration::from_secs(60)),
            Arc::new(NoTools),
        )
        .await
        .expect("exec");
    assert_eq!(out.status, ExecStatus::Ok, "{}", out.stderr.text());
    for name in [
        "open",
        "open/deeper",
        "open/deeper/f.txt",
        "setid",
        "sparse.bin",
    ] {
        let m = std::fs::symlink_metadata(workspace.path().join(name)).unwrap();
        assert_eq!(
            m.mode() & 0o7022,
            0,
            "{name} is mode {:o} on the host",
            m.mode() & 0o7777
        );
        assert_eq!((m.uid(), m.gid()), owner, "{name}'s owner on the host");
    }
    let m = std::fs::metadata(workspace.path().join("sparse.bin")).unwrap();
    assert_eq!(m.len(), 100 << 20);
    assert!(
        m.blocks() * 512 < 1 << 20,
        "a 100 MiB sparse file took {} bytes of disk on the host",
        m.blocks() * 512
    );
    sb.shutdown().await.unwrap();
}

/// Names the file where [`helper_busy_vm`] writes its VM's name (set only for the child
/// process [`a_kernel_killed_mid_run_leaves_no_qemu_behind`] starts).
const BUSY_VM_ENV: &str = "AGENTKERNEL_TEST_BUSY_VM";

/// Not a test: run by [`a_kernel_killed_mid_run_leaves_no_qemu_behind`] in a child process
/// (this test binary, re-executed): starts a VM, writes its name to `$AGENTKERNEL_TEST_BUSY_VM`
/// and keeps its CPU busy until the process is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a helper, run in a child process by a_kernel_killed_mid_run_leaves_no_qemu_behind"]
async fn helper_busy_vm() {
    let Some(out) = std::env::var_os(BUSY_VM_ENV) else {
        return;
    };
    let rt = common::image_runtime(0).expect("the image was built by the parent");
    let mut sb = rt.create(&test_spec()).await.expect("create");
    std::fs::write(&out, sb.id()).unwrap();
    let _ = sb
        .exec(
            ExecRequest::new("while True:\n    pass").with_timeout(Duration::from_secs(600)),
            Arc::new(NoTools),
        )
        .await;
}

/// The host processes whose command line holds `marker`.
fn pids_with(marker: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
        })
        .collect()
}

/// Finding: after SIGTERM to the kernel, QEMU kept running a busy guest at 100% CPU for
/// minutes. A kernel process (this test binary re-executed, running [`helper_busy_vm`]) is
/// killed with SIGKILL, then another with SIGTERM, while its VM is busy and its QEMU
/// stopped (SIGSTOP: the guest cannot react to the host going away); the host's `/proc`
/// must show no QEMU of that VM soon after.
#[test]
fn a_kernel_killed_mid_run_leaves_no_qemu_behind() {
    let test = "a_kernel_killed_mid_run_leaves_no_qemu_behind";
    if let Err(why) = common::image_runtime(0) {
        common::skip::skip(test, &why);
        return;
    }
    for signal in [libc::SIGKILL, libc::SIGTERM] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("vm-name");
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "helper_busy_vm", "--test-threads=1"])
            .env(BUSY_VM_ENV, &out)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let name = loop {
            if let Ok(name) = std::fs::read_to_string(&out)
                && !name.is_empty()
            {
                break name;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the helper ended ({status}) before its VM ran");
            }
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "the helper's VM never started"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let qemu = pids_with(&name);
        assert_eq!(qemu.len(), 1, "one QEMU runs the helper's VM");
        // Let the busy loop start.
        std::thread::sleep(Duration::from_secs(3));
        // Stop QEMU: its guest can then do nothing when the kernel goes away (the guest's
        // supervisor would otherwise notice its port close and power off, which a guest
        // busy under TCG did not do for minutes). Only the host-side tie can end it now.
        // SAFETY: kill(2) with a pid and a signal number; no memory is passed.
        assert_eq!(unsafe { libc::kill(qemu[0], libc::SIGSTOP) }, 0);
        // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
        child.wait().unwrap();
        let killed = Instant::now();
        while !pids_with(&name).is_empty() && killed.elapsed() < Duration::from_secs(15) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let left = pids_with(&name);
        for pid in &left {
            // Clean up what this test started (by pid), then fail.
            // SAFETY: kill(2) with a pid and a signal number; no memory is passed.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        assert!(
            left.is_empty(),
            "QEMU {name} outlived its kernel process (signal {signal}) by 15 s"
        );
        println!(
            "signal {signal}: QEMU gone {:.1} s after its kernel",
            killed.elapsed().as_secs_f64()
        );
    }
}

/// Finding: after a normal finish, the copy back ran while the program's background
/// processes still ran: one that swapped a file for a FIFO made the root supervisor's
/// `open()` block (the outcome was lost at the time limit), one that swapped it for a
/// symlink to a root-only guest file (`/proc/1/environ`) got it copied into the host
/// workspace, and one that swapped a directory for a symlink to `/etc` while files were
/// copied in got root to write there. Now the program's processes are stopped before the
/// copy back (killed; the agent stopped until the next exec), and the supervisor never
/// follows a symlink nor opens anything but a directory or a regular file. A racer runs
/// through 3 rounds; the host checks every status, the run times and every file it got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_programs_processes_cannot_race_the_copies() {
    let test = "the_programs_processes_cannot_race_the_copies";
    let Some(rt) = common::runtime(test, 0) else {
        return;
    };
    let workspace = tempfile::tempdir().unwrap();
    let spec = SandboxSpec {
        workspace: Some(workspace.path().to_path_buf()),
        ..test_spec()
    };
    let mut sb = rt.create(&spec).await.expect("create");
    // Swaps s0..s19 between a regular file "mine", a symlink to /proc/1/environ (root-only)
    // and a FIFO, and d0..d4 between a directory and a symlink to /etc, as fast as it can.
    let racer = r#"
import subprocess, sys
subprocess.Popen([sys.executable, '-c', '''
import os, shutil
os.chdir('/workspace')
i = 0
while True:
    for n in ['s%d' % k for k in range(20)]:
        tmp = n + '.tmp'
        try:
            if i % 3 == 0:
                with open(tmp, 'wb') as f:
                    f.write(b'mine')
            elif i % 3 == 1:
                os.symlink('/proc/1/environ', tmp)
            else:
                os.mkfifo(tmp)
            os.rename(tmp, n)
        except OSError:
            pass
    for d in ['d%d' % k for k in range(5)]:
        try:
            if i % 2:
                shutil.rmtree(d, ignore_errors=True)
                os.symlink('/etc', d)
            else:
                os.unlink(d)
                os.mkdir(d)
        except OSError:
            pass
    i += 1
'''], start_new_session=True)
import time
time.sleep(2)
print('raced')
"#;
    let check = r#"
import os
planted = [n for n in os.listdir('/etc') if n.startswith('planted')]
owned = [n for n in os.listdir('/etc') if os.lstat('/etc/' + n).st_uid == 1000]
print('etc', planted, owned)
"#;
    let timeout = Duration::from_secs(20);
    for round in 0..3 {
        let started = Instant::now();
        let out = sb
            .exec(
                ExecRequest::new(racer).with_timeout(timeout),
                Arc::new(NoTools),
            )
            .await
            .expect("exec");
        let took = started.elapsed();
        assert_eq!(
            (out.status.clone(), out.stdout.text()),
            (ExecStatus::Ok, "raced\n".to_owned()),
            "round {round}, after {:.1} s: {}",
            took.as_secs_f64(),
            out.stderr.text()
        );
        assert!(took < timeout + Duration::from_secs(20));
        // Every file the host got is one the program wrote.
        let mut todo = vec![workspace.path().to_path_buf()];
        while let Some(dir) = todo.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let path = e.unwrap().path();
                let meta = std::fs::symlink_metadata(&path).unwrap();
                if meta.is_dir() {
                    todo.push(path);
                } else {
                    assert!(meta.is_file(), "{} is not a regular file", path.display());
                    let body = std::fs::read(&path).unwrap();
                    assert!(
                        body.is_empty() || body == b"mine" || body == b"host",
                        "round {round}: {} holds {:?}, which the program did not write",
                        path.display(),
                        String::from_utf8_lossy(&body)
                    );
                }
            }
        }
        // Files for the copy in, into directories the racer swaps for symlinks to /etc.
        for d in 0..5 {
            let dir = workspace.path().join(format!("d{d}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("planted{round}")), "host").unwrap();
        }
        let out = sb
            .exec(
                ExecRequest::new(check).with_timeout(timeout),
                Arc::new(NoTools),
            )
            .await
            .expect("exec");
        assert_eq!(out.status, ExecStatus::Ok, "{}", out.stderr.text());
        assert_eq!(
            out.stdout.text(),
            "etc [] []\n",
            "round {round}: the copy in wrote into the guest's /etc"
        );
    }
    sb.shutdown().await.unwrap();
}

/// Another host writer swaps a workspace directory and a symlink to a directory outside
/// (`RENAME_EXCHANGE`, in a loop) while a sandbox copies the workspace in and back, for 3
/// runs: nothing outside is written, and the program never sees the outside file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_writer_swapping_symlinks_during_the_copies_gets_nothing_out() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let test = "a_host_writer_swapping_symlinks_during_the_copies_gets_nothing_out";
    let Some(rt) = common::runtime(test, 0) else {
        return;
    };
    let base = tempfile::tempdir().unwrap();
    let workspace = base.path().join("workspace");
    let outside = base.path().join("outside");
    std::fs::create_dir_all(workspace.join("d")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), "host secret").unwrap();
    for k in 0..8 {
        std::fs::write(workspace.join(format!("d/in{k}")), "shared").unwrap();
    }
    std::os::unix::fs::symlink("../outside", workspace.join("swap")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let racer = {
        let (stop, workspace) = (stop.clone(), workspace.clone());
        std::thread::spawn(move || {
            let a =
                std::ffi::CString::new(workspace.join("d").into_os_string().into_encoded_bytes())
                    .unwrap();
            let b = std::ffi::CString::new(
                workspace.join("swap").into_os_string().into_encoded_bytes(),
            )
            .unwrap();
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: two NUL-terminated paths that outlive the call.
                let rc = unsafe {
                    libc::renameat2(
                        libc::AT_FDCWD,
                        a.as_ptr(),
                        libc::AT_FDCWD,
                        b.as_ptr(),
                        libc::RENAME_EXCHANGE,
                    )
                };
                swaps += u64::from(rc == 0);
                std::thread::yield_now();
            }
            swaps
        })
    };
    let spec = SandboxSpec {
        workspace: Some(workspace.clone()),
        ..test_spec()
    };
    let mut sb = rt.create(&spec).await.expect("create");
    let code = r#"
import os
seen = []
for root, dirs, files in os.walk('.'):
    for f in files:
        try:
            seen.append(open(os.path.join(root, f)).read())
        except OSError:
            pass
print('secret' if any('host secret' in s for s in seen) else 'clean')
n = len([x for x in os.listdir('.') if x.startswith('round')])
os.makedirs('d', exist_ok=True)
for k in range(8):
    open('d/out%d-%d' % (n, k), 'w').write('from the guest')
open('round%d' % n, 'w').write('x')
"#;
    for round in 0..3 {
        let out = sb
            .exec(
                ExecRequest::new(code).with_timeout(Duration::from_secs(30)),
                Arc::new(NoTools),
            )
            .await;
        // A copy back may fail while the directory keeps changing (the sandbox is then
        // lost: make a new one); leaving the workspace may not.
        match out {
            Ok(out) => assert_eq!(
                out.stdout.text(),
                "clean\n",
                "round {round}: {}",
                out.stderr.text()
            ),
            Err(e) => {
                println!("round {round}: {e}");
                sb = rt.create(&spec).await.expect("create");
            }
        }
        let mut names: Vec<String> = std::fs::read_dir(&outside)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["secret"],
            "round {round}: written outside the workspace"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = racer.join().unwrap();
    assert!(swaps > 0, "the racer never swapped");
    println!("3 runs raced {swaps} swaps");
    sb.shutdown().await.unwrap();
}
