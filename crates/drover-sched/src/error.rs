//! Typed refusals. Each names the field at fault so the master can tell a user which line of
//! their configuration to fix.

use thiserror::Error;

use crate::model::{AllocationId, RequestId};

#[derive(Debug, Clone, PartialEq, Error)]
pub enum ConfigError {
    #[error("pools: pool `{0}` is defined twice")]
    DuplicatePool(String),
    #[error("pools: a pool needs a name")]
    EmptyPoolName,
}

/// Why a request can never be placed (or is malformed); it is refused at submission instead of
/// waiting forever (Determined's users hit exactly that, PR #4524).
#[derive(Debug, Clone, PartialEq, Error)]
pub enum SubmitError {
    #[error("id: request {0} already exists")]
    Duplicate(RequestId),
    #[error("pool: unknown resource pool `{0}`")]
    UnknownPool(String),
    #[error("priority: {0} is out of range 0..={max}", max = crate::model::MAX_PRIORITY)]
    Priority(u8),
    #[error("weight: {0} is not in [{min}, {max}]", min = crate::model::MIN_WEIGHT, max = crate::model::MAX_WEIGHT)]
    Weight(f64),
    #[error("members: {0} is not in 1..={max}", max = crate::model::MAX_MEMBERS)]
    Members(u32),
    #[error("resources.slots: a member needs at least one slot (use zero_slot for none)")]
    ZeroSlots,
    #[error("resources.gpu: {0} is not a fraction in (0, 1]")]
    Fraction(f64),
    #[error("resources.slots: {asked} slots per member, but the largest agent of pool `{pool}` has {max}")]
    TooManySlots { pool: String, asked: u32, max: u32 },
    #[error("resources.gpu: pool `{pool}` has no GPU")]
    NoGpu { pool: String },
    #[error("members: a gang of {asked} cannot fit pool `{pool}`, which holds at most {max} such members")]
    GangTooLarge { pool: String, asked: u32, max: u64 },
    #[error("members: {asked} zero-slot members exceed pool `{pool}`'s budget of {budget}")]
    ZeroSlotBudget { pool: String, asked: u32, budget: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AgentError {
    #[error("id: an agent needs an id")]
    EmptyId,
    #[error("id: agent `{0}` has already joined")]
    AlreadyJoined(String),
    #[error("id: agent `{0}` is unknown")]
    Unknown(String),
    #[error("pool: unknown resource pool `{0}`")]
    UnknownPool(String),
    #[error("slots: slot id `{0}` is reported twice")]
    DuplicateSlot(String),
    #[error("slots: {0} slots, at most {max} per agent", max = crate::model::MAX_SLOTS_PER_AGENT)]
    TooManySlots(usize),
    #[error("slots: slot `{0}` is held by running work and must stay as it is until that work ends")]
    SlotInUse(String),
    #[error("pool: the agent runs work in pool `{from}` and cannot move to `{to}` until it ends")]
    PoolChangeUnderWork { from: String, to: String },
}

/// Why running work could not be taken back after a master restart.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum AdoptError {
    #[error(transparent)]
    Submit(#[from] SubmitError),
    #[error("placements: {placements} placements for {members} members")]
    Placements { members: u32, placements: usize },
    #[error("placements: {units} units on agent `{agent}`, the request takes {expected} per slot")]
    Units { agent: String, units: u32, expected: u32 },
    #[error("placements: {slots} slots on agent `{agent}`, a member of the request takes {expected}")]
    Slots { agent: String, slots: usize, expected: usize },
    #[error("placements: agent `{0}` has no room on slot `{1}`")]
    NoRoom(String, String),
}

#[derive(Debug, Clone, PartialEq, Error)]
pub enum UpdateError {
    #[error(transparent)]
    Submit(SubmitError),
    #[error(transparent)]
    Request(RequestError),
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RequestError {
    #[error("request {0} is unknown (never submitted, finished or cancelled)")]
    UnknownRequest(RequestId),
    #[error("allocation {0} is unknown (never started or already ended)")]
    UnknownAllocation(AllocationId),
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RestoreError {
    #[error("snapshot: {0}")]
    Malformed(String),
}
