//! `ingest`: T trials each report P training points (metric values; names cycle `loss`, `acc`,
//! steps increase) and flush.
//!
//! - drover: an in-process master and agent; an experiment of T trivial trials that sleep
//!   (`sleep_s: 600`) holds T live allocations, whose real tokens are read from the store. T
//!   threads each build an SDK `Context::from_lookup` for one of those trials, and after a
//!   common start `report_training` P single-value points, then `flush()`. Wall time runs from
//!   the start until the last flush returns; all T × P rows must then be stored. The experiment
//!   is killed afterwards.
//! - diagnostic: the same rows straight into drover's `SqlStore::add_metrics` (T tasks, batches
//!   of 1000 values as the SDK sends them), no HTTP, JSON or SDK: what the store alone costs.
//! - floor: a raw SQLite bulk insert of the same rows into a table of the same shape (same
//!   primary key, WITHOUT ROWID, WAL, synchronous=NORMAL), one transaction: via sqlx's SQLite
//!   driver with 1000-row INSERTs, and via Python's sqlite3 `executemany`. The faster is the
//!   floor.
//! - diagnostic: the sqlx floor again, but with `$1, $2, ...` placeholders as drover's store
//!   writes them: sqlx binds each parameter after asking SQLite its name
//!   (`sqlite3_bind_parameter_name`), a linear search among named parameters, so a statement of
//!   n numbered parameters costs O(n^2) to bind, where anonymous `?` parameters cost O(n).

use std::str::FromStr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use drover_sdk::{Context, env};
use drover_store::{MetricGroup, MetricRow, NewExperiment, NewTrial, SqlStore, Store};
use serde_json::json;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection};

use crate::cluster::Cluster;
use crate::report::{Table, median, num, ratio, runs_list};
use crate::{IngestArgs, peer, sibling};

pub const TARGET_POINTS_PER_S: f64 = 200_000.0;
pub const TARGET_FLOOR_FRACTION: f64 = 0.5;
const NAMES: [&str; 2] = ["loss", "acc"];
/// As the SDK batches: up to 1000 values per report.
const STORE_BATCH: usize = 1000;
const FLOOR_ROWS_PER_INSERT: usize = 1000;

fn point(i: usize) -> (&'static str, i64, f64) {
    (NAMES[i % NAMES.len()], (i / NAMES.len()) as i64 + 1, 1.0 / (i as f64 + 1.0))
}

pub async fn run(args: &IngestArgs, runs: usize, _no_peer: bool) -> Result<()> {
    let (t, p) = (args.trials, args.points);
    if t == 0 || p == 0 {
        bail!("--trials and --points must be at least 1");
    }
    let rows = (t * p) as f64;
    eprintln!("== ingest: {t} trials x {p} points, {runs} runs");

    let mut drover = Vec::new();
    for r in 1..=runs {
        let wall = drover_sdk_once(t, p).await?;
        eprintln!("  drover run {r}: {wall:.3} s, {} points/s", num(rows / wall));
        drover.push(wall);
    }
    let mut direct = Vec::new();
    for r in 1..=runs {
        let wall = store_direct_once(t, p).await?;
        eprintln!("  store.add_metrics run {r}: {wall:.3} s, {} points/s", num(rows / wall));
        direct.push(wall);
    }
    let mut sqlx_floor = Vec::new();
    for r in 1..=runs {
        let wall = sqlx_floor_once(t, p, false).await?;
        eprintln!("  sqlx floor run {r}: {wall:.3} s, {} points/s", num(rows / wall));
        sqlx_floor.push(wall);
    }
    let mut sqlx_numbered = Vec::new();
    for r in 1..=runs {
        let wall = sqlx_floor_once(t, p, true).await?;
        eprintln!("  sqlx with $n placeholders run {r}: {wall:.3} s, {} points/s", num(rows / wall));
        sqlx_numbered.push(wall);
    }
    let mut py_floor = Vec::new();
    let mut py_skipped = None;
    for r in 1..=runs {
        match peer::python_sqlite_floor(t, p).await {
            Ok(wall) => {
                eprintln!("  python sqlite3 floor run {r}: {wall:.3} s, {} points/s", num(rows / wall));
                py_floor.push(wall);
            }
            Err(e) => {
                eprintln!("  python sqlite3 floor skipped: {e:#}");
                py_skipped = Some(format!("{e:#}"));
                py_floor.clear();
                break;
            }
        }
    }

    let rate = |walls: &[f64]| if walls.is_empty() { f64::NAN } else { rows / median(walls) };
    let drover_rate = rate(&drover);
    let floor_rate = rate(&sqlx_floor).max(if py_floor.is_empty() { 0.0 } else { rate(&py_floor) });

    println!("### ingest: {t} trials x {} points = {} rows (median of {runs} runs)\n", num(p as f64), num(rows));
    let mut table = Table::new(&["system", "wall s", "points/s", "drover points/s ÷ this", "runs (wall s)"]);
    let mut row = |name: &str, walls: &[f64]| {
        table.row(vec![
            name.into(),
            if walls.is_empty() { "—".into() } else { format!("{:.3}", median(walls)) },
            num(rate(walls)),
            ratio(drover_rate, rate(walls)),
            runs_list(walls),
        ])
    };
    row(&format!("drover: SDK report_training + flush ({t} threads) → REST → master → SQLite"), &drover);
    row("diagnostic: drover SqlStore::add_metrics direct (1000-value batches, no HTTP/JSON/SDK)", &direct);
    row(&format!("floor: sqlx SQLite, one transaction, {FLOOR_ROWS_PER_INSERT}-row INSERTs"), &sqlx_floor);
    row(&format!("diagnostic: the sqlx floor with drover's `$1..${}` placeholders", FLOOR_ROWS_PER_INSERT * 6), &sqlx_numbered);
    if py_floor.is_empty() {
        table.row(vec![
            format!("floor: python sqlite3 executemany: skipped ({})", py_skipped.as_deref().unwrap_or("no result")),
            "—".into(),
            "—".into(),
            "—".into(),
            String::new(),
        ]);
    } else {
        row("floor: python sqlite3 executemany, one transaction", &py_floor);
    }
    table.print();
    let v1 = if drover_rate >= TARGET_POINTS_PER_S { "MET" } else { "MISSED" };
    let v2 = if drover_rate >= TARGET_FLOOR_FRACTION * floor_rate { "MET" } else { "MISSED" };
    println!(
        "target >= {} points/s: {v1} ({} points/s); target >= {TARGET_FLOOR_FRACTION} x floor ({} points/s, the faster floor): {v2} ({:.2}x)\n",
        num(TARGET_POINTS_PER_S),
        num(drover_rate),
        num(floor_rate),
        drover_rate / floor_rate
    );
    Ok(())
}

