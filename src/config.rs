//! `agentkernel.toml`: sandbox defaults, the tool policy, local tool modules and MCP servers.
//!
//! ```toml
//! [sandbox]
//! backend = "process"
//! timeout_secs = 30
//! memory_mib = 512
//! workspace = "./workspace"     # relative paths are relative to this file
//!
//! [tools]
//! dir = "./tools"               # plain Python modules: `from tools.data_analysis import ...`
//! allow = ["github.*", "calc.add"]
//! timeout_secs = 60
//! max_calls = 1000
//! max_arg_bytes = 1048576
//! max_result_bytes = 8388608
//!
//! [pool]                        # pre-warmed sandboxes (serve, worker)
//! min_idle = 2
//! max_size = 8
//! max_uses = 100
//! idle_ttl_secs = 300
//! acquire_timeout_secs = 10
//!
//! [microvm]                     # the microvm backend
//! pool_size = 1                 # warm VMs kept per memory size (at most one per core; 0: none)
//! vcpus = 1
//! snapshots = true              # restore VMs from a saved state instead of booting each
//! engine = "auto"               # "auto": msb on hardware KVM (with feature msb), else qemu;
//!                               # "qemu" or "msb" to insist
//!
//! [mcp_servers.github]
//! command = "npx"
//! args = ["-y", "@modelcontextprotocol/server-github"]
//! env = { GITHUB_TOKEN = "${GITHUB_TOKEN}" }   # ${VAR} comes from the host's environment
//!
//! [mcp_servers.search]
//! url = "https://search.example.com/mcp"
//! headers = { Authorization = "Bearer ${SEARCH_TOKEN}" }
//! ```
//!
//! Where it is looked for: `--config FILE`, else `$AGENTKERNEL_CONFIG`. Never implicitly in
//! the current directory: this file starts host commands (`[mcp_servers]`), picks the backend
//! and the workspace, and a sandbox whose workspace is (or was) the directory the next run
//! starts in could have written `./agentkernel.toml` itself. A file is loaded only when it
//! belongs to the invoking user (or root) and no one else can write it or its directory, and
//! a kernel built from it refuses any workspace that holds it (or an MCP server's command or
//! directory). Secrets should stay in the host's environment and be referenced as `${VAR}`;
//! nothing from this file reaches the sandbox except the generated tool stubs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use agentkernel_core::{Error, Result};
use agentkernel_tool_bridge::{McpServerConfig, ToolPolicy, ToolRegistry};
use serde::Deserialize;

use crate::kernel::KernelBuilder;

/// Name of the file looked for in the current directory.
pub const CONFIG_FILE: &str = "agentkernel.toml";

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Sandbox defaults.
    #[serde(default)]
    pub sandbox: SandboxConfig,
    /// Tool policy and local modules.
    #[serde(default)]
    pub tools: ToolsConfig,
    /// MCP servers by name (each becomes `tools.<name>`).
    #[serde(default)]
    pub mcp_servers: BTreeMap<String, McpServerConfig>,
    /// Pre-warmed sandboxes (for `serve`, `worker` and library kernels); none when absent.
    pub pool: Option<agentkernel_core::PoolConfig>,
    /// `[microvm]`.
    #[serde(default)]
    pub microvm: MicroVmSettings,
    /// The file this was read from (resolved), if any: kernels built from it refuse to let
    /// sandboxes write where it is.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// `[microvm]`: how the microvm backend starts VMs (unset: its defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MicroVmSettings {
    /// Warm VMs kept ready per memory size (at most one per core; 0 disables the pool).
    pub pool_size: Option<usize>,
    /// Virtual CPUs per VM.
    pub vcpus: Option<u32>,
    /// Restore VMs from a saved template state (true) or boot each one (false).
    pub snapshots: Option<bool>,
    /// Which engine runs the VMs: `auto`, `qemu` or `msb`.
    pub engine: Option<String>,
}

/// `[sandbox]`: defaults for every run (command-line flags override them).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    /// Backend name.
    pub backend: Option<String>,
    /// Wall-clock limit in seconds.
    pub timeout_secs: Option<f64>,
    /// Memory limit in MiB.
    pub memory_mib: Option<u64>,
    /// Host directory mounted at `/workspace`.
    pub workspace: Option<PathBuf>,
    /// Interpreter for the process backend.
    pub python: Option<PathBuf>,
}

