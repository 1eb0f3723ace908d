//! drover tried as a hostile user would, end to end against a real master and agent with real
//! trial processes: links planted in checkpoints, impostor agents, requests sized to kill the
//! master, a trial that prints one enormous line, and a web page posting to a local master.
//! Every link points at a decoy directory made by the test, never at a system path.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use drover_api::agent::{AgentMessage, LogLine, MasterMessage};
use drover_api::rest::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use common::{Cluster, JOIN_TOKEN, TRIAL, config};

/// A decoy directory with files, to point links at; checked untouched at the end.
struct Decoy {
    dir: tempfile::TempDir,
}

impl Decoy {
    fn new() -> Decoy {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), b"decoy file: must survive").unwrap();
        std::fs::create_dir(dir.path().join("nested")).unwrap();
        std::fs::write(dir.path().join("nested/deep"), b"decoy deep file").unwrap();
        Decoy { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn assert_intact(&self, after: &str) {
        assert_eq!(std::fs::read(self.path().join("file")).unwrap(), b"decoy file: must survive", "after {after}");
        assert_eq!(std::fs::read(self.path().join("nested/deep")).unwrap(), b"decoy deep file", "after {after}");
    }
}

async fn checkpoints_of(cluster: &Cluster, experiment_id: i64) -> Vec<Checkpoint> {
    cluster.get(&format!("/api/v1/checkpoints?experiment_id={experiment_id}")).await
}

