//! Programmatic Tool Calling end to end: programs in real sandboxes import and call tools of
//! a real MCP server (testdata/mcp_server.py, built on the official `mcp` SDK from PyPI and
//! installed by scripts/test-deps), Rust tools, and local Python tool modules.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

/// The monty-inprocess backend needs allocations counted (as the agentkernel binary does).
#[global_allocator]
static ALLOC: monty_alloc::LimitedAllocator = monty_alloc::LimitedAllocator;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use agentkernel::{
    Config, ExecRequest, ExecStatus, FunctionTool, Kernel, McpServerConfig, ToolPolicy,
    ToolRegistry,
};
use serde_json::json;

use agentkernel_testkit::{microvm_image_for, run_with_stdin, test_python, testdata, wasm_guest};

/// The server's credential in these tests; it must never be seen inside a sandbox.
const TOKEN: &str = "ak-test-credential-5f0c7b2e91";

fn test_server(call_log: &Path) -> McpServerConfig {
    McpServerConfig::stdio(
        test_python().to_string_lossy(),
        [testdata("mcp_server.py").to_string_lossy()],
    )
    .with_env("TEST_TOKEN", TOKEN)
    .with_env("TEST_CALL_LOG", call_log.to_string_lossy())
}

async fn kernel_with(policy: ToolPolicy, call_log: &Path) -> (Kernel, ToolRegistry) {
    kernel_on("process", policy, call_log).await
}

/// A kernel on `backend` whose tools are the test MCP server's plus a Rust tool `calc.mul`.
async fn kernel_on(backend: &str, policy: ToolPolicy, call_log: &Path) -> (Kernel, ToolRegistry) {
    if backend == "wasm" {
        wasm_guest();
    }
    // The monty worker is the `agentkernel` binary itself (as when the CLI runs it).
    agentkernel_backend_monty::set_default_worker(agentkernel_backend_monty::WorkerCommand {
        executable: env!("CARGO_BIN_EXE_agentkernel").into(),
        args: vec![agentkernel_backend_monty::WORKER_ARG.into()],
    });
    let registry = ToolRegistry::builder()
        .mcp_server("test", test_server(call_log))
        .function(FunctionTool::new(
            "calc",
            "mul",
            "Multiplies a and b.",
            json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}),
            |args| async move { Ok(json!(args["a"].as_i64().unwrap_or(0) * args["b"].as_i64().unwrap_or(0))) },
        ))
        .policy(policy)
        .build()
        .await
        .expect("registry with the test MCP server");
    let kernel = Kernel::builder()
        .backend(backend)
        .timeout(std::time::Duration::from_secs(60))
        .tools(registry.clone())
        .build()
        .expect("kernel");
    (kernel, registry)
}

