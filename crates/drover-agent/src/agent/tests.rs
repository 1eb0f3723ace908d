//! Tests of the agent: its URL and join token, the outbox and fitting messages into frames.

use super::outbox::MAX_EXIT_ERROR_BYTES;
use super::*;
use crate::runner::{SPLIT_END_MARKER, SPLIT_START_MARKER};

fn logs(allocation_id: &str, lines: usize) -> AgentMessage {
    AgentMessage::TaskLogs {
        allocation_id: allocation_id.to_owned(),
        lines: (0..lines).map(|i| LogLine { ts_ms: i as i64, stream: "stdout".to_owned(), line: i.to_string() }).collect(),
    }
}

fn exited(allocation_id: &str) -> AgentMessage {
    AgentMessage::TaskExited { allocation_id: allocation_id.to_owned(), exit_code: Some(0), signal: None, error: None }
}

#[test]
fn connect_url_is_derived_from_master_url() {
    assert_eq!(connect_url("http://m:8080").expect("url"), "ws://m:8080/api/v1/agents/connect");
    assert_eq!(connect_url("http://m:8080/").expect("url"), "ws://m:8080/api/v1/agents/connect");
    assert_eq!(connect_url("https://m/drover").expect("url"), "wss://m/drover/api/v1/agents/connect");
    assert!(connect_url("m:8080").is_err());
    assert!(connect_url("http://").is_err());
}

#[test]
fn hostname_is_never_empty() {
    assert!(!hostname().is_empty());
}

#[test]
fn full_outbox_drops_oldest_logs_first_and_reports_the_gap() {
    let mut outbox = Outbox::new(3, usize::MAX);
    outbox.push(logs("a", 2));
    outbox.push(exited("b"));
    outbox.push(logs("a", 5));
    outbox.push(logs("a", 1)); // drops the 2-line batch
    outbox.push(exited("a")); // drops the 5-line batch
    assert_eq!(outbox.len(), 3);
    outbox.add_drop_notices();
    let drained: Vec<AgentMessage> = std::iter::from_fn(|| outbox.pop()).collect();
    match &drained[0] {
        AgentMessage::TaskLogs { allocation_id, lines } => {
            assert_eq!(allocation_id, "a");
            assert_eq!(lines[0].stream, "agent");
            assert!(lines[0].line.starts_with("7 log lines were dropped"), "{}", lines[0].line);
        }
        other => panic!("expected the drop notice first, got {other:?}"),
    }
    assert_eq!(drained[1..], [exited("b"), logs("a", 1), exited("a")]);
}

#[test]
fn outbox_never_drops_exit_reports() {
    let mut outbox = Outbox::new(2, usize::MAX);
    for allocation in ["a", "b", "c", "d"] {
        outbox.push(exited(allocation));
    }
    assert_eq!(outbox.len(), 4);
    let exits: Vec<String> = outbox.exited_allocations().collect();
    assert_eq!(exits, ["a", "b", "c", "d"]);
}

#[test]
fn outbox_drops_other_messages_before_exit_reports() {
    let mut outbox = Outbox::new(2, usize::MAX);
    outbox.push(AgentMessage::TaskStarted { allocation_id: "a".to_owned(), pid: 1 });
    outbox.push(exited("b"));
    outbox.push(exited("a"));
    let drained: Vec<AgentMessage> = std::iter::from_fn(|| outbox.pop()).collect();
    assert_eq!(drained, [exited("b"), exited("a")]);
}

fn line(text: &str) -> LogLine {
    LogLine { ts_ms: 7, stream: "stdout".to_owned(), line: text.to_owned() }
}

fn lines_in(frames: &[(AgentMessage, String)]) -> Vec<String> {
    frames
        .iter()
        .flat_map(|(message, _)| match message {
            AgentMessage::TaskLogs { lines, .. } => lines.iter().map(|l| l.line.clone()).collect(),
            _ => Vec::new(),
        })
        .collect()
}

#[test]
fn small_messages_are_one_frame() {
    let frames = fit_frames(logs("a", 3), 1000).expect("fits");
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].0, logs("a", 3));
    assert_eq!(frames[0].1, serde_json::to_string(&logs("a", 3)).expect("encode"));
}

