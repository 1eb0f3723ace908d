//! The `drover` binary as a user runs it.

use std::path::Path;
use std::process::{Command, Output};

const DROVER: &str = env!("CARGO_BIN_EXE_drover");

fn drover(args: &[&str], data_dir: &Path) -> Output {
    Command::new(DROVER)
        .args(args)
        .env("DROVER_DATA_DIR", data_dir)
        // Nothing listens here: a command that must fail before contacting a master proves it.
        .env("DROVER_MASTER", "http://127.0.0.1:9")
        .env_remove("RUST_LOG")
        .output()
        .expect("run drover")
}

/// A trial in Python that talks to the master over plain REST, as any language can: it reads
/// its hyperparameters from the environment and reports one validation metric.
const TRIAL_PY: &str = r#"
import json, os, urllib.request
hp = json.loads(os.environ["DROVER_HPARAMS"])
acc = 1.0 - (hp["x"] - 0.7) ** 2
print("x", hp["x"], "acc", acc, flush=True)
body = json.dumps({"points": [{"group": "validation", "step": 1, "metrics": {"accuracy": acc}}]}).encode()
req = urllib.request.Request(
    os.environ["DROVER_MASTER"] + "/api/v1/trials/" + os.environ["DROVER_TRIAL_ID"] + "/metrics",
    data=body, method="POST",
    headers={"Content-Type": "application/json", "Authorization": "Bearer " + os.environ["DROVER_TRIAL_TOKEN"]})
urllib.request.urlopen(req).read()
"#;

const CONFIG: &str = "\
name: cli-run
entrypoint: python3 trial.py
hyperparameters:
  x: {type: double, minval: 0, maxval: 1}
searcher:
  name: random
  metric: accuracy
  smaller_is_better: false
  max_trials: 4
  max_concurrent_trials: 2
";

#[test]
fn run_prints_a_json_summary_with_the_best_trial() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("trial.py"), TRIAL_PY).unwrap();
    std::fs::write(ctx.join("search.yaml"), CONFIG).unwrap();
    let data = dir.path().join("data");
    let out = drover(&["run", ctx.join("search.yaml").to_str().unwrap(), "--output", "json", "--cpu-slots", "2"], &data);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    assert_eq!(summary["state"], "COMPLETED");
    assert_eq!(summary["trial_counts"]["COMPLETED"], 4);
    assert_eq!(summary["trials"].as_array().unwrap().len(), 4);
    let best = &summary["best_trial"];
    let x = best["hparams"]["x"].as_f64().unwrap();
    let value = best["best_value"].as_f64().unwrap();
    assert!((value - (1.0 - (x - 0.7f64).powi(2))).abs() < 1e-9, "{best}");
    for t in summary["trials"].as_array().unwrap() {
        assert!(t["best_value"].as_f64().unwrap() <= value, "the best trial comes first and is the best");
    }
    assert!(data.join("drover.db").exists(), "run keeps its records in the data directory");
}

#[test]
fn a_broken_config_names_its_line_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.yaml");
    // An unclosed flow mapping on line 8: a syntax error, not a type error.
    std::fs::write(&file, CONFIG.replace("  metric: accuracy\n", "  metric: accuracy\n  extra: {a: 1\n")).unwrap();
    let data = dir.path().join("data");
    for args in [vec!["run", file.to_str().unwrap()], vec!["experiment", "create", file.to_str().unwrap()]] {
        let out = drover(&args, &data);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(stderr.contains("broken.yaml:"), "{args:?}: the error names the file: {stderr}");
        let line: usize =
            stderr.split("broken.yaml:").nth(1).and_then(|rest| rest.split(':').next()).and_then(|n| n.parse().ok()).unwrap_or(0);
        assert!((8..=10).contains(&line), "{args:?}: the error names the line: {stderr}");
        assert!(!stderr.contains("cannot reach"), "{args:?}: nothing was contacted: {stderr}");
    }
    assert!(!data.exists(), "no cluster was started, so no data directory was made");

    let file = dir.path().join("typo.yaml");
    std::fs::write(&file, CONFIG.replace("max_concurrent_trials", "max_concurent_trials")).unwrap();
    let out = drover(&["run", file.to_str().unwrap()], &data);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("did you mean `max_concurrent_trials`"), "{stderr}");
    assert!(stderr.contains("typo.yaml:10:"), "{stderr}");
}

