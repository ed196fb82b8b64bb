//! Secrets kept out of what genesis writes: the values of an install's
//! `pass_env` variables (a proxy URL with a password, an index token) are
//! replaced by `[redacted NAME]` before a byte of the install's output
//! reaches the log file, the tail in an `environment_failed` error (which
//! is published and stored), or anything else made from them.
//!
//! Two details make this more than a `replace`:
//! - **Overlapping values.** One value may be part of another (`abc` and
//!   `abcdef`); at each position the longest value that matches wins, so
//!   no fragment of the longer one is left behind.
//! - **Streaming.** Output arrives in chunks, and a value may be split
//!   across two of them. The redactor holds back the last `longest - 1`
//!   bytes it has not matched yet and looks at them again with the next
//!   chunk; [`Redactor::finish`] releases them at the end. The log's own
//!   cap cuts only what has already been redacted.

/// Replaces secret values in a byte stream (see the module doc).
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// (value, replacement), longest value first.
    secrets: Vec<(Vec<u8>, Vec<u8>)>,
    /// Bytes not yet emitted because a value may start in them.
    held: Vec<u8>,
}

impl Redactor {
    /// A redactor for `(name, value)` pairs; empty values are ignored.
    pub fn new<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Redactor {
        let mut secrets: Vec<(Vec<u8>, Vec<u8>)> = pairs
            .into_iter()
            .filter(|(_, value)| !value.is_empty())
            .map(|(name, value)| {
                (
                    value.as_bytes().to_vec(),
                    format!("[redacted {name}]").into_bytes(),
                )
            })
            .collect();
        secrets.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        secrets.dedup_by(|a, b| a.0 == b.0);
        Redactor {
            secrets,
            held: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    fn longest(&self) -> usize {
        self.secrets.first().map_or(0, |(v, _)| v.len())
    }

    /// Redacts a whole text at once (an error message, a tail).
    pub fn text(&self, text: &str) -> String {
        if self.is_empty() {
            return text.to_owned();
        }
        let mut out = Vec::with_capacity(text.len());
        let consumed = self.scan(text.as_bytes(), &mut out, true);
        debug_assert_eq!(consumed, text.len());
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Feeds the next chunk of a stream; returns what may be written now.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.is_empty() {
            return chunk.to_vec();
        }
        let mut input = std::mem::take(&mut self.held);
        input.extend_from_slice(chunk);
        let mut out = Vec::with_capacity(input.len());
        let consumed = self.scan(&input, &mut out, false);
        self.held = input[consumed..].to_vec();
        out
    }

    /// The bytes still held back, redacted: the end of the stream.
    pub fn finish(&mut self) -> Vec<u8> {
        let input = std::mem::take(&mut self.held);
        let mut out = Vec::with_capacity(input.len());
        self.scan(&input, &mut out, true);
        out
    }

    /// Copies `input` to `out` with every value replaced, and returns how
    /// many bytes of `input` it used. Unless `last`, it stops where a
    /// value could still begin and end in bytes not seen yet.
    fn scan(&self, input: &[u8], out: &mut Vec<u8>, last: bool) -> usize {
        let safe_end = if last {
            input.len()
        } else {
            input.len().saturating_sub(self.longest() - 1)
        };
        let mut i = 0;
        while i < safe_end {
            let rest = &input[i..];
            match self.secrets.iter().find(|(v, _)| rest.starts_with(v)) {
                Some((value, replacement)) => {
                    out.extend_from_slice(replacement);
                    i += value.len();
                }
                None => {
                    out.push(input[i]);
                    i += 1;
                }
            }
        }
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_value_wins_and_empty_values_are_ignored() {
        let r = Redactor::new([("SHORT", "abc"), ("LONG", "abcdef"), ("EMPTY", "")]);
        assert_eq!(
            r.text("x abcdef y abc z abcde"),
            "x [redacted LONG] y [redacted SHORT] z [redacted SHORT]de"
        );
        assert!(Redactor::new([("EMPTY", "")]).is_empty());
    }

    #[test]
    fn a_value_split_across_chunks_is_still_redacted() {
        let secret = "hunter2-s3cret";
        let text = format!("token={secret}; again {secret}.\n");
        // Every way of cutting the text in two, and one byte at a time.
        for cut in 0..=text.len() {
            let mut r = Redactor::new([("TOKEN", secret)]);
            let mut out = r.push(&text.as_bytes()[..cut]);
            out.extend(r.push(&text.as_bytes()[cut..]));
            out.extend(r.finish());
            let out = String::from_utf8(out).unwrap();
            assert_eq!(
                out, "token=[redacted TOKEN]; again [redacted TOKEN].\n",
                "cut at {cut}"
            );
        }
        let mut r = Redactor::new([("TOKEN", secret)]);
        let mut out = Vec::new();
        for b in text.as_bytes() {
            out.extend(r.push(std::slice::from_ref(b)));
        }
        out.extend(r.finish());
        assert!(!String::from_utf8(out).unwrap().contains(secret));
    }
}