async fn wait_for<F: Fn(&[Checkpoint]) -> bool>(cluster: &Cluster, experiment_id: i64, what: &str, done: F) -> Vec<Checkpoint> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = checkpoints_of(cluster, experiment_id).await;
        if done(&left) {
            return left;
        }
        assert!(Instant::now() < deadline, "{what}: {} checkpoints left", left.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A trial plants `etcdir -> DECOY` and `state.json -> DECOY/file` in each of its stored
/// checkpoints; every path that reads or deletes checkpoints then runs, and the decoy stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_planted_in_checkpoints_never_lead_outside_storage() {
    let decoy = Decoy::new();
    let cluster = Cluster::start(1).await;
    let root: PathBuf = cluster.dir.path().join("checkpoints");
    let yaml = config(
        "{name: single, metric: validation_loss}",
        &format!("  n_metrics: 4\n  plant_links: \"{}\"", decoy.path().display()),
        "checkpoint_storage: {save_trial_latest: 3, save_trial_best: 0}\n",
    );
    let e = cluster.create(&yaml).await;
    let e = cluster.wait_terminal(e.id, Duration::from_secs(60)).await;
    let logs = cluster.all_logs(e.id).await;
    assert_eq!(e.state, "COMPLETED", "{logs}");
    assert!(
        logs.contains("hostile registration: HTTP 400") && logs.contains("linked.bin"),
        "a registration holding a link is refused by name: {logs}"
    );
    assert!(logs.contains("overflowing registration: HTTP 400") && logs.contains("2^63"), "sizes that overflow are refused: {logs}");
    assert!(logs.contains("linked-directory registration: HTTP 400"), "a checkpoint directory that is a link is refused: {logs}");

    // Experiment end: the policy keeps the latest 3 of 4.
    let kept = wait_for(&cluster, e.id, "the end-of-experiment collection", |c| c.len() == 3).await;
    let mut registered: Vec<String> = kept.iter().map(|c| c.uuid.clone()).collect();
    decoy.assert_intact("the end-of-experiment collection");

    // Downloads through a link are refused.
    let (status, body) = cluster.get_raw(&format!("/api/v1/checkpoints/{}/files/state.json", kept[0].uuid)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["message"].as_str().unwrap().contains("symbolic link"), "{body}");

    // DELETE of one checkpoint.
    let r = cluster.http.delete(cluster.url(&format!("/api/v1/checkpoints/{}", kept[0].uuid))).send().await.unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    assert!(!root.join(&kept[0].uuid).exists(), "the checkpoint's own entries are gone, links included");
    decoy.assert_intact("DELETE /checkpoints/{uuid}");

    // A policy change.
    let (status, body) = cluster
        .post_raw(
            &format!("/api/v1/experiments/{}/checkpoint-policy", e.id),
            &json!({"save_experiment_best": 0, "save_trial_latest": 1, "save_trial_best": 0}),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    wait_for(&cluster, e.id, "the policy change", |c| c.len() == 1).await;
    decoy.assert_intact("a policy change");

    // A second experiment's collection at master start (its policy changed while it was down).
    let e2 = cluster.create(&yaml.replace("save_trial_latest: 3", "save_trial_latest: 4")).await;
    let e2 = cluster.wait_terminal(e2.id, Duration::from_secs(60)).await;
    assert_eq!(e2.state, "COMPLETED", "{}", cluster.all_logs(e2.id).await);
    let all = checkpoints_of(&cluster, e2.id).await;
    assert_eq!(all.len(), 4);
    registered.extend(all.iter().map(|c| c.uuid.clone()));
    let Cluster { master, agent_stop, agent, http, dir } = cluster;
    let addr = master.addr;
    master.shutdown().await.unwrap();
    {
        use drover_store::Store;
        let store = drover_store::SqlStore::open(&format!("sqlite://{}", dir.path().join("drover.db").display())).await.unwrap();
        let row = store.get_experiment(e2.id).await.unwrap();
        let mut config: Value = serde_json::from_str(&row.config_json).unwrap();
        config["checkpoint_storage"]["save_trial_latest"] = json!(2);
        store.update_experiment_config(e2.id, &config.to_string()).await.unwrap();
    }
    let master = common::start_master(dir.path(), &addr.to_string()).await;
    let cluster = Cluster { master, agent_stop, agent, http, dir };
    wait_for(&cluster, e2.id, "the collection at master start", |c| c.len() == 2).await;
    decoy.assert_intact("the collection at master start");

    // Experiment delete.
    for id in [e.id, e2.id] {
        let r = cluster.http.delete(cluster.url(&format!("/api/v1/experiments/{id}"))).send().await.unwrap();
        assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
        decoy.assert_intact("DELETE /experiments/{id}");
    }
    for uuid in &registered {
        assert!(std::fs::symlink_metadata(root.join(uuid)).is_err(), "checkpoint {uuid} is left on disk");
    }

    // Parameter gc: a version's blob replaced by a link, and a link planted beside it.
    for v in 1..=3 {
        let r = cluster
            .http
            .put(cluster.url(&format!("/api/v1/params/hostile/versions/{v}")))
            .header("content-type", "application/octet-stream")
            .body(vec![v as u8; 16])
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
    let params = cluster.dir.path().join("params").join("hostile");
    let mut blobs: Vec<PathBuf> = std::fs::read_dir(&params).unwrap().map(|e| e.unwrap().path()).collect();
    blobs.sort();
    std::fs::remove_file(&blobs[0]).unwrap();
    std::os::unix::fs::symlink(decoy.path().join("file"), &blobs[0]).unwrap();
    std::os::unix::fs::symlink(decoy.path(), params.join("etcdir")).unwrap();
    let (status, body) = cluster.post_raw("/api/v1/params/hostile/gc", &json!({"keep_untagged": 1}), None).await;
    assert_eq!(status, 200, "{body}");
    decoy.assert_intact("parameter gc");
    assert!(std::fs::symlink_metadata(&blobs[0]).is_err(), "the link that was a version's blob is removed, not its target");
    let r = cluster.http.get(cluster.url("/api/v1/params/hostile/versions/1")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    cluster.stop().await;
}

/// A websocket request for the agent endpoint with `token` as the join secret.
fn agent_request(cluster: &Cluster, token: Option<&str>) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let url = cluster.master.url().replacen("http://", "ws://", 1) + "/api/v1/agents/connect";
    let mut request = url.into_client_request().unwrap();
    if let Some(t) = token {
        request.headers_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    request
}

fn hello(agent_id: &str, instance: &str) -> Message {
    let hello = AgentMessage::Hello {
        agent_id: agent_id.into(),
        hostname: "intruder".into(),
        version: "0".into(),
        slots: vec![],
        running: vec![],
        instance: instance.into(),
        pool: "default".into(),
    };
    Message::text(serde_json::to_string(&hello).unwrap())
}

async fn first_order(
    socket: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
) -> MasterMessage {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next()).await.expect("an answer within 10 s") {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("the connection ended without an answer: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_must_prove_who_they_are() {
    let cluster = Cluster::start(1).await;
    let e = cluster.create(&config("{name: single, metric: validation_loss}", "  sleep_s: 60", "")).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let trial = loop {
        let trials = cluster.trials(e.id).await;
        if let Some(t) = trials.into_iter().find(|t| t.state == "RUNNING" && t.allocation_id.is_some()) {
            break t;
        }
        assert!(Instant::now() < deadline, "the trial never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let allocation_id = trial.allocation_id.clone().unwrap();

    // No join token, or a wrong one: refused before any frame.
    for token in [None, Some("not-the-secret")] {
        let refused = tokio_tungstenite::connect_async(agent_request(&cluster, token)).await;
        match refused {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
            other => panic!("an agent without the join token got in: {:?}", other.map(|_| ())),
        }
    }

    // The right token, but the id of the live agent: refused, and the agent's trial goes on.
    let (mut socket, _) = tokio_tungstenite::connect_async(agent_request(&cluster, Some(JOIN_TOKEN))).await.unwrap();
    socket.send(hello("test-agent", "an-impostor")).await.unwrap();
    match first_order(&mut socket).await {
        MasterMessage::Reject { reason, .. } => assert!(reason.contains("in use"), "{reason}"),
        other => panic!("an impostor of a live agent was not refused: {other:?}"),
    }
    drop(socket);

    // A member of the cluster posting log lines for an allocation it does not hold: dropped.
    let (mut socket, _) = tokio_tungstenite::connect_async(agent_request(&cluster, Some(JOIN_TOKEN))).await.unwrap();
    socket.send(hello("other-agent", "other")).await.unwrap();
    assert!(matches!(first_order(&mut socket).await, MasterMessage::Welcome { .. }));
    let forged = AgentMessage::TaskLogs {
        allocation_id: allocation_id.clone(),
        lines: vec![LogLine { ts_ms: 1, stream: "stdout".into(), line: "FORGED LINE".into() }],
    };
    socket.send(Message::text(serde_json::to_string(&forged).unwrap())).await.unwrap();
    // A heartbeat after it: once it is handled, the forged frame before it has been too.
    socket.send(Message::text(serde_json::to_string(&AgentMessage::Heartbeat).unwrap())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let logs: TrialLogs = cluster.get(&format!("/api/v1/trials/{}/logs", trial.id)).await;
    assert!(logs.lines.iter().all(|l| !l.line.contains("FORGED")), "a forged log line was stored");
    drop(socket);

    let t: Trial = cluster.get(&format!("/api/v1/trials/{}", trial.id)).await;
    assert_eq!(t.state, "RUNNING", "the real agent's trial was not disturbed");
    assert_eq!(t.allocation_id.as_deref(), Some(allocation_id.as_str()));
    let agents: Vec<Agent> = cluster.get("/api/v1/agents").await;
    assert!(agents.iter().any(|a| a.id == "test-agent" && a.connected && a.hostname != "intruder"), "{agents:?}");
    let r = cluster.http.post(cluster.url(&format!("/api/v1/experiments/{}/kill", e.id))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    cluster.wait_terminal(e.id, Duration::from_secs(30)).await;
    cluster.stop().await;
}

/// Times one GET of /api/v1/info.
async fn info_latency(http: &reqwest::Client, url: &str) -> Duration {
    let started = Instant::now();
    let r = http.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_sized_to_kill_the_master_are_refused_and_change_nothing() {
    let cluster = Cluster::start(1).await;
    let before: Vec<Experiment> = cluster.get("/api/v1/experiments").await;
    let cases = [
        (config("{name: grid, metric: validation_loss}", "  x: {type: int, minval: 0, maxval: 1000000000000}", ""), "grid"),
        (config("{name: grid, metric: validation_loss}", "  x: {type: double, minval: 0, maxval: 1, count: 1000000000000}", ""), "grid"),
        (
            config(
                "{name: grid, metric: validation_loss}",
                "  x: {type: int, minval: -9223372036854775808, maxval: 9223372036854775807}",
                "",
            ),
            "grid",
        ),
        (
            config(
                "{name: pbt, metric: validation_loss, time_metric: epochs, population_size: 1000000000, max_generations: 2, generation_length: 1}",
                "  x: {type: double, minval: 0, maxval: 1}",
                "",
            ),
            "population",
        ),
        (config("{name: random, metric: validation_loss, max_trials: 1000000000000}", "  x: 1", ""), "max_trials"),
        (config("{name: single, metric: validation_loss}", "  x: 1", "resources: {slots_per_trial: 0}\n"), "slots_per_trial"),
        (config("{name: single, metric: validation_loss}", "  x: 1", "checkpoint_storage: {type: directory, path: /proc/self}\n"), "/proc"),
        (config("{name: single, metric: validation_loss}", "  x: {type: log, minval: 0, maxval: 400}", ""), "x"),
        (format!("name: \"a\\0b\"\nentrypoint: [\"{TRIAL}\"]\nsearcher: {{name: single, metric: m}}\n"), "NUL"),
    ];
    for (yaml, expect) in &cases {
        let (status, body) = cluster.post_raw("/api/v1/experiments", &json!({"config": yaml}), None).await;
        assert_eq!(status, 400, "{yaml}: {body}");
        assert!(body.to_string().contains(expect), "{yaml}: expected `{expect}` in {body}");
    }

    // A 100,000-deep flow YAML, twice at once, while the master keeps answering.
    let deep = format!(
        "name: deep\nentrypoint: x\nsearcher: {{name: single, metric: m}}\nhyperparameters: {{a: {}{}}}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let url = cluster.url("/api/v1/experiments");
    let posts: Vec<_> = (0..2)
        .map(|_| {
            let (http, url, body) = (cluster.http.clone(), url.clone(), json!({"config": deep}));
            tokio::spawn(async move { http.post(url).json(&body).send().await.unwrap().status().as_u16() })
        })
        .collect();
    let info = cluster.url("/api/v1/info");
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        slowest = slowest.max(info_latency(&cluster.http, &info).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for p in posts {
        assert_eq!(p.await.unwrap(), 400);
    }
    assert!(slowest < Duration::from_secs(1), "/api/v1/info took {slowest:?} while deep YAML was parsed");

    // A body over the limit gets the JSON error shape too.
    let huge = "x".repeat(200 << 20);
    let r = cluster.http.post(&url).header("content-type", "application/json").body(huge).send().await.unwrap();
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "payload_too_large", "{body}");

    let after: Vec<Experiment> = cluster.get("/api/v1/experiments").await;
    assert_eq!(after.len(), before.len(), "a refused experiment left a row behind");
    cluster.stop().await;
}

/// A trial prints one 17 MB line: the agent splits it, stays connected, and the next trial runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seventeen_megabyte_line_wedges_nothing() {
    let cluster = Cluster::start(1).await;
    let connected_at = |agents: Vec<Agent>| agents.iter().find(|a| a.id == "test-agent").map(|a| a.connected_at).unwrap();
    let first = connected_at(cluster.get("/api/v1/agents").await);
    let yaml = "name: big-line\nentrypoint: \"head -c 17000000 /dev/zero | tr '\\\\0' x; echo; echo after-the-big-line\"\nsearcher: {name: single, metric: m}\n";
    let e = cluster.create(yaml).await;
    let e = cluster.wait_terminal(e.id, Duration::from_secs(60)).await;
    assert_eq!(e.state, "COMPLETED");
    let trial = &cluster.trials(e.id).await[0];
    let logs: TrialLogs = cluster.get(&format!("/api/v1/trials/{}/logs?limit=10000", trial.id)).await;
    let xs: usize = logs.lines.iter().map(|l| l.line.bytes().filter(|&b| b == b'x').count()).sum();
    assert!(logs.lines.len() > 200, "the line arrives split: {} lines", logs.lines.len());
    assert_eq!(xs, 17_000_000, "every byte of the line arrives");
    assert!(logs.lines.iter().any(|l| l.line == "after-the-big-line"));

    let e2 = cluster.create(&config("{name: single, metric: validation_loss}", "  x: 0.4", "")).await;
    let e2 = cluster.wait_terminal(e2.id, Duration::from_secs(60)).await;
    assert_eq!(e2.state, "COMPLETED", "{}", cluster.all_logs(e2.id).await);
    assert_eq!(connected_at(cluster.get("/api/v1/agents").await), first, "the agent never reconnected");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_page_cannot_drive_a_local_master() {
    let cluster = Cluster::start(1).await;
    let yaml = config("{name: single, metric: validation_loss}", "  x: 0.4", "");
    let body = json!({"config": yaml}).to_string();
    let url = cluster.url("/api/v1/experiments");
    // What a form or a no-cors fetch can send without a preflight.
    let r = cluster.http.post(&url).header("content-type", "text/plain;charset=UTF-8").body(body.clone()).send().await.unwrap();
    assert_eq!(r.status(), 415);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"], "unsupported_media_type");
    // A JSON request from another origin.
    let r = cluster
        .http
        .post(&url)
        .header("content-type", "application/json")
        .header("origin", "http://evil.example")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // DNS rebinding: the page's own name, pointed at 127.0.0.1.
    let r = cluster.http.get(cluster.url("/api/v1/experiments")).header("host", "evil.example").send().await.unwrap();
    assert_eq!(r.status(), 403);
    let experiments: Vec<Experiment> = cluster.get("/api/v1/experiments").await;
    assert!(experiments.is_empty(), "a refused request created an experiment");
    // The same request from the CLI's side goes through.
    let r = cluster.http.post(&url).header("content-type", "application/json").body(body).send().await.unwrap();
    assert_eq!(r.status(), 201);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_of_deleted_experiments_are_never_handed_out_again() {
    let cluster = Cluster::start(1).await;
    let yaml = config("{name: single, metric: validation_loss}", "  x: 0.4", "");
    let a = cluster.create(&yaml).await;
    cluster.wait_terminal(a.id, Duration::from_secs(60)).await;
    let b = cluster.create(&yaml).await;
    cluster.wait_terminal(b.id, Duration::from_secs(60)).await;
    let b_trial = cluster.trials(b.id).await[0].id;
    let r = cluster.http.delete(cluster.url(&format!("/api/v1/experiments/{}", b.id))).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let c = cluster.create(&yaml).await;
    cluster.wait_terminal(c.id, Duration::from_secs(60)).await;
    assert!(c.id > b.id, "experiment id {} was handed out again", c.id);
    assert!(cluster.trials(c.id).await[0].id > b_trial, "a trial id was handed out again");
    cluster.stop().await;
}

/// An agent whose connection went silent (its host lost power: no FIN ever comes) does not
/// hold its id: the master closes the silent connection, and the agent restarted under the same
/// id gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_does_not_hold_an_agent_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut config =
        drover_master::MasterConfig::new(format!("sqlite://{}", dir.path().join("drover.db").display()), dir.path().join("checkpoints"));
    config.join_token = JOIN_TOKEN.into();
    config.agent_silence_limit = Duration::from_millis(500);
    let master = drover_master::start(config, tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).await.unwrap();
    let request = || {
        let url = master.url().replacen("http://", "ws://", 1) + "/api/v1/agents/connect";
        let mut request = url.into_client_request().unwrap();
        request.headers_mut().insert("authorization", format!("Bearer {JOIN_TOKEN}").parse().unwrap());
        request
    };
    let (mut before, _) = tokio_tungstenite::connect_async(request()).await.unwrap();
    before.send(hello("gpu-box", "before-the-power-cut")).await.unwrap();
    assert!(matches!(first_order(&mut before).await, MasterMessage::Welcome { .. }));
    // Silent from now on; meanwhile the restarted agent is refused for now, with a retry.
    let (mut after, _) = tokio_tungstenite::connect_async(request()).await.unwrap();
    after.send(hello("gpu-box", "after-the-reboot")).await.unwrap();
    match first_order(&mut after).await {
        MasterMessage::Reject { retry_after_ms, .. } => assert!(retry_after_ms.is_some(), "a refusal that may pass says so"),
        other => panic!("{other:?}"),
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (mut again, _) = tokio_tungstenite::connect_async(request()).await.unwrap();
        again.send(hello("gpu-box", "after-the-reboot")).await.unwrap();
        // Keep talking, as a live agent does.
        match first_order(&mut again).await {
            MasterMessage::Welcome { .. } => break,
            MasterMessage::Reject { .. } => {}
            other => panic!("{other:?}"),
        }
        assert!(Instant::now() < deadline, "the silent connection kept the id");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(before);
    master.shutdown().await.unwrap();
}
