//! The fair-share bound. With groups of one priority that all have work waiting, one-slot
//! requests and a full pool, every pass leaves the groups' usage divided by weight within
//! `1 / min weight` slots of each other (one request of the lightest group), however the running
//! work ends: a pass always gives the next free slot to the group furthest below its share.

mod common;

use common::{agent, gpus, pool};
use drover_sched::sim::Rng;
use drover_sched::{Request, Scheduler};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn backlogged_groups_stay_within_one_request_of_their_share(
        seed in any::<u64>(),
        weights in prop::collection::vec(prop::sample::select(vec![0.5, 1.0, 2.0, 3.0]), 2..5),
        slots in 4usize..24,
    ) {
        let mut rng = Rng::new(seed);
        let mut s = Scheduler::new(vec![pool("default")]).unwrap();
        s.agent_joined(agent("a", "default", slots, 0)).unwrap();
        let mut id = 0;
        for _ in 0..4 * slots {
            for (g, &weight) in weights.iter().enumerate() {
                s.submit(Request { group: format!("g{g}"), weight, ..gpus(id, 1) }).unwrap();
                id += 1;
            }
        }
        let min_weight = weights.iter().copied().fold(f64::MAX, f64::min);
        for now in 0..60 {
            s.schedule(now);
            let norm: Vec<f64> = weights
                .iter()
                .enumerate()
                .map(|(g, w)| s.allocations().filter(|a| a.request.group == format!("g{g}")).count() as f64 / w)
                .collect();
            let backlogged = weights.iter().enumerate().all(|(g, _)| s.pending().any(|r| r.group == format!("g{g}")));
            if !backlogged {
                break;
            }
            let (lo, hi) = norm.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
            prop_assert!(hi - lo <= 1.0 / min_weight + 1e-9, "pass {now}: slots per weight {norm:?}");
            // Some running work ends, chosen at random.
            let live: Vec<u64> = s.allocations().map(|a| a.id).collect();
            for _ in 0..rng.range(1, 3) {
                let a = *rng.pick(&live);
                let _ = s.allocation_ended(a);
            }
        }
    }
}
