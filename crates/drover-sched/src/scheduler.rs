//! The scheduler's state and the events that change it. A pass (`schedule`) lives in `pass.rs`;
//! this module only keeps the books: who is queued where, who holds which slot, which pool has
//! which agents.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{AdoptError, AgentError, ConfigError, RequestError, RestoreError, SubmitError, UpdateError};
use crate::model::{
    Agent, Allocation, AllocationId, Cancelled, Decision, Ended, MAX_MEMBERS, MAX_PRIORITY, MAX_SLOTS_PER_AGENT, MAX_WEIGHT, MIN_WEIGHT,
    Pool, Request, RequestId, Resources, SlotKind, UNITS_PER_SLOT, WaitReason, Waiting, fraction_units,
};

/// Where a pending request sits: pools, then priority, then fair-share group, then arrival.
/// The pass walks this order, so keeping the queue in a `BTreeMap` under it costs no sort.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct QueueKey {
    pub pool: u32,
    pub priority: u8,
    pub group: String,
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct PendingEntry {
    pub request: Request,
    /// Passes in which something behind it started while it could not (the starvation count).
    pub overtaken: u32,
    /// Set by a pass that started it, which then drops it from the queue.
    #[serde(skip)]
    pub started: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Status {
    Pending(QueueKey),
    Running(AllocationId),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct AgentState {
    pub agent: Agent,
    /// Units in use, per slot (same order as `agent.slots`).
    pub used: Vec<u16>,
    /// False while the agent is out of touch (its connection dropped, it may come back): it keeps
    /// what runs on it but gets nothing new.
    #[serde(default = "yes")]
    pub schedulable: bool,
}

fn yes() -> bool {
    true
}

/// What a pool could hold were all its agents idle; kept up to date as agents come and go so
/// that `submit` can refuse the impossible without walking every agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct PoolCapacity {
    pub agents: u32,
    /// Per slot kind: number of agents having n slots of that kind, by n (n > 0).
    pub by_kind: [BTreeMap<u32, u32>; 2],
}

impl PoolCapacity {
    fn add(&mut self, agent: &Agent, sign: i64) {
        self.agents = (i64::from(self.agents) + sign) as u32;
        for kind in [SlotKind::Cpu, SlotKind::Gpu] {
            let n = agent.slots.iter().filter(|s| s.kind == kind).count() as u32;
            if n == 0 {
                continue;
            }
            let map = &mut self.by_kind[kind.index()];
            let c = map.entry(n).or_insert(0);
            *c = (i64::from(*c) + sign) as u32;
            if *c == 0 {
                map.remove(&n);
            }
        }
    }

    pub fn max_slots(&self, kind: SlotKind) -> u32 {
        self.by_kind[kind.index()].keys().next_back().copied().unwrap_or(0)
    }

    /// How many members needing `count` slots of `kind` each fit the idle pool.
    pub fn whole_members(&self, kind: SlotKind, count: u32) -> u64 {
        self.by_kind[kind.index()].iter().map(|(&n, &agents)| u64::from(n / count) * u64::from(agents)).sum()
    }

    /// How many members needing `units` of a GPU each fit the idle pool.
    pub fn fraction_members(&self, units: u32) -> u64 {
        let gpus: u64 = self.by_kind[SlotKind::Gpu.index()].iter().map(|(&n, &agents)| u64::from(n) * u64::from(agents)).sum();
        gpus * u64::from(UNITS_PER_SLOT / units)
    }

    /// Whether the request fits the pool were every agent idle (false with no agent at all).
    pub fn fits_idle(&self, request: &Request, zero_slot_budget: u32) -> bool {
        let m = u64::from(request.members);
        match request.resources {
            Resources::Slots { kind, count } => self.whole_members(kind, count) >= m,
            Resources::Gpu { fraction } => self.fraction_members(fraction_units(fraction)) >= m,
            Resources::ZeroSlot => self.agents > 0 && u64::from(zero_slot_budget) >= m,
        }
    }
}

/// The whole scheduler: plain data, so `snapshot` is a serialisation of `self`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scheduler {
    pub(crate) pools: Vec<Pool>,
    pub(crate) capacity: Vec<PoolCapacity>,
    pub(crate) agents: BTreeMap<String, AgentState>,
    #[serde(with = "as_pairs")]
    pub(crate) pending: BTreeMap<QueueKey, PendingEntry>,
    pub(crate) requests: BTreeMap<RequestId, Status>,
    pub(crate) allocations: BTreeMap<AllocationId, Allocation>,
    pub(crate) next_allocation: AllocationId,
    pub(crate) next_seq: u64,
    pub(crate) now_ms: u64,
    /// The pending requests of the last pass, in queue order, with why each waits.
    pub(crate) last_pass: Vec<Waiting>,
}

