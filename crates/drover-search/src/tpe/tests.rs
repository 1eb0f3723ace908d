use std::f64::consts::FRAC_1_SQRT_2;

use drover_core::config::ExperimentConfig;
use drover_core::hparams::sample_space;

use super::parzen::*;
use super::*;

fn space(yaml: &str) -> HyperparameterSpace {
    let indented: String = yaml.lines().map(|l| format!("  {l}\n")).collect();
    let text = format!("name: t\nentrypoint: x\nhyperparameters:\n{indented}searcher: {{name: random, metric: m, max_trials: 1}}\n");
    ExperimentConfig::parse(&text, None).unwrap().hyperparameters
}

/// Runs `trials` trials one at a time; returns each proposal and its loss.
fn run(mut tpe: TpeSearch, seed: u64, trials: u64, f: impl Fn(&Map<String, Value>) -> f64) -> Vec<(Map<String, Value>, f64)> {
    let mut rng = SplitMix64::new(seed);
    let mut out = Vec::new();
    for id in 1..=trials {
        let p = tpe.propose(id, &mut rng).unwrap();
        let loss = f(&p.hparams);
        tpe.validated(id, loss, 1.0);
        tpe.exited(id, Outcome::Completed);
        out.push((p.hparams, loss));
    }
    out
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + b.abs())
}

#[test]
#[allow(clippy::excessive_precision)]
fn normal_functions_match_reference_values() {
    for (x, want) in [
        (0.0, 1.0),
        (0.5, 0.4795001221869535),
        (1.0, 0.15729920705028513),
        (2.0, 0.004677734981047266),
        (3.0, 2.209049699858544e-05),
        (5.0, 1.5374597944280349e-12),
        (-1.0, 1.8427007929497148),
    ] {
        assert!(close(erfc(x), want, 1e-15) || (erfc(x) - want).abs() < 1e-15 * want.abs(), "erfc({x}) = {}", erfc(x));
    }
    // The log-space tail agrees with the log of erfc's value.
    let mut rng = SplitMix64::new(2);
    for _ in 0..10_000 {
        let z = -1.7 - 35.0 * rng.next_f64();
        let direct = (0.5 * erfc(-z * FRAC_1_SQRT_2)).ln();
        assert!(close(log_ndtr(z), direct, 1e-14), "log_ndtr({z}) = {} vs {direct}", log_ndtr(z));
    }
    // Optuna's _truncnorm._log_gauss_mass.
    for (a, b, want) in [
        (-1.0, 1.0, -0.38171514630212616),
        (-0.3, 2.5, -0.49151044063838567),
        (30.0, 31.0, -454.3212439563432),
        (-31.0, -30.0, -454.3212439563432),
        (0.5, 0.7, -2.7094428728758055),
        (-8.0, -7.5, -31.095579450839747),
        (-45.0, -44.9, -1012.7400741516319),
        (5.0, 9.0, -15.064998393989118),
    ] {
        assert!(close(log_gauss_mass(a, b), want, 1e-12), "log_gauss_mass({a}, {b}) = {}", log_gauss_mass(a, b));
    }
}

#[test]
fn exp_neg_is_within_two_ulp_of_exp() {
    let mut rng = SplitMix64::new(4);
    for i in 0..100_000 {
        let x = if i < 10 { -(i as f64) * 6.0 } else { -60.0 * rng.next_f64() };
        let (got, want) = (exp_neg(x), x.exp());
        assert!((got - want).abs() <= 2.0 * f64::EPSILON * want, "exp({x}): {got} vs {want}");
    }
    assert_eq!(exp_neg(0.0), 1.0);
}

#[test]
fn gamma_and_weights_match_optuna() {
    let gammas: Vec<usize> = [0, 1, 10, 11, 30, 70, 249, 250, 300].iter().map(|n| gamma(*n)).collect();
    assert_eq!(gammas, vec![0, 1, 1, 2, 3, 7, 25, 25, 25]);
    let w = default_weights(30);
    assert_eq!(w.len(), 30);
    for (got, want) in w.iter().zip([0.03333333333333333, 0.275, 0.5166666666666667, 0.7583333333333333, 1.0, 1.0]) {
        assert!(close(*got, want, 1e-15), "{w:?}");
    }
    assert_eq!(default_weights(27)[..2], [1.0 / 27.0, 1.0]);
    assert_eq!(default_weights(24), vec![1.0; 24]);
    assert!(default_weights(0).is_empty());
}

