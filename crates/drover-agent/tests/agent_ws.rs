//! The agent against a fake master: a websocket server on 127.0.0.1 driven by each test.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_agent::agent::{AgentConfig, AgentError, run_agent};
use drover_agent::runner::{MAX_LINE_BYTES, SPLIT_END_MARKER, SPLIT_START_MARKER};
use drover_api::agent::{AgentMessage, LogLine, MAX_MESSAGE_BYTES, MasterMessage, SlotKind, SlotSpec, TaskSpec};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(15);
const JOIN_TOKEN: &str = "s3cret-join-token";

type MasterSide = WebSocketStream<TcpStream>;

struct Harness {
    listener: TcpListener,
    shutdown: CancellationToken,
    agent: JoinHandle<Result<(), AgentError>>,
    _work_root: tempfile::TempDir,
}

async fn start_agent() -> Harness {
    start_agent_with_token(Some(JOIN_TOKEN)).await
}

async fn start_agent_with_token(join_token: Option<&str>) -> Harness {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let work_root = tempfile::tempdir().expect("tempdir");
    let config = AgentConfig {
        join_token: join_token.map(str::to_owned),
        pool: "default".into(),
        master_url: format!("http://{}", listener.local_addr().expect("addr")),
        agent_id: "agent-under-test".to_owned(),
        work_root: work_root.path().to_owned(),
        slots: vec![SlotSpec { id: "cpu0".to_owned(), kind: SlotKind::Cpu, device: "CPU".to_owned(), device_index: None, memory_mb: None }],
    };
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(run_agent(config, shutdown.clone()));
    Harness { listener, shutdown, agent, _work_root: work_root }
}

/// The master's side of the upgrade: the websocket limits of a real master, and the
/// `Authorization` header the agent sent.
async fn accept_upgrade(stream: TcpStream) -> (MasterSide, Option<String>) {
    let seen = Arc::new(Mutex::new(None));
    let record = seen.clone();
    // The callback's error type is tungstenite's, large or not.
    #[allow(clippy::result_large_err)]
    let callback = move |request: &Request, response: Response| {
        *record.lock().expect("lock") = request.headers().get("authorization").map(|value| value.to_str().expect("ascii").to_owned());
        Ok::<Response, ErrorResponse>(response)
    };
    let config = WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE_BYTES)).max_frame_size(Some(MAX_MESSAGE_BYTES));
    let socket = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await.expect("websocket handshake");
    let authorization = seen.lock().expect("lock").clone();
    (socket, authorization)
}

impl Harness {
    async fn accept(&self) -> MasterSide {
        let (stream, _) = tokio::time::timeout(TIMEOUT, self.listener.accept()).await.expect("the agent connects in time").expect("accept");
        let (socket, authorization) = accept_upgrade(stream).await;
        assert_eq!(authorization, Some(format!("Bearer {JOIN_TOKEN}")));
        socket
    }

    /// True if the agent opens no new connection within `wait`.
    async fn stays_connected(&self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.listener.accept()).await.is_err()
    }

    async fn stop(self) -> Result<(), AgentError> {
        self.shutdown.cancel();
        tokio::time::timeout(TIMEOUT, self.agent).await.expect("the agent stops in time").expect("agent task")
    }
}

async fn send(socket: &mut MasterSide, message: &MasterMessage) {
    let text = serde_json::to_string(message).expect("encode");
    socket.send(Message::text(text)).await.expect("send to agent");
}

/// The next agent message other than a heartbeat.
async fn recv(socket: &mut MasterSide) -> AgentMessage {
    loop {
        match recv_any(socket).await {
            AgentMessage::Heartbeat => continue,
            message => return message,
        }
    }
}

async fn recv_any(socket: &mut MasterSide) -> AgentMessage {
    loop {
        let frame = tokio::time::timeout(TIMEOUT, socket.next())
            .await
            .expect("a message from the agent in time")
            .expect("connection open")
            .expect("frame");
        if let Message::Text(text) = frame {
            return serde_json::from_str(&text).expect("a valid AgentMessage");
        }
    }
}

