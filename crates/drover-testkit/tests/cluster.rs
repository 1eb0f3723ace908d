//! An in-process cluster on 127.0.0.1 port 0 — a real master on a temporary SQLite file and a
//! real agent — running real trial processes (`drover-trivial-trial`) to completion.

use std::time::{Duration, Instant};

use drover_api::rest::*;
use serde_json::{Value, json};

mod common;

use common::{Cluster, JOIN_TOKEN, config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_search_runs_real_trials_to_completion() {
    let cluster = Cluster::start(2).await;
    let yaml = config(
        "{name: random, metric: validation_loss, smaller_is_better: true, max_trials: 6, max_concurrent_trials: 2}",
        "  x: {type: double, minval: 0, maxval: 1}\n  n_metrics: 20",
        "",
    );
    let e = cluster.create(&yaml).await;
    assert_eq!(e.planned_trials, Some(6));
    let e = cluster.wait_terminal(e.id, Duration::from_secs(60)).await;
    assert_eq!(e.state, "COMPLETED", "{}", cluster.all_logs(e.id).await);
    assert_eq!(e.trial_counts.get("COMPLETED"), Some(&6), "{:?}", e.trial_counts);

    let trials: Vec<Trial> = cluster.get(&format!("/api/v1/experiments/{}/trials", e.id)).await;
    assert_eq!(trials.len(), 6);
    // The best metric is what the trials really computed from their hyperparameters.
    let mut best = f64::INFINITY;
    for t in &trials {
        let x = t.hparams["x"].as_f64().unwrap();
        let expected = (x - 0.3f64).powi(2);
        let got = t.best_metric.unwrap();
        assert!((got - expected).abs() < 1e-12, "trial {}: {got} vs {expected}", t.id);
        best = best.min(expected);
        let loss = t.summaries.iter().find(|s| s.name == "loss").unwrap();
        assert_eq!((loss.count, loss.last_step), (20, 20));
    }
    assert!((e.best_metric.unwrap() - best).abs() < 1e-12);

    // Metrics as a time series, downsampled by the server.
    let t = &trials[0];
    let series: MetricSeries = cluster.get(&format!("/api/v1/trials/{}/metrics?name=loss&max_points=5", t.id)).await;
    assert_eq!(series.total_points, 20);
    assert_eq!(series.points.len(), 5);
    assert_eq!(series.points[0].0, 1);
    assert_eq!(series.points[4].0, 20);

    // The trial's stdout came through the agent into the logs.
    let logs: TrialLogs = cluster.get(&format!("/api/v1/trials/{}/logs", t.id)).await;
    assert!(logs.lines.iter().any(|l| l.line.contains(&format!("trial {}", t.id)) && l.stream == "stdout"), "{:?}", logs.lines);

    // Prometheus counters moved.
    let text = cluster.http.get(cluster.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("drover_trials_started_total 6"), "{text}");
    let spec: Value = cluster.get("/api/v1/openapi.json").await;
    assert!(spec["paths"]["/api/v1/experiments"].is_object());
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_trials_restart_then_error_and_grid_covers_all_points() {
    let cluster = Cluster::start(2).await;
    let yaml = config(
        "{name: grid, metric: validation_loss, max_concurrent_trials: 2}",
        "  x: {type: double, minval: 0, maxval: 1, count: 3}\n  fail: {type: categorical, vals: [false, true]}",
        "max_restarts: 1\n",
    );
    let e = cluster.create(&yaml).await;
    let e = cluster.wait_terminal(e.id, Duration::from_secs(60)).await;
    assert_eq!(e.state, "COMPLETED", "some trials succeeded, so the search completes: {}", cluster.all_logs(e.id).await);
    let trials: Vec<Trial> = cluster.get(&format!("/api/v1/experiments/{}/trials", e.id)).await;
    assert_eq!(trials.len(), 6);
    for t in &trials {
        if t.hparams["fail"] == json!(true) {
            assert_eq!((t.state.as_str(), t.restarts), ("ERROR", 1), "failing trial {}", t.id);
        } else {
            assert_eq!((t.state.as_str(), t.restarts), ("COMPLETED", 0));
        }
    }
    let mut xs: Vec<f64> = trials.iter().map(|t| t.hparams["x"].as_f64().unwrap()).collect();
    xs.sort_by(f64::total_cmp);
    assert_eq!(xs, vec![0.0, 0.0, 0.5, 0.5, 1.0, 1.0]);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_activate_and_cancel_real_processes() {
    let cluster = Cluster::start(1).await;
    let yaml = config("{name: random, metric: validation_loss, max_trials: 3, max_concurrent_trials: 1}", "  sleep_s: 30", "");
    let e = cluster.create(&yaml).await;
    // Wait for the first trial to run.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let e: Experiment = cluster.get(&format!("/api/v1/experiments/{}", e.id)).await;
        if e.trial_counts.get("RUNNING") == Some(&1) {
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = cluster.post_raw(&format!("/api/v1/experiments/{}/pause", e.id), &json!({}), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "PAUSED");
    // The running trial is stopped (its SDK sees the stop request) and parks as PAUSED.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let trials: Vec<Trial> = cluster.get(&format!("/api/v1/experiments/{}/trials", e.id)).await;
        if trials.iter().all(|t| t.state == "PAUSED") {
            break;
        }
        assert!(Instant::now() < deadline, "{:?}", trials.iter().map(|t| &t.state).collect::<Vec<_>>());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = cluster.post_raw(&format!("/api/v1/experiments/{}/activate", e.id), &json!({}), None).await;
    assert_eq!(status, 200);
    let (status, body) = cluster.post_raw(&format!("/api/v1/experiments/{}/cancel", e.id), &json!({}), None).await;
    assert_eq!(status, 200, "{body}");
    let e = cluster.wait_terminal(e.id, Duration::from_secs(30)).await;
    assert_eq!(e.state, "CANCELED");
    // A finished experiment cannot be reactivated, and can be deleted.
    let (status, body) = cluster.post_raw(&format!("/api/v1/experiments/{}/activate", e.id), &json!({}), None).await;
    assert_eq!(status, 409, "{body}");
    let r = cluster.http.delete(cluster.url(&format!("/api/v1/experiments/{}", e.id))).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let r = cluster.http.get(cluster.url(&format!("/api/v1/experiments/{}", e.id))).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_located_error_and_changes_nothing() {
    let cluster = Cluster::start(1).await;
    let good = config("{name: random, metric: validation_loss, max_trials: 1}", "  x: 0.3", "");

    let broken = good.replace("searcher: {", "searcher: {{");
    let (status, body) = cluster.post_raw("/api/v1/experiments", &json!({"config": broken, "config_file": "bad.yaml"}), None).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_config");
    assert!(body["location"]["line"].as_u64().is_some(), "{body}");
    assert!(body["message"].as_str().unwrap().starts_with("bad.yaml:"), "{body}");

    let unknown = good.replace("name: random", "name: hyperband");
    let (status, body) = cluster.post_raw("/api/v1/experiments", &json!({"config": unknown}), None).await;
    assert_eq!(status, 400);
    assert_eq!(body["location"]["field"], "searcher.name", "{body}");

    let (status, body) = cluster.post_raw("/api/v1/experiments", &json!({"config": good, "context": "not base64!"}), None).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = cluster.post_raw("/api/v1/experiments", &json!({"configg": good}), None).await;
    assert_eq!(status, 400, "{body}");
    let too_many_slots = format!("{good}resources: {{slots_per_trial: 4}}\n");
    let (status, body) = cluster.post_raw("/api/v1/experiments", &json!({"config": too_many_slots}), None).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["location"]["field"], "resources.slots_per_trial");

    let none: Vec<Experiment> = cluster.get("/api/v1/experiments").await;
    assert!(none.is_empty(), "refused experiments must not be stored");

    // Reports need the trial's own token.
    let e = cluster.create(&good).await;
    cluster.wait_terminal(e.id, Duration::from_secs(30)).await;
    let trials: Vec<Trial> = cluster.get(&format!("/api/v1/experiments/{}/trials", e.id)).await;
    let report = json!({"points": [{"group": "training", "step": 99, "metrics": {"loss": 1.0}}]});
    let (status, _) = cluster.post_raw(&format!("/api/v1/trials/{}/metrics", trials[0].id), &report, Some("forged")).await;
    assert_eq!(status, 401);
    let (status, _) = cluster.post_raw(&format!("/api/v1/trials/{}/metrics", trials[0].id), &report, None).await;
    assert_eq!(status, 401);
    let (status, body) = cluster.post_raw("/api/v1/trials/abc/metrics", &report, None).await;
    assert_eq!(status, 400, "{body}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_scoped_to_their_trial_and_nan_is_refused() {
    let cluster = Cluster::start(2).await;
    let yaml = config("{name: random, metric: validation_loss, max_trials: 2, max_concurrent_trials: 2}", "  sleep_s: 30", "");
    let e = cluster.create(&yaml).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let allocations = loop {
        let live = cluster.master.master.store.live_allocations().await.unwrap();
        if live.len() == 2 {
            break live;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (mine, other) = (&allocations[0], &allocations[1]);
    let report = json!({"points": [{"group": "training", "step": 1, "metrics": {"loss": 1.0}}]});
    let (status, body) = cluster.post_raw(&format!("/api/v1/trials/{}/metrics", other.trial_id), &report, Some(&mine.token)).await;
    assert_eq!(status, 403, "{body}");
    let nan = json!({"points": [{"group": "training", "step": 1, "metrics": {"ok": 1.0, "loss": "NaN"}}]});
    let (status, body) = cluster.post_raw(&format!("/api/v1/trials/{}/metrics", mine.trial_id), &nan, Some(&mine.token)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["location"]["field"], "points[0].metrics.loss", "{body}");
    let t: Trial = cluster.get(&format!("/api/v1/trials/{}", mine.trial_id)).await;
    assert!(t.summaries.is_empty(), "a refused report stores nothing, not even its valid points");
    let (status, body) = cluster.post_raw(&format!("/api/v1/trials/{}/metrics", mine.trial_id), &report, Some(&mine.token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stored"], 1);
    let (_, body) = cluster.post_raw(&format!("/api/v1/trials/{}/metrics", mine.trial_id), &report, Some(&mine.token)).await;
    assert_eq!(body["stored"], 0, "a retried report is stored once");

    // Checkpoints that would reach outside their directory, or are not named by a UUID, are
    // refused and nothing is registered.
    let uuid = "3f1c2a8e-5b7d-4e2a-9c1f-0a1b2c3d4e5f";
    let url = format!("/api/v1/trials/{}/checkpoints", mine.trial_id);
    for (body, field) in [
        (json!({"uuid": uuid, "step": 1, "resources": {"../../etc/passwd": 1}}), "resources.../../etc/passwd"),
        (json!({"uuid": uuid, "step": 1, "resources": {"/abs": 1}}), "resources./abs"),
        (json!({"uuid": uuid, "step": 1, "resources": {"a//b": 1}}), "resources.a//b"),
        (json!({"uuid": "pbt", "step": 1, "resources": {"w": 1}}), "uuid"),
        (json!({"uuid": "../x", "step": 1, "resources": {"w": 1}}), "uuid"),
    ] {
        let (status, answer) = cluster.post_raw(&url, &body, Some(&mine.token)).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["location"]["field"], field, "{answer}");
    }
    let listed: Vec<Checkpoint> = cluster.get(&format!("/api/v1/checkpoints?trial_id={}", mine.trial_id)).await;
    assert!(listed.is_empty());

    let (status, _) = cluster.post_raw(&format!("/api/v1/experiments/{}/kill", e.id), &json!({}), None).await;
    assert_eq!(status, 200);
    let e = cluster.wait_terminal(e.id, Duration::from_secs(20)).await;
    assert_eq!(e.state, "CANCELED");
    // The killed allocation's token is dead.
    let (status, _) = cluster.post_raw(&format!("/api/v1/trials/{}/metrics", mine.trial_id), &report, Some(&mine.token)).await;
    assert_eq!(status, 401);
    cluster.stop().await;
}

/// The store is the one truth: a master stopped mid-search and started again on the same
/// database and address gets its running trials back from the agent (same allocations, no
/// restart counted) and its searcher resumes where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_master_reattaches_running_trials_and_resumes_the_search() {
    let cluster = Cluster::start(2).await;
    let yaml = config("{name: random, metric: validation_loss, max_trials: 3, max_concurrent_trials: 2}", "  sleep_s: 4\n  x: 0.5", "");
    let e = cluster.create(&yaml).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let before = loop {
        let live = cluster.master.master.store.live_allocations().await.unwrap();
        if live.len() == 2 && live.iter().all(|a| a.state == "RUNNING") {
            break live;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let Cluster { master, agent_stop, agent, http, dir } = cluster;
    let addr = master.addr;
    master.shutdown().await.unwrap();
    let mut config =
        drover_master::MasterConfig::new(format!("sqlite://{}", dir.path().join("drover.db").display()), dir.path().join("checkpoints"));
    config.join_token = JOIN_TOKEN.into();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let master = drover_master::start(config, listener).await.unwrap();
    let cluster = Cluster { master, agent_stop, agent, http, dir };

    let e = cluster.wait_terminal(e.id, Duration::from_secs(60)).await;
    assert_eq!(e.state, "COMPLETED", "{}", cluster.all_logs(e.id).await);
    let trials: Vec<Trial> = cluster.get(&format!("/api/v1/experiments/{}/trials", e.id)).await;
    assert_eq!(trials.len(), 3, "the restored searcher created the third trial");
    assert!(trials.iter().all(|t| t.state == "COMPLETED" && t.restarts == 0), "{trials:?}");
    for a in &before {
        let row = cluster.master.master.store.get_allocation(&a.id).await.unwrap();
        assert_eq!((row.state.as_str(), row.exit_code), ("TERMINATED", Some(0)), "allocation {} ran to its end", a.id);
    }
    cluster.stop().await;
}

/// ASHA on real processes: trials report a learning curve, the searcher stops the ones that
/// fall outside the top of a rung, and they really stop early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_halving_stops_bad_trials_early() {
    let cluster = Cluster::start(2).await;
    let yaml = config(
        "{name: async_halving, metric: validation_loss, max_trials: 8, max_concurrent_trials: 2, num_rungs: 3, divisor: 2, time_metric: epochs, max_time: 16}",
        "  x: {type: double, minval: 0, maxval: 1}\n  n_metrics: 16\n  curve: true",
        "",
    );
    let e = cluster.create(&yaml).await;
    let e = cluster.wait_terminal(e.id, Duration::from_secs(90)).await;
    assert_eq!(e.state, "COMPLETED", "{}", cluster.all_logs(e.id).await);
    let trials: Vec<Trial> = cluster.get(&format!("/api/v1/experiments/{}/trials", e.id)).await;
    assert_eq!(trials.len(), 8);
    let epochs_run = |t: &Trial| t.summaries.iter().find(|s| s.name == "epochs").map_or(0, |s| s.count);
    let stopped_early: Vec<&Trial> = trials.iter().filter(|t| epochs_run(t) < 16).collect();
    assert!(
        !stopped_early.is_empty(),
        "some trials must have been stopped before max_time: {:?}",
        trials.iter().map(epochs_run).collect::<Vec<_>>()
    );
    // Rungs are at 4, 8 and 16 epochs; a stopped trial stopped right at a rung.
    for t in &stopped_early {
        assert!([4, 8].contains(&epochs_run(t)), "trial {} ran {} epochs", t.id, epochs_run(t));
    }
    // The best trial was never stopped before the top rung.
    let best = trials.iter().min_by(|a, b| a.best_metric.unwrap().total_cmp(&b.best_metric.unwrap())).unwrap();
    assert_eq!(epochs_run(best), 16);
    cluster.stop().await;
}

/// Population based training end to end: members stop at each generation's end, the weak start
/// from a better member's checkpoint, and the checkpoints themselves prove it: each member's
/// saved state carries its parent's training history (`lineage`) and epoch count on top of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pbt_clones_resume_from_their_parents_checkpoints() {
    pbt_end_to_end("").await;
}

/// The same on S3 (moto on loopback in CI): members save to and restore from the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pbt_on_s3_storage() {
    let Some(storage) = s3_storage_yaml() else { return };
    pbt_end_to_end(&storage).await;
}

/// `checkpoint_storage` on a fresh bucket of the S3 server in DROVER_TEST_S3_ENDPOINT, or None
/// (with a notice) when it is unset.
fn s3_storage_yaml() -> Option<String> {
    let Ok(endpoint) = std::env::var("DROVER_TEST_S3_ENDPOINT") else {
        eprintln!("DROVER_TEST_S3_ENDPOINT is unset: skipping the S3 case");
        return None;
    };
    let bucket = format!("drover-e2e-{}", uuid::Uuid::new_v4().simple());
    let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(host).expect("the S3 server named by DROVER_TEST_S3_ENDPOINT");
    use std::io::{Read, Write};
    write!(stream, "PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    Some(format!(
        "checkpoint_storage: {{type: s3, bucket: {bucket}, prefix: runs, endpoint_url: \"{endpoint}\", access_key_id: testing, secret_access_key: testing}}\n"
    ))
}

async fn pbt_end_to_end(storage: &str) {
    let cluster = Cluster::start(4).await;
    let yaml = config(
        "{name: pbt, metric: validation_loss, time_metric: epochs, population_size: 4, max_generations: 3, generation_length: 2, max_concurrent_trials: 4}",
        "  x: {type: double, minval: 0.02, maxval: 0.6}\n  n_metrics: 100\n  pbt: true",
        storage,
    );
    let e = cluster.create(&yaml).await;
    assert_eq!(e.planned_trials, Some(12));
    if !storage.is_empty() {
        assert_eq!(e.config["checkpoint_storage"]["secret_access_key"], "<redacted>", "a storage secret is not served back");
    }
    let e = cluster.wait_terminal(e.id, Duration::from_secs(120)).await;
    assert_eq!(e.state, "COMPLETED", "{}", cluster.all_logs(e.id).await);

    let lineage: Lineage = cluster.get(&format!("/api/v1/experiments/{}/lineage", e.id)).await;
    assert_eq!(lineage.members.len(), 12, "{lineage:?}");
    assert_eq!(lineage.ended_because.as_deref(), Some("all 3 generations ran"));
    assert_eq!(lineage.best_by_generation.len(), 3);
    let checkpoints = cluster.dir.path().join("checkpoints");
    // Read through the master's download endpoint, so the same check works on every storage.
    let mut states = std::collections::HashMap::new();
    for m in &lineage.members {
        let uuid = m.checkpoint.as_deref().unwrap_or_else(|| panic!("member {} has no checkpoint", m.trial_id));
        let r = cluster.http.get(cluster.url(&format!("/api/v1/checkpoints/{uuid}/files/state.json"))).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "state.json of {uuid}");
        states.insert(m.trial_id, serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).unwrap());
    }
    let state_of = |m: &LineageMember| -> Value { states[&m.trial_id].clone() };
    let by_trial: std::collections::HashMap<i64, &LineageMember> = lineage.members.iter().map(|m| (m.trial_id, m)).collect();
    let mut exploited = 0;
    for m in &lineage.members {
        let state = state_of(m);
        assert_eq!(state["epoch"], json!(2 * (m.generation + 1)), "member {} of generation {}: {state}", m.trial_id, m.generation);
        let own_history: Vec<i64> = state["lineage"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        match m.parent_trial_id {
            None => {
                assert_eq!(m.generation, 0);
                assert_eq!(own_history, vec![m.trial_id]);
            }
            Some(parent) => {
                let p = by_trial[&parent];
                assert_eq!(p.generation + 1, m.generation);
                let mut expected: Vec<i64> = state_of(p)["lineage"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
                expected.push(m.trial_id);
                assert_eq!(own_history, expected, "member {} did not resume from parent {parent}'s checkpoint", m.trial_id);
                if m.exploited {
                    exploited += 1;
                    // It replaced the previous member of its slot, which scored worse.
                    let replaced = lineage.members.iter().find(|o| o.slot == m.slot && o.generation + 1 == m.generation).unwrap();
                    assert!(p.score.unwrap() < replaced.score.unwrap(), "{} copied {} over {}", m.trial_id, parent, replaced.trial_id);
                    // Explored: the parent's x times a factor in [0.8, 1.2], clipped to [0.02, 0.6].
                    let (x, px) = (m.hparams["x"].as_f64().unwrap(), p.hparams["x"].as_f64().unwrap());
                    assert!(x >= (px * 0.8).max(0.02) - 1e-12 && x <= (px * 1.2).min(0.6) + 1e-12, "{x} from {px}");
                    assert!(x != px || px == 0.6 || px == 0.02, "a copied member explores its hyperparameters: {x} from {px}");
                } else {
                    assert_eq!(p.slot, m.slot);
                    assert_eq!(m.hparams, p.hparams);
                }
            }
        }
    }
    assert!(exploited >= 2, "the worst member loses its tournament each generation");

    if !storage.is_empty() {
        // The same family tree as objects in the bucket, written off the master's lock.
        let c = &e.config["checkpoint_storage"];
        let spec = drover_storage::StorageSpec::S3 {
            bucket: c["bucket"].as_str().unwrap().into(),
            prefix: Some("runs".into()),
            endpoint_url: c["endpoint_url"].as_str().map(Into::into),
            region: None,
            access_key_id: Some("testing".into()),
            secret_access_key: Some("testing".into()),
        };
        let bucket = drover_storage::Storage::open(&spec).unwrap();
        let key = format!("pbt/experiment-{}/members.csv", e.id);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let lines = bucket.get_bytes(&key).await.map(|b| String::from_utf8_lossy(&b).lines().count()).unwrap_or(0);
            if lines == 13 {
                break;
            }
            assert!(Instant::now() < deadline, "{key} has {lines} lines");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let member = bucket.get_bytes(&format!("pbt/experiment-{}/g002_w03/member.json", e.id)).await.unwrap();
        let member: Value = serde_json::from_slice(&member).unwrap();
        assert_eq!(member["generation"], json!(2));
        cluster.stop().await;
        return;
    }
    // The same family tree as plain files beside the checkpoints.
    let files = checkpoints.join("pbt").join(format!("experiment-{}", e.id));
    // Written by the master's lineage writer, off the control-plane lock: it may trail the
    // experiment's end by a moment.
    let deadline = Instant::now() + Duration::from_secs(20);
    let table = loop {
        let table = std::fs::read_to_string(files.join("members.csv")).unwrap_or_default();
        if table.lines().count() == 13 && files.join("g002_w03").join("checkpoint").exists() {
            break table;
        }
        assert!(Instant::now() < deadline, "members.csv: {table}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(table.lines().count(), 13, "{table}");
    let last = files.join("g002_w03");
    let member: Value = serde_json::from_str(&std::fs::read_to_string(last.join("member.json")).unwrap()).unwrap();
    assert_eq!(member["generation"], json!(2));
    assert!(last.join("checkpoint").join("state.json").is_file(), "the member's folder links to its weights");
    assert!(std::fs::read_to_string(files.join("generations.csv")).unwrap().lines().count() == 4);

    // Any other searcher has no lineage, and says why.
    let other = cluster.create(&config("{name: single, metric: validation_loss}", "  x: 0.3", "")).await;
    let r = cluster.http.get(cluster.url(&format!("/api/v1/experiments/{}/lineage", other.id))).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().await.unwrap().contains("searcher.name"));
    cluster.stop().await;
}

async fn checkpoints_of(cluster: &Cluster, experiment_id: i64) -> Vec<Checkpoint> {
    cluster.get(&format!("/api/v1/checkpoints?experiment_id={experiment_id}")).await
}

/// The checkpoint policy runs when an experiment ends and whenever it changes: storage first,
/// then records; pinned checkpoints survive; files already gone are no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_gc_follows_the_policy_and_spares_pins() {
    let cluster = Cluster::start(2).await;
    // 3 trials x 4 epochs, a checkpoint after every epoch; the loss falls every epoch, so each
    // trial's latest checkpoint is also its best. Default policy: trial best 1, trial latest 1.
    let yaml = config(
        "{name: random, metric: validation_loss, max_trials: 3, max_concurrent_trials: 2}",
        "  x: {type: double, minval: 0, maxval: 1}\n  n_metrics: 4\n  curve: true\n  checkpoint: true",
        "",
    );
    let e = cluster.create(&yaml).await;
    let e = cluster.wait_terminal(e.id, Duration::from_secs(60)).await;
    assert_eq!(e.state, "COMPLETED", "{}", cluster.all_logs(e.id).await);
    let root = cluster.dir.path().join("checkpoints");
    let on_disk = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .flatten()
            .map(|d| d.file_name().to_string_lossy().to_string())
            .filter(|n| !n.starts_with('.') && n != "pbt")
            .collect();
        v.sort();
        v
    };
    // The collector runs after the experiment ended; wait for it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut kept = checkpoints_of(&cluster, e.id).await;
    while kept.len() != 3 {
        assert!(Instant::now() < deadline, "gc never brought 12 checkpoints down to 3: {}", kept.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
        kept = checkpoints_of(&cluster, e.id).await;
    }
    assert!(
        kept.iter().all(|c| c.step == 4),
        "each trial keeps its latest (and best): {:?}",
        kept.iter().map(|c| c.step).collect::<Vec<_>>()
    );
    let mut uuids: Vec<String> = kept.iter().map(|c| c.uuid.clone()).collect();
    uuids.sort();
    assert_eq!(on_disk(), uuids, "the storage holds exactly the kept checkpoints");

    // A kept checkpoint's file downloads through the master.
    let r = cluster.http.get(cluster.url(&format!("/api/v1/checkpoints/{}/files/state.json", uuids[0]))).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).unwrap(), json!({"epoch": 4}));
    let r = cluster.http.get(cluster.url(&format!("/api/v1/checkpoints/{}/files/../../etc/passwd", uuids[0]))).send().await.unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());

    // Pin one, remove another's files behind drover's back, then keep nothing: the pinned one
    // stays, the vanished one goes without an error.
    let r =
        cluster.http.patch(cluster.url(&format!("/api/v1/checkpoints/{}", uuids[0]))).json(&json!({"pinned": true})).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    std::fs::remove_dir_all(root.join(&uuids[1])).unwrap();
    let policy = json!({"save_experiment_best": 0, "save_trial_best": 0, "save_trial_latest": 0});
    let (status, body) = cluster.post_raw(&format!("/api/v1/experiments/{}/checkpoint-policy", e.id), &policy, None).await;
    assert_eq!(status, 200, "{body}");
    let result: GcResult = serde_json::from_value(body).unwrap();
    assert_eq!((result.deleted.len(), result.kept), (2, 1));
    assert_eq!(on_disk(), vec![uuids[0].clone()]);
    let left = checkpoints_of(&cluster, e.id).await;
    assert_eq!(left.len(), 1);
    assert!(left[0].pinned);
    let described: Experiment = cluster.get(&format!("/api/v1/experiments/{}", e.id)).await;
    assert_eq!(described.config["checkpoint_storage"]["save_trial_latest"], json!(0), "the new policy is recorded");

    // A pinned checkpoint cannot be deleted, nor its experiment; unpinned, it can.
    let url = cluster.url(&format!("/api/v1/checkpoints/{}", uuids[0]));
    assert_eq!(cluster.http.delete(&url).send().await.unwrap().status().as_u16(), 409);
    assert_eq!(cluster.http.delete(cluster.url(&format!("/api/v1/experiments/{}", e.id))).send().await.unwrap().status().as_u16(), 409);
    cluster.http.patch(&url).json(&json!({"pinned": false})).send().await.unwrap();
    assert_eq!(cluster.http.delete(&url).send().await.unwrap().status().as_u16(), 204);
    assert!(on_disk().is_empty());
    assert!(checkpoints_of(&cluster, e.id).await.is_empty());
    // A policy that makes no sense is refused.
    let (status, _) =
        cluster.post_raw(&format!("/api/v1/experiments/{}/checkpoint-policy", e.id), &json!({"save_trial_best": -1}), None).await;
    assert_eq!(status, 400);
    cluster.stop().await;
}

/// A trial killed (SIGKILL) while its checkpoint is being copied registers nothing: the master
/// lists no checkpoint and the storage holds no finished one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_save_killed_half_way_registers_nothing() {
    let cluster = Cluster::start(1).await;
    let yaml = config("{name: single, metric: validation_loss}", "  die_during_checkpoint_mb: 256", "max_restarts: 0\n");
    let e = cluster.create(&yaml).await;
    let e = cluster.wait_terminal(e.id, Duration::from_secs(60)).await;
    let logs = cluster.all_logs(e.id).await;
    assert_eq!(e.state, "ERROR", "{logs}");
    assert!(logs.contains("the checkpoint copy has begun"), "the process died during the copy: {logs}");
    assert!(!logs.contains("saved checkpoint"), "{logs}");
    assert!(checkpoints_of(&cluster, e.id).await.is_empty());
    let trials: Vec<Trial> = cluster.get(&format!("/api/v1/experiments/{}/trials", e.id)).await;
    assert_eq!(trials[0].latest_checkpoint, None);
    let root = cluster.dir.path().join("checkpoints");
    let finished: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|d| d.file_name().to_string_lossy().to_string())
        .filter(|n| !n.starts_with('.') && !n.ends_with(".partial"))
        .collect();
    assert!(finished.is_empty(), "only an unfinished .partial may be left: {finished:?}");
    cluster.stop().await;
}

