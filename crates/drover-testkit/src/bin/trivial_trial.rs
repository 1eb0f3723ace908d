//! A trial for drover's own tests: reports a known loss curve within milliseconds, and on request
//! fails, sleeps, or saves a checkpoint.
//!
//! Hyperparameters (all optional):
//! - `x` (f64, 0.5): the loss is `(x - 0.3)^2 + step * 0.001` at steps `1..=n_metrics`, and the
//!   validation loss at the last step is `(x - 0.3)^2`, so searchers have a known optimum.
//! - `n_metrics` (int, 10): how many training points.
//! - `sleep_s` (f64): sleep this long first, exiting 0 early if the master asks to stop.
//! - `fail` (bool): exit 1 before reporting anything, for fault tests.
//! - `curve` (bool): instead, report `validation_loss = (x - 0.3)^2 + 1/epoch` and `epochs`
//!   for epochs `1..=n_metrics`, flushing each and stopping when the searcher asks.
//! - `checkpoint` (bool): save `state.json` = `{"step": n, "x": x}` as a checkpoint at step n.
//! - `epoch_s` (f64): with `curve`, sleep this long after each epoch (a trial that takes a while,
//!   for preemption tests).
//! - `gang` (bool): one member of a gang: prints its rank, world size and peers, listens on a
//!   port, meets the others at the master's rendezvous; rank 0 then hears from every other rank
//!   over TCP and reports `peers_heard`.
//! - `curve` with `checkpoint`: also saves a checkpoint `{"epoch": e}` after every epoch.
//! - `die_during_checkpoint_mb` (int): writes a checkpoint of that many MiB (in 4 MiB files)
//!   and SIGKILLs itself as soon as the copy into the checkpoint directory has begun, to
//!   prove that an interrupted save registers nothing.
//! - `checkpoint_bench_mb` (int): writes that many MiB in 8 files, then times
//!   `checkpoint_save` and `checkpoint_restore` of them and reports `save_s` and `restore_s`
//!   as validation metrics (drover-bench's checkpoint benchmark).
//! - `pbt` (bool): a toy model for population based training. Its one weight `w` starts at 0
//!   and each epoch moves `x` of the way to 1; it reports `validation_loss = (1 - w)^2` and
//!   `epochs` each epoch up to `n_metrics`, stops when asked, and then checkpoints
//!   `{"epoch", "w", "lineage"}`, where `lineage` lists the trial ids whose training the weight
//!   carries (its ancestors' from the checkpoint it started from, then its own).
//!
//! - `plant_links` (string, a decoy directory the test made; never a system path): behaves as
//!   a hostile trial on a file-system storage. It saves `n_metrics` checkpoints through the SDK;
//!   into each stored checkpoint it then plants, behind drover's back, `etcdir -> DECOY` and
//!   replaces `state.json` by a link to `DECOY/file`. Then it registers by hand a checkpoint
//!   whose directory holds a link, and prints the master's answer
//!   (`hostile registration: HTTP 400 ...`).
//!
//! On a restart with a latest checkpoint, it restores it and prints its `state.json` first.
//!
//! With `DROVER_TRIVIAL_OFFLINE=1` it talks to no master: it computes the same 10 losses (x = 0.5),
//! prints them and exits 0. `drover-bench` spawns it that way as the plain fork+exec floor.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use drover_sdk::{Context, SdkError};
use serde_json::{Value, json};

/// How often the sleep checks for a stop request.
const STOP_CHECK_EVERY: Duration = Duration::from_millis(50);

