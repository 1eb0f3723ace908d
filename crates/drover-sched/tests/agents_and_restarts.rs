//! Agents that change their slots, drop out of touch and come back; work taken back after a
//! master restart; requests re-prioritised while they wait or run.

mod common;

use common::{agent, allocation_of, gpus, pool, started, started_ids};
use drover_sched::{AdoptError, AgentError, Placement, Request, Resources, Scheduler, UNITS_PER_SLOT, UpdateError, WaitReason};

fn cluster() -> Scheduler {
    let mut s = Scheduler::new(vec![pool("default"), pool("other")]).unwrap();
    s.agent_joined(agent("a", "default", 2, 0)).unwrap();
    s
}

#[test]
fn slots_can_change_but_not_from_under_running_work() {
    let mut s = cluster();
    s.submit(gpus(1, 1)).unwrap();
    let d = s.schedule(0);
    assert_eq!(started(&s, &d)[0].1[0].slots, ["gpu0"]);
    // gpu0 is busy: it cannot go, change kind, nor can the agent change pools.
    let mut without = agent("a", "default", 2, 0);
    without.slots.remove(0);
    assert_eq!(s.agent_changed(without), Err(AgentError::SlotInUse("gpu0".into())));
    let mut as_cpu = agent("a", "default", 2, 0);
    as_cpu.slots[0].kind = drover_sched::SlotKind::Cpu;
    assert_eq!(s.agent_changed(as_cpu), Err(AgentError::SlotInUse("gpu0".into())));
    assert!(matches!(s.agent_changed(agent("a", "other", 2, 0)), Err(AgentError::PoolChangeUnderWork { .. })));
    // Refusals changed nothing: gpu0 still busy, gpu1 free.
    assert_eq!(s.slot_usage("a").unwrap(), [UNITS_PER_SLOT as u16, 0]);
    // Losing the free slot and gaining two others is fine; usage follows the slot ids.
    let mut changed = agent("a", "default", 3, 0);
    changed.slots.remove(1);
    s.agent_changed(changed).unwrap();
    assert_eq!(s.slot_usage("a").unwrap(), [UNITS_PER_SLOT as u16, 0]);
    assert_eq!(s.agent_changed(agent("zz", "default", 1, 0)), Err(AgentError::Unknown("zz".into())));
    let mut dup = agent("a", "default", 2, 0);
    dup.slots[1].id = "gpu0".into();
    assert_eq!(s.agent_changed(dup), Err(AgentError::DuplicateSlot("gpu0".into())));
}

#[test]
fn an_agent_out_of_touch_keeps_its_work_and_gets_no_new_work() {
    let mut s = cluster();
    s.submit(gpus(1, 1)).unwrap();
    s.schedule(0);
    s.set_schedulable("a", false).unwrap();
    s.submit(gpus(2, 1)).unwrap();
    assert!(s.schedule(1).is_empty());
    assert_eq!(s.why_waiting(2), Some(WaitReason::NoAgents));
    assert!(s.running_allocation(1).is_some());
    s.set_schedulable("a", true).unwrap();
    assert_eq!(started_ids(&s.schedule(2)), [2]);
}

#[test]
fn work_adopted_after_a_restart_holds_its_slots_when_the_agents_return() {
    let mut s = Scheduler::new(vec![pool("default")]).unwrap();
    // A gang of two, one GPU each on `a` and `b`, and a quarter GPU on `a`, from the store.
    let gang = Request { members: 2, ..gpus(1, 1) };
    let on = |agent: &str, slot: &str, units| Placement { agent: agent.into(), slots: vec![slot.into()], units };
    let g = s.adopt(gang.clone(), vec![on("a", "gpu0", UNITS_PER_SLOT), on("b", "gpu0", UNITS_PER_SLOT)], 5).unwrap();
    let quarter = Request { resources: Resources::Gpu { fraction: 0.25 }, ..gpus(2, 1) };
    s.adopt(quarter.clone(), vec![on("a", "gpu1", 250)], 5).unwrap();
    // Malformed adoptions are refused and change nothing.
    assert!(matches!(s.adopt(gpus(1, 1), vec![on("a", "gpu0", UNITS_PER_SLOT)], 5), Err(AdoptError::Submit(_))));
    assert!(matches!(s.adopt(Request { members: 2, ..gpus(3, 1) }, vec![], 5), Err(AdoptError::Placements { .. })));
    assert!(matches!(s.adopt(gpus(3, 1), vec![on("a", "gpu1", 250)], 5), Err(AdoptError::Units { .. })));
    // `a` returns with both GPUs: gpu0 full, gpu1 a quarter used.
    s.agent_joined(agent("a", "default", 2, 0)).unwrap();
    assert_eq!(s.slot_usage("a").unwrap(), [UNITS_PER_SLOT as u16, 250]);
    // `b` returns without the slot its member holds: refused, naming it.
    assert_eq!(s.agent_joined(agent("b", "default", 0, 1)), Err(AgentError::SlotInUse("gpu0".into())));
    s.agent_joined(agent("b", "default", 1, 0)).unwrap();
    // A full GPU on a joined agent cannot be adopted twice.
    assert!(matches!(s.adopt(gpus(4, 1), vec![on("b", "gpu0", UNITS_PER_SLOT)], 5), Err(AdoptError::NoRoom(..))));
    // Nothing new fits on the busy slots; three more quarters do.
    s.submit(gpus(5, 1)).unwrap();
    for id in 6..9 {
        s.submit(Request { resources: Resources::Gpu { fraction: 0.25 }, ..gpus(id, 1) }).unwrap();
    }
    assert_eq!(started_ids(&s.schedule(10)), [6, 7, 8]);
    // When the gang ends its slots are free again.
    s.allocation_ended(g).unwrap();
    let d = s.schedule(11);
    assert_eq!(started_ids(&d), [5]);
    let _ = allocation_of(&d, 5);
}

