//! Attempts to exhaust the kernel's own resources (memory, file descriptors, disk and inodes)
//! from inside a wasm guest, judged from the host side (SECURITY.md, "Backend wasm").
//!
//! These tests measure the test process itself (`/proc/self/status`, `/proc/self/fd`), so
//! they run one at a time: each takes [`SERIAL`] first.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::sync::Arc;

use agentkernel_core::conformance::test_spec;
use agentkernel_core::{ExecRequest, NoTools, Runtime, Sandbox};

/// One measuring test at a time in this process.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A `/proc/self/status` field, in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Resets this process's peak resident size (`VmHWM`) to its current one.
fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
}

async fn exec(sb: &mut Box<dyn Sandbox>, code: &str) -> agentkernel_core::ExecOutcome {
    sb.exec(ExecRequest::new(code), Arc::new(NoTools))
        .await
        .unwrap()
}

/// A guest passing 16 MiB of `[0,0,…]` JSON to `host-call` (with or without tools) is
/// refused before the host parses it: parsing would cost the host 16–30× the bytes, outside
/// the guest's memory limit. The host's peak resident size grows by about the one copy the
/// call's argument takes, not by the parse (measured on the host: `VmHWM`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_tool_call_argument_is_refused_before_the_host_parses_it() {
    let _serial = SERIAL.lock().await;
    let rt = common::runtime();
    let mut sb = rt.create(&test_spec()).await.unwrap();
    // The argument is built in one run, so the guest's own memory has grown before the
    // measured run starts.
    let out = exec(&mut sb, "s = '[' + '0,' * (8 << 20) + '0]'\nprint(len(s))").await;
    assert_eq!(
        out.stdout.text(),
        format!("{}\n", (16 << 20) + 3),
        "{out:?}"
    );
    reset_peak_rss();
    let before = status_kib("VmRSS:");
    let out = exec(
        &mut sb,
        "import wit_world\n\
         from componentize_py_types import Err\n\
         try:\n\
         \x20   wit_world.host_call('anything', s)\n\
         \x20   print('accepted')\n\
         except Err as e:\n\
         \x20   print(e.value.kind)",
    )
    .await;
    let growth_mib = status_kib("VmHWM:").saturating_sub(before) >> 10;
    assert_eq!(out.stdout.text(), "limit_exceeded\n", "{out:?}");
    // One copy of the argument is 16 MiB; parsing it grew the peak by ~590 MiB.
    assert!(
        growth_mib < 64,
        "the host's peak memory grew by {growth_mib} MiB for a 16 MiB tool call"
    );
    // Through the tools module too: a `ToolLimitError`, and the sandbox carries on.
    let out = exec(
        &mut sb,
        "import _agentkernel\n\
         try:\n\
         \x20   _agentkernel.call_tool('anything', {'x': 'y' * (2 << 20)})\n\
         except _agentkernel.ToolLimitError as e:\n\
         \x20   print('ToolLimitError', 'limit' in str(e))\n\
         print('alive')",
    )
    .await;
    assert_eq!(out.stdout.text(), "ToolLimitError True\nalive\n", "{out:?}");
    assert_eq!(out.tool_calls.len(), 1);
    assert!(!out.tool_calls[0].ok);
    sb.shutdown().await.unwrap();
}

/// Host file descriptors this process has open now.
fn host_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Tools with one tool, `host_fds`, answering the host's open file descriptor count: the
/// guest calls it while it holds its files open.
fn fd_probe() -> Arc<agentkernel_core::FnTools> {
    Arc::new(agentkernel_core::FnTools::new().with(
        "host_fds",
        "the host's open file descriptors",
        serde_json::json!({"type": "object"}),
        |_| async { Ok(serde_json::json!(host_fds())) },
    ))
}

/// Opens files in `/tmp` until refused, keeps them open, and prints how many it opened,
/// the refusal and the host's descriptor count meanwhile.
const OPEN_UNTIL_REFUSED: &str = "import errno, _agentkernel\n\
    held = []\n\
    try:\n\
    \x20   for i in range(100000):\n\
    \x20       held.append(open(f'/tmp/f{i % 8}', 'w'))\n\
    \x20   print('never refused')\n\
    except OSError as e:\n\
    \x20   print(len(held), type(e).__name__, errno.errorcode.get(e.errno))\n\
    print(_agentkernel.call_tool('host_fds'))";

