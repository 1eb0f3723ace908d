//! Task messages on their way to the master: the [`Outbox`] that keeps them, bounded, while
//! the agent is disconnected, and [`fit_frames`], which encodes each one as websocket frames
//! no larger than a limit (the session's is `drover_api::agent::MAX_MESSAGE_BYTES`).

use std::collections::{BTreeMap, VecDeque};

use drover_api::agent::{AgentMessage, LogLine};

use super::{agent_line, kind};
use crate::runner::{SPLIT_END_MARKER, SPLIT_START_MARKER};

/// Longest `TaskExited` error sent; a longer one is shortened to this (bytes).
pub(super) const MAX_EXIT_ERROR_BYTES: usize = 64 * 1024;

/// A message that cannot be made to fit a frame.
#[derive(Debug, PartialEq)]
pub(super) struct Unsendable {
    pub(super) kind: &'static str,
    pub(super) bytes: usize,
    pub(super) allocation_id: Option<String>,
}

/// Encodes `message` as frames of at most `limit` bytes each, in order: a `TaskLogs` too large
/// is split between its lines (a single line too large is cut into fragments marked like the
/// runner's), a `TaskExited` with an overlong error gets it shortened; anything else too large
/// cannot be sent.
pub(super) fn fit_frames(message: AgentMessage, limit: usize) -> Result<Vec<(AgentMessage, String)>, Unsendable> {
    let mut frames = Vec::new();
    let mut pending = vec![message];
    // A stack, last piece first, so the frames come out in order.
    while let Some(message) = pending.pop() {
        let unsendable = |message: &AgentMessage, bytes: usize| Unsendable {
            kind: kind(message),
            bytes,
            allocation_id: match message {
                AgentMessage::TaskStarted { allocation_id, .. }
                | AgentMessage::TaskLogs { allocation_id, .. }
                | AgentMessage::TaskExited { allocation_id, .. } => Some(allocation_id.clone()),
                AgentMessage::Hello { .. } | AgentMessage::Heartbeat => None,
            },
        };
        let text = serde_json::to_string(&message).map_err(|_| unsendable(&message, 0))?;
        if text.len() <= limit {
            frames.push((message, text));
            continue;
        }
        let bytes = text.len();
        match message {
            AgentMessage::TaskLogs { allocation_id, mut lines } if lines.len() > 1 => {
                let second = lines.split_off(lines.len() / 2);
                pending.push(AgentMessage::TaskLogs { allocation_id: allocation_id.clone(), lines: second });
                pending.push(AgentMessage::TaskLogs { allocation_id, lines });
            }
            AgentMessage::TaskLogs { allocation_id, mut lines }
                if lines.len() == 1 && lines[0].line.len() > 2 * (SPLIT_START_MARKER.len() + SPLIT_END_MARKER.len()) =>
            {
                let line = lines.remove(0);
                let mut middle = line.line.len() / 2;
                while !line.line.is_char_boundary(middle) {
                    middle -= 1;
                }
                let (head, tail) = line.line.split_at(middle);
                let piece = |text: String| AgentMessage::TaskLogs {
                    allocation_id: allocation_id.clone(),
                    lines: vec![LogLine { ts_ms: line.ts_ms, stream: line.stream.clone(), line: text }],
                };
                pending.push(piece(format!("{SPLIT_START_MARKER}{tail}")));
                pending.push(piece(format!("{head}{SPLIT_END_MARKER}")));
            }
            AgentMessage::TaskExited { allocation_id, exit_code, signal, error: Some(error) } if error.len() > MAX_EXIT_ERROR_BYTES => {
                let mut end = MAX_EXIT_ERROR_BYTES;
                while !error.is_char_boundary(end) {
                    end -= 1;
                }
                pending.push(AgentMessage::TaskExited {
                    allocation_id,
                    exit_code,
                    signal,
                    error: Some(format!("{}… ({} bytes in all; shortened by the agent)", &error[..end], error.len())),
                });
            }
            other => return Err(unsendable(&other, bytes)),
        }
    }
    Ok(frames)
}

