use proptest::prelude::*;

use super::*;

fn config(searcher: &str) -> ExperimentConfig {
    let text = format!(
        "name: t\nentrypoint: x\nhyperparameters:\n  lr: {{type: log, minval: -3, maxval: -1, count: 3}}\n  h: {{type: categorical, vals: [1, 2]}}\nsearcher: {searcher}\n"
    );
    ExperimentConfig::parse(&text, None).unwrap()
}

fn creates(actions: &[Action]) -> Vec<RequestId> {
    actions.iter().filter_map(|a| if let Action::Create { request_id, .. } = a { Some(*request_id) } else { None }).collect()
}

fn stops(actions: &[Action]) -> Vec<RequestId> {
    actions.iter().filter_map(|a| if let Action::Stop { request_id } = a { Some(*request_id) } else { None }).collect()
}

#[test]
fn random_respects_max_trials_and_concurrency_then_shuts_down() {
    let mut s = Searcher::new(&config("{name: random, metric: m, max_trials: 5, max_concurrent_trials: 2}"), 1).unwrap();
    assert_eq!(creates(&s.initial_trials()), vec![1, 2]);
    assert_eq!(creates(&s.trial_exited(1)), vec![3]);
    assert_eq!(creates(&s.trial_failed(2)), vec![4]);
    assert_eq!(creates(&s.trial_exited(3)), vec![5]);
    assert!(s.trial_exited(4).is_empty());
    assert_eq!(s.trial_exited(5), vec![Action::Shutdown { failure: false }]);
    assert!(s.is_shut_down());
    assert_eq!(s.progress(), 1.0);
}

#[test]
fn duplicate_exits_are_ignored() {
    let mut s = Searcher::new(&config("{name: random, metric: m, max_trials: 3, max_concurrent_trials: 1}"), 1).unwrap();
    s.initial_trials();
    assert_eq!(creates(&s.trial_exited(1)), vec![2]);
    assert!(s.trial_exited(1).is_empty());
    assert_eq!(s.progress(), 1.0 / 3.0);
}

#[test]
fn grid_visits_every_point_once() {
    let mut s = Searcher::new(&config("{name: grid, metric: m, max_concurrent_trials: 4}"), 1).unwrap();
    let mut seen = Vec::new();
    let mut pending: Vec<Action> = s.initial_trials();
    while let Some(a) = pending.pop() {
        match a {
            Action::Create { request_id, hparams, .. } => {
                seen.push(serde_json::to_string(&hparams).unwrap());
                pending.extend(s.trial_exited(request_id));
            }
            Action::Shutdown { failure } => assert!(!failure),
            Action::Stop { .. } => unreachable!(),
        }
    }
    assert_eq!(seen.len(), 6);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 6);
    assert!(s.is_shut_down());
}

#[test]
fn all_failed_is_a_failure_and_single_runs_one() {
    let mut s = Searcher::new(&config("{name: single, metric: m}"), 1).unwrap();
    assert_eq!(creates(&s.initial_trials()), vec![1]);
    assert_eq!(s.trial_failed(1), vec![Action::Shutdown { failure: true }]);
}

#[test]
fn asha_stops_losers_and_replaces_them() {
    let cfg = config(
        "{name: async_halving, metric: acc, smaller_is_better: false, max_trials: 4, max_concurrent_trials: 2, num_rungs: 2, divisor: 2, time_metric: epochs, max_time: 4}",
    );
    let mut s = Searcher::new(&cfg, 3).unwrap();
    assert_eq!(creates(&s.initial_trials()), vec![1, 2]);
    // Rung 0 needs 2 epochs. Accuracy is larger-is-better: 0.9 beats 0.5.
    assert!(s.validation_completed(1, 0.9, 2.0).is_empty());
    let actions = s.validation_completed(2, 0.5, 2.0);
    assert_eq!(stops(&actions), vec![2]);
    // A second report of the stopped trial does not stop it twice.
    assert!(stops(&s.validation_completed(2, 0.6, 3.0)).is_empty());
    assert_eq!(creates(&s.trial_exited(2)), vec![3]);
    // Reaching max_time is the top rung: done.
    assert_eq!(stops(&s.validation_completed(1, 0.95, 4.0)), vec![1]);
}