fn calls_logged(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_calls_two_mcp_tools_in_a_loop_and_prints_a_reduced_result() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("calls");
    let (kernel, registry) = kernel_with(ToolPolicy::default(), &log).await;
    let out = kernel
        .execute(
            "from tools.test import add, word_stats\n\
             total = 0\n\
             for i in range(20):\n    total = add(total, i)\n\
             longest = [word_stats(text=s)['longest'] for s in ['a bb', 'ccc d', 'eeee ff']]\n\
             print(total, ''.join(longest))\n",
        )
        .await
        .unwrap();
    assert_eq!(out.status, ExecStatus::Ok, "{}", out.stderr.text());
    assert_eq!(out.stdout.text(), "190 bbccceeee\n");
    assert_eq!(out.tool_calls.len(), 23);
    assert!(out.tool_calls.iter().all(|c| c.ok));
    assert_eq!(
        calls_logged(&log).len(),
        23,
        "every call reached the real server"
    );
    registry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_are_discoverable_from_inside_the_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let (kernel, registry) = kernel_with(ToolPolicy::default(), &dir.path().join("calls")).await;
    let out = kernel
        .execute(
            "import os, tools, tools.test\n\
             print(sorted(os.listdir('/tools')))\n\
             print('test' in dir(tools), 'ToolError' in dir(tools))\n\
             print('add' in os.listdir('/tools/test') or 'add.py' in os.listdir('/tools/test'))\n\
             print(dir(tools.test)[:3])\n\
             help(tools.test.word_stats)\n\
             import inspect\n\
             print(inspect.signature(tools.test.word_stats))\n",
        )
        .await
        .unwrap();
    assert_eq!(out.status, ExecStatus::Ok, "{}", out.stderr.text());
    let text = out.stdout.text();
    assert!(
        text.starts_with(
            "['__init__.py', 'calc', 'test']\nTrue True\nTrue\n['add', 'add_late_tool', 'crash']\n"
        ),
        "{text}"
    );
    assert!(text.contains("Counts the words of `text`"), "{text}");
    assert!(
        text.contains("(text: 'str', *, min_length: 'int' = 1) -> 'Any'"),
        "{text}"
    );
    // The package is a read-only mount (not just files the sandbox user cannot write).
    let out = kernel
        .execute("import os\nprint(bool(os.statvfs('/tools').f_flag & os.ST_RDONLY))\nopen('/tools/test/add.py', 'w')")
        .await
        .unwrap();
    assert_eq!(out.stdout.text(), "True\n");
    assert!(
        matches!(&out.status, ExecStatus::Exception { type_name, .. } if type_name == "OSError" || type_name == "PermissionError"),
        "{:?}",
        out.status
    );
    registry.shutdown().await;
}

/// One fault per execution on one sandbox; after each, a normal call in the same program works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_raise_the_documented_exceptions_and_everything_stays_healthy() {
    faults_on("process").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_raise_the_same_exceptions_on_wasm() {
    faults_on("wasm").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_programs_call_a_rust_tool_and_an_mcp_tool() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("calls");
    let (kernel, registry) = kernel_on("wasm", ToolPolicy::default(), &log).await;
    let out = kernel
        .execute(
            "from tools.test import add\n\
             import tools.calc as calc\n\
             print(calc.mul(6, 7), add(40, 2))\n",
        )
        .await
        .unwrap();
    assert_eq!(out.status, ExecStatus::Ok, "{}", out.stderr.text());
    assert_eq!(out.stdout.text(), "42 42\n");
    assert_eq!(out.tool_calls.len(), 2);
    assert_eq!(
        calls_logged(&log),
        ["add"],
        "the MCP call reached the real server"
    );
    registry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monty_programs_call_a_rust_tool_and_an_mcp_tool() {
    for backend in ["monty", "monty-inprocess"] {
        imports_and_calls_tools(backend).await;
    }
}

/// `from tools.test import add` and `import tools.calc as calc` on `backend`: both calls
/// succeed and the MCP call reaches the real server.
async fn imports_and_calls_tools(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("calls");
    let (kernel, registry) = kernel_on(backend, ToolPolicy::default(), &log).await;
    let out = kernel
        .execute(
            "from tools.test import add\n\
             import tools.calc as calc\n\
             print(calc.mul(6, 7), add(40, b=2))\n",
        )
        .await
        .unwrap();
    assert_eq!(
        out.status,
        ExecStatus::Ok,
        "{backend}: {:?} {}",
        out.status,
        out.stderr.text()
    );
    assert_eq!(out.stdout.text(), "42 42\n", "{backend}");
    assert_eq!(out.tool_calls.len(), 2, "{backend}");
    assert_eq!(
        calls_logged(&log),
        ["add"],
        "{backend}: the MCP call reached the real server"
    );
    registry.shutdown().await;
}

/// The generated `tools` package is copied into a microVM (there is no shared file system)
/// and its calls cross the VM's control port to a Rust tool and a real MCP server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microvm_programs_import_and_call_tools() {
    if microvm_image_for("microvm_programs_import_and_call_tools").is_none() {
        return;
    }
    imports_and_calls_tools("microvm").await;
}

