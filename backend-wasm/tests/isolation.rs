//! Wasm-specific isolation claims (SECURITY.md, "Backend wasm"), each attempted from inside
//! the guest and judged from the host side.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::sync::Arc;

use agentkernel_core::conformance::{run_once, test_spec};
use agentkernel_core::{ExecRequest, ExecStatus, Mount, NoTools, Runtime, SandboxSpec};

/// A symlink planted in the workspace (by an earlier program or anyone) that points outside
/// it is not followed: WASI resolves every path inside its preopened directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_and_dot_dot_cannot_leave_the_workspace() {
    let outside = tempfile::tempdir().unwrap();
    let secret = format!("secret-{}", uuid_like());
    std::fs::write(outside.path().join("secret.txt"), &secret).unwrap();
    let ws = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret.txt"), ws.path().join("link")).unwrap();
    std::os::unix::fs::symlink(outside.path(), ws.path().join("dir")).unwrap();
    let spec = SandboxSpec {
        workspace: Some(ws.path().to_path_buf()),
        ..test_spec()
    };
    let code = format!(
        "for p in ['/workspace/link', '/workspace/dir/secret.txt', '/workspace/../{rel}', '../{rel}']:\n    try:\n        print(open(p).read())\n    except OSError as e:\n        print('denied', type(e).__name__)\n",
        rel = outside.path().join("secret.txt").display()
    );
    let out = run_once(&common::runtime(), &spec, &code).await;
    let text = out.stdout.text();
    assert!(
        !text.contains(&secret),
        "the guest read a file outside its preopens: {text}"
    );
    assert_eq!(text.matches("denied").count(), 4, "{text}");
}

/// A FIFO in the workspace (a host user can make one; the guest cannot) is refused when
/// opened, directly or through a symlink: opening it would wait for a writer forever on the
/// kernel's thread, past the time limit. Regular files beside it still open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifos_in_the_workspace_are_refused_not_waited_on() {
    let ws = tempfile::tempdir().unwrap();
    let fifo = ws.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    std::os::unix::fs::symlink("fifo", ws.path().join("link")).unwrap();
    std::fs::write(ws.path().join("plain.txt"), "plain").unwrap();
    let spec = SandboxSpec {
        workspace: Some(ws.path().to_path_buf()),
        ..test_spec()
    };
    let code = "for p in ['/workspace/fifo', '/workspace/link']:\n    try:\n        open(p).read()\n        print('opened')\n    except PermissionError:\n        print('refused')\nprint(open('/workspace/plain.txt').read())";
    let req = ExecRequest::new(code).with_timeout(std::time::Duration::from_secs(20));
    let rt = common::runtime();
    let mut sb = rt.create(&spec).await.unwrap();
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        sb.exec(req, Arc::new(NoTools)),
    )
    .await
    .expect("the exec returns: nothing waits on the FIFO")
    .unwrap();
    assert_eq!(out.stdout.text(), "refused\nrefused\nplain\n", "{out:?}");
    sb.shutdown().await.unwrap();
}

/// A read-only mount (such as `/tools`) cannot be written, and nothing appears on the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_mounts_stay_read_only() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keep.py"), "X = 1\n").unwrap();
    let spec = SandboxSpec {
        mounts: vec![Mount {
            host: dir.path().to_path_buf(),
            guest: "/tools".into(),
            writable: false,
        }],
        ..test_spec()
    };
    let code = "import os\nfor f in [lambda: open('/tools/new.py', 'w').write('x'), lambda: open('/tools/keep.py', 'a').write('y'), lambda: os.remove('/tools/keep.py'), lambda: os.mkdir('/tools/d')]:\n    try:\n        f()\n        print('wrote')\n    except OSError as e:\n        print('denied', type(e).__name__)\nprint(open('/tools/keep.py').read().strip())";
    let out = run_once(&common::runtime(), &spec, code).await;
    let text = out.stdout.text();
    assert!(!text.contains("wrote"), "{text}");
    assert!(text.ends_with("X = 1\n"), "{text}");
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["keep.py"]);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("keep.py")).unwrap(),
        "X = 1\n"
    );
}

