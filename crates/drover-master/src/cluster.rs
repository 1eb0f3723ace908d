//! The master's control plane: experiments and their searchers, trials, allocations, agents and
//! the scheduler that places queued trials on free slots.
//!
//! All control-plane changes go through one async mutex over [`Inner`] and are written to the
//! store before anyone is told about them, so the store stays the one truth a restarted master
//! resumes from. Metric ingestion does not take that lock: it authenticates against a separate
//! token map and writes straight to the store.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use drover_api::agent::{AgentMessage, MasterMessage, SlotSpec, TaskSpec};
use drover_api::env;
use drover_core::ExperimentConfig;
use drover_core::state::{AllocationState, ExperimentState, TrialState};
use drover_search::{Action, RequestId, Searcher};
use drover_store::{AllocationUpdate, LogRow, NewAllocation, NewExperiment, NewTrial, Store, TrialRow, TrialUpdate};
use serde_json::Value;
use tokio::sync::{Mutex, mpsc, watch};

use crate::error::{Error, Result};
use drover_storage::StorageSpec;
use crate::lineage::{self, MemberTrial};

mod advisor;

/// Grace given to a task between SIGTERM and SIGKILL when it is stopped politely.
const STOP_GRACE_MS: u64 = 10_000;

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
    /// An agent connection silent this long is closed (see `gateway::SILENCE_LIMIT`).
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
            agent_silence_limit: crate::gateway::SILENCE_LIMIT,
        }
    }
}

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

#[derive(Default)]
struct Inner {
    agents: BTreeMap<String, AgentEntry>,
    experiments: HashMap<i64, ExperimentRuntime>,
    allocations: HashMap<String, LiveAllocation>,
    /// Trials waiting for slots, oldest first.
    queue: VecDeque<i64>,
    next_connection: u64,
    /// Per custom experiment with an advisor waiting: the last event it has been woken for.
    searcher_watch: HashMap<i64, watch::Sender<u64>>,
}

struct AgentEntry {
    /// The agent process connected under this id (its hello's `instance`).
    instance: String,
    hostname: String,
    version: String,
    slots: Vec<SlotSpec>,
    /// Slot id to the allocation using it.
    used: HashMap<String, String>,
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
    hparams: Value,
    seed: i64,
    latest_checkpoint: Option<String>,
}

