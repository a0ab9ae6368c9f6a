//! Each limit of `Limits` holds (or, where the capabilities lack it, is refused).

use super::*;

/// How long after its deadline a limit may take to land before a check calls it broken.
/// Generous (a loaded 2-core machine, a VM under emulation), but finite: a check whose
/// program never ends without the limit waits this long, then fails instead of hanging.
pub const LIMIT_LANDS_WITHIN: Duration = Duration::from_secs(30);

/// An infinite loop is killed at the wall-time limit; output printed before is kept; the
/// sandbox is then lost until `reset`.
pub async fn wall_time_limit_kills(rt: &dyn Runtime) {
    let mut sb = rt.create(&test_spec()).await.expect("create");
    let started = std::time::Instant::now();
    let limit = Duration::from_secs(1);
    // Without its limit this program never ends: the wait is bounded so that a limit that
    // does not hold fails this check instead of hanging it.
    let out = tokio::time::timeout(
        limit + LIMIT_LANDS_WITHIN,
        sb.exec(
            ExecRequest::new("print('started', flush=True)\nwhile True:\n    pass")
                .with_timeout(limit),
            Arc::new(NoTools),
        ),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the wall-time limit did not hold: a program with a {limit:?} limit still ran {:?} later",
            LIMIT_LANDS_WITHIN
        )
    })
    .expect("a timeout is an outcome");
    assert_eq!(
        out.status,
        ExecStatus::Killed {
            limit: LimitKind::WallTime
        }
    );
    assert_eq!(out.stdout.text(), "started\n");
    assert!(started.elapsed() >= Duration::from_secs(1));
    match sb
        .exec(ExecRequest::new("print(1)"), Arc::new(NoTools))
        .await
    {
        Err(Error::SandboxLost { .. }) => {}
        other => panic!("a killed sandbox must report SandboxLost, got {other:?}"),
    }
    if rt.capabilities().reset {
        sb.reset().await.expect("reset revives a killed sandbox");
        let out = sb
            .exec(ExecRequest::new("print(1)"), Arc::new(NoTools))
            .await
            .expect("exec");
        assert_eq!(out.stdout.text(), "1\n");
    }
    sb.shutdown().await.expect("shutdown");
}

/// A CPU-bound loop is killed at the CPU-time limit (or Unsupported).
pub async fn cpu_time_limit_kills(rt: &dyn Runtime) {
    let spec = limited(|l| l.cpu_time = Some(Duration::from_secs(1)));
    if !rt.capabilities().limits.contains(LimitKind::CpuTime) {
        assert!(matches!(
            rt.create(&spec).await,
            Err(Error::Unsupported { .. })
        ));
        return;
    }
    let out = run_once(rt, &spec, "while True:\n    pass").await;
    assert_eq!(
        out.status,
        ExecStatus::Killed {
            limit: LimitKind::CpuTime
        }
    );
}

/// A huge allocation ends the run as a memory kill (`Killed { limit: Memory }`) on every
/// backend, whether the kernel killed the sandbox or the interpreter raised `MemoryError`
/// (which the program did not catch); a `MemoryError` the program raises itself stays an
/// exception.
pub async fn memory_limit_holds(rt: &dyn Runtime) {
    let spec = limited(|l| l.memory_bytes = Some(256 << 20));
    for code in [
        "s = 'a' * (3 * 2**29)",
        "b = bytearray(3 * 2**29)",
        "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 2**20))",
        "chunks = []\nwhile True:\n    chunks.append('x' * (16 * 2**20) + str(len(chunks)))",
    ] {
        let out = run_once(rt, &spec, code).await;
        if refused_by_subset(rt, "memory_limit_holds", &out) {
            continue;
        }
        // One meaning on every backend: the memory limit stopped it.
        assert_eq!(
            out.status,
            ExecStatus::Killed {
                limit: LimitKind::Memory
            },
            "{code:?}: {}",
            out.stderr.text()
        );
    }
    // A MemoryError the program raises itself is its exception, not a memory kill.
    let out = run_once(rt, &spec, "raise MemoryError('not really')").await;
    if !refused_by_subset(rt, "memory_limit_holds", &out) {
        assert!(
            matches!(&out.status, ExecStatus::Exception { type_name, .. } if type_name == "MemoryError"),
            "{:?}",
            out.status
        );
    }
}

