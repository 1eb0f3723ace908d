//! Population based training as AutoLFADS runs it: a population of members trains for a
//! generation (a span of the time metric), then the weak copy the strong (exploit: binary
//! tournament or truncation) and change the copied hyperparameters a little (explore: multiply
//! by a factor from a range, or redraw), and the next generation starts from the copied
//! members' checkpoints.
//!
//! Every member of every generation is its own trial, so each generation's weights stay on the
//! storage as AutoLFADS keeps them (`g003_w07`), and a member's ancestry is plain data here:
//! its `parent` is the member whose checkpoint it starts from.
//!
//! The trial does not need to know its generation: when it reports a validation at or past the
//! generation's end, the searcher asks it to stop, and a trial that honours `should_stop` saves
//! a checkpoint and exits. The time metric is cumulative over a member's ancestry (a restored
//! checkpoint carries its epoch count), so generation `g` ends at `(g + 1) * generation_length`.
//!
//! Checkpoints: a member is copied only once a checkpoint of it is registered, and only by a
//! member that scored worse (or not at all). A member with no checkpoint of its own and no better
//! member to copy starts afresh with newly drawn hyperparameters; when a whole generation ended
//! without a single checkpoint, the entrypoint cannot do PBT and the search ends as a failure.
//!
//! A member that fails, or never reports the searcher metric, has no score: it always loses its
//! tournament and is never copied. A NaN is no score either.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use drover_core::SplitMix64;
use drover_core::config::SearcherConfig;
use drover_core::hparams::{self, Hyperparameter, HyperparameterSpace};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Outcome, Proposal, RequestId, SearchMethod};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exploit {
    BinaryTournament,
    Truncation,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PbtParams {
    pub population: usize,
    pub max_generations: usize,
    pub generation_length: f64,
    pub synchronous: bool,
    pub exploit: Exploit,
    pub quantile_fraction: f64,
    pub perturb_range: [f64; 2],
    pub resample_probability: f64,
    pub patience: usize,
    pub min_improvement: f64,
}

impl PbtParams {
    pub fn from_config(s: &SearcherConfig) -> Result<PbtParams, String> {
        let need = |v: Option<usize>, field: &str| v.ok_or_else(|| format!("searcher.{field} is required"));
        Ok(PbtParams {
            population: need(s.population_size, "population_size")?,
            max_generations: need(s.max_generations, "max_generations")?,
            generation_length: s.generation_length.ok_or("searcher.generation_length is required")? as f64,
            synchronous: s.synchronous,
            exploit: if s.exploit == "truncation" { Exploit::Truncation } else { Exploit::BinaryTournament },
            quantile_fraction: s.quantile_fraction,
            perturb_range: s.perturb_range,
            resample_probability: s.resample_probability,
            patience: s.patience,
            min_improvement: s.min_improvement,
        })
    }
}

/// One member of one generation: one trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// Which line of the population it continues (0..population).
    pub slot: usize,
    pub generation: usize,
    pub hparams: Map<String, Value>,
    /// The member whose checkpoint it starts from (itself one generation back, or the one it
    /// copied); `None` for generation 0 and for a fresh start.
    pub parent: Option<RequestId>,
    /// It copied `parent`'s weights and explored its hyperparameters, rather than continuing.
    pub exploited: bool,
    /// Its loss (smaller is better) at the end of its generation; `None` if it failed, reported
    /// nothing, or reported NaN.
    pub score: Option<f64>,
    /// Latest time metric it reported.
    pub time: Option<f64>,
    /// A checkpoint of it is registered, so others may start from it.
    pub checkpointed: bool,
    /// It reached the end of its generation (and was asked to stop).
    pub reached_end: bool,
    pub done: bool,
    pub failed: bool,
}

/// What a generation's end decided for one slot, waiting to be proposed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Planned {
    slot: usize,
    generation: usize,
    hparams: Map<String, Value>,
    parent: Option<RequestId>,
    exploited: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PbtSearch {
    space: HyperparameterSpace,
    params: PbtParams,
    /// Every member so far, by request id.
    pub(crate) members: BTreeMap<RequestId, Member>,
    /// Members decided and not yet created.
    queue: VecDeque<Planned>,
    /// Generation-0 members not yet drawn.
    unseeded: usize,
    /// Latest member of each slot.
    latest: Vec<Option<RequestId>>,
    /// Best score of the population after each completed generation (smaller is better).
    pub(crate) best_by_generation: Vec<Option<f64>>,
    /// No generation will start any more (max_generations reached, the stop rule fired, or no
    /// member could continue).
    finished: bool,
    /// Why the search ended early, for the experiment's log.
    pub(crate) ended_because: Option<String>,
    /// Draws for exploit and explore.
    rng: SplitMix64,
}

