//! The REST API under `/api/v1`, its OpenAPI document, and Prometheus `/metrics`.
//!
//! Bodies and parameters are parsed by hand rather than with axum's rejecting extractors so that
//! every bad request gets the same JSON error shape naming what was wrong.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use drover_api::rest::*;
use drover_core::ExperimentConfig;
use drover_store::{CheckpointRow, ExperimentRow, MetricGroup, MetricRow, MetricSummaryRow, TrialRow};
use serde::de::DeserializeOwned;
use serde_json::Value;
use utoipa::OpenApi;

use crate::cluster::{ExperimentCommand, Master, now_ms};
use crate::error::{Error, Result};
use crate::lttb::lttb;

pub mod http_error;
mod params;
mod scheduling;

/// Most points one metrics report may carry.
const MAX_POINTS_PER_REPORT: usize = 200_000;
const MAX_METRIC_NAME: usize = 256;
/// Most files one checkpoint may register.
const MAX_CHECKPOINT_FILES: usize = 100_000;
/// Longest wait for a custom search's events; advisors poll again.
const MAX_EVENTS_WAIT_MS: u64 = 60_000;

pub fn router(master: Arc<Master>) -> Router {
    let context_body = master.config.max_context_bytes / 3 * 4 + 1024 * 1024;
    Router::new()
        .route("/api/v1/info", get(info))
        .route("/api/v1/openapi.json", get(openapi_json))
        .route("/api/v1/experiments", get(list_experiments).post(create_experiment).layer(DefaultBodyLimit::max(context_body)))
        .route("/api/v1/experiments/{id}", get(get_experiment).delete(delete_experiment))
        .route("/api/v1/experiments/{id}/{command}", post(experiment_command))
        .route("/api/v1/experiments/{id}/trials", get(list_trials))
        .route("/api/v1/experiments/{id}/context", get(get_context))
        .route("/api/v1/experiments/{id}/lineage", get(get_lineage))
        .route("/api/v1/experiments/{id}/searcher/events", get(searcher_events))
        .route("/api/v1/experiments/{id}/searcher/actions", post(searcher_actions))
        .route("/api/v1/trials/{id}", get(get_trial))
        .route("/api/v1/trials/{id}/metrics", get(get_metrics).post(report_metrics).layer(DefaultBodyLimit::max(64 * 1024 * 1024)))
        .route("/api/v1/trials/{id}/signals", get(get_signals))
        .route("/api/v1/trials/{id}/logs", get(get_logs))
        .route("/api/v1/trials/{id}/checkpoints", get(list_checkpoints).post(register_checkpoint))
        .route("/api/v1/checkpoints", get(list_all_checkpoints))
        .route("/api/v1/checkpoints/{uuid}", get(get_checkpoint).delete(delete_checkpoint).patch(patch_checkpoint))
        .route("/api/v1/checkpoints/{uuid}/files/{*path}", get(checkpoint_file))
        .route("/api/v1/experiments/{id}/checkpoint-policy", post(set_checkpoint_policy))
        .route("/api/v1/agents", get(list_agents))
        .route("/api/v1/agents/connect", get(crate::gateway::connect))
        .route("/metrics", get(prometheus))
        .merge(params::routes())
        .merge(scheduling::routes())
        .fallback(|| async { Error::not_found("no such endpoint") })
        .with_state(master)
}

#[derive(OpenApi)]
#[openapi(
    info(title = "drover", description = "drover master REST API"),
    paths(
        info, create_experiment, list_experiments, get_experiment, delete_experiment, experiment_command, list_trials,
        get_context, get_lineage, get_trial, get_metrics, report_metrics, get_signals, get_logs, list_checkpoints,
        register_checkpoint, get_checkpoint, list_all_checkpoints, delete_checkpoint, patch_checkpoint, checkpoint_file,
        set_checkpoint_policy, list_agents, searcher_events, searcher_actions
    ),
    components(schemas(
        ApiError, ErrorLocation, CreateExperimentRequest, Experiment, Trial, MetricSummary, ReportMetricsRequest,
        MetricPoint, ReportMetricsResponse, TrialSignals, MetricSeries, TrialLogs, LogEntry, RegisterCheckpointRequest,
        Checkpoint, CheckpointPolicy, GcResult, PatchCheckpoint, Agent, Slot, ClusterInfo, Lineage, LineageMember, SearcherEvent, SearcherEventKind, SearcherEvents,
        AdvisorAction, AdvisorActionsRequest, AdvisorActionsResponse, CreatedTrial
    )),
    modifiers(&TrialToken)
)]
pub struct ApiDoc;

/// The bearer token a task gets in `DROVER_TRIAL_TOKEN`, which the trial-facing endpoints
/// require (valid only for its own trial and only while its allocation lives).
struct TrialToken;

