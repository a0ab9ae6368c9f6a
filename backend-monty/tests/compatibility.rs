//! The compatibility report: every program of the shared differential set
//! (`testdata/programs`, also run on wasm against native `python3`) through Monty.
//!
//! Monty runs a subset of Python, so a program may be *refused*: it ends with an exception
//! naming what Monty lacks (`ModuleNotFoundError: No module named 'random'`), where
//! `python3` did not. That is allowed; a *silently wrong* result (Monty ends normally but
//! prints something else, or ends with another status) is not. The test prints the table
//! the README's compatibility section shows (`cargo test -p agentkernel-backend-monty --test
//! compatibility -- --nocapture`).

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

#[global_allocator]
static ALLOC: monty_alloc::LimitedAllocator = monty_alloc::LimitedAllocator;

use std::sync::Arc;

use agentkernel_backend_monty::{MontyConfig, MontyMode, MontyRuntime};
use agentkernel_core::conformance::test_spec;
use agentkernel_core::{ExecRequest, NoTools, Runtime};

/// Programs Monty 0.0.23 runs exactly as `python3` does (a floor: more is progress). The
/// set is stdlib-heavy on purpose (it was written for full-CPython backends).
const MIN_MATCHING: usize = 5;

/// Output differences that are not wrong results: behaviour Python leaves unspecified.
const UNSPECIFIED: &[(&str, &str)] = &[(
    "07_comprehensions.py",
    "a set prints in another order (set order is unspecified in Python)",
)];

include!("../../testdata/differential.rs");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monty_runs_the_differential_set_or_refuses_clearly() {
    let rt = MontyRuntime::new(MontyConfig {
        mode: MontyMode::InProcess,
        worker: None,
    })
    .unwrap();
    let programs = differential_programs();
    let (mut matching, mut wrong) = (0, Vec::new());
    let mut rows = Vec::new();
    for path in &programs {
        let code = std::fs::read_to_string(path).unwrap();
        let mut sb = rt.create(&test_spec()).await.unwrap();
        let out = sb
            .exec(ExecRequest::new(code), Arc::new(NoTools))
            .await
            .unwrap();
        sb.shutdown().await.unwrap();
        let monty = Ending::of(&out);
        let expected = Ending::native(path);
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let verdict = if monty == expected {
            matching += 1;
            "runs as in CPython".to_owned()
        } else if monty.exception.is_some() && monty.exception != expected.exception {
            let what = monty.exception.clone().unwrap_or_default();
            let what: String = what.lines().next().unwrap_or("").chars().take(90).collect();
            format!("refused: `{}`", what.replace('|', "\\|"))
        } else if let Some((_, why)) = UNSPECIFIED.iter().find(|(n, _)| *n == name) {
            format!("runs; {why}")
        } else {
            wrong.push(format!(
                "{name}:\n  python3: {expected:?}\n  monty:   {monty:?}"
            ));
            "WRONG".to_owned()
        };
        rows.push(format!("| `{name}` | {verdict} |"));
    }
    println!(
        "\n{matching} of {} programs run as in CPython; the others are refused with the exception shown.\n\n| program | on monty |\n|---|---|\n{}",
        programs.len(),
        rows.join("\n")
    );
    assert!(
        wrong.is_empty(),
        "silently wrong results on monty:\n{}",
        wrong.join("\n")
    );
    assert!(
        matching >= MIN_MATCHING,
        "only {matching} programs match CPython"
    );
}
