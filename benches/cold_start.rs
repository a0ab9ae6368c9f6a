//! Cold start: a fresh process-backend sandbox running `print(1)`, beside a bare
//! `python3 -c 'print(1)'` of the same interpreter, measured in one run.
//!
//! `cargo bench --bench cold_start`

use agentkernel_backend_process::{ProcessConfig, ProcessRuntime};
use agentkernel_core::SandboxSpec;
use agentkernel_core::conformance::run_once;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use std::process::Command;

fn startup(c: &mut Criterion) {
    let tokio = tokio::runtime::Runtime::new().expect("tokio runtime");
    let rt = ProcessRuntime::new(ProcessConfig::default()).expect("process backend available");
    let python = rt.python().executable.clone();
    let spec = SandboxSpec::default();
    let mut group = c.benchmark_group("startup");
    group.sample_size(20);

    group.bench_function(BenchmarkId::new("native", "python3_spawn"), |b| {
        b.iter(|| {
            let out = Command::new(&python)
                .args(["-I", "-c", "print(1)"])
                .output()
                .expect("python3");
            assert_eq!(out.stdout, b"1\n");
        });
    });

    group.bench_function(BenchmarkId::new("process", "cold_start"), |b| {
        b.to_async(&tokio).iter(|| async {
            let out = run_once(&rt, &spec, "print(1)").await;
            assert_eq!(out.stdout.text(), "1\n");
        });
    });

    group.finish();
}

criterion_group!(benches, startup);
criterion_main!(benches);
