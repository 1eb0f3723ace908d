//! `drover`: the command line of the drover platform. Thin: every command is a REST call to a
//! master, except `master`, `agent`, `up` and `run`, which start them.

mod client;
mod embedded;
mod output;
mod params;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand};
use drover_agent::SlotOptions;
use tokio_util::sync::CancellationToken;

use crate::client::Client;
use crate::embedded::{Embedded, EmbeddedOptions};
use crate::output::Output;

#[derive(Parser)]
#[command(name = "drover", version, about = "Train, tune and serve machine-learning models on a cluster")]
struct Cli {
    /// The master to talk to.
    #[arg(long, global = true, env = "DROVER_MASTER", default_value = "http://127.0.0.1:8080")]
    master: String,
    /// Output format of list and describe commands.
    #[arg(long, short = 'o', global = true, value_enum, default_value = "table")]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct DataDirArg {
    /// Where `up` and `run` keep the SQLite database, task work directories and checkpoints.
    #[arg(long, env = "DROVER_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct SlotArgs {
    /// Exactly N slots (of GPU kind if GPUs are found, else CPU).
    #[arg(long)]
    slots: Option<u32>,
    /// Number of CPU slots when there is no GPU (default: one per core).
    #[arg(long)]
    cpu_slots: Option<u32>,
    /// Slots per GPU, for several workers sharing one GPU.
    #[arg(long, default_value_t = 1)]
    slots_per_gpu: u32,
}

