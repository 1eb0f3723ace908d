//! The agent websocket: one connection per agent, JSON text frames of the protocol in
//! `drover_api::agent`. The first frame must be `hello`; after that the agent's messages go to
//! the control plane and the master's orders come back on the same socket.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use drover_api::agent::{AgentMessage, MAX_ID_LEN, MAX_MESSAGE_BYTES, MAX_RUNNING, MAX_SLOTS, MasterMessage, SlotSpec};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use crate::cluster::Master;
use crate::error::Error;
use crate::secret::constant_time_eq;

use crate::config::HEARTBEAT_INTERVAL_MS;
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The upgrade is refused (401) unless it carries the cluster's join secret: tasks carry trial
/// tokens, environments and storage secrets, and only members of the cluster may receive them.
pub async fn connect(State(master): State<Arc<Master>>, headers: HeaderMap, upgrade: WebSocketUpgrade) -> Response {
    let presented =
        headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
    match presented {
        None => {
            return Error::unauthorized("an agent must present the cluster's join token (Authorization: Bearer ...)").into_response();
        }
        Some(token) if !constant_time_eq(token.as_bytes(), master.config.join_token.as_bytes()) => {
            tracing::warn!("an agent presented a wrong join token");
            return Error::unauthorized("wrong join token").into_response();
        }
        Some(_) => {}
    }
    upgrade.max_message_size(MAX_MESSAGE_BYTES).max_frame_size(MAX_MESSAGE_BYTES).on_upgrade(move |socket| serve_agent(master, socket))
}

/// What a hello may announce: bounded, so one frame cannot make the master hold or scan
/// millions of slots.
fn check_hello(
    agent_id: &str,
    hostname: &str,
    version: &str,
    slots: &[SlotSpec],
    running: &[String],
    instance: &str,
    pool: &str,
) -> Result<(), String> {
    let text_ok = |s: &str| s.len() <= MAX_ID_LEN && !s.chars().any(char::is_control);
    if agent_id.is_empty() || !text_ok(agent_id) {
        return Err(format!("agent ids must be 1 to {MAX_ID_LEN} bytes without control characters"));
    }
    if !text_ok(hostname) || !text_ok(version) || !text_ok(instance) || !text_ok(pool) {
        return Err(format!("hostname, version, instance and pool must be at most {MAX_ID_LEN} bytes without control characters"));
    }
    if slots.len() > MAX_SLOTS {
        return Err(format!("{} slots announced; an agent may have at most {MAX_SLOTS}", slots.len()));
    }
    let mut ids = std::collections::HashSet::new();
    for s in slots {
        if s.id.is_empty() || !text_ok(&s.id) || !text_ok(&s.device) || s.device_index.as_deref().is_some_and(|d| !text_ok(d)) {
            return Err(format!("slot fields must be 1 to {MAX_ID_LEN} bytes without control characters"));
        }
        if !ids.insert(s.id.as_str()) {
            return Err(format!("slot id `{}` is announced twice", s.id));
        }
    }
    if running.len() > MAX_RUNNING || running.iter().any(|r| !text_ok(r)) {
        return Err(format!("at most {MAX_RUNNING} running allocations, each at most {MAX_ID_LEN} bytes"));
    }
    Ok(())
}

fn encode(message: &MasterMessage) -> Message {
    Message::Text(serde_json::to_string(message).expect("protocol messages serialise").into())
}

