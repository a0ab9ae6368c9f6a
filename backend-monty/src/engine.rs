//! The interpreter side, shared by both modes: one Monty REPL session, fed program by
//! program, with its files, environment and host calls.
//!
//! [`Session::exec`] feeds a program to the REPL and drives it to its end, answering every
//! pause on the spot:
//!
//! - **name lookups** of the tool helpers ([`crate::tools`]) resolve to external functions;
//!   any other undefined name is a `NameError`, as in Python;
//! - **function calls** of the helpers build tool functions and modules here; a call of a
//!   tool function goes to [`Host::call_tool`] (the host binds, validates and runs it) and
//!   its JSON result (or error, as the exception the CPython guests raise) is resumed;
//! - **OS calls** (`open()`, `pathlib`, `os.getenv`) are served by a [`MountTable`] that
//!   maps `/workspace` and `/tmp` (and the spec's mounts) to real directories and gives
//!   `PermissionError` for every other path, and by the spec's environment;
//! - **async futures** are refused with a `NotImplementedError`.
//!
//! Monty checks its own time and memory budgets between operations and raises uncatchable
//! `TimeoutError` / `MemoryError`s, which [`status_of`] reports as limit kills.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use agentkernel_core::{ExecStatus, LimitKind, ToolError, ToolErrorKind};
use monty::{Dump, MontyRepl, ReplProgress, ReplStartError, Session as DumpSession, SessionRef};
use monty_fs::{MountCallOutcome, MountMode, MountTable};
use monty_types::{
    AssertMessageAnnotations, CompileOptions, DictPairs, ExcType, ExtFunctionResult,
    MontyClassInstance, MontyClassType, MontyException, MontyObject, MontyUuid, NameLookupResult,
    OsFunctionCall, PrintWriter, PrintWriterCallback, ResourceLimits, ResourceTracker,
};
use serde_json::{Map, Value};

use crate::convert::{ValueReport, describe, from_json, to_json};
use crate::tools::{
    CALL_TOOL, MODULE_HELPER, PACKAGE_HELPER, RUNTIME_HELPER, TOOL_HELPER, call_args,
};

/// Script name programs run as (tracebacks say `<python-input-N>` per exec).
const SCRIPT: &str = "main.py";

/// Prefix of the name of every tool function (`tools.calc.add` calls tool `calc.add`).
const TOOL_PREFIX: &str = "tools.";

/// Calls the session pauses on (a tool call, a file read) per exec at most: a loop of host
/// calls cannot run forever while the interpreter's own clock is paused.
const MAX_SUSPENSIONS: usize = 1_000_000;

/// Where a mount's files live.
#[derive(Debug, Clone)]
pub enum HostDir {
    /// An existing directory.
    Path(PathBuf),
    /// A private temporary directory, created on the program's first file operation under
    /// the mount: most programs never touch a file, and creating a directory costs more
    /// than the rest of an in-process sandbox.
    Private(Arc<PrivateDir>),
}

/// A private temporary directory made on first use, removed when the last owner drops it.
#[derive(Debug, Default)]
pub struct PrivateDir(Mutex<Option<tempfile::TempDir>>);

impl PrivateDir {
    /// The directory, created now if it does not exist yet.
    pub fn path(&self) -> Result<PathBuf, String> {
        let mut dir = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if dir.is_none() {
            let made = tempfile::Builder::new()
                .prefix("agentkernel-monty-")
                .tempdir()
                .map_err(|e| format!("creating a sandbox directory: {e}"))?;
            *dir = Some(made);
        }
        Ok(dir
            .as_ref()
            .map(|d| d.path().to_path_buf())
            .unwrap_or_default())
    }

    /// The directory, if it was created.
    pub fn created(&self) -> Option<PathBuf> {
        let dir = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        dir.as_ref().map(|d| d.path().to_path_buf())
    }
}

/// A directory the program sees.
#[derive(Debug, Clone)]
pub struct MountPoint {
    /// Path inside the program, e.g. `/workspace`.
    pub guest: String,
    /// Directory it maps to.
    pub host: HostDir,
    /// Whether the program may write there.
    pub writable: bool,
    /// Total bytes the program may write there per session, if capped.
    pub write_limit: Option<u64>,
}

