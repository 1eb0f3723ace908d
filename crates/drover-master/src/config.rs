//! The master's configuration: what `drover master`, `up` and `run` (and the tests) decide
//! before it starts. Read by the control plane and the parameter database alike, and depending
//! on neither.

use std::path::PathBuf;
use std::time::Duration;

use drover_storage::StorageSpec;

use crate::secret::random_token;

/// How often agents send a heartbeat (told in the `Welcome`).
pub const HEARTBEAT_INTERVAL_MS: u64 = 5_000;
/// A connection silent this long (three heartbeats) is taken for dead and closed: a half-open
/// TCP connection (the agent's host lost power) must not hold the agent's id and slots forever.
pub const SILENCE_LIMIT: Duration = Duration::from_millis(3 * HEARTBEAT_INTERVAL_MS);

#[derive(Debug, Clone)]
pub struct MasterConfig {
    /// `sqlite:///path`, `sqlite::memory:` or `postgres://...`.
    pub db_url: String,
    /// Default root for checkpoint storage of experiments that name no path.
    pub checkpoint_root: PathBuf,
    /// Largest accepted context tarball, compressed.
    pub max_context_bytes: usize,
    /// Largest accepted context once unpacked.
    pub max_context_unpacked_bytes: u64,
    /// How long a disconnected agent's tasks are kept before they count as lost.
    pub agent_reconnect_wait: Duration,
    /// Where the parameter database keeps its blobs; by default the directory `params/` beside
    /// `checkpoint_root`, i.e. in the master's data directory (`drover master`, `up` and `run`
    /// put checkpoints in `DATA/checkpoints`). Not inside the checkpoint root: its top level is
    /// checkpoint ids, which the checkpoint collector deletes by name.
    pub param_storage: StorageSpec,
    /// Largest parameter version accepted (413 past it).
    pub max_param_bytes: u64,
    /// The cluster's join secret: an agent must present it to connect. `drover master`, `up`
    /// and `run` keep it in `DATA/join-token` (see [`crate::datadir`]); by default a fresh
    /// random one, which in-process tests read from here.
    pub join_token: String,
    /// Longest a checkpoint storage's creation-time probe may take before the experiment is
    /// refused.
    pub storage_probe_timeout: Duration,
    /// Host names a master bound to a non-loopback address answers (besides IP addresses,
    /// loopback names and the machine's own host name); see `guard.rs`.
    pub allowed_hosts: Vec<String>,
    /// An agent connection silent this long is closed (default [`SILENCE_LIMIT`]).
    pub agent_silence_limit: Duration,
    /// The resource pools (default: one, `default`, best fit, no preemption). Agents join one
    /// with `drover agent --pool`; experiments name one in `resources.resource_pool`.
    pub pools: Vec<drover_sched::Pool>,
}

/// One pool as a master's pools file spells it (`drover master --pools FILE`, a YAML list).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    /// `best_fit` (the default: packs work, keeps whole agents free for gangs) or `worst_fit`.
    #[serde(default = "best_fit")]
    pub fit: drover_sched::FitPolicy,
    /// Whether waiting work may preempt strictly lower-priority work (default no).
    #[serde(default)]
    pub preemption: bool,
    /// Seconds a preempted trial has to checkpoint and stop before it is killed.
    #[serde(default = "default_preemption_timeout")]
    pub preemption_timeout_s: u64,
    /// Zero-slot tasks (controllers, predictors) the pool runs at once.
    #[serde(default = "default_zero_slot_budget")]
    pub zero_slot_budget: u32,
}

fn best_fit() -> drover_sched::FitPolicy {
    drover_sched::FitPolicy::BestFit
}

fn default_preemption_timeout() -> u64 {
    drover_sched::Pool::new("x").preemption_timeout_ms / 1000
}

fn default_zero_slot_budget() -> u32 {
    drover_sched::Pool::new("x").zero_slot_budget
}

/// Most pools a master may have, and the longest preemption timeout (a day).
pub const MAX_POOLS: usize = 256;
pub const MAX_PREEMPTION_TIMEOUT_S: u64 = 86_400;

/// Reads a pools file: a YAML list of [`PoolConfig`]. Refused naming the entry and field.
pub fn parse_pools(text: &str) -> Result<Vec<drover_sched::Pool>, String> {
    if text.len() > drover_core::limits::MAX_CONFIG_BYTES {
        return Err(format!("the pools file is over {} bytes", drover_core::limits::MAX_CONFIG_BYTES));
    }
    let pools: Vec<PoolConfig> = serde_yaml::from_str(text).map_err(|e| format!("pools: {e}"))?;
    if pools.is_empty() || pools.len() > MAX_POOLS {
        return Err(format!("pools: between 1 and {MAX_POOLS} pools"));
    }
    let mut out = Vec::with_capacity(pools.len());
    for (i, p) in pools.into_iter().enumerate() {
        if p.name.is_empty() || p.name.len() > drover_api::agent::MAX_ID_LEN || p.name.chars().any(char::is_control) {
            return Err(format!("pools[{i}].name: 1 to {} bytes without control characters", drover_api::agent::MAX_ID_LEN));
        }
        if p.preemption_timeout_s > MAX_PREEMPTION_TIMEOUT_S {
            return Err(format!("pools[{i}].preemption_timeout_s: {} is over {MAX_PREEMPTION_TIMEOUT_S}", p.preemption_timeout_s));
        }
        if p.zero_slot_budget > drover_sched::MAX_MEMBERS {
            return Err(format!("pools[{i}].zero_slot_budget: {} is over {}", p.zero_slot_budget, drover_sched::MAX_MEMBERS));
        }
        let mut pool = drover_sched::Pool::new(p.name);
        pool.fit = p.fit;
        pool.preemption = p.preemption;
        pool.preemption_timeout_ms = p.preemption_timeout_s * 1000;
        pool.zero_slot_budget = p.zero_slot_budget;
        out.push(pool);
    }
    drover_sched::Scheduler::new(out.clone()).map_err(|e| e.to_string())?;
    Ok(out)
}

impl MasterConfig {
    pub fn new(db_url: impl Into<String>, checkpoint_root: impl Into<PathBuf>) -> MasterConfig {
        let checkpoint_root = checkpoint_root.into();
        MasterConfig {
            db_url: db_url.into(),
            param_storage: StorageSpec::directory(
                checkpoint_root.parent().map_or_else(|| checkpoint_root.join("params"), |data| data.join("params")),
            ),
            checkpoint_root,
            max_context_bytes: 96 * 1024 * 1024,
            max_context_unpacked_bytes: 512 * 1024 * 1024,
            agent_reconnect_wait: Duration::from_secs(25),
            max_param_bytes: 4 << 30,
            join_token: random_token(),
            storage_probe_timeout: Duration::from_secs(15),
            allowed_hosts: Vec::new(),
            agent_silence_limit: SILENCE_LIMIT,
            pools: vec![drover_sched::Pool::new(drover_core::config::DEFAULT_POOL)],
        }
    }
}
