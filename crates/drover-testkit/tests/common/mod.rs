//! The in-process cluster the end-to-end tests share: a real master on a temporary SQLite
//! file on 127.0.0.1 (port 0 unless told), a real agent with CPU slots, and a REST client.

#![allow(dead_code)] // each test file uses its own part of this

use std::time::{Duration, Instant};

use drover_api::rest::*;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub const TRIAL: &str = env!("CARGO_BIN_EXE_drover-trivial-trial");
/// The join secret of the test clusters (fixed, so a restarted master admits the same agent).
pub const JOIN_TOKEN: &str = "test-cluster-join-token";

pub struct Cluster {
    pub master: drover_master::RunningMaster,
    pub agent_stop: CancellationToken,
    pub agent: tokio::task::JoinHandle<()>,
    pub http: reqwest::Client,
    /// Holds the database, the agent's work directories and the checkpoints.
    pub dir: tempfile::TempDir,
}

/// A master on the database in `dir`, listening on `addr` (`127.0.0.1:0` for any port).
pub async fn start_master(dir: &std::path::Path, addr: &str) -> drover_master::RunningMaster {
    start_master_with(dir, addr, |_| {}).await
}

/// [`start_master`] with its configuration changed by `configure` first (pools, say).
pub async fn start_master_with(
    dir: &std::path::Path,
    addr: &str,
    configure: impl FnOnce(&mut drover_master::MasterConfig),
) -> drover_master::RunningMaster {
    let mut config = drover_master::MasterConfig::new(format!("sqlite://{}", dir.join("drover.db").display()), dir.join("checkpoints"));
    config.join_token = JOIN_TOKEN.into();
    configure(&mut config);
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    drover_master::start(config, listener).await.unwrap()
}

impl Cluster {
    pub async fn start(slots: u32) -> Cluster {
        Cluster::start_with(slots, |_| {}).await
    }

    /// A cluster whose master's configuration `configure` changes first.
    pub async fn start_with(slots: u32, configure: impl FnOnce(&mut drover_master::MasterConfig)) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let master = start_master_with(dir.path(), "127.0.0.1:0", configure).await;
        let agent_stop = CancellationToken::new();
        let agent_config = drover_agent::AgentConfig {
            master_url: master.url(),
            agent_id: "test-agent".into(),
            join_token: Some(JOIN_TOKEN.into()),
            pool: "default".into(),
            work_root: dir.path().join("work"),
            slots: drover_agent::discover(&drover_agent::SlotOptions {
                cpu_slots: Some(slots),
                slots_override: None,
                slots_per_gpu: 1,
                nvidia_smi: Some("/nonexistent/nvidia-smi".into()),
            }),
        };
        let token = agent_stop.clone();
        let agent = tokio::spawn(async move { drover_agent::run_agent(agent_config, token).await.unwrap() });
        let cluster = Cluster { master, agent_stop, agent, http: reqwest::Client::new(), dir };
        cluster.wait_for_agent().await;
        cluster
    }

    /// Starts one more agent in this process, with these slots, in `pool`; the handle ends
    /// with the agent's own result (a refusal, say).
    pub fn add_agent(
        &self,
        id: &str,
        pool: &str,
        slots: Vec<drover_api::agent::SlotSpec>,
    ) -> (CancellationToken, tokio::task::JoinHandle<Result<(), drover_agent::AgentError>>) {
        let stop = CancellationToken::new();
        let config = drover_agent::AgentConfig {
            master_url: self.master.url(),
            agent_id: id.into(),
            join_token: Some(JOIN_TOKEN.into()),
            pool: pool.into(),
            work_root: self.dir.path().join(format!("work-{id}")),
            slots,
        };
        let token = stop.clone();
        (stop, tokio::spawn(async move { drover_agent::run_agent(config, token).await }))
    }

    /// Waits until `n` agents are connected.
    pub async fn wait_for_agents(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let agents: Vec<Agent> = self.get("/api/v1/agents").await;
            if agents.iter().filter(|a| a.connected).count() >= n {
                return;
            }
            assert!(Instant::now() < deadline, "only {} of {n} agents connected", agents.iter().filter(|a| a.connected).count());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the agent to register, so experiments can be placed at once.
    pub async fn wait_for_agent(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let agents: Vec<Agent> = self.get("/api/v1/agents").await;
            if agents.iter().any(|a| a.connected) {
                return;
            }
            assert!(Instant::now() < deadline, "the agent never connected");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.master.url())
    }

    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let (status, body) = self.get_raw(path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_value(body).unwrap()
    }

    pub async fn get_raw(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// POSTs `body`, with `token` as the bearer if given; the answer as JSON (or as a string).
    pub async fn post_raw(&self, path: &str, body: &Value, token: Option<&str>) -> (u16, Value) {
        let mut req = self.http.post(self.url(path)).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn create(&self, yaml: &str) -> Experiment {
        let (status, body) = self.post_raw("/api/v1/experiments", &json!({"config": yaml}), None).await;
        assert_eq!(status, 201, "{body}");
        serde_json::from_value(body).unwrap()
    }

    pub async fn wait_terminal(&self, id: i64, timeout: Duration) -> Experiment {
        let deadline = Instant::now() + timeout;
        loop {
            let e: Experiment = self.get(&format!("/api/v1/experiments/{id}")).await;
            if ["COMPLETED", "CANCELED", "ERROR"].contains(&e.state.as_str()) {
                return e;
            }
            assert!(Instant::now() < deadline, "experiment {id} still {} with {:?}", e.state, e.trial_counts);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn trials(&self, id: i64) -> Vec<Trial> {
        self.get(&format!("/api/v1/experiments/{id}/trials")).await
    }

    /// Every trial's log, for failure messages.
    pub async fn all_logs(&self, id: i64) -> String {
        let mut out = String::new();
        for t in self.trials(id).await {
            let logs: TrialLogs = self.get(&format!("/api/v1/trials/{}/logs", t.id)).await;
            out.push_str(&format!("\n--- trial {} ({}, {} restarts)\n", t.id, t.state, t.restarts));
            for l in logs.lines {
                out.push_str(&format!("{} {}\n", l.stream, l.line));
            }
        }
        out
    }

    pub async fn stop(self) {
        self.agent_stop.cancel();
        self.agent.await.unwrap();
        self.master.shutdown().await.unwrap();
    }
}

/// An experiment running the trivial trial.
pub fn config(searcher: &str, hparams: &str, extra: &str) -> String {
    format!("name: e2e\nentrypoint: [\"{TRIAL}\"]\nhyperparameters:\n{hparams}\nsearcher: {searcher}\n{extra}")
}
