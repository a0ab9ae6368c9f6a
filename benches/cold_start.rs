//! In one run (`cargo bench --bench cold_start`):
//! - `startup`: a fresh sandbox running `print(1)` (`cold_start`), and one taken warm from a
//!   pool (`pooled`: each timed acquire waits, untimed, until the pool is full and quiet;
//!   `pooled_under_load`: acquires back to back, no wait), on the process and wasm backends,
//!   beside a bare `python3 -c 'print(1)'` of the same interpreter. `cli_run` is truly
//!   cold: the whole `agentkernel run` command, a new process each time. On wasm the fresh
//!   sandbox is `new_instance`: a new sandbox on a runtime that made one before (its `/tmp`
//!   directory and memory slot are reused warm, the compiled guest is loaded, and the
//!   shutdown's clean-up is not timed);
//!   The monty rows: `monty/cold_start` is in-process mode (a thread of this process),
//!   `monty/worker_cold_start` a fresh jailed worker, `monty/pooled` a worker from a pool;
//!   the microvm rows (QEMU; software emulation without real KVM) are a booted VM
//!   (`cold_boot`), one restored from the saved template (`restore`), and a warm VM from
//!   the runtime's pool (`pooled`);
//! - `tools`: one tool call from Python in a warm sandbox to the host and back, for a Rust
//!   tool (process, wasm, monty in-process and worker) and for a real stdio MCP server
//!   (testdata/mcp_server.py; the official `mcp` SDK is installed by scripts/test-deps).

use std::process::Command;
use std::time::{Duration, Instant};

use agentkernel::{
    ExecRequest, ExecStatus, FunctionTool, Kernel, McpServerConfig, ToolPolicy, ToolRegistry,
};
use agentkernel_backend_monty::{MontyConfig, MontyMode, MontyRuntime, WorkerCommand};
use agentkernel_backend_process::{ProcessConfig, ProcessRuntime};
use agentkernel_backend_wasm::WasmRuntime;
use agentkernel_core::conformance::run_once;
use agentkernel_core::{Pool, PoolConfig, Runtime, SandboxSpec};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use serde_json::json;
use std::sync::Arc;

use agentkernel_testkit::{test_python, testdata, wasm_guest};

/// Monty's in-process mode needs allocations counted (as the agentkernel binary does).
#[global_allocator]
static ALLOC: monty_alloc::LimitedAllocator = monty_alloc::LimitedAllocator;

fn monty(mode: MontyMode) -> MontyRuntime {
    MontyRuntime::new(MontyConfig {
        mode,
        worker: Some(monty_worker()),
    })
    .expect("monty backend")
}

/// Monty's worker is the agentkernel binary itself.
fn monty_worker() -> WorkerCommand {
    WorkerCommand {
        executable: env!("CARGO_BIN_EXE_agentkernel").into(),
        args: vec![agentkernel_backend_monty::WORKER_ARG.into()],
    }
}

