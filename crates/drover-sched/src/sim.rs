//! A seeded, deterministic simulation of a cluster around the scheduler: agents join, leave and
//! fail; requests of mixed sizes, gangs, GPU fractions, zero-slot tasks and priorities arrive and
//! are cancelled; preempted allocations either stop before their deadline or ignore it and get
//! killed. The simulator keeps its own model of the world and checks every decision against it:
//!
//! - no slot holds more than its capacity, and every slot used exists, is of the asked kind and
//!   belongs to an agent that is present and in the request's pool (nothing on a lost agent);
//! - a start places every gang member (all or nothing), each with what it asked for, and zero-slot
//!   members stay within their pool's budget;
//! - only a running, preemptible allocation of a pool that allows it is preempted, with the
//!   pool's deadline; a kill comes only for a preempted allocation, once, after its deadline;
//! - a request is accepted exactly when it fits its pool's idle agents (or the pool has none);
//! - the scheduler's allocations and queue match the model after every step, and (when asked)
//!   a snapshot restored at every step equals the original;
//! - the starvation bound: no waiting request has been passed over in more passes than its pool's
//!   `max_overtaking_passes`;
//! - liveness: once arrivals and churn stop, every waiting request that fits its pool starts
//!   within a bounded number of steps (no request that fits idles forever).

use std::collections::BTreeMap;

use crate::model::{
    Agent, AllocationId, Decision, FitPolicy, Placement, Pool, Request, RequestId, Resources, Slot, SlotKind, UNITS_PER_SLOT,
    fraction_units,
};
use crate::scheduler::Scheduler;

/// The simulator's draws, over drover-core's seedable generator (the one the searchers use).
#[derive(Debug, Clone)]
pub struct Rng(drover_core::SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(drover_core::SplitMix64::new(seed))
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        self.0.next_f64()
    }

    /// Uniform in [lo, hi], both inclusive.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.0.next_u64() % (hi - lo + 1)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.0.index(items.len())]
    }
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    /// Steps with arrivals and churn; a drain phase follows.
    pub steps: u32,
    /// Replace the scheduler by `restore(snapshot())` after every step (and check equality).
    pub restore_every_step: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimReport {
    pub submitted: u64,
    pub refused: u64,
    pub started: u64,
    pub preempted: u64,
    pub killed: u64,
    pub lost: u64,
    pub cancelled: u64,
    pub drain_steps: u32,
    /// The longest the queue got (a simulation that never queues proves little).
    pub max_pending: usize,
    /// The most passes any waiting request was passed over in (bounded by the pools' K = 3).
    pub max_passed_over: u32,
    /// FNV-1a over every decision's JSON, in order: equal digests, equal decisions.
    pub digest: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub step: u32,
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "step {}: {}", self.step, self.message)
    }
}

impl std::error::Error for Violation {}

const PREEMPTION_TIMEOUT_MS: u64 = 5_000;
const MAX_DRAIN_STEPS: u32 = 20_000;

struct Running {
    request: Request,
    placements: Vec<Placement>,
    end_at: u64,
    deadline: Option<u64>,
    killed: bool,
}

struct World {
    rng: Rng,
    sched: Scheduler,
    now: u64,
    step: u32,
    agents: BTreeMap<String, Agent>,
    used: BTreeMap<(String, String), u32>,
    running: BTreeMap<AllocationId, Running>,
    pending: BTreeMap<RequestId, Request>,
    next_agent: u64,
    next_request: RequestId,
    report: SimReport,
}

fn pools() -> Vec<Pool> {
    let gpu = Pool { preemption: true, preemption_timeout_ms: PREEMPTION_TIMEOUT_MS, zero_slot_budget: 4, ..Pool::new("gpu") };
    let cpu = Pool { fit: FitPolicy::WorstFit, zero_slot_budget: 8, ..Pool::new("cpu") };
    vec![gpu, cpu]
}

