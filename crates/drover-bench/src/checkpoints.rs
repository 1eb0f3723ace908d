//! Checkpoint save and restore of `--mb` MiB (1 GiB by default, in 8 files) through the real
//! path: a trial (`drover-trivial-trial`, `checkpoint_bench_mb`) on an in-process cluster calls
//! the SDK's `checkpoint_save` (which stores every byte and then registers the checkpoint with
//! the master) and `checkpoint_restore` (which fetches the file list from the master and the
//! bytes from storage), and reports how long each took.
//!
//! Beside it, the floors on the same disk and server: `cp -r` of the same bytes on local disk
//! (and `cp -r; sync` for a durable save with `fsync: true`), and a plain loop of one PUT (then
//! GET) per file against the S3 server through object_store's client alone.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use drover_api::rest::Trial;

use crate::cluster::{Cluster, trivial_experiment};
use crate::report::{Table, median};

fn write_source(dir: &Path, mb: u64) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let block: Vec<u8> = (0..1u64 << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    for i in 0..8 {
        let mut f = std::fs::File::create(dir.join(format!("shard-{i}.bin")))?;
        let mut left = (mb << 20) / 8;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            std::io::Write::write_all(&mut f, &block[..n])?;
            left -= n as u64;
        }
    }
    Ok(())
}

fn cp(from: &Path, to: &Path) -> Result<f64> {
    let started = Instant::now();
    let status = std::process::Command::new("cp").arg("-r").arg(from).arg(to).status().context("running cp")?;
    if !status.success() {
        bail!("cp failed");
    }
    Ok(started.elapsed().as_secs_f64())
}

/// One drover save + restore; returns (save s, restore s).
async fn drover_round(mb: u64, storage_yaml: &str) -> Result<(f64, f64)> {
    let trial = crate::sibling("drover-trivial-trial")?;
    let cluster = Cluster::start(1).await?;
    let yaml = format!("{}{storage_yaml}max_restarts: 0\n", trivial_experiment(&trial, 1, 1, &format!("  checkpoint_bench_mb: {mb}\n")));
    let e = cluster.rest.create(&yaml).await?;
    let e = cluster.rest.wait_terminal(e.id, Duration::from_secs(1800), Duration::from_millis(100)).await?;
    let trials: Vec<Trial> = cluster.rest.get(&format!("/api/v1/experiments/{}/trials", e.id)).await?;
    let metric = |name: &str| trials.first().and_then(|t| t.summaries.iter().find(|s| s.name == name)).map(|s| s.last);
    let result = match (e.state.as_str(), metric("save_s"), metric("restore_s")) {
        ("COMPLETED", Some(save), Some(restore)) => Ok((save, restore)),
        _ => Err(anyhow::anyhow!("the checkpoint trial ended {} without its timings", e.state)),
    };
    cluster.stop().await?;
    result
}

/// The S3 floor: one plain (signed, single-request) PUT per file with the file in memory, then
/// one GET per file written to disk; object_store's client with nothing of drover around it.
async fn s3_floor(endpoint: &str, bucket: &str, src: &Path, dst: &Path) -> Result<(f64, f64)> {
    use object_store::{ObjectStoreExt, PutPayload, path::Path as Key};
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_bucket_name(bucket)
        .with_access_key_id("bench")
        .with_secret_access_key("bench")
        .build()?;
    let mut files: Vec<_> = std::fs::read_dir(src)?.flatten().map(|e| e.path()).collect();
    files.sort();
    let started = Instant::now();
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let body = tokio::fs::read(f).await?;
        store.put(&Key::from(format!("floor/{name}")), PutPayload::from(body)).await?;
    }
    let put = started.elapsed().as_secs_f64();
    std::fs::create_dir_all(dst)?;
    let started = Instant::now();
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let bytes = store.get(&Key::from(format!("floor/{name}"))).await?.bytes().await?;
        tokio::fs::write(dst.join(&name), &bytes).await?;
    }
    Ok((put, started.elapsed().as_secs_f64()))
}

fn create_bucket(endpoint: &str, bucket: &str) -> Result<()> {
    use std::io::{Read, Write};
    let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(host).with_context(|| format!("connecting to {endpoint}"))?;
    write!(stream, "PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    if !answer.starts_with("HTTP/1.1 200") {
        bail!("creating bucket {bucket}: {answer}");
    }
    Ok(())
}

