//! The family tree of a `pbt` search, as the REST API shows it and as plain files on the
//! experiment's checkpoint storage, laid out the way AutoLFADS keeps its runs: a folder per
//! member of each generation (`g003_w07`) with its hyperparameters and a link to its weights,
//! and tables of the whole run, so that a file browser or a spreadsheet is enough to read it.

use std::collections::HashMap;
use std::fmt::Write as _;

use drover_api::rest::{Lineage, LineageMember};
use drover_core::config::ExperimentConfig;
use drover_search::Searcher;
use serde_json::Value;

/// What the lineage needs to know of a trial.
pub struct MemberTrial {
    pub id: i64,
    pub request_id: u64,
    pub state: String,
    pub checkpoint: Option<String>,
}

/// The lineage of a `pbt` search; `None` for any other searcher.
pub fn lineage(experiment_id: i64, config: &ExperimentConfig, searcher: &Searcher, trials: &[MemberTrial]) -> Option<Lineage> {
    let pbt = searcher.pbt()?;
    let by_request: HashMap<u64, &MemberTrial> = trials.iter().map(|t| (t.request_id, t)).collect();
    let trial_id = |request: u64| by_request.get(&request).map(|t| t.id);
    // The searcher keeps losses (smaller is better); users read their metric as reported.
    let sign = if config.searcher.smaller_is_better { 1.0 } else { -1.0 };
    let mut members: Vec<LineageMember> = pbt
        .members()
        .iter()
        .filter_map(|(request, m)| {
            let row = by_request.get(request)?;
            Some(LineageMember {
                trial_id: row.id,
                generation: m.generation,
                slot: m.slot,
                parent_trial_id: m.parent.and_then(trial_id),
                exploited: m.exploited,
                state: row.state.clone(),
                hparams: Value::Object(m.hparams.clone()),
                score: m.score.map(|s| s * sign),
                checkpoint: row.checkpoint.clone(),
            })
        })
        .collect();
    members.sort_by_key(|m| (m.generation, m.slot));
    let params = pbt.params();
    Some(Lineage {
        experiment_id,
        metric: config.searcher.metric.clone(),
        smaller_is_better: config.searcher.smaller_is_better,
        population_size: params.population,
        max_generations: params.max_generations,
        best_by_generation: pbt.best_by_generation().iter().map(|b| b.map(|s| s * sign)).collect(),
        ended_because: pbt.ended_because().map(str::to_string),
        members,
    })
}

/// The run's tables, as (name, contents) under the lineage folder:
/// - `members.csv`: generation, slot, trial, parent, exploited, state, score, checkpoint, hyperparameters;
/// - `generations.csv`: the best score after each generation;
/// - `run.json`: the search's shape and why it ended.
pub fn tables(lineage: &Lineage) -> Vec<(String, Vec<u8>)> {
    let mut members = String::from("generation,slot,trial_id,parent_trial_id,exploited,state,score,checkpoint,hparams\n");
    for m in &lineage.members {
        let _ = writeln!(
            members,
            "{},{},{},{},{},{},{},{},{}",
            m.generation,
            m.slot,
            m.trial_id,
            m.parent_trial_id.map(|p| p.to_string()).unwrap_or_default(),
            m.exploited,
            m.state,
            m.score.map(|s| s.to_string()).unwrap_or_default(),
            m.checkpoint.as_deref().unwrap_or(""),
            csv_field(&m.hparams.to_string()),
        );
    }
    let mut generations = format!("generation,best_{}\n", csv_field(&lineage.metric));
    for (g, best) in lineage.best_by_generation.iter().enumerate() {
        let _ = writeln!(generations, "{g},{}", best.map(|b| b.to_string()).unwrap_or_default());
    }
    let run = serde_json::json!({
        "experiment_id": lineage.experiment_id,
        "metric": lineage.metric,
        "smaller_is_better": lineage.smaller_is_better,
        "population_size": lineage.population_size,
        "max_generations": lineage.max_generations,
        "ended_because": lineage.ended_because,
    });
    vec![
        ("members.csv".into(), members.into_bytes()),
        ("generations.csv".into(), generations.into_bytes()),
        ("run.json".into(), serde_json::to_string_pretty(&run).unwrap_or_default().into_bytes()),
    ]
}

/// The folder of a member (AutoLFADS' `g{generation}_w{worker}`) and its `member.json`, for
/// each member that has ended.
pub fn member_files(lineage: &Lineage) -> Vec<(String, Option<String>, Vec<u8>)> {
    lineage
        .members
        .iter()
        .filter(|m| is_final(&m.state))
        .map(|m| {
            let folder = format!("g{:03}_w{:02}", m.generation, m.slot);
            (folder, m.checkpoint.clone(), serde_json::to_string_pretty(m).unwrap_or_default().into_bytes())
        })
        .collect()
}

/// Writes the lineage under `dir` on a file system: tables replaced atomically, and a folder
/// per ended member with `member.json` and `checkpoint`, a relative link to its weights in
/// `checkpoint_root`. A member folder once written is not rewritten.
/// On a file-system storage, links a member's folder (`folder`, a key such as
/// `pbt/experiment-1/g000_w00`) to its checkpoint's directory, so the family tree can be browsed
/// with the weights beside it. The link is made by the storage's own walk, which never follows a
/// link a trial may have planted on the way (`pbt -> /elsewhere`). Best effort: the tables say
/// the same, and object stores have no links.
pub async fn link_checkpoint(storage: &drover_storage::Storage, folder: &str, uuid: &str) {
    let up = "../".repeat(folder.split('/').count());
    if let Err(e) = storage.make_link(&format!("{folder}/checkpoint"), &format!("{up}{uuid}")).await {
        tracing::debug!("cannot link {folder} to checkpoint {uuid}: {e}");
    }
}

fn is_final(state: &str) -> bool {
    matches!(state, "COMPLETED" | "CANCELED" | "ERROR")
}

/// Quotes a CSV field when it needs it.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quoting() {
        assert_eq!(csv_field(r#"{"a":1,"b":"x"}"#), r#""{""a"":1,""b"":""x""}""#);
        assert_eq!(csv_field("plain"), "plain");
    }
}
