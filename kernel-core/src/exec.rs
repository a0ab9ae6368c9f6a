//! One run of a program in a sandbox: the request and its outcome.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::output::CapturedOutput;

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamKind {
    /// The program's standard output.
    Stdout,
    /// The program's standard error.
    Stderr,
}

/// Receives output while the program runs (e.g. the CLI passes it through live).
/// Called with each chunk as it arrives, up to the output limit: it receives exactly the
/// bytes the capture keeps, never more. A program whose output passes the limit while a
/// sink is attached is stopped, `Killed { limit: Output }`; without a sink its output is
/// truncated and it runs on.
pub type OutputSink = Arc<dyn Fn(StreamKind, &[u8]) + Send + Sync>;

/// A program to run in a sandbox.
#[derive(Clone)]
pub struct ExecRequest {
    /// Python source code.
    pub code: String,
    /// Overrides the sandbox's `wall_time` limit for this run.
    pub timeout: Option<Duration>,
    /// Optional live output receiver.
    pub output: Option<OutputSink>,
}

impl ExecRequest {
    /// The program-size cap: the largest `code` (in bytes of UTF-8) a sandbox runs, 1 MiB,
    /// for every backend (the same size as the guest protocol's largest guest → host frame,
    /// [`crate::guest::MAX_GUEST_FRAME_BYTES`]). Larger programs are refused by
    /// [`ExecRequest::check_size`] before any work is done on them: a host-side step over
    /// the source (monty's import rewrite, framing, parsing) then stays small. Data belongs
    /// in files, not in the program: put it in the workspace and read it from there.
    pub const MAX_CODE_BYTES: usize = 1 << 20;

    /// Refuses a program larger than [`ExecRequest::MAX_CODE_BYTES`] with an
    /// [`Error::InvalidRequest`] that names the cap and says what to do. Each backend's
    /// `Sandbox::exec` must call it before anything else; the conformance check
    /// `programs_over_the_size_cap_are_refused` holds every backend to it.
    pub fn check_size(&self) -> Result<()> {
        let size = self.code.len();
        if size <= Self::MAX_CODE_BYTES {
            return Ok(());
        }
        Err(Error::invalid(
            format!(
                "the program is {size} bytes, over the program-size cap of 1 MiB ({} bytes, ExecRequest::MAX_CODE_BYTES)",
                Self::MAX_CODE_BYTES
            ),
            "split it into several execs in one sandbox (globals persist between them), or put its data in a file in the workspace and read the file from the program",
        ))
    }

    /// A request to run `code` with the sandbox's limits and no live output.
    pub fn new(code: impl Into<String>) -> Self {
        ExecRequest {
            code: code.into(),
            timeout: None,
            output: None,
        }
    }

    /// Sets a per-run timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Streams output to `sink` as it arrives.
    pub fn with_output(mut self, sink: OutputSink) -> Self {
        self.output = Some(sink);
        self
    }
}

impl fmt::Debug for ExecRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecRequest")
            .field("code", &self.code)
            .field("timeout", &self.timeout)
            .field("output", &self.output.as_ref().map(|_| "<sink>"))
            .finish()
    }
}

/// A limit that can stop a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    /// `Limits::wall_time` (or the request's timeout).
    WallTime,
    /// `Limits::cpu_time`.
    CpuTime,
    /// `Limits::memory_bytes`.
    Memory,
    /// `Limits::processes`.
    Processes,
    /// `Limits::file_size_bytes`.
    FileSize,
    /// `Limits::output_bytes`.
    Output,
    /// `Limits::tmp_bytes` or a workspace quota.
    Disk,
}

impl LimitKind {
    /// Every kind, one per field of [`crate::Limits`].
    pub const ALL: [LimitKind; 7] = [
        LimitKind::WallTime,
        LimitKind::CpuTime,
        LimitKind::Memory,
        LimitKind::Processes,
        LimitKind::FileSize,
        LimitKind::Output,
        LimitKind::Disk,
    ];

    /// The name users see, e.g. on the CLI's stderr.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::WallTime => "timeout",
            LimitKind::CpuTime => "cpu time",
            LimitKind::Memory => "memory",
            LimitKind::Processes => "process count",
            LimitKind::FileSize => "file size",
            LimitKind::Output => "output size",
            LimitKind::Disk => "disk",
        }
    }
}

