//! The free capacity of one pool during a pass, indexed so that placing a member or proving that
//! a request cannot fit costs a few bucket look-ups, not a walk over every agent (the benchmark
//! has 10,000 agents and 100,000 waiting requests).
//!
//! Agents are bucketed by their number of fully free slots of each kind; GPU slots that are
//! partly used by their free units (idle GPUs are found through their agent's bucket, so the
//! 80,000 idle GPUs of the benchmark cost nothing to index). A gang of m members of k slots fits exactly when the sum over agents of
//! `free / k` is at least m, and placing members greedily one at a time never lowers that sum by
//! more than one per member, so "feasible" is decided before anything is taken and a gang is
//! never half placed.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{FitPolicy, Placement, Request, Resources, SlotKind, UNITS_PER_SLOT, fraction_units};
use crate::scheduler::AgentState;

const FULL: u16 = UNITS_PER_SLOT as u16;

/// Sets of members (agent indices, or `agent << 16 | slot` for GPU slots) by a free amount.
struct Buckets {
    sets: Vec<BTreeSet<u64>>,
}

impl Buckets {
    fn new(max: usize) -> Buckets {
        Buckets { sets: vec![BTreeSet::new(); max + 1] }
    }

    /// Bucket 0 (nothing free) is never looked at, so it is not kept.
    fn moved(&mut self, item: u64, from: usize, to: usize) {
        if from == to {
            return;
        }
        if from != 0 {
            self.sets[from].remove(&item);
        }
        if to != 0 {
            self.sets[to].insert(item);
        }
    }

    /// The first item of the best- (smallest sufficient) or worst- (largest) fitting bucket.
    fn pick(&self, need: usize, fit: FitPolicy) -> Option<(usize, u64)> {
        let first = |b: usize| self.sets[b].first().map(|&i| (b, i));
        match fit {
            FitPolicy::BestFit => (need..self.sets.len()).find_map(first),
            FitPolicy::WorstFit => (need..self.sets.len()).rev().find_map(first),
        }
    }

    /// How many members needing `need` each the buckets hold.
    fn members(&self, need: usize) -> u64 {
        (need..self.sets.len()).map(|b| self.sets[b].len() as u64 * (b / need) as u64).sum()
    }
}

pub(crate) struct AgentView<'a> {
    pub state: &'a mut AgentState,
    free_whole: [usize; 2],
    zero: u32,
}

/// One pool's agents during a pass; placements write straight into the agents' usage.
pub(crate) struct PoolView<'a> {
    pub agents: Vec<AgentView<'a>>,
    whole: [Buckets; 2],
    /// Partly used GPUs (`agent << 16 | slot`) by free units, 1..UNITS_PER_SLOT.
    gpu_units: Buckets,
    zero: BTreeSet<(u32, u32)>,
    fit: FitPolicy,
    /// Bumped by every placement; keys the feasibility cache.
    generation: u64,
    /// (shape, generation, members): a handful of shapes, so a list beats hashing.
    cache: Vec<((u8, u32), u64, u64)>,
}

fn slot_key(agent: usize, slot: usize) -> u64 {
    ((agent as u64) << 16) | slot as u64
}