#[test]
fn tpe_runs_through_the_searcher_and_learns_from_latest_results() {
    let cfg = config("{name: tpe, metric: acc, smaller_is_better: false, max_trials: 40, max_concurrent_trials: 3, n_startup_trials: 5}");
    assert_eq!((cfg.searcher.n_ei_candidates, cfg.planned_trials()), (24, Some(40)));
    let mut s = Searcher::new(&cfg, 7).unwrap();
    assert_eq!(s.total_trials(), Some(40));
    let mut pending = s.initial_trials();
    let mut created = 0;
    let mut late_lr = Vec::new();
    let mut shutdown = None;
    while let Some(a) = pending.pop() {
        match a {
            Action::Create { request_id, hparams, .. } => {
                created += 1;
                let lr = hparams["lr"].as_f64().unwrap();
                assert!((1e-3..=1e-1).contains(&lr), "{lr}");
                assert!([1, 2].contains(&hparams["h"].as_i64().unwrap()));
                if request_id > 25 {
                    late_lr.push(lr);
                }
                if request_id % 10 == 0 {
                    pending.extend(s.trial_failed(request_id));
                    continue;
                }
                // Accuracy peaks at lr = 1e-2; an early poor report is superseded by the last.
                pending.extend(s.validation_completed(request_id, 0.0, 1.0));
                let acc = 1.0 - (lr.log10() + 2.0).abs();
                pending.extend(s.validation_completed(request_id, acc, 2.0));
                pending.extend(s.trial_exited(request_id));
            }
            Action::Shutdown { failure } => shutdown = Some(failure),
            Action::Stop { .. } => unreachable!("tpe never stops a trial"),
        }
    }
    assert_eq!((created, shutdown), (40, Some(false)));
    let near = late_lr.iter().filter(|lr| (lr.log10() + 2.0).abs() < 0.5).count();
    assert!(near * 2 > late_lr.len(), "late proposals {late_lr:?}");

    let e = ExperimentConfig::parse("name: t\nentrypoint: x\nsearcher: {name: tpe, metric: m}\n", None).unwrap_err();
    assert!(e.message.contains("needs `max_trials`"), "{e}");
    let e = ExperimentConfig::parse("name: t\nentrypoint: x\nsearcher: {name: tpe, metric: m, max_trials: 3, n_ei_candidates: 0}\n", None).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("searcher.n_ei_candidates"), "{e}");
}

fn asha_config(name: &str, max_trials: usize, concurrent: usize, divisor: u32, rungs: usize) -> ExperimentConfig {
    let extra = if name == "async_halving" { format!(", num_rungs: {rungs}") } else { format!(", max_rungs: {rungs}, mode: standard") };
    config(&format!(
        "{{name: {name}, metric: loss, max_trials: {max_trials}, max_concurrent_trials: {concurrent}, divisor: {divisor}, time_metric: epochs, max_time: 64{extra}}}"
    ))
}

