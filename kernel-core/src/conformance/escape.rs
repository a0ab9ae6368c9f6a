//! Escape attempts, judged from the host side: planted files, /etc/shadow, host processes, network, writing the host's /usr.

use super::*;

/// A file planted on the host outside the sandbox's mounts cannot be read.
pub async fn escape_read_planted_file(rt: &dyn Runtime) {
    // Readable by every user of the host (a 0755 directory, a 0644 file), in the host's
    // temp dir and in `/var/tmp`: only the sandbox's own view of the file system keeps
    // them out, not file permissions.
    let mut dirs = vec![world_accessible_dir(&std::env::temp_dir(), 0o755)];
    if std::path::Path::new("/var/tmp").is_dir() {
        dirs.push(world_accessible_dir(
            std::path::Path::new("/var/tmp"),
            0o755,
        ));
    }
    let secret = format!("secret-{}", uuid::Uuid::new_v4());
    let mut paths = Vec::new();
    for dir in &dirs {
        let path = dir.path().join("planted.txt");
        std::fs::write(&path, &secret).expect("plant");
        set_mode(&path, 0o644);
        paths.push(path.display().to_string());
    }
    let code = format!(
        "import os\nfor h in {paths:?}:\n    for p in [h, '/proc/1/root' + h, '/proc/self/root' + h]:\n        try:\n            print(open(p).read())\n        except OSError as e:\n            print('denied', type(e).__name__)\n"
    );
    let out = run_once(rt, &test_spec(), &code).await;
    assert!(
        !out.stdout.text().contains(&secret),
        "the sandbox read a host file: {}",
        out.stdout.text()
    );
    assert!(
        out.stdout.text().contains("denied"),
        "{}",
        out.stdout.text()
    );
}

/// `/etc/shadow` (and the host's `/etc` beyond a harmless few files) is not readable. Where
/// the test runs as root, it also plants a world-readable file in the host's `/etc` (removed
/// afterwards): permissions would let any uid read that one, so only the sandbox's own
/// `/etc` keeps it out.
pub async fn escape_read_etc_shadow(rt: &dyn Runtime) {
    /// Removes the planted file however the check ends.
    struct Planted(std::path::PathBuf);
    impl Drop for Planted {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let secret = format!("etc-secret-{}", uuid::Uuid::new_v4().simple());
    let planted = std::path::PathBuf::from(format!("/etc/{secret}"));
    let root = crate::hostdirs::euid() == 0;
    let guard = (root && std::fs::write(&planted, &secret).is_ok()).then(|| {
        set_mode(&planted, 0o644);
        Planted(planted.clone())
    });
    if guard.is_none() {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {} escape_read_etc_shadow/planted (does not apply): only root can plant a file in the host's /etc",
            rt.name()
        );
    }
    let out = run_once(
        rt,
        &test_spec(),
        &format!(
            "try:\n    print(open('/etc/shadow').read())\nexcept OSError as e:\n    print('denied', type(e).__name__)\ntry:\n    print(open({planted:?}).read())\nexcept OSError as e:\n    print('planted denied', type(e).__name__)",
            planted = planted.display().to_string()
        ),
    )
    .await;
    assert!(
        !out.stdout.text().contains(&secret),
        "{}: the sandbox read a file planted in the host's /etc: {}",
        rt.name(),
        out.stdout.text()
    );
    assert!(
        out.stdout.text().starts_with("denied"),
        "{}",
        out.stdout.text()
    );
    if let Ok(host_shadow) = std::fs::read_to_string("/etc/shadow")
        && let Some(first) = host_shadow.lines().next()
    {
        assert!(!out.stdout.text().contains(first));
    }
}

/// Host processes are invisible and cannot be signalled: a victim process the host starts
/// and the host test process itself both survive the sandbox's attempts to kill them.
pub async fn escape_host_processes(rt: &dyn Runtime) {
    let marker = format!("ak-victim-{}", uuid::Uuid::new_v4().simple());
    let mut victim = std::process::Command::new("sh")
        .args(["-c", &format!("sleep 60; : {marker}")])
        .spawn()
        .expect("spawn victim");
    let code = format!(
        r#"
import os, signal
seen = []
try:
    pids = os.listdir('/proc')
except OSError:
    pids = []  # no /proc at all (wasm)
for pid in pids:
    if pid.isdigit():
        try:
            seen.append(open(f'/proc/{{pid}}/cmdline', 'rb').read().decode(errors='replace'))
        except OSError:
            pass
print('visible', '{marker}' in ' '.join(seen))
for pid in ({victim}, {me}):
    try:
        os.kill(pid, signal.SIGKILL)
        print('signalled', pid)
    except (OSError, AttributeError) as e:  # AttributeError: no os.kill at all (wasm)
        print('refused', type(e).__name__)
"#,
        victim = victim.id(),
        me = std::process::id()
    );
    let out = run_once(rt, &test_spec(), &code).await;
    let still_running = victim.try_wait().expect("try_wait").is_none();
    let _ = victim.kill();
    let _ = victim.wait();
    if refused_by_subset(rt, "escape_host_processes", &out) {
        // No `os` process API at all: what matters is that the victim survived.
        assert!(still_running, "the host victim process was killed");
        return;
    }
    assert!(
        out.stdout.text().contains("visible False"),
        "{}",
        out.stdout.text()
    );
    assert!(
        still_running,
        "the sandbox killed a host process: {}",
        out.stdout.text()
    );
}

