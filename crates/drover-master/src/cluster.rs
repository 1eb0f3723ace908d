//! The master's control plane: experiments and their searchers, trials, allocations, agents and
//! the scheduler that places queued trials on free slots.
//!
//! This file holds the state ([`Master`], its [`Inner`] view under the lock) and opening; the
//! work on it lives beside it, one concern each: `recovery` (rebuilding the view at start), `experiments` (the experiment and trial
//! lifecycle), `placement` (queued trials onto slots, the task a trial becomes, allocations
//! ending), `agents` (agent sessions and their views), `trials` (what trials ask: tokens,
//! validations, checkpoints), `pbt` (family trees) and `advisor` (a custom search's advisor).
//!
//! All control-plane changes go through one async mutex over [`Inner`] and are written to the
//! store before anyone is told about them, so the store stays the one truth a restarted master
//! resumes from. Metric ingestion does not take that lock: it authenticates against a separate
//! token map and writes straight to the store.

use std::collections::{BTreeMap, HashMap, VecDeque};

use drover_sched::Scheduler;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use drover_api::agent::{AgentMessage, MasterMessage, SlotSpec, TaskSpec};
use drover_api::env;
use drover_core::ExperimentConfig;
use drover_core::state::{AllocationState, ExperimentState, TrialState};
use drover_search::{Action, RequestId, Searcher};
use drover_store::{AllocationUpdate, LogRow, NewAllocation, NewExperiment, NewTrial, Store, TrialRow, TrialUpdate};
use serde_json::Value;
use tokio::sync::{Mutex, mpsc, watch};

use crate::error::{Error, Result};
use crate::lineage::{self, MemberTrial};
use drover_storage::StorageSpec;

mod advisor;
mod agents;
mod experiments;
mod jobs;
mod pbt;
mod placement;
mod recovery;
mod rendezvous;
mod trials;

pub use crate::clock::now_ms;
pub use crate::config::MasterConfig;
use crate::secret::random_token;

/// Grace given to a task between SIGTERM and SIGKILL when it is stopped politely.
const STOP_GRACE_MS: u64 = 10_000;

/// What a trial token grants: reports for one trial through one live allocation.
#[derive(Debug, Clone)]
pub struct TrialAuth {
    pub allocation_id: String,
    pub trial_id: i64,
    pub experiment_id: i64,
    /// The experiment's searcher metric, so reports need no config lookup.
    pub searcher_metric: Arc<str>,
    /// The searcher's time metric, if it has one.
    pub time_metric: Option<Arc<str>>,
    /// Set when the trial is asked to stop; answered on every report without a query.
    pub stop_requested: Arc<AtomicBool>,
    /// The agent that holds the allocation: only it may post the task's log lines.
    pub agent_id: Option<Arc<str>>,
}

/// What an agent's hello announced (checked for size by the gateway).
pub struct AgentHello {
    pub hostname: String,
    pub version: String,
    pub slots: Vec<SlotSpec>,
    pub running: Vec<String>,
    /// Chosen once per agent process; see `drover_api::agent::AgentMessage::Hello`.
    pub instance: String,
    pub pool: String,
}

#[derive(Default)]
pub struct Counters {
    pub experiments_created: AtomicU64,
    pub trials_started: AtomicU64,
    pub trials_finished: AtomicU64,
    pub metric_points: AtomicU64,
    pub log_lines: AtomicU64,
}

pub struct Master {
    pub store: Arc<dyn Store>,
    pub config: MasterConfig,
    pub counters: Counters,
    pub started: Instant,
    inner: Mutex<Inner>,
    auth: RwLock<HashMap<String, TrialAuth>>,
    /// Bumped whenever log lines or trial states change, so followers can wait for news.
    pub changes: watch::Sender<u64>,
    /// Cancelled when the master shuts down; long-lived connections watch it.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Experiments that just ended, for the checkpoint collector (`lib.rs` runs it).
    gc_queue: mpsc::UnboundedSender<i64>,
    pub(crate) gc_receiver: std::sync::Mutex<Option<mpsc::UnboundedReceiver<i64>>>,
    /// PBT lineage files bound for an object store, written in order by a task of `lib.rs`.
    lineage_writes: mpsc::UnboundedSender<LineageWrite>,
    pub(crate) lineage_receiver: std::sync::Mutex<Option<mpsc::UnboundedReceiver<LineageWrite>>>,
    /// The parameter database.
    pub params: crate::params::Params,
}

