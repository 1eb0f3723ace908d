//! Multivariate TPE (tree-structured Parzen estimator), as Optuna 5 runs it by default for a
//! single objective: `TPESampler()` with `multivariate=True` and `constant_liar=True`.
//!
//! Each proposal:
//! 1. While fewer than `n_startup_trials` trials have a result, sample uniformly (log-uniformly
//!    for `log`), like Optuna's `RandomSampler`.
//! 2. Otherwise split the `n` trials with a result into the `gamma(n) = min(ceil(0.1 n), 25)`
//!    best ("below", l(x)) and the rest ("above", g(x)). Constant liar: trials still running
//!    join the above set, which is what giving them the worst observed loss does (the Parzen
//!    estimators use positions, not loss values, so a liar's exact loss does not matter).
//! 3. Fit one Parzen estimator per set over all active hyperparameters jointly: a mixture of
//!    product kernels, one per trial plus a prior kernel of weight 1.0. Kernel weights are
//!    Optuna's `default_weights` (1 for the newest 25 trials of a set, a ramp from 1/n up for
//!    older ones). Per dimension, a kernel is a normal truncated to the bounds with its mean at
//!    the trial's value and its bandwidth the larger gap to its sorted neighbours
//!    (`consider_endpoints=False`), clipped to `[range / min(100, n + 2), range]` (magic clip);
//!    the prior kernel sits mid-range with bandwidth `range`.
//! 4. Draw `n_ei_candidates` vectors from l(x) (one kernel index per vector) and keep the one
//!    maximising `log l(x) - log g(x)`.
//!
//! Hyperparameter types: `double` is a truncated normal on `[minval, maxval]`; `log` is the same
//! on the exponent (`minval..maxval` of `base`), which is Optuna's log-space treatment up to a
//! constant factor that cancels in l/g; `int` is a normal on `[minval - 0.5, maxval + 0.5]`
//! discretised by rounding, with bin masses in the density; `categorical` uses Optuna's kernel
//! (each trial's kernel puts `1 + 1/(n+1)` on its own choice and `1/(n+1)` on every choice,
//! normalised; the prior kernel is uniform). `const`, and any range holding a single value, are
//! passed through and take no part in the model, as in Optuna. Nested maps are flattened to
//! dotted paths. `count` (a grid setting) is ignored: values are continuous.
//!
//! Results: a trial may report many validations; the latest one is its value (Optuna's value is
//! the one the objective finally returns). A trial counts once it has exited `Completed` with at
//! least one non-NaN validation; until then it is running (a liar). A trial that fails, that
//! exits with no validation, or whose latest validation is NaN is dropped entirely (Optuna: a
//! FAIL state). `+-inf` losses are kept and rank last/first.
//!
//! Departures from Optuna that do not change the distributions: truncated normals are drawn by
//! rejection instead of Optuna's inverse CDF (acceptance is always above 1/3 since every kernel
//! centre lies inside the bounds); ties in neighbour sorting are broken by trial order
//! (NumPy's default sort is unstable); the random stream is our `SplitMix64`.
//!
//! Exact restore: every float of the state is serialised as a string in Rust's shortest
//! round-trip form, because `serde_json` without `float_roundtrip` may parse a 17-digit number
//! one ulp off, and a restored searcher must propose bit-identical values.

use std::f64::consts::{FRAC_1_SQRT_2, PI};
use std::fmt::Write as _;

use drover_core::SplitMix64;
use drover_core::hparams::{Hyperparameter, HyperparameterSpace};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

use crate::{Outcome, Proposal, RequestId, SearchMethod};

/// Random trials before the model takes over (Optuna's default).
pub const DEFAULT_N_STARTUP_TRIALS: usize = 10;
/// Candidates drawn from l(x) per proposal (Optuna's default).
pub const DEFAULT_N_EI_CANDIDATES: usize = 24;
/// Weight of the prior kernel in each Parzen estimator (Optuna's default).
pub const PRIOR_WEIGHT: f64 = 1.0;

/// Optuna's `default_gamma`: how many of `n` finished trials form the "good" set, computed in
/// floating point as Optuna does.
pub fn gamma(n: usize) -> usize {
    ((0.1 * n as f64).ceil() as usize).min(25)
}

/// Optuna's `default_weights`: 1 for the newest 25 of `n` trials (in trial order), a linear
/// ramp from `1/n` for the older ones.
pub fn default_weights(n: usize) -> Vec<f64> {
    if n < 25 {
        return vec![1.0; n];
    }
    let num = n - 25;
    let start = 1.0 / n as f64;
    let mut w = Vec::with_capacity(n);
    // numpy.linspace(start, 1.0, num): start + i * step, the last one exactly 1.0.
    if num == 1 {
        w.push(start);
    } else if num > 1 {
        let step = (1.0 - start) / (num - 1) as f64;
        w.extend((0..num).map(|i| i as f64 * step + start));
        w[num - 1] = 1.0;
    }
    w.resize(n, 1.0);
    w
}