/// Tool failures reach monty programs with the process backend's messages and exception
/// types (`tools.ToolError` is a `RuntimeError` on monty, which has no exception classes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monty_tool_errors_match_the_process_backend() {
    let cases = [
        "add('x', 1)",
        "add(1)",
        "add(1, 2, 3)",
        "slow(30)",
        "huge(1_000_000)",
        "fail('upstream said no')",
    ];
    let mut seen: Vec<Vec<String>> = Vec::new();
    for backend in ["process", "monty", "monty-inprocess"] {
        let dir = tempfile::tempdir().unwrap();
        let policy = fault_policy(&["add", "slow", "huge", "fail"]);
        let (kernel, registry) = kernel_on(backend, policy, &dir.path().join("calls")).await;
        let mut lines = Vec::new();
        for call in cases {
            let program = format!(
                "from tools.test import *\n\
                 try:\n    {call}\n    print('no exception')\n\
                 except Exception as e:\n    print(type(e).__name__, '|', e)\n"
            );
            let out = kernel.execute(&program).await.unwrap();
            assert_eq!(
                out.status,
                ExecStatus::Ok,
                "{backend} {call}: {:?}",
                out.status
            );
            lines.push(
                out.stdout
                    .text()
                    .trim()
                    .replace("ToolLimitError |", "RuntimeError |")
                    .replace("ToolError |", "RuntimeError |"),
            );
        }
        seen.push(lines);
        registry.shutdown().await;
    }
    assert_eq!(seen[1], seen[0], "monty (worker) vs process");
    assert_eq!(seen[2], seen[0], "monty (in-process) vs process");
    // One documented difference: monty's tool imports come from the catalog the policy
    // allows, so a denied tool is not there at all (NameError), where the CPython stubs
    // list every tool and the call is refused (PermissionError). Either way it never runs.
}

/// The policy the fault tests run under: only `allowed` tools of the test server, a 2 s
/// timeout and a 100 kB result cap.
fn fault_policy(allowed: &[&str]) -> ToolPolicy {
    ToolPolicy {
        allow: allowed.iter().map(|t| format!("test.{t}")).collect(),
        timeout: Duration::from_secs(2),
        max_result_bytes: 100_000,
        ..ToolPolicy::default()
    }
}

