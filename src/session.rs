//! Sessions: one sandbox kept alive for an agent conversation, bound to a named workspace.
//!
//! `kernel.session("conv-1")` returns the session, starting it on first use. Interpreter
//! globals persist across its `exec` calls; files persist in its workspace (also across
//! kernel restarts, as the workspace lives in the data dir). Processes do not: on `process`
//! what an exec leaves running is killed at its time limit or when the next exec starts,
//! whichever comes first, and threads it left in the interpreter wait, stopped, until the
//! next exec. A session unused for the idle
//! timeout is closed: its sandbox stops, its workspace stays, and the next
//! `kernel.session(..)` of that name starts a fresh interpreter on the same files.
//!
//! A run that a limit kills (or that crashes) ends the session's sandbox; the session's
//! next run starts a fresh interpreter on the same workspace first, and its outcome says
//! so (a line at the end of its stderr). [`Session::reset`] restarts it at once.
//!
//! Where the backend can snapshot ([`agentkernel_core::Capabilities::snapshot`]),
//! [`Session::save`] returns the interpreter state and [`crate::Kernel::resume_session`]
//! restores it, in this process or another.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use agentkernel_core::{
    Error, ExecOutcome, ExecRequest, ExecStatus, Result, Sandbox, SandboxSpec, Snapshot, Workspace,
};
use serde::{Deserialize, Serialize};

use crate::kernel::Kernel;

/// Default idle timeout of a session.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Per-session changes to the kernel's sandbox spec ([`Kernel::session_with_options`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionOptions {
    /// Limits that replace the kernel's (`None`: the kernel's). Each may only be as strict
    /// as the kernel's or stricter: a looser one is refused, so whoever configured the
    /// kernel sets the ceiling.
    pub limits: Option<agentkernel_core::Limits>,
    /// Environment variables added to (or overriding) the kernel's.
    pub env: std::collections::BTreeMap<String, String>,
    /// The tools the session's programs may call, as patterns over `server.tool`
    /// (`"github.create_issue"`, `"github.*"`, `"*"`), within what the kernel's tool policy
    /// allows: a call passes only when both allow it. `None`: the kernel's policy alone;
    /// an empty list: no tool calls at all.
    pub tools: Option<Vec<String>>,
}

impl SessionOptions {
    /// The kernel's tools narrowed to [`SessionOptions::tools`]: the policy's allow-list
    /// becomes the names of the tools both allow.
    fn narrow_tools(
        &self,
        tools: crate::kernel::KernelTools,
    ) -> Result<crate::kernel::KernelTools> {
        let Some(patterns) = &self.tools else {
            return Ok(tools);
        };
        let asked = agentkernel_tool_bridge::ToolPolicy {
            allow: patterns.clone(),
            ..agentkernel_tool_bridge::ToolPolicy::default()
        };
        asked.validate().map_err(|m| {
            Error::invalid(
                m.replace("tools.allow pattern", "tool pattern"),
                "give tool patterns as \"server.tool\", \"server.*\" or \"*\"",
            )
        })?;
        match tools {
            Some((registry, mut policy)) => {
                policy.allow = registry
                    .catalog()
                    .into_iter()
                    .map(|t| t.name)
                    .filter(|name| policy.allows(name) && asked.allows(name))
                    .collect();
                Ok(Some((registry, policy)))
            }
            None if patterns.is_empty() => Ok(None),
            None => Err(Error::invalid(
                "tools were asked for, but this kernel has no tools",
                "configure tools on the kernel (the server's --mcp or config), or leave `tools` out",
            )),
        }
    }

    /// Applies these options to `spec` (the kernel's, with the session's workspace).
    fn apply(&self, spec: &mut SandboxSpec) -> Result<()> {
        if let Some(limits) = &self.limits {
            check_within(limits, &spec.limits)?;
            spec.limits = limits.clone();
        }
        spec.env.extend(self.env.clone());
        spec.validate()
    }
}