impl utoipa::Modify for TrialToken {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let scheme = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some(
            "the task's DROVER_TRIAL_TOKEN: only for its own trial (its experiment for the context), only while its allocation lives",
        ));
        doc.components.get_or_insert_with(Default::default).add_security_scheme(TRIAL_TOKEN, SecurityScheme::Http(scheme.build()));
    }
}

/// The name of [`TrialToken`] in the document.
const TRIAL_TOKEN: &str = "trial_token";

/// The whole OpenAPI document: [`ApiDoc`] and the parameter database's paths.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.merge(params::ParamsDoc::openapi());
    doc.merge(scheduling::SchedulingDoc::openapi());
    doc
}

fn parse_id(raw: &str, what: &str) -> Result<i64> {
    raw.parse::<i64>().map_err(|_| Error::bad_field(what, format!("`{raw}` is not a valid {what}")))
}

fn parse_json<T: DeserializeOwned>(body: &Bytes) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| {
        let mut err = Error::bad_request(format!("invalid JSON body: {e}"));
        err.body.location = Some(ErrorLocation { field: None, line: Some(e.line()), column: Some(e.column()) });
        err
    })
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

fn query_num<T: std::str::FromStr>(q: &HashMap<String, String>, name: &str, default: T) -> Result<T> {
    match q.get(name) {
        None => Ok(default),
        Some(raw) => raw.parse().map_err(|_| Error::bad_field(name, format!("`{raw}` is not a valid value for `{name}`"))),
    }
}

fn best_of(summaries: &[MetricSummaryRow], smaller_is_better: bool) -> Option<(i64, f64)> {
    let pick = |s: &MetricSummaryRow| if smaller_is_better { s.min } else { s.max };
    summaries
        .iter()
        .map(|s| (s.trial_id, pick(s)))
        .reduce(|a, b| if (smaller_is_better && b.1 < a.1) || (!smaller_is_better && b.1 > a.1) { b } else { a })
}

async fn experiment_view(master: &Master, row: ExperimentRow, counts: &[(i64, String, i64)]) -> Result<Experiment> {
    let config: ExperimentConfig = serde_json::from_str(&row.config_json).map_err(|e| Error::internal(e.to_string()))?;
    let summaries = master.store.experiment_metric_summaries(row.id, "validation", &config.searcher.metric).await?;
    let best = best_of(&summaries, config.searcher.smaller_is_better);
    let trial_counts: BTreeMap<String, i64> = counts.iter().filter(|(e, _, _)| *e == row.id).map(|(_, s, n)| (s.clone(), *n)).collect();
    Ok(Experiment {
        id: row.id,
        name: row.name,
        description: row.description,
        state: row.state,
        searcher: config.searcher.name.clone(),
        metric: config.searcher.metric.clone(),
        smaller_is_better: config.searcher.smaller_is_better,
        planned_trials: config.planned_trials().map(|n| n as i64),
        config: redacted(&config),
        created_at: row.created_at,
        ended_at: row.ended_at,
        trial_counts,
        best_trial_id: best.map(|b| b.0),
        best_metric: best.map(|b| b.1),
    })
}

/// The configuration as clients may see it: a storage secret given in the file is not shown.
fn redacted(config: &ExperimentConfig) -> Value {
    let mut value = serde_json::to_value(config).unwrap_or(Value::Null);
    if let Some(secret) = value.pointer_mut("/checkpoint_storage/secret_access_key")
        && !secret.is_null()
    {
        *secret = Value::String("<redacted>".into());
    }
    value
}

fn trial_view(
    row: TrialRow,
    summaries: Vec<MetricSummaryRow>,
    config: &ExperimentConfig,
    placements: &HashMap<i64, (String, Option<String>)>,
) -> Trial {
    let searcher_metric: Vec<MetricSummaryRow> =
        summaries.iter().filter(|s| s.group == "validation" && s.name == config.searcher.metric).cloned().collect();
    let best = best_of(&searcher_metric, config.searcher.smaller_is_better).map(|b| b.1);
    let placement = placements.get(&row.id);
    Trial {
        id: row.id,
        experiment_id: row.experiment_id,
        state: row.state,
        hparams: serde_json::from_str(&row.hparams_json).unwrap_or(Value::Null),
        restarts: row.restarts,
        created_at: row.created_at,
        ended_at: row.ended_at,
        best_metric: best,
        latest_checkpoint: row.latest_checkpoint,
        summaries: summaries
            .into_iter()
            .map(|s| MetricSummary {
                group: s.group,
                name: s.name,
                count: s.count,
                last: s.last,
                last_step: s.last_step,
                min: s.min,
                max: s.max,
            })
            .collect(),
        allocation_id: placement.map(|p| p.0.clone()),
        agent_id: placement.and_then(|p| p.1.clone()),
    }
}

async fn experiment_config(master: &Master, id: i64) -> Result<ExperimentConfig> {
    let row = master.store.get_experiment(id).await?;
    serde_json::from_str(&row.config_json).map_err(|e| Error::internal(e.to_string()))
}

