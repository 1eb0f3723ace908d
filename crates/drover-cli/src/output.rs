//! Tables and JSON for list and describe commands.

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{ContentArrangement, Table};
use drover_api::rest::{Agent, Checkpoint, Experiment, Job, JobWaiting, Lineage, LineageMember, Trial};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

pub fn print_json<T: serde::Serialize>(value: &T) {
    println!("{}", serde_json::to_string_pretty(value).expect("API types serialise"));
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic).set_header(header.to_vec());
    t
}

pub fn time(ms: i64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm), to avoid a date crate.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

pub fn metric(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.4}"))
}

pub fn hparams(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(map) => map.iter().map(|(k, v)| format!("{k}={}", compact(v))).collect::<Vec<_>>().join(" "),
        other => other.to_string(),
    }
}

fn compact(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && (f.abs() < 1e-3 || f.abs() >= 1e5) && f != 0.0 => format!("{f:.3e}"),
            Some(f) if n.is_f64() => format!("{:.4}", f).trim_end_matches('0').trim_end_matches('.').to_string(),
            _ => n.to_string(),
        },
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(_) => format!("{{{}}}", hparams(v)),
        other => other.to_string(),
    }
}

fn counts(e: &Experiment) -> String {
    let total: i64 = e.trial_counts.values().sum();
    let done: i64 = ["COMPLETED", "ERROR", "CANCELED"].iter().filter_map(|s| e.trial_counts.get(*s)).sum();
    match e.planned_trials {
        Some(p) => format!("{done}/{p} ({total} created)"),
        None => format!("{done}/{total}"),
    }
}

pub fn experiments(list: &[Experiment], output: Output) {
    if output == Output::Json {
        return print_json(&list);
    }
    let mut t = table(&["ID", "Name", "State", "Searcher", "Trials done", "Best", "Created"]);
    for e in list {
        t.add_row(vec![
            e.id.to_string(),
            e.name.clone(),
            e.state.clone(),
            e.searcher.clone(),
            counts(e),
            format!("{} {}", e.metric, metric(e.best_metric)),
            time(e.created_at),
        ]);
    }
    println!("{t}");
}

pub fn experiment(e: &Experiment, trials: &[Trial], output: Output) {
    if output == Output::Json {
        return print_json(&serde_json::json!({ "experiment": e, "trials": trials }));
    }
    println!("Experiment {}: {}", e.id, e.name);
    if let Some(d) = &e.description {
        println!("  {d}");
    }
    println!("State:    {}", e.state);
    println!("Searcher: {} on {} ({})", e.searcher, e.metric, if e.smaller_is_better { "smaller is better" } else { "larger is better" });
    println!("Trials:   {}", counts(e));
    if let (Some(id), Some(best)) = (e.best_trial_id, e.best_metric) {
        println!("Best:     trial {id}, {} = {best:.4}", e.metric);
    }
    trials_table(trials, Output::Table);
}

pub fn trials_table(trials: &[Trial], output: Output) {
    if output == Output::Json {
        return print_json(&trials);
    }
    let mut t = table(&["Trial", "State", "Restarts", "Best", "Hyperparameters"]);
    for tr in trials {
        t.add_row(vec![tr.id.to_string(), tr.state.clone(), tr.restarts.to_string(), metric(tr.best_metric), hparams(&tr.hparams)]);
    }
    println!("{t}");
}

pub fn trial(tr: &Trial, output: Output) {
    if output == Output::Json {
        return print_json(tr);
    }
    println!("Trial {} (experiment {})", tr.id, tr.experiment_id);
    println!("State:      {}", tr.state);
    println!("Restarts:   {}", tr.restarts);
    println!("Hparams:    {}", hparams(&tr.hparams));
    if let Some(c) = &tr.latest_checkpoint {
        println!("Checkpoint: {c}");
    }
    if let Some(a) = &tr.allocation_id {
        println!("Allocation: {a} on {}", tr.agent_id.as_deref().unwrap_or("?"));
    }
    let mut t = table(&["Group", "Metric", "Points", "Last (step)", "Min", "Max"]);
    for s in &tr.summaries {
        t.add_row(vec![
            s.group.clone(),
            s.name.clone(),
            s.count.to_string(),
            format!("{:.4} ({})", s.last, s.last_step),
            format!("{:.4}", s.min),
            format!("{:.4}", s.max),
        ]);
    }
    println!("{t}");
}

pub fn agents(list: &[Agent], output: Output) {
    if output == Output::Json {
        return print_json(&list);
    }
    let mut t = table(&["Agent", "Pool", "Host", "Connected", "Slots", "Used", "Devices"]);
    for a in list {
        let used = a.slots.iter().filter(|s| s.allocation_id.is_some()).count();
        let mut devices: Vec<String> = a.slots.iter().map(|s| format!("{} ({})", s.device, s.kind)).collect();
        devices.dedup();
        t.add_row(vec![
            a.id.clone(),
            a.pool.clone(),
            a.hostname.clone(),
            a.connected.to_string(),
            a.slots.len().to_string(),
            used.to_string(),
            devices.join(", "),
        ]);
    }
    println!("{t}");
}