/// One hyperparameter the model works on, at its dotted path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dim {
    pub name: String,
    pub kind: DimKind,
}

/// The internal representation of an active hyperparameter: a `double` value, a `log`
/// exponent, an `int` value (as f64), or a categorical index (as f64).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DimKind {
    /// `double` on its range, or `log` on its exponent range.
    Float {
        low: f64,
        high: f64,
    },
    Int {
        low: i64,
        high: i64,
    },
    Categorical {
        choices: usize,
    },
}

/// Whether a hyperparameter takes part in the model (it has more than one possible value).
fn active(hp: &Hyperparameter) -> bool {
    match hp {
        Hyperparameter::Const { .. } | Hyperparameter::Nested { .. } => false,
        Hyperparameter::Int { minval, maxval, .. } => minval < maxval,
        Hyperparameter::Double { minval, maxval, .. } | Hyperparameter::Log { minval, maxval, .. } => minval < maxval,
        Hyperparameter::Categorical { vals } => vals.len() > 1,
    }
}

/// The active hyperparameters of a space, depth first in name order, at dotted paths.
pub fn flatten(space: &HyperparameterSpace) -> Vec<Dim> {
    fn walk(space: &HyperparameterSpace, prefix: &str, out: &mut Vec<Dim>) {
        for (name, hp) in space {
            let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
            if let Hyperparameter::Nested { fields } = hp {
                walk(fields, &path, out);
                continue;
            }
            if !active(hp) {
                continue;
            }
            let kind = match hp {
                Hyperparameter::Double { minval, maxval, .. } | Hyperparameter::Log { minval, maxval, .. } => {
                    DimKind::Float { low: *minval, high: *maxval }
                }
                Hyperparameter::Int { minval, maxval, .. } => DimKind::Int { low: *minval, high: *maxval },
                Hyperparameter::Categorical { vals } => DimKind::Categorical { choices: vals.len() },
                Hyperparameter::Const { .. } | Hyperparameter::Nested { .. } => unreachable!("not active"),
            };
            out.push(Dim { name: path, kind });
        }
    }
    let mut out = Vec::new();
    walk(space, "", &mut out);
    out
}

fn float_value(f: f64) -> Value {
    Number::from_f64(f).map(Value::Number).unwrap_or(Value::Null)
}

/// Turns internal values (in [`flatten`]'s order) back into the nested hyperparameter map.
pub fn unflatten(space: &HyperparameterSpace, x: &[f64]) -> Map<String, Value> {
    fn walk(space: &HyperparameterSpace, x: &[f64], next: &mut usize) -> Map<String, Value> {
        let mut out = Map::new();
        for (name, hp) in space {
            let value = if let Hyperparameter::Nested { fields } = hp {
                Value::Object(walk(fields, x, next))
            } else if active(hp) {
                let v = x[*next];
                *next += 1;
                match hp {
                    Hyperparameter::Double { .. } => float_value(v),
                    Hyperparameter::Log { base, .. } => float_value(base.powf(v)),
                    Hyperparameter::Int { .. } => Value::from(v as i64),
                    Hyperparameter::Categorical { vals } => vals[v as usize].clone(),
                    Hyperparameter::Const { .. } | Hyperparameter::Nested { .. } => unreachable!("not active"),
                }
            } else {
                match hp {
                    Hyperparameter::Const { val } => val.clone(),
                    Hyperparameter::Double { minval, .. } => float_value(*minval),
                    Hyperparameter::Log { minval, base, .. } => float_value(base.powf(*minval)),
                    Hyperparameter::Int { minval, .. } => Value::from(*minval),
                    Hyperparameter::Categorical { vals } => vals[0].clone(),
                    Hyperparameter::Nested { .. } => unreachable!("handled above"),
                }
            };
            out.insert(name.clone(), value);
        }
        out
    }
    walk(space, x, &mut 0)
}

/// A trial proposed and not yet exited: a liar in every proposal made meanwhile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Pending {
    id: RequestId,
    x: Exact,
    /// The latest validation, if any (a NaN one counts as none: either way the trial is
    /// dropped if it exits so).
    #[serde(with = "exact_opt")]
    loss: Option<f64>,
}

/// A trial that completed with a result: its internal values followed by its loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Observation {
    id: RequestId,
    #[serde(rename = "x_loss")]
    values: Exact,
}

impl Observation {
    fn x(&self) -> &[f64] {
        &self.values[..self.values.len() - 1]
    }

    fn loss(&self) -> f64 {
        self.values[self.values.len() - 1]
    }
}

