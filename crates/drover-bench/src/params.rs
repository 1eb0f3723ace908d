//! `params`: the parameter database as a distributed-RL loop uses it. One writer pushes
//! versions of `--mb` MB every `1 / --rate` s while `--readers` readers get `latest` in a loop
//! for `--secs` s; each get is timed from the request until its last byte is in.
//!
//! - drover: an in-process master (SQLite, parameter storage a directory on the same disk),
//!   over HTTP on loopback: the writer `PUT`s each version (and collects all but the 5 newest
//!   untagged ones every 10 pushes, as a learner would), readers `GET .../versions/latest`
//!   through one shared `reqwest` client (a connection each). Every read is checked for its
//!   size and its version header.
//!   Versions up to 32 MiB are served from the master's memory after their first read; the
//!   diagnostic row turns that off, so every read streams the file from the storage directory.
//! - floor (file): the same writes as plain files in a directory (temporary name, then a
//!   rename) and the same reads as `std::fs::read` of the newest one, by as many concurrent
//!   readers: what the bytes cost with no network, no HTTP and no database.
//! - floor (tcp): a raw TCP server on loopback that answers each one-byte request with the
//!   newest version's bytes from memory (length first), to as many connected readers, while a
//!   writer replaces those bytes at the same rate: what moving the bytes over loopback costs.
//!
//! Latencies are each run's p50 and p99 over every read of that run; the table shows the
//! medians of those across `--runs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ParamsArgs;
use crate::report::{Table, median, num, ratio, runs_list};

/// What one run of one system measured.
struct Run {
    /// Read latencies in ms.
    p50: f64,
    p99: f64,
    reads: u64,
    /// Versions the writer managed to push.
    pushes: u64,
    secs: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn summarise(mut latencies: Vec<f64>, pushes: u64, secs: f64) -> Run {
    latencies.sort_by(f64::total_cmp);
    Run { p50: percentile(&latencies, 0.5), p99: percentile(&latencies, 0.99), reads: latencies.len() as u64, pushes, secs }
}

/// A version's bytes: its number in the first 8 bytes, then a pattern.
fn blob(version: i64, len: usize) -> bytes::Bytes {
    let mut v: Vec<u8> = (0..len).map(|i| (i as u64).wrapping_mul(2_654_435_761) as u8).collect();
    v[..8].copy_from_slice(&version.to_le_bytes());
    v.into()
}

pub async fn run(args: &ParamsArgs, runs: usize) -> Result<()> {
    if args.readers == 0 || args.mb == 0 || args.rate <= 0.0 || args.secs <= 0.0 {
        bail!("--readers, --mb, --rate and --secs must be positive");
    }
    let len = args.mb * 1_000_000;
    eprintln!(
        "== params: {} readers of latest, a writer of {} MB versions at {}/s, {} s, {runs} runs",
        args.readers, args.mb, args.rate, args.secs
    );
    let mut systems: Vec<(String, Vec<Run>)> = vec![
        ("drover: GET /api/v1/params/{name}/versions/latest over HTTP (SQLite, directory storage)".into(), Vec::new()),
        ("diagnostic: drover with every read streamed from the directory (no in-memory copy)".into(), Vec::new()),
        ("floor (file): std::fs::read of the newest file in the directory".into(), Vec::new()),
        ("floor (tcp): raw loopback TCP, the newest bytes from memory".into(), Vec::new()),
    ];
    for r in 1..=runs {
        for (i, (_, results)) in systems.iter_mut().enumerate() {
            let run = match i {
                0 => drover_once(args, len, true).await?,
                1 => drover_once(args, len, false).await?,
                2 => file_floor_once(args, len).await?,
                _ => tcp_floor_once(args, len).await?,
            };
            eprintln!(
                "  {} run {r}: p50 {:.1} ms, p99 {:.1} ms, {} reads ({:.0} MB/s), {} pushes ({:.1}/s)",
                ["drover", "drover streamed", "file floor", "tcp floor"][i],
                run.p50,
                run.p99,
                run.reads,
                run.reads as f64 * len as f64 / 1e6 / run.secs,
                run.pushes,
                run.pushes as f64 / run.secs
            );
            results.push(run);
        }
    }

    println!(
        "### params: {} readers of `latest`, one writer pushing {} MB versions at {}/s, {} s per run (median of {runs} runs)\n",
        args.readers, args.mb, args.rate, args.secs
    );
    let p50 = |runs: &[Run]| median(&runs.iter().map(|r| r.p50).collect::<Vec<_>>());
    let p99 = |runs: &[Run]| median(&runs.iter().map(|r| r.p99).collect::<Vec<_>>());
    let drover_p50 = p50(&systems[0].1);
    let drover_p99 = p99(&systems[0].1);
    let mut table = Table::new(&[
        "system",
        "get p50 ms",
        "get p99 ms",
        "drover p50 ÷ this",
        "drover p99 ÷ this",
        "reads/s",
        "read MB/s",
        "pushes/s",
        "runs (p50 ms)",
    ]);
    for (name, results) in &systems {
        let reads_per_s = median(&results.iter().map(|r| r.reads as f64 / r.secs).collect::<Vec<_>>());
        table.row(vec![
            name.clone(),
            num(p50(results)),
            num(p99(results)),
            ratio(drover_p50, p50(results)),
            ratio(drover_p99, p99(results)),
            num(reads_per_s),
            num(reads_per_s * len as f64 / 1e6),
            num(median(&results.iter().map(|r| r.pushes as f64 / r.secs).collect::<Vec<_>>())),
            runs_list(&results.iter().map(|r| r.p50).collect::<Vec<_>>()),
        ]);
    }
    table.print();
    Ok(())
}

/// Pushes at `rate` per second (later when a push takes longer) until `stop`; calls
/// `push(version)` for each and returns how many went.
async fn write_at<F, Fut>(rate: f64, stop: Arc<AtomicBool>, mut push: F) -> Result<u64>
where
    F: FnMut(i64) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut version = 1;
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        push(version).await?;
        version += 1;
    }
    Ok((version - 1) as u64)
}