/// Every sandbox starts from the same snapshot, but not with the same randomness: the
/// `random` module is reseeded and `os.urandom`/`secrets` come from the host per call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_do_not_share_random_state() {
    let rt = common::runtime();
    let code = "import random, secrets, os\nprint(random.random(), secrets.token_hex(8), os.urandom(8).hex())";
    let a = run_once(&rt, &test_spec(), code).await.stdout.text();
    let b = run_once(&rt, &test_spec(), code).await.stdout.text();
    let (a, b): (Vec<_>, Vec<_>) = (
        a.split_whitespace().collect(),
        b.split_whitespace().collect(),
    );
    assert_eq!(a.len(), 3);
    for i in 0..3 {
        assert_ne!(a[i], b[i], "two sandboxes produced the same random value");
    }
}

/// Sandboxes reuse wasmtime's memory slots, reset to the snapshot when given back: what a
/// program wrote into its linear memory is gone from the host's memory once its sandbox is
/// finished, and a sandbox started after it (sequential sandboxes of one process are handed
/// the most recently returned slot) holds none of it either.
///
/// Judged from the host: the program fills 4 MiB with a random 16-byte marker; the test
/// finds that fill in its own process's memory (`/proc/self/mem`, which proves the scan
/// sees guest memory), then checks it is gone from that address after the sandbox is shut
/// down, and from the whole process once the next sandbox has run. Python objects marked in
/// every module are checked too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_memory_slot_keeps_nothing_of_the_previous_sandbox() {
    let rt = common::runtime();
    for round in 0..2 {
        let marker = uuid_like_bytes(round);
        let needle: Vec<u8> = marker.repeat(4);
        let mark = format!(
            "import sys\n\
             for m in list(sys.modules.values()):\n\
             \x20   try: m.__dict__['ak_mark'] = 1\n\
             \x20   except Exception: pass\n\
             sys.ak_big = bytearray(bytes.fromhex('{}') * (4 << 16))\n\
             print(sum(hasattr(m, 'ak_mark') for m in list(sys.modules.values())) > 100)",
            hex(&marker)
        );
        let mut sb = rt.create(&test_spec()).await.unwrap();
        let out = sb
            .exec(ExecRequest::new(mark), Arc::new(NoTools))
            .await
            .unwrap();
        assert_eq!(out.stdout.text(), "True\n", "round {round}: {out:?}");
        let at = find_in_memory(&needle, None)
            .unwrap_or_else(|| panic!("round {round}: the scan did not find the guest's fill"));
        sb.shutdown().await.unwrap();
        // The slot is reset off the caller's path, on a thread of its own: wait (bounded)
        // for the fill to leave that address.
        let mut left = true;
        for _ in 0..200 {
            left = find_in_memory(&needle, Some((at, 4 << 20))).is_some();
            if !left {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(
            !left,
            "round {round}: the finished sandbox's memory still holds its fill at {at:#x}"
        );
        let check = "import sys\n\
                     big = bytearray(8 << 20)\n\
                     print(sum(hasattr(m, 'ak_mark') for m in list(sys.modules.values())), hasattr(sys, 'ak_big'))";
        let mut next = rt.create(&test_spec()).await.unwrap();
        let out = next
            .exec(ExecRequest::new(check), Arc::new(NoTools))
            .await
            .unwrap();
        assert_eq!(
            out.stdout.text(),
            "0 False\n",
            "round {round}: a fresh sandbox saw the previous one's objects"
        );
        assert_eq!(
            find_in_memory(&needle, None),
            None,
            "round {round}: the previous sandbox's fill is in the process's memory"
        );
        next.shutdown().await.unwrap();
    }
}

/// 16 bytes unlikely to be anywhere else in memory.
fn uuid_like_bytes(round: u8) -> Vec<u8> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mut m = nanos.to_le_bytes().to_vec();
    m[15] = round;
    m[14] = 0xa5;
    m[13] = 0x5a;
    m
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A buffer zeroed when dropped: what the scan copied (the guest's fill) must not stay in
/// freed host memory, where a later scan would find it.
struct Zeroed(Vec<u8>);

impl Drop for Zeroed {
    fn drop(&mut self) {
        self.0.fill(0);
        std::hint::black_box(&self.0);
    }
}

/// Where `needle` is in this process's writable memory (`/proc/self/maps` and
/// `/proc/self/mem`), or in `range` (start, length) only; unreadable memory holds nothing.
/// The scan's own buffers (and the needle) are left out.
fn find_in_memory(needle: &[u8], range: Option<(u64, u64)>) -> Option<u64> {
    use std::os::unix::fs::FileExt as _;
    const CHUNK: usize = 4 << 20;
    let mem = std::fs::File::open("/proc/self/mem").unwrap();
    let mut buf = Zeroed(vec![0u8; CHUNK + needle.len()]);
    let buf = &mut buf.0;
    let own = [
        (needle.as_ptr() as u64, needle.len() as u64),
        (buf.as_ptr() as u64, buf.len() as u64),
    ];
    let regions: Vec<(u64, u64)> = match range {
        Some((start, len)) => vec![(start, start + len)],
        None => std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                let (span, perms) = (parts.next()?, parts.next()?);
                let (a, b) = span.split_once('-')?;
                let path = parts.nth(3).unwrap_or("");
                (perms.starts_with("rw") && !path.starts_with("[v"))
                    .then(|| {
                        Some((
                            u64::from_str_radix(a, 16).ok()?,
                            u64::from_str_radix(b, 16).ok()?,
                        ))
                    })
                    .flatten()
            })
            .collect(),
    };
    for (start, end) in regions {
        let mut at = start;
        while at < end {
            let want = usize::try_from((end - at).min(buf.len() as u64)).unwrap();
            buf[..want].fill(0);
            let Ok(got) = mem.read_at(&mut buf[..want], at) else {
                break;
            };
            if got == 0 {
                break;
            }
            // The fill starts 8-aligned in the guest, and guest memory is page-aligned on
            // the host: 8-byte steps see it (and keep the scan fast in a debug build).
            let first = u64::from_ne_bytes(needle[..8].try_into().unwrap());
            let mut i = 0;
            while i + needle.len() <= got {
                let addr = at + i as u64;
                if u64::from_ne_bytes(buf[i..i + 8].try_into().unwrap()) == first
                    && buf[i..i + needle.len()] == *needle
                    && !own.iter().any(|(o, l)| addr >= *o && addr < o + l)
                {
                    return Some(addr);
                }
                i += 8;
            }
            // Overlap by the needle's length, so a match across chunks is seen.
            at += (got.saturating_sub(needle.len()).max(8) & !7) as u64;
        }
    }
    None
}