/// One drover run through the SDK; returns wall seconds.
async fn drover_sdk_once(t: usize, p: usize) -> Result<f64> {
    let trial = sibling("drover-trivial-trial")?;
    let cluster = Cluster::start(t).await?;
    let result = async {
        let yaml = format!(
            "name: drover-bench-ingest\nentrypoint: [\"{}\"]\nhyperparameters:\n  sleep_s: 600\n\
             searcher: {{name: random, metric: validation_loss, smaller_is_better: true, max_trials: {t}, max_concurrent_trials: {t}}}\n",
            trial.display()
        );
        let e = cluster.rest.create(&yaml).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let allocations = loop {
            let live = cluster.master.master.store.live_allocations().await?;
            let exp: drover_api::rest::Experiment = cluster.rest.get(&format!("/api/v1/experiments/{}", e.id)).await?;
            if live.len() == t && exp.trial_counts.get("RUNNING") == Some(&(t as i64)) {
                break live;
            }
            if Instant::now() > deadline {
                bail!("only {} of {t} sleeping trials are live: {:?}", live.len(), exp.trial_counts);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let url = cluster.master.url();
        let targets: Vec<(i64, String)> = allocations.iter().map(|a| (a.trial_id, a.token.clone())).collect();
        let exp_id = e.id;
        let wall = tokio::task::spawn_blocking(move || sdk_threads(&url, exp_id, targets, p)).await??;

        let mut stored = 0;
        for a in &allocations {
            let summaries = cluster.master.master.store.metric_summaries(a.trial_id).await?;
            stored += summaries.iter().filter(|s| s.group == "training").map(|s| s.count).sum::<i64>();
        }
        if stored != (t * p) as i64 {
            bail!("the master stored {stored} training points, not {}", t * p);
        }
        cluster.rest.post(&format!("/api/v1/experiments/{exp_id}/kill"), &json!({})).await?;
        cluster.rest.wait_terminal(exp_id, Duration::from_secs(30), Duration::from_millis(50)).await?;
        Ok(wall)
    }
    .await;
    cluster.stop().await?;
    result
}

/// T threads with their own SDK context; returns seconds from the common start to the last flush.
fn sdk_threads(url: &str, experiment_id: i64, targets: Vec<(i64, String)>, p: usize) -> Result<f64> {
    let barrier = Arc::new(Barrier::new(targets.len() + 1));
    let handles: Vec<_> = targets
        .into_iter()
        .map(|(trial_id, token)| {
            let barrier = Arc::clone(&barrier);
            let url = url.to_string();
            std::thread::spawn(move || -> Result<Instant> {
                let ctx = Context::from_lookup(|name| match name {
                    n if n == env::MASTER => Some(url.clone()),
                    n if n == env::EXPERIMENT_ID => Some(experiment_id.to_string()),
                    n if n == env::TRIAL_ID => Some(trial_id.to_string()),
                    n if n == env::TRIAL_TOKEN => Some(token.clone()),
                    n if n == env::TRIAL_SEED => Some("0".into()),
                    n if n == env::HPARAMS => Some("{}".into()),
                    _ => None,
                });
                barrier.wait();
                let ctx = ctx?;
                for i in 0..p {
                    let (name, step, value) = point(i);
                    ctx.report_training(step, &[(name, value)]);
                }
                ctx.flush()?;
                let done = Instant::now();
                ctx.close()?;
                Ok(done)
            })
        })
        .collect();
    barrier.wait();
    let t0 = Instant::now();
    let mut last = t0;
    for h in handles {
        let done = h.join().map_err(|_| anyhow!("an SDK thread panicked"))??;
        last = last.max(done);
    }
    Ok((last - t0).as_secs_f64())
}

/// The same rows straight into drover's store; returns wall seconds.
async fn store_direct_once(t: usize, p: usize) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(SqlStore::open(&format!("sqlite://{}", dir.path().join("drover.db").display())).await?);
    let now = drover_master::cluster::now_ms();
    let exp = store
        .create_experiment(NewExperiment {
            name: "drover-bench".into(),
            description: None,
            state: "ACTIVE".into(),
            config_json: "{}".into(),
            config_yaml: String::new(),
            context: None,
            created_at: now,
        })
        .await?;
    let mut work = Vec::new();
    for i in 0..t {
        let trial_id = store
            .create_trial(NewTrial {
                experiment_id: exp,
                request_id: i as i64,
                state: "RUNNING".into(),
                hparams_json: "{}".into(),
                seed: 0,
                created_at: now,
            })
            .await?;
        let rows: Vec<MetricRow> = (0..p)
            .map(|i| {
                let (name, step, value) = point(i);
                MetricRow { group: MetricGroup::Training, name: name.into(), step, value, ts_ms: now }
            })
            .collect();
        let batches: Vec<Vec<MetricRow>> = rows.chunks(STORE_BATCH).map(<[MetricRow]>::to_vec).collect();
        work.push((trial_id, batches));
    }
    let t0 = Instant::now();
    let tasks: Vec<_> = work
        .into_iter()
        .map(|(trial_id, batches)| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut stored = 0;
                for b in &batches {
                    stored += store.add_metrics(trial_id, b).await?;
                }
                anyhow::Ok(stored)
            })
        })
        .collect();
    let mut stored = 0;
    for task in tasks {
        stored += task.await??;
    }
    let wall = t0.elapsed().as_secs_f64();
    if stored != t * p {
        bail!("the store took {stored} rows, not {}", t * p);
    }
    store.close().await;
    Ok(wall)
}

