//! The HTTP calls a trial makes to the master.

use std::time::Duration;

use drover_api::rest::{
    ApiError, Checkpoint, RegisterCheckpointRequest, Rendezvous, RendezvousRequest, ReportMetricsRequest, ReportMetricsResponse,
    TrialSignals,
};
use reqwest::blocking::{Client, RequestBuilder};
use serde::de::DeserializeOwned;

use crate::SdkError;

/// How long one request may take. Metric batches are small; a master that takes longer than
/// this is treated like an unreachable one, and the batch is retried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// should_stop() polls from the training loop: a slow master must not stall training for long.
const SIGNALS_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of a non-JSON error body quoted in an error message.
const MAX_QUOTED_BODY: usize = 300;

#[derive(Clone)]
pub(crate) struct MasterClient {
    http: Client,
    /// `http://host:port`, without a trailing slash.
    base: String,
    token: String,
    trial_id: i64,
}

impl MasterClient {
    pub(crate) fn new(base: &str, token: &str, trial_id: i64) -> Result<MasterClient, SdkError> {
        let http = Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            // The master is reached directly on the cluster network; an HTTP(S)_PROXY set for
            // downloads in the trial's environment would otherwise capture these requests.
            .no_proxy()
            .build()
            .map_err(|source| SdkError::Transport { what: "creating the HTTP client", url: base.to_string(), source })?;
        Ok(MasterClient { http, base: base.trim_end_matches('/').to_string(), token: token.to_string(), trial_id })
    }

    fn trial_url(&self, tail: &str) -> String {
        format!("{}/api/v1/trials/{}/{tail}", self.base, self.trial_id)
    }

    pub(crate) fn report_metrics(&self, request: &ReportMetricsRequest) -> Result<ReportMetricsResponse, SdkError> {
        let url = self.trial_url("metrics");
        self.call("reporting metrics", &url, self.http.post(&url).json(request))
    }

    pub(crate) fn signals(&self) -> Result<TrialSignals, SdkError> {
        let url = self.trial_url("signals");
        self.call("polling signals", &url, self.http.get(&url).timeout(SIGNALS_TIMEOUT))
    }

    pub(crate) fn register_checkpoint(&self, request: &RegisterCheckpointRequest) -> Result<Checkpoint, SdkError> {
        let url = self.trial_url("checkpoints");
        self.call("registering a checkpoint", &url, self.http.post(&url).json(request))
    }

    /// Announces this gang member's address; waits up to `wait_ms` on the master for the rest.
    pub(crate) fn rendezvous(&self, address: &str, wait_ms: u64) -> Result<Rendezvous, SdkError> {
        let url = format!("{}/api/v1/allocations/rendezvous?timeout_ms={wait_ms}", self.base);
        let request = self.http.post(&url).json(&RendezvousRequest { address: address.to_string() });
        self.call("the rendezvous", &url, request.timeout(Duration::from_millis(wait_ms) + REQUEST_TIMEOUT))
    }

    /// `uuid` must have been checked by `checkpoint::validate_uuid`, since it becomes part of the path.
    pub(crate) fn checkpoint(&self, uuid: &str) -> Result<Checkpoint, SdkError> {
        let url = format!("{}/api/v1/checkpoints/{uuid}", self.base);
        self.call("fetching a checkpoint", &url, self.http.get(&url))
    }

    fn call<T: DeserializeOwned>(&self, what: &'static str, url: &str, request: RequestBuilder) -> Result<T, SdkError> {
        call_json(what, url, request.bearer_auth(&self.token))
    }
}

/// Sends `request` and decodes a JSON answer; an error status becomes `SdkError::Api` with the
/// master's message. Every client of the SDK (trial, advisor, parameters) goes through here.
pub(crate) fn call_json<T: DeserializeOwned>(what: &'static str, url: &str, request: RequestBuilder) -> Result<T, SdkError> {
    let transport = |source| SdkError::Transport { what, url: url.to_string(), source };
    let response = request.send().map_err(transport)?;
    let status = response.status();
    // A body cut off by a dropped connection is a transport problem and worth a retry.
    let body = response.bytes().map_err(transport)?;
    if !status.is_success() {
        return Err(SdkError::Api { what, status: status.as_u16(), message: error_message(&body) });
    }
    serde_json::from_slice(&body).map_err(|err| SdkError::BadResponse { what, message: err.to_string() })
}

/// The master's `ApiError` message with its location, or the start of the raw body when the
/// error did not come from the API's own handlers (a proxy, a framework rejection).
pub(crate) fn error_message(body: &[u8]) -> String {
    if let Ok(api) = serde_json::from_slice::<ApiError>(body) {
        let location = api.location.as_ref().and_then(|loc| loc.field.as_deref());
        return match location {
            Some(field) => format!("{} (at {field})", api.message),
            None => api.message,
        };
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(no error message)".to_string();
    }
    let mut cut: String = text.chars().take(MAX_QUOTED_BODY).collect();
    if cut.len() < text.len() {
        cut.push_str("...");
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_come_from_api_errors_or_the_raw_body() {
        let api = br#"{"error":"bad_request","message":"metric loss is NaN","location":{"field":"points[0].metrics.loss"}}"#;
        assert_eq!(error_message(api), "metric loss is NaN (at points[0].metrics.loss)");
        let api = br#"{"error":"unauthorized","message":"bad token"}"#;
        assert_eq!(error_message(api), "bad token");
        assert_eq!(error_message(b"  Failed to parse the request body  "), "Failed to parse the request body");
        assert_eq!(error_message(b""), "(no error message)");
        let long = "e".repeat(1000);
        assert_eq!(error_message(long.as_bytes()).len(), MAX_QUOTED_BODY + 3);
    }

    #[test]
    fn transient_errors_are_server_side_ones() {
        let api = |status| SdkError::Api { what: "x", status, message: String::new() };
        assert!(api(500).is_transient());
        assert!(api(503).is_transient());
        assert!(api(429).is_transient());
        assert!(!api(400).is_transient());
        assert!(!api(401).is_transient());
        assert!(!api(404).is_transient());
        assert!(!SdkError::BadResponse { what: "x", message: String::new() }.is_transient());
    }
}