/// Runs one simulation; the first broken invariant is returned as a `Violation`.
pub fn simulate(config: &SimConfig) -> Result<SimReport, Violation> {
    let mut w = World {
        rng: Rng::new(config.seed),
        sched: Scheduler::new(pools()).expect("valid pools"),
        now: 0,
        step: 0,
        agents: BTreeMap::new(),
        used: BTreeMap::new(),
        running: BTreeMap::new(),
        pending: BTreeMap::new(),
        next_agent: 0,
        next_request: 0,
        report: SimReport { digest: 0xcbf2_9ce4_8422_2325, ..SimReport::default() },
    };
    for _ in 0..4 {
        w.join()?;
    }
    for step in 0..config.steps {
        w.step = step;
        w.now += w.rng.range(100, 1000);
        let r = w.rng.unit();
        if r < 0.05 {
            w.join()?;
        } else if r < 0.08 && w.agents.len() > 1 {
            w.leave()?;
        }
        for _ in 0..w.rng.range(0, 3) {
            w.submit()?;
        }
        if w.rng.unit() < 0.03 {
            w.cancel()?;
        }
        w.advance(config)?;
    }
    // Drain: no arrivals, no churn; everything that fits must eventually start.
    let mut drain = 0;
    loop {
        let fitting: Vec<RequestId> = w.pending.values().filter(|r| w.sched.fits_idle_pool(r)).map(|r| r.id).collect();
        if fitting.is_empty() {
            break;
        }
        if drain == MAX_DRAIN_STEPS {
            return Err(w.violation(format!("requests {fitting:?} fit their pool but never started")));
        }
        drain += 1;
        w.step = config.steps + drain;
        w.now += w.rng.range(100, 1000);
        w.advance(config)?;
    }
    w.report.drain_steps = drain;
    Ok(w.report)
}

impl World {
    fn violation(&self, message: String) -> Violation {
        Violation { step: self.step, message }
    }

    fn join(&mut self) -> Result<(), Violation> {
        let id = format!("agent-{}", self.next_agent);
        self.next_agent += 1;
        let gpu_pool = self.rng.unit() < 0.6;
        let mut slots = Vec::new();
        let (gpus, cpus) = if gpu_pool { (self.rng.range(1, 8), self.rng.range(0, 2)) } else { (0, self.rng.range(2, 8)) };
        for i in 0..gpus {
            slots.push(Slot { id: format!("gpu{i}"), kind: SlotKind::Gpu });
        }
        for i in 0..cpus {
            slots.push(Slot { id: format!("cpu{i}"), kind: SlotKind::Cpu });
        }
        let agent = Agent { id: id.clone(), pool: if gpu_pool { "gpu" } else { "cpu" }.into(), slots };
        self.sched.agent_joined(agent.clone()).map_err(|e| self.violation(format!("agent refused: {e}")))?;
        self.agents.insert(id, agent);
        Ok(())
    }

    fn leave(&mut self) -> Result<(), Violation> {
        let ids: Vec<String> = self.agents.keys().cloned().collect();
        let id = self.rng.pick(&ids).clone();
        let mut lost = self.sched.agent_left(&id).map_err(|e| self.violation(format!("agent_left: {e}")))?;
        self.agents.remove(&id);
        self.used.retain(|(a, _), _| a != &id);
        let mut expected: Vec<AllocationId> =
            self.running.iter().filter(|(_, r)| r.placements.iter().any(|p| p.agent == id)).map(|(&a, _)| a).collect();
        lost.sort_unstable();
        expected.sort_unstable();
        if lost != expected {
            return Err(self.violation(format!("agent {id} left: lost {lost:?}, expected {expected:?}")));
        }
        // The master stops the surviving members and reports the end.
        for a in lost {
            self.report.lost += 1;
            let ended = self.end(a)?;
            if ended.requeued || !ended.lost {
                return Err(self.violation(format!("lost allocation {a} ended as {ended:?}")));
            }
        }
        Ok(())
    }

    fn submit(&mut self) -> Result<(), Violation> {
        let rng = &mut self.rng;
        let gpu_pool = rng.unit() < 0.6;
        let r = rng.unit();
        let resources = if gpu_pool {
            if r < 0.5 {
                Resources::Slots { kind: SlotKind::Gpu, count: rng.range(1, 4) as u32 }
            } else if r < 0.75 {
                Resources::Gpu { fraction: *rng.pick(&[0.1, 0.25, 0.3, 0.5]) }
            } else if r < 0.85 {
                Resources::ZeroSlot
            } else {
                Resources::Slots { kind: SlotKind::Cpu, count: rng.range(1, 2) as u32 }
            }
        } else if r < 0.85 {
            Resources::Slots { kind: SlotKind::Cpu, count: rng.range(1, 4) as u32 }
        } else {
            Resources::ZeroSlot
        };
        let members = if rng.unit() < 0.7 { 1 } else { rng.range(2, 4) as u32 };
        let request = Request {
            id: self.next_request,
            pool: if gpu_pool { "gpu" } else { "cpu" }.into(),
            priority: *rng.pick(&[10, 42, 42, 42, 70]),
            weight: *rng.pick(&[0.5, 1.0, 2.0]),
            group: format!("g{}", rng.range(0, 4)),
            resources,
            members,
            preemptible: rng.unit() < 0.75,
        };
        self.next_request += 1;
        self.report.submitted += 1;
        let pool_has_agents = self.agents.values().any(|a| a.pool == request.pool);
        let fits = self.sched.fits_idle_pool(&request);
        match self.sched.submit(request.clone()) {
            Ok(()) => {
                if pool_has_agents && !fits {
                    return Err(self.violation(format!("accepted request {} that cannot fit its pool", request.id)));
                }
                self.pending.insert(request.id, request);
            }
            Err(e) => {
                if fits || !pool_has_agents {
                    return Err(self.violation(format!("refused request {} that fits: {e}", request.id)));
                }
                self.report.refused += 1;
            }
        }
        Ok(())
    }

