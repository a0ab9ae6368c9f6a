//! One output stream of the guest, read up to a per-exec sentinel.

use crate::exec::{OutputSink, StreamKind};
use crate::output::CapturedOutput;

/// Reads one of the guest's output pipes, exec by exec.
#[derive(Debug)]
pub(crate) struct SentinelStream {
    kind: StreamKind,
    /// Bytes read but not yet attributed (a possible partial sentinel, or output that arrived
    /// after the last exec ended and belongs to the next one).
    pending: Vec<u8>,
    /// The pipe reached end-of-file.
    pub(crate) eof: bool,
}

impl SentinelStream {
    pub(crate) fn new(kind: StreamKind) -> Self {
        SentinelStream {
            kind,
            pending: Vec::new(),
            eof: false,
        }
    }

    /// Adds `chunk`; moves every byte that surely precedes the sentinel into `out` (and
    /// `sink`). Returns true once the sentinel was seen: bytes after it stay pending.
    pub(crate) fn feed(
        &mut self,
        chunk: &[u8],
        sentinel: &[u8],
        out: &mut CapturedOutput,
        cap: usize,
        sink: Option<&OutputSink>,
    ) -> bool {
        self.pending.extend_from_slice(chunk);
        if let Some(pos) = find(&self.pending, sentinel) {
            let rest = self.pending.split_off(pos + sentinel.len());
            self.pending.truncate(pos);
            self.emit_all(out, cap, sink);
            self.pending = rest;
            return true;
        }
        // Hold back only a suffix that is the start of the sentinel (output that could still
        // turn out to be the marker); everything else goes on at once.
        let keep = partial_sentinel(&self.pending, sentinel);
        let cut = self.pending.len() - keep;
        let tail = self.pending.split_off(cut);
        self.emit_all(out, cap, sink);
        self.pending = tail;
        false
    }

    /// Moves every pending byte into `out` (used when the exec ends without a sentinel).
    pub(crate) fn emit_all(
        &mut self,
        out: &mut CapturedOutput,
        cap: usize,
        sink: Option<&OutputSink>,
    ) {
        if self.pending.is_empty() {
            return;
        }
        // Live output is capped as the capture is: never more than `cap` reaches the sink.
        out.push_live(&self.pending, cap, sink, self.kind);
        self.pending.clear();
    }
}

/// The length of the longest suffix of `pending` that is a proper prefix of `sentinel`.
fn partial_sentinel(pending: &[u8], sentinel: &[u8]) -> usize {
    let longest = sentinel.len().saturating_sub(1).min(pending.len());
    (1..=longest)
        .rev()
        .find(|&k| pending.ends_with(&sentinel[..k]))
        .unwrap_or(0)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_split_across_chunks_is_found() {
        let mut s = SentinelStream::new(StreamKind::Stdout);
        let mut out = CapturedOutput::default();
        assert!(!s.feed(b"hello<EN", b"<END>", &mut out, 100, None));
        // Only what could be the start of the marker is held back.
        assert_eq!(out.text(), "hello");
        assert!(s.feed(b"D>later", b"<END>", &mut out, 100, None));
        assert_eq!(out.text(), "hello");
        // "later" belongs to the next exec.
        let mut next = CapturedOutput::default();
        assert!(s.feed(b"<END>", b"<END>", &mut next, 100, None));
        assert_eq!(next.text(), "later");
    }

    /// Output that cannot be the start of the marker is delivered at once, however short.
    #[test]
    fn output_is_not_held_back_unless_it_could_be_the_marker() {
        let mut s = SentinelStream::new(StreamKind::Stdout);
        let mut out = CapturedOutput::default();
        assert!(!s.feed(b"0\n", b"\x1eAK-END-abc\x1e", &mut out, 100, None));
        assert_eq!(out.text(), "0\n");
        assert!(!s.feed(b"1\n\x1eAK", b"\x1eAK-END-abc\x1e", &mut out, 100, None));
        assert_eq!(out.text(), "0\n1\n");
        // Not the marker after all: delivered with what follows.
        assert!(!s.feed(b"X", b"\x1eAK-END-abc\x1e", &mut out, 100, None));
        assert_eq!(out.text(), "0\n1\n\x1eAKX");
    }

    #[test]
    fn output_past_cap_is_counted_not_kept() {
        let mut s = SentinelStream::new(StreamKind::Stderr);
        let mut out = CapturedOutput::default();
        assert!(s.feed(b"0123456789<E>", b"<E>", &mut out, 4, None));
        assert_eq!(out.text(), "0123");
        assert!(out.truncated);
        assert_eq!(out.total_bytes, 10);
    }
}