/// Finished sandboxes' `/tmp` directories are emptied and reused by new sandboxes: what a
/// program leaves there (files, nested directories, symlinks) is gone for the next ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_tmp_directory_starts_empty() {
    let rt = common::runtime();
    let litter = "import os\n\
                  os.makedirs('/tmp/a/b/c')\n\
                  open('/tmp/a/b/c/deep.txt', 'w').write('x' * 1000)\n\
                  open('/tmp/secret.txt', 'w').write('from the previous sandbox')\n\
                  os.symlink('secret.txt', '/tmp/link')\n\
                  print(sorted(os.listdir('/tmp')))";
    for round in 0..8 {
        let out = run_once(&rt, &test_spec(), litter).await;
        assert_eq!(
            out.stdout.text(),
            "['a', 'link', 'secret.txt']\n",
            "round {round}: {:?} {}",
            out.status,
            out.stderr.text()
        );
        // The directory is emptied off the caller's path: let it come back first.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let out = run_once(&rt, &test_spec(), "import os\nprint(os.listdir('/tmp'))").await;
        assert_eq!(out.stdout.text(), "[]\n", "round {round}");
    }
}

/// A guest crash (native stack exhausted by deep recursion in C code) ends that run only:
/// the kernel process and other sandboxes carry on, and `reset` revives the sandbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_guest_leaves_the_kernel_and_other_sandboxes_healthy() {
    let rt = common::runtime();
    let mut bystander = rt.create(&test_spec()).await.unwrap();
    bystander
        .exec(ExecRequest::new("kept = 41"), Arc::new(NoTools))
        .await
        .unwrap();
    let mut sb = rt.create(&test_spec()).await.unwrap();
    let out = sb
        .exec(
            ExecRequest::new(
                "import sys\nsys.setrecursionlimit(10**6)\nx = []\nfor _ in range(200000):\n    x = [x]\nprint(len(repr(x)))",
            ),
            Arc::new(NoTools),
        )
        .await
        .unwrap();
    assert!(
        matches!(
            &out.status,
            ExecStatus::Crashed { .. } | ExecStatus::Exception { .. }
        ),
        "{:?}",
        out.status
    );
    sb.reset().await.unwrap();
    let out = sb
        .exec(ExecRequest::new("print('revived')"), Arc::new(NoTools))
        .await
        .unwrap();
    assert_eq!(out.stdout.text(), "revived\n");
    let out = bystander
        .exec(ExecRequest::new("print(kept + 1)"), Arc::new(NoTools))
        .await
        .unwrap();
    assert_eq!(out.stdout.text(), "42\n");
}

