//! The REST API fuzzed by schemathesis from the OpenAPI document the master serves
//! (`/api/v1/openapi.json`), against a real master and agent. For every operation in the
//! document, schemathesis generates up to [`EXAMPLES_PER_OPERATION`] requests per phase, valid
//! and invalid: boundary values first ("coverage"), then random ones ("fuzzing"), then chains of
//! calls through links it infers from the document ("stateful"). The test fails on any 5xx and
//! on any disagreement with the document that the checks below find, and prints schemathesis's
//! report, which gives a curl command for each failure. It also fails if the master stops
//! answering `/api/v1/info`. It runs when `DROVER_TEST_SCHEMATHESIS` names the schemathesis
//! command (`schemathesis`, or e.g. `uvx schemathesis`; `.ci/run` sets it). Unset, the test
//! prints a notice and passes.
//!
//! What the master holds first, so that requests get past "not found":
//! - `kept`: a finished experiment whose trial left metrics, logs and a checkpoint. The checkpoint
//!   is pinned, so deleting it or its experiment gets a 409 unless something unpins it first;
//! - `doomed`: the same again, the target given to the destructive operations (deleting an
//!   experiment or a checkpoint, and setting a checkpoint policy, which deletes checkpoints);
//! - a finished `pbt` experiment, for its lineage, and a `custom` one, for its advisor's events
//!   and actions;
//! - `live`: a running trial, a shell that hands the test its token and sleeps. Every request
//!   carries that token, so the trial-facing endpoints (reports, checkpoint registration,
//!   signals, the context) are fuzzed past authentication. They are fuzzed on their own first,
//!   because in the full run an experiment command may end the trial, and with it the token;
//! - `queued`: an experiment whose trial waits for the one slot, a target for pause, activate,
//!   cancel and kill;
//! - versions 1 (tagged `best`) and 2 of a parameter `policy`.
//!
//! Their ids go to schemathesis as dictionaries. Half of the values it generates for the matching
//! parameters in the fuzzing phase are drawn from them. schemathesis also reuses ids it finds in
//! answers, so the targets above steer the run but protect nothing: any request may change or
//! delete anything, and every answer must still be a 2xx or a 4xx.
//!
//! Bounds: the long polls' `wait_ms` and `timeout_ms` are pinned to 0. The agents' websocket
//! (`/api/v1/agents/connect`) is not in the document. schemathesis runs with one worker (two
//! threads of it crash in CPython 3.11's `ast.parse`, inside hypothesis) and a 10 s timeout per
//! request. Both runs together are killed after [`SCHEMATHESIS_BUDGET`].
//!
//! Checks: [`CHECKS`], that is, every check of schemathesis 4.32 except these three:
//! - `positive_data_acceptance`: the master refuses, with a 400 naming the field, requests that
//!   match the document but break rules a schema cannot state. A config must be a valid
//!   experiment YAML. `GET /checkpoints` needs exactly one of `experiment_id` and `trial_id`.
//!   `newer_than` cannot go with a version number. A lineage exists only for `pbt`, and advisor
//!   events and actions only for `custom`. A `filter` must parse, and a `sha256` must match the
//!   body. serde also refuses an integer written as `2.0`, which JSON Schema counts as an integer.
//! - `unsupported_method`: the request guard (`guard.rs`) checks the content type before the
//!   router checks the method. A POST with a binary body to a path without POST therefore gets a
//!   415 rather than a 405. Both are refusals.
//! - `object_level_authorization`: this API has no users, so this check has nothing to compare.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use drover_api::rest::*;
use serde_json::json;

use common::{Cluster, config};

/// Generated requests per operation and phase. At 50 the two runs take about 35 s on 2 cores.
const EXAMPLES_PER_OPERATION: u32 = 50;
/// A hard bound on the two schemathesis runs together, far above their usual time.
const SCHEMATHESIS_BUDGET: Duration = Duration::from_secs(150);
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,\
    response_schema_conformance,negative_data_rejection,missing_required_header,allow_header_conformance,use_after_free,\
    ensure_resource_availability,ignored_auth";