#[utoipa::path(get, path = "/api/v1/info", responses((status = 200, body = ClusterInfo)))]
async fn info() -> Json<ClusterInfo> {
    Json(ClusterInfo { version: env!("CARGO_PKG_VERSION").into(), master_id: "drover".into() })
}

async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi().to_pretty_json().unwrap_or_default()).into_response()
}

/// Create an experiment from a YAML config and an optional context tarball.
#[utoipa::path(post, path = "/api/v1/experiments", request_body = CreateExperimentRequest,
    responses((status = 201, body = Experiment), (status = 400, body = ApiError), (status = 413, body = ApiError)))]
async fn create_experiment(State(master): State<Arc<Master>>, body: Bytes) -> Result<(StatusCode, Json<Experiment>)> {
    let req: CreateExperimentRequest = parse_json(&body)?;
    let context = match &req.context {
        None => None,
        Some(b64) => Some(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| Error::bad_field("context", format!("not valid base64: {e}")))?,
        ),
    };
    let id = master.create_experiment(&req.config, req.config_file.as_deref(), context, req.activate).await?;
    let row = master.store.get_experiment(id).await?;
    let counts = master.store.trial_counts().await?;
    Ok((StatusCode::CREATED, Json(experiment_view(&master, row, &counts).await?)))
}

#[utoipa::path(get, path = "/api/v1/experiments", responses((status = 200, body = [Experiment])))]
async fn list_experiments(State(master): State<Arc<Master>>) -> Result<Json<Vec<Experiment>>> {
    let counts = master.store.trial_counts().await?;
    let mut out = Vec::new();
    for row in master.store.list_experiments().await? {
        out.push(experiment_view(&master, row, &counts).await?);
    }
    Ok(Json(out))
}

