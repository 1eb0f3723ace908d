//! Jobs: what the scheduler holds and queues, as users see it (`drover job list`), and the
//! changes they may make to it (`drover job update`: priority and weight). A job is an
//! experiment today; worker groups and serving replicas will be jobs of their own kinds.

use drover_api::rest::{Job, JobWaiting};

use super::*;

impl Master {
    /// Every unfinished job with its pool, priority and weight, what it runs and, for each of
    /// its requests still waiting, its place in the pool's queue and why it waits.
    pub async fn jobs(&self) -> Vec<Job> {
        let inner = self.inner.lock().await;
        let mut waiting: HashMap<i64, Vec<JobWaiting>> = HashMap::new();
        let mut considered = std::collections::HashSet::new();
        for w in inner.sched.queue() {
            considered.insert(w.request);
            let Some(TaskOwner::Trial { experiment_id, trial_id }) = inner.requests.get(&w.request) else { continue };
            waiting.entry(*experiment_id).or_default().push(JobWaiting {
                trial_id: *trial_id,
                position: Some(w.position),
                reason: wait_reason(&w.reason, &inner),
            });
        }
        // Submitted since the last pass: waiting too, not yet considered.
        for r in inner.sched.pending().filter(|r| !considered.contains(&r.id)) {
            let Some(TaskOwner::Trial { experiment_id, trial_id }) = inner.requests.get(&r.id) else { continue };
            let list = waiting.entry(*experiment_id).or_default();
            list.push(JobWaiting { trial_id: *trial_id, position: None, reason: "submitted after the last scheduling pass".into() });
        }
        let mut ids: Vec<i64> = inner.experiments.keys().copied().collect();
        ids.sort_unstable();
        ids.into_iter()
            .map(|id| {
                let exp = &inner.experiments[&id];
                let r = &exp.config.resources;
                let running = exp.trials.values().filter(|t| t.allocation.is_some()).count();
                let mut queued = waiting.remove(&id).unwrap_or_default();
                queued.sort_by_key(|w| (w.position.unwrap_or(u32::MAX), w.trial_id));
                Job {
                    id,
                    kind: "experiment".into(),
                    name: exp.config.name.clone(),
                    state: exp.state.as_str().into(),
                    resource_pool: r.resource_pool.clone(),
                    priority: r.priority,
                    weight: r.weight,
                    running,
                    queued,
                }
            })
            .collect()
    }

    /// Changes a job's priority and weight: its waiting requests move in the queue (keeping
    /// their arrival order), its running ones may be preempted (or not) accordingly, and the
    /// experiment's stored configuration says so, for a restarted master.
    pub async fn update_job(&self, exp_id: i64, priority: Option<i64>, weight: Option<f64>) -> Result<Job> {
        {
            let mut inner = self.inner.lock().await;
            let Some(exp) = inner.experiments.get(&exp_id) else {
                return Err(Error::not_found(format!("job {exp_id} is not an unfinished experiment")));
            };
            let mut config = exp.config.clone();
            if let Some(p) = priority {
                config.resources.priority = p;
            }
            if let Some(w) = weight {
                config.resources.weight = w;
            }
            let max = i64::from(drover_sched::MAX_PRIORITY);
            if !(0..=max).contains(&config.resources.priority) {
                return Err(Error::bad_field(
                    "priority",
                    format!("priority {} is out of range 0..={max} (lower runs first)", config.resources.priority),
                ));
            }
            if !(drover_sched::MIN_WEIGHT..=drover_sched::MAX_WEIGHT).contains(&config.resources.weight) {
                return Err(Error::bad_field(
                    "weight",
                    format!("weight {} is not in [{}, {}]", config.resources.weight, drover_sched::MIN_WEIGHT, drover_sched::MAX_WEIGHT),
                ));
            }
            let json = serde_json::to_string(&config).map_err(|e| Error::internal(e.to_string()))?;
            self.store.update_experiment_config(exp_id, &json).await?;
            let requests: Vec<TaskRequest> = exp.trials.values().filter_map(|t| t.task_request).collect();
            for r in requests {
                // Checked above; a request that ended meanwhile is simply gone.
                let _ = inner.sched.update_request(r, config.resources.priority as u8, config.resources.weight);
            }
            inner.experiments.get_mut(&exp_id).expect("checked").config = config;
            self.schedule(&mut inner).await?;
        }
        self.bump();
        self.jobs().await.into_iter().find(|j| j.id == exp_id).ok_or_else(|| Error::not_found(format!("job {exp_id}")))
    }
}

/// Why a request waits, in words.
fn wait_reason(reason: &drover_sched::WaitReason, inner: &Inner) -> String {
    use drover_sched::WaitReason as W;
    match reason {
        W::NotConsideredYet => "submitted after the last scheduling pass".into(),
        W::NoAgents => "no agent of the pool is connected".into(),
        W::CannotFitCurrentAgents => "the pool's agents, even idle, cannot hold it now (agents have left since it was accepted)".into(),
        W::PoolReservedFor { request } => match inner.requests.get(request) {
            Some(TaskOwner::Trial { trial_id, .. }) => format!("the pool is held for trial {trial_id}, which has waited longest"),
            None => "the pool is held for a request that has waited longest".into(),
        },
        W::WaitingForPreemption => "lower-priority work is checkpointing to make room for it".into(),
        W::ZeroSlotBudgetFull { budget } => format!("the pool's {budget} zero-slot tasks are all running"),
        W::BehindHigherPriority => "higher-priority work holds or waits for the slots it needs".into(),
        W::OverFairShare { usage_units, share_units } => format!(
            "its experiment uses {:.2} slots, more than its fair share of {:.2}",
            *usage_units as f64 / 1000.0,
            *share_units as f64 / 1000.0
        ),
        W::NoAgentWithFreeSlots { units_per_member } => {
            format!("no agent has {:.2} free slots", *units_per_member as f64 / 1000.0)
        }
        W::GangNeedsPlaces { members, free } => format!("a gang of {members} needs them all at once; {free} can be placed now"),
    }
}
