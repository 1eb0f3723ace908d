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

use std::collections::{BTreeMap, VecDeque};

use drover_core::SplitMix64;
use drover_core::config::SearcherConfig;
use drover_core::hparams::{self, Hyperparameter, HyperparameterSpace};
use drover_core::limits::{MAX_POPULATION, MAX_TRIALS};
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
    /// The parameters of a `pbt` searcher. The population (which sizes the search's state)
    /// and the trials it runs are held to [`MAX_POPULATION`] and [`MAX_TRIALS`], as
    /// `ExperimentConfig::parse` does.
    pub fn from_config(s: &SearcherConfig) -> Result<PbtParams, String> {
        let need = |v: Option<usize>, field: &str| v.ok_or_else(|| format!("searcher.{field} is required"));
        let (population, max_generations) = (need(s.population_size, "population_size")?, need(s.max_generations, "max_generations")?);
        if population > MAX_POPULATION {
            return Err(format!("searcher.population_size: {population} is more than the limit of {MAX_POPULATION}"));
        }
        if population.checked_mul(max_generations).is_none_or(|n| n > MAX_TRIALS) {
            return Err(format!(
                "searcher.population_size: population_size x max_generations = {population} x {max_generations} trials, more than the limit of {MAX_TRIALS}"
            ));
        }
        Ok(PbtParams {
            population,
            max_generations,
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

/// The members one or more decisions are judged among, ranked once.
struct Pool {
    /// (loss, id), best first; no score ranks last.
    ranked: Vec<(f64, RequestId)>,
    /// The checkpointed part of `ranked`.
    checkpointed: Vec<(f64, RequestId)>,
    /// Members with a score, best first.
    scored: Vec<RequestId>,
    /// Truncation: size of the top and bottom quantiles.
    q: usize,
    /// Truncation: checkpointed members of the top quantile, best first.
    top_checkpointed: Vec<(f64, RequestId)>,
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
    /// Latest member of each slot that has ended.
    latest_done: Vec<Option<RequestId>>,
    /// Members of each generation, and how many of them have ended.
    by_generation: Vec<Vec<RequestId>>,
    done_by_generation: Vec<usize>,
    /// Best score of the population after each completed generation (smaller is better).
    pub(crate) best_by_generation: Vec<Option<f64>>,
    /// No generation will start any more (max_generations reached, the stop rule fired, or no
    /// member could continue).
    finished: bool,
    /// Why the search ended early, for the experiment's log.
    pub(crate) ended_because: Option<String>,
    /// Draws for exploit and explore.
    rng: SplitMix64,
    /// The entrypoint saves no checkpoints, so PBT cannot work: the search ends as a failure.
    no_checkpoints: bool,
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
            latest_done: vec![None; population],
            by_generation: Vec::new(),
            done_by_generation: Vec::new(),
            best_by_generation: Vec::new(),
            finished: false,
            ended_because: None,
            // Not the Searcher's stream: the two must not draw the same numbers.
            rng: SplitMix64::new(seed ^ 0x9e37_79b9_7f4a_7c15),
            no_checkpoints: false,
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
            self.by_generation.get(generation).map_or(&[][..], Vec::as_slice).iter().map(|id| (self.members[id].slot, *id)).collect();
        ids.sort();
        ids.into_iter().map(|(_, id)| id).collect()
    }

    fn done_in(&self, generation: usize) -> usize {
        self.done_by_generation.get(generation).copied().unwrap_or(0)
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

    /// The members `pool` ranks, ready for many decisions at once: a synchronous generation
    /// decides the whole population against one pool, so each decision is a few lookups.
    fn pool(&self, ids: &[RequestId]) -> Pool {
        let key = |id: &RequestId| self.members[id].score.unwrap_or(f64::INFINITY);
        let mut ranked: Vec<(f64, RequestId)> = ids.iter().map(|id| (key(id), *id)).collect();
        ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let checkpointed: Vec<(f64, RequestId)> = ranked.iter().copied().filter(|(_, id)| self.members[id].checkpointed).collect();
        let scored: Vec<RequestId> = ranked.iter().filter(|(s, _)| s.is_finite()).map(|(_, id)| *id).collect();
        let n = ranked.len();
        let q = ((n as f64 * self.params.quantile_fraction).ceil() as usize).min(n / 2);
        let top_checkpointed: Vec<(f64, RequestId)> = ranked[..q].iter().copied().filter(|(_, id)| self.members[id].checkpointed).collect();
        Pool { ranked, checkpointed, scored, q, top_checkpointed }
    }

    /// Decides what follows `id` (a member that just ended its generation), judged within
    /// `pool` (itself and the done members it may copy). Returns its slot's next member.
    fn successor(&self, id: RequestId, pool: &Pool, rng: &mut SplitMix64) -> Planned {
        let member = &self.members[&id];
        let my_key = member.score.unwrap_or(f64::INFINITY);
        // Checkpointed members that scored strictly better: a prefix of the ranking.
        let better = &pool.checkpointed[..pool.checkpointed.partition_point(|(s, _)| *s < my_key)];
        let pick_better = |rng: &mut SplitMix64| (!better.is_empty()).then(|| better[rng.index(better.len())].1);
        let source = match self.params.exploit {
            Exploit::BinaryTournament => {
                // AutoLFADS: one random competitor among the others with a score; copy it if better.
                let rivals = pool.scored.len() - usize::from(pool.scored.contains(&id));
                if rivals == 0 {
                    None
                } else {
                    let mut rival = pool.scored[rng.index(pool.scored.len() - usize::from(pool.scored.contains(&id)))];
                    if rival == id {
                        // Skip over itself: the last scored member takes its place in the draw.
                        rival = *pool.scored.last().expect("rivals > 0");
                    }
                    if self.better(rival, id) {
                        // A rival that won but left no checkpoint cannot be copied; another
                        // better member with one stands in, so the member does not keep a
                        // line that has no weights.
                        if self.members[&rival].checkpointed {
                            Some(rival)
                        } else if !member.checkpointed {
                            pick_better(rng)
                        } else {
                            None
                        }
                    } else {
                        None
                    }
                }
            }
            Exploit::Truncation => {
                // The bottom quantile copies a random member of the top quantile (Ray Tune:
                // ceil(n * q) members, at most n / 2).
                let n = pool.ranked.len();
                let position = pool.ranked.partition_point(|(s, r)| s.total_cmp(&my_key).then(r.cmp(&id)).is_lt());
                let in_bottom = member.score.is_none() || (pool.q > 0 && position >= n - pool.q);
                // Only members that scored strictly better are copied, even from the top.
                let top = &pool.top_checkpointed[..pool.top_checkpointed.partition_point(|(s, _)| *s < my_key)];
                if in_bottom {
                    if !top.is_empty() {
                        Some(top[rng.index(top.len())].1)
                    } else if !member.checkpointed {
                        pick_better(rng)
                    } else {
                        None
                    }
                } else if !member.checkpointed {
                    pick_better(rng)
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
            self.no_checkpoints = true;
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
        if self.done_in(generation) < self.params.population {
            return;
        }
        let ids = self.generation_members(generation);
        self.generation_completed(generation);
        if self.finished {
            return;
        }
        let pool = self.pool(&ids);
        for &id in &ids {
            let plan = self.successor(id, &pool, rng);
            self.queue.push_back(plan);
        }
    }

    /// Asynchronous: the member moves on at once, judged against the latest finished member
    /// of every other slot.
    fn evolve_alone(&mut self, id: RequestId, rng: &mut SplitMix64) {
        let (generation, slot) = (self.members[&id].generation, self.members[&id].slot);
        // The generation counts as complete (for the stop rule) once every slot has finished it.
        if self.done_in(generation) == self.params.population && self.best_by_generation.len() == generation {
            self.generation_completed(generation);
        }
        if self.finished || generation + 1 >= self.params.max_generations {
            return;
        }
        let mut peers: Vec<RequestId> = (0..self.params.population).filter(|s| *s != slot).filter_map(|s| self.latest_done[s]).collect();
        peers.push(id);
        let pool = self.pool(&peers);
        let plan = self.successor(id, &pool, rng);
        self.queue.push_back(plan);
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
        if self.by_generation.len() <= plan.generation {
            self.by_generation.resize(plan.generation + 1, Vec::new());
            self.done_by_generation.resize(plan.generation + 1, 0);
        }
        self.by_generation[plan.generation].push(request_id);
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
        let (generation, slot) = (m.generation, m.slot);
        self.done_by_generation[generation] += 1;
        self.latest_done[slot] = Some(request_id);
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
        Some(self.params.population.saturating_mul(self.params.max_generations))
    }

    fn cannot_succeed(&self) -> bool {
        self.no_checkpoints
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
            // Saturating: a value at i64::MAX or i64::MIN must not wrap to the other end.
            Some(v) => Value::from(v.saturating_add(if rng_sign(rng) { 1 } else { -1 }).clamp(*minval, *maxval)),
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
