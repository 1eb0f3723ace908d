//! Tests of the runner: task environments, process groups, and output lines and batches.

use super::logs::{FRAGMENT_BYTES, LineSplitter, LogBatch, utf8_cut};
use super::*;

fn slot(id: &str, kind: SlotKind, device_index: Option<&str>) -> SlotSpec {
    SlotSpec { id: id.to_owned(), kind, device: "test".to_owned(), device_index: device_index.map(str::to_owned), memory_mb: None }
}

fn spec(slot_ids: &[&str]) -> TaskSpec {
    TaskSpec {
        allocation_id: "alloc-1".to_owned(),
        labels: Default::default(),
        argv: vec!["true".to_owned()],
        env: BTreeMap::from([("DROVER_TRIAL_ID".to_owned(), "2".to_owned())]),
        slot_ids: slot_ids.iter().map(|s| (*s).to_owned()).collect(),
        context_path: None,
        token: "t".to_owned(),
    }
}

fn gpu_agent() -> Vec<SlotSpec> {
    vec![
        slot("gpu0.0", SlotKind::Cuda, Some("0")),
        slot("gpu0.1", SlotKind::Cuda, Some("0")),
        slot("gpu1.0", SlotKind::Cuda, Some("1")),
        slot("cpu0", SlotKind::Cpu, None),
    ]
}

#[test]
fn cuda_devices_are_deduplicated_in_slot_order() {
    let env = task_environment(&spec(&["gpu1.0", "gpu0.1", "gpu0.0"]), &gpu_agent(), "http://m:8080/").expect("environment");
    assert_eq!(env["CUDA_VISIBLE_DEVICES"], "1,0");
    assert_eq!(env["CUDA_DEVICE_ORDER"], "PCI_BUS_ID");
    assert_eq!(env["DROVER_SLOT_IDS"], "gpu1.0,gpu0.1,gpu0.0");
    assert_eq!(env["DROVER_MASTER"], "http://m:8080");
    assert_eq!(env["DROVER_TRIAL_ID"], "2");
}

#[test]
fn cpu_task_on_gpu_agent_sees_no_gpu() {
    let env = task_environment(&spec(&["cpu0"]), &gpu_agent(), "http://m").expect("environment");
    assert_eq!(env["CUDA_VISIBLE_DEVICES"], "");
}

#[test]
fn cpu_only_agent_leaves_cuda_variables_alone() {
    let cpu_agent = vec![slot("cpu0", SlotKind::Cpu, None)];
    let env = task_environment(&spec(&["cpu0"]), &cpu_agent, "http://m").expect("environment");
    assert!(!env.contains_key("CUDA_VISIBLE_DEVICES"));
    assert!(!env.contains_key("CUDA_DEVICE_ORDER"));
    assert_eq!(env["DROVER_SLOT_IDS"], "cpu0");
}

#[test]
fn master_given_drover_master_wins() {
    let mut task = spec(&[]);
    task.env.insert("DROVER_MASTER".to_owned(), "http://public:1".to_owned());
    let env = task_environment(&task, &gpu_agent(), "http://m").expect("environment");
    assert_eq!(env["DROVER_MASTER"], "http://public:1");
}

#[test]
fn unknown_slot_is_refused() {
    let result = task_environment(&spec(&["gpu7"]), &gpu_agent(), "http://m");
    assert!(matches!(result, Err(StartError::UnknownSlot(id)) if id == "gpu7"));
}

#[test]
fn parses_proc_stat_group_and_state() {
    let stat = "4242 (python (worker) 1) S 4200 4100 4100 0 -1 4194560 2 0 0 0";
    assert!(stat_is_live_member(stat, 4100));
    assert!(!stat_is_live_member(stat, 4200));
    let zombie = "4242 (sleep) Z 1 4100 4100 0 -1 4194560 2 0 0 0";
    assert!(!stat_is_live_member(zombie, 4100));
}

#[test]
fn own_group_is_live_and_unused_group_is_not() {
    let own_group = nix::unistd::getpgrp();
    assert!(group_has_live_members(own_group));
    // pid_max is at most 2^22 on Linux, so no group can have this id.
    assert!(!group_has_live_members(Pid::from_raw(i32::MAX)));
}

fn split_all(input: &[u8]) -> Vec<String> {
    let mut splitter = LineSplitter::default();
    let mut lines = Vec::new();
    let mut rest = input;
    // Fed in odd-sized pieces, as a pipe delivers them.
    while !rest.is_empty() {
        let piece = &rest[..rest.len().min(7001)];
        let (taken, line) = splitter.feed(piece);
        lines.extend(line);
        rest = &rest[taken..];
    }
    lines.extend(splitter.finish());
    lines
}

/// Joins fragments back into lines by dropping the markers.
fn join_fragments(lines: &[String]) -> Vec<String> {
    let mut joined: Vec<String> = Vec::new();
    let mut open = false;
    for line in lines {
        let mut text = line.as_str();
        if open {
            text = text.strip_prefix(SPLIT_START_MARKER).expect("a continuation is marked");
        }
        let cut = text.ends_with(SPLIT_END_MARKER);
        if cut {
            text = &text[..text.len() - SPLIT_END_MARKER.len()];
        }
        if open {
            joined.last_mut().expect("open line").push_str(text);
        } else {
            joined.push(text.to_owned());
        }
        open = cut;
    }
    assert!(!open, "the last fragment is not marked as cut");
    joined
}