/// A guest opening files until refused holds at most its cap of host descriptors, gets an
/// `OSError`, and leaves the kernel healthy: another sandbox opens files and runs, and once
/// the guest is gone the host's descriptor count is back where it was (`/proc/self/fd`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_opening_files_until_refused_holds_a_bounded_number_of_host_fds() {
    let _serial = SERIAL.lock().await;
    let rt = common::runtime();
    // Warm up (the compiled guest, the engine, a first sandbox) before counting.
    let mut bystander = rt.create(&test_spec()).await.unwrap();
    exec(&mut bystander, "print(1)").await;
    let before = host_fds();
    let mut sb = rt.create(&test_spec()).await.unwrap();
    let out = sb
        .exec(ExecRequest::new(OPEN_UNTIL_REFUSED), fd_probe())
        .await
        .unwrap();
    let text = out.stdout.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{out:?}");
    let (opened, refusal) = lines[0].split_once(' ').unwrap();
    let opened: usize = opened.parse().unwrap();
    let during: usize = lines[1].parse().unwrap();
    let max = agentkernel_backend_wasm::quota::MAX_OPEN_FILES;
    assert_eq!(refusal, "OSError ENOMEM", "{out:?}");
    assert!(
        opened <= max,
        "the guest opened {opened} files, over its cap of {max}"
    );
    assert!(
        during <= before + max + 8,
        "the host held {during} descriptors while the guest held its files ({before} before)"
    );
    // Another sandbox of the same kernel still opens files and runs.
    let out = exec(
        &mut bystander,
        "fs = [open(f'/tmp/g{i}', 'w') for i in range(16)]\nprint(len(fs))",
    )
    .await;
    assert_eq!(out.stdout.text(), "16\n", "{out:?}");
    sb.shutdown().await.unwrap();
    bystander.shutdown().await.unwrap();
    // Sandboxes are dropped off the caller's path: wait for their descriptors to close.
    let mut after = host_fds();
    for _ in 0..100 {
        if after <= before + 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        after = host_fds();
    }
    assert!(
        after <= before + 4,
        "the host holds {after} descriptors after the guests are gone ({before} before)"
    );
}

/// Files, directories and symlinks (not only the bytes in files) under `dir` on the host.
fn count_entries(dir: &std::path::Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            n += 1;
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    n
}

/// Creates empty files, directories and symlinks in `dir` until refused, and prints how
/// many it made and the error.
fn create_until_refused(dir: &str) -> String {
    format!(
        "import os, errno\n\
         n = 0\n\
         try:\n\
         \x20   for i in range(100000):\n\
         \x20       k = i % 3\n\
         \x20       if k == 0: open(f'{dir}/e{{i}}', 'w').close()\n\
         \x20       elif k == 1: os.mkdir(f'{dir}/d{{i}}')\n\
         \x20       else: os.symlink('e0', f'{dir}/l{{i}}')\n\
         \x20       n += 1\n\
         \x20   print('never refused')\n\
         except OSError as e:\n\
         \x20   print(n, errno.errorcode.get(e.errno))"
    )
}

/// The `/tmp` cap bounds inodes, not only bytes: empty files, directories and symlinks are
/// charged a block each, so a 1 MiB `/tmp` takes at most 256 of them (`ENOSPC` after);
/// counted on the host, in this process's directory of sandbox `/tmp`s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tmp_entries_are_bounded_not_only_tmp_bytes() {
    let _serial = SERIAL.lock().await;
    let rt = common::runtime();
    let spec = agentkernel_core::conformance::limited(|l| l.tmp_bytes = 1 << 20);
    let mut sb = rt.create(&spec).await.unwrap();
    let out = exec(&mut sb, &create_until_refused("/tmp")).await;
    let text = out.stdout.text();
    let (made, code) = text.trim().split_once(' ').unwrap();
    let made: usize = made.parse().unwrap();
    assert_eq!(code, "ENOSPC", "{out:?}");
    let cap = (1 << 20) / agentkernel_backend_wasm::quota::ENTRY_BYTES as usize;
    assert!(made <= cap, "the guest made {made} entries in a 1 MiB /tmp");
    // On the host: every sandbox /tmp of this process (only this one holds anything).
    let prefix = format!("agentkernel-wasm-{}-", std::process::id());
    let on_host: usize = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| count_entries(&e.path()))
        .sum();
    assert!(
        on_host <= cap + 64,
        "the host's sandbox /tmp directories hold {on_host} entries"
    );
    sb.shutdown().await.unwrap();
}

