//! The trial SDK of drover: what training code links to talk to the master.
//!
//! A trial process is started by a drover agent with its identity, hyperparameters and seed in
//! environment variables. [`Context::from_env`] reads them; the context then reports metrics
//! (batched and retried by a background thread, so a report never blocks training), tells the
//! loop when the master wants it to stop, and saves and restores checkpoints in the cluster's
//! checkpoint storage. The API is synchronous, like a training loop.
//!
//! ```no_run
//! use drover_sdk::{Context, SdkError};
//!
//! fn main() -> Result<(), SdkError> {
//!     let ctx = Context::from_env()?;
//!     let lr: f64 = ctx.hparam("learning_rate")?;
//!     let depth: i64 = ctx.hparam("model.depth")?; // nested hyperparameters by path
//!     let mut first_epoch = 1;
//!     if let Some(uuid) = ctx.latest_checkpoint() {
//!         let dir = std::env::temp_dir().join("restored");
//!         ctx.checkpoint_restore(uuid, &dir)?;
//!         first_epoch = ctx.checkpoint_info(uuid)?.step + 1; // ...and load the weights from dir
//!     }
//!     for epoch in first_epoch..=10 {
//!         if ctx.should_stop() {
//!             break;
//!         }
//!         let loss = lr * depth as f64 / epoch as f64; // a real loop trains here
//!         ctx.report_training(epoch, &[("loss", loss)]);
//!         ctx.report_validation(epoch, &[("validation_loss", loss)]);
//!     }
//!     let dir = std::env::temp_dir().join("to-save");
//!     std::fs::create_dir_all(&dir).unwrap();
//!     std::fs::write(dir.join("state.json"), b"{}").unwrap();
//!     ctx.checkpoint_save(10, &dir, serde_json::json!({"note": "final"}))?;
//!     ctx.close() // waits until the master has every metric
//! }
//! ```
//!
//! [`advisor`] is the other side of a `custom` search: a client for the process that decides
//! which trials run. [`params`] is a client of the parameter database: versioned blobs such as
//! policy weights, pushed by a learner and read by actors.

pub mod advisor;
mod checkpoint;
mod client;
mod context;
mod error;
mod hparams;
mod metrics;
pub mod params;

pub use context::Context;
/// The names of the environment variables the agent sets for a trial.
pub use drover_api::env;
pub use drover_api::rest::Checkpoint;
pub use error::SdkError;
