//! Placement: a queued trial becomes a scheduler request; the scheduler's decisions become
//! tasks on agents (every member of a gang started at once and told its rank, the world size
//! and its peers), preemptions become `should_stop`, and the members' exits end the allocation
//! and move the trial on (completion, a restart, or back to the queue after a preemption, which
//! costs no restart).
//!
//! Every placement is the scheduler's decision: this module only applies them under the lock.

use drover_sched::{Decision, Placement, Request, Resources, SlotKind, SubmitError};

use super::*;

impl Master {
    /// Puts a trial in the scheduler's queue. A trial accepted earlier is queued even when the
    /// pool's agents cannot hold it just now (they may come back); it then says why it waits.
    pub(super) fn enqueue_trial(&self, inner: &mut Inner, exp_id: i64, trial_id: i64) -> Result<()> {
        let Some(exp) = inner.experiments.get(&exp_id) else { return Ok(()) };
        let id = inner.next_request;
        inner.next_request += 1;
        let request = trial_request(&inner.sched, id, exp_id, &exp.config, false)?;
        inner.sched.submit_waiting(request).map_err(|e| request_error(&exp.config, &e))?;
        inner.requests.insert(id, TaskOwner::Trial { experiment_id: exp_id, trial_id });
        if let Some(trial) = inner.experiments.get_mut(&exp_id).and_then(|e| e.trials.get_mut(&trial_id)) {
            trial.task_request = Some(id);
        }
        Ok(())
    }

    /// Takes a trial's request out of the queue, or, when it runs, tells the scheduler it is
    /// not to be requeued (it is being stopped for good).
    pub(super) fn withdraw_request(&self, inner: &mut Inner, exp_id: i64, trial_id: i64) {
        let Some(trial) = inner.experiments.get_mut(&exp_id).and_then(|e| e.trials.get_mut(&trial_id)) else { return };
        let Some(id) = trial.task_request else { return };
        if let Ok(drover_sched::Cancelled::Dequeued) | Err(_) = inner.sched.cancel(id) {
            trial.task_request = None;
            inner.requests.remove(&id);
        }
    }

    /// Fits waiting trials to the agents there are now: a trial of 16 slots asked for whole
    /// while no agent was there (after a master restart, say) becomes two members of 8 once
    /// agents of 8 join. Each keeps its place in the queue.
    pub(super) fn reshape_waiting(&self, inner: &mut Inner) {
        let mut changes = Vec::new();
        for r in inner.sched.pending() {
            let Some(TaskOwner::Trial { experiment_id, .. }) = inner.requests.get(&r.id) else { continue };
            let Some(exp) = inner.experiments.get(experiment_id) else { continue };
            if let Ok(wanted) = trial_request(&inner.sched, r.id, *experiment_id, &exp.config, false)
                && (wanted.resources != r.resources || wanted.members != r.members)
            {
                changes.push((r.id, wanted.resources, wanted.members));
            }
        }
        for (id, resources, members) in changes {
            if let Err(e) = inner.sched.reshape(id, resources, members) {
                tracing::warn!(request = id, "cannot fit a waiting trial to the agents: {e}");
            }
        }
    }

    /// One scheduling pass, its decisions carried out.
    pub(super) async fn schedule(&self, inner: &mut Inner) -> Result<()> {
        let decisions = inner.sched.schedule(now_ms().max(0) as u64);
        for decision in decisions {
            match decision {
                Decision::Start { request, allocation } => {
                    let placements = inner.sched.allocation(allocation).map(|a| a.placements.clone()).unwrap_or_default();
                    self.start_allocation(inner, request, allocation, placements).await?
                }
                Decision::Preempt { allocation, deadline_ms, .. } => self.preempt(inner, allocation, deadline_ms).await?,
                Decision::Kill { allocation, .. } => {
                    if let Some(id) = gang_of(inner, allocation) {
                        self.send_kill(inner, &id, 0);
                    }
                }
            }
        }
        Ok(())
    }