/// One run cannot fill the host's inodes through the workspace: past
/// `HOST_DIR_ENTRIES_PER_RUN` new files, directories and symlinks it gets `EDQUOT`
/// (host listing of the workspace), and the next run may create again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_run_creates_a_bounded_number_of_workspace_entries() {
    let _serial = SERIAL.lock().await;
    let ws = tempfile::tempdir().unwrap();
    let spec = agentkernel_core::SandboxSpec {
        workspace: Some(ws.path().to_path_buf()),
        ..test_spec()
    };
    let rt = common::runtime();
    let mut sb = rt.create(&spec).await.unwrap();
    let out = exec(&mut sb, &create_until_refused("/workspace")).await;
    let text = out.stdout.text();
    let cap = agentkernel_backend_wasm::quota::HOST_DIR_ENTRIES_PER_RUN as usize;
    assert_eq!(text, format!("{cap} EDQUOT\n"), "{out:?}");
    assert_eq!(count_entries(ws.path()), cap);
    let out = exec(
        &mut sb,
        "open('/workspace/next-run', 'w').close()\nprint('ok')",
    )
    .await;
    assert_eq!(out.stdout.text(), "ok\n", "{out:?}");
    sb.shutdown().await.unwrap();
}

/// One run cannot fill the host's disk through the workspace either: its files may grow by
/// `HOST_DIR_FILE_SIZES_PER_RUN` × the file-size limit in total; the write past it stops
/// the run naming the disk limit, and the host's workspace holds no more than the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_run_writes_a_bounded_number_of_workspace_bytes() {
    let _serial = SERIAL.lock().await;
    let ws = tempfile::tempdir().unwrap();
    let mut spec = agentkernel_core::conformance::limited(|l| l.file_size_bytes = Some(1 << 20));
    spec.workspace = Some(ws.path().to_path_buf());
    let rt = common::runtime();
    let mut sb = rt.create(&spec).await.unwrap();
    let out = exec(
        &mut sb,
        "for i in range(64):\n    with open(f'/workspace/f{i}', 'wb') as f:\n        f.write(b'x' * (1 << 20))\nprint('wrote all')",
    )
    .await;
    assert_eq!(
        out.status,
        agentkernel_core::ExecStatus::Killed {
            limit: agentkernel_core::LimitKind::Disk
        },
        "{out:?}"
    );
    let total: u64 = std::fs::read_dir(ws.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let cap = agentkernel_backend_wasm::quota::HOST_DIR_FILE_SIZES_PER_RUN << 20;
    assert!(total <= cap, "one run wrote {total} bytes to the workspace");
    sb.shutdown().await.unwrap();
}

/// Many open directory listings cannot make the kernel hold unbounded memory: the host
/// reads a whole directory when a listing starts and keeps it until the guest drops the
/// listing, so 1,500 `os.scandir` iterators over a 2,000-entry `/tmp` of long names took the
/// kernel to 880 MB. Here the guest holds `os.scandir` iterators over a workspace of 20,000
/// long names (some 7 MB on the host per listing) until refused: the listings a sandbox
/// holds are capped (`LISTING_BYTES`; `OSError`), so the host's resident size (`VmRSS` while
/// they are held, `VmHWM`) grows by less than 200 MiB. Without the cap only the open-file
/// cap (64, one descriptor per iterator) stopped it, some 400 MiB later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_directory_listings_hold_a_bounded_amount_of_host_memory() {
    let _serial = SERIAL.lock().await;
    let ws = tempfile::tempdir().unwrap();
    for i in 0..20_000 {
        std::fs::File::create(ws.path().join(format!("{i:05}{}", "n".repeat(245)))).unwrap();
    }
    let rt = common::runtime();
    let mut spec = agentkernel_core::conformance::limited(|l| l.memory_bytes = Some(64 << 20));
    spec.workspace = Some(ws.path().to_path_buf());
    let mut sb = rt.create(&spec).await.unwrap();
    reset_peak_rss();
    let before = status_kib("VmRSS:");
    let out = sb
        .exec(
            ExecRequest::new(
                "import os, errno, _agentkernel\n\
                 held = []\n\
                 try:\n\
                 \x20   for i in range(1500):\n\
                 \x20       it = os.scandir('/workspace')\n\
                 \x20       next(it)\n\
                 \x20       held.append(it)\n\
                 except OSError as e:\n\
                 \x20   print('refused', errno.errorcode.get(e.errno))\n\
                 print(len(held), _agentkernel.call_tool('rss_kib'))",
            ),
            rss_probe(),
        )
        .await
        .unwrap();
    let peak_mib = status_kib("VmHWM:").saturating_sub(before) >> 10;
    let text = out.stdout.text();
    let during: u64 = text
        .split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out:?}"));
    let growth_mib = during.saturating_sub(before) >> 10;
    println!("listings: {text}host growth {growth_mib} MiB, peak {peak_mib} MiB");
    assert!(text.starts_with("refused "), "{out:?}");
    assert!(
        growth_mib < 200 && peak_mib < 200,
        "the host grew by {growth_mib} MiB (peak {peak_mib} MiB) for the guest's listings: {text}"
    );
    sb.shutdown().await.unwrap();
}

