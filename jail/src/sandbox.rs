//! Creating, running and killing jailed interpreters.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentkernel_core::SandboxState;
use agentkernel_core::admission::AdmittedExec;
use agentkernel_core::guest::{
    AGENT_SOURCE, Abort, ExecFrame, ExecReport, GuestBackend, GuestConn, GuestSandbox, Hello,
};
use agentkernel_core::{
    Error, ExecOutcome, ExecRequest, ExecStatus, Result, Sandbox, SandboxSpec, Snapshot, ToolHost,
    WorkspaceLock,
};
use async_trait::async_trait;
use tokio::process::{Child, ChildStderr, ChildStdout};

use crate::cgroup::SandboxCgroup;
use crate::hostids::{self, HostIds};
use crate::jail::{self, JailPlan};
use crate::layer::{self, Layer};
use crate::plan;
use crate::python::{GuestAgent, NativeAgent};
use crate::runtime::Inner;

/// How long an interpreter may take to start and say hello.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running jailed interpreter.
pub(crate) struct Live {
    outer: Child,
    pid1: OwnedFd,
    conn: GuestConn<tokio::net::UnixStream, ChildStdout, ChildStderr>,
    // Closes (and the guest's init exits) when we are dropped; a reset command is written
    // on it (see `Live::reset_in_place`).
    lifeline: std::fs::File,
    cgroup: Option<SandboxCgroup>,
    pub hello: Hello,
    /// Landlock state the jail reported (`jail::LANDLOCK_*`).
    pub landlock: u32,
    /// Directories lent to the sandbox's uid (no idmapped mount there): given back when
    /// the sandbox is gone.
    lent: Vec<Lent>,
    /// The workspace's write layer (`None`: no host workspace, or the kernel could not
    /// make one and `/workspace` is the host directory itself).
    layer: Option<Arc<Layer>>,
    /// The sandbox's host ids (and, as root, their lease: dropped after everything else).
    _ids: HostIds,
}

/// A host directory handed to a sandbox's uid for its life (see `plan::hand_over`).
struct Lent {
    dir: std::path::PathBuf,
    /// The sandbox's host uid: entries it owns are given back.
    from: u32,
    /// The directory's owner and group before.
    uid: u32,
    gid: u32,
}

impl Live {
    /// Resets the sandbox without a new jail: the guest's init kills every other process,
    /// empties `/tmp`, `/dev/shm` (and `/workspace` when `wipe_workspace`), checks nothing
    /// survived, and forks a fresh agent from its own pre-imported state. Any failure is an
    /// error (the caller then starts a new sandbox).
    async fn reset_in_place(&mut self, wipe_workspace: bool) -> Result<()> {
        use std::io::Write as _;
        let token = uuid::Uuid::new_v4().simple().to_string();
        let mut command = vec![if wipe_workspace { b'W' } else { b'R' }];
        command.extend_from_slice(token.as_bytes());
        // 33 bytes: one atomic pipe write.
        (&self.lifeline)
            .write_all(&command)
            .map_err(|e| Error::io("asking the sandbox to reset", e))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        self.hello = self.conn.restarted(&token, deadline).await?;
        Ok(())
    }

    /// Tells the guest's init that an exec with `timeout` starts (`X`, a fresh token and
    /// the timeout on the lifeline, which only init reads): init kills what the previous
    /// exec left running, continues the agent (stopped since its last exec), marks this
    /// exec's end with the token, and at `timeout` kills what this exec left running.
    /// Returns the token. A failed write means init is gone; the exec then finds the agent
    /// gone too.
    fn start_exec(&mut self, timeout: Duration) -> String {
        use std::io::Write as _;
        let token = uuid::Uuid::new_v4().simple().to_string();
        let millis = timeout.as_millis().min(9_999_999_999);
        let command = format!("X{token}{millis:010}");
        // 43 bytes: one atomic pipe write.
        if let Err(e) = (&self.lifeline).write_all(command.as_bytes()) {
            tracing::debug!(error = %e, "the sandbox's init is gone");
        }
        token
    }

    /// SIGKILL to pid 1 of the sandbox: the kernel then kills every process in its pid
    /// namespace.
    fn kill(&mut self) {
        kill_pid1(&self.pid1);
    }

    /// Waits until the outer process exits, which it does only after pid 1 (and with it
    /// every process of the namespace) is gone. Returns the mirrored exit code.
    async fn wait(&mut self) -> Option<i32> {
        match tokio::time::timeout(Duration::from_secs(10), self.outer.wait()).await {
            Ok(Ok(status)) => status.code().or(status.signal().map(|s| 128 + s)),
            _ => {
                let _ = self.outer.start_kill();
                let _ = self.outer.wait().await;
                None
            }
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.kill();
        let _ = self.outer.start_kill();
        // After `JailSandbox::end` every process of the sandbox is gone; on a bare drop
        // they are dying (SIGKILL sent), which is as good as it gets without waiting.
        for lent in &self.lent {
            if let Err(e) = hostids::restore_owner(&lent.dir, lent.from, lent.uid, lent.gid) {
                tracing::warn!(dir = %lent.dir.display(), error = %e, "could not give a workspace's files back to its owner");
            }
        }
    }
}

impl Live {
    /// The host pid of the guest's init, read from its pidfd (so it is the jail's process and
    /// no other); an error once that process is gone (the pidfd then names none).
    fn init_pid(&self) -> std::result::Result<i32, String> {
        let fdinfo =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", self.pid1.as_raw_fd()))
                .map_err(|e| format!("reading the init's pidfd info: {e}"))?;
        fdinfo
            .lines()
            .find_map(|l| l.strip_prefix("Pid:"))
            .and_then(|p| p.trim().parse().ok())
            .filter(|p: &i32| *p > 0)
            .ok_or_else(|| "the init's pidfd names no live pid".to_owned())
    }