/// How to build a session.
#[derive(Debug, Clone, Default)]
pub struct SessionConfig {
    /// Directories the program sees; every other path is `PermissionError`.
    pub mounts: Vec<MountPoint>,
    /// What `os.getenv` and `os.environ` see.
    pub env: BTreeMap<String, String>,
    /// Memory budget (Monty's allocator-backed count; see the crate docs for what it
    /// counts in each mode).
    pub memory_bytes: Option<usize>,
}

/// What the interpreter needs from whoever runs it: somewhere for `print()` output to go
/// (the [`PrintWriterCallback`] methods), and tool calls.
pub trait Host: PrintWriterCallback {
    /// Calls tool `name` with the JSON object built by `call_args` (keyword arguments,
    /// positional ones under `$args`).
    fn call_tool(&mut self, name: &str, args: Value) -> Result<Value, ToolError>;
}

/// One interpreter session: globals, files and environment, across execs.
pub struct Session {
    repl: Option<MontyRepl>,
    fs: MountTable,
    /// Mounts of private directories not created yet (see [`HostDir::Private`]).
    pending: Vec<MountPoint>,
    config: SessionConfig,
}

fn limits(config: &SessionConfig) -> ResourceLimits {
    ResourceLimits {
        max_memory: config.memory_bytes,
        max_suspensions: MAX_SUSPENSIONS,
        ..ResourceLimits::default()
    }
}

/// The mount table of `config`'s mounts of existing directories (those of private
/// directories not created yet are returned, to mount on first use).
fn mount_table(config: &SessionConfig) -> Result<(MountTable, Vec<MountPoint>), String> {
    let mut fs = MountTable::new();
    let mut pending = Vec::new();
    for m in &config.mounts {
        let host = match &m.host {
            HostDir::Path(p) => p.clone(),
            HostDir::Private(d) => match d.created() {
                Some(p) => p,
                None => {
                    pending.push(m.clone());
                    continue;
                }
            },
        };
        mount(&mut fs, m, &host)?;
    }
    Ok((fs, pending))
}

fn mount(fs: &mut MountTable, m: &MountPoint, host: &std::path::Path) -> Result<(), String> {
    let mode = if m.writable {
        MountMode::ReadWrite
    } else {
        MountMode::ReadOnly
    };
    fs.mount(&m.guest, host, mode, m.write_limit)
        .map_err(|e| format!("mounting {} at {}: {e}", host.display(), m.guest))
}

fn options() -> CompileOptions {
    CompileOptions {
        // Plain `AssertionError`s, as CPython gives.
        assert_message_annotations: AssertMessageAnnotations::Off,
    }
}

impl Session {
    /// A fresh session.
    pub fn new(config: SessionConfig) -> Result<Session, String> {
        let repl = MontyRepl::new(SCRIPT, ResourceTracker::new(limits(&config)), options());
        let (fs, pending) = mount_table(&config)?;
        Ok(Session {
            repl: Some(repl),
            fs,
            pending,
            config,
        })
    }

    /// A session restored from [`Session::dump`] bytes (possibly made by another process),
    /// with this process's mounts and environment.
    pub fn load(bytes: &[u8], config: SessionConfig) -> Result<Session, String> {
        let dump = Dump::load(bytes).map_err(|e| format!("not a monty session snapshot: {e}"))?;
        let DumpSession::Idle(mut repl) = dump.state else {
            return Err("the snapshot is of a paused run, not an idle session".into());
        };
        // This sandbox's limits, not those of the one the snapshot was taken in.
        *repl.tracker_mut() = ResourceTracker::new(limits(&config));
        let (fs, pending) = mount_table(&config)?;
        Ok(Session {
            repl: Some(*repl),
            fs,
            pending,
            config,
        })
    }

    /// The session's globals as bytes (Monty's versioned dump format).
    pub fn dump(&self) -> Result<Vec<u8>, String> {
        let repl = self.repl.as_ref().ok_or("the session is broken")?;
        monty::dump(SCRIPT, None, SessionRef::Idle(repl)).map_err(|e| e.to_string())
    }

    /// Forgets every global: a fresh REPL with the same files and environment.
    pub fn reset(&mut self) -> Result<(), String> {
        *self = Session::new(self.config.clone())?;
        Ok(())
    }

