//! Connect-RPC for envd's services, as the official E2B Python SDK speaks it: the envelope
//! framing of streaming calls, Connect errors, and the proto3-JSON messages of
//! `process.Process` and `filesystem.Filesystem` (docs/e2b-protocol.md §5 and §6).
//!
//! The SDK uses the Connect protocol with the **JSON** codec and no compression:
//! unary calls are `POST /<service>/<Method>` with `content-type: application/json` and one
//! JSON message as the body, answered the same way; server-streaming calls
//! (`process.Process/Start`) send `content-type: application/connect+json` and a body of one
//! *envelope* (a flags byte, a big-endian `u32` length, the JSON), and are answered with
//! `content-type: application/connect+json` exactly (no parameters: the SDK's check does not
//! strip them) and a sequence of envelopes ending in one with [`FLAG_END_STREAM`] whose JSON
//! is `{}` or `{"error": {"code", "message"}}`.
//!
//! Messages follow the proto3 JSON mapping: lowerCamel field names, `bytes` as standard
//! base64, `int64` written as a string, enums as their value names, unset fields omitted.
//! Requests are parsed leniently (unknown fields ignored, as the SDK's own decoder does), so a
//! newer SDK adding a field still parses; fields we must refuse (`pty`) are kept so the
//! handler can see them.
//!
//! Pure functions and types only: no server, no I/O. The handlers live with the server.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The content type of a Connect server stream with the JSON codec (request and response).
pub const CONTENT_TYPE_STREAM_JSON: &str = "application/connect+json";
/// The content type of a Connect unary call with the JSON codec, and of every Connect error.
pub const CONTENT_TYPE_UNARY_JSON: &str = "application/json";
/// Envelope flag: the message is compressed. The SDK never compresses; we refuse it.
pub const FLAG_COMPRESSED: u8 = 0x01;
/// Envelope flag: the end-of-stream message (JSON `{"error"?, "metadata"?}`), always last.
pub const FLAG_END_STREAM: u8 = 0x02;
/// Length of an envelope's header: one flags byte and a big-endian `u32` length.
pub const ENVELOPE_HEADER_LEN: usize = 5;

/// One envelope of a Connect stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// [`FLAG_COMPRESSED`] and [`FLAG_END_STREAM`] bits.
    pub flags: u8,
    /// The message bytes (JSON for this codec).
    pub payload: Vec<u8>,
}

impl Frame {
    /// Whether this is the end-of-stream envelope.
    pub fn is_end_stream(&self) -> bool {
        self.flags & FLAG_END_STREAM != 0
    }
}

/// Why a Connect stream body could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// An envelope announced more than the allowed message size.
    TooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An envelope had the compressed flag: compression was not negotiated.
    Compressed,
    /// The body ended inside an envelope.
    Truncated,
    /// A server-streaming request body held no message, or more than one.
    NotOneMessage(usize),
    /// The message was not the expected JSON.
    Json(String),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge { len, max } => {
                write!(
                    f,
                    "Connect message of {len} bytes exceeds the limit of {max} bytes"
                )
            }
            FrameError::Compressed => write!(
                f,
                "compressed Connect messages are not supported (send connect-content-encoding: identity)"
            ),
            FrameError::Truncated => write!(f, "the Connect stream ended inside a message"),
            FrameError::NotOneMessage(n) => {
                write!(
                    f,
                    "expected exactly one Connect message in the request, got {n}"
                )
            }
            FrameError::Json(e) => write!(f, "invalid Connect JSON message: {e}"),
        }
    }
}

impl std::error::Error for FrameError {}

impl FrameError {
    /// The Connect error to answer with.
    pub fn to_connect_error(&self) -> ConnectError {
        let code = match self {
            FrameError::TooLarge { .. } => Code::ResourceExhausted,
            FrameError::Compressed => Code::Unimplemented,
            _ => Code::InvalidArgument,
        };
        ConnectError::new(code, self.to_string())
    }
}

/// One envelope: `flags`, the payload's length as a big-endian `u32`, the payload.
///
/// # Panics
/// If `payload` is 4 GiB or more (cannot be framed; callers cap messages far below that).
pub fn encode_frame(flags: u8, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("Connect message under 4 GiB");
    let mut out = Vec::with_capacity(ENVELOPE_HEADER_LEN + payload.len());
    out.push(flags);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A message envelope (flags 0) holding `msg` as JSON.
pub fn encode_message<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serialising our own message types cannot fail (no maps with non-string keys).
    let json = serde_json::to_vec(msg).unwrap_or_else(|_| b"{}".to_vec());
    encode_frame(0, &json)
}

