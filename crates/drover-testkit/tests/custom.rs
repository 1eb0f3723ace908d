//! The `custom` searcher end to end: an in-process cluster (real master on SQLite, real agent,
//! `drover-trivial-trial` processes) driven by an advisor using the SDK's blocking client.

use std::time::{Duration, Instant};

use drover_api::rest::*;
use drover_sdk::SdkError;
use drover_sdk::advisor::Advisor;
use serde_json::{Map, Value, json};

mod common;

use common::{Cluster, TRIAL, start_master};

/// A custom search over the trivial trial: `x` sets its loss `(x - 0.3)^2`, `sleep_s` keeps it
/// running (until asked to stop) before it reports.
fn custom_yaml(searcher_extra: &str) -> String {
    format!(
        "name: custom-e2e\nentrypoint: [\"{TRIAL}\"]\nhyperparameters:\n  x: {{type: double, minval: 0, maxval: 1}}\n  \
         sleep_s: {{type: categorical, vals: [0, 1, 4, 30]}}\n  n_metrics: 5\n\
         searcher: {{name: custom, metric: validation_loss, smaller_is_better: true{searcher_extra}}}\n"
    )
}

fn point(x: f64, sleep_s: i64) -> Map<String, Value> {
    json!({"x": x, "sleep_s": sleep_s, "n_metrics": 5}).as_object().unwrap().clone()
}

/// Polls until `done` holds for the events gathered so far, retrying while the master is
/// unreachable (it may be restarting). Returns every event seen.
fn poll_until(advisor: &mut Advisor, seen: &mut Vec<SearcherEvent>, timeout: Duration, done: impl Fn(&[SearcherEvent]) -> bool) {
    let deadline = Instant::now() + timeout;
    while !done(seen) {
        assert!(Instant::now() < deadline, "gave up waiting; events so far: {seen:#?}");
        match advisor.next_events(Duration::from_secs(5)) {
            Ok(events) => seen.extend(events),
            Err(e) if e.is_transient() => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("polling events: {e}"),
        }
    }
}

fn has(seen: &[SearcherEvent], wanted: impl Fn(&SearcherEventKind) -> bool) -> bool {
    seen.iter().any(|e| wanted(&e.kind))
}

fn exited(request: u64) -> impl Fn(&[SearcherEvent]) -> bool {
    move |seen: &[SearcherEvent]| has(seen, |k| matches!(k, SearcherEventKind::TrialExited { request_id } if *request_id == request))
}

fn assert_contiguous(seen: &[SearcherEvent]) {
    let seqs: Vec<u64> = seen.iter().map(|e| e.seq).collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "every event exactly once, in order: {seen:#?}");
}