#[tokio::test]
async fn long_lines_are_split_and_partial_last_line_kept() {
    let mut input = vec![b'a'; MAX_LINE_BYTES + 10];
    input.extend_from_slice(b"\r\nsecond\nno newline at end");
    let (tx, mut rx) = mpsc::channel(16);
    read_lines(&input[..], "stdout", tx).await;
    let mut lines = Vec::new();
    while let Some(line) = rx.recv().await {
        lines.push(line.line);
    }
    assert_eq!(lines.len(), 4, "{:?}", lines.iter().map(String::len).collect::<Vec<_>>());
    assert_eq!(lines[0], format!("{}{SPLIT_END_MARKER}", "a".repeat(FRAGMENT_BYTES)));
    assert!(lines[0].len() <= MAX_LINE_BYTES);
    assert_eq!(lines[1], format!("{SPLIT_START_MARKER}{}", "a".repeat(MAX_LINE_BYTES + 10 - FRAGMENT_BYTES)));
    assert_eq!(lines[2], "second");
    assert_eq!(lines[3], "no newline at end");
}

#[test]
fn splitting_marks_every_cut_and_loses_nothing() {
    let long = "x".repeat(3 * FRAGMENT_BYTES + 5);
    let input = format!("short\n{long}\n\nlast");
    let lines = split_all(input.as_bytes());
    assert_eq!(lines.len(), 7);
    assert!(lines[1].ends_with(SPLIT_END_MARKER) && !lines[1].starts_with(SPLIT_START_MARKER));
    assert!(lines[2].starts_with(SPLIT_START_MARKER) && lines[2].ends_with(SPLIT_END_MARKER));
    assert!(lines[4].starts_with(SPLIT_START_MARKER) && !lines[4].ends_with(SPLIT_END_MARKER));
    assert!(lines.iter().all(|line| line.len() <= MAX_LINE_BYTES));
    assert_eq!(join_fragments(&lines), ["short", long.as_str(), "", "last"]);
}

#[test]
fn a_line_of_exactly_the_fragment_size_is_not_cut() {
    let exact = "y".repeat(FRAGMENT_BYTES);
    let lines = split_all(format!("{exact}\r\n{exact}\nz").as_bytes());
    assert_eq!(lines, [exact.clone(), exact.clone(), "z".to_owned()]);
    // At the end of the stream too.
    assert_eq!(split_all(exact.as_bytes()), std::slice::from_ref(&exact));
}

#[test]
fn lines_are_cut_on_character_boundaries() {
    for prefix in 0..4 {
        // Multi-byte characters straddle the cut at every offset.
        let text = format!("{}{}", "a".repeat(prefix), "é€😀".repeat(FRAGMENT_BYTES / 4));
        let lines = split_all(text.as_bytes());
        assert!(lines.len() > 1);
        for line in &lines {
            assert!(!line.contains('\u{FFFD}'), "a character was split");
            assert!(line.len() <= MAX_LINE_BYTES);
        }
        assert_eq!(join_fragments(&lines), [text]);
    }
}

#[test]
fn utf8_cut_finds_incomplete_sequences() {
    assert_eq!(utf8_cut(b"abc"), 3);
    assert_eq!(utf8_cut("aé".as_bytes()), 3);
    assert_eq!(utf8_cut(&"aé".as_bytes()[..2]), 1);
    assert_eq!(utf8_cut(&"a😀".as_bytes()[..4]), 1);
    assert_eq!(utf8_cut("a😀".as_bytes()), 5);
    assert_eq!(utf8_cut(&[0xFF, 0x80, 0x80, 0x80, 0x80]), 5);
    assert_eq!(utf8_cut(b""), 0);
}

fn log_line(text: String) -> LogLine {
    LogLine { ts_ms: 1_700_000_000_000, stream: "stdout".to_owned(), line: text }
}

#[test]
fn batches_are_bounded_by_lines_and_bytes() {
    let mut batch = LogBatch::default();
    let mut sent: Vec<Vec<LogLine>> = Vec::new();
    for i in 0..1000 {
        sent.extend(batch.add(log_line(i.to_string())));
    }
    assert_eq!(sent.len(), 2);
    assert!(sent.iter().all(|b| b.len() == LOG_BATCH_LINES));
    assert!(batch.take().is_none());

    // Worst case: full-length lines of control bytes, which JSON escapes as `\u00XX`.
    let nasty = "\u{1}".repeat(MAX_LINE_BYTES);
    let mut sent = Vec::new();
    for _ in 0..100 {
        sent.extend(batch.add(log_line(nasty.clone())));
    }
    sent.extend(batch.take());
    assert_eq!(sent.iter().map(Vec::len).sum::<usize>(), 100);
    for lines in sent {
        let bytes: usize = lines.iter().map(|l| l.line.len()).sum();
        assert!(bytes <= LOG_BATCH_BYTES, "{bytes} bytes in a batch");
        let encoded =
            serde_json::to_string(&AgentMessage::TaskLogs { allocation_id: "0195d3a4-0000-7000-8000-000000000000".to_owned(), lines })
                .expect("encode");
        assert!(encoded.len() < drover_api::agent::MAX_MESSAGE_BYTES / 2, "a batch encodes to {} bytes", encoded.len());
    }
}

#[test]
fn the_cache_directory_is_not_an_allocation_id() {
    assert!(!is_single_component(CACHE_DIR_NAME));
    assert!(is_single_component("0195d3a4-0000-7000-8000-000000000000"));
}