    fn cancel(&mut self) -> Result<(), Violation> {
        let mut ids: Vec<RequestId> = self.pending.keys().copied().collect();
        ids.extend(self.running.values().map(|r| r.request.id));
        if ids.is_empty() {
            return Ok(());
        }
        let id = *self.rng.pick(&ids);
        self.report.cancelled += 1;
        match self.sched.cancel(id).map_err(|e| self.violation(format!("cancel {id}: {e}")))? {
            crate::model::Cancelled::Dequeued => {
                if self.pending.remove(&id).is_none() {
                    return Err(self.violation(format!("cancel dequeued {id}, which is not pending")));
                }
            }
            crate::model::Cancelled::Running { allocation } => {
                let now = self.now;
                let r = self.running.get_mut(&allocation).ok_or_else(|| Violation { step: 0, message: format!("{allocation}?") })?;
                if r.request.id != id {
                    return Err(self.violation(format!("cancel {id} named allocation {allocation}")));
                }
                r.end_at = now;
            }
        }
        Ok(())
    }

    /// Reports an allocation's end to the scheduler and the model.
    fn end(&mut self, id: AllocationId) -> Result<crate::model::Ended, Violation> {
        let ended = self.sched.allocation_ended(id).map_err(|e| self.violation(format!("allocation_ended: {e}")))?;
        let r = self.running.remove(&id).expect("the model knows it");
        for p in &r.placements {
            for s in &p.slots {
                if let Some(u) = self.used.get_mut(&(p.agent.clone(), s.clone())) {
                    *u -= p.units;
                }
            }
        }
        if ended.preempted != r.deadline.is_some() {
            return Err(self.violation(format!("allocation {id} ended with preempted = {}", ended.preempted)));
        }
        if ended.requeued {
            self.pending.insert(r.request.id, r.request);
        }
        Ok(ended)
    }