proptest! {
    /// Whatever order trials end in: never more live than max_concurrent, never more created
    /// than max_trials, exactly one shutdown, and a snapshot taken at any point restores to a
    /// searcher that produces the very same future actions.
    #[test]
    fn invariants_and_exact_restore(
        method in prop::sample::select(vec!["random", "async_halving", "adaptive_asha", "tpe"]),
        max_trials in 1usize..30,
        max_concurrent in 1usize..6,
        divisor in 2u32..5,
        rungs in 1usize..5,
        seed in any::<u64>(),
        events in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..4, 0.0f64..1.0, 1u32..80), 0..120),
        snap_at in 0usize..120,
    ) {
        let cfg = if method == "random" {
            config(&format!("{{name: random, metric: m, max_trials: {max_trials}, max_concurrent_trials: {max_concurrent}}}"))
        } else if method == "tpe" {
            // Few startup trials, so that the model runs (even with no result at all).
            config(&format!("{{name: tpe, metric: m, max_trials: {max_trials}, max_concurrent_trials: {max_concurrent}, n_startup_trials: {}}}", rungs - 1))
        } else {
            asha_config(method, max_trials, max_concurrent, divisor, rungs)
        };
        let mut s = Searcher::new(&cfg, seed).unwrap();
        let mut live: Vec<RequestId> = creates(&s.initial_trials());
        let mut created = live.len();
        let mut shutdowns = 0;
        let mut restored: Option<Searcher> = None;
        for (i, (pick, kind, metric, time)) in events.iter().enumerate() {
            if live.is_empty() { break; }
            if i == snap_at { restored = Some(Searcher::restore(&s.snapshot()).unwrap()); }
            let id = live[pick.index(live.len())];
            let step = |s: &mut Searcher| match kind {
                0 => s.trial_failed(id),
                1 => s.trial_exited(id),
                _ => s.validation_completed(id, *metric, f64::from(*time)),
            };
            let actions = step(&mut s);
            if let Some(r) = restored.as_mut() {
                prop_assert_eq!(&step(r), &actions);
            }
            if *kind < 2 { live.retain(|x| *x != id); }
            for a in &actions {
                match a {
                    Action::Create { request_id, .. } => { live.push(*request_id); created += 1; }
                    Action::Shutdown { .. } => shutdowns += 1,
                    Action::Stop { request_id } => prop_assert!(live.contains(request_id)),
                }
            }
            prop_assert!(live.len() <= max_concurrent);
            prop_assert!(created <= max_trials);
        }
        if live.is_empty() {
            prop_assert_eq!(created, max_trials);
            prop_assert_eq!(shutdowns, 1);
        } else {
            prop_assert_eq!(shutdowns, 0);
        }
    }

    /// ASHA stops exactly the trials that land outside the top max(n / divisor, 1) of a rung
    /// (or reach the top rung), judged against what that rung holds at that moment.
    #[test]
    fn asha_stops_exactly_outside_the_top_fraction(
        divisor in 2u32..5,
        rungs in 1usize..4,
        reports in proptest::collection::vec((0usize..12, 0.0f64..1.0, 1u32..70), 1..150),
    ) {
        let mut a = asha::AshaSearch::new(Default::default(), 12, rungs, f64::from(divisor), 64.0);
        let mut rng = SplitMix64::new(0);
        for id in 1..=12 { a.propose(id, &mut rng); }
        let mut stopped = BTreeSet::new();
        let mut reached = std::collections::BTreeMap::<RequestId, usize>::new();
        for (trial, loss, time) in reports {
            let id = trial as RequestId + 1;
            let before: Vec<Vec<(f64, RequestId)>> = a.rungs.iter().map(|r| r.losses.clone()).collect();
            let result = a.validated(id, loss, f64::from(time));
            if stopped.contains(&id) {
                prop_assert!(result.is_empty());
                continue;
            }
            // Replay the rule on the rungs as they were.
            let mut expected_stop = false;
            let mut rung = *reached.get(&id).unwrap_or(&0);
            while rung < before.len() && f64::from(time) >= a.rungs[rung].units_needed {
                let better = before[rung].iter().filter(|(l, _)| *l <= loss).count();
                let n = before[rung].len() + 1;
                let keep = ((n as f64 / f64::from(divisor)) as usize).max(1);
                if rung == before.len() - 1 || better >= keep { expected_stop = true; break; }
                rung += 1;
            }
            reached.insert(id, rung);
            prop_assert_eq!(result.clone(), if expected_stop { vec![id] } else { vec![] });
            if expected_stop { stopped.insert(id); }
        }
    }
}