async fn serve_agent(master: Arc<Master>, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, stream.next()).await {
        Ok(Some(Ok(Message::Text(text)))) => serde_json::from_str::<AgentMessage>(&text),
        _ => {
            tracing::warn!("an agent connected but sent no hello");
            return;
        }
    };
    let Ok(AgentMessage::Hello { agent_id, hostname, version, slots, running, instance, pool }) = hello else {
        let reject = MasterMessage::Reject { reason: "the first message must be a hello".into(), retry_after_ms: None };
        let _ = sink.send(encode(&reject)).await;
        return;
    };
    if let Err(reason) = check_hello(&agent_id, &hostname, &version, &slots, &running, &instance, &pool) {
        tracing::warn!("refused an agent's hello: {reason}");
        let _ = sink.send(encode(&MasterMessage::Reject { reason, retry_after_ms: None })).await;
        return;
    }
    let (sender, mut orders) = mpsc::unbounded_channel::<MasterMessage>();
    let hello = crate::cluster::AgentHello { hostname, version, slots, running, instance, pool };
    // Registered before the welcome: a refused claim (the id of a live agent) gets a Reject,
    // never a Welcome followed by tasks.
    let connection = match master.agent_connected(&agent_id, hello, sender).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("agent {agent_id}: {}", e.body.message);
            // A conflict may pass: the id may be held by a connection not yet found dead (see
            // `MasterConfig::agent_silence_limit`), or a slot it dropped by work still ending.
            // Anything else (an unknown pool) will not, and the agent stops.
            let retry_after_ms = (e.kind == crate::error::ErrorKind::Conflict).then_some(HEARTBEAT_INTERVAL_MS);
            let reject = MasterMessage::Reject { reason: e.body.message, retry_after_ms };
            let _ = sink.send(encode(&reject)).await;
            return;
        }
    };
    if sink.send(encode(&MasterMessage::Welcome { heartbeat_interval_ms: HEARTBEAT_INTERVAL_MS })).await.is_err() {
        master.agent_disconnected(&agent_id, connection).await;
        return;
    }
    tracing::info!("agent {agent_id} connected");
    let mut last_frame = tokio::time::Instant::now();
    let silence_limit = master.config.agent_silence_limit;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(last_frame + silence_limit) => {
                tracing::warn!("agent {agent_id} was silent for {silence_limit:?}; closing its connection");
                break;
            }
            frame = stream.next() => {
                last_frame = tokio::time::Instant::now();
                let text = match frame {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Binary(_))) => continue,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                };
                match serde_json::from_str::<AgentMessage>(&text) {
                    Ok(message) => {
                        if let Err(e) = master.agent_message(&agent_id, connection, message).await {
                            tracing::error!("agent {agent_id}: {}", e.body.message);
                        }
                    }
                    Err(e) => tracing::warn!("agent {agent_id} sent an unreadable message: {e}"),
                }
            }
            order = orders.recv() => {
                let Some(order) = order else { break };
                if sink.send(encode(&order)).await.is_err() {
                    break;
                }
            }
            _ = master.shutdown.cancelled() => {
                let _ = sink.send(Message::Close(None)).await;
                break;
            }
        }
    }
    tracing::info!("agent {agent_id} disconnected");
    master.agent_disconnected(&agent_id, connection).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_api::agent::SlotKind;

    fn slot(id: &str) -> SlotSpec {
        SlotSpec { id: id.into(), kind: SlotKind::Cpu, device: "CPU".into(), device_index: None, memory_mb: None }
    }

    #[test]
    fn hellos_are_bounded() {
        let ok = |slots: &[SlotSpec], running: &[String]| check_hello("agent-1", "host", "0.1.0", slots, running, "instance", "default");
        assert!(ok(&[slot("cpu0"), slot("cpu1")], &[]).is_ok());
        let many: Vec<SlotSpec> = (0..200_000).map(|i| slot(&format!("cpu{i}"))).collect();
        assert!(ok(&many, &[]).unwrap_err().contains("at most 4096"));
        assert!(ok(&[slot("cpu0"), slot("cpu0")], &[]).unwrap_err().contains("twice"));
        assert!(ok(&[slot("")], &[]).is_err());
        let running: Vec<String> = (0..5000).map(|i| i.to_string()).collect();
        assert!(ok(&[], &running).is_err());
        assert!(check_hello("", "h", "v", &[], &[], "i", "default").is_err());
        assert!(check_hello(&"x".repeat(129), "h", "v", &[], &[], "i", "default").is_err());
        assert!(check_hello("a\u{1b}[31m", "h", "v", &[], &[], "i", "default").is_err());
        assert!(check_hello("a", &"h".repeat(1000), "v", &[], &[], "i", "default").is_err());
        assert!(check_hello("a", "h", "v", &[], &[], "i", &"p".repeat(129)).is_err());
    }
}
