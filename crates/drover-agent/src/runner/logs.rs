//! A task's output on its way out: its byte streams cut into lines, long lines into marked
//! fragments, and lines gathered into `TaskLogs` batches.
//!
//! **Output.** Each line of stdout and stderr becomes a [`LogLine`] (lossily decoded as UTF-8,
//! without its line ending). A line longer than [`MAX_LINE_BYTES`] is cut into fragments of at
//! most that many bytes each, cut on a UTF-8 character boundary: every fragment but the last
//! ends with [`SPLIT_END_MARKER`] (`…[continued]`) and every fragment but the first starts with
//! [`SPLIT_START_MARKER`] (`[continued]…`), so a reader sees where a line was split and can
//! join the pieces by dropping the markers. Lines are sent in `TaskLogs` batches of at most
//! [`LOG_BATCH_LINES`] lines and [`LOG_BATCH_BYTES`] bytes of line text, so that a batch
//! encodes well below `drover_api::agent::MAX_MESSAGE_BYTES` even when every byte is a control
//! character JSON escapes as `\u00XX`.

use std::time::Duration;

use drover_api::agent::{AgentMessage, LogLine};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{now_ms, sleep_until_some};

/// A log batch is sent this long after its first line at the latest...
const LOG_FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// ...or as soon as it has this many lines...
pub const LOG_BATCH_LINES: usize = 500;
/// ...or before its line text would exceed this many bytes. JSON escaping at most sextuples a
/// line (a control byte becomes `\u00XX`), so a batch encodes to about 6 MiB at worst, well
/// under `MAX_MESSAGE_BYTES` (16 MiB).
pub const LOG_BATCH_BYTES: usize = 1024 * 1024;
/// Longest log line sent (bytes, markers included, for valid UTF-8 output): a process printing
/// without newlines must not grow one line without bound.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Ends a fragment of a line that was cut (see the module doc).
pub const SPLIT_END_MARKER: &str = "…[continued]";
/// Starts the continuation of a line that was cut (see the module doc).
pub const SPLIT_START_MARKER: &str = "[continued]…";
/// Bytes of output per fragment, leaving room for both markers.
pub(super) const FRAGMENT_BYTES: usize = MAX_LINE_BYTES - SPLIT_END_MARKER.len() - SPLIT_START_MARKER.len();

/// Reads `reader` line by line into `lines`, cutting lines longer than [`MAX_LINE_BYTES`] into
/// marked fragments (see the module doc).
pub(super) async fn read_lines(reader: impl AsyncRead + Unpin, stream: &'static str, lines: mpsc::Sender<LogLine>) {
    let mut reader = BufReader::new(reader);
    let mut splitter = LineSplitter::default();
    loop {
        let available = match reader.fill_buf().await {
            Ok(available) => available,
            Err(error) => {
                tracing::warn!(%error, stream, "cannot read task output");
                break;
            }
        };
        if available.is_empty() {
            break;
        }
        let (taken, line) = splitter.feed(available);
        reader.consume(taken);
        if let Some(line) = line
            && send_line(&lines, stream, line).await.is_err()
        {
            return;
        }
    }
    if let Some(line) = splitter.finish() {
        let _ = send_line(&lines, stream, line).await;
    }
}

async fn send_line(lines: &mpsc::Sender<LogLine>, stream: &'static str, line: String) -> Result<(), mpsc::error::SendError<LogLine>> {
    lines.send(LogLine { ts_ms: now_ms(), stream: stream.to_owned(), line }).await
}

/// Turns a byte stream into lines (lossily decoded, without `\n` or `\r\n`), cutting lines
/// longer than [`FRAGMENT_BYTES`] into fragments marked with [`SPLIT_END_MARKER`] and
/// [`SPLIT_START_MARKER`].
#[derive(Debug, Default)]
pub(super) struct LineSplitter {
    /// Bytes of the line so far (of the current fragment, if it continues a cut line).
    current: Vec<u8>,
    /// The current fragment continues a line that was cut.
    continuing: bool,
}

impl LineSplitter {
    /// Takes bytes from the front of `available` (not empty): returns how many it used and the
    /// line they completed, if any. It may use none, when a line ends exactly at the limit.
    pub(super) fn feed(&mut self, available: &[u8]) -> (usize, Option<String>) {
        if self.current.len() >= FRAGMENT_BYTES {
            // Full: what follows tells whether the line ends here or goes on.
            return match available {
                [b'\n', ..] => (1, Some(self.take(false))),
                [b'\r', b'\n', ..] => (2, Some(self.take(false))),
                _ => (0, Some(self.take(true))),
            };
        }
        let room = FRAGMENT_BYTES - self.current.len();
        let window = &available[..available.len().min(room)];
        match window.iter().position(|&byte| byte == b'\n') {
            Some(newline) => {
                self.current.extend_from_slice(&window[..newline]);
                (newline + 1, Some(self.take(false)))
            }
            None => {
                self.current.extend_from_slice(window);
                (window.len(), None)
            }
        }
    }

