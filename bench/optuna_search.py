"""Optuna half of docs/benchmarks-search.md (the drover half is
crates/drover-search/examples/search_bench.rs); both run the same two measurements.

Setup, once:
    python3 -m venv ~/.cache/drover-bench/optuna-venv
    ~/.cache/drover-bench/optuna-venv/bin/pip install optuna
Run:
    ~/.cache/drover-bench/optuna-venv/bin/python bench/optuna_search.py [--runs 3] [--seeds 10]

1. Throughput: TPESampler() with Optuna 5 defaults (multivariate and constant liar on for a
   single objective) and RandomSampler, 1,000 trials one at a time through ask()/tell() over 5
   hyperparameters (2 uniform floats, 1 log float, 1 int 1..8, 1 categorical of 3), in memory
   and with SQLite storage (a fresh local file per run; SQLite's defaults, so every commit is
   synced to disk).
2. Quality: median (over seeds) best-found regret after 100 sequential evaluations on Branin
   (2-d) and Hartmann-6, TPESampler(seed=s) and RandomSampler(seed=s).

Prints a human-readable report and, last, one JSON line with every number.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time

import optuna

optuna.logging.set_verbosity(optuna.logging.WARNING)

BRANIN_MIN = 0.397887357729738
HARTMANN6_MIN = -3.322368011391339


def trivial(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -10, 10)
    y = trial.suggest_float("y", 0, 1)
    lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
    n = trial.suggest_int("n", 1, 8)
    opt = trial.suggest_categorical("opt", ["sgd", "adam", "rmsprop"])
    return (x - 1) ** 2 + y + abs(math.log10(lr) + 3) + n * 0.1 + {"adam": 0.0, "sgd": 1.0}.get(opt, 2.0)


def branin(trial: optuna.Trial) -> float:
    x1 = trial.suggest_float("x1", -5, 10)
    x2 = trial.suggest_float("x2", 0, 15)
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


ALPHA = [1.0, 1.2, 3.0, 3.2]
A = [[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14], [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]]
P = [
    [1312, 1696, 5569, 124, 8283, 5886],
    [2329, 4135, 8307, 3736, 1004, 9991],
    [2348, 1451, 3522, 2883, 3047, 6650],
    [4047, 8828, 8732, 5743, 1091, 381],
]


def hartmann6(trial: optuna.Trial) -> float:
    x = [trial.suggest_float(f"x{j}", 0, 1) for j in range(6)]
    return -sum(
        ALPHA[i] * math.exp(-sum(A[i][j] * (x[j] - P[i][j] * 1e-4) ** 2 for j in range(6))) for i in range(4)
    )


def sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(seed=seed) if name == "tpe" else optuna.samplers.RandomSampler(seed=seed)


def drive(name: str, seed: int, trials: int, objective, storage=None) -> tuple[list[float], list[float]]:
    """ask()/tell() one trial at a time; returns the values and the seconds each trial took."""
    study = optuna.create_study(sampler=sampler(name, seed), storage=storage)
    values, times = [], []
    started = time.perf_counter()
    for _ in range(trials):
        trial = study.ask()
        value = objective(trial)
        study.tell(trial, value)
        values.append(value)
        now = time.perf_counter()
        times.append(now - started)
        started = now
    return values, times


def quartiles(v: list[float]) -> tuple[float, float]:
    v = sorted(v)

    def at(q: float) -> float:
        pos = q * (len(v) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        return v[lo] + (v[hi] - v[lo]) * (pos - lo)

    return at(0.25), at(0.75)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--evals", type=int, default=100)
    ap.add_argument("--only", help="one throughput row, e.g. tpe/sqlite; skips the quality runs")
    args = ap.parse_args()
    report: dict[str, object] = {"optuna": optuna.__version__}

    print(f"== throughput: {args.trials} trials, 5 hyperparameters, one at a time, median of {args.runs} runs")
    print(f"{'method':<8} {'mode':<10} {'wall s':>9} {'cpu s':>9} {'trials/s':>9} {'ms/trial first/last 100':>24}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in ["tpe", "random"]:
            for mode in ["in-memory", "sqlite"]:
                if args.only and args.only != f"{name}/{mode}":
                    continue
                totals, cpus, first, last = [], [], [], []
                for run in range(args.runs):
                    storage = None
                    if mode == "sqlite":
                        path = os.path.join(tmp, f"{name}-{run}.db")
                        storage = optuna.storages.RDBStorage(f"sqlite:///{path}")
                    cpu = time.process_time()
                    _, times = drive(name, run, args.trials, trivial, storage)
                    cpus.append(time.process_time() - cpu)
                    totals.append(sum(times))
                    k = min(100, args.trials)
                    first.append(sum(times[:k]) / k * 1e3)
                    last.append(sum(times[-k:]) / k * 1e3)
                total, cpu = statistics.median(totals), statistics.median(cpus)
                f, l = statistics.median(first), statistics.median(last)
                print(f"{name:<8} {mode:<10} {total:>9.2f} {cpu:>9.2f} {args.trials / total:>9.1f} {f'{f:.2f} / {l:.2f}':>24}", flush=True)
                report[f"throughput.{name}.{mode}"] = {
                    "total_s": total,
                    "runs_s": totals,
                    "cpu_s": cpu,
                    "runs_cpu_s": cpus,
                    "trials_per_s": args.trials / total,
                    "ms_first100": f,
                    "ms_last100": l,
                }

    if not args.only:
        print(f"\n== quality: best-found regret after {args.evals} evaluations, {args.seeds} seeds (median [IQR])")
        for fname, objective, optimum in [("branin", branin, BRANIN_MIN), ("hartmann6", hartmann6, HARTMANN6_MIN)]:
            for name in ["tpe", "random"]:
                regrets = [min(drive(name, seed, args.evals, objective)[0]) - optimum for seed in range(args.seeds)]
                q1, q3 = quartiles(regrets)
                m = statistics.median(regrets)
                print(f"{fname:<10} {name:<7} median regret {m:.5f}  [{q1:.5f}, {q3:.5f}]", flush=True)
                report[f"quality.{fname}.{name}"] = {"median_regret": m, "q1": q1, "q3": q3, "regrets": regrets}

    print("\nJSON " + json.dumps(report))


if __name__ == "__main__":
    main()
