//! `drover-bench`: drover measured beside a floor (the same work with nothing of drover around
//! it) and a peer (Ray Tune), each result the median of `--runs` runs, printed as markdown tables.
//!
//! - `throughput`: trivial trials through an in-process master and agent, against plain
//!   fork+exec of the same program and against Ray Tune.
//! - `ingest`: metric points from SDK contexts into the real master, against a raw SQLite bulk
//!   insert of the same rows.
//! - `footprint`: resident memory of the real `drover master` process, idle and after a workload.
//! - `params`: `get latest` latency of the parameter database with 50 readers while a writer
//!   pushes 10 MB versions at 10 per second, against a file-read floor and a raw TCP floor.
//!
//! Sibling binaries (`drover-trivial-trial`, `drover`) are looked up next to this executable:
//! build with `cargo build --release -p drover-bench -p drover-testkit -p drover-cli`.
//! Tables go to stdout; progress and per-run numbers go to stderr.

mod checkpoints;
mod cluster;
mod footprint;
mod ingest;
mod params;
mod peer;
mod report;
mod searchers;
mod throughput;

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "drover-bench", about = "Benchmarks of drover beside a floor and a peer (medians of several runs)")]
struct Cli {
    /// Runs of every measurement; tables show medians.
    #[arg(long, global = true, default_value_t = 3)]
    runs: usize,
    /// Skip the Python peers (Ray Tune); the tables say they were skipped.
    #[arg(long, global = true)]
    no_peer: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Trials per second: trivial trials through master + agent, vs fork+exec and Ray Tune.
    Throughput(ThroughputArgs),
    /// Metric points per second through the SDK into the master, vs a raw SQLite bulk insert.
    Ingest(IngestArgs),
    /// Resident memory of a `drover master` process: idle, and after a throughput workload.
    Footprint(FootprintArgs),
    /// Parameter database: `get latest` latency under a writer, vs a file read and raw TCP.
    Params(ParamsArgs),
    /// Random, adaptive ASHA and PBT on the digits example at the same epoch budget.
    Searchers,
    /// Checkpoint save and restore through the SDK, local and S3, vs cp and a plain PUT/GET loop.
    Checkpoints {
        #[arg(long, default_value_t = 1024)]
        mb: u64,
    },
    /// throughput, ingest and footprint with their defaults.
    All,
}

#[derive(Args, Clone)]
pub struct ThroughputArgs {
    /// Trials per run.
    #[arg(long, default_value_t = 200)]
    pub trials: usize,
    /// Agent slots = max_concurrent_trials = floor and Ray concurrency.
    #[arg(long, default_value_t = 4)]
    pub slots: usize,
}

#[derive(Args, Clone)]
pub struct IngestArgs {
    /// Concurrent trials (SDK contexts, one thread each).
    #[arg(long, default_value_t = 8)]
    pub trials: usize,
    /// Training points (metric values) each trial reports.
    #[arg(long, default_value_t = 100_000)]
    pub points: usize,
}

#[derive(Args, Clone)]
pub struct FootprintArgs {
    /// Trials of the workload run against the master.
    #[arg(long, default_value_t = 200)]
    pub trials: usize,
    /// Slots of the separate agent process.
    #[arg(long, default_value_t = 4)]
    pub slots: usize,
    /// Seconds to leave the master idle before each reading.
    #[arg(long, default_value_t = 2.0)]
    pub idle_secs: f64,
}

#[derive(Args, Clone)]
pub struct ParamsArgs {
    /// Concurrent readers of `latest`.
    #[arg(long, default_value_t = 50)]
    pub readers: usize,
    /// Size of each version, in MB (10^6 bytes).
    #[arg(long, default_value_t = 10)]
    pub mb: usize,
    /// Versions the writer pushes per second.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Seconds each run lasts.
    #[arg(long, default_value_t = 10.0)]
    pub secs: f64,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.runs == 0 {
        bail!("--runs must be at least 1");
    }
    // DROVER_BENCH_LOG=info (an EnvFilter) shows the in-process master's and agent's logs on
    // stderr, with timestamps, to see where a trial's time goes.
    if let Ok(filter) = std::env::var("DROVER_BENCH_LOG") {
        tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new(filter)).with_writer(std::io::stderr).init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let runs = cli.runs;
    let no_peer = cli.no_peer;
    runtime.block_on(async move {
        match cli.command {
            Command::Throughput(args) => throughput::run(&args, runs, no_peer).await,
            Command::Ingest(args) => ingest::run(&args, runs, no_peer).await,
            Command::Footprint(args) => footprint::run(&args, runs, no_peer).await,
            Command::Checkpoints { mb } => checkpoints::run(mb, runs).await,
            Command::Params(args) => params::run(&args, runs).await,
            Command::Searchers => tokio::task::spawn_blocking(move || searchers::run(runs)).await?,
            Command::All => {
                throughput::run(&ThroughputArgs { trials: 200, slots: 4 }, runs, no_peer).await?;
                ingest::run(&IngestArgs { trials: 8, points: 100_000 }, runs, no_peer).await?;
                footprint::run(&FootprintArgs { trials: 200, slots: 4, idle_secs: 2.0 }, runs, no_peer).await
            }
        }
    })
}

/// A binary built beside this one (same target directory).
pub fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the drover-bench executable")?;
    let path = exe.parent().context("the executable has no directory")?.join(name);
    if !path.is_file() {
        bail!(
            "{} not found next to drover-bench; build it: cargo build --release -p drover-bench -p drover-testkit -p drover-cli",
            path.display()
        );
    }
    Ok(path)
}
