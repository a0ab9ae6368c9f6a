//! # agentkernel-tool-bridge
//!
//! Turns an agent's tools into Python modules inside the sandbox (Programmatic Tool Calling):
//! a program writes `from tools.github import create_issue` and calls it; the call crosses to
//! the host, where the policy is checked and the tool runs.
//!
//! - [`ToolRegistry`] gathers tools from three sources: Rust closures ([`FunctionTool`]), MCP
//!   servers over stdio or streamable HTTP ([`McpServerConfig`], via `rmcp`), and a local
//!   directory of plain Python modules that run inside the sandbox itself. It writes the
//!   `tools` package ([`stubs`]) that every backend mounts read-only at `/tools`
//!   ([`ToolRegistry::mounts`]).
//! - [`ToolGate`] is one execution's view of the registry and the `agentkernel_core::ToolHost`
//!   backends call. On every call, before any tool runs, it checks the [`ToolPolicy`]
//!   (allow-list, call budget, argument size), validates the arguments against the tool's JSON
//!   Schema, applies the per-call timeout and then the result-size cap, and logs a `tool_call`
//!   tracing span (server, tool, sizes, duration, outcome; never argument values).
//!
//! How failures look in Python (the `_agentkernel` module the guest agent provides):
//! unknown tool → `LookupError`, bad arguments → `ValueError` (a missing or unknown keyword
//! argument is a plain `TypeError` from the generated signature), not allowed →
//! `PermissionError`, too slow → `TimeoutError`, too large or over budget →
//! `tools.ToolLimitError`, the tool itself failed → `tools.ToolError` (the base class of
//! `ToolLimitError`) with the tool's message.
//!
//! Credentials of MCP servers (their `env`, HTTP `headers`) live only in the host's
//! configuration and process; their values are redacted from results and error messages.

mod mcp;
mod policy;
mod registry;
/// The generated `tools` package and the tool ABI, defined in core (`agentkernel_core::tool_abi`)
/// so that backends share it without linking this crate.
pub use agentkernel_core::tool_abi as stubs;

pub use mcp::McpServerConfig;
pub use policy::ToolPolicy;
pub use registry::{
    CatalogEntry, FunctionTool, ToolGate, ToolRegistry, ToolRegistryBuilder, ToolSource,
};
/// The `schemars` crate typed tools use (see [`JsonSchema`]).
pub use schemars;
/// Derive it on a typed tool's argument and result types ([`FunctionTool::typed`]); without
/// a `schemars` dependency of your own, add
/// `#[schemars(crate = "agentkernel::tools::schemars")]` beside the derive.
pub use schemars::JsonSchema;
