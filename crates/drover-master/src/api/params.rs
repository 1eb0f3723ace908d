//! REST handlers of the parameter database under `/api/v1/params` (see `crate::params`).
//!
//! A push is `PUT .../versions/{version}` with the raw bytes as the body, streamed into
//! storage, and its tags, metadata and checksum in the query string:
//! `?tags=a,b&metadata={"elo":1200}&sha256=...` (URL-encoded). A download is
//! `GET .../versions/{version|latest|tag:NAME}`: the bytes, with the version that `latest` or a
//! tag resolved to in `x-drover-param-version` (and its SHA-256 and creation time beside it);
//! `.../info` answers the same version's JSON description instead. Like the other
//! experiment-level endpoints, these need no credentials yet.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post, put};
use drover_api::rest::{
    ApiError, ErrorLocation, ParamBytes, ParamGcRequest, ParamGcResponse, ParamName, ParamTag, ParamVersion, SetParamTagRequest,
    UpdateParamMetadataRequest, param_headers,
};
use drover_core::param_query::ParamQuery;
use utoipa::OpenApi;

use super::parse_json;
use crate::cluster::Master;
use crate::error::{Error, Result};
use crate::params::{MAX_WAIT_MS, PushOptions, Selector, check_name, parse_metadata, parse_version};

/// The parameter database's part of the OpenAPI document, merged into the whole by
/// `api::openapi`.
#[derive(OpenApi)]
#[openapi(
    paths(
        list_params,
        push_param,
        get_param_bytes,
        get_param_info,
        query_param_versions,
        update_param_metadata,
        list_param_tags,
        set_param_tag,
        delete_param_tag,
        gc_params
    ),
    components(schemas(
        ApiError,
        ParamVersion,
        ParamTag,
        ParamName,
        SetParamTagRequest,
        UpdateParamMetadataRequest,
        ParamGcRequest,
        ParamGcResponse
    )),
    modifiers(&Described)
)]
pub struct ParamsDoc;

/// What utoipa's attributes cannot say (they take literals only): the patterns of names, tags and
/// selectors, and that `metadata` is a JSON object sent as JSON text.
struct Described;

impl utoipa::Modify for Described {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::content::Content;
        use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
        use utoipa::openapi::{RefOr, path::ParameterIn};
        for item in doc.paths.paths.values_mut() {
            let operations = [&mut item.get, &mut item.put, &mut item.patch, &mut item.post, &mut item.delete];
            let parameters = operations.into_iter().flatten().flat_map(|op| op.parameters.iter_mut().flatten());
            for parameter in parameters.filter_map(|p| if let RefOr::T(p) = p { Some(p) } else { None }) {
                let pattern = match (&parameter.parameter_in, parameter.name.as_str()) {
                    (ParameterIn::Path, "name" | "tag") => NAME_PATTERN,
                    // The same segment is a version number in a push and a selector in a read.
                    (ParameterIn::Path, "version") if is_string(&parameter.schema) => SELECTOR_PATTERN,
                    (ParameterIn::Query, "tags") => TAGS_PATTERN,
                    (ParameterIn::Query, "metadata") => {
                        let object = ObjectBuilder::new().schema_type(Type::Object).build();
                        parameter.schema = None;
                        parameter.content.insert("application/json".into(), RefOr::T(Content::new(Some(object))));
                        continue;
                    }
                    _ => continue,
                };
                if let Some(RefOr::T(Schema::Object(schema))) = &mut parameter.schema {
                    schema.pattern = Some(pattern.into());
                }
            }
        }
    }
}

/// Whether a parameter's schema is a string (rather than a number).
fn is_string(schema: &Option<utoipa::openapi::RefOr<utoipa::openapi::Schema>>) -> bool {
    use utoipa::openapi::schema::{Schema, SchemaType, Type};
    matches!(schema, Some(utoipa::openapi::RefOr::T(Schema::Object(o))) if o.schema_type == SchemaType::Type(Type::String))
}

/// What `check_name` accepts, for the document: 1 to 128 letters, digits, `_`, `-` or `.`, not
/// starting with `.`.
const NAME_PATTERN: &str = "^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$";
/// A comma-separated list of names (empty parts are skipped).
const TAGS_PATTERN: &str = "^,*([A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}(,+[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127})*)?,*$";
/// `latest`, `tag:NAME` or a version number.
const SELECTOR_PATTERN: &str = "^(latest|tag:[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}|[0-9]+)$";

/// Longest filter or sort spec accepted.
const MAX_QUERY_TEXT: usize = 4096;