/// Multivariate TPE with constant liar. See the module documentation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "TpeState")]
pub struct TpeSearch {
    space: HyperparameterSpace,
    dims: Vec<Dim>,
    max_trials: usize,
    n_startup_trials: usize,
    n_ei_candidates: usize,
    proposed: usize,
    /// Sorted by request id.
    running: Vec<Pending>,
    /// Sorted by request id.
    observed: Vec<Observation>,
}

/// A [`TpeSearch`] as read back, checked before use so that a damaged snapshot is an error on
/// restore rather than a panic at the next proposal.
#[derive(Deserialize)]
struct TpeState {
    space: HyperparameterSpace,
    dims: Vec<Dim>,
    max_trials: usize,
    n_startup_trials: usize,
    n_ei_candidates: usize,
    proposed: usize,
    running: Vec<Pending>,
    observed: Vec<Observation>,
}

impl TryFrom<TpeState> for TpeSearch {
    type Error = String;

    fn try_from(s: TpeState) -> Result<TpeSearch, String> {
        if s.dims != flatten(&s.space) {
            return Err("tpe: the stored dimensions do not match the space".into());
        }
        let d = s.dims.len();
        fn sorted(mut ids: impl Iterator<Item = RequestId>) -> bool {
            let mut last = None;
            ids.all(|id| last.replace(id).is_none_or(|prev| prev < id))
        }
        if !sorted(s.running.iter().map(|p| p.id)) || !sorted(s.observed.iter().map(|o| o.id)) {
            return Err("tpe: trials are not in request id order".into());
        }
        let in_bounds = |x: &[f64]| {
            x.len() == d
                && x.iter().zip(&s.dims).all(|(v, dim)| match dim.kind {
                    DimKind::Float { low, high } => (low..=high).contains(v),
                    DimKind::Int { low, high } => (low as f64..=high as f64).contains(v) && v.fract() == 0.0,
                    DimKind::Categorical { choices } => (0.0..choices as f64).contains(v) && v.fract() == 0.0,
                })
        };
        if !s.running.iter().all(|p| in_bounds(&p.x)) || !s.observed.iter().all(|o| o.values.len() == d + 1 && in_bounds(o.x())) {
            return Err("tpe: a stored trial does not fit the space".into());
        }
        if s.n_ei_candidates == 0 {
            return Err("tpe: n_ei_candidates must be at least 1".into());
        }
        Ok(TpeSearch {
            space: s.space,
            dims: s.dims,
            max_trials: s.max_trials,
            n_startup_trials: s.n_startup_trials,
            n_ei_candidates: s.n_ei_candidates,
            proposed: s.proposed,
            running: s.running,
            observed: s.observed,
        })
    }
}

impl TpeSearch {
    /// A search of `max_trials` trials over `space`. `n_ei_candidates` below 1 is refused.
    pub fn new(
        space: HyperparameterSpace,
        max_trials: usize,
        n_startup_trials: usize,
        n_ei_candidates: usize,
    ) -> Result<TpeSearch, String> {
        if n_ei_candidates == 0 {
            return Err("searcher.n_ei_candidates must be at least 1".into());
        }
        Ok(TpeSearch {
            dims: flatten(&space),
            space,
            max_trials,
            n_startup_trials,
            n_ei_candidates,
            proposed: 0,
            running: Vec::new(),
            observed: Vec::new(),
        })
    }

    /// The hyperparameters the model works on, in internal order.
    pub fn dims(&self) -> &[Dim] {
        &self.dims
    }

    /// Trials with a result the model learns from.
    pub fn observed(&self) -> usize {
        self.observed.len()
    }

    /// Trials proposed that have not exited (the liars).
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// The latest result of each observed trial, by request id.
    pub fn results(&self) -> Vec<(RequestId, f64)> {
        self.observed.iter().map(|o| (o.id, o.loss())).collect()
    }

    fn sample_prior(&self, rng: &mut SplitMix64) -> Vec<f64> {
        self.dims
            .iter()
            .map(|d| match d.kind {
                DimKind::Float { low, high } => low + rng.next_f64() * (high - low),
                DimKind::Int { low, high } => rng.range_i64(low, high) as f64,
                DimKind::Categorical { choices } => rng.index(choices) as f64,
            })
            .collect()
    }

    /// Splits the trials into (below, above), each in trial order: the `gamma(n)` best
    /// observed trials, and the other observed trials plus every running one.
    fn split(&self) -> (Vec<&[f64]>, Vec<&[f64]>) {
        let n = self.observed.len();
        let n_below = gamma(n).min(n);
        let mut order: Vec<usize> = (0..n).collect();
        // `observed` is in trial order, so the index breaks ties as Optuna's stable sort does.
        let by_loss = |a: &usize, b: &usize| self.observed[*a].loss().total_cmp(&self.observed[*b].loss()).then(a.cmp(b));
        if n_below < n {
            order.select_nth_unstable_by(n_below, by_loss);
        }
        let mut is_below = vec![false; n];
        for &i in &order[..n_below] {
            is_below[i] = true;
        }
        let below = (0..n).filter(|i| is_below[*i]).map(|i| self.observed[i].x()).collect();
        let mut above = Vec::with_capacity(n - n_below + self.running.len());
        let (mut i, mut j) = (0, 0);
        while i < n || j < self.running.len() {
            let take_observed = j == self.running.len() || (i < n && self.observed[i].id < self.running[j].id);
            if take_observed {
                if !is_below[i] {
                    above.push(self.observed[i].x());
                }
                i += 1;
            } else {
                above.push(&self.running[j].x[..]);
                j += 1;
            }
        }
        (below, above)
    }

