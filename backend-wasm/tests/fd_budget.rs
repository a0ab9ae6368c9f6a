//! All wasm guests of one process together hold at most a budget of host file descriptors
//! (a quarter of the soft `RLIMIT_NOFILE`), however many sandboxes open files. This test
//! lowers its own process's limit first, so it is a test binary of its own.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::sync::Arc;

use agentkernel_core::conformance::test_spec;
use agentkernel_core::{ExecRequest, NoTools, Runtime};
use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// With a soft limit of 200 descriptors, guests may hold 50 together: one sandbox holding
/// its files leaves a second one none (`OSError`), the kernel itself keeps working (the
/// second sandbox starts and runs), and once the first closes them the second opens files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_guests_together_stay_within_the_process_descriptor_budget() {
    let (_soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, 200, hard).unwrap();
    let budget = agentkernel_backend_wasm::quota::open_files_budget();
    assert_eq!(budget, 50);
    let rt = common::runtime();
    let mut first = rt.create(&test_spec()).await.unwrap();
    let mut second = rt.create(&test_spec()).await.unwrap();
    let hold = "held = []\n\
        try:\n\
        \x20   for i in range(1000):\n\
        \x20       held.append(open(f'/tmp/f{i % 8}', 'w'))\n\
        except OSError as e:\n\
        \x20   print(len(held), type(e).__name__)";
    let out = first
        .exec(ExecRequest::new(hold), Arc::new(NoTools))
        .await
        .unwrap();
    let text = out.stdout.text();
    let opened: usize = text.split_whitespace().next().unwrap().parse().unwrap();
    assert!(opened <= budget, "one guest opened {opened} files: {text}");
    let out = second
        .exec(ExecRequest::new(hold), Arc::new(NoTools))
        .await
        .unwrap();
    let text2 = out.stdout.text();
    let opened2: usize = text2.split_whitespace().next().unwrap().parse().unwrap();
    assert!(
        opened + opened2 <= budget,
        "two guests held {opened} + {opened2} files, over the budget of {budget}"
    );
    assert!(text2.ends_with("OSError\n"), "{text2}");
    // The first gives its files back; the second can open again.
    first
        .exec(
            ExecRequest::new("for f in held: f.close()\nheld.clear()"),
            Arc::new(NoTools),
        )
        .await
        .unwrap();
    let out = second
        .exec(
            ExecRequest::new(
                "held.clear()\nfs = [open(f'/tmp/g{i}', 'w') for i in range(20)]\nprint(len(fs))",
            ),
            Arc::new(NoTools),
        )
        .await
        .unwrap();
    assert_eq!(out.stdout.text(), "20\n", "{out:?}");
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
}