fn refused(result: Result<impl std::fmt::Debug, SdkError>) -> (u16, String) {
    match result {
        Err(SdkError::Api { status, message, .. }) => (status, message),
        other => panic!("expected the master to refuse, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advisor_creates_watches_stops_and_shuts_down() {
    let cluster = Cluster::start(2).await;
    let e = cluster.create(&custom_yaml(", max_trials: 3, max_concurrent_trials: 2")).await;
    assert_eq!((e.searcher.as_str(), e.planned_trials), ("custom", Some(3)));
    let (url, id) = (cluster.master.url(), e.id);

    let created = tokio::task::spawn_blocking(move || {
        let mut advisor = Advisor::connect(&url, id).unwrap();
        let mut seen = Vec::new();
        poll_until(&mut advisor, &mut seen, Duration::from_secs(10), |s| !s.is_empty());
        let SearcherEventKind::Initialized { metric, smaller_is_better, max_trials, max_concurrent_trials, hyperparameters } =
            &seen[0].kind
        else {
            panic!("{seen:?}")
        };
        assert_eq!((metric.as_str(), *smaller_is_better, *max_trials, *max_concurrent_trials), ("validation_loss", true, Some(3), 2));
        assert_eq!(hyperparameters["x"], json!({"type": "double", "minval": 0.0, "maxval": 1.0, "count": null}));

        let first = advisor
            .post(vec![
                AdvisorAction::Create { hparams: point(0.5, 0), checkpoint_from: None },
                AdvisorAction::Create { hparams: point(0.9, 30), checkpoint_from: None },
            ])
            .unwrap();
        assert_eq!(first.created.iter().map(|c| c.request_id).collect::<Vec<_>>(), vec![1, 2]);
        let (status, message) = refused(advisor.create(point(0.1, 0), None));
        assert_eq!(status, 400);
        assert!(message.contains("max_concurrent_trials = 2"), "{message}");

        // Request 1 reports (0.5 - 0.3)^2 at step 5 and ends; request 2 sleeps until stopped.
        poll_until(&mut advisor, &mut seen, Duration::from_secs(30), exited(1));
        let validation = seen.iter().find_map(|e| match e.kind {
            SearcherEventKind::ValidationCompleted { request_id: 1, metric, time } => Some((metric, time)),
            _ => None,
        });
        let (metric, time) = validation.expect("request 1's validation came before its exit");
        assert!((metric - 0.04).abs() < 1e-12 && time == 5.0, "{metric} at {time}");
        assert!(has(&seen, |k| matches!(k, SearcherEventKind::TrialCreated { request_id: 2, hparams, .. } if hparams["x"] == 0.9)));
        advisor.stop(2).unwrap();
        advisor.stop(2).unwrap(); // a second stop is harmless
        poll_until(&mut advisor, &mut seen, Duration::from_secs(30), exited(2));

        let third = advisor.create(point(0.3, 0), Some(1)).unwrap();
        assert_eq!(third.request_id, 3);
        let (status, message) = refused(advisor.create(point(0.2, 0), None));
        assert_eq!(status, 400);
        assert!(message.contains("searcher.max_trials = 3"), "{message}");
        poll_until(&mut advisor, &mut seen, Duration::from_secs(30), exited(3));
        assert!(!has(&seen, |k| matches!(k, SearcherEventKind::TrialFailed { .. })));

        advisor.shutdown().unwrap();
        assert!(advisor.is_shut_down());
        let (status, _) = refused(advisor.stop(3));
        assert_eq!(status, 409, "a finished search takes no more actions");
        while !advisor.is_finished() {
            seen.extend(advisor.next_events(Duration::from_secs(5)).unwrap());
        }
        assert_eq!(advisor.experiment_state(), "COMPLETED");
        assert_contiguous(&seen);
        first.created.into_iter().chain([third]).collect::<Vec<_>>()
    })
    .await
    .unwrap();

    let e = cluster.wait_terminal(id, Duration::from_secs(10)).await;
    assert_eq!(e.state, "COMPLETED");
    let trials = cluster.trials(id).await;
    assert_eq!(trials.len(), 3);
    for (c, x) in created.iter().zip([0.5, 0.9, 0.3]) {
        let t = trials.iter().find(|t| t.id == c.trial_id).unwrap();
        assert_eq!((t.state.as_str(), t.hparams["x"].as_f64()), ("COMPLETED", Some(x)), "trial {}", t.id);
    }
    let stopped = trials.iter().find(|t| t.id == created[1].trial_id).unwrap();
    assert!(stopped.best_metric.is_none(), "request 2 was stopped before it reported");
    assert_eq!(e.best_metric, Some(0.0), "request 3 hit the optimum");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_actions_are_refused_whole_and_other_searchers_take_none() {
    let cluster = Cluster::start(1).await;
    let e = cluster.create(&custom_yaml("")).await;
    assert_eq!(e.planned_trials, None);
    let actions = format!("/api/v1/experiments/{}/searcher/actions", e.id);
    let events = format!("/api/v1/experiments/{}/searcher/events", e.id);

    let batch = json!({"actions": [
        {"type": "create", "hparams": {"x": 0.5, "sleep_s": 0, "n_metrics": 5}},
        {"type": "create", "hparams": {"x": 3.5, "sleep_s": 0, "n_metrics": 5}},
    ]});
    let (status, body) = cluster.post_raw(&actions, &batch, None).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["location"]["field"], "actions[1].hparams.x", "{body}");
    assert_eq!(body["message"], "actions[1].hparams.x: 3.5 is above maxval 1.0");
    let (status, body) = cluster.post_raw(&actions, &json!({"actions": [{"type": "craete", "hparams": {}}]}), None).await;
    assert_eq!((status, &body["location"]["field"]), (400, &json!("actions[0]")), "{body}");
    let (status, body) = cluster.post_raw(&actions, &json!({"actions": [{"type": "stop", "request_id": 1}]}), None).await;
    assert_eq!((status, &body["location"]["field"]), (400, &json!("actions[0].request_id")), "{body}");
    let (status, body) = cluster.post_raw(&actions, &json!({"action": []}), None).await;
    assert_eq!((status, &body["location"]["field"]), (400, &json!("action")), "{body}");
    assert!(cluster.trials(e.id).await.is_empty(), "a refused batch creates nothing");
    let page: SearcherEvents = cluster.get(&format!("{events}?timeout_ms=0")).await;
    assert_eq!(page.events.len(), 1, "only `initialized`: {page:?}");
    assert_eq!((page.next_after, page.shut_down, page.experiment_state.as_str()), (1, false, "ACTIVE"));
    let (status, body) = cluster.get_raw(&format!("{events}?after=7")).await;
    assert_eq!((status, &body["location"]["field"]), (400, &json!("after")), "{body}");

    // A long poll with nothing to report waits, and answers empty.
    let started = Instant::now();
    let page: SearcherEvents = cluster.get(&format!("{events}?after=1&timeout_ms=300")).await;
    assert!(page.events.is_empty() && page.next_after == 1 && started.elapsed() >= Duration::from_millis(300), "{page:?}");

    // A bare list is accepted too; a shutdown with nothing running completes at once.
    let (status, body) = cluster.post_raw(&actions, &json!([{"type": "shutdown"}]), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"created": [], "shut_down": true}));
    let done = cluster.wait_terminal(e.id, Duration::from_secs(10)).await;
    assert_eq!(done.state, "COMPLETED");
    let page: SearcherEvents = cluster.get(&format!("{events}?after=1")).await;
    assert_eq!((page.events.len(), page.shut_down, page.experiment_state.as_str()), (0, true, "COMPLETED"));
    let (status, body) = cluster.post_raw(&actions, &json!({"actions": []}), None).await;
    assert_eq!(status, 409, "{body}");

    // Other searchers have no events and take no advice.
    let random = cluster
        .create(&format!("name: r\nentrypoint: [\"{TRIAL}\"]\nsearcher: {{name: random, metric: validation_loss, max_trials: 1}}\n"))
        .await;
    let (status, body) = cluster.get_raw(&format!("/api/v1/experiments/{}/searcher/events", random.id)).await;
    assert_eq!((status, &body["location"]["field"]), (400, &json!("searcher.name")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("`random` searcher"), "{body}");
    let (status, body) =
        cluster.post_raw(&format!("/api/v1/experiments/{}/searcher/actions", random.id), &json!({"actions": []}), None).await;
    assert_eq!((status, &body["location"]["field"]), (400, &json!("searcher.name")), "{body}");
    let (status, _) = cluster.get_raw("/api/v1/experiments/999/searcher/events").await;
    assert_eq!(status, 404);
    let url = cluster.master.url();
    let not_custom = tokio::task::spawn_blocking(move || Advisor::connect(&url, random.id).err()).await.unwrap();
    assert!(matches!(not_custom, Some(SdkError::NotCustom { .. })), "{not_custom:?}");

    let spec: Value = cluster.get("/api/v1/openapi.json").await;
    assert!(spec["paths"]["/api/v1/experiments/{id}/searcher/events"]["get"].is_object());
    assert!(spec["paths"]["/api/v1/experiments/{id}/searcher/actions"]["post"].is_object());
    assert!(spec["components"]["schemas"]["AdvisorAction"].is_object());
    cluster.wait_terminal(random.id, Duration::from_secs(30)).await;
    cluster.stop().await;
}

/// Events live in the searcher's snapshot: a master restarted while an advisor waits loses
/// none of them, keeps the acknowledged ones forgotten, and records the later ones after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_restart_loses_no_event() {
    let cluster = Cluster::start(2).await;
    let e = cluster.create(&custom_yaml(", max_concurrent_trials: 2")).await;
    let (url, id) = (cluster.master.url(), e.id);
    let events = format!("/api/v1/experiments/{id}/searcher/events");

    let mut advisor = tokio::task::spawn_blocking(move || {
        let mut advisor = Advisor::connect(&url, id).unwrap();
        let created = advisor
            .post(vec![
                AdvisorAction::Create { hparams: point(0.5, 1), checkpoint_from: None },
                AdvisorAction::Create { hparams: point(0.2, 4), checkpoint_from: None },
            ])
            .unwrap();
        assert_eq!(created.created.len(), 2);
        advisor
    })
    .await
    .unwrap();
    let mut seen = Vec::new();
    (advisor, seen) = tokio::task::spawn_blocking(move || {
        poll_until(&mut advisor, &mut seen, Duration::from_secs(10), |s| s.len() >= 3);
        (advisor, seen)
    })
    .await
    .unwrap();
    assert!(matches!(seen[2].kind, SearcherEventKind::TrialCreated { request_id: 2, .. }), "{seen:?}");
    // Acknowledge the first three, as the advisor's next poll would.
    let (status, body) = cluster.get_raw(&format!("{events}?after=3&timeout_ms=0")).await;
    assert_eq!(status, 200, "{body}");

    // Request 1 ends while request 2 still sleeps; nobody reads request 1's events yet.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let trials = cluster.trials(id).await;
        if trials.iter().any(|t| t.state == "COMPLETED") {
            assert!(trials.iter().any(|t| t.state == "RUNNING"), "request 2 must outlive the restart: {trials:?}");
            break;
        }
        assert!(Instant::now() < deadline, "{trials:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Another advisor is waiting in a long poll when the master goes down.
    let idle = cluster.create(&custom_yaml("")).await;
    let waiting = tokio::spawn(
        cluster.http.get(cluster.url(&format!("/api/v1/experiments/{}/searcher/events?after=1&timeout_ms=60000", idle.id))).send(),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let Cluster { master, agent_stop, agent, http, dir } = cluster;
    let addr = master.addr.to_string();
    let stopping = Instant::now();
    master.shutdown().await.unwrap();
    assert!(stopping.elapsed() < Duration::from_secs(5), "a waiting advisor must not hold up a shutdown");
    let answer = waiting.await.unwrap().unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    assert!(answer.json::<SearcherEvents>().await.unwrap().events.is_empty());
    let master = start_master(dir.path(), &addr).await;
    let cluster = Cluster { master, agent_stop, agent, http, dir };

    // The acknowledged events stayed forgotten; request 1's unread ones survived.
    let page: SearcherEvents = cluster.get(&format!("{events}?after=0&timeout_ms=0")).await;
    assert_eq!(page.events.first().map(|e| e.seq), Some(4), "{page:?}");
    assert!(page.events.iter().any(|e| matches!(e.kind, SearcherEventKind::ValidationCompleted { request_id: 1, .. })), "{page:?}");
    assert!(exited(1)(&page.events), "{page:?}");

    // The advisor carries on from where it was, across the restart.
    assert_eq!(advisor.after(), 3);
    (advisor, seen) = tokio::task::spawn_blocking(move || {
        poll_until(&mut advisor, &mut seen, Duration::from_secs(60), |s| exited(1)(s) && exited(2)(s));
        (advisor, seen)
    })
    .await
    .unwrap();
    assert_contiguous(&seen);
    (advisor, seen) = tokio::task::spawn_blocking(move || {
        advisor.shutdown().unwrap();
        while !advisor.is_finished() {
            seen.extend(advisor.next_events(Duration::from_secs(5)).unwrap());
        }
        (advisor, seen)
    })
    .await
    .unwrap();
    assert_contiguous(&seen);
    assert_eq!(advisor.experiment_state(), "COMPLETED");
    let trials = cluster.trials(id).await;
    assert_eq!(trials.len(), 2);
    assert!(trials.iter().all(|t| t.state == "COMPLETED" && t.restarts == 0), "{trials:?}");
    cluster.stop().await;
}
