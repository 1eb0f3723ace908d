//! The experiment and trial lifecycle under the control-plane lock: creation (everything
//! checked before anything is written), the searcher's actions, state changes, stops, user
//! commands, deletion, and where an experiment's checkpoints live.

use super::*;

impl Master {
    /// Validates and stores a new experiment and starts its search.
    pub async fn create_experiment(
        &self,
        config_text: &str,
        config_file: Option<&str>,
        context: Option<Vec<u8>>,
        activate: bool,
    ) -> Result<i64> {
        // Everything is checked before anything is written: a refused experiment leaves no row
        // and no file. Parsing (YAML, the searcher's plan) and the context's decompression are
        // CPU work on untrusted input, so they run off the async workers.
        if let Some(bytes) = &context
            && bytes.len() > self.config.max_context_bytes
        {
            return Err(Error::too_large(format!(
                "the context is {} bytes, more than the limit of {} bytes",
                bytes.len(),
                self.config.max_context_bytes
            )));
        }
        let (text, file) = (config_text.to_string(), config_file.map(str::to_string));
        let max_unpacked = self.config.max_context_unpacked_bytes;
        let (context, config, mut searcher) = tokio::task::spawn_blocking(move || -> Result<_> {
            let mut config = ExperimentConfig::parse(&text, file.as_deref())?;
            if let Some(bytes) = &context {
                crate::context::validate(bytes, max_unpacked)?;
            }
            let seed = *config.searcher.seed.get_or_insert_with(|| uuid::Uuid::new_v4().as_u64_pair().0 >> 1);
            let searcher = Searcher::new(&config, seed).map_err(|e| Error::bad_field("searcher", e.to_string()))?;
            Ok((context, config, searcher))
        })
        .await
        .map_err(|e| Error::internal(format!("checking the experiment: {e}")))??;
        // Before the probe, which may create the storage directory: a refusal leaves nothing.
        self.check_fits(&*self.inner.lock().await, &config)?;
        // A missing bucket or wrong credentials must fail now, not at the first checkpoint
        // hours from now: write, read back and delete a probe object.
        let spec = self.checkpoint_storage(&config);
        crate::probe::check_storage(&spec, self.config.storage_probe_timeout).await?;

        let mut inner = self.inner.lock().await;
        // Again: agents may have come and gone during the probe.
        self.check_fits(&inner, &config)?;
        let state = if activate { ExperimentState::Active } else { ExperimentState::Paused };
        let has_context = context.is_some();
        let id = self
            .store
            .create_experiment(NewExperiment {
                name: config.name.clone(),
                description: config.description.clone(),
                state: state.as_str().into(),
                config_json: serde_json::to_string(&config).map_err(|e| Error::internal(e.to_string()))?,
                config_yaml: config_text.to_string(),
                context,
                created_at: now_ms(),
            })
            .await?;
        let actions = searcher.initial_trials();
        inner.experiments.insert(id, ExperimentRuntime::new(config, state, has_context, searcher));
        if let Err(e) = self.apply_actions(&mut inner, id, actions).await {
            // Refused means nothing changed: take back the row and what was queued.
            let trials: Vec<i64> = inner.experiments.get(&id).map(|e| e.trials.keys().copied().collect()).unwrap_or_default();
            for trial_id in trials {
                self.withdraw_request(&mut inner, id, trial_id);
            }
            inner.experiments.remove(&id);
            inner.searcher_watch.remove(&id);
            if let Err(undo) = self.store.delete_experiment(id).await {
                tracing::error!(experiment = id, "cannot take back a failed creation: {}", undo);
            }
            return Err(e);
        }
        self.counters.experiments_created.fetch_add(1, Ordering::Relaxed);
        // The experiment exists now; a placement that fails is retried on the next tick, and
        // must not make the client believe the creation failed.
        if let Err(e) = self.schedule(&mut inner).await {
            tracing::error!(experiment = id, "scheduling after creation: {}", e.body.message);
        }
        self.bump();
        Ok(id)
    }

    /// Refuses an experiment whose trials its pool could never hold (an unknown pool, more
    /// slots than its agents have); one that can fit later is accepted and waits.
    pub(super) fn check_fits(&self, inner: &Inner, config: &ExperimentConfig) -> Result<()> {
        // Request 0 is never issued, so the check cannot clash with a live request.
        let request = placement::trial_request(&inner.sched, 0, 0, config, true)?;
        inner.sched.check(&request).map_err(|e| placement::request_error(config, &e))?;
        Ok(())
    }

