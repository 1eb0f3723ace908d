use proptest::prelude::*;

use super::*;
use drover_core::hparams::{self, Hyperparameter};

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
    let e = ExperimentConfig::parse("name: t\nentrypoint: x\nsearcher: {name: tpe, metric: m, max_trials: 3, n_ei_candidates: 0}\n", None)
        .unwrap_err();
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

fn pbt_config(extra: &str) -> ExperimentConfig {
    let text = format!(
        "name: t\nentrypoint: x\nhyperparameters:\n  lr: {{type: log, minval: -4, maxval: -1}}\n  width: {{type: int, minval: 1, maxval: 8}}\n  act: {{type: categorical, vals: [relu, tanh, gelu]}}\n  opt: {{momentum: {{type: double, minval: 0, maxval: 0.99}}, name: sgd}}\nsearcher: {{name: pbt, metric: loss, time_metric: epochs, population_size: 4, generation_length: 2{extra}}}\n"
    );
    ExperimentConfig::parse(&text, None).unwrap()
}

fn create_of(actions: &[Action], id: RequestId) -> (Map<String, Value>, Option<RequestId>) {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Create { request_id, hparams, checkpoint_from, .. } if *request_id == id => Some((hparams.clone(), *checkpoint_from)),
            _ => None,
        })
        .unwrap()
}

#[test]
fn pbt_runs_synchronous_generations_and_copies_only_better_checkpointed_members() {
    let mut s = Searcher::new(&pbt_config(", max_generations: 3"), 5).unwrap();
    assert_eq!(s.total_trials(), Some(12));
    let first = s.initial_trials();
    assert_eq!(creates(&first), vec![1, 2, 3, 4]);
    assert!(first.iter().all(|a| matches!(a, Action::Create { checkpoint_from: None, .. })));
    // Losses 0.1 < 0.2 < 0.3 < 0.4: member 1 is best. Before the generation's end nothing stops.
    for id in 1..=4 {
        assert!(s.validation_completed(id, id as f64 / 10.0, 1.0).is_empty());
        assert_eq!(stops(&s.validation_completed(id, id as f64 / 10.0, 2.0)), vec![id], "generation 0 ends at 2 epochs");
        s.checkpoint_saved(id);
    }
    // The barrier: nobody starts generation 1 until all four are done.
    assert!(s.trial_exited(1).is_empty());
    assert!(s.trial_exited(2).is_empty());
    assert!(s.trial_exited(3).is_empty());
    let next = s.trial_exited(4);
    assert_eq!(creates(&next), vec![5, 6, 7, 8]);
    let pbt = s.pbt().unwrap();
    for id in 5..=8 {
        let (hp, from) = create_of(&next, id);
        let member = &pbt.members()[&id];
        let predecessor = id - 4;
        assert_eq!(member.generation, 1);
        assert_eq!(from, member.parent);
        let parent = from.expect("everyone checkpointed, so everyone continues from one");
        if member.exploited {
            assert!(parent < predecessor, "member {id} copied {parent}, which is not better than {predecessor}");
            let lr = hp["lr"].as_f64().unwrap();
            let parent_lr = pbt.members()[&parent].hparams["lr"].as_f64().unwrap();
            assert!(lr >= parent_lr * 0.8 - 1e-12 && lr <= parent_lr * 1.2 + 1e-12 || lr == 1e-4 || lr == 1e-1, "{lr} vs {parent_lr}");
            assert_eq!(hp["opt"]["name"], "sgd", "constants stay");
        } else {
            assert_eq!(parent, predecessor);
            assert_eq!(hp, pbt.members()[&predecessor].hparams);
        }
    }
    assert!(!pbt.members()[&5].exploited, "the best member never loses its tournament");
    // Generation 1 ends at epoch 4; generation 2 is the last.
    for id in 5..=8 {
        assert!(stops(&s.validation_completed(id, 0.5, 3.0)).is_empty());
        s.validation_completed(id, 0.05, 4.0);
        s.checkpoint_saved(id);
    }
    let mut last = Vec::new();
    for id in 5..=8 {
        last.extend(s.trial_exited(id));
    }
    assert_eq!(creates(&last), vec![9, 10, 11, 12]);
    for id in 9..=12 {
        s.validation_completed(id, 0.01, 6.0);
        s.checkpoint_saved(id);
    }
    let mut end = Vec::new();
    for id in 9..=12 {
        end.extend(s.trial_exited(id));
    }
    assert_eq!(end, vec![Action::Shutdown { failure: false }]);
    assert_eq!(s.pbt().unwrap().ended_because(), Some("all 3 generations ran"));
}