/// The end-of-stream envelope: `{}` on success, `{"error": {...}}` on failure.
pub fn encode_end_stream(error: Option<&ConnectError>) -> Vec<u8> {
    let json = match error {
        None => b"{}".to_vec(),
        Some(e) => serde_json::to_vec(&serde_json::json!({ "error": e }))
            .unwrap_or_else(|_| b"{}".to_vec()),
    };
    encode_frame(FLAG_END_STREAM, &json)
}

/// An incremental envelope reader: feed it body chunks as they arrive, take frames out.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max_message: usize,
}

impl FrameDecoder {
    /// A reader refusing messages longer than `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            max_message,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `None` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < ENVELOPE_HEADER_LEN {
            return Ok(None);
        }
        let flags = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > self.max_message {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_message,
            });
        }
        if flags & FLAG_COMPRESSED != 0 {
            return Err(FrameError::Compressed);
        }
        if self.buf.len() < ENVELOPE_HEADER_LEN + len {
            return Ok(None);
        }
        let payload = self.buf[ENVELOPE_HEADER_LEN..ENVELOPE_HEADER_LEN + len].to_vec();
        self.buf.drain(..ENVELOPE_HEADER_LEN + len);
        Ok(Some(Frame { flags, payload }))
    }

    /// Call at the end of the body: an error if bytes of an unfinished frame remain.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated)
        }
    }
}

/// The single message of a server-streaming request body (`process.Process/Start`), parsed.
pub fn decode_stream_request<T: for<'de> Deserialize<'de>>(
    body: &[u8],
    max_message: usize,
) -> Result<T, FrameError> {
    let mut dec = FrameDecoder::new(max_message);
    dec.push(body);
    let mut messages = Vec::new();
    while let Some(frame) = dec.next_frame()? {
        messages.push(frame);
    }
    dec.finish()?;
    match messages.as_slice() {
        [only] if !only.is_end_stream() => {
            serde_json::from_slice(&only.payload).map_err(|e| FrameError::Json(e.to_string()))
        }
        _ => Err(FrameError::NotOneMessage(messages.len())),
    }
}

/// Connect error codes (the subset we answer with), written as lower snake case strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// The call was cancelled (the client went away).
    Canceled,
    /// Unknown failure.
    Unknown,
    /// Bad request: a path outside the workspace, a malformed message.
    InvalidArgument,
    /// The deadline (`connect-timeout-ms`) passed.
    DeadlineExceeded,
    /// The file or process does not exist.
    NotFound,
    /// The directory already exists (`MakeDir`).
    AlreadyExists,
    /// Not allowed.
    PermissionDenied,
    /// A cap was hit (sizes, live processes).
    ResourceExhausted,
    /// Not supported by agentkernel (pty, watch_dir, stdin, …).
    Unimplemented,
    /// A failure of ours.
    Internal,
    /// The sandbox is gone or unreachable.
    Unavailable,
    /// Bad or missing access token.
    Unauthenticated,
}

impl Code {
    /// The HTTP status of a unary error response with this code (Connect's mapping).
    pub fn http_status(self) -> u16 {
        match self {
            Code::Canceled => 499,
            Code::Unknown | Code::Internal => 500,
            Code::InvalidArgument => 400,
            Code::DeadlineExceeded => 504,
            Code::NotFound => 404,
            Code::AlreadyExists => 409,
            Code::PermissionDenied => 403,
            Code::ResourceExhausted => 429,
            Code::Unimplemented => 501,
            Code::Unavailable => 503,
            Code::Unauthenticated => 401,
        }
    }
}

/// A Connect error: the body of a unary error response (`content-type: application/json`,
/// status [`Code::http_status`]) and the `error` of an end-of-stream message. The SDK shows
/// `message` to the user (see docs/e2b-protocol.md §8), so it should say what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectError {
    /// The code.
    pub code: Code,
    /// A readable sentence with a hint.
    pub message: String,
}

impl ConnectError {
    /// An error with `code` and `message`.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ConnectError {
            code,
            message: message.into(),
        }
    }
}

// ---------------------------------------------------------------- proto3 JSON helpers