/// Raw SQLite through sqlx: one connection, one transaction, multi-row INSERTs with `?`
/// placeholders, or with `$1, $2, ...` as drover's store writes them when `numbered`.
async fn sqlx_floor_once(t: usize, p: usize, numbered: bool) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("floor.db");
    let mut conn = SqliteConnectOptions::from_str("sqlite://")?
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .connect()
        .await
        .context("open the floor database")?;
    sqlx::raw_sql(
        "CREATE TABLE metrics (
            trial_id BIGINT NOT NULL, grp TEXT NOT NULL, name TEXT NOT NULL, step BIGINT NOT NULL,
            value REAL NOT NULL, ts_ms BIGINT NOT NULL,
            PRIMARY KEY (trial_id, grp, name, step)
        ) WITHOUT ROWID",
    )
    .execute(&mut conn)
    .await?;
    let ts = drover_master::cluster::now_ms();
    let rows: Vec<(i64, &str, i64, f64)> = (1..=t as i64)
        .flat_map(|trial| {
            (0..p).map(move |i| {
                let (name, step, value) = point(i);
                (trial, name, step, value)
            })
        })
        .collect();
    let statement = |n: usize| {
        let mut sql = String::from("INSERT INTO metrics (trial_id, grp, name, step, value, ts_ms) VALUES ");
        if numbered {
            let groups: Vec<String> =
                (0..n).map(|r| format!("({})", (1..=6).map(|c| format!("${}", r * 6 + c)).collect::<Vec<_>>().join(","))).collect();
            sql.push_str(&groups.join(","));
        } else {
            sql.push_str(&vec!["(?,?,?,?,?,?)"; n].join(","));
        }
        sql
    };
    let full = statement(FLOOR_ROWS_PER_INSERT);
    let t0 = Instant::now();
    let mut tx = conn.begin().await?;
    for chunk in rows.chunks(FLOOR_ROWS_PER_INSERT) {
        let sql = if chunk.len() == FLOOR_ROWS_PER_INSERT { full.clone() } else { statement(chunk.len()) };
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for (trial, name, step, value) in chunk {
            q = q.bind(*trial).bind("training").bind(*name).bind(*step).bind(*value).bind(ts);
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    let wall = t0.elapsed().as_secs_f64();
    let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM metrics").fetch_one(&mut conn).await?;
    if count != (t * p) as i64 {
        bail!("the floor stored {count} rows, not {}", t * p);
    }
    conn.close().await?;
    Ok(wall)
}
