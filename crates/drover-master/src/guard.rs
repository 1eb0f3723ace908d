//! Checks every HTTP request passes before it reaches a handler, so that a web page in the
//! user's browser cannot be turned against a master on the same machine, and the one answer
//! shape every client relies on (`{error, message, location}`) holds for errors that axum
//! itself produces (a body over its limit, a wrong method).
//!
//! - **Host.** A master bound to loopback answers only `Host` values that name loopback
//!   (`localhost`, `127.0.0.1`, `[::1]`, any port), which defeats DNS rebinding: a page on
//!   `evil.example` that re-points its name at 127.0.0.1 still sends `Host: evil.example`. A
//!   master bound elsewhere also answers IP addresses, the machine's host name and the names
//!   the operator allows (`--allow-host`); any other name is refused, for the same reason.
//! - **Origin.** A state-changing request (anything but GET, HEAD, OPTIONS) that carries an
//!   `Origin` naming another host than the one it was sent to is refused. Browsers send
//!   `Origin` on every cross-origin POST, so a form or `fetch` from another site cannot create
//!   an experiment (that is, run a command on every agent) or kill one. Non-browser clients
//!   send no `Origin` and are unaffected.
//! - **Content type.** A body sent with POST or PATCH must be `application/json`; a PUT (the
//!   parameter database's pushes) must not claim a form or text type. The types a page may
//!   send without a CORS preflight (`text/plain`, forms, multipart) are refused everywhere.

use std::net::SocketAddr;

use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::Error;

/// Largest error body from axum that is rewrapped into the JSON shape.
const MAX_REWRAPPED_BODY: usize = 4096;

/// What the guard needs to know about how the master listens.
#[derive(Debug, Clone)]
pub struct Listening {
    pub addr: SocketAddr,
    /// Host names (without port, lowercase) a master not bound to loopback answers besides IP
    /// addresses and loopback names.
    pub names: std::sync::Arc<Vec<String>>,
}

impl Listening {
    /// `allowed` names plus this machine's host name.
    pub fn new(addr: SocketAddr, allowed: &[String]) -> Listening {
        let mut names: Vec<String> = allowed.iter().map(|n| n.trim().to_ascii_lowercase()).filter(|n| !n.is_empty()).collect();
        if let Ok(own) = std::fs::read_to_string("/etc/hostname") {
            let own = own.trim().to_ascii_lowercase();
            if !own.is_empty() {
                names.push(own);
            }
        }
        Listening { addr, names: std::sync::Arc::new(names) }
    }
}

pub async fn guard(listening: Listening, request: Request, next: Next) -> Response {
    if let Err(e) = check(&listening, request.method(), request.uri().path(), request.headers()) {
        return e.into_response();
    }
    json_errors(next.run(request).await).await
}

fn check(listening: &Listening, method: &Method, path: &str, headers: &HeaderMap) -> Result<(), Error> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match host {
        // HTTP/1.0 clients may omit Host; a browser never does.
        None => {}
        Some(h) if is_loopback_host(h) => {}
        Some(h) if listening.addr.ip().is_loopback() => {
            return Err(Error::forbidden(format!(
                "this master listens on loopback and answers only Host names that mean loopback, not `{h}`"
            )));
        }
        Some(h) => {
            let name = host_name(h).to_ascii_lowercase();
            let is_ip = name.parse::<std::net::IpAddr>().is_ok();
            if !is_ip && !listening.names.contains(&name) {
                return Err(Error::forbidden(format!(
                    "this master answers IP addresses, its host name and the names given with --allow-host, not `{h}`"
                )));
            }
        }
    }
    // Reading a custom search's events with `after` acknowledges (drops) the earlier ones.
    let changes_state = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) || path.ends_with("/searcher/events");
    if !changes_state {
        return Ok(());
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("<not text>");
        let origin_host = origin.split_once("://").map(|(_, rest)| rest.trim_end_matches('/'));
        let same = match (origin_host, host) {
            (Some(o), Some(h)) => o.eq_ignore_ascii_case(h),
            _ => false,
        };
        if !same {
            return Err(Error::forbidden(format!(
                "a request from the web page at `{origin}` may not change this master; use the CLI or an SDK"
            )));
        }
    }
    let content_type = headers.get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("<not text>").to_ascii_lowercase());
    let essence = content_type.as_deref().map(|t| t.split(';').next().unwrap_or("").trim().to_string());
    if let Some(t) = essence.as_deref()
        && (t == "text/plain" || t == "application/x-www-form-urlencoded" || t == "multipart/form-data")
    {
        return Err(unsupported(t));
    }
    let has_body = headers.get(header::TRANSFER_ENCODING).is_some()
        || headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).is_some_and(|v| v.trim() != "0");
    if has_body && matches!(*method, Method::POST | Method::PATCH) {
        match essence.as_deref() {
            Some(t) if t == "application/json" || t.ends_with("+json") => {}
            Some(t) => return Err(unsupported(t)),
            None => return Err(unsupported("no Content-Type")),
        }
    }
    Ok(())
}