/// Storage that cannot work is refused when the experiment is created, naming the field, and
/// nothing is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_checkpoint_storage_is_refused_at_creation() {
    let cluster = Cluster::start(1).await;
    let mut cases = vec![
        ("checkpoint_storage: {type: s3}\n".to_string(), "needs `bucket`"),
        ("checkpoint_storage: {type: directory, path: /proc/drover-cannot-write-here}\n".to_string(), "checkpoint_storage"),
    ];
    // Nothing listens on port 9: an endpoint that cannot be reached fails at creation too.
    cases.push((
        "checkpoint_storage: {type: s3, bucket: b-unreachable, endpoint_url: \"http://127.0.0.1:9\", access_key_id: a, secret_access_key: b}\n".to_string(),
        "cannot be written",
    ));
    if let Ok(endpoint) = std::env::var("DROVER_TEST_S3_ENDPOINT") {
        cases.push((
            format!("checkpoint_storage: {{type: s3, bucket: drover-no-such-bucket, endpoint_url: \"{endpoint}\", access_key_id: a, secret_access_key: b}}\n"),
            "does not exist",
        ));
    }
    for (storage, expected) in cases {
        let yaml = config("{name: single, metric: validation_loss}", "  x: 0.5", &storage);
        let (status, body) = cluster.post_raw("/api/v1/experiments", &json!({"config": yaml}), None).await;
        assert_eq!(status, 400, "{storage}: {body}");
        assert!(body.to_string().contains(expected), "{storage}: {body}");
        assert!(body.to_string().contains("checkpoint_storage"), "{storage}: {body}");
    }
    let experiments: Vec<Experiment> = cluster.get("/api/v1/experiments").await;
    assert!(experiments.is_empty(), "nothing was created");
    cluster.stop().await;
}

