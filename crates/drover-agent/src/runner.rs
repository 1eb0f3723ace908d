//! Running one task: a process in its own process group, in a fresh working directory, with
//! its output relayed as timestamped log batches.
//!
//! The runner knows nothing of the websocket: everything it reports goes into an
//! `UnboundedSender<AgentMessage>`, in order — `TaskStarted`, `TaskLogs`*, then exactly one
//! `TaskExited` as its last message (also when the task never started, with `error` set).
//!
//! The process group is the task: signals go to the whole group, so a launcher's children (data
//! loader workers, `torchrun` ranks) stop with it. The task is over when its leader has exited
//! *and* its group is empty: members still alive then keep what remains of a kill's grace (or,
//! after a natural exit, get SIGTERM and a short grace), then SIGKILL, so that `TaskExited`
//! never announces a task while a process of it still holds a GPU.
//!
//! **Output.** Each line of stdout and stderr becomes a [`LogLine`]; a line longer than
//! [`MAX_LINE_BYTES`] is cut into fragments marked with [`SPLIT_END_MARKER`] and
//! [`SPLIT_START_MARKER`], and lines go out in `TaskLogs` batches of at most
//! [`LOG_BATCH_LINES`] lines and [`LOG_BATCH_BYTES`] bytes; `runner/logs.rs` says how.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use drover_api::agent::{AgentMessage, LogLine, SlotKind, SlotSpec, TaskSpec};
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::context::{CACHE_DIR_NAME, ContextCache, ContextError};

mod logs;

pub use logs::{LOG_BATCH_BYTES, LOG_BATCH_LINES, MAX_LINE_BYTES, SPLIT_END_MARKER, SPLIT_START_MARKER};
use logs::{batch_logs, read_lines};

/// Lines waiting between a stream's reader and the batcher.
const LINE_CHANNEL_CAPACITY: usize = 256;
/// After a natural exit, how long processes the task left behind get between SIGTERM and
/// SIGKILL.
const LEFTOVER_GRACE: Duration = Duration::from_secs(3);
/// How often to look whether the task's process group is empty, once its leader has exited.
const GROUP_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long after SIGKILL to keep waiting for processes to disappear.
const UNKILLABLE_WAIT: Duration = Duration::from_secs(2);
/// After the process group is gone, how long to wait for its pipes to drain. A process that
/// escaped the group (`setsid`) can hold them open forever; its output after this is lost.
const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// What every task on this agent shares.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// `http://host:port`, for fetching contexts and as the tasks' default `DROVER_MASTER`.
    pub master_url: String,
    /// Each task runs in `<work_root>/<allocation_id>/`.
    pub work_root: PathBuf,
    /// This agent's slots, to map a task's slot ids to devices.
    pub slots: Vec<SlotSpec>,
    /// Experiments' contexts, unpacked once each (under `work_root`).
    pub contexts: Arc<ContextCache>,
}

impl RunnerConfig {
    /// A configuration with a context cache in `<work_root>/.drover-contexts`.
    pub fn new(master_url: impl Into<String>, work_root: impl Into<PathBuf>, slots: Vec<SlotSpec>) -> Self {
        let work_root = work_root.into();
        RunnerConfig { master_url: master_url.into(), contexts: Arc::new(ContextCache::new(&work_root)), work_root, slots }
    }
}

/// Why a task could not start; sent as the `error` of its `TaskExited`.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid allocation id {0:?}: it must be a single path component")]
    InvalidAllocationId(String),
    #[error("the task has an empty argv")]
    EmptyArgv,
    #[error("slot {0:?} does not exist on this agent")]
    UnknownSlot(String),
    #[error("cannot prepare the working directory {path}: {source}")]
    WorkDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error("cannot start {program:?}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("killed before the process started")]
    KilledBeforeStart,
}

/// A running (or finished) task. Dropping the handle does not stop the task.
#[derive(Debug)]
pub struct TaskHandle {
    allocation_id: String,
    /// The shortest grace period asked for so far; `None` until the first kill request.
    kill_request: watch::Sender<Option<Duration>>,
    supervisor: JoinHandle<()>,
}

impl TaskHandle {
    pub fn allocation_id(&self) -> &str {
        &self.allocation_id
    }

    /// Asks the task to stop: SIGTERM to its process group, then SIGKILL once `grace` has
    /// passed (at once for a zero grace). A later request with a shorter grace shortens the
    /// wait; a longer one does not extend it. Killing a finished task does nothing.
    pub fn kill(&self, grace: Duration) {
        self.kill_request.send_modify(|current| {
            *current = Some(current.map_or(grace, |earlier| earlier.min(grace)));
        });
    }