impl PbtSearch {
    pub fn new(space: HyperparameterSpace, params: PbtParams, seed: u64) -> PbtSearch {
        let population = params.population;
        PbtSearch {
            space,
            params,
            members: BTreeMap::new(),
            queue: VecDeque::new(),
            unseeded: population,
            latest: vec![None; population],
            best_by_generation: Vec::new(),
            finished: false,
            ended_because: None,
            // Not the Searcher's stream: the two must not draw the same numbers.
            rng: SplitMix64::new(seed ^ 0x9e37_79b9_7f4a_7c15),
        }
    }

    pub fn params(&self) -> &PbtParams {
        &self.params
    }

    pub fn members(&self) -> &BTreeMap<RequestId, Member> {
        &self.members
    }

    /// Best loss of the population after each completed generation, over all generations so far.
    pub fn best_by_generation(&self) -> &[Option<f64>] {
        &self.best_by_generation
    }

    pub fn ended_because(&self) -> Option<&str> {
        self.ended_because.as_deref()
    }

    /// The time metric value at which generation `g` ends.
    fn generation_end(&self, generation: usize) -> f64 {
        (generation + 1) as f64 * self.params.generation_length
    }

    /// Members of `generation`, in slot order.
    fn generation_members(&self, generation: usize) -> Vec<RequestId> {
        let mut ids: Vec<(usize, RequestId)> =
            self.members.iter().filter(|(_, m)| m.generation == generation).map(|(id, m)| (m.slot, *id)).collect();
        ids.sort();
        ids.into_iter().map(|(_, id)| id).collect()
    }

    /// Whether `a` scored strictly better than `b`; no score never wins.
    fn better(&self, a: RequestId, b: RequestId) -> bool {
        match (self.members[&a].score, self.members[&b].score) {
            (Some(x), Some(y)) => x < y,
            (Some(_), None) => true,
            _ => false,
        }
    }

    /// A copy of `source`'s hyperparameters, explored.
    fn explore(&self, source: &Map<String, Value>, rng: &mut SplitMix64) -> Map<String, Value> {
        explore_space(&self.space, source, self.params.perturb_range, self.params.resample_probability, rng)
    }

    /// Decides what follows `id` (a member that just ended its generation) given the `peers` it
    /// may copy (done members of other slots). Returns the plan for its slot's next generation.
    fn successor(&self, id: RequestId, peers: &[RequestId], rng: &mut SplitMix64) -> Planned {
        let member = &self.members[&id];
        let copyable: Vec<RequestId> = peers.iter().copied().filter(|p| self.members[p].checkpointed && self.better(*p, id)).collect();
        let source = match self.params.exploit {
            Exploit::BinaryTournament => {
                // AutoLFADS: one random competitor among those with a score; copy it if better.
                let scored: Vec<RequestId> = peers.iter().copied().filter(|p| self.members[p].score.is_some()).collect();
                if scored.is_empty() {
                    None
                } else {
                    let rival = scored[rng.index(scored.len())];
                    // A rival that won but left no checkpoint cannot be copied; another better
                    // member with one stands in, as the member must not keep losing weights.
                    if self.better(rival, id) {
                        if self.members[&rival].checkpointed {
                            Some(rival)
                        } else if !member.checkpointed && !copyable.is_empty() {
                            Some(copyable[rng.index(copyable.len())])
                        } else {
                            None
                        }
                    } else {
                        None
                    }
                }
            }
            Exploit::Truncation => {
                // Rank the member among its peers; the bottom quantile copies a random member of
                // the top quantile (Ray Tune: ceil(n * q), at most n / 2).
                let mut ranked: Vec<RequestId> = peers.to_vec();
                ranked.push(id);
                ranked.sort_by(|a, b| {
                    let key = |r: &RequestId| self.members[r].score.unwrap_or(f64::INFINITY);
                    key(a).total_cmp(&key(b)).then(a.cmp(b))
                });
                let n = ranked.len();
                let q = ((n as f64 * self.params.quantile_fraction).ceil() as usize).min(n / 2);
                let position = ranked.iter().position(|r| *r == id).unwrap_or(0);
                let in_bottom = member.score.is_none() || (q > 0 && position >= n - q);
                if in_bottom {
                    let top: Vec<RequestId> = ranked[..q].iter().copied().filter(|r| copyable.contains(r)).collect();
                    let pool = if top.is_empty() && !member.checkpointed { &copyable } else { &top };
                    (!pool.is_empty()).then(|| pool[rng.index(pool.len())])
                } else if !member.checkpointed && !copyable.is_empty() {
                    Some(copyable[rng.index(copyable.len())])
                } else {
                    None
                }
            }
        };
        let generation = member.generation + 1;
        match source {
            Some(source) => Planned {
                slot: member.slot,
                generation,
                hparams: self.explore(&self.members[&source].hparams, rng),
                parent: Some(source),
                exploited: true,
            },
            None if member.checkpointed => {
                Planned { slot: member.slot, generation, hparams: member.hparams.clone(), parent: Some(id), exploited: false }
            }
            // Nothing to continue from: a fresh member, which starts the time metric over.
            None => {
                Planned { slot: member.slot, generation, hparams: hparams::sample_space(&self.space, rng), parent: None, exploited: false }
            }
        }
    }