impl fmt::Display for LimitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExecStatus {
    /// The program ran to its end.
    Ok,
    /// The program raised an exception it did not catch.
    Exception {
        /// The exception's class name, e.g. `ValueError`.
        #[serde(rename = "type")]
        type_name: String,
        /// `str(exception)`.
        message: String,
        /// The formatted traceback, as Python prints it.
        traceback: String,
    },
    /// The program called `sys.exit(code)` or `os._exit(code)`.
    Exited {
        /// The exit code.
        code: i32,
    },
    /// A limit stopped the program; the sandbox is gone.
    Killed {
        /// Which limit.
        limit: LimitKind,
    },
    /// The interpreter died for another reason (a signal, a crash in native code).
    Crashed {
        /// What is known about it, e.g. "killed by signal SIGSEGV".
        reason: String,
    },
}

impl ExecStatus {
    /// The exit code a command-line user expects: 0 for `Ok`, 1 for an exception, the
    /// program's own code for `Exited`, 124 for a timeout, 137 for other limit kills and
    /// 70 for a crash.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExecStatus::Ok => 0,
            ExecStatus::Exception { .. } => 1,
            ExecStatus::Exited { code } => *code,
            ExecStatus::Killed {
                limit: LimitKind::WallTime,
            } => 124,
            ExecStatus::Killed { .. } => 137,
            ExecStatus::Crashed { .. } => 70,
        }
    }

    /// Whether the program ran to its end without an error.
    pub fn is_ok(&self) -> bool {
        matches!(self, ExecStatus::Ok | ExecStatus::Exited { code: 0 })
    }

    /// One meaning per outcome on every backend: a program that ended on an uncaught
    /// `MemoryError` the interpreter raised (one without a message: an allocation the memory
    /// limit refused) was stopped by its memory limit, `Killed { limit: Memory }`, as on a
    /// backend whose kernel kills the sandbox for its memory; the sandbox is then ended like
    /// any killed one. A `MemoryError` the program raised itself, with a message, stays an
    /// exception.
    pub fn memory_error_as_kill(self) -> ExecStatus {
        match self {
            ExecStatus::Exception {
                type_name, message, ..
            } if type_name == "MemoryError" && message.is_empty() => ExecStatus::Killed {
                limit: LimitKind::Memory,
            },
            other => other,
        }
    }
}

/// Time spent in each phase of a run. Phases a caller did not go through stay zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// Getting a sandbox from a pool.
    #[serde(with = "duration_ms")]
    pub acquire: Duration,
    /// Creating (booting) a new sandbox.
    #[serde(with = "duration_ms")]
    pub boot: Duration,
    /// Running the program, tool calls included.
    #[serde(with = "duration_ms")]
    pub exec: Duration,
    /// Total time spent inside tool calls on the host.
    #[serde(with = "duration_ms")]
    pub tool_calls: Duration,
    /// Shutting the sandbox down.
    #[serde(with = "duration_ms")]
    pub teardown: Duration,
}

/// One tool call made by the program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCallRecord {
    /// Tool name.
    pub name: String,
    /// How long the host took.
    #[serde(with = "duration_ms")]
    pub duration: Duration,
    /// Whether it returned a value (as opposed to an error).
    pub ok: bool,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::tools::ToolErrorKind>,
}

/// The result of running a program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOutcome {
    /// How it ended.
    pub status: ExecStatus,
    /// Captured standard output.
    pub stdout: CapturedOutput,
    /// Captured standard error.
    pub stderr: CapturedOutput,
    /// Per-phase timings.
    pub timings: Timings,
    /// The tool calls it made, in order of completion.
    pub tool_calls: Vec<ToolCallRecord>,
    /// The value of the program's last expression, as Jupyter, E2B and mcp-run-python
    /// return it: present only when the program ran to its end ([`ExecStatus::Ok`]), its
    /// last top-level statement is an expression statement, and the value is not `None`.
    /// See [`ExprValue`] for the rules. Absent in outcomes stored before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<ExprValue>,
    /// What the program displayed, in order, as a notebook shows it: matplotlib figures
    /// (`plt.show()`, figures still open when the program ends, `display(fig)`) as PNG, and
    /// `display(obj)` of other objects as text. Only backends whose Python can import
    /// matplotlib make figures; see [`DisplayData`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub displays: Vec<DisplayData>,
}