#[utoipa::path(get, path = "/api/v1/experiments/{id}", params(("id" = i64, Path)),
    responses((status = 200, body = Experiment), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
async fn get_experiment(State(master): State<Arc<Master>>, Path(id): Path<String>) -> Result<Json<Experiment>> {
    let id = parse_id(&id, "experiment id")?;
    let row = master.store.get_experiment(id).await?;
    let counts = master.store.trial_counts().await?;
    Ok(Json(experiment_view(&master, row, &counts).await?))
}

#[utoipa::path(delete, path = "/api/v1/experiments/{id}", params(("id" = i64, Path)),
    responses((status = 204), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn delete_experiment(State(master): State<Arc<Master>>, Path(id): Path<String>) -> Result<StatusCode> {
    let id = parse_id(&id, "experiment id")?;
    master.delete_experiment(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Pause, activate, cancel or kill an experiment.
#[utoipa::path(post, path = "/api/v1/experiments/{id}/{command}",
    params(("id" = i64, Path), ("command" = String, Path, description = "pause | activate | cancel | kill (any other is a 404)",
        pattern = "^(pause|activate|cancel|kill)$")),
    responses((status = 200, body = Experiment), (status = 400, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError)))]
async fn experiment_command(State(master): State<Arc<Master>>, Path((id, command)): Path<(String, String)>) -> Result<Json<Experiment>> {
    let id = parse_id(&id, "experiment id")?;
    let command = match command.as_str() {
        "pause" => ExperimentCommand::Pause,
        "activate" => ExperimentCommand::Activate,
        "cancel" => ExperimentCommand::Cancel,
        "kill" => ExperimentCommand::Kill,
        other => return Err(Error::not_found(format!("no experiment command `{other}`; use pause, activate, cancel or kill"))),
    };
    master.command(id, command).await?;
    let row = master.store.get_experiment(id).await?;
    let counts = master.store.trial_counts().await?;
    Ok(Json(experiment_view(&master, row, &counts).await?))
}

#[utoipa::path(get, path = "/api/v1/experiments/{id}/trials", params(("id" = i64, Path)),
    responses((status = 200, body = [Trial]), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
async fn list_trials(State(master): State<Arc<Master>>, Path(id): Path<String>) -> Result<Json<Vec<Trial>>> {
    let id = parse_id(&id, "experiment id")?;
    let config = experiment_config(&master, id).await?;
    let placements = master.live_placements().await;
    let mut summaries: HashMap<i64, Vec<MetricSummaryRow>> = HashMap::new();
    for s in master.store.experiment_summaries(id).await? {
        summaries.entry(s.trial_id).or_default().push(s);
    }
    let trials = master.store.list_trials(id).await?;
    Ok(Json(
        trials
            .into_iter()
            .map(|t| {
                let s = summaries.remove(&t.id).unwrap_or_default();
                trial_view(t, s, &config, &placements)
            })
            .collect(),
    ))
}

/// The experiment's context tarball, for the agent starting one of its tasks.
#[utoipa::path(get, path = "/api/v1/experiments/{id}/context", params(("id" = i64, Path)), security(("trial_token" = [])),
    responses((status = 200, content_type = "application/gzip"), (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError), (status = 404, body = ApiError)))]
async fn get_context(State(master): State<Arc<Master>>, Path(id): Path<String>, headers: HeaderMap) -> Result<Response> {
    let id = parse_id(&id, "experiment id")?;
    master.authenticate_experiment(bearer(&headers), id)?;
    match master.store.get_context(id).await? {
        Some(bytes) => Ok(([(header::CONTENT_TYPE, "application/gzip")], bytes).into_response()),
        None => Err(Error::not_found(format!("experiment {id} has no context"))),
    }
}

/// A custom search's events after `after`, for its advisor. Asking with `after` acknowledges
/// every event up to it (the master may forget them). With no newer event, waits up to
/// `timeout_ms` for one and answers an empty page if none comes.
#[utoipa::path(get, path = "/api/v1/experiments/{id}/searcher/events",
    params(("id" = i64, Path), ("after" = Option<u64>, Query, format = "uint64", description = "the last event seen (default 0)"),
        ("timeout_ms" = Option<u64>, Query, format = "uint64", description = "default 30000; a longer wait is cut to 60000")),
    responses((status = 200, body = SearcherEvents), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
async fn searcher_events(
    State(master): State<Arc<Master>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<SearcherEvents>> {
    let id = parse_id(&id, "experiment id")?;
    let after: u64 = query_num(&q, "after", 0)?;
    let timeout = Duration::from_millis(query_num::<u64>(&q, "timeout_ms", 30_000)?.min(MAX_EVENTS_WAIT_MS));
    Ok(Json(master.searcher_events(id, after, timeout).await?))
}

/// Actions of a custom search's advisor: create trials, stop them, shut the search down. The
/// batch is checked whole; when one action is refused, none is applied.
#[utoipa::path(post, path = "/api/v1/experiments/{id}/searcher/actions", params(("id" = i64, Path)), request_body = AdvisorActionsRequest,
    responses((status = 200, body = AdvisorActionsResponse), (status = 400, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError)))]
async fn searcher_actions(State(master): State<Arc<Master>>, Path(id): Path<String>, body: Bytes) -> Result<Json<AdvisorActionsResponse>> {
    let id = parse_id(&id, "experiment id")?;
    let actions = parse_actions(&body)?;
    Ok(Json(master.advisor_actions(id, actions).await?))
}

/// `{"actions": [...]}`, or a bare list; each action is parsed on its own so that an error
/// names its index.
fn parse_actions(body: &Bytes) -> Result<Vec<AdvisorAction>> {
    let list = match parse_json::<Value>(body)? {
        Value::Array(list) => list,
        Value::Object(mut map) => {
            if let Some(other) = map.keys().find(|k| *k != "actions") {
                return Err(Error::bad_field(other.clone(), format!("unknown field `{other}`; expected `actions`")));
            }
            match map.remove("actions") {
                Some(Value::Array(list)) => list,
                _ => return Err(Error::bad_field("actions", "expected `actions`, a list of actions")),
            }
        }
        _ => return Err(Error::bad_request("expected {\"actions\": [...]}")),
    };
    list.into_iter()
        .enumerate()
        .map(|(i, v)| serde_json::from_value(v).map_err(|e| Error::bad_field(format!("actions[{i}]"), format!("actions[{i}]: {e}"))))
        .collect()
}

#[utoipa::path(get, path = "/api/v1/trials/{id}", params(("id" = i64, Path)),
    responses((status = 200, body = Trial), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
async fn get_trial(State(master): State<Arc<Master>>, Path(id): Path<String>) -> Result<Json<Trial>> {
    let id = parse_id(&id, "trial id")?;
    let row = master.store.get_trial(id).await?;
    let config = experiment_config(&master, row.experiment_id).await?;
    let placements = master.live_placements().await;
    let summaries = master.store.metric_summaries(id).await?;
    Ok(Json(trial_view(row, summaries, &config, &placements)))
}

/// One metric's time series, downsampled on the server to at most `max_points` points.
#[utoipa::path(get, path = "/api/v1/trials/{id}/metrics",
    params(("id" = i64, Path), ("name" = String, Query, min_length = 1, max_length = 256, pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]+$",
            description = "the metric (as a report may name it: 1 to 256 bytes, no control characters)"),
        ("group" = Option<String>, Query, pattern = "^(training|validation)$", description = "training (default) or validation"),
        ("max_points" = Option<usize>, Query, minimum = 2, maximum = 100000, description = "default 500")),
    responses((status = 200, body = MetricSeries), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
async fn get_metrics(
    State(master): State<Arc<Master>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<MetricSeries>> {
    let id = parse_id(&id, "trial id")?;
    master.store.get_trial(id).await?;
    let name = q.get("name").ok_or_else(|| Error::bad_field("name", "query parameter `name` (the metric) is required"))?;
    // What a report may store (so a name no report could have is refused rather than looked up).
    if name.is_empty() || name.len() > MAX_METRIC_NAME || name.chars().any(char::is_control) {
        return Err(Error::bad_field("name", format!("metric names are 1 to {MAX_METRIC_NAME} printable characters")));
    }
    let group = q.get("group").map_or("training", String::as_str);
    if MetricGroup::parse(group).is_none() {
        return Err(Error::bad_field("group", format!("unknown metric group `{group}`; use training or validation")));
    }
    let max_points: usize = query_num(&q, "max_points", 500)?;
    if !(2..=100_000).contains(&max_points) {
        return Err(Error::bad_field("max_points", "must be between 2 and 100000"));
    }
    let rows = master.store.metric_series(id, group, name, max_points).await?;
    Ok(Json(MetricSeries {
        group: group.into(),
        name: name.clone(),
        total_points: rows.total_points,
        points: lttb(&rows.points, max_points),
    }))
}

/// Report training or validation metrics. Idempotent by (trial, group, metric, step).
#[utoipa::path(post, path = "/api/v1/trials/{id}/metrics", params(("id" = i64, Path)), request_body = ReportMetricsRequest,
    security(("trial_token" = [])),
    responses((status = 200, body = ReportMetricsResponse), (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError), (status = 413, body = ApiError)))]
async fn report_metrics(
    State(master): State<Arc<Master>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ReportMetricsResponse>> {
    let id = parse_id(&id, "trial id")?;
    let auth = master.authenticate(bearer(&headers), id)?;
    let req: ReportMetricsRequest = parse_json(&body)?;
    let n: usize = req.points.iter().map(|p| p.metrics.len()).sum();
    if n > MAX_POINTS_PER_REPORT {
        return Err(Error::too_large(format!("{n} points in one report; send at most {MAX_POINTS_PER_REPORT}")));
    }
    let ts = now_ms();
    let mut rows = Vec::with_capacity(n);
    let mut searcher_values = Vec::new();
    // Check everything before storing anything: a bad report changes nothing.
    for (i, p) in req.points.iter().enumerate() {
        let group = MetricGroup::parse(&p.group).ok_or_else(|| {
            Error::bad_field(format!("points[{i}].group"), format!("unknown metric group `{}`; use training or validation", p.group))
        })?;
        if p.step < 0 {
            return Err(Error::bad_field(format!("points[{i}].step"), format!("step {} is negative", p.step)));
        }
        for (name, value) in &p.metrics {
            let field = format!("points[{i}].metrics.{name}");
            if name.is_empty() || name.len() > MAX_METRIC_NAME || name.chars().any(char::is_control) {
                return Err(Error::bad_field(field, format!("metric names must be 1 to {MAX_METRIC_NAME} printable characters")));
            }
            let value = match value {
                Value::Number(num) => num.as_f64().filter(|v| v.is_finite()),
                _ => None,
            }
            .ok_or_else(|| {
                Error::bad_field(field.clone(), format!("metric `{name}` at step {} is {value}, not a finite number", p.step))
            })?;
            if group == MetricGroup::Validation && name.as_str() == &*auth.searcher_metric {
                // Training time is the report's time metric when it carries one, else its step.
                let time = auth.time_metric.as_ref().and_then(|t| p.metrics.get(&**t)).and_then(Value::as_f64).unwrap_or(p.step as f64);
                searcher_values.push((value, time));
            }
            rows.push(MetricRow { group, name: name.clone(), step: p.step, value, ts_ms: ts });
        }
    }
    let stored = master.store.add_metrics(id, &rows).await?;
    master.counters.metric_points.fetch_add(stored as u64, Ordering::Relaxed);
    if stored > 0 && !searcher_values.is_empty() {
        master.validation_reported(auth.experiment_id, id, &searcher_values).await?;
    }
    Ok(Json(ReportMetricsResponse { stored, stop_requested: auth.stop_requested.load(Ordering::Relaxed) }))
}

#[utoipa::path(get, path = "/api/v1/trials/{id}/signals", params(("id" = i64, Path)), security(("trial_token" = [])),
    responses((status = 200, body = TrialSignals), (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError)))]
