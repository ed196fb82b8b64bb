//! The suite's output kept within a byte budget, and the pump that feeds it.

use crate::errors::{GenesisError, Result};
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use futures_util::StreamExt;
use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Test output kept within a byte budget: the first half of the budget as it
/// arrives, the last half in a ring of chunks, and a line saying how much was cut.
/// Chunks are kept whole (cheap to push and pop); the oldest one is trimmed
/// when the tail is written out.
pub struct CappedLog {
    file: std::fs::File,
    path: PathBuf,
    head_cap: usize,
    head_written: usize,
    tail: VecDeque<bytes::Bytes>,
    tail_len: usize,
    tail_cap: usize,
    total: u64,
    /// Secret values replaced before anything is kept (an install's
    /// `pass_env`); counted bytes are what was kept, after redaction.
    redactor: Option<super::Redactor>,
}

/// What was kept of a run's output.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LogSummary {
    pub path: PathBuf,
    pub total_bytes: u64,
    pub cut_bytes: u64,
    /// The kept text (head, cut marker, tail), for report parsing.
    pub text: String,
}

impl CappedLog {
    pub fn create(path: &Path, cap: u64) -> Result<CappedLog> {
        let file = std::fs::File::create(path)
            .map_err(|e| GenesisError::io(format!("creating {}", path.display()), e))?;
        let half = usize::try_from(cap / 2).unwrap_or(usize::MAX / 4);
        Ok(CappedLog {
            file,
            path: path.to_path_buf(),
            head_cap: half,
            head_written: 0,
            tail: VecDeque::new(),
            tail_len: 0,
            tail_cap: half,
            total: 0,
            redactor: None,
        })
    }

    /// Replaces the redactor's values in everything written from now on.
    pub fn redacting(mut self, redactor: super::Redactor) -> CappedLog {
        self.redactor = (!redactor.is_empty()).then_some(redactor);
        self
    }

    pub fn write(&mut self, bytes: bytes::Bytes) -> Result<()> {
        match self.redactor.as_mut() {
            Some(redactor) => {
                let clean = redactor.push(&bytes);
                self.keep(clean.into())
            }
            None => self.keep(bytes),
        }
    }

    fn keep(&mut self, bytes: bytes::Bytes) -> Result<()> {
        self.total += bytes.len() as u64;
        let room = self.head_cap - self.head_written;
        let n = room.min(bytes.len());
        if n > 0 {
            self.file
                .write_all(&bytes[..n])
                .map_err(|e| GenesisError::io("writing the test log", e))?;
            self.head_written += n;
        }
        let rest = bytes.slice(n..);
        if rest.is_empty() {
            return Ok(());
        }
        self.tail_len += rest.len();
        self.tail.push_back(rest);
        // Drop whole chunks the tail no longer needs.
        while self
            .tail
            .front()
            .is_some_and(|f| self.tail_len - f.len() >= self.tail_cap)
        {
            let dropped = self.tail.pop_front().map_or(0, |f| f.len());
            self.tail_len -= dropped;
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<LogSummary> {
        if let Some(rest) = self.redactor.as_mut().map(super::Redactor::finish) {
            self.keep(rest.into())?;
        }
        let excess = self.tail_len.saturating_sub(self.tail_cap);
        let kept = self.head_written as u64 + (self.tail_len - excess) as u64;
        let cut = self.total - kept;
        let io = |e| GenesisError::io("writing the test log", e);
        if cut > 0 {
            let marker = format!(
                "\n[genesis: {cut} bytes of output cut here; first and last {} bytes kept]\n",
                self.head_cap
            );
            self.file.write_all(marker.as_bytes()).map_err(io)?;
        }
        let mut skip = excess;
        for chunk in &self.tail {
            let from = skip.min(chunk.len());
            skip -= from;
            self.file.write_all(&chunk[from..]).map_err(io)?;
        }
        self.file.flush().map_err(io)?;
        let raw = std::fs::read(&self.path)
            .map_err(|e| GenesisError::io("reading back the test log", e))?;
        Ok(LogSummary {
            path: self.path,
            total_bytes: self.total,
            cut_bytes: cut,
            text: String::from_utf8_lossy(&raw).into_owned(),
        })
    }
}

pub(super) async fn pump_output(
    mut output: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = std::result::Result<LogOutput, DockerError>> + Send>,
    >,
    mut log: CappedLog,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<LogSummary> {
    let mut lines = LineJoiner::default();
    loop {
        let item = tokio::select! {
            item = output.next() => item,
            // The container is gone but the engine keeps the stream open
            // (seen with runsc after its sandbox died): what we have is the log.
            _ = &mut stop => None,
        };
        let Some(item) = item else { break };
        match item {
            Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                lines.push(0, &message, |whole| log.write(whole.to_vec().into()))?
            }
            Ok(LogOutput::StdErr { message }) => {
                lines.push(1, &message, |whole| log.write(whole.to_vec().into()))?
            }
            Ok(LogOutput::StdIn { .. }) => {}
            // The stream breaks when the container is killed; what we have is the log.
            Err(_) => break,
        }
    }
    lines.finish(|rest| log.write(rest.to_vec().into()))?;
    log.finish()
}

/// Interleaves stdout and stderr by whole lines. The engine delivers each
/// stream in chunks that may end mid-line; written as they come, a stderr
/// chunk could land inside a stdout line (`test a ... ok` cut by cargo's
/// `Running TARGET`) and a report parser would lose that test.
#[derive(Default)]
pub(super) struct LineJoiner {
    /// The unfinished last line of each stream.
    partial: [Vec<u8>; 2],
}

/// A line longer than this is written unfinished, so a stream that never
/// prints a newline cannot hold memory.
const LONGEST_LINE: usize = 64 * 1024;

impl LineJoiner {
    /// Adds a chunk of stream `which`; complete lines go to `write`.
    pub(super) fn push(
        &mut self,
        which: usize,
        chunk: &[u8],
        mut write: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let partial = &mut self.partial[which];
        partial.extend_from_slice(chunk);
        let cut = match partial.iter().rposition(|b| *b == b'\n') {
            Some(i) => i + 1,
            None if partial.len() > LONGEST_LINE => partial.len(),
            None => return Ok(()),
        };
        let rest = partial.split_off(cut);
        let whole = std::mem::replace(partial, rest);
        write(&whole)
    }

    /// Writes what is left of both streams.
    pub(super) fn finish(mut self, mut write: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        for partial in &mut self.partial {
            if !partial.is_empty() {
                write(partial)?;
            }
        }
        Ok(())
    }
}

/// The last `n` bytes of a text, cut at a character boundary.
pub fn tail(text: &str, n: usize) -> &str {
    let mut start = text.len().saturating_sub(n);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}
