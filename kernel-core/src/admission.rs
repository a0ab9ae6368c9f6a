//! Admission: every spec and every request is checked once, here, before a backend sees it
//! (OpenDAL's correctness check, in front of every backend).
//!
//! [`Runtime::create`] calls [`admit`], which validates the spec
//! ([`SandboxSpec::validate`]) and refuses, with [`Error::Unsupported`], whatever the backend's
//! [`Capabilities`] do not cover: a limit outside [`Capabilities::limits`], a workspace, a
//! network allow-list. [`Sandbox::exec`](crate::Sandbox::exec) calls [`AdmittedExec::admit`],
//! which refuses a program over the size cap and a zero timeout. Backends implement
//! [`Runtime::create_admitted`] and
//! [`Sandbox::exec_admitted`](crate::Sandbox::exec_admitted), which take only what passed:
//! [`Admitted`] and [`AdmittedExec`] cannot be made outside this module. So every backend
//! answers a bad spec or request with the same error, and none refuses by hand what
//! admission already refuses.

use std::ops::Deref;

use crate::error::{Error, Result};
use crate::exec::{ExecRequest, LimitKind};
use crate::runtime::{Capabilities, Runtime};
use crate::spec::{NetworkPolicy, SandboxSpec};

/// A spec that passed [`admit`] for one backend.
#[derive(Debug, Clone, Copy)]
pub struct Admitted<'a> {
    spec: &'a SandboxSpec,
}

impl<'a> Admitted<'a> {
    /// The admitted spec.
    pub fn spec(&self) -> &'a SandboxSpec {
        self.spec
    }
}

impl Deref for Admitted<'_> {
    type Target = SandboxSpec;

    fn deref(&self) -> &SandboxSpec {
        self.spec
    }
}

/// Checks `spec` for `runtime`: the spec's own validity ([`Error::InvalidRequest`] naming
/// the bad entry), then everything it asks for against the runtime's own capabilities
/// ([`Error::Unsupported`] naming what and what to do instead). The capabilities are the
/// runtime's, never the caller's, so an [`Admitted`] spec holds for that runtime.
pub fn admit<'a, R: Runtime + ?Sized>(runtime: &R, spec: &'a SandboxSpec) -> Result<Admitted<'a>> {
    admit_as(runtime.name(), &runtime.capabilities(), spec)
}

/// [`admit`] for the backend named `backend` with capabilities `caps`.
pub(crate) fn admit_as<'a>(
    backend: &'static str,
    caps: &Capabilities,
    spec: &'a SandboxSpec,
) -> Result<Admitted<'a>> {
    spec.validate()?;
    for kind in asked_limits(spec) {
        if !caps.limits.contains(kind) {
            return Err(Error::unsupported(
                format!("a {} limit", limit_name(kind)),
                backend,
                limit_hint(kind),
            ));
        }
    }
    if spec.workspace.is_some() && !caps.workspace {
        return Err(Error::unsupported(
            "a workspace",
            backend,
            "run without a workspace, or use a backend whose capabilities include workspace (see `agentkernel doctor`)",
        ));
    }
    if matches!(&spec.network, NetworkPolicy::AllowList(hosts) if !hosts.is_empty())
        && !caps.network_allow_list
    {
        return Err(Error::unsupported(
            "a network allow-list",
            backend,
            "sandboxes of this backend have no network at all: leave the network policy at Deny and reach outside services through a host tool",
        ));
    }
    Ok(Admitted { spec })
}

/// The limits `spec` asks for: those always set (wall time, output, `/tmp`) and each
/// optional one that is `Some`.
pub fn asked_limits(spec: &SandboxSpec) -> impl Iterator<Item = LimitKind> + '_ {
    let l = &spec.limits;
    LimitKind::ALL.into_iter().filter(move |kind| match kind {
        LimitKind::WallTime | LimitKind::Output | LimitKind::Disk => true,
        LimitKind::CpuTime => l.cpu_time.is_some(),
        LimitKind::Memory => l.memory_bytes.is_some(),
        LimitKind::Processes => l.processes.is_some(),
        LimitKind::FileSize => l.file_size_bytes.is_some(),
    })
}

fn limit_name(kind: LimitKind) -> &'static str {
    match kind {
        LimitKind::WallTime => "wall-time",
        LimitKind::CpuTime => "CPU-time",
        LimitKind::Memory => "memory",
        LimitKind::Processes => "process-count",
        LimitKind::FileSize => "file-size",
        LimitKind::Output => "output-size",
        LimitKind::Disk => "/tmp-size",
    }
}

fn limit_hint(kind: LimitKind) -> &'static str {
    match kind {
        LimitKind::CpuTime => {
            "leave cpu_time unset and rely on the wall-time limit (`.timeout(..)`), or use a backend whose capabilities include it (see `agentkernel doctor`)"
        }
        _ => {
            "leave that limit unset, or use a backend whose capabilities include it (see `agentkernel doctor`)"
        }
    }
}