async fn faults_on(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("calls");
    let policy = fault_policy(&["add", "slow", "huge", "crash", "fail"]);
    let (kernel, registry) = kernel_on(backend, policy, &log).await;
    let mut sandbox = kernel.sandbox().await.unwrap();
    let cases = [
        ("add('x', 1)", "ValueError", "is not of type \"integer\""),
        (
            "add(1)",
            "TypeError",
            "missing 1 required positional argument",
        ),
        ("word_stats('a b')", "PermissionError", "not allowed"),
        ("slow(30)", "TimeoutError", "did not answer within 2 s"),
        (
            "huge(1_000_000)",
            "ToolLimitError",
            "exceeds the cap of 100000 bytes",
        ),
        ("fail('upstream said no')", "ToolError", "upstream said no"),
        ("crash()", "ToolError", "restarted for the next call"),
    ];
    for (call, expected_type, expected_message) in cases {
        let program = format!(
            "from tools.test import *\n\
             import tools\n\
             try:\n    {call}\n    print('no exception')\n\
             except Exception as e:\n    print(type(e).__name__, '|', e)\n    print('is ToolError:', isinstance(e, tools.ToolError))\n\
             print('next:', add(2, 3))\n"
        );
        let out = sandbox
            .exec(ExecRequest::new(program), kernel.tools())
            .await
            .unwrap();
        assert_eq!(out.status, ExecStatus::Ok, "{call}: {}", out.stderr.text());
        let text = out.stdout.text();
        let first = text.lines().next().unwrap_or("");
        assert!(
            first.starts_with(&format!("{expected_type} |")) && first.contains(expected_message),
            "{call}: {text}"
        );
        assert!(text.ends_with("next: 5\n"), "{call}: {text}");
    }
    let logged = calls_logged(&log);
    assert!(
        !logged.iter().any(|c| c == "word_stats"),
        "a denied tool reached the server: {logged:?}"
    );
    assert_eq!(
        logged.iter().filter(|c| *c == "add").count(),
        cases.len(),
        "{logged:?}"
    );
    // The kernel also still runs fresh sandboxes.
    let out = kernel
        .execute("from tools.test import add\nprint(add(20, 22))")
        .await
        .unwrap();
    assert_eq!(out.stdout.text(), "42\n");
    sandbox.shutdown().await.unwrap();
    registry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_call_budget_is_per_execution() {
    let dir = tempfile::tempdir().unwrap();
    let policy = ToolPolicy {
        max_calls: 3,
        ..ToolPolicy::default()
    };
    let (kernel, registry) = kernel_with(policy, &dir.path().join("calls")).await;
    let program = "from tools.test import add\nimport tools\nn = 0\ntry:\n    while True:\n        add(1, 1)\n        n += 1\nexcept tools.ToolLimitError as e:\n    print(n, e)\n";
    for _ in 0..2 {
        let out = kernel.execute(program).await.unwrap();
        assert!(
            out.stdout.text().starts_with("3 tool call budget spent"),
            "{:?}: {}",
            out.status,
            out.stdout.text()
        );
    }
    registry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_added_at_run_time_becomes_importable() {
    let dir = tempfile::tempdir().unwrap();
    let (kernel, registry) = kernel_with(ToolPolicy::default(), &dir.path().join("calls")).await;
    let out = kernel
        .execute(
            "import time, tools.test as t\n\
             from tools.test import add_late_tool\n\
             print(add_late_tool())\n\
             for _ in range(200):\n    if 'late' in dir(t):\n        break\n    time.sleep(0.05)\n\
             from tools.test import late\n\
             print(late(4))\n",
        )
        .await
        .unwrap();
    assert_eq!(out.status, ExecStatus::Ok, "{}", out.stderr.text());
    assert_eq!(out.stdout.text(), "added\n40\n");
    registry.shutdown().await;
}

/// The server's credential is in its env (from the config file); nothing in the sandbox shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_cannot_read_the_mcp_servers_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("agentkernel.toml");
    std::fs::write(
        &config_path,
        format!(
            "[mcp_servers.test]\ncommand = {:?}\nargs = [{:?}, \"--label={TOKEN}\"]\nenv = {{ TEST_TOKEN = {TOKEN:?} }}\n",
            test_python().to_string_lossy(),
            testdata("mcp_server.py").to_string_lossy(),
        ),
    )
    .unwrap();
    let config = Config::load(&config_path).unwrap();
    let kernel = config.kernel_builder().await.unwrap().build().unwrap();
    let program = format!(
        r#"
import os
TOKEN_PREFIX = "ak-test-credential"
found = []
def look(where, text):
    if TOKEN_PREFIX in text:
        found.append(where)
look("environ", repr(dict(os.environ)))
for pid in os.listdir("/proc"):
    if pid.isdigit():
        for f in ("environ", "cmdline"):
            try:
                look(f"/proc/{{pid}}/{{f}}", open(f"/proc/{{pid}}/{{f}}", "rb").read().decode("latin-1"))
            except OSError:
                pass
for top in ("/tools", "/workspace", "/tmp", "/etc", "/dev/shm"):
    for root, dirs, files in os.walk(top):
        for name in files:
            try:
                look(os.path.join(root, name), open(os.path.join(root, name), "rb").read().decode("latin-1"))
            except OSError:
                pass
try:
    open({config:?}).read()
    found.append("config file readable")
except OSError as e:
    print("config:", type(e).__name__)
from tools.test import has_token, leak_token, crash, env_names
print("server has it:", has_token())
names = env_names()
print("host env reached the server:", [n for n in names if n.startswith("CARGO")])
try:
    crash()
except Exception as e:
    look("crash error", str(e))
leaked = leak_token()
look("leak_token result", leaked)
print("leak_token:", leaked)
print("found:", found)
"#,
        config = config_path.to_string_lossy(),
    );
    let out = kernel.execute(program).await.unwrap();
    assert_eq!(out.status, ExecStatus::Ok, "{}", out.stderr.text());
    let text = out.stdout.text();
    assert!(text.contains("config: FileNotFoundError"), "{text}");
    assert!(text.contains("server has it: True"), "{text}");
    assert!(text.contains("host env reached the server: []"), "{text}");
    assert!(
        text.contains("leak_token: the token is [redacted]"),
        "{text}"
    );
    assert!(text.contains("found: []"), "{text}");
    assert!(
        !text.contains(TOKEN) && !out.stderr.text().contains(TOKEN),
        "{text}"
    );
    if let Some(r) = kernel.tool_registry() {
        r.shutdown().await;
    }
}

/// Credentials the tool layer must recognise beyond `env` and headers: an option's value on
/// the server's command line, a numeric one returned as a JSON number, and one in a tool's
/// name (which becomes a module name the sandbox reads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_args_numbers_and_tool_names_never_reach_the_program() {
    const ARG_KEY: &str = "ak-arg-credential-77d1e0";
    const PIN: &str = "90817263";
    let server = McpServerConfig::stdio(
        test_python().to_string_lossy(),
        [
            testdata("mcp_server.py").to_string_lossy().into_owned(),
            "--api-key".into(),
            ARG_KEY.into(),
        ],
    )
    .with_env("TEST_PIN_SECRET", PIN)
    .with_env("TEST_PIN", PIN);
    let registry = ToolRegistry::builder()
        .mcp_server("test", server)
        .build()
        .await
        .expect("registry");
    let kernel = Kernel::builder()
        .timeout(std::time::Duration::from_secs(60))
        .tools(registry.clone())
        .build()
        .expect("kernel");
    let program = r#"
import os
names = sorted(os.listdir("/tools/test")) if os.path.isdir("/tools/test") else []
print("names:", [n for n in names if n.startswith("pin")])
from tools.test import leak_argv, leak_pin
print("argv:", leak_argv())
print("pin:", repr(leak_pin()))
"#;
    let out = kernel.execute(program).await.expect("exec");
    let text = out.stdout.text();
    assert_eq!(out.status, ExecStatus::Ok, "{text}{}", out.stderr.text());
    assert!(text.contains("argv: "), "{text}");
    assert!(
        text.contains("names: []"),
        "a tool named after the PIN was dropped: {text}"
    );
    assert!(
        !text.contains(ARG_KEY) && !text.contains(PIN),
        "a credential reached the program: {text}"
    );
    assert!(text.contains("[redacted]"), "{text}");
    let listing = std::process::Command::new("find")
        .arg(registry.mounts()[0].host.clone())
        .output()
        .expect("find");
    assert!(
        !String::from_utf8_lossy(&listing.stdout).contains(PIN),
        "no generated stub is named after the PIN"
    );
    registry.shutdown().await;
}