/// Task messages waiting for a connection. Bounded in messages and in bytes of log text: when
/// full, the oldest log batch goes first (its lost line count is reported later as an `agent`
/// log line), then the oldest other non-exit message; a `TaskExited` is never dropped, since
/// without it the master would never learn how the task ended (and there is only one per task,
/// so they cannot pile up).
#[derive(Debug)]
pub(super) struct Outbox {
    queue: VecDeque<AgentMessage>,
    capacity: usize,
    /// Most bytes of log line text queued.
    log_capacity: usize,
    log_bytes: usize,
    dropped_lines: BTreeMap<String, usize>,
}

/// Bytes of log line text in a message.
fn log_bytes(message: &AgentMessage) -> usize {
    match message {
        AgentMessage::TaskLogs { lines, .. } => lines.iter().map(|line| line.line.len()).sum(),
        _ => 0,
    }
}

impl Outbox {
    pub(super) fn new(capacity: usize, log_capacity: usize) -> Self {
        Outbox { queue: VecDeque::new(), capacity, log_capacity, log_bytes: 0, dropped_lines: BTreeMap::new() }
    }

    pub(super) fn push(&mut self, message: AgentMessage) {
        if self.queue.len() >= self.capacity {
            self.drop_one();
        }
        self.log_bytes += log_bytes(&message);
        self.queue.push_back(message);
        while self.log_bytes > self.log_capacity && self.drop_oldest_logs() {}
    }

    fn drop_one(&mut self) {
        if self.drop_oldest_logs() {
            return;
        }
        let victim = self.queue.iter().position(|m| !matches!(m, AgentMessage::TaskExited { .. }));
        // With only exit reports queued, nothing goes: they are all kept, over capacity.
        if let Some(other) = victim.and_then(|index| self.queue.remove(index)) {
            tracing::warn!(message = ?other, "outbox full: dropped a message");
        }
    }

    /// Drops the oldest log batch, counting its lines; false if there is none.
    fn drop_oldest_logs(&mut self) -> bool {
        let oldest_logs = self.queue.iter().position(|m| matches!(m, AgentMessage::TaskLogs { .. }));
        match oldest_logs.and_then(|index| self.queue.remove(index)) {
            Some(message) => {
                self.log_bytes -= log_bytes(&message);
                if let AgentMessage::TaskLogs { allocation_id, lines } = message {
                    *self.dropped_lines.entry(allocation_id).or_default() += lines.len();
                }
                true
            }
            None => false,
        }
    }

    pub(super) fn push_front(&mut self, message: AgentMessage) {
        self.log_bytes += log_bytes(&message);
        self.queue.push_front(message);
    }

    pub(super) fn pop(&mut self) -> Option<AgentMessage> {
        let message = self.queue.pop_front()?;
        self.log_bytes -= log_bytes(&message);
        Some(message)
    }

    /// Puts, at the front, one `agent` log line per allocation that lost lines, so the user
    /// sees the gap in the task's log. They go before everything else and so before the
    /// task's `TaskExited`.
    pub(super) fn add_drop_notices(&mut self) {
        for (allocation_id, count) in std::mem::take(&mut self.dropped_lines).into_iter().rev() {
            self.push_front(AgentMessage::TaskLogs {
                allocation_id,
                lines: vec![agent_line(format!("{count} log lines were dropped while the agent was disconnected from the master"))],
            });
        }
    }

    pub(super) fn exited_allocations(&self) -> impl Iterator<Item = String> + '_ {
        self.queue.iter().filter_map(|message| match message {
            AgentMessage::TaskExited { allocation_id, .. } => Some(allocation_id.clone()),
            _ => None,
        })
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }

    #[cfg(test)]
    pub(super) fn log_bytes(&self) -> usize {
        self.log_bytes
    }
}