fn uuid_like() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// The standard library outside the snapshot is one directory shared by every sandbox,
/// mounted read-only at `/python`: a program can neither change a module there (which the
/// next sandbox would import), nor add, remove or rename anything; the host's copy is left
/// exactly as it was (WASI's `chmod` is a no-op: the mode is checked on the host).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standard_library_mount_cannot_be_changed() {
    let guest = common::wasm_guest();
    let stdlib = agentkernel_backend_wasm::artifact::stdlib_path(&guest);
    let listing = |dir: &std::path::Path| {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        names
    };
    let module = stdlib.join("email/__init__.py");
    let mode = |p: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(p).unwrap().permissions().mode()
    };
    let (before, email_before, mode_before) = (
        listing(&stdlib),
        std::fs::read(&module).unwrap(),
        mode(&module),
    );
    let code = "import os\n\
        attempts = {\n\
        \x20   'overwrite': lambda: open('/python/email/__init__.py', 'w').write('raise SystemExit'),\n\
        \x20   'append': lambda: open('/python/email/__init__.py', 'a').write('X = 1'),\n\
        \x20   'create': lambda: open('/python/sitecustomize.py', 'w').write('X = 1'),\n\
        \x20   'remove': lambda: os.remove('/python/email/__init__.py'),\n\
        \x20   'rename': lambda: os.rename('/python/email', '/python/email2'),\n\
        \x20   'mkdir': lambda: os.mkdir('/python/new'),\n\
        }\n\
        for name, f in attempts.items():\n\
        \x20   try:\n\
        \x20       f()\n\
        \x20       print(name, 'DONE')\n\
        \x20   except OSError as e:\n\
        \x20       print(name, 'denied')\n\
        try:\n\
        \x20   os.chmod('/python/email/__init__.py', 0o777)\n\
        except OSError:\n\
        \x20   pass\n\
        import email\n\
        print(email.__file__)";
    let out = run_once(&common::runtime(), &test_spec(), code).await;
    let text = out.stdout.text();
    assert!(!text.contains("DONE"), "{text}");
    assert!(text.ends_with("/python/email/__init__.py\n"), "{text}");
    assert_eq!(listing(&stdlib), before);
    assert_eq!(std::fs::read(&module).unwrap(), email_before);
    assert_eq!(mode(&module), mode_before);
}

/// The exec's `OutputSink` gets every chunk the program writes, including those past the
/// capture cap (its contract in kernel-core), while the outcome keeps only the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_output_sink_gets_at_most_the_limit_and_the_run_stops_there() {
    let seen: Arc<std::sync::Mutex<Vec<u8>>> = Arc::default();
    let sink: agentkernel_core::OutputSink = {
        let seen = seen.clone();
        Arc::new(move |kind, bytes: &[u8]| {
            if kind == agentkernel_core::StreamKind::Stdout {
                seen.lock().unwrap().extend_from_slice(bytes);
            }
        })
    };
    let spec = agentkernel_core::conformance::limited(|l| l.output_bytes = 16);
    let rt = common::runtime();
    let mut sb = rt.create(&spec).await.unwrap();
    let out = sb
        .exec(
            ExecRequest::new("for i in range(100):\n    print(f'line {i:03}')").with_output(sink),
            Arc::new(NoTools),
        )
        .await
        .unwrap();
    let expected: String = (0..100).map(|i| format!("line {i:03}\n")).collect();
    assert_eq!(out.stdout.bytes, expected.as_bytes()[..16]);
    assert!(out.stdout.truncated);
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        &expected.as_bytes()[..16],
        "the sink got more (or less) than the output limit"
    );
    assert_eq!(
        out.status,
        agentkernel_core::ExecStatus::Killed {
            limit: agentkernel_core::LimitKind::Output
        },
        "a run whose live output passes the limit ends there"
    );
    sb.shutdown().await.unwrap();
}

