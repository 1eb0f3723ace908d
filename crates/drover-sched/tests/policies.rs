//! Each policy of the scheduler on a small, hand-checked cluster.

mod common;

use common::{agent, allocation_of, gpus, pool, started, started_ids};
use drover_sched::{
    AgentError, Cancelled, Decision, FitPolicy, Pool, Request, Resources, Scheduler, SlotKind, SubmitError, UNITS_PER_SLOT, WaitReason,
};

fn one_agent(gpu_count: usize) -> Scheduler {
    let mut s = Scheduler::new(vec![pool("default")]).unwrap();
    s.agent_joined(agent("a", "default", gpu_count, 2)).unwrap();
    s
}

#[test]
fn impossible_requests_are_refused_naming_the_field() {
    let mut s = one_agent(4);
    s.agent_joined(agent("b", "default", 2, 0)).unwrap();
    let cases: Vec<(Request, &str)> = vec![
        (Request { pool: "nope".into(), ..gpus(1, 1) }, "pool"),
        (Request { priority: 100, ..gpus(1, 1) }, "priority"),
        (Request { weight: f64::NAN, ..gpus(1, 1) }, "weight"),
        (Request { weight: -1.0, ..gpus(1, 1) }, "weight"),
        (Request { weight: 0.0, ..gpus(1, 1) }, "weight"),
        (Request { weight: 1e300, ..gpus(1, 1) }, "weight"),
        (Request { members: 0, ..gpus(1, 1) }, "members"),
        (Request { members: 1_000_000, ..gpus(1, 1) }, "members"),
        (gpus(1, 0), "resources.slots"),
        (gpus(1, 5), "resources.slots"),
        (Request { members: 2, ..gpus(1, 4) }, "members"),
        (Request { members: 4, ..gpus(1, 2) }, "members"),
        (Request { resources: Resources::Gpu { fraction: f64::NAN }, ..gpus(1, 1) }, "resources.gpu"),
        (Request { resources: Resources::Gpu { fraction: -0.25 }, ..gpus(1, 1) }, "resources.gpu"),
        (Request { resources: Resources::Gpu { fraction: 1.5 }, ..gpus(1, 1) }, "resources.gpu"),
        (Request { resources: Resources::Gpu { fraction: 1e-9 }, ..gpus(1, 1) }, "resources.gpu"),
        (Request { resources: Resources::Gpu { fraction: 0.25 }, members: 25, ..gpus(1, 1) }, "members"),
        (Request { resources: Resources::ZeroSlot, members: 65, ..gpus(1, 1) }, "members"),
    ];
    for (request, field) in cases {
        let err = s.submit(request.clone()).expect_err(&format!("{request:?} should be refused"));
        assert!(err.to_string().starts_with(field), "{request:?}: `{err}` should name {field}");
    }
    // What does fit is accepted: a gang of 3 × 2 GPUs (2 on `a`, 1 on `b`), 24 quarters of a GPU.
    s.submit(Request { members: 3, ..gpus(1, 2) }).unwrap();
    s.submit(Request { resources: Resources::Gpu { fraction: 0.25 }, members: 24, ..gpus(2, 1) }).unwrap();
    assert_eq!(s.submit(gpus(1, 1)), Err(SubmitError::Duplicate(1)));
}

#[test]
fn a_pool_without_agents_accepts_and_says_why_it_waits() {
    let mut s = Scheduler::new(vec![pool("default")]).unwrap();
    s.submit(gpus(1, 64)).unwrap();
    assert_eq!(s.why_waiting(1), Some(WaitReason::NotConsideredYet));
    assert!(s.schedule(0).is_empty());
    assert_eq!(s.why_waiting(1), Some(WaitReason::NoAgents));
}

#[test]
fn agents_with_duplicate_slots_or_unknown_pools_are_refused() {
    let mut s = Scheduler::new(vec![pool("default")]).unwrap();
    let mut a = agent("a", "default", 2, 0);
    a.slots[1].id = "gpu0".into();
    assert_eq!(s.agent_joined(a), Err(AgentError::DuplicateSlot("gpu0".into())));
    assert_eq!(s.agent_joined(agent("a", "other", 2, 0)), Err(AgentError::UnknownPool("other".into())));
    s.agent_joined(agent("a", "default", 2, 0)).unwrap();
    assert_eq!(s.agent_joined(agent("a", "default", 2, 0)), Err(AgentError::AlreadyJoined("a".into())));
    assert!(Scheduler::new(vec![pool("x"), pool("x")]).is_err());
}