#[test]
fn list_commands_speak_json_and_report_an_unreachable_master() {
    let dir = tempfile::tempdir().unwrap();
    let out = drover(&["experiment", "list", "--output", "json"], dir.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the master at http://127.0.0.1:9"));
}

/// A PBT member in Python over plain REST: continues the weight `w` from the checkpoint it was
/// given, reports a validation per epoch until the searcher says stop, then saves and registers
/// a checkpoint.
const PBT_TRIAL_PY: &str = r#"
import json, os, uuid, urllib.request
env = os.environ
hp = json.loads(env["DROVER_HPARAMS"])
def call(path, body=None):
    req = urllib.request.Request(env["DROVER_MASTER"] + path, data=None if body is None else json.dumps(body).encode(),
        method="GET" if body is None else "POST",
        headers={"Content-Type": "application/json", "Authorization": "Bearer " + env["DROVER_TRIAL_TOKEN"]})
    return json.loads(urllib.request.urlopen(req).read() or b"null")
root, trial = env["DROVER_CHECKPOINT_DIR"], env["DROVER_TRIAL_ID"]
epoch, w = 0, 0.0
if env.get("DROVER_LATEST_CHECKPOINT"):
    state = json.load(open(os.path.join(root, env["DROVER_LATEST_CHECKPOINT"], "state.json")))
    epoch, w = state["epoch"], state["w"]
while epoch < 50:
    epoch += 1
    w += hp["x"] * (1 - w)
    r = call("/api/v1/trials/" + trial + "/metrics",
             {"points": [{"group": "validation", "step": epoch, "metrics": {"loss": (1 - w) ** 2, "epochs": epoch}}]})
    if r["stop_requested"]:
        break
name = str(uuid.uuid4())
os.makedirs(os.path.join(root, name))
data = json.dumps({"epoch": epoch, "w": w})
open(os.path.join(root, name, "state.json"), "w").write(data)
call("/api/v1/trials/" + trial + "/checkpoints", {"uuid": name, "step": epoch, "resources": {"state.json": len(data)}})
"#;

#[test]
fn a_pbt_run_names_each_members_parent() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("trial.py"), PBT_TRIAL_PY).unwrap();
    let config = "\
name: cli-pbt
entrypoint: python3 trial.py
hyperparameters:
  x: {type: double, minval: 0.01, maxval: 0.5}
searcher:
  name: pbt
  metric: loss
  time_metric: epochs
  population_size: 3
  generation_length: 2
  max_generations: 3
  max_concurrent_trials: 3
";
    std::fs::write(ctx.join("pbt.yaml"), config).unwrap();
    let data = dir.path().join("data");
    let out = drover(&["run", ctx.join("pbt.yaml").to_str().unwrap(), "--output", "json", "--cpu-slots", "3"], &data);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    assert_eq!(summary["trial_counts"]["COMPLETED"], 9, "{summary}");
    let trials = summary["trials"].as_array().unwrap();
    let generation = |t: &serde_json::Value| t["generation"].as_u64().unwrap();
    for t in trials {
        let parent = &t["parent_trial_id"];
        if generation(t) == 0 {
            assert!(parent.is_null(), "{t}");
        } else {
            let p = trials.iter().find(|o| o["trial_id"] == *parent).unwrap_or_else(|| panic!("{t} names no parent"));
            assert_eq!(generation(p) + 1, generation(t));
        }
    }
    let ancestry = summary["pbt"]["best_ancestry"].as_array().unwrap();
    assert_eq!(ancestry.last(), Some(&summary["best_trial"]["trial_id"]));
    assert_eq!(summary["pbt"]["ended_because"], "all 3 generations ran");
    assert!(data.join("checkpoints/pbt/experiment-1/members.csv").is_file());
}