    /// True once the task's `TaskExited` has been sent.
    pub fn is_finished(&self) -> bool {
        self.supervisor.is_finished()
    }

    /// Waits until the task's `TaskExited` has been sent.
    pub async fn wait(self) {
        if let Err(error) = self.supervisor.await {
            tracing::error!(allocation_id = %self.allocation_id, %error, "task supervisor failed");
        }
    }
}

/// Starts a task in the background and returns at once; see the module doc for the messages it
/// sends on `outgoing`.
pub fn spawn_task(config: Arc<RunnerConfig>, spec: TaskSpec, outgoing: mpsc::UnboundedSender<AgentMessage>) -> TaskHandle {
    let (kill_request, kill_requests) = watch::channel(None);
    let allocation_id = spec.allocation_id.clone();
    let supervisor = tokio::spawn(supervise(config, spec, outgoing, kill_requests));
    TaskHandle { allocation_id, kill_request, supervisor }
}

async fn supervise(
    config: Arc<RunnerConfig>,
    spec: TaskSpec,
    outgoing: mpsc::UnboundedSender<AgentMessage>,
    mut kill_requests: watch::Receiver<Option<Duration>>,
) {
    let allocation_id = spec.allocation_id.clone();
    let exited = match start(&config, &spec, &outgoing, &mut kill_requests).await {
        Ok(running) => run_to_exit(running, &allocation_id, &outgoing, kill_requests).await,
        Err(error) => {
            tracing::warn!(%allocation_id, %error, "task did not start");
            AgentMessage::TaskExited { allocation_id, exit_code: None, signal: None, error: Some(error.to_string()) }
        }
    };
    // The work directory holds a copy of the context and the task's scratch files; what the
    // task wanted kept has left through the SDK (metrics, checkpoints), so it goes.
    if is_single_component(&spec.allocation_id) {
        let _ = tokio::fs::remove_dir_all(config.work_root.join(&spec.allocation_id)).await;
    }
    // The receiver is gone only when the agent itself is shutting down; nothing to report to.
    let _ = outgoing.send(exited);
}

/// The id names a directory under work_root, so it must not be able to climb out of it (nor
/// be the context cache, which is removed with it).
fn is_single_component(allocation_id: &str) -> bool {
    !(allocation_id.is_empty()
        || allocation_id == "."
        || allocation_id == ".."
        || allocation_id == CACHE_DIR_NAME
        || allocation_id.contains('/')
        || allocation_id.contains('\0'))
}

struct RunningTask {
    child: Child,
    process_group: Pid,
    log_batcher: JoinHandle<()>,
}

async fn start(
    config: &RunnerConfig,
    spec: &TaskSpec,
    outgoing: &mpsc::UnboundedSender<AgentMessage>,
    kill_requests: &mut watch::Receiver<Option<Duration>>,
) -> Result<RunningTask, StartError> {
    let allocation_id = &spec.allocation_id;
    if !is_single_component(allocation_id) {
        return Err(StartError::InvalidAllocationId(allocation_id.clone()));
    }
    let (program, args) = spec.argv.split_first().ok_or(StartError::EmptyArgv)?;
    let environment = task_environment(spec, &config.slots, &config.master_url)?;

    let work_dir = config.work_root.join(allocation_id);
    let work_dir_error = |source| StartError::WorkDir { path: work_dir.clone(), source };
    // Fresh: leftovers from an earlier run under the same id must not leak into this one.
    match tokio::fs::remove_dir_all(&work_dir).await {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(work_dir_error(error)),
    }
    tokio::fs::create_dir_all(&work_dir).await.map_err(work_dir_error)?;

    if let Some(context_path) = &spec.context_path {
        // A kill may arrive while a large context downloads; it must not wait for it.
        tokio::select! {
            prepared = config.contexts.populate(&config.master_url, context_path, &spec.token, &work_dir) => prepared?,
            () = kill_requested(kill_requests) => return Err(StartError::KilledBeforeStart),
        }
    }
    if kill_requests.borrow().is_some() {
        return Err(StartError::KilledBeforeStart);
    }

    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(&work_dir)
        // The cluster's join secret is the agent's, never the trial's: with it a trial could
        // join as an agent and receive other trials' tokens and storage secrets.
        .env_remove(drover_api::agent::JOIN_TOKEN_ENV)
        .envs(&environment)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let spawn_error = |source| StartError::Spawn { program: program.clone(), source };
    let mut child = command.spawn().map_err(spawn_error)?;
    let pid = child.id().ok_or_else(|| spawn_error(std::io::Error::other("the process exited before its pid was read")))?;
    let process_group = Pid::from_raw(pid as i32);
    tracing::info!(%allocation_id, pid, "task started");
    let _ = outgoing.send(AgentMessage::TaskStarted { allocation_id: allocation_id.clone(), pid });

    let (lines_tx, lines_rx) = mpsc::channel(LINE_CHANNEL_CAPACITY);
    let readers = [
        child.stdout.take().map(|stdout| tokio::spawn(read_lines(stdout, "stdout", lines_tx.clone()))),
        child.stderr.take().map(|stderr| tokio::spawn(read_lines(stderr, "stderr", lines_tx.clone()))),
    ];
    drop(lines_tx);
    let log_batcher = tokio::spawn(batch_logs(allocation_id.clone(), lines_rx, readers.into_iter().flatten().collect(), outgoing.clone()));
    Ok(RunningTask { child, process_group, log_batcher })
}

