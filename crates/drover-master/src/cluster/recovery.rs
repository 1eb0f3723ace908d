//! A starting master rebuilds its view of unfinished work from the store.

use super::*;

impl Master {
    /// Rebuilds the in-memory state of unfinished experiments from the store. Trials that were
    /// running wait for their agent to reattach them; the rest are queued again.
    pub(super) async fn recover(&self) -> Result<()> {
        let mut inner = self.inner.lock().await;
        let live_allocations = self.store.live_allocations().await?;
        let reattach_by = Instant::now() + self.config.agent_reconnect_wait;
        for row in self.store.list_experiments().await? {
            let state: ExperimentState = row.state.parse().map_err(Error::internal)?;
            if state.is_terminal() {
                // Its checkpoint policy is applied again: a no-op when it already ran, and the
                // collection a crash interrupted (or never started) when it did not.
                let _ = self.gc_queue.send(row.id);
                continue;
            }
            let config: ExperimentConfig =
                serde_json::from_str(&row.config_json).map_err(|e| Error::internal(format!("experiment {}: {e}", row.id)))?;
            let searcher = match self.store.load_searcher_snapshot(row.id).await? {
                Some(snapshot) => Searcher::restore(&snapshot).map_err(|e| Error::internal(e.to_string()))?,
                None => return Err(Error::internal(format!("experiment {} has no searcher snapshot", row.id))),
            };
            let has_context = self.store.has_context(row.id).await?;
            let mut runtime = ExperimentRuntime::new(config, state, has_context, searcher);
            for t in self.store.list_trials(row.id).await? {
                let mut trial = trial_runtime(&t)?;
                if trial.state.has_process() {
                    match live_allocations.iter().find(|a| a.trial_id == t.id) {
                        Some(a) => {
                            trial.allocation = Some(a.id.clone());
                            inner.allocations.insert(
                                a.id.clone(),
                                LiveAllocation {
                                    trial_id: t.id,
                                    experiment_id: row.id,
                                    agent_id: a.agent_id.clone(),
                                    slot_ids: a.slot_ids.clone(),
                                    state: a.state.parse().unwrap_or(AllocationState::Assigned),
                                    reattach_deadline: Some(reattach_by),
                                },
                            );
                            self.auth.write().unwrap().insert(
                                a.token.clone(),
                                TrialAuth {
                                    allocation_id: a.id.clone(),
                                    trial_id: t.id,
                                    experiment_id: row.id,
                                    searcher_metric: runtime.config.searcher.metric.as_str().into(),
                                    time_metric: runtime.config.searcher.time_metric.as_deref().map(Into::into),
                                    stop_requested: Arc::new(AtomicBool::new(t.stop_requested)),
                                    agent_id: a.agent_id.as_deref().map(Into::into),
                                },
                            );
                        }
                        None => {
                            // The process cannot be found again; run the trial anew.
                            trial.state = TrialState::Queued;
                            self.store.update_trial(t.id, TrialUpdate { state: Some("QUEUED".into()), ..Default::default() }).await?;
                        }
                    }
                }
                if trial.state == TrialState::Queued {
                    inner.queue.push_back(t.id);
                }
                runtime.by_request.insert(trial.request_id, t.id);
                runtime.trials.insert(t.id, trial);
            }
            inner.experiments.insert(row.id, runtime);
        }
        // Allocations of finished experiments, or never placed, are over.
        for a in live_allocations {
            if !inner.allocations.contains_key(&a.id) {
                self.store
                    .update_allocation(
                        &a.id,
                        AllocationUpdate {
                            state: Some("TERMINATED".into()),
                            ended_at: Some(now_ms()),
                            error: Some("master restarted".into()),
                            ..Default::default()
                        },
                    )
                    .await?;
            }
        }
        let ids: Vec<i64> = inner.experiments.keys().copied().collect();
        for id in ids {
            self.settle_if_done(&mut inner, id).await?;
        }
        Ok(())
    }
}
