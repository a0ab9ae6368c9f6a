//! The conformance suite: async checks that any [`Runtime`] must pass.
//!
//! Each check creates its own sandboxes, panics with a precise message on failure, and
//! consults [`Capabilities`] first: a backend that lacks a capability
//! must answer [`Error::Unsupported`], never a silent wrong result. Escape attempts are
//! checked from the host side (the planted secret is not in the output, the host process
//! survived, the listener saw no connection, the host file does not exist...).
//!
//! The checks are grouped by area, one module each: [`exec`], [`limits`], [`escape`],
//! [`lifecycle`], [`tools`], [`state`], [`admission`]. [`checks`] lists them all, each with
//! the rule saying when it does not apply to a backend (from its [`Capabilities`] alone).
//!
//! A backend runs the whole suite as one integration-test binary with its own harness
//! (`harness = false` in its `Cargo.toml`, [`run_suite`] on `libtest-mimic`):
//!
//! ```ignore
//! agentkernel_core::conformance_suite!(my_backend::MyRuntime::new().unwrap());
//! ```
//!
//! Its output names each check with its area (`test [escape] escape_network ... ok`); a
//! check that does not apply is reported `ignored (does not apply: <reason>)`, never counted
//! as passed, and the summary line gives how many ran. A name filter (one) and `--exact`
//! work as with `cargo test`.
//!
//! Programs call host tools through the `_agentkernel` module every backend provides:
//! `_agentkernel.call_tool(name, {args})`, raising `LookupError`, `ValueError`,
//! `PermissionError`, `TimeoutError` or `_agentkernel.ToolError` on failure.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::{
    Capabilities, Error, ExecOutcome, ExecRequest, ExecStatus, FnTools, Isolation, LimitKind,
    Limits, NetworkPolicy, NoTools, Runtime, Sandbox, SandboxSpec, ToolError, ToolErrorKind,
    ToolHost,
};

pub mod admission;
pub mod escape;
pub mod exec;
pub mod lifecycle;
pub mod limits;
pub mod state;
pub mod tools;

pub use admission::*;
pub use escape::*;
pub use exec::*;
pub use lifecycle::*;
pub use limits::*;
pub use state::*;
pub use tools::*;

/// The harness the suite runs on, for a backend that adds checks of its own
/// ([`run_suite_with`]).
pub use libtest_mimic;

/// A spec with limits suited to tests.
pub fn test_spec() -> SandboxSpec {
    SandboxSpec {
        limits: Limits {
            wall_time: Duration::from_secs(30),
            ..Limits::default()
        },
        ..SandboxSpec::default()
    }
}

/// [`test_spec`] with one change to its limits, e.g. `limited(|l| l.processes = Some(8))`.
pub fn limited(change: impl FnOnce(&mut Limits)) -> SandboxSpec {
    let mut spec = test_spec();
    change(&mut spec.limits);
    spec
}

/// Creates a sandbox for `spec`, runs `code` once, shuts it down.
pub async fn run_once(rt: &dyn Runtime, spec: &SandboxSpec, code: &str) -> ExecOutcome {
    let mut sb = rt
        .create(spec)
        .await
        .unwrap_or_else(|e| panic!("{}: create failed: {e}", rt.name()));
    let out = sb
        .exec(ExecRequest::new(code), Arc::new(NoTools))
        .await
        .unwrap_or_else(|e| panic!("{}: exec failed: {e}", rt.name()));
    sb.shutdown().await.expect("shutdown");
    out
}