/// Refuses a limit of `asked` looser than the same limit of `ceiling`.
fn check_within(
    asked: &agentkernel_core::Limits,
    ceiling: &agentkernel_core::Limits,
) -> Result<()> {
    fn opt<T: PartialOrd + std::fmt::Debug>(
        name: &str,
        asked: Option<T>,
        max: Option<T>,
    ) -> Result<()> {
        match (asked, max) {
            (_, None) => Ok(()),
            (None, Some(max)) => Err(Error::invalid(
                format!("{name} cannot be unlimited: this kernel caps it at {max:?}"),
                format!("give a {name} of at most {max:?}, or leave it out to get the kernel's"),
            )),
            (Some(a), Some(max)) if a > max => Err(Error::invalid(
                format!("{name} {a:?} is above this kernel's {max:?}"),
                format!("give a {name} of at most {max:?}, or leave it out to get the kernel's"),
            )),
            _ => Ok(()),
        }
    }
    opt("wall_time", Some(asked.wall_time), Some(ceiling.wall_time))?;
    opt("cpu_time", asked.cpu_time, ceiling.cpu_time)?;
    opt("memory_bytes", asked.memory_bytes, ceiling.memory_bytes)?;
    opt(
        "output_bytes",
        Some(asked.output_bytes),
        Some(ceiling.output_bytes),
    )?;
    opt("processes", asked.processes, ceiling.processes)?;
    opt(
        "file_size_bytes",
        asked.file_size_bytes,
        ceiling.file_size_bytes,
    )?;
    opt("tmp_bytes", Some(asked.tmp_bytes), Some(ceiling.tmp_bytes))
}

/// What [`Kernel::sessions`] reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Session name.
    pub name: String,
    /// Its workspace's name.
    pub workspace: String,
    /// Executions so far.
    pub execs: u64,
    /// Seconds since its last use.
    pub idle_secs: u64,
    /// Start time, seconds since the Unix epoch.
    pub started: u64,
}

struct State {
    sandbox: Option<Box<dyn Sandbox>>,
    execs: u64,
    /// Why the last exec ended the sandbox (a limit kill or a crash: the sandbox is gone),
    /// so the next exec restarts it first.
    ended: Option<String>,
}

struct Inner {
    name: String,
    workspace: Workspace,
    /// The kernel's tools (not the kernel itself: the kernel owns its sessions), narrowed
    /// to the session's own allow-list when it has one.
    tools: crate::kernel::KernelTools,
    /// The options it was started with (`None`: the kernel's spec as it is).
    options: Option<SessionOptions>,
    state: tokio::sync::Mutex<State>,
    last_used: Mutex<Instant>,
    started: SystemTime,
    /// The kernel's output limit (for the session's own notes).
    output_cap: usize,
    /// Set when the session leaves the kernel's map (closed, or idle too long), before its
    /// sandbox is shut down: from then on its handles fail at once.
    closed: std::sync::atomic::AtomicBool,
}

/// A live session. Cheap to clone; every clone is the same session.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("name", &self.inner.name)
            .field("workspace", &self.inner.workspace.name)
            .finish()
    }
}

impl Session {
    /// The session's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Its workspace.
    pub fn workspace(&self) -> &Workspace {
        &self.inner.workspace
    }

    /// Runs `code` in the session's interpreter.
    pub async fn exec(&self, code: impl Into<String>) -> Result<ExecOutcome> {
        self.exec_request(ExecRequest::new(code)).await
    }

    /// Like [`Session::exec`] with a full request.
    pub async fn exec_request(&self, req: ExecRequest) -> Result<ExecOutcome> {
        self.inner.workspace.check_quota()?;
        let mut state = self.inner.state.lock().await;
        self.touch();
        let ended = state.ended.take();
        let sandbox = state
            .sandbox
            .as_mut()
            .filter(|_| !self.is_closed())
            .ok_or_else(|| Error::SandboxLost {
                reason: format!("session {:?} was closed", self.inner.name),
            })?;
        // A limit kill or a crash ended the sandbox: a fresh interpreter on the same
        // workspace takes its place, and the outcome says so.
        let restarted = match ended {
            Some(why) => match sandbox.reset().await {
                Ok(()) => Some(why),
                Err(e) => {
                    state.ended = Some(why);
                    return Err(e);
                }
            },
            None => None,
        };
        let sink = req.output.clone();
        let out = sandbox
            .exec(req, crate::kernel::gate(&self.inner.tools))
            .await;
        state.execs += 1;
        self.touch();
        let mut out = match out {
            Ok(out) => out,
            Err(e) => {
                // A sandbox that broke mid-run is restarted by the next run too.
                if matches!(e, Error::SandboxLost { .. }) {
                    state.ended = Some(format!("was lost ({e})"));
                }
                return Err(e);
            }
        };
        if matches!(
            out.status,
            ExecStatus::Killed { .. } | ExecStatus::Crashed { .. }
        ) {
            state.ended = Some(match &out.status {
                ExecStatus::Killed { limit } => format!("was killed by its {limit} limit"),
                ExecStatus::Crashed { reason } => format!("crashed ({reason})"),
                _ => unreachable!("matched above"),
            });
        }
        if let Some(why) = restarted {
            let note = format!(
                "agentkernel: session {:?} was restarted before this run: its previous run {why}, so its variables are gone (its workspace's files are kept)\n",
                self.inner.name
            );
            // After the program's own stderr, like the kernel's other notes: within the
            // output limit, and through the live sink.
            out.stderr.push_live(
                note.as_bytes(),
                self.inner.output_cap,
                sink.as_ref(),
                agentkernel_core::StreamKind::Stderr,
            );
        }
        Ok(out)
    }