async fn get_signals(State(master): State<Arc<Master>>, Path(id): Path<String>, headers: HeaderMap) -> Result<Json<TrialSignals>> {
    let id = parse_id(&id, "trial id")?;
    let auth = master.authenticate(bearer(&headers), id)?;
    Ok(Json(TrialSignals { stop_requested: auth.stop_requested.load(Ordering::Relaxed) }))
}

/// A page of a trial's logs. With `follow=true` the call waits (up to `timeout_ms`) for new
/// lines when there are none yet.
#[utoipa::path(get, path = "/api/v1/trials/{id}/logs",
    params(("id" = i64, Path), ("after" = Option<i64>, Query, description = "the last line seen (default 0)"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 10000, description = "default 1000"), ("follow" = Option<bool>, Query),
        ("timeout_ms" = Option<u64>, Query, format = "uint64", description = "default 30000; a longer wait is cut to 120000")),
    responses((status = 200, body = TrialLogs), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
async fn get_logs(
    State(master): State<Arc<Master>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<TrialLogs>> {
    let id = parse_id(&id, "trial id")?;
    let after: i64 = query_num(&q, "after", 0)?;
    let limit: i64 = query_num(&q, "limit", 1000)?;
    if !(1..=10_000).contains(&limit) {
        return Err(Error::bad_field("limit", "must be between 1 and 10000"));
    }
    let follow: bool = query_num(&q, "follow", false)?;
    let timeout = Duration::from_millis(query_num::<u64>(&q, "timeout_ms", 30_000)?.min(120_000));
    let deadline = tokio::time::Instant::now() + timeout;
    let mut changes = master.changes.subscribe();
    loop {
        let lines = master.store.read_logs(id, after, limit).await?;
        if !lines.is_empty() || !follow {
            if lines.is_empty() {
                master.store.get_trial(id).await?;
            }
            let next_after = lines.last().map_or(after, |l| l.id);
            let lines = lines.into_iter().map(|l| LogEntry { id: l.id, ts_ms: l.ts_ms, stream: l.stream, line: l.line }).collect();
            return Ok(Json(TrialLogs { lines, next_after }));
        }
        let trial = master.store.get_trial(id).await?;
        let finished = trial.state.parse::<drover_core::TrialState>().is_ok_and(|s| s.is_terminal());
        if finished || tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
            return Ok(Json(TrialLogs { lines: Vec::new(), next_after: after }));
        }
    }
}

fn checkpoint_view(c: CheckpointRow) -> Checkpoint {
    Checkpoint {
        uuid: c.uuid,
        trial_id: c.trial_id,
        experiment_id: c.experiment_id,
        step: c.step,
        size: c.size,
        resources: serde_json::from_str(&c.resources_json).unwrap_or_default(),
        // Registered before metadata had to be an object, a checkpoint may hold `null`.
        metadata: match serde_json::from_str(&c.metadata_json) {
            Ok(Value::Null) | Err(_) => Value::Object(Default::default()),
            Ok(metadata) => metadata,
        },
        created_at: c.created_at,
        pinned: c.pinned,
    }
}

/// The family tree of a `pbt` experiment: every member of every generation, its parent, score
/// and checkpoint. 400 for any other searcher.
#[utoipa::path(get, path = "/api/v1/experiments/{id}/lineage", params(("id" = i64, Path)),
    responses((status = 200, body = Lineage), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
async fn get_lineage(State(master): State<Arc<Master>>, Path(id): Path<String>) -> Result<Json<Lineage>> {
    let id = parse_id(&id, "experiment id")?;
    Ok(Json(master.lineage(id).await?))
}

#[utoipa::path(get, path = "/api/v1/trials/{id}/checkpoints", params(("id" = i64, Path)),
    responses((status = 200, body = [Checkpoint]), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
async fn list_checkpoints(State(master): State<Arc<Master>>, Path(id): Path<String>) -> Result<Json<Vec<Checkpoint>>> {
    let id = parse_id(&id, "trial id")?;
    master.store.get_trial(id).await?;
    Ok(Json(master.store.list_checkpoints(id).await?.into_iter().map(checkpoint_view).collect()))
}

/// Register a checkpoint whose files are already in the experiment's checkpoint storage.
#[utoipa::path(post, path = "/api/v1/trials/{id}/checkpoints", params(("id" = i64, Path)), request_body = RegisterCheckpointRequest,
    security(("trial_token" = [])),
    responses((status = 200, body = Checkpoint), (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn register_checkpoint(
    State(master): State<Arc<Master>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Checkpoint>> {
    let id = parse_id(&id, "trial id")?;
    let auth = master.authenticate(bearer(&headers), id)?;
    let req: RegisterCheckpointRequest = parse_json(&body)?;
    // A real UUID, in its hyphenated form: the checkpoint becomes `{uuid}/` at the top of the
    // storage, beside `pbt/`, and no name may collide with that.
    checkpoint_uuid(&req.uuid)?;
    if req.step < 0 {
        return Err(Error::bad_field("step", format!("step {} is negative", req.step)));
    }
    // A JSON object, as every reader of `Checkpoint::metadata` expects; none at all is an empty one.
    let metadata = match req.metadata {
        Value::Null => Value::Object(Default::default()),
        Value::Object(map) => Value::Object(map),
        other => {
            let kind = match other {
                Value::Array(_) => "an array",
                Value::String(_) => "a string",
                Value::Number(_) => "a number",
                _ => "a boolean",
            };
            return Err(Error::bad_field("metadata", format!("checkpoint metadata must be a JSON object, not {kind}")));
        }
    };
    if req.resources.len() > MAX_CHECKPOINT_FILES {
        return Err(Error::bad_field(
            "resources",
            format!("{} files; a checkpoint may have at most {MAX_CHECKPOINT_FILES}", req.resources.len()),
        ));
    }
    for path in req.resources.keys() {
        if let Err(e) = drover_storage::validate_key(path) {
            return Err(Error::bad_field(
                format!("resources.{path}"),
                format!("checkpoint file paths must be relative and stay inside the checkpoint: {e}"),
            ));
        }
    }
    let size = req
        .resources
        .values()
        .try_fold(0u64, |sum, &n| sum.checked_add(n))
        .and_then(|sum| i64::try_from(sum).ok())
        .ok_or_else(|| Error::bad_field("resources", "the file sizes add up to more than 2^63 bytes"))?;
    // What was stored must be the checkpoint's own bytes: a link (to /etc, to another
    // checkpoint) is refused by name, so nothing later reads or deletes through it.
    let storage = master.experiment_storage(auth.experiment_id).await?;
    let links = storage.links(&req.uuid).await.map_err(|e| match e {
        // The checkpoint's directory itself is a link.
        drover_storage::StorageError::Link { .. } => {
            Error::bad_field("uuid", format!("checkpoint {} is a symbolic link in storage; a checkpoint must hold its own files", req.uuid))
        }
        e => Error::internal(format!("cannot inspect checkpoint {}: {e}", req.uuid)),
    })?;
    if let Some(link) = links.first() {
        return Err(Error::bad_field(
            format!("resources.{link}"),
            format!(
                "`{link}` in checkpoint {} is a symbolic link; a checkpoint must hold its own files (the SDK stores what a link points to)",
                req.uuid
            ),
        ));
    }
    let row = CheckpointRow {
        uuid: req.uuid.clone(),
        trial_id: id,
        experiment_id: auth.experiment_id,
        step: req.step,
        size,
        resources_json: serde_json::to_string(&req.resources).unwrap_or_default(),
        metadata_json: metadata.to_string(),
        created_at: now_ms(),
        pinned: false,
    };
    master.store.add_checkpoint(row.clone()).await?;
    master.checkpoint_registered(auth.experiment_id, id, &req.uuid).await?;
    Ok(Json(checkpoint_view(row)))
}

/// A checkpoint's UUID from a request, in the hyphenated form registration requires: anything
/// else names no checkpoint, and is refused before it reaches the store (where PostgreSQL would
/// fail on a NUL byte).
fn checkpoint_uuid(raw: &str) -> Result<&str> {
    if raw.len() != 36 || uuid::Uuid::try_parse(raw).is_err() {
        let shown: String = raw.chars().take(64).collect::<String>().escape_debug().to_string();
        let more = if raw.chars().count() > 64 { "..." } else { "" };
        return Err(Error::bad_field("uuid", format!("`{shown}{more}` is not a UUID such as 3f1c2a8e-5b7d-4e2a-9c1f-0a1b2c3d4e5f")));
    }
    Ok(raw)
}

#[utoipa::path(get, path = "/api/v1/checkpoints/{uuid}", params(("uuid" = String, Path, format = "uuid")),
    responses((status = 200, body = Checkpoint), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
async fn get_checkpoint(State(master): State<Arc<Master>>, Path(uuid): Path<String>) -> Result<Json<Checkpoint>> {
    let uuid = checkpoint_uuid(&uuid)?;
    Ok(Json(checkpoint_view(master.store.get_checkpoint(uuid).await?)))
}

/// Checkpoints of an experiment (`?experiment_id=`) or a trial (`?trial_id=`): exactly one of
/// the two is required (400 for neither or both).
#[utoipa::path(get, path = "/api/v1/checkpoints",
    params(("experiment_id" = Option<i64>, Query, description = "give this or trial_id"),
        ("trial_id" = Option<i64>, Query, description = "give this or experiment_id")),
    responses((status = 200, body = [Checkpoint]), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
async fn list_all_checkpoints(
    State(master): State<Arc<Master>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Vec<Checkpoint>>> {
    let rows = match (q.get("experiment_id"), q.get("trial_id")) {
        (Some(e), None) => {
            let id = parse_id(e, "experiment_id")?;
            master.store.get_experiment(id).await?;
            master.store.list_experiment_checkpoints(id).await?
        }
        (None, Some(t)) => {
            let id = parse_id(t, "trial_id")?;
            master.store.get_trial(id).await?;
            master.store.list_checkpoints(id).await?
        }
        _ => return Err(Error::bad_field("experiment_id", "give exactly one of experiment_id and trial_id")),
    };
    Ok(Json(rows.into_iter().map(checkpoint_view).collect()))
}

/// Delete a checkpoint: its files, then its record. 409 while pinned or needed by a live trial.
#[utoipa::path(delete, path = "/api/v1/checkpoints/{uuid}", params(("uuid" = String, Path, format = "uuid")),
    responses((status = 204), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn delete_checkpoint(State(master): State<Arc<Master>>, Path(uuid): Path<String>) -> Result<StatusCode> {
    master.delete_checkpoint(checkpoint_uuid(&uuid)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Pin or unpin a checkpoint (a pinned one survives every garbage collection).
#[utoipa::path(patch, path = "/api/v1/checkpoints/{uuid}", params(("uuid" = String, Path, format = "uuid")), request_body = PatchCheckpoint,
    responses((status = 200, body = Checkpoint), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
async fn patch_checkpoint(State(master): State<Arc<Master>>, Path(uuid): Path<String>, body: Bytes) -> Result<Json<Checkpoint>> {
    let uuid = checkpoint_uuid(&uuid)?;
    let req: PatchCheckpoint = parse_json(&body)?;
    master.store.set_checkpoint_pinned(uuid, req.pinned).await?;
    Ok(Json(checkpoint_view(master.store.get_checkpoint(uuid).await?)))
}

/// One file of a checkpoint, streamed from storage (so clients need no storage credentials).
#[utoipa::path(get, path = "/api/v1/checkpoints/{uuid}/files/{path}", params(("uuid" = String, Path, format = "uuid"), ("path" = String, Path)),
    responses((status = 200, content_type = "application/octet-stream"), (status = 400, body = ApiError), (status = 403, body = ApiError),
        (status = 404, body = ApiError)))]
async fn checkpoint_file(State(master): State<Arc<Master>>, Path((uuid, path)): Path<(String, String)>) -> Result<Response> {
    let row = master.store.get_checkpoint(checkpoint_uuid(&uuid)?).await?;
    let resources: BTreeMap<String, u64> = serde_json::from_str(&row.resources_json).unwrap_or_default();
    if !resources.contains_key(&path) {
        drover_storage::validate_key(&path).map_err(|e| Error::bad_field("path", e.to_string()))?;
        return Err(Error::not_found(format!("checkpoint {uuid} has no file {path}")));
    }
    let storage = master.experiment_storage(row.experiment_id).await?;
    let (size, stream) = storage.get_stream(&format!("{uuid}/{path}")).await.map_err(|e| match e {
        drover_storage::StorageError::NotFound(_) => Error::not_found(format!("{path} of checkpoint {uuid} is missing from storage")),
        drover_storage::StorageError::Link { .. } => {
            Error::forbidden(format!("{path} of checkpoint {uuid} is a symbolic link; drover never serves through links"))
        }
        e => Error::internal(e.to_string()),
    })?;
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream".to_string()), (header::CONTENT_LENGTH, size.to_string())],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

/// Set an experiment's checkpoint policy and apply it now (it applies again when the
/// experiment ends).
#[utoipa::path(post, path = "/api/v1/experiments/{id}/checkpoint-policy", params(("id" = i64, Path)), request_body = CheckpointPolicy,
    responses((status = 200, body = GcResult), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
async fn set_checkpoint_policy(State(master): State<Arc<Master>>, Path(id): Path<String>, body: Bytes) -> Result<Json<GcResult>> {
    let id = parse_id(&id, "experiment id")?;
    let p: CheckpointPolicy = parse_json(&body)?;
    let report = master
        .set_checkpoint_policy(
            id,
            drover_core::checkpoint_gc::GcPolicy {
                save_experiment_best: p.save_experiment_best,
                save_trial_best: p.save_trial_best,
                save_trial_latest: p.save_trial_latest,
            },
        )
        .await?;
    Ok(Json(GcResult { deleted: report.deleted, kept: report.kept }))
}

#[utoipa::path(get, path = "/api/v1/agents", responses((status = 200, body = [Agent])))]
async fn list_agents(State(master): State<Arc<Master>>) -> Json<Vec<Agent>> {
    Json(master.agents().await)
}

/// Prometheus text exposition.
async fn prometheus(State(master): State<Arc<Master>>) -> Response {
    let (slots, used, agents, queued) = master.gauges().await;
    let c = &master.counters;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    };
    metric(
        "drover_experiments_created_total",
        "counter",
        "Experiments created since start.",
        c.experiments_created.load(Ordering::Relaxed),
    );
    metric("drover_trials_started_total", "counter", "Trial allocations started since start.", c.trials_started.load(Ordering::Relaxed));
    metric("drover_trials_finished_total", "counter", "Trials that reached a terminal state.", c.trials_finished.load(Ordering::Relaxed));
    metric("drover_metric_points_total", "counter", "Metric points stored.", c.metric_points.load(Ordering::Relaxed));
    metric("drover_log_lines_total", "counter", "Task log lines stored.", c.log_lines.load(Ordering::Relaxed));
    metric("drover_agents_connected", "gauge", "Agents connected now.", agents as u64);
    metric("drover_slots", "gauge", "Slots on connected agents.", slots as u64);
    metric("drover_slots_used", "gauge", "Slots in use.", used as u64);
    metric("drover_trials_queued", "gauge", "Trials waiting for slots.", queued as u64);
    metric("drover_uptime_seconds", "gauge", "Seconds since the master started.", master.started.elapsed().as_secs());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