/// `bytes` fields: standard base64 with padding; parsing also takes URL-safe or unpadded
/// forms, as proto3 JSON parsers must.
mod b64 {
    use super::*;

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        let trimmed = text.trim_end_matches('=');
        let normalised: String = trimmed
            .chars()
            .map(|c| match c {
                '-' => '+',
                '_' => '/',
                c => c,
            })
            .collect();
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(normalised)
            .map_err(serde::de::Error::custom)
    }
}

/// `int64` fields: written as a JSON string, as proto3 JSON does.
fn int64_as_string<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.to_string())
}

/// `uint32` request fields: a number, or a string as proto3 JSON also allows.
fn u32_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        N(u32),
        S(String),
    }
    match Either::deserialize(d)? {
        Either::N(n) => Ok(n),
        Either::S(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

/// A proto3 `google.protobuf.Timestamp` in JSON: RFC 3339 in UTC, `Z`, with nanoseconds
/// only when non-zero (`2026-12-07T22:20:41Z`, `…41.5Z`).
pub fn rfc3339_utc(unix_secs: i64, nanos: u32) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs_of_day = unix_secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (
        secs_of_day / 3600,
        secs_of_day % 3600 / 60,
        secs_of_day % 60,
    );
    let frac = if nanos == 0 {
        String::new()
    } else {
        format!(".{:09}", nanos).trim_end_matches('0').to_string()
    };
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}{frac}Z")
}

// ---------------------------------------------------------------- process.Process

/// `process.ProcessConfig`: what to run. `commands.run(cmd)` sends
/// `{"cmd": "/bin/bash", "args": ["-l", "-c", cmd]}` plus `envs` and `cwd` when given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessConfig {
    /// The program.
    pub cmd: String,
    /// Its arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Extra environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub envs: BTreeMap<String, String>,
    /// Working directory; E2B's default is the user's home, `/home/user`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

/// `process.PTY`: present only for `sandbox.pty.create`, which we refuse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pty {
    /// Terminal size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<PtySize>,
}

/// `process.PTY.Size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtySize {
    /// Columns.
    #[serde(default)]
    pub cols: u32,
    /// Rows.
    #[serde(default)]
    pub rows: u32,
}

/// `process.StartRequest`, the one message of a `Process/Start` stream request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartRequest {
    /// What to run.
    pub process: ProcessConfig,
    /// Set by the PTY API: refuse with [`Code::Unimplemented`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<Pty>,
    /// A tag to select the process by later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Whether stdin stays open for `send_stdin`; the SDK sends `false` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<bool>,
}

/// `process.ProcessEvent`: one event of a process stream, in the oneof's JSON form
/// (`{"start": {...}}`, `{"data": {...}}`, `{"end": {...}}`, `{"keepalive": {}}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessEvent {
    /// First event, always: the process started with this pid.
    Start {
        /// Its pid (any number unique among the sandbox's live processes).
        pid: u32,
    },
    /// A chunk of output.
    Data(DataEvent),
    /// The process ended.
    End(EndEvent),
    /// Sent periodically on long runs (the SDK asks for one every
    /// `keepalive-ping-interval` = 50 s) so intermediaries keep the stream open.
    Keepalive {},
}

/// `process.ProcessEvent.DataEvent`: output bytes (base64 in JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataEvent {
    /// Standard output bytes.
    Stdout(#[serde(with = "b64")] Vec<u8>),
    /// Standard error bytes.
    Stderr(#[serde(with = "b64")] Vec<u8>),
    /// Terminal output (PTY only; unused).
    Pty(#[serde(with = "b64")] Vec<u8>),
}

/// `process.ProcessEvent.EndEvent`. A non-zero `exit_code` makes the SDK raise
/// `CommandExitException`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndEvent {
    /// The exit code (proto `sint32`; 128 + signal for a killed process, as a shell reports).
    #[serde(default)]
    pub exit_code: i32,
    /// Whether the process exited by itself (false when killed by a signal).
    #[serde(default)]
    pub exited: bool,
    /// A human-readable status, e.g. `exit status 3` or `signal: killed`.
    #[serde(default)]
    pub status: String,
    /// An error message (becomes `CommandResult.error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `process.StartResponse` / `process.ConnectResponse`: one message of the stream answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartResponse {
    /// The event.
    pub event: ProcessEvent,
}

impl StartResponse {
    /// The enveloped message for `event`.
    pub fn frame(event: ProcessEvent) -> Vec<u8> {
        encode_message(&StartResponse { event })
    }
}

/// `process.ProcessSelector`: which process (oneof `pid` | `tag`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessSelector {
    /// By pid.
    Pid(u32),
    /// By tag.
    Tag(String),
}