/// Every sandbox `/tmp` directory of this process on the host, with the directory holding
/// it.
fn sandbox_tmp_dirs() -> Vec<(std::path::PathBuf, std::path::PathBuf)> {
    let parent_prefix = format!("agentkernel-wasm-{}-", std::process::id());
    let mut found = Vec::new();
    for parent in std::fs::read_dir(std::env::temp_dir()).unwrap() {
        let parent = parent.unwrap();
        if !parent
            .file_name()
            .to_string_lossy()
            .starts_with(&parent_prefix)
        {
            continue;
        }
        for tmp in std::fs::read_dir(parent.path()).unwrap().flatten() {
            found.push((parent.path(), tmp.path()));
        }
    }
    found
}

/// Where the symlink `link` points, resolved lexically (its directory joined with its
/// target, `..` taken off): what the host, or a program outside the sandbox following the
/// link, would reach when no name on the way is itself a link.
fn lexical_target(link: &std::path::Path) -> Option<std::path::PathBuf> {
    use std::path::Component;
    let target = std::fs::read_link(link).ok()?;
    let mut out = std::path::PathBuf::new();
    for c in link.parent().unwrap().join(target).components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    Some(out)
}

/// Every symlink under `root` on the host, with where it points (lexically and, when it
/// resolves, for real), when that is outside `root`.
fn links_leaving(root: &std::path::Path) -> Vec<String> {
    // Other tests' sandboxes may be emptying their /tmp meanwhile: what vanishes is skipped.
    let Ok(root) = std::fs::canonicalize(root) else {
        return Vec::new();
    };
    let mut leaving = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() {
                stack.push(e.path());
            } else if kind.is_symlink() {
                let Some(lexical) = lexical_target(&e.path()) else {
                    continue;
                };
                let real = std::fs::canonicalize(e.path()).ok();
                if !lexical.starts_with(&root)
                    || real.as_ref().is_some_and(|r| !r.starts_with(&root))
                {
                    leaving.push(format!(
                        "{} -> {:?} (lexically {}, really {real:?})",
                        e.path().display(),
                        std::fs::read_link(e.path()).ok(),
                        lexical.display()
                    ));
                }
            }
        }
    }
    leaving
}

/// A guest cannot leave a symlink in the workspace (or its `/tmp`) that points outside it:
/// absolute targets and targets with `..` are refused with `PermissionError`, so neither a
/// link made deep and renamed to the top, nor a link through a `.` link, climbs out. Links
/// whose targets descend are made. Judged on the host: every symlink in the workspace and
/// the sandbox's `/tmp` resolves inside it (lexically and for real).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_made_by_the_guest_never_leave_their_preopen() {
    let ws = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(ws.path().join("d/e")).unwrap();
    let spec = SandboxSpec {
        workspace: Some(ws.path().to_path_buf()),
        ..test_spec()
    };
    let code = "import os\n\
        def link(target, path):\n\
        \x20   try:\n\
        \x20       os.symlink(target, path)\n\
        \x20       print('made', path)\n\
        \x20   except OSError as e:\n\
        \x20       print('refused', path, type(e).__name__)\n\
        link('/etc/passwd', '/workspace/abs')\n\
        link('../outside', '/workspace/up')\n\
        link('d/../../outside', '/workspace/up2')\n\
        link('../../../outside', '/workspace/d/e/up3')\n\
        link('../../x', '/workspace/d/e/deep')\n\
        link('.', '/workspace/dot')\n\
        link('dot/..', '/workspace/via-dot')\n\
        link('../x', '/tmp/up')\n\
        link('d/e', '/workspace/fine')\n\
        link('./e', '/workspace/d/fine2')\n\
        for src, dst in [('/workspace/d/e/deep', '/workspace/deep'), ('/workspace/d', '/workspace/moved')]:\n\
        \x20   try:\n\
        \x20       os.rename(src, dst)\n\
        \x20   except OSError as e:\n\
        \x20       print('rename', type(e).__name__)\n\
        print(sorted(os.listdir('/workspace')))";
    let rt = common::runtime();
    let mut sb = rt.create(&spec).await.unwrap();
    let out = sb
        .exec(ExecRequest::new(code), Arc::new(NoTools))
        .await
        .unwrap();
    let text = out.stdout.text();
    // On the host, while the sandbox (and its /tmp) is alive.
    let mut leaving = links_leaving(ws.path());
    for (_, tmp) in sandbox_tmp_dirs() {
        leaving.extend(links_leaving(&tmp));
    }
    assert!(
        leaving.is_empty(),
        "symlinks leave their preopen: {leaving:#?}\n{text}"
    );
    for refused in [
        "/workspace/abs",
        "/workspace/up",
        "/workspace/up2",
        "/workspace/d/e/up3",
        "/workspace/d/e/deep",
        "/workspace/via-dot",
        "/tmp/up",
    ] {
        assert!(
            text.contains(&format!("refused {refused} PermissionError\n")),
            "{refused}: {text}"
        );
    }
    for made in [
        "/workspace/dot",
        "/workspace/fine",
        "/workspace/moved/fine2",
    ] {
        let made = made.replace("/workspace", &ws.path().display().to_string());
        assert!(
            std::fs::symlink_metadata(&made).is_ok_and(|m| m.file_type().is_symlink()),
            "{made} was not made: {text}"
        );
    }
    sb.shutdown().await.unwrap();
}