/// The scheduler's jobs, then every waiting trial with its place in its pool's queue and why
/// it waits.
pub fn jobs(list: &[Job], output: Output) {
    if output == Output::Json {
        return print_json(&list);
    }
    let mut t = table(&["Job", "Kind", "Name", "State", "Pool", "Priority", "Weight", "Running", "Queued"]);
    for j in list {
        t.add_row(vec![
            j.id.to_string(),
            j.kind.clone(),
            j.name.clone(),
            j.state.clone(),
            j.resource_pool.clone(),
            j.priority.to_string(),
            format!("{}", j.weight),
            j.running.to_string(),
            j.queued.len().to_string(),
        ]);
    }
    println!("{t}");
    let waiting: Vec<(&Job, &JobWaiting)> = list.iter().flat_map(|j| j.queued.iter().map(move |w| (j, w))).collect();
    if waiting.is_empty() {
        return;
    }
    let mut w = table(&["Position", "Pool", "Job", "Trial", "Waits because"]);
    let mut rows = waiting;
    rows.sort_by_key(|(j, q)| (j.resource_pool.clone(), q.position.unwrap_or(u32::MAX), q.trial_id));
    for (j, q) in rows {
        let position = q.position.map_or_else(|| "new".to_string(), |p| p.to_string());
        w.add_row(vec![position, j.resource_pool.clone(), j.id.to_string(), q.trial_id.to_string(), q.reason.clone()]);
    }
    println!("{w}");
}

/// The family tree of a PBT experiment: each member under the member it started from, the weak
/// that copied a stronger one marked with what they changed, and the best member's line starred.
pub fn lineage(l: &Lineage, output: Output) {
    if output == Output::Json {
        return print_json(l);
    }
    let direction = if l.smaller_is_better { "smaller is better" } else { "larger is better" };
    println!(
        "Experiment {}: population {} over {} of at most {} generations; {} ({direction})",
        l.experiment_id,
        l.population_size,
        l.best_by_generation.len(),
        l.max_generations,
        l.metric
    );
    if !l.best_by_generation.is_empty() {
        let best: Vec<String> = l.best_by_generation.iter().map(|b| metric(*b)).collect();
        println!("Best after each generation: {}", best.join("  "));
    }
    if let Some(why) = &l.ended_because {
        println!("Ended: {why}");
    }
    let ranked = |m: &&LineageMember| m.score.map(|s| if l.smaller_is_better { s } else { -s });
    let best = l.members.iter().filter(|m| m.score.is_some()).min_by(|a, b| ranked(a).unwrap().total_cmp(&ranked(b).unwrap()));
    let mut starred = std::collections::HashSet::new();
    let mut current = best.map(|b| b.trial_id);
    while let Some(id) = current {
        if !starred.insert(id) {
            break;
        }
        current = l.members.iter().find(|m| m.trial_id == id).and_then(|m| m.parent_trial_id);
    }
    let known: std::collections::HashSet<i64> = l.members.iter().map(|m| m.trial_id).collect();
    for root in l.members.iter().filter(|m| m.parent_trial_id.is_none_or(|p| !known.contains(&p))) {
        print_member(l, root, "", "", &starred);
    }
}

fn print_member(l: &Lineage, m: &LineageMember, lead: &str, child_lead: &str, starred: &std::collections::HashSet<i64>) {
    let star = if starred.contains(&m.trial_id) { "★ " } else { "" };
    let note = match (m.exploited, m.parent_trial_id.and_then(|p| l.members.iter().find(|o| o.trial_id == p))) {
        (true, Some(parent)) => format!("  copied into slot {}: {}", m.slot, changes(&parent.hparams, &m.hparams)),
        (false, None) if m.generation > 0 => "  started afresh".to_string(),
        _ => String::new(),
    };
    let state = if m.state == "COMPLETED" { String::new() } else { format!(" {}", m.state.to_lowercase()) };
    println!(
        "{lead}{star}trial {} (g{} w{}) {}{state}{}",
        m.trial_id,
        m.generation,
        m.slot,
        metric(m.score),
        if m.parent_trial_id.is_none() { format!("  {}", hparams(&m.hparams)) } else { note }
    );
    let children: Vec<&LineageMember> = l.members.iter().filter(|c| c.parent_trial_id == Some(m.trial_id)).collect();
    for (i, child) in children.iter().enumerate() {
        let last = i + 1 == children.len();
        let (branch, next) = if last { ("└─ ", "   ") } else { ("├─ ", "│  ") };
        print_member(l, child, &format!("{child_lead}{branch}"), &format!("{child_lead}{next}"), starred);
    }
}

/// What exploring changed, e.g. `lr 0.01→0.012`.
fn changes(before: &serde_json::Value, after: &serde_json::Value) -> String {
    let (serde_json::Value::Object(b), serde_json::Value::Object(a)) = (before, after) else { return String::new() };
    let diffs: Vec<String> = a
        .iter()
        .filter(|(k, v)| b.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k} {}→{}", b.get(k).map(compact).unwrap_or_default(), compact(v)))
        .collect();
    if diffs.is_empty() { "same hyperparameters".into() } else { diffs.join(" ") }
}