/// The checkpoint policy of an experiment that ended is applied when a master starts: a
/// collection that a crash interrupted, or a policy written while the master was down, is not
/// lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_master_applies_the_policies_of_ended_experiments() {
    let cluster = Cluster::start(1).await;
    let yaml = config(
        "{name: single, metric: validation_loss}",
        "  x: 0.5\n  n_metrics: 3\n  curve: true\n  checkpoint: true",
        "checkpoint_storage: {save_trial_latest: 3}\n",
    );
    let e = cluster.create(&yaml).await;
    let e = cluster.wait_terminal(e.id, Duration::from_secs(60)).await;
    assert_eq!(e.state, "COMPLETED", "{}", cluster.all_logs(e.id).await);
    assert_eq!(checkpoints_of(&cluster, e.id).await.len(), 3, "the policy keeps all three");

    // The master stops; meanwhile the stored policy changes to keep one (as if a collection
    // had never run); the next master applies it on start.
    let Cluster { master, agent_stop, agent, http, dir } = cluster;
    let addr = master.addr;
    master.shutdown().await.unwrap();
    let db = format!("sqlite://{}", dir.path().join("drover.db").display());
    {
        use drover_store::Store;
        let store = drover_store::SqlStore::open(&db).await.unwrap();
        let row = store.get_experiment(e.id).await.unwrap();
        let mut config: Value = serde_json::from_str(&row.config_json).unwrap();
        config["checkpoint_storage"]["save_trial_latest"] = json!(1);
        store.update_experiment_config(e.id, &config.to_string()).await.unwrap();
    }
    let master = common::start_master(dir.path(), &addr.to_string()).await;
    let cluster = Cluster { master, agent_stop, agent, http, dir };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = checkpoints_of(&cluster, e.id).await;
        if left.len() == 1 {
            assert_eq!(left[0].step, 3, "the latest is the one kept");
            break;
        }
        assert!(Instant::now() < deadline, "the restarted master never applied the policy: {} left", left.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.stop().await;
}
