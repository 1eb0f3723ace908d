"""Ray Tune peer of drover-bench's `throughput` benchmark (and the Ray side of `footprint`).

Throughput mode: N trials of a function trainable that computes the same loss curve as
drover-trivial-trial (x ~ U(0, 1), loss = (x - 0.3)^2 + step * 0.001 at steps 1..10) and reports
each step with `tune.report`; CPU only, `max_concurrent_trials` = slots, each trial 1 CPU,
minimal logging, results under `--storage`; `--reuse-actors` lets Tune run later trials in
the actors of earlier ones instead of a fresh actor (worker process) per trial, its default. `ray.init` is timed apart from `Tuner.fit`: the
benchmark compares `fit` with drover's create-to-COMPLETED time on an already running cluster.

Footprint mode (`--footprint`): `ray.init` only, then after `--idle` seconds the summed VmRSS of
this driver and every process it started (GCS, raylet, workers, ...).

Prints one JSON object as the last line of stdout. Run by drover-bench from its own venv.
"""

import argparse
import json
import logging
import os
import sys
import time

# Before importing ray: no usage reporting, no per-trial CSV/JSON/TensorBoard loggers.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

import ray  # noqa: E402
from ray import tune  # noqa: E402


def _report(metrics):
    report = getattr(tune, "report", None)
    if report is None:  # Ray versions where only ray.train.report exists
        from ray import train

        report = train.report
    report(metrics)


def trainable(config):
    base = (config["x"] - 0.3) ** 2
    for step in range(1, 11):
        _report({"loss": base + step * 0.001, "step": step})


def _run_config(storage):
    run_config = getattr(tune, "RunConfig", None)
    if run_config is None:
        from ray.train import RunConfig as run_config
    return run_config(storage_path=storage, name="drover-bench", verbose=0, log_to_file=False)


def _rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(root):
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--storage", default=None)
    p.add_argument("--footprint", action="store_true")
    p.add_argument("--idle", type=float, default=2.0)
    p.add_argument("--reuse-actors", action="store_true", help="TuneConfig(reuse_actors=True)")
    a = p.parse_args()

    t0 = time.perf_counter()
    ray.init(
        num_cpus=a.slots,
        num_gpus=0,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    init_s = time.perf_counter() - t0

    if a.footprint:
        time.sleep(a.idle)
        pids = _descendants(os.getpid())
        rss_kb = sum(_rss_kb(pid) for pid in pids)
        print(json.dumps({"ray_version": ray.__version__, "init_s": init_s, "processes": len(pids), "rss_kb": rss_kb}))
        ray.shutdown()
        return 0

    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space={"x": tune.uniform(0.0, 1.0)},
        tune_config=tune.TuneConfig(
            num_samples=a.trials,
            max_concurrent_trials=a.slots,
            metric="loss",
            mode="min",
            reuse_actors=a.reuse_actors,
        ),
        run_config=_run_config(a.storage),
    )
    t1 = time.perf_counter()
    results = tuner.fit()
    fit_s = time.perf_counter() - t1
    completed = sum(
        1 for r in results if r.error is None and r.metrics and r.metrics.get("training_iteration") == 10
    )
    print(
        json.dumps(
            {
                "ray_version": ray.__version__,
                "trials": a.trials,
                "completed": completed,
                "reuse_actors": a.reuse_actors,
                "init_s": init_s,
                "fit_s": fit_s,
            }
        )
    )
    ray.shutdown()
    return 0 if completed == a.trials else 1


if __name__ == "__main__":
    sys.exit(main())