/// Another writer of the workspace (any host process of the user) swapping a regular file
/// and a FIFO under one name while the guest opens that name in a loop cannot make an open
/// wait for the FIFO's writer: the host opens without blocking and judges the type on the
/// opened descriptor. The run ends by its time limit (or earlier), checked from a host
/// thread that does not share the sandbox's runtime (a blocked open would stall it).
#[test]
fn a_file_swapped_for_a_fifo_never_blocks_an_open_past_the_time_limit() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let ws = tempfile::tempdir().unwrap();
    let target = ws.path().join("target");
    std::fs::write(&target, "plain").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let swapper = {
        let (dir, stop, swaps) = (ws.path().to_path_buf(), stop.clone(), swaps.clone());
        std::thread::spawn(move || {
            let (fifo, file) = (dir.join(".fifo"), dir.join(".file"));
            while !stop.load(Ordering::Relaxed) {
                let _ = std::fs::remove_file(&fifo);
                nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
                    .unwrap();
                std::fs::rename(&fifo, dir.join("target")).unwrap();
                std::fs::write(&file, "plain").unwrap();
                std::fs::rename(&file, dir.join("target")).unwrap();
                swaps.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let timeout = std::time::Duration::from_secs(5);
    let code = "opened = refused = 0\n\
        for i in range(1_000_000):\n\
        \x20   try:\n\
        \x20       with open('/workspace/target') as f:\n\
        \x20           f.read()\n\
        \x20       opened += 1\n\
        \x20   except OSError:\n\
        \x20       refused += 1\n\
        print(opened, refused)";
    let spec = SandboxSpec {
        workspace: Some(ws.path().to_path_buf()),
        ..test_spec()
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let wasm = common::runtime();
            let mut sb = wasm.create(&spec).await.unwrap();
            let req = ExecRequest::new(code).with_timeout(timeout);
            let out = sb.exec(req, Arc::new(NoTools)).await.unwrap();
            let _ = tx.send(out);
            sb.shutdown().await.unwrap();
        });
    });
    // Generous: sandbox creation (the guest may be compiled on first use) plus the limit.
    let out = rx.recv_timeout(timeout + std::time::Duration::from_secs(60));
    stop.store(true, Ordering::Relaxed);
    let out = out.expect("the run ended by its time limit: no open waited on the FIFO");
    swapper.join().unwrap();
    assert!(swaps.load(Ordering::Relaxed) > 0);
    assert!(
        matches!(
            out.status,
            ExecStatus::Ok
                | ExecStatus::Killed {
                    limit: agentkernel_core::LimitKind::WallTime
                }
        ),
        "{out:?}"
    );
}

