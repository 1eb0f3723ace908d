//! The REST API fuzzed from its own OpenAPI document by schemathesis (draft).

mod common;

use std::time::{Duration, Instant};

use drover_api::rest::*;

use common::{Cluster, config};

const EXAMPLES_PER_OPERATION: u32 = 200;
const SCHEMATHESIS_DEADLINE: Duration = Duration::from_secs(150);

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
    let e = cluster.create(&config("{name: single, metric: validation_loss}", "  checkpoint: true", "")).await;
    let e = cluster.wait_terminal(e.id, Duration::from_secs(60)).await;
    assert_eq!(e.state, "COMPLETED", "{}", cluster.all_logs(e.id).await);
    let r = cluster
        .http
        .put(cluster.url("/api/v1/params/policy/versions/1?tags=best&metadata=%7B%22elo%22%3A1200%7D"))
        .body(vec![1u8, 2, 3, 4])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    eprintln!("setup took {:?}", started.elapsed());
    let trial = cluster.trials(e.id).await.remove(0);
    let checkpoint = trial.latest_checkpoint.clone().expect("the trial saved a checkpoint");
    let doc = cluster.http.get(cluster.url("/api/v1/openapi.json")).send().await.unwrap().text().await.unwrap();
    std::fs::write("/tmp/drover-openapi.json", doc).unwrap();

    let work = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"[dictionaries.ids]
values = [{e}, {t}]
[dictionaries.uuids]
values = ["{c}"]
[dictionaries.names]
values = ["policy"]
[dictionaries.selectors]
values = ["latest", "1", "tag:best"]
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
"#,
        e = e.id,
        t = trial.id,
        c = checkpoint
    );
    std::fs::write(work.path().join("schemathesis.toml"), toml).unwrap();
    let schema = cluster.url("/api/v1/openapi.json");
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(argv)
        .arg("--config-file")
        .arg(work.path().join("schemathesis.toml"))
        .args(["run", &schema, "--checks", "not_a_server_error"])
        .args(["--max-examples", &EXAMPLES_PER_OPERATION.to_string()])
        .args(["--seed", "1", "--generation-database", "none", "--no-color", "--workers", "2"])
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