/// A PBT family tree's files to put on a storage: objects (key, bytes), then, on a file
/// system, member folders to link to their checkpoints (folder key, checkpoint uuid).
pub(crate) struct LineageWrite {
    pub spec: StorageSpec,
    pub objects: Vec<(String, Vec<u8>)>,
    pub links: Vec<(String, String)>,
}

struct Inner {
    agents: BTreeMap<String, AgentEntry>,
    experiments: HashMap<i64, ExperimentRuntime>,
    /// Live allocations (gangs) by id; their members run as tasks with ids of their own.
    allocations: HashMap<String, LiveAllocation>,
    /// A member's task id to its allocation's id.
    tasks: HashMap<String, String>,
    /// What waits for slots and what holds them: every placement decision is the scheduler's.
    sched: Scheduler,
    /// What each scheduler request stands for.
    requests: HashMap<TaskRequest, TaskOwner>,
    next_request: TaskRequest,
    next_connection: u64,
    /// Per custom experiment with an advisor waiting: the last event it has been woken for.
    searcher_watch: HashMap<i64, watch::Sender<u64>>,
}

impl Inner {
    fn new(sched: Scheduler) -> Inner {
        Inner {
            agents: BTreeMap::new(),
            experiments: HashMap::new(),
            allocations: HashMap::new(),
            tasks: HashMap::new(),
            sched,
            requests: HashMap::new(),
            next_request: 1,
            next_connection: 0,
            searcher_watch: HashMap::new(),
        }
    }
}

/// The scheduler's id for one request (one attempt of a trial to get slots).
type TaskRequest = drover_sched::RequestId;

/// What a scheduler request is for. Trials are the one kind today; worker groups and serving
/// replicas add theirs without the scheduler knowing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TaskOwner {
    Trial { experiment_id: i64, trial_id: i64 },
}

struct AgentEntry {
    /// The agent process connected under this id (its hello's `instance`).
    instance: String,
    hostname: String,
    version: String,
    pool: String,
    slots: Vec<SlotSpec>,
    sender: Option<mpsc::UnboundedSender<MasterMessage>>,
    connection: u64,
    connected_at: i64,
    last_heartbeat: i64,
    disconnected_at: Option<Instant>,
}

struct ExperimentRuntime {
    config: ExperimentConfig,
    /// Whether a context tarball was uploaded, i.e. whether agents must fetch one.
    has_context: bool,
    state: ExperimentState,
    searcher: Searcher,
    trials: HashMap<i64, TrialRuntime>,
    by_request: HashMap<RequestId, i64>,
    /// For `pbt`: trials that had ended when the lineage files were last written, and the
    /// member folders written to an object store.
    lineage_written: usize,
    lineage_members: std::collections::HashSet<String>,
}

impl ExperimentRuntime {
    /// An experiment with no trial yet (or not yet restored).
    fn new(config: ExperimentConfig, state: ExperimentState, has_context: bool, searcher: Searcher) -> ExperimentRuntime {
        ExperimentRuntime {
            config,
            state,
            has_context,
            searcher,
            trials: HashMap::new(),
            by_request: HashMap::new(),
            lineage_written: 0,
            lineage_members: Default::default(),
        }
    }
}

struct TrialRuntime {
    request_id: RequestId,
    state: TrialState,
    restarts: u32,
    allocation: Option<String>,
    /// The scheduler request standing for it while it waits for slots or holds them.
    task_request: Option<TaskRequest>,
    hparams: Value,
    seed: i64,
    latest_checkpoint: Option<String>,
}

