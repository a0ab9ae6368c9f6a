//! Capped capture of a program's stdout or stderr, and the cap on what passes through live.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};

use crate::exec::{OutputSink, StreamKind};

/// Bytes a program wrote to one stream, kept up to a cap.
///
/// Output past the cap is counted in [`CapturedOutput::total_bytes`] and dropped, and
/// [`CapturedOutput::truncated`] is set, so a caller always knows whether it saw everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturedOutput {
    /// The first `cap` bytes written.
    #[serde(with = "lossy_utf8")]
    pub bytes: Vec<u8>,
    /// Whether output was dropped because it exceeded the cap.
    pub truncated: bool,
    /// Total bytes the program wrote, kept or not.
    pub total_bytes: u64,
}

impl CapturedOutput {
    /// Appends `chunk`, keeping at most `cap` bytes in total.
    pub fn push(&mut self, chunk: &[u8], cap: usize) {
        self.total_bytes += chunk.len() as u64;
        let room = cap.saturating_sub(self.bytes.len());
        if chunk.len() > room {
            self.truncated = true;
        }
        self.bytes
            .extend_from_slice(&chunk[..chunk.len().min(room)]);
    }

    /// [`CapturedOutput::push`], also passing the kept bytes to `sink` (the live stream):
    /// what passes through live is exactly what is captured, never more than `cap` bytes.
    pub fn push_live(
        &mut self,
        chunk: &[u8],
        cap: usize,
        sink: Option<&OutputSink>,
        kind: StreamKind,
    ) {
        let room = cap.saturating_sub(self.bytes.len());
        let kept = &chunk[..chunk.len().min(room)];
        if let Some(sink) = sink
            && !kept.is_empty()
        {
            sink(kind, kept);
        }
        self.push(chunk, cap);
    }

    /// `sink` passing through at most `cap` bytes per stream (what the run's capture keeps);
    /// the rest is dropped. For callers that pass a run's output on (the CLI), whatever the
    /// backend: the caller never receives more than the output limit.
    pub fn capped_sink(sink: OutputSink, cap: usize) -> OutputSink {
        let passed = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        Arc::new(move |kind, bytes: &[u8]| {
            let counter = &passed[match kind {
                StreamKind::Stdout => 0,
                StreamKind::Stderr => 1,
            }];
            let before = counter.fetch_add(bytes.len(), Ordering::SeqCst);
            let room = cap.saturating_sub(before);
            if room > 0 {
                sink(kind, &bytes[..bytes.len().min(room)]);
            }
        })
    }

    /// The captured bytes as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Serialises output as a string (lossy UTF-8), which is what JSON consumers want.
mod lossy_utf8 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(String::deserialize(d)?.into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_keeps_cap_and_counts_everything() {
        let mut out = CapturedOutput::default();
        out.push(b"hello ", 8);
        out.push(b"world", 8);
        assert_eq!(out.bytes, b"hello wo");
        assert!(out.truncated);
        assert_eq!(out.total_bytes, 11);
    }

    #[test]
    fn live_output_stops_at_the_cap() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let into = seen.clone();
        let sink: OutputSink =
            Arc::new(move |_, b: &[u8]| into.lock().unwrap().extend_from_slice(b));
        let mut out = CapturedOutput::default();
        for _ in 0..3 {
            out.push_live(b"12345", 8, Some(&sink), StreamKind::Stdout);
        }
        assert_eq!(*seen.lock().unwrap(), b"12345123");
        assert_eq!(out.total_bytes, 15);
        let capped = CapturedOutput::capped_sink(sink, 10);
        for _ in 0..4 {
            capped(StreamKind::Stderr, b"abcd");
        }
        assert_eq!(*seen.lock().unwrap(), b"12345123abcdabcdab");
    }

    #[test]
    fn push_under_cap_is_not_truncated() {
        let mut out = CapturedOutput::default();
        out.push(b"abc", 3);
        assert_eq!(out.text(), "abc");
        assert!(!out.truncated);
    }
}