    async fn start_allocation(
        &self,
        inner: &mut Inner,
        request: TaskRequest,
        sched_id: drover_sched::AllocationId,
        placements: Vec<Placement>,
    ) -> Result<()> {
        let owner = inner.requests.get(&request).copied();
        let Some(TaskOwner::Trial { experiment_id: exp_id, trial_id }) = owner else {
            let _ = inner.sched.allocation_ended(sched_id);
            return Ok(());
        };
        let runnable = inner
            .experiments
            .get(&exp_id)
            .is_some_and(|e| e.state == ExperimentState::Active && e.trials.get(&trial_id).is_some_and(|t| t.state == TrialState::Queued));
        if !runnable {
            // Withdrawn between the pass and now; give the slots back.
            let _ = inner.sched.cancel(request);
            let _ = inner.sched.allocation_ended(sched_id);
            inner.requests.remove(&request);
            if let Some(t) = inner.experiments.get_mut(&exp_id).and_then(|e| e.trials.get_mut(&trial_id)) {
                t.task_request = None;
            }
            return Ok(());
        }
        let allocation_id = uuid::Uuid::new_v4().to_string();
        let world = placements.len();
        let task_id = |rank: usize| if world == 1 { allocation_id.clone() } else { format!("{allocation_id}.{rank}") };
        let tokens: Vec<String> = (0..world).map(|_| random_token()).collect();
        for (rank, p) in placements.iter().enumerate() {
            self.store
                .create_allocation(NewAllocation {
                    id: task_id(rank),
                    trial_id,
                    token: tokens[rank].clone(),
                    state: AllocationState::Assigned.as_str().into(),
                    agent_id: Some(p.agent.clone()),
                    slot_ids: p.slots.clone(),
                    created_at: now_ms(),
                })
                .await?;
        }
        self.set_trial_state(inner, exp_id, trial_id, TrialState::Running).await?;
        let exp = &inner.experiments[&exp_id];
        let trial = &exp.trials[&trial_id];
        let base_env = self.trial_environment(exp_id, trial_id, exp, trial);
        let peer_hosts: Vec<String> =
            placements.iter().map(|p| inner.agents.get(&p.agent).map(|a| a.hostname.clone()).unwrap_or_default()).collect();
        let argv = exp.config.entrypoint.argv();
        let context_path = exp.has_context.then(|| format!("/api/v1/experiments/{exp_id}/context"));
        let searcher_metric: Arc<str> = exp.config.searcher.metric.as_str().into();
        let time_metric: Option<Arc<str>> = exp.config.searcher.time_metric.as_deref().map(Into::into);
        let mut members = Vec::with_capacity(world);
        let mut specs = Vec::with_capacity(world);
        for (rank, p) in placements.into_iter().enumerate() {
            let id = task_id(rank);
            let mut env = base_env.clone();
            env.insert(env::ALLOCATION_ID.into(), id.clone());
            env.insert(env::TRIAL_TOKEN.into(), tokens[rank].clone());
            env.insert(env::RANK.into(), rank.to_string());
            env.insert(env::WORLD_SIZE.into(), world.to_string());
            env.insert(env::PEER_HOSTS.into(), peer_hosts.join(","));
            let labels = BTreeMap::from([
                ("kind".to_string(), "trial".to_string()),
                ("experiment".to_string(), exp_id.to_string()),
                ("trial".to_string(), trial_id.to_string()),
                ("rank".to_string(), rank.to_string()),
            ]);
            specs.push((
                p.agent.clone(),
                TaskSpec {
                    allocation_id: id.clone(),
                    labels,
                    argv: argv.clone(),
                    env,
                    slot_ids: p.slots.clone(),
                    context_path: context_path.clone(),
                    token: tokens[rank].clone(),
                },
            ));
            self.auth.write().unwrap().insert(
                tokens[rank].clone(),
                TrialAuth {
                    allocation_id: id.clone(),
                    trial_id,
                    experiment_id: exp_id,
                    searcher_metric: searcher_metric.clone(),
                    time_metric: time_metric.clone(),
                    stop_requested: Arc::new(AtomicBool::new(false)),
                    agent_id: Some(p.agent.as_str().into()),
                },
            );
            inner.tasks.insert(id.clone(), allocation_id.clone());
            members.push(Member {
                task_id: id,
                agent_id: Some(p.agent),
                slot_ids: p.slots,
                state: AllocationState::Assigned,
                exit: None,
                reattach_deadline: None,
            });
        }
        inner.experiments.get_mut(&exp_id).unwrap().trials.get_mut(&trial_id).unwrap().allocation = Some(allocation_id.clone());
        inner.allocations.insert(allocation_id.clone(), LiveAllocation::new(trial_id, exp_id, sched_id, request, members));
        self.counters.trials_started.fetch_add(1, Ordering::Relaxed);
        let mut unsent = Vec::new();
        for (agent_id, spec) in specs {
            let task = spec.allocation_id.clone();
            let sent =
                inner.agents.get(&agent_id).and_then(|a| a.sender.as_ref()).is_some_and(|s| s.send(MasterMessage::StartTask(spec)).is_ok());
            if !sent {
                unsent.push(task);
            }
        }
        for task in unsent {
            Box::pin(self.member_exited(inner, &task, None, Some("the agent went away before the task started".into()))).await?;
        }
        Ok(())
    }

