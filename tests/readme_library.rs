//! The README's Library program compiles as written and runs, on each backend alone: the
//! crate `testdata/readme-library` (outside the workspace; its `build.rs` takes the program
//! out of README.md and checks the README's `Cargo.toml` lines) is built with
//! `default-features = false` and one backend feature at a time, then run.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use agentkernel_testkit::{microvm_image_for, wasm_guest};

use std::path::PathBuf;
use std::process::Command;

/// The target directory this test was built into (the crate shares it: no second build of
/// the dependencies).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // <target>/<profile>/deps/<test binary>
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

fn run_readme_program(feature: &str) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let crate_dir = root.join("testdata/readme-library");
    // The workspace's lock, so the crate builds the same dependency versions (once: the
    // tests run in parallel).
    static LOCK: std::sync::Once = std::sync::Once::new();
    LOCK.call_once(|| {
        std::fs::copy(root.join("Cargo.lock"), crate_dir.join("Cargo.lock")).unwrap();
    });
    let out = Command::new(env!("CARGO"))
        .args(["run", "--quiet", "--manifest-path"])
        .arg(crate_dir.join("Cargo.toml"))
        .args(["--features", feature])
        .env("CARGO_TARGET_DIR", target_dir())
        // The program runs in a fresh directory: no agentkernel.toml of the checkout.
        .current_dir(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the README's program with --features {feature}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("cannot divide by zero") && stdout.contains("Succeeded"),
        "{stdout}"
    );
}

#[test]
fn the_readme_library_program_runs_on_process_alone() {
    run_readme_program("process");
}

#[test]
fn the_readme_library_program_runs_on_wasm_alone() {
    wasm_guest();
    run_readme_program("wasm");
}

#[test]
fn the_readme_library_program_runs_on_monty_alone() {
    run_readme_program("monty");
}

#[test]
fn the_readme_library_program_runs_on_microvm_alone() {
    if microvm_image_for("the_readme_library_program_runs_on_microvm_alone").is_none() {
        return;
    }
    run_readme_program("microvm");
}
