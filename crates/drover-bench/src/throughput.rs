//! `throughput`: N trivial trials (each reports 10 training points and a validation point, then
//! exits) at `slots` concurrency.
//!
//! - drover: an in-process master and agent (`slots` CPU slots); an experiment with the random
//!   searcher, `max_trials` = N, `max_concurrent_trials` = slots. Wall time runs from just
//!   before the create request to the experiment's `ended_at` (stamped by the master; the bench
//!   polls only every 50 ms); all N trials must be COMPLETED with 10 loss points each. Cluster
//!   start-up is not timed.
//! - floor: the same program in offline mode (`DROVER_TRIVIAL_OFFLINE=1`: same losses, printed,
//!   no master) spawned N times by `slots` threads with `std::process::Command::output()`.
//! - Ray Tune: `bench/ray_tune_trivial.py`, timing `Tuner.fit` (not `ray.init`), once with Tune's
//!   default (a new actor — a new worker process — per trial, like drover's process per trial)
//!   and once with `reuse_actors=True`.
//!
//! Per-trial slot time = wall × slots / N: how long one trial holds a slot on average, spawn,
//! reporting, bookkeeping and scheduling gaps included.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use drover_api::rest::Trial;

use crate::cluster::{Cluster, Rest, trivial_experiment};
use crate::report::{Table, median, num, ratio, runs_list};
use crate::{ThroughputArgs, peer, sibling};

pub const TARGET_TRIALS_PER_S: f64 = 100.0;

pub async fn run(args: &ThroughputArgs, runs: usize, no_peer: bool) -> Result<()> {
    let (n, slots) = (args.trials, args.slots);
    if n == 0 || slots == 0 {
        bail!("--trials and --slots must be at least 1");
    }
    let trial = sibling("drover-trivial-trial")?;
    eprintln!("== throughput: {n} trivial trials, {slots} slots, {runs} runs");

    let mut drover = Vec::new();
    for r in 1..=runs {
        let cluster = Cluster::start(slots).await?;
        let outcome = drover_once(&cluster.rest, &trial, n, slots).await;
        cluster.stop().await?;
        let (wall, lifetime_ms) = outcome?;
        eprintln!("  drover run {r}: {wall:.3} s, {:.1} trials/s, median trial lifetime {lifetime_ms:.0} ms", n as f64 / wall);
        drover.push(wall);
    }

    let mut floor = Vec::new();
    for r in 1..=runs {
        let trial = trial.clone();
        let wall = tokio::task::spawn_blocking(move || floor_once(&trial, n, slots)).await??;
        eprintln!("  floor run {r}: {wall:.3} s, {:.1} trials/s", n as f64 / wall);
        floor.push(wall);
    }

    // Ray Tune twice: its default (a new actor, i.e. a new worker process, per trial, as drover
    // starts a new process per trial) and with reuse_actors=True.
    let variants = [(false, "default: new actor per trial"), (true, "reuse_actors=True")];
    let mut ray: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    let mut ray_version = String::new();
    let mut ray_skipped: Vec<Option<String>> = vec![None; variants.len()];
    match peer::ray_python(no_peer).await {
        Err(reason) => ray_skipped.iter_mut().for_each(|s| *s = Some(reason.clone())),
        Ok(python) => {
            for (v, (reuse, label)) in variants.iter().enumerate() {
                for r in 1..=runs {
                    match peer::ray_tune_throughput(&python, n, slots, *reuse).await {
                        Ok(out) => {
                            eprintln!(
                                "  Ray Tune ({label}) run {r}: fit {:.3} s ({:.2} trials/s), ray.init {:.1} s",
                                out.fit_s,
                                n as f64 / out.fit_s,
                                out.init_s
                            );
                            ray_version = out.version;
                            ray[v].push(out.fit_s);
                        }
                        Err(e) => {
                            eprintln!("  Ray Tune ({label}) run {r} failed: {e:#}");
                            ray_skipped[v] = Some(format!("Ray Tune failed: {e:#}"));
                            ray[v].clear();
                            break;
                        }
                    }
                }
            }
        }
    }

    let rate = |walls: &[f64]| if walls.is_empty() { f64::NAN } else { n as f64 / median(walls) };
    let slot_ms = |walls: &[f64]| if walls.is_empty() { f64::NAN } else { median(walls) * slots as f64 / n as f64 * 1000.0 };
    let drover_rate = rate(&drover);

    println!("### throughput: {n} trivial trials, {slots} slots (median of {runs} runs)\n");
    let mut t = Table::new(&["system", "wall s", "trials/s", "slot-ms per trial", "drover trials/s ÷ this", "runs (wall s)"]);
    let row = |t: &mut Table, name: &str, walls: &[f64]| {
        t.row(vec![
            name.into(),
            if walls.is_empty() { "—".into() } else { format!("{:.3}", median(walls)) },
            num(rate(walls)),
            num(slot_ms(walls)),
            ratio(drover_rate, rate(walls)),
            runs_list(walls),
        ])
    };
    row(&mut t, "drover (in-process master + agent, SQLite)", &drover);
    row(&mut t, "floor: fork+exec of the same program (std::process)", &floor);
    for (v, (_, label)) in variants.iter().enumerate() {
        if ray[v].is_empty() {
            let reason = ray_skipped[v].as_deref().unwrap_or("no result");
            t.row(vec![format!("Ray Tune ({label}): skipped ({reason})"), "—".into(), "—".into(), "—".into(), "—".into(), String::new()]);
        } else {
            row(&mut t, &format!("Ray Tune {ray_version} ({label}; Tuner.fit, ray.init not timed)"), &ray[v]);
        }
    }
    t.print();
    let verdict = if drover_rate >= TARGET_TRIALS_PER_S { "MET" } else { "MISSED" };
    println!(
        "target >= {TARGET_TRIALS_PER_S:.0} trials/s: {verdict} ({} trials/s); drover adds {} ms of slot time per trial over the floor\n",
        num(drover_rate),
        num(slot_ms(&drover) - slot_ms(&floor))
    );
    if let Some(reason) = ray_skipped.iter().flatten().next() {
        println!("Ray Tune skipped: {reason}\n");
    }
    Ok(())
}

