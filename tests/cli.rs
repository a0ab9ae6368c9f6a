//! The `agentkernel` binary, driven as a user would: real processes, real sandboxes.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn agentkernel(args: &[&str], stdin: &str) -> Output {
    agentkernel_with_env(args, &[], stdin)
}

/// [`agentkernel`] with environment variables `env` set.
fn agentkernel_with_env(args: &[&str], env: &[(&str, &std::path::Path)], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentkernel"))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("AGENTKERNEL_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agentkernel");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write program");
    child.wait_with_output().expect("wait")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn run_prints_program_output_and_exits_zero() {
    let out = agentkernel(&["run", "-"], "print(6*7)\n");
    assert_eq!(text(&out.stdout), "42\n");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
}

#[test]
fn run_file_from_examples() {
    let hello = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/hello.py");
    let out = agentkernel(&["run", hello], "");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("Hello from the sandbox!"));
    assert!(text(&out.stdout).contains("as uid 1000, pid 2"));
}

#[test]
fn uncaught_exception_exits_one_with_traceback_on_stderr() {
    let out = agentkernel(&["run", "-"], "raise ValueError(\"x\")\n");
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("Traceback (most recent call last):"), "{err}");
    assert!(err.contains("ValueError: x"), "{err}");
    assert!(text(&out.stdout).is_empty());
}

#[test]
fn sys_exit_code_is_the_exit_status() {
    let out = agentkernel(&["run", "-"], "import sys\nsys.exit(3)\n");
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn timeout_kills_the_whole_process_tree_and_names_the_limit() {
    let marker = format!("ak-cli-orphan-{}", std::process::id());
    let program = format!(
        r#"
import os, signal, subprocess
subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 100; : {marker}"])
if os.fork() == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.execv("/bin/sh", ["sh", "-c", "trap '' TERM; sleep 100; : {marker}"])
print("looping", flush=True)
while True:
    pass
"#
    );
    let out = agentkernel(&["run", "--timeout", "1", "-"], &program);
    assert_eq!(out.status.code(), Some(124));
    assert!(
        text(&out.stderr).contains("timeout limit exceeded"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), "looping\n");
    assert_eq!(
        agentkernel_core::conformance::count_host_processes(&marker),
        0,
        "processes of the run survived it"
    );
}

#[test]
fn memory_limit_stops_a_huge_allocation() {
    let out = agentkernel(
        &["run", "--memory", "256", "-"],
        "b = bytearray(2**33)\nprint('allocated')\n",
    );
    assert_ne!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    assert!(
        err.contains("MemoryError") || err.contains("memory limit"),
        "{err}"
    );
    assert!(!text(&out.stdout).contains("allocated"));
}

#[test]
fn workspace_files_persist_across_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ws = dir.path().join("ws");
    let ws = ws.to_str().expect("utf-8");
    let out = agentkernel(
        &["run", "--workspace", ws, "-"],
        "open('/workspace/n.txt', 'w').write('kept')\n",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = agentkernel(
        &["run", "--workspace", ws, "-"],
        "print(open('/workspace/n.txt').read())\n",
    );
    assert_eq!(text(&out.stdout), "kept\n");
}

#[test]
fn json_output_is_one_object() {
    let out = agentkernel(
        &["run", "--json", "-"],
        "print('hi')\nraise KeyError('k')\n",
    );
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["exit_code"], 1);
    assert_eq!(v["stdout"], "hi\n");
    assert_eq!(v["status"]["kind"], "exception");
    assert_eq!(v["status"]["type"], "KeyError");
    assert!(v["timings"]["exec"].as_f64().is_some());
}

/// The last expression's value is in `--json` output (null when there is none), and is not
/// printed without `--json`, as `python3 file.py` prints none.
#[test]
fn last_expression_value_is_in_json_output_only() {
    let out = agentkernel(&["run", "--json", "-"], "x = 21\n{'x': x * 2}\n");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(
        v["value"],
        serde_json::json!({"repr": "{'x': 42}", "json": {"x": 42}})
    );
    let out = agentkernel(&["run", "--json", "-"], "x = 21\n");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["value"], serde_json::Value::Null, "{v}");
    let out = agentkernel(&["run", "-"], "x = 21\nx * 2\n");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "", "no value printed without --json");
}

