//! The runner driven directly through its channel, with real processes.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use drover_agent::context::{ContextCache, ExtractLimits};
use drover_agent::runner::{RunnerConfig, TaskHandle, spawn_task};
use drover_api::agent::{AgentMessage, LogLine, SlotKind, SlotSpec, TaskSpec};
use tokio::sync::mpsc;

const TIMEOUT: Duration = Duration::from_secs(15);

struct Setup {
    work_root: tempfile::TempDir,
    config: Arc<RunnerConfig>,
}

fn setup(master_url: &str, slots: Vec<SlotSpec>) -> Setup {
    let work_root = tempfile::tempdir().expect("tempdir");
    let config = Arc::new(RunnerConfig::new(master_url, work_root.path(), slots));
    Setup { work_root, config }
}

fn cpu_slot() -> SlotSpec {
    SlotSpec { id: "cpu0".to_owned(), kind: SlotKind::Cpu, device: "CPU".to_owned(), device_index: None, memory_mb: None }
}

fn spec(allocation_id: &str, argv: &[&str]) -> TaskSpec {
    TaskSpec {
        allocation_id: allocation_id.to_owned(),
        labels: Default::default(),
        argv: argv.iter().map(|s| (*s).to_owned()).collect(),
        env: BTreeMap::new(),
        slot_ids: vec!["cpu0".to_owned()],
        context_path: None,
        token: "secret-token".to_owned(),
    }
}

fn start(setup: &Setup, spec: TaskSpec) -> (TaskHandle, mpsc::UnboundedReceiver<AgentMessage>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (spawn_task(setup.config.clone(), spec, tx), rx)
}

/// Everything the task sent, up to and including its TaskExited.
async fn until_exit(rx: &mut mpsc::UnboundedReceiver<AgentMessage>) -> Vec<AgentMessage> {
    let mut messages = Vec::new();
    loop {
        let message =
            tokio::time::timeout(TIMEOUT, rx.recv()).await.expect("task did not exit in time").expect("channel closed before TaskExited");
        let done = matches!(message, AgentMessage::TaskExited { .. });
        messages.push(message);
        if done {
            return messages;
        }
    }
}

fn log_lines(messages: &[AgentMessage]) -> Vec<LogLine> {
    messages
        .iter()
        .flat_map(|m| match m {
            AgentMessage::TaskLogs { lines, .. } => lines.clone(),
            _ => Vec::new(),
        })
        .collect()
}

fn stdout_text(messages: &[AgentMessage]) -> Vec<String> {
    log_lines(messages).into_iter().filter(|l| l.stream == "stdout").map(|l| l.line).collect()
}

/// (exit_code, signal, error) of the final message.
fn exit_of(messages: &[AgentMessage]) -> (Option<i32>, Option<i32>, Option<String>) {
    match messages.last() {
        Some(AgentMessage::TaskExited { exit_code, signal, error, .. }) => (*exit_code, *signal, error.clone()),
        other => panic!("last message is not TaskExited: {other:?}"),
    }
}

/// Gone, or a zombie nobody has reaped yet (the test's init may not reap orphans): either way
/// no longer running.
fn process_is_dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
            matches!(state, Some('Z' | 'X'))
        }
    }
}