    /// The environment every member of a trial's allocation shares.
    fn trial_environment(&self, exp_id: i64, trial_id: i64, exp: &ExperimentRuntime, trial: &TrialRuntime) -> BTreeMap<String, String> {
        let mut task_env: BTreeMap<String, String> = exp.config.environment.clone();
        task_env.insert(env::EXPERIMENT_ID.into(), exp_id.to_string());
        task_env.insert(env::TRIAL_ID.into(), trial_id.to_string());
        task_env.insert(env::HPARAMS.into(), trial.hparams.to_string());
        task_env.insert(env::TRIAL_SEED.into(), trial.seed.to_string());
        let storage = self.checkpoint_storage(&exp.config);
        if !matches!(storage, StorageSpec::S3 { .. }) {
            task_env.insert(env::CHECKPOINT_DIR.into(), self.checkpoint_dir(&exp.config).display().to_string());
        }
        task_env.insert(env::CHECKPOINT_STORAGE.into(), serde_json::to_string(&storage).unwrap_or_default());
        if exp.config.checkpoint_storage.fsync {
            task_env.insert(env::CHECKPOINT_FSYNC.into(), "1".into());
        }
        task_env.insert(env::SEARCHER_METRIC.into(), exp.config.searcher.metric.clone());
        if let Some(uuid) = &trial.latest_checkpoint {
            task_env.insert(env::LATEST_CHECKPOINT.into(), uuid.clone());
        }
        task_env
    }

    /// Higher-priority work needs the slots: ask the trial to checkpoint and stop (its SDK sees
    /// `should_stop`); the scheduler kills it if it has not by the deadline. Either way it goes
    /// back to the queue without costing a restart.
    async fn preempt(&self, inner: &mut Inner, sched_id: drover_sched::AllocationId, deadline_ms: u64) -> Result<()> {
        let Some(id) = gang_of(inner, sched_id) else { return Ok(()) };
        let alloc = inner.allocations.get_mut(&id).expect("found above");
        alloc.preempted = true;
        let tasks: Vec<String> = alloc.members.iter().map(|m| m.task_id.clone()).collect();
        let trial_id = alloc.trial_id;
        for auth in self.auth.read().unwrap().values().filter(|a| tasks.contains(&a.allocation_id)) {
            auth.stop_requested.store(true, Ordering::Relaxed);
        }
        let seconds = (deadline_ms as i64 - now_ms()).max(0) / 1000;
        let line = LogRow {
            id: 0,
            ts_ms: now_ms(),
            stream: "master".into(),
            line: format!(
                "preempted for higher-priority work: checkpoint and stop within {seconds} s, or be killed; the trial is queued again without costing a restart"
            ),
        };
        self.store.append_logs(trial_id, &tasks[0], &[line]).await?;
        self.bump();
        Ok(())
    }

