//! The search strategy, free of IO: a steady-state (1+1) evolution strategy over a drover
//! hyperparameter space, minimising a loss.

use drover_core::SplitMix64;
use drover_core::hparams::{self, Hyperparameter, HyperparameterSpace};
use serde_json::{Map, Value};

/// Step sizes stay within these fractions of a range: below, steps are lost in rounding; above,
/// the search is no longer local.
const MIN_SIGMA: f64 = 0.01;
const MAX_SIGMA: f64 = 0.5;

pub struct Strategy {
    space: HyperparameterSpace,
    rng: SplitMix64,
    /// Step size as a fraction of each hyperparameter's range.
    sigma: f64,
    best: Option<(f64, Map<String, Value>)>,
}

impl Strategy {
    pub fn new(space: HyperparameterSpace, sigma: f64, seed: u64) -> Strategy {
        Strategy { space, rng: SplitMix64::new(seed), sigma: sigma.clamp(MIN_SIGMA, MAX_SIGMA), best: None }
    }

    /// A random point until there is a result, then a mutation of the best one.
    pub fn propose(&mut self) -> Map<String, Value> {
        match &self.best {
            None => hparams::sample_space(&self.space, &mut self.rng),
            Some((_, parent)) => mutate(&self.space, parent, self.sigma, &mut self.rng),
        }
    }

    /// A trial's result (smaller is better); returns whether it is the new best. Steps widen
    /// after an improvement and narrow after a miss, balanced at one success in five.
    pub fn observe(&mut self, point: Map<String, Value>, loss: f64) -> bool {
        let Some((best, _)) = &self.best else {
            self.best = Some((loss, point));
            return true;
        };
        let improved = loss < *best;
        if improved {
            self.best = Some((loss, point));
            self.sigma = (self.sigma * 0.8f64.exp()).min(MAX_SIGMA);
        } else {
            self.sigma = (self.sigma * (-0.2f64).exp()).max(MIN_SIGMA);
        }
        improved
    }

    pub fn sigma(&self) -> f64 {
        self.sigma
    }

    pub fn best(&self) -> Option<&Map<String, Value>> {
        self.best.as_ref().map(|(_, p)| p)
    }
}

/// A standard normal draw (Box-Muller).
fn gaussian(rng: &mut SplitMix64) -> f64 {
    let u1 = 1.0 - rng.next_f64(); // in (0, 1], so the log is finite
    let u2 = rng.next_f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// `parent` moved by a normal step of `sigma` times each range, kept inside the space.
fn mutate(space: &HyperparameterSpace, parent: &Map<String, Value>, sigma: f64, rng: &mut SplitMix64) -> Map<String, Value> {
    space
        .iter()
        .map(|(name, hp)| {
            let value = match parent.get(name) {
                Some(v) => mutate_one(hp, v, sigma, rng),
                None => hp.sample(rng),
            };
            (name.clone(), value)
        })
        .collect()
}

fn mutate_one(hp: &Hyperparameter, parent: &Value, sigma: f64, rng: &mut SplitMix64) -> Value {
    match hp {
        Hyperparameter::Const { val } => val.clone(),
        Hyperparameter::Int { minval, maxval, .. } => {
            let Some(p) = parent.as_i64() else { return hp.sample(rng) };
            let span = (maxval - minval) as f64;
            let v = (p as f64 + gaussian(rng) * sigma * span).round() as i64;
            Value::from(v.clamp(*minval, *maxval))
        }
        Hyperparameter::Double { minval, maxval, .. } => {
            let Some(p) = parent.as_f64() else { return hp.sample(rng) };
            number((p + gaussian(rng) * sigma * (maxval - minval)).clamp(*minval, *maxval))
        }
        Hyperparameter::Log { minval, maxval, base, .. } => {
            let Some(p) = parent.as_f64().filter(|p| *p > 0.0) else { return hp.sample(rng) };
            // Steps are taken on the exponent, where the range is uniform.
            let exponent = (p.ln() / base.ln() + gaussian(rng) * sigma * (maxval - minval)).clamp(*minval, *maxval);
            let (lo, hi) = (base.powf(*minval), base.powf(*maxval));
            number(base.powf(exponent).clamp(lo.min(hi), lo.max(hi)))
        }
        Hyperparameter::Categorical { vals } => {
            // A categorical has no neighbours: switch to another value with probability sigma.
            if vals.len() > 1 && rng.next_f64() < sigma { vals[rng.index(vals.len())].clone() } else { parent.clone() }
        }
        Hyperparameter::Nested { fields } => match parent {
            Value::Object(p) => Value::Object(mutate(fields, p, sigma, rng)),
            _ => hp.sample(rng),
        },
    }
}

fn number(f: f64) -> Value {
    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> HyperparameterSpace {
        serde_json::from_value(serde_json::json!({
            "lr": {"type": "log", "minval": -4.0, "maxval": -1.0, "base": 10.0, "count": null},
            "hidden": {"type": "categorical", "vals": [32, 64, 128]},
            "epochs": {"type": "int", "minval": 10, "maxval": 30, "count": null},
            "dropout": {"type": "double", "minval": 0.0, "maxval": 0.5, "count": null},
            "batch": {"type": "const", "val": 32},
            "model": {"type": "nested", "fields": {"depth": {"type": "int", "minval": 1, "maxval": 3, "count": null}}},
        }))
        .unwrap()
    }

    #[test]
    fn every_proposal_is_a_point_of_the_space() {
        let mut s = Strategy::new(space(), 0.5, 1);
        for i in 0..500 {
            let p = s.propose();
            hparams::validate_point(&space(), &p, "p").unwrap();
            s.observe(p, f64::from(i % 7));
        }
    }

    #[test]
    fn it_converges_on_a_smooth_loss() {
        // The optimum is lr = 1e-2.5, epochs = 20, dropout = 0.1.
        let loss = |p: &Map<String, Value>| {
            let lr = p["lr"].as_f64().unwrap().log10() + 2.5;
            let epochs = (p["epochs"].as_i64().unwrap() - 20) as f64 / 20.0;
            let dropout = p["dropout"].as_f64().unwrap() - 0.1;
            lr * lr + epochs * epochs + dropout * dropout
        };
        let mut s = Strategy::new(space(), 0.25, 7);
        let first = s.propose();
        let start = loss(&first);
        s.observe(first, start);
        for _ in 0..200 {
            let p = s.propose();
            let l = loss(&p);
            s.observe(p, l);
        }
        let best = loss(s.best().unwrap());
        assert!(best < 0.01 && best < start, "{start} -> {best}");
    }

    #[test]
    fn steps_widen_on_success_and_narrow_on_failure_within_bounds() {
        let mut s = Strategy::new(space(), 0.25, 3);
        let p = s.propose();
        assert!(s.observe(p.clone(), 1.0), "the first result is the best");
        assert_eq!(s.sigma(), 0.25, "and moves no step size");
        assert!(s.observe(p.clone(), 0.5));
        assert!(s.sigma() > 0.25);
        for _ in 0..100 {
            assert!(!s.observe(p.clone(), 2.0));
        }
        assert_eq!(s.sigma(), MIN_SIGMA);
    }
}
