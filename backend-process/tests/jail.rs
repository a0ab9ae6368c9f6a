//! Process-backend specifics the shared suite cannot know: the jail's own layers, attempted
//! from inside the sandbox.

use std::os::unix::process::CommandExt;
use std::sync::Arc;

use agentkernel_backend_process::{ProcessConfig, ProcessRuntime};
use agentkernel_core::conformance::run_once;
use agentkernel_core::{ExecRequest, ExecStatus, NoTools, Runtime, SandboxSpec};

async fn run(code: &str) -> String {
    let rt = ProcessRuntime::new(ProcessConfig::default()).expect("process backend available");
    let out = run_once(&rt, &SandboxSpec::default(), code).await;
    assert_eq!(out.status, ExecStatus::Ok, "stderr: {}", out.stderr.text());
    out.stdout.text()
}

#[tokio::test]
async fn seccomp_denies_namespace_mount_and_ptrace_calls() {
    let out = run(r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def attempt(name, rc):
    print(name, rc, ctypes.get_errno())
attempt("unshare_user", libc.unshare(0x10000000))
attempt("unshare_mount", libc.unshare(0x00020000))
attempt("mount", libc.mount(b"none", b"/tmp", b"tmpfs", 0, None))
# PTRACE_TRACEME succeeds without the filter (the kernel allows any process to ask to be
# traced by its parent), so EPERM here is the filter's answer.
attempt("ptrace", libc.ptrace(0, 0, None, None))
attempt("setns", libc.setns(0, 0))
# clone() with CLONE_NEWUSER through the raw syscall (56 on x86_64, 220 on aarch64)
nr = 56 if os.uname().machine == "x86_64" else 220
attempt("clone_newuser", libc.syscall(nr, 0x10000000 | 17, None, None, None, None))
"#)
    .await;
    for name in [
        "unshare_user",
        "unshare_mount",
        "mount",
        "ptrace",
        "setns",
        "clone_newuser",
    ] {
        assert!(
            out.contains(&format!("{name} -1 1\n")),
            "{name} was not denied with EPERM:\n{out}"
        );
    }
}

/// The seccomp rules beyond namespaces and mounts, each attempted from inside: io_uring
/// (which would bypass the filter), `TIOCSTI` (typing into a terminal), `AF_VSOCK` sockets,
/// `clone3` (whose flags a filter cannot read: `ENOSYS` so libc falls back to `clone`) and,
/// on x86_64, x32-ABI numbers. Each answer is the filter's own errno, which the kernel would
/// not give without it (`ENOTTY` for `TIOCSTI` on `/dev/null`, `EINVAL` for an empty
/// `clone3`, an fd for `io_uring_setup`, an fd or `EAFNOSUPPORT` for vsock).
#[tokio::test]
async fn seccomp_denies_io_uring_tiocsti_vsock_clone3_and_x32() {
    let out = run(r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def attempt(name, rc):
    print(name, rc, ctypes.get_errno())
params = ctypes.create_string_buffer(256)
attempt("io_uring_setup", libc.syscall(425, 4, params))
fd = os.open("/dev/null", os.O_RDONLY)
ch = ctypes.c_char(b"x")
attempt("tiocsti", libc.ioctl(fd, 0x5412, ctypes.byref(ch)))
attempt("vsock", libc.socket(40, 1, 0))
attempt("clone3", libc.syscall(435, None, 0))
if os.uname().machine == "x86_64":
    attempt("x32_getpid", libc.syscall(0x40000000 | 39))
"#)
    .await;
    for (name, errno) in [
        ("io_uring_setup", libc::EPERM),
        ("tiocsti", libc::EPERM),
        ("vsock", libc::EPERM),
        ("clone3", libc::ENOSYS),
    ] {
        assert!(
            out.contains(&format!("{name} -1 {errno}\n")),
            "{name} was not refused by the filter (errno {errno}):\n{out}"
        );
    }
    if cfg!(target_arch = "x86_64") {
        assert!(
            out.contains(&format!("x32_getpid -1 {}\n", libc::ENOSYS)),
            "an x32 call was not refused:\n{out}"
        );
        // Whether this says anything depends on the host kernel: without x32 support the
        // call fails with ENOSYS anyway.
        // SAFETY: getpid through its x32 number: no arguments, no memory touched.
        let host = unsafe { libc::syscall(0x4000_0000 | libc::SYS_getpid) };
        if host < 0 {
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED process seccomp_x32 (does not apply): this kernel refuses x32 calls itself, so the filter's refusal cannot be told apart"
            );
        }
    }
}

/// The guest's init is not dumpable, so a program (same uid) cannot open its memory, its fds
/// or its executable link to take it over.
#[tokio::test]
async fn the_guest_init_cannot_be_taken_over_through_proc() {
    let out = run(r#"
import os
for path in ("/proc/1/mem", "/proc/1/fd/0", "/proc/1/environ"):
    try:
        open(path, "rb").close()
        print(path, "opened")
    except OSError as e:
        print(path, type(e).__name__)
try:
    os.readlink("/proc/1/exe")
    print("exe readable")
except OSError as e:
    print("exe", type(e).__name__)
"#)
    .await;
    for line in [
        "/proc/1/mem PermissionError",
        "/proc/1/fd/0 PermissionError",
        "/proc/1/environ PermissionError",
        "exe PermissionError",
    ] {
        assert!(out.contains(line), "init is reachable through /proc: {out}");
    }
}

#[tokio::test]
async fn guest_has_no_capabilities_and_no_new_privs() {
    let out = run("print(open('/proc/self/status').read())").await;
    let field = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}:")))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("{k} missing from /proc/self/status"))
    };
    assert_eq!(field("CapEff"), "0000000000000000");
    assert_eq!(field("CapPrm"), "0000000000000000");
    assert_eq!(field("NoNewPrivs"), "1");
    assert_eq!(field("Seccomp"), "2");
}

