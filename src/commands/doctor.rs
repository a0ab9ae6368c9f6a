//! `agentkernel doctor`: which backends work on this machine, why not, and which
//! protections are active.

use std::process::ExitCode;

use agentkernel::core::CheckState;

use super::Error;
use super::common::print;

/// `agentkernel doctor`'s arguments.
#[derive(clap::Args)]
pub struct DoctorArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Prints the report; fails (exit 1) when the default backend, `process`, does not work.
pub async fn run(args: DoctorArgs) -> Result<ExitCode, Error> {
    let reports = agentkernel::doctor().await;
    let default_ok = reports
        .iter()
        .any(|r| r.backend == "process" && r.available);
    use std::fmt::Write as _;
    let mut text = String::new();
    if args.json {
        text = serde_json::to_string_pretty(&reports)
            .map_err(|e| agentkernel::Error::Internal(e.to_string()))?
            + "\n";
    } else {
        let _ = writeln!(text, "AgentKernel {} doctor\n", env!("CARGO_PKG_VERSION"));
        for r in &reports {
            let head = match (r.compiled, r.available) {
                (false, _) => "not built",
                (true, true) => "available",
                (true, false) => "UNAVAILABLE",
            };
            let _ = writeln!(text, "backend {:<8} {head}", r.backend);
            if let Some(reason) = &r.reason {
                let _ = writeln!(text, "    {reason}");
            }
            for c in &r.checks {
                let mark = match c.state {
                    CheckState::Active => "ok  ",
                    CheckState::Partial => "part",
                    CheckState::Inactive => "off ",
                    CheckState::Failed => "FAIL",
                };
                let _ = writeln!(text, "    [{mark}] {:<13} {}", c.name, c.detail);
            }
            text.push('\n');
        }
    }
    // A closed pipe (`doctor | head`) is not worth a panic.
    print(&text);
    if default_ok {
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::FAILURE)
    }
}