    /// One member's process ended. A failure stops the rest of the gang; once every member
    /// has ended, so has the allocation.
    pub(super) async fn member_exited(
        &self,
        inner: &mut Inner,
        task_id: &str,
        exit_code: Option<i32>,
        error: Option<String>,
    ) -> Result<()> {
        let Some(gang) = inner.tasks.get(task_id).cloned() else { return Ok(()) };
        let Some(alloc) = inner.allocations.get_mut(&gang) else { return Ok(()) };
        let Some(member) = alloc.member_mut(task_id) else { return Ok(()) };
        if member.exit.is_some() {
            return Ok(());
        }
        member.exit = Some((exit_code, error.clone()));
        member.state = AllocationState::Terminated;
        let failed = !(exit_code == Some(0) && error.is_none());
        if failed && alloc.first_failure.is_none() {
            alloc.first_failure = Some((exit_code, error.clone()));
        }
        self.store
            .update_allocation(
                task_id,
                AllocationUpdate {
                    state: Some(AllocationState::Terminated.as_str().into()),
                    exit_code: exit_code.map(i64::from),
                    error: error.clone(),
                    ended_at: Some(now_ms()),
                    ..Default::default()
                },
            )
            .await?;
        let alloc = &inner.allocations[&gang];
        if alloc.members.iter().all(|m| m.exit.is_some()) {
            return self.allocation_ended(inner, &gang, None).await;
        }
        if failed {
            // A gang is all or nothing: the others cannot go on without this one.
            self.send_kill(inner, &gang, STOP_GRACE_MS);
        }
        Ok(())
    }