    fn sample_tpe(&self, rng: &mut SplitMix64) -> Vec<f64> {
        let (below, above) = self.split();
        let l = Parzen::fit(&self.dims, &below);
        let g = Parzen::fit(&self.dims, &above);
        let mut draws = Draws { rng, spare: None };
        let d = self.dims.len();
        let candidates = l.sample(&mut draws, self.n_ei_candidates);
        let mut scratch = Vec::new();
        let log_l = l.log_pdf(&candidates, &mut scratch);
        let log_g = g.log_pdf(&candidates, &mut scratch);
        let mut best = 0;
        let mut best_score = f64::NEG_INFINITY;
        for (c, (lb, la)) in log_l.iter().zip(&log_g).enumerate() {
            let score = lb - la;
            if score > best_score {
                best_score = score;
                best = c;
            }
        }
        candidates[best * d..(best + 1) * d].to_vec()
    }
}

impl SearchMethod for TpeSearch {
    fn propose(&mut self, request_id: RequestId, rng: &mut SplitMix64) -> Option<Proposal> {
        if self.proposed >= self.max_trials {
            return None;
        }
        self.proposed += 1;
        let x = if self.dims.is_empty() {
            Vec::new()
        } else if self.observed.len() < self.n_startup_trials {
            self.sample_prior(rng)
        } else {
            self.sample_tpe(rng)
        };
        let hparams = unflatten(&self.space, &x);
        let at = self.running.partition_point(|p| p.id < request_id);
        self.running.insert(at, Pending { id: request_id, x: Exact::new(x), loss: None });
        Some(Proposal::fresh(hparams))
    }

    fn validated(&mut self, request_id: RequestId, loss: f64, _time: f64) -> Vec<RequestId> {
        if let Ok(at) = self.running.binary_search_by_key(&request_id, |p| p.id) {
            // + 0.0 turns -0.0 into 0.0, so that it ties with 0.0 as in Python.
            self.running[at].loss = (!loss.is_nan()).then_some(loss + 0.0);
        }
        Vec::new()
    }

    fn exited(&mut self, request_id: RequestId, outcome: Outcome) {
        let Ok(at) = self.running.binary_search_by_key(&request_id, |p| p.id) else { return };
        let pending = self.running.remove(at);
        if let (Outcome::Completed, Some(loss)) = (outcome, pending.loss) {
            let mut values = pending.x;
            values.push(loss);
            let at = self.observed.partition_point(|o| o.id < request_id);
            self.observed.insert(at, Observation { id: request_id, values });
        }
    }

    fn exhausted(&self) -> bool {
        self.proposed >= self.max_trials
    }

    fn total_trials(&self) -> Option<usize> {
        Some(self.max_trials)
    }
}

// ---------------------------------------------------------------------------------------------
// Parzen estimator

/// One dimension of a Parzen estimator; kernel `k` of a set of `n` trials is trial `k` for
/// `k < n` and the prior for `k == n`.
enum Kernels {
    /// Truncated normals on `[low, high]`.
    Continuous {
        low: f64,
        high: f64,
        mu: Vec<f64>,
        sigma: Vec<f64>,
        inv_sigma: Vec<f64>,
        /// `-ln(sigma) - ln(sqrt(2 pi)) - ln(mass of [low, high])`.
        log_norm: Vec<f64>,
    },
    /// Normals on `[low - 0.5, high + 0.5]` rounded to integers.
    Discrete {
        low: f64,
        high: f64,
        mu: Vec<f64>,
        sigma: Vec<f64>,
        /// Distinct (mu, sigma) pairs: integer kernels repeat a lot.
        unique: Vec<(f64, f64)>,
        unique_of: Vec<u32>,
        /// ln(mass of [low - 0.5, high + 0.5]) per distinct pair.
        log_accept: Vec<f64>,
    },
    Categorical {
        choices: usize,
        /// The observed choice of each trial kernel.
        observed: Vec<u32>,
        /// Probability of a trial kernel's own choice, and of any other choice.
        p_same: f64,
        p_other: f64,
    },
}

struct Parzen {
    /// Mixture weights, normalised, and their cumulative sums.
    log_weights: Vec<f64>,
    cumulative: Vec<f64>,
    dims: Vec<Kernels>,
}