    /// The sandbox's root directory on the host ([`agentkernel_core::Sandbox::host_root`]),
    /// when its backend has one; waits for a running execution to end.
    pub async fn host_root(&self) -> Option<agentkernel_core::HostRoot> {
        let state = self.inner.state.lock().await;
        state.sandbox.as_ref()?.host_root()
    }

    /// Clears the interpreter state (globals, `/tmp`); the workspace's files stay.
    pub async fn reset(&self) -> Result<()> {
        let mut state = self.inner.state.lock().await;
        state.ended = None;
        match state.sandbox.as_mut() {
            Some(s) => s.reset().await,
            None => Err(Error::SandboxLost {
                reason: format!("session {:?} was closed", self.inner.name),
            }),
        }
    }

    /// Saves the interpreter state, where the backend supports it.
    pub async fn save(&self) -> Result<Snapshot> {
        let mut state = self.inner.state.lock().await;
        match state.sandbox.as_mut() {
            Some(s) => s.snapshot().await,
            None => Err(Error::SandboxLost {
                reason: format!("session {:?} was closed", self.inner.name),
            }),
        }
    }

    fn is_closed(&self) -> bool {
        self.inner.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Marks it closed (its handles fail from now on); its sandbox is shut down next.
    fn mark_closed(&self) {
        self.inner
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn touch(&self) {
        if let Ok(mut t) = self.inner.last_used.lock() {
            *t = Instant::now();
        }
    }

    fn idle_for(&self) -> Duration {
        self.inner
            .last_used
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }

    async fn shutdown(&self) -> Result<()> {
        let sandbox = self.inner.state.lock().await.sandbox.take();
        match sandbox {
            Some(s) => s.shutdown().await,
            None => Ok(()),
        }
    }

    fn info(&self) -> SessionInfo {
        SessionInfo {
            name: self.inner.name.clone(),
            workspace: self.inner.workspace.name.clone(),
            execs: self.inner.state.try_lock().map(|s| s.execs).unwrap_or(0),
            idle_secs: self.idle_for().as_secs(),
            started: self
                .inner
                .started
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }
}

/// The sessions of one kernel.
#[derive(Clone)]
pub(crate) struct Sessions {
    map: Arc<Mutex<HashMap<String, Session>>>,
    idle_timeout: Duration,
    reaper: Arc<std::sync::Once>,
}

impl Sessions {
    pub(crate) fn new(idle_timeout: Duration) -> Self {
        Sessions {
            map: Arc::default(),
            idle_timeout,
            reaper: Arc::new(std::sync::Once::new()),
        }
    }

    fn get(&self, name: &str) -> Option<Session> {
        self.map.lock().ok()?.get(name).cloned()
    }

    pub(crate) async fn get_or_start(
        &self,
        kernel: &Kernel,
        name: &str,
        workspace: Workspace,
    ) -> Result<Session> {
        self.start_with(kernel, name, workspace, None, None).await
    }

    /// Starts session `name` on `ws` (or returns the open one), from `snapshot` if given,
    /// with `options` applied to the kernel's spec.
    pub(crate) async fn start_with(
        &self,
        kernel: &Kernel,
        name: &str,
        ws: Workspace,
        snapshot: Option<&Snapshot>,
        options: Option<&SessionOptions>,
    ) -> Result<Session> {
        agentkernel_core::validate_workspace_name(name).map_err(|_| {
            Error::invalid(
                format!("{name:?} is not a valid session name"),
                "use 1-64 characters: letters, digits, '.', '_' and '-', starting with a letter or digit",
            )
        })?;
        if snapshot.is_none()
            && let Some(s) = self.get(name)
        {
            if s.inner.workspace.path != ws.path {
                return Err(Error::invalid(
                    format!(
                        "session {name:?} is bound to workspace {:?}, not {:?}",
                        s.inner.workspace.name, ws.name
                    ),
                    "close the session first to bind it to another workspace",
                ));
            }
            // Never hand back a session with other limits, environment or tools than asked
            // (an allow-list asked for and silently not applied would widen what runs).
            // (Default options change nothing: the same as none.)
            let as_asked = |o: Option<&SessionOptions>| o.cloned().unwrap_or_default();
            if options.is_some() && as_asked(options) != as_asked(s.inner.options.as_ref()) {
                return Err(Error::invalid(
                    format!("session {name:?} is already open with other options"),
                    "close it first, or ask for it with the options it was started with",
                ));
            }
            return Ok(s);
        }
        let mut spec = SandboxSpec {
            workspace: Some(ws.path.clone()),
            ..kernel.spec().clone()
        };
        let mut tools = kernel.tools_handle();
        if let Some(options) = options {
            options.apply(&mut spec)?;
            tools = options.narrow_tools(tools)?;
        }
        let sandbox = match snapshot {
            Some(snap) => kernel.runtime().restore(&spec, snap).await?,
            None => kernel.runtime().create(&spec).await?,
        };
        let session = Session {
            inner: Arc::new(Inner {
                options: options.cloned(),
                name: name.to_owned(),
                workspace: ws,
                tools,
                state: tokio::sync::Mutex::new(State {
                    sandbox: Some(sandbox),
                    execs: 0,
                    ended: None,
                }),
                last_used: Mutex::new(Instant::now()),
                closed: std::sync::atomic::AtomicBool::new(false),
                output_cap: spec.limits.output_bytes,
                started: SystemTime::now(),
            }),
        };
        // Two callers may race to start the same session: the first one in the map wins and
        // the other's sandbox is stopped.
        let (winner, loser) = {
            let mut map = self
                .map
                .lock()
                .map_err(|_| Error::Internal("session map poisoned".into()))?;
            match map.get(name) {
                Some(existing) if snapshot.is_none() => (existing.clone(), Some(session)),
                _ => {
                    let old = map.insert(name.to_owned(), session.clone());
                    (session, old)
                }
            }
        };
        if let Some(l) = loser {
            let _ = l.shutdown().await;
        }
        self.start_reaper();
        Ok(winner)
    }

    pub(crate) fn list(&self) -> Vec<SessionInfo> {
        let mut out: Vec<SessionInfo> = self
            .map
            .lock()
            .map(|m| m.values().map(Session::info).collect())
            .unwrap_or_default();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub(crate) async fn close(&self, name: &str) -> Result<bool> {
        let removed = self.map.lock().ok().and_then(|mut m| m.remove(name));
        match removed {
            Some(s) => {
                s.mark_closed();
                s.shutdown().await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Starts (once) the task that closes idle sessions.
    fn start_reaper(&self) {
        let map = Arc::downgrade(&self.map);
        let idle = self.idle_timeout;
        self.reaper.call_once(|| {
            let Ok(handle) = tokio::runtime::Handle::try_current() else {
                return;
            };
            handle.spawn(async move {
                let tick = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(30));
                loop {
                    tokio::time::sleep(tick).await;
                    let Some(map) = map.upgrade() else { return };
                    let expired: Vec<Session> = match map.lock() {
                        Ok(mut m) => {
                            let names: Vec<String> = m
                                .iter()
                                // A session running a long exec is busy, not idle.
                                .filter(|(_, s)| {
                                    s.idle_for() > idle && s.inner.state.try_lock().is_ok()
                                })
                                .map(|(n, _)| n.clone())
                                .collect();
                            let gone: Vec<Session> =
                                names.iter().filter_map(|n| m.remove(n)).collect();
                            // Closed while still under the map's lock: nobody can see the
                            // session gone from the map and still use it.
                            gone.iter().for_each(Session::mark_closed);
                            gone
                        }
                        Err(_) => return,
                    };
                    drop(map);
                    for s in expired {
                        tracing::info!(session = %s.inner.name, "closing idle session");
                        let _ = s.shutdown().await;
                    }
                }
            });
        });
    }
}
