//! E2B compatibility: the wire formats the official E2B SDKs speak, so that unmodified E2B
//! code runs against `agentkernel serve` (issue 19, point 3).
//!
//! `docs/e2b-protocol.md` is the digest of what the SDKs (`e2b` 2.63.0,
//! `e2b-code-interpreter` 2.11.5) send and expect, call by call; `tests/e2b/sdk_check.py` is
//! the real-client check. This module holds the pure, server-independent pieces:
//! [`connect`], the Connect-RPC envelope framing and the proto3-JSON messages of envd's
//! `process.Process` and `filesystem.Filesystem` services.
//!
//! Wiring note for the lead: declare it with `pub mod e2b;` in `src/http/mod.rs`; the crate
//! needs `base64` as a dependency (`base64.workspace = true`, already in the workspace).

pub mod connect;