/// One thing a program displayed ([`ExecOutcome::displays`]): `mime` is
/// [`DisplayData::PNG`] (`data` is the image as standard base64, as E2B and Jupyter send
/// it) or [`DisplayData::TEXT`] (`data` is the text).
///
/// The guest makes it; the host keeps it only through [`DisplayData::from_guest`]: a PNG
/// that decodes, starts with PNG's signature and is at most [`DisplayData::MAX_PNG_BYTES`],
/// a text cut at [`DisplayData::MAX_TEXT_BYTES`], at most [`DisplayData::MAX_PER_EXEC`] of
/// them per execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisplayData {
    /// The media type: `image/png` or `text/plain`.
    pub mime: String,
    /// Base64 of the image, or the text.
    pub data: String,
}

impl DisplayData {
    /// The media type of a figure.
    pub const PNG: &str = "image/png";
    /// The media type of another object's `repr`.
    pub const TEXT: &str = "text/plain";
    /// The largest PNG kept, 512 KiB (decoded); a larger one becomes a text saying so.
    pub const MAX_PNG_BYTES: usize = 512 << 10;
    /// The largest text kept, 64 KiB (cut at a character boundary past it).
    pub const MAX_TEXT_BYTES: usize = 64 << 10;
    /// The most displays kept of one execution; later ones are dropped.
    pub const MAX_PER_EXEC: usize = 16;

    /// A display the guest reported, made safe (see the type's rules); `None` for one that
    /// is not a display (an unknown type, an image that is not a PNG).
    pub fn from_guest(mime: &str, data: &str) -> Option<DisplayData> {
        use base64::Engine as _;
        match mime {
            Self::PNG => {
                // Base64 is 4/3 of the bytes: a longer text is refused before decoding.
                if data.len() > Self::MAX_PNG_BYTES / 3 * 4 + 4 {
                    return Some(DisplayData {
                        mime: Self::TEXT.into(),
                        data: format!(
                            "[an image over agentkernel's display cap of {} KiB was dropped: save it to a file in the workspace instead]",
                            Self::MAX_PNG_BYTES >> 10
                        ),
                    });
                }
                let png = base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .ok()?;
                png.starts_with(b"\x89PNG\r\n\x1a\n").then(|| DisplayData {
                    mime: Self::PNG.into(),
                    data: data.to_owned(),
                })
            }
            Self::TEXT => Some(DisplayData {
                mime: Self::TEXT.into(),
                data: cap_utf8(data.as_bytes(), Self::MAX_TEXT_BYTES).0,
            }),
            _ => None,
        }
    }
}

/// The value of a program's last expression ([`ExecOutcome::value`]).
///
/// Rules, the same on every backend (the conformance check `last_expression_value` holds
/// each to them):
/// - Only a program whose last top-level statement is an expression statement has one
///   (`x = 5` has none, `x` has one). An expression whose value is `None` has none either,
///   as Jupyter shows no result for it: `print(1)` (which returns `None`) has no value.
/// - `repr` is the value's `repr()`, at most [`ExprValue::MAX_REPR_BYTES`] of UTF-8; a
///   longer one is cut there (at a character boundary) and ends with
///   [`ExprValue::TRUNCATED_MARK`], and `truncated` is set.
/// - `json` is the value as JSON where `json.dumps` takes it (dicts, lists, tuples, str,
///   int, float, bool and `None`, nested), its integers fit 64 bits (JSON readers lose
///   larger ones), it has no NaN or infinity, and its JSON text is at most
///   [`ExprValue::MAX_JSON_BYTES`]; otherwise absent (a set, an object, bytes...).
/// - The expression and its `repr` run as part of the program: an exception in either is
///   the program's exception (an [`ExecStatus::Exception`]), and there is no value.
///
/// The guest computes it; the host never trusts it further than [`ExprValue::from_guest`]
/// allows (a bounded size, valid UTF-8, valid JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExprValue {
    /// `repr(value)`, capped at [`ExprValue::MAX_REPR_BYTES`].
    pub repr: String,
    /// The value as JSON, where it is JSON (see the type's rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<serde_json::Value>,
    /// Whether `repr` was cut at the cap (it then ends with [`ExprValue::TRUNCATED_MARK`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

impl ExprValue {
    /// The largest `repr` kept, 64 KiB of UTF-8 (before the truncation mark).
    pub const MAX_REPR_BYTES: usize = 64 << 10;

    /// The largest JSON text kept, 64 KiB: a larger value has no `json` (only its `repr`).
    /// Data that large belongs in a file in the workspace.
    pub const MAX_JSON_BYTES: usize = 64 << 10;

    /// What ends a `repr` cut at [`ExprValue::MAX_REPR_BYTES`].
    pub const TRUNCATED_MARK: &str = "\u{2026} [repr truncated by agentkernel]";