/// The plan of a simulated search.
pub fn preview(p: &drover_search::preview::Preview, config: &drover_core::ExperimentConfig, output: Output) {
    if output == Output::Json {
        return print_json(p);
    }
    let unit = config.searcher.time_metric.as_deref().unwrap_or("units");
    let full = p.trials as f64 * p.time_per_trial;
    println!("Simulated `{}` on a synthetic objective (loss = quality + 1/(1 + {unit}); nothing runs):", p.searcher);
    if !p.generations.is_empty() {
        println!(
            "{} members in {} generations of {} {unit}: {} {unit} of training in all",
            p.trials,
            p.generations.len(),
            p.time_per_trial,
            p.total_time
        );
    } else if p.time_per_trial > 1.0 {
        println!(
            "{} trials, {} {unit} of training in all ({:.0}% of the {} that {} trials of {} {unit} would take)",
            p.trials,
            p.total_time,
            100.0 * p.total_time / full.max(1.0),
            full,
            p.trials,
            p.time_per_trial
        );
    } else {
        println!("{} trials", p.trials);
    }
    for (i, b) in p.brackets.iter().enumerate() {
        let mut t = Table::new();
        t.load_style(UTF8_FULL_CONDENSED).set_header(vec![format!("Rung ({unit})"), "Trials reaching it".into()]);
        for r in &b.rungs {
            t.add_row(vec![format!("{}", (r.time * 100.0).round() / 100.0), r.reached.to_string()]);
        }
        if p.brackets.len() > 1 {
            println!("Bracket {} of {} ({} trials):", i + 1, p.brackets.len(), b.trials);
        }
        println!("{t}");
    }
    if !p.generations.is_empty() {
        let mut t = Table::new();
        t.load_style(UTF8_FULL_CONDENSED).set_header(vec!["Generation", "Members", "Replaced", "Best synthetic loss"]);
        for g in &p.generations {
            t.add_row(vec![g.generation.to_string(), g.members.to_string(), g.replaced.to_string(), metric(g.best_loss)]);
        }
        println!("{t}");
        if let Some(why) = &p.ended_because {
            println!("Ends: {why}");
        }
    }
}

pub fn checkpoints(list: &[Checkpoint], output: Output) {
    if output == Output::Json {
        return print_json(&list);
    }
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED).set_header(vec!["UUID", "Trial", "Step", "Size", "Files", "Created", "Pinned"]);
    for c in list {
        t.add_row(vec![
            c.uuid.clone(),
            c.trial_id.to_string(),
            c.step.to_string(),
            bytes(c.size),
            c.resources.len().to_string(),
            time(c.created_at),
            if c.pinned { "yes".into() } else { String::new() },
        ]);
    }
    println!("{t}");
}

pub fn checkpoint(c: &Checkpoint, output: Output) {
    if output == Output::Json {
        return print_json(c);
    }
    println!(
        "Checkpoint {} of trial {} (experiment {}), step {}, {}{}",
        c.uuid,
        c.trial_id,
        c.experiment_id,
        c.step,
        bytes(c.size),
        if c.pinned { ", pinned" } else { "" }
    );
    println!("Created {}; metadata {}", time(c.created_at), c.metadata);
    for (file, size) in &c.resources {
        println!("  {file}  {}", bytes(*size as i64));
    }
}

fn bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_dates_and_hparams() {
        assert_eq!(super::time(0), "1970-01-01 00:00:00");
        assert_eq!(super::time(1_795_300_000_000), "2026-11-21 22:26:40");
        let h = serde_json::json!({"lr": 0.00012345, "hidden": 64, "opt": "adam", "d": 0.5});
        assert_eq!(super::hparams(&h), "d=0.5 hidden=64 lr=1.234e-4 opt=adam");
    }
}

/// A trial's log line made safe for a terminal: control characters (escape sequences that
/// could move the cursor, retitle the window or hide text) are shown escaped, `\x1b` style;
/// tabs stay as they are.
pub fn escape_control(line: &str) -> std::borrow::Cow<'_, str> {
    if !line.chars().any(|c| c.is_control() && c != '\t') {
        return std::borrow::Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len() + 8);
    for c in line.chars() {
        if c.is_control() && c != '\t' {
            let code = c as u32;
            if code <= 0xff {
                out.push_str(&format!("\\x{code:02x}"));
            } else {
                out.push_str(&format!("\\u{{{code:x}}}"));
            }
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod escape_tests {
    use super::escape_control;

    #[test]
    fn control_characters_are_escaped_and_text_kept() {
        assert_eq!(escape_control("plain\ttext é"), "plain\ttext é");
        assert_eq!(escape_control("\x1b]0;pwned\x07red\x1b[31m"), "\\x1b]0;pwned\\x07red\\x1b[31m");
        assert_eq!(escape_control("a\rb\u{9b}c"), "a\\x0db\\x9bc");
    }
}