    /// Carries out searcher actions, then saves the searcher so a restart resumes from here.
    pub(super) async fn apply_actions(&self, inner: &mut Inner, exp_id: i64, actions: Vec<Action>) -> Result<()> {
        let mut pending: VecDeque<Action> = actions.into();
        while let Some(action) = pending.pop_front() {
            let Some(exp) = inner.experiments.get_mut(&exp_id) else { return Ok(()) };
            match action {
                Action::Create { request_id, hparams, seed, checkpoint_from } => {
                    if exp.state.is_stopping() || exp.state.is_terminal() {
                        continue;
                    }
                    let trial_state = if exp.state == ExperimentState::Paused { TrialState::Paused } else { TrialState::Queued };
                    let hparams = Value::Object(hparams);
                    let trial_id = self
                        .store
                        .create_trial(NewTrial {
                            experiment_id: exp_id,
                            request_id: request_id as i64,
                            state: trial_state.as_str().into(),
                            hparams_json: hparams.to_string(),
                            seed: seed as i64,
                            created_at: now_ms(),
                        })
                        .await?;
                    // A clone starts from its source's latest checkpoint, as a restart would.
                    let latest_checkpoint = checkpoint_from
                        .and_then(|source| exp.by_request.get(&source))
                        .and_then(|source| exp.trials.get(source))
                        .and_then(|source| source.latest_checkpoint.clone());
                    if let Some(uuid) = &latest_checkpoint {
                        self.store
                            .update_trial(trial_id, TrialUpdate { latest_checkpoint: Some(uuid.clone()), ..Default::default() })
                            .await?;
                    }
                    exp.trials.insert(
                        trial_id,
                        TrialRuntime {
                            request_id,
                            state: trial_state,
                            restarts: 0,
                            allocation: None,
                            task_request: None,
                            hparams,
                            seed: seed as i64,
                            latest_checkpoint,
                        },
                    );
                    exp.by_request.insert(request_id, trial_id);
                    pending.extend(exp.searcher.trial_created(request_id));
                    if trial_state == TrialState::Queued {
                        self.enqueue_trial(inner, exp_id, trial_id)?;
                    }
                }
                Action::Stop { request_id } => {
                    if let Some(&trial_id) = exp.by_request.get(&request_id) {
                        self.stop_trial(inner, exp_id, trial_id, TrialState::StoppingCompleted).await?;
                    }
                }
                Action::Shutdown { failure } => {
                    if let Some(why) = exp.searcher.pbt().and_then(|p| p.ended_because()) {
                        tracing::info!(experiment = exp_id, "pbt ends: {why}");
                    }
                    if exp.state == ExperimentState::Active || exp.state == ExperimentState::Paused {
                        let to = if failure { ExperimentState::StoppingError } else { ExperimentState::StoppingCompleted };
                        self.set_experiment_state(inner, exp_id, to).await?;
                    }
                }
            }
        }
        if let Some(exp) = inner.experiments.get_mut(&exp_id) {
            self.store.save_searcher_snapshot(exp_id, &exp.searcher.snapshot()).await?;
            self.write_lineage(exp_id, exp).await;
            advisor::wake_advisors(inner, exp_id);
        }
        self.settle_if_done(inner, exp_id).await
    }

    pub(super) async fn set_experiment_state(&self, inner: &mut Inner, exp_id: i64, to: ExperimentState) -> Result<()> {
        let exp = inner.experiments.get_mut(&exp_id).ok_or_else(|| Error::not_found(format!("experiment {exp_id}")))?;
        let to = exp.state.transition(to).map_err(|e| Error::conflict(e.to_string()))?;
        let ended = to.is_terminal().then(now_ms);
        self.store.set_experiment_state(exp_id, to.as_str(), ended).await?;
        exp.state = to;
        if to.is_terminal() {
            inner.experiments.remove(&exp_id);
            // Dropping the sender wakes waiting advisors, which then read the final log.
            inner.searcher_watch.remove(&exp_id);
            // The experiment's checkpoint policy applies once it has ended.
            let _ = self.gc_queue.send(exp_id);
        }
        self.bump();
        Ok(())
    }

    /// Ends a stopping experiment once none of its trials can run any more.
    pub(super) async fn settle_if_done(&self, inner: &mut Inner, exp_id: i64) -> Result<()> {
        let Some(exp) = inner.experiments.get(&exp_id) else { return Ok(()) };
        let Some(to) = exp.state.settles_to() else { return Ok(()) };
        if exp.trials.values().any(|t| t.state.has_process()) {
            return Ok(());
        }
        // Trials that never got to run end with the experiment.
        let waiting: Vec<i64> = exp.trials.iter().filter(|(_, t)| !t.state.is_terminal()).map(|(id, _)| *id).collect();
        for trial_id in waiting {
            self.set_trial_state(inner, exp_id, trial_id, TrialState::Canceled).await?;
        }
        self.set_experiment_state(inner, exp_id, to).await
    }