/// Optuna's bandwidths (`consider_endpoints=False`, magic clip) for kernels at `mus` on the
/// (already widened, for integers) bounds `[low, high]`.
fn bandwidths(mus: &[f64], low: f64, high: f64) -> Vec<f64> {
    let n = mus.len();
    if n == 0 {
        return Vec::new();
    }
    // Sort (value, index) packed in one integer: ties go by trial order, and integer keys
    // sort several times faster than a comparison closure.
    let mut keys: Vec<u128> = mus.iter().enumerate().map(|(i, m)| (u128::from(order_key(*m)) << 32) | i as u128).collect();
    keys.sort_unstable();
    // The sorted values with the end points: `low`, the sorted mus, `high`.
    let mut sorted = Vec::with_capacity(n + 2);
    sorted.push(low);
    sorted.extend(keys.iter().map(|k| mus[*k as u32 as usize]));
    sorted.push(high);
    let range = high - low;
    let min_sigma = range / f64::min(100.0, 1.0 + (n + 1) as f64);
    let mut sigma = vec![0.0; n];
    for (i, k) in keys.iter().enumerate() {
        let s = if n >= 2 && i == 0 {
            sorted[2] - sorted[1]
        } else if n >= 2 && i == n - 1 {
            sorted[n] - sorted[n - 1]
        } else {
            f64::max(sorted[i + 1] - sorted[i], sorted[i + 2] - sorted[i + 1])
        };
        sigma[*k as u32 as usize] = s.max(min_sigma).min(range);
    }
    sigma
}

/// An integer key that sorts as `f64::total_cmp` does.
fn order_key(x: f64) -> u64 {
    let bits = x.to_bits();
    if bits >> 63 == 1 { !bits } else { bits | 1 << 63 }
}

impl Parzen {
    fn fit(dims: &[Dim], rows: &[&[f64]]) -> Parzen {
        let n = rows.len();
        let mut weights = default_weights(n);
        if n == 0 {
            weights = vec![1.0];
        } else {
            weights.push(PRIOR_WEIGHT);
        }
        let total: f64 = weights.iter().sum();
        let mut cumulative = Vec::with_capacity(weights.len());
        let mut acc = 0.0;
        let log_weights = weights
            .iter()
            .map(|w| {
                let w = w / total;
                acc += w;
                cumulative.push(acc);
                w.ln()
            })
            .collect();
        let last = *cumulative.last().expect("the prior is always there");
        for c in &mut cumulative {
            *c /= last;
        }
        let kernels = dims
            .iter()
            .enumerate()
            .map(|(j, dim)| {
                let column = || rows.iter().map(|r| r[j]);
                match dim.kind {
                    DimKind::Float { low, high } => {
                        let mut mu: Vec<f64> = column().collect();
                        let mut sigma = bandwidths(&mu, low, high);
                        mu.push(0.5 * (low + high));
                        sigma.push(high - low);
                        let inv_sigma = sigma.iter().map(|s| 1.0 / s).collect();
                        let log_norm = mu
                            .iter()
                            .zip(&sigma)
                            .map(|(m, s)| -s.ln() - LN_SQRT_2PI - log_gauss_mass((low - m) / s, (high - m) / s))
                            .collect();
                        Kernels::Continuous { low, high, mu, sigma, inv_sigma, log_norm }
                    }
                    DimKind::Int { low, high } => {
                        let (low, high) = (low as f64, high as f64);
                        let (wide_low, wide_high) = (low - 0.5, high + 0.5);
                        let mut mu: Vec<f64> = column().collect();
                        let mut sigma = bandwidths(&mu, wide_low, wide_high);
                        mu.push(0.5 * (wide_low + wide_high));
                        sigma.push(wide_high - wide_low);
                        let mut keyed: Vec<(u64, u64, u32)> =
                            mu.iter().zip(&sigma).enumerate().map(|(k, (m, s))| (order_key(*m), order_key(*s), k as u32)).collect();
                        keyed.sort_unstable();
                        let mut pairs: Vec<(f64, f64)> = Vec::new();
                        let mut unique_of = vec![0u32; mu.len()];
                        let mut previous = None;
                        for (m, s, k) in keyed {
                            if previous != Some((m, s)) {
                                pairs.push((mu[k as usize], sigma[k as usize]));
                                previous = Some((m, s));
                            }
                            unique_of[k as usize] = (pairs.len() - 1) as u32;
                        }
                        let log_accept = pairs.iter().map(|(m, s)| log_gauss_mass((wide_low - m) / s, (wide_high - m) / s)).collect();
                        Kernels::Discrete { low, high, mu, sigma, unique: pairs, unique_of, log_accept }
                    }
                    DimKind::Categorical { choices } => {
                        let observed: Vec<u32> = column().map(|v| v as u32).collect();
                        let base = PRIOR_WEIGHT / (n + 1) as f64;
                        let row_sum = 1.0 + choices as f64 * base;
                        Kernels::Categorical { choices, observed, p_same: (base + 1.0) / row_sum, p_other: base / row_sum }
                    }
                }
            })
            .collect();
        Parzen { log_weights, cumulative, dims: kernels }
    }

