//! `footprint`: resident memory (VmRSS from /proc/<pid>/status) of a real `drover master`
//! process on a fresh SQLite data directory: idle after start-up, idle with a separate
//! `drover agent` process connected, right after a throughput workload of N trivial trials run
//! through that agent, and after a further idle period; plus its peak (VmHWM).
//! Beside it, Ray's head: the summed VmRSS of a `ray.init()` driver and the processes it
//! started (GCS, raylet, ...), idle.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cluster::{Rest, trivial_experiment};
use crate::report::{Table, median, num, ratio, runs_list};
use crate::throughput::timed_experiment;
use crate::{FootprintArgs, peer, sibling};

pub const TARGET_IDLE_MB: f64 = 50.0;

/// (VmRSS, VmHWM) of `pid` in MB (MiB).
fn rss_mb(pid: u32) -> Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("read /proc/{pid}/status"))?;
    let field = |key: &str| -> Result<f64> {
        let line = status.lines().find(|l| l.starts_with(key)).with_context(|| format!("no {key} in /proc/{pid}/status"))?;
        let kb: f64 = line[key.len()..].trim().trim_end_matches("kB").trim().parse()?;
        Ok(kb / 1024.0)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// A child that is stopped with SIGTERM (then SIGKILL) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Default)]
struct Reading {
    idle: f64,
    agent: f64,
    after: f64,
    after_idle: f64,
    peak: f64,
    workload_s: f64,
}

pub async fn run(args: &FootprintArgs, runs: usize, no_peer: bool) -> Result<()> {
    let drover = sibling("drover")?;
    let trial = sibling("drover-trivial-trial")?;
    eprintln!("== footprint: drover master idle, with an agent, after {} trials ({} slots), {runs} runs", args.trials, args.slots);
    let mut readings = Vec::new();
    for r in 1..=runs {
        let reading = once(&drover, &trial, args).await?;
        eprintln!(
            "  run {r}: idle {:.1} MB, agent connected {:.1} MB, after {} trials {:.1} MB ({:.2} s), after {}s idle {:.1} MB, peak {:.1} MB",
            reading.idle, reading.agent, args.trials, reading.after, reading.workload_s, args.idle_secs, reading.after_idle, reading.peak
        );
        readings.push(reading);
    }

    let mut ray = Vec::new();
    let mut ray_note = String::new();
    let mut ray_skipped = None;
    match peer::ray_python(no_peer).await {
        Err(reason) => ray_skipped = Some(reason),
        Ok(python) => {
            for r in 1..=runs {
                match peer::ray_footprint(&python, args.slots, args.idle_secs).await {
                    Ok(f) => {
                        eprintln!("  Ray run {r}: {:.1} MB in {} processes", f.rss_kb / 1024.0, f.processes);
                        ray_note = format!("Ray {} head, idle after ray.init (sum of {} processes)", f.version, f.processes);
                        ray.push(f.rss_kb / 1024.0);
                    }
                    Err(e) => {
                        eprintln!("  Ray footprint run {r} failed: {e:#}");
                        ray_skipped = Some(format!("{e:#}"));
                        ray.clear();
                        break;
                    }
                }
            }
        }
    }

    let col = |f: fn(&Reading) -> f64| -> Vec<f64> { readings.iter().map(f).collect() };
    let idle = col(|r| r.idle);
    let (agent, after, after_idle, peak, workload) =
        (col(|r| r.agent), col(|r| r.after), col(|r| r.after_idle), col(|r| r.peak), col(|r| r.workload_s));
    println!("### footprint: drover master RSS, MB (median of {runs} runs)\n");
    let mut t = Table::new(&[
        "process",
        "idle after start",
        "agent connected",
        &format!("after {} trials", args.trials),
        &format!("+{}s idle", args.idle_secs),
        "peak (VmHWM)",
        "idle: drover ÷ this",
    ]);
    t.row(vec![
        "drover master (separate process, SQLite)".into(),
        format!("{:.1}", median(&idle)),
        format!("{:.1}", median(&agent)),
        format!("{:.1}", median(&after)),
        format!("{:.1}", median(&after_idle)),
        format!("{:.1}", median(&peak)),
        "1.00x".into(),
    ]);
    if ray.is_empty() {
        t.row(vec![
            format!("Ray head: skipped ({})", ray_skipped.as_deref().unwrap_or("no result")),
            "—".into(),
            "—".into(),
            "—".into(),
            "—".into(),
            "—".into(),
            "—".into(),
        ]);
    } else {
        t.row(vec![
            ray_note,
            format!("{:.1}", median(&ray)),
            "—".into(),
            "—".into(),
            "—".into(),
            "—".into(),
            ratio(median(&idle), median(&ray)),
        ]);
    }
    t.print();
    println!(
        "runs, idle MB: {}; workload wall s: {} (median {} trials/s with master, agent and bench in separate processes)",
        runs_list(&idle),
        runs_list(&workload),
        num(args.trials as f64 / median(&workload))
    );
    let verdict = if median(&idle) < TARGET_IDLE_MB { "MET" } else { "MISSED" };
    println!("target < {TARGET_IDLE_MB:.0} MB idle: {verdict} ({} MB)\n", num(median(&idle)));
    Ok(())
}

async fn once(drover: &std::path::Path, trial: &std::path::Path, args: &FootprintArgs) -> Result<Reading> {
    let dir = tempfile::tempdir()?;
    let idle = Duration::from_secs_f64(args.idle_secs);
    let mut child = Command::new(drover)
        .args(["master", "--port", "0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env_remove("DROVER_DB")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {}", drover.display()))?;
    let stderr = child.stderr.take().context("no stderr")?;
    let master = Proc(child);
    let pid = master.0.id();
    // The master says where it listens; the rest of its stderr is drained so it never blocks.
    let (url_tx, url_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut url_tx = Some(url_tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.strip_prefix("master listening on ")
                && let Some(tx) = url_tx.take()
            {
                let _ = tx.send(rest.trim().to_string());
            }
        }
    });
    let url = tokio::task::spawn_blocking(move || url_rx.recv_timeout(Duration::from_secs(30)))
        .await?
        .context("the master did not say where it listens")?;
    let rest = Rest::new(url.clone())?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while rest.get::<serde_json::Value>("/api/v1/agents").await.is_err() {
        if Instant::now() > deadline {
            bail!("the master at {url} does not answer");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(idle).await;
    let (idle_mb, _) = rss_mb(pid)?;

    let agent = Proc(
        Command::new(drover)
            .args(["--master", &url, "agent", "--id", "bench-agent", "--cpu-slots", &args.slots.to_string(), "--work-dir"])
            .arg(dir.path().join("work"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start the agent")?,
    );
    rest.wait_agent(Duration::from_secs(20)).await?;
    tokio::time::sleep(idle).await;
    let (agent_mb, _) = rss_mb(pid)?;

    let (workload_s, e) = timed_experiment(&rest, &trivial_experiment(trial, args.trials, args.slots, "")).await?;
    if e.state != "COMPLETED" {
        bail!("the workload ended {} with {:?}", e.state, e.trial_counts);
    }
    let (after_mb, _) = rss_mb(pid)?;
    tokio::time::sleep(idle).await;
    let (after_idle_mb, peak_mb) = rss_mb(pid)?;
    drop(agent);
    drop(master);
    Ok(Reading { idle: idle_mb, agent: agent_mb, after: after_mb, after_idle: after_idle_mb, peak: peak_mb, workload_s })
}