/// One drover run; returns the wall seconds and the median trial lifetime (created to ended).
pub async fn drover_once(rest: &Rest, trial: &Path, n: usize, slots: usize) -> Result<(f64, f64)> {
    let yaml = trivial_experiment(trial, n, slots, "");
    let (wall, e) = timed_experiment(rest, &yaml).await?;
    let completed = e.trial_counts.get("COMPLETED").copied().unwrap_or(0);
    if e.state != "COMPLETED" || completed != n as i64 {
        bail!("experiment {} ended {} with {:?}", e.id, e.state, e.trial_counts);
    }
    let trials: Vec<Trial> = rest.get(&format!("/api/v1/experiments/{}/trials", e.id)).await?;
    for t in &trials {
        let points = t.summaries.iter().find(|s| s.name == "loss").map_or(0, |s| s.count);
        if points != 10 {
            bail!("trial {} stored {points} loss points, not 10", t.id);
        }
    }
    let lifetimes: Vec<f64> = trials.iter().filter_map(|t| t.ended_at.map(|end| (end - t.created_at) as f64)).collect();
    Ok((wall, median(&lifetimes)))
}

/// Creates the experiment and waits for it to end. The wall time runs from just before the
/// create request to the experiment's `ended_at` as the master stamped it (same clock, 1 ms
/// resolution), so the bench can poll slowly (every 50 ms) and barely load the master.
pub async fn timed_experiment(rest: &Rest, yaml: &str) -> Result<(f64, drover_api::rest::Experiment)> {
    let t0 = Instant::now();
    let t0_ms = drover_master::cluster::now_ms();
    let e = rest.create(yaml).await?;
    let e = rest.wait_terminal(e.id, Duration::from_secs(600), Duration::from_millis(50)).await?;
    let wall = match e.ended_at {
        Some(end) if end >= t0_ms => (end - t0_ms) as f64 / 1000.0,
        _ => t0.elapsed().as_secs_f64(),
    };
    Ok((wall, e))
}

/// N runs of the offline trivial trial by `slots` threads; returns the wall seconds.
pub fn floor_once(trial: &Path, n: usize, slots: usize) -> Result<f64> {
    let next = AtomicUsize::new(0);
    let t0 = Instant::now();
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..slots)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    while next.fetch_add(1, Ordering::Relaxed) < n {
                        let out = Command::new(trial).env("DROVER_TRIVIAL_OFFLINE", "1").stdin(Stdio::null()).output()?;
                        let lines = out.stdout.iter().filter(|b| **b == b'\n').count();
                        if !out.status.success() || lines != 10 {
                            bail!("offline trial: {} with {lines} lines of output", out.status);
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or_else(|_| bail!("a floor worker panicked"))).collect()
    });
    let wall = t0.elapsed().as_secs_f64();
    for r in results {
        r?;
    }
    Ok(wall)
}