    /// The best score after `generation` completed; records it and applies the stop rule.
    fn generation_completed(&mut self, generation: usize) {
        let ids = self.generation_members(generation);
        let best = ids.iter().filter_map(|id| self.members[id].score).fold(None, |acc: Option<f64>, s| Some(acc.map_or(s, |a| a.min(s))));
        let best_so_far = match (self.best_by_generation.last().copied().flatten(), best) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.best_by_generation.push(best_so_far);
        if ids.iter().all(|id| !self.members[id].checkpointed) {
            self.finish(format!(
                "no member of generation {generation} saved a checkpoint: a pbt entrypoint must save checkpoints (and stop when asked)"
            ));
            return;
        }
        if generation + 1 >= self.params.max_generations {
            self.finish(format!("all {} generations ran", self.params.max_generations));
            return;
        }
        let p = self.params.patience;
        if self.params.min_improvement > 0.0 && p > 0 && self.best_by_generation.len() > p {
            let now = self.best_by_generation[self.best_by_generation.len() - 1];
            let then = self.best_by_generation[self.best_by_generation.len() - 1 - p];
            if let (Some(now), Some(then)) = (now, then) {
                // AutoLFADS: (best then - best now) / mean |best|.
                let scale = ((now.abs() + then.abs()) / 2.0).max(f64::MIN_POSITIVE);
                let improvement = (then - now) / scale;
                if improvement < self.params.min_improvement {
                    self.finish(format!(
                        "the best score improved by {:.4}% over the last {p} generations, less than min_improvement {}%",
                        improvement * 100.0,
                        self.params.min_improvement * 100.0
                    ));
                }
            }
        }
    }

    fn finish(&mut self, why: String) {
        if !self.finished {
            self.finished = true;
            self.queue.clear();
            self.ended_because = Some(why);
        }
    }

    /// The synchronous barrier: once every member of the current generation is done, the
    /// whole population is judged at once.
    fn evolve_synchronously(&mut self, generation: usize, rng: &mut SplitMix64) {
        let ids = self.generation_members(generation);
        if ids.len() < self.params.population || !ids.iter().all(|id| self.members[id].done) {
            return;
        }
        self.generation_completed(generation);
        if self.finished {
            return;
        }
        for &id in &ids {
            let peers: Vec<RequestId> = ids.iter().copied().filter(|p| *p != id).collect();
            let plan = self.successor(id, &peers, rng);
            self.queue.push_back(plan);
        }
    }

    /// Asynchronous: the member moves on at once, judged against the latest finished member
    /// of every other slot.
    fn evolve_alone(&mut self, id: RequestId, rng: &mut SplitMix64) {
        let (generation, slot) = (self.members[&id].generation, self.members[&id].slot);
        // The generation counts as complete (for the stop rule) once every slot has finished it.
        let everyone_done =
            self.members.values().filter(|m| m.generation == generation && m.done).map(|m| m.slot).collect::<BTreeSet<_>>().len()
                == self.params.population;
        if everyone_done && self.best_by_generation.len() == generation {
            self.generation_completed(generation);
        }
        if self.finished || generation + 1 >= self.params.max_generations {
            return;
        }
        let peers: Vec<RequestId> = (0..self.params.population).filter(|s| *s != slot).filter_map(|s| self.latest_done(s)).collect();
        let plan = self.successor(id, &peers, rng);
        self.queue.push_back(plan);
    }

    /// The most recent member of `slot` that has ended.
    fn latest_done(&self, slot: usize) -> Option<RequestId> {
        self.members.iter().rev().find(|(_, m)| m.slot == slot && m.done).map(|(id, _)| *id)
    }
}

impl SearchMethod for PbtSearch {
    fn propose(&mut self, request_id: RequestId, rng: &mut SplitMix64) -> Option<Proposal> {
        let plan = if self.unseeded > 0 {
            let slot = self.params.population - self.unseeded;
            self.unseeded -= 1;
            Planned { slot, generation: 0, hparams: hparams::sample_space(&self.space, rng), parent: None, exploited: false }
        } else {
            self.queue.pop_front()?
        };
        self.latest[plan.slot] = Some(request_id);
        self.members.insert(
            request_id,
            Member {
                slot: plan.slot,
                generation: plan.generation,
                hparams: plan.hparams.clone(),
                parent: plan.parent,
                exploited: plan.exploited,
                score: None,
                time: None,
                checkpointed: false,
                reached_end: false,
                done: false,
                failed: false,
            },
        );
        Some(Proposal { hparams: plan.hparams, checkpoint_from: plan.parent })
    }

