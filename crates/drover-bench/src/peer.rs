//! The Python peers: Ray Tune (from a venv this benchmark creates at
//! `~/.cache/drover-bench/venv`) and the stdlib-sqlite3 half of the ingest floor. The scripts
//! live in the repository's `bench/` and are compiled into this binary, then written to a
//! temporary directory to run.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use tokio::process::Command;

const RAY_SCRIPT: &str = include_str!("../../../bench/ray_tune_trivial.py");
const SQLITE_SCRIPT: &str = include_str!("../../../bench/sqlite_floor.py");
const PEER_TIMEOUT: Duration = Duration::from_secs(1800);

fn venv_dir() -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    home.join(".cache/drover-bench/venv")
}

async fn ray_importable(python: &Path) -> Option<String> {
    let out = Command::new(python)
        .args(["-c", "import ray, ray.tune; print(ray.__version__)"])
        .env("RAY_USAGE_STATS_ENABLED", "0")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .await
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The venv's python with `ray[tune]` importable, installing it if needed; `Err(reason)` when
/// Ray is to be skipped (`--no-peer`, or the install failed). The reason is also printed.
pub async fn ray_python(no_peer: bool) -> Result<PathBuf, String> {
    if no_peer {
        let reason = "--no-peer".to_string();
        eprintln!("  Ray Tune skipped: {reason}");
        return Err(reason);
    }
    let venv = venv_dir();
    let python = venv.join("bin/python");
    if let Some(version) = ray_importable(&python).await {
        eprintln!("  Ray Tune {version} from {}", venv.display());
        return Ok(python);
    }
    eprintln!("  installing ray[tune] into {} (this can take several minutes)...", venv.display());
    let install = async {
        if !python.is_file() {
            if let Some(parent) = venv.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let status = Command::new("python3").arg("-m").arg("venv").arg(&venv).status().await.context("python3 -m venv")?;
            if !status.success() {
                bail!("python3 -m venv {} failed: {status}", venv.display());
            }
        }
        // pip's chatter goes to stderr, so stdout keeps only the tables.
        let status = Command::new(venv.join("bin/pip"))
            .args(["install", "--disable-pip-version-check", "ray[tune]"])
            .stdout(std::io::stderr())
            .status()
            .await
            .context("pip install ray[tune]")?;
        if !status.success() {
            bail!("pip install \"ray[tune]\" failed: {status}");
        }
        Ok(())
    };
    if let Err(e) = install.await {
        let reason = format!("installing ray[tune] failed: {e:#}");
        eprintln!("  Ray Tune skipped: {reason}");
        return Err(reason);
    }
    match ray_importable(&python).await {
        Some(version) => {
            eprintln!("  Ray Tune {version} installed");
            Ok(python)
        }
        None => {
            let reason = "ray[tune] installed but `import ray.tune` fails".to_string();
            eprintln!("  Ray Tune skipped: {reason}");
            Err(reason)
        }
    }
}

/// Runs `script` (its text) with `python` and the arguments; returns the JSON object on the last
/// line of stdout.
async fn run_script(python: &Path, name: &str, script: &str, args: &[String]) -> Result<Value> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join(name);
    std::fs::write(&path, script)?;
    let mut cmd = Command::new(python);
    cmd.arg(&path)
        .args(args)
        .current_dir(dir.path())
        .env("RAY_USAGE_STATS_ENABLED", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(PEER_TIMEOUT, cmd.output()).await.with_context(|| format!("{name} timed out"))??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().rev().find(|l| l.trim_start().starts_with('{'));
    match (out.status.success(), last) {
        (true, Some(line)) => Ok(serde_json::from_str(line)?),
        _ => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("{name} exited {}; stdout: {}; stderr tail:\n{}", out.status, stdout.trim(), tail.join("\n"))
        }
    }
}

pub struct RayThroughput {
    pub version: String,
    pub fit_s: f64,
    pub init_s: f64,
}

/// One `Tuner.fit` of `trials` trivial trials; `reuse_actors` as Tune's `TuneConfig` option.
pub async fn ray_tune_throughput(python: &Path, trials: usize, slots: usize, reuse_actors: bool) -> Result<RayThroughput> {
    let storage = tempfile::tempdir()?;
    let mut args = vec![
        "--trials".to_string(),
        trials.to_string(),
        "--slots".into(),
        slots.to_string(),
        "--storage".into(),
        storage.path().display().to_string(),
    ];
    if reuse_actors {
        args.push("--reuse-actors".into());
    }
    let v = run_script(python, "ray_tune_trivial.py", RAY_SCRIPT, &args).await?;
    let completed = v["completed"].as_u64().unwrap_or(0);
    if completed != trials as u64 {
        bail!("Ray Tune completed {completed} of {trials} trials");
    }
    Ok(RayThroughput {
        version: v["ray_version"].as_str().unwrap_or("?").to_string(),
        fit_s: v["fit_s"].as_f64().context("no fit_s")?,
        init_s: v["init_s"].as_f64().unwrap_or(f64::NAN),
    })
}

pub struct RayFootprint {
    pub version: String,
    pub rss_kb: f64,
    pub processes: u64,
}

pub async fn ray_footprint(python: &Path, slots: usize, idle_secs: f64) -> Result<RayFootprint> {
    let v = run_script(
        python,
        "ray_tune_trivial.py",
        RAY_SCRIPT,
        &["--footprint".into(), "--slots".into(), slots.to_string(), "--idle".into(), idle_secs.to_string()],
    )
    .await?;
    Ok(RayFootprint {
        version: v["ray_version"].as_str().unwrap_or("?").to_string(),
        rss_kb: v["rss_kb"].as_f64().context("no rss_kb")?,
        processes: v["processes"].as_u64().unwrap_or(0),
    })
}

/// The stdlib-sqlite3 `executemany` floor with the system `python3`; returns wall seconds.
pub async fn python_sqlite_floor(trials: usize, points: usize) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("floor.db");
    let v = run_script(
        Path::new("python3"),
        "sqlite_floor.py",
        SQLITE_SCRIPT,
        &["--db".into(), db.display().to_string(), "--trials".into(), trials.to_string(), "--points".into(), points.to_string()],
    )
    .await?;
    let rows = v["rows"].as_u64().unwrap_or(0);
    if rows != (trials * points) as u64 {
        bail!("the python floor stored {rows} rows, not {}", trials * points);
    }
    v["wall_s"].as_f64().context("no wall_s")
}