#[tokio::test]
async fn sandbox_user_is_never_host_root() {
    let out = run("print(open('/proc/self/uid_map').read().split())").await;
    // [inside, outside, count]
    assert!(out.starts_with("['1000', '"), "{out}");
    assert!(
        !out.contains("'1000', '0',"),
        "sandbox uid maps to host root: {out}"
    );
}

#[tokio::test]
async fn root_filesystem_and_system_dirs_are_read_only() {
    let out = run(r#"
import os
for p in ["/newfile", "/usr/newfile", "/etc/newfile", "/proc/sys/kernel/hostname"]:
    try:
        with open(p, "w") as f:
            f.write("x")
        print("wrote", p)
    except OSError as e:
        print("refused", p, e.errno)
print(sorted(os.listdir("/")))
"#)
    .await;
    assert!(!out.contains("wrote"), "{out}");
    // EROFS, not EACCES: the read-only root and binds refuse by themselves (landlock, where
    // present, would answer EACCES, and only after the mount's own check).
    for path in ["/newfile", "/usr/newfile", "/etc/newfile"] {
        assert!(
            out.contains(&format!("refused {path} 30\n")),
            "{path} was not refused by a read-only mount (EROFS):\n{out}"
        );
    }
    assert!(
        !out.contains("'home'") && !out.contains("'var'") && !out.contains("'sys'"),
        "{out}"
    );
}

#[tokio::test]
async fn symlinked_workspace_cannot_redirect_the_mount() {
    // A first sandbox plants a symlink in its workspace pointing at a host directory it
    // must never see; a later sandbox asked to use that path as its workspace is refused,
    // and the target is neither mounted nor handed to the sandbox user.
    let rt = ProcessRuntime::new(ProcessConfig::default()).expect("process backend available");
    let root = tempfile::tempdir().expect("tempdir");
    let ws = root.path().join("ws");
    let target = root.path().join("private");
    std::fs::create_dir(&ws).expect("ws");
    std::fs::create_dir(&target).expect("target");
    std::fs::write(target.join("secret.txt"), "host secret").expect("secret");
    let target_owner = std::fs::metadata(&target)
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .expect("meta");
    let spec = SandboxSpec {
        workspace: Some(ws.clone()),
        ..SandboxSpec::default()
    };
    let mut sb = rt.create(&spec).await.expect("create");
    let code = format!(
        "import os\nos.symlink({:?}, '/workspace/sub')\nprint('planted')",
        target.display().to_string()
    );
    let out = sb
        .exec(ExecRequest::new(code), Arc::new(NoTools))
        .await
        .expect("exec");
    assert_eq!(out.stdout.text(), "planted\n", "{}", out.stderr.text());
    sb.shutdown().await.expect("shutdown");
    // The workspace sweep removed the sandbox's escaping link when its exec ended; the same
    // link put back from the host (a race, another writer) is what the mount must refuse.
    let link = ws.join("sub");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
    }

    let spec = SandboxSpec {
        workspace: Some(ws.join("sub")),
        ..SandboxSpec::default()
    };
    match rt.create(&spec).await {
        Err(agentkernel_core::Error::InvalidRequest { .. }) => {}
        Err(other) => panic!("expected InvalidRequest, got {other}"),
        Ok(mut sb) => {
            // Accepted: the mount is already made (what the exec sees is only a detail).
            let out = sb
                .exec(
                    ExecRequest::new("import os; print(os.listdir('/workspace'))"),
                    Arc::new(NoTools),
                )
                .await
                .map(|out| out.stdout.text());
            panic!("a symlinked workspace was accepted (its exec: {out:?})");
        }
    }
    let owner = std::fs::metadata(&target)
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .expect("meta");
    assert_eq!(
        owner, target_owner,
        "the symlink target was handed to the sandbox user"
    );
}

