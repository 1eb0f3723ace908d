//! The scheduler's vocabulary: agents and their slots, resource pools, requests, allocations and
//! the decisions a pass hands back. Plain data; every type serialises so that a snapshot is the
//! whole state.

use serde::{Deserialize, Serialize};

/// The caller's id for a request (the master will use one per trial or task attempt).
pub type RequestId = u64;
/// The scheduler's id for one placement of a request; a request preempted and started again gets
/// a new one. Issued in order, so they are deterministic too.
pub type AllocationId = u64;

/// A slot holds this many units; a fractional GPU request takes some of them. Integers, not
/// floats, so that four quarters fill a GPU exactly and never "1.0000000002".
pub const UNITS_PER_SLOT: u32 = 1000;
/// Priorities run from 0 (first) to this, inclusive; Determined's default is 42.
pub const MAX_PRIORITY: u8 = drover_core::limits::MAX_PRIORITY;
pub const DEFAULT_PRIORITY: u8 = drover_core::config::DEFAULT_PRIORITY as u8;
/// Fair-share weights lie in `[MIN_WEIGHT, MAX_WEIGHT]`: a weight of 1e300 or 1e-300 is a typo,
/// and would make every other group's share round to nothing.
pub const MIN_WEIGHT: f64 = drover_core::limits::MIN_WEIGHT;
pub const MAX_WEIGHT: f64 = drover_core::limits::MAX_WEIGHT;
/// The largest gang, and the most slots an agent may report (slot usage is kept in `u16`s).
pub const MAX_MEMBERS: u32 = 4096;
pub const MAX_SLOTS_PER_AGENT: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotKind {
    Cpu,
    Gpu,
}

impl SlotKind {
    pub(crate) fn index(self) -> usize {
        match self {
            SlotKind::Cpu => 0,
            SlotKind::Gpu => 1,
        }
    }
}

/// One schedulable device of an agent. Its capacity is one slot (`UNITS_PER_SLOT` units).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    pub id: String,
    pub kind: SlotKind,
}

/// A machine that runs tasks; it belongs to exactly one pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    pub id: String,
    pub pool: String,
    pub slots: Vec<Slot>,
}

/// How a pool chooses among agents that can all hold a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FitPolicy {
    /// The agent with the fewest free slots that still fit: packs work, keeps whole agents free
    /// for big gangs.
    BestFit,
    /// The agent with the most free slots: spreads work (less contention per machine).
    WorstFit,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pool {
    pub name: String,
    pub fit: FitPolicy,
    /// Whether a waiting request may preempt strictly lower-priority preemptible work.
    pub preemption: bool,
    /// How long a preempted allocation has to checkpoint and stop before it is killed.
    pub preemption_timeout_ms: u64,
    /// How many zero-slot members (controllers, predictors) may run in the pool at once.
    pub zero_slot_budget: u32,
    /// The starvation bound K: a waiting request that fits the pool's agents (were they empty) is
    /// passed over by requests behind it in at most K passes; from then on nothing behind it
    /// starts in the pool (zero-slot tasks aside) until it does.
    pub max_overtaking_passes: u32,
}

impl Pool {
    /// A pool with Determined's defaults where it has them: best fit, no preemption.
    pub fn new(name: impl Into<String>) -> Pool {
        Pool {
            name: name.into(),
            fit: FitPolicy::BestFit,
            preemption: false,
            preemption_timeout_ms: 3_600_000,
            zero_slot_budget: 64,
            max_overtaking_passes: 3,
        }
    }
}

/// What one member of a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resources {
    /// Whole slots of one kind, all on the same agent.
    Slots { kind: SlotKind, count: u32 },
    /// A fraction of one GPU, in (0, 1]; rounded up to thousandths.
    Gpu { fraction: f64 },
    /// No slot at all, under the pool's zero-slot budget.
    ZeroSlot,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub id: RequestId,
    pub pool: String,
    /// 0 ..= `MAX_PRIORITY`; lower goes first.
    pub priority: u8,
    /// The weight of this request's group in fair share (a group's weight is the largest weight
    /// among its live requests).
    pub weight: f64,
    /// The fair-share group: an experiment id today, an owner later. Opaque to the scheduler.
    pub group: String,
    /// Per member.
    pub resources: Resources,
    /// Gang size: all members start together or none does.
    pub members: u32,
    pub preemptible: bool,
}

impl Request {
    /// Units one member takes from a slot (0 for zero-slot requests). Valid only once `submit`
    /// has checked the request.
    pub(crate) fn units_per_member(&self) -> u64 {
        match self.resources {
            Resources::Slots { count, .. } => u64::from(count) * u64::from(UNITS_PER_SLOT),
            Resources::Gpu { fraction } => u64::from(fraction_units(fraction)),
            Resources::ZeroSlot => 0,
        }
    }