async fn recv_until_exit(socket: &mut MasterSide) -> Vec<AgentMessage> {
    let mut messages = Vec::new();
    loop {
        let message = recv(socket).await;
        let done = matches!(message, AgentMessage::TaskExited { .. });
        messages.push(message);
        if done {
            return messages;
        }
    }
}

fn task(allocation_id: &str, script: &str) -> TaskSpec {
    TaskSpec {
        allocation_id: allocation_id.to_owned(),
        labels: Default::default(),
        argv: vec!["/bin/sh".to_owned(), "-c".to_owned(), script.to_owned()],
        env: BTreeMap::new(),
        slot_ids: vec!["cpu0".to_owned()],
        context_path: None,
        token: "token".to_owned(),
    }
}

fn lines_of(messages: &[AgentMessage]) -> Vec<LogLine> {
    messages
        .iter()
        .flat_map(|m| match m {
            AgentMessage::TaskLogs { lines, .. } => lines.clone(),
            _ => Vec::new(),
        })
        .collect()
}

fn hello_running(message: AgentMessage) -> Vec<String> {
    hello_running_and_instance(message).0
}

fn hello_running_and_instance(message: AgentMessage) -> (Vec<String>, String) {
    match message {
        AgentMessage::Hello { agent_id, version, slots, running, hostname, instance, .. } => {
            assert_eq!(agent_id, "agent-under-test");
            assert_eq!(version, env!("CARGO_PKG_VERSION"));
            assert!(!hostname.is_empty());
            assert_eq!(slots.len(), 1);
            (running, instance)
        }
        other => panic!("expected Hello, got {other:?}"),
    }
}