fn main() -> ExitCode {
    if std::env::var("DROVER_TRIVIAL_OFFLINE").is_ok_and(|v| v == "1") {
        let base = (0.5f64 - 0.3).powi(2);
        for step in 1..=10i64 {
            println!("step {step} loss {}", base + step as f64 * 0.001);
        }
        return ExitCode::SUCCESS;
    }
    match run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("drover-trivial-trial: {err}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<ExitCode, SdkError> {
    let ctx = Context::from_env()?;
    let x: f64 = ctx.hparam_opt("x")?.unwrap_or(0.5);
    let n_metrics: i64 = ctx.hparam_opt("n_metrics")?.unwrap_or(10);
    let sleep_s: Option<f64> = ctx.hparam_opt("sleep_s")?;
    let fail: bool = ctx.hparam_opt("fail")?.unwrap_or(false);
    let save_checkpoint: bool = ctx.hparam_opt("checkpoint")?.unwrap_or(false);
    let curve: bool = ctx.hparam_opt("curve")?.unwrap_or(false);
    if let Some(mb) = ctx.hparam_opt::<u64>("checkpoint_bench_mb")? {
        return checkpoint_bench(ctx, mb);
    }
    if let Some(mb) = ctx.hparam_opt::<u64>("die_during_checkpoint_mb")? {
        return die_during_checkpoint(ctx, mb);
    }
    if let Some(decoy) = ctx.hparam_opt::<String>("plant_links")? {
        return plant_links(ctx, std::path::Path::new(&decoy), n_metrics);
    }
    if ctx.hparam_opt::<bool>("pbt")?.unwrap_or(false) {
        return toy_pbt_member(ctx, x, n_metrics);
    }
    if ctx.hparam_opt::<bool>("gang")?.unwrap_or(false) {
        return gang_member(ctx);
    }
    let epoch_s: f64 = ctx.hparam_opt("epoch_s")?.unwrap_or(0.0);
    println!("trial {} of experiment {}: x={x} n_metrics={n_metrics}", ctx.trial_id(), ctx.experiment_id());

    if let Some(uuid) = ctx.latest_checkpoint() {
        let dir = scratch_dir(&ctx, "restore")?;
        ctx.checkpoint_restore(uuid, &dir)?;
        let state_path = dir.join("state.json");
        let state = std::fs::read_to_string(&state_path).map_err(|source| SdkError::Io { action: "read", path: state_path, source })?;
        println!("resumed from checkpoint {uuid}: {state}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    if let Some(seconds) = sleep_s {
        let until = Instant::now() + Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or(Duration::MAX);
        while Instant::now() < until {
            if ctx.should_stop() {
                println!("stop requested while sleeping; exiting");
                ctx.close()?;
                return Ok(ExitCode::SUCCESS);
            }
            std::thread::sleep(STOP_CHECK_EVERY.min(until.saturating_duration_since(Instant::now())));
        }
    }

    if fail {
        eprintln!("failing on purpose (hparam fail=true)");
        return Ok(ExitCode::from(1));
    }

    let base = (x - 0.3).powi(2);
    if curve {
        // A learning curve for adaptive searchers: one validation per epoch, improving with
        // time, ordered by x at every epoch; stops as soon as the searcher says so.
        for epoch in 1..=n_metrics {
            ctx.report_validation(epoch, &[("validation_loss", base + 1.0 / epoch as f64), ("epochs", epoch as f64)]);
            ctx.flush()?;
            if save_checkpoint {
                let dir = scratch_dir(&ctx, "save")?;
                let path = dir.join("state.json");
                std::fs::write(&path, json!({"epoch": epoch}).to_string()).map_err(|source| SdkError::Io {
                    action: "write",
                    path,
                    source,
                })?;
                let uuid = ctx.checkpoint_save(epoch, &dir, json!({"epoch": epoch}))?;
                println!("epoch {epoch}: checkpoint {uuid}");
                let _ = std::fs::remove_dir_all(&dir);
            }
            if epoch_s > 0.0 {
                std::thread::sleep(Duration::from_secs_f64(epoch_s));
            }
            if ctx.should_stop() {
                println!("stopped by the searcher after epoch {epoch}");
                break;
            }
        }
        ctx.close()?;
        return Ok(ExitCode::SUCCESS);
    }
    for step in 1..=n_metrics {
        ctx.report_training(step, &[("loss", base + step as f64 * 0.001)]);
    }
    ctx.report_validation(n_metrics, &[("validation_loss", base)]);

    if save_checkpoint {
        let dir = scratch_dir(&ctx, "save")?;
        let state_path = dir.join("state.json");
        let state = json!({"step": n_metrics, "x": x}).to_string();
        std::fs::write(&state_path, state).map_err(|source| SdkError::Io { action: "write", path: state_path, source })?;
        let uuid = ctx.checkpoint_save(n_metrics, &dir, json!({"source": "drover-trivial-trial"}))?;
        println!("saved checkpoint {uuid}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    ctx.close()?;
    Ok(ExitCode::SUCCESS)
}

fn gang_member(ctx: Context) -> Result<ExitCode, SdkError> {
    use std::io::{Read, Write};
    let io = |action: &'static str| move |source| SdkError::Io { action, path: "a gang socket".into(), source };
    let (rank, world) = (ctx.rank(), ctx.world_size());
    println!("rank {rank} of {world} on {:?}", ctx.peer_hosts());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("bind"))?;
    let address = listener.local_addr().map_err(io("read the address of"))?.to_string();
    let addresses = ctx.rendezvous(&address, Duration::from_secs(60))?;
    println!("rank {rank} met {addresses:?}");
    if rank == 0 {
        let mut heard = Vec::new();
        for _ in 1..world {
            let (mut stream, _) = listener.accept().map_err(io("accept on"))?;
            let mut text = String::new();
            stream.read_to_string(&mut text).map_err(io("read"))?;
            heard.push(text);
        }
        heard.sort();
        println!("rank 0 heard {heard:?}");
        ctx.report_validation(1, &[("validation_loss", 0.0), ("peers_heard", heard.len() as f64)]);
    } else {
        let mut stream = std::net::TcpStream::connect(&addresses[0]).map_err(io("connect"))?;
        write!(stream, "hello from rank {rank}").map_err(io("write"))?;
    }
    ctx.close()?;
    Ok(ExitCode::SUCCESS)
}

fn checkpoint_bench(ctx: Context, mb: u64) -> Result<ExitCode, SdkError> {
    let dir = scratch_dir(&ctx, "bench-src")?;
    let per_file = (mb << 20) / 8;
    // Not zeros: no layer below may shortcut sparse or compressible data.
    let block: Vec<u8> = (0..1u64 << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    for i in 0..8 {
        let path = dir.join(format!("shard-{i}.bin"));
        let mut f = std::fs::File::create(&path).map_err(|source| SdkError::Io { action: "create", path: path.clone(), source })?;
        let mut left = per_file;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            std::io::Write::write_all(&mut f, &block[..n]).map_err(|source| SdkError::Io {
                action: "write",
                path: path.clone(),
                source,
            })?;
            left -= n as u64;
        }
    }
    let started = Instant::now();
    let uuid = ctx.checkpoint_save(1, &dir, json!({"bench": true}))?;
    let save_s = started.elapsed().as_secs_f64();
    let restored = scratch_dir(&ctx, "bench-dst")?;
    let started = Instant::now();
    ctx.checkpoint_restore(&uuid, &restored)?;
    let restore_s = started.elapsed().as_secs_f64();
    println!("checkpoint of {mb} MiB: save {save_s:.3} s, restore {restore_s:.3} s");
    ctx.report_validation(1, &[("save_s", save_s), ("restore_s", restore_s), ("validation_loss", save_s + restore_s)]);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&restored);
    ctx.close()?;
    Ok(ExitCode::SUCCESS)
}

fn die_during_checkpoint(ctx: Context, mb: u64) -> Result<ExitCode, SdkError> {
    let dir = scratch_dir(&ctx, "big")?;
    let chunk = vec![0x5au8; 4 << 20];
    for i in 0..mb.div_ceil(4) {
        let path = dir.join(format!("part-{i:04}.bin"));
        std::fs::write(&path, &chunk).map_err(|source| SdkError::Io { action: "write", path, source })?;
    }
    let root = std::env::var_os(drover_sdk::env::CHECKPOINT_DIR).map(std::path::PathBuf::from);
    // The watcher: the first entry in the storage directory means the copy has begun.
    std::thread::spawn(move || {
        let Some(root) = root else { return };
        loop {
            if std::fs::read_dir(&root).is_ok_and(|mut entries| entries.next().is_some()) {
                println!("the checkpoint copy has begun: killing myself");
                let _ = std::process::Command::new("kill").args(["-9", &std::process::id().to_string()]).status();
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    });
    let uuid = ctx.checkpoint_save(1, &dir, json!({}))?;
    println!("saved checkpoint {uuid} before the watcher fired");
    ctx.close()?;
    Ok(ExitCode::SUCCESS)
}

fn toy_pbt_member(ctx: Context, x: f64, n_metrics: i64) -> Result<ExitCode, SdkError> {
    let (mut epoch, mut w, mut lineage) = (0i64, 0.0f64, Vec::<Value>::new());
    if let Some(uuid) = ctx.latest_checkpoint() {
        let dir = scratch_dir(&ctx, "restore")?;
        ctx.checkpoint_restore(uuid, &dir)?;
        let path = dir.join("state.json");
        let text = std::fs::read_to_string(&path).map_err(|source| SdkError::Io { action: "read", path: path.clone(), source })?;
        let state: Value = serde_json::from_str(&text).map_err(|e| SdkError::Io { action: "parse", path, source: e.into() })?;
        epoch = state["epoch"].as_i64().unwrap_or(0);
        w = state["w"].as_f64().unwrap_or(0.0);
        lineage = state["lineage"].as_array().cloned().unwrap_or_default();
        println!("resumed from checkpoint {uuid}: epoch {epoch}, w {w}");
        let _ = std::fs::remove_dir_all(&dir);
    }
    lineage.push(json!(ctx.trial_id()));
    while epoch < n_metrics {
        epoch += 1;
        w += x.clamp(0.0, 1.0) * (1.0 - w);
        ctx.report_validation(epoch, &[("validation_loss", (1.0 - w).powi(2)), ("epochs", epoch as f64)]);
        ctx.flush()?;
        if ctx.should_stop() {
            println!("the generation ends after epoch {epoch}");
            break;
        }
    }
    let dir = scratch_dir(&ctx, "save")?;
    let path = dir.join("state.json");
    let state = json!({"epoch": epoch, "w": w, "lineage": lineage}).to_string();
    std::fs::write(&path, state).map_err(|source| SdkError::Io { action: "write", path, source })?;
    let uuid = ctx.checkpoint_save(epoch, &dir, json!({"source": "drover-trivial-trial", "pbt": true}))?;
    println!("saved checkpoint {uuid} at epoch {epoch}");
    let _ = std::fs::remove_dir_all(&dir);
    ctx.close()?;
    Ok(ExitCode::SUCCESS)
}

fn plant_links(ctx: Context, decoy: &std::path::Path, n: i64) -> Result<ExitCode, SdkError> {
    let io = |action: &'static str, path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| SdkError::Io { action, path, source }
    };
    let root = std::path::PathBuf::from(std::env::var(drover_sdk::env::CHECKPOINT_DIR).expect("a file-system storage"));
    for step in 1..=n {
        let dir = scratch_dir(&ctx, "save")?;
        std::fs::write(dir.join("state.json"), json!({"step": step}).to_string()).map_err(io("write", &dir))?;
        let uuid = ctx.checkpoint_save(step, &dir, json!({}))?;
        let _ = std::fs::remove_dir_all(&dir);
        let stored = root.join(&uuid);
        std::os::unix::fs::symlink(decoy, stored.join("etcdir")).map_err(io("link", &stored))?;
        std::fs::remove_file(stored.join("state.json")).map_err(io("remove", &stored))?;
        std::os::unix::fs::symlink(decoy.join("file"), stored.join("state.json")).map_err(io("link", &stored))?;
        println!("planted links in checkpoint {uuid}");
        ctx.report_validation(step, &[("validation_loss", 1.0 / step as f64)]);
    }
    // A registration of a directory that holds a link must be refused, naming the file.
    let uuid = uuid::Uuid::new_v4().to_string();
    let dir = root.join(&uuid);
    std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
    std::fs::write(dir.join("real.bin"), b"weights").map_err(io("write", &dir))?;
    std::os::unix::fs::symlink(decoy.join("file"), dir.join("linked.bin")).map_err(io("link", &dir))?;
    let master = std::env::var(drover_sdk::env::MASTER).unwrap_or_default();
    let token = std::env::var(drover_sdk::env::TRIAL_TOKEN).unwrap_or_default();
    let answer = reqwest::blocking::Client::new()
        .post(format!("{master}/api/v1/trials/{}/checkpoints", ctx.trial_id()))
        .bearer_auth(token)
        .json(&json!({"uuid": uuid, "step": n + 1, "resources": {"real.bin": 7, "linked.bin": 4}, "metadata": {}}))
        .send();
    match answer {
        Ok(r) => println!("hostile registration: HTTP {} {}", r.status().as_u16(), r.text().unwrap_or_default()),
        Err(e) => println!("hostile registration: no answer: {e}"),
    }
    // Sizes that add up past 2^64 (they wrapped to 0 once).
    std::fs::remove_file(dir.join("linked.bin")).map_err(io("remove", &dir))?;
    std::fs::write(dir.join("other.bin"), b"more").map_err(io("write", &dir))?;
    let answer = reqwest::blocking::Client::new()
        .post(format!("{master}/api/v1/trials/{}/checkpoints", ctx.trial_id()))
        .bearer_auth(std::env::var(drover_sdk::env::TRIAL_TOKEN).unwrap_or_default())
        .json(&json!({"uuid": uuid, "step": n + 1, "resources": {"real.bin": u64::MAX, "other.bin": 4}, "metadata": {}}))
        .send();
    match answer {
        Ok(r) => println!("overflowing registration: HTTP {} {}", r.status().as_u16(), r.text().unwrap_or_default()),
        Err(e) => println!("overflowing registration: no answer: {e}"),
    }
    // A checkpoint whose directory is itself a link to the decoy.
    let linked = uuid::Uuid::new_v4().to_string();
    std::os::unix::fs::symlink(decoy, root.join(&linked)).map_err(io("link", &root))?;
    let answer = reqwest::blocking::Client::new()
        .post(format!("{master}/api/v1/trials/{}/checkpoints", ctx.trial_id()))
        .bearer_auth(std::env::var(drover_sdk::env::TRIAL_TOKEN).unwrap_or_default())
        .json(&json!({"uuid": linked, "step": n + 2, "resources": {"file": 24}, "metadata": {}}))
        .send();
    match answer {
        Ok(r) => println!("linked-directory registration: HTTP {} {}", r.status().as_u16(), r.text().unwrap_or_default()),
        Err(e) => println!("linked-directory registration: no answer: {e}"),
    }
    ctx.close()?;
    Ok(ExitCode::SUCCESS)
}

/// A fresh directory of this process's own, so concurrent trials on one host do not collide.
fn scratch_dir(ctx: &Context, purpose: &str) -> Result<std::path::PathBuf, SdkError> {
    let dir = std::env::temp_dir().join(format!("drover-trivial-trial-{}-{}-{purpose}", ctx.trial_id(), std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|source| SdkError::Io { action: "create", path: dir.clone(), source })?;
    Ok(dir)
}
