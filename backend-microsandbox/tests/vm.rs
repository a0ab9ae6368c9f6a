//! The microvm backend on this machine (QEMU, software emulation unless KVM is real): a
//! program with a subprocess runs in a VM, its files reach the host workspace and the next
//! VM, a pooled VM is handed out warm, and limits are judged from the host side. Skips on a
//! machine without QEMU, cpio or apt-get, saying so (`SKIPPED microvm <test>: <reason>` on stderr
//! and in `$AGENTKERNEL_SKIP_LOG`, see `common/skip.rs`).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentkernel_core::conformance::{count_host_processes, test_spec};
use agentkernel_core::{
    ExecRequest, ExecStatus, LimitKind, NoTools, Runtime, Sandbox, SandboxSpec,
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
