//! `Pool` over real process-backend sandboxes: warm hits, clean recycling, replacement of
//! broken sandboxes, and exhaustion.

use std::sync::Arc;
use std::time::Duration;

use agentkernel_backend_process::{ProcessConfig, ProcessRuntime};
use agentkernel_core::conformance::test_spec;
use agentkernel_core::{
    Error, ExecRequest, ExecStatus, NoTools, Pool, PoolConfig, Runtime, SandboxSpec,
};

fn backend() -> Arc<dyn Runtime> {
    Arc::new(ProcessRuntime::new(ProcessConfig::default()).expect("process backend"))
}

async fn exec(
    sb: &mut Box<dyn agentkernel_core::Sandbox>,
    code: &str,
) -> agentkernel_core::ExecOutcome {
    sb.exec(ExecRequest::new(code), Arc::new(NoTools))
        .await
        .expect("exec")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_acquires_are_hits_and_skip_creation() {
    let pool = Pool::new(
        backend(),
        test_spec(),
        PoolConfig {
            min_idle: 2,
            max_size: 4,
            ..PoolConfig::default()
        },
    )
    .unwrap();
    assert!(
        pool.wait_idle(2, Duration::from_secs(30)).await,
        "pool did not warm up: {:?}",
        pool.stats()
    );
    let before = pool.stats();
    assert_eq!((before.creations, before.hits, before.misses), (2, 0, 0));
    let mut a = pool.create(&test_spec()).await.unwrap();
    let mut b = pool.create(&test_spec()).await.unwrap();
    let after = pool.stats();
    assert_eq!((after.hits, after.misses), (2, 0), "{after:?}");
    assert_eq!(exec(&mut a, "print(1)").await.stdout.text(), "1\n");
    assert_eq!(exec(&mut b, "print(2)").await.stdout.text(), "2\n");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returned_sandbox_is_reset_before_reuse() {
    let pool = Pool::new(
        backend(),
        test_spec(),
        PoolConfig {
            min_idle: 0,
            max_size: 1,
            ..PoolConfig::default()
        },
    )
    .unwrap();
    let mut sb = pool.create(&test_spec()).await.unwrap();
    exec(
        &mut sb,
        "secret = 'from the last user'\nopen('/tmp/left-behind', 'w').write('x')",
    )
    .await;
    sb.shutdown().await.unwrap();
    // max_size 1: the next acquire gets the same sandbox back, after its reset.
    let mut sb = pool.create(&test_spec()).await.unwrap();
    let out = exec(
        &mut sb,
        "import os\nprint('secret' in globals(), os.path.exists('/tmp/left-behind'))",
    )
    .await;
    assert_eq!(out.stdout.text(), "False False\n");
    assert_eq!(pool.stats().resets, 1);
    sb.shutdown().await.unwrap();
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_sandbox_is_replaced_not_reused() {
    let pool = Pool::new(
        backend(),
        test_spec(),
        PoolConfig {
            min_idle: 1,
            max_size: 2,
            ..PoolConfig::default()
        },
    )
    .unwrap();
    assert!(pool.wait_idle(1, Duration::from_secs(30)).await);
    let mut sb = pool.create(&test_spec()).await.unwrap();
    let out = exec(
        &mut sb,
        "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
    )
    .await;
    assert!(
        matches!(
            out.status,
            ExecStatus::Crashed { .. } | ExecStatus::Killed { .. }
        ),
        "{:?}",
        out.status
    );
    sb.shutdown().await.unwrap();
    // The broken one is shut down; the pool refills and the next sandbox works.
    let mut next = pool.create(&test_spec()).await.unwrap();
    assert_eq!(
        exec(&mut next, "print('fine')").await.stdout.text(),
        "fine\n"
    );
    let stats = pool.stats();
    assert_eq!(stats.replaced, 1, "{stats:?}");
    assert_eq!(stats.resets, 0, "{stats:?}");
    next.shutdown().await.unwrap();
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhaustion_waits_then_fails_with_a_clear_error() {
    let pool = Pool::new(
        backend(),
        test_spec(),
        PoolConfig {
            min_idle: 0,
            max_size: 1,
            acquire_timeout: Duration::from_millis(300),
            ..PoolConfig::default()
        },
    )
    .unwrap();
    let held = pool.create(&test_spec()).await.unwrap();
    let err = pool
        .create(&test_spec())
        .await
        .err()
        .expect("the pool is exhausted");
    assert!(
        matches!(err, Error::PoolExhausted { max_size: 1, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("raise the pool's max_size"),
        "{err}"
    );
    assert_eq!(pool.stats().exhausted, 1);
    held.shutdown().await.unwrap();
    pool.close().await;

    // A waiter gets the sandbox as soon as it comes back: with a long acquire timeout, the
    // waiter is still waiting while the sandbox is held, and gets it once it is given back.
    let pool = Pool::new(
        backend(),
        test_spec(),
        PoolConfig {
            min_idle: 0,
            max_size: 1,
            acquire_timeout: Duration::from_secs(120),
            ..PoolConfig::default()
        },
    )
    .unwrap();
    let held = pool.create(&test_spec()).await.unwrap();
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut sb = pool.create(&test_spec()).await?;
            let out = sb
                .exec(ExecRequest::new("print('got it')"), Arc::new(NoTools))
                .await?;
            sb.shutdown().await?;
            Ok::<_, Error>(out.stdout.text())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiter.is_finished(),
        "the waiter got a sandbox while the only one was held"
    );
    held.shutdown().await.unwrap();
    let got = waiter
        .await
        .expect("waiter task")
        .expect("the waiter gets the sandbox");
    assert_eq!(got, "got it\n");
    assert_eq!(pool.stats().exhausted, 0, "{:?}", pool.stats());
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_specs_bypass_the_pool() {
    let pool = Pool::new(
        backend(),
        test_spec(),
        PoolConfig {
            min_idle: 0,
            max_size: 1,
            ..PoolConfig::default()
        },
    )
    .unwrap();
    let other = SandboxSpec {
        env: [("X".to_owned(), "1".to_owned())].into(),
        ..test_spec()
    };
    let mut sb = pool.create(&other).await.unwrap();
    assert_eq!(
        exec(&mut sb, "import os\nprint(os.environ['X'])")
            .await
            .stdout
            .text(),
        "1\n"
    );
    sb.shutdown().await.unwrap();
    assert_eq!(pool.stats().bypassed, 1);
    pool.close().await;
}