async fn drover_once(args: &ParamsArgs, len: usize, hot: bool) -> Result<Run> {
    let dir = tempfile::tempdir()?;
    let db = format!("sqlite://{}", dir.path().join("drover.db").display());
    let config = drover_master::MasterConfig::new(db, dir.path().join("checkpoints"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let master = drover_master::start(config, listener).await?;
    if !hot {
        master.master.params.set_hot_item_bytes(0);
    }
    let base = master.url();
    let http = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(args.readers + 4).build()?;
    let push = {
        let (http, base) = (http.clone(), base.clone());
        move |version: i64| {
            let (http, base) = (http.clone(), base.clone());
            async move {
                let r = http.put(format!("{base}/api/v1/params/policy/versions/{version}")).body(blob(version, len)).send().await?;
                if r.status() != 201 {
                    bail!("push {version}: {} {}", r.status(), r.text().await.unwrap_or_default());
                }
                // A learner keeps a few recent versions, not all of them.
                if version % 10 == 0 {
                    let r =
                        http.post(format!("{base}/api/v1/params/policy/gc")).json(&serde_json::json!({"keep_untagged": 5})).send().await?;
                    if !r.status().is_success() {
                        bail!("gc: {}", r.status());
                    }
                }
                Ok(())
            }
        }
    };
    push(0).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_at(args.rate, stop.clone(), push));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.secs);
    let mut readers = Vec::new();
    for _ in 0..args.readers {
        let (http, url) = (http.clone(), format!("{base}/api/v1/params/policy/versions/latest"));
        readers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                let r = http.get(&url).send().await?;
                if r.status() != 200 {
                    bail!("get latest: {}", r.status());
                }
                let version: i64 = r.headers()[drover_api::rest::param_headers::VERSION].to_str()?.parse()?;
                let bytes = r.bytes().await?;
                latencies.push(t.elapsed().as_secs_f64() * 1e3);
                if bytes.len() != len || bytes[..8] != version.to_le_bytes() {
                    bail!("version {version} came back with {} bytes", bytes.len());
                }
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for r in readers {
        latencies.extend(r.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    let pushes = writer.await??;
    master.shutdown().await?;
    Ok(summarise(latencies, pushes, secs))
}

fn file_of(dir: &Path, version: i64) -> PathBuf {
    dir.join(format!("v{version}"))
}

async fn file_floor_once(args: &ParamsArgs, len: usize) -> Result<Run> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().to_path_buf();
    let newest = Arc::new(AtomicI64::new(-1));
    let write = {
        let (dir, newest) = (dir.clone(), newest.clone());
        move |version: i64| {
            let (dir, newest) = (dir.clone(), newest.clone());
            async move {
                tokio::task::spawn_blocking(move || -> Result<()> {
                    let part = dir.join(format!(".tmp-{version}"));
                    std::fs::write(&part, blob(version, len))?;
                    std::fs::rename(&part, file_of(&dir, version))?;
                    newest.store(version, Ordering::SeqCst);
                    // Keep a few, as the drover writer's collection does.
                    let _ = std::fs::remove_file(file_of(&dir, version - 6));
                    Ok(())
                })
                .await?
            }
        }
    };
    write(0).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_at(args.rate, stop.clone(), write));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.secs);
    let mut readers = Vec::new();
    for _ in 0..args.readers {
        let (dir, newest) = (dir.clone(), newest.clone());
        readers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                let version = newest.load(Ordering::SeqCst);
                let path = file_of(&dir, version);
                let bytes = tokio::task::spawn_blocking(move || std::fs::read(path)).await?.context("reading the newest file")?;
                latencies.push(t.elapsed().as_secs_f64() * 1e3);
                if bytes.len() != len {
                    bail!("version {version} has {} bytes", bytes.len());
                }
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for r in readers {
        latencies.extend(r.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    let pushes = writer.await??;
    Ok(summarise(latencies, pushes, secs))
}

async fn tcp_floor_once(args: &ParamsArgs, len: usize) -> Result<Run> {
    let current = Arc::new(std::sync::RwLock::new(blob(0, len)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let served = Arc::new(AtomicU64::new(0));
    let server = {
        let (current, served) = (current.clone(), served.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else { break };
                socket.set_nodelay(true).ok();
                let (current, served) = (current.clone(), served.clone());
                tokio::spawn(async move {
                    let mut ask = [0u8; 1];
                    while socket.read_exact(&mut ask).await.is_ok() {
                        let bytes = current.read().map(|b| b.clone()).unwrap_or_default();
                        if socket.write_all(&(bytes.len() as u64).to_le_bytes()).await.is_err() || socket.write_all(&bytes).await.is_err() {
                            break;
                        }
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        })
    };
    let write = {
        let current = current.clone();
        move |version: i64| {
            let current = current.clone();
            async move {
                let bytes = blob(version, len);
                *current.write().map_err(|_| anyhow::anyhow!("poisoned"))? = bytes;
                Ok(())
            }
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_at(args.rate, stop.clone(), write));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.secs);
    let mut readers = Vec::new();
    for _ in 0..args.readers {
        readers.push(tokio::spawn(async move {
            let mut socket = tokio::net::TcpStream::connect(addr).await?;
            socket.set_nodelay(true)?;
            let mut latencies = Vec::new();
            let mut buf = vec![0u8; len];
            while Instant::now() < deadline {
                let t = Instant::now();
                socket.write_all(&[1]).await?;
                let mut n = [0u8; 8];
                socket.read_exact(&mut n).await?;
                let n = u64::from_le_bytes(n) as usize;
                buf.resize(n, 0);
                socket.read_exact(&mut buf).await?;
                latencies.push(t.elapsed().as_secs_f64() * 1e3);
                if n != len {
                    bail!("{n} bytes");
                }
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for r in readers {
        latencies.extend(r.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    let pushes = writer.await??;
    server.abort();
    Ok(summarise(latencies, pushes, secs))
}