pub async fn run(mb: u64, runs: usize) -> Result<()> {
    let mib = mb as f64;
    let rate = |s: f64| mib / s;
    println!("## Checkpoint save and restore, {mb} MiB in 8 files, median of {runs} runs\n");
    let mut table = Table::new(&["storage", "operation", "drover MiB/s", "floor MiB/s", "floor", "drover / floor"]);

    // Local disk.
    let work = tempfile::tempdir()?;
    write_source(&work.path().join("src"), mb)?;
    let (mut saves, mut restores, mut cps) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let (save, restore) = drover_round(mb, "").await?;
        let dst = work.path().join(format!("cp-{run}"));
        let floor = cp(&work.path().join("src"), &dst)?;
        std::fs::remove_dir_all(&dst)?;
        eprintln!("local run {run}: save {save:.3} s, restore {restore:.3} s, cp {floor:.3} s");
        saves.push(save);
        restores.push(restore);
        cps.push(floor);
    }
    let floor = median(&cps);
    for (op, times) in [("save", &saves), ("restore", &restores)] {
        let t = median(times);
        table.row(vec![
            "local directory".into(),
            op.into(),
            format!("{:.0}", rate(t)),
            format!("{:.0}", rate(floor)),
            "cp -r".into(),
            format!("{:.2}", floor / t),
        ]);
    }

    // Durable saves (`fsync: true`) beside `cp -r` followed by `sync`.
    let (mut saves, mut floors) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let (save, _) = drover_round(mb, "checkpoint_storage: {fsync: true}\n").await?;
        let dst = work.path().join(format!("cps-{run}"));
        let started = Instant::now();
        cp(&work.path().join("src"), &dst)?;
        std::process::Command::new("sync").status().context("running sync")?;
        let floor = started.elapsed().as_secs_f64();
        std::fs::remove_dir_all(&dst)?;
        eprintln!("local fsync run {run}: save {save:.3} s, cp + sync {floor:.3} s");
        saves.push(save);
        floors.push(floor);
    }
    let (t, f) = (median(&saves), median(&floors));
    table.row(vec![
        "local directory, fsync: true".into(),
        "save".into(),
        format!("{:.0}", rate(t)),
        format!("{:.0}", rate(f)),
        "cp -r; sync".into(),
        format!("{:.2}", f / t),
    ]);

    // S3 on loopback.
    match std::env::var("DROVER_TEST_S3_ENDPOINT") {
        Err(_) => eprintln!("DROVER_TEST_S3_ENDPOINT is unset: skipping S3 (../shared/ci/services.sh s3 starts one)"),
        Ok(endpoint) => {
            let (mut saves, mut restores, mut puts, mut gets) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for run in 0..runs {
                let bucket = format!("drover-bench-{}-{run}", std::process::id());
                create_bucket(&endpoint, &bucket)?;
                let storage = format!(
                    "checkpoint_storage: {{type: s3, bucket: {bucket}, endpoint_url: \"{endpoint}\", access_key_id: bench, secret_access_key: bench}}\n"
                );
                let (save, restore) = drover_round(mb, &storage).await?;
                let dst = work.path().join(format!("get-{run}"));
                let (put, get) = s3_floor(&endpoint, &bucket, &work.path().join("src"), &dst).await?;
                std::fs::remove_dir_all(&dst)?;
                eprintln!("s3 run {run}: save {save:.3} s, restore {restore:.3} s, PUT loop {put:.3} s, GET loop {get:.3} s");
                saves.push(save);
                restores.push(restore);
                puts.push(put);
                gets.push(get);
            }
            for (op, times, floor, name) in [("save", &saves, &puts, "PUT per file"), ("restore", &restores, &gets, "GET per file")] {
                let (t, f) = (median(times), median(floor));
                table.row(vec![
                    "S3 (moto, loopback)".into(),
                    op.into(),
                    format!("{:.0}", rate(t)),
                    format!("{:.0}", rate(f)),
                    name.into(),
                    format!("{:.2}", f / t),
                ]);
            }
        }
    }
    table.print();
    Ok(())
}