async fn wait_dead(pid: i32) -> bool {
    for _ in 0..100 {
        if process_is_dead(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn relays_both_streams_and_the_exit_code() {
    let setup = setup("http://127.0.0.1:1", vec![cpu_slot()]);
    let (_handle, mut rx) = start(&setup, spec("echo", &["/bin/sh", "-c", "echo hi; echo err >&2; exit 3"]));
    let messages = until_exit(&mut rx).await;

    match &messages[0] {
        AgentMessage::TaskStarted { allocation_id, pid } => {
            assert_eq!(allocation_id, "echo");
            assert!(*pid > 0);
        }
        other => panic!("first message is not TaskStarted: {other:?}"),
    }
    let lines = log_lines(&messages);
    let streams: Vec<(&str, &str)> = lines.iter().map(|l| (l.stream.as_str(), l.line.as_str())).collect();
    assert!(streams.contains(&("stdout", "hi")), "{streams:?}");
    assert!(streams.contains(&("stderr", "err")), "{streams:?}");
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64;
    assert!(lines.iter().all(|l| (now_ms - l.ts_ms).abs() < 60_000), "timestamps are ms since the epoch");
    assert_eq!(exit_of(&messages), (Some(3), None, None));
}

#[tokio::test]
async fn runs_in_a_fresh_work_dir_with_the_task_environment() {
    let gpu = |id: &str, index: &str| SlotSpec {
        id: id.to_owned(),
        kind: SlotKind::Cuda,
        device: "NVIDIA T4".to_owned(),
        device_index: Some(index.to_owned()),
        memory_mb: Some(15360),
    };
    let setup = setup("http://127.0.0.1:1", vec![gpu("gpu0.0", "0"), gpu("gpu0.1", "0"), gpu("gpu1.0", "1")]);
    let stale = setup.work_root.path().join("env-task");
    std::fs::create_dir_all(&stale).expect("mkdir");
    std::fs::write(stale.join("stale-file"), "from an earlier run").expect("write");
    let expected_dir = stale.canonicalize().expect("canonicalize").display().to_string();

    let mut task =
        spec("env-task", &["/bin/sh", "-c", "pwd; ls; echo \"$CUDA_VISIBLE_DEVICES|$DROVER_SLOT_IDS|$DROVER_TRIAL_ID|$DROVER_MASTER\""]);
    task.slot_ids = vec!["gpu1.0".to_owned(), "gpu0.1".to_owned(), "gpu0.0".to_owned()];
    task.env.insert("DROVER_TRIAL_ID".to_owned(), "42".to_owned());
    let (_handle, mut rx) = start(&setup, task);
    let messages = until_exit(&mut rx).await;
    assert_eq!(exit_of(&messages), (Some(0), None, None));
    assert!(!stale.exists(), "the work directory is removed once the task is over");
    // `ls` of an empty directory prints nothing, so the stale file is gone if only 2 lines came.
    assert_eq!(stdout_text(&messages), [expected_dir, "1,0|gpu1.0,gpu0.1,gpu0.0|42|http://127.0.0.1:1".to_owned()]);
}

#[tokio::test]
async fn missing_executable_is_reported_not_panicked() {
    let setup = setup("http://127.0.0.1:1", vec![cpu_slot()]);
    let (_handle, mut rx) = start(&setup, spec("missing", &["/nonexistent/drover-test-binary", "--flag"]));
    let messages = until_exit(&mut rx).await;
    assert_eq!(messages.len(), 1, "no TaskStarted for a process that never ran: {messages:?}");
    let (exit_code, signal, error) = exit_of(&messages);
    assert_eq!((exit_code, signal), (None, None));
    let error = error.expect("an error string");
    assert!(error.contains("/nonexistent/drover-test-binary"), "{error}");
}

#[tokio::test]
async fn unknown_slot_and_bad_allocation_id_are_refused() {
    let setup = setup("http://127.0.0.1:1", vec![cpu_slot()]);
    let mut task = spec("bad-slot", &["/bin/true"]);
    task.slot_ids = vec!["gpu3".to_owned()];
    let (_handle, mut rx) = start(&setup, task);
    let error = exit_of(&until_exit(&mut rx).await).2.expect("error");
    assert!(error.contains("gpu3"), "{error}");

    let (_handle, mut rx) = start(&setup, spec("../escape", &["/bin/true"]));
    let error = exit_of(&until_exit(&mut rx).await).2.expect("error");
    assert!(error.contains("allocation id"), "{error}");
    assert!(!setup.work_root.path().parent().expect("parent").join("escape").exists());
}

#[tokio::test]
async fn kill_stops_the_whole_process_group() {
    let setup = setup("http://127.0.0.1:1", vec![cpu_slot()]);
    let (handle, mut rx) = start(&setup, spec("kill-me", &["/bin/sh", "-c", "sleep 30 & echo $!; wait"]));
    let sleep_pid = loop {
        let message = tokio::time::timeout(TIMEOUT, rx.recv()).await.expect("output in time").expect("open");
        if let AgentMessage::TaskLogs { lines, .. } = &message
            && let Some(line) = lines.iter().find(|l| l.stream == "stdout")
        {
            break line.line.trim().parse::<i32>().expect("the sleep pid");
        }
    };
    assert!(!process_is_dead(sleep_pid), "sleep should be running before the kill");

    handle.kill(Duration::from_secs(10));
    let messages = until_exit(&mut rx).await;
    // SIGTERM sufficed: well within the 10 s grace, and reported as the signal.
    assert_eq!(exit_of(&messages), (None, Some(libc_sigterm()), None));
    assert!(wait_dead(sleep_pid).await, "the shell's child {sleep_pid} survived the kill");
}

#[tokio::test]
async fn sigterm_reaches_every_process_in_the_group() {
    // The shell does not forward signals, so the child hears SIGTERM only if the whole group is
    // signalled (the cleanup after the leader's exit would use SIGKILL, which cannot be trapped).
    let setup = setup("http://127.0.0.1:1", vec![cpu_slot()]);
    // Bounded (~10 s) so that a failing run leaves no process behind for long.
    let script = "(trap 'echo child-got-term; exit 0' TERM; echo child-up; i=0; \
                  while [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done) & wait";
    let (handle, mut rx) = start(&setup, spec("group", &["/bin/sh", "-c", script]));
    loop {
        let message = tokio::time::timeout(TIMEOUT, rx.recv()).await.expect("output in time").expect("open");
        if let AgentMessage::TaskLogs { lines, .. } = &message
            && lines.iter().any(|l| l.line == "child-up")
        {
            break;
        }
    }
    handle.kill(Duration::from_secs(10));
    let messages = until_exit(&mut rx).await;
    assert!(stdout_text(&messages).contains(&"child-got-term".to_owned()), "{messages:?}");
}

#[tokio::test]
async fn processes_left_behind_are_killed_when_the_leader_exits() {
    let setup = setup("http://127.0.0.1:1", vec![cpu_slot()]);
    let (_handle, mut rx) = start(&setup, spec("leaves-child", &["/bin/sh", "-c", "sleep 30 & echo $!; exit 4"]));
    let messages = until_exit(&mut rx).await;
    assert_eq!(exit_of(&messages), (Some(4), None, None));
    let sleep_pid: i32 = stdout_text(&messages)[0].trim().parse().expect("the sleep pid");
    assert!(wait_dead(sleep_pid).await, "the leftover sleep {sleep_pid} still runs");
}

#[tokio::test]
async fn kill_escalates_to_sigkill_after_the_grace() {
    let setup = setup("http://127.0.0.1:1", vec![cpu_slot()]);
    // Ignoring TERM is inherited by the sleep, so only SIGKILL ends either.
    let (handle, mut rx) = start(&setup, spec("stubborn", &["/bin/sh", "-c", "trap '' TERM; sleep 30 & echo $!; wait"]));
    let sleep_pid = loop {
        let message = tokio::time::timeout(TIMEOUT, rx.recv()).await.expect("output in time").expect("open");
        if let AgentMessage::TaskLogs { lines, .. } = &message
            && let Some(line) = lines.iter().find(|l| l.stream == "stdout")
        {
            break line.line.trim().parse::<i32>().expect("the sleep pid");
        }
    };
    let killed_at = std::time::Instant::now();
    handle.kill(Duration::from_millis(300));
    let messages = until_exit(&mut rx).await;
    assert_eq!(exit_of(&messages).1, Some(9), "{messages:?}");
    assert!(killed_at.elapsed() >= Duration::from_millis(300), "SIGKILL came before the grace ended");
    assert!(wait_dead(sleep_pid).await);
}

#[tokio::test]
async fn zero_grace_kills_at_once() {
    let setup = setup("http://127.0.0.1:1", vec![cpu_slot()]);
    let (handle, mut rx) = start(&setup, spec("now", &["/bin/sh", "-c", "trap '' TERM; echo up; sleep 30"]));
    loop {
        let message = tokio::time::timeout(TIMEOUT, rx.recv()).await.expect("output in time").expect("open");
        if matches!(message, AgentMessage::TaskLogs { .. }) {
            break;
        }
    }
    handle.kill(Duration::ZERO);
    let messages = until_exit(&mut rx).await;
    assert_eq!(exit_of(&messages).1, Some(9));
}

#[tokio::test]
async fn many_lines_arrive_complete_and_in_order() {
    let setup = setup("http://127.0.0.1:1", vec![cpu_slot()]);
    let (_handle, mut rx) =
        start(&setup, spec("chatty", &["/bin/sh", "-c", "i=0; while [ $i -lt 1200 ]; do echo line$i; i=$((i+1)); done"]));
    let messages = until_exit(&mut rx).await;
    let lines = stdout_text(&messages);
    let expected: Vec<String> = (0..1200).map(|i| format!("line{i}")).collect();
    assert_eq!(lines, expected);
    for message in &messages {
        if let AgentMessage::TaskLogs { lines, .. } = message {
            assert!(lines.len() <= 500, "a batch has {} lines", lines.len());
        }
    }
}

fn libc_sigterm() -> i32 {
    nix::sys::signal::Signal::SIGTERM as i32
}

// --- context fetching, against a one-shot HTTP server on 127.0.0.1 ---

fn gzip_tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(encoder);
    for (path, data) in entries {
        let mut header = tar::Header::new_gnu();
        // Written raw so that hostile names (`../evil`) get through the builder's own checks.
        header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append(&header, *data).expect("append");
    }
    builder.into_inner().expect("tar").finish().expect("gzip")
}

/// Serves `body` once (HTTP 200, or 401 without the right bearer token) and returns the base
/// URL and a handle yielding the request head it saw.
fn serve_once(body: Vec<u8>) -> (String, std::thread::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).expect("read request");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let authorized = head.lines().any(|l| l.eq_ignore_ascii_case("authorization: Bearer secret-token"));
        let (status, body) = if authorized { ("200 OK", body) } else { ("401 Unauthorized", Vec::new()) };
        write!(stream, "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).expect("write head");
        stream.write_all(&body).expect("write body");
        head
    });
    (url, server)
}