impl SlotArgs {
    fn options(&self) -> SlotOptions {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        SlotOptions {
            cpu_slots: Some(self.cpu_slots.unwrap_or(cores)),
            slots_override: self.slots,
            slots_per_gpu: self.slots_per_gpu,
            nvidia_smi: None,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a master and an agent in this process (SQLite and local storage in the data directory).
    Up {
        #[arg(long, default_value_t = 8080)]
        port: u16,
        #[arg(long, default_value = "127.0.0.1")]
        bind: String,
        /// Database URL instead of the SQLite file in the data directory.
        #[arg(long)]
        db: Option<String>,
        /// A host name this master answers to when bound beyond loopback (repeatable; IP
        /// addresses and the machine's own host name are always answered). Other names are
        /// refused, so a web page cannot reach the master by re-pointing its own name at it.
        #[arg(long = "allow-host", env = "DROVER_ALLOW_HOSTS", value_delimiter = ',')]
        allow_hosts: Vec<String>,
        /// Resource pools (a YAML list: name, fit, preemption, preemption_timeout_s,
        /// zero_slot_budget); the agent in this process joins the first.
        #[arg(long)]
        pools: Option<PathBuf>,
        #[command(flatten)]
        data: DataDirArg,
        #[command(flatten)]
        slots: SlotArgs,
    },
    /// Run a master.
    Master {
        #[arg(long, default_value_t = 8080)]
        port: u16,
        #[arg(long, default_value = "127.0.0.1")]
        bind: String,
        /// `postgres://...` or `sqlite:///path`; default: SQLite in the data directory.
        #[arg(long, env = "DROVER_DB")]
        db: Option<String>,
        /// A host name this master answers to when bound beyond loopback (repeatable; IP
        /// addresses and the machine's own host name are always answered). Other names are
        /// refused, so a web page cannot reach the master by re-pointing its own name at it.
        #[arg(long = "allow-host", env = "DROVER_ALLOW_HOSTS", value_delimiter = ',')]
        allow_hosts: Vec<String>,
        /// The cluster's join secret that agents must present (default: the one in
        /// `DATA/join-token`, made on first start).
        #[arg(long, env = "DROVER_JOIN_TOKEN", hide_env_values = true)]
        join_token: Option<String>,
        /// Where the parameter database keeps its blobs, as JSON, e.g.
        /// `{"type":"s3","bucket":"params","endpoint_url":"http://127.0.0.1:5055"}`
        /// (default: `params/` in the data directory).
        #[arg(long, env = "DROVER_PARAM_STORAGE")]
        param_storage: Option<String>,
        /// Resource pools (a YAML list: name, fit, preemption, preemption_timeout_s,
        /// zero_slot_budget); agents join one with `--pool`. Default: one pool, `default`.
        #[arg(long)]
        pools: Option<PathBuf>,
        #[command(flatten)]
        data: DataDirArg,
    },
    /// Run an agent (`drover agent --master URL`), or list agents (`drover agent list`).
    #[command(args_conflicts_with_subcommands = true)]
    Agent {
        #[command(subcommand)]
        command: Option<AgentCommand>,
        /// Agent id (default: host name).
        #[arg(long)]
        id: Option<String>,
        /// Where task working directories go.
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// The cluster's join secret (the master keeps it in `DATA/join-token`). Prefer
        /// `--join-token-file`: a command line is readable by every user of the host.
        #[arg(long, env = "DROVER_JOIN_TOKEN", hide_env_values = true)]
        join_token: Option<String>,
        /// A file holding the cluster's join secret (e.g. a copy of the master's `DATA/join-token`).
        #[arg(long, conflicts_with = "join_token")]
        join_token_file: Option<PathBuf>,
        /// The resource pool this agent's slots belong to (the master's `--pools` file names
        /// them; without one there is only `default`).
        #[arg(long, default_value = "default")]
        pool: String,
        #[command(flatten)]
        slots: SlotArgs,
    },
    /// Run an experiment on an embedded cluster, show progress, and print the best trials.
    Run {
        /// Experiment configuration (YAML).
        file: PathBuf,
        /// Context directory uploaded to every trial (default: the config file's directory).
        context: Option<PathBuf>,
        /// Rows in the final table.
        #[arg(long, default_value_t = 10)]
        top: usize,
        #[command(flatten)]
        data: DataDirArg,
        #[command(flatten)]
        slots: SlotArgs,
    },
    /// Simulate a config's searcher on a synthetic objective and print its plan (rungs and how
    /// many trials reach each; generations and how many members are replaced), using no slot.
    PreviewSearch {
        file: PathBuf,
        /// Seed of the simulated search (default: the config's `searcher.seed`, else 0).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Manage experiments.
    #[command(subcommand, alias = "e")]
    Experiment(ExperimentCommand),
    /// Inspect trials.
    #[command(subcommand, alias = "t")]
    Trial(TrialCommand),
    /// The parameter database: names, versions, tags, push, get, queries.
    #[command(subcommand)]
    Param(params::ParamCommand),
    /// Checkpoints: list, download, delete, pin, and garbage collection.
    #[command(subcommand, alias = "c")]
    Checkpoint(CheckpointCommand),
    /// The scheduler's jobs: the queue and why each waits, priorities and weights.
    #[command(subcommand, alias = "j")]
    Job(JobCommand),
}

#[derive(Subcommand)]
enum JobCommand {
    /// Unfinished jobs with pool, priority, weight, what runs, and each waiting trial's place
    /// in the queue with the reason it waits.
    List,
    /// Change a job's priority (0 first, 99 last) or fair-share weight.
    Update {
        id: i64,
        #[arg(long)]
        priority: Option<i64>,
        #[arg(long)]
        weight: Option<f64>,
    },
}

#[derive(Subcommand)]
enum AgentCommand {
    /// List agents and their slots.
    List,
}

#[derive(Subcommand)]
enum ExperimentCommand {
    /// Create an experiment from a config file and a context directory.
    Create {
        file: PathBuf,
        /// Uploaded to every trial (default: the config file's directory).
        context: Option<PathBuf>,
        /// Create it paused.
        #[arg(long)]
        paused: bool,
        /// Follow it until it ends, then print the best trials.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    List,
    Describe {
        id: i64,
    },
    Pause {
        id: i64,
    },
    Activate {
        id: i64,
    },
    Cancel {
        id: i64,
    },
    Kill {
        id: i64,
    },
    Delete {
        id: i64,
    },
    /// Wait until the experiment ends; exits non-zero unless it COMPLETED.
    Wait {
        id: i64,
    },
    /// Print the logs of all its trials.
    Logs {
        id: i64,
        /// Print control characters as they are (by default they are shown escaped, so a
        /// trial's output cannot drive the terminal).
        #[arg(long)]
        raw: bool,
    },
    /// Draw the family tree of a population based training experiment.
    Lineage {
        id: i64,
    },
}

#[derive(Subcommand)]
enum CheckpointCommand {
    /// List the checkpoints of an experiment or a trial.
    List {
        #[arg(long, conflicts_with = "trial", required_unless_present = "trial")]
        experiment: Option<i64>,
        #[arg(long)]
        trial: Option<i64>,
    },
    Describe {
        uuid: String,
    },
    /// Download a checkpoint's files into a directory (through the master: no storage
    /// credentials needed here).
    Download {
        uuid: String,
        dir: PathBuf,
    },
    /// Delete a checkpoint: its files, then its record (refused while pinned or in use).
    Delete {
        uuid: String,
    },
    /// Keep a checkpoint whatever the policy says.
    Pin {
        uuid: String,
    },
    Unpin {
        uuid: String,
    },
    /// Set an experiment's checkpoint policy and apply it now.
    Gc {
        experiment: i64,
        #[arg(long, default_value_t = 0)]
        save_experiment_best: u32,
        #[arg(long, default_value_t = 1)]
        save_trial_best: u32,
        #[arg(long, default_value_t = 1)]
        save_trial_latest: u32,
    },
}

#[derive(Subcommand)]
enum TrialCommand {
    /// List the trials of an experiment.
    List {
        experiment_id: i64,
    },
    Describe {
        id: i64,
    },
    Logs {
        id: i64,
        /// Keep printing new lines until the trial ends.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Print control characters as they are (by default they are shown escaped, so a
        /// trial's output cannot drive the terminal).
        #[arg(long)]
        raw: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `drover experiment lineage 3 | head` must end quietly when the reader goes away, as other
    // command-line tools do, rather than panic on a failed print. Not for the long-running
    // commands: a server must never die of a signal from a pipe it writes to.
    if !matches!(cli.command, Command::Up { .. } | Command::Run { .. } | Command::Master { .. } | Command::Agent { command: None, .. }) {
        // SAFETY: before any thread exists; SIG_DFL is always a valid handler.
        unsafe {
            let _ = nix::sys::signal::signal(nix::sys::signal::Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl);
        }
    }
    if matches!(cli.command, Command::Up { .. } | Command::Run { .. }) {
        embedded::put_own_directory_on_path();
    }
    let default_level = if matches!(cli.command, Command::Run { .. }) { "warn" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_level.into()))
        .with_writer(std::io::stderr)
        .init();
    if matches!(cli.command, Command::Up { .. } | Command::Run { .. } | Command::Master { .. } | Command::Agent { command: None, .. }) {
        raise_open_file_limit();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    let code = match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    // Dropping a runtime waits for every blocking task; one stuck in a system call (a hung
    // mount) must not keep a stopped master alive.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    code
}

/// A server keeps many descriptors open (connections, SQLite, walks of deep checkpoint trees
/// that hold one per level): the soft limit, often 1024, goes up to the hard one.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::debug!("cannot raise the open-file limit from {soft} to {hard}: {e}");
    }
}

/// The context directory uploaded with an experiment: the one named, else the config's own.
fn context_or_config_dir(file: &std::path::Path, context: Option<PathBuf>) -> Option<PathBuf> {
    context.or_else(|| file.parent().map(|p| if p.as_os_str().is_empty() { PathBuf::from(".") } else { p.to_path_buf() }))
}

fn data_dir(arg: &DataDirArg) -> PathBuf {
    arg.data_dir.clone().unwrap_or_else(embedded::default_data_dir)
}

/// Cancelled on Ctrl-C or SIGTERM.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        t.cancel();
    });
    token
}