#[test]
fn large_log_batches_are_split_in_order_below_the_limit() {
    let texts: Vec<String> = (0..40).map(|i| format!("{i:03}-{}", "\u{1}".repeat(50))).collect();
    let message = AgentMessage::TaskLogs { allocation_id: "a".to_owned(), lines: texts.iter().map(|t| line(t)).collect() };
    let frames = fit_frames(message, 2000).expect("fits once split");
    assert!(frames.len() > 1);
    for (message, text) in &frames {
        assert!(text.len() <= 2000, "{} bytes", text.len());
        assert_eq!(&serde_json::to_string(message).expect("encode"), text);
    }
    assert_eq!(lines_in(&frames), texts);
}

#[test]
fn a_single_huge_line_is_cut_with_markers() {
    let text = format!("{}€", "x".repeat(5000));
    let message = AgentMessage::TaskLogs { allocation_id: "a".to_owned(), lines: vec![line(&text)] };
    let frames = fit_frames(message, 1500).expect("fits once cut");
    assert!(frames.iter().all(|(_, text)| text.len() <= 1500));
    let pieces = lines_in(&frames);
    assert!(pieces.len() >= 4);
    let mut joined = String::new();
    for (i, piece) in pieces.iter().enumerate() {
        let mut piece = piece.as_str();
        if i > 0 {
            piece = piece.strip_prefix(SPLIT_START_MARKER).expect("start marker");
        }
        if i + 1 < pieces.len() {
            piece = piece.strip_suffix(SPLIT_END_MARKER).expect("end marker");
        }
        joined.push_str(piece);
    }
    assert_eq!(joined, text);
}

#[test]
fn an_overlong_exit_error_is_shortened_not_dropped() {
    let message = AgentMessage::TaskExited {
        allocation_id: "a".to_owned(),
        exit_code: None,
        signal: None,
        error: Some("e".repeat(3 * MAX_EXIT_ERROR_BYTES)),
    };
    let frames = fit_frames(message, 2 * MAX_EXIT_ERROR_BYTES).expect("fits");
    match &frames[..] {
        [(AgentMessage::TaskExited { error: Some(error), .. }, text)] => {
            assert!(text.len() <= 2 * MAX_EXIT_ERROR_BYTES);
            assert!(error.contains("shortened by the agent"), "{}", &error[error.len() - 60..]);
        }
        other => panic!("expected one shortened TaskExited, got {} frames", other.len()),
    }
}

#[test]
fn other_oversized_messages_are_refused() {
    let message = AgentMessage::TaskStarted { allocation_id: "b".repeat(500), pid: 1 };
    let refused = fit_frames(message, 100).expect_err("cannot fit");
    assert_eq!(refused.kind, "TaskStarted");
    assert_eq!(refused.allocation_id.as_deref(), Some("b".repeat(500).as_str()));
    assert!(refused.bytes > 500);
}

#[test]
fn outbox_bounds_log_bytes() {
    let big = |n: usize| AgentMessage::TaskLogs { allocation_id: "a".to_owned(), lines: vec![line(&"z".repeat(n))] };
    let mut outbox = Outbox::new(100, 1000);
    outbox.push(big(400));
    outbox.push(exited("b"));
    outbox.push(big(400));
    assert_eq!(outbox.log_bytes(), 800);
    outbox.push(big(400)); // drops the first batch
    assert_eq!(outbox.log_bytes(), 800);
    assert_eq!(outbox.len(), 3);
    outbox.add_drop_notices();
    let notice = outbox.pop().expect("notice");
    assert!(matches!(&notice, AgentMessage::TaskLogs { lines, .. } if lines[0].line.starts_with("1 log lines were dropped")));
    assert_eq!(outbox.pop(), Some(exited("b")));
    assert_eq!(outbox.log_bytes(), 800);
    outbox.pop();
    outbox.pop();
    assert_eq!(outbox.log_bytes(), 0);
    assert_eq!(outbox.pop(), None);
}

#[test]
fn join_token_header() {
    assert_eq!(authorization_header(None).expect("ok"), None);
    assert_eq!(authorization_header(Some("  ")).expect("ok"), None);
    let value = authorization_header(Some(" s3cret\n")).expect("ok").expect("a header");
    assert_eq!(value.to_str().expect("ascii"), "Bearer s3cret");
    assert!(value.is_sensitive());
    assert!(matches!(authorization_header(Some("a\nb")), Err(AgentError::InvalidJoinToken)));
}