#[test]
fn lower_priority_numbers_go_first() {
    let mut s = one_agent(1);
    s.submit(Request { priority: 50, ..gpus(1, 1) }).unwrap();
    s.submit(Request { priority: 10, ..gpus(2, 1) }).unwrap();
    let d = s.schedule(0);
    assert_eq!(started_ids(&d), vec![2]);
    assert_eq!(s.why_waiting(1), Some(WaitReason::BehindHigherPriority));
}

#[test]
fn weighted_fair_share_splits_a_pool_by_weight() {
    let mut s = one_agent(8);
    for i in 0..8 {
        s.submit(Request { group: "light".into(), weight: 1.0, ..gpus(i, 1) }).unwrap();
        s.submit(Request { group: "heavy".into(), weight: 3.0, ..gpus(100 + i, 1) }).unwrap();
    }
    let d = s.schedule(0);
    let heavy = started_ids(&d).iter().filter(|&&r| r >= 100).count();
    assert_eq!((heavy, d.len() - heavy), (6, 2));
}

#[test]
fn a_group_over_its_share_is_told_so() {
    let mut s = one_agent(4);
    for i in 0..6 {
        s.submit(Request { group: "early".into(), ..gpus(i, 1) }).unwrap();
    }
    assert_eq!(s.schedule(0).len(), 4);
    s.submit(Request { group: "late".into(), ..gpus(10, 1) }).unwrap();
    assert!(s.schedule(1).is_empty());
    // Shares are of all the pool's slots (4 GPUs and 2 CPUs here): 6000 units between two groups.
    assert_eq!(s.why_waiting(4), Some(WaitReason::OverFairShare { usage_units: 4000, share_units: 3000 }));
    assert_eq!(s.why_waiting(10), Some(WaitReason::NoAgentWithFreeSlots { units_per_member: 1000 }));
    assert_eq!(s.queue().map(|w| w.request).collect::<Vec<_>>(), vec![10, 4, 5], "the group below its share first");
}

#[test]
fn gangs_are_placed_whole_across_agents_or_not_at_all() {
    let mut s = Scheduler::new(vec![pool("default")]).unwrap();
    s.agent_joined(agent("a", "default", 4, 0)).unwrap();
    s.agent_joined(agent("b", "default", 4, 0)).unwrap();
    s.submit(gpus(1, 2)).unwrap();
    let d = s.schedule(0);
    assert_eq!(started(&s, &d)[0].1[0].agent, "a");
    // 2 members × 3 GPUs: `a` has 2 free, `b` 4: one member fits, so neither starts.
    s.submit(Request { members: 2, ..gpus(2, 3) }).unwrap();
    assert!(s.schedule(1).is_empty());
    assert_eq!(s.why_waiting(2), Some(WaitReason::GangNeedsPlaces { members: 2, free: 1 }));
    assert_eq!(s.slot_usage("b").unwrap(), &[0, 0, 0, 0], "no member is held while the gang waits");
    s.allocation_ended(allocation_of(&d, 1)).unwrap();
    let d = s.schedule(2);
    let placements = &started(&s, &d)[0].1;
    assert_eq!(placements.len(), 2);
    assert_ne!(placements[0].agent, placements[1].agent);
    assert!(placements.iter().all(|p| p.slots.len() == 3));
}

#[test]
fn best_fit_packs_and_worst_fit_spreads() {
    for (fit, expect) in [(FitPolicy::BestFit, "small"), (FitPolicy::WorstFit, "big")] {
        let mut s = Scheduler::new(vec![Pool { fit, ..pool("default") }]).unwrap();
        s.agent_joined(agent("big", "default", 8, 0)).unwrap();
        s.agent_joined(agent("small", "default", 4, 0)).unwrap();
        s.submit(gpus(1, 2)).unwrap();
        let d = s.schedule(0);
        assert_eq!(started(&s, &d)[0].1[0].agent, expect, "{fit:?}");
    }
}

#[test]
fn fractions_share_a_gpu_before_opening_another() {
    let mut s = one_agent(2);
    let quarter = |id| Request { resources: Resources::Gpu { fraction: 0.25 }, ..gpus(id, 1) };
    s.submit(quarter(1)).unwrap();
    s.submit(gpus(2, 1)).unwrap();
    let d = s.schedule(0);
    let p = started(&s, &d);
    assert_eq!((p[0].1[0].slots[0].as_str(), p[0].1[0].fraction()), ("gpu0", 0.25));
    assert_eq!(p[1].1[0].slots, vec!["gpu1".to_string()], "the whole GPU request takes the idle GPU");
    for id in 3..6 {
        s.submit(quarter(id)).unwrap();
    }
    s.submit(Request { resources: Resources::Gpu { fraction: 0.5 }, ..gpus(6, 1) }).unwrap();
    let d = s.schedule(1);
    assert_eq!(started_ids(&d), vec![3, 4, 5]);
    assert!(started(&s, &d).iter().all(|(_, p)| p[0].slots == vec!["gpu0".to_string()]));
    assert_eq!(s.slot_usage("a").unwrap()[..2], [UNITS_PER_SLOT as u16; 2]);
    assert_eq!(s.why_waiting(6), Some(WaitReason::NoAgentWithFreeSlots { units_per_member: 500 }));
}

