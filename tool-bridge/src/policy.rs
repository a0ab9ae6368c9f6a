//! What a sandbox may do with its tools: the allow-list, per-call timeout, size caps and the
//! per-execution call budget. Checked on the host for every call, before any tool runs.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Per-sandbox tool policy. `Default` allows every tool with generous caps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ToolPolicy {
    /// Tools the sandbox may call, as patterns over `server.tool`: `"github.create_issue"`,
    /// `"github.*"`, `"*"`. Empty means none.
    pub allow: Vec<String>,
    /// Longest a single call may take.
    #[serde(with = "secs", rename = "timeout_secs")]
    pub timeout: Duration,
    /// Largest JSON argument object, in bytes.
    pub max_arg_bytes: usize,
    /// Largest JSON result, in bytes.
    pub max_result_bytes: usize,
    /// Most calls one execution may make.
    pub max_calls: u32,
}

/// Hard ceiling on a result: the guest protocol's frame limit (64 MiB) minus headroom.
pub const RESULT_BYTES_CEILING: usize = 48 << 20;

impl Default for ToolPolicy {
    fn default() -> Self {
        ToolPolicy {
            allow: vec!["*".into()],
            timeout: Duration::from_secs(60),
            max_arg_bytes: 1 << 20,
            max_result_bytes: 8 << 20,
            max_calls: 1000,
        }
    }
}

impl ToolPolicy {
    /// Whether `qualified` (`server.tool`) matches the allow-list.
    pub fn allows(&self, qualified: &str) -> bool {
        self.allow.iter().any(|p| pattern_matches(p, qualified))
    }

    /// Checks the numbers make sense; the error says which setting to fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.timeout.is_zero() {
            return Err("tools.timeout_secs must be greater than 0".into());
        }
        if self.max_result_bytes > RESULT_BYTES_CEILING {
            return Err(format!(
                "tools.max_result_bytes may be at most {RESULT_BYTES_CEILING} (the guest protocol's frame limit)"
            ));
        }
        if self.max_arg_bytes == 0 || self.max_result_bytes == 0 || self.max_calls == 0 {
            return Err("tools.max_arg_bytes, max_result_bytes and max_calls must be > 0".into());
        }
        for p in &self.allow {
            if p.is_empty() || p.matches('*').count() > 1 || (p.contains('*') && !p.ends_with('*'))
            {
                return Err(format!(
                    "tools.allow pattern {p:?} is not supported: use \"server.tool\", \"server.*\" or \"*\""
                ));
            }
        }
        Ok(())
    }
}

/// `*` alone matches everything; `prefix*` matches by prefix; anything else exactly.
fn pattern_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let p = ToolPolicy {
            allow: vec!["calc.*".into(), "github.create_issue".into()],
            ..ToolPolicy::default()
        };
        assert!(p.allows("calc.add"));
        assert!(p.allows("github.create_issue"));
        assert!(!p.allows("github.delete_repo"));
        assert!(!p.allows("calculator.add"));
        assert!(ToolPolicy::default().allows("anything.at_all"));
        assert!(
            ToolPolicy {
                allow: vec!["*.x".into()],
                ..ToolPolicy::default()
            }
            .validate()
            .is_err()
        );
    }
}