#[tokio::test]
async fn fetches_and_extracts_the_context_with_the_task_token() {
    let tarball = gzip_tar(&[("run.sh", b"echo from context; cat data/value.txt\n"), ("data/value.txt", b"7\n")]);
    let (url, server) = serve_once(tarball);
    let setup = setup(&url, vec![cpu_slot()]);
    let mut task = spec("with-context", &["/bin/sh", "run.sh"]);
    task.context_path = Some("/api/v1/experiments/1/context".to_owned());
    let (_handle, mut rx) = start(&setup, task);
    let messages = until_exit(&mut rx).await;
    assert_eq!(exit_of(&messages), (Some(0), None, None), "{messages:?}");
    assert_eq!(stdout_text(&messages), ["from context", "7"]);
    let head = server.join().expect("server");
    assert!(head.starts_with("GET /api/v1/experiments/1/context HTTP/1.1"), "{head}");
}

#[tokio::test]
async fn rejected_token_is_reported() {
    let (url, server) = serve_once(gzip_tar(&[("x", b"x")]));
    let setup = setup(&url, vec![cpu_slot()]);
    let mut task = spec("bad-token", &["/bin/true"]);
    task.context_path = Some("/context".to_owned());
    task.token = "wrong".to_owned();
    let (_handle, mut rx) = start(&setup, task);
    let error = exit_of(&until_exit(&mut rx).await).2.expect("error");
    assert!(error.contains("401"), "{error}");
    server.join().expect("server");
}

