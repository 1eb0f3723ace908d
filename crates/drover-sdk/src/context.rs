use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use drover_api::env;
use drover_api::rest::{Checkpoint, RegisterCheckpointRequest};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::client::MasterClient;
use crate::metrics::{self, Reporter};
use crate::{SdkError, checkpoint, hparams};

/// should_stop() asks the master at most this often; in between it answers from memory.
const SIGNALS_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Registering a checkpoint is retried this long: the files are already written, and a
/// checkpoint the master never hears of is lost work.
const REGISTER_RETRY_FOR: Duration = Duration::from_secs(60);

/// A running trial's link to drover: its identity and hyperparameters, metric reporting, stop
/// signals and checkpoints. Create one per process with [`Context::from_env`].
///
/// Dropping the context flushes queued metrics like [`Context::close`] does, but can only print
/// errors; call `close()` to see them.
pub struct Context {
    experiment_id: i64,
    trial_id: i64,
    allocation_id: Option<String>,
    hparams: Map<String, Value>,
    seed: u64,
    checkpoint_root: Option<PathBuf>,
    /// The experiment's storage when it is not a file system (S3): checkpoints are streamed to
    /// it directly.
    checkpoint_storage: Option<drover_storage::StorageSpec>,
    /// fsync file-system checkpoints before registering them.
    checkpoint_fsync: bool,
    latest_checkpoint: Option<String>,
    searcher_metric: Option<String>,
    /// This member's rank in its gang, the gang's size and its members' hosts by rank.
    rank: usize,
    world_size: usize,
    peer_hosts: Vec<String>,
    client: MasterClient,
    reporter: Reporter,
    signals: Mutex<SignalPoll>,
}

#[derive(Default)]
struct SignalPoll {
    last_poll: Option<Instant>,
    /// The last poll failed: later failures are not repeated on stderr once per second.
    failing: bool,
}

impl Context {
    /// Reads the trial's environment, as set by the drover agent, and starts the metrics
    /// reporter. Fails with the name of the first missing or malformed variable.
    pub fn from_env() -> Result<Context, SdkError> {
        Context::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`Context::from_env`], but reads each variable through `var`: for tests and
    /// launchers that hold the environment in a map rather than in the process.
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Context, SdkError> {
        let required = |name: &'static str| match var(name) {
            Some(value) if !value.trim().is_empty() => Ok(value),
            _ => Err(SdkError::MissingEnv { var: name }),
        };
        let optional = |name: &str| var(name).filter(|value| !value.trim().is_empty());

        let master = required(env::MASTER)?;
        if !(master.starts_with("http://") || master.starts_with("https://")) {
            return Err(SdkError::BadEnv {
                var: env::MASTER,
                value: master,
                reason: "expected a URL starting with http:// or https://".into(),
            });
        }
        let experiment_id = parse_number(env::EXPERIMENT_ID, &required(env::EXPERIMENT_ID)?)?;
        let trial_id = parse_number(env::TRIAL_ID, &required(env::TRIAL_ID)?)?;
        let token = required(env::TRIAL_TOKEN)?;
        let seed = parse_number(env::TRIAL_SEED, &required(env::TRIAL_SEED)?)?;
        let hparams_text = required(env::HPARAMS)?;
        let hparams = match serde_json::from_str::<Value>(&hparams_text) {
            Ok(Value::Object(map)) => map,
            Ok(_) => {
                return Err(SdkError::BadEnv { var: env::HPARAMS, value: hparams_text, reason: "expected a JSON object".into() });
            }
            Err(err) => {
                return Err(SdkError::BadEnv { var: env::HPARAMS, value: hparams_text, reason: err.to_string() });
            }
        };
        let latest_checkpoint = optional(env::LATEST_CHECKPOINT);
        if let Some(uuid) = &latest_checkpoint
            && let Err(err) = checkpoint::validate_uuid(uuid)
        {
            return Err(SdkError::BadEnv { var: env::LATEST_CHECKPOINT, value: uuid.clone(), reason: err.to_string() });
        }

        let rank: usize = optional(env::RANK).map_or(Ok(0), |v| parse_number(env::RANK, &v))?;
        let world_size: usize = optional(env::WORLD_SIZE).map_or(Ok(1), |v| parse_number(env::WORLD_SIZE, &v))?;
        if rank >= world_size {
            return Err(SdkError::BadEnv {
                var: env::RANK,
                value: rank.to_string(),
                reason: format!("not below the world size {world_size}"),
            });
        }
        let peer_hosts: Vec<String> = optional(env::PEER_HOSTS).map(|v| v.split(',').map(str::to_string).collect()).unwrap_or_default();