#[test]
fn bad_input_is_one_line_and_exit_two() {
    for (args, needle) in [
        (vec!["run", "--backend", "nope", "-"], "unknown backend"),
        (
            vec!["run", "/nonexistent/program.py"],
            "cannot read program file",
        ),
        (vec!["run", "--memory", "1", "-"], "memory limit"),
        (vec!["run", "--timeout", "0", "-"], "--timeout"),
        (vec!["run", "--timeout", "-3", "-"], "--timeout"),
    ] {
        let out = agentkernel(&args, "print(1)\n");
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{args:?}: not one line: {err}"
        );
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn doctor_reports_the_process_backend_and_its_protections() {
    let out = agentkernel(&["doctor", "--json"], "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let process = v
        .as_array()
        .expect("array")
        .iter()
        .find(|r| r["backend"] == "process")
        .expect("process backend listed");
    assert_eq!(process["available"], true);
    let all_checks = process["checks"].as_array().expect("checks");
    let check = |name: &str| {
        all_checks
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("doctor does not report {name}"))
    };
    let checks: Vec<_> = all_checks
        .iter()
        .map(|c| c["name"].as_str().unwrap_or(""))
        .collect();
    for name in [
        "namespaces",
        "seccomp",
        "no_new_privs",
        "landlock",
        "cgroup",
        "rlimits",
    ] {
        assert!(checks.contains(&name), "doctor does not report {name}");
    }
    let seccomp = check("seccomp");
    assert_eq!(seccomp["state"], "active");
    // Read back from the probe sandbox's init on the host, not assumed.
    let rlimits = check("rlimits");
    assert_eq!(rlimits["state"], "active", "{rlimits}");
    // The probe sandbox had a workspace: its write layer was made (this kernel can), or
    // doctor says why not.
    let layer = check("workspace");
    assert!(
        layer["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{layer}"
    );
    // On by default: active with its caps, or (a kernel that cannot make it) inactive with
    // why.
    let detail = layer["detail"].as_str().unwrap_or_default();
    assert!(
        (layer["state"] == "active" && detail.contains("10000 files"))
            || (layer["state"] == "inactive" && detail.contains("kernel")),
        "{layer}"
    );
}

use agentkernel_testkit::{microvm_image_for, wasm_guest};

#[test]
fn doctor_reports_the_wasm_backend_with_its_guest() {
    let guest = wasm_guest();
    let out = agentkernel(&["doctor", "--json"], "");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let wasm = v
        .as_array()
        .expect("array")
        .iter()
        .find(|r| r["backend"] == "wasm")
        .expect("wasm backend listed");
    assert_eq!(wasm["available"], true, "{wasm}");
    let detail = |name: &str| {
        wasm["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} check in {wasm}"))["detail"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    assert!(detail("guest component").contains(&*guest.to_string_lossy()));
    assert!(detail("sandbox starts").contains("CPython 3.14"), "{wasm}");
}

/// Without its guest component the wasm backend is unavailable, and says how to build it.
#[test]
fn wasm_without_its_guest_says_how_to_build_it() {
    let cache = tempfile::tempdir().expect("tempdir");
    let out = agentkernel_with_env(
        &["run", "--backend", "wasm", "-"],
        &[("AGENTKERNEL_CACHE", cache.path())],
        "",
    );
    assert_eq!(out.status.code(), Some(69), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("scripts/build-wasm-guest"), "{err}");
}

/// A guest component whose standard library directory is missing (e.g. copied alone) is
/// refused before it is compiled, with what is missing and how to rebuild.
#[test]
fn wasm_guest_without_its_standard_library_says_how_to_rebuild() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lone = dir.path().join("guest.wasm");
    std::fs::copy(wasm_guest(), &lone).expect("copy the guest");
    let out = agentkernel_with_env(
        &["run", "--backend", "wasm", "-"],
        &[("AGENTKERNEL_WASM_GUEST", &lone)],
        "",
    );
    assert_eq!(out.status.code(), Some(69), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("no standard library beside it"), "{err}");
    assert!(err.contains("guest.stdlib"), "{err}");
    assert!(err.contains("scripts/build-wasm-guest"), "{err}");
}

#[test]
fn monty_backends_run_programs_and_name_their_limits() {
    for backend in ["monty", "monty-inprocess"] {
        let out = agentkernel(&["run", "--backend", backend, "-"], "print(6*7)\n");
        assert_eq!(
            text(&out.stdout),
            "42\n",
            "{backend}: {}",
            text(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(0));

        let out = agentkernel(
            &["run", "--backend", backend, "-"],
            "def f(n):\n    raise ValueError(f'boom {n}')\nf(7)\n",
        );
        assert_eq!(out.status.code(), Some(1), "{backend}");
        let err = text(&out.stderr);
        assert!(
            err.contains("Traceback (most recent call last)"),
            "{backend}: {err}"
        );
        assert!(err.contains("ValueError: boom 7"), "{backend}: {err}");

        let out = agentkernel(
            &["run", "--backend", backend, "--timeout", "1", "-"],
            "print('started')\nwhile True:\n    pass\n",
        );
        assert_eq!(text(&out.stdout), "started\n", "{backend}");
        assert_eq!(out.status.code(), Some(124), "{backend}");
        assert!(
            text(&out.stderr).contains("timeout"),
            "{backend}: {}",
            text(&out.stderr)
        );

        let out = agentkernel(
            &["run", "--backend", backend, "--memory", "64", "-"],
            "s = 'a' * 10**10\n",
        );
        assert_eq!(out.status.code(), Some(137), "{backend}");
        assert!(
            text(&out.stderr).contains("memory limit"),
            "{backend}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn wasm_backend_runs_programs_and_names_its_limits() {
    wasm_guest();
    let out = agentkernel(&["run", "--backend", "wasm", "-"], "print(6*7)\n");
    assert_eq!(text(&out.stdout), "42\n", "stderr: {}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(0));

    let out = agentkernel(
        &["run", "--backend", "wasm", "--timeout", "1", "-"],
        "print('started', flush=True)\nwhile True:\n    pass\n",
    );
    assert_eq!(text(&out.stdout), "started\n");
    assert_eq!(out.status.code(), Some(124));
    assert!(
        text(&out.stderr).contains("timeout"),
        "{}",
        text(&out.stderr)
    );

    let out = agentkernel(
        &["run", "--backend", "wasm", "--memory", "64", "-"],
        "chunks = []\nwhile True:\n    chunks.append(bytearray(8 << 20))\n",
    );
    // An uncaught MemoryError is a memory kill on every backend (137), its traceback on
    // stderr.
    assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("MemoryError"),
        "{}",
        text(&out.stderr)
    );

    let out = agentkernel(
        &["run", "--backend", "wasm", "-"],
        "import subprocess\nsubprocess.run(['ls'])\n",
    );
    assert_eq!(out.status.code(), Some(1), "no processes in a wasm guest");
}

#[test]
fn microvm_runs_programs_with_subprocesses_and_keeps_workspace_files() {
    if microvm_image_for("microvm_runs_programs_with_subprocesses_and_keeps_workspace_files")
        .is_none()
    {
        return;
    }
    let out = agentkernel(&["run", "--backend", "microvm", "-"], "print(6*7)\n");
    assert_eq!(text(&out.stdout), "42\n", "{}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(0));

    let ws = tempfile::tempdir().expect("tempdir");
    let ws_arg = ws.path().display().to_string();
    let out = agentkernel(
        &["run", "--backend", "microvm", "--workspace", &ws_arg, "-"],
        "import subprocess\nprint(subprocess.run(['sh', '-c', 'echo $((6*7)) from $(uname -s)'], capture_output=True, text=True).stdout, end='')\nopen('/workspace/note.txt', 'w').write('from the VM')\n",
    );
    assert_eq!(
        text(&out.stdout),
        "42 from Linux\n",
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(ws.path().join("note.txt")).expect("the file is on the host"),
        "from the VM"
    );
    let out = agentkernel(
        &["run", "--backend", "microvm", "--workspace", &ws_arg, "-"],
        "print(open('/workspace/note.txt').read())\n",
    );
    assert_eq!(text(&out.stdout), "from the VM\n", "{}", text(&out.stderr));
}

#[test]
fn doctor_says_which_engine_runs_microvms_and_why() {
    if microvm_image_for("doctor_says_which_engine_runs_microvms_and_why").is_none() {
        return;
    }
    let out = agentkernel(&["doctor", "--json"], "");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let microvm = v
        .as_array()
        .expect("array")
        .iter()
        .find(|r| r["backend"] == "microvm")
        .expect("microvm listed");
    assert_eq!(microvm["available"], true, "{microvm}");
    let check = |name: &str| -> String {
        microvm["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} check in {microvm}"))["detail"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    let engine = check("engine");
    let msb = check("msb engine");
    println!("engine: {engine}\nmsb: {msb}");
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        assert!(engine.contains("software emulation"), "{engine}");
        assert!(msb.contains("PVM"), "{msb}");
    }
    assert!(check("probe sandbox").contains("print(6*7)"));
}
