//! The SDK against a fake master: a plain TcpListener answering minimal HTTP/1.1, to check the
//! requests the SDK really sends (paths, auth, bodies) and how it reads the answers.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use drover_api::rest::{ApiError, Checkpoint, RegisterCheckpointRequest, ReportMetricsRequest};
use drover_sdk::{Context, SdkError};
use serde_json::{Value, json};

#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    authorization: Option<String>,
    body: Vec<u8>,
}

#[derive(Default)]
struct MasterState {
    requests: Vec<Request>,
    metrics: Vec<drover_api::rest::MetricPoint>,
    checkpoints: BTreeMap<String, Checkpoint>,
    stop_requested: bool,
    refuse_checkpoints: bool,
}

/// Answers like the real master for the four trial endpoints.
fn answer(state: &mut MasterState, request: &Request) -> (u16, Value) {
    let api_error = |error: &str, message: String| serde_json::to_value(ApiError { error: error.into(), message, location: None }).unwrap();
    if request.authorization.as_deref() != Some("Bearer secret-token") {
        return (401, api_error("unauthorized", "bad token".into()));
    }
    match (request.method.as_str(), request.path.as_str()) {
        ("POST", "/api/v1/trials/7/metrics") => {
            let body: ReportMetricsRequest = serde_json::from_slice(&request.body).unwrap();
            for point in &body.points {
                for (name, value) in &point.metrics {
                    if !value.is_number() {
                        return (400, api_error("bad_request", format!("metric {name} is {value}, not a finite number")));
                    }
                }
            }
            state.metrics.extend(body.points.iter().cloned());
            (200, json!({"stored": body.points.len(), "stop_requested": state.stop_requested}))
        }
        ("GET", "/api/v1/trials/7/signals") => (200, json!({"stop_requested": state.stop_requested})),
        ("POST", "/api/v1/trials/7/checkpoints") => {
            if state.refuse_checkpoints {
                return (400, api_error("bad_request", "step must not be negative".into()));
            }
            let body: RegisterCheckpointRequest = serde_json::from_slice(&request.body).unwrap();
            let checkpoint = Checkpoint {
                uuid: body.uuid.clone(),
                trial_id: 7,
                experiment_id: 3,
                step: body.step,
                size: body.resources.values().sum::<u64>() as i64,
                resources: body.resources,
                metadata: body.metadata,
                created_at: 0,
                pinned: false,
            };
            state.checkpoints.insert(body.uuid, checkpoint.clone());
            (200, serde_json::to_value(checkpoint).unwrap())
        }
        ("GET", path) if path.starts_with("/api/v1/checkpoints/") => {
            let uuid = &path["/api/v1/checkpoints/".len()..];
            match state.checkpoints.get(uuid) {
                Some(checkpoint) => (200, serde_json::to_value(checkpoint).unwrap()),
                None => (404, api_error("not_found", format!("no checkpoint {uuid}"))),
            }
        }
        _ => (404, api_error("not_found", format!("no route {} {}", request.method, request.path))),
    }
}

fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut content_length = 0;
    let mut authorization = None;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        match name.to_ascii_lowercase().as_str() {
            "content-length" => content_length = value.trim().parse().ok()?,
            "authorization" => authorization = Some(value.trim().to_string()),
            _ => {}
        }
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body).ok()?;
    Some(Request { method, path, authorization, body })
}

fn start_fake_master() -> (String, Arc<Mutex<MasterState>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let state = Arc::new(Mutex::new(MasterState::default()));
    let server_state = Arc::clone(&state);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let Some(request) = read_request(&mut stream) else { continue };
            let (status, body) = {
                let mut state = server_state.lock().unwrap();
                state.requests.push(request.clone());
                answer(&mut state, &request)
            };
            let body = body.to_string();
            // One request per connection keeps the fake simple; the client must cope anyway.
            let response = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes());
        }
    });
    (url, state)
}

fn trial_env(master: &str, storage: &Path) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("DROVER_MASTER", master.to_string()),
        ("DROVER_EXPERIMENT_ID", "3".into()),
        ("DROVER_TRIAL_ID", "7".into()),
        ("DROVER_ALLOCATION_ID", "7.1".into()),
        ("DROVER_TRIAL_TOKEN", "secret-token".into()),
        ("DROVER_HPARAMS", r#"{"lr": 0.1, "model": {"depth": 2}}"#.into()),
        ("DROVER_TRIAL_SEED", "42".into()),
        ("DROVER_CHECKPOINT_DIR", storage.display().to_string()),
        ("DROVER_SEARCHER_METRIC", "validation_loss".into()),
    ])
}

fn context(vars: &BTreeMap<&'static str, String>) -> Result<Context, SdkError> {
    Context::from_lookup(|name| vars.get(name).cloned())
}

