//! What several commands share: the tool options ([`ToolArgs`]), reading the program,
//! `--memory` sizes, the data dir and printing to stdout.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::PathBuf;

use agentkernel::{Config, Error, McpServerConfig};

/// Where tools come from: `agentkernel.toml` plus command-line additions.
#[derive(clap::Args)]
pub struct ToolArgs {
    /// Configuration file (default: $AGENTKERNEL_CONFIG; ./agentkernel.toml is never read
    /// implicitly, since a sandbox could have written it).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Add an MCP server: NAME=COMMAND (a stdio server, split like a shell would) or NAME=URL
    /// (streamable HTTP). Its tools import as `tools.NAME.<tool>`. Repeatable.
    #[arg(long = "mcp", value_name = "NAME=COMMAND")]
    pub mcp: Vec<String>,
    /// Directory of plain Python tool modules, importable as `tools.<module>`.
    #[arg(long, value_name = "DIR")]
    pub tools_dir: Option<PathBuf>,
    /// Allow only these tools (`server.tool`, `server.*`); repeatable. Default: the config's
    /// `[tools] allow`, else all.
    #[arg(long = "allow-tool", value_name = "PATTERN")]
    pub allow_tool: Vec<String>,
}

impl ToolArgs {
    /// The configuration file with the command line's additions applied.
    pub fn config(&self) -> Result<Config, Error> {
        let mut config = Config::discover(self.config.as_deref())?.unwrap_or_default();
        for spec in &self.mcp {
            let (name, target) = spec.split_once('=').ok_or_else(|| {
                Error::invalid(
                    format!("--mcp {spec:?} is not NAME=COMMAND"),
                    "e.g. --mcp 'everything=npx -y @modelcontextprotocol/server-everything'",
                )
            })?;
            let server = if target.starts_with("http://") || target.starts_with("https://") {
                McpServerConfig::http(target)
            } else {
                let words = shlex::split(target)
                    .filter(|w| !w.is_empty())
                    .ok_or_else(|| {
                        Error::invalid(
                            format!("--mcp {name}: cannot split the command {target:?}"),
                            "quote it like a shell command, e.g. --mcp 'fs=npx -y @modelcontextprotocol/server-filesystem /data'",
                        )
                    })?;
                McpServerConfig::stdio(&words[0], &words[1..])
            };
            server.validate(name)?;
            config.mcp_servers.insert(name.to_owned(), server);
        }
        if let Some(dir) = &self.tools_dir {
            config.tools.dir = Some(dir.clone());
        }
        if !self.allow_tool.is_empty() {
            config.tools.allow = Some(self.allow_tool.clone());
        }
        config.policy()?;
        Ok(config)
    }

    /// These options as `agentkernel serve` arguments (for the session server a session run
    /// starts).
    pub fn serve_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        if let Some(c) = &self.config {
            args.extend(["--config".into(), c.into()]);
        }
        for m in &self.mcp {
            args.extend(["--mcp".into(), m.into()]);
        }
        if let Some(d) = &self.tools_dir {
            args.extend(["--tools-dir".into(), d.into()]);
        }
        for a in &self.allow_tool {
            args.extend(["--allow-tool".into(), a.into()]);
        }
        args
    }
}

/// The program in `file`, or on standard input for `-`.
pub fn read_program(file: &str) -> Result<String, Error> {
    if file == "-" {
        let mut code = String::new();
        std::io::stdin().read_to_string(&mut code).map_err(|e| {
            Error::invalid(
                format!("cannot read the program from standard input: {e}"),
                "pipe a UTF-8 Python program in, or pass a FILE",
            )
        })?;
        return Ok(code);
    }
    std::fs::read_to_string(file).map_err(|e| {
        Error::invalid(
            format!("cannot read program file {file}: {e}"),
            "pass an existing Python file, or - to read standard input",
        )
    })
}

/// The data dir: tasks.db, worker.lock, the session server's socket and the workspaces live
/// here.
pub fn data_dir() -> PathBuf {
    agentkernel::Workspaces::data_dir()
}

/// Writes `text` to stdout; a closed pipe (`| head`) is not worth a panic or an error.
pub fn print(text: &str) {
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// `--memory`: a whole number of MiB, or one with a unit (`K`/`KiB`, `M`/`MiB`,
/// `G`/`GiB`, any case), rounded up to whole MiB.
pub fn parse_mib(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let bad = || {
        format!(
            "{text:?} is not a size: give MiB as a whole number (e.g. 512) or with a unit (256M, 1G)"
        )
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let kib_per_unit: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => 1024,
        "g" | "gb" | "gib" => 1024 * 1024,
        "k" | "kb" | "kib" => 1,
        _ => return Err(bad()),
    };
    let mib = n
        .checked_mul(kib_per_unit)
        .map(|kib| kib.div_ceil(1024))
        .ok_or_else(bad)?;
    if mib == 0 {
        return Err(format!(
            "{text:?} is zero: a sandbox needs some memory (e.g. --memory 256)"
        ));
    }
    Ok(mib)
}

#[cfg(test)]
mod tests {
    use super::parse_mib;

    #[test]
    fn memory_sizes_take_units_and_refuse_nonsense() {
        assert_eq!(parse_mib("512"), Ok(512));
        assert_eq!(parse_mib("256M"), Ok(256));
        assert_eq!(parse_mib("256MiB"), Ok(256));
        assert_eq!(parse_mib("1G"), Ok(1024));
        assert_eq!(parse_mib("2gib"), Ok(2048));
        assert_eq!(parse_mib("1536K"), Ok(2));
        for bad in [
            "",
            "M",
            "-1",
            "1.5G",
            "256 apples",
            "0",
            "99999999999999999999",
        ] {
            let err = parse_mib(bad).unwrap_err();
            assert!(err.contains("e.g."), "{bad}: {err}");
        }
    }
}