/// Fixed, so that a failure in CI is reproduced by running the test again (schemathesis also
/// prints the seed).
const SEED: &str = "1";
/// The endpoints that take the trial token, as paths of the document.
const TRIAL_FACING: &str = r"^/api/v1/(trials/\{id\}/(metrics|signals|checkpoints)|experiments/\{id\}/context)$";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_disagreement_with_the_document() {
    let Ok(command) = std::env::var("DROVER_TEST_SCHEMATHESIS") else {
        eprintln!("skipping: DROVER_TEST_SCHEMATHESIS is unset");
        return;
    };
    let started = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(1).await;
    let holdings = Holdings::create(&cluster, work.path()).await;
    let config_file = work.path().join("schemathesis.toml");
    std::fs::write(&config_file, holdings.schemathesis_toml()).unwrap();
    eprintln!("setup took {:.1?}", started.elapsed());

    let schemathesis = Schemathesis {
        command: &command,
        config_file: &config_file,
        schema: cluster.url("/api/v1/openapi.json"),
        token: &holdings.token,
        dir: work.path(),
        deadline: tokio::time::Instant::now() + SCHEMATHESIS_BUDGET,
    };
    let trial_facing = schemathesis.run("the trial-facing endpoints", &["--include-path-regex", TRIAL_FACING]).await;
    let everything = schemathesis.run("every endpoint", &[]).await;

    // Asked before anything can fail, because stopping the cluster also kills the sleeping trials.
    let info = match cluster.http.get(cluster.url("/api/v1/info")).send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    };
    cluster.stop().await;
    assert!(info.0 == 200 && serde_json::from_str::<ClusterInfo>(&info.1).is_ok(), "the master after fuzzing: {info:?}");
    for run in [trial_facing, everything] {
        run.unwrap_or_else(|failure| panic!("{failure}; schemathesis's report is above"));
    }
    eprintln!("the test took {:.1?}", started.elapsed());
}

/// An experiment whose one trial has run to completion.
struct Finished {
    experiment: i64,
    trial: i64,
    checkpoint: String,
}

/// What the master holds when schemathesis starts (see the module's documentation).
struct Holdings {
    kept: Finished,
    doomed: Finished,
    pbt: i64,
    advised: i64,
    live_experiment: i64,
    live_trial: i64,
    token: String,
    queued: i64,
}

