//! Pure types shared by every part of drover: the experiment configuration (parsed from YAML with
//! errors that name line, column and field, and held to the bounds of [`limits`], so that one
//! request cannot make the master allocate or loop without end), hyperparameter spaces and their
//! sampling, a seedable and serialisable random generator, the state machines of experiments,
//! trials and allocations, and the query language of the parameter database ([`param_query`]).
//!
//! Nothing here does IO: every function is deterministic in its inputs, which is what lets the
//! searchers and the master's bookkeeping be tested and replayed.

pub mod checkpoint_gc;
pub mod config;
pub mod hparams;
pub mod limits;
pub mod param_query;
pub mod rng;
pub mod state;

pub use config::{ConfigError, ExperimentConfig};
pub use hparams::{Hyperparameter, HyperparameterSpace};
pub use rng::SplitMix64;
pub use state::{AllocationState, ExperimentState, TransitionError, TrialState};
