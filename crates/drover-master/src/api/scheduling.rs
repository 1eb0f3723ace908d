//! REST handlers of scheduling: the job queue (`GET /api/v1/jobs`), a job's priority and
//! weight (`PATCH /api/v1/jobs/{id}`), and the rendezvous of a gang's members
//! (`POST /api/v1/allocations/rendezvous`, with a task token).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use drover_api::rest::{ApiError, Job, JobWaiting, Rendezvous, RendezvousRequest, UpdateJobRequest};
use utoipa::OpenApi;

use super::{bearer, parse_id, parse_json, query_num};
use crate::cluster::Master;
use crate::error::{Error, Result};

/// Longest a rendezvous call waits for the rest of the gang; members call again.
const MAX_RENDEZVOUS_WAIT_MS: u64 = 60_000;

#[derive(OpenApi)]
#[openapi(
    paths(list_jobs, update_job, rendezvous),
    components(schemas(ApiError, Job, JobWaiting, UpdateJobRequest, Rendezvous, RendezvousRequest))
)]
pub struct SchedulingDoc;

pub fn routes() -> Router<Arc<Master>> {
    Router::new()
        .route("/api/v1/jobs", get(list_jobs))
        .route("/api/v1/jobs/{id}", axum::routing::patch(update_job))
        .route("/api/v1/allocations/rendezvous", post(rendezvous))
}

/// Every unfinished job: pool, priority, weight, what runs, and each waiting trial's place in
/// its pool's queue with the reason it waits.
#[utoipa::path(get, path = "/api/v1/jobs", responses((status = 200, body = [Job])))]
async fn list_jobs(State(master): State<Arc<Master>>) -> Json<Vec<Job>> {
    Json(master.jobs().await)
}

#[utoipa::path(patch, path = "/api/v1/jobs/{id}", params(("id" = i64, Path)), request_body = UpdateJobRequest,
    responses((status = 200, body = Job), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
async fn update_job(State(master): State<Arc<Master>>, Path(id): Path<String>, body: Bytes) -> Result<Json<Job>> {
    let id = parse_id(&id, "job id")?;
    let request: UpdateJobRequest = parse_json(&body)?;
    if request.priority.is_none() && request.weight.is_none() {
        return Err(Error::bad_request("give `priority`, `weight` or both"));
    }
    Ok(Json(master.update_job(id, request.priority, request.weight).await?))
}

/// Announces this member's address and waits (up to `timeout_ms`, default 30 s) for every
/// other member's; `complete: false` means call again.
#[utoipa::path(post, path = "/api/v1/allocations/rendezvous", request_body = RendezvousRequest,
    params(("timeout_ms" = Option<u64>, Query, maximum = 60000)), security(("trial_token" = [])),
    responses((status = 200, body = Rendezvous), (status = 400, body = ApiError), (status = 401, body = ApiError),
        (status = 409, body = ApiError)))]
async fn rendezvous(
    State(master): State<Arc<Master>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Rendezvous>> {
    let timeout_ms: u64 = query_num(&query, "timeout_ms", 30_000)?;
    if timeout_ms > MAX_RENDEZVOUS_WAIT_MS {
        return Err(Error::bad_field("timeout_ms", format!("at most {MAX_RENDEZVOUS_WAIT_MS}")));
    }
    let request: RendezvousRequest = parse_json(&body)?;
    Ok(Json(master.rendezvous(bearer(&headers), request.address, Duration::from_millis(timeout_ms)).await?))
}
