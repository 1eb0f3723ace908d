//! The agent's websocket session with the master.
//!
//! Tasks outlive connections: when the websocket drops, tasks keep running, their messages are
//! buffered in a bounded outbox, and the agent reconnects with backoff and announces the
//! allocations it still holds in its `Hello` so that the master can reattach them.
//!
//! The agent proves it belongs to the cluster with the join secret ([`AgentConfig::join_token`],
//! sent as `Authorization: Bearer` on the upgrade request). A master answering the upgrade with
//! 401 or 403 has refused that secret: retrying cannot help, so the agent stops with
//! [`AgentError::Rejected`]. Every `Hello` of one [`run_agent`] call carries the same random
//! `instance`, which tells the master a reconnect of this process from another agent claiming
//! its id.
//!
//! No frame larger than [`MAX_MESSAGE_BYTES`] is ever sent (the master would drop the
//! connection, and the agent would resend it after reconnecting, forever): a `TaskLogs` too
//! large is split into several, a `TaskExited` error too long is shortened, and anything else
//! too large is dropped with a warning and an `agent` log line for its task.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use drover_api::agent::{AgentMessage, JOIN_TOKEN_ENV, LogLine, MAX_MESSAGE_BYTES, MasterMessage, SlotSpec, TaskSpec};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header::AUTHORIZATION};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::runner::{RunnerConfig, TaskHandle, spawn_task};

mod outbox;

use outbox::{Outbox, fit_frames};

pub const CONNECT_PATH: &str = "/api/v1/agents/connect";