    /// An allocation is over (every member ended, or `forced` says why it is given up): free
    /// its slots and move its trial on, requeued after a preemption, restarted if the failure
    /// leaves restarts.
    pub(super) async fn allocation_ended(&self, inner: &mut Inner, allocation_id: &str, forced: Option<String>) -> Result<()> {
        let Some(alloc) = inner.allocations.remove(allocation_id) else { return Ok(()) };
        let tasks: Vec<&str> = alloc.members.iter().map(|m| m.task_id.as_str()).collect();
        self.auth.write().unwrap().retain(|_, a| !tasks.contains(&a.allocation_id.as_str()));
        for m in &alloc.members {
            inner.tasks.remove(&m.task_id);
            if m.exit.is_none() {
                self.store
                    .update_allocation(
                        &m.task_id,
                        AllocationUpdate {
                            state: Some(AllocationState::Terminated.as_str().into()),
                            error: forced.clone(),
                            ended_at: Some(now_ms()),
                            ..Default::default()
                        },
                    )
                    .await?;
            }
        }
        let ended = inner.sched.allocation_ended(alloc.sched_id).ok();
        let requeued = ended.is_some_and(|e| e.requeued);
        // The first member that ended badly speaks for the gang.
        let failure = alloc.first_failure.clone().or_else(|| {
            alloc.members.iter().find_map(|m| match &m.exit {
                Some((Some(0), None)) => None,
                Some((code, error)) => Some((*code, error.clone())),
                None => Some((None, forced.clone())),
            })
        });
        let (exit_code, error) = match (&forced, failure) {
            (Some(reason), failure) => (failure.and_then(|f| f.0), Some(reason.clone())),
            (None, Some((code, error))) => (code, error.or_else(|| code.map(|c| format!("exited with code {c}")))),
            (None, None) => (Some(0), None),
        };
        let (exp_id, trial_id) = (alloc.experiment_id, alloc.trial_id);
        if let Some(reason) = &error {
            // Put the reason where the user looks first: the trial's own log.
            let line =
                LogRow { id: 0, ts_ms: now_ms(), stream: "master".into(), line: format!("allocation {allocation_id} ended: {reason}") };
            self.store.append_logs(trial_id, tasks[0], &[line]).await?;
        }
        if !requeued {
            inner.requests.remove(&alloc.request);
        }
        let Some(exp) = inner.experiments.get_mut(&exp_id) else { return Ok(()) };
        let Some(trial) = exp.trials.get_mut(&trial_id) else { return Ok(()) };
        if trial.allocation.as_deref() == Some(allocation_id) {
            trial.allocation = None;
        }
        if !requeued {
            trial.task_request = None;
        }
        let success = exit_code == Some(0) && error.is_none();
        let (state, restarts, request_id) = (trial.state, trial.restarts, trial.request_id);
        let max_restarts = exp.config.max_restarts;
        let exp_state = exp.state;
        let mut searcher_actions = Vec::new();
        match state {
            TrialState::Running if requeued => {
                // Preempted: back to its place in the queue, no restart charged.
                self.set_trial_state(inner, exp_id, trial_id, TrialState::Queued).await?;
            }
            TrialState::Running if success => {
                self.set_trial_state(inner, exp_id, trial_id, TrialState::Completed).await?;
                searcher_actions = inner.experiments.get_mut(&exp_id).unwrap().searcher.trial_exited(request_id);
            }
            TrialState::Running if restarts < max_restarts => {
                let restarts = restarts + 1;
                self.store.update_trial(trial_id, TrialUpdate { restarts: Some(restarts as i64), ..Default::default() }).await?;
                inner.experiments.get_mut(&exp_id).unwrap().trials.get_mut(&trial_id).unwrap().restarts = restarts;
                self.set_trial_state(inner, exp_id, trial_id, TrialState::Queued).await?;
                self.enqueue_trial(inner, exp_id, trial_id)?;
            }
            TrialState::Running => {
                self.set_trial_state(inner, exp_id, trial_id, TrialState::Error).await?;
                searcher_actions = inner.experiments.get_mut(&exp_id).unwrap().searcher.trial_failed(request_id);
            }
            TrialState::StoppingCompleted => {
                let to = if success || exit_code.is_some() { TrialState::Completed } else { TrialState::Error };
                self.set_trial_state(inner, exp_id, trial_id, to).await?;
                searcher_actions = inner.experiments.get_mut(&exp_id).unwrap().searcher.trial_exited(request_id);
            }
            TrialState::StoppingCanceled | TrialState::StoppingKilled => {
                self.set_trial_state(inner, exp_id, trial_id, TrialState::Canceled).await?;
                searcher_actions = inner.experiments.get_mut(&exp_id).unwrap().searcher.trial_exited(request_id);
            }
            TrialState::StoppingPaused => {
                self.set_trial_state(inner, exp_id, trial_id, TrialState::Paused).await?;
                if exp_state == ExperimentState::Active {
                    self.store.update_trial(trial_id, TrialUpdate { stop_requested: Some(false), ..Default::default() }).await?;
                    self.set_trial_state(inner, exp_id, trial_id, TrialState::Queued).await?;
                    self.enqueue_trial(inner, exp_id, trial_id)?;
                }
            }
            _ => {}
        }
        if requeued && state != TrialState::Running {
            // Stopped for good while it was being preempted: it does not go back.
            self.withdraw_request(inner, exp_id, trial_id);
        }
        self.apply_actions(inner, exp_id, searcher_actions).await?;
        Ok(())
    }
}

/// The live allocation the scheduler knows as `sched_id`.
fn gang_of(inner: &Inner, sched_id: drover_sched::AllocationId) -> Option<String> {
    inner.allocations.iter().find(|(_, a)| a.sched_id == sched_id).map(|(id, _)| id.clone())
}