    /// The value a guest reported, made safe: `repr` as UTF-8 (invalid bytes replaced) and
    /// cut to [`ExprValue::MAX_REPR_BYTES`] (`truncated` is also set when the guest says
    /// it cut it itself); `json` kept only when it is at most
    /// [`ExprValue::MAX_JSON_BYTES`] of valid UTF-8 that parses as JSON. Nothing the guest
    /// sends can make this fail or grow past the caps.
    pub fn from_guest(repr: &[u8], json: Option<&[u8]>, truncated: bool) -> ExprValue {
        let (mut repr, cut) = cap_utf8(repr, Self::MAX_REPR_BYTES);
        let truncated = truncated || cut;
        if truncated {
            repr.push_str(Self::TRUNCATED_MARK);
        }
        let json = json
            .filter(|j| j.len() <= Self::MAX_JSON_BYTES)
            .and_then(|j| serde_json::from_slice(j).ok());
        ExprValue {
            repr,
            json,
            truncated,
        }
    }
}

/// `bytes` as UTF-8 (invalid sequences replaced), cut to at most `max` bytes at a character
/// boundary; whether it was cut.
fn cap_utf8(bytes: &[u8], max: usize) -> (String, bool) {
    // Only the first `max` bytes are looked at, so a huge input costs no more than `max`.
    let cut = bytes.len() > max;
    let mut head = &bytes[..bytes.len().min(max)];
    if cut
        && let Err(e) = std::str::from_utf8(head)
        && e.error_len().is_none()
    {
        // The cut fell inside a character: drop its start.
        head = &head[..e.valid_up_to()];
    }
    let mut text = String::from_utf8_lossy(head).into_owned();
    // Replacement characters (3 bytes) can make the text longer than its bytes were.
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        return (text, true);
    }
    (text, cut)
}