/// A request that passed [`AdmittedExec::admit`].
#[derive(Clone)]
pub struct AdmittedExec {
    req: ExecRequest,
}

impl AdmittedExec {
    /// Checks `req`: the program-size cap ([`ExecRequest::MAX_CODE_BYTES`]) and a non-zero
    /// timeout; [`Error::InvalidRequest`] says which and what to do.
    pub fn admit(req: ExecRequest) -> Result<AdmittedExec> {
        req.check_size()?;
        if req.timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::invalid(
                "the timeout is zero",
                "give a timeout of at least 1 ms, e.g. `.timeout(Duration::from_secs(30))`",
            ));
        }
        Ok(AdmittedExec { req })
    }

    /// The same admission with another program: for a backend that rewrites the caller's
    /// admitted program before it runs (Monty expands tool imports, within a cap of its
    /// own), which may make it larger than the caller's cap allows. Only a backend's own
    /// rewrite of a program admitted here may use it: the caller's program was capped.
    pub fn with_code(mut self, code: String) -> AdmittedExec {
        self.req.code = code;
        self
    }

    /// The same admission with `timeout` for the run (a backend that spent part of the
    /// caller's time before the run gives it the rest); a zero is made 1 ms.
    pub fn with_timeout(mut self, timeout: std::time::Duration) -> AdmittedExec {
        self.req.timeout = Some(timeout.max(std::time::Duration::from_millis(1)));
        self
    }

    /// The request.
    pub fn into_inner(self) -> ExecRequest {
        self.req
    }
}

impl Deref for AdmittedExec {
    type Target = ExecRequest;

    fn deref(&self) -> &ExecRequest {
        &self.req
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::LimitSet;
    use std::time::Duration;

    fn caps(limits: LimitSet) -> Capabilities {
        Capabilities {
            limits,
            workspace: true,
            ..Capabilities::default()
        }
    }

    #[test]
    fn a_limit_outside_the_capabilities_is_refused_by_name() {
        let mut spec = SandboxSpec::default();
        spec.limits.cpu_time = Some(Duration::from_secs(2));
        let e = admit_as("x", &caps(LimitSet::ALL.without(LimitKind::CpuTime)), &spec)
            .unwrap_err()
            .to_string();
        assert!(e.contains("CPU-time"), "{e}");
        assert!(admit_as("x", &caps(LimitSet::ALL), &spec).is_ok());
        // An optional limit left unset needs no support.
        spec.limits.cpu_time = None;
        assert!(admit_as("x", &caps(LimitSet::ALL.without(LimitKind::CpuTime)), &spec).is_ok());
    }

    #[test]
    fn deny_all_capabilities_admit_nothing() {
        let spec = SandboxSpec::default();
        assert!(matches!(
            admit_as("x", &Capabilities::default(), &spec),
            Err(Error::Unsupported { .. })
        ));
    }

    #[test]
    fn network_and_workspace_need_their_capability() {
        let mut spec = SandboxSpec {
            network: NetworkPolicy::AllowList(vec!["example.com:443".into()]),
            ..SandboxSpec::default()
        };
        let e = admit_as("x", &caps(LimitSet::ALL), &spec).unwrap_err();
        assert!(matches!(e, Error::Unsupported { .. }), "{e}");
        spec.network = NetworkPolicy::Deny;
        spec.workspace = Some(std::env::temp_dir());
        let no_ws = Capabilities {
            limits: LimitSet::ALL,
            ..Capabilities::default()
        };
        assert!(matches!(
            admit_as("x", &no_ws, &spec),
            Err(Error::Unsupported { .. })
        ));
    }

    #[test]
    fn zero_timeouts_and_huge_programs_are_refused() {
        let zero = ExecRequest::new("1").with_timeout(Duration::ZERO);
        assert!(matches!(
            AdmittedExec::admit(zero),
            Err(Error::InvalidRequest { .. })
        ));
        let huge = ExecRequest::new("x".repeat(ExecRequest::MAX_CODE_BYTES + 1));
        assert!(AdmittedExec::admit(huge).is_err());
        let ok = AdmittedExec::admit(ExecRequest::new("1")).unwrap();
        assert_eq!(ok.with_code("2".into()).code, "2");
    }

    #[test]
    fn limit_sets_serialize_as_their_kinds() {
        let set = LimitSet::of(&[LimitKind::WallTime, LimitKind::Memory]);
        let json = serde_json::to_string(&set).unwrap();
        assert_eq!(json, r#"["wall_time","memory"]"#);
        assert_eq!(serde_json::from_str::<LimitSet>(&json).unwrap(), set);
        assert!(set.contains(LimitKind::Memory) && !set.contains(LimitKind::CpuTime));
    }
}
