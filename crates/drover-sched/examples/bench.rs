//! One scheduling pass over 10,000 agents × 8 GPUs and 100,000 waiting requests of mixed sizes,
//! gangs, fractions and priorities: `cargo run -p drover-sched --release --example bench`.
//!
//! Prints the time of a first pass (empty cluster, everything to place: the worst case), of a
//! pass on the full cluster (nothing fits) and of one after 1% of the allocations ended (the
//! usual case), each the median of several runs on a fresh copy; the slots left idle and whether any waiting request would fit them; and the
//! fairness error between the groups that still wait at the priority where capacity ran out.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use drover_sched::sim::Rng;
use drover_sched::{Agent, Pool, Request, Resources, Scheduler, Slot, SlotKind, UNITS_PER_SLOT};

const AGENTS: usize = 10_000;
const SLOTS: usize = 8;
const REQUESTS: u64 = 100_000;
const GROUPS: u64 = 200;
const RUNS: usize = 7;

fn main() {
    let mut rng = Rng::new(42);
    let mut sched = Scheduler::new(vec![Pool::new("default")]).expect("one pool");
    for a in 0..AGENTS {
        let slots = (0..SLOTS).map(|i| Slot { id: format!("gpu{i}"), kind: SlotKind::Gpu }).collect();
        sched.agent_joined(Agent { id: format!("agent-{a:05}"), pool: "default".into(), slots }).expect("agent");
    }
    // A group is an experiment: one priority and one weight for all its requests.
    let group_priority: Vec<u8> = (0..GROUPS).map(|_| *rng.pick(&[10, 42, 42, 70])).collect();
    let group_weight: Vec<f64> = (0..GROUPS).map(|_| *rng.pick(&[1.0, 2.0, 4.0])).collect();
    for id in 0..REQUESTS {
        let g = rng.range(0, GROUPS - 1);
        let r = rng.unit();
        let (resources, members) = match r {
            r if r < 0.55 => (Resources::Slots { kind: SlotKind::Gpu, count: 1 }, 1),
            r if r < 0.70 => (Resources::Slots { kind: SlotKind::Gpu, count: 2 }, 1),
            r if r < 0.80 => (Resources::Slots { kind: SlotKind::Gpu, count: 4 }, 1),
            r if r < 0.85 => (Resources::Slots { kind: SlotKind::Gpu, count: 8 }, 1),
            r if r < 0.90 => (Resources::Slots { kind: SlotKind::Gpu, count: 8 }, rng.range(2, 4) as u32),
            r if r < 0.97 => (Resources::Gpu { fraction: *rng.pick(&[0.25, 0.5]) }, 1),
            _ => (Resources::ZeroSlot, 1),
        };
        let request = Request {
            id,
            pool: "default".into(),
            priority: group_priority[g as usize],
            weight: group_weight[g as usize],
            group: format!("exp-{g:03}"),
            resources,
            members,
            preemptible: true,
        };
        sched.submit(request).expect("fits");
    }

    let mut first = Vec::new();
    let mut after = None;
    for _ in 0..RUNS {
        drop(after.take());
        let mut s = sched.clone();
        settle_allocator();
        let t = Instant::now();
        let decisions = s.schedule(1_000);
        first.push(t.elapsed());
        after = Some((s, decisions.len()));
    }
    let (full, started) = after.expect("ran");
    let mut steady = Vec::new();
    for _ in 0..RUNS {
        let mut s = full.clone();
        settle_allocator();
        let t = Instant::now();
        let decisions = s.schedule(2_000);
        steady.push(t.elapsed());
        assert!(decisions.is_empty(), "nothing changed, nothing starts");
    }
    // The usual pass: 1% of the running allocations ended since the last one.
    let ending: Vec<u64> = full.allocations().map(|a| a.id).step_by(100).collect();
    let mut incremental = Vec::new();
    let mut refilled = 0;
    for _ in 0..RUNS {
        let mut s = full.clone();
        for &a in &ending {
            s.allocation_ended(a).expect("running");
        }
        settle_allocator();
        let t = Instant::now();
        refilled = s.schedule(3_000).len();
        incremental.push(t.elapsed());
    }
    println!("{AGENTS} agents x {SLOTS} GPUs, {REQUESTS} waiting requests ({GROUPS} groups)");
    println!("first pass (empty cluster): median {:.1?} over {RUNS} runs, {started} started", median(first));
    println!("pass on the full cluster:   median {:.1?} over {RUNS} runs", median(steady));
    println!(
        "pass after {} of the allocations ended: median {:.1?} over {RUNS} runs, {refilled} started",
        ending.len(),
        median(incremental)
    );

    // Idle capacity, and whether any waiting request would fit it.
    let mut free_whole = Vec::new();
    let mut free_units = Vec::new();
    for a in full.agents() {
        let used = full.slot_usage(&a.id).expect("agent");
        free_whole.push(used.iter().filter(|&&u| u == 0).count() as u64);
        free_units.extend(used.iter().map(|&u| u64::from(UNITS_PER_SLOT as u16 - u)));
    }
    let idle_units: u64 = free_units.iter().sum();
    // Zero-slot requests wait for their budget, not for slots: they are left out.
    let mut shapes: BTreeMap<(u32, u64, u32), usize> = BTreeMap::new();
    for r in full.pending() {
        let shape = match r.resources {
            Resources::Slots { count, .. } => (0, u64::from(count), r.members),
            Resources::Gpu { fraction } => (1, (fraction * f64::from(UNITS_PER_SLOT)).ceil() as u64, r.members),
            Resources::ZeroSlot => continue,
        };
        *shapes.entry(shape).or_default() += 1;
    }
    let fits_now: usize = shapes
        .iter()
        .filter(|((kind, need, members), _)| {
            let free = if *kind == 0 { &free_whole } else { &free_units };
            free.iter().map(|f| f / need).sum::<u64>() >= u64::from(*members)
        })
        .map(|(_, n)| n)
        .sum();
    println!(
        "idle: {:.2} slots of {} ({} whole); slot requests waiting that would fit them: {fits_now}",
        idle_units as f64 / f64::from(UNITS_PER_SLOT),
        AGENTS * SLOTS,
        free_whole.iter().sum::<u64>()
    );

    // Fairness: usage / weight of the groups that still wait, per priority.
    let mut usage: BTreeMap<&str, u64> = BTreeMap::new();
    for a in full.allocations() {
        let units = a.placements.iter().map(|p| u64::from(p.units) * p.slots.len() as u64).sum::<u64>();
        *usage.entry(a.request.group.as_str()).or_default() += units;
    }
    let mut waiting: BTreeMap<u8, BTreeMap<&str, f64>> = BTreeMap::new();
    for r in full.pending().filter(|r| r.resources != Resources::ZeroSlot) {
        waiting.entry(r.priority).or_default().insert(r.group.as_str(), r.weight);
    }
    for (priority, groups) in waiting {
        let norm: Vec<f64> =
            groups.iter().map(|(g, w)| usage.get(g).copied().unwrap_or(0) as f64 / f64::from(UNITS_PER_SLOT) / w).collect();
        let mean = norm.iter().sum::<f64>() / norm.len() as f64;
        let (min, max) = norm.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        println!(
            "priority {priority}: {} groups waiting; slots per unit of weight min {min:.1} mean {mean:.1} max {max:.1} (max error {:.1}%)",
            norm.len(),
            if mean > 0.0 { 100.0 * (max - mean).max(mean - min) / mean } else { 0.0 }
        );
    }
}

/// Dropping and cloning a whole scheduler leaves millions of small free chunks that glibc
/// consolidates on the next large allocation; make that happen before the clock starts, not in the
/// pass (a master does not clone its scheduler before each pass).
fn settle_allocator() {
    std::hint::black_box(vec![0u8; 64 << 10]);
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}