struct LiveAllocation {
    trial_id: i64,
    experiment_id: i64,
    agent_id: Option<String>,
    slot_ids: Vec<String>,
    state: AllocationState,
    /// Set after a master restart: the agent must report this task alive by then.
    reattach_deadline: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExperimentCommand {
    Pause,
    Activate,
    Cancel,
    Kill,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

pub(crate) fn random_token() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

impl Master {
    /// Opens the store and restores every unfinished experiment from it.
    pub async fn open(config: MasterConfig, store: Arc<dyn Store>) -> Result<Arc<Master>> {
        let (changes, _) = watch::channel(0);
        let (gc_queue, gc_receiver) = mpsc::unbounded_channel();
        let (lineage_writes, lineage_receiver) = mpsc::unbounded_channel();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let params = crate::params::Params::open(&config, store.clone(), shutdown.clone())?;
        let master = Arc::new(Master {
            store,
            config,
            counters: Counters::default(),
            started: Instant::now(),
            inner: Mutex::new(Inner::default()),
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

    /// Rebuilds the in-memory state of unfinished experiments from the store. Trials that were
    /// running wait for their agent to reattach them; the rest are queued again.
    async fn recover(&self) -> Result<()> {
        let mut inner = self.inner.lock().await;
        let live_allocations = self.store.live_allocations().await?;
        let reattach_by = Instant::now() + self.config.agent_reconnect_wait;
        for row in self.store.list_experiments().await? {
            let state: ExperimentState = row.state.parse().map_err(Error::internal)?;
            if state.is_terminal() {
                // Its checkpoint policy is applied again: a no-op when it already ran, and the
                // collection a crash interrupted (or never started) when it did not.
                let _ = self.gc_queue.send(row.id);
                continue;
            }
            let config: ExperimentConfig =
                serde_json::from_str(&row.config_json).map_err(|e| Error::internal(format!("experiment {}: {e}", row.id)))?;
            let searcher = match self.store.load_searcher_snapshot(row.id).await? {
                Some(snapshot) => Searcher::restore(&snapshot).map_err(|e| Error::internal(e.to_string()))?,
                None => return Err(Error::internal(format!("experiment {} has no searcher snapshot", row.id))),
            };
            let has_context = self.store.has_context(row.id).await?;
            let mut runtime = ExperimentRuntime::new(config, state, has_context, searcher);
            for t in self.store.list_trials(row.id).await? {
                let mut trial = trial_runtime(&t)?;
                if trial.state.has_process() {
                    match live_allocations.iter().find(|a| a.trial_id == t.id) {
                        Some(a) => {
                            trial.allocation = Some(a.id.clone());
                            inner.allocations.insert(
                                a.id.clone(),
                                LiveAllocation {
                                    trial_id: t.id,
                                    experiment_id: row.id,
                                    agent_id: a.agent_id.clone(),
                                    slot_ids: a.slot_ids.clone(),
                                    state: a.state.parse().unwrap_or(AllocationState::Assigned),
                                    reattach_deadline: Some(reattach_by),
                                },
                            );
                            self.auth.write().unwrap().insert(
                                a.token.clone(),
                                TrialAuth {
                                    allocation_id: a.id.clone(),
                                    trial_id: t.id,
                                    experiment_id: row.id,
                                    searcher_metric: runtime.config.searcher.metric.as_str().into(),
                                    time_metric: runtime.config.searcher.time_metric.as_deref().map(Into::into),
                                    stop_requested: Arc::new(AtomicBool::new(t.stop_requested)),
                                    agent_id: a.agent_id.as_deref().map(Into::into),
                                },
                            );
                        }
                        None => {
                            // The process cannot be found again; run the trial anew.
                            trial.state = TrialState::Queued;
                            self.store.update_trial(t.id, TrialUpdate { state: Some("QUEUED".into()), ..Default::default() }).await?;
                        }
                    }
                }
                if trial.state == TrialState::Queued {
                    inner.queue.push_back(t.id);
                }
                runtime.by_request.insert(trial.request_id, t.id);
                runtime.trials.insert(t.id, trial);
            }
            inner.experiments.insert(row.id, runtime);
        }
        // Allocations of finished experiments, or never placed, are over.
        for a in live_allocations {
            if !inner.allocations.contains_key(&a.id) {
                self.store
                    .update_allocation(
                        &a.id,
                        AllocationUpdate {
                            state: Some("TERMINATED".into()),
                            ended_at: Some(now_ms()),
                            error: Some("master restarted".into()),
                            ..Default::default()
                        },
                    )
                    .await?;
            }
        }
        let ids: Vec<i64> = inner.experiments.keys().copied().collect();
        for id in ids {
            self.settle_if_done(&mut inner, id).await?;
        }
        Ok(())
    }

    // ----- experiments -------------------------------------------------------------------

    /// Validates and stores a new experiment and starts its search.
    pub async fn create_experiment(
        &self,
        config_text: &str,
        config_file: Option<&str>,
        context: Option<Vec<u8>>,
        activate: bool,
    ) -> Result<i64> {
        // Everything is checked before anything is written: a refused experiment leaves no row
        // and no file. Parsing (YAML, the searcher's plan) and the context's decompression are
        // CPU work on untrusted input, so they run off the async workers.
        if let Some(bytes) = &context
            && bytes.len() > self.config.max_context_bytes
        {
            return Err(Error::too_large(format!(
                "the context is {} bytes, more than the limit of {} bytes",
                bytes.len(),
                self.config.max_context_bytes
            )));
        }
        let (text, file) = (config_text.to_string(), config_file.map(str::to_string));
        let max_unpacked = self.config.max_context_unpacked_bytes;
        let (context, config, mut searcher) = tokio::task::spawn_blocking(move || -> Result<_> {
            let mut config = ExperimentConfig::parse(&text, file.as_deref())?;
            if let Some(bytes) = &context {
                crate::context::validate(bytes, max_unpacked)?;
            }
            let seed = *config.searcher.seed.get_or_insert_with(|| uuid::Uuid::new_v4().as_u64_pair().0 >> 1);
            let searcher = Searcher::new(&config, seed).map_err(|e| Error::bad_field("searcher", e.to_string()))?;
            Ok((context, config, searcher))
        })
        .await
        .map_err(|e| Error::internal(format!("checking the experiment: {e}")))??;
        // Before the probe, which may create the storage directory: a refusal leaves nothing.
        self.check_fits(&*self.inner.lock().await, &config)?;
        // A missing bucket or wrong credentials must fail now, not at the first checkpoint
        // hours from now: write, read back and delete a probe object.
        let spec = self.checkpoint_storage(&config);
        crate::probe::check_storage(&spec, self.config.storage_probe_timeout).await?;

        let mut inner = self.inner.lock().await;
        // Again: agents may have come and gone during the probe.
        self.check_fits(&inner, &config)?;
        let state = if activate { ExperimentState::Active } else { ExperimentState::Paused };
        let has_context = context.is_some();
        let id = self
            .store
            .create_experiment(NewExperiment {
                name: config.name.clone(),
                description: config.description.clone(),
                state: state.as_str().into(),
                config_json: serde_json::to_string(&config).map_err(|e| Error::internal(e.to_string()))?,
                config_yaml: config_text.to_string(),
                context,
                created_at: now_ms(),
            })
            .await?;
        let actions = searcher.initial_trials();
        inner.experiments.insert(id, ExperimentRuntime::new(config, state, has_context, searcher));
        if let Err(e) = self.apply_actions(&mut inner, id, actions).await {
            // Refused means nothing changed: take back the row and what was queued.
            if let Some(exp) = inner.experiments.remove(&id) {
                inner.queue.retain(|t| !exp.trials.contains_key(t));
            }
            inner.searcher_watch.remove(&id);
            if let Err(undo) = self.store.delete_experiment(id).await {
                tracing::error!(experiment = id, "cannot take back a failed creation: {}", undo);
            }
            return Err(e);
        }
        self.counters.experiments_created.fetch_add(1, Ordering::Relaxed);
        // The experiment exists now; a placement that fails is retried on the next tick, and
        // must not make the client believe the creation failed.
        if let Err(e) = self.schedule(&mut inner).await {
            tracing::error!(experiment = id, "scheduling after creation: {}", e.body.message);
        }
        self.bump();
        Ok(id)
    }

    /// Refuses an experiment whose trials no connected agent could ever hold.
    fn check_fits(&self, inner: &Inner, config: &ExperimentConfig) -> Result<()> {
        let need = config.resources.slots_per_trial as usize;
        let connected: Vec<&AgentEntry> = inner.agents.values().filter(|a| a.sender.is_some()).collect();
        if !connected.is_empty() && !connected.iter().any(|a| a.slots.len() >= need) {
            let largest = connected.iter().map(|a| a.slots.len()).max().unwrap_or(0);
            return Err(Error::bad_field(
                "resources.slots_per_trial",
                format!("a trial needs {need} slots but the largest agent has {largest}; it could never be scheduled"),
            ));
        }
        Ok(())
    }

    /// Carries out searcher actions, then saves the searcher so a restart resumes from here.
    async fn apply_actions(&self, inner: &mut Inner, exp_id: i64, actions: Vec<Action>) -> Result<()> {
        let mut pending: VecDeque<Action> = actions.into();
        while let Some(action) = pending.pop_front() {
            let Some(exp) = inner.experiments.get_mut(&exp_id) else { return Ok(()) };
            match action {
                Action::Create { request_id, hparams, seed, checkpoint_from } => {
                    if exp.state.is_stopping() || exp.state.is_terminal() {
                        continue;
                    }
                    let trial_state = if exp.state == ExperimentState::Paused { TrialState::Paused } else { TrialState::Queued };
                    let hparams = Value::Object(hparams);
                    let trial_id = self
                        .store
                        .create_trial(NewTrial {
                            experiment_id: exp_id,
                            request_id: request_id as i64,
                            state: trial_state.as_str().into(),
                            hparams_json: hparams.to_string(),
                            seed: seed as i64,
                            created_at: now_ms(),
                        })
                        .await?;
                    // A clone starts from its source's latest checkpoint, as a restart would.
                    let latest_checkpoint = checkpoint_from
                        .and_then(|source| exp.by_request.get(&source))
                        .and_then(|source| exp.trials.get(source))
                        .and_then(|source| source.latest_checkpoint.clone());
                    if let Some(uuid) = &latest_checkpoint {
                        self.store
                            .update_trial(trial_id, TrialUpdate { latest_checkpoint: Some(uuid.clone()), ..Default::default() })
                            .await?;
                    }
                    exp.trials.insert(
                        trial_id,
                        TrialRuntime {
                            request_id,
                            state: trial_state,
                            restarts: 0,
                            allocation: None,
                            hparams,
                            seed: seed as i64,
                            latest_checkpoint,
                        },
                    );
                    exp.by_request.insert(request_id, trial_id);
                    pending.extend(exp.searcher.trial_created(request_id));
                    if trial_state == TrialState::Queued {
                        inner.queue.push_back(trial_id);
                    }
                }
                Action::Stop { request_id } => {
                    if let Some(&trial_id) = exp.by_request.get(&request_id) {
                        self.stop_trial(inner, exp_id, trial_id, TrialState::StoppingCompleted).await?;
                    }
                }
                Action::Shutdown { failure } => {
                    if let Some(why) = exp.searcher.pbt().and_then(|p| p.ended_because()) {
                        tracing::info!(experiment = exp_id, "pbt ends: {why}");
                    }
                    if exp.state == ExperimentState::Active || exp.state == ExperimentState::Paused {
                        let to = if failure { ExperimentState::StoppingError } else { ExperimentState::StoppingCompleted };
                        self.set_experiment_state(inner, exp_id, to).await?;
                    }
                }
            }
        }
        if let Some(exp) = inner.experiments.get_mut(&exp_id) {
            self.store.save_searcher_snapshot(exp_id, &exp.searcher.snapshot()).await?;
            self.write_lineage(exp_id, exp).await;
            advisor::wake_advisors(inner, exp_id);
        }
        self.settle_if_done(inner, exp_id).await
    }

    async fn set_experiment_state(&self, inner: &mut Inner, exp_id: i64, to: ExperimentState) -> Result<()> {
        let exp = inner.experiments.get_mut(&exp_id).ok_or_else(|| Error::not_found(format!("experiment {exp_id}")))?;
        let to = exp.state.transition(to).map_err(|e| Error::conflict(e.to_string()))?;
        let ended = to.is_terminal().then(now_ms);
        self.store.set_experiment_state(exp_id, to.as_str(), ended).await?;
        exp.state = to;
        if to.is_terminal() {
            inner.experiments.remove(&exp_id);
            // Dropping the sender wakes waiting advisors, which then read the final log.
            inner.searcher_watch.remove(&exp_id);
            // The experiment's checkpoint policy applies once it has ended.
            let _ = self.gc_queue.send(exp_id);
        }
        self.bump();
        Ok(())
    }

    /// Ends a stopping experiment once none of its trials can run any more.
    async fn settle_if_done(&self, inner: &mut Inner, exp_id: i64) -> Result<()> {
        let Some(exp) = inner.experiments.get(&exp_id) else { return Ok(()) };
        let Some(to) = exp.state.settles_to() else { return Ok(()) };
        if exp.trials.values().any(|t| t.state.has_process()) {
            return Ok(());
        }
        // Trials that never got to run end with the experiment.
        let waiting: Vec<i64> = exp.trials.iter().filter(|(_, t)| !t.state.is_terminal()).map(|(id, _)| *id).collect();
        for trial_id in waiting {
            self.set_trial_state(inner, exp_id, trial_id, TrialState::Canceled).await?;
        }
        self.set_experiment_state(inner, exp_id, to).await
    }

    async fn set_trial_state(&self, inner: &mut Inner, exp_id: i64, trial_id: i64, to: TrialState) -> Result<()> {
        let trial = inner
            .experiments
            .get_mut(&exp_id)
            .and_then(|e| e.trials.get_mut(&trial_id))
            .ok_or_else(|| Error::not_found(format!("trial {trial_id}")))?;
        let to = trial.state.transition(to).map_err(|e| Error::conflict(e.to_string()))?;
        let ended = to.is_terminal().then(now_ms);
        self.store.update_trial(trial_id, TrialUpdate { state: Some(to.as_str().into()), ended_at: ended, ..Default::default() }).await?;
        trial.state = to;
        if to.is_terminal() {
            self.counters.trials_finished.fetch_add(1, Ordering::Relaxed);
        }
        if to != TrialState::Queued {
            inner.queue.retain(|t| *t != trial_id);
        }
        self.bump();
        Ok(())
    }

    /// Moves a trial towards a stop: a waiting trial ends at once, a running one is asked to
    /// stop (its SDK sees `should_stop`) and, unless `to` is a graceful completion, signalled.
    async fn stop_trial(&self, inner: &mut Inner, exp_id: i64, trial_id: i64, to: TrialState) -> Result<()> {
        let Some(trial) = inner.experiments.get(&exp_id).and_then(|e| e.trials.get(&trial_id)) else { return Ok(()) };
        let (state, allocation) = (trial.state, trial.allocation.clone());
        if state.is_terminal() {
            return Ok(());
        }
        self.store.update_trial(trial_id, TrialUpdate { stop_requested: Some(true), ..Default::default() }).await?;
        for auth in self.auth.read().unwrap().values().filter(|a| a.trial_id == trial_id) {
            auth.stop_requested.store(true, Ordering::Relaxed);
        }
        if !state.has_process() {
            let end = match to {
                TrialState::StoppingPaused => TrialState::Paused,
                TrialState::StoppingCompleted => TrialState::Completed,
                _ => TrialState::Canceled,
            };
            if state != end && state.can_become(end) {
                self.set_trial_state(inner, exp_id, trial_id, end).await?;
                if end.is_terminal() {
                    let request_id = inner.experiments[&exp_id].trials[&trial_id].request_id;
                    let actions = inner.experiments.get_mut(&exp_id).unwrap().searcher.trial_exited(request_id);
                    Box::pin(self.apply_actions(inner, exp_id, actions)).await?;
                }
            }
            return Ok(());
        }
        if state != to && state.can_become(to) {
            self.set_trial_state(inner, exp_id, trial_id, to).await?;
        }
        let grace = match to {
            TrialState::StoppingKilled => Some(0),
            TrialState::StoppingCanceled | TrialState::StoppingPaused => Some(STOP_GRACE_MS),
            // The searcher's stop is a request: the trial finishes its step and exits itself.
            _ => None,
        };
        if let (Some(grace_ms), Some(allocation_id)) = (grace, allocation) {
            self.send_kill(inner, &allocation_id, grace_ms);
        }
        Ok(())
    }

    fn send_kill(&self, inner: &mut Inner, allocation_id: &str, grace_ms: u64) {
        let Some(alloc) = inner.allocations.get_mut(allocation_id) else { return };
        if let Some(sender) = alloc.agent_id.as_ref().and_then(|a| inner.agents.get(a)).and_then(|a| a.sender.as_ref()) {
            let _ = sender.send(MasterMessage::KillTask { allocation_id: allocation_id.to_string(), grace_ms });
        }
        if alloc.state.can_become(AllocationState::Terminating) {
            alloc.state = AllocationState::Terminating;
        }
    }

    pub async fn command(&self, exp_id: i64, command: ExperimentCommand) -> Result<()> {
        let mut inner = self.inner.lock().await;
        let Some(exp) = inner.experiments.get(&exp_id) else {
            let row = self.store.get_experiment(exp_id).await?;
            return Err(Error::conflict(format!("experiment {exp_id} is {} and can no longer change", row.state)));
        };
        let current = exp.state;
        let trial_ids: Vec<i64> = exp.trials.keys().copied().collect();
        let (exp_to, trial_to) = match command {
            ExperimentCommand::Pause => (ExperimentState::Paused, TrialState::StoppingPaused),
            ExperimentCommand::Activate => (ExperimentState::Active, TrialState::Queued),
            ExperimentCommand::Cancel => (ExperimentState::StoppingCanceled, TrialState::StoppingCanceled),
            ExperimentCommand::Kill => (ExperimentState::StoppingKilled, TrialState::StoppingKilled),
        };
        if current == exp_to {
            return Ok(());
        }
        self.set_experiment_state(&mut inner, exp_id, exp_to).await?;
        let mut trial_ids = trial_ids;
        trial_ids.sort_unstable();
        for trial_id in trial_ids {
            if command == ExperimentCommand::Activate {
                let state = inner.experiments[&exp_id].trials[&trial_id].state;
                if state == TrialState::Paused {
                    self.store.update_trial(trial_id, TrialUpdate { stop_requested: Some(false), ..Default::default() }).await?;
                    self.set_trial_state(&mut inner, exp_id, trial_id, TrialState::Queued).await?;
                    inner.queue.push_back(trial_id);
                }
            } else if inner.experiments.contains_key(&exp_id) {
                self.stop_trial(&mut inner, exp_id, trial_id, trial_to).await?;
            }
        }
        self.settle_if_done(&mut inner, exp_id).await?;
        self.schedule(&mut inner).await?;
        Ok(())
    }

    /// Deletes a finished experiment with its trials, metrics, logs and checkpoint files.
    pub async fn delete_experiment(&self, exp_id: i64) -> Result<()> {
        // Checked under the lock, deleted outside it: an ended experiment never runs again,
        // and a slow (or hostile, ever-refilled) storage must not hold the control plane.
        if self.inner.lock().await.experiments.contains_key(&exp_id) {
            return Err(Error::conflict(format!("experiment {exp_id} is still running; cancel or kill it first")));
        }
        let checkpoints = self.store.list_experiment_checkpoints(exp_id).await?;
        if let Some(pinned) = checkpoints.iter().find(|c| c.pinned) {
            return Err(Error::conflict(format!("checkpoint {} of experiment {exp_id} is pinned; unpin it first", pinned.uuid)));
        }
        // Files first, rows second: a failure leaves rows pointing at what is left, never
        // files that nothing points at. A file already gone is not an error.
        if !checkpoints.is_empty() {
            let storage = self.experiment_storage(exp_id).await?;
            for c in &checkpoints {
                storage.delete_prefix(&c.uuid).await.map_err(|e| Error::internal(format!("cannot delete checkpoint {}: {e}", c.uuid)))?;
            }
        }
        self.store.delete_experiment(exp_id).await?;
        self.bump();
        Ok(())
    }

    /// Where an experiment's checkpoints live: `{uuid}/{files}` under this storage.
    pub fn checkpoint_storage(&self, config: &ExperimentConfig) -> StorageSpec {
        let c = &config.checkpoint_storage;
        match c.kind.as_str() {
            "s3" => {
                let prefix = [c.prefix.as_deref(), c.storage_path.as_deref()]
                    .into_iter()
                    .flatten()
                    .map(|p| p.trim_matches('/'))
                    .filter(|p| !p.is_empty())
                    .collect::<Vec<_>>()
                    .join("/");
                StorageSpec::S3 {
                    bucket: c.bucket.clone().unwrap_or_default(),
                    prefix: (!prefix.is_empty()).then_some(prefix),
                    endpoint_url: c.endpoint_url.clone(),
                    region: c.region.clone(),
                    access_key_id: c.access_key_id.clone(),
                    secret_access_key: c.secret_access_key.clone(),
                }
            }
            // The root is the operator's (or the config's) and trusted as given; `storage_path`
            // is a prefix inside it, walked without following links like every key.
            "shared_fs" => StorageSpec::SharedFs { path: self.checkpoint_base(config), prefix: c.storage_path.clone() },
            _ => StorageSpec::Directory { path: self.checkpoint_base(config), prefix: c.storage_path.clone() },
        }
    }

    /// The checkpoint directory of a file-system storage (on the agents' file system).
    pub fn checkpoint_dir(&self, config: &ExperimentConfig) -> PathBuf {
        let root = self.checkpoint_base(config);
        match &config.checkpoint_storage.storage_path {
            Some(sub) => root.join(sub),
            None => root,
        }
    }

    /// The root of a file-system checkpoint storage, before `storage_path`.
    fn checkpoint_base(&self, config: &ExperimentConfig) -> PathBuf {
        config.checkpoint_storage.path.as_ref().map_or_else(|| self.config.checkpoint_root.clone(), PathBuf::from)
    }

    // ----- scheduling --------------------------------------------------------------------

    /// Places queued trials on free slots, oldest first; a trial that does not fit yet lets
    /// later, smaller ones go ahead of it.
    async fn schedule(&self, inner: &mut Inner) -> Result<()> {
        let mut waiting = VecDeque::new();
        while let Some(trial_id) = inner.queue.pop_front() {
            let Some((exp_id, exp)) = inner.experiments.iter().find(|(_, e)| e.trials.contains_key(&trial_id)) else { continue };
            let exp_id = *exp_id;
            if exp.state != ExperimentState::Active || exp.trials[&trial_id].state != TrialState::Queued {
                continue;
            }
            let need = exp.config.resources.slots_per_trial as usize;
            let placement = inner.agents.iter().find_map(|(agent_id, a)| {
                a.sender.as_ref()?;
                let free: Vec<String> = a.slots.iter().filter(|s| !a.used.contains_key(&s.id)).map(|s| s.id.clone()).collect();
                (free.len() >= need).then(|| (agent_id.clone(), free.into_iter().take(need).collect::<Vec<_>>()))
            });
            match placement {
                Some((agent_id, slot_ids)) => self.start_allocation(inner, exp_id, trial_id, agent_id, slot_ids).await?,
                None => waiting.push_back(trial_id),
            }
        }
        inner.queue = waiting;
        Ok(())
    }

    async fn start_allocation(&self, inner: &mut Inner, exp_id: i64, trial_id: i64, agent_id: String, slot_ids: Vec<String>) -> Result<()> {
        let allocation_id = uuid::Uuid::new_v4().to_string();
        let token = random_token();
        self.store
            .create_allocation(NewAllocation {
                id: allocation_id.clone(),
                trial_id,
                token: token.clone(),
                state: AllocationState::Assigned.as_str().into(),
                agent_id: Some(agent_id.clone()),
                slot_ids: slot_ids.clone(),
                created_at: now_ms(),
            })
            .await?;
        self.set_trial_state(inner, exp_id, trial_id, TrialState::Running).await?;
        let exp = &inner.experiments[&exp_id];
        let trial = &exp.trials[&trial_id];
        let mut task_env: BTreeMap<String, String> = exp.config.environment.clone();
        task_env.insert(env::EXPERIMENT_ID.into(), exp_id.to_string());
        task_env.insert(env::TRIAL_ID.into(), trial_id.to_string());
        task_env.insert(env::ALLOCATION_ID.into(), allocation_id.clone());
        task_env.insert(env::TRIAL_TOKEN.into(), token.clone());
        task_env.insert(env::HPARAMS.into(), trial.hparams.to_string());
        task_env.insert(env::TRIAL_SEED.into(), trial.seed.to_string());
        let storage = self.checkpoint_storage(&exp.config);
        if !matches!(storage, StorageSpec::S3 { .. }) {
            task_env.insert(env::CHECKPOINT_DIR.into(), self.checkpoint_dir(&exp.config).display().to_string());
        }
        task_env.insert(env::CHECKPOINT_STORAGE.into(), serde_json::to_string(&storage).unwrap_or_default());
        if exp.config.checkpoint_storage.fsync {
            task_env.insert(env::CHECKPOINT_FSYNC.into(), "1".into());
        }
        task_env.insert(env::SEARCHER_METRIC.into(), exp.config.searcher.metric.clone());
        if let Some(uuid) = &trial.latest_checkpoint {
            task_env.insert(env::LATEST_CHECKPOINT.into(), uuid.clone());
        }
        let spec = TaskSpec {
            allocation_id: allocation_id.clone(),
            experiment_id: exp_id,
            trial_id,
            argv: exp.config.entrypoint.argv(),
            env: task_env,
            slot_ids: slot_ids.clone(),
            context_path: exp.has_context.then(|| format!("/api/v1/experiments/{exp_id}/context")),
            token: token.clone(),
        };
        let auth = TrialAuth {
            allocation_id: allocation_id.clone(),
            trial_id,
            experiment_id: exp_id,
            searcher_metric: exp.config.searcher.metric.as_str().into(),
            time_metric: exp.config.searcher.time_metric.as_deref().map(Into::into),
            stop_requested: Arc::new(AtomicBool::new(false)),
            agent_id: Some(agent_id.as_str().into()),
        };
        self.auth.write().unwrap().insert(token, auth);
        let agent = inner.agents.get_mut(&agent_id).expect("placement chose a known agent");
        for s in &slot_ids {
            agent.used.insert(s.clone(), allocation_id.clone());
        }
        let sent = agent.sender.as_ref().is_some_and(|s| s.send(MasterMessage::StartTask(spec)).is_ok());
        inner.experiments.get_mut(&exp_id).unwrap().trials.get_mut(&trial_id).unwrap().allocation = Some(allocation_id.clone());
        inner.allocations.insert(
            allocation_id.clone(),
            LiveAllocation {
                trial_id,
                experiment_id: exp_id,
                agent_id: Some(agent_id),
                slot_ids,
                state: AllocationState::Assigned,
                reattach_deadline: None,
            },
        );
        self.counters.trials_started.fetch_add(1, Ordering::Relaxed);
        if !sent {
            Box::pin(self.allocation_ended(inner, &allocation_id, None, Some("the agent went away before the task started".into())))
                .await?;
        }
        Ok(())
    }

    /// An allocation is over: free its slots and move its trial on, restarting it if the
    /// failure leaves restarts.
    async fn allocation_ended(&self, inner: &mut Inner, allocation_id: &str, exit_code: Option<i32>, error: Option<String>) -> Result<()> {
        let Some(alloc) = inner.allocations.remove(allocation_id) else { return Ok(()) };
        self.auth.write().unwrap().retain(|_, a| a.allocation_id != allocation_id);
        if let Some(agent) = alloc.agent_id.as_ref().and_then(|a| inner.agents.get_mut(a)) {
            agent.used.retain(|_, a| a != allocation_id);
        }
        self.store
            .update_allocation(
                allocation_id,
                AllocationUpdate {
                    state: Some(AllocationState::Terminated.as_str().into()),
                    exit_code: exit_code.map(i64::from),
                    error: error.clone(),
                    ended_at: Some(now_ms()),
                    ..Default::default()
                },
            )
            .await?;
        let (exp_id, trial_id) = (alloc.experiment_id, alloc.trial_id);
        if let Some(reason) = &error {
            // Put the reason where the user looks first: the trial's own log.
            let line =
                LogRow { id: 0, ts_ms: now_ms(), stream: "master".into(), line: format!("allocation {allocation_id} ended: {reason}") };
            self.store.append_logs(trial_id, allocation_id, &[line]).await?;
        }
        let Some(exp) = inner.experiments.get_mut(&exp_id) else { return Ok(()) };
        let Some(trial) = exp.trials.get_mut(&trial_id) else { return Ok(()) };
        if trial.allocation.as_deref() == Some(allocation_id) {
            trial.allocation = None;
        }
        let success = exit_code == Some(0) && error.is_none();
        let (state, restarts, request_id) = (trial.state, trial.restarts, trial.request_id);
        let max_restarts = exp.config.max_restarts;
        let exp_state = exp.state;
        let mut searcher_actions = Vec::new();
        match state {
            TrialState::Running if success => {
                self.set_trial_state(inner, exp_id, trial_id, TrialState::Completed).await?;
                searcher_actions = inner.experiments.get_mut(&exp_id).unwrap().searcher.trial_exited(request_id);
            }
            TrialState::Running if restarts < max_restarts => {
                let restarts = restarts + 1;
                self.store.update_trial(trial_id, TrialUpdate { restarts: Some(restarts as i64), ..Default::default() }).await?;
                inner.experiments.get_mut(&exp_id).unwrap().trials.get_mut(&trial_id).unwrap().restarts = restarts;
                self.set_trial_state(inner, exp_id, trial_id, TrialState::Queued).await?;
                inner.queue.push_back(trial_id);
            }
            TrialState::Running => {
                self.set_trial_state(inner, exp_id, trial_id, TrialState::Error).await?;
                searcher_actions = inner.experiments.get_mut(&exp_id).unwrap().searcher.trial_failed(request_id);
            }
            TrialState::StoppingCompleted => {
                let to = if success || exit_code.is_some() { TrialState::Completed } else { TrialState::Error };
                self.set_trial_state(inner, exp_id, trial_id, to).await?;
                searcher_actions = inner.experiments.get_mut(&exp_id).unwrap().searcher.trial_exited(request_id);
            }
            TrialState::StoppingCanceled | TrialState::StoppingKilled => {
                self.set_trial_state(inner, exp_id, trial_id, TrialState::Canceled).await?;
                searcher_actions = inner.experiments.get_mut(&exp_id).unwrap().searcher.trial_exited(request_id);
            }
            TrialState::StoppingPaused => {
                self.set_trial_state(inner, exp_id, trial_id, TrialState::Paused).await?;
                if exp_state == ExperimentState::Active {
                    self.store.update_trial(trial_id, TrialUpdate { stop_requested: Some(false), ..Default::default() }).await?;
                    self.set_trial_state(inner, exp_id, trial_id, TrialState::Queued).await?;
                    inner.queue.push_back(trial_id);
                }
            }
            _ => {}
        }
        self.apply_actions(inner, exp_id, searcher_actions).await?;
        Ok(())
    }

    // ----- agents ------------------------------------------------------------------------

    /// An agent said hello. Returns the connection number that later calls must quote, so a
    /// replaced connection's late messages are recognised as stale.
    ///
    /// An id that is connected can only be taken again by the same agent process (the same
    /// `instance`, reconnecting after a broken connection); anyone else claiming it is refused,
    /// so a second agent cannot end the running trials of the first by saying hello.
    pub async fn agent_connected(&self, agent_id: &str, hello: AgentHello, sender: mpsc::UnboundedSender<MasterMessage>) -> Result<u64> {
        let AgentHello { hostname, version, slots, running, instance } = hello;
        let mut inner = self.inner.lock().await;
        if let Some(live) = inner.agents.get(agent_id)
            && live.sender.as_ref().is_some_and(|s| !s.is_closed())
            && live.instance != instance
        {
            return Err(Error::conflict(format!(
                "agent id `{agent_id}` is in use by a connected agent on {}; give this agent another --id",
                live.hostname
            )));
        }
        inner.next_connection += 1;
        let connection = inner.next_connection;
        let now = now_ms();
        let used = inner.agents.get(agent_id).map(|a| a.used.clone()).unwrap_or_default();
        inner.agents.insert(
            agent_id.to_string(),
            AgentEntry {
                instance,
                hostname,
                version,
                slots,
                used,
                sender: Some(sender),
                connection,
                connected_at: now,
                last_heartbeat: now,
                disconnected_at: None,
            },
        );
        // Reattach what still runs; what the agent no longer has is lost.
        let mine: Vec<String> =
            inner.allocations.iter().filter(|(_, a)| a.agent_id.as_deref() == Some(agent_id)).map(|(id, _)| id.clone()).collect();
        for id in mine {
            if running.contains(&id) {
                let alloc = inner.allocations.get_mut(&id).unwrap();
                alloc.reattach_deadline = None;
                let slot_ids = alloc.slot_ids.clone();
                let agent = inner.agents.get_mut(agent_id).unwrap();
                for s in slot_ids {
                    agent.used.insert(s, id.clone());
                }
            } else {
                self.allocation_ended(&mut inner, &id, None, Some("the task was gone when its agent reconnected".into())).await?;
            }
        }
        for id in running.iter().filter(|id| !inner.allocations.contains_key(*id)) {
            // Fenced off: the master no longer knows this allocation (it ended or was replaced).
            if let Some(sender) = inner.agents[agent_id].sender.as_ref() {
                let _ = sender.send(MasterMessage::KillTask { allocation_id: id.clone(), grace_ms: 0 });
            }
        }
        self.schedule(&mut inner).await?;
        self.bump();
        Ok(connection)
    }

    pub async fn agent_disconnected(&self, agent_id: &str, connection: u64) {
        let mut inner = self.inner.lock().await;
        if let Some(agent) = inner.agents.get_mut(agent_id)
            && agent.connection == connection
        {
            agent.sender = None;
            agent.disconnected_at = Some(Instant::now());
        }
        self.bump();
    }

    pub async fn agent_message(&self, agent_id: &str, connection: u64, message: AgentMessage) -> Result<()> {
        if let AgentMessage::TaskLogs { allocation_id, lines } = &message {
            // Logs skip the control-plane lock; the allocation is checked against the token map,
            // and only the agent holding it may write its log.
            let trial_id = self
                .auth
                .read()
                .unwrap()
                .values()
                .find(|a| &a.allocation_id == allocation_id && a.agent_id.as_deref() == Some(agent_id))
                .map(|a| a.trial_id);
            if trial_id.is_none() {
                tracing::warn!(agent = agent_id, allocation = %allocation_id, "dropped log lines for an allocation this agent does not hold");
            }
            if let Some(trial_id) = trial_id {
                let rows: Vec<LogRow> =
                    lines.iter().map(|l| LogRow { id: 0, ts_ms: l.ts_ms, stream: l.stream.clone(), line: l.line.clone() }).collect();
                self.store.append_logs(trial_id, allocation_id, &rows).await?;
                self.counters.log_lines.fetch_add(rows.len() as u64, Ordering::Relaxed);
                self.bump();
            }
            return Ok(());
        }
        let mut inner = self.inner.lock().await;
        match inner.agents.get_mut(agent_id) {
            Some(agent) if agent.connection == connection => agent.last_heartbeat = now_ms(),
            _ => return Ok(()),
        }
        let owned = |inner: &Inner, allocation_id: &str| {
            inner.allocations.get(allocation_id).is_some_and(|a| a.agent_id.as_deref() == Some(agent_id))
        };
        match message {
            AgentMessage::TaskStarted { allocation_id, .. } => {
                if owned(&inner, &allocation_id) {
                    let alloc = inner.allocations.get_mut(&allocation_id).unwrap();
                    if alloc.state == AllocationState::Assigned {
                        alloc.state = AllocationState::Running;
                        self.store
                            .update_allocation(&allocation_id, AllocationUpdate { state: Some("RUNNING".into()), ..Default::default() })
                            .await?;
                    }
                }
            }
            AgentMessage::TaskExited { allocation_id, exit_code, signal, error } => {
                if owned(&inner, &allocation_id) {
                    let error = error.or_else(|| signal.map(|s| format!("killed by signal {s}")));
                    self.allocation_ended(&mut inner, &allocation_id, exit_code, error).await?;
                    self.schedule(&mut inner).await?;
                }
            }
            AgentMessage::Heartbeat | AgentMessage::Hello { .. } | AgentMessage::TaskLogs { .. } => {}
        }
        Ok(())
    }

    /// Periodic housekeeping: tasks of agents gone too long, and reattachments that never came.
    pub async fn tick(&self) -> Result<()> {
        let mut inner = self.inner.lock().await;
        let now = Instant::now();
        let wait = self.config.agent_reconnect_wait;
        let lost_agents: Vec<String> = inner
            .agents
            .iter()
            .filter(|(_, a)| a.disconnected_at.is_some_and(|t| now.duration_since(t) > wait))
            .map(|(id, _)| id.clone())
            .collect();
        let lost: Vec<String> = inner
            .allocations
            .iter()
            .filter(|(_, a)| a.reattach_deadline.is_some_and(|d| now > d) || a.agent_id.as_ref().is_some_and(|id| lost_agents.contains(id)))
            .map(|(id, _)| id.clone())
            .collect();
        for id in lost {
            self.allocation_ended(&mut inner, &id, None, Some("lost contact with the task's agent".into())).await?;
        }
        for id in lost_agents {
            inner.agents.remove(&id);
        }
        self.schedule(&mut inner).await?;
        Ok(())
    }

    // ----- trial-facing ------------------------------------------------------------------

    /// Resolves a trial token; the token must belong to a live allocation of `trial_id`.
    pub fn authenticate(&self, token: Option<&str>, trial_id: i64) -> Result<TrialAuth> {
        let token = token.ok_or_else(|| Error::unauthorized("this endpoint needs the trial's token (Authorization: Bearer ...)"))?;
        let auth = self.auth.read().unwrap().get(token).cloned();
        match auth {
            None => Err(Error::unauthorized("unknown or expired trial token")),
            Some(a) if a.trial_id != trial_id => {
                Err(Error::forbidden(format!("this token belongs to trial {}, not trial {trial_id}", a.trial_id)))
            }
            Some(a) => Ok(a),
        }
    }

    /// Resolves a token for any trial of `experiment_id` (the context download).
    pub fn authenticate_experiment(&self, token: Option<&str>, experiment_id: i64) -> Result<TrialAuth> {
        let token = token.ok_or_else(|| Error::unauthorized("this endpoint needs a task token (Authorization: Bearer ...)"))?;
        let auth = self.auth.read().unwrap().get(token).cloned();
        match auth {
            Some(a) if a.experiment_id == experiment_id => Ok(a),
            Some(_) => Err(Error::forbidden(format!("this token does not belong to experiment {experiment_id}"))),
            None => Err(Error::unauthorized("unknown or expired task token")),
        }
    }

    /// Tells the searcher about validations of its metric, each as (value, training time).
    pub async fn validation_reported(&self, experiment_id: i64, trial_id: i64, values: &[(f64, f64)]) -> Result<()> {
        let mut inner = self.inner.lock().await;
        let Some(exp) = inner.experiments.get_mut(&experiment_id) else { return Ok(()) };
        let Some(trial) = exp.trials.get(&trial_id) else { return Ok(()) };
        let request_id = trial.request_id;
        let mut actions = Vec::new();
        for &(value, time) in values {
            actions.extend(exp.searcher.validation_completed(request_id, value, time));
        }
        // A custom search logged the validations for its advisor: save and announce them.
        if !actions.is_empty() || exp.searcher.is_custom() {
            self.apply_actions(&mut inner, experiment_id, actions).await?;
            self.schedule(&mut inner).await?;
        } else if exp.searcher.learns_from_validations() {
            // Nothing to do now, but the searcher remembers the result (a rung, a score): a
            // restarted master must too.
            self.store.save_searcher_snapshot(experiment_id, &exp.searcher.snapshot()).await?;
        }
        Ok(())
    }

    pub async fn checkpoint_registered(&self, experiment_id: i64, trial_id: i64, uuid: &str) -> Result<()> {
        self.store.update_trial(trial_id, TrialUpdate { latest_checkpoint: Some(uuid.to_string()), ..Default::default() }).await?;
        let mut inner = self.inner.lock().await;
        let Some(exp) = inner.experiments.get_mut(&experiment_id) else { return Ok(()) };
        let Some(t) = exp.trials.get_mut(&trial_id) else { return Ok(()) };
        t.latest_checkpoint = Some(uuid.to_string());
        // Only now may another trial start from this one (PBT copies only stored weights).
        let request_id = t.request_id;
        exp.searcher.checkpoint_saved(request_id);
        if exp.searcher.pbt().is_some() {
            self.store.save_searcher_snapshot(experiment_id, &exp.searcher.snapshot()).await?;
        }
        Ok(())
    }

    /// A new configuration (e.g. a checkpoint policy) for an experiment that may be running.
    pub(crate) async fn update_running_config(&self, experiment_id: i64, config: &ExperimentConfig) {
        if let Some(exp) = self.inner.lock().await.experiments.get_mut(&experiment_id) {
            exp.config = config.clone();
        }
    }

    /// The family tree of a `pbt` experiment, live or finished.
    pub async fn lineage(&self, experiment_id: i64) -> Result<drover_api::rest::Lineage> {
        let live = {
            let inner = self.inner.lock().await;
            inner.experiments.get(&experiment_id).map(|exp| (exp.config.clone(), exp.searcher.clone()))
        };
        let (config, searcher) = match live {
            Some(found) => found,
            None => {
                let row = self.store.get_experiment(experiment_id).await?;
                let config: ExperimentConfig = serde_json::from_str(&row.config_json).map_err(|e| Error::internal(e.to_string()))?;
                let snapshot = match config.searcher.name.as_str() {
                    "pbt" => self.store.load_searcher_snapshot(experiment_id).await?,
                    _ => None,
                };
                match snapshot {
                    Some(s) => (config, Searcher::restore(&s).map_err(|e| Error::internal(e.to_string()))?),
                    None => return Err(not_pbt(experiment_id, &config)),
                }
            }
        };
        let trials: Vec<MemberTrial> = self
            .store
            .list_trials(experiment_id)
            .await?
            .into_iter()
            .map(|t| MemberTrial { id: t.id, request_id: t.request_id as u64, state: t.state, checkpoint: t.latest_checkpoint })
            .collect();
        lineage::lineage(experiment_id, &config, &searcher, &trials).ok_or_else(|| not_pbt(experiment_id, &config))
    }

    /// Rewrites a `pbt` experiment's lineage files when another member has ended. A failure to
    /// write is logged, not fatal: the store holds the same facts.
    async fn write_lineage(&self, exp_id: i64, exp: &mut ExperimentRuntime) {
        if exp.searcher.pbt().is_none() {
            return;
        }
        let ended = exp.trials.values().filter(|t| t.state.is_terminal()).count();
        if ended == exp.lineage_written {
            return;
        }
        let trials: Vec<MemberTrial> = exp
            .trials
            .iter()
            .map(|(id, t)| MemberTrial {
                id: *id,
                request_id: t.request_id,
                state: t.state.as_str().to_string(),
                checkpoint: t.latest_checkpoint.clone(),
            })
            .collect();
        let Some(view) = lineage::lineage(exp_id, &exp.config, &exp.searcher, &trials) else { return };
        let spec = self.checkpoint_storage(&exp.config);
        // The writes (round trips to an object store; on a file system, walks that never
        // follow a link a trial may have planted) happen off the control-plane lock, in order,
        // on the lineage writer.
        let prefix = format!("pbt/experiment-{exp_id}");
        let mut objects: Vec<(String, Vec<u8>)> =
            lineage::tables(&view).into_iter().map(|(name, bytes)| (format!("{prefix}/{name}"), bytes)).collect();
        let mut links = Vec::new();
        for (folder, checkpoint, member) in lineage::member_files(&view) {
            if exp.lineage_members.insert(folder.clone()) {
                objects.push((format!("{prefix}/{folder}/member.json"), member));
                links.extend(checkpoint.map(|uuid| (format!("{prefix}/{folder}"), uuid)));
            }
        }
        let written = self
            .lineage_writes
            .send(LineageWrite { spec: spec.clone(), objects, links })
            .map_err(|_| "the lineage writer has stopped".to_string());
        match written {
            Ok(()) => exp.lineage_written = ended,
            Err(e) => tracing::warn!(experiment = exp_id, "cannot write the pbt lineage on {}: {e}", spec.describe()),
        }
    }

    // ----- views -------------------------------------------------------------------------

    pub async fn agents(&self) -> Vec<drover_api::rest::Agent> {
        let inner = self.inner.lock().await;
        inner
            .agents
            .iter()
            .map(|(id, a)| drover_api::rest::Agent {
                id: id.clone(),
                hostname: a.hostname.clone(),
                version: a.version.clone(),
                connected: a.sender.is_some(),
                connected_at: a.connected_at,
                last_heartbeat: a.last_heartbeat,
                slots: a
                    .slots
                    .iter()
                    .map(|s| drover_api::rest::Slot {
                        id: s.id.clone(),
                        kind: match s.kind {
                            drover_api::agent::SlotKind::Cpu => "cpu".into(),
                            drover_api::agent::SlotKind::Cuda => "cuda".into(),
                        },
                        device: s.device.clone(),
                        allocation_id: a.used.get(&s.id).cloned(),
                    })
                    .collect(),
            })
            .collect()
    }

    /// Trial id to (allocation, agent) of every live allocation.
    pub async fn live_placements(&self) -> HashMap<i64, (String, Option<String>)> {
        let inner = self.inner.lock().await;
        inner.allocations.iter().map(|(id, a)| (a.trial_id, (id.clone(), a.agent_id.clone()))).collect()
    }

    /// (total slots, used slots, agents connected, trials queued) for `/metrics`.
    pub async fn gauges(&self) -> (usize, usize, usize, usize) {
        let inner = self.inner.lock().await;
        let connected = inner.agents.values().filter(|a| a.sender.is_some());
        let (total, used, n) = connected.fold((0, 0, 0), |acc, a| (acc.0 + a.slots.len(), acc.1 + a.used.len(), acc.2 + 1));
        (total, used, n, inner.queue.len())
    }
}

fn not_pbt(experiment_id: i64, config: &ExperimentConfig) -> Error {
    Error::bad_field(
        "searcher.name",
        format!("experiment {experiment_id} uses the `{}` searcher; only `pbt` has a lineage", config.searcher.name),
    )
}

fn trial_runtime(t: &TrialRow) -> Result<TrialRuntime> {
    Ok(TrialRuntime {
        request_id: t.request_id as RequestId,
        state: t.state.parse().map_err(Error::internal)?,
        restarts: t.restarts as u32,
        allocation: None,
        hparams: serde_json::from_str(&t.hparams_json).map_err(|e| Error::internal(format!("trial {}: {e}", t.id)))?,
        seed: t.seed,
        latest_checkpoint: t.latest_checkpoint.clone(),
    })
}