/// The mixture density equals Optuna 5.0's `_ParzenEstimator.log_pdf` on the same
/// observations (values printed by Optuna itself from the same formulas, with
/// `prior_weight=1.0, consider_magic_clip=True, consider_endpoints=False,
/// weights=default_weights`, plus ln(ln 10): we work on base-10 exponents, Optuna on natural
/// logs, which scales the `log` dimension's density by that constant).
#[test]
fn parzen_density_matches_optuna() {
    let s = space(
        "c: {type: categorical, vals: [a, b, c]}\nlr: {type: log, minval: -4, maxval: -1}\nn: {type: int, minval: 1, maxval: 8}\nx: {type: double, minval: -5, maxval: 10}",
    );
    let dims = flatten(&s);
    let names: Vec<&str> = dims.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["c", "lr", "n", "x"]);
    let obs = |n: usize| -> Vec<Vec<f64>> {
        (0..n)
            .map(|i| {
                let i_f = i as f64;
                vec![
                    ((i * 7) % 3) as f64,
                    -4.0 + 3.0 * ((i_f * 0.37) % 1.0),
                    (1 + (i * 5) % 8) as f64,
                    -5.0 + 15.0 * ((i_f * 0.61803398875) % 1.0),
                ]
            })
            .collect()
    };
    let points = [[0.0, -2.5, 3.0, 1.25], [2.0, -3.9, 8.0, -4.9], [1.0, -1.0, 1.0, 9.99], [0.0, -3.3, 5.0, 0.0], [1.0, -2.0, 4.0, 7.5]];
    let flat: Vec<f64> = points.iter().flatten().copied().collect();
    let reference: [(usize, [f64; 5]); 5] = [
        (0, [-6.88346126185297, -7.188590148116472, -7.207679259227582, -6.913828818429538, -6.933828818429538]),
        (1, [-6.476215710155973, -7.3213345859678896, -7.53911362243311, -6.470985535263674, -7.241529085450102]),
        (2, [-6.636270155369807, -7.42365134657201, -7.878933056668929, -6.2679058232930025, -6.861267659343504]),
        (3, [-6.820364661285851, -8.179711892156305, -8.27495647526105, -6.998511175719267, -6.9737716138224375]),
        // Optuna with `np.argsort(kind="stable")` in `compute_sigmas`: with NumPy's default
        // (unstable) sort, kernels tied on an integer value swap bandwidths (-6.8077, ...).
        (30, [-9.482134364969804, -10.541413945494412, -7.35736519787231, -10.200465224689097, -10.258774665515702]),
    ];
    for (n, want) in reference {
        let rows = obs(n);
        let refs: Vec<&[f64]> = rows.iter().map(Vec::as_slice).collect();
        let got = Parzen::fit(&dims, &refs).log_pdf(&flat, &mut Vec::new());
        for (g, w) in got.iter().zip(want) {
            assert!(close(*g, w, 1e-9), "n = {n}: {got:?} vs {want:?}");
        }
    }
}

