//! One scheduling pass, pool by pool:
//!
//! 1. Preemptions whose deadline has passed become `Kill`s.
//! 2. Each pool's queue is walked by priority (lower first); inside a priority, the group whose
//!    usage divided by its weight is lowest goes next (weighted fair share, recomputed after
//!    every start), and a group's own requests go in arrival order.
//! 3. A request that fits is placed whole (every gang member) or not at all. One that does not
//!    fit lets those behind it try (backfill), unless it has already been passed over in
//!    `max_overtaking_passes` passes: then the pool is reserved for it and nothing behind it
//!    starts (zero-slot tasks aside, they take no slot). A request for which lower-priority work
//!    is being preempted reserves the pool the same way, so the freed slots go to it.
//! 4. In a pool that allows preemption, a waiting request that would fit were some strictly
//!    lower-priority preemptible allocations gone asks those to stop (`Preempt` with a
//!    deadline): the lowest priority first, then the most recently started (least work lost).

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use crate::capacity::PoolView;
use crate::model::{Allocation, AllocationId, Decision, Pool, Preemption, Request, Resources, UNITS_PER_SLOT, WaitReason, Waiting};
use crate::scheduler::{AgentState, PendingEntry, PoolCapacity, QueueKey, Scheduler, Status};

/// Preemption is tried for at most this many blocked requests per pool and pass: each try walks
/// the pool's allocations, and the first that succeeds reserves the pool anyway.
const PREEMPTION_TRIES_PER_PASS: u32 = 8;

pub(crate) fn run(s: &mut Scheduler) -> Vec<Decision> {
    let now = s.now_ms;
    let mut decisions = Vec::new();
    for a in s.allocations.values_mut() {
        if let Some(p) = &mut a.preempted
            && !p.killed
            && now > p.deadline_ms
        {
            p.killed = true;
            decisions.push(Decision::Kill { allocation: a.id, request: a.request.id });
        }
    }
    let Scheduler { pools, capacity, agents, pending, requests, allocations, next_allocation, last_pass, .. } = s;
    let mut by_pool: Vec<Vec<&mut AgentState>> = pools.iter().map(|_| Vec::new()).collect();
    for state in agents.values_mut().filter(|s| s.schedulable) {
        if let Some(p) = pools.iter().position(|p| p.name == state.agent.pool) {
            by_pool[p].push(state);
        }
    }
    last_pass.clear();
    // (request, allocation) of every start: their statuses are updated after the pass.
    let mut started: Vec<(u64, AllocationId)> = Vec::new();
    for (p, states) in by_pool.into_iter().enumerate() {
        let mut pass = PoolPass {
            index: p as u32,
            pool: &pools[p],
            capacity: &capacity[p],
            view: PoolView::build(states, pools[p].fit),
            allocations,
            started: &mut started,
            next_allocation,
            now,
            decisions: &mut decisions,
            waiting: last_pass,
        };
        match pass.run(pending) {
            Started::None => {}
            Started::Few(keys) => {
                for key in &keys {
                    pending.remove(key);
                }
            }
            Started::Many => pending.retain(|_, e| !e.started),
        }
    }
    // Statuses: a few starts are updated one by one, many in one ordered walk of the requests
    // (linear, but no search per start).
    let mut running = started;
    if running.len() * 16 > requests.len() {
        running.sort_unstable();
        let mut next = running.iter().peekable();
        if let Some(&&(first, _)) = next.peek() {
            for (id, status) in requests.range_mut(first..) {
                let Some(&&(r, a)) = next.peek() else { break };
                if r == *id {
                    *status = Status::Running(a);
                    next.next();
                }
            }
        }
    } else {
        for (r, a) in running {
            requests.insert(r, Status::Running(a));
        }
    }
    decisions
}

#[derive(Default)]
struct Group {
    usage: u64,
    weight: f64,
}

impl Group {
    fn ratio(&self) -> f64 {
        self.usage as f64 / self.weight
    }
}

/// A heap entry: the group's normalised usage, then its head's arrival, then the run.
struct Turn(f64, u64, usize);