/// The sandbox's tmpfs mounts (`/tmp`, `/dev/shm`, the private `/workspace`) hold a number
/// of inodes proportional to their size (`nr_inodes=`): creating files past it fails with
/// `ENOSPC`, `statvfs` shows the cap, and the host sees the option on the mounts and no more
/// files than the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tmpfs_inodes_are_capped() {
    let rt = ProcessRuntime::new(ProcessConfig::default()).expect("process backend");
    let spec = agentkernel_core::conformance::limited(|l| l.tmp_bytes = 4 << 20);
    // 4 MiB at one inode per 8 KiB.
    let cap = 512;
    let mut sb = rt.create(&spec).await.expect("sandbox");
    let out = sb
        .exec(
            ExecRequest::new(format!(
                r#"
import errno, os
for top in ("/tmp", "/dev/shm", "/workspace"):
    made, err = 0, None
    try:
        for i in range({cap} + 100):
            open("%s/f%d" % (top, i), "w").close()
            made += 1
    except OSError as e:
        err = errno.errorcode[e.errno]
    print(top, os.statvfs(top).f_files, made <= {cap}, err)
print(os.readlink("/proc/self/ns/pid"))
"#
            )),
            Arc::new(NoTools),
        )
        .await
        .expect("exec");
    assert_eq!(out.status, ExecStatus::Ok, "{}", out.stderr.text());
    let text = out.stdout.text();
    let mut lines = text.lines();
    for top in ["/tmp", "/dev/shm", "/workspace"] {
        assert_eq!(
            lines.next(),
            Some(format!("{top} {cap} True ENOSPC").as_str()),
            "{text}"
        );
    }
    // From the host: a process of the sandbox (found by its pid namespace) shows the mounts.
    let ns = lines.next().expect("pid namespace").to_owned();
    let pid = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| std::fs::read_link(p.join("ns/pid")).is_ok_and(|l| l.to_string_lossy() == ns))
        .expect("a host process in the sandbox's pid namespace");
    let mountinfo = std::fs::read_to_string(pid.join("mountinfo")).expect("mountinfo");
    for top in ["/tmp", "/dev/shm", "/workspace"] {
        let line = mountinfo
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(top))
            .unwrap_or_else(|| panic!("no {top} mount: {mountinfo}"));
        assert!(line.contains(&format!("nr_inodes={cap}")), "{line}");
        let files = std::fs::read_dir(pid.join("root").join(&top[1..]))
            .expect("host listing of the sandbox's mount")
            .count();
        assert!(files < cap, "{top} holds {files} files");
    }
    sb.shutdown().await.expect("shutdown");
}