impl Scheduler {
    /// A scheduler with these pools (names unique and non-empty), no agent and an empty queue.
    pub fn new(pools: Vec<Pool>) -> Result<Scheduler, ConfigError> {
        for (i, p) in pools.iter().enumerate() {
            if p.name.is_empty() {
                return Err(ConfigError::EmptyPoolName);
            }
            if pools[..i].iter().any(|q| q.name == p.name) {
                return Err(ConfigError::DuplicatePool(p.name.clone()));
            }
        }
        Ok(Scheduler {
            capacity: vec![PoolCapacity::default(); pools.len()],
            pools,
            agents: BTreeMap::new(),
            pending: BTreeMap::new(),
            requests: BTreeMap::new(),
            allocations: BTreeMap::new(),
            next_allocation: 1,
            next_seq: 0,
            now_ms: 0,
            last_pass: Vec::new(),
        })
    }

    pub(crate) fn pool_index(&self, name: &str) -> Option<usize> {
        self.pools.iter().position(|p| p.name == name)
    }

    /// Queues a request, or refuses it (naming the field) when it is malformed or can never fit
    /// the pool's current agents. A pool with no agent yet accepts anything well-formed: agents
    /// may still join, and `why_waiting` says `no_agents` meanwhile.
    pub fn submit(&mut self, request: Request) -> Result<(), SubmitError> {
        let pool = self.check(&request)?;
        self.enqueue_next(pool, request);
        Ok(())
    }

    /// Queues a well-formed request even when the pool's current agents cannot hold it: for a
    /// request accepted earlier that comes back (a restart after a failure, a master that
    /// restarted) while agents are away. It waits, saying `cannot_fit_current_agents`.
    pub fn submit_waiting(&mut self, request: Request) -> Result<(), SubmitError> {
        let pool = self.check_form(&request)?;
        self.enqueue_next(pool, request);
        Ok(())
    }

