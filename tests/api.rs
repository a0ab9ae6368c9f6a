//! The library API: `Kernel` and the seed's `create_agent().execute_task()`.

use agentkernel::{ExecRequest, ExecStatus, FunctionTool, Kernel, ToolRegistry, create_agent};
use serde_json::json;

#[tokio::test]
async fn create_agent_execute_task_returns_output() {
    let agent = create_agent().expect("default kernel");
    let result = agent.execute_task("print(6 * 7)").await.expect("task");
    assert_eq!(result.output, "42\n");
    assert!(result.success);
    assert_eq!(result.exit_code, 0);
    assert!(result.timings.boot > std::time::Duration::ZERO);
}

#[tokio::test]
async fn failed_task_is_a_result_not_an_error() {
    let agent = create_agent().expect("default kernel");
    let result = agent.execute_task("1/0").await.expect("task");
    assert!(!result.success);
    assert_eq!(result.exit_code, 1);
    assert!(
        matches!(result.status, ExecStatus::Exception { ref type_name, .. } if type_name == "ZeroDivisionError")
    );
}

#[tokio::test]
async fn kernel_sandbox_keeps_state_and_calls_rust_tools() {
    let tools = ToolRegistry::builder()
        .function(FunctionTool::new(
            "geo",
            "lookup",
            "Looks up a city's population.",
            json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
            |args| async move {
                Ok(match args["city"].as_str() {
                    Some("Paris") => json!(2_100_000),
                    _ => json!(null),
                })
            },
        ))
        .build()
        .await
        .expect("registry");
    let kernel = Kernel::builder().tools(tools).build().expect("kernel");
    let mut sb = kernel.sandbox().await.expect("sandbox");
    let out = sb
        .exec(
            ExecRequest::new("from tools.geo import lookup\npop = lookup('Paris')"),
            kernel.tools(),
        )
        .await
        .expect("exec");
    assert_eq!(out.status, ExecStatus::Ok);
    let out = sb
        .exec(ExecRequest::new("print(pop // 1000)"), kernel.tools())
        .await
        .expect("exec");
    assert_eq!(out.stdout.text(), "2100\n");
    sb.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn builder_rejects_unknown_backends_with_a_hint() {
    let err = Kernel::builder()
        .backend("quantum")
        .build()
        .err()
        .expect("must fail");
    assert!(err.to_string().contains("unknown backend"), "{err}");
    assert!(err.hint().is_some_and(|h| h.contains("process")), "{err}");
}

/// A near miss is named: `procss` → did you mean "process"? Far from every name, no guess.
#[test]
fn a_misspelt_backend_gets_a_did_you_mean() {
    let err = Kernel::builder()
        .backend("procss")
        .build()
        .err()
        .expect("must fail");
    assert!(
        err.to_string().contains("did you mean \"process\""),
        "{err}"
    );
    let err = Kernel::builder()
        .backend("Monty-InProces")
        .build()
        .err()
        .expect("must fail");
    assert!(
        err.to_string().contains("did you mean \"monty-inprocess\""),
        "{err}"
    );
    let err = Kernel::builder()
        .backend("quantum")
        .build()
        .err()
        .expect("must fail");
    assert!(!err.to_string().contains("did you mean"), "{err}");
}

/// A timeout that is no time limit (negative, NaN, infinite) is refused by name, not run as
/// "zero"; `timeout(Duration)` is the typed form.
#[test]
#[allow(deprecated)] // the seconds form is what is tested
fn a_nonsense_timeout_is_refused_by_name() {
    for secs in [-1.0, f64::NAN, f64::INFINITY] {
        let err = Kernel::builder()
            .timeout_secs(secs)
            .build()
            .err()
            .expect("must fail");
        assert!(
            err.to_string().contains(&format!("timeout_secs({secs})")),
            "{err}"
        );
        assert!(
            err.hint().is_some_and(|h| h.contains("timeout(Duration)")),
            "{err}"
        );
    }
    let kernel = Kernel::builder()
        .timeout(std::time::Duration::from_secs(7))
        .build()
        .expect("build");
    assert_eq!(
        kernel.spec().limits.wall_time,
        std::time::Duration::from_secs(7)
    );
}

/// The typed backend names the same backends as the strings.
#[cfg(feature = "process")]
#[tokio::test]
async fn a_backend_can_be_chosen_by_type() {
    let kernel = Kernel::builder()
        .backend(agentkernel::Backend::Process)
        .build()
        .expect("build");
    assert_eq!(kernel.runtime().name(), "process");
    let out = kernel.execute("print('typed')").await.expect("run");
    assert_eq!(out.stdout.text(), "typed\n");
    assert_eq!(agentkernel::default_backend(), "process");
}

/// One registry, two kernels with different rights: the policy is per kernel (per sandbox).
#[tokio::test]
async fn tool_policy_is_per_kernel() {
    let schema =
        json!({"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]});
    let registry = ToolRegistry::builder()
        .function(FunctionTool::new(
            "calc",
            "inc",
            "x + 1",
            schema.clone(),
            |a| async move { Ok(json!(a["x"].as_i64().unwrap_or(0) + 1)) },
        ))
        .function(FunctionTool::new(
            "calc",
            "dec",
            "x - 1",
            schema,
            |a| async move { Ok(json!(a["x"].as_i64().unwrap_or(0) - 1)) },
        ))
        .build()
        .await
        .expect("registry");
    let program = "from tools.calc import inc, dec\nprint(inc(1))\ntry:\n    print(dec(1))\nexcept PermissionError as e:\n    print('denied:', e)\n";
    let open = Kernel::builder()
        .tools(registry.clone())
        .build()
        .expect("kernel");
    assert_eq!(
        open.execute(program).await.expect("exec").stdout.text(),
        "2\n0\n"
    );
    let narrow = Kernel::builder()
        .tools(registry)
        .tool_policy(agentkernel::ToolPolicy {
            allow: vec!["calc.inc".into()],
            ..Default::default()
        })
        .build()
        .expect("kernel");
    let out = narrow.execute(program).await.expect("exec");
    assert!(
        out.stdout
            .text()
            .starts_with("2\ndenied: tool calc.dec is not allowed"),
        "{}",
        out.stdout.text()
    );
    assert_eq!(out.tool_calls.len(), 2);
    assert_eq!(
        out.tool_calls[1].error,
        Some(agentkernel::core::ToolErrorKind::Denied)
    );
}

/// Builds the example `name` (up to date whatever ran before: `cargo test --test api` alone
/// builds no example) and runs it from a directory of its own, as an application is run:
/// no worker binary or `agentkernel.toml` beside it.
fn run_example(name: &str) -> std::process::Output {
    let built = std::process::Command::new(env!("CARGO"))
        .args(["build", "--example", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo");
    assert!(built.success(), "cargo build --example {name}");
    let exe = std::env::current_exe().expect("test binary");
    let example = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("examples").join(name))
        .expect("target dir");
    let dir = tempfile::tempdir().expect("tempdir");
    let app = dir.path().join("my-agent");
    std::fs::copy(&example, &app).expect("copy the example");
    std::process::Command::new(&app)
        .current_dir(dir.path())
        .env_remove("AGENTKERNEL_MONTY_WORKER")
        .output()
        .expect("run the example")
}

/// `monty` worker mode works from an application binary that is not `agentkernel`: the
/// `embed_monty` example calls `agentkernel::run_worker_if_requested()` and is its own
/// worker, run from a directory with no worker binary beside it.
#[cfg(feature = "monty")]
#[test]
fn monty_worker_mode_runs_from_an_embedding_binary() {
    let out = run_example("embed_monty");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, "sum of squares: 285\nstatus: Ok\n");
}

/// The scripted agent loop: four turns in one session, a tool's data kept in a variable,
/// an exception fed back and fixed, a printed number used by the next program.
#[test]
fn the_agent_loop_example_runs_its_turns() {
    let out = run_example("agent_loop");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout,
        "turn 0: 3\nturn 1: error KeyError: 'price'\nturn 2: 49.75\nturn 3: 16.58\n"
    );
}

/// A library error's hint speaks of builder methods, not of CLI flags (the CLI rewrites
/// them into flags: `src/main.rs::hints_are_rewritten_into_flags`, and the test below).
#[test]
fn library_hints_name_builder_methods() {
    let err = Kernel::builder()
        .workspace("/")
        .build()
        .err()
        .expect("must fail");
    let hint = err.hint().unwrap_or_default().to_owned();
    assert!(hint.contains("`.workspace("), "{err}");
    assert!(!hint.contains("--"), "{err}");
}

/// The same refusal from the command line names the flag.
#[test]
fn cli_hints_name_flags() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agentkernel"))
        .args(["run", "--workspace", "/", "-"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run agentkernel");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`--workspace ./data`"), "{stderr}");
    assert!(!stderr.contains("`.workspace("), "{stderr}");
}

/// A typed tool: its schema is derived from its argument type (the sandbox's generated
/// signature shows it), arguments arrive deserialized, a result type goes back as JSON,
/// and arguments that do not fit are the program's `ValueError`.
#[tokio::test]
async fn a_typed_tool_takes_and_returns_rust_types() {
    #[derive(serde::Deserialize, agentkernel::JsonSchema)]
    #[schemars(crate = "agentkernel::tools::schemars")]
    struct Add {
        a: i64,
        b: i64,
    }
    #[derive(serde::Serialize, agentkernel::JsonSchema)]
    #[schemars(crate = "agentkernel::tools::schemars")]
    struct Sum {
        sum: i64,
    }
    let registry = ToolRegistry::builder()
        .function(FunctionTool::typed(
            "calc",
            "add",
            "Adds a and b.",
            |args: Add| async move {
                Ok(Sum {
                    sum: args.a + args.b,
                })
            },
        ))
        .build()
        .await
        .expect("registry");
    let entry = registry
        .catalog()
        .into_iter()
        .find(|e| e.name == "calc.add")
        .expect("calc.add");
    assert!(entry.signature.contains("a: int"), "{}", entry.signature);
    let kernel = Kernel::builder().tools(registry).build().expect("kernel");
    let out = kernel
        .execute(
            "from tools.calc import add\nprint(add(a=2, b=3)['sum'])\ntry:\n    add(a='x', b=1)\nexcept ValueError as e:\n    print('ValueError')",
        )
        .await
        .expect("run");
    assert_eq!(
        out.stdout.text(),
        "5\nValueError\n",
        "{}",
        out.stderr.text()
    );
}
