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
        }
    }
}