async fn dispatch(cli: Cli) -> Result<ExitCode> {
    let client = Client::new(&cli.master);
    let output = cli.output;
    match cli.command {
        Command::Up { port, bind, db, allow_hosts, pools, data, slots } => {
            let cluster = Embedded::start(EmbeddedOptions {
                data_dir: data_dir(&data),
                bind: format!("{bind}:{port}"),
                db,
                allowed_hosts: allow_hosts,
                slots: slots.options(),
                pools: pools.as_deref().map(read_pools).transpose()?,
            })
            .await?;
            eprintln!("drover is up at {} (data in {})", cluster.url(), data_dir(&data).display());
            shutdown_on_signal().cancelled().await;
            cluster.stop().await?;
        }
        Command::Master { port, bind, db, allow_hosts, join_token, param_storage, pools, data } => {
            let dir = data_dir(&data);
            let mut lock = drover_master::datadir::DataDirLock::acquire(&dir)?;
            let db = db.unwrap_or_else(|| embedded::sqlite_url(&dir));
            let mut config = drover_master::MasterConfig::new(db, dir.join("checkpoints"));
            let token_file = dir.join(drover_master::datadir::JOIN_TOKEN_FILE);
            config.allowed_hosts = allow_hosts;
            if let Some(file) = pools {
                config.pools = read_pools(&file)?;
            }
            config.join_token = match join_token {
                Some(t) if t.trim().is_empty() => bail!("--join-token is empty"),
                Some(t) => t.trim().to_string(),
                None => drover_master::datadir::load_or_create_join_token(&dir)?,
            };
            if let Some(json) = param_storage {
                let spec: drover_storage::StorageSpec =
                    serde_json::from_str(&json).with_context(|| format!("--param-storage: `{json}` is not a storage spec"))?;
                // Checked now: a wrong bucket should stop the master, not its first push.
                let storage = drover_storage::Storage::open(&spec).with_context(|| format!("--param-storage {}", spec.describe()))?;
                storage.check().await.with_context(|| format!("--param-storage {} is not usable", spec.describe()))?;
                config.param_storage = spec;
            }
            let listener = tokio::net::TcpListener::bind(format!("{bind}:{port}")).await?;
            let master = drover_master::start(config, listener).await?;
            lock.record(Some(&master.url()))?;
            eprintln!("master listening on {}", master.url());
            eprintln!("agents join with: drover agent --master {} --join-token-file {}", master.url(), token_file.display());
            shutdown_on_signal().cancelled().await;
            master.shutdown().await?;
        }
        Command::PreviewSearch { file, seed } => {
            let text = run::read_config(&file)?;
            let config =
                drover_core::ExperimentConfig::parse(&text, Some(&file.display().to_string())).map_err(|e| anyhow::anyhow!("{e}"))?;
            let seed = seed.or(config.searcher.seed).unwrap_or(0);
            let plan = drover_search::preview::preview(&config, seed)?;
            output::preview(&plan, &config, output);
        }
        Command::Agent { command: Some(AgentCommand::List), .. } => output::agents(&client.agents().await?, output),
        Command::Agent { command: None, id, work_dir, join_token, join_token_file, pool, slots } => {
            let join_token = match join_token_file {
                Some(file) => Some(std::fs::read_to_string(&file).with_context(|| format!("--join-token-file {}", file.display()))?),
                None => join_token,
            };
            let Some(join_token) = join_token.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()) else {
                bail!(
                    "an agent needs the cluster's join token: --join-token-file, --join-token or DROVER_JOIN_TOKEN (the master keeps it in DATA/{})",
                    drover_master::datadir::JOIN_TOKEN_FILE
                );
            };
            let slots = drover_agent::discover(&slots.options());
            let config = drover_agent::AgentConfig {
                join_token: Some(join_token),
                master_url: cli.master.clone(),
                agent_id: id.unwrap_or_else(drover_agent::agent::hostname),
                work_root: work_dir.unwrap_or_else(|| std::env::temp_dir().join("drover-agent")),
                slots,
                pool,
            };
            eprintln!("agent {} with {} slots in pool {}, master {}", config.agent_id, config.slots.len(), config.pool, config.master_url);
            drover_agent::run_agent(config, shutdown_on_signal()).await?;
        }
        Command::Run { file, context, top, data, slots } => {
            let started = Instant::now();
            let context = context_or_config_dir(&file, context);
            // Everything is checked before the cluster starts: a bad file starts nothing.
            let req = run::create_request(&file, context.as_deref(), true)?;
            let started_cluster = Embedded::start(EmbeddedOptions {
                data_dir: data_dir(&data),
                bind: "127.0.0.1:0".into(),
                db: None,
                allowed_hosts: Vec::new(),
                slots: slots.options(),
                pools: None,
            })
            .await;
            let cluster = match started_cluster {
                Ok(cluster) => cluster,
                Err(e) => {
                    // A master already holds the data directory: the experiment goes to it
                    // rather than to a second master that would fight it over the same trials.
                    let Some(url) = e.downcast_ref::<drover_master::datadir::DataDirError>().and_then(|d| d.holder_url()) else {
                        return Err(e);
                    };
                    eprintln!("{} already runs a master at {url}; submitting there", data_dir(&data).display());
                    let client = Client::new(url);
                    let summary = run::run_on(&client, &req, output, started).await?;
                    run::print_summary(&summary, output, top);
                    return Ok(if summary.state == "COMPLETED" { ExitCode::SUCCESS } else { ExitCode::FAILURE });
                }
            };
            let client = Client::new(&cluster.url());
            let interrupted = shutdown_on_signal();
            let result = tokio::select! {
                r = run::run_on(&client, &req, output, started) => r,
                _ = interrupted.cancelled() => Err(anyhow::anyhow!("interrupted")),
            };
            cluster.stop().await?;
            let summary = result?;
            run::print_summary(&summary, output, top);
            if summary.state != "COMPLETED" {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Experiment(command) => return experiment(&client, command, output).await,
        Command::Trial(command) => trial(&client, command, output).await?,
        Command::Checkpoint(command) => checkpoint(&client, command, output).await?,
        Command::Param(command) => params::run(&cli.master, command, output).await?,
        Command::Job(JobCommand::List) => output::jobs(&client.jobs().await?, output),
        Command::Job(JobCommand::Update { id, priority, weight }) => {
            output::jobs(&[client.update_job(id, priority, weight).await?], output)
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn experiment(client: &Client, command: ExperimentCommand, output: Output) -> Result<ExitCode> {
    match command {
        ExperimentCommand::Create { file, context, paused, follow } => {
            let started = Instant::now();
            let context = context_or_config_dir(&file, context);
            let req = run::create_request(&file, context.as_deref(), !paused)?;
            if follow {
                let summary = run::run_on(client, &req, output, started).await?;
                run::print_summary(&summary, output, 10);
            } else {
                let e = client.create_experiment(&req).await?;
                match output {
                    Output::Json => output::print_json(&e),
                    Output::Table => println!("Created experiment {}", e.id),
                }
            }
        }
        ExperimentCommand::List => output::experiments(&client.experiments().await?, output),
        ExperimentCommand::Describe { id } => {
            let e = client.experiment(id).await?;
            let trials = client.trials(id).await?;
            output::experiment(&e, &trials, output);
        }
        ExperimentCommand::Pause { id } => command_done(client.experiment_command(id, "pause").await?, output),
        ExperimentCommand::Activate { id } => command_done(client.experiment_command(id, "activate").await?, output),
        ExperimentCommand::Cancel { id } => command_done(client.experiment_command(id, "cancel").await?, output),
        ExperimentCommand::Kill { id } => command_done(client.experiment_command(id, "kill").await?, output),
        ExperimentCommand::Delete { id } => {
            client.delete_experiment(id).await?;
            println!("Deleted experiment {id}");
        }
        ExperimentCommand::Wait { id } => {
            let e = run::follow(client, id, output == Output::Json).await?;
            match output {
                Output::Json => output::print_json(&e),
                Output::Table => println!("Experiment {id} is {}", e.state),
            }
            if e.state != "COMPLETED" {
                return Ok(ExitCode::FAILURE);
            }
        }
        ExperimentCommand::Lineage { id } => output::lineage(&client.lineage(id).await?, output),
        ExperimentCommand::Logs { id, raw } => {
            for t in client.trials(id).await? {
                print_logs(client, t.id, false, raw, Some(&format!("[trial {}] ", t.id))).await?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A master's pools file (see `drover_master::config::PoolConfig`).
fn read_pools(file: &std::path::Path) -> Result<Vec<drover_sched::Pool>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("--pools {}", file.display()))?;
    drover_master::config::parse_pools(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
}

async fn checkpoint(client: &Client, command: CheckpointCommand, output: Output) -> Result<()> {
    match command {
        CheckpointCommand::List { experiment, trial } => output::checkpoints(&client.checkpoints(experiment, trial).await?, output),
        CheckpointCommand::Describe { uuid } => output::checkpoint(&client.checkpoint(&uuid).await?, output),
        CheckpointCommand::Download { uuid, dir } => {
            let c = client.checkpoint(&uuid).await?;
            let bar = indicatif::ProgressBar::new(c.size.max(0) as u64);
            if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                bar.set_style(indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg}").unwrap());
            } else {
                bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            for (file, size) in &c.resources {
                drover_storage::validate_key(file)
                    .map_err(|e| anyhow::anyhow!("the master listed a file that cannot be written safely: {e}"))?;
                bar.set_message(file.clone());
                refuse_links_under(&dir, file)?;
                let got = client.download_checkpoint_file(&uuid, file, &dir.join(file)).await?;
                if got != *size {
                    anyhow::bail!("{file} of checkpoint {uuid}: got {got} bytes, {size} were saved");
                }
                bar.inc(got);
            }
            bar.finish_and_clear();
            match output {
                Output::Json => output::print_json(&c),
                Output::Table => {
                    println!("Downloaded checkpoint {uuid} ({} files, {} bytes) to {}", c.resources.len(), c.size, dir.display())
                }
            }
        }
        CheckpointCommand::Delete { uuid } => {
            client.delete_checkpoint(&uuid).await?;
            println!("Deleted checkpoint {uuid}");
        }
        CheckpointCommand::Pin { uuid } => output::checkpoint(&client.pin_checkpoint(&uuid, true).await?, output),
        CheckpointCommand::Unpin { uuid } => output::checkpoint(&client.pin_checkpoint(&uuid, false).await?, output),
        CheckpointCommand::Gc { experiment, save_experiment_best, save_trial_best, save_trial_latest } => {
            let policy = drover_api::rest::CheckpointPolicy { save_experiment_best, save_trial_best, save_trial_latest };
            let result = client.checkpoint_policy(experiment, &policy).await?;
            match output {
                Output::Json => output::print_json(&result),
                Output::Table => println!("Deleted {} checkpoints, kept {}", result.deleted.len(), result.kept),
            }
        }
    }
    Ok(())
}

/// Refuses to download `file` into `dir` when a link sits on its way (`dir/sub -> /etc` would
/// make `sub/passwd` overwrite `/etc/passwd`).
fn refuse_links_under(dir: &std::path::Path, file: &str) -> Result<()> {
    let mut path = dir.to_path_buf();
    for part in file.split('/') {
        path.push(part);
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            bail!("{} is a symbolic link; drover does not download through links", path.display());
        }
    }
    Ok(())
}

fn command_done(e: drover_api::rest::Experiment, output: Output) {
    match output {
        Output::Json => output::print_json(&e),
        Output::Table => println!("Experiment {} is {}", e.id, e.state),
    }
}

fn shown(line: &str, raw: bool) -> std::borrow::Cow<'_, str> {
    if raw { std::borrow::Cow::Borrowed(line) } else { output::escape_control(line) }
}

async fn print_logs(client: &Client, trial_id: i64, follow: bool, raw: bool, prefix: Option<&str>) -> Result<()> {
    let mut after = 0;
    loop {
        let page = client.logs(trial_id, after, follow).await?;
        for l in &page.lines {
            println!("{}{} {} {}", prefix.unwrap_or(""), output::time(l.ts_ms), l.stream, shown(&l.line, raw));
        }
        after = page.next_after;
        if page.lines.is_empty() {
            if !follow {
                return Ok(());
            }
            let t = client.trial(trial_id).await?;
            if ["COMPLETED", "CANCELED", "ERROR"].contains(&t.state.as_str()) {
                // One last read: lines may have landed after the empty page.
                let last = client.logs(trial_id, after, false).await?;
                for l in &last.lines {
                    println!("{}{} {} {}", prefix.unwrap_or(""), output::time(l.ts_ms), l.stream, shown(&l.line, raw));
                }
                return Ok(());
            }
        }
    }
}

async fn trial(client: &Client, command: TrialCommand, output: Output) -> Result<()> {
    match command {
        TrialCommand::List { experiment_id } => output::trials_table(&client.trials(experiment_id).await?, output),
        TrialCommand::Describe { id } => output::trial(&client.trial(id).await?, output),
        TrialCommand::Logs { id, follow, raw } => {
            if output == Output::Json {
                bail!("trial logs prints lines; use the REST API (/api/v1/trials/{id}/logs) for JSON");
            }
            print_logs(client, id, follow, raw, None).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// clap's own checks of every command (unique short options and the like), which it would
    /// otherwise only make when a user runs the broken command.
    #[test]
    fn the_command_line_is_consistent() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