#[test]
fn zero_slot_tasks_run_under_their_budget() {
    let mut s = Scheduler::new(vec![Pool { zero_slot_budget: 2, ..pool("default") }]).unwrap();
    s.agent_joined(agent("a", "default", 0, 1)).unwrap();
    let zero = |id| Request { resources: Resources::ZeroSlot, ..gpus(id, 1) };
    for id in 1..=3 {
        s.submit(zero(id)).unwrap();
    }
    assert!(matches!(s.submit(Request { members: 3, ..zero(9) }), Err(SubmitError::ZeroSlotBudget { .. })));
    let d = s.schedule(0);
    assert_eq!(started_ids(&d), vec![1, 2]);
    assert!(started(&s, &d).iter().all(|(_, p)| p[0].slots.is_empty() && p[0].units == 0));
    assert_eq!(s.why_waiting(3), Some(WaitReason::ZeroSlotBudgetFull { budget: 2 }));
    s.allocation_ended(allocation_of(&d, 1)).unwrap();
    assert_eq!(started_ids(&s.schedule(1)), vec![3]);
}

/// K = 3: a big request is overtaken in at most 3 passes, then the pool drains for it.
#[test]
fn a_big_request_is_overtaken_in_at_most_k_passes() {
    let mut s = one_agent(8);
    let mut running = Vec::new();
    for id in 0..8 {
        s.submit(gpus(id, 1)).unwrap();
    }
    for r in started_ids(&s.schedule(0)) {
        running.push(r);
    }
    s.submit(gpus(100, 8)).unwrap();
    let mut next = 1000;
    let mut overtook = 0;
    let mut big_started_at = None;
    for pass in 1..=40u64 {
        // One small task ends and another arrives, every pass.
        let done = running.remove(0);
        let alloc = s.allocations().find(|a| a.request.id == done).map(|a| a.id).unwrap();
        s.allocation_ended(alloc).unwrap();
        s.submit(gpus(next, 1)).unwrap();
        next += 1;
        let d = s.schedule(pass);
        for r in started_ids(&d) {
            if r == 100 {
                big_started_at = Some(pass);
            } else {
                overtook += 1;
                running.push(r);
            }
        }
        if big_started_at.is_some() {
            break;
        }
        if d.is_empty() {
            assert_eq!(s.why_waiting(next - 1), Some(WaitReason::PoolReservedFor { request: 100 }));
        }
    }
    assert_eq!(overtook, 3, "passed over in exactly K passes");
    assert_eq!(big_started_at, Some(11), "then the 8 slots drain for it");
}

fn preemption_pool() -> Scheduler {
    let mut s = Scheduler::new(vec![Pool { preemption: true, preemption_timeout_ms: 1_000, ..pool("default") }]).unwrap();
    s.agent_joined(agent("a", "default", 4, 0)).unwrap();
    for id in 1..=4 {
        s.submit(Request { priority: 60, ..gpus(id, 1) }).unwrap();
    }
    assert_eq!(s.schedule(0).len(), 4);
    s
}

