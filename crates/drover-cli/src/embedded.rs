//! The one-machine cluster of `drover up` and `drover run`: a master on SQLite and an agent in
//! the same process, with everything kept under one data directory.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use drover_agent::{AgentConfig, SlotOptions};
use drover_master::datadir::{self, DataDirLock};
use drover_master::{MasterConfig, RunningMaster};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub struct Embedded {
    pub master: RunningMaster,
    /// The data directory is this process's while it runs.
    _lock: DataDirLock,
    agent_shutdown: CancellationToken,
    agent: tokio::task::JoinHandle<()>,
}

pub struct EmbeddedOptions {
    pub data_dir: PathBuf,
    pub bind: String,
    pub db: Option<String>,
    /// Host names answered when bound beyond loopback (see `MasterConfig::allowed_hosts`).
    pub allowed_hosts: Vec<String>,
    pub slots: SlotOptions,
    /// The master's pools (default: one, `default`); the agent joins the first.
    pub pools: Option<Vec<drover_sched::Pool>>,
}

pub fn default_data_dir() -> PathBuf {
    dirs::data_local_dir().unwrap_or_else(std::env::temp_dir).join("drover")
}

pub fn sqlite_url(data_dir: &Path) -> String {
    format!("sqlite://{}", data_dir.join("drover.db").display())
}

impl Embedded {
    pub async fn start(opts: EmbeddedOptions) -> Result<Embedded> {
        // Two masters on one directory would take each other's trials for their own.
        let mut lock = DataDirLock::acquire(&opts.data_dir)?;
        let db = opts.db.unwrap_or_else(|| sqlite_url(&opts.data_dir));
        let mut config = MasterConfig::new(db, opts.data_dir.join("checkpoints"));
        config.join_token = datadir::load_or_create_join_token(&opts.data_dir)?;
        config.allowed_hosts = opts.allowed_hosts;
        if let Some(pools) = opts.pools {
            config.pools = pools;
        }
        let agent_pool = config.pools[0].name.clone();
        let join_token = config.join_token.clone();
        let listener = TcpListener::bind(&opts.bind).await.with_context(|| format!("cannot listen on {}", opts.bind))?;
        let master = drover_master::start(config, listener).await?;
        lock.record(Some(&master.url()))?;
        let agent_config = AgentConfig {
            join_token: Some(join_token),
            pool: agent_pool,
            master_url: master.url(),
            agent_id: format!("{}-local", drover_agent::agent::hostname()),
            work_root: opts.data_dir.join("work"),
            slots: drover_agent::discover(&opts.slots),
        };
        let agent_shutdown = CancellationToken::new();
        let token = agent_shutdown.clone();
        let agent = tokio::spawn(async move {
            if let Err(e) = drover_agent::run_agent(agent_config, token).await {
                tracing::error!("embedded agent: {e}");
            }
        });
        Ok(Embedded { master, _lock: lock, agent_shutdown, agent })
    }

    pub fn url(&self) -> String {
        self.master.url()
    }

    /// Stops the agent (killing what it runs) and then the master.
    pub async fn stop(self) -> Result<()> {
        self.agent_shutdown.cancel();
        let _ = self.agent.await;
        self.master.shutdown().await?;
        Ok(())
    }
}

/// Makes programs built beside `drover` (e.g. `target/release/digits`) runnable by name from a
/// trial's entrypoint, the way a container image puts its tools on PATH.
///
/// Must run before any thread starts: it changes the process environment.
pub fn put_own_directory_on_path() {
    let Ok(exe) = std::env::current_exe() else { return };
    let Some(dir) = exe.parent() else { return };
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut parts: Vec<PathBuf> = std::env::split_paths(&path).collect();
    if parts.first().map(PathBuf::as_path) != Some(dir) {
        parts.insert(0, dir.to_path_buf());
    }
    if let Ok(joined) = std::env::join_paths(parts) {
        // SAFETY: called from `main` before the runtime or any other thread exists.
        unsafe { std::env::set_var("PATH", joined) };
    }
}
