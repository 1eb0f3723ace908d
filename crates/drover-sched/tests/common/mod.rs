#![allow(dead_code)]

use drover_sched::{Agent, Decision, Placement, Pool, Request, RequestId, Resources, Scheduler, Slot, SlotKind};

pub fn agent(id: &str, pool: &str, gpus: usize, cpus: usize) -> Agent {
    let mut slots: Vec<Slot> = (0..gpus).map(|i| Slot { id: format!("gpu{i}"), kind: SlotKind::Gpu }).collect();
    slots.extend((0..cpus).map(|i| Slot { id: format!("cpu{i}"), kind: SlotKind::Cpu }));
    Agent { id: id.into(), pool: pool.into(), slots }
}

pub fn gpus(id: RequestId, count: u32) -> Request {
    Request {
        id,
        pool: "default".into(),
        priority: 42,
        weight: 1.0,
        group: "g".into(),
        resources: Resources::Slots { kind: SlotKind::Gpu, count },
        members: 1,
        preemptible: true,
    }
}

pub fn pool(name: &str) -> Pool {
    Pool::new(name)
}

/// The requests a pass started, with where (as the scheduler now holds them).
pub fn started(s: &Scheduler, decisions: &[Decision]) -> Vec<(RequestId, Vec<Placement>)> {
    decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Start { request, allocation } => Some((*request, s.allocation(*allocation).expect("started").placements.clone())),
            _ => None,
        })
        .collect()
}

pub fn started_ids(decisions: &[Decision]) -> Vec<RequestId> {
    decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Start { request, .. } => Some(*request),
            _ => None,
        })
        .collect()
}

pub fn allocation_of(decisions: &[Decision], request: RequestId) -> u64 {
    decisions
        .iter()
        .find_map(|d| match d {
            Decision::Start { request: r, allocation, .. } if *r == request => Some(*allocation),
            _ => None,
        })
        .expect("started")
}
