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

    pub async fn checkpoints(&self, experiment_id: Option<i64>, trial_id: Option<i64>) -> Result<Vec<Checkpoint>> {
        match (experiment_id, trial_id) {
            (Some(e), None) => self.get(&format!("/api/v1/checkpoints?experiment_id={e}")).await,
            (None, Some(t)) => self.get(&format!("/api/v1/checkpoints?trial_id={t}")).await,
            _ => bail!("give one of --experiment and --trial"),
        }
    }

    pub async fn checkpoint(&self, uuid: &str) -> Result<Checkpoint> {
        self.get(&format!("/api/v1/checkpoints/{uuid}")).await
    }

    pub async fn pin_checkpoint(&self, uuid: &str, pinned: bool) -> Result<Checkpoint> {
        let url = format!("{}/api/v1/checkpoints/{uuid}", self.base);
        let response = self
            .http
            .patch(&url)
            .json(&PatchCheckpoint { pinned })
            .send()
            .await
            .with_context(|| format!("cannot reach the master at {}", self.base))?;
        self.decode(response).await
    }

    pub async fn delete_checkpoint(&self, uuid: &str) -> Result<()> {
        let url = format!("{}/api/v1/checkpoints/{uuid}", self.base);
        let response = self.http.delete(&url).send().await.with_context(|| format!("cannot reach the master at {}", self.base))?;
        if !response.status().is_success() {
            let _: serde_json::Value = self.decode(response).await?;
        }
        Ok(())
    }

    pub async fn checkpoint_policy(&self, experiment_id: i64, policy: &CheckpointPolicy) -> Result<GcResult> {
        self.post(&format!("/api/v1/experiments/{experiment_id}/checkpoint-policy"), policy).await
    }

    /// Streams one file of a checkpoint to `to` (through `to.partial`); returns its size.
    pub async fn download_checkpoint_file(&self, uuid: &str, file: &str, to: &std::path::Path) -> Result<u64> {
        use tokio::io::AsyncWriteExt;
        let url = format!("{}/api/v1/checkpoints/{uuid}/files/{file}", self.base);
        let mut response = self.http.get(&url).send().await.with_context(|| format!("cannot reach the master at {}", self.base))?;
        if !response.status().is_success() {
            let _: serde_json::Value = self.decode(response).await?;
            bail!("cannot download {file}");
        }
        if let Some(dir) = to.parent() {
            tokio::fs::create_dir_all(dir).await.with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let partial = to.with_extension("partial");
        let mut out = tokio::fs::File::create(&partial).await.with_context(|| format!("cannot create {}", partial.display()))?;
        let mut written = 0u64;
        while let Some(chunk) = response.chunk().await.with_context(|| format!("downloading {file}"))? {
            out.write_all(&chunk).await.with_context(|| format!("writing {}", partial.display()))?;
            written += chunk.len() as u64;
        }
        out.flush().await?;
        drop(out);
        tokio::fs::rename(&partial, to).await.with_context(|| format!("renaming to {}", to.display()))?;
        Ok(written)
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

    pub async fn jobs(&self) -> Result<Vec<Job>> {
        self.get("/api/v1/jobs").await
    }

    pub async fn update_job(&self, id: i64, priority: Option<i64>, weight: Option<f64>) -> Result<Job> {
        let url = format!("{}/api/v1/jobs/{id}", self.base);
        let response = self
            .http
            .patch(&url)
            .json(&UpdateJobRequest { priority, weight })
            .send()
            .await
            .with_context(|| format!("cannot reach the master at {}", self.base))?;
        self.decode(response).await
    }
}