impl PartialEq for Turn {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Turn {}
impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Turn {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1)).then(self.2.cmp(&other.2))
    }
}

struct PoolPass<'a, 'v> {
    index: u32,
    pool: &'a Pool,
    capacity: &'a PoolCapacity,
    view: PoolView<'v>,
    allocations: &'a mut BTreeMap<AllocationId, Allocation>,
    started: &'a mut Vec<(u64, AllocationId)>,
    next_allocation: &'a mut AllocationId,
    now: u64,
    decisions: &'a mut Vec<Decision>,
    waiting: &'a mut Vec<Waiting>,
}

/// What a pool's pass started, for removing them from the queue.
enum Started {
    None,
    Few(Vec<QueueKey>),
    Many,
}

/// A run of one group's requests at one priority, in arrival order.
struct Run {
    group: usize,
    start: usize,
    end: usize,
    cursor: usize,
}

impl PoolPass<'_, '_> {
    /// Marks the entries it started (`started`); the caller drops them from the queue.
    fn run(&mut self, pending: &mut BTreeMap<QueueKey, PendingEntry>) -> Started {
        let lo = QueueKey { pool: self.index, priority: 0, group: String::new(), seq: 0 };
        let hi = QueueKey { pool: self.index + 1, priority: 0, group: String::new(), seq: 0 };
        let mut entries: Vec<(&QueueKey, &mut PendingEntry)> = pending.range_mut(lo..hi).collect();

        // Usage, weights and zero-slot load from what runs; the lowest-priority victim.
        let mut group_ix: HashMap<&str, usize, BuildHasherDefault<Fnv>> = HashMap::default();
        let mut groups: Vec<Group> = Vec::new();
        let mut zero_used: u64 = 0;
        let mut lowest_victim: Option<u8> = None;
        // Some work is already stopping: the slots it frees must go to what it stops for.
        let mut stopping = false;
        for a in self.allocations.values().filter(|a| a.request.pool == self.pool.name) {
            let g = *group_ix.entry(a.request.group.as_str()).or_insert_with(|| {
                groups.push(Group::default());
                groups.len() - 1
            });
            groups[g].weight = groups[g].weight.max(a.request.weight);
            groups[g].usage += a.request.usage_units();
            if a.request.resources == Resources::ZeroSlot {
                for (pl, &lost) in a.placements.iter().zip(&a.lost) {
                    if !lost {
                        zero_used += 1;
                        if let Some(ix) = self.view.index_of(&pl.agent) {
                            self.view.add_zero(ix, 1);
                        }
                    }
                }
            } else if a.preempted.is_some() || a.cancelled || a.lost.contains(&true) {
                stopping = true;
            } else if a.request.preemptible {
                lowest_victim = lowest_victim.max(Some(a.request.priority));
            }
        }
        // The queue is ordered by (priority, group, arrival): a run is a slice of it.
        let mut runs: Vec<Run> = Vec::new();
        for (i, (key, e)) in entries.iter().enumerate() {
            let same = runs.last().is_some_and(|r| {
                let head = entries[r.start].0;
                head.priority == key.priority && head.group == key.group
            });
            if same {
                runs.last_mut().expect("checked").end = i + 1;
            } else {
                let g = *group_ix.entry(key.group.as_str()).or_insert_with(|| {
                    groups.push(Group::default());
                    groups.len() - 1
                });
                runs.push(Run { group: g, start: i, end: i + 1, cursor: i });
            }
            let g = runs.last().expect("pushed").group;
            groups[g].weight = groups[g].weight.max(e.request.weight);
        }
        let total_weight: f64 = groups.iter().map(|g| g.weight).sum();
        let pool_units: u64 = self.view.agents.iter().map(|a| a.state.agent.slots.len() as u64).sum::<u64>() * u64::from(UNITS_PER_SLOT);

        let mut started_at: Vec<usize> = Vec::new();
        self.waiting.reserve(entries.len());
        let mut slot_starts: u64 = 0;
        let mut blocked: Vec<(usize, u64)> = Vec::new();
        let mut reserved: Option<u64> = None;
        let mut preemption_tries = 0;
        let mut higher_activity = false;
        let mut position: u32 = 0;
        let mut level_start = 0;
        while level_start < runs.len() {
            let priority = entries[runs[level_start].start].0.priority;
            let level_end = (level_start..runs.len()).find(|&r| entries[runs[r].start].0.priority != priority).unwrap_or(runs.len());
            let activity_before = slot_starts > 0 || !blocked.is_empty();
            higher_activity |= activity_before;
            let mut heap: BinaryHeap<Reverse<Turn>> =
                (level_start..level_end).map(|r| Reverse(Turn(groups[runs[r].group].ratio(), entries[runs[r].cursor].0.seq, r))).collect();
            while let Some(Reverse(Turn(_, _, r))) = heap.pop() {
                // A group keeps its turn while it stays first: the heap is only touched when the
                // order changes (most requests of a full pool fail, and leave the order as it was).
                loop {
                    let i = runs[r].cursor;
                    runs[r].cursor += 1;
                    let g = runs[r].group;
                    let request = &entries[i].1.request;
                    let zero = request.resources == Resources::ZeroSlot;
                    let outcome = if zero {
                        if zero_used + u64::from(request.members) > u64::from(self.pool.zero_slot_budget) {
                            Err(WaitReason::ZeroSlotBudgetFull { budget: self.pool.zero_slot_budget })
                        } else {
                            self.view.place(request).ok_or(WaitReason::NoAgents)
                        }
                    } else if let Some(for_request) = reserved {
                        Err(WaitReason::PoolReservedFor { request: for_request })
                    } else if self.view.is_empty() {
                        Err(WaitReason::NoAgents)
                    } else if let Some(p) = self.view.place(request) {
                        Ok(p)
                    } else if !self.capacity.fits_idle(request, self.pool.zero_slot_budget) {
                        Err(WaitReason::CannotFitCurrentAgents)
                    } else {
                        blocked.push((i, slot_starts));
                        let mut reason = None;
                        if self.pool.preemption
                            && preemption_tries < PREEMPTION_TRIES_PER_PASS
                            && (stopping || lowest_victim.is_some_and(|v| v > request.priority))
                        {
                            preemption_tries += 1;
                            if self.preempt_for(request) {
                                reserved = Some(request.id);
                                reason = Some(WaitReason::WaitingForPreemption);
                            }
                        }
                        if reserved.is_none() && entries[i].1.overtaken >= self.pool.max_overtaking_passes {
                            reserved = Some(request.id);
                        }
                        Err(reason.unwrap_or_else(|| {
                            let group = &groups[g];
                            let share = (pool_units as f64 * group.weight / total_weight) as u64;
                            if higher_activity {
                                WaitReason::BehindHigherPriority
                            } else if group.usage > share {
                                WaitReason::OverFairShare { usage_units: group.usage, share_units: share }
                            } else if request.members == 1 {
                                WaitReason::NoAgentWithFreeSlots { units_per_member: request.units_per_member() }
                            } else {
                                WaitReason::GangNeedsPlaces { members: request.members, free: self.view.free_members(request.resources) }
                            }
                        }))
                    };
                    match outcome {
                        Ok(placements) => {
                            if zero {
                                zero_used += u64::from(request.members);
                            } else {
                                slot_starts += 1;
                            }
                            groups[g].usage += request.usage_units();
                            started_at.push(i);
                            let seq = entries[i].0.seq;
                            let entry = &mut *entries[i].1;
                            entry.started = true;
                            let request = std::mem::replace(&mut entry.request, placeholder());
                            self.start(request, seq, placements);
                        }
                        Err(reason) => {
                            self.waiting.push(Waiting { request: request.id, position, reason });
                            position += 1;
                        }
                    }
                    if runs[r].cursor == runs[r].end {
                        break;
                    }
                    let turn = Turn(groups[g].ratio(), entries[runs[r].cursor].0.seq, r);
                    if heap.peek().is_some_and(|Reverse(top)| *top < turn) {
                        heap.push(Reverse(turn));
                        break;
                    }
                }
            }
            level_start = level_end;
        }
        // The starvation count: passed over in this pass if anything behind it took slots.
        for (i, starts_then) in blocked {
            if slot_starts > starts_then {
                entries[i].1.overtaken = entries[i].1.overtaken.saturating_add(1);
            }
        }
        // `retain` walks the whole queue; a few removals are cheaper one by one.
        if started_at.is_empty() {
            Started::None
        } else if started_at.len() * 16 < entries.len() {
            Started::Few(started_at.into_iter().map(|i| entries[i].0.clone()).collect())
        } else {
            Started::Many
        }
    }