/// The guest protocol's frame cap: a program that writes a frame header announcing 4 GiB on
/// the control socket (the agent's fd 3, which a program in the agent's process can reach)
/// is refused at once, before the host reads or allocates the body: the exec ends as a
/// crash (not at its time limit, as it would if the host waited for the body), the host's
/// peak memory does not grow by the announced size, and the runtime goes on.
#[tokio::test]
async fn an_oversized_guest_frame_is_refused_at_once() {
    fn peak_rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .expect("status")
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .expect("VmHWM")
    }
    let rt = ProcessRuntime::new(ProcessConfig::default()).expect("process backend available");
    let before = peak_rss_kib();
    let mut sb = rt.create(&SandboxSpec::default()).await.expect("create");
    let req = ExecRequest::new(
        "import os, time\nos.write(3, (0xFFFFFFF0).to_bytes(4, 'big') + b'{' * 65536)\ntime.sleep(30)\n",
    )
    .with_timeout(std::time::Duration::from_secs(20));
    let out = sb.exec(req, Arc::new(NoTools)).await;
    match &out {
        Ok(o) => assert!(
            matches!(o.status, ExecStatus::Crashed { .. }),
            "the oversized frame was not refused at once: {:?}",
            o.status
        ),
        Err(e) => assert!(e.to_string().contains("frame"), "{e}"),
    }
    let _ = Box::new(sb).shutdown().await;
    let grown = peak_rss_kib().saturating_sub(before);
    assert!(
        grown < 256 * 1024,
        "the host's peak memory grew by {grown} KiB reading one frame"
    );
    // The runtime carries on.
    let next = run_once(&rt, &SandboxSpec::default(), "print(6*7)").await;
    assert_eq!(next.stdout.text(), "42\n");
}

/// Host uids of the processes now running whose uid is in `range`.
fn host_uids_in(range: std::ops::Range<u32>) -> Vec<(u32, u32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok());
        if let Some(uid) = uid.filter(|u| range.contains(u)) {
            found.push((pid, uid));
        }
    }
    found
}

const SANDBOX_UIDS: std::ops::Range<u32> = 0x7000_0000..0x7001_0000;

/// Started by root, each sandbox is a host uid of its own (not `nobody`, not another
/// sandbox's): seen from the host's `/proc`, two live sandboxes run as two distinct uids of
/// the sandbox range, and a host process running as `nobody` cannot signal them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_root_each_sandbox_is_its_own_host_uid() {
    if agentkernel_core::hostdirs::euid() != 0 {
        return agentkernel_core::conformance::skip(
            "as_root_each_sandbox_is_its_own_host_uid",
            "process",
            "only a kernel run as root gives sandboxes uids of their own",
        );
    }
    let rt = ProcessRuntime::new(ProcessConfig::default()).expect("process backend available");
    let before: std::collections::BTreeSet<u32> = host_uids_in(SANDBOX_UIDS)
        .into_iter()
        .map(|(_, u)| u)
        .collect();
    let a = rt.create(&SandboxSpec::default()).await.expect("create a");
    let b = rt.create(&SandboxSpec::default()).await.expect("create b");
    let now = host_uids_in(SANDBOX_UIDS);
    let new: std::collections::BTreeMap<u32, u32> = now
        .iter()
        .filter(|(_, u)| !before.contains(u))
        .map(|(pid, uid)| (*uid, *pid))
        .collect();
    assert!(
        new.len() >= 2,
        "two live sandboxes should run as two distinct uids of {SANDBOX_UIDS:?}; the host sees {now:?}"
    );
    // A host process running as nobody (what root's sandboxes used to be) tries kill(pid, 0).
    // Other tests of this file run sandboxes meanwhile: a pid of theirs may be gone by now.
    let mut refused = 0;
    for pid in new.values() {
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                "import os, sys\ntry:\n    os.kill(int(sys.argv[1]), 0)\n    print('signalled')\nexcept PermissionError:\n    print('refused')\nexcept ProcessLookupError:\n    print('gone')",
                &pid.to_string(),
            ])
            .uid(65534)
            .gid(65534)
            .output()
            .expect("python3 as nobody");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            matches!(text.trim(), "refused" | "gone"),
            "nobody could signal sandbox pid {pid}: {text} {:?}",
            out.stderr
        );
        refused += usize::from(text.trim() == "refused");
    }
    assert!(refused >= 2, "a and b were not both tried: {new:?}");
    a.shutdown().await.expect("shutdown a");
    b.shutdown().await.expect("shutdown b");
}