    pub(super) async fn set_trial_state(&self, inner: &mut Inner, exp_id: i64, trial_id: i64, to: TrialState) -> Result<()> {
        let trial = inner
            .experiments
            .get_mut(&exp_id)
            .and_then(|e| e.trials.get_mut(&trial_id))
            .ok_or_else(|| Error::not_found(format!("trial {trial_id}")))?;
        let to = trial.state.transition(to).map_err(|e| Error::conflict(e.to_string()))?;
        let ended = to.is_terminal().then(now_ms);
        self.store.update_trial(trial_id, TrialUpdate { state: Some(to.as_str().into()), ended_at: ended, ..Default::default() }).await?;
        trial.state = to;
        if to.is_terminal() {
            self.counters.trials_finished.fetch_add(1, Ordering::Relaxed);
        }
        if to != TrialState::Queued && trial.task_request.is_some_and(|r| inner.sched.is_pending(r)) {
            self.withdraw_request(inner, exp_id, trial_id);
        }
        self.bump();
        Ok(())
    }

    /// Moves a trial towards a stop: a waiting trial ends at once, a running one is asked to
    /// stop (its SDK sees `should_stop`) and, unless `to` is a graceful completion, signalled.
    pub(super) async fn stop_trial(&self, inner: &mut Inner, exp_id: i64, trial_id: i64, to: TrialState) -> Result<()> {
        let Some(trial) = inner.experiments.get(&exp_id).and_then(|e| e.trials.get(&trial_id)) else { return Ok(()) };
        let (state, allocation) = (trial.state, trial.allocation.clone());
        if state.is_terminal() {
            return Ok(());
        }
        self.store.update_trial(trial_id, TrialUpdate { stop_requested: Some(true), ..Default::default() }).await?;
        for auth in self.auth.read().unwrap().values().filter(|a| a.trial_id == trial_id) {
            auth.stop_requested.store(true, Ordering::Relaxed);
        }
        if !state.has_process() {
            let end = match to {
                TrialState::StoppingPaused => TrialState::Paused,
                TrialState::StoppingCompleted => TrialState::Completed,
                _ => TrialState::Canceled,
            };
            if state != end && state.can_become(end) {
                self.set_trial_state(inner, exp_id, trial_id, end).await?;
                if end.is_terminal() {
                    let request_id = inner.experiments[&exp_id].trials[&trial_id].request_id;
                    let actions = inner.experiments.get_mut(&exp_id).unwrap().searcher.trial_exited(request_id);
                    Box::pin(self.apply_actions(inner, exp_id, actions)).await?;
                }
            }
            return Ok(());
        }
        if state != to && state.can_become(to) {
            self.set_trial_state(inner, exp_id, trial_id, to).await?;
        }
        // Stopped for good (or paused, which queues it anew): not requeued by a preemption.
        self.withdraw_request(inner, exp_id, trial_id);
        let grace = match to {
            TrialState::StoppingKilled => Some(0),
            TrialState::StoppingCanceled | TrialState::StoppingPaused => Some(STOP_GRACE_MS),
            // The searcher's stop is a request: the trial finishes its step and exits itself.
            _ => None,
        };
        if let (Some(grace_ms), Some(allocation_id)) = (grace, allocation) {
            self.send_kill(inner, &allocation_id, grace_ms);
        }
        Ok(())
    }

    /// Stops every member of an allocation still running: SIGTERM, then SIGKILL after `grace_ms`.
    pub(super) fn send_kill(&self, inner: &mut Inner, allocation_id: &str, grace_ms: u64) {
        let Some(alloc) = inner.allocations.get_mut(allocation_id) else { return };
        for m in alloc.members.iter_mut().filter(|m| m.exit.is_none()) {
            if let Some(sender) = m.agent_id.as_ref().and_then(|a| inner.agents.get(a)).and_then(|a| a.sender.as_ref()) {
                let _ = sender.send(MasterMessage::KillTask { allocation_id: m.task_id.clone(), grace_ms });
            }
            if m.state.can_become(AllocationState::Terminating) {
                m.state = AllocationState::Terminating;
            }
        }
    }