impl<'a> PoolView<'a> {
    /// `agents` must be in a fixed order (the state's map order) for decisions to be
    /// deterministic; `zero_counts` are the zero-slot members already running per agent index.
    pub fn build(states: Vec<&'a mut AgentState>, fit: FitPolicy) -> PoolView<'a> {
        let mut max = [0usize; 2];
        for s in &states {
            for kind in [SlotKind::Cpu, SlotKind::Gpu] {
                max[kind.index()] = max[kind.index()].max(s.agent.slots.iter().filter(|x| x.kind == kind).count());
            }
        }
        let mut view = PoolView {
            agents: Vec::with_capacity(states.len()),
            whole: [Buckets::new(max[0]), Buckets::new(max[1])],
            gpu_units: Buckets::new(UNITS_PER_SLOT as usize - 1),
            zero: BTreeSet::new(),
            fit,
            generation: 0,
            cache: Vec::new(),
        };
        for (a, state) in states.into_iter().enumerate() {
            let mut free_whole = [0usize; 2];
            for (i, slot) in state.agent.slots.iter().enumerate() {
                let used = state.used[i];
                if used == 0 {
                    free_whole[slot.kind.index()] += 1;
                }
                if slot.kind == SlotKind::Gpu && used > 0 && used < FULL {
                    view.gpu_units.sets[usize::from(FULL - used)].insert(slot_key(a, i));
                }
            }
            for (buckets, &free) in view.whole.iter_mut().zip(&free_whole) {
                if free > 0 {
                    buckets.sets[free].insert(a as u64);
                }
            }
            view.zero.insert((0, a as u32));
            view.agents.push(AgentView { state, free_whole, zero: 0 });
        }
        view
    }

    pub fn index_of(&self, agent: &str) -> Option<usize> {
        self.agents.binary_search_by(|a| a.state.agent.id.as_str().cmp(agent)).ok()
    }

    pub fn add_zero(&mut self, agent: usize, n: u32) {
        let z = &mut self.agents[agent].zero;
        self.zero.remove(&(*z, agent as u32));
        *z += n;
        self.zero.insert((*z, agent as u32));
    }

    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// How many members of this shape fit the free capacity right now (cached until the next
    /// placement). Zero-slot requests are bounded by the budget, not here.
    pub fn free_members(&mut self, resources: Resources) -> u64 {
        let key = match resources {
            Resources::Slots { kind, count } => (kind.index() as u8, count),
            Resources::Gpu { fraction } => (2, fraction_units(fraction)),
            Resources::ZeroSlot => return u64::MAX,
        };
        let slot = self.cache.iter().position(|c| c.0 == key);
        if let Some(i) = slot
            && self.cache[i].1 == self.generation
        {
            return self.cache[i].2;
        }
        let n = match key {
            (2, units) => {
                let gpus = &self.whole[SlotKind::Gpu.index()];
                let idle: u64 = gpus.sets.iter().enumerate().map(|(b, set)| b as u64 * set.len() as u64).sum();
                let partial = if units as usize >= self.gpu_units.sets.len() { 0 } else { self.gpu_units.members(units as usize) };
                partial + idle * u64::from(UNITS_PER_SLOT / units)
            }
            (k, count) => {
                let b = &self.whole[usize::from(k)];
                if count as usize >= b.sets.len() { 0 } else { b.members(count as usize) }
            }
        };
        match slot {
            Some(i) => self.cache[i] = (key, self.generation, n),
            None => self.cache.push((key, self.generation, n)),
        }
        n
    }

    /// Places every member of `request` or nothing.
    pub fn place(&mut self, request: &Request) -> Option<Vec<Placement>> {
        let members = u64::from(request.members);
        if let Resources::ZeroSlot = request.resources {
            return self.place_zero(request.members);
        }
        if self.free_members(request.resources) < members {
            return None;
        }
        self.generation += 1;
        let placements = (0..request.members)
            .map(|_| match request.resources {
                Resources::Slots { kind, count } => self.place_whole(kind, count as usize),
                Resources::Gpu { fraction } => self.place_fraction(fraction_units(fraction)),
                Resources::ZeroSlot => unreachable!("handled above"),
            })
            .collect();
        Some(placements)
    }

    fn place_zero(&mut self, members: u32) -> Option<Vec<Placement>> {
        if self.agents.is_empty() {
            return None;
        }
        let mut out = Vec::with_capacity(members as usize);
        for _ in 0..members {
            let &(_, a) = self.zero.first().expect("agents exist");
            self.add_zero(a as usize, 1);
            out.push(Placement { agent: self.agents[a as usize].state.agent.id.clone(), slots: Vec::new(), units: 0 });
        }
        Some(out)
    }

    fn place_whole(&mut self, kind: SlotKind, count: usize) -> Placement {
        let k = kind.index();
        let (_, a) = self.whole[k].pick(count, self.fit).expect("feasibility was checked");
        let a = a as usize;
        let view = &mut self.agents[a];
        let mut slots = Vec::with_capacity(count);
        for (i, slot) in view.state.agent.slots.iter().enumerate() {
            if slots.len() == count {
                break;
            }
            if slot.kind == kind && view.state.used[i] == 0 {
                view.state.used[i] = FULL;
                slots.push(slot.id.clone());
            }
        }
        let before = view.free_whole[k];
        view.free_whole[k] -= count;
        self.whole[k].moved(a as u64, before, before - count);
        Placement { agent: view.state.agent.id.clone(), slots, units: UNITS_PER_SLOT }
    }

    /// Fractions always go to the GPU with the least free room that still fits (a GPU already
    /// shared comes before an idle one), whatever the pool's fit policy: fractions never
    /// fragment idle GPUs while a shared one has room.
    fn place_fraction(&mut self, units: u32) -> Placement {
        let gpu = SlotKind::Gpu.index();
        let (a, i, free) = match self.gpu_units.pick(units as usize, FitPolicy::BestFit) {
            Some((free, key)) => {
                self.gpu_units.sets[free].remove(&key);
                ((key >> 16) as usize, (key & 0xffff) as usize, free)
            }
            None => {
                // No shared GPU has room: open an idle one, on the agent the pool's policy picks.
                let (_, a) = self.whole[gpu].pick(1, self.fit).expect("feasibility was checked");
                let a = a as usize;
                let view = &mut self.agents[a];
                let i = (0..view.state.used.len())
                    .find(|&i| view.state.agent.slots[i].kind == SlotKind::Gpu && view.state.used[i] == 0)
                    .expect("the bucket says there is an idle GPU");
                let before = view.free_whole[gpu];
                view.free_whole[gpu] -= 1;
                self.whole[gpu].moved(a as u64, before, before - 1);
                (a, i, UNITS_PER_SLOT as usize)
            }
        };
        let left = free - units as usize;
        if left > 0 {
            self.gpu_units.sets[left].insert(slot_key(a, i));
        }
        let view = &mut self.agents[a];
        view.state.used[i] += units as u16;
        Placement { agent: view.state.agent.id.clone(), slots: vec![view.state.agent.slots[i].id.clone()], units }
    }

    /// Members of this shape that would fit if `freed` (agent index, slot index, units) were
    /// released: the running total minus the touched agents' share plus their share afterwards.
    pub fn free_members_if_freed(&mut self, resources: Resources, freed: &BTreeMap<(usize, usize), u16>) -> u64 {
        let base = self.free_members(resources);
        let mut touched: BTreeMap<usize, Vec<(usize, u16)>> = BTreeMap::new();
        for (&(a, i), &u) in freed {
            touched.entry(a).or_default().push((i, u));
        }
        let mut total = base;
        for (a, slots) in touched {
            let state = &self.agents[a].state;
            let used_after = |i: usize| state.used[i].saturating_sub(slots.iter().filter(|s| s.0 == i).map(|s| s.1).sum());
            let share = |after: bool| -> u64 {
                let used = |i: usize| if after { used_after(i) } else { state.used[i] };
                match resources {
                    Resources::Slots { kind, count } => {
                        let free = state.agent.slots.iter().enumerate().filter(|(i, s)| s.kind == kind && used(*i) == 0).count();
                        (free / count as usize) as u64
                    }
                    Resources::Gpu { fraction } => {
                        let units = fraction_units(fraction) as u16;
                        let gpus = state.agent.slots.iter().enumerate().filter(|(_, s)| s.kind == SlotKind::Gpu);
                        gpus.map(|(i, _)| u64::from((FULL - used(i)) / units)).sum()
                    }
                    Resources::ZeroSlot => 0,
                }
            };
            total = total - share(false) + share(true);
        }
        total
    }
}