pub(super) fn routes() -> Router<Arc<Master>> {
    Router::new()
        .route("/api/v1/params", get(list_params))
        .route("/api/v1/params/{name}/versions", get(query_param_versions))
        .route("/api/v1/params/{name}/versions/{selector}", get(get_param_bytes).put(push_param).patch(update_param_metadata))
        .route("/api/v1/params/{name}/versions/{selector}/info", get(get_param_info))
        .route("/api/v1/params/{name}/tags", get(list_param_tags))
        .route("/api/v1/params/{name}/tags/{tag}", put(set_param_tag).delete(delete_param_tag))
        .route("/api/v1/params/{name}/gc", post(gc_params))
}

/// Path parameters, refused in our error shape (naming the parameter) rather than axum's.
fn path_params<T>(path: std::result::Result<Path<T>, PathRejection>) -> Result<T> {
    path.map(|Path(p)| p).map_err(|e| Error::bad_field("name", format!("the path does not decode: {e}")))
}

/// Query parameters, each of them one of `allowed`.
fn query_params(
    query: std::result::Result<Query<HashMap<String, String>>, QueryRejection>,
    allowed: &[&str],
) -> Result<HashMap<String, String>> {
    let Query(q) = query.map_err(|e| Error::bad_request(format!("the query string does not decode: {e}")))?;
    if let Some(unknown) = q.keys().find(|k| !allowed.contains(&k.as_str())) {
        let expected = if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") };
        return Err(Error::bad_field(unknown.clone(), format!("unknown query parameter `{unknown}`; expected {expected}")));
    }
    Ok(q)
}

fn number<T: std::str::FromStr>(q: &HashMap<String, String>, name: &str) -> Result<Option<T>> {
    q.get(name).map(|raw| raw.parse().map_err(|_| Error::bad_field(name, format!("`{raw}` is not a valid value for `{name}`")))).transpose()
}

/// `wait_ms` and `newer_than` of a read.
fn read_options(q: &HashMap<String, String>, selector: &Selector) -> Result<(Option<i64>, Duration)> {
    let wait = Duration::from_millis(number::<u64>(q, "wait_ms")?.unwrap_or(0).min(MAX_WAIT_MS));
    let newer_than = number::<i64>(q, "newer_than")?;
    if newer_than.is_some() && matches!(selector, Selector::Version(_)) {
        return Err(Error::bad_field("newer_than", "`newer_than` goes with `latest` or `tag:NAME`, not a version number"));
    }
    Ok((newer_than, wait))
}

/// Every parameter name with a summary of its versions.
#[utoipa::path(get, path = "/api/v1/params", responses((status = 200, body = [ParamName])))]
pub(super) async fn list_params(State(master): State<Arc<Master>>) -> Result<Json<Vec<ParamName>>> {
    Ok(Json(master.params.names().await?))
}

/// Push a version: the raw bytes are the body. Versions are immutable: pushing one that
/// exists is a 409; a body over the master's limit is a 413; either way nothing is stored.
#[utoipa::path(put, path = "/api/v1/params/{name}/versions/{version}",
    params(("name" = String, Path), ("version" = i64, Path, minimum = 0, description = "0 or more"),
        ("tags" = Option<String>, Query, description = "comma-separated tags to point at this version"),
        ("metadata" = Option<String>, Query, description = "a JSON object (at most 64 KiB), URL-encoded"),
        ("sha256" = Option<String>, Query, pattern = "^[0-9a-fA-F]{64}$", description = "the body's SHA-256 in hex; refused when it differs")),
    request_body(content = inline(ParamBytes), content_type = "application/octet-stream"),
    responses((status = 201, body = ParamVersion), (status = 400, body = ApiError), (status = 409, body = ApiError),
        (status = 413, body = ApiError)))]
pub(super) async fn push_param(
    State(master): State<Arc<Master>>,
    path: std::result::Result<Path<(String, String)>, PathRejection>,
    query: std::result::Result<Query<HashMap<String, String>>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<ParamVersion>)> {
    let mut body = body.into_data_stream();
    let pushed = push(&master, path, query, &headers, &mut body).await;
    if pushed.is_err() {
        crate::params::drain(&mut body).await;
    }
    Ok((StatusCode::CREATED, Json(pushed?)))
}

async fn push(
    master: &Master,
    path: std::result::Result<Path<(String, String)>, PathRejection>,
    query: std::result::Result<Query<HashMap<String, String>>, QueryRejection>,
    headers: &HeaderMap,
    body: &mut axum::body::BodyDataStream,
) -> Result<ParamVersion> {
    let (name, version) = path_params(path)?;
    check_name("name", &name)?;
    let version = parse_version(&version)?;
    let q = query_params(query, &["tags", "metadata", "sha256"])?;
    let mut tags = Vec::new();
    for tag in q.get("tags").map(|t| t.split(',').filter(|t| !t.is_empty()).collect::<Vec<_>>()).unwrap_or_default() {
        check_name("tags", tag)?;
        tags.push(tag.to_string());
    }
    let metadata = match q.get("metadata") {
        Some(raw) => parse_metadata("metadata", raw)?,
        None => Default::default(),
    };
    let sha256 = q.get("sha256").cloned();
    if let Some(s) = &sha256
        && (s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(Error::bad_field("sha256", "expected 64 hexadecimal digits"));
    }
    let content_length = match headers.get(header::CONTENT_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| Error::bad_request("the Content-Length header is not a number"))?,
        ),
    };
    let options = PushOptions { tags, metadata, sha256, content_length };
    master.params.push(&name, version, options, body).await
}