        let client = MasterClient::new(&master, &token, trial_id)?;
        let reporter = Reporter::start(client.clone(), metrics::CLOSE_GRACE)?;
        Ok(Context {
            experiment_id,
            trial_id,
            allocation_id: optional(env::ALLOCATION_ID),
            hparams,
            seed,
            checkpoint_root: optional(env::CHECKPOINT_DIR).map(PathBuf::from),
            checkpoint_fsync: optional(env::CHECKPOINT_FSYNC).is_some_and(|v| v == "1"),
            checkpoint_storage: match optional(env::CHECKPOINT_STORAGE) {
                Some(text) => Some(serde_json::from_str(&text).map_err(|e| SdkError::BadEnv {
                    var: env::CHECKPOINT_STORAGE,
                    // It may hold a secret key: not repeated in a message that ends up in logs.
                    value: format!("<{} bytes of JSON>", text.len()),
                    reason: e.to_string(),
                })?),
                None => None,
            },
            latest_checkpoint,
            searcher_metric: optional(env::SEARCHER_METRIC),
            rank,
            world_size,
            peer_hosts,
            client,
            reporter,
            signals: Mutex::new(SignalPoll::default()),
        })
    }

    pub fn trial_id(&self) -> i64 {
        self.trial_id
    }

    pub fn experiment_id(&self) -> i64 {
        self.experiment_id
    }

    /// The allocation (one run of the trial on an agent), if the agent said.
    pub fn allocation_id(&self) -> Option<&str> {
        self.allocation_id.as_deref()
    }

    /// The trial's seed, chosen by the master; the same on every restart of the trial.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The metric the searcher optimises, if the agent said.
    pub fn searcher_metric(&self) -> Option<&str> {
        self.searcher_metric.as_deref()
    }

    /// All hyperparameters of this trial, as the master sent them.
    pub fn hparams(&self) -> &Map<String, Value> {
        &self.hparams
    }

    /// The hyperparameter `name` as a `T`. `name` may be a dotted path into nested
    /// hyperparameters (`"model.depth"`). Errors name the hyperparameter and the expected type.
    pub fn hparam<T: DeserializeOwned>(&self, name: &str) -> Result<T, SdkError> {
        hparams::get(&self.hparams, name)
    }

    /// Like [`Context::hparam`], but `Ok(None)` when the hyperparameter is absent or null.
    pub fn hparam_opt<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, SdkError> {
        hparams::get_opt(&self.hparams, name)
    }

    /// Queues training metrics at `step`. Returns at once; a background thread sends them.
    /// Non-finite values are sent too and refused by the master: [`Context::flush`] reports that.
    pub fn report_training(&self, step: i64, metrics: &[(&str, f64)]) {
        self.reporter.report(metrics::make_point(metrics::TRAINING, step, metrics));
    }

    /// Queues validation metrics at `step`; the searcher reads its metric from these.
    pub fn report_validation(&self, step: i64, metrics: &[(&str, f64)]) {
        self.reporter.report(metrics::make_point(metrics::VALIDATION, step, metrics));
    }

    /// Waits until every metric queued so far is stored by the master (retrying while it is
    /// unreachable), then returns an error describing any points it refused since the last
    /// `flush()`.
    pub fn flush(&self) -> Result<(), SdkError> {
        self.reporter.flush()
    }

    /// Flushes and stops the reporter. An unreachable master is retried for a few seconds
    /// only, so a trial whose master is gone still exits.
    pub fn close(mut self) -> Result<(), SdkError> {
        self.reporter.close()
    }

    /// This process's rank in its gang (0 for a trial of one process): a trial whose slots span
    /// several agents runs as one process per agent, all started together.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// How many processes the gang has.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// The host names of the gang's agents, by rank.
    pub fn peer_hosts(&self) -> &[String] {
        &self.peer_hosts
    }

    /// Meets the rest of the gang: announces `address` (where this process listens for its
    /// peers, e.g. `host:port`) through the master and returns every member's, by rank, once
    /// all have announced theirs. Waits up to `timeout`; no member has to start first.
    pub fn rendezvous(&self, address: &str, timeout: Duration) -> Result<Vec<String>, SdkError> {
        let deadline = Instant::now() + timeout;
        loop {
            let wait_ms = deadline.saturating_duration_since(Instant::now()).as_millis().min(30_000) as u64;
            let answer = self.client.rendezvous(address, wait_ms)?;
            if answer.complete {
                return Ok(answer.addresses.into_iter().map(Option::unwrap_or_default).collect());
            }
            if Instant::now() >= deadline {
                let missing: Vec<usize> = answer.addresses.iter().enumerate().filter(|(_, a)| a.is_none()).map(|(r, _)| r).collect();
                return Err(SdkError::Api {
                    what: "the rendezvous",
                    status: 408,
                    message: format!("ranks {missing:?} did not announce themselves within {timeout:?}"),
                });
            }
        }
    }

    /// Whether the master asked this trial to stop (the searcher is done with it, or a user
    /// killed or paused the experiment). Cheap to call every step: it asks the master at most
    /// once a second, and also learns of stop requests from metric reports.
    pub fn should_stop(&self) -> bool {
        if self.reporter.stop_requested() {
            return true;
        }
        let mut poll = self.signals.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if poll.last_poll.is_some_and(|last| last.elapsed() < SIGNALS_POLL_INTERVAL) {
            return false;
        }
        poll.last_poll = Some(Instant::now());
        match self.client.signals() {
            Ok(signals) => {
                poll.failing = false;
                if signals.stop_requested {
                    self.reporter.set_stop_requested();
                }
            }
            Err(err) => {
                // Not fatal: training goes on, and the next poll may get through.
                if !poll.failing {
                    eprintln!("drover: could not poll for a stop signal: {err}");
                }
                poll.failing = true;
            }
        }
        self.reporter.stop_requested()
    }

    /// The checkpoint to resume from when this run is a restart, else None.
    pub fn latest_checkpoint(&self) -> Option<&str> {
        self.latest_checkpoint.as_deref()
    }

    /// Saves every file under `dir` as a checkpoint at `step` and registers it with the master;
    /// returns its uuid. The files are copied (not moved): `dir` can be reused afterwards.
    pub fn checkpoint_save(&self, step: i64, dir: &Path, metadata: Value) -> Result<String, SdkError> {
        let uuid = checkpoint::new_uuid();
        // Every byte is stored before the master hears of the checkpoint: a crash mid-upload
        // leaves nothing registered.
        let resources = match &self.checkpoint_root {
            Some(root) => checkpoint::write(dir, root, &uuid, self.checkpoint_fsync)?,
            None => checkpoint::upload(self.remote_storage()?, dir, &uuid)?,
        };
        let request = RegisterCheckpointRequest { uuid: uuid.clone(), step, resources, metadata };
        match self.register_checkpoint(&request) {
            Ok(()) => Ok(uuid),
            Err(err) => {
                // After a transient failure the master may still have stored it: keep the files.
                if !err.is_transient() {
                    match &self.checkpoint_root {
                        Some(root) => checkpoint::remove(root, &uuid),
                        None => checkpoint::remove_remote(self.remote_storage()?, &uuid),
                    }
                }
                Err(err)
            }
        }
    }

    /// Copies the files of checkpoint `uuid` into `dest` (created if missing), checking them
    /// against the file list the master registered.
    pub fn checkpoint_restore(&self, uuid: &str, dest: &Path) -> Result<(), SdkError> {
        checkpoint::validate_uuid(uuid)?;
        let info = self.client.checkpoint(uuid)?;
        match &self.checkpoint_root {
            Some(root) => checkpoint::read(root, uuid, &info.resources, dest),
            None => checkpoint::download(self.remote_storage()?, uuid, &info.resources, dest),
        }
    }

    /// What the master knows of checkpoint `uuid`: step, files, metadata.
    pub fn checkpoint_info(&self, uuid: &str) -> Result<Checkpoint, SdkError> {
        checkpoint::validate_uuid(uuid)?;
        self.client.checkpoint(uuid)
    }

    fn remote_storage(&self) -> Result<&drover_storage::StorageSpec, SdkError> {
        self.checkpoint_storage.as_ref().ok_or(SdkError::MissingEnv { var: env::CHECKPOINT_DIR })
    }

    fn register_checkpoint(&self, request: &RegisterCheckpointRequest) -> Result<(), SdkError> {
        let give_up_at = Instant::now() + REGISTER_RETRY_FOR;
        let mut backoff = Duration::from_millis(200);
        let mut retried = false;
        loop {
            match self.client.register_checkpoint(request) {
                Ok(_) => return Ok(()),
                // An earlier attempt may have been stored with its answer lost; the retry then
                // conflicts with it. Only the uuid's owner can have registered it.
                Err(err) if retried && err.status() == Some(409) => {
                    return match self.client.checkpoint(&request.uuid) {
                        Ok(existing) if existing.trial_id == self.trial_id => Ok(()),
                        _ => Err(err),
                    };
                }
                Err(err) if err.is_transient() && Instant::now() + backoff < give_up_at => {
                    eprintln!("drover: registering checkpoint {}: {err}; retrying", request.uuid);
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    retried = true;
                }
                Err(err) => return Err(err),
            }
        }
    }
}

fn parse_number<T: std::str::FromStr>(var: &'static str, value: &str) -> Result<T, SdkError>
where
    T::Err: std::fmt::Display,
{
    value.trim().parse().map_err(|err: T::Err| SdkError::BadEnv {
        var,
        value: value.to_string(),
        reason: format!("expected an integer: {err}"),
    })
}