    fn advance(&mut self, config: &SimConfig) -> Result<(), Violation> {
        let due: Vec<AllocationId> = self.running.iter().filter(|(_, r)| r.end_at <= self.now).map(|(&a, _)| a).collect();
        for a in due {
            self.end(a)?;
        }
        let decisions = self.sched.schedule(self.now);
        for d in &decisions {
            for b in serde_json::to_vec(d).expect("plain data") {
                self.report.digest = (self.report.digest ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
            }
            self.check(d)?;
        }
        if config.restore_every_step {
            let restored = Scheduler::restore(&self.sched.snapshot()).map_err(|e| self.violation(e.to_string()))?;
            if restored != self.sched {
                return Err(self.violation("restore(snapshot) differs from the scheduler".into()));
            }
            self.sched = restored;
        }
        self.report.max_pending = self.report.max_pending.max(self.pending.len());
        for r in self.pending.values() {
            let bound = pools().iter().find(|p| p.name == r.pool).map_or(0, |p| p.max_overtaking_passes);
            let passed = self.sched.passed_over(r.id).unwrap_or(0);
            if passed > bound {
                return Err(self.violation(format!("request {} passed over in {passed} passes, bound {bound}", r.id)));
            }
            self.report.max_passed_over = self.report.max_passed_over.max(passed);
        }
        let allocs = self.sched.allocations().count();
        let pending = self.sched.pending().count();
        if allocs != self.running.len() || pending != self.pending.len() {
            return Err(self.violation(format!(
                "scheduler holds {allocs} allocations and {pending} pending, model {} and {}",
                self.running.len(),
                self.pending.len()
            )));
        }
        Ok(())
    }

    fn check(&mut self, d: &Decision) -> Result<(), Violation> {
        match d {
            Decision::Start { request, allocation } => {
                self.report.started += 1;
                let placements = &self
                    .sched
                    .allocation(*allocation)
                    .ok_or_else(|| self.violation(format!("started {allocation}, unknown")))?
                    .placements
                    .clone();
                let req = self.pending.remove(request).ok_or_else(|| self.violation(format!("started {request}, not pending")))?;
                if placements.len() != req.members as usize {
                    return Err(self.violation(format!("gang {request}: {} of {} members placed", placements.len(), req.members)));
                }
                for p in placements.iter() {
                    self.check_placement(&req, p)?;
                }
                if req.resources == Resources::ZeroSlot {
                    let budget = pools().iter().find(|p| p.name == req.pool).map_or(0, |p| p.zero_slot_budget);
                    let in_use: u32 = self
                        .running
                        .values()
                        .filter(|r| r.request.pool == req.pool && r.request.resources == Resources::ZeroSlot)
                        .map(|r| r.request.members)
                        .sum();
                    if in_use + req.members > budget {
                        return Err(self.violation(format!("zero-slot budget {budget} of pool {} exceeded", req.pool)));
                    }
                }
                let end_at = self.now + self.rng.range(1_000, 40_000);
                self.running
                    .insert(*allocation, Running { request: req, placements: placements.clone(), end_at, deadline: None, killed: false });
            }
            Decision::Preempt { allocation, deadline_ms, .. } => {
                self.report.preempted += 1;
                let now = self.now;
                let comply = self.rng.unit() < 0.7;
                let stop_in = self.rng.range(0, PREEMPTION_TIMEOUT_MS - 1);
                let Some(r) = self.running.get_mut(allocation) else {
                    return Err(self.violation(format!("preempted {allocation}, which is not running")));
                };
                let pool = pools().into_iter().find(|p| p.name == r.request.pool).expect("known pool");
                if !pool.preemption || !r.request.preemptible || r.deadline.is_some() || *deadline_ms != now + pool.preemption_timeout_ms {
                    return Err(Violation { step: self.step, message: format!("bad preemption of {allocation}") });
                }
                r.deadline = Some(*deadline_ms);
                // It checkpoints in time, or it ignores the signal and runs on until killed.
                r.end_at = if comply { r.end_at.min(now + stop_in) } else { r.end_at.max(deadline_ms + 1_000_000) };
            }
            Decision::Kill { allocation, .. } => {
                self.report.killed += 1;
                let now = self.now;
                let Some(r) = self.running.get_mut(allocation) else {
                    return Err(self.violation(format!("killed {allocation}, which is not running")));
                };
                match r.deadline {
                    Some(deadline) if now > deadline && !r.killed => {
                        r.killed = true;
                        r.end_at = now;
                    }
                    _ => return Err(Violation { step: self.step, message: format!("kill of {allocation} before its deadline") }),
                }
            }
        }
        Ok(())
    }

    fn check_placement(&mut self, req: &Request, p: &Placement) -> Result<(), Violation> {
        let agent = self.agents.get(&p.agent).ok_or_else(|| self.violation(format!("placed {} on absent agent {}", req.id, p.agent)))?;
        if agent.pool != req.pool {
            return Err(self.violation(format!("placed {} on {} of pool {}", req.id, p.agent, agent.pool)));
        }
        let (kind, count, units) = match req.resources {
            Resources::Slots { kind, count } => (Some(kind), count as usize, UNITS_PER_SLOT),
            Resources::Gpu { fraction } => (Some(SlotKind::Gpu), 1, fraction_units(fraction)),
            Resources::ZeroSlot => (None, 0, 0),
        };
        if p.slots.len() != count || p.units != units {
            return Err(self.violation(format!("member of {} got {:?} × {} units", req.id, p.slots, p.units)));
        }
        let mut seen = p.slots.clone();
        seen.sort();
        seen.dedup();
        if seen.len() != p.slots.len() {
            return Err(self.violation(format!("member of {} holds a slot twice", req.id)));
        }
        for s in &p.slots {
            let slot = agent.slots.iter().find(|x| &x.id == s);
            if slot.map(|x| x.kind) != kind {
                return Err(self.violation(format!("member of {} on slot {s} of the wrong kind or absent", req.id)));
            }
            let u = self.used.entry((p.agent.clone(), s.clone())).or_insert(0);
            *u += units;
            if *u > UNITS_PER_SLOT {
                let u = *u;
                return Err(self.violation(format!("slot {}/{s} over capacity: {u} units", p.agent)));
            }
        }
        Ok(())
    }
}
