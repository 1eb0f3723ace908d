//! `drover run`: an HP search from a file to a table of the best trials, on an embedded cluster.

use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use drover_api::rest::{CreateExperimentRequest, Experiment, Lineage, Trial};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::client::Client;
use crate::output::{self, Output};

const TERMINAL: [&str; 3] = ["COMPLETED", "CANCELED", "ERROR"];

/// Reads and checks a config file locally, so that a bad file fails before anything starts.
pub fn read_config(file: &Path) -> Result<String> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    if let Err(e) = drover_core::ExperimentConfig::parse(&text, Some(&file.display().to_string())) {
        bail!("{e}");
    }
    Ok(text)
}

/// Packs a context directory as a gzip tarball, leaving out VCS and build directories.
pub fn pack_context(dir: &Path) -> Result<Vec<u8>> {
    const LIMIT: usize = 95 * 1024 * 1024;
    if !dir.is_dir() {
        bail!("the context {} is not a directory", dir.display());
    }
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(encoder);
    builder.follow_symlinks(false);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&current)?.collect::<std::io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let name = entry.file_name();
            if name == ".git" || name == "target" || name == "__pycache__" {
                continue;
            }
            let rel = path.strip_prefix(dir).expect("walked from dir");
            let kind = entry.file_type()?;
            if kind.is_dir() {
                builder.append_dir(rel, &path)?;
                stack.push(path);
            } else {
                builder.append_path_with_name(&path, rel)?;
            }
        }
        if builder.get_ref().get_ref().len() > LIMIT {
            bail!("the context {} is over {} MB compressed; leave large data out of it", dir.display(), LIMIT / 1024 / 1024);
        }
    }
    Ok(builder.into_inner()?.finish()?)
}

pub fn create_request(file: &Path, context: Option<&Path>, activate: bool) -> Result<CreateExperimentRequest> {
    use base64::Engine as _;
    let config = read_config(file)?;
    let context = match context {
        Some(dir) => Some(base64::engine::general_purpose::STANDARD.encode(pack_context(dir)?)),
        None => None,
    };
    Ok(CreateExperimentRequest { config, context, activate, config_file: Some(file.display().to_string()) })
}

#[derive(Serialize)]
pub struct RunSummary {
    pub experiment_id: i64,
    pub name: String,
    pub state: String,
    pub metric: String,
    pub smaller_is_better: bool,
    pub elapsed_seconds: f64,
    pub trial_counts: std::collections::BTreeMap<String, i64>,
    pub best_trial: Option<TrialSummary>,
    /// Trials with a value of the searcher metric, best first.
    pub trials: Vec<TrialSummary>,
    /// For population based training: how the generations went.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pbt: Option<PbtSummary>,
}

#[derive(Serialize, Clone)]
pub struct PbtSummary {
    pub population_size: usize,
    pub generations_run: usize,
    /// Best score after each generation, over all generations so far.
    pub best_by_generation: Vec<Option<f64>>,
    pub ended_because: Option<String>,
    /// The best trial's ancestry, from generation 0 to itself.
    pub best_ancestry: Vec<i64>,
}

#[derive(Serialize, Clone)]
pub struct TrialSummary {
    pub trial_id: i64,
    pub state: String,
    pub best_value: Option<f64>,
    pub hparams: serde_json::Value,
    pub restarts: i64,
    /// The step of its last report of the searcher metric (for an epoch-stepped trial, how far
    /// it trained).
    pub last_step: Option<i64>,
    /// PBT: the member's generation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<usize>,
    /// PBT: the trial whose checkpoint it started from (`null` in generation 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_trial_id: Option<Option<i64>>,
    /// PBT: it copied a better member instead of continuing its own line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exploited: Option<bool>,
}

fn counts_line(e: &Experiment) -> (u64, String) {
    let get = |s: &str| e.trial_counts.get(s).copied().unwrap_or(0);
    let done = get("COMPLETED") + get("ERROR") + get("CANCELED");
    let running = get("RUNNING") + e.trial_counts.iter().filter(|(k, _)| k.starts_with("STOPPING")).map(|(_, v)| v).sum::<i64>();
    let queued = get("QUEUED") + get("PAUSED");
    let best = e.best_metric.map_or(String::from("-"), |b| format!("{b:.4} (trial {})", e.best_trial_id.unwrap_or(0)));
    let errors = if get("ERROR") > 0 { format!(", {} failed", get("ERROR")) } else { String::new() };
    (done as u64, format!("running {running}, queued {queued}{errors} | best {} {best}", e.metric))
}