fn startup(c: &mut Criterion) {
    let tokio = tokio::runtime::Runtime::new().expect("tokio runtime");
    let rt = ProcessRuntime::new(ProcessConfig::default()).expect("process backend available");
    let python = rt.python().expect("a python guest").executable.clone();
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

    // Truly cold: the whole `agentkernel run` command, a new process each time (on wasm:
    // the compiled guest loaded from its cache and its digest checked).
    let script = tempfile::tempdir().expect("tempdir");
    let program = script.path().join("print1.py");
    std::fs::write(&program, "print(1)\n").expect("program");
    for backend in ["process", "wasm"] {
        group.bench_function(BenchmarkId::new(backend, "cli_run"), |b| {
            b.iter(|| {
                let out = Command::new(env!("CARGO_BIN_EXE_agentkernel"))
                    .args(["run", "--backend", backend])
                    .arg(&program)
                    .env("AGENTKERNEL_DATA_DIR", script.path().join("data"))
                    .output()
                    .expect("agentkernel run");
                assert_eq!(
                    out.stdout,
                    b"1\n",
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            });
        });
    }

    group.bench_function(BenchmarkId::new("process", "cold_start"), |b| {
        b.to_async(&tokio).iter(|| async {
            let out = run_once(&rt, &spec, "print(1)").await;
            assert_eq!(out.stdout.text(), "1\n");
        });
    });

    // Reset in place (the guest's init forks a fresh agent) + `print(1)`: what a pool pays,
    // in the background, to recycle a returned sandbox.
    let mut sandbox = tokio.block_on(rt.create(&spec)).expect("sandbox");
    group.bench_function(BenchmarkId::new("process", "reset"), |b| {
        b.iter_custom(|iters| {
            tokio.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    sandbox.reset().await.expect("reset");
                    let out = sandbox
                        .exec(
                            agentkernel_core::ExecRequest::new("print(1)"),
                            Arc::new(agentkernel_core::NoTools),
                        )
                        .await
                        .expect("exec");
                    assert_eq!(out.stdout.text(), "1\n");
                }
                started.elapsed()
            })
        });
    });
    let _ = tokio.block_on(sandbox.shutdown());

    bench_pooled(
        &tokio,
        &mut group,
        "process",
        Arc::new(ProcessRuntime::new(ProcessConfig::default()).expect("process backend")),
        &spec,
    );

    wasm_guest();
    // A new sandbox on a runtime that has made one before: it reuses an emptied `/tmp`
    // directory and a memory slot already reset to the snapshot, and the shutdown's
    // clean-up runs on a background thread (not timed).
    let wasm = WasmRuntime::new();
    group.bench_function(BenchmarkId::new("wasm", "new_instance"), |b| {
        b.to_async(&tokio).iter(|| async {
            let out = run_once(&wasm, &spec, "print(1)").await;
            assert_eq!(out.stdout.text(), "1\n");
        });
    });
    bench_pooled(
        &tokio,
        &mut group,
        "wasm",
        Arc::new(WasmRuntime::new()),
        &spec,
    );

    let in_process = monty(MontyMode::InProcess);
    group.bench_function(BenchmarkId::new("monty", "cold_start"), |b| {
        b.to_async(&tokio).iter(|| async {
            let out = run_once(&in_process, &spec, "print(1)").await;
            assert_eq!(out.stdout.text(), "1\n");
        });
    });
    let worker = monty(MontyMode::Worker);
    group.bench_function(BenchmarkId::new("monty", "worker_cold_start"), |b| {
        b.to_async(&tokio).iter(|| async {
            let out = run_once(&worker, &spec, "print(1)").await;
            assert_eq!(out.stdout.text(), "1\n");
        });
    });
    bench_pooled(
        &tokio,
        &mut group,
        "monty",
        Arc::new(monty(MontyMode::Worker)),
        &spec,
    );

    microvm(&tokio, &mut group, &spec);
    group.finish();
}

/// The microvm rows (seconds per sample under software emulation: 10 flat samples each).
/// `cold_boot`: a VM booted for the sandbox; `restore`: restored from the saved template;
/// `pooled`: a warm VM from the runtime's pool (the refill between samples is not timed).
/// Each sample: create, `print(1)`, shutdown.
fn microvm(
    tokio: &tokio::runtime::Runtime,
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    spec: &SandboxSpec,
) {
    use agentkernel_backend_microvm::{EngineKind, MicroVmConfig, MicroVmRuntime};
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/build-microvm-image");
    match Command::new(script).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            println!(
                "microvm rows skipped: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return;
        }
        Err(e) => {
            println!("microvm rows skipped: {e}");
            return;
        }
    }
    group.sample_size(10);
    group.sampling_mode(criterion::SamplingMode::Flat);
    group.warm_up_time(Duration::from_millis(1));
    let runtime = |snapshots: bool, pool_size: usize| {
        MicroVmRuntime::new(MicroVmConfig {
            snapshots,
            pool_size,
            // These rows measure QEMU (its boot, restore and pool), whatever KVM there is.
            engine: EngineKind::Qemu,
            ..MicroVmConfig::default()
        })
    };
    for (id, rt) in [
        ("cold_boot", runtime(false, 0)),
        ("restore", runtime(true, 0)),
    ] {
        // The template state is made (once per image) before the timed samples.
        let _ = tokio.block_on(run_once(&rt, spec, "pass"));
        group.bench_function(BenchmarkId::new("microvm", id), |b| {
            b.to_async(tokio).iter(|| async {
                let out = run_once(&rt, spec, "print(1)").await;
                assert_eq!(out.stdout.text(), "1\n");
            });
        });
    }
    let pooled = runtime(true, 1);
    tokio.block_on(async {
        let _ = run_once(&pooled, spec, "pass").await;
    });
    group.bench_function(BenchmarkId::new("microvm", "pooled"), |b| {
        b.iter_custom(|iters| {
            tokio.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let waited = Instant::now();
                    while pooled.warm_vms() == 0 {
                        assert!(waited.elapsed() < Duration::from_secs(120), "no warm VM");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    let started = Instant::now();
                    let out = run_once(&pooled, spec, "print(1)").await;
                    total += started.elapsed();
                    assert_eq!(out.stdout.text(), "1\n");
                }
                total
            })
        });
    });
}

