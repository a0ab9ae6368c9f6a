//! The `msb` engine end to end: only where the KVM probe finds hardware KVM and the runtime
//! files and root filesystem are configured (see `MsbEngine::from_env`); elsewhere the test
//! prints why it skipped.
#![cfg(feature = "msb")]

use std::time::Duration;

use agentkernel_backend_microsandbox::kvm::KvmProbe;
use agentkernel_backend_microsandbox::msb::MsbEngine;

/// The engine, or why this machine cannot run it.
fn engine() -> Result<MsbEngine, String> {
    let kvm = KvmProbe::detect();
    if !kvm.is_real() {
        return Err(kvm.reason());
    }
    MsbEngine::from_env()
}

#[tokio::test]
async fn msb_runs_python() {
    let engine = match engine() {
        Ok(engine) => engine,
        Err(reason) => {
            println!("skipped: {reason}");
            return;
        }
    };
    println!("msb engine: {engine:?}");
    let run = engine.run_python("print(6*7)", 512, Duration::from_secs(60));
    assert_send(&run);
    let (stdout, stderr, code) = run.await.expect("the msb engine runs python3");
    assert_eq!((stdout.as_str(), code), ("42\n", 0), "stderr: {stderr}");
}

/// The run can be spawned on a multi-threaded runtime.
fn assert_send<T: Send>(_: &T) {}