    /// `count` vectors drawn from the mixture, flat (`count` rows of one value per dimension).
    fn sample(&self, draws: &mut Draws, count: usize) -> Vec<f64> {
        let d = self.dims.len();
        let last = self.cumulative.len() - 1;
        let mut out = Vec::with_capacity(count * d);
        for _ in 0..count {
            let u = draws.uniform();
            let k = self.cumulative.partition_point(|c| *c <= u).min(last);
            for kernels in &self.dims {
                let v = match kernels {
                    Kernels::Continuous { low, high, mu, sigma, .. } => draws.truncated_normal(mu[k], sigma[k], *low, *high),
                    Kernels::Discrete { low, high, mu, sigma, .. } => {
                        let s = draws.truncated_normal(mu[k], sigma[k], low - 0.5, high + 0.5);
                        (low + (s - low).round_ties_even()).clamp(*low, *high)
                    }
                    Kernels::Categorical { choices, observed, p_same, p_other } => {
                        let u = draws.uniform();
                        // Optuna: the number of cumulative probabilities below u.
                        let mut acc = 0.0;
                        let mut index = 0;
                        for c in 0..*choices {
                            if c + 1 == *choices {
                                break; // the last cumulative probability is 1
                            }
                            acc += if k == observed.len() {
                                1.0 / *choices as f64
                            } else if observed[k] as usize == c {
                                *p_same
                            } else {
                                *p_other
                            };
                            if acc < u {
                                index += 1;
                            } else {
                                break;
                            }
                        }
                        index as f64
                    }
                };
                out.push(v);
            }
        }
        out
    }

    /// ln of the mixture density at each of the flat rows of `points`.
    fn log_pdf(&self, points: &[f64], scratch: &mut Vec<f64>) -> Vec<f64> {
        let d = self.dims.len();
        let kernels = self.log_weights.len();
        let count = points.len().checked_div(d).unwrap_or(0);
        scratch.clear();
        for _ in 0..count {
            scratch.extend_from_slice(&self.log_weights);
        }
        for (j, dim) in self.dims.iter().enumerate() {
            match dim {
                Kernels::Continuous { mu, inv_sigma, log_norm, .. } => {
                    for c in 0..count {
                        let x = points[c * d + j];
                        let row = &mut scratch[c * kernels..(c + 1) * kernels];
                        // Zipped iterators: no bounds checks, so the loop vectorises.
                        for ((r, m), (inv, norm)) in row.iter_mut().zip(mu).zip(inv_sigma.iter().zip(log_norm)) {
                            let z = (x - m) * inv;
                            *r += norm - 0.5 * z * z;
                        }
                    }
                }
                Kernels::Discrete { unique, unique_of, log_accept, .. } => {
                    // The bin mass only depends on the value and the (mu, sigma) pair: compute
                    // it once per distinct value among the points and distinct pair.
                    let mut values: Vec<f64> = (0..count).map(|c| points[c * d + j]).collect();
                    values.sort_unstable_by(f64::total_cmp);
                    values.dedup();
                    let mut table = vec![0.0; values.len() * unique.len()];
                    for (v, x) in values.iter().enumerate() {
                        for (u, (m, s)) in unique.iter().enumerate() {
                            table[v * unique.len() + u] = log_gauss_mass((x - 0.5 - m) / s, (x + 0.5 - m) / s) - log_accept[u];
                        }
                    }
                    for c in 0..count {
                        let x = points[c * d + j];
                        let v = values.binary_search_by(|p| p.total_cmp(&x)).expect("value is there");
                        let t = &table[v * unique.len()..(v + 1) * unique.len()];
                        let row = &mut scratch[c * kernels..(c + 1) * kernels];
                        for (r, u) in row.iter_mut().zip(unique_of) {
                            *r += t[*u as usize];
                        }
                    }
                }
                Kernels::Categorical { choices, observed, p_same, p_other } => {
                    let (ln_same, ln_other, ln_prior) = (p_same.ln(), p_other.ln(), -(*choices as f64).ln());
                    for c in 0..count {
                        let x = points[c * d + j] as u32;
                        let row = &mut scratch[c * kernels..(c + 1) * kernels];
                        for (r, o) in row.iter_mut().zip(observed) {
                            *r += if *o == x { ln_same } else { ln_other };
                        }
                        row[kernels - 1] += ln_prior;
                    }
                }
            }
        }
        (0..count).map(|c| log_sum_exp(&scratch[c * kernels..(c + 1) * kernels])).collect()
    }
}