/// The scheduler's kind for an agent's slot.
pub(super) fn slot_kind(kind: &drover_api::agent::SlotKind) -> SlotKind {
    match kind {
        drover_api::agent::SlotKind::Cpu => SlotKind::Cpu,
        drover_api::agent::SlotKind::Cuda => SlotKind::Gpu,
    }
}

/// The request a trial of this experiment makes. Whole slots are of the pool's kind (GPUs where
/// it has any, else CPUs); more than the pool's largest agent holds becomes a gang of whole
/// agents, Determined's rule for multi-node trials.
///
/// `strict` refuses a count that does not split into whole agents; otherwise (a trial accepted
/// earlier, the agents changed since) it is asked for whole and waits, saying why.
pub(super) fn trial_request(sched: &Scheduler, id: TaskRequest, exp_id: i64, config: &ExperimentConfig, strict: bool) -> Result<Request> {
    let r = &config.resources;
    let pool = r.resource_pool.clone();
    let (resources, members) = match r.gpu {
        Some(fraction) if fraction < 1.0 => (Resources::Gpu { fraction }, 1),
        Some(gpus) => split(sched, &pool, SlotKind::Gpu, gpus as u32, "resources.gpu", strict)?,
        None => {
            let kind = if sched.max_agent_slots(&pool, SlotKind::Gpu) > 0 { SlotKind::Gpu } else { SlotKind::Cpu };
            split(sched, &pool, kind, r.slots_per_trial, "resources.slots_per_trial", strict)?
        }
    };
    Ok(Request {
        id,
        pool,
        priority: r.priority.clamp(0, i64::from(drover_sched::MAX_PRIORITY)) as u8,
        weight: r.weight,
        group: format!("experiment {exp_id}"),
        resources,
        members,
        preemptible: true,
    })
}

fn split(sched: &Scheduler, pool: &str, kind: SlotKind, count: u32, field: &str, strict: bool) -> Result<(Resources, u32)> {
    let largest = sched.max_agent_slots(pool, kind);
    if largest == 0 || count <= largest || (!strict && !count.is_multiple_of(largest)) {
        return Ok((Resources::Slots { kind, count }, 1));
    }
    if !count.is_multiple_of(largest) {
        let kind = if kind == SlotKind::Gpu { "GPU" } else { "CPU" };
        return Err(Error::bad_field(
            field,
            format!(
                "{count} slots are more than one agent of pool `{pool}` has, so the trial spans agents, whole ones: ask for a multiple of {largest} (its largest agent's {kind} slots)"
            ),
        ));
    }
    Ok((Resources::Slots { kind, count: largest }, count / largest))
}

/// A refusal of the scheduler, named by the experiment-file field it comes from.
pub(super) fn request_error(config: &ExperimentConfig, e: &SubmitError) -> Error {
    let slots_field = if config.resources.gpu.is_some() { "resources.gpu" } else { "resources.slots_per_trial" };
    let field = match e {
        SubmitError::UnknownPool(_) => "resources.resource_pool",
        SubmitError::Priority(_) => "resources.priority",
        SubmitError::Weight(_) => "resources.weight",
        SubmitError::Fraction(_) | SubmitError::NoGpu { .. } => "resources.gpu",
        _ => slots_field,
    };
    let message = match e {
        SubmitError::UnknownPool(pool) => format!("unknown resource pool `{pool}`; the master's pools are given with `--pools`"),
        SubmitError::TooManySlots { pool, asked, max } => {
            format!("a trial needs {asked} slots but the largest agent of pool `{pool}` has {max}; it could never be scheduled")
        }
        SubmitError::GangTooLarge { pool, asked, max } => format!(
            "a trial needs {asked} agents' worth of slots at once but pool `{pool}` can hold only {max} of them; it could never be scheduled"
        ),
        other => other.to_string(),
    };
    Error::bad_field(field, message)
}
