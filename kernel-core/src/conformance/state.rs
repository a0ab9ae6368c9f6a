//! State between runs: globals across execs, reset, snapshots, workspaces across sandboxes.

use super::*;

/// Globals persist across `exec` calls on one sandbox.
pub async fn state_persists_across_exec(rt: &dyn Runtime) {
    let mut sb = rt.create(&test_spec()).await.expect("create");
    let out = sb
        .exec(
            ExecRequest::new("x = 41\ndef inc(v):\n    return v + 1"),
            Arc::new(NoTools),
        )
        .await
        .expect("exec");
    assert_ok(&out);
    let out = sb
        .exec(ExecRequest::new("print(inc(x))"), Arc::new(NoTools))
        .await
        .expect("exec");
    assert_ok(&out);
    assert_eq!(out.stdout.text(), "42\n");
    sb.shutdown().await.expect("shutdown");
}

/// `reset` forgets globals and files in `/tmp` (or the backend says Unsupported).
pub async fn reset_clears_state(rt: &dyn Runtime) {
    let mut sb = rt.create(&test_spec()).await.expect("create");
    let out = sb
        .exec(
            ExecRequest::new("secret = 1\nopen('/tmp/left-over', 'w').write('x')"),
            Arc::new(NoTools),
        )
        .await
        .expect("exec");
    assert_ok(&out);
    match sb.reset().await {
        Ok(()) => {
            assert!(
                rt.capabilities().reset,
                "reset worked but capabilities say it does not"
            );
            let out = sb
                .exec(
                    ExecRequest::new(
                        "from pathlib import Path\ntry:\n    secret\n    defined = True\nexcept NameError:\n    defined = False\nprint(defined, Path('/tmp/left-over').exists())",
                    ),
                    Arc::new(NoTools),
                )
                .await
                .expect("exec after reset");
            assert_eq!(out.stdout.text(), "False False\n");
        }
        Err(Error::Unsupported { .. }) => assert!(!rt.capabilities().reset),
        Err(e) => panic!("reset failed: {e}"),
    }
    sb.shutdown().await.expect("shutdown");
}

/// `snapshot` works or answers Unsupported, as capabilities say.
pub async fn snapshot_matches_capabilities(rt: &dyn Runtime) {
    let mut sb = rt.create(&test_spec()).await.expect("create");
    match sb.snapshot().await {
        Ok(snap) => {
            assert!(
                rt.capabilities().snapshot,
                "snapshot worked but capabilities say it does not"
            );
            assert_eq!(snap.backend, rt.name());
        }
        Err(Error::Unsupported { .. }) => assert!(!rt.capabilities().snapshot),
        Err(e) => panic!("snapshot failed: {e}"),
    }
    sb.shutdown().await.expect("shutdown");
}

/// Files written to `/workspace` are on the host and visible to the next sandbox.
pub async fn workspace_persists_across_sandboxes(rt: &dyn Runtime) {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = SandboxSpec {
        workspace: Some(dir.path().to_path_buf()),
        ..test_spec()
    };
    let out = run_once(
        rt,
        &spec,
        "open('/workspace/note.txt', 'w').write('remember me')",
    )
    .await;
    assert_ok(&out);
    let on_host =
        std::fs::read_to_string(dir.path().join("note.txt")).expect("file is on the host");
    assert_eq!(on_host, "remember me");
    let out = run_once(rt, &spec, "print(open('/workspace/note.txt').read())").await;
    assert_eq!(out.stdout.text(), "remember me\n");
}