/// `process.Signal`; JSON carries the value name (`"SIGNAL_SIGKILL"`) or the number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// 0.
    Unspecified,
    /// 15.
    Sigterm,
    /// 9.
    Sigkill,
}

impl Serialize for Signal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            Signal::Unspecified => "SIGNAL_UNSPECIFIED",
            Signal::Sigterm => "SIGNAL_SIGTERM",
            Signal::Sigkill => "SIGNAL_SIGKILL",
        })
    }
}

impl<'de> Deserialize<'de> for Signal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            N(i64),
            S(String),
        }
        match Either::deserialize(d)? {
            Either::N(0) => Ok(Signal::Unspecified),
            Either::N(15) => Ok(Signal::Sigterm),
            Either::N(9) => Ok(Signal::Sigkill),
            Either::S(s) if s == "SIGNAL_UNSPECIFIED" => Ok(Signal::Unspecified),
            Either::S(s) if s == "SIGNAL_SIGTERM" => Ok(Signal::Sigterm),
            Either::S(s) if s == "SIGNAL_SIGKILL" => Ok(Signal::Sigkill),
            _ => Err(serde::de::Error::custom("unknown process.Signal")),
        }
    }
}

/// `process.SendSignalRequest` (unary `Process/SendSignal`; `CommandHandle.kill()` sends
/// `SIGNAL_SIGKILL`). Answer `{}`, or [`Code::NotFound`] when no such process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendSignalRequest {
    /// Which process.
    pub process: ProcessSelector,
    /// Which signal.
    #[serde(default = "unspecified")]
    pub signal: Signal,
}

fn unspecified() -> Signal {
    Signal::Unspecified
}

// ---------------------------------------------------------------- filesystem.Filesystem

/// `filesystem.StatRequest`, `RemoveRequest`, `MakeDirRequest`: one path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathRequest {
    /// The path as the user wrote it (normally absolute, under `/home/user`).
    #[serde(default)]
    pub path: String,
}

/// `filesystem.ListDirRequest`. The SDK sends `depth: 1` by default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListDirRequest {
    /// The directory.
    #[serde(default)]
    pub path: String,
    /// How many levels to list (0 is treated as 1).
    #[serde(default, deserialize_with = "u32_lenient")]
    pub depth: u32,
}

/// `filesystem.MoveRequest` (`files.rename`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveRequest {
    /// From.
    #[serde(default)]
    pub source: String,
    /// To.
    #[serde(default)]
    pub destination: String,
}

/// `filesystem.FileType`, written as its value name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileType {
    /// Unknown: `files.list` drops such entries.
    #[serde(rename = "FILE_TYPE_UNSPECIFIED")]
    Unspecified,
    /// A regular file.
    #[serde(rename = "FILE_TYPE_FILE")]
    File,
    /// A directory.
    #[serde(rename = "FILE_TYPE_DIRECTORY")]
    Directory,
    /// A symlink (older envd; newer ones set `is_symlink` and the target's type).
    #[serde(rename = "FILE_TYPE_SYMLINK")]
    Symlink,
}

/// `filesystem.EntryInfo` as the SDK 2.63.0 descriptor has it (fields 1–12).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryInfo {
    /// Base name.
    pub name: String,
    /// Kind.
    #[serde(rename = "type")]
    pub file_type: FileType,
    /// Path as the user sees it (`/home/user/...`), not the host path.
    pub path: String,
    /// Size in bytes (`int64`: a JSON string).
    #[serde(serialize_with = "int64_as_string")]
    pub size: i64,
    /// Permission bits (`st_mode & 0o777`).
    pub mode: u32,
    /// `ls -l` style, e.g. `-rw-r--r--`.
    pub permissions: String,
    /// Owner name (E2B: `user`).
    pub owner: String,
    /// Group name.
    pub group: String,
    /// Modification time, [`rfc3339_utc`].
    pub modified_time: String,
    /// Target of a symlink.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
    /// User metadata (xattrs); empty for us.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Whether the entry itself is a symlink.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub is_symlink: bool,
}

/// `filesystem.StatResponse`, `MakeDirResponse`, `MoveResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntryResponse {
    /// The entry.
    pub entry: EntryInfo,
}