#[test]
fn preview_search_prints_the_plan_without_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("asha.yaml");
    std::fs::write(
        &file,
        "name: p\nentrypoint: x\nhyperparameters:\n  lr: {type: log, minval: -4, maxval: -1}\nsearcher: {name: async_halving, metric: loss, max_trials: 27, num_rungs: 3, divisor: 3, time_metric: epochs, max_time: 9}\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let out = drover(&["preview-search", file.to_str().unwrap(), "--output", "json"], &data);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reached: Vec<u64> = plan["brackets"][0]["rungs"].as_array().unwrap().iter().map(|r| r["reached"].as_u64().unwrap()).collect();
    assert_eq!(reached[0], 27);
    assert!(reached[1] < 27 && reached[2] <= reached[1], "{plan}");
    assert!(!data.exists(), "a preview starts no cluster");

    std::fs::write(&file, "name: p\nentrypoint: x\nsearcher: {name: pbt, metric: loss, population_size: 4}\n").unwrap();
    let out = drover(&["preview-search", file.to_str().unwrap()], &data);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("asha.yaml"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A trial that saves two checkpoints over plain REST (files into DROVER_CHECKPOINT_DIR, then
/// registration), validating each.
const CHECKPOINT_TRIAL_PY: &str = r#"
import json, os, uuid, urllib.request
env = os.environ
def call(path, body):
    req = urllib.request.Request(env["DROVER_MASTER"] + path, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": "Bearer " + env["DROVER_TRIAL_TOKEN"]})
    return urllib.request.urlopen(req).read()
trial = env["DROVER_TRIAL_ID"]
for step in (1, 2):
    name = str(uuid.uuid4())
    os.makedirs(os.path.join(env["DROVER_CHECKPOINT_DIR"], name, "sub"))
    files = {"weights.bin": b"w" * (1000 * step), "sub/state.json": json.dumps({"step": step}).encode()}
    for rel, data in files.items():
        open(os.path.join(env["DROVER_CHECKPOINT_DIR"], name, rel), "wb").write(data)
    call("/api/v1/trials/" + trial + "/metrics", {"points": [{"group": "validation", "step": step, "metrics": {"loss": 1.0 / step}}]})
    call("/api/v1/trials/" + trial + "/checkpoints", {"uuid": name, "step": step, "resources": {k: len(v) for k, v in files.items()}})
"#;

#[test]
fn checkpoint_commands_list_download_pin_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("trial.py"), CHECKPOINT_TRIAL_PY).unwrap();
    // Keep both checkpoints when the experiment ends, so there is something to delete by hand.
    let config =
        "name: ck\nentrypoint: python3 trial.py\nsearcher: {name: single, metric: loss}\ncheckpoint_storage: {save_trial_latest: 2}\n";
    std::fs::write(ctx.join("ck.yaml"), config).unwrap();
    let data = dir.path().join("data");
    let up = Up::start(&data);
    let run = |args: &[&str]| up.run(args);
    let out = run(&["experiment", "create", ctx.join("ck.yaml").to_str().unwrap(), "--follow", "--output", "json"]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let list = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["checkpoint", "list", "--output", "json"];
        args.extend_from_slice(extra);
        let out = run(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let listed = list(&["--experiment", "1"]);
    let checkpoints = listed.as_array().unwrap();
    assert_eq!(checkpoints.len(), 2, "{listed}");
    assert_eq!(list(&["--trial", "1"]), listed);
    let first = checkpoints.iter().find(|c| c["step"] == 1).unwrap()["uuid"].as_str().unwrap().to_string();

    let dest = dir.path().join("restored");
    let out = run(&["checkpoint", "download", &first, dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(dest.join("weights.bin")).unwrap(), vec![b'w'; 1000]);
    assert_eq!(std::fs::read_to_string(dest.join("sub/state.json")).unwrap(), "{\"step\": 1}");

    assert!(run(&["checkpoint", "pin", &first]).status.success());
    let refused = run(&["checkpoint", "delete", &first]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("pinned"), "{}", String::from_utf8_lossy(&refused.stderr));
    assert!(run(&["checkpoint", "unpin", &first]).status.success());
    assert!(run(&["checkpoint", "delete", &first]).status.success());
    assert!(!data.join("checkpoints").join(&first).exists(), "its files are gone");
    assert_eq!(list(&["--experiment", "1"]).as_array().unwrap().len(), 1);
    let missing = run(&["checkpoint", "describe", &first]);
    assert!(!missing.status.success());

    // Garbage collection by hand: keep nothing.
    let out = run(&["checkpoint", "gc", "1", "--save-trial-best", "0", "--save-trial-latest", "0", "--output", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["deleted"].as_array().unwrap().len(), 1);
    assert!(list(&["--experiment", "1"]).as_array().unwrap().is_empty());
}

/// `drover up` on a free port, waited for; killed when dropped.
struct Up {
    child: std::process::Child,
    master: String,
}

impl Up {
    fn start(data: &Path) -> Up {
        Up::start_with_env(data, &[])
    }

    fn start_with_env(data: &Path, env: &[(&str, &str)]) -> Up {
        Up::start_with(data, env, &[])
    }

    fn start_with(data: &Path, env: &[(&str, &str)], args: &[&str]) -> Up {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(DROVER)
            .args(["up", "--port", &port.to_string(), "--cpu-slots", "1"])
            .args(args)
            .envs(env.iter().copied())
            .env("DROVER_DATA_DIR", data)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let up = Up { child, master: format!("http://127.0.0.1:{port}") };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !up.run(&["agent", "list", "--output", "json"]).status.success() {
            assert!(std::time::Instant::now() < deadline, "drover up never answered");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        up
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(DROVER).args(args).env("DROVER_MASTER", &self.master).output().unwrap()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn param_commands_push_query_tag_get_and_collect() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(&dir.path().join("data"));
    for (v, rate) in [(1, 0.4), (2, 0.9), (3, 0.7)] {
        let file = dir.path().join(format!("w{v}.bin"));
        std::fs::write(&file, vec![v as u8; 1000 * v]).unwrap();
        let meta = format!("{{\"win_rate\": {rate}}}");
        let pushed = up.json(&["param", "push", "policy", &v.to_string(), file.to_str().unwrap(), "--metadata", &meta, "--output", "json"]);
        assert_eq!(pushed[0]["version"], v);
    }
    let names = up.json(&["param", "list", "--output", "json"]);
    assert_eq!(names[0]["name"], "policy");
    assert_eq!(names[0]["versions"], 3);
    let best = up.json(&["param", "versions", "policy", "--filter", "win_rate > 0.5", "--sort", "-win_rate", "--output", "json"]);
    let picked: Vec<i64> = best.as_array().unwrap().iter().map(|v| v["version"].as_i64().unwrap()).collect();
    assert_eq!(picked, vec![2, 3]);
    let bad = up.run(&["param", "versions", "policy", "--filter", "win_rate >"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("column"), "{}", String::from_utf8_lossy(&bad.stderr));

    assert!(up.run(&["param", "tag", "policy", "champion", "1"]).status.success());
    let out = dir.path().join("got.bin");
    let got = up.json(&["param", "get", "policy", "tag:champion", out.to_str().unwrap(), "--output", "json"]);
    assert_eq!(got["version"], 1);
    assert_eq!(std::fs::read(&out).unwrap(), vec![1u8; 1000]);
    let got = up.json(&["param", "get", "policy", "latest", out.to_str().unwrap(), "--output", "json"]);
    assert_eq!(got["version"], 3);

    let gc = up.json(&["param", "gc", "policy", "--keep-untagged", "1", "--output", "json"]);
    assert_eq!(gc["deleted"], serde_json::json!([2]), "the tagged version and the newest stay: {gc}");
    let left: Vec<i64> = up
        .json(&["param", "versions", "policy", "--output", "json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect();
    assert_eq!(left, vec![1, 3]);
    let missing = up.run(&["param", "get", "policy", "2", out.to_str().unwrap()]);
    assert!(!missing.status.success());
}

/// One master per data directory: a second `master` or `up` on it fails at once naming the
/// holder, and `run` submits its experiment to the master that holds the directory.
#[test]
fn a_data_directory_has_one_master_and_run_submits_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let up = Up::start(&data);
    let pid = up.child.id().to_string();
    for args in [&["master", "--port", "0"][..], &["up", "--port", "0"][..]] {
        let started = std::time::Instant::now();
        let out = drover(args, &data);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started beside another master");
        assert!(err.contains("in use") && err.contains(&pid) && err.contains(&up.master), "{args:?}: {err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "{args:?} did not fail at once");
    }
    std::fs::write(dir.path().join("trial.py"), TRIAL_PY).unwrap();
    std::fs::write(dir.path().join("exp.yaml"), CONFIG).unwrap();
    let out = Command::new(DROVER)
        .args(["run", "--output", "json"])
        .arg(dir.path().join("exp.yaml"))
        .env("DROVER_DATA_DIR", &data)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("submitting there"), "{err}");
    let listed = up.json(&["experiment", "list", "--output", "json"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "the run's experiment is the up master's: {listed}");
    assert_eq!(listed[0]["state"], "COMPLETED");
}

/// An agent needs the join token: without it `drover agent` says where to find it; with a
/// wrong one the master refuses it and the agent exits instead of retrying forever.
#[test]
fn an_agent_without_the_join_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(&dir.path().join("data"));
    let out = Command::new(DROVER).args(["agent", "--master", &up.master]).env_remove("DROVER_JOIN_TOKEN").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("join token"), "{}", String::from_utf8_lossy(&out.stderr));
    let mut child = Command::new(DROVER)
        .args(["agent", "--master", &up.master, "--join-token", "wrong", "--id", "intruder"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "an agent with a wrong join token kept running");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(!status.success());
    let agents = up.json(&["agent", "list", "--output", "json"]);
    assert!(agents.as_array().unwrap().iter().all(|a| a["id"] != "intruder"), "{agents}");
}

/// SIGTERM stops a master promptly even while a request is waiting on it.
#[test]
fn sigterm_stops_the_master_while_a_request_waits() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(&dir.path().join("data"));
    // A read that waits up to a minute for a parameter version nobody pushes.
    let addr = up.master.trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    std::io::Write::write_all(
        &mut stream,
        format!("GET /api/v1/params/nobody/versions/latest?wait_ms=60000 HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let waiting = std::thread::spawn(move || {
        let mut answer = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stream, &mut answer);
        answer
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(!waiting.is_finished(), "the read should still be waiting when SIGTERM comes");
    nix_kill(up.child.id());
    let started = std::time::Instant::now();
    let mut up = up;
    loop {
        if up.child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(15), "the master ignored SIGTERM for 15 s while a request waited");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = waiting.join();
}

fn nix_kill(pid: u32) {
    let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(status.success());
}

/// The join secret is the agent's: a trial never finds it in its environment, even when the
/// agent's own environment holds it.
#[test]
fn trials_never_see_the_join_secret() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start_with_env(&dir.path().join("data"), &[("DROVER_JOIN_TOKEN", "secret-in-the-agents-environment")]);
    let config = dir.path().join("env.yaml");
    std::fs::write(
        &config,
        "name: env\nentrypoint: \"env | grep -c secret-in-the-agents-environment || echo no-join-secret-here\"\nsearcher: {name: single, metric: m}\n",
    )
    .unwrap();
    let created = up.run(&["experiment", "create", "-f", config.to_str().unwrap()]);
    assert!(
        created.status.success() || String::from_utf8_lossy(&created.stdout).contains("COMPLETED"),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let logs = up.run(&["experiment", "logs", "1"]);
    let text = String::from_utf8_lossy(&logs.stdout);
    assert!(text.contains("no-join-secret-here"), "{text}");
}

/// Pools from a file, the agent of `up` in the first; `job list` shows the queue with reasons
/// and `job update` changes a job's priority, both with `--output json`.
#[test]
fn jobs_list_the_queue_and_take_new_priorities() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad-pools.yaml");
    std::fs::write(&bad, "- {name: batch, preemption_timeout_s: 999999}\n").unwrap();
    let out = drover(&["master", "--port", "0", "--pools", bad.to_str().unwrap()], &dir.path().join("bad"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("pools[0].preemption_timeout_s"), "{err}");

    let pools = dir.path().join("pools.yaml");
    std::fs::write(&pools, "- {name: batch}\n- {name: gpus, preemption: true}\n").unwrap();
    let up = Up::start_with(&dir.path().join("data"), &[], &["--pools", pools.to_str().unwrap()]);
    let agents = up.json(&["agent", "list", "--output", "json"]);
    assert_eq!(agents[0]["pool"], "batch", "{agents}");
    // In a directory of its own: it is the context, uploaded with the experiment.
    std::fs::create_dir(dir.path().join("exp")).unwrap();
    let config = dir.path().join("exp/sleep.yaml");
    let yaml = "name: sleepy\nentrypoint: sleep 30\nhyperparameters: {x: 1}\nsearcher: {name: random, metric: m, max_trials: 2, max_concurrent_trials: 2}\nresources: {resource_pool: batch}\n";
    std::fs::write(&config, yaml).unwrap();
    let created = up.json(&["experiment", "create", config.to_str().unwrap(), "--output", "json"]);
    let id = created["id"].as_i64().unwrap().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let jobs = loop {
        let jobs = up.json(&["job", "list", "--output", "json"]);
        if jobs[0]["running"] == 1 && jobs[0]["queued"].as_array().is_some_and(|q| q.len() == 1 && q[0]["position"] == 0) {
            break jobs;
        }
        assert!(std::time::Instant::now() < deadline, "never one running and one queued: {jobs}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!((jobs[0]["resource_pool"].as_str(), jobs[0]["priority"].as_i64()), (Some("batch"), Some(42)), "{jobs}");
    assert!(jobs[0]["queued"][0]["reason"].as_str().unwrap().contains("free slots"), "{jobs}");
    let table = up.run(&["job", "list"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("Waits because"), "{}", String::from_utf8_lossy(&table.stdout));
    let updated = up.json(&["job", "update", &id, "--priority", "7", "--weight", "3", "--output", "json"]);
    assert_eq!((updated[0]["priority"].as_i64(), updated[0]["weight"].as_f64()), (Some(7), Some(3.0)), "{updated}");
    let refused = up.run(&["job", "update", &id, "--priority", "100"]);
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("priority"));
    // A pool no agent has joined accepts the experiment; it says why it waits.
    std::fs::write(&config, yaml.replace("resource_pool: batch", "resource_pool: gpus")).unwrap();
    up.json(&["experiment", "create", config.to_str().unwrap(), "--output", "json"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let jobs = up.json(&["job", "list", "--output", "json"]);
        if jobs[1]["queued"][0]["reason"].as_str().is_some_and(|r| r.contains("no agent")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{jobs}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    for job in [id.as_str(), &(id.parse::<i64>().unwrap() + 1).to_string()] {
        assert!(up.run(&["experiment", "kill", job]).status.success());
    }
}