/// A gang placed by the scheduler: one member per placement, started together, ended together.
struct LiveAllocation {
    trial_id: i64,
    experiment_id: i64,
    /// The scheduler's ids for it and for the request it runs.
    sched_id: drover_sched::AllocationId,
    request: TaskRequest,
    /// In rank order.
    members: Vec<Member>,
    /// The scheduler asked it to checkpoint and stop for higher-priority work.
    preempted: bool,
    /// The first member to end badly, (exit code, error): the cause the trial is told of, not
    /// the kills of the others that followed.
    first_failure: Option<(Option<i32>, Option<String>)>,
    /// The addresses members announced at the rendezvous, by rank, and a wake-up for those
    /// waiting for the rest.
    rendezvous: Vec<Option<String>>,
    rendezvous_watch: watch::Sender<u64>,
}

struct Member {
    /// The task id the agent knows: the allocation's id for a gang of one, `{id}.{rank}` else.
    task_id: String,
    agent_id: Option<String>,
    slot_ids: Vec<String>,
    state: AllocationState,
    /// Set when its process has ended: (exit code, error).
    exit: Option<(Option<i32>, Option<String>)>,
    /// Set after a master restart: the agent must report this task alive by then.
    reattach_deadline: Option<Instant>,
}

impl LiveAllocation {
    /// A gang just started (or taken back after a restart): nothing preempted, failed or
    /// announced at the rendezvous yet.
    fn new(trial_id: i64, experiment_id: i64, sched_id: drover_sched::AllocationId, request: TaskRequest, members: Vec<Member>) -> Self {
        let world = members.len();
        LiveAllocation {
            trial_id,
            experiment_id,
            sched_id,
            request,
            members,
            preempted: false,
            first_failure: None,
            rendezvous: vec![None; world],
            rendezvous_watch: watch::channel(0).0,
        }
    }

    fn member(&self, task_id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.task_id == task_id)
    }

    fn member_mut(&mut self, task_id: &str) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| m.task_id == task_id)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExperimentCommand {
    Pause,
    Activate,
    Cancel,
    Kill,
}

impl Master {
    /// Opens the store and restores every unfinished experiment from it.
    pub async fn open(config: MasterConfig, store: Arc<dyn Store>) -> Result<Arc<Master>> {
        let (changes, _) = watch::channel(0);
        let (gc_queue, gc_receiver) = mpsc::unbounded_channel();
        let (lineage_writes, lineage_receiver) = mpsc::unbounded_channel();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let params = crate::params::Params::open(&config, store.clone(), shutdown.clone())?;
        let sched = Scheduler::new(config.pools.clone()).map_err(|e| Error::bad_field("pools", e.to_string()))?;
        let master = Arc::new(Master {
            store,
            config,
            counters: Counters::default(),
            started: Instant::now(),
            inner: Mutex::new(Inner::new(sched)),
            auth: RwLock::new(HashMap::new()),
            changes,
            shutdown,
            gc_queue,
            gc_receiver: std::sync::Mutex::new(Some(gc_receiver)),
            lineage_writes,
            lineage_receiver: std::sync::Mutex::new(Some(lineage_receiver)),
            params,
        });
        master.recover().await?;
        Ok(master)
    }

    fn bump(&self) {
        self.changes.send_modify(|v| *v += 1);
    }
}

fn trial_runtime(t: &TrialRow) -> Result<TrialRuntime> {
    Ok(TrialRuntime {
        request_id: t.request_id as RequestId,
        state: t.state.parse().map_err(Error::internal)?,
        restarts: t.restarts as u32,
        allocation: None,
        task_request: None,
        hparams: serde_json::from_str(&t.hparams_json).map_err(|e| Error::internal(format!("trial {}: {e}", t.id)))?,
        seed: t.seed,
        latest_checkpoint: t.latest_checkpoint.clone(),
    })
}
