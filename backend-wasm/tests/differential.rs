//! Differential test: every program in `testdata/programs` prints the same stdout and ends
//! with the same exit status (and, for an uncaught exception, the same exception) on the
//! wasm backend as under the host's native `python3`; a program that does not raise also
//! prints the same stderr (a traceback names files differently, so only its last line, the
//! exception, is compared).

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
        let (expected, native_stderr) = Ending::native_with_stderr(path);
        if wasm != expected {
            mismatches.push(format!(
                "{}:\n  native: {expected:?}\n  wasm:   {wasm:?}\n  wasm stderr: {}",
                path.display(),
                out.stderr.text()
            ));
        } else if expected.exception.is_none() && out.stderr.text() != native_stderr {
            mismatches.push(format!(
                "{}: stderr differs\n  native: {native_stderr:?}\n  wasm:   {:?}",
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

/// Modules outside the snapshot (here `email`, `xml.dom.minidom`, `tomllib`, a codec) are
/// not in memory when a sandbox starts, and import on first use from the standard library
/// mounted at `/python`, compiled; they work as under native python3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modules_outside_the_snapshot_import_from_the_standard_library_mount() {
    let code = "import sys\n\
        lazy = ['email', 'xml.dom.minidom', 'tomllib', 'encodings.cp1252']\n\
        print([m in sys.modules for m in lazy])\n\
        import email.mime.text, xml.dom.minidom, tomllib\n\
        print(email.mime.text.MIMEText('hi')['Content-Type'])\n\
        print(xml.dom.minidom.parseString('<a><b>x</b></a>').documentElement.tagName)\n\
        print(tomllib.loads('a = 1'), 'é'.encode('cp1252'))\n\
        print(email.__file__, email.__cached__ is not None)";
    let mut sb = common::runtime().create(&test_spec()).await.unwrap();
    let out = sb
        .exec(ExecRequest::new(code), Arc::new(NoTools))
        .await
        .unwrap();
    assert_eq!(
        out.stdout.text(),
        "[False, False, False, False]\n\
         text/plain; charset=\"us-ascii\"\n\
         a\n\
         {'a': 1} b'\\xe9'\n\
         /python/email/__init__.py True\n",
        "{:?} {}",
        out.status,
        out.stderr.text()
    );
    sb.shutdown().await.unwrap();
}