/// A TCP listener on the host is unreachable: on its loopback, on its outbound address and
/// on QEMU's user-network gateway (`10.0.2.2`; inside a VM `127.0.0.1` is the guest's own).
pub async fn escape_network(rt: &dyn Runtime) {
    // Listening on every address: inside a VM `127.0.0.1` is the guest's own, so the
    // program also tries the host's outbound address and QEMU's user-network gateway.
    let listener = TcpListener::bind("0.0.0.0:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let mut targets = vec!["127.0.0.1".to_owned(), "10.0.2.2".to_owned()];
    // The host's address on its default route (no packet is sent to find it).
    if let Ok(probe) = std::net::UdpSocket::bind("0.0.0.0:0")
        && probe.connect("192.0.2.1:9").is_ok()
        && let Ok(local) = probe.local_addr()
        && !local.ip().is_unspecified()
    {
        targets.push(local.ip().to_string());
    }
    let code = format!(
        "import socket\nfor host in {targets:?}:\n    try:\n        socket.create_connection((host, {port}), timeout=3)\n        print('connected', host)\n    except OSError as e:\n        print('refused', host, type(e).__name__)"
    );
    let out = run_once(rt, &test_spec(), &code).await;
    let accepted = listener.accept();
    assert!(
        matches!(&accepted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the host listener saw a connection from the sandbox"
    );
    assert!(
        !out.stdout.text().contains("connected"),
        "{}",
        out.stdout.text()
    );
}

/// A host directory of mode `mode` (e.g. 0755: every user may read it; 0777: write it)
/// under `parent`, removed when dropped.
fn world_accessible_dir(parent: &std::path::Path, mode: u32) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("agentkernel-escape-")
        .tempdir_in(parent)
        .expect("tempdir");
    set_mode(dir.path(), mode);
    dir
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// The host's `/usr` (and the sandbox's root) cannot be written, nor a host directory that
/// every user may write (mode 0777, in the host's temp dir and `/var/tmp`): file permissions
/// would let any uid in, so only the sandbox's view of the file system keeps it out.
pub async fn escape_write_host_usr(rt: &dyn Runtime) {
    let name = format!("agentkernel-escape-{}", uuid::Uuid::new_v4().simple());
    let mut open_dirs = vec![world_accessible_dir(&std::env::temp_dir(), 0o777)];
    if std::path::Path::new("/var/tmp").is_dir() {
        open_dirs.push(world_accessible_dir(
            std::path::Path::new("/var/tmp"),
            0o777,
        ));
    }
    let mut targets = vec![
        format!("/usr/{name}"),
        format!("/usr/bin/{name}"),
        format!("/{name}"),
        format!("/etc/{name}"),
    ];
    targets.extend(
        open_dirs
            .iter()
            .map(|d| d.path().join(&name).display().to_string()),
    );
    let code = format!(
        "for p in {targets:?}:\n    try:\n        open(p, 'w').write('x')\n        print('wrote', p)\n    except OSError as e:\n        print('refused', type(e).__name__)"
    );
    let out = run_once(rt, &test_spec(), &code).await;
    for dir in &open_dirs {
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(
            left.is_empty(),
            "{}: the sandbox wrote into the host's {}: {left:?}",
            rt.name(),
            dir.path().display()
        );
    }
    for host in [
        format!("/usr/{name}"),
        format!("/usr/bin/{name}"),
        format!("/{name}"),
        format!("/etc/{name}"),
    ] {
        assert!(
            !std::path::Path::new(&host).exists(),
            "the sandbox created {host} on the host"
        );
    }
    assert!(
        !out.stdout.text().contains("wrote"),
        "{}",
        out.stdout.text()
    );
}