#[tokio::test]
async fn runs_a_task_for_the_master() {
    let harness = start_agent().await;
    let mut master = harness.accept().await;
    assert_eq!(hello_running(recv(&mut master).await), Vec::<String>::new());

    send(&mut master, &MasterMessage::Welcome { heartbeat_interval_ms: 50 }).await;
    send(&mut master, &MasterMessage::StartTask(task("alloc-1", "echo hi; echo err >&2; exit 3"))).await;

    let mut messages = Vec::new();
    let mut heartbeats = 0;
    loop {
        match recv_any(&mut master).await {
            AgentMessage::Heartbeat => heartbeats += 1,
            message @ AgentMessage::TaskExited { .. } => {
                messages.push(message);
                break;
            }
            message => messages.push(message),
        }
    }
    assert!(matches!(&messages[0], AgentMessage::TaskStarted { allocation_id, .. } if allocation_id == "alloc-1"));
    let lines: Vec<(String, String)> = lines_of(&messages).into_iter().map(|l| (l.stream, l.line)).collect();
    assert!(lines.contains(&("stdout".to_owned(), "hi".to_owned())), "{lines:?}");
    assert!(lines.contains(&("stderr".to_owned(), "err".to_owned())), "{lines:?}");
    assert_eq!(
        messages.last(),
        Some(&AgentMessage::TaskExited { allocation_id: "alloc-1".to_owned(), exit_code: Some(3), signal: None, error: None })
    );

    // Heartbeats keep coming at the Welcome's interval.
    while heartbeats < 3 {
        if recv_any(&mut master).await == AgentMessage::Heartbeat {
            heartbeats += 1;
        }
    }
    harness.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn keeps_tasks_across_a_reconnect_and_delivers_buffered_output() {
    let harness = start_agent().await;
    let mut master = harness.accept().await;
    let (_, first_instance) = hello_running_and_instance(recv(&mut master).await);
    assert_eq!(first_instance.len(), 36, "a UUID: {first_instance}");
    send(&mut master, &MasterMessage::Welcome { heartbeat_interval_ms: 1000 }).await;
    send(&mut master, &MasterMessage::StartTask(task("survivor", "echo before; sleep 0.3; echo during; exec sleep 30"))).await;
    loop {
        if let AgentMessage::TaskLogs { lines, .. } = recv(&mut master).await
            && lines.iter().any(|l| l.line == "before")
        {
            break;
        }
    }
    // The master goes away, and stays away long enough for "during" to be printed meanwhile.
    drop(master);
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let mut master = harness.accept().await;
    let (running, instance) = hello_running_and_instance(recv(&mut master).await);
    assert_eq!(running, ["survivor"]);
    assert_eq!(instance, first_instance, "a reconnect of the same process");
    send(&mut master, &MasterMessage::Welcome { heartbeat_interval_ms: 1000 }).await;
    match recv(&mut master).await {
        AgentMessage::TaskLogs { allocation_id, lines } => {
            assert_eq!(allocation_id, "survivor");
            assert_eq!(lines.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(), ["during"]);
        }
        other => panic!("expected the buffered output, got {other:?}"),
    }

    send(&mut master, &MasterMessage::KillTask { allocation_id: "survivor".to_owned(), grace_ms: 0 }).await;
    let messages = recv_until_exit(&mut master).await;
    assert!(
        matches!(messages.last(), Some(AgentMessage::TaskExited { allocation_id, signal: Some(9), .. }) if allocation_id == "survivor"),
        "{messages:?}"
    );
    harness.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn exit_while_disconnected_is_reported_after_reconnecting() {
    let harness = start_agent().await;
    let mut master = harness.accept().await;
    hello_running(recv(&mut master).await);
    send(&mut master, &MasterMessage::Welcome { heartbeat_interval_ms: 1000 }).await;
    send(&mut master, &MasterMessage::StartTask(task("short", "sleep 0.3; exit 5"))).await;
    assert!(matches!(recv(&mut master).await, AgentMessage::TaskStarted { .. }));
    drop(master);
    tokio::time::sleep(Duration::from_millis(1000)).await;

    let mut master = harness.accept().await;
    // Its exit report is still undelivered, so the allocation is announced, then reported.
    assert_eq!(hello_running(recv(&mut master).await), ["short"]);
    send(&mut master, &MasterMessage::Welcome { heartbeat_interval_ms: 1000 }).await;
    let messages = recv_until_exit(&mut master).await;
    assert_eq!(
        messages.last(),
        Some(&AgentMessage::TaskExited { allocation_id: "short".to_owned(), exit_code: Some(5), signal: None, error: None })
    );
    harness.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn shutdown_kills_running_tasks_and_reports_them() {
    let harness = start_agent().await;
    let mut master = harness.accept().await;
    hello_running(recv(&mut master).await);
    send(&mut master, &MasterMessage::Welcome { heartbeat_interval_ms: 1000 }).await;
    let mut long_task = task("long", "");
    long_task.argv = vec!["sleep".to_owned(), "30".to_owned()];
    send(&mut master, &MasterMessage::StartTask(long_task)).await;
    assert!(matches!(recv(&mut master).await, AgentMessage::TaskStarted { .. }));

    harness.shutdown.cancel();
    let messages = recv_until_exit(&mut master).await;
    assert!(matches!(messages.last(), Some(AgentMessage::TaskExited { signal: Some(15), .. })), "sleep dies of the SIGTERM: {messages:?}");
    tokio::time::timeout(Duration::from_secs(5), harness.agent)
        .await
        .expect("the agent stops in time")
        .expect("agent task")
        .expect("clean shutdown");
}

#[tokio::test]
async fn kill_for_an_unknown_allocation_is_answered() {
    let harness = start_agent().await;
    let mut master = harness.accept().await;
    hello_running(recv(&mut master).await);
    send(&mut master, &MasterMessage::Welcome { heartbeat_interval_ms: 1000 }).await;
    send(&mut master, &MasterMessage::KillTask { allocation_id: "ghost".to_owned(), grace_ms: 1000 }).await;
    match recv(&mut master).await {
        AgentMessage::TaskExited { allocation_id, exit_code: None, signal: None, error: Some(error) } => {
            assert_eq!(allocation_id, "ghost");
            assert!(error.contains("no such task"), "{error}");
        }
        other => panic!("expected an error TaskExited, got {other:?}"),
    }
    harness.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn unreadable_master_messages_are_skipped() {
    let harness = start_agent().await;
    let mut master = harness.accept().await;
    hello_running(recv(&mut master).await);
    master.send(Message::text("{\"type\":\"from_the_future\"}")).await.expect("send");
    send(&mut master, &MasterMessage::Welcome { heartbeat_interval_ms: 1000 }).await;
    send(&mut master, &MasterMessage::StartTask(task("after-garbage", "exit 0"))).await;
    let messages = recv_until_exit(&mut master).await;
    assert!(matches!(messages.last(), Some(AgentMessage::TaskExited { exit_code: Some(0), .. })), "{messages:?}");
    harness.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn reject_ends_the_agent_with_an_error() {
    let harness = start_agent().await;
    let mut master = harness.accept().await;
    hello_running(recv(&mut master).await);
    send(&mut master, &MasterMessage::Reject { reason: "duplicate agent id".to_owned(), retry_after_ms: None }).await;
    let result = tokio::time::timeout(TIMEOUT, harness.agent).await.expect("the agent stops").expect("agent task");
    match result {
        Err(AgentError::Rejected { reason }) => assert_eq!(reason, "duplicate agent id"),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// A refusal that may pass (the id is held by a connection the master has not found dead yet)
/// makes the agent reconnect, not exit.
#[tokio::test]
async fn a_reject_with_retry_after_is_followed_by_a_reconnect() {
    let harness = start_agent().await;
    let mut master = harness.accept().await;
    hello_running(recv(&mut master).await);
    send(&mut master, &MasterMessage::Reject { reason: "agent id `agent-under-test` is in use".to_owned(), retry_after_ms: Some(100) })
        .await;
    let mut again = harness.accept().await;
    hello_running(recv(&mut again).await);
    assert!(!harness.agent.is_finished(), "the agent exited on a refusal that may pass");
    harness.shutdown.cancel();
}

#[tokio::test]
async fn retries_until_the_master_is_up() {
    // Reserve a port, then start the agent while nothing listens there.
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        probe.local_addr().expect("addr").port()
    };
    let work_root = tempfile::tempdir().expect("tempdir");
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(run_agent(
        AgentConfig {
            master_url: format!("http://127.0.0.1:{port}"),
            agent_id: "agent-under-test".to_owned(),
            work_root: work_root.path().to_owned(),
            slots: Vec::new(),
            join_token: None,
            pool: "default".into(),
        },
        shutdown.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("rebind the reserved port");
    let (stream, _) = tokio::time::timeout(TIMEOUT, listener.accept()).await.expect("agent retries").expect("accept");
    let mut master = tokio_tungstenite::accept_async(stream).await.expect("handshake");
    assert!(matches!(recv(&mut master).await, AgentMessage::Hello { .. }));
    shutdown.cancel();
    tokio::time::timeout(TIMEOUT, agent).await.expect("stops").expect("agent task").expect("clean shutdown");
}

#[tokio::test]
async fn invalid_master_url_is_an_error() {
    let work_root = tempfile::tempdir().expect("tempdir");
    let config = AgentConfig {
        master_url: "127.0.0.1:8080".to_owned(),
        agent_id: "a".to_owned(),
        work_root: work_root.path().to_owned(),
        slots: Vec::new(),
        join_token: None,
        pool: "default".into(),
    };
    let result = run_agent(config, CancellationToken::new()).await;
    assert!(matches!(result, Err(AgentError::InvalidMasterUrl { .. })), "{result:?}");
}

#[tokio::test]
async fn each_agent_process_has_its_own_instance() {
    let first = start_agent().await;
    let second = start_agent().await;
    let mut master = first.accept().await;
    let (_, one) = hello_running_and_instance(recv(&mut master).await);
    let mut other = second.accept().await;
    let (_, two) = hello_running_and_instance(recv(&mut other).await);
    assert_ne!(one, two);
    first.stop().await.expect("clean shutdown");
    second.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_refused_join_token_stops_the_agent_without_retrying() {
    for (token, status) in [(None, StatusCode::UNAUTHORIZED), (Some("wrong"), StatusCode::FORBIDDEN)] {
        let harness = start_agent_with_token(token).await;
        let (stream, _) = tokio::time::timeout(TIMEOUT, harness.listener.accept()).await.expect("the agent connects").expect("accept");
        let seen = Arc::new(Mutex::new(None));
        let record = seen.clone();
        #[allow(clippy::result_large_err)]
        let refuse = move |request: &Request, _response: Response| {
            *record.lock().expect("lock") = request.headers().get("authorization").map(|value| value.to_str().expect("ascii").to_owned());
            let mut refusal = ErrorResponse::new(Some("no".to_owned()));
            *refusal.status_mut() = status;
            Err(refusal)
        };
        assert!(tokio_tungstenite::accept_hdr_async(stream, refuse).await.is_err());
        assert_eq!(*seen.lock().expect("lock"), token.map(|token| format!("Bearer {token}")));
        let result = tokio::time::timeout(TIMEOUT, harness.agent).await.expect("the agent stops instead of retrying").expect("agent task");
        match result {
            Err(AgentError::Rejected { reason }) => {
                assert!(reason.contains("join token is missing or wrong"), "{reason}");
                assert!(reason.contains(status.as_str()), "{reason}");
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
        assert!(tokio::time::timeout(Duration::from_millis(1500), harness.listener.accept()).await.is_err(), "no second attempt");
    }
}

#[tokio::test]
async fn a_17_mb_line_arrives_in_fragments_without_a_reconnect() {
    const LINE_BYTES: usize = 17_000_000;
    let harness = start_agent().await;
    let mut master = harness.accept().await;
    hello_running(recv(&mut master).await);
    send(&mut master, &MasterMessage::Welcome { heartbeat_interval_ms: 200 }).await;
    send(
        &mut master,
        &MasterMessage::StartTask(task("huge-line", &format!("head -c {LINE_BYTES} /dev/zero | tr '\\0' x; echo; echo after"))),
    )
    .await;
    // The master's side reads with MAX_MESSAGE_BYTES limits: a larger frame fails `recv`.
    let messages = recv_until_exit(&mut master).await;
    assert!(matches!(messages.last(), Some(AgentMessage::TaskExited { exit_code: Some(0), .. })), "{:?}", messages.last());
    let lines: Vec<String> = lines_of(&messages).into_iter().filter(|l| l.stream == "stdout").map(|l| l.line).collect();
    assert!(lines.len() > LINE_BYTES / MAX_LINE_BYTES, "{} lines", lines.len());
    assert!(lines.iter().all(|line| line.len() <= MAX_LINE_BYTES));
    // Every cut is marked on both sides; dropping the markers gives back every byte.
    let (fragments, rest) = lines.split_at(lines.len() - 1);
    assert_eq!(rest, ["after"]);
    let mut joined = String::with_capacity(LINE_BYTES);
    for (i, fragment) in fragments.iter().enumerate() {
        let mut text = fragment.as_str();
        if i > 0 {
            text = text.strip_prefix(SPLIT_START_MARKER).unwrap_or_else(|| panic!("fragment {i} has no start marker"));
        }
        if i + 1 < fragments.len() {
            text = text.strip_suffix(SPLIT_END_MARKER).unwrap_or_else(|| panic!("fragment {i} has no end marker"));
        }
        joined.push_str(text);
    }
    assert_eq!(joined.len(), LINE_BYTES);
    assert!(joined.bytes().all(|byte| byte == b'x'));

    // Still the same connection, and the next task runs on it.
    assert!(harness.stays_connected(Duration::from_millis(300)).await);
    send(&mut master, &MasterMessage::StartTask(task("next", "echo next"))).await;
    let messages = recv_until_exit(&mut master).await;
    assert!(matches!(messages.last(), Some(AgentMessage::TaskExited { allocation_id, exit_code: Some(0), .. }) if allocation_id == "next"));
    assert!(lines_of(&messages).iter().any(|l| l.line == "next"));
    assert!(harness.stays_connected(Duration::from_millis(300)).await);
    harness.stop().await.expect("clean shutdown");
}