#[test]
fn preemption_asks_then_kills_after_the_deadline_and_requeues() {
    let mut s = preemption_pool();
    s.submit(Request { priority: 10, ..gpus(10, 2) }).unwrap();
    let d = s.schedule(100);
    let preempted: Vec<(u64, u64)> = d
        .iter()
        .map(|d| match d {
            Decision::Preempt { allocation, deadline_ms, .. } => (*allocation, *deadline_ms),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(preempted, vec![(4, 1_100), (3, 1_100)], "the most recently started (highest id on a tie) first");
    assert_eq!(s.why_waiting(10), Some(WaitReason::WaitingForPreemption));
    // Allocation 4 checkpoints in time; 3 ignores the signal.
    let ended = s.allocation_ended(4).unwrap();
    assert!(ended.preempted && ended.requeued && !ended.lost);
    assert!(s.schedule(1_100).is_empty(), "no kill at the deadline itself, no start while 3 stops");
    assert_eq!(s.schedule(1_101), vec![Decision::Kill { allocation: 3, request: 3 }]);
    assert!(s.schedule(1_200).is_empty(), "killed once");
    assert!(s.allocation_ended(3).unwrap().requeued);
    let d = s.schedule(1_300);
    assert_eq!(started_ids(&d), vec![10]);
    assert_eq!(s.pending().map(|r| r.id).collect::<Vec<_>>(), vec![3, 4], "requeued in their old places");
}

#[test]
fn equal_priority_and_non_preemptible_work_is_never_preempted() {
    let mut s = preemption_pool();
    s.submit(Request { priority: 60, ..gpus(10, 2) }).unwrap();
    assert!(s.schedule(100).is_empty());
    let mut s = Scheduler::new(vec![Pool { preemption: true, ..pool("default") }]).unwrap();
    s.agent_joined(agent("a", "default", 1, 0)).unwrap();
    s.submit(Request { priority: 60, preemptible: false, ..gpus(1, 1) }).unwrap();
    s.schedule(0);
    s.submit(Request { priority: 0, ..gpus(2, 1) }).unwrap();
    assert!(s.schedule(1).is_empty());
    // A pool without preemption never preempts.
    let mut s = one_agent(1);
    s.submit(Request { priority: 60, ..gpus(1, 1) }).unwrap();
    s.schedule(0);
    s.submit(Request { priority: 0, ..gpus(2, 1) }).unwrap();
    assert!(s.schedule(1).is_empty());
}

#[test]
fn a_cancelled_running_request_is_not_requeued() {
    let mut s = preemption_pool();
    s.submit(Request { priority: 10, ..gpus(10, 1) }).unwrap();
    s.schedule(1);
    assert_eq!(s.cancel(4), Ok(Cancelled::Running { allocation: 4 }));
    let ended = s.allocation_ended(4).unwrap();
    assert!(ended.preempted && !ended.requeued);
    s.submit(gpus(20, 1)).unwrap();
    assert_eq!(s.cancel(20), Ok(Cancelled::Dequeued));
    assert!(s.cancel(20).is_err());
}

#[test]
fn an_agent_leaving_loses_whole_gangs_and_keeps_survivors_slots_until_they_end() {
    let mut s = Scheduler::new(vec![pool("default")]).unwrap();
    s.agent_joined(agent("a", "default", 2, 0)).unwrap();
    s.agent_joined(agent("b", "default", 2, 0)).unwrap();
    s.submit(Request { members: 2, ..gpus(1, 2) }).unwrap();
    let d = s.schedule(0);
    let alloc = allocation_of(&d, 1);
    assert_eq!(s.agent_left("a"), Ok(vec![alloc]));
    assert_eq!(s.slot_usage("b").unwrap(), &[1000, 1000], "the member on b may still run");
    s.submit(gpus(2, 2)).unwrap();
    assert!(s.schedule(1).is_empty());
    let ended = s.allocation_ended(alloc).unwrap();
    assert!(ended.lost && !ended.requeued);
    assert_eq!(s.slot_usage("b").unwrap(), &[0, 0]);
    let d = s.schedule(2);
    assert_eq!(started(&s, &d)[0].1[0].agent, "b", "nothing is placed on the lost agent");
    // The agent may come back under the same id with fresh slots.
    s.agent_joined(agent("a", "default", 2, 0)).unwrap();
    assert_eq!(s.slot_usage("a").unwrap(), &[0, 0]);
}

#[test]
fn a_restored_scheduler_decides_the_same() {
    let mut s = preemption_pool();
    s.submit(Request { priority: 10, group: "x".into(), ..gpus(10, 3) }).unwrap();
    s.submit(Request { resources: Resources::Gpu { fraction: 0.5 }, priority: 5, ..gpus(11, 1) }).unwrap();
    s.submit(Request { resources: Resources::Slots { kind: SlotKind::Gpu, count: 1 }, ..gpus(12, 1) }).unwrap();
    let mut restored = Scheduler::restore(&s.snapshot()).unwrap();
    assert_eq!(restored, s);
    for now in [10, 2_000, 3_000] {
        assert_eq!(s.schedule(now), restored.schedule(now));
    }
}

#[test]
fn slots_freed_by_preemption_are_kept_for_the_request_that_asked() {
    let mut s = preemption_pool();
    s.submit(Request { priority: 10, ..gpus(10, 4) }).unwrap();
    assert_eq!(s.schedule(100).len(), 4, "all four low-priority allocations are preempted");
    s.allocation_ended(4).unwrap();
    s.submit(Request { priority: 30, ..gpus(11, 1) }).unwrap();
    assert!(s.schedule(200).is_empty(), "the freed GPU waits for request 10");
    assert_eq!(s.why_waiting(11), Some(WaitReason::PoolReservedFor { request: 10 }));
    for a in 1..=3 {
        s.allocation_ended(a).unwrap();
    }
    assert_eq!(started_ids(&s.schedule(300)), vec![10]);
}
