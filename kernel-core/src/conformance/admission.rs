//! What core's admission refuses, the same on every backend: what the capabilities lack, a zero timeout.

use super::*;

/// A network allow-list is refused with Unsupported unless the backend can enforce one.
pub async fn network_allow_list_matches_capabilities(rt: &dyn Runtime) {
    let spec = SandboxSpec {
        network: NetworkPolicy::AllowList(vec!["example.com:443".into()]),
        ..test_spec()
    };
    match rt.create(&spec).await {
        Ok(sb) => {
            assert!(
                rt.capabilities().network_allow_list,
                "allow-list accepted but not a capability"
            );
            sb.shutdown().await.expect("shutdown");
        }
        Err(Error::Unsupported { .. }) => assert!(!rt.capabilities().network_allow_list),
        Err(e) => panic!("unexpected error: {e}"),
    }
}

/// Core admits every spec and request before a backend sees it, so every backend answers
/// alike: a CPU-time limit and a network allow-list are accepted exactly where the
/// capabilities include them and otherwise refused with admission's own error; a zero
/// timeout is refused with admission's error and leaves the sandbox usable.
pub async fn admission_is_the_same_on_every_backend(rt: &dyn Runtime) {
    let cpu = limited(|l| l.cpu_time = Some(Duration::from_secs(5)));
    let network = SandboxSpec {
        network: NetworkPolicy::AllowList(vec!["example.com:443".into()]),
        ..test_spec()
    };
    for (what, spec) in [("a cpu_time limit", cpu), ("a network allow-list", network)] {
        let expected = crate::admission::admit(rt, &spec)
            .err()
            .map(|e| e.to_string());
        match (rt.create(&spec).await, expected) {
            (Ok(sb), None) => sb.shutdown().await.expect("shutdown"),
            (Err(e), Some(refusal)) => {
                assert_eq!(e.to_string(), refusal, "{}: {what}", rt.name());
                assert!(matches!(e, Error::Unsupported { .. }), "{e}");
            }
            (Ok(_), Some(refusal)) => {
                panic!(
                    "{}: {what} was accepted, but admission refuses it: {refusal}",
                    rt.name()
                )
            }
            (Err(e), None) => panic!(
                "{}: {what} is within the capabilities, but the backend refused it: {e}",
                rt.name()
            ),
        }
    }
    let mut sb = rt.create(&test_spec()).await.expect("create");
    let zero = || ExecRequest::new("print('ran')").with_timeout(Duration::ZERO);
    let refusal = crate::admission::AdmittedExec::admit(zero())
        .err()
        .expect("admission refuses a zero timeout")
        .to_string();
    match sb.exec(zero(), Arc::new(NoTools)).await {
        Err(e) => assert_eq!(e.to_string(), refusal, "{}", rt.name()),
        Ok(out) => panic!("{}: a zero timeout ran: {:?}", rt.name(), out.status),
    }
    let out = sb
        .exec(ExecRequest::new("print('ran')"), Arc::new(NoTools))
        .await
        .expect("the sandbox still runs after a refused request");
    assert_ok(&out);
    assert_eq!(out.stdout.text(), "ran\n");
    sb.shutdown().await.expect("shutdown");
}
