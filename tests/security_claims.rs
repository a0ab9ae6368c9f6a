//! SECURITY.md names, for every claim, the test that checks it. This test reads those names
//! and finds each test in the repository's sources: a claim whose test was renamed or
//! removed is a claim without a test.

use std::collections::BTreeSet;
use std::path::Path;

/// The `fn` names defined in every `.rs` file under `dir` (tests, unit tests, conformance
/// checks), without reading `target/`.
fn functions_under(dir: &Path, found: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).expect("list").flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            functions_under(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("read");
            for line in text.lines() {
                let line = line.trim_start();
                let rest = [
                    "pub async fn ",
                    "async fn ",
                    "pub fn ",
                    "fn ",
                    "pub(crate) fn ",
                ]
                .iter()
                .find_map(|p| line.strip_prefix(p));
                if let Some(rest) = rest {
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    found.insert(name);
                }
            }
        }
    }
}

/// The test names a table row's last cell cites: backticked snake_case names with at least
/// two underscores (so `EPERM`, `/tmp` or `open_tree` are not taken for tests), the part
/// after the last `::` of a path.
fn cited_tests(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .filter_map(|quoted| {
            let name = quoted.rsplit("::").next()?;
            let name = name.strip_suffix("()").unwrap_or(name);
            let ok = name.matches('_').count() >= 2
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && !name.starts_with('_')
                && !name.ends_with('_');
            ok.then(|| name.to_owned())
        })
        .collect()
}

#[test]
fn every_test_security_md_cites_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let security = std::fs::read_to_string(root.join("SECURITY.md")).expect("SECURITY.md");
    let mut defined = BTreeSet::new();
    functions_under(root, &mut defined);
    let mut cited = 0;
    let mut missing = Vec::new();
    let mut in_claims = false;
    for line in security.lines() {
        // Rows of the "| Claim | Test |" tables: the last cell names the tests.
        if line.starts_with("| Claim | Test |") {
            in_claims = true;
            continue;
        }
        if !line.starts_with('|') {
            in_claims = false;
        }
        let cells: Vec<&str> = line.split(" | ").collect();
        if !in_claims || cells.len() < 2 {
            continue;
        }
        for name in cited_tests(cells[cells.len() - 1]) {
            cited += 1;
            if !defined.contains(&name) {
                missing.push(name);
            }
        }
    }
    assert!(
        cited > 50,
        "found only {cited} cited tests: is the table format still `| claim | test |`?"
    );
    assert!(
        missing.is_empty(),
        "SECURITY.md cites tests that do not exist (renamed or removed?): {missing:?}"
    );
}