/// The bytes of a version, `latest` (the highest version) or `tag:NAME`. The version served is
/// in the `x-drover-param-version` header. With `wait_ms`, waits (up to 60 s) for such a
/// version to exist, and with `newer_than` for one above that version; 404 if none comes.
#[utoipa::path(get, path = "/api/v1/params/{name}/versions/{version}",
    params(("name" = String, Path),
        ("version" = String, Path, description = "a version number, `latest` or `tag:NAME`"),
        ("wait_ms" = Option<u64>, Query, format = "uint64", description = "wait this long (a longer wait is cut to 60000) for the version to exist; default 0"),
        ("newer_than" = Option<i64>, Query, description = "with latest or a tag (400 with a version number): only a version above this one")),
    responses((status = 200, content_type = "application/octet-stream",
            headers(("x-drover-param-version" = i64), ("x-drover-param-sha256" = String), ("x-drover-param-created-at" = i64))),
        (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub(super) async fn get_param_bytes(
    State(master): State<Arc<Master>>,
    path: std::result::Result<Path<(String, String)>, PathRejection>,
    query: std::result::Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response> {
    let (name, selector) = path_params(path)?;
    check_name("name", &name)?;
    let selector = Selector::parse(&selector)?;
    let q = query_params(query, &["wait_ms", "newer_than"])?;
    let (newer_than, wait) = read_options(&q, &selector)?;
    let row = master.params.resolve(&name, &selector, newer_than, wait).await?;
    let download = master.params.download(row).await?;
    let row = &download.row;
    let mut response = Response::new(Body::from_stream(download.body));
    let h = response.headers_mut();
    let value = |s: String| HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static("?"));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(row.size as u64));
    h.insert(header::ETAG, value(format!("\"{}\"", row.sha256)));
    // `latest` and tags move: a cache must not answer for them.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(param_headers::VERSION, HeaderValue::from(row.version));
    h.insert(param_headers::SHA256, value(row.sha256.clone()));
    h.insert(param_headers::CREATED_AT, HeaderValue::from(row.created_at));
    Ok(response)
}

/// The description (size, checksum, metadata, tags) of the version the selector names, with
/// the same waiting as the download.
#[utoipa::path(get, path = "/api/v1/params/{name}/versions/{version}/info",
    params(("name" = String, Path),
        ("version" = String, Path, description = "a version number, `latest` or `tag:NAME`"),
        ("wait_ms" = Option<u64>, Query, format = "uint64", description = "as for the download"),
        ("newer_than" = Option<i64>, Query, description = "as for the download")),
    responses((status = 200, body = ParamVersion), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub(super) async fn get_param_info(
    State(master): State<Arc<Master>>,
    path: std::result::Result<Path<(String, String)>, PathRejection>,
    query: std::result::Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<ParamVersion>> {
    let (name, selector) = path_params(path)?;
    check_name("name", &name)?;
    let selector = Selector::parse(&selector)?;
    let q = query_params(query, &["wait_ms", "newer_than"])?;
    let (newer_than, wait) = read_options(&q, &selector)?;
    let row = master.params.resolve(&name, &selector, newer_than, wait).await?;
    Ok(Json(master.params.describe(row).await?))
}

/// Versions of a parameter, lowest first; or those a query picks: `filter` over the metadata
/// (e.g. `win_rate > 0.8 and not league == "main"`), `sort` (e.g. `-win_rate,version`),
/// `limit`, and `sample=true` for one of what is left drawn at random (`seed` to repeat a
/// draw). In a query, `version`, `created_at` and `size` are the version's own fields.
#[utoipa::path(get, path = "/api/v1/params/{name}/versions",
    params(("name" = String, Path), ("filter" = Option<String>, Query, max_length = 4096),
        ("sort" = Option<String>, Query, max_length = 4096), ("limit" = Option<usize>, Query, format = "uint64"),
        ("sample" = Option<bool>, Query), ("seed" = Option<u64>, Query, format = "uint64")),
    responses((status = 200, body = [ParamVersion]), (status = 400, body = ApiError)))]
pub(super) async fn query_param_versions(
    State(master): State<Arc<Master>>,
    path: std::result::Result<Path<String>, PathRejection>,
    query: std::result::Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Vec<ParamVersion>>> {
    let name = path_params(path)?;
    check_name("name", &name)?;
    let q = query_params(query, &["filter", "sort", "limit", "sample", "seed"])?;
    for part in ["filter", "sort"] {
        if q.get(part).is_some_and(|t| t.chars().count() > MAX_QUERY_TEXT) {
            return Err(Error::bad_field(part, format!("`{part}` is longer than {MAX_QUERY_TEXT} characters")));
        }
    }
    let limit = number::<usize>(&q, "limit")?;
    let sample = number::<bool>(&q, "sample")?.unwrap_or(false);
    let seed = number::<u64>(&q, "seed")?.unwrap_or_else(|| uuid::Uuid::new_v4().as_u64_pair().0);
    let parsed = ParamQuery::parse(q.get("filter").map(String::as_str), q.get("sort").map(String::as_str), limit, sample).map_err(|e| {
        let mut err = Error::bad_field(e.part.as_str(), format!("invalid {}: {e}", e.part.as_str()));
        err.body.location = Some(ErrorLocation { field: Some(e.part.as_str().into()), line: None, column: Some(e.column) });
        err
    })?;
    Ok(Json(master.params.query(&name, &parsed, seed).await?))
}

/// Change a version's metadata: merged key by key (`null` removes a key) or, with
/// `replace: true`, replaced whole. The bytes never change.
#[utoipa::path(patch, path = "/api/v1/params/{name}/versions/{version}",
    params(("name" = String, Path), ("version" = i64, Path, minimum = 0)), request_body = UpdateParamMetadataRequest,
    responses((status = 200, body = ParamVersion), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub(super) async fn update_param_metadata(
    State(master): State<Arc<Master>>,
    path: std::result::Result<Path<(String, String)>, PathRejection>,
    body: Bytes,
) -> Result<Json<ParamVersion>> {
    let (name, version) = path_params(path)?;
    check_name("name", &name)?;
    let version = parse_version(&version)?;
    let req: UpdateParamMetadataRequest = parse_json(&body)?;
    Ok(Json(master.params.update_metadata(&name, version, req.metadata, req.replace).await?))
}

#[utoipa::path(get, path = "/api/v1/params/{name}/tags", params(("name" = String, Path)),
    responses((status = 200, body = [ParamTag]), (status = 400, body = ApiError)))]
pub(super) async fn list_param_tags(
    State(master): State<Arc<Master>>,
    path: std::result::Result<Path<String>, PathRejection>,
) -> Result<Json<Vec<ParamTag>>> {
    let name = path_params(path)?;
    check_name("name", &name)?;
    Ok(Json(master.params.tags(&name).await?))
}

/// Point a tag at a version, moving it if it pointed elsewhere. Readers waiting on
/// `tag:NAME` wake.
#[utoipa::path(put, path = "/api/v1/params/{name}/tags/{tag}", params(("name" = String, Path), ("tag" = String, Path)),
    request_body = SetParamTagRequest,
    responses((status = 200, body = ParamTag), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub(super) async fn set_param_tag(
    State(master): State<Arc<Master>>,
    path: std::result::Result<Path<(String, String)>, PathRejection>,
    body: Bytes,
) -> Result<Json<ParamTag>> {
    let (name, tag) = path_params(path)?;
    check_name("name", &name)?;
    check_name("tag", &tag)?;
    let req: SetParamTagRequest = parse_json(&body)?;
    if req.version < 0 {
        return Err(Error::bad_field("version", format!("{} is not a version number (0 or more)", req.version)));
    }
    Ok(Json(master.params.set_tag(&name, &tag, req.version).await?))
}

#[utoipa::path(delete, path = "/api/v1/params/{name}/tags/{tag}", params(("name" = String, Path), ("tag" = String, Path)),
    responses((status = 204), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub(super) async fn delete_param_tag(
    State(master): State<Arc<Master>>,
    path: std::result::Result<Path<(String, String)>, PathRejection>,
) -> Result<StatusCode> {
    let (name, tag) = path_params(path)?;
    check_name("name", &name)?;
    check_name("tag", &tag)?;
    master.params.delete_tag(&name, &tag).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Delete every untagged version but the `keep_untagged` highest: blobs first, then rows.
/// Tagged versions are always kept.
#[utoipa::path(post, path = "/api/v1/params/{name}/gc", params(("name" = String, Path)), request_body = ParamGcRequest,
    responses((status = 200, body = ParamGcResponse), (status = 400, body = ApiError)))]
pub(super) async fn gc_params(
    State(master): State<Arc<Master>>,
    path: std::result::Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Json<ParamGcResponse>> {
    let name = path_params(path)?;
    check_name("name", &name)?;
    let req: ParamGcRequest = parse_json(&body)?;
    Ok(Json(master.params.gc(&name, req.keep_untagged).await?))
}