    /// Units each placement of this request takes from each of its slots: a whole slot, or the
    /// fraction of a GPU (0 for zero-slot requests).
    pub fn units_per_slot(&self) -> u32 {
        match self.resources {
            Resources::Slots { .. } => UNITS_PER_SLOT,
            Resources::Gpu { fraction } => fraction_units(fraction),
            Resources::ZeroSlot => 0,
        }
    }

    pub(crate) fn usage_units(&self) -> u64 {
        self.units_per_member() * u64::from(self.members)
    }
}

/// A fraction of a slot in units, rounded up so that a placement never holds less than asked.
pub(crate) fn fraction_units(fraction: f64) -> u32 {
    let units = (fraction * f64::from(UNITS_PER_SLOT) - 1e-9).ceil();
    units.clamp(1.0, f64::from(UNITS_PER_SLOT)) as u32
}

/// Where one gang member runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub agent: String,
    /// Empty for a zero-slot member.
    pub slots: Vec<String>,
    /// Units taken from each of `slots`: `UNITS_PER_SLOT` for whole slots, less for a fraction.
    pub units: u32,
}

impl Placement {
    /// The share of each slot this member holds: 1.0 for whole slots, e.g. 0.25 for `gpu: 0.25`.
    pub fn fraction(&self) -> f64 {
        f64::from(self.units) / f64::from(UNITS_PER_SLOT)
    }
}

/// A running (or stopping) gang.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Allocation {
    pub id: AllocationId,
    pub request: Request,
    /// One per member, in rank order.
    pub placements: Vec<Placement>,
    /// Placements whose agent left: their units are gone with the agent.
    pub lost: Vec<bool>,
    pub started_ms: u64,
    /// Set once the scheduler asked it to checkpoint and stop.
    pub preempted: Option<Preemption>,
    /// The request was cancelled while this allocation ran: it is not requeued.
    pub cancelled: bool,
    /// The queue position it had (kept so that a preempted request goes back to its place).
    pub(crate) seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preemption {
    pub deadline_ms: u64,
    pub killed: bool,
}

/// What the master must do after a pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Decision {
    /// Start every member of the gang, as `Scheduler::allocation(allocation)` places them
    /// (`placements[i]` is rank i). The placements live there only: a pass that starts tens of
    /// thousands of requests does not copy each one.
    Start { request: RequestId, allocation: AllocationId },
    /// Ask the allocation to checkpoint and stop (`should_stop`) before `deadline_ms`.
    Preempt { allocation: AllocationId, request: RequestId, deadline_ms: u64 },
    /// The deadline of a preemption has passed: stop it now.
    Kill { allocation: AllocationId, request: RequestId },
}

/// Why a pending request did not start in the last pass (for `drover job list`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum WaitReason {
    /// Submitted after the last pass.
    NotConsideredYet,
    /// The pool has no agent.
    NoAgents,
    /// The pool's agents (even were they idle) cannot hold it any more: agents have left since it
    /// was accepted.
    CannotFitCurrentAgents,
    /// The pool is reserved for a request that has waited too long (the starvation bound).
    PoolReservedFor { request: RequestId },
    /// Lower-priority work is checkpointing to make room for it.
    WaitingForPreemption,
    /// The zero-slot budget of the pool is used up.
    ZeroSlotBudgetFull { budget: u32 },
    /// Higher-priority requests took or wait for the capacity it needs.
    BehindHigherPriority,
    /// Its group holds more than its weighted share of the pool.
    OverFairShare { usage_units: u64, share_units: u64 },
    /// A single member: no agent of the pool has that much free.
    NoAgentWithFreeSlots { units_per_member: u64 },
    /// A gang of `members`: only `free` of them could be placed now.
    GangNeedsPlaces { members: u32, free: u64 },
}

/// A pending request as the last pass saw it, in queue order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Waiting {
    pub request: RequestId,
    /// 0-based position in its pool's queue during that pass.
    pub position: u32,
    pub reason: WaitReason,
}

/// How an allocation ended, as far as the scheduler is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ended {
    pub request: RequestId,
    /// It ended after a `Preempt`: the master must not count it as a restart.
    pub preempted: bool,
    /// One of its agents left.
    pub lost: bool,
    /// The request is back in the queue (preempted, not lost, not cancelled).
    pub requeued: bool,
}

/// What `cancel` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Cancelled {
    /// It was waiting; it is gone.
    Dequeued,
    /// It is running: the master must stop it and report `allocation_ended`; it is not requeued.
    Running { allocation: AllocationId },
}