/// ln(sum(exp(row))), computed as Optuna does, relative to the largest term. Terms below e^-50
/// of the largest change the sum by less than its rounding (for fewer than ~10^5 kernels), so
/// they count as 0. Four independent lanes (a fixed summation order) and the branch-free
/// `exp_neg` let the compiler vectorise the loops.
fn log_sum_exp(row: &[f64]) -> f64 {
    const LANES: usize = 4;
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    let mut lane_max = [f64::NEG_INFINITY; LANES];
    for chunk in chunks.clone() {
        for (m, x) in lane_max.iter_mut().zip(chunk) {
            *m = if *x > *m { *x } else { *m };
        }
    }
    let max = tail.iter().chain(&lane_max).copied().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return f64::NEG_INFINITY;
    }
    let term = |l: f64| {
        let d = l - max;
        // Branch-free: e^d times 1 or 0.
        exp_neg(d) * f64::from(u8::from(d > -50.0))
    };
    let mut lane_sum = [0.0; LANES];
    for chunk in chunks {
        let chunk: &[f64; LANES] = chunk.try_into().expect("chunks_exact");
        for lane in 0..LANES {
            lane_sum[lane] += term(chunk[lane]);
        }
    }
    let sum = (lane_sum[0] + lane_sum[1]) + (lane_sum[2] + lane_sum[3]) + tail.iter().map(|x| term(*x)).sum::<f64>();
    sum.ln() + max
}

/// The random draws of one proposal: uniforms straight from the searcher's generator, and
/// normals by Marsaglia's polar method (the spare normal lives only during the proposal, so
/// the generator's state alone determines what comes next).
struct Draws<'a> {
    rng: &'a mut SplitMix64,
    spare: Option<f64>,
}

impl Draws<'_> {
    fn uniform(&mut self) -> f64 {
        self.rng.next_f64()
    }

    fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        loop {
            let u = 2.0 * self.uniform() - 1.0;
            let v = 2.0 * self.uniform() - 1.0;
            let s = u * u + v * v;
            if s > 0.0 && s < 1.0 {
                let f = (-2.0 * s.ln() / s).sqrt();
                self.spare = Some(v * f);
                return u * f;
            }
        }
    }

    /// A normal `N(mu, sigma)` conditioned on `[low, high]`, by rejection. Every kernel centre
    /// lies in the bounds and `sigma <= high - low`, so at least a third of the draws land
    /// inside; 10,000 misses in a row (probability below 1e-1700) would return the centre.
    fn truncated_normal(&mut self, mu: f64, sigma: f64, low: f64, high: f64) -> f64 {
        for _ in 0..10_000 {
            let v = mu + sigma * self.normal();
            if (low..=high).contains(&v) {
                return v;
            }
        }
        mu.clamp(low, high)
    }
}

// ---------------------------------------------------------------------------------------------
// Normal distribution functions

const LN_SQRT_2PI: f64 = 0.918_938_533_204_672_8; // ln(sqrt(2 pi))

/// e^x for x in [-60, 0] (others are clamped to it), within 2 ulp of `f64::exp`: x = k ln 2 + r
/// with |r| <= ln 2 / 2, e^r by its Taylor series to degree 13 (truncation below 1e-17), and
/// 2^k put in the exponent bits. Plain arithmetic, so loops over it vectorise.
#[allow(clippy::excessive_precision)]
#[inline(always)]
fn exp_neg(x: f64) -> f64 {
    const LN2_HI: f64 = 6.931_471_803_691_238_164_90e-01;
    const LN2_LO: f64 = 1.908_214_929_270_587_700_02e-10;
    const SHIFTER: f64 = 6_755_399_441_055_744.0; // 1.5 * 2^52: adding it rounds to an integer
    let x = x.max(-60.0).min(0.0);
    let t = x * std::f64::consts::LOG2_E + SHIFTER;
    let k = t - SHIFTER;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let mut p = 1.0 / 6_227_020_800.0; // 1/13!
    for d in [479_001_600.0, 39_916_800.0, 3_628_800.0, 362_880.0, 40_320.0, 5_040.0, 720.0, 120.0, 24.0, 6.0, 2.0, 1.0, 1.0] {
        p = p * r + 1.0 / d;
    }
    // k is the low bits of t (an integer in [-87, 0]); 2^k is (k + 1023) << 52.
    let k_bits = t.to_bits().wrapping_sub(SHIFTER.to_bits());
    let scale = f64::from_bits(k_bits.wrapping_add(1023) << 52);
    p * scale
}

/// Standard normal CDF.
fn ndtr(z: f64) -> f64 {
    if z < 0.0 { 0.5 * erfc(-z * FRAC_1_SQRT_2) } else { 1.0 - 0.5 * erfc(z * FRAC_1_SQRT_2) }
}