fn seed_example_dir() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let tools = dir.path().join("tools");
    let ws = dir.path().join("ws");
    std::fs::create_dir_all(&tools).unwrap();
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::write(
        tools.join("data_analysis.py"),
        "\"\"\"Data-analysis helpers (the seed's example tool module).\"\"\"\n\
         import pandas as pd\n\n\
         def load_dataset(path):\n    \"\"\"Loads a CSV file of the workspace into a DataFrame.\"\"\"\n    \
         return pd.read_csv(path if path.startswith('/') else '/workspace/' + path)\n",
    )
    .unwrap();
    let mut csv = String::from("city,temp\n");
    for i in 0..1000 {
        csv.push_str(&format!("c{i},{}\n", i % 40));
    }
    std::fs::write(ws.join("large_file.csv"), csv).unwrap();
    (dir, tools, ws)
}

const SEED_PROGRAM: &str = "import pandas as pd\n\
    from tools.data_analysis import load_dataset\n\
    df = load_dataset('large_file.csv')\n\
    summary = df.describe()\n\
    print(int(summary.loc['count', 'temp']), summary.loc['mean', 'temp'], int(summary.loc['max', 'temp']))\n";

/// The seed's example: a local `tools/data_analysis.py` using pandas, a CSV in the workspace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_data_analysis_example_runs() {
    let (_dir, tools, ws) = seed_example_dir();
    let registry = ToolRegistry::builder()
        .python_dir(&tools)
        .build()
        .await
        .unwrap();
    let kernel = Kernel::builder()
        .python(test_python())
        .workspace(&ws)
        .tools(registry)
        .build()
        .unwrap();
    let out = kernel.execute(SEED_PROGRAM).await.unwrap();
    assert_eq!(out.status, ExecStatus::Ok, "{}", out.stderr.text());
    assert_eq!(out.stdout.text(), "1000 19.5 39\n");
}