#[test]
fn priority_and_weight_change_in_place() {
    let mut s = cluster();
    s.submit(Request { members: 1, ..gpus(1, 2) }).unwrap();
    s.schedule(0);
    s.submit(gpus(2, 2)).unwrap();
    s.submit(Request { priority: 50, ..gpus(3, 2) }).unwrap();
    s.schedule(1);
    // 3 is moved ahead of 2; when the agent frees, 3 goes first.
    s.update_request(3, 10, 2.0).unwrap();
    assert_eq!(s.pending().find(|r| r.id == 3).unwrap().priority, 10);
    assert!(matches!(s.update_request(3, 100, 1.0), Err(UpdateError::Submit(_))));
    assert!(matches!(s.update_request(3, 1, f64::NAN), Err(UpdateError::Submit(_))));
    assert!(matches!(s.update_request(99, 1, 1.0), Err(UpdateError::Request(_))));
    // A running request's priority changes too.
    s.update_request(1, 7, 1.0).unwrap();
    let a = s.running_allocation(1).unwrap();
    assert_eq!(s.allocation(a).unwrap().request.priority, 7);
    s.allocation_ended(a).unwrap();
    assert_eq!(started_ids(&s.schedule(2)), [3]);
    assert!(s.is_pending(2));
}

#[test]
fn check_refuses_like_submit_without_queueing_and_submit_waiting_accepts_what_no_longer_fits() {
    let mut s = cluster();
    let big = gpus(1, 4);
    assert!(s.check(&big).is_err());
    assert!(!s.is_pending(1));
    s.submit_waiting(big).unwrap();
    s.schedule(0);
    assert_eq!(s.why_waiting(1), Some(WaitReason::CannotFitCurrentAgents));
    // Malformed is still malformed.
    assert!(s.submit_waiting(Request { priority: 200, ..gpus(2, 1) }).is_err());
}

#[test]
fn an_adopted_multi_slot_member_charges_each_of_its_slots_once() {
    let mut s = Scheduler::new(vec![pool("default")]).unwrap();
    let p = Placement { agent: "a".into(), slots: vec!["gpu0".into(), "gpu1".into()], units: UNITS_PER_SLOT };
    assert!(matches!(s.adopt(gpus(1, 3), vec![p.clone()], 0), Err(AdoptError::Slots { .. })));
    s.adopt(gpus(1, 2), vec![p], 0).unwrap();
    s.agent_joined(agent("a", "default", 3, 0)).unwrap();
    assert_eq!(s.slot_usage("a").unwrap(), [UNITS_PER_SLOT as u16, UNITS_PER_SLOT as u16, 0]);
}

#[test]
fn a_waiting_request_reshaped_keeps_its_place() {
    let mut s = cluster();
    s.submit_waiting(gpus(1, 4)).unwrap();
    s.submit(gpus(2, 2)).unwrap();
    // Four GPUs become a gang of two members of two once a second agent of two joins; the gang
    // starts first, ahead of request 2 that came later and would have fitted alone.
    s.reshape(1, Resources::Slots { kind: drover_sched::SlotKind::Gpu, count: 2 }, 2).unwrap();
    assert!(s.reshape(1, Resources::Slots { kind: drover_sched::SlotKind::Gpu, count: 0 }, 2).is_err());
    assert!(s.reshape(99, Resources::ZeroSlot, 1).is_err());
    s.agent_joined(agent("b", "default", 2, 0)).unwrap();
    let d = s.schedule(1);
    assert_eq!(started_ids(&d), [1]);
    assert_eq!(started(&s, &d)[0].1.len(), 2);
    assert!(s.is_pending(2));
}