    fn start(&mut self, request: Request, seq: u64, placements: Vec<crate::model::Placement>) {
        let id = *self.next_allocation;
        *self.next_allocation += 1;
        self.decisions.push(Decision::Start { request: request.id, allocation: id });
        let lost = vec![false; placements.len()];
        self.started.push((request.id, id));
        // Ids only grow: each insert is at the end of the map.
        self.allocations
            .insert(id, Allocation { id, request, placements, lost, started_ms: self.now, preempted: None, cancelled: false, seq });
    }

    /// Asks strictly lower-priority preemptible allocations to stop so that `request` fits.
    /// Returns whether the request will fit once the preempted (now or earlier) allocations
    /// end; preempts nothing when even all candidates would not make room.
    fn preempt_for(&mut self, request: &Request) -> bool {
        let need = u64::from(request.members);
        let mut freed: BTreeMap<(usize, usize), u16> = BTreeMap::new();
        let mut victims: Vec<&Allocation> = Vec::new();
        for a in self.allocations.values().filter(|a| a.request.pool == self.pool.name && a.request.resources != Resources::ZeroSlot) {
            // Work already asked to stop (preempted, cancelled, or lost with an agent) will free
            // its slots anyway: it counts as room, never as a victim.
            if a.preempted.is_some() || a.cancelled || a.lost.contains(&true) {
                add_freed(&self.view, a, &mut freed);
            } else if a.request.preemptible && a.request.priority > request.priority {
                victims.push(a);
            }
        }
        if self.view.free_members_if_freed(request.resources, &freed) >= need {
            return true;
        }
        victims.sort_by_key(|a| Reverse((a.request.priority, a.started_ms, a.id)));
        let mut chosen = Vec::new();
        for v in victims {
            add_freed(&self.view, v, &mut freed);
            chosen.push(v.id);
            if self.view.free_members_if_freed(request.resources, &freed) >= need {
                let deadline_ms = self.now.saturating_add(self.pool.preemption_timeout_ms);
                for id in chosen {
                    let a = self.allocations.get_mut(&id).expect("a victim is live");
                    a.preempted = Some(Preemption { deadline_ms, killed: false });
                    self.decisions.push(Decision::Preempt { allocation: id, request: a.request.id, deadline_ms });
                }
                return true;
            }
        }
        false
    }
}

/// What is left in a started entry (dropped right after the pass): allocates nothing.
fn placeholder() -> Request {
    Request {
        id: 0,
        pool: String::new(),
        priority: 0,
        weight: 1.0,
        group: String::new(),
        resources: Resources::ZeroSlot,
        members: 0,
        preemptible: false,
    }
}

/// FNV-1a: group names are short and trusted, and SipHash showed up in the benchmark's profile.
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        self.0 = h;
    }
}

fn add_freed(view: &PoolView<'_>, a: &Allocation, freed: &mut BTreeMap<(usize, usize), u16>) {
    for (p, &lost) in a.placements.iter().zip(&a.lost) {
        if lost {
            continue;
        }
        let Some(ix) = view.index_of(&p.agent) else { continue };
        let slots = &view.agents[ix].state.agent.slots;
        for sid in &p.slots {
            if let Some(si) = slots.iter().position(|s| &s.id == sid) {
                *freed.entry((ix, si)).or_insert(0) += p.units as u16;
            }
        }
    }
}