#[test]
fn split_takes_gamma_best_and_puts_liars_above() {
    let s = space("x: {type: double, minval: 0, maxval: 1}");
    let mut t = TpeSearch::new(s, 100, 100, 24).unwrap();
    let mut rng = SplitMix64::new(1);
    // Trials 1..=25 complete with loss 25 - id (so the newest are best); 26..=28 run.
    for id in 1..=28 {
        t.propose(id, &mut rng).unwrap();
    }
    for id in 1..=25u64 {
        t.validated(id, 100.0, 1.0); // superseded: the latest validation counts
        t.validated(id, (25 - id) as f64, 2.0);
        t.exited(id, Outcome::Completed);
    }
    let x_of = |id: u64| {
        t.observed.iter().find(|o| o.id == id).map(|o| o.x()[0]).unwrap_or_else(|| t.running.iter().find(|p| p.id == id).unwrap().x[0])
    };
    let (below, above) = t.split();
    // gamma(25) = 3: the three best are trials 25, 24, 23, in trial order.
    assert_eq!(below.iter().map(|r| r[0]).collect::<Vec<_>>(), [x_of(23), x_of(24), x_of(25)]);
    let mut want: Vec<f64> = (1..=22).map(x_of).collect();
    want.extend([x_of(26), x_of(27), x_of(28)]);
    assert_eq!(above.iter().map(|r| r[0]).collect::<Vec<_>>(), want);
    // A failed trial, one with no validation and one whose latest validation is NaN all
    // vanish, from the observations and from the liars.
    t.exited(26, Outcome::Failed);
    t.exited(27, Outcome::Completed);
    t.validated(28, 0.5, 1.0);
    t.validated(28, f64::NAN, 2.0);
    t.exited(28, Outcome::Completed);
    assert_eq!((t.observed(), t.running()), (25, 0));
    let (below, above) = t.split();
    assert_eq!((below.len(), above.len()), (3, 22));
}

#[test]
fn proposals_stay_in_bounds_for_every_type() {
    let s = space(
        "lr: {type: log, minval: -5, maxval: -1}\nl2: {type: log, minval: 1, maxval: 6, base: 2}\n\
         d: {type: double, minval: -0.5, maxval: 0.25}\nn: {type: int, minval: -3, maxval: 4}\n\
         wide: {type: int, minval: 0, maxval: 100000}\nopt: {type: categorical, vals: [adam, 3, true, {k: v}]}\n\
         c: {type: const, val: fixed}\nbatch: 32\nsame: {type: int, minval: 7, maxval: 7}\n\
         one: {type: categorical, vals: [only]}\npoint: {type: double, minval: 2.5, maxval: 2.5}\n\
         model: {depth: {type: int, minval: 1, maxval: 3}, act: relu, inner: {p: {type: double, minval: 0, maxval: 1}}}\n",
    );
    let t = TpeSearch::new(s, 300, 20, 24).unwrap();
    assert_eq!(t.dims().len(), 8);
    // A loss that depends on everything, so the model has something to fit.
    let results = run(t, 5, 300, |h| {
        h["lr"].as_f64().unwrap().log10().abs()
            + h["d"].as_f64().unwrap()
            + h["n"].as_i64().unwrap() as f64 * 0.1
            + (h["wide"].as_i64().unwrap() as f64 - 500.0).abs() / 1000.0
            + if h["opt"] == "adam" { 0.0 } else { 1.0 }
            + h["model"]["inner"]["p"].as_f64().unwrap()
    });
    let mut opts = std::collections::BTreeSet::new();
    for (h, _) in &results {
        let lr = h["lr"].as_f64().unwrap();
        assert!((1e-5..=1e-1).contains(&lr), "{lr}");
        let l2 = h["l2"].as_f64().unwrap();
        assert!((2.0..=64.0).contains(&l2), "{l2}");
        let d = h["d"].as_f64().unwrap();
        assert!((-0.5..=0.25).contains(&d), "{d}");
        let n = h["n"].as_i64().unwrap();
        assert!((-3..=4).contains(&n), "{n}");
        assert!(h["n"].is_i64() && h["wide"].is_u64());
        assert!((0..=100_000).contains(&h["wide"].as_i64().unwrap()));
        opts.insert(h["opt"].to_string());
        assert_eq!(h["c"], "fixed");
        assert_eq!(h["batch"], 32);
        assert_eq!(h["same"], 7);
        assert_eq!(h["one"], "only");
        assert_eq!(h["point"], 2.5);
        let depth = h["model"]["depth"].as_i64().unwrap();
        assert!((1..=3).contains(&depth));
        assert_eq!(h["model"]["act"], "relu");
        let p = h["model"]["inner"]["p"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&p));
        assert_eq!(h.len(), 12);
    }
    assert_eq!(opts.len(), 4, "every choice was tried: {opts:?}");
    // The model learnt: the last 100 proposals are better on average than the first 100.
    let mean = |r: &[(Map<String, Value>, f64)]| r.iter().map(|(_, l)| l).sum::<f64>() / r.len() as f64;
    assert!(mean(&results[200..]) < mean(&results[..100]) - 0.5, "{} vs {}", mean(&results[200..]), mean(&results[..100]));
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { 0.5 * (v[n / 2 - 1] + v[n / 2]) }
}