    pub async fn command(&self, exp_id: i64, command: ExperimentCommand) -> Result<()> {
        let mut inner = self.inner.lock().await;
        let Some(exp) = inner.experiments.get(&exp_id) else {
            let row = self.store.get_experiment(exp_id).await?;
            return Err(Error::conflict(format!("experiment {exp_id} is {} and can no longer change", row.state)));
        };
        let current = exp.state;
        let trial_ids: Vec<i64> = exp.trials.keys().copied().collect();
        let (exp_to, trial_to) = match command {
            ExperimentCommand::Pause => (ExperimentState::Paused, TrialState::StoppingPaused),
            ExperimentCommand::Activate => (ExperimentState::Active, TrialState::Queued),
            ExperimentCommand::Cancel => (ExperimentState::StoppingCanceled, TrialState::StoppingCanceled),
            ExperimentCommand::Kill => (ExperimentState::StoppingKilled, TrialState::StoppingKilled),
        };
        if current == exp_to {
            return Ok(());
        }
        self.set_experiment_state(&mut inner, exp_id, exp_to).await?;
        let mut trial_ids = trial_ids;
        trial_ids.sort_unstable();
        for trial_id in trial_ids {
            if command == ExperimentCommand::Activate {
                let state = inner.experiments[&exp_id].trials[&trial_id].state;
                if state == TrialState::Paused {
                    self.store.update_trial(trial_id, TrialUpdate { stop_requested: Some(false), ..Default::default() }).await?;
                    self.set_trial_state(&mut inner, exp_id, trial_id, TrialState::Queued).await?;
                    self.enqueue_trial(&mut inner, exp_id, trial_id)?;
                }
            } else if inner.experiments.contains_key(&exp_id) {
                self.stop_trial(&mut inner, exp_id, trial_id, trial_to).await?;
            }
        }
        self.settle_if_done(&mut inner, exp_id).await?;
        self.schedule(&mut inner).await?;
        Ok(())
    }

    /// Deletes a finished experiment with its trials, metrics, logs and checkpoint files.
    pub async fn delete_experiment(&self, exp_id: i64) -> Result<()> {
        // Checked under the lock, deleted outside it: an ended experiment never runs again,
        // and a slow (or hostile, ever-refilled) storage must not hold the control plane.
        if self.inner.lock().await.experiments.contains_key(&exp_id) {
            return Err(Error::conflict(format!("experiment {exp_id} is still running; cancel or kill it first")));
        }
        let checkpoints = self.store.list_experiment_checkpoints(exp_id).await?;
        if let Some(pinned) = checkpoints.iter().find(|c| c.pinned) {
            return Err(Error::conflict(format!("checkpoint {} of experiment {exp_id} is pinned; unpin it first", pinned.uuid)));
        }
        // Files first, rows second: a failure leaves rows pointing at what is left, never
        // files that nothing points at. A file already gone is not an error.
        if !checkpoints.is_empty() {
            let storage = self.experiment_storage(exp_id).await?;
            for c in &checkpoints {
                storage.delete_prefix(&c.uuid).await.map_err(|e| Error::internal(format!("cannot delete checkpoint {}: {e}", c.uuid)))?;
            }
        }
        self.store.delete_experiment(exp_id).await?;
        self.bump();
        Ok(())
    }

    /// Where an experiment's checkpoints live: `{uuid}/{files}` under this storage.
    pub fn checkpoint_storage(&self, config: &ExperimentConfig) -> StorageSpec {
        let c = &config.checkpoint_storage;
        match c.kind.as_str() {
            "s3" => {
                let prefix = [c.prefix.as_deref(), c.storage_path.as_deref()]
                    .into_iter()
                    .flatten()
                    .map(|p| p.trim_matches('/'))
                    .filter(|p| !p.is_empty())
                    .collect::<Vec<_>>()
                    .join("/");
                StorageSpec::S3 {
                    bucket: c.bucket.clone().unwrap_or_default(),
                    prefix: (!prefix.is_empty()).then_some(prefix),
                    endpoint_url: c.endpoint_url.clone(),
                    region: c.region.clone(),
                    access_key_id: c.access_key_id.clone(),
                    secret_access_key: c.secret_access_key.clone(),
                }
            }
            // The root is the operator's (or the config's) and trusted as given; `storage_path`
            // is a prefix inside it, walked without following links like every key.
            "shared_fs" => StorageSpec::SharedFs { path: self.checkpoint_base(config), prefix: c.storage_path.clone() },
            _ => StorageSpec::Directory { path: self.checkpoint_base(config), prefix: c.storage_path.clone() },
        }
    }

    /// The checkpoint directory of a file-system storage (on the agents' file system).
    pub fn checkpoint_dir(&self, config: &ExperimentConfig) -> PathBuf {
        let root = self.checkpoint_base(config);
        match &config.checkpoint_storage.storage_path {
            Some(sub) => root.join(sub),
            None => root,
        }
    }

    /// The root of a file-system checkpoint storage, before `storage_path`.
    pub(super) fn checkpoint_base(&self, config: &ExperimentConfig) -> PathBuf {
        config.checkpoint_storage.path.as_ref().map_or_else(|| self.config.checkpoint_root.clone(), PathBuf::from)
    }
}
