//! The wire types of drover: REST request and response bodies (with their OpenAPI schemas) and
//! the messages between master and agent over the agent websocket.
//!
//! Clients (the CLI, the SDK, the agent) depend on this crate and not on the master, so a type
//! that crosses the wire is defined once and only here.

pub mod agent;
pub mod context;
pub mod rest;

/// Environment variables the agent sets for every task; the SDK reads them.
pub mod env {
    pub const MASTER: &str = "DROVER_MASTER";
    pub const EXPERIMENT_ID: &str = "DROVER_EXPERIMENT_ID";
    pub const TRIAL_ID: &str = "DROVER_TRIAL_ID";
    pub const ALLOCATION_ID: &str = "DROVER_ALLOCATION_ID";
    pub const TRIAL_TOKEN: &str = "DROVER_TRIAL_TOKEN";
    pub const HPARAMS: &str = "DROVER_HPARAMS";
    pub const TRIAL_SEED: &str = "DROVER_TRIAL_SEED";
    /// For file-system storages: the directory checkpoints go in (`{dir}/{uuid}/...`).
    pub const CHECKPOINT_DIR: &str = "DROVER_CHECKPOINT_DIR";
    /// The experiment's checkpoint storage as JSON (`drover_storage::StorageSpec`), for every
    /// kind; the SDK uses it when there is no `CHECKPOINT_DIR` (S3).
    pub const CHECKPOINT_STORAGE: &str = "DROVER_CHECKPOINT_STORAGE";
    /// `1`: fsync checkpoints on a file-system storage before registering them.
    pub const CHECKPOINT_FSYNC: &str = "DROVER_CHECKPOINT_FSYNC";
    pub const LATEST_CHECKPOINT: &str = "DROVER_LATEST_CHECKPOINT";
    pub const SEARCHER_METRIC: &str = "DROVER_SEARCHER_METRIC";
    pub const SLOT_IDS: &str = "DROVER_SLOT_IDS";
    /// This member's rank in its gang, 0-based (0 for a task of one).
    pub const RANK: &str = "DROVER_RANK";
    /// How many members the gang has, all started together.
    pub const WORLD_SIZE: &str = "DROVER_WORLD_SIZE";
    /// The host names of the members' agents, comma-separated, in rank order. A member that
    /// listens on a port it chose tells the others through the master's rendezvous
    /// (`POST /api/v1/allocations/rendezvous`, `drover_sdk::rendezvous`).
    pub const PEER_HOSTS: &str = "DROVER_PEER_HOSTS";
}
