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

use std::fmt::Write as _;

use drover_core::SplitMix64;
use drover_core::hparams::{Hyperparameter, HyperparameterSpace};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

use crate::{Outcome, Proposal, RequestId, SearchMethod};

mod parzen;

use parzen::{Draws, Parzen};

/// Random trials before the model takes over (Optuna's default).
pub const DEFAULT_N_STARTUP_TRIALS: usize = 10;
/// Candidates drawn from l(x) per proposal (Optuna's default).
pub const DEFAULT_N_EI_CANDIDATES: usize = 24;
/// Weight of the prior kernel in each Parzen estimator (Optuna's default).
pub const PRIOR_WEIGHT: f64 = 1.0;
/// Values (candidate coordinates, or densities of candidates under kernels) scored at once.
const CHUNK_VALUES: usize = 1 << 18;

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
        self.sample_tpe_in_chunks(rng, CHUNK_VALUES)
    }

    fn sample_tpe_in_chunks(&self, rng: &mut SplitMix64, chunk_values: usize) -> Vec<f64> {
        let (below, above) = self.split();
        let l = Parzen::fit(&self.dims, &below);
        let g = Parzen::fit(&self.dims, &above);
        let mut draws = Draws { rng, spare: None };
        let d = self.dims.len();
        // Candidates are drawn and scored a chunk at a time, so that memory stays bounded
        // whatever `n_ei_candidates` and the number of trials (scoring holds one density per
        // candidate and kernel). The draws come in the same order and a candidate's score
        // depends on it alone, so the choice is the one of a single batch.
        let per_candidate = d.max(l.log_weights.len()).max(g.log_weights.len()).max(1);
        let chunk = (chunk_values / per_candidate).max(1);
        let mut scratch = Vec::new();
        let mut best: Option<Vec<f64>> = None;
        let mut best_score = f64::NEG_INFINITY;
        let mut left = self.n_ei_candidates;
        while left > 0 {
            let count = left.min(chunk);
            left -= count;
            let candidates = l.sample(&mut draws, count);
            let log_l = l.log_pdf(&candidates, &mut scratch);
            let log_g = g.log_pdf(&candidates, &mut scratch);
            if best.is_none() {
                best = Some(candidates[..d].to_vec());
            }
            for (c, (lb, la)) in log_l.iter().zip(&log_g).enumerate() {
                let score = lb - la;
                if score > best_score {
                    best_score = score;
                    best = Some(candidates[c * d..(c + 1) * d].to_vec());
                }
            }
        }
        best.unwrap_or_default()
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
mod tests;