/// What a backend whose language is a Python subset ([`crate::Language::PythonSubset`])
/// refuses in the suite's programs, check by check: the exception type and a part of its
/// message. Only these pass as refusals, so a subset backend that fails a check any other
/// way (another exception, another message) fails it.
pub const SUBSET_REFUSALS: &[(&str, &str, &str)] = &[
    (
        "output_capture",
        "TypeError",
        "print() 'file' argument is not supported",
    ),
    (
        "exit_code_is_reported",
        "AttributeError",
        "module 'sys' has no attribute 'exit'",
    ),
    (
        "memory_limit_holds",
        "NameError",
        "name 'bytearray' is not defined",
    ),
    (
        "output_limit_truncates",
        "TypeError",
        "print() 'file' argument is not supported",
    ),
    (
        "file_size_limit_holds",
        "ModuleNotFoundError",
        "No module named 'errno'",
    ),
    (
        "tmp_is_capped",
        "ModuleNotFoundError",
        "No module named 'errno'",
    ),
    (
        "escape_host_processes",
        "ModuleNotFoundError",
        "No module named 'signal'",
    ),
];

/// Whether `out` is the refusal [`SUBSET_REFUSALS`] expects of `check` on a backend whose
/// language is a Python subset: then the check prints what was refused and judges what it
/// still can (e.g. from the host, that a victim process survived).
pub fn refused_by_subset(rt: &dyn Runtime, check: &str, out: &ExecOutcome) -> bool {
    if rt.capabilities().language != crate::Language::PythonSubset {
        return false;
    }
    let Some(&(_, expected_type, expected_message)) =
        SUBSET_REFUSALS.iter().find(|(c, _, _)| *c == check)
    else {
        return false;
    };
    match &out.status {
        ExecStatus::Exception {
            type_name, message, ..
        } if type_name == expected_type && message.contains(expected_message) => {
            eprintln!(
                "{}: {check}: refused as expected of a Python subset: {type_name}: {message}",
                rt.name()
            );
            true
        }
        _ => false,
    }
}

/// Environment variable naming a file [`skip`] appends its lines to, so a CI script can
/// list (and grep for) every check that did not run: `AGENTKERNEL_SKIP_LOG=skips.txt cargo
/// test ...`, then `grep SKIPPED skips.txt`.
pub const SKIP_LOG_ENV: &str = "AGENTKERNEL_SKIP_LOG";

/// Reports that `check` does not apply to `backend`, and why: a check that does not run
/// must say so, never pass silently. Prints `SKIPPED <backend> <check> (does not apply):
/// <reason>` straight to stderr (not through `eprintln!`, which the test harness swallows
/// for passing tests) and, when the environment variable
/// `AGENTKERNEL_SKIP_LOG` ([`SKIP_LOG_ENV`]) names a file, appends the same line to it
/// (created if missing; a file that cannot be written fails the test, so a CI script that
/// set it never reads a partial list). Usable from any test, not only this suite:
///
/// ```ignore
/// if !available { return agentkernel_core::conformance::skip("my_test", "qemu", "no /dev/kvm"); }
/// ```
pub fn skip(check: &str, backend: &str, reason: &str) {
    let line = format!("SKIPPED {backend} {check} (does not apply): {reason}");
    {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "{line}");
    }
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV) {
        use std::io::Write;
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = written {
            panic!(
                "{SKIP_LOG_ENV}={}: cannot append the skip line: {e}",
                std::path::Path::new(&path).display()
            );
        }
    }
}

fn assert_ok(out: &ExecOutcome) {
    assert_eq!(
        out.status,
        ExecStatus::Ok,
        "program failed; stdout={:?} stderr={:?}",
        out.stdout.text(),
        out.stderr.text()
    );
}

/// Waits (up to 10 s, polling) until at least `n` host processes carry `marker`.
async fn wait_for_processes(marker: &str, n: usize) -> bool {
    for _ in 0..200 {
        if count_host_processes(marker) >= n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Number of host processes whose command line contains `marker`.
pub fn count_host_processes(marker: &str) -> usize {
    count_host_processes_where("cmdline", |cmd| {
        String::from_utf8_lossy(cmd).contains(marker)
    })
}

/// Number of host processes (other than this one) whose `/proc/PID/<file>` (`cmdline`,
/// `environ`, ...) satisfies `matches`.
pub fn count_host_processes_where(file: &str, matches: impl Fn(&[u8]) -> bool) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let me = std::process::id().to_string();
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.chars().all(|c| c.is_ascii_digit()) && name != me
        })
        .filter_map(|e| std::fs::read(e.path().join(file)).ok())
        .filter(|content| matches(content))
        .count()
}