/// `[tools]`: the local modules directory and the policy; unset policy settings keep
/// [`ToolPolicy::default`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolsConfig {
    /// Directory of plain Python tool modules.
    pub dir: Option<PathBuf>,
    /// Allowed tools (`server.tool`, `server.*`, `*`).
    pub allow: Option<Vec<String>>,
    /// Per-call timeout in seconds.
    pub timeout_secs: Option<f64>,
    /// Largest argument object in bytes.
    pub max_arg_bytes: Option<usize>,
    /// Largest result in bytes.
    pub max_result_bytes: Option<usize>,
    /// Calls per execution.
    pub max_calls: Option<u32>,
}

impl Config {
    /// Reads and checks `path`. Relative paths in it are resolved against its directory and
    /// `${VAR}` in MCP `env`/`headers` values is replaced from the environment.
    pub fn load(path: &Path) -> Result<Config> {
        let text = read_trusted(path)?;
        let mut config: Config = toml::from_str(&text).map_err(|e| {
            Error::invalid(
                format!("config file {}: {e}", path.display()),
                "see the agentkernel.toml example in the README",
            )
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let resolve = |p: &mut Option<PathBuf>| {
            if let Some(p) = p.as_mut().filter(|p| p.is_relative()) {
                *p = base.join(&*p);
            }
        };
        resolve(&mut config.sandbox.workspace);
        // A bare interpreter name ("python3") is looked up on PATH, not next to the file.
        if config
            .sandbox
            .python
            .as_ref()
            .is_some_and(|p| p.components().count() > 1)
        {
            resolve(&mut config.sandbox.python);
        }
        resolve(&mut config.tools.dir);
        for (name, server) in &mut config.mcp_servers {
            resolve(&mut server.cwd);
            for v in server.env.values_mut().chain(server.headers.values_mut()) {
                *v = expand_env(v).map_err(|var| {
                    Error::invalid(
                        format!(
                            "config file {}: MCP server {name:?} uses ${{{var}}}, which is not set",
                            path.display()
                        ),
                        format!("export {var}=... before starting agentkernel"),
                    )
                })?;
            }
            server.validate(name)?;
        }
        config.policy()?;
        config.source = std::fs::canonicalize(path).ok();
        Ok(config)
    }

    /// `explicit`, else `$AGENTKERNEL_CONFIG`; `None` when neither names a file. A
    /// `./agentkernel.toml` is never read implicitly (see the module docs); when one is there
    /// and unused, a warning says how to use it.
    pub fn discover(explicit: Option<&Path>) -> Result<Option<Config>> {
        let path = match explicit {
            Some(p) => Some(p.to_path_buf()),
            None => std::env::var_os("AGENTKERNEL_CONFIG")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
        };
        if path.is_none()
            && let Some(ignored) = Self::ignored_local_file()
        {
            tracing::warn!(
                "{} is not read implicitly (a sandbox whose workspace was this directory could \
                 have written it): pass --config {} or set AGENTKERNEL_CONFIG to use it",
                ignored.display(),
                ignored.display()
            );
        }
        path.map(|p| Config::load(&p)).transpose()
    }

    /// `./agentkernel.toml` when it exists and neither `$AGENTKERNEL_CONFIG` nor an explicit
    /// file is in play would have been read by earlier versions; callers say it is ignored.
    pub fn ignored_local_file() -> Option<PathBuf> {
        let local = PathBuf::from(CONFIG_FILE);
        (std::env::var_os("AGENTKERNEL_CONFIG").is_none_or(|p| p.is_empty()) && local.exists())
            .then_some(local)
    }

    /// Host paths a sandbox must never be able to write, because the host trusts them:
    /// this file, and each stdio MCP server's working directory, command (when a path) and
    /// arguments that name existing files (its script).
    pub fn trusted_paths(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = self.source.iter().cloned().collect();
        for server in self.mcp_servers.values() {
            let base = server.cwd.clone().unwrap_or_else(|| PathBuf::from("."));
            out.extend(server.cwd.iter().cloned());
            // A command or argument that names an existing file (relative to the server's
            // directory, or absolute) is code or data the server runs on the host.
            for word in server.command.iter().chain(server.args.iter()) {
                let p = base.join(word);
                if p.exists() {
                    out.push(p);
                }
            }
        }
        out
    }

    /// The tool policy: defaults with this file's settings applied.
    pub fn policy(&self) -> Result<ToolPolicy> {
        let mut p = ToolPolicy::default();
        let c = &self.tools;
        if let Some(a) = &c.allow {
            p.allow = a.clone();
        }
        if let Some(t) = c.timeout_secs {
            p.timeout = std::time::Duration::try_from_secs_f64(t).map_err(|_| {
                Error::invalid(
                    format!("tools.timeout_secs = {t} is not a duration"),
                    "use a positive number of seconds",
                )
            })?;
        }
        if let Some(v) = c.max_arg_bytes {
            p.max_arg_bytes = v;
        }
        if let Some(v) = c.max_result_bytes {
            p.max_result_bytes = v;
        }
        if let Some(v) = c.max_calls {
            p.max_calls = v;
        }
        p.validate()
            .map_err(|m| Error::invalid(m, "fix [tools] in agentkernel.toml"))?;
        Ok(p)
    }

    /// Whether any tool source is configured.
    pub fn has_tools(&self) -> bool {
        self.tools.dir.is_some() || !self.mcp_servers.is_empty()
    }

    /// Starts the MCP servers and builds the registry (`None` when there are no tools).
    pub async fn tool_registry(&self) -> Result<Option<ToolRegistry>> {
        if !self.has_tools() {
            return Ok(None);
        }
        let mut b = ToolRegistry::builder().policy(self.policy()?);
        if let Some(dir) = &self.tools.dir {
            b = b.python_dir(dir);
        }
        for (name, server) in &self.mcp_servers {
            b = b.mcp_server(name, server.clone());
        }
        Ok(Some(b.build().await?))
    }

    /// Refuses `workspace` (a host directory about to be mounted writable) when it holds a
    /// path this file makes the host trust ([`Config::trusted_paths`]), the home directory or
    /// AgentKernel's own directories. Checked before any MCP server starts; the kernel builder
    /// checks again when it resolves the workspace.
    pub fn check_workspace(&self, workspace: &Path) -> Result<()> {
        let Ok(real) = std::fs::canonicalize(workspace) else {
            return Ok(()); // not there yet: it holds nothing
        };
        agentkernel_core::hostdirs::check_workspace_dir(
            &real,
            &agentkernel_core::Workspaces::data_dir(),
            &self.trusted_paths(),
        )
    }

    /// A kernel builder with this file's `[sandbox]` settings and tools.
    pub async fn kernel_builder(&self) -> Result<KernelBuilder> {
        let s = &self.sandbox;
        if let Some(ws) = &s.workspace {
            self.check_workspace(ws)?;
        }
        let mut b = KernelBuilder::default();
        for p in self.trusted_paths() {
            b = b.protect_path(p);
        }
        if let Some(v) = &s.backend {
            b = b.backend(v);
        }
        if let Some(v) = s.timeout_secs {
            let limit = std::time::Duration::try_from_secs_f64(v)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    Error::invalid(
                        format!("sandbox.timeout_secs = {v} is not a positive number of seconds"),
                        "set e.g. timeout_secs = 30 under [sandbox] in agentkernel.toml",
                    )
                })?;
            b = b.timeout(limit);
        }
        if let Some(v) = s.memory_mib {
            b = b.memory_mib(v);
        }
        if let Some(v) = &s.workspace {
            b = b.workspace(v);
        }
        // Read by every build; only a build with the process backend has it to pass on.
        #[cfg(feature = "process")]
        if let Some(v) = &s.python {
            b = b.python(v);
        }
        if let Some(pool) = &self.pool {
            pool.validate()?;
            b = b.pool(pool.clone());
        }
        if self.microvm.vcpus == Some(0) {
            return Err(Error::invalid(
                "[microvm] vcpus is 0",
                "give a VM at least 1 vCPU",
            ));
        }
        if let Some(engine) = &self.microvm.engine
            && !["auto", "qemu", "msb"].contains(&engine.as_str())
        {
            return Err(Error::invalid(
                format!("[microvm] engine {engine:?} is unknown"),
                "use \"auto\" (msb on hardware KVM, else qemu), \"qemu\" or \"msb\"",
            ));
        }
        // Checked above by every build; only a build with the microvm backend uses it.
        #[cfg(feature = "microvm")]
        {
            b = b.microvm(self.microvm.clone());
        }
        if let Some(reg) = self.tool_registry().await? {
            b = b.tools(reg);
        }
        Ok(b)
    }
}