#[test]
fn reports_polls_and_checkpoints_against_the_master() {
    let (master, state) = start_fake_master();
    let tmp = tempfile::tempdir().unwrap();
    let storage = tmp.path().join("storage");
    let ctx = context(&trial_env(&master, &storage)).unwrap();
    assert_eq!((ctx.experiment_id(), ctx.trial_id(), ctx.seed()), (3, 7, 42));
    assert_eq!(ctx.hparam::<i64>("model.depth").unwrap(), 2);
    assert_eq!(ctx.searcher_metric(), Some("validation_loss"));
    assert_eq!(ctx.latest_checkpoint(), None);

    ctx.report_training(1, &[("loss", 0.5)]);
    ctx.report_validation(1, &[("validation_loss", 0.25)]);
    ctx.flush().unwrap();
    {
        let state = state.lock().unwrap();
        let groups: Vec<(&str, i64)> = state.metrics.iter().map(|p| (p.group.as_str(), p.step)).collect();
        assert_eq!(groups, [("training", 1), ("validation", 1)]);
        assert_eq!(state.metrics[1].metrics["validation_loss"], json!(0.25));
    }

    // The stop flag comes from a signals poll...
    assert!(!ctx.should_stop());
    state.lock().unwrap().stop_requested = true;
    assert!(!ctx.should_stop(), "polled again within a second");
    let polls = |state: &Arc<Mutex<MasterState>>| state.lock().unwrap().requests.iter().filter(|r| r.path.ends_with("/signals")).count();
    assert_eq!(polls(&state), 1);
    // ...or from the answer to a metrics report, without a poll.
    ctx.report_training(2, &[("loss", 0.4)]);
    ctx.flush().unwrap();
    assert!(ctx.should_stop());
    assert_eq!(polls(&state), 1);

    // A non-finite value is refused by the master, and flush says which.
    ctx.report_training(3, &[("loss", f64::NAN)]);
    let err = ctx.flush().unwrap_err();
    assert!(err.to_string().contains("metric loss is \"NaN\""), "{err}");

    // Checkpoints: saved into storage under the uuid, registered, and restored from the list.
    let to_save = tmp.path().join("to-save");
    std::fs::create_dir_all(to_save.join("weights")).unwrap();
    std::fs::write(to_save.join("state.json"), br#"{"step": 3}"#).unwrap();
    std::fs::write(to_save.join("weights/w.bin"), [1u8, 2, 3, 4]).unwrap();
    let uuid = ctx.checkpoint_save(3, &to_save, json!({"framework": "test"})).unwrap();
    assert!(storage.join(&uuid).join("weights/w.bin").is_file());
    {
        let state = state.lock().unwrap();
        let registered = &state.checkpoints[&uuid];
        assert_eq!(registered.step, 3);
        assert_eq!(registered.resources, BTreeMap::from([("state.json".into(), 11), ("weights/w.bin".into(), 4)]));
        assert_eq!(registered.metadata, json!({"framework": "test"}));
    }
    let restored = tmp.path().join("restored");
    ctx.checkpoint_restore(&uuid, &restored).unwrap();
    assert_eq!(std::fs::read(restored.join("weights/w.bin")).unwrap(), [1, 2, 3, 4]);
    assert_eq!(ctx.checkpoint_info(&uuid).unwrap().step, 3);

    let err = ctx.checkpoint_restore("0b9a2c1e-unknown", &restored).unwrap_err();
    assert_eq!(err.status(), Some(404), "{err}");
    assert!(ctx.checkpoint_restore("../etc", &restored).is_err());

    // A refused registration leaves no files behind.
    state.lock().unwrap().refuse_checkpoints = true;
    let err = ctx.checkpoint_save(-1, &to_save, Value::Null).unwrap_err();
    assert!(err.to_string().contains("step must not be negative"), "{err}");
    let stored: Vec<_> = std::fs::read_dir(&storage).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(stored, [std::ffi::OsString::from(&uuid)]);

    ctx.close().unwrap();
}

#[test]
fn a_wrong_token_drops_the_batch_and_says_why() {
    let (master, _state) = start_fake_master();
    let tmp = tempfile::tempdir().unwrap();
    let mut vars = trial_env(&master, tmp.path());
    vars.insert("DROVER_TRIAL_TOKEN", "stolen".into());
    let ctx = context(&vars).unwrap();
    ctx.report_training(1, &[("loss", 0.5)]);
    let err = ctx.close().unwrap_err();
    assert!(err.to_string().contains("HTTP 401: bad token"), "{err}");
}

#[test]
fn missing_or_bad_variables_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let full = trial_env("http://127.0.0.1:9", tmp.path());
    let error_with = |change: &dyn Fn(&mut BTreeMap<&'static str, String>)| {
        let mut vars = full.clone();
        change(&mut vars);
        context(&vars).err().expect("the context should not start").to_string()
    };

    let text = error_with(&|vars| {
        vars.remove("DROVER_TRIAL_ID");
    });
    assert!(text.contains("DROVER_TRIAL_ID is not set"), "{text}");
    let text = error_with(&|vars| {
        vars.insert("DROVER_TRIAL_SEED", "-1".into());
    });
    assert!(text.contains("DROVER_TRIAL_SEED") && text.contains("\"-1\""), "{text}");
    let text = error_with(&|vars| {
        vars.insert("DROVER_HPARAMS", "[1, 2]".into());
    });
    assert!(text.contains("DROVER_HPARAMS") && text.contains("JSON object"), "{text}");
    let text = error_with(&|vars| {
        vars.insert("DROVER_MASTER", "127.0.0.1:8080".into());
    });
    assert!(text.contains("DROVER_MASTER") && text.contains("http://"), "{text}");
    let text = error_with(&|vars| {
        vars.insert("DROVER_LATEST_CHECKPOINT", "../../etc".into());
    });
    assert!(text.contains("DROVER_LATEST_CHECKPOINT"), "{text}");

    // Optional variables may be absent; checkpoints then say what is missing.
    let mut vars = full.clone();
    vars.remove("DROVER_CHECKPOINT_DIR");
    vars.remove("DROVER_ALLOCATION_ID");
    vars.insert("DROVER_LATEST_CHECKPOINT", "".into());
    let ctx = context(&vars).unwrap();
    assert_eq!(ctx.latest_checkpoint(), None);
    assert_eq!(ctx.allocation_id(), None);
    let err = ctx.checkpoint_save(1, tmp.path(), Value::Null).unwrap_err();
    assert!(err.to_string().contains("DROVER_CHECKPOINT_DIR is not set"), "{err}");
}
