//! A client for the advisor of a `custom` search: the process that decides, from outside the
//! master, which trials an experiment runs.
//!
//! The advisor reads the search's events (`initialized`, `trial_created`,
//! `validation_completed`, `trial_exited`, `trial_failed`) with [`Advisor::next_events`], which
//! long-polls the master and acknowledges what it has already returned, and answers with
//! actions: [`Advisor::create`], [`Advisor::stop`], [`Advisor::shutdown`], or a batch with
//! [`Advisor::post`]. Blocking, like the rest of the SDK.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use drover_sdk::advisor::{Advisor, SearcherEventKind};
//!
//! fn main() -> Result<(), drover_sdk::SdkError> {
//!     let mut advisor = Advisor::connect("http://127.0.0.1:8080", 1)?;
//!     let mut done = 0;
//!     advisor.create(serde_json::json!({"lr": 0.01}).as_object().unwrap().clone(), None)?;
//!     while done < 1 {
//!         for event in advisor.next_events(Duration::from_secs(30))? {
//!             match event.kind {
//!                 SearcherEventKind::ValidationCompleted { request_id, metric, .. } => println!("{request_id}: {metric}"),
//!                 SearcherEventKind::TrialExited { .. } | SearcherEventKind::TrialFailed { .. } => done += 1,
//!                 _ => {}
//!             }
//!         }
//!     }
//!     advisor.shutdown()
//! }
//! ```

use std::time::Duration;

pub use drover_api::rest::{AdvisorAction, AdvisorActionsResponse, CreatedTrial, SearcherEvent, SearcherEventKind, SearcherEvents};
use drover_api::rest::{AdvisorActionsRequest, Experiment};
use reqwest::blocking::{Client, RequestBuilder};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::SdkError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// For calls that do not wait on purpose.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// What a long poll may take beyond the wait asked for, before it counts as lost.
const POLL_MARGIN: Duration = Duration::from_secs(10);
/// The longest wait the master grants; asking for more waits this long.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

const TERMINAL_STATES: [&str; 3] = ["COMPLETED", "CANCELED", "ERROR"];

/// The advisor of one custom experiment.
pub struct Advisor {
    http: Client,
    /// `http://host:port`, without a trailing slash.
    base: String,
    experiment_id: i64,
    /// The last event returned; the next poll acknowledges up to it.
    after: u64,
    shut_down: bool,
    experiment_state: String,
}

impl Advisor {
    /// Connects to the master at `master_url` as the advisor of `experiment_id`, which must use
    /// the `custom` searcher. The advisor starts with the oldest event the master still keeps.
    pub fn connect(master_url: &str, experiment_id: i64) -> Result<Advisor, SdkError> {
        let base = master_url.trim_end_matches('/').to_string();
        let http = Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            // The master is reached directly; a proxy set for downloads would capture these calls.
            .no_proxy()
            .build()
            .map_err(|source| SdkError::Transport { what: "creating the HTTP client", url: base.clone(), source })?;
        let mut advisor = Advisor { http, base, experiment_id, after: 0, shut_down: false, experiment_state: String::new() };
        let url = advisor.url("");
        let experiment: Experiment = advisor.call("looking up the experiment", &url, advisor.http.get(&url))?;
        if experiment.searcher != "custom" {
            return Err(SdkError::NotCustom { experiment_id, searcher: experiment.searcher });
        }
        advisor.experiment_state = experiment.state;
        Ok(advisor)
    }

    pub fn experiment_id(&self) -> i64 {
        self.experiment_id
    }

    /// Sequence number of the last event returned (0 before any).
    pub fn after(&self) -> u64 {
        self.after
    }

    /// Continues after event `seq`, e.g. for an advisor that keeps its own state across
    /// restarts and has already handled the events up to it.
    pub fn resume_after(&mut self, seq: u64) {
        self.after = seq;
    }

    /// The search has shut down (as of the last answer): it takes no more actions.
    pub fn is_shut_down(&self) -> bool {
        self.shut_down
    }

    /// The experiment's state as of the last answer, e.g. `ACTIVE` or `COMPLETED`.
    pub fn experiment_state(&self) -> &str {
        &self.experiment_state
    }

    /// The experiment has ended: no event will ever come again.
    pub fn is_finished(&self) -> bool {
        TERMINAL_STATES.contains(&self.experiment_state.as_str())
    }

    /// The events after the last one returned, oldest first, waiting up to `timeout` (at most
    /// [`MAX_WAIT`]) for one; empty when none came. Asking acknowledges the events returned
    /// before, which the master may then forget. Safe to retry after an error: the position only
    /// moves on success.
    pub fn next_events(&mut self, timeout: Duration) -> Result<Vec<SearcherEvent>, SdkError> {
        let timeout = timeout.min(MAX_WAIT);
        let url = self.url("/searcher/events");
        let request =
            self.http.get(&url).query(&[("after", self.after), ("timeout_ms", timeout.as_millis() as u64)]).timeout(timeout + POLL_MARGIN);
        let page: SearcherEvents = self.call("polling searcher events", &url, request)?;
        self.after = page.next_after;
        self.shut_down = page.shut_down;
        self.experiment_state = page.experiment_state;
        Ok(page.events)
    }

    /// Posts a batch of actions. The master checks the whole batch first; when one action is
    /// refused (HTTP 400 naming it, e.g. `actions[1].hparams.lr`), none is applied. Not safe to
    /// retry blindly: a batch of creates that did arrive would run twice.
    pub fn post(&mut self, actions: Vec<AdvisorAction>) -> Result<AdvisorActionsResponse, SdkError> {
        let url = self.url("/searcher/actions");
        let request = self.http.post(&url).json(&AdvisorActionsRequest { actions });
        let response: AdvisorActionsResponse = self.call("posting advisor actions", &url, request)?;
        self.shut_down |= response.shut_down;
        Ok(response)
    }

    /// Runs a trial with `hparams` (a point of the experiment's space), from the latest
    /// checkpoint of the trial with request id `checkpoint_from` if given.
    pub fn create(&mut self, hparams: Map<String, Value>, checkpoint_from: Option<u64>) -> Result<CreatedTrial, SdkError> {
        let mut response = self.post(vec![AdvisorAction::Create { hparams, checkpoint_from }])?;
        response
            .created
            .pop()
            .ok_or_else(|| SdkError::BadResponse { what: "posting advisor actions", message: "no trial was created".into() })
    }

    /// Asks a live trial to stop; its `trial_exited` follows.
    pub fn stop(&mut self, request_id: u64) -> Result<(), SdkError> {
        self.post(vec![AdvisorAction::Stop { request_id }]).map(drop)
    }

    /// Ends the search successfully; trials still running finish, then the experiment completes.
    /// (To end it as a failure, post `AdvisorAction::Shutdown { failure: true }`.)
    pub fn shutdown(&mut self) -> Result<(), SdkError> {
        self.post(vec![AdvisorAction::Shutdown { failure: false }]).map(drop)
    }

    fn url(&self, tail: &str) -> String {
        format!("{}/api/v1/experiments/{}{tail}", self.base, self.experiment_id)
    }

    fn call<T: DeserializeOwned>(&self, what: &'static str, url: &str, request: RequestBuilder) -> Result<T, SdkError> {
        crate::client::call_json(what, url, request)
    }
}