#[test]
fn pbt_without_checkpoints_ends_as_a_failure_and_failed_members_always_lose() {
    let mut s = Searcher::new(&pbt_config(", max_generations: 3"), 9).unwrap();
    s.initial_trials();
    for id in 1..=4 {
        s.validation_completed(id, 0.3, 2.0);
    }
    let mut actions = Vec::new();
    for id in 1..=4 {
        actions.extend(s.trial_exited(id));
    }
    assert!(creates(&actions).is_empty());
    assert_eq!(actions, vec![Action::Shutdown { failure: true }], "without checkpoints PBT cannot work: the experiment errs");
    assert!(
        s.pbt().unwrap().ended_because().unwrap().contains("no member of generation 0 saved a checkpoint"),
        "{:?}",
        s.pbt().unwrap().ended_because()
    );

    // Member 2 fails (no score): whoever it meets is better, so it copies; member 1 is best.
    let mut s = Searcher::new(&pbt_config(", max_generations: 3"), 9).unwrap();
    s.initial_trials();
    for id in [1, 3, 4] {
        s.validation_completed(id, id as f64, 2.0);
        s.checkpoint_saved(id);
    }
    s.trial_failed(2);
    s.trial_exited(1);
    s.trial_exited(3);
    let next = s.trial_exited(4);
    let (_, from) = create_of(&next, 6);
    assert!(matches!(from, Some(1 | 3 | 4)), "the failed member copies a scored one, not itself: {from:?}");
    assert!(s.pbt().unwrap().members()[&6].exploited);
}

#[test]
fn pbt_stop_rule_and_config_errors() {
    // No improvement at all over 1 generation stops the search after generation 1.
    let mut s = Searcher::new(&pbt_config(", max_generations: 10, patience: 1, min_improvement: 0.01"), 3).unwrap();
    s.initial_trials();
    let mut id = 1;
    for _generation in 0..2 {
        let mut actions = Vec::new();
        for _ in 0..4 {
            s.validation_completed(id, 0.5, 100.0);
            s.checkpoint_saved(id);
            actions.extend(s.trial_exited(id));
            id += 1;
        }
        if id > 5 {
            assert_eq!(actions, vec![Action::Shutdown { failure: false }]);
        }
    }
    assert!(s.pbt().unwrap().ended_because().unwrap().contains("less than min_improvement"));

    let bad = |extra: &str| {
        let text = format!(
            "name: t\nentrypoint: x\nsearcher: {{name: pbt, metric: loss, time_metric: epochs, population_size: 4, max_generations: 3, generation_length: 2{extra}}}\n"
        );
        ExperimentConfig::parse(&text, None).unwrap_err()
    };
    assert_eq!(bad(", exploit: tournament").field.as_deref(), Some("searcher.exploit"));
    assert!(bad(", exploit: tournament").message.contains("binary_tournament"));
    assert_eq!(bad(", perturb_range: [1.2, 0.8]").field.as_deref(), Some("searcher.perturb_range"));
    assert_eq!(bad(", max_trials: 5").field.as_deref(), Some("searcher.max_trials"));
    let e = ExperimentConfig::parse(
        "name: t\nentrypoint: x\nsearcher: {name: pbt, metric: loss, time_metric: epochs, population_size: 1, max_generations: 3, generation_length: 2}\n",
        None,
    )
    .unwrap_err();
    assert_eq!(e.field.as_deref(), Some("searcher.population_size"), "{e}");
    assert_eq!(bad(", quantile_fraction: 0.7").field.as_deref(), Some("searcher.quantile_fraction"));
    let e = ExperimentConfig::parse(
        "name: t\nentrypoint: x\nsearcher: {name: pbt, metric: loss, time_metric: epochs, population_size: 4, max_generations: 3, generation_length: 2}\ncheckpoint_storage: {save_trial_latest: 0}\n",
        None,
    )
    .unwrap_err();
    assert_eq!(e.field.as_deref(), Some("checkpoint_storage.save_trial_latest"), "{e}");
    let e = ExperimentConfig::parse("name: t\nentrypoint: x\nsearcher: {name: pbt, metric: loss, population_size: 4}\n", None).unwrap_err();
    assert!(e.message.contains("max_generations"), "{e}");
}

