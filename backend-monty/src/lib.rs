//! # agentkernel-backend-monty
//!
//! pydantic's Monty, a Python-subset interpreter written in Rust (issue 8, not built yet):
//! microsecond starts in-process for trusted loops, and a jailed worker-process mode for
//! untrusted code. Tools are Monty external functions, paused and resumed on the host.
//!
//! Empty until then: the facade exposes no `monty` backend.
