//! The master's side of the `custom` searcher: an advisor process long-polls the search's
//! events and posts actions. The search itself (the event log, what an action may do) is
//! `drover_search::custom`; here are the lock, the store and the wake-ups.
//!
//! Every change of a custom search's log goes through `apply_actions`, which saves the
//! snapshot and then wakes the experiment's waiting advisors; an experiment that ends drops its
//! watch, which wakes them too.

use std::collections::HashMap;
use std::time::Duration;

use drover_api::rest::{self, AdvisorActionsResponse, CreatedTrial, SearcherEvent, SearcherEventKind, SearcherEvents};
use drover_core::ExperimentConfig;
use drover_search::{Action, AdvisorAction, Event, RequestId, Searcher, SequencedEvent};
use tokio::sync::watch;

use super::{Inner, Master};
use crate::error::{Error, Result};

/// Most events in one answer; the advisor asks again for the rest.
const MAX_EVENTS_PER_PAGE: usize = 1000;

impl Master {
    /// A custom search's events after `after`, acknowledging (and dropping) the ones up to it.
    /// When there are none, waits up to `timeout` for one, and answers an empty page then.
    pub async fn searcher_events(&self, exp_id: i64, after: u64, timeout: Duration) -> Result<SearcherEvents> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last_look = timeout.is_zero();
        loop {
            let mut news = {
                let mut inner = self.inner.lock().await;
                let Some(exp) = inner.experiments.get_mut(&exp_id) else {
                    drop(inner);
                    return self.finished_search_events(exp_id, after).await;
                };
                require_custom(&exp.config, exp_id)?;
                if exp.searcher.acknowledge_events(after)? {
                    self.store.save_searcher_snapshot(exp_id, &exp.searcher.snapshot()).await?;
                }
                let events = exp.searcher.events_after(after, MAX_EVENTS_PER_PAGE);
                if !events.is_empty() || last_look {
                    return Ok(page(events, after, &exp.searcher, exp.state.as_str()));
                }
                // Subscribed under the lock that recording an event needs: nothing slips between.
                inner.searcher_watch.entry(exp_id).or_insert_with(|| watch::channel(0).0).subscribe()
            };
            tokio::select! {
                // New events, or the experiment ended (its sender dropped): look again.
                _ = news.changed() => {}
                _ = tokio::time::sleep_until(deadline) => last_look = true,
                // A graceful shutdown waits for requests in flight; this one must not hold it up.
                _ = self.shutdown.cancelled() => last_look = true,
            }
        }
    }

    /// The log of an experiment that has ended: it no longer changes, so there is no waiting
    /// and no point in trimming it.
    async fn finished_search_events(&self, exp_id: i64, after: u64) -> Result<SearcherEvents> {
        let row = self.store.get_experiment(exp_id).await?;
        let config: ExperimentConfig = serde_json::from_str(&row.config_json).map_err(|e| Error::internal(e.to_string()))?;
        require_custom(&config, exp_id)?;
        let snapshot = self
            .store
            .load_searcher_snapshot(exp_id)
            .await?
            .ok_or_else(|| Error::internal(format!("experiment {exp_id} has no searcher snapshot")))?;
        let mut searcher = Searcher::restore(&snapshot).map_err(|e| Error::internal(e.to_string()))?;
        // Checked like a live search's acknowledgement, so a bad `after` is refused the same way.
        searcher.acknowledge_events(after)?;
        Ok(page(searcher.events_after(after, MAX_EVENTS_PER_PAGE), after, &searcher, &row.state))
    }

    /// Carries out a batch of an advisor's actions. The searcher checks the whole batch first;
    /// a refused batch changes nothing.
    pub async fn advisor_actions(&self, exp_id: i64, actions: Vec<rest::AdvisorAction>) -> Result<AdvisorActionsResponse> {
        let actions: Vec<AdvisorAction> = actions.into_iter().map(from_wire).collect();
        let mut inner = self.inner.lock().await;
        let Some(exp) = inner.experiments.get_mut(&exp_id) else {
            let row = self.store.get_experiment(exp_id).await?;
            let config: ExperimentConfig = serde_json::from_str(&row.config_json).map_err(|e| Error::internal(e.to_string()))?;
            require_custom(&config, exp_id)?;
            return Err(Error::conflict(format!("experiment {exp_id} is {} and its search takes no more actions", row.state)));
        };
        require_custom(&exp.config, exp_id)?;
        if exp.state.is_stopping() {
            // The master would not create the trials, and the advisor would wait for them forever.
            return Err(Error::conflict(format!("experiment {exp_id} is {} and its search takes no more actions", exp.state.as_str())));
        }
        let out = exp.searcher.external_actions(actions)?;
        let requested: Vec<RequestId> =
            out.iter().filter_map(|a| if let Action::Create { request_id, .. } = a { Some(*request_id) } else { None }).collect();
        self.apply_actions(&mut inner, exp_id, out).await?;
        self.schedule(&mut inner).await?;
        let (trial_ids, shut_down): (HashMap<RequestId, i64>, bool) = match inner.experiments.get(&exp_id) {
            Some(exp) => (exp.by_request.clone(), exp.searcher.is_shut_down()),
            // A shutdown with nothing running ends the experiment at once.
            None => (self.store.list_trials(exp_id).await?.into_iter().map(|t| (t.request_id as RequestId, t.id)).collect(), true),
        };
        let created = requested
            .into_iter()
            .map(|request_id| {
                let trial_id =
                    trial_ids.get(&request_id).copied().ok_or_else(|| Error::internal(format!("request {request_id} made no trial")))?;
                Ok(CreatedTrial { request_id, trial_id })
            })
            .collect::<Result<_>>()?;
        Ok(AdvisorActionsResponse { created, shut_down })
    }
}