/// ln of the standard normal CDF, accurate far into the left tail (Optuna's `_log_ndtr`).
fn log_ndtr(z: f64) -> f64 {
    if z > 6.0 {
        return -ndtr(-z);
    }
    let x = -z * FRAC_1_SQRT_2;
    if x < 1.25 {
        return ndtr(z).ln();
    }
    if x < 26.0 {
        // erfc is accurate relative to its size here and stays above f64's smallest normal.
        return (0.5 * erfc(x)).ln();
    }
    // Asymptotic series: Phi(z) ~ phi(z)/(-z) * (1 - 1/z^2 + 3/z^4 - 15/z^6 + ...).
    let lead = -0.5 * z * z - (-z).ln() - 0.5 * (2.0 * PI).ln();
    let inv_z2 = 1.0 / (z * z);
    let (mut total, mut term) = (1.0, 1.0);
    for i in 1..40 {
        let next = -term * (2 * i - 1) as f64 * inv_z2;
        if (total + next) == total {
            break;
        }
        term = next;
        total += term;
    }
    lead + total.ln()
}

/// ln of the standard normal mass on `[a, b]` (Optuna's `_log_gauss_mass`).
fn log_gauss_mass(a: f64, b: f64) -> f64 {
    let log_diff = |lp: f64, lq: f64| lp + (-(lq - lp).exp()).ln_1p();
    if b <= 0.0 || a > 0.0 {
        // One side of 0: mirror it to the upper tail, [lo, hi] with 0 <= lo < hi.
        let (lo, hi) = if b <= 0.0 { (-b, -a) } else { (a, b) };
        if lo < 8.0 {
            // Mass above 6e-16: a difference of upper tails is as accurate as Optuna's
            // difference of log-CDFs, at half the cost.
            return (0.5 * (erfc(lo * FRAC_1_SQRT_2) - erfc(hi * FRAC_1_SQRT_2))).ln();
        }
        log_diff(log_ndtr(-lo), log_ndtr(-hi))
    } else {
        // Central case. Below z = -8.5 a tail holds less than 1e-17 and changes the result by
        // less than that: skip its erfc, which most kernels of a large set have on both sides.
        let tail = |z: f64| if z < -8.5 { 0.0 } else { ndtr(z) };
        (-tail(a) - tail(-b)).ln_1p()
    }
}

/// The complementary error function, from the `libm` crate (accurate to about one ulp).
fn erfc(x: f64) -> f64 {
    libm::erfc(x)
}

// ---------------------------------------------------------------------------------------------
// Exact float serialisation

fn write_exact(out: &mut String, v: f64) {
    // Debug prints the shortest string that parses back to the same bits (and inf, -inf, NaN).
    let _ = write!(out, "{v:?}");
}

fn parse_exact<E: serde::de::Error>(s: &str) -> Result<f64, E> {
    s.parse::<f64>().map_err(|e| E::custom(format!("bad number `{s}`: {e}")))
}

/// Floats kept with their exact text, formatted once: a snapshot after every event then
/// copies strings instead of formatting every float of the history again. Serialised as one
/// string of space-separated numbers.
#[derive(Debug, Clone, PartialEq)]
struct Exact {
    values: Vec<f64>,
    text: String,
}

impl Exact {
    fn new(values: Vec<f64>) -> Exact {
        let mut text = String::with_capacity(values.len() * 20);
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                text.push(' ');
            }
            write_exact(&mut text, *v);
        }
        Exact { values, text }
    }

    fn push(&mut self, v: f64) {
        if !self.values.is_empty() {
            self.text.push(' ');
        }
        write_exact(&mut self.text, v);
        self.values.push(v);
    }
}

impl std::ops::Deref for Exact {
    type Target = [f64];

    fn deref(&self) -> &[f64] {
        &self.values
    }
}

impl Serialize for Exact {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Exact {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Exact, D::Error> {
        let text = String::deserialize(d)?;
        let values = text.split(' ').filter(|p| !p.is_empty()).map(parse_exact).collect::<Result<_, _>>()?;
        Ok(Exact { values, text })
    }
}

mod exact_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => {
                let mut out = String::new();
                super::write_exact(&mut out, *v);
                s.serialize_str(&out)
            }
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        let s = Option::<std::borrow::Cow<str>>::deserialize(d)?;
        s.map(|s| super::parse_exact(&s)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use drover_core::config::ExperimentConfig;
    use drover_core::hparams::sample_space;

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
                let loss =
                    if id == 7 { f64::INFINITY } else { p.hparams["d"].as_f64().unwrap() * 0.123_456_789_012_345_67 + id as f64 / 3.0 };
                t.validated(id - 2, loss, 1.0);
                t.exited(id - 2, if id % 9 == 0 { Outcome::Failed } else { Outcome::Completed });
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
}
