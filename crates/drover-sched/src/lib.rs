//! The cluster scheduler as a sans-IO state machine: the master feeds events in (a request was
//! submitted or cancelled, an agent joined or left, an allocation ended, time passed) and gets
//! decisions out of [`Scheduler::schedule`] (start this gang on these slots, preempt that
//! allocation by a deadline, kill one whose deadline has passed), plus
//! [`Scheduler::why_waiting`] for each request still queued.
//!
//! - `model`: the vocabulary (agents, slots with a capacity of 1000 units so a GPU holds
//!   fractions, pools, requests, allocations, decisions, wait reasons) and its limits.
//! - `scheduler`: the state and the events; refusals are typed and name the field (`error`).
//! - `pass`: one scheduling pass: priority, weighted fair share between groups, gangs all or
//!   nothing, the starvation bound, preemption.
//! - `capacity`: a pool's free capacity indexed by free amount, so a pass over 100,000 requests
//!   and 10,000 agents costs bucket look-ups; best fit / worst fit; fractional GPU packing.
//! - `sim`: a seeded simulator that drives the scheduler with agent churn, mixed work and
//!   preemptions that do or do not finish in time, and checks the invariants at every step.
//!
//! Bounds. Starvation: a waiting request that fits its pool's agents (were they idle) is passed
//! over by requests behind it (same or lower priority, or groups further over their share) in at
//! most `Pool::max_overtaking_passes` passes (default 3); from then on nothing behind it that
//! needs a slot starts in its pool until it has started (`tests/policies.rs`, and the simulator
//! checks it at every step). Priority is absolute: a stream of higher-priority work can hold a
//! request back for ever, by design. Fair share: between groups of one priority that all have
//! work waiting, with one-slot requests in a full pool, every pass leaves usage divided by weight
//! within `1 / min weight` slots (`tests/fair_share.rs`); with mixed sizes the benchmark measures
//! the spread (it stays within the largest request, 32 slots, there), nothing proves it.
//!
//! An agent may change its slots (`agent_changed`) but not from under running work, and an agent
//! out of touch (`set_schedulable(false)`) keeps its work and gets nothing new. After a master
//! restart, running work is taken back with `adopt` before its agents have joined again. A
//! waiting request may be re-prioritised (`update_request`) or asked for in another shape
//! (`reshape`) without losing its place.
//!
//! Not yet: fair
//! share between priorities or by preemption (a group over its share keeps what runs), a
//! reservation narrower than the whole pool (a starving request drains its pool, it does not pick
//! the agents it will use), preemption for zero-slot requests.
//!
//! **Architecture Invariant:** sans-IO and deterministic: no tokio, no SQL, no clock (time
//! comes in as `now_ms`), no system randomness, no hash-order iteration in a decision. The whole
//! state serialises ([`Scheduler::snapshot`] / [`Scheduler::restore`]), and a restored scheduler
//! given the same events makes the same decisions. It knows nothing of trials, experiments,
//! searchers or the store: it sees requests, groups (opaque strings) and agents.

mod capacity;
pub mod error;
pub mod model;
mod pass;
mod scheduler;
pub mod sim;

pub use error::{AdoptError, AgentError, ConfigError, RequestError, RestoreError, SubmitError, UpdateError};
pub use model::*;
pub use scheduler::Scheduler;