#[tokio::test]
async fn context_escaping_the_work_dir_is_refused() {
    let (url, server) = serve_once(gzip_tar(&[("ok.txt", b"fine"), ("../evil", b"pwned")]));
    let setup = setup(&url, vec![cpu_slot()]);
    let mut task = spec("evil-context", &["/bin/sh", "-c", "echo must not run"]);
    task.context_path = Some("/context".to_owned());
    let (_handle, mut rx) = start(&setup, task);
    let messages = until_exit(&mut rx).await;
    assert_eq!(messages.len(), 1, "the task must not start: {messages:?}");
    let error = exit_of(&messages).2.expect("error");
    assert!(error.contains("../evil") && error.contains(".."), "{error}");
    assert!(!setup.work_root.path().join("evil").exists());
    server.join().expect("server");
}

#[tokio::test]
async fn kill_during_context_fetch_does_not_wait_for_it() {
    // Never accepted: the kernel completes the TCP handshake from the backlog, and the request
    // then waits forever for an answer.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let setup = setup(&url, vec![cpu_slot()]);
    let mut task = spec("slow-context", &["/bin/true"]);
    task.context_path = Some("/context".to_owned());
    let (handle, mut rx) = start(&setup, task);
    tokio::time::sleep(Duration::from_millis(200)).await;
    handle.kill(Duration::from_secs(30));
    let messages = tokio::time::timeout(Duration::from_secs(3), until_exit(&mut rx)).await.expect("prompt exit");
    let error = exit_of(&messages).2.expect("error");
    assert!(error.contains("killed before"), "{error}");
    drop(listener);
}