/// Output past the cap is dropped, counted, and flagged.
pub async fn output_limit_truncates(rt: &dyn Runtime) {
    let spec = limited(|l| l.output_bytes = 1000);
    let out = run_once(
        rt,
        &spec,
        "import sys\nprint('x' * 5000)\nprint('y' * 3000, file=sys.stderr)",
    )
    .await;
    if refused_by_subset(rt, "output_limit_truncates", &out) {
        // No stderr: stdout alone must still be capped.
        assert_eq!(out.stdout.bytes.len(), 1000);
        assert!(out.stdout.truncated);
        return;
    }
    assert_ok(&out);
    assert_eq!(out.stdout.bytes.len(), 1000);
    assert!(out.stdout.truncated);
    assert_eq!(out.stdout.total_bytes, 5001);
    assert_eq!(out.stderr.bytes.len(), 1000);
    assert!(out.stderr.truncated);
}

/// No more than `processes` processes can exist at once (or no subprocess at all).
pub async fn process_limit_holds(rt: &dyn Runtime) {
    let spec = limited(|l| l.processes = Some(8));
    let code = r#"
import os, time
started = 0
try:
    for _ in range(50):
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        started += 1
except OSError as e:
    print("refused", type(e).__name__)
print("started", started)
"#;
    let out = run_once(rt, &spec, code).await;
    if !rt.capabilities().subprocess {
        assert!(
            !matches!(out.status, ExecStatus::Ok),
            "fork must fail without subprocess support"
        );
        return;
    }
    assert_ok(&out);
    let text = out.stdout.text();
    assert!(text.contains("refused"), "fork was never refused: {text}");
    let started: u32 = text
        .lines()
        .find_map(|l| l.strip_prefix("started "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count in {text:?}"));
    assert!(
        started < 8,
        "{started} children started under a limit of 8 processes"
    );
}

/// Writing a file larger than `file_size_bytes` fails (`EFBIG`, or a kill naming the limit).
pub async fn file_size_limit_holds(rt: &dyn Runtime) {
    let spec = limited(|l| l.file_size_bytes = Some(1 << 20));
    let code = "import errno\ntry:\n    with open('/tmp/big', 'wb') as f:\n        f.write(b'x' * (2 << 20))\n    print('wrote')\nexcept OSError as e:\n    print('refused', errno.errorcode.get(e.errno))";
    let out = run_once(rt, &spec, code).await;
    match &out.status {
        ExecStatus::Ok => assert_eq!(out.stdout.text(), "refused EFBIG\n"),
        ExecStatus::Killed {
            limit: LimitKind::FileSize,
        } => {}
        _ if refused_by_subset(rt, "file_size_limit_holds", &out) => {
            subset_write_refused(rt, &spec, "/tmp/big", 2).await
        }
        other => panic!("expected EFBIG or a file-size kill, got {other:?}"),
    }
}

/// For a subset interpreter without `errno`: writing `mib` MiB to `path` must fail with an
/// `OSError` (or a limit kill).
async fn subset_write_refused(rt: &dyn Runtime, spec: &SandboxSpec, path: &str, mib: u32) {
    let code = format!(
        "from pathlib import Path\ntry:\n    Path('{path}').write_bytes(b'x' * ({mib} << 20))\n    print('wrote')\nexcept OSError as e:\n    print('refused', type(e).__name__)"
    );
    let out = run_once(rt, spec, &code).await;
    match &out.status {
        ExecStatus::Ok => assert!(
            out.stdout.text().starts_with("refused "),
            "{}",
            out.stdout.text()
        ),
        ExecStatus::Killed {
            limit: LimitKind::FileSize | LimitKind::Disk,
        } => {}
        other => panic!("expected a refused write or a limit kill, got {other:?}"),
    }
}

/// `/tmp` is private and capped at `tmp_bytes` (`ENOSPC`, or a kill naming the disk limit).
pub async fn tmp_is_capped(rt: &dyn Runtime) {
    let spec = limited(|l| l.tmp_bytes = 4 << 20);
    let code = "import errno\ntry:\n    with open('/tmp/fill', 'wb') as f:\n        for _ in range(16):\n            f.write(b'x' * (1 << 20))\n            f.flush()\n    print('wrote')\nexcept OSError as e:\n    print('refused', errno.errorcode.get(e.errno))";
    let out = run_once(rt, &spec, code).await;
    match &out.status {
        ExecStatus::Ok => assert_eq!(out.stdout.text(), "refused ENOSPC\n"),
        ExecStatus::Killed {
            limit: LimitKind::Disk,
        } => {}
        _ if refused_by_subset(rt, "tmp_is_capped", &out) => {
            subset_write_refused(rt, &spec, "/tmp/fill", 16).await
        }
        other => panic!("expected ENOSPC or a disk kill, got {other:?}"),
    }
}
