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

/// Sandboxes reuse wasmtime's memory slots, reset to the snapshot when given back: a
/// program that marks objects all over the snapshot's heap (every module's namespace, a
/// big new allocation) leaves nothing for the sandboxes that reuse its slot. Sequential
/// sandboxes of one process are handed the most recently returned slot of their thread's
/// shard, so most checks land in a slot a marking program just used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_memory_slot_keeps_nothing_of_the_previous_sandbox() {
    let rt = common::runtime();
    let mark = "import sys\n\
                for m in list(sys.modules.values()):\n\
                \x20   try: m.__dict__['ak_mark'] = 1\n\
                \x20   except Exception: pass\n\
                sys.ak_big = bytearray(b'AK' * 4_000_000)\n\
                print(sum(hasattr(m, 'ak_mark') for m in list(sys.modules.values())) > 100)";
    let check = "import sys\n\
                 print(sum(hasattr(m, 'ak_mark') for m in list(sys.modules.values())), hasattr(sys, 'ak_big'))";
    for round in 0..8 {
        let out = run_once(&rt, &test_spec(), mark).await;
        assert_eq!(
            out.stdout.text(),
            "True\n",
            "round {round}: {:?}",
            out.status
        );
        // The slot is reset off the caller's path: let it come back before the next start.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let out = run_once(&rt, &test_spec(), check).await;
        assert_eq!(
            out.stdout.text(),
            "0 False\n",
            "round {round}: a fresh sandbox saw the previous one's objects"
        );
    }
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
async fn the_output_sink_gets_every_byte_past_the_cap() {
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
    assert_eq!(out.stdout.total_bytes, expected.len() as u64);
    assert_eq!(
        String::from_utf8_lossy(&seen.lock().unwrap()),
        expected,
        "the sink saw only part of the output"
    );
    sb.shutdown().await.unwrap();
}