/// Follows an experiment until it ends, drawing progress on stderr.
pub async fn follow(client: &Client, id: i64, quiet: bool) -> Result<Experiment> {
    let first = client.experiment(id).await?;
    let tty = std::io::stderr().is_terminal() && !quiet;
    let bar = ProgressBar::new(first.planned_trials.unwrap_or(0).max(0) as u64);
    if tty {
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} trials | {msg}")
                .expect("static template")
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut last_line = String::new();
    loop {
        let e = client.experiment(id).await?;
        let (done, msg) = counts_line(&e);
        bar.set_position(done);
        bar.set_message(msg.clone());
        let line = format!("{done}/{} trials done, {msg}", e.planned_trials.unwrap_or(0));
        if !tty && !quiet && line != last_line {
            eprintln!("experiment {id}: {line}");
            last_line = line;
        }
        if TERMINAL.contains(&e.state.as_str()) {
            bar.finish_and_clear();
            return Ok(e);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub fn summarise(e: &Experiment, trials: &[Trial], lineage: Option<&Lineage>, elapsed: Duration) -> RunSummary {
    let member = |id: i64| lineage.and_then(|l| l.members.iter().find(|m| m.trial_id == id));
    let mut ranked: Vec<TrialSummary> = trials
        .iter()
        .map(|t| TrialSummary {
            trial_id: t.id,
            state: t.state.clone(),
            best_value: t.best_metric,
            hparams: t.hparams.clone(),
            restarts: t.restarts,
            last_step: t.summaries.iter().find(|m| m.group == "validation" && m.name == e.metric).map(|m| m.last_step),
            generation: member(t.id).map(|m| m.generation),
            parent_trial_id: member(t.id).map(|m| m.parent_trial_id),
            exploited: member(t.id).map(|m| m.exploited),
        })
        .collect();
    ranked.sort_by(|a, b| match (a.best_value, b.best_value) {
        (Some(x), Some(y)) if e.smaller_is_better => x.total_cmp(&y),
        (Some(x), Some(y)) => y.total_cmp(&x),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.trial_id.cmp(&b.trial_id),
    });
    RunSummary {
        experiment_id: e.id,
        name: e.name.clone(),
        state: e.state.clone(),
        metric: e.metric.clone(),
        smaller_is_better: e.smaller_is_better,
        elapsed_seconds: (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        trial_counts: e.trial_counts.clone(),
        best_trial: ranked.first().filter(|t| t.best_value.is_some()).cloned(),
        pbt: lineage.map(|l| PbtSummary {
            population_size: l.population_size,
            generations_run: l.members.iter().map(|m| m.generation + 1).max().unwrap_or(0),
            best_by_generation: l.best_by_generation.clone(),
            ended_because: l.ended_because.clone(),
            best_ancestry: ranked.first().map(|b| ancestry(l, b.trial_id)).unwrap_or_default(),
        }),
        trials: ranked,
    }
}

/// `trial` and its ancestors, oldest first.
pub fn ancestry(lineage: &Lineage, trial: i64) -> Vec<i64> {
    let mut chain = vec![trial];
    let mut current = trial;
    while let Some(parent) = lineage.members.iter().find(|m| m.trial_id == current).and_then(|m| m.parent_trial_id) {
        if chain.contains(&parent) {
            break;
        }
        chain.push(parent);
        current = parent;
    }
    chain.reverse();
    chain
}

pub fn print_summary(summary: &RunSummary, output: Output, top: usize) {
    if output == Output::Json {
        return output::print_json(summary);
    }
    println!(
        "Experiment {} ({}) {} in {:.1}s: {}",
        summary.experiment_id,
        summary.name,
        summary.state,
        summary.elapsed_seconds,
        summary.trial_counts.iter().map(|(k, v)| format!("{v} {}", k.to_lowercase())).collect::<Vec<_>>().join(", ")
    );
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED).set_header(vec!["Rank", "Trial", "State", &summary.metric, "Hyperparameters"]);
    for (i, tr) in summary.trials.iter().take(top).enumerate() {
        t.add_row(vec![
            (i + 1).to_string(),
            tr.trial_id.to_string(),
            tr.state.clone(),
            output::metric(tr.best_value),
            output::hparams(&tr.hparams),
        ]);
    }
    println!("{t}");
    if let Some(best) = &summary.best_trial {
        println!("Best: trial {} with {} = {:.4}", best.trial_id, summary.metric, best.best_value.unwrap_or(f64::NAN));
    }
    if let Some(pbt) = &summary.pbt {
        let chain: Vec<String> = pbt.best_ancestry.iter().map(i64::to_string).collect();
        println!(
            "PBT: {} generations of {}; the best descends from {}{}",
            pbt.generations_run,
            pbt.population_size,
            chain.join(" → "),
            pbt.ended_because.as_deref().map(|w| format!(" ({w})")).unwrap_or_default()
        );
        println!("Family tree: drover experiment lineage {}", summary.experiment_id);
    }
}

pub async fn run_on(client: &Client, req: &CreateExperimentRequest, output: Output, started: Instant) -> Result<RunSummary> {
    let e = client.create_experiment(req).await?;
    if output == Output::Table {
        eprintln!("Created experiment {} ({}), {} trials planned", e.id, e.name, e.planned_trials.map_or("?".into(), |p| p.to_string()));
    }
    let e = follow(client, e.id, output == Output::Json).await?;
    let trials = client.trials(e.id).await?;
    let lineage = if e.searcher == "pbt" { Some(client.lineage(e.id).await?) } else { None };
    Ok(summarise(&e, &trials, lineage.as_ref(), started.elapsed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_a_directory_without_vcs_and_build_output() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "a").unwrap();
        std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b.txt"), "b").unwrap();
        std::fs::create_dir_all(dir.path().join("target")).unwrap();
        std::fs::write(dir.path().join("target/big"), "x").unwrap();
        let bytes = pack_context(dir.path()).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
        let names: Vec<String> = archive.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
        assert!(names.contains(&"a.txt".to_string()) && names.contains(&"sub/b.txt".to_string()), "{names:?}");
        assert!(!names.iter().any(|n| n.starts_with("target")), "{names:?}");
    }
}