#[test]
fn pbt_explore_stays_in_bounds_and_moves_to_neighbours() {
    let cfg = pbt_config(", max_generations: 3");
    let mut rng = SplitMix64::new(4);
    let mut source = hparams::sample_space(&cfg.hyperparameters, &mut rng);
    source.insert("width".into(), Value::from(8));
    source.insert("act".into(), Value::from("tanh"));
    source.insert("lr".into(), Value::from(0.1));
    for _ in 0..200 {
        let out = pbt::explore_space(&cfg.hyperparameters, &source, [0.8, 1.2], 0.0, &mut rng);
        let lr = out["lr"].as_f64().unwrap();
        assert!((0.08 - 1e-12..=0.1 + 1e-12).contains(&lr), "clipped to maxval 1e-1: {lr}");
        assert!([7, 8].contains(&out["width"].as_i64().unwrap()), "{}", out["width"]);
        assert!(["relu", "gelu"].contains(&out["act"].as_str().unwrap()), "a neighbour of tanh: {}", out["act"]);
        let m = out["opt"]["momentum"].as_f64().unwrap();
        assert!((0.0..=0.99).contains(&m));
    }
}

proptest! {
    /// Whatever the order of validations, checkpoints, exits and failures: never more live than
    /// max_concurrent nor more trials than population x generations; a member starts only from a
    /// checkpoint that was registered before; a copied member's source scored better than the
    /// member it replaces; and a snapshot restores to the very same future.
    #[test]
    fn pbt_invariants(
        synchronous in any::<bool>(),
        truncation in any::<bool>(),
        population in 2usize..6,
        generations in 1usize..4,
        max_concurrent in 1usize..6,
        seed in any::<u64>(),
        events in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..6, 0.0f64..1.0, 1u32..8), 0..200),
        snap_at in 0usize..200,
    ) {
        let exploit = if truncation { "truncation" } else { "binary_tournament" };
        let cfg = config(&format!(
            "{{name: pbt, metric: m, time_metric: t, population_size: {population}, max_generations: {generations}, generation_length: 3, synchronous: {synchronous}, exploit: {exploit}, max_concurrent_trials: {max_concurrent}, resample_probability: 0.2}}"
        ));
        let mut s = Searcher::new(&cfg, seed).unwrap();
        let mut live: Vec<RequestId> = Vec::new();
        let mut checkpointed = BTreeSet::new();
        let mut created = 0;
        let mut shutdowns = 0;
        let mut restored: Option<Searcher> = None;
        let mut check = |actions: &[Action], s: &Searcher, live: &mut Vec<RequestId>, checkpointed: &BTreeSet<RequestId>| -> Result<(), TestCaseError> {
            for a in actions {
                match a {
                    Action::Create { request_id, checkpoint_from, .. } => {
                        live.push(*request_id);
                        created += 1;
                        if let Some(from) = checkpoint_from {
                            prop_assert!(checkpointed.contains(from), "member {} starts from {}, which has no checkpoint", request_id, from);
                            let pbt = s.pbt().unwrap();
                            let me = &pbt.members()[request_id];
                            if me.exploited {
                                // It replaces the previous member of its slot, which must have scored worse.
                                let predecessor = pbt.members().iter().filter(|(id, m)| m.slot == me.slot && m.generation + 1 == me.generation && *id != request_id).map(|(id, _)| *id).next().unwrap();
                                let source = pbt.members()[from].score.unwrap();
                                prop_assert!(pbt.members()[&predecessor].score.is_none_or(|p| source < p), "{} copied {} ({}) over {:?}", request_id, from, source, pbt.members()[&predecessor].score);
                            }
                        }
                    }
                    Action::Shutdown { .. } => shutdowns += 1,
                    Action::Stop { request_id } => prop_assert!(live.contains(request_id)),
                }
            }
            prop_assert!(live.len() <= max_concurrent);
            prop_assert!(created <= population * generations);
            Ok(())
        };
        let first = s.initial_trials();
        check(&first, &s, &mut live, &checkpointed)?;
        for (i, (pick, kind, metric, time)) in events.iter().enumerate() {
            if live.is_empty() { break; }
            if i == snap_at { restored = Some(Searcher::restore(&s.snapshot()).unwrap()); }
            let id = live[pick.index(live.len())];
            let step = |s: &mut Searcher| match kind {
                0 => s.trial_failed(id),
                1 => s.trial_exited(id),
                2 => { s.checkpoint_saved(id); Vec::new() }
                _ => s.validation_completed(id, *metric, f64::from(*time)),
            };
            let actions = step(&mut s);
            if let Some(r) = restored.as_mut() {
                prop_assert_eq!(&step(r), &actions);
            }
            if *kind == 2 { checkpointed.insert(id); }
            if *kind < 2 { live.retain(|x| *x != id); }
            check(&actions, &s, &mut live, &checkpointed)?;
        }
        prop_assert_eq!(shutdowns, usize::from(live.is_empty()));
    }
}