/// Resolves once a kill has been requested (at once if one already was). Never resolves if
/// the handle is dropped without a request: the task then simply runs to its end.
async fn kill_requested(kill_requests: &mut watch::Receiver<Option<Duration>>) {
    if kill_requests.wait_for(Option::is_some).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// SIGTERM-then-SIGKILL escalation for one process group.
struct Escalation<'a> {
    allocation_id: &'a str,
    group: Pid,
    term_sent: bool,
    /// When SIGKILL was sent, if it was.
    killed_at: Option<Instant>,
    kill_deadline: Option<Instant>,
}

impl Escalation<'_> {
    fn request(&mut self, grace: Duration) {
        if grace.is_zero() {
            self.kill_now();
            return;
        }
        if self.killed_at.is_some() {
            return;
        }
        if !self.term_sent {
            signal_group(self.allocation_id, self.group, Signal::SIGTERM);
            self.term_sent = true;
        }
        let deadline = Instant::now() + grace;
        self.kill_deadline = Some(self.kill_deadline.map_or(deadline, |earlier| earlier.min(deadline)));
    }

    fn kill_now(&mut self) {
        signal_group(self.allocation_id, self.group, Signal::SIGKILL);
        self.killed_at.get_or_insert_with(Instant::now);
        self.kill_deadline = None;
    }
}

async fn run_to_exit(
    mut running: RunningTask,
    allocation_id: &str,
    outgoing: &mpsc::UnboundedSender<AgentMessage>,
    mut kill_requests: watch::Receiver<Option<Duration>>,
) -> AgentMessage {
    let group = running.process_group;
    let mut escalation = Escalation { allocation_id, group, term_sent: false, killed_at: None, kill_deadline: None };
    let mut kill_channel_open = true;
    let status = loop {
        tokio::select! {
            status = running.child.wait() => break status,
            changed = kill_requests.changed(), if kill_channel_open => {
                if changed.is_err() {
                    kill_channel_open = false;
                    continue;
                }
                if let Some(grace) = *kill_requests.borrow_and_update() {
                    escalation.request(grace);
                }
            }
            () = sleep_until_some(escalation.kill_deadline) => escalation.kill_now(),
        }
    };

    // The leader is gone, but its group may not be: a launcher often dies of SIGTERM before
    // the workers it started have finished shutting down, and they keep what remains of the
    // grace. After a natural exit, leftovers are asked to stop and get LEFTOVER_GRACE. The group
    // id cannot be reused while any member exists, so signals reach only the task's processes.
    if escalation.killed_at.is_none() && !escalation.term_sent && group_has_live_members(group) {
        tracing::info!(%allocation_id, "the task left processes behind; stopping them");
        escalation.request(LEFTOVER_GRACE);
    }
    while group_has_live_members(group) {
        if escalation.killed_at.is_some_and(|at| at.elapsed() > UNKILLABLE_WAIT) {
            // Stuck in the kernel (uninterruptible sleep); nothing more the agent can do.
            tracing::warn!(%allocation_id, "processes of the task survive SIGKILL; reporting the exit anyway");
            break;
        }
        tokio::select! {
            changed = kill_requests.changed(), if kill_channel_open => {
                if changed.is_err() {
                    kill_channel_open = false;
                } else if let Some(grace) = *kill_requests.borrow_and_update() {
                    escalation.request(grace);
                }
            }
            () = sleep_until_some(escalation.kill_deadline) => escalation.kill_now(),
            () = tokio::time::sleep(GROUP_POLL_INTERVAL) => {}
        }
    }

    if tokio::time::timeout(OUTPUT_DRAIN_TIMEOUT, &mut running.log_batcher).await.is_err() {
        tracing::warn!(%allocation_id, "task output still open after exit; dropping the rest");
        running.log_batcher.abort();
        // The batcher was cut off mid-way; what it had not flushed is lost, and that is said.
        let _ = outgoing.send(AgentMessage::TaskLogs {
            allocation_id: allocation_id.to_owned(),
            lines: vec![LogLine {
                ts_ms: now_ms(),
                stream: "agent".to_owned(),
                line: "output was still open after the task exited (a process outside its \
                       process group?); the rest is not collected"
                    .to_owned(),
            }],
        });
    }
    let (exit_code, signal, error) = match status {
        Ok(status) => (status.code(), status.signal(), None),
        Err(error) => (None, None, Some(format!("cannot wait for the process: {error}"))),
    };
    tracing::info!(%allocation_id, ?exit_code, ?signal, "task exited");
    AgentMessage::TaskExited { allocation_id: allocation_id.to_owned(), exit_code, signal, error }
}