    /// Runs `code` to its end (or `timeout`), answering its pauses through `host`. Answers
    /// how it ended and, for a program that ended `ok` on an expression whose value is not
    /// `None`, that value's report ([`describe`]).
    pub fn exec(
        &mut self,
        code: &str,
        timeout: Duration,
        host: &mut dyn Host,
    ) -> (ExecStatus, Option<ValueReport>) {
        let Some(mut repl) = self.repl.take() else {
            return (
                ExecStatus::Crashed {
                    reason: "the session was lost by an earlier failure".into(),
                },
                None,
            );
        };
        let deadline = Instant::now() + timeout;
        // A fresh budget per exec (the REPL's clock would otherwise add up across execs).
        repl.tracker_mut().set_max_duration(timeout);
        let mut suspensions = 0usize;
        let mut progress = repl.feed_start(code, Vec::new(), printer(host));
        loop {
            let step = match progress {
                Ok(ReplProgress::Complete { repl, value }) => {
                    self.repl = Some(repl);
                    // Monty returns the last expression statement's value (else None).
                    return (ExecStatus::Ok, describe(&value));
                }
                Err(failed) => {
                    let ReplStartError { repl, error } = *failed;
                    self.repl = Some(repl);
                    return (status_of(&error), None);
                }
                Ok(step) => step,
            };
            suspensions += 1;
            if Instant::now() >= deadline || suspensions > MAX_SUSPENSIONS {
                let exc = if suspensions > MAX_SUSPENSIONS {
                    MontyException::new(
                        ExcType::RuntimeError,
                        Some(format!("more than {MAX_SUSPENSIONS} host calls in one run")),
                    )
                } else {
                    MontyException::new(
                        ExcType::TimeoutError,
                        Some(format!("time limit exceeded: {timeout:?}")),
                    )
                };
                progress = abort(step, exc, host);
                continue;
            }
            progress = match step {
                ReplProgress::NameLookup(lookup) => {
                    let result = if lookup.object_id().is_none()
                        && lookup.name.starts_with("__agentkernel_")
                    {
                        NameLookupResult::Value(function(&lookup.name))
                    } else {
                        NameLookupResult::Undefined
                    };
                    lookup.resume(result, printer(host))
                }
                ReplProgress::FunctionCall(mut call) => {
                    // The arguments move to the host; the paused call keeps only its place.
                    let args = std::mem::take(&mut call.args);
                    let kwargs = std::mem::take(&mut call.kwargs);
                    let result = self.call(&call.function_name, args, kwargs, host);
                    call.resume(result, printer(host))
                }
                // The call moves into the handler (a write's payload is not copied).
                ReplProgress::OsCall(os) => os.resume_with(printer(host), |c| self.os_call(c)),
                ReplProgress::ResolveFutures(futures) => futures.abort(
                    MontyException::new(
                        ExcType::NotImplementedError,
                        Some("awaiting host futures is not supported on monty".into()),
                    ),
                    printer(host),
                ),
                ReplProgress::Complete { .. } => unreachable!("handled above"),
            };
        }
    }

    /// An external function call: a helper, `call_tool`, or a tool.
    fn call(
        &mut self,
        name: &str,
        args: Vec<MontyObject>,
        kwargs: Vec<(MontyObject, MontyObject)>,
        host: &mut dyn Host,
    ) -> ExtFunctionResult {
        let strings = |args: &[MontyObject]| -> Vec<String> {
            args.iter()
                .filter_map(|a| match a {
                    MontyObject::String(s) => Some(s.clone()),
                    _ => None,
                })
                .collect()
        };
        match name {
            TOOL_HELPER => match args.first() {
                Some(MontyObject::String(n)) => {
                    ExtFunctionResult::Return(function(&format!("{TOOL_PREFIX}{n}")))
                }
                _ => type_error("__agentkernel_tool__ takes a tool name"),
            },
            MODULE_HELPER => {
                let names = strings(&args);
                let Some((server, tools)) = names.split_first() else {
                    return type_error("__agentkernel_module__ takes a server name");
                };
                ExtFunctionResult::Return(module(&format!("tools.{server}"), tools))
            }
            PACKAGE_HELPER => {
                let mut servers: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for full in strings(&args) {
                    let server = full.split_once('.').map_or("", |(s, _)| s);
                    servers
                        .entry(agentkernel_core::tool_abi::python_name(server))
                        .or_default()
                        .push(full.clone());
                }
                let attrs = servers
                    .into_iter()
                    .map(|(s, tools)| {
                        let m = module(&format!("tools.{s}"), &tools);
                        (s, m)
                    })
                    .collect();
                ExtFunctionResult::Return(namespace("tools", attrs))
            }
            RUNTIME_HELPER => ExtFunctionResult::Return(namespace(
                "_agentkernel",
                vec![("call_tool".into(), function(CALL_TOOL))],
            )),
            CALL_TOOL => {
                let mut args = args.into_iter();
                let Some(MontyObject::String(tool)) = args.next() else {
                    return type_error("tool name must be a str");
                };
                let mut payload = match args.next().map(|a| to_json(&a)) {
                    Some(Value::Object(m)) => m,
                    None | Some(Value::Null) => Map::new(),
                    Some(_) => return type_error("call_tool's arguments must be a dict"),
                };
                payload.extend(keywords(kwargs));
                tool_result(host.call_tool(&tool, Value::Object(payload)))
            }
            name => match name.strip_prefix(TOOL_PREFIX) {
                Some(tool) => {
                    let positional = args.iter().map(to_json).collect();
                    tool_result(host.call_tool(tool, call_args(positional, keywords(kwargs))))
                }
                // Monty pauses on calls of names it does not implement (`bytearray`):
                // that is Python's NameError, not a tool call.
                None => ExtFunctionResult::Error(MontyException::new(
                    ExcType::NameError,
                    Some(format!("name '{name}' is not defined")),
                )),
            },
        }
    }