const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A master that accepts the socket but never answers the `Hello` is as good as down.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// With no frame at all from the master for this many heartbeat intervals (but at least
/// [`MIN_SILENCE_LIMIT`]) the connection is considered dead. Each heartbeat goes with a ping,
/// so a live master always answers something; without this, a master that vanished without
/// closing TCP would only be noticed when the kernel gives up on the socket, many minutes later.
const SILENCE_HEARTBEATS: u32 = 3;
const MIN_SILENCE_LIMIT: Duration = Duration::from_secs(10);
/// Grace between SIGTERM and SIGKILL when the agent itself shuts down.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How long past [`SHUTDOWN_GRACE`] to wait for the tasks' exit reports before giving up.
const SHUTDOWN_REPORT_SLACK: Duration = Duration::from_secs(2);
/// Task messages kept while disconnected.
pub const OUTBOX_CAPACITY: usize = 10_000;
/// Bytes of log line text kept while disconnected; past it the oldest batches go.
pub const OUTBOX_LOG_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// `http://host:port` (or with a path prefix); the websocket URL is derived from it.
    pub master_url: String,
    pub agent_id: String,
    /// Tasks run in `<work_root>/<allocation_id>/`; created if missing.
    pub work_root: PathBuf,
    /// The slots, already discovered (see [`crate::slots::discover`]).
    pub slots: Vec<SlotSpec>,
    /// The cluster's join secret, sent as `Authorization: Bearer <token>` when connecting
    /// (`drover agent` reads it from `DROVER_JOIN_TOKEN`). `None`, or only whitespace, sends
    /// no header; surrounding whitespace is not part of the token.
    pub join_token: Option<String>,
    /// The resource pool the slots belong to (`drover agent --pool`).
    pub pool: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid master URL {url:?}: expected http://host:port")]
    InvalidMasterUrl { url: String },
    #[error("the master rejected this agent: {reason}")]
    Rejected { reason: String },
    #[error("the join token cannot be sent in an HTTP header (it has control characters)")]
    InvalidJoinToken,
    #[error("cannot create the work root {path}: {source}")]
    WorkRoot {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The websocket URL for a master URL: `http://h:p/prefix` -> `ws://h:p/prefix/api/v1/agents/connect`.
pub fn connect_url(master_url: &str) -> Result<String, AgentError> {
    let invalid = || AgentError::InvalidMasterUrl { url: master_url.to_owned() };
    let (scheme, rest) = if let Some(rest) = master_url.strip_prefix("http://") {
        ("ws", rest)
    } else if let Some(rest) = master_url.strip_prefix("https://") {
        ("wss", rest)
    } else {
        return Err(invalid());
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.starts_with('/') {
        return Err(invalid());
    }
    Ok(format!("{scheme}://{rest}{CONNECT_PATH}"))
}

/// Runs the agent until `shutdown` is cancelled (then kills all tasks and returns `Ok`) or the
/// master rejects it (then kills all tasks and returns the error). Connection failures are not
/// errors: the agent keeps retrying, with its tasks running.
pub async fn run_agent(config: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    let ws_url = connect_url(&config.master_url)?;
    let authorization = authorization_header(config.join_token.as_deref())?;
    tokio::fs::create_dir_all(&config.work_root).await.map_err(|source| AgentError::WorkRoot { path: config.work_root.clone(), source })?;
    let runner = RunnerConfig::new(config.master_url.clone(), config.work_root.clone(), config.slots.clone());
    // Unpacked contexts of an earlier agent process are not known to this one.
    runner.contexts.clear().await.map_err(|source| AgentError::WorkRoot { path: runner.contexts.root().to_owned(), source })?;
    let (task_tx, task_rx) = mpsc::unbounded_channel();
    let mut agent = Agent {
        runner: Arc::new(runner),
        hostname: hostname(),
        instance: uuid::Uuid::new_v4().to_string(),
        config,
        ws_url,
        authorization,
        tasks: HashMap::new(),
        outbox: Outbox::new(OUTBOX_CAPACITY, OUTBOX_LOG_BYTES),
        task_tx,
        task_rx,
        shutdown,
    };
    agent.run().await
}

/// The `Authorization` header for a join token, marked sensitive (never logged).
fn authorization_header(join_token: Option<&str>) -> Result<Option<HeaderValue>, AgentError> {
    let Some(token) = join_token.map(str::trim).filter(|token| !token.is_empty()) else {
        return Ok(None);
    };
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| AgentError::InvalidJoinToken)?;
    value.set_sensitive(true);
    Ok(Some(value))
}

/// The name this machine reports: `/etc/hostname`, else `$HOSTNAME`, else `localhost`.
pub fn hostname() -> String {
    let from_file = std::fs::read_to_string("/etc/hostname").ok().map(|name| name.trim().to_owned());
    let from_env = std::env::var("HOSTNAME").ok().map(|name| name.trim().to_owned());
    from_file.into_iter().chain(from_env).find(|name| !name.is_empty()).unwrap_or_else(|| "localhost".to_owned())
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

enum SessionEnd {
    Shutdown,
    Rejected(String),
    Lost { welcomed: bool, reason: String },
}

enum Connected {
    Socket(Box<Socket>),
    /// Could not connect; worth retrying.
    Failed(String),
    /// The master refused the upgrade (401/403): retrying cannot help.
    Refused(String),
    Shutdown,
}

struct Agent {
    config: AgentConfig,
    ws_url: String,
    /// `Authorization: Bearer <join token>`, if there is a token.
    authorization: Option<HeaderValue>,
    hostname: String,
    /// Random, once per `run_agent`: sent in every `Hello` of this process.
    instance: String,
    runner: Arc<RunnerConfig>,
    /// Tasks whose `TaskExited` has not yet come out of `task_rx`.
    tasks: HashMap<String, TaskHandle>,
    outbox: Outbox,
    /// Cloned into every task; the agent holds one, so `task_rx` never reports closed.
    task_tx: mpsc::UnboundedSender<AgentMessage>,
    task_rx: mpsc::UnboundedReceiver<AgentMessage>,
    shutdown: CancellationToken,
}

impl Agent {
    async fn run(&mut self) -> Result<(), AgentError> {
        let mut backoff = INITIAL_BACKOFF;
        while !self.shutdown.is_cancelled() {
            match self.connect().await {
                Connected::Socket(socket) => match self.session(*socket).await {
                    SessionEnd::Shutdown => return Ok(()),
                    SessionEnd::Rejected(reason) => {
                        tracing::error!(%reason, "the master rejected this agent");
                        self.stop_all_tasks().await;
                        return Err(AgentError::Rejected { reason });
                    }
                    SessionEnd::Lost { welcomed, reason } => {
                        tracing::warn!(%reason, tasks = self.tasks.len(), "lost the master; reconnecting");
                        if welcomed {
                            backoff = INITIAL_BACKOFF;
                        }
                    }
                },
                Connected::Failed(reason) => {
                    tracing::warn!(url = %self.ws_url, %reason, "cannot connect to the master")
                }
                Connected::Refused(reason) => {
                    tracing::error!(url = %self.ws_url, %reason, "the master refused this agent");
                    self.stop_all_tasks().await;
                    return Err(AgentError::Rejected { reason });
                }
                Connected::Shutdown => break,
            }
            if !self.wait_buffering(backoff).await {
                break;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        self.stop_all_tasks().await;
        Ok(())
    }

    /// Takes a message from a task: forgets tasks that exited, and queues the message.
    fn absorb(&mut self, message: AgentMessage) {
        if let AgentMessage::TaskExited { allocation_id, .. } = &message {
            self.tasks.remove(allocation_id);
        }
        self.outbox.push(message);
    }

    /// Connects, buffering task messages meanwhile.
    async fn connect(&mut self) -> Connected {
        // Built afresh each time: the upgrade request carries a random key.
        let mut request = match self.ws_url.as_str().into_client_request() {
            Ok(request) => request,
            Err(error) => return Connected::Failed(error.to_string()),
        };
        if let Some(authorization) = &self.authorization {
            request.headers_mut().insert(AUTHORIZATION, authorization.clone());
        }
        let config = WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE_BYTES)).max_frame_size(Some(MAX_MESSAGE_BYTES));
        let connecting = tokio::time::timeout(
            CONNECT_TIMEOUT,
            // Task messages are small frames sent back to back; with Nagle on, each one after the
            // first waits for the master's delayed ACK (~40 ms).
            tokio_tungstenite::connect_async_with_config(request, Some(config), true),
        );
        tokio::pin!(connecting);
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return Connected::Shutdown,
                result = &mut connecting => return match result {
                    Ok(Ok((socket, _response))) => Connected::Socket(Box::new(socket)),
                    Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response)))
                        if matches!(response.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) =>
                    {
                        let said = response
                            .body()
                            .as_deref()
                            .and_then(|body| serde_json::from_slice::<serde_json::Value>(body).ok())
                            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned));
                        Connected::Refused(self.refusal(response.status(), said))
                    }
                    Ok(Err(error)) => Connected::Failed(error.to_string()),
                    Err(_) => Connected::Failed(format!("no connection within {CONNECT_TIMEOUT:?}")),
                },
                Some(message) = self.task_rx.recv() => self.absorb(message),
            }
        }
    }

    /// Why the master refused the upgrade: its own words when it gave them (a wrong join
    /// token, or a host name it does not answer), with what this agent sent.
    fn refusal(&self, status: StatusCode, said: Option<String>) -> String {
        let sent = if self.authorization.is_some() { "this agent sent a join token" } else { "this agent sent no join token" };
        match said {
            Some(message) => format!("the master answered {status} to the connection: {message} ({sent})"),
            None => format!(
                "the master answered {status} to the connection: the join token is missing or wrong \
                 ({sent}; give the agent the cluster's join secret in {JOIN_TOKEN_ENV})"
            ),
        }
    }

    /// Waits `duration`, buffering task messages meanwhile. False on shutdown.
    async fn wait_buffering(&mut self, duration: Duration) -> bool {
        let deadline = Instant::now() + duration;
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return false,
                () = tokio::time::sleep_until(deadline) => return true,
                Some(message) = self.task_rx.recv() => self.absorb(message),
            }
        }
    }

    /// Allocations the master should consider alive here: running tasks, and tasks whose exit
    /// report still sits in the outbox (it follows right after the `Hello`).
    fn running_allocations(&self) -> Vec<String> {
        let mut running: BTreeSet<String> = self.tasks.keys().cloned().collect();
        running.extend(self.outbox.exited_allocations());
        running.into_iter().collect()
    }

    async fn session(&mut self, mut socket: Socket) -> SessionEnd {
        let hello = AgentMessage::Hello {
            agent_id: self.config.agent_id.clone(),
            hostname: self.hostname.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            slots: self.config.slots.clone(),
            running: self.running_allocations(),
            instance: self.instance.clone(),
            pool: self.config.pool.clone(),
        };
        if let Err(reason) = send(&mut socket, &hello).await {
            return SessionEnd::Lost { welcomed: false, reason };
        }
        tracing::info!(url = %self.ws_url, "connected to the master");

        let mut welcomed = false;
        let mut last_frame_at = Instant::now();
        let mut silence_limit = WELCOME_TIMEOUT;
        // Replaced by the master's interval on Welcome; until then only the silence check runs.
        let mut heartbeat = tokio::time::interval(WELCOME_TIMEOUT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.reset();
        let lost = |welcomed: bool, reason: String| SessionEnd::Lost { welcomed, reason };
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => {
                    self.shut_down_connected(socket, welcomed).await;
                    return SessionEnd::Shutdown;
                }
                frame = socket.next() => {
                    last_frame_at = Instant::now();
                    let text = match frame {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Close(close))) => {
                            return lost(welcomed, format!("the master closed the connection ({close:?})"));
                        }
                        // Pings are answered by tungstenite itself; pongs only prove liveness.
                        Some(Ok(_)) => continue,
                        Some(Err(error)) => return lost(welcomed, error.to_string()),
                        None => return lost(welcomed, "the connection ended".to_owned()),
                    };
                    let message = match serde_json::from_str::<MasterMessage>(&text) {
                        Ok(message) => message,
                        Err(error) => {
                            // A newer master may send what this agent does not know; skipping it
                            // beats dropping the connection in a loop.
                            tracing::warn!(%error, frame = %text, "ignoring an unreadable message from the master");
                            continue;
                        }
                    };
                    match message {
                        MasterMessage::Welcome { heartbeat_interval_ms } => {
                            let interval = Duration::from_millis(heartbeat_interval_ms.max(1));
                            heartbeat = tokio::time::interval(interval);
                            heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                            silence_limit = (interval * SILENCE_HEARTBEATS).max(MIN_SILENCE_LIMIT);
                            welcomed = true;
                            tracing::info!(?interval, "welcomed by the master");
                            if let Err(reason) = self.flush_outbox(&mut socket).await {
                                return lost(welcomed, reason);
                            }
                        }
                        MasterMessage::StartTask(spec) => self.start_task(spec),
                        MasterMessage::KillTask { allocation_id, grace_ms } => {
                            self.kill_task(&allocation_id, Duration::from_millis(grace_ms));
                            // An unknown allocation is answered from here, not by a task.
                            if welcomed && let Err(reason) = self.flush_outbox(&mut socket).await {
                                return lost(welcomed, reason);
                            }
                        }
                        MasterMessage::Reject { reason, retry_after_ms: None } => {
                            let _ = socket.close(None).await;
                            return SessionEnd::Rejected(reason);
                        }
                        // A refusal that may pass (our id still held by a connection the
                        // master has not found dead yet): the usual reconnect backoff.
                        MasterMessage::Reject { reason, retry_after_ms: Some(_) } => {
                            let _ = socket.close(None).await;
                            return lost(welcomed, format!("the master refused this agent for now: {reason}"));
                        }
                    }
                }
                Some(message) = self.task_rx.recv() => {
                    self.absorb(message);
                    if welcomed && let Err(reason) = self.flush_outbox(&mut socket).await {
                        return lost(welcomed, reason);
                    }
                }
                _ = heartbeat.tick() => {
                    if last_frame_at.elapsed() > silence_limit {
                        let what = if welcomed { "nothing from the master" } else { "no Welcome" };
                        return lost(welcomed, format!("{what} for {silence_limit:?}"));
                    }
                    if welcomed {
                        if let Err(reason) = send(&mut socket, &AgentMessage::Heartbeat).await {
                            return lost(welcomed, reason);
                        }
                        if let Err(error) = socket.send(Message::Ping(Default::default())).await {
                            return lost(welcomed, error.to_string());
                        }
                    }
                }
            }
        }
    }

    fn start_task(&mut self, spec: TaskSpec) {
        if self.tasks.contains_key(&spec.allocation_id) {
            // A repeated StartTask (e.g. resent around a reconnect) must not start a second
            // process for the same allocation.
            tracing::warn!(allocation_id = %spec.allocation_id, "ignoring StartTask for an allocation already running");
            return;
        }
        tracing::info!(allocation_id = %spec.allocation_id, argv = ?spec.argv, "starting task");
        let handle = spawn_task(self.runner.clone(), spec, self.task_tx.clone());
        self.tasks.insert(handle.allocation_id().to_owned(), handle);
    }

    fn kill_task(&mut self, allocation_id: &str, grace: Duration) {
        match self.tasks.get(allocation_id) {
            Some(handle) => {
                tracing::info!(%allocation_id, ?grace, "killing task");
                handle.kill(grace);
            }
            None => {
                // The master believes it runs here but it does not (e.g. the agent restarted):
                // saying so lets the master release the allocation instead of waiting forever.
                tracing::warn!(%allocation_id, "KillTask for an allocation not running here");
                self.outbox.push(AgentMessage::TaskExited {
                    allocation_id: allocation_id.to_owned(),
                    exit_code: None,
                    signal: None,
                    error: Some("no such task on this agent".to_owned()),
                });
            }
        }
    }

    /// Sends everything queued, oldest first, each message in frames that fit
    /// [`MAX_MESSAGE_BYTES`]. What fails to send goes back to the front of the queue.
    async fn flush_outbox(&mut self, socket: &mut Socket) -> Result<(), String> {
        self.outbox.add_drop_notices();
        while let Some(message) = self.outbox.pop() {
            let frames = match fit_frames(message, MAX_MESSAGE_BYTES) {
                Ok(frames) => frames,
                Err(unsendable) => {
                    tracing::warn!(bytes = unsendable.bytes, kind = unsendable.kind, "dropping a message larger than the websocket limit");
                    if let Some(allocation_id) = unsendable.allocation_id {
                        self.outbox.push_front(AgentMessage::TaskLogs {
                            allocation_id,
                            lines: vec![agent_line(format!(
                                "the agent dropped a {} message of {} bytes: it exceeds the \
                                 {MAX_MESSAGE_BYTES}-byte message limit",
                                unsendable.kind, unsendable.bytes
                            ))],
                        });
                    }
                    continue;
                }
            };
            let mut frames = frames.into_iter();
            while let Some((message, text)) = frames.next() {
                if let Err(error) = socket.send(Message::text(text)).await {
                    let unsent: Vec<AgentMessage> = std::iter::once(message).chain(frames.map(|(message, _)| message)).collect();
                    for message in unsent.into_iter().rev() {
                        self.outbox.push_front(message);
                    }
                    return Err(error.to_string());
                }
            }
        }
        Ok(())
    }

    /// Shutdown while connected: kill every task and forward their exit reports to the master
    /// before closing.
    async fn shut_down_connected(&mut self, mut socket: Socket, welcomed: bool) {
        let mut connected = welcomed;
        self.kill_all(SHUTDOWN_GRACE);
        let deadline = Instant::now() + SHUTDOWN_GRACE + SHUTDOWN_REPORT_SLACK;
        if connected && self.flush_outbox(&mut socket).await.is_err() {
            connected = false;
        }
        while !self.tasks.is_empty() {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                Some(message) = self.task_rx.recv() => {
                    self.absorb(message);
                    if connected && self.flush_outbox(&mut socket).await.is_err() {
                        connected = false;
                    }
                }
            }
        }
        self.warn_unreported();
        let _ = socket.close(None).await;
    }

    /// Kills every task and waits for their exit reports (without a connection to send them).
    async fn stop_all_tasks(&mut self) {
        self.kill_all(SHUTDOWN_GRACE);
        let deadline = Instant::now() + SHUTDOWN_GRACE + SHUTDOWN_REPORT_SLACK;
        while !self.tasks.is_empty() {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                Some(message) = self.task_rx.recv() => self.absorb(message),
            }
        }
        self.warn_unreported();
    }

    fn kill_all(&self, grace: Duration) {
        if !self.tasks.is_empty() {
            tracing::info!(tasks = self.tasks.len(), ?grace, "shutting down: killing all tasks");
        }
        for handle in self.tasks.values() {
            handle.kill(grace);
        }
    }

    fn warn_unreported(&self) {
        for allocation_id in self.tasks.keys() {
            tracing::warn!(%allocation_id, "task did not report its exit before the agent stopped");
        }
    }
}

/// Sends one message that is not a task's (a `Hello`, a `Heartbeat`); never a frame above
/// [`MAX_MESSAGE_BYTES`].
async fn send(socket: &mut Socket, message: &AgentMessage) -> Result<(), String> {
    let text = serde_json::to_string(message).map_err(|error| format!("cannot encode a {} message: {error}", kind(message)))?;
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(format!("a {} message of {} bytes exceeds the {MAX_MESSAGE_BYTES}-byte message limit", kind(message), text.len()));
    }
    socket.send(Message::text(text)).await.map_err(|error| error.to_string())
}

fn kind(message: &AgentMessage) -> &'static str {
    match message {
        AgentMessage::Hello { .. } => "Hello",
        AgentMessage::Heartbeat => "Heartbeat",
        AgentMessage::TaskStarted { .. } => "TaskStarted",
        AgentMessage::TaskLogs { .. } => "TaskLogs",
        AgentMessage::TaskExited { .. } => "TaskExited",
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_millis() as i64)
}

fn agent_line(line: String) -> LogLine {
    LogLine { ts_ms: now_ms(), stream: "agent".to_owned(), line }
}

#[cfg(test)]
mod tests;