    fn validated(&mut self, request_id: RequestId, loss: f64, time: f64) -> Vec<RequestId> {
        let end = match self.members.get(&request_id) {
            Some(m) if !m.done && !m.reached_end => self.generation_end(m.generation),
            _ => return Vec::new(),
        };
        let m = self.members.get_mut(&request_id).expect("checked above");
        m.score = loss.is_finite().then_some(loss);
        m.time = Some(time);
        if time >= end {
            m.reached_end = true;
            return vec![request_id];
        }
        Vec::new()
    }

    fn checkpointed(&mut self, request_id: RequestId) {
        if let Some(m) = self.members.get_mut(&request_id) {
            m.checkpointed = true;
        }
    }

    fn exited(&mut self, request_id: RequestId, outcome: Outcome) {
        let Some(m) = self.members.get_mut(&request_id) else { return };
        if m.done {
            return;
        }
        m.done = true;
        if outcome == Outcome::Failed {
            m.failed = true;
            m.score = None;
        }
        if self.finished {
            return;
        }
        let m = &self.members[&request_id];
        // Decisions happen on exits, where the Searcher's generator is not at hand: the method
        // draws from its own, which is part of its snapshot all the same.
        let mut rng = self.rng.clone();
        if self.params.synchronous {
            let generation = m.generation;
            self.evolve_synchronously(generation, &mut rng);
        } else {
            self.evolve_alone(request_id, &mut rng);
        }
        self.rng = rng;
    }

    fn exhausted(&self) -> bool {
        self.unseeded == 0 && self.queue.is_empty() && (self.finished || self.members.values().all(|m| m.done))
    }

    fn total_trials(&self) -> Option<usize> {
        Some(self.params.population * self.params.max_generations)
    }
}

/// Explores a copied member's hyperparameters: each number is multiplied by a factor drawn
/// uniformly from `range` and clipped to its bounds (integers and categories move to a
/// neighbouring value instead), or, with `resample_probability`, drawn afresh from the space.
pub fn explore_space(
    space: &HyperparameterSpace,
    source: &Map<String, Value>,
    range: [f64; 2],
    resample_probability: f64,
    rng: &mut SplitMix64,
) -> Map<String, Value> {
    let mut out = Map::new();
    for (name, hp) in space {
        let current = source.get(name);
        let value = match (hp, current) {
            (Hyperparameter::Const { val }, _) => val.clone(),
            (Hyperparameter::Nested { fields }, Some(Value::Object(inner))) => {
                Value::Object(explore_space(fields, inner, range, resample_probability, rng))
            }
            (_, None) => hp.sample(rng),
            (_, Some(_)) if resample_probability > 0.0 && rng.next_f64() < resample_probability => hp.sample(rng),
            (hp, Some(v)) => perturb(hp, v, range, rng),
        };
        out.insert(name.clone(), value);
    }
    out
}

fn perturb(hp: &Hyperparameter, value: &Value, [lo, hi]: [f64; 2], rng: &mut SplitMix64) -> Value {
    let factor = lo + rng.next_f64() * (hi - lo);
    match hp {
        Hyperparameter::Double { minval, maxval, .. } => match value.as_f64() {
            Some(v) => number((v * factor).clamp(*minval, *maxval)),
            None => hp.sample(rng),
        },
        Hyperparameter::Log { minval, maxval, base, .. } => match value.as_f64() {
            Some(v) if v > 0.0 => {
                let exponent = ((v * factor).ln() / base.ln()).clamp(*minval, *maxval);
                number(base.powf(exponent))
            }
            _ => hp.sample(rng),
        },
        Hyperparameter::Int { minval, maxval, .. } => match value.as_i64() {
            Some(v) => Value::from((v + if rng_sign(rng) { 1 } else { -1 }).clamp(*minval, *maxval)),
            None => hp.sample(rng),
        },
        Hyperparameter::Categorical { vals } => match vals.iter().position(|x| x == value) {
            Some(i) => {
                let j = if rng_sign(rng) { (i + 1).min(vals.len() - 1) } else { i.saturating_sub(1) };
                vals[j].clone()
            }
            // A value no longer among the choices is drawn afresh, as Ray Tune does.
            None => hp.sample(rng),
        },
        Hyperparameter::Const { val } => val.clone(),
        Hyperparameter::Nested { .. } => hp.sample(rng),
    }
}

fn rng_sign(rng: &mut SplitMix64) -> bool {
    rng.next_u64() & 1 == 1
}

fn number(f: f64) -> Value {
    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
}