/// Serialises a `Duration` as fractional milliseconds.
mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64() * 1000.0)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let ms = f64::deserialize(d)?;
        Ok(Duration::from_secs_f64(ms.max(0.0) / 1000.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_cli_conventions() {
        assert_eq!(ExecStatus::Ok.exit_code(), 0);
        assert_eq!(ExecStatus::Exited { code: 3 }.exit_code(), 3);
        assert_eq!(
            ExecStatus::Killed {
                limit: LimitKind::WallTime
            }
            .exit_code(),
            124
        );
        assert_eq!(
            ExecStatus::Killed {
                limit: LimitKind::Memory
            }
            .exit_code(),
            137
        );
    }

    #[test]
    fn programs_over_the_size_cap_are_refused_with_the_cap_named() {
        let at_cap = ExecRequest::new("#".repeat(ExecRequest::MAX_CODE_BYTES));
        assert!(at_cap.check_size().is_ok());
        let over = ExecRequest::new("#".repeat(ExecRequest::MAX_CODE_BYTES + 1));
        let err = over.check_size().unwrap_err();
        assert!(matches!(err, Error::InvalidRequest { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("program-size cap of 1 MiB"), "{msg}");
        assert!(msg.contains("1048576 bytes"), "{msg}");
        assert!(err.hint().is_some_and(|h| h.contains("workspace")), "{msg}");
    }

    #[test]
    fn status_serialises_with_a_kind_tag() {
        let s = serde_json::to_value(ExecStatus::Killed {
            limit: LimitKind::WallTime,
        })
        .unwrap();
        assert_eq!(
            s,
            serde_json::json!({"kind": "killed", "limit": "wall_time"})
        );
    }

    #[test]
    fn guest_displays_are_bounded_and_validated_on_the_host() {
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let png = b64(b"\x89PNG\r\n\x1a\nrest");
        let d = DisplayData::from_guest(DisplayData::PNG, &png).unwrap();
        assert_eq!(
            (d.mime.as_str(), d.data.as_str()),
            (DisplayData::PNG, png.as_str())
        );
        // Not a PNG, not base64, not a type we know: dropped.
        assert_eq!(
            DisplayData::from_guest(DisplayData::PNG, &b64(b"GIF89a...")),
            None
        );
        assert_eq!(
            DisplayData::from_guest(DisplayData::PNG, "not base64!"),
            None
        );
        assert_eq!(DisplayData::from_guest("text/html", "<script>"), None);
        // Too large: a text saying so, without decoding it.
        let huge = "A".repeat(DisplayData::MAX_PNG_BYTES / 3 * 4 + 8);
        let d = DisplayData::from_guest(DisplayData::PNG, &huge).unwrap();
        assert_eq!(d.mime, DisplayData::TEXT);
        assert!(d.data.contains("display cap"), "{}", d.data);
        // Text is cut at its cap, on a character boundary.
        let text = "\u{e9}".repeat(DisplayData::MAX_TEXT_BYTES);
        let d = DisplayData::from_guest(DisplayData::TEXT, &text).unwrap();
        assert!(d.data.len() <= DisplayData::MAX_TEXT_BYTES && d.data.len() > 1000);
    }

    #[test]
    fn guest_values_are_bounded_and_validated_on_the_host() {
        // Within the caps: kept as sent.
        let v = ExprValue::from_guest(b"{'a': 1}", Some(br#"{"a": 1}"#), false);
        assert_eq!(v.repr, "{'a': 1}");
        assert_eq!(v.json, Some(serde_json::json!({"a": 1})));
        assert!(!v.truncated);

        // An oversized repr is cut at the cap and marked, whatever the guest claims.
        let huge = "x".repeat(ExprValue::MAX_REPR_BYTES * 4);
        let v = ExprValue::from_guest(huge.as_bytes(), None, false);
        assert!(v.truncated);
        assert!(
            v.repr.ends_with(ExprValue::TRUNCATED_MARK),
            "{}",
            &v.repr[..20]
        );
        assert_eq!(
            v.repr.len(),
            ExprValue::MAX_REPR_BYTES + ExprValue::TRUNCATED_MARK.len()
        );

        // A cut inside a multi-byte character drops the character, never splits it.
        let wide = "é".repeat(ExprValue::MAX_REPR_BYTES); // 2 bytes each
        let mut odd = b"a".to_vec();
        odd.extend_from_slice(wide.as_bytes());
        let v = ExprValue::from_guest(&odd, None, false);
        let kept = v.repr.strip_suffix(ExprValue::TRUNCATED_MARK).unwrap();
        assert_eq!(kept.len(), ExprValue::MAX_REPR_BYTES - 1);
        assert!(!kept.contains('\u{fffd}'));

        // The guest's own cut is marked too.
        let v = ExprValue::from_guest(b"[1, 2", None, true);
        assert_eq!(v.repr, format!("[1, 2{}", ExprValue::TRUNCATED_MARK));

        // Invalid UTF-8 in the repr is replaced, not trusted.
        let v = ExprValue::from_guest(b"ok\xff\xfe", None, false);
        assert_eq!(v.repr, "ok\u{fffd}\u{fffd}");

        // JSON that is invalid, not UTF-8, or over its cap is dropped; the repr stays.
        for bad in [
            &b"{not json"[..],
            &b"\"\xff\""[..],
            &b"[1, 2] trailing"[..],
            &b""[..],
        ] {
            let v = ExprValue::from_guest(b"r", Some(bad), false);
            assert_eq!(v.json, None, "{:?}", String::from_utf8_lossy(bad));
            assert_eq!(v.repr, "r");
        }
        let big = format!("\"{}\"", "y".repeat(ExprValue::MAX_JSON_BYTES));
        assert_eq!(
            ExprValue::from_guest(b"r", Some(big.as_bytes()), false).json,
            None
        );
        // Deeply nested JSON is refused by the parser's depth limit, not a stack overflow.
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert_eq!(
            ExprValue::from_guest(b"r", Some(deep.as_bytes()), false).json,
            None
        );
    }

    #[test]
    fn outcomes_without_a_value_read_and_write_as_before() {
        // An outcome as stored before the field existed.
        let old = serde_json::json!({
            "status": {"kind": "ok"},
            "stdout": {"bytes": "hi\n", "truncated": false, "total_bytes": 3},
            "stderr": {"bytes": "", "truncated": false, "total_bytes": 0},
            "timings": {"acquire": 0.0, "boot": 0.0, "exec": 1.0, "tool_calls": 0.0, "teardown": 0.0},
            "tool_calls": [],
        });
        let outcome: ExecOutcome = serde_json::from_value(old.clone()).unwrap();
        assert_eq!(outcome.value, None);
        let back = serde_json::to_value(&outcome).unwrap();
        assert!(back.get("value").is_none(), "{back}");

        let with = ExecOutcome {
            value: Some(ExprValue::from_guest(b"5", Some(b"5"), false)),
            ..outcome
        };
        let json = serde_json::to_value(&with).unwrap();
        assert_eq!(json["value"], serde_json::json!({"repr": "5", "json": 5}));
        let again: ExecOutcome = serde_json::from_value(json).unwrap();
        assert_eq!(again, with);
    }
}