/// Mode bits of `path` (without following a symlink).
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// A sandbox's `/tmp` is this user's alone (the directory and its parent `0700`, files
/// `0600`: nothing in it is reachable by other users of the host while it runs), and what a
/// program left there is gone by the time its sandbox's shutdown returns (not only later,
/// on a thread a process exiting at once would never run). Checked on the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandboxs_tmp_is_private_and_empty_once_shut_down() {
    let marker = format!("marker-{}", uuid_like());
    let code = format!(
        "import os\n\
         open('/tmp/{marker}', 'w').write('secret')\n\
         os.mkdir('/tmp/many')\n\
         for i in range(500):\n\
         \x20   open(f'/tmp/many/f{{i}}', 'w').write('x' * 100)\n\
         print('left')"
    );
    let rt = common::runtime();
    let mut sb = rt.create(&test_spec()).await.unwrap();
    let out = sb
        .exec(ExecRequest::new(code), Arc::new(NoTools))
        .await
        .unwrap();
    assert_eq!(out.stdout.text(), "left\n", "{out:?}");
    // Find the sandbox's /tmp on the host by the file it left.
    let found = sandbox_tmp_dirs()
        .into_iter()
        .find(|(_, tmp)| tmp.join(&marker).exists());
    let (parent, tmp) = found.expect("the sandbox's /tmp holds the marker");
    for (what, path) in [
        ("the /tmp parent", parent.clone()),
        ("the sandbox's /tmp", tmp.clone()),
        ("a file", tmp.join(&marker)),
        ("a file", tmp.join("many/f0")),
    ] {
        let m = mode(&path);
        assert_eq!(m & 0o077, 0, "{what} {} is mode {m:o}", path.display());
    }
    sb.shutdown().await.unwrap();
    // At once, without waiting for anything.
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "the shut-down sandbox's /tmp still holds {} entries",
        left.len()
    );
}

/// The wall-time limit's first layer: the epoch deadline interrupts guest code. A busy loop
/// ends at its limit as `Killed{WallTime}` by the epoch's trap, not by the exec's own timeout
/// (which would say on stderr that the run waited for a host call).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_epoch_deadline_interrupts_guest_code() {
    let wasm = common::runtime();
    let mut sb = wasm.create(&test_spec()).await.expect("create");
    let req = ExecRequest::new("print('looping', flush=True)\nwhile True:\n    pass")
        .with_timeout(std::time::Duration::from_secs(1));
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        sb.exec(req, Arc::new(NoTools)),
    )
    .await
    .expect("the busy loop ended")
    .expect("a limit kill is an outcome");
    assert_eq!(
        out.status,
        ExecStatus::Killed {
            limit: agentkernel_core::LimitKind::WallTime
        }
    );
    assert_eq!(out.stdout.text(), "looping\n");
    assert!(
        !out.stderr.text().contains("waited for a host call"),
        "the exec's timeout, not the epoch deadline, ended a busy loop: {}",
        out.stderr.text()
    );
    sb.shutdown().await.expect("shutdown");
}

/// The wall-time limit's second layer: a run waiting in a host call (a tool that never
/// answers), which the epoch cannot interrupt, is ended by the exec's own timeout at its
/// limit, and stderr says it waited for a host call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exec_timeout_ends_a_wait_in_a_host_call() {
    let tools: Arc<dyn agentkernel_core::ToolHost> =
        Arc::new(agentkernel_core::FnTools::new().with(
            "hang.forever",
            "Never answers.",
            serde_json::json!({"type": "object"}),
            |_args: serde_json::Value| async {
                tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                Ok(serde_json::json!(null))
            },
        ));
    let wasm = common::runtime();
    let mut sb = wasm.create(&test_spec()).await.expect("create");
    let req = ExecRequest::new(
        "import _agentkernel as ak\nprint('calling', flush=True)\nak.call_tool('hang.forever')",
    )
    .with_timeout(std::time::Duration::from_secs(1));
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), sb.exec(req, tools))
        .await
        .expect("the run waiting for the tool was ended at its limit")
        .expect("a limit kill is an outcome");
    assert_eq!(
        out.status,
        ExecStatus::Killed {
            limit: agentkernel_core::LimitKind::WallTime
        }
    );
    assert_eq!(out.stdout.text(), "calling\n");
    assert!(
        out.stderr.text().contains("waited for a host call"),
        "{}",
        out.stderr.text()
    );
    sb.shutdown().await.expect("shutdown");
}
