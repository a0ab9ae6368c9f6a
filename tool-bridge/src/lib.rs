//! # agentkernel-tool-bridge
//!
//! Turns an agent's tools into Python modules inside the sandbox (Programmatic Tool Calling).
//!
//! Planned contents (issue 4, not built yet): a `ToolRegistry` implementing
//! `agentkernel_core::ToolHost` with tools from Rust closures, MCP servers (via `rmcp`) and a
//! local directory of Python modules; generation of the read-only `/tools` package with typed
//! signatures; and host-side policy (JSON Schema validation, allow-lists, timeouts, size caps,
//! call budgets) on every call.
//!
//! Until then the contract it will implement lives in `agentkernel_core::ToolHost`, and the
//! guest protocol already carries tool calls (see `agentkernel_core::guest`).