    /// A file or environment operation.
    fn os_call(&mut self, call: OsFunctionCall) -> ExtFunctionResult {
        // First use of a private directory's mount: create and mount it now.
        if let Some(path) = call.fs_primary_path()
            && let Some(i) = self.pending.iter().position(|m| {
                path == m.guest
                    || path
                        .strip_prefix(&m.guest)
                        .is_some_and(|r| r.starts_with('/'))
            })
        {
            let m = self.pending.remove(i);
            let made = match &m.host {
                HostDir::Private(d) => d.path(),
                HostDir::Path(p) => Ok(p.clone()),
            };
            if let Err(e) = made.and_then(|host| mount(&mut self.fs, &m, &host)) {
                return ExtFunctionResult::Error(MontyException::new(ExcType::OSError, Some(e)));
            }
        }
        match self.fs.handle_os_call(call) {
            MountCallOutcome::Handled(Ok(value)) => ExtFunctionResult::Return(value),
            MountCallOutcome::Handled(Err(e)) => ExtFunctionResult::Error(e.into_exception()),
            MountCallOutcome::NotHandled(call) => match call {
                OsFunctionCall::Getenv(args) => ExtFunctionResult::Return(
                    self.config
                        .env
                        .get(&args.key)
                        .map_or(args.default, |v| MontyObject::String(v.clone())),
                ),
                OsFunctionCall::GetEnviron => {
                    ExtFunctionResult::Return(MontyObject::Dict(DictPairs::from(
                        self.config
                            .env
                            .iter()
                            .map(|(k, v)| {
                                (
                                    MontyObject::String(k.clone()),
                                    MontyObject::String(v.clone()),
                                )
                            })
                            .collect::<Vec<_>>(),
                    )))
                }
                other => ExtFunctionResult::Error(other.on_no_handler()),
            },
        }
    }
}

fn printer(host: &mut dyn Host) -> PrintWriter<'_> {
    PrintWriter::Callback(host)
}

fn abort(
    step: ReplProgress,
    exc: MontyException,
    host: &mut dyn Host,
) -> Result<ReplProgress, Box<ReplStartError>> {
    match step {
        ReplProgress::FunctionCall(c) => c.abort(exc, printer(host)),
        ReplProgress::OsCall(c) => c.abort(exc, printer(host)),
        ReplProgress::NameLookup(c) => c.abort(exc, printer(host)),
        ReplProgress::ResolveFutures(c) => c.abort(exc, printer(host)),
        done @ ReplProgress::Complete { .. } => Ok(done),
    }
}

/// An external function the program can call.
fn function(name: &str) -> MontyObject {
    MontyObject::Function {
        name: name.to_owned(),
        docstring: None,
    }
}

