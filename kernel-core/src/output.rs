//! Capped capture of a program's stdout or stderr.

use serde::{Deserialize, Serialize};

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
    fn push_under_cap_is_not_truncated() {
        let mut out = CapturedOutput::default();
        out.push(b"abc", 3);
        assert_eq!(out.text(), "abc");
        assert!(!out.truncated);
    }
}
