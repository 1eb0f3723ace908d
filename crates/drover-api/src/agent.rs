//! Master <-> agent protocol: JSON text frames on one websocket per agent at
//! `/api/v1/agents/connect`. The agent decides nothing: it reports what it has and what runs, and
//! obeys. Every task message carries its allocation id, so a message about a stale allocation
//! can be recognised and refused.
//!
//! An agent proves it belongs to the cluster with the cluster's join secret, sent as
//! `Authorization: Bearer <secret>` on the websocket upgrade request; without it the master
//! answers 401 before any frame is exchanged.

/// Most slots one agent may announce.
pub const MAX_SLOTS: usize = 4096;
/// Longest agent id, host name, version or slot field (bytes).
pub const MAX_ID_LEN: usize = 128;
/// Most allocations an agent may list as running in its hello.
pub const MAX_RUNNING: usize = 4096;
/// Largest websocket message either side sends or accepts (bytes). Log batches are cut well
/// below it.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Environment variable holding the cluster's join secret for `drover agent`.
pub const JOIN_TOKEN_ENV: &str = "DROVER_JOIN_TOKEN";

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The pool of an agent that names none (`drover_core::config::DEFAULT_POOL`).
pub const DEFAULT_POOL: &str = "default";

fn default_pool() -> String {
    DEFAULT_POOL.into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotKind {
    Cpu,
    Cuda,
}

/// One schedulable unit on an agent. Several slots may share a GPU (`--slots-per-gpu`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotSpec {
    /// Unique within the agent, e.g. `cpu0`, `gpu1`, `gpu1.2`.
    pub id: String,
    pub kind: SlotKind,
    /// Human-readable device name (GPU model, or "CPU").
    pub device: String,
    /// For CUDA slots, the index (or UUID) that goes into `CUDA_VISIBLE_DEVICES`.
    #[serde(default)]
    pub device_index: Option<String>,
    #[serde(default)]
    pub memory_mb: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    /// First frame after connecting. `running` lists allocations still alive from before a
    /// reconnect, so the master can reattach them.
    Hello {
        agent_id: String,
        hostname: String,
        version: String,
        slots: Vec<SlotSpec>,
        running: Vec<String>,
        /// Random, chosen once per agent process. A connection claiming the id of an agent that
        /// is connected is refused unless it is that same process reconnecting (same
        /// instance), so no one can take over a live agent's id and its trials.
        #[serde(default)]
        instance: String,
        /// The resource pool this agent's slots belong to (`drover agent --pool`).
        #[serde(default = "default_pool")]
        pool: String,
    },
    Heartbeat,
    TaskStarted {
        allocation_id: String,
        pid: u32,
    },
    TaskLogs {
        allocation_id: String,
        lines: Vec<LogLine>,
    },
    /// The process ended (or never started: `error` says why).
    TaskExited {
        allocation_id: String,
        exit_code: Option<i32>,
        signal: Option<i32>,
        error: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MasterMessage {
    Welcome {
        heartbeat_interval_ms: u64,
    },
    StartTask(TaskSpec),
    /// Stop a task: SIGTERM to its process group, then SIGKILL after `grace_ms`
    /// (`grace_ms = 0` kills at once).
    KillTask {
        allocation_id: String,
        grace_ms: u64,
    },
    /// The master refuses this agent. Without `retry_after_ms` the agent should exit (a wrong
    /// protocol, a hello out of bounds); with it, the refusal may pass (its id is held by a
    /// connection the master has not yet found dead) and the agent tries again after that long.
    Reject {
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The task's id: one member of an allocation (a gang of one is the allocation itself).
    pub allocation_id: String,
    /// What the task is, for people and logs (`kind: trial`, `experiment`, `trial`, `rank`);
    /// the agent runs every kind of task alike and never reads them.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub slot_ids: Vec<String>,
    /// Where to fetch the experiment's context tarball (gzip), relative to the master URL;
    /// authenticated with the task's token. `None` when the experiment has no context.
    pub context_path: Option<String>,
    pub token: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogLine {
    /// Milliseconds since the Unix epoch, taken when the agent read the line.
    pub ts_ms: i64,
    /// `stdout`, `stderr` or `agent`.
    pub stream: String,
    pub line: String,
}
