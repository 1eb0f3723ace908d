//! Placement of queued trials on agents' free slots, the task a trial becomes, and what follows
//! when an allocation ends (restart, completion, the searcher told).

use super::*;

impl Master {
    /// Places queued trials on free slots, oldest first; a trial that does not fit yet lets
    /// later, smaller ones go ahead of it.
    pub(super) async fn schedule(&self, inner: &mut Inner) -> Result<()> {
        let mut waiting = VecDeque::new();
        while let Some(trial_id) = inner.queue.pop_front() {
            let Some((exp_id, exp)) = inner.experiments.iter().find(|(_, e)| e.trials.contains_key(&trial_id)) else { continue };
            let exp_id = *exp_id;
            if exp.state != ExperimentState::Active || exp.trials[&trial_id].state != TrialState::Queued {
                continue;
            }
            let need = exp.config.resources.slots_per_trial as usize;
            let placement = inner.agents.iter().find_map(|(agent_id, a)| {
                a.sender.as_ref()?;
                let free: Vec<String> = a.slots.iter().filter(|s| !a.used.contains_key(&s.id)).map(|s| s.id.clone()).collect();
                (free.len() >= need).then(|| (agent_id.clone(), free.into_iter().take(need).collect::<Vec<_>>()))
            });
            match placement {
                Some((agent_id, slot_ids)) => self.start_allocation(inner, exp_id, trial_id, agent_id, slot_ids).await?,
                None => waiting.push_back(trial_id),
            }
        }
        inner.queue = waiting;
        Ok(())
    }

    pub(super) async fn start_allocation(
        &self,
        inner: &mut Inner,
        exp_id: i64,
        trial_id: i64,
        agent_id: String,
        slot_ids: Vec<String>,
    ) -> Result<()> {
        let allocation_id = uuid::Uuid::new_v4().to_string();
        let token = random_token();
        self.store
            .create_allocation(NewAllocation {
                id: allocation_id.clone(),
                trial_id,
                token: token.clone(),
                state: AllocationState::Assigned.as_str().into(),
                agent_id: Some(agent_id.clone()),
                slot_ids: slot_ids.clone(),
                created_at: now_ms(),
            })
            .await?;
        self.set_trial_state(inner, exp_id, trial_id, TrialState::Running).await?;
        let exp = &inner.experiments[&exp_id];
        let trial = &exp.trials[&trial_id];
        let mut task_env: BTreeMap<String, String> = exp.config.environment.clone();
        task_env.insert(env::EXPERIMENT_ID.into(), exp_id.to_string());
        task_env.insert(env::TRIAL_ID.into(), trial_id.to_string());
        task_env.insert(env::ALLOCATION_ID.into(), allocation_id.clone());
        task_env.insert(env::TRIAL_TOKEN.into(), token.clone());
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
        let spec = TaskSpec {
            allocation_id: allocation_id.clone(),
            experiment_id: exp_id,
            trial_id,
            argv: exp.config.entrypoint.argv(),
            env: task_env,
            slot_ids: slot_ids.clone(),
            context_path: exp.has_context.then(|| format!("/api/v1/experiments/{exp_id}/context")),
            token: token.clone(),
        };
        let auth = TrialAuth {
            allocation_id: allocation_id.clone(),
            trial_id,
            experiment_id: exp_id,
            searcher_metric: exp.config.searcher.metric.as_str().into(),
            time_metric: exp.config.searcher.time_metric.as_deref().map(Into::into),
            stop_requested: Arc::new(AtomicBool::new(false)),
            agent_id: Some(agent_id.as_str().into()),
        };
        self.auth.write().unwrap().insert(token, auth);
        let agent = inner.agents.get_mut(&agent_id).expect("placement chose a known agent");
        for s in &slot_ids {
            agent.used.insert(s.clone(), allocation_id.clone());
        }
        let sent = agent.sender.as_ref().is_some_and(|s| s.send(MasterMessage::StartTask(spec)).is_ok());
        inner.experiments.get_mut(&exp_id).unwrap().trials.get_mut(&trial_id).unwrap().allocation = Some(allocation_id.clone());
        inner.allocations.insert(
            allocation_id.clone(),
            LiveAllocation {
                trial_id,
                experiment_id: exp_id,
                agent_id: Some(agent_id),
                slot_ids,
                state: AllocationState::Assigned,
                reattach_deadline: None,
            },
        );
        self.counters.trials_started.fetch_add(1, Ordering::Relaxed);
        if !sent {
            Box::pin(self.allocation_ended(inner, &allocation_id, None, Some("the agent went away before the task started".into())))
                .await?;
        }
        Ok(())
    }

    /// An allocation is over: free its slots and move its trial on, restarting it if the
    /// failure leaves restarts.
    pub(super) async fn allocation_ended(
        &self,
        inner: &mut Inner,
        allocation_id: &str,
        exit_code: Option<i32>,
        error: Option<String>,
    ) -> Result<()> {
        let Some(alloc) = inner.allocations.remove(allocation_id) else { return Ok(()) };
        self.auth.write().unwrap().retain(|_, a| a.allocation_id != allocation_id);
        if let Some(agent) = alloc.agent_id.as_ref().and_then(|a| inner.agents.get_mut(a)) {
            agent.used.retain(|_, a| a != allocation_id);
        }
        self.store
            .update_allocation(
                allocation_id,
                AllocationUpdate {
                    state: Some(AllocationState::Terminated.as_str().into()),
                    exit_code: exit_code.map(i64::from),
                    error: error.clone(),
                    ended_at: Some(now_ms()),
                    ..Default::default()
                },
            )
            .await?;
        let (exp_id, trial_id) = (alloc.experiment_id, alloc.trial_id);
        if let Some(reason) = &error {
            // Put the reason where the user looks first: the trial's own log.
            let line =
                LogRow { id: 0, ts_ms: now_ms(), stream: "master".into(), line: format!("allocation {allocation_id} ended: {reason}") };
            self.store.append_logs(trial_id, allocation_id, &[line]).await?;
        }
        let Some(exp) = inner.experiments.get_mut(&exp_id) else { return Ok(()) };
        let Some(trial) = exp.trials.get_mut(&trial_id) else { return Ok(()) };
        if trial.allocation.as_deref() == Some(allocation_id) {
            trial.allocation = None;
        }
        let success = exit_code == Some(0) && error.is_none();
        let (state, restarts, request_id) = (trial.state, trial.restarts, trial.request_id);
        let max_restarts = exp.config.max_restarts;
        let exp_state = exp.state;
        let mut searcher_actions = Vec::new();
        match state {
            TrialState::Running if success => {
                self.set_trial_state(inner, exp_id, trial_id, TrialState::Completed).await?;
                searcher_actions = inner.experiments.get_mut(&exp_id).unwrap().searcher.trial_exited(request_id);
            }
            TrialState::Running if restarts < max_restarts => {
                let restarts = restarts + 1;
                self.store.update_trial(trial_id, TrialUpdate { restarts: Some(restarts as i64), ..Default::default() }).await?;
                inner.experiments.get_mut(&exp_id).unwrap().trials.get_mut(&trial_id).unwrap().restarts = restarts;
                self.set_trial_state(inner, exp_id, trial_id, TrialState::Queued).await?;
                inner.queue.push_back(trial_id);
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
                    inner.queue.push_back(trial_id);
                }
            }
            _ => {}
        }
        self.apply_actions(inner, exp_id, searcher_actions).await?;
        Ok(())
    }
}