/// Warm acquire from a pool + `print(1)` + return. The pool resets returned sandboxes in
/// the background; each timed iteration starts once the pool is warm and quiet again (the
/// wait is not timed): the latency an interactive agent sees from a warm pool.
fn bench_pooled(
    tokio: &tokio::runtime::Runtime,
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    backend: &str,
    runtime: Arc<dyn Runtime>,
    spec: &SandboxSpec,
) {
    let pool = tokio.block_on(async {
        Pool::new(
            runtime,
            spec.clone(),
            PoolConfig {
                min_idle: 2,
                max_size: 4,
                ..PoolConfig::default()
            },
        )
        .expect("pool")
    });
    group.bench_function(BenchmarkId::new(backend, "pooled"), |b| {
        b.iter_custom(|iters| {
            tokio.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // Also let background resets finish: on 2 cores they would compete
                    // with the timed run.
                    assert!(
                        pool.wait_idle(2, Duration::from_secs(60)).await,
                        "pool never warmed"
                    );
                    while pool.stats().live > pool.stats().idle {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    let started = Instant::now();
                    let out = run_once(&pool, spec, "print(1)").await;
                    total += started.elapsed();
                    assert_eq!(out.stdout.text(), "1\n");
                }
                total
            })
        });
    });
    // Under load: acquires back to back, no pause for the pool to refill or reset what was
    // returned (those run in the background, competing with the timed runs).
    group.bench_function(BenchmarkId::new(backend, "pooled_under_load"), |b| {
        b.to_async(tokio).iter(|| async {
            let out = run_once(&pool, spec, "print(1)").await;
            assert_eq!(out.stdout.text(), "1\n");
        });
    });
    // (No acquisitions at all: a filter on the command line skipped this bench.)
    let stats = pool.stats();
    assert!(
        stats.hits > 0 || stats.misses == 0,
        "the pooled bench never hit the pool: {stats:?}"
    );
    tokio.block_on(pool.close());
}

/// Per-call round trip: each sample runs one program that calls the tool `iters` times, and
/// the host-side time of that exec is divided by criterion (exec overhead is amortised).
fn tools(c: &mut Criterion) {
    let tokio = tokio::runtime::Runtime::new().expect("tokio runtime");
    let registry = tokio
        .block_on(
            ToolRegistry::builder()
                .function(FunctionTool::new(
                    "calc",
                    "add",
                    "Adds two integers.",
                    json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}),
                    |a| async move { Ok(json!(a["a"].as_i64().unwrap_or(0) + a["b"].as_i64().unwrap_or(0))) },
                ))
                .mcp_server(
                    "test",
                    McpServerConfig::stdio(
                        test_python().to_string_lossy(),
                        [testdata("mcp_server.py").to_string_lossy()],
                    ),
                )
                .policy(ToolPolicy {
                    max_calls: u32::MAX,
                    ..ToolPolicy::default()
                })
                .build(),
        )
        .expect("tool registry");
    let mut group = c.benchmark_group("tools");
    group.sample_size(20);
    wasm_guest();
    agentkernel_backend_monty::set_default_worker(monty_worker());
    for (backend, name, id, import) in [
        (
            "process",
            "process",
            "tool_roundtrip",
            "from tools.calc import add",
        ),
        (
            "process",
            "process",
            "mcp_roundtrip",
            "from tools.test import add",
        ),
        (
            "wasm",
            "wasm",
            "tool_roundtrip",
            "from tools.calc import add",
        ),
        (
            "monty-inprocess",
            "monty",
            "tool_roundtrip",
            "from tools.calc import add",
        ),
        (
            "monty",
            "monty",
            "worker_tool_roundtrip",
            "from tools.calc import add",
        ),
    ] {
        let kernel = Kernel::builder()
            .backend(backend)
            .timeout(std::time::Duration::from_secs(600))
            .tools(registry.clone())
            .build()
            .expect("kernel");
        let mut sandbox = tokio.block_on(kernel.sandbox()).expect("sandbox");
        group.bench_function(BenchmarkId::new(name, id), |b| {
            b.iter_custom(|iters| {
                // Criterion picks more iterations on a faster machine; one exec may make only
                // so many host calls (monty caps a run's suspensions), so large counts are
                // split over several execs and their times added: no bench depends on the
                // machine's speed to finish.
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(CALLS_PER_EXEC);
                    left -= n;
                    let program = format!("{import}\nfor i in range({n}):\n    add(a=i, b=1)\n");
                    total += tokio.block_on(async {
                        let started = Instant::now();
                        let out = sandbox
                            .exec(
                                ExecRequest::new(program).with_timeout(Duration::from_secs(600)),
                                kernel.tools(),
                            )
                            .await
                            .expect("exec");
                        let took = started.elapsed();
                        assert_eq!(out.status, ExecStatus::Ok, "{}", out.stderr.text());
                        took
                    });
                }
                total
            });
        });
        let _ = tokio.block_on(sandbox.shutdown());
    }
    group.finish();
    tokio.block_on(registry.shutdown());
}

/// The most tool calls one benchmark exec makes (well under monty's cap on a run's host
/// calls, `MAX_SUSPENSIONS` in backend-monty/src/engine.rs).
const CALLS_PER_EXEC: u64 = 100_000;

criterion_group!(benches, startup, tools);
criterion_main!(benches);
