//! A starting master rebuilds its view of unfinished work from the store.

use super::*;

impl Master {
    /// Takes back a trial's running allocation from its store rows (one per member, in rank
    /// order): the scheduler holds its slots, the members wait for their agents to reattach
    /// them by `reattach_by`, and their tokens work again. `None` when the rows do not make a
    /// request the scheduler accepts (the pools changed): the trial then runs anew.
    fn adopt(
        &self,
        inner: &mut Inner,
        exp_id: i64,
        trial: &TrialRow,
        runtime: &ExperimentRuntime,
        rows: &[&drover_store::AllocationRow],
        reattach_by: Instant,
    ) -> Option<(String, TaskRequest)> {
        let (trial_id, stop_requested) = (trial.id, trial.stop_requested);
        let id = inner.next_request;
        let mut request = placement::trial_request(&inner.sched, id, exp_id, &runtime.config, false).ok()?;
        // With no agent back yet nothing is split: the rows say how the gang was placed. The
        // slot kind is the agent's naming (`gpuN` for GPUs, drover's own convention).
        request.members = rows.len() as u32;
        if let drover_sched::Resources::Slots { kind, count } = &mut request.resources {
            *count = rows[0].slot_ids.len() as u32;
            if rows[0].slot_ids.iter().all(|s| s.starts_with("gpu")) {
                *kind = drover_sched::SlotKind::Gpu;
            }
        }
        let units = request.units_per_slot();
        let placements = rows
            .iter()
            .map(|a| drover_sched::Placement { agent: a.agent_id.clone().unwrap_or_default(), slots: a.slot_ids.clone(), units })
            .collect();
        let sched_id = match inner.sched.adopt(request, placements, now_ms().max(0) as u64) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(trial = trial_id, "cannot take back the running allocation: {e}");
                return None;
            }
        };
        inner.next_request += 1;
        inner.requests.insert(id, TaskOwner::Trial { experiment_id: exp_id, trial_id });
        let allocation_id = rows[0].id.split('.').next().unwrap_or_default().to_string();
        let mut members = Vec::with_capacity(rows.len());
        for a in rows {
            inner.tasks.insert(a.id.clone(), allocation_id.clone());
            self.auth.write().unwrap().insert(
                a.token.clone(),
                TrialAuth {
                    allocation_id: a.id.clone(),
                    trial_id,
                    experiment_id: exp_id,
                    searcher_metric: runtime.config.searcher.metric.as_str().into(),
                    time_metric: runtime.config.searcher.time_metric.as_deref().map(Into::into),
                    stop_requested: Arc::new(AtomicBool::new(stop_requested)),
                    agent_id: a.agent_id.as_deref().map(Into::into),
                },
            );
            members.push(Member {
                task_id: a.id.clone(),
                agent_id: a.agent_id.clone(),
                slot_ids: a.slot_ids.clone(),
                state: a.state.parse().unwrap_or(AllocationState::Assigned),
                exit: None,
                reattach_deadline: Some(reattach_by),
            });
        }
        inner.allocations.insert(allocation_id.clone(), LiveAllocation::new(trial_id, exp_id, sched_id, id, members));
        Some((allocation_id, id))
    }

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
            let mut queued = Vec::new();
            for t in self.store.list_trials(row.id).await? {
                let mut trial = trial_runtime(&t)?;
                if trial.state.has_process() {
                    // Its members, in rank order (`{allocation}.{rank}`, or the allocation alone).
                    let mut rows: Vec<&drover_store::AllocationRow> = live_allocations.iter().filter(|a| a.trial_id == t.id).collect();
                    rows.sort_by_key(|a| a.id.rsplit_once('.').and_then(|(_, r)| r.parse::<usize>().ok()).unwrap_or(0));
                    let adopted = if rows.is_empty() { None } else { self.adopt(&mut inner, row.id, &t, &runtime, &rows, reattach_by) };
                    match adopted {
                        Some((allocation_id, request)) => {
                            trial.allocation = Some(allocation_id);
                            trial.task_request = Some(request);
                        }
                        None => {
                            // The process cannot be found again; run the trial anew.
                            trial.state = TrialState::Queued;
                            self.store.update_trial(t.id, TrialUpdate { state: Some("QUEUED".into()), ..Default::default() }).await?;
                        }
                    }
                }
                if trial.state == TrialState::Queued {
                    queued.push(t.id);
                }
                runtime.by_request.insert(trial.request_id, t.id);
                runtime.trials.insert(t.id, trial);
            }
            inner.experiments.insert(row.id, runtime);
            // Queued again in the order they were created.
            for trial_id in queued {
                if let Err(e) = self.enqueue_trial(&mut inner, row.id, trial_id) {
                    // The master's pools changed under it: the trial cannot wait anywhere.
                    let line = LogRow {
                        id: 0,
                        ts_ms: now_ms(),
                        stream: "master".into(),
                        line: format!("cannot queue the trial: {}", e.body.message),
                    };
                    self.store.append_logs(trial_id, "", &[line]).await?;
                    self.set_trial_state(&mut inner, row.id, trial_id, TrialState::Error).await?;
                }
            }
        }
        // Allocations of finished experiments, or never placed, are over.
        for a in live_allocations {
            if !inner.tasks.contains_key(&a.id) {
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
