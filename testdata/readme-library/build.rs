//! Takes the README's Library section apart: its Rust block becomes `$OUT_DIR/library.rs`
//! (compiled as it is written), and its TOML blocks must match this crate's `Cargo.toml`
//! (the dependency lines but the path to the checkout, and the profile lines).

use std::path::Path;

fn main() {
    // At run time, not `env!`: cargo may reuse this script's binary built from another
    // checkout of the crate (a worktree at another path), whose path `env!` would bake in.
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let readme_path = Path::new(&dir).join("../../README.md");
    println!("cargo:rerun-if-changed={}", readme_path.display());
    let readme = std::fs::read_to_string(&readme_path).expect("README.md");
    let section = readme
        .split("\n## Library\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a `## Library` section in README.md");
    let blocks = |lang: &str| -> Vec<String> {
        section
            .split(&format!("```{lang}\n"))
            .skip(1)
            .map(|b| b.split("\n```").next().expect("a closed block").to_owned())
            .collect()
    };
    let rust = blocks("rust");
    assert_eq!(rust.len(), 1, "the Library section has one Rust block");
    let out = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("library.rs");
    std::fs::write(out, &rust[0]).expect("write library.rs");

    let manifest = std::fs::read_to_string(Path::new(&dir).join("Cargo.toml")).expect("Cargo.toml");
    for block in blocks("toml") {
        for line in block.lines().filter(|l| !l.trim().is_empty()) {
            if line.starts_with("agentkernel = ") {
                // The README points at a checkout beside the application, with one backend.
                assert!(
                    line.contains("default-features = false"),
                    "the README's dependency line builds one backend: {line}"
                );
                continue;
            }
            assert!(
                manifest.lines().any(|l| l == line),
                "the README's line {line:?} is not in testdata/readme-library/Cargo.toml"
            );
        }
    }
}