/// `filesystem.ListDirResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListDirResponse {
    /// The entries, without the directory itself.
    pub entries: Vec<EntryInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    #[test]
    fn frame_roundtrip_byte_by_byte() {
        let mut stream = StartResponse::frame(ProcessEvent::Start { pid: 7 });
        stream.extend(StartResponse::frame(ProcessEvent::Data(DataEvent::Stdout(
            b"hi\n".to_vec(),
        ))));
        stream.extend(encode_end_stream(None));
        let mut dec = FrameDecoder::new(MAX);
        let mut frames = Vec::new();
        for b in &stream {
            dec.push(std::slice::from_ref(b));
            while let Some(f) = dec.next_frame().expect("valid stream") {
                frames.push(f);
            }
        }
        dec.finish().expect("no trailing bytes");
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].payload, br#"{"event":{"start":{"pid":7}}}"#);
        assert_eq!(
            frames[1].payload,
            br#"{"event":{"data":{"stdout":"aGkK"}}}"#
        );
        assert!(!frames[1].is_end_stream());
        assert!(frames[2].is_end_stream());
        assert_eq!(frames[2].payload, b"{}");
    }

    #[test]
    fn header_is_flags_then_big_endian_length() {
        let f = encode_frame(FLAG_END_STREAM, &[b'x'; 258]);
        assert_eq!(&f[..5], &[0x02, 0, 0, 1, 2]);
        assert_eq!(f.len(), 5 + 258);
    }

    #[test]
    fn decodes_the_request_the_sdk_sent() {
        // Captured from e2b 2.63.0 `commands.run("echo hi")`: one envelope, flags 0, 0x4a bytes.
        let json = br#"{"process":{"cmd":"/bin/bash","args":["-l","-c","echo hi"]},"stdin":false}"#;
        let mut body = vec![0, 0, 0, 0, 0x4a];
        body.extend_from_slice(json);
        let req: StartRequest = decode_stream_request(&body, MAX).expect("parses");
        assert_eq!(req.process.cmd, "/bin/bash");
        assert_eq!(req.process.args, ["-l", "-c", "echo hi"]);
        assert_eq!(req.process.cwd, None);
        assert_eq!(req.stdin, Some(false));
        assert!(req.pty.is_none());
    }

    #[test]
    fn pty_and_unknown_fields() {
        let json = br#"{"process":{"cmd":"/bin/bash","envs":{"A":"1"},"cwd":"/home/user"},"pty":{"size":{"cols":80,"rows":24}},"newField":1}"#;
        let req: StartRequest =
            decode_stream_request(&encode_frame(0, json), MAX).expect("lenient parse");
        assert_eq!(
            req.pty,
            Some(Pty {
                size: Some(PtySize { cols: 80, rows: 24 })
            })
        );
        assert_eq!(req.process.envs.get("A").map(String::as_str), Some("1"));
        assert_eq!(req.process.cwd.as_deref(), Some("/home/user"));
    }

    #[test]
    fn stream_request_errors() {
        assert_eq!(
            decode_stream_request::<StartRequest>(b"", MAX),
            Err(FrameError::NotOneMessage(0))
        );
        let two = [encode_frame(0, b"{}"), encode_frame(0, b"{}")].concat();
        assert_eq!(
            decode_stream_request::<PathRequest>(&two, MAX),
            Err(FrameError::NotOneMessage(2))
        );
        assert_eq!(
            decode_stream_request::<PathRequest>(&[0, 0, 0, 0, 9, b'{'], MAX),
            Err(FrameError::Truncated)
        );
        assert_eq!(
            decode_stream_request::<PathRequest>(&encode_frame(FLAG_COMPRESSED, b"{}"), MAX),
            Err(FrameError::Compressed)
        );
        assert_eq!(
            decode_stream_request::<PathRequest>(&encode_frame(0, &[b' '; 100]), 10),
            Err(FrameError::TooLarge { len: 100, max: 10 })
        );
        assert!(matches!(
            decode_stream_request::<StartRequest>(&encode_frame(0, b"{\"process\":1}"), MAX),
            Err(FrameError::Json(_))
        ));
        let err = FrameError::TooLarge { len: 100, max: 10 }.to_connect_error();
        assert_eq!(err.code, Code::ResourceExhausted);
        assert_eq!(err.code.http_status(), 429);
    }

    #[test]
    fn end_stream_with_error() {
        let f = encode_end_stream(Some(&ConnectError::new(
            Code::Unimplemented,
            "PTY is not supported by agentkernel",
        )));
        assert_eq!(f[0], FLAG_END_STREAM);
        assert_eq!(
            &f[5..],
            br#"{"error":{"code":"unimplemented","message":"PTY is not supported by agentkernel"}}"#
        );
        let unary = serde_json::to_string(&ConnectError::new(Code::NotFound, "no such file"))
            .expect("serialises");
        assert_eq!(unary, r#"{"code":"not_found","message":"no such file"}"#);
        assert_eq!(Code::NotFound.http_status(), 404);
    }

    #[test]
    fn process_events_in_proto3_json() {
        let end = |code, status: &str| {
            serde_json::to_string(&StartResponse {
                event: ProcessEvent::End(EndEvent {
                    exit_code: code,
                    exited: true,
                    status: status.into(),
                    error: None,
                }),
            })
            .expect("serialises")
        };
        assert_eq!(
            end(3, "exit status 3"),
            r#"{"event":{"end":{"exitCode":3,"exited":true,"status":"exit status 3"}}}"#
        );
        let ka = serde_json::to_string(&StartResponse {
            event: ProcessEvent::Keepalive {},
        })
        .expect("serialises");
        assert_eq!(ka, r#"{"event":{"keepalive":{}}}"#);
        let err = serde_json::to_string(&StartResponse {
            event: ProcessEvent::Data(DataEvent::Stderr(b"oops\n".to_vec())),
        })
        .expect("serialises");
        assert_eq!(err, r#"{"event":{"data":{"stderr":"b29wcwo="}}}"#);
        // What protobuf-py emits for exit 0 (defaults omitted) parses back to 0.
        let parsed: StartResponse =
            serde_json::from_str(r#"{"event":{"end":{"exited":true,"status":"exit status 0"}}}"#)
                .expect("parses");
        assert!(matches!(
            parsed.event,
            ProcessEvent::End(EndEvent { exit_code: 0, .. })
        ));
        let back: StartResponse =
            serde_json::from_str(r#"{"event":{"data":{"stdout":"aGkK"}}}"#).expect("parses");
        assert_eq!(
            back.event,
            ProcessEvent::Data(DataEvent::Stdout(b"hi\n".to_vec()))
        );
    }

    #[test]
    fn send_signal_as_the_sdk_sends_it() {
        let req: SendSignalRequest =
            serde_json::from_str(r#"{"process":{"pid":5},"signal":"SIGNAL_SIGKILL"}"#)
                .expect("parses");
        assert_eq!(req.process, ProcessSelector::Pid(5));
        assert_eq!(req.signal, Signal::Sigkill);
        let by_number: SendSignalRequest =
            serde_json::from_str(r#"{"process":{"tag":"t"},"signal":15}"#).expect("parses");
        assert_eq!(by_number.signal, Signal::Sigterm);
        assert!(
            serde_json::from_str::<SendSignalRequest>(r#"{"process":{"pid":5},"signal":"SIGHUP"}"#)
                .is_err()
        );
    }

    #[test]
    fn filesystem_messages() {
        let list: ListDirRequest =
            serde_json::from_str(r#"{"path":"/home/user/d","depth":1}"#).expect("parses");
        assert_eq!((list.path.as_str(), list.depth), ("/home/user/d", 1));
        let lenient: ListDirRequest =
            serde_json::from_str(r#"{"path":"/x","depth":"2"}"#).expect("parses");
        assert_eq!(lenient.depth, 2);
        let entry = EntryInfo {
            name: "hello.txt".into(),
            file_type: FileType::File,
            path: "/home/user/d/hello.txt".into(),
            size: 9,
            mode: 0o644,
            permissions: "-rw-r--r--".into(),
            owner: "user".into(),
            group: "user".into(),
            modified_time: rfc3339_utc(1_796_681_241, 0),
            symlink_target: None,
            metadata: BTreeMap::new(),
            is_symlink: false,
        };
        let json = serde_json::to_string(&ListDirResponse {
            entries: vec![entry],
        })
        .expect("serialises");
        assert_eq!(
            json,
            r#"{"entries":[{"name":"hello.txt","type":"FILE_TYPE_FILE","path":"/home/user/d/hello.txt","size":"9","mode":420,"permissions":"-rw-r--r--","owner":"user","group":"user","modifiedTime":"2026-12-07T22:07:21Z"}]}"#
        );
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339_utc(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339_utc(951_782_400, 500_000_000),
            "2000-02-29T00:00:00.5Z"
        );
        assert_eq!(rfc3339_utc(-1, 0), "1969-12-31T23:59:59Z");
        assert_eq!(
            rfc3339_utc(4_107_542_399, 123),
            "2100-02-28T23:59:59.000000123Z"
        );
    }
}