/// Wakes the advisors waiting for `exp_id`'s events if its log grew.
pub(super) fn wake_advisors(inner: &Inner, exp_id: i64) {
    let (Some(exp), Some(sender)) = (inner.experiments.get(&exp_id), inner.searcher_watch.get(&exp_id)) else { return };
    let last = exp.searcher.last_event_seq();
    sender.send_if_modified(|seen| std::mem::replace(seen, last) != last);
}

fn require_custom(config: &ExperimentConfig, exp_id: i64) -> Result<()> {
    if config.searcher.name == "custom" {
        return Ok(());
    }
    Err(Error::bad_field(
        "searcher.name",
        format!(
            "experiment {exp_id} uses the `{}` searcher; only a `custom` searcher has events for an advisor and takes its actions",
            config.searcher.name
        ),
    ))
}

fn page(events: Vec<SequencedEvent>, after: u64, searcher: &Searcher, state: &str) -> SearcherEvents {
    let next_after = events.last().map_or(after, |e| e.seq);
    SearcherEvents {
        events: events.into_iter().map(to_wire).collect(),
        next_after,
        shut_down: searcher.is_shut_down(),
        experiment_state: state.to_string(),
    }
}

fn to_wire(e: SequencedEvent) -> SearcherEvent {
    let kind = match e.event {
        Event::Initialized { metric, smaller_is_better, max_trials, max_concurrent_trials, hyperparameters } => {
            SearcherEventKind::Initialized {
                metric,
                smaller_is_better,
                max_trials: max_trials.map(|n| n as u64),
                max_concurrent_trials: max_concurrent_trials as u64,
                hyperparameters: serde_json::to_value(&hyperparameters).unwrap_or_default(),
            }
        }
        Event::TrialCreated { request_id, hparams, checkpoint_from } => {
            SearcherEventKind::TrialCreated { request_id, hparams, checkpoint_from }
        }
        Event::ValidationCompleted { request_id, metric, time } => SearcherEventKind::ValidationCompleted { request_id, metric, time },
        Event::TrialExited { request_id } => SearcherEventKind::TrialExited { request_id },
        Event::TrialFailed { request_id } => SearcherEventKind::TrialFailed { request_id },
    };
    SearcherEvent { seq: e.seq, kind }
}

fn from_wire(a: rest::AdvisorAction) -> AdvisorAction {
    match a {
        rest::AdvisorAction::Create { hparams, checkpoint_from } => AdvisorAction::Create { hparams, checkpoint_from },
        rest::AdvisorAction::Stop { request_id } => AdvisorAction::Stop { request_id },
        rest::AdvisorAction::Shutdown { failure } => AdvisorAction::Shutdown { failure },
    }
}