/// Reads a configuration file after checking it can be trusted: it belongs to the invoking
/// user or root, and neither it nor its directory is writable by anyone else (so no other
/// user, nor a sandbox running as another uid, can have written it).
fn read_trusted(path: &Path) -> Result<String> {
    use std::io::Read as _;
    use std::os::unix::fs::MetadataExt;
    let mut file = agentkernel_core::hostdirs::private_file()
        .read(true)
        .open(path)
        .map_err(|e| {
            Error::invalid(
                format!("cannot read config file {}: {e}", path.display()),
                "pass an existing regular file (not a symlink) to --config",
            )
        })?;
    let meta = file
        .metadata()
        .map_err(|e| Error::io(format!("checking {}", path.display()), e))?;
    let me = agentkernel_core::hostdirs::euid();
    let untrusted = |why: String| {
        Error::invalid(
            format!(
                "refusing config file {}: {why}; it starts host commands, so only a file that you alone could have written is read",
                path.display()
            ),
            format!(
                "check its contents, then `chown {me} {0}` and `chmod go-w {0}` (and its directory)",
                path.display()
            ),
        )
    };
    if !meta.is_file() {
        return Err(untrusted("it is not a regular file".into()));
    }
    if meta.uid() != me && meta.uid() != 0 {
        return Err(untrusted(format!(
            "it belongs to uid {}, not to you (uid {me}) or root",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(untrusted(format!(
            "others can write it (mode {:o})",
            meta.mode() & 0o7777
        )));
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if let Ok(d) = std::fs::metadata(dir) {
        let sticky = d.mode() & 0o1000 != 0;
        if (d.uid() != me && d.uid() != 0) || (d.mode() & 0o022 != 0 && !sticky) {
            return Err(untrusted(format!(
                "its directory {} can be written by others (owner uid {}, mode {:o}), who could replace it",
                dir.display(),
                d.uid(),
                d.mode() & 0o7777
            )));
        }
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| Error::io(format!("reading config file {}", path.display()), e))?;
    Ok(text)
}

/// Replaces `${VAR}` with the variable's value; `Err(VAR)` names an unset one.
fn expand_env(s: &str) -> std::result::Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let var = &after[..end];
        out.push_str(&std::env::var(var).map_err(|_| var.to_owned())?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example_and_expands_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONFIG_FILE);
        // SAFETY: single-threaded test setup; no other thread reads this variable.
        unsafe { std::env::set_var("AK_TEST_TOKEN_X", "sekrit") };
        std::fs::write(
            &path,
            r#"
[sandbox]
timeout_secs = 5
workspace = "ws"
python = "python3"
[tools]
dir = "tools"
allow = ["calc.*"]
max_calls = 7
[pool]
min_idle = 1
acquire_timeout_secs = 2.5
[microvm]
pool_size = 0
vcpus = 2
engine = "qemu"
[mcp_servers.calc]
command = "python3"
args = ["server.py"]
env = { TOKEN = "Bearer ${AK_TEST_TOKEN_X}" }
"#,
        )
        .unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.sandbox.workspace, Some(dir.path().join("ws")));
        assert_eq!(c.sandbox.python, Some(PathBuf::from("python3")));
        assert_eq!(c.tools.dir, Some(dir.path().join("tools")));
        assert_eq!(c.mcp_servers["calc"].env["TOKEN"], "Bearer sekrit");
        assert_eq!(
            c.microvm,
            MicroVmSettings {
                pool_size: Some(0),
                vcpus: Some(2),
                snapshots: None,
                engine: Some("qemu".into()),
            }
        );
        let pool = c.pool.clone().unwrap();
        assert_eq!((pool.min_idle, pool.max_size), (1, 8));
        assert_eq!(pool.acquire_timeout, std::time::Duration::from_millis(2500));
        let p = c.policy().unwrap();
        assert_eq!(
            (p.max_calls, p.allow.clone()),
            (7, vec!["calc.*".to_owned()])
        );
    }

    #[test]
    fn bad_files_say_what_to_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONFIG_FILE);
        std::fs::write(
            &path,
            "[mcp_servers.x]\ncommand = \"a\"\nurl = \"http://b\"\n",
        )
        .unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.contains("both `command` and `url`"), "{e}");
        std::fs::write(&path, "[tools]\nmax_calls = 0\n").unwrap();
        assert!(Config::load(&path).is_err());
        std::fs::write(
            &path,
            "[mcp_servers.x]\ncommand = \"a\"\nenv = { T = \"${AK_SURELY_UNSET_VAR}\" }\n",
        )
        .unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.contains("AK_SURELY_UNSET_VAR"), "{e}");
        std::fs::write(&path, "[sandbox]\nbogus = 1\n").unwrap();
        assert!(
            Config::load(&path)
                .unwrap_err()
                .to_string()
                .contains("bogus")
        );
    }

    #[tokio::test]
    async fn an_unknown_microvm_engine_is_refused_with_the_choices() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONFIG_FILE);
        std::fs::write(&path, "[microvm]\nengine = \"firecracker\"\n").unwrap();
        let config = Config::load(&path).unwrap();
        let e = config.kernel_builder().await.err().unwrap().to_string();
        assert!(
            e.contains("\"firecracker\" is unknown") && e.contains("\"msb\""),
            "{e}"
        );
    }
}
