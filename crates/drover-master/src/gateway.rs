//! The agent websocket: one connection per agent, JSON text frames of the protocol in
//! `drover_api::agent`. The first frame must be `hello`; after that the agent's messages go to
//! the control plane and the master's orders come back on the same socket.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use drover_api::agent::{AgentMessage, MasterMessage};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use crate::cluster::Master;

const HEARTBEAT_INTERVAL_MS: u64 = 5_000;
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn connect(State(master): State<Arc<Master>>, upgrade: WebSocketUpgrade) -> Response {
    upgrade.max_message_size(64 * 1024 * 1024).on_upgrade(move |socket| serve_agent(master, socket))
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
    let Ok(AgentMessage::Hello { agent_id, hostname, version, slots, running }) = hello else {
        let reject = MasterMessage::Reject { reason: "the first message must be a hello".into() };
        let _ = sink.send(encode(&reject)).await;
        return;
    };
    if agent_id.is_empty() || agent_id.len() > 128 {
        let _ = sink.send(encode(&MasterMessage::Reject { reason: "agent ids must be 1 to 128 characters".into() })).await;
        return;
    }
    let (sender, mut orders) = mpsc::unbounded_channel::<MasterMessage>();
    if sink.send(encode(&MasterMessage::Welcome { heartbeat_interval_ms: HEARTBEAT_INTERVAL_MS })).await.is_err() {
        return;
    }
    let connection = match master.agent_connected(&agent_id, hostname, version, slots, running, sender).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("agent {agent_id}: {}", e.body.message);
            return;
        }
    };
    tracing::info!("agent {agent_id} connected");
    loop {
        tokio::select! {
            frame = stream.next() => {
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