    /// The sandbox's root, from its pid 1 (see [`Sandbox::host_root`]): `/proc/PID/root`
    /// opened `O_PATH`, PID read from our pidfd, and the pidfd checked alive afterwards, so
    /// the root is that process's and not a later one's that took its pid.
    fn host_root(&self) -> Option<agentkernel_core::HostRoot> {
        let pid = self.init_pid().ok()?;
        let path = std::ffi::CString::new(format!("/proc/{pid}/root")).ok()?;
        // SAFETY: a NUL-terminated path; the fd returned is owned below.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: the kernel just returned this fd to us.
        let root = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: pidfd_send_signal with signal 0 only checks that the process exists.
        let alive = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pid1.as_raw_fd(),
                0,
                std::ptr::null::<libc::siginfo_t>(),
                0u32,
            )
        } == 0;
        alive.then(|| agentkernel_core::HostRoot {
            root,
            uid: self._ids.uid,
            gid: self._ids.gid,
        })
    }
}

/// SIGKILL to pid 1 of a sandbox (through its pidfd): the kernel then kills every process
/// in its pid namespace.
fn kill_pid1(pidfd: &OwnedFd) {
    // SAFETY: pidfd_send_signal on a pidfd we own; null siginfo is allowed.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        );
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(Error::io(
            "creating a pipe",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let high = |fd| jail::high_fd(fd).map_err(|e| Error::io("duplicating a pipe fd", e));
    Ok((high(r)?, high(w)?))
}

fn write_maps(pid: u32, (uid, gid): (u32, u32)) -> std::io::Result<()> {
    std::fs::write(format!("/proc/{pid}/setgroups"), "deny")?;
    std::fs::write(
        format!("/proc/{pid}/uid_map"),
        format!("{} {uid} 1\n", jail::SANDBOX_ID),
    )?;
    std::fs::write(
        format!("/proc/{pid}/gid_map"),
        format!("{} {gid} 1\n", jail::SANDBOX_ID),
    )?;
    Ok(())
}

/// What the report thread calls when the child has unshared (tests only).
type AtUnshared = Box<dyn Fn(u32) -> bool + Send>;

/// Never a hook outside this crate's own tests.
#[cfg(not(test))]
fn at_unshared(_spec: &SandboxSpec) -> Option<AtUnshared> {
    None
}

#[cfg(test)]
fn at_unshared(spec: &SandboxSpec) -> Option<AtUnshared> {
    tests::hold_for(spec)
}

/// Reads the child's report pipe until it closes; answers `UNSHARED` by writing the id maps
/// and releasing the child. Returns pid 1's host pid, the landlock state and whether the
/// workspace got its write layer (`None`: no workspace), or the failure.
///
/// `at_unshared` (tests only: see [`tests::hold_for`]) is called with the child's pid while
/// the child waits for its maps; `false` drops the `go` pipe unwritten, as the host's death
/// would.
fn serve_report(
    report: OwnedFd,
    go: OwnedFd,
    plan: &JailPlan,
    ids: (u32, u32),
    at_unshared: Option<AtUnshared>,
) -> std::result::Result<(u32, u32, Option<bool>), String> {
    let mut file = std::fs::File::from(report);
    let mut go = Some(std::fs::File::from(go));
    let (mut pid1, mut landlock, mut ready, mut layered) = (None, 0, false, None);
    let mut rec = [0u8; 5];
    while file.read_exact(&mut rec).is_ok() {
        let value = u32::from_le_bytes([rec[1], rec[2], rec[3], rec[4]]);
        match rec[0] {
            jail::TAG_UNSHARED => {
                if let Some(hold) = &at_unshared
                    && !hold(value)
                {
                    return Err("the host went away while the sandbox started".into());
                }
                if let Err(e) = write_maps(value, ids) {
                    return Err(format!("writing the sandbox's uid/gid maps failed: {e}"));
                }
                if let Some(mut g) = go.take() {
                    use std::io::Write;
                    let _ = g.write_all(&[1]);
                }
            }
            jail::TAG_PID1 => pid1 = Some(value),
            jail::TAG_LANDLOCK => landlock = value,
            jail::TAG_READY => ready = true,
            jail::TAG_LAYER => layered = Some(value == 1),
            jail::TAG_FAILED => {
                let step = (value >> 24) as usize;
                let op = ((value >> 16) & 0xFF) as usize;
                let errno = (value & 0xFFFF) as i32;
                let name = jail::STEP_NAMES
                    .get(step)
                    .copied()
                    .unwrap_or("unknown step");
                let what = plan
                    .ops
                    .get(op)
                    .filter(|_| step == jail::S_BUILD as usize)
                    .map(|o| format!("{o:?}"));
                return Err(format!(
                    "jail set-up failed at {name}{}: {}",
                    what.map(|w| format!(" ({w})")).unwrap_or_default(),
                    std::io::Error::from_raw_os_error(errno)
                ));
            }
            _ => return Err("jail sent an unknown report".into()),
        }
    }
    match (pid1, ready) {
        (Some(pid), true) => Ok((pid, landlock, layered)),
        _ => Err("the jail exited before it was ready".into()),
    }
}

/// Starts one jailed interpreter for `spec`.
pub(crate) async fn start(inner: &Arc<Inner>, spec: &SandboxSpec, id: &str) -> Result<Live> {
    // Who the sandbox is on the host: the caller, or (root) a uid of its own.
    let ids = HostIds::for_new_sandbox()?;
    // As root, writable directories are attached through idmapped trees (their owner on
    // disk appears as the sandbox), else the workspace directory is lent to the sandbox.
    let mut trees: Vec<(std::path::PathBuf, OwnedFd)> = Vec::new();
    let mut lent = Vec::new();
    if ids.leased() {
        let writable = spec
            .workspace
            .iter()
            .chain(spec.mounts.iter().filter(|m| m.writable).map(|m| &m.host));
        for dir in writable {
            plan::require_no_symlinks(dir)?;
            match hostids::idmapped_tree(dir, &ids)? {
                Some((tree, _, _)) => {
                    let tree = jail::high_fd(tree)
                        .map_err(|e| Error::io("duplicating a mount tree fd", e))?;
                    trees.push((dir.clone(), tree));
                }
                None if Some(dir) == spec.workspace.as_ref() => {
                    if let Some((uid, gid)) = plan::hand_over(dir, ids.uid, ids.gid)? {
                        lent.push(Lent {
                            dir: dir.clone(),
                            from: ids.uid,
                            uid,
                            gid,
                        });
                    }
                }
                None => {}
            }
        }
        if trees.len() > jail::MAX_TREES {
            return Err(Error::invalid(
                format!(
                    "{} writable mounts; a sandbox started as root takes at most {}",
                    trees.len(),
                    jail::MAX_TREES
                ),
                "mount fewer writable directories (a parent directory covers its children)",
            ));
        }
    }
    // The trees as the child numbers them (it moves each to `TREE_FD_BASE + i`).
    let tree_fds: Vec<_> = trees
        .iter()
        .enumerate()
        .map(|(i, (p, _))| (p.clone(), jail::TREE_FD_BASE + i as std::os::fd::RawFd))
        .collect();
    // The plan: it refuses non-canonical workspace and mount paths.
    let root = plan::root_plan(spec, &inner.agent, &tree_fds, inner.workspace_layer)?;
    let layer_caps = plan::layer_caps(spec);
    let cgroup = match SandboxCgroup::create(&inner.cgroups, id, &spec.limits) {
        Ok(c) => c,
        Err(why) => {
            // Not silent: logged here and reported by `doctor` (cgroup::last_setup_failure).
            tracing::warn!(%why, "sandbox cgroup not set up: memory and process limits hold per process (rlimits) only");
            None
        }
    };
    let (host_ctl, guest_ctl) = std::os::unix::net::UnixStream::pair()
        .map_err(|e| Error::io("creating the control socket", e))?;
    let guest_ctl = jail::high_fd(OwnedFd::from(guest_ctl))
        .map_err(|e| Error::io("duplicating a socket fd", e))?;
    let (life_r, life_w) = pipe()?;
    let (report_r, report_w) = pipe()?;
    let (go_r, go_w) = pipe()?;

    let memory_env = match &inner.agent {
        GuestAgent::Native(native) => native.memory_env.clone(),
        GuestAgent::Python(_) => None,
    };
    let jail_plan = Arc::new(JailPlan {
        drop_groups: agentkernel_core::hostdirs::euid() == 0,
        cgroup_procs: cgroup
            .as_ref()
            .map(|c| {
                c.procs_files
                    .iter()
                    .filter_map(|p| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).ok())
                    .collect()
            })
            .unwrap_or_default(),
        control_fd: guest_ctl.as_raw_fd(),
        lifeline_fd: life_r.as_raw_fd(),
        report_fd: report_w.as_raw_fd(),
        go_fd: go_r.as_raw_fd(),
        ops: root.ops,
        workdir: c"/workspace".to_owned(),
        rlimits: plan::rlimits(spec)
            .into_iter()
            .filter(|(r, _, _)| *r != libc::RLIMIT_AS || memory_env.is_none())
            .collect(),
        writable_dirs: plan::writable_dirs(spec),
        landlock: inner.landlock_abi.is_some(),
        seccomp: inner.seccomp.clone(),
        sources: root.sources,
        trees: trees.iter().map(|(_, fd)| fd.as_raw_fd()).collect(),
        layer: if inner.workspace_layer {
            plan::layer_options(spec)?
        } else {
            None
        },
    });

    let mut cmd = match &inner.agent {
        GuestAgent::Python(python) => {
            let mut cmd = tokio::process::Command::new(&python.executable);
            cmd.args(["-I", "-u", "-B", "-c", AGENT_SOURCE]);
            cmd
        }
        GuestAgent::Native(native) => {
            let mut cmd = tokio::process::Command::new(NativeAgent::GUEST_PATH);
            cmd.args(&native.args);
            cmd
        }
    };
    cmd.env_clear().envs(spec.guest_env());
    if let (Some(var), Some(bytes)) = (&memory_env, spec.limits.memory_bytes) {
        cmd.env(var, bytes.to_string());
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child_plan = jail_plan.clone();
    // SAFETY: `jail::enter` only makes system calls on data prepared in the parent (see its
    // safety comment); it runs in the forked child before exec.
    unsafe {
        cmd.pre_exec(move || jail::enter(&child_plan));
    }

    let (map_uid, map_gid) = (ids.uid, ids.gid);
    let at_unshared = at_unshared(spec);
    let spawned = tokio::task::spawn_blocking(move || {
        let plan = jail_plan.clone();
        let reporter = std::thread::spawn(move || {
            serve_report(report_r, go_w, &plan, (map_uid, map_gid), at_unshared)
        });
        // spawn() returns once pid 1 has exec'd (or the jail failed); the report thread
        // meanwhile answers the child's request for id maps.
        let child = cmd.spawn();
        drop(report_w);
        drop(go_r);
        drop(guest_ctl);
        drop(life_r);
        drop(jail_plan);
        // The child has its copies (attached by now, or failed): ours can go.
        drop(trees);
        let report = reporter
            .join()
            .unwrap_or_else(|_| Err("the report thread panicked".into()));
        (child, report)
    })
    .await
    .map_err(|e| Error::Internal(format!("sandbox start task failed: {e}")))?;

    let (child, report) = spawned;
    let mut outer = child.map_err(|e| Error::io("starting the sandbox interpreter", e))?;
    let (pid1, landlock, layered) = match report {
        Ok(r) => r,
        Err(reason) => {
            let _ = outer.start_kill();
            return Err(Error::Unavailable {
                backend: "process",
                reason,
                hint: "run `agentkernel doctor` to see which jail prerequisite is missing".into(),
            });
        }
    };
    let layer = match layered {
        Some(true) => match outer.id().map(|pid| Layer::open(pid, layer_caps)) {
            Some(Ok(layer)) => Some(Arc::new(layer)),
            // Writes would stay in the jail and never reach the host: refuse the sandbox.
            failed => {
                let _ = outer.start_kill();
                let why = match failed {
                    Some(Err(e)) => e.to_string(),
                    _ => "the jail is gone".into(),
                };
                return Err(Error::Unavailable {
                    backend: "process",
                    reason: format!("could not open the workspace's write layer: {why}"),
                    hint: "run `agentkernel doctor`".into(),
                });
            }
        },
        Some(false) => {
            layer::unavailable(
                "the kernel could not make an overlay with a tmpfs upper layer in a user namespace (it needs Linux 6.6 or later): a run's writes to a host workspace are capped by the file-size limit only",
            );
            None
        }
        None => None,
    };
    // SAFETY: pidfd_open with a pid and no flags; returns a new fd or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid1 as libc::pid_t, 0u32) } as i32;
    if pidfd < 0 {
        let _ = outer.start_kill();
        return Err(Error::io(
            "opening a pidfd for the sandbox",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: a fresh fd returned by pidfd_open.
    let pid1 = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let (Some(stdout), Some(stderr)) = (outer.stdout.take(), outer.stderr.take()) else {
        return Err(Error::Internal("sandbox output pipes missing".into()));
    };
    host_ctl
        .set_nonblocking(true)
        .map_err(|e| Error::io("configuring the control socket", e))?;
    let control = tokio::net::UnixStream::from_std(host_ctl)
        .map_err(|e| Error::io("registering the control socket", e))?;
    let mut conn = GuestConn::new(control, stdout, stderr);
    let hello = match conn.hello(Instant::now() + START_TIMEOUT).await {
        Ok(h) => h,
        Err(e) => {
            // `outer` is killed on drop too; this takes the namespace down at once.
            kill_pid1(&pid1);
            return Err(e);
        }
    };
    Ok(Live {
        outer,
        pid1,
        conn,
        lifeline: std::fs::File::from(life_w),
        cgroup,
        hello,
        landlock,
        lent,
        layer,
        _ids: ids,
    })
}

/// A sandbox of the process backend: the exec state machine every guest-protocol backend
/// shares ([`GuestSandbox`]) with this backend's hooks (`JailGuest`).
pub struct JailSandbox {
    guest: GuestSandbox<JailGuest>,
}

/// What a process sandbox keeps besides its jail, and its exec hooks.
struct JailGuest {
    id: String,
    inner: Arc<Inner>,
    spec: SandboxSpec,
    /// The workspace's lock, taken by the first exec and held until no process of this
    /// sandbox can write the workspace any more (shutdown, a reset, the end of the jail):
    /// what an exec leaves running lives on until its time limit or the next exec.
    workspace: Option<WorkspaceLock>,
    /// The workspace's write layer of the current jail (kept after the jail is gone, until
    /// its changes were copied to the host).
    layer: Option<Arc<Layer>>,
    /// The cgroup's OOM-kill count when the current exec started.
    oom_before: u64,
}

impl JailGuest {
    /// Copies the write layer's changes into the host workspace now (see `layer.rs`); a
    /// note for the program's stderr when something was not copied or the copy failed.
    /// Blocking: it walks the layer.
    fn apply_layer(
        layer: &Layer,
        host: std::io::Result<std::fs::File>,
        id: &str,
    ) -> Option<String> {
        let applied = host.and_then(|host| layer.apply(&host));
        match applied {
            Ok(applied) => {
                if applied.skipped > 0 {
                    tracing::debug!(sandbox = %id, skipped = applied.skipped, "workspace entries not copied to the host");
                }
                tracing::debug!(sandbox = %id, written = applied.written, removed = applied.removed, "workspace layer copied to the host");
                applied.note()
            }
            Err(e) => {
                tracing::warn!(sandbox = %id, error = %e, "could not copy the workspace's changes to the host");
                Some(format!(
                    "agentkernel: could not copy the workspace's changes to the host: {e} (retried at the end of the next exec and when the sandbox ends)\n"
                ))
            }
        }
    }

    /// [`JailGuest::apply_layer`] off the async threads.
    async fn apply_layer_off_thread(
        layer: Arc<Layer>,
        host: std::io::Result<std::fs::File>,
        id: String,
    ) -> Option<String> {
        tokio::task::spawn_blocking(move || Self::apply_layer(&layer, host, &id))
            .await
            .unwrap_or_else(|e| {
                Some(format!(
                    "agentkernel: copying the workspace's changes to the host panicked: {e}\n"
                ))
            })
    }

    /// Removes the symlinks leaving the workspace that the program made (see
    /// [`WorkspaceLock::remove_escaping_symlinks`]); a note for the caller when it did.
    fn sweep_workspace(&self) -> Option<String> {
        let lock = self.workspace.as_ref()?;
        self.sweep_note(lock.remove_escaping_symlinks())
    }

    /// What a sweep did, logged, and the note for the caller when there is one.
    fn sweep_note(&self, swept: std::io::Result<agentkernel_core::SweptLinks>) -> Option<String> {
        match swept {
            Ok(swept) => {
                if !swept.removed.is_empty() {
                    tracing::warn!(sandbox = %self.id, removed = swept.removed.len(), "removed symlinks leaving the workspace");
                }
                swept.note()
            }
            Err(e) => {
                tracing::warn!(sandbox = %self.id, error = %e, "could not check the workspace for symlinks");
                Some(format!(
                    "agentkernel: could not check the workspace for symlinks: {e}\n"
                ))
            }
        }
    }

    /// Gives the workspace back once no process of this sandbox runs: the write layer's
    /// last changes copied (or, without a layer, the workspace swept), then unlocked.
    fn release_workspace(&mut self) {
        if let Some(lock) = &self.workspace {
            match &self.layer {
                Some(layer) => {
                    let _ = Self::apply_layer(layer, lock.dir(), &self.id);
                }
                None => {
                    let _ = self.sweep_workspace();
                }
            }
        }
        self.workspace = None;
    }

    /// [`JailSandbox::release_workspace`] with the layer's copy off the async threads
    /// (it may copy up to the layer's cap); the workspace stays locked until it is done.
    async fn release_workspace_off_thread(&mut self) {
        let Some(layer) = self.layer.clone() else {
            return self.release_workspace();
        };
        let Some(lock) = self.workspace.take() else {
            return;
        };
        let id = self.id.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let _ = Self::apply_layer(&layer, lock.dir(), &id);
            drop(lock);
        })
        .await;
    }

    /// Ends the jail (kills every process of it and waits), then gives the workspace back;
    /// the jail's exit code.
    async fn end_jail(&mut self, mut live: Live) -> Option<i32> {
        live.kill();
        let code = live.wait().await;
        // Every process of the jail is gone: nothing writes the workspace any more.
        drop(live);
        self.release_workspace_off_thread().await;
        // The jail's layer is copied: the next jail (a reset) brings its own.
        self.layer = None;
        code
    }
}

#[async_trait]
impl GuestBackend for JailGuest {
    type Live = Live;

    fn name(&self) -> &'static str {
        self.inner.backend
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn spec(&self) -> &SandboxSpec {
        &self.spec
    }

    async fn lock(&mut self, timeout: Duration) -> Result<Option<WorkspaceLock>> {
        // One program at a time per workspace: the lock is taken by this sandbox's first exec
        // and kept until its processes are gone (see `workspace`).
        if self.workspace.is_none() {
            self.workspace = WorkspaceLock::of(self.spec.workspace.as_deref(), timeout).await?;
        }
        Ok(None)
    }

    async fn prepare(
        &mut self,
        live: &mut Live,
        _frame: &ExecFrame,
        tools: Arc<dyn ToolHost>,
    ) -> std::result::Result<Arc<dyn ToolHost>, Abort> {
        self.oom_before = live.cgroup.as_ref().map_or(0, SandboxCgroup::oom_kills);
        // Host tools see the program's workspace files: the layer is copied before each call.
        Ok(match (&self.layer, &self.workspace) {
            (Some(layer), Some(lock)) => Arc::new(ApplyBeforeCalls {
                inner: tools,
                layer: layer.clone(),
                host: lock
                    .dir()
                    .map_err(|e| Abort::Refuse(Error::io("opening the workspace", e)))?,
                id: self.id.clone(),
            }),
            _ => tools,
        })
    }

    async fn run(
        &mut self,
        live: &mut Live,
        req: &ExecRequest,
        tools: Arc<dyn ToolHost>,
        frame: &ExecFrame,
    ) -> Result<ExecReport> {
        match &self.inner.agent {
            GuestAgent::Python(_) => {
                // The exec's end is marked by the guest's init with a token only it and we
                // know (the program cannot forge it), after it killed every other process.
                let token = live.start_exec(frame.timeout);
                live.conn
                    .exec_ended_by_init(req, tools, frame.output_cap, frame.deadline, &token)
                    .await
            }
            // The native worker (monty) runs no program code that can reach its fds.
            GuestAgent::Native(_) => {
                live.conn
                    .exec(req, tools, frame.output_cap, frame.deadline)
                    .await
            }
        }
    }

    async fn guest_gone(&mut self, live: Live, _frame: &ExecFrame) -> ExecStatus {
        let oom_after = live.cgroup.as_ref().map_or(0, SandboxCgroup::oom_kills);
        let code = self.end_jail(live).await;
        let memory_code = match &self.inner.agent {
            GuestAgent::Native(native) => native.memory_exit_code,
            GuestAgent::Python(_) => None,
        };
        agentkernel_core::guest::agent_exit_status(
            code,
            oom_after > self.oom_before,
            self.spec.limits.cpu_time.is_some(),
            memory_code,
        )
    }

    async fn end(&mut self, live: Live) {
        self.end_jail(live).await;
    }

    async fn after_exec(&mut self, outcome: &mut ExecOutcome, req: &ExecRequest) {
        // Notes for the caller, after the program's own stderr (and through the live sink).
        let mut notes = Vec::new();
        match (&self.layer, &self.workspace) {
            (Some(layer), Some(lock)) => {
                // What the program wrote reaches the host now (and again when the sandbox
                // ends, for what a process it left running writes meanwhile).
                notes.extend(
                    Self::apply_layer_off_thread(layer.clone(), lock.dir(), self.id.clone()).await,
                );
                notes.extend(layer.full_note());
            }
            (None, Some(lock)) => {
                if let Ok(dir) = lock.dir() {
                    // The sweep walks the whole workspace: off the async threads.
                    let swept = tokio::task::spawn_blocking(move || {
                        agentkernel_core::remove_escaping_symlinks(&dir)
                    })
                    .await
                    .unwrap_or_else(|e| {
                        Err(std::io::Error::other(format!("the sweep panicked: {e}")))
                    });
                    notes.extend(self.sweep_note(swept));
                }
            }
            _ => {}
        }
        for note in notes {
            outcome.stderr.push_live(
                note.as_bytes(),
                self.spec.limits.output_bytes,
                req.output.as_ref(),
                agentkernel_core::StreamKind::Stderr,
            );
        }
    }
}

impl JailSandbox {
    pub(crate) fn new(id: String, inner: Arc<Inner>, spec: SandboxSpec, live: Live) -> Self {
        let layer = live.layer.clone();
        JailSandbox {
            guest: GuestSandbox::new(
                SandboxState::Live(live),
                JailGuest {
                    id,
                    inner,
                    spec,
                    workspace: None,
                    layer,
                    oom_before: 0,
                },
            ),
        }
    }

    /// The host pid of the guest's init (read from its pidfd, so it is the jail's process
    /// and no other).
    fn init_pid(&self) -> std::result::Result<i32, String> {
        self.guest
            .state
            .as_live()
            .ok_or("the sandbox is gone")?
            .init_pid()
    }

    /// The digests ([`crate::seccomp::digest`]) of the seccomp filters the guest's init runs
    /// under, read back from the host kernel (`PTRACE_SECCOMP_GET_FILTER`), in the order they
    /// were installed. Needs `CAP_SYS_ADMIN` on the host (root); `Err` says why not.
    pub(crate) fn installed_filter_digests(&self) -> std::result::Result<Vec<String>, String> {
        let pid = self.init_pid()?;
        // The kernel numbers filters from the first installed.
        let filters = read_seccomp_filters(pid)?;
        Ok(filters.iter().map(|f| crate::seccomp::digest(f)).collect())
    }

    /// Compares the resource limits the host kernel reports for the guest's init (host
    /// `/proc/<pid>/limits`, read from outside the sandbox) with `expected` (resource, soft,
    /// hard); `Err` names the first that differs, or why they could not be read.
    pub(crate) fn verify_rlimits(
        &self,
        expected: &[(libc::__rlimit_resource_t, u64, u64)],
    ) -> std::result::Result<(), String> {
        let pid = self.init_pid()?;
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))
            .map_err(|e| format!("reading /proc/{pid}/limits: {e}"))?;
        for &(resource, soft, hard) in expected {
            let row = match resource {
                libc::RLIMIT_CPU => "Max cpu time",
                libc::RLIMIT_FSIZE => "Max file size",
                libc::RLIMIT_CORE => "Max core file size",
                libc::RLIMIT_NPROC => "Max processes",
                libc::RLIMIT_NOFILE => "Max open files",
                libc::RLIMIT_AS => "Max address space",
                other => return Err(format!("no /proc row known for resource {other}")),
            };
            let values: Vec<&str> = limits
                .lines()
                .find_map(|l| l.strip_prefix(row))
                .map(|rest| rest.split_whitespace().take(2).collect())
                .ok_or_else(|| format!("{row} missing from /proc/{pid}/limits"))?;
            let parse = |v: &str| {
                if v == "unlimited" {
                    Some(u64::MAX)
                } else {
                    v.parse::<u64>().ok()
                }
            };
            let found = (
                values.first().copied().and_then(parse),
                values.get(1).copied().and_then(parse),
            );
            if found != (Some(soft), Some(hard)) {
                return Err(format!(
                    "{row}: the guest has {values:?}, the jail set {soft}/{hard}"
                ));
            }
        }
        Ok(())
    }

    /// What the guest reported at start (Python version, seccomp state...).
    pub fn hello(&self) -> Option<&Hello> {
        self.guest.state.as_live().map(|l| &l.hello)
    }

    /// The interpreter state of a native agent that can save it (the monty worker); the
    /// Python agent's cannot be saved ([`Error::Unsupported`]).
    pub async fn save_state(&mut self) -> Result<Vec<u8>> {
        if matches!(self.guest.backend.inner.agent, GuestAgent::Python(_)) {
            return Err(Error::unsupported(
                "snapshot",
                "process",
                "a host process cannot be saved; use a backend whose capabilities include snapshot",
            ));
        }
        self.guest
            .state
            .live()?
            .conn
            .save_state(Instant::now() + Duration::from_secs(10))
            .await
    }

    /// Replaces a native agent's interpreter state with `data` from
    /// [`JailSandbox::save_state`].
    pub async fn load_state(&mut self, data: &[u8]) -> Result<()> {
        self.guest
            .state
            .live()?
            .conn
            .load_state(data, Instant::now() + Duration::from_secs(10))
            .await
    }

    /// Whether `/workspace` is an overlay with a write layer (see `layer.rs`).
    pub(crate) fn workspace_layered(&self) -> bool {
        self.guest.backend.layer.is_some()
    }

    /// Landlock state the jail reported (0 none, 1 partial, 2 full).
    pub(crate) fn landlock_state(&self) -> Option<u32> {
        self.guest.state.as_live().map(|l| l.landlock)
    }
}

impl Drop for JailSandbox {
    /// A sandbox dropped without `shutdown` still gives its workspace back (its layer
    /// copied, or the workspace swept): its processes have been sent SIGKILL (by `Live`'s
    /// drop) first.
    fn drop(&mut self) {
        if self.guest.backend.workspace.is_some() {
            drop(self.guest.state.lose("it was dropped"));
            self.guest.backend.release_workspace();
        }
    }
}

#[async_trait]
impl Sandbox for JailSandbox {
    fn id(&self) -> &str {
        &self.guest.backend.id
    }

    fn host_root(&self) -> Option<agentkernel_core::HostRoot> {
        self.guest.state.as_live()?.host_root()
    }

    async fn exec_admitted(
        &mut self,
        req: AdmittedExec,
        tools: Arc<dyn ToolHost>,
    ) -> Result<ExecOutcome> {
        self.guest.exec(req, tools).await
    }

    async fn reset(&mut self) -> Result<()> {
        let guest = &mut self.guest;
        // Fast path: the guest's init forks a fresh agent (a clean interpreter: modules,
        // monkeypatches, /tmp, stray processes all go) inside the same jail.
        // A jail whose write layer holds anything is not reused: its caps would be spent
        // (the layer cannot be emptied while mounted).
        let layer_used = guest.backend.layer.as_ref().is_some_and(|l| l.is_used());
        if !layer_used && let Some(live) = guest.state.as_live_mut() {
            match live
                .reset_in_place(guest.backend.spec.workspace.is_none())
                .await
            {
                Ok(()) => {
                    // Init killed every other process: the workspace is free.
                    guest.backend.release_workspace_off_thread().await;
                    return Ok(());
                }
                Err(e) => {
                    tracing::debug!(error = %e, "in-place reset failed; starting a new sandbox")
                }
            }
        }
        // Otherwise a new jail.
        guest.lose("it was reset").await;
        let backend = &mut guest.backend;
        let live = start(&backend.inner, &backend.spec, &backend.id).await?;
        backend.layer = live.layer.clone();
        guest.state = SandboxState::Live(live);
        Ok(())
    }

    async fn snapshot(&mut self) -> Result<Snapshot> {
        Ok(Snapshot {
            backend: "process".into(),
            data: self.save_state().await?,
        })
    }

    async fn shutdown(mut self: Box<Self>) -> Result<()> {
        self.guest.lose("it was shut down").await;
        Ok(())
    }
}

/// The sandbox's tools, with the workspace's write layer copied to the host before each
/// call (so a host tool given a workspace path finds what the program wrote).
struct ApplyBeforeCalls {
    inner: Arc<dyn ToolHost>,
    layer: Arc<Layer>,
    host: std::fs::File,
    id: String,
}

#[async_trait]
impl ToolHost for ApplyBeforeCalls {
    fn catalog(&self) -> Vec<agentkernel_core::ToolSpec> {
        self.inner.catalog()
    }

    async fn call(
        &self,
        name: &str,
        args: serde_json::Value,
    ) -> std::result::Result<serde_json::Value, agentkernel_core::ToolError> {
        let _ = JailGuest::apply_layer_off_thread(
            self.layer.clone(),
            self.host.try_clone(),
            self.id.clone(),
        )
        .await;
        self.inner.call(name, args).await
    }
}

/// `PTRACE_SECCOMP_GET_FILTER` (linux/ptrace.h; not in the libc crate).
const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;

/// The seccomp filters of process `pid` (the first installed first): the process is seized,
/// stopped for the read, and let go.
fn read_seccomp_filters(
    pid: i32,
) -> std::result::Result<Vec<Vec<seccompiler::sock_filter>>, String> {
    use nix::sys::{ptrace, wait};
    let target = nix::unistd::Pid::from_raw(pid);
    ptrace::seize(target, ptrace::Options::empty())
        .map_err(|e| format!("PTRACE_SEIZE of pid {pid}: {e}"))?;
    let read = (|| {
        ptrace::interrupt(target).map_err(|e| format!("PTRACE_INTERRUPT: {e}"))?;
        wait::waitpid(target, Some(wait::WaitPidFlag::__WALL))
            .map_err(|e| format!("waiting for the stop: {e}"))?;
        let mut out = Vec::new();
        for index in 0..64 as libc::c_ulong {
            // SAFETY: with a null buffer the request only returns how many instructions
            // filter `index` of our stopped tracee has; no memory of ours is written.
            let n = unsafe {
                libc::ptrace(
                    PTRACE_SECCOMP_GET_FILTER,
                    pid,
                    index,
                    std::ptr::null_mut::<libc::c_void>(),
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENOENT) {
                    break;
                }
                return Err(format!("PTRACE_SECCOMP_GET_FILTER: {e}"));
            }
            let len = usize::try_from(n).map_err(|e| format!("filter length {n}: {e}"))?;
            let mut buf = vec![
                seccompiler::sock_filter {
                    code: 0,
                    jt: 0,
                    jf: 0,
                    k: 0
                };
                len
            ];
            // SAFETY: `buf` holds `len` instructions, exactly what the kernel said filter
            // `index` has (the tracee is stopped: its filters cannot change meanwhile).
            let m =
                unsafe { libc::ptrace(PTRACE_SECCOMP_GET_FILTER, pid, index, buf.as_mut_ptr()) };
            if m != n {
                return Err(format!(
                    "PTRACE_SECCOMP_GET_FILTER: {} (read {m} of {n} instructions)",
                    std::io::Error::last_os_error()
                ));
            }
            out.push(buf);
        }
        Ok(out)
    })();
    let _ = ptrace::detach(target, None);
    read
}

#[cfg(test)]
mod tests {
    //! A sandbox held where its start waits for the host (the id maps and the `go` byte): the
    //! moment a `kill -9` of the host may land in. What the starting child holds then is read
    //! from the host's `/proc`, and the host's death is played by the report thread dropping
    //! the `go` pipe unwritten.
    use std::collections::BTreeSet;
    use std::sync::Mutex;
    use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

    use agentkernel_core::conformance::LIMIT_LANDS_WITHIN;

    use super::*;
    use crate::{GuestAgent, JailConfig, JailRuntime};

    /// A spec with this variable in its environment is held at `UNSHARED` (the test's own
    /// sandboxes only; other tests of this binary start theirs as usual).
    const HOLD_ENV: &str = "AGENTKERNEL_TEST_HOLD_AT_UNSHARED";

    type Held = (u32, SyncSender<bool>);
    static HOLDS: Mutex<Option<SyncSender<Held>>> = Mutex::new(None);

    pub(super) fn hold_for(spec: &SandboxSpec) -> Option<AtUnshared> {
        if !spec.env.contains_key(HOLD_ENV) {
            return None;
        }
        let to_test = HOLDS.lock().unwrap().clone()?;
        Some(Box::new(move |pid| {
            let (release, released) = sync_channel(1);
            if to_test.send((pid, release)).is_err() {
                return true;
            }
            released.recv().unwrap_or(false)
        }))
    }

    /// The `pipe:[…]` and `socket:[…]` objects `pid` holds, by fd.
    fn held_objects(pid: &str) -> Vec<(String, String)> {
        let mut held = Vec::new();
        for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("the fd table") {
            let entry = entry.unwrap();
            let Ok(target) = std::fs::read_link(entry.path()) else {
                continue;
            };
            let target = target.to_string_lossy().into_owned();
            if target.starts_with("pipe:") || target.starts_with("socket:") {
                held.push((entry.file_name().to_string_lossy().into_owned(), target));
            }
        }
        held
    }

    fn gone(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            // A zombie holds nothing; its parent reaps it.
            Ok(stat) => stat
                .rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z')),
        }
    }

    async fn next_hold(holds: &Receiver<Held>) -> Held {
        let deadline = Instant::now() + LIMIT_LANDS_WITHIN;
        loop {
            if let Ok(held) = holds.try_recv() {
                return held;
            }
            assert!(
                Instant::now() < deadline,
                "the sandbox never reached the point where it waits for the host"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A jail on the host's Python for test `test`, or `None` after a SKIPPED line saying
    /// why there is none.
    fn python_jail(test: &str) -> Option<JailRuntime> {
        let python = match crate::discover_python(None) {
            Ok(p) => p,
            Err(e) => {
                agentkernel_core::conformance::skip(test, "process", &format!("no python3: {e}"));
                return None;
            }
        };
        Some(
            JailRuntime::new(JailConfig {
                backend: "process",
                agent: GuestAgent::Python(python),
                workspace_layer: true,
            })
            .expect("the jail works here (see `agentkernel doctor`)"),
        )
    }

    /// A host holding thousands of fds (a server with hundreds of sandboxes and
    /// connections) still starts sandboxes, and each gets only its own: the plan's fds are
    /// moved to fixed low numbers in the child, whatever their numbers in the host (the
    /// start was refused past 512 open files before).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_host_holding_thousands_of_fds_still_starts_sandboxes() {
        let Some(rt) = python_jail("a_host_holding_thousands_of_fds_still_starts_sandboxes") else {
            return;
        };
        let null = std::fs::File::open("/dev/null").unwrap();
        let held: Vec<OwnedFd> = (0..3000)
            .map(|_| OwnedFd::from(null.try_clone().expect("the open-files limit was raised")))
            .collect();
        let ws = tempfile::tempdir().unwrap();
        let mut spec = agentkernel_core::conformance::test_spec();
        spec.workspace = Some(ws.path().canonicalize().unwrap());
        let live = start(rt.inner(), &spec, "many-fds")
            .await
            .expect("a sandbox starts while the host holds 3000 more fds");
        assert!(live.hello.python.starts_with('3'), "{:?}", live.hello);
        drop((live, held));
    }

    /// A starting sandbox holds no copy of the host's fds (among them the other sandboxes'
    /// lifelines and control sockets: a copy would keep those sandboxes alive after a
    /// `kill -9` of the host), and no copy of its own `go` pipe's write end: when the host
    /// dies before sending `go`, the child sees EOF and exits instead of waiting forever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_starting_sandbox_holds_no_host_fd_and_dies_with_the_host() {
        let Some(rt) = python_jail("a_starting_sandbox_holds_no_host_fd_and_dies_with_the_host")
        else {
            return;
        };
        let spec = agentkernel_core::conformance::test_spec();
        // A live sandbox: the host holds its lifeline's write end and its control socket.
        // (`start` directly: admission, which the backends do, needs a `Runtime`.)
        let inner = rt.inner().clone();
        let first = start(&inner, &spec, "first").await.expect("start");
        let host_objects: BTreeSet<String> = held_objects("self")
            .into_iter()
            .map(|(_, object)| object)
            .collect();
        assert!(
            !host_objects.is_empty(),
            "the host holds the first sandbox's pipes"
        );

        let (to_test, holds) = sync_channel(1);
        *HOLDS.lock().unwrap() = Some(to_test);
        let mut held_spec = spec.clone();
        held_spec.env.insert(HOLD_ENV.into(), "1".into());

        // 1. Held, then released: what the child holds while it waits.
        let starting = {
            let (inner, spec) = (inner.clone(), held_spec.clone());
            tokio::spawn(async move { start(&inner, &spec, "held").await })
        };
        let (pid, release) = next_hold(&holds).await;
        let copies: Vec<_> = held_objects(&pid.to_string())
            .into_iter()
            .filter(|(_, object)| host_objects.contains(object))
            .collect();
        let _ = release.send(true);
        let second = starting.await.unwrap().expect("a released start succeeds");
        assert!(
            copies.is_empty(),
            "a starting sandbox holds copies of the host's fds (fd, object): {copies:?}"
        );

        // 2. Held, then the host "dies": the go pipe closes unwritten.
        let starting = {
            let (inner, spec) = (inner.clone(), held_spec.clone());
            tokio::spawn(async move { start(&inner, &spec, "held").await })
        };
        let (pid, release) = next_hold(&holds).await;
        let _ = release.send(false);
        let deadline = Instant::now() + LIMIT_LANDS_WITHIN;
        while !gone(pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = !gone(pid);
        if left {
            // SAFETY: kill(2) on a pid we saw as our sandbox's child; cleanup only.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        *HOLDS.lock().unwrap() = None;
        assert!(
            !left,
            "a starting sandbox outlived the host's side of its start-up pipe by {LIMIT_LANDS_WITHIN:?}: it holds the pipe's write end itself"
        );
        assert!(
            starting.await.unwrap().is_err(),
            "a start whose host went away fails"
        );
        drop((second, first));
    }
}