/// A module-like object (`tools.calc`) whose attributes are its tools' functions.
fn module(type_name: &str, tools: &[String]) -> MontyObject {
    let attrs = tools
        .iter()
        .map(|full| {
            let short = full.split_once('.').map_or(full.as_str(), |(_, t)| t);
            (
                agentkernel_core::tool_abi::python_name(short),
                function(&format!("{TOOL_PREFIX}{full}")),
            )
        })
        .collect();
    namespace(type_name, attrs)
}

/// A host object with attributes `attrs`, shown as `<name>`. (A host class instance:
/// Monty resolves both `m.f` and `m.f(...)` on its eager attributes; a named tuple's
/// fields are not found by method-call syntax in Monty 0.0.23.)
fn namespace(name: &str, attrs: Vec<(String, MontyObject)>) -> MontyObject {
    use std::hash::{Hash, Hasher};
    let id = |salt: u8| {
        let mut bytes = [0u8; 16];
        for (i, half) in bytes.chunks_mut(8).enumerate() {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (salt, i, name).hash(&mut h);
            half.copy_from_slice(&h.finish().to_le_bytes());
        }
        MontyUuid::from_bytes(bytes)
    };
    MontyObject::ClassInstance(Box::new(MontyClassInstance {
        class_type: MontyClassType {
            name: name.to_owned(),
            id: id(0),
            host_defined: true,
            is_dataclass: false,
            attrs: DictPairs::from(Vec::new()),
        },
        instance_id: id(1),
        attrs: DictPairs::from(
            attrs
                .into_iter()
                .map(|(k, v)| (MontyObject::String(k), v))
                .collect::<Vec<_>>(),
        ),
    }))
}

fn keywords(kwargs: Vec<(MontyObject, MontyObject)>) -> Map<String, Value> {
    kwargs
        .into_iter()
        .filter_map(|(k, v)| match k {
            MontyObject::String(k) => Some((k, to_json(&v))),
            _ => None,
        })
        .collect()
}

fn type_error(message: &str) -> ExtFunctionResult {
    ExtFunctionResult::Error(MontyException::new(
        ExcType::TypeError,
        Some(message.to_owned()),
    ))
}

/// A tool's answer as the program sees it: the value, or the exception the CPython guests
/// raise for that kind of failure (`tools.ToolError` is a `RuntimeError` here: Monty has
/// no user-defined exception classes).
fn tool_result(result: Result<Value, ToolError>) -> ExtFunctionResult {
    match result {
        Ok(v) => ExtFunctionResult::Return(from_json(&v)),
        Err(e) => {
            // A call that does not fit the tool's signature is Python's TypeError, as the
            // generated CPython stub would raise.
            let signature = e.kind == ToolErrorKind::InvalidArguments
                && e.message.split_once("() ").is_some_and(|(f, rest)| {
                    !f.contains(' ')
                        && ["takes ", "missing ", "got "]
                            .iter()
                            .any(|p| rest.starts_with(p))
                });
            let exc_type = match e.kind {
                _ if signature => ExcType::TypeError,
                ToolErrorKind::NotFound => ExcType::LookupError,
                ToolErrorKind::InvalidArguments => ExcType::ValueError,
                ToolErrorKind::Denied => ExcType::PermissionError,
                ToolErrorKind::Timeout => ExcType::TimeoutError,
                ToolErrorKind::Failed | ToolErrorKind::LimitExceeded => ExcType::RuntimeError,
            };
            ExtFunctionResult::Error(MontyException::new(exc_type, Some(e.message)))
        }
    }
}

/// How a program that raised `e` ended: Monty's own limit errors are limit kills, anything
/// else an uncaught exception with its CPython-style traceback.
pub fn status_of(e: &MontyException) -> ExecStatus {
    let type_name = e.exc_type().to_string();
    let message = e.message().unwrap_or_default();
    match limit_of(&type_name, message) {
        Some(limit) => ExecStatus::Killed { limit },
        None => ExecStatus::Exception {
            type_name,
            message: message.to_owned(),
            traceback: format!("{e}\n"),
        },
    }
}

/// The limit an exception of Monty's own reports (`MemoryError: memory limit exceeded`,
/// `TimeoutError: time limit exceeded`), if it is one.
pub fn limit_of(type_name: &str, message: &str) -> Option<LimitKind> {
    match type_name {
        "MemoryError" if message.starts_with("memory limit exceeded") => Some(LimitKind::Memory),
        "TimeoutError" if message.starts_with("time limit exceeded") => Some(LimitKind::WallTime),
        _ => None,
    }
}