/// Serves `body` (HTTP 200) to every request, one connection each, counting them.
fn serve_counting(body: Vec<u8>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if stream.read_exact(&mut byte).is_err() {
                    break;
                }
                head.push(byte[0]);
            }
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = stream.write_all(&body);
        }
    });
    (url, requests)
}

fn in_experiment(mut task: TaskSpec, experiment_id: i64) -> TaskSpec {
    task.context_path = Some(format!("/api/v1/experiments/{experiment_id}/context"));
    task
}

#[tokio::test]
async fn the_context_is_downloaded_and_unpacked_once_per_experiment() {
    let tarball = gzip_tar(&[("data/value.txt", b"7\n"), ("run.sh", b"cat data/value.txt\n")]);
    let (url, requests) = serve_counting(tarball);
    let setup = setup(&url, vec![cpu_slot()]);
    // Two tasks of one experiment at once; each changes its own copy.
    let script = "cat data/value.txt; echo changed > data/value.txt; cat data/value.txt";
    let (_a, mut rx_a) = start(&setup, in_experiment(spec("first", &["/bin/sh", "-c", script]), 1));
    let (_b, mut rx_b) = start(&setup, in_experiment(spec("second", &["/bin/sh", "-c", script]), 1));
    for rx in [&mut rx_a, &mut rx_b] {
        let messages = until_exit(rx).await;
        assert_eq!(exit_of(&messages), (Some(0), None, None), "{messages:?}");
        assert_eq!(stdout_text(&messages), ["7", "changed"]);
    }
    assert_eq!(requests.load(Ordering::SeqCst), 1, "one download for both tasks");
    assert_eq!(setup.config.contexts.unpack_count(), 1);

    // A later task of the experiment gets a fresh copy, still without a download.
    let (_c, mut rx_c) = start(&setup, in_experiment(spec("third", &["/bin/sh", "run.sh"]), 1));
    let messages = until_exit(&mut rx_c).await;
    assert_eq!(stdout_text(&messages), ["7"], "{messages:?}");
    assert_eq!(requests.load(Ordering::SeqCst), 1);

    // Another experiment has its own.
    let (_d, mut rx_d) = start(&setup, in_experiment(spec("other", &["/bin/sh", "run.sh"]), 2));
    let messages = until_exit(&mut rx_d).await;
    assert_eq!(stdout_text(&messages), ["7"], "{messages:?}");
    assert_eq!(requests.load(Ordering::SeqCst), 2);
    assert_eq!(setup.config.contexts.unpack_count(), 2);
    // Nothing is left behind but the unpacked trees.
    let mut cached: Vec<String> = std::fs::read_dir(setup.config.contexts.root())
        .expect("cache dir")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    cached.sort();
    assert_eq!(cached.len(), 2, "{cached:?}");
    // One tree per experiment, though the bytes are the same: `context-{path hash}-{sha256}`.
    assert!(cached.iter().all(|c| c.starts_with("context-")), "{cached:?}");
    assert_ne!(cached[0][..24], cached[1][..24], "{cached:?}");
    assert_eq!(cached[0][25..], cached[1][25..], "{cached:?}");
}

