//! A small typed client of the master's REST API for the CLI.

use anyhow::{Context as _, Result, bail};
use drover_api::rest::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(master: &str) -> Client {
        Client { base: master.trim_end_matches('/').to_string(), http: reqwest::Client::new() }
    }

    async fn decode<T: DeserializeOwned>(&self, response: reqwest::Response) -> Result<T> {
        let status = response.status();
        let bytes = response.bytes().await.context("reading the master's answer")?;
        if !status.is_success() {
            match serde_json::from_slice::<ApiError>(&bytes) {
                Ok(e) => bail!("{}", e.message),
                Err(_) => bail!("the master answered {status}: {}", String::from_utf8_lossy(&bytes)),
            }
        }
        serde_json::from_slice(&bytes).with_context(|| format!("unexpected answer from the master: {}", String::from_utf8_lossy(&bytes)))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let url = format!("{}{path}", self.base);
        let response = self.http.get(&url).send().await.with_context(|| format!("cannot reach the master at {}", self.base))?;
        self.decode(response).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let url = format!("{}{path}", self.base);
        let response = self.http.post(&url).json(body).send().await.with_context(|| format!("cannot reach the master at {}", self.base))?;
        self.decode(response).await
    }

    pub async fn create_experiment(&self, req: &CreateExperimentRequest) -> Result<Experiment> {
        self.post("/api/v1/experiments", req).await
    }

    pub async fn experiments(&self) -> Result<Vec<Experiment>> {
        self.get("/api/v1/experiments").await
    }

    pub async fn experiment(&self, id: i64) -> Result<Experiment> {
        self.get(&format!("/api/v1/experiments/{id}")).await
    }

    pub async fn experiment_command(&self, id: i64, command: &str) -> Result<Experiment> {
        self.post(&format!("/api/v1/experiments/{id}/{command}"), &serde_json::json!({})).await
    }

    pub async fn delete_experiment(&self, id: i64) -> Result<()> {
        let url = format!("{}/api/v1/experiments/{id}", self.base);
        let response = self.http.delete(&url).send().await.with_context(|| format!("cannot reach the master at {}", self.base))?;
        if !response.status().is_success() {
            let _: serde_json::Value = self.decode(response).await?;
        }
        Ok(())
    }

    pub async fn trials(&self, experiment_id: i64) -> Result<Vec<Trial>> {
        self.get(&format!("/api/v1/experiments/{experiment_id}/trials")).await
    }

    pub async fn lineage(&self, experiment_id: i64) -> Result<Lineage> {
        self.get(&format!("/api/v1/experiments/{experiment_id}/lineage")).await
    }

    pub async fn trial(&self, id: i64) -> Result<Trial> {
        self.get(&format!("/api/v1/trials/{id}")).await
    }

    pub async fn logs(&self, trial_id: i64, after: i64, follow: bool) -> Result<TrialLogs> {
        self.get(&format!("/api/v1/trials/{trial_id}/logs?after={after}&limit=1000&follow={follow}&timeout_ms=20000")).await
    }

    pub async fn agents(&self) -> Result<Vec<Agent>> {
        self.get("/api/v1/agents").await
    }
}