/// Whether any process other than a zombie is in process group `group`. Zombies are skipped:
/// they are dead, only not yet reaped (and where init does not reap, never will be), yet they
/// keep `killpg(group, 0)` succeeding. Without `/proc`, falls back to that check.
fn group_has_live_members(group: Pid) -> bool {
    // The common case, a task whose processes have all exited and been reaped, needs no scan
    // of /proc: the group no longer exists at all.
    if killpg(group, None).is_err() {
        return false;
    }
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return true;
    };
    let group = group.as_raw();
    processes.flatten().any(|process| {
        let is_pid = process.file_name().to_str().is_some_and(|name| name.bytes().all(|b| b.is_ascii_digit()));
        // Processes vanish between listing and reading; an unreadable one is simply not counted.
        is_pid && std::fs::read_to_string(process.path().join("stat")).is_ok_and(|stat| stat_is_live_member(&stat, group))
    })
}

/// Parses `/proc/<pid>/stat`: `pid (comm) state ppid pgrp ...`, where comm may contain spaces
/// and parentheses, hence the split at the last `)`.
fn stat_is_live_member(stat: &str, group: i32) -> bool {
    let Some((_, after_comm)) = stat.rsplit_once(')') else {
        return false;
    };
    let mut fields = after_comm.split_whitespace();
    let state = fields.next();
    let process_group = fields.nth(1).and_then(|field| field.parse::<i32>().ok());
    process_group == Some(group) && !matches!(state, Some("Z" | "X" | "x"))
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn signal_group(allocation_id: &str, group: Pid, signal: Signal) {
    tracing::info!(%allocation_id, %group, ?signal, "signalling task process group");
    match killpg(group, signal) {
        // Already gone: the exit is about to be seen by wait().
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(error) => tracing::warn!(%allocation_id, %error, ?signal, "cannot signal task"),
    }
}

/// The environment added to the agent's own for a task: `spec.env`, then what only the agent
/// knows — which devices its slots are (`CUDA_VISIBLE_DEVICES`, set only on an agent that has
/// CUDA slots, so a CPU-only machine leaves the variable alone), the slot ids, and how this
/// agent reaches the master (`DROVER_MASTER`, unless the master set it).
pub fn task_environment(spec: &TaskSpec, agent_slots: &[SlotSpec], master_url: &str) -> Result<BTreeMap<String, String>, StartError> {
    let slots_by_id: HashMap<&str, &SlotSpec> = agent_slots.iter().map(|slot| (slot.id.as_str(), slot)).collect();
    let mut device_indices: Vec<&str> = Vec::new();
    for slot_id in &spec.slot_ids {
        let slot = slots_by_id.get(slot_id.as_str()).ok_or_else(|| StartError::UnknownSlot(slot_id.clone()))?;
        if slot.kind == SlotKind::Cuda
            && let Some(index) = slot.device_index.as_deref()
            && !device_indices.contains(&index)
        {
            device_indices.push(index);
        }
    }

    let mut environment = spec.env.clone();
    environment.entry(drover_api::env::MASTER.to_owned()).or_insert_with(|| master_url.trim_end_matches('/').to_owned());
    environment.insert(drover_api::env::SLOT_IDS.to_owned(), spec.slot_ids.join(","));
    if agent_slots.iter().any(|slot| slot.kind == SlotKind::Cuda) {
        // The agent owns the mapping from slots to devices; a task on only CPU slots gets an
        // empty list so it cannot grab a GPU another task was given.
        environment.insert("CUDA_VISIBLE_DEVICES".to_owned(), device_indices.join(","));
        // Device indices come from nvidia-smi, which numbers by PCI bus; CUDA by default
        // numbers fastest first, which can differ.
        environment.entry("CUDA_DEVICE_ORDER".to_owned()).or_insert_with(|| "PCI_BUS_ID".to_owned());
    }
    Ok(environment)
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as i64)
}

#[cfg(test)]
mod tests;