/// Tools with one tool, `rss_kib`, answering the host's resident size in KiB.
fn rss_probe() -> Arc<agentkernel_core::FnTools> {
    Arc::new(agentkernel_core::FnTools::new().with(
        "rss_kib",
        "the host's resident memory in KiB",
        serde_json::json!({"type": "object"}),
        |_| async { Ok(serde_json::json!(status_kib("VmRSS:"))) },
    ))
}

/// Bytes this process holds in its sandboxes' `/tmp` directories on the host: the files
/// there, plus files deleted from there that are still open (`/proc/self/fd`).
fn host_tmp_bytes() -> u64 {
    use std::os::unix::fs::MetadataExt;
    let prefix = std::env::temp_dir()
        .join(format!("agentkernel-wasm-{}-", std::process::id()))
        .display()
        .to_string();
    let mut total = 0;
    for fd in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        let target = target.display().to_string();
        if target.starts_with(&prefix)
            && target.ends_with(" (deleted)")
            && let Ok(m) = std::fs::metadata(fd.path())
        {
            total += m.blocks() * 512;
        }
    }
    let mut stack: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.path().display().to_string().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.blocks() * 512;
            }
        }
    }
    total
}

/// The `/tmp` cap holds for files the guest deleted but keeps open (their blocks stay
/// allocated, and no listing of `/tmp` shows them): five 6 MiB files, each deleted once
/// opened, against an 8 MiB `/tmp` stop the run at the second (`Killed{Disk}`), and the
/// host's sandbox `/tmp` directories (deleted open files included) never held more than the
/// cap meanwhile. Renaming a workspace file into `/tmp` is refused (`EXDEV`), so it cannot
/// move bytes out of the workspace's account into an uncharged place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_open_tmp_files_stay_charged_to_the_tmp_cap() {
    let _serial = SERIAL.lock().await;
    let ws = tempfile::tempdir().unwrap();
    let cap: u64 = 8 << 20;
    let mut spec = agentkernel_core::conformance::limited(|l| l.tmp_bytes = cap);
    spec.workspace = Some(ws.path().to_path_buf());
    let rt = common::runtime();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let probe = {
        let peak = peak.clone();
        Arc::new(agentkernel_core::FnTools::new().with(
            "tmp_bytes",
            "bytes in the host's sandbox /tmp directories",
            serde_json::json!({"type": "object"}),
            move |_| {
                let peak = peak.clone();
                async move {
                    let now = host_tmp_bytes();
                    peak.fetch_max(now, std::sync::atomic::Ordering::Relaxed);
                    Ok(serde_json::json!(now))
                }
            },
        ))
    };
    let mut sb = rt.create(&spec).await.unwrap();
    let out = sb
        .exec(
            ExecRequest::new(
                "import os, _agentkernel\n\
                 held = []\n\
                 for i in range(5):\n\
                 \x20   f = open(f'/tmp/u{i}', 'wb')\n\
                 \x20   os.unlink(f'/tmp/u{i}')\n\
                 \x20   held.append(f)\n\
                 \x20   for _ in range(6):\n\
                 \x20       f.write(b'x' * (1 << 20))\n\
                 \x20       f.flush()\n\
                 \x20       _agentkernel.call_tool('tmp_bytes')\n\
                 \x20   print('wrote', i, flush=True)",
            ),
            probe.clone(),
        )
        .await
        .unwrap();
    let peak_bytes = peak.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        peak_bytes <= cap + (1 << 20),
        "the sandbox /tmp held {peak_bytes} bytes on the host against a {cap}-byte cap: {out:?}"
    );
    assert_eq!(
        out.status,
        agentkernel_core::ExecStatus::Killed {
            limit: agentkernel_core::LimitKind::Disk
        },
        "{out:?}"
    );
    sb.reset().await.unwrap();
    std::fs::write(ws.path().join("big"), vec![b'x'; 4 << 20]).unwrap();
    let out = sb
        .exec(
            ExecRequest::new(
                "import os, errno\n\
                 try:\n\
                 \x20   os.rename('/workspace/big', '/tmp/big')\n\
                 \x20   print('moved')\n\
                 except OSError as e:\n\
                 \x20   print(errno.errorcode.get(e.errno))",
            ),
            probe,
        )
        .await
        .unwrap();
    assert_eq!(out.stdout.text(), "EXDEV\n", "{out:?}");
    assert!(ws.path().join("big").exists());
    sb.shutdown().await.unwrap();
}
