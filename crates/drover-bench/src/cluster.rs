//! An in-process cluster on 127.0.0.1 port 0 — a real master on a temporary SQLite file and a
//! real agent with CPU slots — as in drover-testkit's `tests/cluster.rs`; and a REST client
//! for any master URL (also the `drover master` child process of `footprint`).

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use drover_api::rest::{Agent, Experiment};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub const TERMINAL: [&str; 3] = ["COMPLETED", "CANCELED", "ERROR"];

/// REST calls to a master.
#[derive(Clone)]
pub struct Rest {
    pub base: String,
    pub http: reqwest::Client,
}

impl Rest {
    pub fn new(base: impl Into<String>) -> Result<Rest> {
        let http = reqwest::Client::builder().no_proxy().build()?;
        Ok(Rest { base: base.into(), http })
    }

    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let r = self.http.get(format!("{}{path}", self.base)).send().await.with_context(|| format!("GET {path}"))?;
        if !r.status().is_success() {
            bail!("GET {path}: {} {}", r.status(), r.text().await.unwrap_or_default());
        }
        Ok(r.json().await?)
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let r = self.http.post(format!("{}{path}", self.base)).json(body).send().await.with_context(|| format!("POST {path}"))?;
        let status = r.status();
        let text = r.text().await?;
        if !status.is_success() {
            bail!("POST {path}: {status} {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn create(&self, yaml: &str) -> Result<Experiment> {
        let body = self.post("/api/v1/experiments", &json!({ "config": yaml })).await?;
        Ok(serde_json::from_value(body)?)
    }

    /// Polls every `poll` until the experiment is terminal.
    pub async fn wait_terminal(&self, id: i64, timeout: Duration, poll: Duration) -> Result<Experiment> {
        let deadline = Instant::now() + timeout;
        loop {
            let e: Experiment = self.get(&format!("/api/v1/experiments/{id}")).await?;
            if TERMINAL.contains(&e.state.as_str()) {
                return Ok(e);
            }
            if Instant::now() > deadline {
                bail!("experiment {id} still {} after {timeout:?}: {:?}", e.state, e.trial_counts);
            }
            tokio::time::sleep(poll).await;
        }
    }

    pub async fn wait_agent(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(agents) = self.get::<Vec<Agent>>("/api/v1/agents").await
                && agents.iter().any(|a| a.connected)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("no agent connected within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// An experiment of `trials` trivial trials, `concurrent` at a time, random search.
pub fn trivial_experiment(trial_bin: &std::path::Path, trials: usize, concurrent: usize, extra_hparams: &str) -> String {
    format!(
        "name: drover-bench\nentrypoint: [\"{}\"]\nhyperparameters:\n  x: {{type: double, minval: 0, maxval: 1}}\n{extra_hparams}\
         searcher: {{name: random, metric: validation_loss, smaller_is_better: true, max_trials: {trials}, max_concurrent_trials: {concurrent}}}\n",
        trial_bin.display()
    )
}

pub struct Cluster {
    pub master: drover_master::RunningMaster,
    pub rest: Rest,
    agent_stop: CancellationToken,
    agent: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    pub async fn start(slots: usize) -> Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let db = format!("sqlite://{}", dir.path().join("drover.db").display());
        let config = drover_master::MasterConfig::new(db, dir.path().join("checkpoints"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let master = drover_master::start(config, listener).await?;
        let agent_stop = CancellationToken::new();
        let agent_config = drover_agent::AgentConfig {
            master_url: master.url(),
            agent_id: "bench-agent".into(),
            join_token: Some(master.master.config.join_token.clone()),
            pool: "default".into(),
            work_root: dir.path().join("work"),
            slots: drover_agent::discover(&drover_agent::SlotOptions {
                cpu_slots: Some(slots as u32),
                slots_override: None,
                slots_per_gpu: 1,
                nvidia_smi: Some("/nonexistent/nvidia-smi".into()),
            }),
        };
        let token = agent_stop.clone();
        let agent = tokio::spawn(async move {
            if let Err(e) = drover_agent::run_agent(agent_config, token).await {
                eprintln!("drover-bench: agent ended: {e}");
            }
        });
        let rest = Rest::new(master.url())?;
        let cluster = Cluster { master, rest, agent_stop, agent, _dir: dir };
        cluster.rest.wait_agent(Duration::from_secs(20)).await?;
        Ok(cluster)
    }

    pub async fn stop(self) -> Result<()> {
        self.agent_stop.cancel();
        let _ = self.agent.await;
        self.master.shutdown().await?;
        Ok(())
    }
}