    /// The last line, at the end of the stream (which may not end with a newline).
    pub(super) fn finish(&mut self) -> Option<String> {
        (!self.current.is_empty() || self.continuing).then(|| self.take(false))
    }

    /// The current line (`cut`: a fragment of it, ended at a character boundary, the rest
    /// carried into the next fragment).
    fn take(&mut self, cut: bool) -> String {
        let mut bytes = std::mem::take(&mut self.current);
        if cut {
            let boundary = utf8_cut(&bytes);
            self.current = bytes.split_off(boundary);
        } else if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        let text = String::from_utf8_lossy(&bytes);
        let mut line = String::with_capacity(text.len() + SPLIT_START_MARKER.len() + SPLIT_END_MARKER.len());
        if self.continuing {
            line.push_str(SPLIT_START_MARKER);
        }
        line.push_str(&text);
        if cut {
            line.push_str(SPLIT_END_MARKER);
        }
        self.continuing = cut;
        line
    }
}

/// Where to cut `bytes` so that no UTF-8 character is split: before an incomplete sequence at
/// the end, else at the end. (Invalid bytes are cut anywhere; they decode as U+FFFD either way.)
pub(super) fn utf8_cut(bytes: &[u8]) -> usize {
    let len = bytes.len();
    for back in 1..=len.min(4) {
        let byte = bytes[len - back];
        if byte & 0b1100_0000 == 0b1000_0000 {
            continue; // a continuation byte: the lead is further back
        }
        let needed = match byte {
            0xF0.. => 4,
            0xE0.. => 3,
            0xC0.. => 2,
            _ => 1,
        };
        return if needed > back { len - back } else { len };
    }
    len
}

/// Gathers lines into batches bounded by [`LOG_BATCH_LINES`] and [`LOG_BATCH_BYTES`].
#[derive(Debug, Default)]
pub(super) struct LogBatch {
    lines: Vec<LogLine>,
    bytes: usize,
}

impl LogBatch {
    /// Adds a line; returns a batch that must be sent now (the earlier lines, when this one
    /// would take the batch past its byte budget, or the batch with it, when it is full).
    pub(super) fn add(&mut self, line: LogLine) -> Option<Vec<LogLine>> {
        let mut full = None;
        if !self.lines.is_empty() && self.bytes + line.line.len() > LOG_BATCH_BYTES {
            full = self.take();
        }
        self.bytes += line.line.len();
        self.lines.push(line);
        if full.is_none() && (self.lines.len() >= LOG_BATCH_LINES || self.bytes >= LOG_BATCH_BYTES) {
            full = self.take();
        }
        full
    }

    fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    pub(super) fn take(&mut self) -> Option<Vec<LogLine>> {
        self.bytes = 0;
        (!self.lines.is_empty()).then(|| std::mem::take(&mut self.lines))
    }
}

/// Collects lines into `TaskLogs` batches until every reader is done, then sends the rest.
pub(super) async fn batch_logs(
    allocation_id: String,
    mut lines: mpsc::Receiver<LogLine>,
    readers: Vec<JoinHandle<()>>,
    outgoing: mpsc::UnboundedSender<AgentMessage>,
) {
    // Aborting the batcher (output held open past the task's exit) must stop the readers too.
    struct AbortOnDrop(Vec<JoinHandle<()>>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.iter().for_each(JoinHandle::abort);
        }
    }
    let _readers = AbortOnDrop(readers);

    let send = |lines: Vec<LogLine>| {
        let _ = outgoing.send(AgentMessage::TaskLogs { allocation_id: allocation_id.clone(), lines });
    };
    let mut batch = LogBatch::default();
    let mut flush_at: Option<Instant> = None;
    loop {
        tokio::select! {
            line = lines.recv() => match line {
                Some(line) => {
                    if let Some(full) = batch.add(line) {
                        send(full);
                        flush_at = None;
                    }
                    if !batch.is_empty() && flush_at.is_none() {
                        flush_at = Some(Instant::now() + LOG_FLUSH_INTERVAL);
                    }
                }
                None => break,
            },
            () = sleep_until_some(flush_at) => {
                if let Some(lines) = batch.take() {
                    send(lines);
                }
                flush_at = None;
            }
        }
    }
    if let Some(lines) = batch.take() {
        send(lines);
    }
}