/// Started by root, a sandbox writes its workspace through an idmapped mount: the directory
/// keeps its owner, and what the program creates belongs to that owner on the host (not to
/// `nobody`, not to the sandbox's uid), whoever the owner is.
#[tokio::test]
async fn as_root_a_workspace_keeps_its_owner() {
    use std::os::unix::fs::MetadataExt;
    if agentkernel_core::hostdirs::euid() != 0 {
        return agentkernel_core::conformance::skip(
            "as_root_a_workspace_keeps_its_owner",
            "process",
            "only root can run sandboxes as another uid than its own",
        );
    }
    let rt = ProcessRuntime::new(ProcessConfig::default()).expect("process backend available");
    let root = tempfile::tempdir().expect("tempdir");
    for (owner, group) in [(0u32, 0u32), (4242, 4343)] {
        let ws = root.path().join(format!("ws-{owner}"));
        std::fs::create_dir(&ws).expect("ws");
        std::os::unix::fs::chown(&ws, Some(owner), Some(group)).expect("chown");
        std::fs::write(ws.join("old.txt"), "before").expect("old file");
        std::os::unix::fs::chown(ws.join("old.txt"), Some(owner), Some(group)).expect("chown");
        let spec = SandboxSpec {
            workspace: Some(ws.clone()),
            ..SandboxSpec::default()
        };
        let mut sb = rt.create(&spec).await.expect("create");
        let out = sb
            .exec(
                ExecRequest::new(
                    "import os\nos.makedirs('/workspace/d/e')\nopen('/workspace/d/e/new.txt', 'w').write('x')\nopen('/workspace/old.txt', 'a').write(' after')\nprint(os.stat('/workspace').st_uid, os.getuid())",
                ),
                Arc::new(NoTools),
            )
            .await
            .expect("exec");
        assert_eq!(out.status, ExecStatus::Ok, "{}", out.stderr.text());
        assert_eq!(
            out.stdout.text(),
            "1000 1000\n",
            "inside, the workspace is the sandbox's own"
        );
        sb.shutdown().await.expect("shutdown");
        for path in [
            ws.clone(),
            ws.join("d"),
            ws.join("d/e"),
            ws.join("d/e/new.txt"),
            ws.join("old.txt"),
        ] {
            let m = std::fs::symlink_metadata(&path).expect("stat");
            assert_eq!(
                (m.uid(), m.gid()),
                (owner, group),
                "{} is not owned by the workspace's owner after the run",
                path.display()
            );
        }
        assert_eq!(
            std::fs::read_to_string(ws.join("old.txt")).unwrap(),
            "before after"
        );
    }
}

/// A program cannot give a file set-uid or set-gid bits (which would outlive the sandbox in
/// a host workspace, where a set-uid file runs as its owner for any host user): `chmod`,
/// `os.open(O_CREAT)` and `mknod` with those bits are refused, and the host sees no such bit.
#[tokio::test]
async fn set_id_bits_cannot_be_given_to_workspace_files() {
    use std::os::unix::fs::PermissionsExt;
    let rt = ProcessRuntime::new(ProcessConfig::default()).expect("process backend available");
    let ws = tempfile::tempdir().expect("tempdir");
    let spec = SandboxSpec {
        workspace: Some(ws.path().to_path_buf()),
        ..SandboxSpec::default()
    };
    let out = run_once(
        &rt,
        &spec,
        r#"
import os, shutil, stat
shutil.copy('/usr/bin/true', '/workspace/t')
def attempt(name, f):
    try:
        f()
        print(name, 'allowed')
    except OSError as e:
        print(name, 'refused', e.errno)
attempt('chmod_suid', lambda: os.chmod('/workspace/t', 0o4755))
attempt('chmod_sgid', lambda: os.chmod('/workspace/t', 0o2755))
fd = os.open('/workspace/t', os.O_RDONLY)
attempt('fchmod_suid', lambda: os.fchmod(fd, 0o4755))
attempt('open_creat_suid', lambda: os.close(os.open('/workspace/c', os.O_CREAT | os.O_WRONLY, 0o4755)))
attempt('mknod_suid', lambda: os.mknod('/workspace/n', 0o4755 | stat.S_IFREG))
attempt('chmod_plain', lambda: os.chmod('/workspace/t', 0o755))
attempt('open_plain', lambda: os.close(os.open('/workspace/p', os.O_CREAT | os.O_WRONLY, 0o644)))
"#,
    )
    .await;
    let text = out.stdout.text();
    assert_eq!(out.status, ExecStatus::Ok, "{}", out.stderr.text());
    for name in [
        "chmod_suid",
        "chmod_sgid",
        "fchmod_suid",
        "open_creat_suid",
        "mknod_suid",
    ] {
        assert!(
            text.contains(&format!("{name} refused 1\n")),
            "{name} was not refused with EPERM:\n{text}"
        );
    }
    for name in ["chmod_plain", "open_plain"] {
        assert!(
            text.contains(&format!("{name} allowed\n")),
            "{name} must still work:\n{text}"
        );
    }
    for entry in std::fs::read_dir(ws.path()).expect("list") {
        let entry = entry.expect("entry");
        let mode = entry.metadata().expect("stat").permissions().mode();
        assert_eq!(
            mode & 0o6000,
            0,
            "{} has set-id bits on the host (mode {mode:o})",
            entry.path().display()
        );
    }
}

