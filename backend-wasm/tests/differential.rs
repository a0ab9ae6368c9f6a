//! Differential test: every program in `testdata/programs` prints the same stdout and ends
//! with the same exit status (and, for an uncaught exception, the same exception) on the
//! wasm backend as under the host's native `python3`.

mod common;

use std::sync::Arc;

use agentkernel_core::conformance::test_spec;
use agentkernel_core::{ExecRequest, NoTools, Runtime};

include!("../../testdata/differential.rs");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_output_matches_native_python() {
    let rt = common::runtime();
    let programs = differential_programs();
    assert!(
        programs.len() >= 40,
        "the differential set has {} programs",
        programs.len()
    );
    let mut mismatches = Vec::new();
    for path in &programs {
        let code = std::fs::read_to_string(path).expect("read program");
        let mut sb = rt.create(&test_spec()).await.expect("create");
        let out = sb
            .exec(ExecRequest::new(code), Arc::new(NoTools))
            .await
            .expect("exec");
        sb.shutdown().await.expect("shutdown");
        let wasm = Ending::of(&out);
        let expected = Ending::native(path);
        if wasm != expected {
            mismatches.push(format!(
                "{}:\n  native: {expected:?}\n  wasm:   {wasm:?}\n  wasm stderr: {}",
                path.display(),
                out.stderr.text()
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} programs differ:\n{}",
        mismatches.len(),
        programs.len(),
        mismatches.join("\n")
    );
}