/// Over 10 seeds, the best loss TPE finds in 60 trials on a shifted 3-d quadratic is lower
/// than random search's, at the median and on most seeds.
#[test]
fn tpe_beats_random_on_a_quadratic() {
    let s = space(
        "a: {type: double, minval: -5, maxval: 5}\nb: {type: double, minval: -5, maxval: 5}\nc: {type: double, minval: -5, maxval: 5}",
    );
    let f = |h: &Map<String, Value>| {
        (h["a"].as_f64().unwrap() - 1.0).powi(2) + (h["b"].as_f64().unwrap() + 2.0).powi(2) + (h["c"].as_f64().unwrap() - 0.5).powi(2)
    };
    let mut tpe_best = Vec::new();
    let mut random_best = Vec::new();
    for seed in 0..10 {
        let results = run(TpeSearch::new(s.clone(), 60, 10, 24).unwrap(), seed, 60, f);
        tpe_best.push(results.iter().map(|(_, l)| *l).fold(f64::INFINITY, f64::min));
        let mut rng = SplitMix64::new(seed + 1000);
        random_best.push((0..60).map(|_| f(&sample_space(&s, &mut rng))).fold(f64::INFINITY, f64::min));
    }
    let wins = tpe_best.iter().zip(&random_best).filter(|(t, r)| t < r).count();
    let (tpe, random) = (median(tpe_best.clone()), median(random_best.clone()));
    assert!(tpe < 0.5 * random, "median best: TPE {tpe} vs random {random}\n{tpe_best:?}\n{random_best:?}");
    assert!(wins >= 8, "TPE better on {wins} of 10 seeds\n{tpe_best:?}\n{random_best:?}");
}

/// With one good choice among four, TPE proposes it far more often than a quarter of the
/// time once the model takes over.
#[test]
fn categorical_and_nested_spaces_are_learnt() {
    let s = space(
        "opt: {type: categorical, vals: [sgd, adam, rmsprop, adagrad]}\nnet: {width: {type: int, minval: 1, maxval: 64}, drop: {type: double, minval: 0, maxval: 1}}",
    );
    let results = run(TpeSearch::new(s, 100, 10, 24).unwrap(), 3, 100, |h| {
        let opt = if h["opt"] == "adam" { 0.0 } else { 1.0 };
        opt + (h["net"]["width"].as_i64().unwrap() as f64 - 40.0).abs() / 64.0 + h["net"]["drop"].as_f64().unwrap() * 0.2
    });
    let adam = results[50..].iter().filter(|(h, _)| h["opt"] == "adam").count();
    assert!(adam >= 30, "adam proposed {adam} of the last 50 times");
    let widths: Vec<i64> = results[50..].iter().map(|(h, _)| h["net"]["width"].as_i64().unwrap()).collect();
    let near = widths.iter().filter(|w| (**w - 40).abs() <= 12).count();
    assert!(near >= 25, "widths {widths:?}");
}

/// Proposals made while others run spread out: with constant liar, eight proposals in a
/// row (no results in between) do not all crowd the best point.
#[test]
fn liars_spread_concurrent_proposals() {
    let s = space("x: {type: int, minval: 0, maxval: 20}");
    let mut t = TpeSearch::new(s, 100, 10, 24).unwrap();
    let mut rng = SplitMix64::new(9);
    for id in 1..=30 {
        let p = t.propose(id, &mut rng).unwrap();
        t.validated(id, (p.hparams["x"].as_i64().unwrap() - 5).abs() as f64, 1.0);
        t.exited(id, Outcome::Completed);
    }
    let batch: std::collections::BTreeSet<i64> =
        (31..=38).map(|id| t.propose(id, &mut rng).unwrap().hparams["x"].as_i64().unwrap()).collect();
    assert!(batch.len() >= 3, "{batch:?}");
    assert_eq!(t.running(), 8);
}

