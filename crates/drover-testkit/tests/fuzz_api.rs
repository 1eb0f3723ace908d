//! The REST API fuzzed from its own OpenAPI document by schemathesis (draft 2).

mod common;

use std::time::{Duration, Instant};

use drover_api::rest::*;

use common::{Cluster, config};

const EXAMPLES_PER_OPERATION: u32 = 50;
const SCHEMATHESIS_DEADLINE: Duration = Duration::from_secs(150);

struct Finished {
    experiment: i64,
    trial: i64,
    checkpoint: String,
}

async fn finished_experiment(cluster: &Cluster) -> Finished {
    let e = cluster.create(&config("{name: single, metric: validation_loss}", "  checkpoint: true", "")).await;
    let e = cluster.wait_terminal(e.id, Duration::from_secs(60)).await;
    assert_eq!(e.state, "COMPLETED", "{}", cluster.all_logs(e.id).await);
    let trial = cluster.trials(e.id).await.remove(0);
    let checkpoint = trial.latest_checkpoint.clone().expect("the trial saved a checkpoint");
    Finished { experiment: e.id, trial: trial.id, checkpoint }
}

fn schemathesis_toml(kept: &Finished, doomed: &Finished) -> String {
    let (k, d) = (kept, doomed);
    format!(
        r#"[dictionaries.ids]
values = [{}, {}, {}, {}]
[dictionaries.doomed-ids]
values = [{}]
[dictionaries.uuids]
values = ["{}", "{}"]
[dictionaries.doomed-uuids]
values = ["{}"]
[dictionaries.names]
values = ["policy"]
[dictionaries.selectors]
values = ["latest", "1", "2", "tag:best"]
[dictionaries.tags]
values = ["best"]
[dictionaries.files]
values = ["state.json"]

[parameters]
"query.wait_ms" = 0
"query.timeout_ms" = 0
"path.id" = {{ dictionary = "ids", probability = 0.5 }}
"query.experiment_id" = {{ dictionary = "ids", probability = 0.5 }}
"query.trial_id" = {{ dictionary = "ids", probability = 0.5 }}
"path.uuid" = {{ dictionary = "uuids", probability = 0.5 }}
"path.name" = {{ dictionary = "names", probability = 0.5 }}
"path.selector" = {{ dictionary = "selectors", probability = 0.5 }}
"path.tag" = {{ dictionary = "tags", probability = 0.5 }}
"path.path" = {{ dictionary = "files", probability = 0.5 }}

[[operations]]
include-path = "/api/v1/experiments/{{id}}"
include-method = "DELETE"
parameters = {{ "path.id" = {{ dictionary = "doomed-ids", probability = 0.5 }} }}

[[operations]]
include-path = "/api/v1/experiments/{{id}}/checkpoint-policy"
parameters = {{ "path.id" = {{ dictionary = "doomed-ids", probability = 0.5 }} }}

[[operations]]
include-path = "/api/v1/checkpoints/{{uuid}}"
include-method = "DELETE"
parameters = {{ "path.uuid" = {{ dictionary = "doomed-uuids", probability = 0.5 }} }}
"#,
        k.experiment, k.trial, d.experiment, d.trial, d.experiment, k.checkpoint, d.checkpoint, d.checkpoint
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error() {
    let Ok(command) = std::env::var("DROVER_TEST_SCHEMATHESIS") else {
        eprintln!("skipping: DROVER_TEST_SCHEMATHESIS is unset");
        return;
    };
    let mut argv = command.split_whitespace().map(str::to_string);
    let program = argv.next().expect("DROVER_TEST_SCHEMATHESIS is set but names no command");
    let started = Instant::now();
    let cluster = Cluster::start(1).await;
    let kept = finished_experiment(&cluster).await;
    let doomed = finished_experiment(&cluster).await;
    for (version, query) in [(1, "?tags=best&metadata=%7B%22elo%22%3A1200%7D"), (2, "")] {
        let url = cluster.url(&format!("/api/v1/params/policy/versions/{version}{query}"));
        let r = cluster.http.put(url).body(vec![1u8, 2, 3, 4]).send().await.unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }
    eprintln!("setup took {:?}", started.elapsed());
    let doc = cluster.http.get(cluster.url("/api/v1/openapi.json")).send().await.unwrap().text().await.unwrap();
    std::fs::write("/tmp/drover-openapi.json", doc).unwrap();

    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("schemathesis.toml"), schemathesis_toml(&kept, &doomed)).unwrap();
    let schema = cluster.url("/api/v1/openapi.json");
    let checks = std::env::var("FUZZ_CHECKS").unwrap_or("all".into());
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(argv)
        .arg("--config-file")
        .arg(work.path().join("schemathesis.toml"))
        .args(["run", &schema, "--checks", &checks])
        .args(["--max-examples", &EXAMPLES_PER_OPERATION.to_string()])
        .args(["--seed", "1", "--generation-database", "none", "--no-color", "--workers", "2", "--continue-on-failure"])
        .args(["--report", "har", "--report-har-path", "/tmp/drover-fuzz.har"])
        .current_dir(work.path())
        .kill_on_drop(true);
    eprintln!("running {cmd:?}");
    let fuzz_started = Instant::now();
    let output = tokio::time::timeout(SCHEMATHESIS_DEADLINE, cmd.output()).await.expect("schemathesis over its deadline").unwrap();
    eprintln!("schemathesis took {:?}", fuzz_started.elapsed());
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    eprintln!("{report}");
    let info: ClusterInfo = cluster.get("/api/v1/info").await;
    assert!(!info.version.is_empty());
    assert!(output.status.success(), "schemathesis failed: {}", output.status);
    cluster.stop().await;
}
