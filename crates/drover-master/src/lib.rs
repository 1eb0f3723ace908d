//! The drover master as a library: the control plane ([`cluster`]), the REST API ([`api`]),
//! the agent gateway ([`gateway`]), the parameter database ([`params`]), and [`start`] which
//! serves them on a given listener, so tests run a whole master in-process on `127.0.0.1:0`.
//!
//! Architecture invariant: the master decides, the store remembers, agents obey. The master
//! never runs user code and never touches a trial's files except to delete checkpoints that
//! its own records point at; searching is delegated to `drover-search`, persistence to
//! `drover-store`.

pub mod api;
mod checkpoints;
pub mod clock;
pub mod cluster;
pub mod config;
mod context;
pub mod datadir;
pub mod error;
pub mod gateway;
mod guard;
mod lineage;
mod lttb;
pub mod params;
mod probe;
mod secret;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use cluster::{Master, MasterConfig};
use drover_store::SqlStore;
pub use error::Error;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How long a stopping master waits for requests in flight.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A master serving on a socket.
pub struct RunningMaster {
    pub addr: SocketAddr,
    pub master: Arc<Master>,
    pub task: JoinHandle<std::io::Result<()>>,
    /// The checkpoint collector; it finishes what is queued before the master exits.
    collector: Option<JoinHandle<()>>,
}

impl RunningMaster {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting work, closes agent connections and waits for the server to end.
    pub async fn shutdown(self) -> std::io::Result<()> {
        self.master.shutdown.cancel();
        // Requests in flight get a grace period, not a veto: SIGTERM must stop the master
        // promptly whatever a request is doing.
        let mut task = self.task;
        let served = match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
            Ok(joined) => joined.unwrap_or_else(|e| Err(std::io::Error::other(e))),
            Err(_) => {
                tracing::warn!("requests still in flight after {SHUTDOWN_GRACE:?}; stopping without them");
                task.abort();
                Ok(())
            }
        };
        // `drover run` stops its master right after the experiment ends: the experiment's
        // checkpoint policy must still be applied.
        if let Some(mut collector) = self.collector
            && tokio::time::timeout(SHUTDOWN_GRACE, &mut collector).await.is_err()
        {
            // What it has not done is done again at the next start (the policies of ended
            // experiments are applied on start).
            tracing::warn!("the checkpoint collector is still busy after {SHUTDOWN_GRACE:?}; stopping without it");
            collector.abort();
        }
        served
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the database: {0}")]
    Store(#[from] drover_store::StoreError),
    #[error("cannot restore state from the database: {}", .0.body.message)]
    Recover(Error),
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
}

/// Opens the store named in `config`, restores unfinished work, and serves on `listener`
/// until `master.shutdown` is cancelled.
pub async fn start(config: MasterConfig, listener: TcpListener) -> Result<RunningMaster, StartError> {
    let store = Arc::new(SqlStore::open(&config.db_url).await?);
    let master = Master::open(config, store).await.map_err(StartError::Recover)?;
    let addr = listener.local_addr()?;
    let listening = guard::Listening::new(addr, &master.config.allowed_hosts);
    let app = api::router(master.clone()).layer(axum::middleware::from_fn(move |req, next| guard::guard(listening.clone(), req, next)));
    let ticker = master.clone();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = interval.tick() => {
                    if let Err(e) = ticker.tick().await {
                        tracing::error!("housekeeping: {}", e.body.message);
                    }
                }
                _ = ticker.shutdown.cancelled() => break,
            }
        }
    });
    // The checkpoint collector: experiments that ended get their policy applied, one at a time,
    // outside the control-plane lock (it lists and deletes in storage).
    let collector = master.gc_receiver.lock().unwrap().take().map(|mut ended| {
        let collector = master.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = ended.recv() => next,
                    // Shutting down: finish what is queued, then stop.
                    _ = collector.shutdown.cancelled() => ended.try_recv().ok(),
                };
                let Some(id) = next else { break };
                if let Err(e) = collector.collect_garbage(id).await {
                    tracing::error!(experiment = id, "checkpoint gc: {}", e.body.message);
                }
            }
        })
    });
    // PBT lineage files, written in the order they were produced.
    if let Some(mut writes) = master.lineage_receiver.lock().unwrap().take() {
        tokio::spawn(async move {
            while let Some(write) = writes.recv().await {
                let put_all = async {
                    let storage = drover_storage::Storage::open(&write.spec)?;
                    for (key, bytes) in write.objects {
                        storage.put_bytes(&key, bytes.into()).await?;
                    }
                    for (folder, uuid) in &write.links {
                        lineage::link_checkpoint(&storage, folder, uuid).await;
                    }
                    Ok::<_, drover_storage::StorageError>(())
                };
                if let Err(e) = put_all.await {
                    tracing::warn!("cannot write the pbt lineage on {}: {e}", write.spec.describe());
                }
            }
        });
    }
    let shutdown = master.shutdown.clone();
    // Small request/response pairs (metric batches, agent frames) would otherwise wait out
    // Nagle's algorithm against the peer's delayed ACK: ~40 ms per exchange.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
    });
    let task =
        tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await });
    tracing::info!("master listening on http://{addr}");
    Ok(RunningMaster { addr, master, task, collector })
}