#[test]
fn cli_tools_list_and_run_with_mcp_and_tools_dir() {
    let (dir, tools, ws) = seed_example_dir();
    let server = format!(
        "test={} {}",
        test_python().display(),
        testdata("mcp_server.py").display()
    );
    let bin = env!("CARGO_BIN_EXE_agentkernel");
    let list = Command::new(bin)
        .args(["tools", "list", "--json", "--mcp", &server, "--tools-dir"])
        .arg(&tools)
        .args(["--allow-tool", "test.add"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let catalog: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let entries = catalog.as_array().unwrap();
    let add = entries.iter().find(|e| e["name"] == "test.add").unwrap();
    assert_eq!(add["signature"], "(a: int, b: int) -> int");
    assert_eq!(add["import"], "from tools.test import add");
    assert_eq!(add["allowed"], true);
    assert!(
        entries
            .iter()
            .any(|e| e["name"] == "test.echo" && e["allowed"] == false)
    );
    assert!(
        entries
            .iter()
            .any(|e| e["name"] == "data_analysis" && e["source"] == "python")
    );

    let program = dir.path().join("prog.py");
    std::fs::write(
        &program,
        format!("{SEED_PROGRAM}from tools.test import add\nprint(add(1, 2))\n"),
    )
    .unwrap();
    let run = Command::new(bin)
        .args(["run", "--mcp", &server, "--tools-dir"])
        .arg(&tools)
        .arg("--workspace")
        .arg(&ws)
        .arg(&program)
        .env("AGENTKERNEL_PYTHON", test_python())
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&run.stdout),
        "1000 19.5 39\n3\n",
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(run.status.code(), Some(0));

    let bad = Command::new(bin)
        .args(["run", "--mcp", "no-equals-sign", "-"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("NAME=COMMAND"));

    let missing = Command::new(bin)
        .args(["tools", "list", "--mcp", "x=/nonexistent/server"])
        .output()
        .unwrap();
    assert_eq!(
        missing.status.code(),
        Some(69),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot start MCP server"));
}

/// Each call logs a `tool_call` span with server, tool, sizes, duration and outcome, and
/// never the argument values.
#[test]
fn tool_calls_are_traced_without_argument_values() {
    let server = format!(
        "test={} {}",
        test_python().display(),
        testdata("mcp_server.py").display()
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agentkernel"));
    cmd.args(["run", "--mcp", &server, "-"])
        .env("AGENTKERNEL_LOG", "agentkernel_tool_bridge=info");
    let out = run_with_stdin(
        cmd,
        "from tools.test import echo, add\necho('arg-value-one')\ntry:\n    add('arg-value-two', 1)\nexcept ValueError:\n    pass\n",
    );
    assert_eq!(out.status.code(), Some(0));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("tool_call{server=\"test\" tool=\"echo\" arg_bytes=24"),
        "{log}"
    );
    assert!(log.contains("outcome=\"ok\" result_bytes=15"), "{log}");
    assert!(
        log.contains("tool=\"add\"") && log.contains("outcome=InvalidArguments"),
        "{log}"
    );
    assert!(
        !log.contains("arg-value"),
        "argument values leaked into the log: {log}"
    );
}