#[test]
fn snapshot_restores_exactly() {
    let s = space(
        "lr: {type: log, minval: -4, maxval: -1}\nd: {type: double, minval: 0, maxval: 1}\nk: {type: categorical, vals: [a, b]}\nn: {type: int, minval: 1, maxval: 9}",
    );
    let mut a = TpeSearch::new(s, 80, 5, 24).unwrap();
    let mut rng = SplitMix64::new(11);
    let step = |t: &mut TpeSearch, rng: &mut SplitMix64, id: u64| -> Map<String, Value> {
        let p = t.propose(id, rng).unwrap();
        if id > 2 {
            // 17-digit losses, and an infinite one, must survive the round trip.
            let loss = if id == 7 { f64::INFINITY } else { p.hparams["d"].as_f64().unwrap() * 0.123_456_789_012_345_67 + id as f64 / 3.0 };
            t.validated(id - 2, loss, 1.0);
            t.exited(id - 2, if id.is_multiple_of(9) { Outcome::Failed } else { Outcome::Completed });
        }
        p.hparams
    };
    for id in 1..=40 {
        step(&mut a, &mut rng, id);
    }
    let json = serde_json::to_string(&a).unwrap();
    let mut b: TpeSearch = serde_json::from_str(&json).unwrap();
    assert_eq!(a, b);
    // A damaged snapshot is refused on restore.
    let broken = json.replacen("\"x_loss\":\"", "\"x_loss\":\"7 ", 1);
    assert!(serde_json::from_str::<TpeSearch>(&broken).unwrap_err().to_string().contains("does not fit"));
    let mut rng_b = rng.clone();
    for id in 41..=80 {
        assert_eq!(step(&mut a, &mut rng, id), step(&mut b, &mut rng_b, id));
    }
    assert_eq!(a, b);
}

#[test]
fn scoring_in_chunks_chooses_as_one_batch() {
    let s =
        space("x: {type: double, minval: -1, maxval: 1}\nn: {type: int, minval: 0, maxval: 9}\nc: {type: categorical, vals: [a, b, c]}");
    let mut tpe = TpeSearch::new(s, 100, 3, 57).unwrap();
    let mut rng = SplitMix64::new(5);
    for id in 1..=30 {
        let p = tpe.propose(id, &mut rng).unwrap();
        tpe.validated(id, p.hparams["x"].as_f64().unwrap().powi(2) + p.hparams["n"].as_f64().unwrap(), 1.0);
        if id % 3 != 0 {
            tpe.exited(id, Outcome::Completed);
        }
    }
    for seed in 0..20 {
        let whole = tpe.sample_tpe_in_chunks(&mut SplitMix64::new(seed), usize::MAX);
        // One candidate per chunk, and a few per chunk.
        assert_eq!(tpe.sample_tpe_in_chunks(&mut SplitMix64::new(seed), 1), whole);
        assert_eq!(tpe.sample_tpe_in_chunks(&mut SplitMix64::new(seed), 5 * 40), whole);
    }
}

#[test]
fn extreme_accepted_bounds_give_finite_proposals() {
    let s = space(
        "d: {type: double, minval: 8e307, maxval: 1.7e308}\nl: {type: log, minval: -1000, maxval: 1000, base: 2}\n\
         i: {type: int, minval: -9223372036854775808, maxval: 9223372036854775807}",
    );
    let proposals = run(TpeSearch::new(s, 60, 5, 24).unwrap(), 3, 60, |h| h["d"].as_f64().unwrap().abs().ln());
    for (p, loss) in proposals {
        assert!(loss.is_finite() || p["d"].as_f64() == Some(0.0), "{p:?}");
        for name in ["d", "l"] {
            assert!(p[name].as_f64().is_some_and(f64::is_finite), "{name}: {p:?}");
        }
        assert!(p["l"].as_f64().unwrap() > 0.0, "{p:?}");
        assert!(p["i"].is_i64(), "{p:?}");
    }
}