impl Holdings {
    async fn create(cluster: &Cluster, dir: &Path) -> Holdings {
        let doomed = finished_experiment(cluster).await;
        let kept = finished_experiment(cluster).await;
        let pin = cluster.http.patch(cluster.url(&format!("/api/v1/checkpoints/{}", kept.checkpoint))).json(&json!({"pinned": true}));
        assert_eq!(pin.send().await.unwrap().status(), 200);
        let pbt = cluster
            .create(&config(
                "{name: pbt, metric: validation_loss, time_metric: epochs, population_size: 2, max_generations: 2, generation_length: 2}",
                "  x: {type: double, minval: 0.02, maxval: 0.6}\n  n_metrics: 100\n  pbt: true",
                "",
            ))
            .await;
        let pbt = cluster.wait_terminal(pbt.id, Duration::from_secs(60)).await;
        assert_eq!(pbt.state, "COMPLETED", "{}", cluster.all_logs(pbt.id).await);
        let advised =
            cluster.create(&config("{name: custom, metric: validation_loss}", "  x: {type: double, minval: 0, maxval: 1}", "")).await;

        let token_file = dir.join("token");
        let script = r#"printf %s "$DROVER_TRIAL_TOKEN" > "$0.part" && mv "$0.part" "$0" && exec sleep 600"#;
        let live = shell_experiment(cluster, script, &token_file).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        let token = loop {
            if let Ok(token) = std::fs::read_to_string(&token_file) {
                break token;
            }
            assert!(Instant::now() < deadline, "the live trial never started: {:?}", cluster.trials(live.id).await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let live_trial = cluster.trials(live.id).await.remove(0);
        assert_eq!(live_trial.state, "RUNNING");
        // The live trial holds the one slot, so this one waits in the queue.
        let queued = shell_experiment(cluster, "exec sleep 600", &dir.join("unused")).await;

        for (version, query) in [(1, "?tags=best&metadata=%7B%22elo%22%3A1200%7D"), (2, "")] {
            let url = cluster.url(&format!("/api/v1/params/policy/versions/{version}{query}"));
            let r = cluster.http.put(url).body(vec![1u8, 2, 3, 4]).send().await.unwrap();
            assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        }
        Holdings {
            kept,
            doomed,
            pbt: pbt.id,
            advised: advised.id,
            live_experiment: live.id,
            live_trial: live_trial.id,
            token,
            queued: queued.id,
        }
    }

    /// schemathesis's configuration: the pinned waits, and dictionaries of what the master holds,
    /// for all operations and, for some, their own.
    fn schemathesis_toml(&self) -> String {
        let (kept, doomed) = (&self.kept, &self.doomed);
        let mut ids = vec![
            kept.experiment,
            kept.trial,
            doomed.experiment,
            doomed.trial,
            self.pbt,
            self.advised,
            self.live_experiment,
            self.live_trial,
            self.queued,
        ];
        ids.sort_unstable();
        ids.dedup();
        let list = |v: &[i64]| v.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
        let bind = |dictionary: &str| format!("{{ dictionary = \"{dictionary}\", probability = 0.5 }}");
        let mut toml = format!(
            "[dictionaries.ids]\nvalues = [{}]\n\
             [dictionaries.doomed-experiment]\nvalues = [{}]\n\
             [dictionaries.commanded]\nvalues = [{}]\n\
             [dictionaries.live-experiment]\nvalues = [{}]\n\
             [dictionaries.live-trial]\nvalues = [{}]\n\
             [dictionaries.uuids]\nvalues = [\"{}\", \"{}\"]\n\
             [dictionaries.doomed-uuid]\nvalues = [\"{}\"]\n\
             [dictionaries.files]\nvalues = [\"state.json\"]\n\
             [dictionaries.names]\nvalues = [\"policy\"]\n\
             [dictionaries.versions]\nvalues = [\"1\", \"2\", \"latest\", \"tag:best\"]\n\
             [dictionaries.tags]\nvalues = [\"best\"]\n\n\
             [parameters]\n\"query.wait_ms\" = 0\n\"query.timeout_ms\" = 0\n",
            list(&ids),
            doomed.experiment,
            list(&[kept.experiment, doomed.experiment, self.queued]),
            self.live_experiment,
            self.live_trial,
            kept.checkpoint,
            doomed.checkpoint,
            doomed.checkpoint,
        );
        for (parameter, dictionary) in [
            ("path.id", "ids"),
            ("query.experiment_id", "ids"),
            ("query.trial_id", "ids"),
            ("path.uuid", "uuids"),
            ("path.path", "files"),
            ("path.name", "names"),
            ("path.version", "versions"),
            ("path.tag", "tags"),
        ] {
            toml += &format!("\"{parameter}\" = {}\n", bind(dictionary));
        }
        // Each operation by its name: `include-path` with `include-method` would select every
        // operation that matches either of them.
        for (operation, parameter, dictionary) in [
            ("DELETE /api/v1/experiments/{id}", "path.id", "doomed-experiment"),
            ("POST /api/v1/experiments/{id}/checkpoint-policy", "path.id", "doomed-experiment"),
            ("DELETE /api/v1/checkpoints/{uuid}", "path.uuid", "doomed-uuid"),
            ("POST /api/v1/experiments/{id}/{command}", "path.id", "commanded"),
            ("GET /api/v1/experiments/{id}/context", "path.id", "live-experiment"),
            ("POST /api/v1/trials/{id}/metrics", "path.id", "live-trial"),
            ("GET /api/v1/trials/{id}/signals", "path.id", "live-trial"),
            ("POST /api/v1/trials/{id}/checkpoints", "path.id", "live-trial"),
        ] {
            toml +=
                &format!("\n[[operations]]\ninclude-name = \"{operation}\"\nparameters = {{ \"{parameter}\" = {} }}\n", bind(dictionary));
        }
        toml
    }
}

async fn finished_experiment(cluster: &Cluster) -> Finished {
    let e = cluster.create(&config("{name: single, metric: validation_loss}", "  checkpoint: true", "")).await;
    let e = cluster.wait_terminal(e.id, Duration::from_secs(60)).await;
    assert_eq!(e.state, "COMPLETED", "{}", cluster.all_logs(e.id).await);
    let trial = cluster.trials(e.id).await.remove(0);
    assert!(!trial.summaries.is_empty(), "the trial reported metrics");
    let checkpoint = trial.latest_checkpoint.clone().expect("the trial saved a checkpoint");
    let (status, body) = cluster.get_raw(&format!("/api/v1/checkpoints/{checkpoint}/files/state.json")).await;
    assert_eq!(status, 200, "{body}");
    Finished { experiment: e.id, trial: trial.id, checkpoint }
}

/// An experiment of one trial that runs `script` with `/bin/sh`, `$0` being `arg`.
async fn shell_experiment(cluster: &Cluster, script: &str, arg: &Path) -> Experiment {
    let entrypoint = json!(["/bin/sh", "-c", script, arg]);
    cluster
        .create(&format!("name: fuzz\nentrypoint: {entrypoint}\nhyperparameters: {{x: 1}}\nsearcher: {{name: single, metric: loss}}\n"))
        .await
}

/// How to run schemathesis against this master.
struct Schemathesis<'a> {
    /// `DROVER_TEST_SCHEMATHESIS`: the program and its first arguments.
    command: &'a str,
    config_file: &'a Path,
    schema: String,
    token: &'a str,
    /// The working directory, for anything schemathesis writes.
    dir: &'a Path,
    deadline: tokio::time::Instant,
}

impl Schemathesis<'_> {
    /// One `schemathesis run` with `extra` arguments. Prints the report. Err says what failed.
    async fn run(&self, what: &str, extra: &[&str]) -> Result<(), String> {
        let mut words = self.command.split_whitespace();
        let program = words.next().ok_or("DROVER_TEST_SCHEMATHESIS is set but names no command")?;
        let mut args: Vec<String> = words.map(String::from).collect();
        args.extend(["--config-file".into(), self.config_file.display().to_string(), "run".into(), self.schema.clone()]);
        args.extend(["--checks", &CHECKS.replace(char::is_whitespace, "")].map(String::from));
        args.extend(["--max-examples", &EXAMPLES_PER_OPERATION.to_string(), "--seed", SEED].map(String::from));
        args.extend(["--workers", "1", "--request-timeout", "10", "--continue-on-failure"].map(String::from));
        args.extend(["--generation-database", "none", "--no-color"].map(String::from));
        args.extend(extra.iter().map(|a| a.to_string()));
        eprintln!("schemathesis on {what}: {program} {} -H 'Authorization: Bearer <the live trial's token>'", args.join(" "));
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(&args).args(["-H", &format!("Authorization: Bearer {}", self.token)]).current_dir(self.dir).kill_on_drop(true);
        let started = Instant::now();
        let output = match tokio::time::timeout_at(self.deadline, cmd.output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(e)) => return Err(format!("cannot run `{}` (DROVER_TEST_SCHEMATHESIS): {e}", self.command)),
            Err(_) => return Err(format!("schemathesis on {what} was still running when the {SCHEMATHESIS_BUDGET:?} budget ran out")),
        };
        let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        eprintln!("{report}\nschemathesis on {what} took {:.1?}", started.elapsed());
        if !output.status.success() {
            return Err(format!("schemathesis on {what} failed ({})", output.status));
        }
        if !report.contains(" generated") {
            return Err(format!("schemathesis on {what} generated no test cases"));
        }
        Ok(())
    }
}
