//! The scheduler inside a real master with real agents and trial processes: gangs across agents
//! that meet at the rendezvous, preemption that requeues without a restart, fractional GPUs,
//! pools, the job queue and its refusals.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, config};
use drover_api::agent::{SlotKind, SlotSpec};
use drover_api::rest::*;
use serde_json::json;

fn cpu(id: &str) -> SlotSpec {
    SlotSpec { id: id.into(), kind: SlotKind::Cpu, device: "CPU".into(), device_index: None, memory_mb: None }
}

fn gpu(index: u32) -> SlotSpec {
    SlotSpec {
        id: format!("gpu{index}"),
        kind: SlotKind::Cuda,
        device: "fake T4".into(),
        device_index: Some(index.to_string()),
        memory_mb: None,
    }
}

async fn patch(cluster: &Cluster, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let r = cluster.http.patch(cluster.url(path)).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// Polls `f` every 50 ms until it is true, failing with `what` after `timeout`.
async fn wait_until<F: AsyncFnMut() -> bool>(timeout: Duration, what: &str, mut f: F) {
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gang_spans_agents_starts_together_and_meets_at_the_rendezvous() {
    // Two agents of one slot each: a trial of two slots is a gang of two, one per agent.
    let cluster = Cluster::start(1).await;
    let (_stop, _second) = cluster.add_agent("second", "default", vec![cpu("cpu0")]);
    cluster.wait_for_agents(2).await;
    let exp = cluster
        .create(&config("{name: random, metric: validation_loss, max_trials: 1}", "  gang: true", "resources: {slots_per_trial: 2}\n"))
        .await;
    let done = cluster.wait_terminal(exp.id, Duration::from_secs(60)).await;
    let logs = cluster.all_logs(exp.id).await;
    assert_eq!(done.state, "COMPLETED", "{logs}");
    for line in ["rank 0 of 2", "rank 1 of 2", r#"rank 0 heard ["hello from rank 1"]"#] {
        assert!(logs.contains(line), "`{line}` missing from {logs}");
    }
    let trial = &cluster.trials(exp.id).await[0];
    assert_eq!(trial.restarts, 0);
    let heard = trial.summaries.iter().find(|m| m.name == "peers_heard").map(|m| m.last);
    assert_eq!(heard, Some(1.0), "{:?}", trial.summaries);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gang_member_that_fails_stops_the_gang_and_the_trial_restarts_whole() {
    let cluster = Cluster::start(1).await;
    let (_stop, _second) = cluster.add_agent("second", "default", vec![cpu("cpu0")]);
    cluster.wait_for_agents(2).await;
    // Rank 1 of a gang fails at once; rank 0 would wait for it at the rendezvous for a minute.
    let yaml = config(
        "{name: random, metric: validation_loss, max_trials: 1}",
        "  gang: true",
        "resources: {slots_per_trial: 2}\nmax_restarts: 1\n",
    );
    let yaml = yaml.replace(
        "entrypoint: [",
        "entrypoint: [\"/bin/sh\", \"-c\", \"if [ \\\"$DROVER_RANK\\\" = 1 ]; then exit 3; fi; exec \\\"$0\\\"\", ",
    );
    let exp = cluster.create(&yaml).await;
    let done = cluster.wait_terminal(exp.id, Duration::from_secs(60)).await;
    let logs = cluster.all_logs(exp.id).await;
    assert_eq!(done.state, "ERROR", "{logs}");
    let trial = &cluster.trials(exp.id).await[0];
    assert_eq!((trial.state.as_str(), trial.restarts), ("ERROR", 1), "{logs}");
    assert!(logs.contains("exited with code 3"), "{logs}");
    // Nothing is left holding a slot.
    let agents: Vec<Agent> = cluster.get("/api/v1/agents").await;
    assert!(agents.iter().flat_map(|a| &a.slots).all(|s| s.allocation_id.is_none()), "{agents:?}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_work_preempts_through_should_stop_and_the_victim_resumes_without_a_restart() {
    let cluster = Cluster::start_with(1, |c| {
        let mut pool = drover_sched::Pool::new("default");
        pool.preemption = true;
        pool.preemption_timeout_ms = 30_000;
        c.pools = vec![pool];
    })
    .await;
    let low = cluster
        .create(&config(
            "{name: random, metric: validation_loss, max_trials: 1}",
            "  curve: true\n  checkpoint: true\n  n_metrics: 30\n  epoch_s: 0.1",
            "resources: {priority: 60}\n",
        ))
        .await;
    // Once it has a checkpoint, urgent work arrives.
    wait_until(Duration::from_secs(30), "the low-priority trial has checkpointed", async || {
        let checkpoints: Vec<Checkpoint> = cluster.get(&format!("/api/v1/checkpoints?experiment_id={}", low.id)).await;
        !checkpoints.is_empty()
    })
    .await;
    let high =
        cluster.create(&config("{name: random, metric: validation_loss, max_trials: 1}", "  x: 0.3", "resources: {priority: 1}\n")).await;
    let high_done = cluster.wait_terminal(high.id, Duration::from_secs(60)).await;
    assert_eq!(high_done.state, "COMPLETED");
    let low_done = cluster.wait_terminal(low.id, Duration::from_secs(90)).await;
    let logs = cluster.all_logs(low.id).await;
    assert_eq!(low_done.state, "COMPLETED", "{logs}");
    let trial = &cluster.trials(low.id).await[0];
    assert_eq!(trial.restarts, 0, "a preemption costs no restart: {logs}");
    for line in ["preempted for higher-priority work", "stopped by the searcher after epoch", "resumed from checkpoint"] {
        assert!(logs.contains(line), "`{line}` missing from {logs}");
    }
    // The high-priority trial started while the low one was stopped, not after it finished.
    let high_trial = &cluster.trials(high.id).await[0];
    assert!(high_trial.ended_at.unwrap() < trial.ended_at.unwrap());
    cluster.stop().await;
}

/// A victim that ignores `should_stop` is killed once its preemption deadline has passed, and
/// still goes back to the queue without costing a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_victim_that_ignores_the_stop_is_killed_at_the_deadline_and_requeued() {
    let cluster = Cluster::start_with(1, |c| {
        let mut pool = drover_sched::Pool::new("default");
        pool.preemption = true;
        pool.preemption_timeout_ms = 1_000;
        c.pools = vec![pool];
    })
    .await;
    // No SDK: it never looks at should_stop.
    let stubborn =
        config("{name: random, metric: validation_loss, max_trials: 1}", "  x: 0.5", "resources: {priority: 60}\nmax_restarts: 0\n")
            .replace("entrypoint: [", "entrypoint: [\"/bin/sh\", \"-c\", \"sleep 30\", ");
    let low = cluster.create(&stubborn).await;
    wait_until(Duration::from_secs(20), "the stubborn trial runs", async || {
        cluster.trials(low.id).await.first().is_some_and(|t| t.state == "RUNNING")
    })
    .await;
    let high =
        cluster.create(&config("{name: random, metric: validation_loss, max_trials: 1}", "  x: 0.3", "resources: {priority: 1}\n")).await;
    assert_eq!(cluster.wait_terminal(high.id, Duration::from_secs(30)).await.state, "COMPLETED");
    // Killed, requeued with no restart charged (it has none to spare), and running again.
    wait_until(Duration::from_secs(20), "the stubborn trial runs again", async || {
        cluster.trials(low.id).await.first().is_some_and(|t| t.state == "RUNNING")
    })
    .await;
    let logs = cluster.all_logs(low.id).await;
    let trial = &cluster.trials(low.id).await[0];
    assert_eq!(trial.restarts, 0, "{logs}");
    assert!(logs.contains("preempted for higher-priority work") && logs.contains("killed by signal"), "{logs}");
    let (status, _) = cluster.post_raw(&format!("/api/v1/experiments/{}/kill", low.id), &json!({}), None).await;
    assert_eq!(status, 200);
    cluster.wait_terminal(low.id, Duration::from_secs(30)).await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarter_gpus_share_one_device() {
    let cluster = Cluster::start(1).await;
    let (_stop, _gpus) = cluster.add_agent("gpu-box", "default", vec![gpu(0)]);
    cluster.wait_for_agents(2).await;
    let exp = cluster
        .create(&config(
            "{name: random, metric: validation_loss, max_trials: 4, max_concurrent_trials: 4}",
            "  sleep_s: 2",
            "resources: {gpu: 0.25}\n",
        ))
        .await;
    let mut most = 0;
    wait_until(Duration::from_secs(30), "four trials share gpu0", async || {
        let agents: Vec<Agent> = cluster.get("/api/v1/agents").await;
        let gpu0 = agents.iter().find(|a| a.id == "gpu-box").and_then(|a| a.slots.first()).map_or(0, |s| s.allocation_ids.len());
        most = most.max(gpu0);
        most == 4
    })
    .await;
    let done = cluster.wait_terminal(exp.id, Duration::from_secs(60)).await;
    assert_eq!(done.state, "COMPLETED", "{}", cluster.all_logs(exp.id).await);
    // They ran on the GPU agent only: the CPU agent's slot has no GPU to give.
    let logs = cluster.all_logs(exp.id).await;
    assert!(!logs.contains("ERROR"), "{logs}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_queue_says_why_work_waits_and_priorities_change_it() {
    let cluster = Cluster::start(1).await;
    let busy = cluster.create(&config("{name: random, metric: validation_loss, max_trials: 1}", "  sleep_s: 30", "")).await;
    let waiting =
        cluster.create(&config("{name: random, metric: validation_loss, max_trials: 1}", "  x: 0.3", "resources: {priority: 50}\n")).await;
    let mut jobs: Vec<Job> = Vec::new();
    wait_until(Duration::from_secs(20), "the second job is queued with a reason", async || {
        jobs = cluster.get("/api/v1/jobs").await;
        jobs.iter().any(|j| j.id == waiting.id && j.queued.len() == 1 && j.queued[0].position == Some(0))
    })
    .await;
    let running = jobs.iter().find(|j| j.id == busy.id).unwrap();
    assert_eq!((running.running, running.priority, running.resource_pool.as_str()), (1, 42, "default"));
    let queued = &jobs.iter().find(|j| j.id == waiting.id).unwrap().queued[0];
    assert!(queued.reason.contains("higher-priority") || queued.reason.contains("free slots"), "{queued:?}");

    // Priority and weight change in place; bad values are refused naming the field.
    let (status, body) = patch(&cluster, &format!("/api/v1/jobs/{}", waiting.id), json!({"priority": 5, "weight": 2.5})).await;
    assert_eq!(status, 200, "{body}");
    let job: Job = serde_json::from_value(body).unwrap();
    assert_eq!((job.priority, job.weight), (5, 2.5));
    for (body, field) in [(json!({"priority": 100}), "priority"), (json!({"weight": 0}), "weight"), (json!({"weight": -1.0}), "weight")] {
        let (status, answer) = patch(&cluster, &format!("/api/v1/jobs/{}", waiting.id), body).await;
        assert_eq!((status, answer["location"]["field"].as_str()), (400, Some(field)), "{answer}");
    }
    let (status, _) = patch(&cluster, "/api/v1/jobs/999", json!({"priority": 1})).await;
    assert_eq!(status, 404);
    // The stored configuration follows, so a restarted master keeps the new priority.
    let e: Experiment = cluster.get(&format!("/api/v1/experiments/{}", waiting.id)).await;
    assert_eq!(e.config["resources"]["priority"], 5, "{}", e.config);
    let (status, _) = cluster.post_raw(&format!("/api/v1/experiments/{}/kill", busy.id), &json!({}), None).await;
    assert_eq!(status, 200);
    assert_eq!(cluster.wait_terminal(waiting.id, Duration::from_secs(30)).await.state, "COMPLETED");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_that_can_never_fit_is_refused_at_creation_naming_the_field() {
    let cluster = Cluster::start(1).await;
    let cases = [
        ("resources: {resource_pool: gpus}\n", "resources.resource_pool", "unknown resource pool"),
        ("resources: {gpu: 0.5}\n", "resources.gpu", "no GPU"),
        ("resources: {slots_per_trial: 2}\n", "resources.slots_per_trial", "could never be scheduled"),
        ("resources: {priority: 100}\n", "resources.priority", "out of range"),
        ("resources: {weight: .nan}\n", "resources.weight", ""),
    ];
    for (extra, field, words) in cases {
        let yaml = config("{name: random, metric: validation_loss, max_trials: 1}", "  x: 0.3", extra);
        let (status, body) = cluster.post_raw("/api/v1/experiments", &json!({"config": yaml}), None).await;
        assert_eq!((status, body["location"]["field"].as_str()), (400, Some(field)), "{extra}: {body}");
        assert!(body["message"].as_str().unwrap().contains(words), "{extra}: {body}");
    }
    let list: Vec<Experiment> = cluster.get("/api/v1/experiments").await;
    assert!(list.is_empty(), "a refusal creates nothing: {list:?}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_join_pools_and_one_naming_an_unknown_pool_is_refused() {
    let cluster = Cluster::start_with(1, |c| c.pools = vec![drover_sched::Pool::new("default"), drover_sched::Pool::new("big")]).await;
    let (_stop, refused) = cluster.add_agent("lost", "nope", vec![cpu("cpu0")]);
    let err = tokio::time::timeout(Duration::from_secs(20), refused).await.unwrap().unwrap().unwrap_err();
    assert!(err.to_string().contains("unknown resource pool `nope`"), "{err}");
    let (_stop, _big) = cluster.add_agent("big-1", "big", vec![cpu("cpu0"), cpu("cpu1"), cpu("cpu2")]);
    cluster.wait_for_agents(2).await;
    let agents: Vec<Agent> = cluster.get("/api/v1/agents").await;
    let pools: Vec<(&str, &str)> = agents.iter().map(|a| (a.id.as_str(), a.pool.as_str())).collect();
    assert!(pools.contains(&("big-1", "big")) && pools.contains(&("test-agent", "default")), "{pools:?}");
    // Three slots fit only the `big` pool; there they run.
    let yaml = config("{name: random, metric: validation_loss, max_trials: 1}", "  x: 0.3", "resources: {slots_per_trial: 3}\n");
    let (status, body) = cluster.post_raw("/api/v1/experiments", &json!({"config": yaml}), None).await;
    assert_eq!(status, 400, "{body}");
    let exp = cluster.create(&yaml.replace("slots_per_trial: 3}", "slots_per_trial: 3, resource_pool: big}")).await;
    assert_eq!(cluster.wait_terminal(exp.id, Duration::from_secs(30)).await.state, "COMPLETED");
    cluster.stop().await;
}

/// A master restarted under a running gang takes it back whole: both members reattach, the
/// scheduler holds their slots meanwhile (the queued trial does not take them), and no restart
/// is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_master_takes_back_a_running_gang() {
    let cluster = Cluster::start(1).await;
    let (second_stop, second) = cluster.add_agent("second", "default", vec![cpu("cpu0")]);
    cluster.wait_for_agents(2).await;
    let yaml = config(
        "{name: random, metric: validation_loss, max_trials: 2, max_concurrent_trials: 2}",
        "  sleep_s: 4\n  x: 0.5",
        "resources: {slots_per_trial: 2}\n",
    );
    let e = cluster.create(&yaml).await;
    let mut before = Vec::new();
    wait_until(Duration::from_secs(20), "both members run", async || {
        before = cluster.master.master.store.live_allocations().await.unwrap();
        before.len() == 2 && before.iter().all(|a| a.state == "RUNNING")
    })
    .await;
    let Cluster { master, agent_stop, agent, http, dir } = cluster;
    let addr = master.addr;
    master.shutdown().await.unwrap();
    let master = common::start_master_with(dir.path(), &addr.to_string(), |_| {}).await;
    let cluster = Cluster { master, agent_stop, agent, http, dir };
    // While the gang is taken back, the second trial waits: its slots are the gang's.
    let jobs: Vec<Job> = cluster.get("/api/v1/jobs").await;
    assert_eq!(jobs[0].queued.len(), 1, "{jobs:?}");
    let done = cluster.wait_terminal(e.id, Duration::from_secs(60)).await;
    let logs = cluster.all_logs(e.id).await;
    assert_eq!(done.state, "COMPLETED", "{logs}");
    let trials = cluster.trials(e.id).await;
    assert!(trials.iter().all(|t| t.state == "COMPLETED" && t.restarts == 0), "{trials:?}\n{logs}");
    for a in &before {
        let row = cluster.master.master.store.get_allocation(&a.id).await.unwrap();
        assert_eq!((row.state.as_str(), row.exit_code), ("TERMINATED", Some(0)), "member {} ran to its end", a.id);
    }
    second_stop.cancel();
    second.await.unwrap().unwrap();
    cluster.stop().await;
}