/// Started by root, sandboxes with workspaces are created from many threads at once (each
/// makes an idmapped mount through a forked helper): none waits on another's helper. A
/// helper once kept copies of every fd of the kernel's process, among them the pipe another
/// thread's helper waited on for its release, so two concurrent creations could block each
/// other (and their runtime threads) for good; a watchdog thread fails the test then.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn as_root_concurrent_sandboxes_with_workspaces_never_wait_on_each_other() {
    if agentkernel_core::hostdirs::euid() != 0 {
        return agentkernel_core::conformance::skip(
            "as_root_concurrent_sandboxes_with_workspaces_never_wait_on_each_other",
            "process",
            "only root makes idmapped workspace mounts",
        );
    }
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = done.clone();
    std::thread::spawn(move || {
        // Far beyond what 80 sandbox creations take on a loaded 2-core machine.
        std::thread::sleep(std::time::Duration::from_secs(240));
        if !watchdog.load(std::sync::atomic::Ordering::SeqCst) {
            eprintln!("sandbox creations blocked each other: still not done after 240 s");
            std::process::abort();
        }
    });
    let rt = Arc::new(ProcessRuntime::new(ProcessConfig::default()).expect("process backend"));
    let root = tempfile::tempdir().expect("tempdir");
    for round in 0..10 {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..8 {
            let ws = root.path().join(format!("ws-{round}-{i}"));
            std::fs::create_dir(&ws).expect("ws");
            let rt = rt.clone();
            tasks.spawn(async move {
                let spec = SandboxSpec {
                    workspace: Some(ws),
                    ..SandboxSpec::default()
                };
                let sb = rt.create(&spec).await.expect("create");
                sb.shutdown().await.expect("shutdown");
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("a creation panicked");
        }
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// The seccomp filters a sandbox runs under are exactly the reviewed policy: `doctor` reads
/// them back from the host kernel (`PTRACE_SECCOMP_GET_FILTER` on the guest's init) and
/// compares their digests with the policy's, which a unit test holds equal to
/// `jail/seccomp-policy.x86_64.txt`. A jail that installed one filter fewer, or
/// another, fails here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_installed_seccomp_filters_are_the_reviewed_policy() {
    if agentkernel_core::hostdirs::euid() != 0 {
        return agentkernel_core::conformance::skip(
            "the_installed_seccomp_filters_are_the_reviewed_policy",
            "process",
            "reading a process's seccomp filters back needs CAP_SYS_ADMIN on the host (root)",
        );
    }
    let rt = ProcessRuntime::new(ProcessConfig::default()).expect("process backend available");
    let diagnosis = rt.diagnose().await;
    let seccomp = diagnosis
        .checks
        .iter()
        .find(|c| c.name == "seccomp")
        .unwrap_or_else(|| panic!("no seccomp line: {diagnosis:?}"));
    assert_eq!(
        seccomp.state,
        agentkernel_core::CheckState::Active,
        "{seccomp:?}"
    );
    assert!(
        seccomp
            .detail
            .contains("installed filters are the reviewed policy"),
        "{seccomp:?}"
    );
}