/// A gzip'd tar of one entry of another type than a file (written raw).
fn gzip_tar_with(path: &str, entry_type: tar::EntryType) -> Vec<u8> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(encoder);
    let mut ok = tar::Header::new_gnu();
    ok.as_old_mut().name[..6].copy_from_slice(b"ok.txt");
    ok.set_size(2);
    ok.set_mode(0o644);
    ok.set_cksum();
    builder.append(&ok, &b"ok"[..]).expect("append");
    let mut header = tar::Header::new_gnu();
    header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
    header.set_entry_type(entry_type);
    header.set_mode(0o644);
    header.set_size(0);
    header.set_cksum();
    builder.append(&header, &b""[..]).expect("append");
    builder.into_inner().expect("tar").finish().expect("gzip")
}

#[tokio::test]
async fn a_context_with_a_fifo_is_refused_naming_it() {
    let (url, requests) = serve_counting(gzip_tar_with("data/queue", tar::EntryType::Fifo));
    let setup = setup(&url, vec![cpu_slot()]);
    let task = in_experiment(spec("fifo", &["/bin/sh", "-c", "echo must not run"]), 3);
    let (_handle, mut rx) = start(&setup, task);
    let messages = until_exit(&mut rx).await;
    assert_eq!(messages.len(), 1, "the task must not start: {messages:?}");
    let error = exit_of(&messages).2.expect("error");
    assert!(error.contains("data/queue") && error.contains("fifo"), "{error}");
    // Refusals are not cached: the next task of the experiment tries again.
    let task = in_experiment(spec("fifo-again", &["/bin/true"]), 3);
    let (_handle, mut rx) = start(&setup, task);
    let error = exit_of(&until_exit(&mut rx).await).2.expect("error");
    assert!(error.contains("fifo"), "{error}");
    assert_eq!(requests.load(Ordering::SeqCst), 2);
    assert_eq!(setup.config.contexts.unpack_count(), 0);
    // No half-unpacked tree or downloaded tarball stays behind.
    let left: Vec<_> = std::fs::read_dir(setup.config.contexts.root()).expect("cache dir").collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn least_recently_used_contexts_are_evicted() {
    let (url, requests) = serve_counting(gzip_tar(&[("run.sh", b"echo ok\n")]));
    let work_root = tempfile::tempdir().expect("tempdir");
    let config = Arc::new(RunnerConfig {
        contexts: Arc::new(ContextCache::with_limits(work_root.path(), ExtractLimits::default(), 1)),
        ..RunnerConfig::new(&url, work_root.path(), vec![cpu_slot()])
    });
    let setup = Setup { work_root, config };
    for (allocation_id, experiment_id) in [("a", 1), ("b", 2), ("c", 1)] {
        let task = in_experiment(spec(allocation_id, &["/bin/sh", "run.sh"]), experiment_id);
        let (_handle, mut rx) = start(&setup, task);
        let messages = until_exit(&mut rx).await;
        assert_eq!(stdout_text(&messages), ["ok"], "{messages:?}");
    }
    // Keeping one, experiment 1 was evicted by experiment 2 and fetched again.
    assert_eq!(requests.load(Ordering::SeqCst), 3);
    let mut trees = Vec::new();
    for _ in 0..100 {
        trees = std::fs::read_dir(setup.config.contexts.root())
            .expect("cache dir")
            .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        if trees.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(trees.len(), 1, "{trees:?}");
    // Experiment 1's: its tree is named by the hash of its context path.
    let path_hash: String = {
        use sha2::Digest as _;
        sha2::Sha256::digest(b"/api/v1/experiments/1/context").iter().take(8).map(|b| format!("{b:02x}")).collect()
    };
    assert!(trees[0].starts_with(&format!("context-{path_hash}-")), "{trees:?}");
}