    fn enqueue_next(&mut self, pool: usize, request: Request) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.enqueue(pool as u32, seq, request);
    }

    /// What `submit` would refuse, without queueing anything: for a master that checks a whole
    /// experiment before writing any of it. Returns the pool's index.
    pub fn check(&self, request: &Request) -> Result<usize, SubmitError> {
        let pool = self.check_form(request)?;
        self.check_fit(pool, request)?;
        Ok(pool)
    }

    /// The request is well-formed: known pool, id not in use, every field in range.
    fn check_form(&self, request: &Request) -> Result<usize, SubmitError> {
        if self.requests.contains_key(&request.id) {
            return Err(SubmitError::Duplicate(request.id));
        }
        let pool = self.pool_index(&request.pool).ok_or_else(|| SubmitError::UnknownPool(request.pool.clone()))?;
        if request.priority > MAX_PRIORITY {
            return Err(SubmitError::Priority(request.priority));
        }
        if !(MIN_WEIGHT..=MAX_WEIGHT).contains(&request.weight) {
            return Err(SubmitError::Weight(request.weight));
        }
        if request.members == 0 || request.members > MAX_MEMBERS {
            return Err(SubmitError::Members(request.members));
        }
        match request.resources {
            Resources::Slots { count: 0, .. } => return Err(SubmitError::ZeroSlots),
            Resources::Slots { count, .. } if count as usize > MAX_SLOTS_PER_AGENT => {
                return Err(SubmitError::TooManySlots { pool: request.pool.clone(), asked: count, max: MAX_SLOTS_PER_AGENT as u32 });
            }
            // NaN fails both comparisons.
            Resources::Gpu { fraction } if !(fraction > 0.0 && fraction <= 1.0) || fraction * f64::from(UNITS_PER_SLOT) < 0.5 => {
                return Err(SubmitError::Fraction(fraction));
            }
            _ => {}
        }
        Ok(pool)
    }

    /// The request fits the pool's current agents were they idle (any request fits a pool with
    /// no agent yet: agents may still join).
    fn check_fit(&self, pool: usize, request: &Request) -> Result<(), SubmitError> {
        let cap = &self.capacity[pool];
        let name = || request.pool.clone();
        let members = u64::from(request.members);
        match request.resources {
            Resources::Slots { kind, count } if cap.agents > 0 => {
                let max = cap.max_slots(kind);
                if count > max {
                    return Err(SubmitError::TooManySlots { pool: name(), asked: count, max });
                }
                let fit = cap.whole_members(kind, count);
                if fit < members {
                    return Err(SubmitError::GangTooLarge { pool: name(), asked: request.members, max: fit });
                }
            }
            Resources::Slots { .. } => {}
            Resources::Gpu { fraction } => {
                if cap.agents > 0 {
                    if cap.max_slots(SlotKind::Gpu) == 0 {
                        return Err(SubmitError::NoGpu { pool: name() });
                    }
                    let fit = cap.fraction_members(fraction_units(fraction));
                    if fit < members {
                        return Err(SubmitError::GangTooLarge { pool: name(), asked: request.members, max: fit });
                    }
                }
            }
            Resources::ZeroSlot => {
                let budget = self.pools[pool].zero_slot_budget;
                if request.members > budget {
                    return Err(SubmitError::ZeroSlotBudget { pool: name(), asked: request.members, budget });
                }
            }
        }
        Ok(())
    }

    pub(crate) fn enqueue(&mut self, pool: u32, seq: u64, request: Request) {
        let key = QueueKey { pool, priority: request.priority, group: request.group.clone(), seq };
        self.requests.insert(request.id, Status::Pending(key.clone()));
        self.pending.insert(key, PendingEntry { request, overtaken: 0, started: false });
    }

    /// Drops a waiting request, or marks a running one so that it is not requeued when its
    /// allocation ends (the master stops it).
    pub fn cancel(&mut self, id: RequestId) -> Result<Cancelled, RequestError> {
        match self.requests.get(&id) {
            None => Err(RequestError::UnknownRequest(id)),
            Some(Status::Pending(key)) => {
                self.pending.remove(key);
                self.requests.remove(&id);
                Ok(Cancelled::Dequeued)
            }
            Some(Status::Running(alloc)) => {
                let alloc = *alloc;
                if let Some(a) = self.allocations.get_mut(&alloc) {
                    a.cancelled = true;
                }
                Ok(Cancelled::Running { allocation: alloc })
            }
        }
    }

    /// Adds an agent with all its slots free. Refused (naming the field) for an unknown pool, an
    /// id already present (an agent that changes its slots must leave first), duplicate slot ids
    /// or more than `MAX_SLOTS_PER_AGENT` slots.
    pub fn agent_joined(&mut self, agent: Agent) -> Result<(), AgentError> {
        if agent.id.is_empty() {
            return Err(AgentError::EmptyId);
        }
        if self.agents.contains_key(&agent.id) {
            return Err(AgentError::AlreadyJoined(agent.id));
        }
        let pool = self.pool_index(&agent.pool).ok_or_else(|| AgentError::UnknownPool(agent.pool.clone()))?;
        check_slots(&agent)?;
        // Work adopted after a master restart may already hold slots here.
        let used = self.used_by_allocations(&agent)?;
        self.capacity[pool].add(&agent, 1);
        self.agents.insert(agent.id.clone(), AgentState { agent, used, schedulable: true });
        Ok(())
    }

    /// An agent that has joined reports its slots again (it reconnected, or its devices
    /// changed). Slots may come and go, but not from under running work: a slot that an
    /// allocation holds must still be there with the same kind, and an agent with work on it
    /// cannot move to another pool. Refused naming the slot; nothing changes then.
    pub fn agent_changed(&mut self, agent: Agent) -> Result<(), AgentError> {
        let old = self.agents.get(&agent.id).ok_or_else(|| AgentError::Unknown(agent.id.clone()))?;
        let pool = self.pool_index(&agent.pool).ok_or_else(|| AgentError::UnknownPool(agent.pool.clone()))?;
        check_slots(&agent)?;
        if old.agent.pool != agent.pool && old.used.iter().any(|&u| u > 0) {
            return Err(AgentError::PoolChangeUnderWork { from: old.agent.pool.clone(), to: agent.pool.clone() });
        }
        for (slot, &used) in old.agent.slots.iter().zip(&old.used) {
            if used > 0 && !agent.slots.iter().any(|s| s.id == slot.id && s.kind == slot.kind) {
                return Err(AgentError::SlotInUse(slot.id.clone()));
            }
        }
        let used = self.used_by_allocations(&agent)?;
        let old = self.agents.remove(&agent.id).expect("checked above");
        if let Some(p) = self.pool_index(&old.agent.pool) {
            self.capacity[p].add(&old.agent, -1);
        }
        self.capacity[pool].add(&agent, 1);
        self.agents.insert(agent.id.clone(), AgentState { agent, used, schedulable: old.schedulable });
        Ok(())
    }

    /// Units the live allocations hold on each of `agent`'s slots; refused when one holds a slot
    /// the agent does not have (any more) or more than a slot's capacity.
    fn used_by_allocations(&self, agent: &Agent) -> Result<Vec<u16>, AgentError> {
        let mut used = vec![0u32; agent.slots.len()];
        for a in self.allocations.values() {
            for (p, &lost) in a.placements.iter().zip(&a.lost) {
                if lost || p.agent != agent.id {
                    continue;
                }
                for slot in &p.slots {
                    let i = agent.slots.iter().position(|s| &s.id == slot).ok_or_else(|| AgentError::SlotInUse(slot.clone()))?;
                    used[i] += p.units;
                    if used[i] > UNITS_PER_SLOT {
                        return Err(AgentError::SlotInUse(slot.clone()));
                    }
                }
            }
        }
        Ok(used.into_iter().map(|u| u as u16).collect())
    }

    /// An agent out of touch keeps its work but gets no new work until it is schedulable again.
    pub fn set_schedulable(&mut self, id: &str, schedulable: bool) -> Result<(), AgentError> {
        let state = self.agents.get_mut(id).ok_or_else(|| AgentError::Unknown(id.to_string()))?;
        state.schedulable = schedulable;
        Ok(())
    }

    /// Takes back work that was running before a master restart, on the slots it holds (the
    /// master's store says where). Its agents may not have joined yet: their slots are charged
    /// when they do. Refused when the request is malformed, its id is in use, the placements do
    /// not match its members, or a joined agent lacks the room.
    pub fn adopt(
        &mut self,
        request: Request,
        placements: Vec<crate::model::Placement>,
        started_ms: u64,
    ) -> Result<AllocationId, AdoptError> {
        let pool = self.check_form(&request)?;
        if placements.len() != request.members as usize {
            return Err(AdoptError::Placements { members: request.members, placements: placements.len() });
        }
        let units = request.units_per_slot();
        let mut charges: Vec<(String, usize)> = Vec::new();
        let slots_per_member = match request.resources {
            Resources::Slots { count, .. } => count as usize,
            Resources::Gpu { .. } => 1,
            Resources::ZeroSlot => 0,
        };
        for p in &placements {
            if p.units != units {
                return Err(AdoptError::Units { agent: p.agent.clone(), units: p.units, expected: units });
            }
            if p.slots.len() != slots_per_member {
                return Err(AdoptError::Slots { agent: p.agent.clone(), slots: p.slots.len(), expected: slots_per_member });
            }
            let Some(state) = self.agents.get(&p.agent) else { continue };
            for slot in &p.slots {
                let i = state
                    .agent
                    .slots
                    .iter()
                    .position(|s| &s.id == slot)
                    .ok_or_else(|| AdoptError::NoRoom(p.agent.clone(), slot.clone()))?;
                let already = charges.iter().filter(|(a, j)| a == &p.agent && *j == i).count() as u32 * units;
                if u32::from(state.used[i]) + already + units > UNITS_PER_SLOT {
                    return Err(AdoptError::NoRoom(p.agent.clone(), slot.clone()));
                }
                charges.push((p.agent.clone(), i));
            }
        }
        for (agent, i) in charges {
            let state = self.agents.get_mut(&agent).expect("checked above");
            state.used[i] += units as u16;
        }
        let id = self.next_allocation;
        self.next_allocation += 1;
        let seq = self.next_seq;
        self.next_seq += 1;
        let _ = pool;
        self.requests.insert(request.id, Status::Running(id));
        let lost = vec![false; placements.len()];
        self.allocations.insert(id, Allocation { id, request, placements, lost, started_ms, preempted: None, cancelled: false, seq });
        Ok(id)
    }

    /// Changes a request's priority and fair-share weight, queued or running (a running one's
    /// priority decides whether it may be preempted). A queued request keeps its arrival.
    pub fn update_request(&mut self, id: RequestId, priority: u8, weight: f64) -> Result<(), UpdateError> {
        if priority > MAX_PRIORITY {
            return Err(UpdateError::Submit(SubmitError::Priority(priority)));
        }
        if !(MIN_WEIGHT..=MAX_WEIGHT).contains(&weight) {
            return Err(UpdateError::Submit(SubmitError::Weight(weight)));
        }
        match self.requests.get(&id).cloned() {
            None => Err(UpdateError::Request(RequestError::UnknownRequest(id))),
            Some(Status::Pending(key)) => {
                let mut entry = self.pending.remove(&key).expect("a pending status has its entry");
                entry.request.priority = priority;
                entry.request.weight = weight;
                let key = QueueKey { priority, ..key };
                self.requests.insert(id, Status::Pending(key.clone()));
                self.pending.insert(key, entry);
                Ok(())
            }
            Some(Status::Running(alloc)) => {
                if let Some(a) = self.allocations.get_mut(&alloc) {
                    a.request.priority = priority;
                    a.request.weight = weight;
                }
                Ok(())
            }
        }
    }

    /// Changes what a waiting request asks for (its resources per member and its gang size),
    /// keeping its place in the queue: for a caller whose requests depend on the agents' shape
    /// (a trial of 16 slots is two members of 8 on agents of 8), when agents come or go.
    pub fn reshape(&mut self, id: RequestId, resources: Resources, members: u32) -> Result<(), UpdateError> {
        let Some(Status::Pending(key)) = self.requests.get(&id).cloned() else {
            return Err(UpdateError::Request(RequestError::UnknownRequest(id)));
        };
        let entry = self.pending.get(&key).expect("a pending status has its entry");
        let reshaped = Request { resources, members, ..entry.request.clone() };
        // Checked as a new request would be (its own id aside).
        let status = self.requests.remove(&id).expect("looked up above");
        let checked = self.check_form(&reshaped);
        self.requests.insert(id, status);
        checked.map_err(UpdateError::Submit)?;
        self.pending.get_mut(&key).expect("looked up above").request = reshaped;
        Ok(())
    }

    /// The allocation a request runs as, if it runs.
    pub fn running_allocation(&self, id: RequestId) -> Option<AllocationId> {
        match self.requests.get(&id)? {
            Status::Running(a) => Some(*a),
            Status::Pending(_) => None,
        }
    }

    /// Whether the request waits in the queue.
    pub fn is_pending(&self, id: RequestId) -> bool {
        matches!(self.requests.get(&id), Some(Status::Pending(_)))
    }

    /// Removes an agent. Every allocation with a member on it is lost; they are returned so the
    /// master can stop their other members and then report `allocation_ended` for each. Until
    /// then their members on other agents keep their slots (the processes may still run).
    pub fn agent_left(&mut self, id: &str) -> Result<Vec<AllocationId>, AgentError> {
        let state = self.agents.remove(id).ok_or_else(|| AgentError::Unknown(id.to_string()))?;
        if let Some(pool) = self.pool_index(&state.agent.pool) {
            self.capacity[pool].add(&state.agent, -1);
        }
        let mut lost = Vec::new();
        for a in self.allocations.values_mut() {
            let mut hit = false;
            for (p, l) in a.placements.iter().zip(a.lost.iter_mut()) {
                if p.agent == id && !*l {
                    *l = true;
                    hit = true;
                }
            }
            if hit {
                lost.push(a.id);
            }
        }
        Ok(lost)
    }

    /// Frees an allocation's slots. A preempted request goes back to its old place in the queue
    /// (unless it was lost or cancelled); any other is finished as far as the scheduler goes.
    pub fn allocation_ended(&mut self, id: AllocationId) -> Result<Ended, RequestError> {
        let alloc = self.allocations.remove(&id).ok_or(RequestError::UnknownAllocation(id))?;
        for (p, &lost) in alloc.placements.iter().zip(&alloc.lost) {
            if lost {
                continue;
            }
            let Some(state) = self.agents.get_mut(&p.agent) else { continue };
            for slot in &p.slots {
                if let Some(i) = state.agent.slots.iter().position(|s| &s.id == slot) {
                    state.used[i] = state.used[i].saturating_sub(p.units as u16);
                }
            }
        }
        let preempted = alloc.preempted.is_some();
        let lost = alloc.lost.iter().any(|&l| l);
        let requeued = preempted && !lost && !alloc.cancelled;
        let request = alloc.request.id;
        self.requests.remove(&request);
        if requeued && let Some(pool) = self.pool_index(&alloc.request.pool) {
            self.enqueue(pool as u32, alloc.seq, alloc.request);
        }
        Ok(Ended { request, preempted, lost, requeued })
    }

    /// Advances the scheduler's clock; time never goes back (an earlier `now_ms` is ignored).
    pub fn tick(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    /// One scheduling pass at `now_ms`: kills overdue preemptions, starts what fits, preempts for
    /// what waits. The decisions are already applied to the state when they are returned (the
    /// master must carry them out; a start that fails is reported as `allocation_ended`). A pure
    /// function of the state and `now_ms`: no clock, no randomness, no hash order.
    pub fn schedule(&mut self, now_ms: u64) -> Vec<Decision> {
        self.tick(now_ms);
        crate::pass::run(self)
    }

    /// Why a pending request waits (as of the last pass); `None` when it is not pending. Linear in
    /// the queue: for a `drover job list`, not for a loop.
    pub fn why_waiting(&self, id: RequestId) -> Option<WaitReason> {
        match self.requests.get(&id)? {
            Status::Running(_) => None,
            Status::Pending(_) => {
                Some(self.last_pass.iter().find(|w| w.request == id).map(|w| w.reason.clone()).unwrap_or(WaitReason::NotConsideredYet))
            }
        }
    }

    /// In how many passes requests behind this one started while it could not (it fits its pool):
    /// never more than the pool's `max_overtaking_passes`. `None` when it is not pending.
    pub fn passed_over(&self, id: RequestId) -> Option<u32> {
        match self.requests.get(&id)? {
            Status::Pending(key) => self.pending.get(key).map(|e| e.overtaken),
            Status::Running(_) => None,
        }
    }

    /// The queue as the last pass saw it (requests cancelled since are left out).
    pub fn queue(&self) -> impl Iterator<Item = &Waiting> {
        self.last_pass.iter().filter(|w| matches!(self.requests.get(&w.request), Some(Status::Pending(_))))
    }

    pub fn allocations(&self) -> impl Iterator<Item = &Allocation> {
        self.allocations.values()
    }

    pub fn allocation(&self, id: AllocationId) -> Option<&Allocation> {
        self.allocations.get(&id)
    }

    pub fn pending(&self) -> impl Iterator<Item = &Request> {
        self.pending.values().map(|e| &e.request)
    }

    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }

    pub fn agents(&self) -> impl Iterator<Item = &Agent> {
        self.agents.values().map(|s| &s.agent)
    }

    pub fn has_agent(&self, id: &str) -> bool {
        self.agents.contains_key(id)
    }

    /// The most slots of `kind` any agent of `pool` has (0 for an unknown or empty pool).
    pub fn max_agent_slots(&self, pool: &str, kind: SlotKind) -> u32 {
        self.pool_index(pool).map_or(0, |p| self.capacity[p].max_slots(kind))
    }

    /// Units in use per slot of an agent, in the order of its slots.
    pub fn slot_usage(&self, agent: &str) -> Option<&[u16]> {
        self.agents.get(agent).map(|s| s.used.as_slice())
    }

    /// Whether `request` would fit its pool were every agent idle (false for an unknown pool).
    pub fn fits_idle_pool(&self, request: &Request) -> bool {
        self.pool_index(&request.pool).is_some_and(|p| self.capacity[p].fits_idle(request, self.pools[p].zero_slot_budget))
    }

    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// The whole state as JSON; `restore` of it then the same events give the same decisions.
    pub fn snapshot(&self) -> String {
        serde_json::to_string(self).expect("the scheduler is plain data")
    }

    /// The scheduler `snapshot` was taken of. The snapshot is trusted (the master's own store):
    /// it is parsed, not checked for consistency.
    pub fn restore(snapshot: &str) -> Result<Scheduler, RestoreError> {
        serde_json::from_str(snapshot).map_err(|e| RestoreError::Malformed(e.to_string()))
    }
}

/// At most `MAX_SLOTS_PER_AGENT` slots, each id once.
fn check_slots(agent: &Agent) -> Result<(), AgentError> {
    if agent.slots.len() > MAX_SLOTS_PER_AGENT {
        return Err(AgentError::TooManySlots(agent.slots.len()));
    }
    let mut ids: Vec<&str> = agent.slots.iter().map(|s| s.id.as_str()).collect();
    ids.sort_unstable();
    if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
        return Err(AgentError::DuplicateSlot(w[0].to_string()));
    }
    Ok(())
}

/// JSON maps need string keys; the queue's keys are structs, so it is stored as a list of pairs.
mod as_pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(map: &BTreeMap<K, V>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub fn deserialize<'de, K, V, D>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}
