//! What trials ask of the control plane: token checks, validations for the searcher, and
//! checkpoint registrations.

use super::*;

impl Master {
    /// Resolves a trial token; the token must belong to a live allocation of `trial_id`.
    pub fn authenticate(&self, token: Option<&str>, trial_id: i64) -> Result<TrialAuth> {
        let token = token.ok_or_else(|| Error::unauthorized("this endpoint needs the trial's token (Authorization: Bearer ...)"))?;
        let auth = self.auth.read().unwrap().get(token).cloned();
        match auth {
            None => Err(Error::unauthorized("unknown or expired trial token")),
            Some(a) if a.trial_id != trial_id => {
                Err(Error::forbidden(format!("this token belongs to trial {}, not trial {trial_id}", a.trial_id)))
            }
            Some(a) => Ok(a),
        }
    }

    /// Resolves a token for any trial of `experiment_id` (the context download).
    pub fn authenticate_experiment(&self, token: Option<&str>, experiment_id: i64) -> Result<TrialAuth> {
        let token = token.ok_or_else(|| Error::unauthorized("this endpoint needs a task token (Authorization: Bearer ...)"))?;
        let auth = self.auth.read().unwrap().get(token).cloned();
        match auth {
            Some(a) if a.experiment_id == experiment_id => Ok(a),
            Some(_) => Err(Error::forbidden(format!("this token does not belong to experiment {experiment_id}"))),
            None => Err(Error::unauthorized("unknown or expired task token")),
        }
    }

    /// Tells the searcher about validations of its metric, each as (value, training time).
    pub async fn validation_reported(&self, experiment_id: i64, trial_id: i64, values: &[(f64, f64)]) -> Result<()> {
        let mut inner = self.inner.lock().await;
        let Some(exp) = inner.experiments.get_mut(&experiment_id) else { return Ok(()) };
        let Some(trial) = exp.trials.get(&trial_id) else { return Ok(()) };
        let request_id = trial.request_id;
        let mut actions = Vec::new();
        for &(value, time) in values {
            actions.extend(exp.searcher.validation_completed(request_id, value, time));
        }
        // A custom search logged the validations for its advisor: save and announce them.
        if !actions.is_empty() || exp.searcher.is_custom() {
            self.apply_actions(&mut inner, experiment_id, actions).await?;
            self.schedule(&mut inner).await?;
        } else if exp.searcher.learns_from_validations() {
            // Nothing to do now, but the searcher remembers the result (a rung, a score): a
            // restarted master must too.
            self.store.save_searcher_snapshot(experiment_id, &exp.searcher.snapshot()).await?;
        }
        Ok(())
    }

    pub async fn checkpoint_registered(&self, experiment_id: i64, trial_id: i64, uuid: &str) -> Result<()> {
        self.store.update_trial(trial_id, TrialUpdate { latest_checkpoint: Some(uuid.to_string()), ..Default::default() }).await?;
        let mut inner = self.inner.lock().await;
        let Some(exp) = inner.experiments.get_mut(&experiment_id) else { return Ok(()) };
        let Some(t) = exp.trials.get_mut(&trial_id) else { return Ok(()) };
        t.latest_checkpoint = Some(uuid.to_string());
        // Only now may another trial start from this one (PBT copies only stored weights).
        let request_id = t.request_id;
        exp.searcher.checkpoint_saved(request_id);
        if exp.searcher.pbt().is_some() {
            self.store.save_searcher_snapshot(experiment_id, &exp.searcher.snapshot()).await?;
        }
        Ok(())
    }

    /// A new configuration (e.g. a checkpoint policy) for an experiment that may be running.
    pub(crate) async fn update_running_config(&self, experiment_id: i64, config: &ExperimentConfig) {
        if let Some(exp) = self.inner.lock().await.experiments.get_mut(&experiment_id) {
            exp.config = config.clone();
        }
    }
}
