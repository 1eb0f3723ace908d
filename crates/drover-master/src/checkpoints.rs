//! Checkpoints after registration: garbage collection by the experiment's policy, deletion,
//! pins, and reading their files back for downloads.
//!
//! The order is always storage first, rows second: a failure half-way leaves rows pointing at
//! what is left (a retry finishes the job, a file already gone being no error), never files
//! that no row points at, the leak Determined's users report.

use std::collections::HashSet;

use drover_core::ExperimentConfig;
use drover_core::checkpoint_gc::{self, CheckpointFacts, GcPolicy};
use drover_core::state::TrialState;
use drover_storage::Storage;

use crate::cluster::Master;
use crate::error::{Error, Result};

/// What a collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub deleted: Vec<String>,
    pub kept: usize,
}

impl Master {
    pub(crate) async fn experiment_config(&self, experiment_id: i64) -> Result<ExperimentConfig> {
        let row = self.store.get_experiment(experiment_id).await?;
        serde_json::from_str(&row.config_json).map_err(|e| Error::internal(format!("experiment {experiment_id}: {e}")))
    }

    /// The opened checkpoint storage of an experiment.
    pub async fn experiment_storage(&self, experiment_id: i64) -> Result<Storage> {
        let config = self.experiment_config(experiment_id).await?;
        Storage::open(&self.checkpoint_storage(&config)).map_err(|e| Error::internal(e.to_string()))
    }

    /// Checkpoints that must survive whatever the policy: pinned ones, and those a trial that
    /// has not ended starts or resumes from (a PBT clone's source until the clone has saved its
    /// own, a restarted trial's resume point).
    async fn needed_checkpoints(&self, experiment_id: i64) -> Result<HashSet<String>> {
        let mut needed = HashSet::new();
        for t in self.store.list_trials(experiment_id).await? {
            let state: TrialState = t.state.parse().map_err(Error::internal)?;
            if !state.is_terminal() {
                needed.extend(t.latest_checkpoint);
            }
        }
        Ok(needed)
    }

    /// Applies the experiment's checkpoint policy now.
    pub async fn collect_garbage(&self, experiment_id: i64) -> Result<GcReport> {
        let config = self.experiment_config(experiment_id).await?;
        let rows = self.store.list_experiment_checkpoints(experiment_id).await?;
        if rows.is_empty() {
            return Ok(GcReport::default());
        }
        let scores: std::collections::HashMap<String, Option<f64>> =
            self.store.checkpoint_scores(experiment_id, &config.searcher.metric).await?.into_iter().collect();
        let needed = self.needed_checkpoints(experiment_id).await?;
        let facts: Vec<CheckpointFacts> = rows
            .iter()
            .map(|c| CheckpointFacts {
                uuid: c.uuid.clone(),
                trial_id: c.trial_id,
                step: c.step,
                created_at: c.created_at,
                score: scores.get(&c.uuid).copied().flatten(),
                pinned: c.pinned || needed.contains(&c.uuid),
            })
            .collect();
        let p = &config.checkpoint_storage;
        let policy = GcPolicy {
            save_experiment_best: p.save_experiment_best,
            save_trial_best: p.save_trial_best,
            save_trial_latest: p.save_trial_latest,
        };
        let doomed = checkpoint_gc::to_delete(&facts, policy, config.searcher.smaller_is_better);
        let storage = Storage::open(&self.checkpoint_storage(&config)).map_err(|e| Error::internal(e.to_string()))?;
        for uuid in &doomed {
            self.remove_checkpoint(&storage, uuid).await?;
        }
        tracing::info!(experiment = experiment_id, "checkpoint gc: deleted {}, kept {}", doomed.len(), rows.len() - doomed.len());
        Ok(GcReport { kept: rows.len() - doomed.len(), deleted: doomed })
    }

    /// Files, then the row.
    async fn remove_checkpoint(&self, storage: &Storage, uuid: &str) -> Result<()> {
        storage.delete_prefix(uuid).await.map_err(|e| Error::internal(format!("cannot delete checkpoint {uuid}: {e}")))?;
        self.store.delete_checkpoint(uuid).await?;
        Ok(())
    }

    /// Deletes one checkpoint by hand; refused while it is pinned or a live trial needs it.
    pub async fn delete_checkpoint(&self, uuid: &str) -> Result<()> {
        let row = self.store.get_checkpoint(uuid).await?;
        if row.pinned {
            return Err(Error::conflict(format!("checkpoint {uuid} is pinned; unpin it first")));
        }
        if self.needed_checkpoints(row.experiment_id).await?.contains(uuid) {
            return Err(Error::conflict(format!("checkpoint {uuid} is where a running or waiting trial resumes from")));
        }
        let storage = self.experiment_storage(row.experiment_id).await?;
        self.remove_checkpoint(&storage, uuid).await
    }

    /// Changes an experiment's checkpoint policy and applies it at once.
    pub async fn set_checkpoint_policy(&self, experiment_id: i64, policy: GcPolicy) -> Result<GcReport> {
        for (field, n) in [
            ("save_experiment_best", policy.save_experiment_best),
            ("save_trial_best", policy.save_trial_best),
            ("save_trial_latest", policy.save_trial_latest),
        ] {
            if n > drover_core::limits::MAX_CHECKPOINTS_KEPT {
                return Err(Error::bad_field(
                    field,
                    format!("{n} is more than the limit of {}", drover_core::limits::MAX_CHECKPOINTS_KEPT),
                ));
            }
        }
        let mut config = self.experiment_config(experiment_id).await?;
        let p = &mut config.checkpoint_storage;
        if config.searcher.name == "pbt" && policy.save_trial_latest == 0 {
            return Err(Error::bad_field(
                "save_trial_latest",
                "`pbt` starts every member from a checkpoint of the previous generation; keep at least 1",
            ));
        }
        (p.save_experiment_best, p.save_trial_best, p.save_trial_latest) =
            (policy.save_experiment_best, policy.save_trial_best, policy.save_trial_latest);
        let json = serde_json::to_string(&config).map_err(|e| Error::internal(e.to_string()))?;
        self.store.update_experiment_config(experiment_id, &json).await?;
        self.update_running_config(experiment_id, &config).await;
        self.collect_garbage(experiment_id).await
    }
}