fn unsupported(what: &str) -> Error {
    Error::unsupported_media_type(format!("this endpoint takes application/json, not {what}"))
}

/// The name or address of a `Host` value, without its port or IPv6 brackets.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(inside, _)| inside)
    } else {
        host.rsplit_once(':').map_or(host, |(name, port)| if port.chars().all(|c| c.is_ascii_digit()) { name } else { host })
    }
}

/// `localhost`, `127.x.y.z`, `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = host_name(host);
    if name.eq_ignore_ascii_case("localhost") || name.to_ascii_lowercase().ends_with(".localhost") {
        return true;
    }
    name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Errors produced by axum or tower before a handler ran (413 from a body limit, 405, a
/// rejected extractor) are plain text; clients expect the JSON shape for every 4xx and 5xx.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json =
        response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|t| t.starts_with("application/json"));
    // A websocket upgrade refusal and the like keep their own bodies only if already JSON.
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, MAX_REWRAPPED_BODY).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_string(),
        Err(_) => String::new(),
    };
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_string() } else { text };
    let kind = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let body = drover_api::rest::ApiError { error: kind.into(), message, location: None };
    let mut out = (status, axum::Json(body)).into_response();
    // Keep headers that matter to the client (Allow on a 405, for instance).
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn loopback() -> Listening {
        Listening { addr: "127.0.0.1:8080".parse().unwrap(), names: Default::default() }
    }

    #[test]
    fn loopback_hosts() {
        for ok in ["localhost", "localhost:8080", "127.0.0.1", "127.0.0.1:1", "[::1]:8080", "[::1]", "a.localhost:3"] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in ["evil.example", "evil.example:8080", "127.0.0.1.evil.example", "10.0.0.1:80", "localhost.evil.example"] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn foreign_host_refused_on_loopback_only() {
        let h = headers(&[("host", "evil.example:8080")]);
        assert_eq!(check(&loopback(), &Method::GET, "/", &h).unwrap_err().kind, ErrorKind::Forbidden);
        // Bound elsewhere: IP addresses, loopback names and the allowed names only.
        let public = Listening { addr: "0.0.0.0:8080".parse().unwrap(), names: std::sync::Arc::new(vec!["master.lab".into()]) };
        assert_eq!(check(&public, &Method::GET, "/", &h).unwrap_err().kind, ErrorKind::Forbidden);
        for ok in ["10.0.0.5:8080", "[fe80::1]:8080", "MASTER.lab:8080", "master.lab", "localhost:8080"] {
            assert!(check(&public, &Method::GET, "/", &headers(&[("host", ok)])).is_ok(), "{ok}");
        }
    }

    #[test]
    fn foreign_origin_refused_for_changes_only() {
        let h = headers(&[("host", "127.0.0.1:8080"), ("origin", "http://evil.example")]);
        assert!(check(&loopback(), &Method::GET, "/", &h).is_ok());
        assert_eq!(check(&loopback(), &Method::POST, "/", &h).unwrap_err().kind, ErrorKind::Forbidden);
        assert_eq!(check(&loopback(), &Method::DELETE, "/", &h).unwrap_err().kind, ErrorKind::Forbidden);
        // Reading a custom search's events acknowledges them: guarded like a change.
        assert_eq!(check(&loopback(), &Method::GET, "/api/v1/experiments/3/searcher/events", &h).unwrap_err().kind, ErrorKind::Forbidden);
        let same = headers(&[("host", "127.0.0.1:8080"), ("origin", "http://127.0.0.1:8080")]);
        assert!(check(&loopback(), &Method::DELETE, "/", &same).is_ok());
    }

    #[test]
    fn simple_content_types_refused() {
        let text = headers(&[("host", "127.0.0.1:1"), ("content-type", "text/plain;charset=UTF-8"), ("content-length", "5")]);
        assert_eq!(check(&loopback(), &Method::POST, "/", &text).unwrap_err().kind, ErrorKind::UnsupportedMediaType);
        assert_eq!(check(&loopback(), &Method::PUT, "/", &text).unwrap_err().kind, ErrorKind::UnsupportedMediaType);
        let none = headers(&[("host", "127.0.0.1:1"), ("content-length", "5")]);
        assert_eq!(check(&loopback(), &Method::POST, "/", &none).unwrap_err().kind, ErrorKind::UnsupportedMediaType);
        let empty = headers(&[("host", "127.0.0.1:1"), ("content-length", "0")]);
        assert!(check(&loopback(), &Method::POST, "/", &empty).is_ok());
        let json = headers(&[("host", "127.0.0.1:1"), ("content-type", "application/json"), ("content-length", "2")]);
        assert!(check(&loopback(), &Method::POST, "/", &json).is_ok());
        let push = headers(&[("host", "127.0.0.1:1"), ("content-length", "2")]);
        assert!(check(&loopback(), &Method::PUT, "/", &push).is_ok());
    }
}
