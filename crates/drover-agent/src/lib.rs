//! The drover agent: runs on each machine with slots (GPUs or CPU shares), keeps one websocket
//! to the master and runs the task processes the master sends it.
//!
//! Architecture invariant: **the agent decides nothing.** It knows nothing of experiments,
//! searchers, hyperparameters or the store. It reports what it has (its slots) and what runs on
//! it, starts exactly the task the master describes (argv, env, slots, context), relays its
//! output, reports how it ended, and kills it when told. Scheduling, retries and bookkeeping all
//! live in the master; anything the agent cannot do (an unknown slot id, a context that would
//! escape its directory, a missing executable) is reported back as a `TaskExited` error rather
//! than worked around.
//!
//! Modules:
//! - [`slots`]: discovering this machine's slots (nvidia-smi for GPUs, else CPU slots).
//! - [`context`]: fetching and safely extracting an experiment's context tarball, once per
//!   experiment (a cache under the work root), then copied into each task's directory.
//! - [`runner`]: one task as a process group, independent of the websocket: it writes its
//!   messages into a channel, so it can be driven and tested without a master. Long output
//!   lines are cut into marked fragments and batches are bounded in lines and bytes.
//! - [`agent`]: the websocket session with the master (join token, per-process instance id),
//!   reconnection, buffering of task messages while disconnected, and the frame size limit.

pub mod agent;
pub mod context;
pub mod runner;
pub mod slots;

pub use agent::{AgentConfig, AgentError, run_agent};
pub use runner::{RunnerConfig, TaskHandle, spawn_task};
pub use slots::{SlotOptions, discover};