/// Runs a search to its end from its first actions, exiting trials in creation order; returns
/// the hyperparameters of every trial created.
fn run_to_end(s: &mut Searcher, first: &[Action]) -> Vec<Map<String, Value>> {
    let mut seen = Vec::new();
    let mut live = std::collections::VecDeque::new();
    let mut record = |actions: &[Action], live: &mut std::collections::VecDeque<RequestId>| {
        for a in actions {
            if let Action::Create { request_id, hparams, .. } = a {
                seen.push(hparams.clone());
                live.push_back(*request_id);
            }
        }
    };
    record(first, &mut live);
    while let Some(id) = live.pop_front() {
        let actions = s.trial_exited(id);
        record(&actions, &mut live);
    }
    seen
}

#[test]
fn grid_is_walked_point_by_point_and_old_snapshots_still_restore() {
    let cfg = config("{name: grid, metric: m, max_concurrent_trials: 2}");
    let all = hparams::grid(&cfg.hyperparameters, "hyperparameters").unwrap();
    let mut s = Searcher::new(&cfg, 1).unwrap();
    let first = s.initial_trials();
    assert_eq!(creates(&first), vec![1, 2]);
    let snapshot = s.snapshot();
    assert!(!snapshot.contains("remaining") && snapshot.len() < 1000, "an index, not the points: {snapshot}");
    // Snapshots saved before listed the points not handed out yet.
    let mut old: Value = serde_json::from_str(&snapshot).unwrap();
    old["method"]["grid"] = serde_json::json!({"remaining": all[2..], "total": all.len()});
    let restored = Searcher::restore(&snapshot).unwrap();
    let legacy = Searcher::restore(&old.to_string()).unwrap();
    for mut s in [s, restored, legacy] {
        assert_eq!(run_to_end(&mut s, &first), all, "every point once, in the grid's order");
        assert!(s.is_shut_down());
        assert_eq!(s.progress(), 1.0);
    }
}

#[test]
fn searchers_refuse_sizes_their_state_cannot_afford() {
    // Configurations that did not go through `parse`: the searcher checks what sizes its state.
    let mut grid = config("{name: grid, metric: m}");
    grid.hyperparameters.insert("x".into(), Hyperparameter::Int { minval: i64::MIN, maxval: i64::MAX, count: None });
    let e = Searcher::new(&grid, 1).unwrap_err();
    assert!(e.to_string().contains("the grid has"), "{e}");
    grid.hyperparameters.insert("x".into(), Hyperparameter::Double { minval: 0.0, maxval: 1.0, count: Some(1 << 40) });
    assert!(Searcher::new(&grid, 1).unwrap_err().to_string().contains("the grid has"));

    let mut pbt = pbt_config(", max_generations: 3");
    pbt.searcher.population_size = Some(1_000_000_000);
    let e = Searcher::new(&pbt, 1).unwrap_err();
    assert!(e.to_string().contains("population_size"), "{e}");
    pbt.searcher.population_size = Some(4);
    pbt.searcher.max_generations = Some(usize::MAX);
    assert!(Searcher::new(&pbt, 1).unwrap_err().to_string().contains("max_generations"));

    let mut asha = asha_config("async_halving", 10, 2, 2, 3);
    asha.searcher.num_rungs = Some(1 << 40);
    assert!(Searcher::new(&asha, 1).unwrap_err().to_string().contains("searcher.num_rungs"));
    let mut tpe = config("{name: tpe, metric: m, max_trials: 5}");
    tpe.searcher.n_ei_candidates = 1 << 40;
    assert!(Searcher::new(&tpe, 1).unwrap_err().to_string().contains("searcher.n_ei_candidates"));
    let mut random = config("{name: random, metric: m, max_trials: 5}");
    random.searcher.max_trials = Some(usize::MAX);
    assert!(Searcher::new(&random, 1).unwrap_err().to_string().contains("searcher.max_trials"));
}

#[test]
fn pbt_explore_does_not_overflow_at_the_ends_of_i64() {
    let space = ExperimentConfig::parse(
        "name: t\nentrypoint: x\nhyperparameters:\n  i: {type: int, minval: -9223372036854775808, maxval: 9223372036854775807}\nsearcher: {name: random, metric: m, max_trials: 1}\n",
        None,
    )
    .unwrap()
    .hyperparameters;
    let mut rng = SplitMix64::new(2);
    for end in [i64::MIN, i64::MAX] {
        let source = Map::from_iter([("i".to_string(), Value::from(end))]);
        for _ in 0..50 {
            let v = pbt::explore_space(&space, &source, [0.8, 1.2], 0.0, &mut rng)["i"].as_i64().unwrap();
            assert!(v == end || v.abs_diff(end) == 1, "{v}");
        }
    }
}
