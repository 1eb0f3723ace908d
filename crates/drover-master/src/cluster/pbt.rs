//! A `pbt` experiment's family tree: the view served over REST and the files written beside
//! its checkpoints.

use super::*;

impl Master {
    /// The family tree of a `pbt` experiment, live or finished.
    pub async fn lineage(&self, experiment_id: i64) -> Result<drover_api::rest::Lineage> {
        let live = {
            let inner = self.inner.lock().await;
            inner.experiments.get(&experiment_id).map(|exp| (exp.config.clone(), exp.searcher.clone()))
        };
        let (config, searcher) = match live {
            Some(found) => found,
            None => {
                let row = self.store.get_experiment(experiment_id).await?;
                let config: ExperimentConfig = serde_json::from_str(&row.config_json).map_err(|e| Error::internal(e.to_string()))?;
                let snapshot = match config.searcher.name.as_str() {
                    "pbt" => self.store.load_searcher_snapshot(experiment_id).await?,
                    _ => None,
                };
                match snapshot {
                    Some(s) => (config, Searcher::restore(&s).map_err(|e| Error::internal(e.to_string()))?),
                    None => return Err(not_pbt(experiment_id, &config)),
                }
            }
        };
        let trials: Vec<MemberTrial> = self
            .store
            .list_trials(experiment_id)
            .await?
            .into_iter()
            .map(|t| MemberTrial { id: t.id, request_id: t.request_id as u64, state: t.state, checkpoint: t.latest_checkpoint })
            .collect();
        lineage::lineage(experiment_id, &config, &searcher, &trials).ok_or_else(|| not_pbt(experiment_id, &config))
    }

    /// Rewrites a `pbt` experiment's lineage files when another member has ended. A failure to
    /// write is logged, not fatal: the store holds the same facts.
    pub(super) async fn write_lineage(&self, exp_id: i64, exp: &mut ExperimentRuntime) {
        if exp.searcher.pbt().is_none() {
            return;
        }
        let ended = exp.trials.values().filter(|t| t.state.is_terminal()).count();
        if ended == exp.lineage_written {
            return;
        }
        let trials: Vec<MemberTrial> = exp
            .trials
            .iter()
            .map(|(id, t)| MemberTrial {
                id: *id,
                request_id: t.request_id,
                state: t.state.as_str().to_string(),
                checkpoint: t.latest_checkpoint.clone(),
            })
            .collect();
        let Some(view) = lineage::lineage(exp_id, &exp.config, &exp.searcher, &trials) else { return };
        let spec = self.checkpoint_storage(&exp.config);
        // The writes (round trips to an object store; on a file system, walks that never
        // follow a link a trial may have planted) happen off the control-plane lock, in order,
        // on the lineage writer.
        let prefix = format!("pbt/experiment-{exp_id}");
        let mut objects: Vec<(String, Vec<u8>)> =
            lineage::tables(&view).into_iter().map(|(name, bytes)| (format!("{prefix}/{name}"), bytes)).collect();
        let mut links = Vec::new();
        for (folder, checkpoint, member) in lineage::member_files(&view) {
            if exp.lineage_members.insert(folder.clone()) {
                objects.push((format!("{prefix}/{folder}/member.json"), member));
                links.extend(checkpoint.map(|uuid| (format!("{prefix}/{folder}"), uuid)));
            }
        }
        let written = self
            .lineage_writes
            .send(LineageWrite { spec: spec.clone(), objects, links })
            .map_err(|_| "the lineage writer has stopped".to_string());
        match written {
            Ok(()) => exp.lineage_written = ended,
            Err(e) => tracing::warn!(experiment = exp_id, "cannot write the pbt lineage on {}: {e}", spec.describe()),
        }
    }
}

pub(super) fn not_pbt(experiment_id: i64, config: &ExperimentConfig) -> Error {
    Error::bad_field(
        "searcher.name",
        format!("experiment {experiment_id} uses the `{}` searcher; only `pbt` has a lineage", config.searcher.name),
    )
}