/// What the suite needs to know of a backend beyond its [`Runtime`] and [`Capabilities`]:
/// the hooks where backends differ in ways capabilities do not say. A backend's harness
/// gives its own ([`run_suite_for`], or [`set_target`] before calling checks directly);
/// otherwise [`HostProcesses`] holds.
pub trait Target: Send + Sync + 'static {
    /// The text that identifies sandbox `sb`'s processes in the host's process list, given
    /// the `marker` the suite's programs put in their command lines. Default: the marker,
    /// for a backend whose program processes are host processes.
    fn host_marker(&self, sb: &dyn Sandbox, marker: &str) -> String {
        let _ = sb;
        marker.to_owned()
    }
}

/// The default [`Target`]: the sandbox's processes are host processes.
pub struct HostProcesses;

impl Target for HostProcesses {}

static TARGET: std::sync::OnceLock<Box<dyn Target>> = std::sync::OnceLock::new();

/// Sets the [`Target`] of this test binary (once; later calls are ignored and answer
/// `false`).
pub fn set_target(target: impl Target) -> bool {
    TARGET.set(Box::new(target)).is_ok()
}

/// The [`Target`] in force.
pub fn target() -> &'static dyn Target {
    match TARGET.get() {
        Some(target) => target.as_ref(),
        None => &HostProcesses,
    }
}

/// The area a check belongs to (its module), shown as the check's kind in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    /// [`exec`].
    Exec,
    /// [`limits`].
    Limits,
    /// [`escape`].
    Escape,
    /// [`lifecycle`].
    Lifecycle,
    /// [`tools`].
    Tools,
    /// [`state`].
    State,
    /// [`admission`].
    Admission,
}

impl Area {
    /// The area's name, e.g. `"escape"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Area::Exec => "exec",
            Area::Limits => "limits",
            Area::Escape => "escape",
            Area::Lifecycle => "lifecycle",
            Area::Tools => "tools",
            Area::State => "state",
            Area::Admission => "admission",
        }
    }
}

/// A check's future, borrowing the runtime under test.
pub type CheckFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>>;

/// One check of the suite.
pub struct ConformanceCheck {
    /// The check's function name (and test name).
    pub name: &'static str,
    /// Its area.
    pub area: Area,
    /// Why it does not apply to a backend with these capabilities, or `None` when it does.
    pub not_applicable: fn(&Capabilities) -> Option<String>,
    /// Runs it (panics on failure).
    pub run: for<'a> fn(&'a dyn Runtime) -> CheckFuture<'a>,
}

/// Where no process of the sandbox can outlive it, because there is none: the sandbox runs
/// inside the kernel's own process and programs cannot start processes.
fn no_sandbox_process(caps: &Capabilities) -> Option<String> {
    (matches!(caps.isolation, Isolation::InProcess | Isolation::Wasm) && !caps.subprocess).then(
        || {
            format!(
                "its sandboxes run inside the kernel's own process (isolation {:?}) and programs cannot start processes: there is no process to outlive the sandbox",
                caps.isolation
            )
        },
    )
}

macro_rules! suite {
    ($($area:ident: $($name:ident $([unless $rule:path])?),+;)+) => {
        /// Every check of the suite, in order, with its area and the rule saying where it
        /// does not apply.
        pub fn checks() -> Vec<ConformanceCheck> {
            vec![$($(ConformanceCheck {
                name: stringify!($name),
                area: Area::$area,
                not_applicable: suite!(@rule $($rule)?),
                run: {
                    fn run(rt: &dyn Runtime) -> CheckFuture<'_> {
                        Box::pin($name(rt))
                    }
                    run
                },
            }),+),+]
        }
    };
    (@rule) => { |_| None };
    (@rule $rule:path) => { $rule };
}

suite! {
    Exec: output_capture, exception_with_traceback, exit_code_is_reported,
        environment_is_explicit, live_output_arrives_as_printed,
        programs_over_the_size_cap_are_refused, last_expression_value;
    State: state_persists_across_exec, reset_clears_state, snapshot_matches_capabilities,
        workspace_persists_across_sandboxes;
    Admission: network_allow_list_matches_capabilities, admission_is_the_same_on_every_backend;
    Limits: wall_time_limit_kills, cpu_time_limit_kills, memory_limit_holds,
        output_limit_truncates, process_limit_holds, file_size_limit_holds, tmp_is_capped;
    Tools: tool_calls_round_trip;
    Escape: escape_read_planted_file, escape_read_etc_shadow, escape_host_processes,
        escape_network, escape_write_host_usr;
    Lifecycle: kill_leaves_no_process [unless no_sandbox_process],
        shutdown_leaves_no_process [unless no_sandbox_process];
}

/// Runs the whole suite against runtimes from `make` (one per check, made on the check's
/// own Tokio runtime), as a test binary's `main` with the arguments `cargo test` gives it.
/// Prints how many checks apply to the backend's capabilities; a check that does not is
/// reported ignored with its reason (and as a [`skip`] line), never run and never counted
/// as passed.
pub fn run_suite<R: Runtime>(
    make: impl Fn() -> R + Send + Sync + 'static,
) -> std::process::ExitCode {
    run_suite_with(make, Vec::new())
}

/// [`run_suite`] with the backend's [`Target`].
pub fn run_suite_for<R: Runtime>(
    target: impl Target,
    make: impl Fn() -> R + Send + Sync + 'static,
) -> std::process::ExitCode {
    set_target(target);
    run_suite_with(make, Vec::new())
}

/// [`run_suite`] plus `extra` trials of the backend's own.
pub fn run_suite_with<R: Runtime>(
    make: impl Fn() -> R + Send + Sync + 'static,
    extra: Vec<libtest_mimic::Trial>,
) -> std::process::ExitCode {
    use libtest_mimic::{Completion, Trial};
    let args = libtest_mimic::Arguments::from_args();
    let make = Arc::new(make);
    let tokio = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a Tokio runtime for the check")
    };
    let (backend, caps) = tokio().block_on(async {
        let rt = make();
        (rt.name(), rt.capabilities())
    });
    let checks = checks();
    let apply = checks
        .iter()
        .filter(|c| (c.not_applicable)(&caps).is_none())
        .count();
    {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "conformance {backend}: {} checks, {apply} apply to its capabilities, {} do not (reported ignored with the reason)",
            checks.len(),
            checks.len() - apply
        );
    }
    let mut trials: Vec<Trial> = checks
        .into_iter()
        .map(|check| {
            let make = make.clone();
            Trial::ignorable_test(check.name, move || {
                if let Some(reason) = (check.not_applicable)(&caps) {
                    skip(check.name, backend, &reason);
                    return Ok(Completion::ignored_with(format!(
                        "does not apply: {reason}"
                    )));
                }
                tokio().block_on(async {
                    let rt = make();
                    (check.run)(&rt).await;
                });
                Ok(Completion::Completed)
            })
            .with_kind(check.area.as_str())
        })
        .collect();
    trials.extend(extra);
    libtest_mimic::run(&args, trials).exit_code()
}

/// The `main` of a backend's conformance test binary (`harness = false`): the whole suite
/// ([`run_suite`]) on runtimes made by `$make`, with the backend's `target` ([`Target`],
/// [`run_suite_for`]) or `extra` trials of its own ([`run_suite_with`]).
#[macro_export]
macro_rules! conformance_suite {
    ($make:expr) => {
        fn main() -> std::process::ExitCode {
            $crate::conformance::run_suite(|| $make)
        }
    };
    ($make:expr, target: $target:expr) => {
        fn main() -> std::process::ExitCode {
            $crate::conformance::run_suite_for($target, || $make)
        }
    };
    ($make:expr, extra: $extra:expr) => {
        fn main() -> std::process::ExitCode {
            $crate::conformance::run_suite_with(|| $make, $extra)
        }
    };
}
