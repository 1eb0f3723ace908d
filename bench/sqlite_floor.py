"""The Python half of drover-bench's `ingest` floor: the same rows as drover stores, bulk
inserted with the standard library's sqlite3 `executemany` in one transaction, into a table of
the same shape as drover's `metrics` (same primary key, WITHOUT ROWID, WAL, synchronous=NORMAL).
The rows are built before the clock starts. Prints one JSON object on stdout.
"""

import argparse
import json
import sqlite3
import time

NAMES = ("loss", "acc")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--db", required=True)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--points", type=int, default=100000)
    a = p.parse_args()

    conn = sqlite3.connect(a.db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(
        """CREATE TABLE metrics (
            trial_id BIGINT NOT NULL, grp TEXT NOT NULL, name TEXT NOT NULL, step BIGINT NOT NULL,
            value REAL NOT NULL, ts_ms BIGINT NOT NULL,
            PRIMARY KEY (trial_id, grp, name, step)
        ) WITHOUT ROWID"""
    )
    ts = int(time.time() * 1000)
    n = len(NAMES)
    rows = [
        (trial, "training", NAMES[i % n], i // n + 1, 1.0 / (i + 1), ts)
        for trial in range(1, a.trials + 1)
        for i in range(a.points)
    ]
    t0 = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?, ?)", rows)
    conn.execute("COMMIT")
    wall = time.perf_counter() - t0
    (count,) = conn.execute("SELECT COUNT(*) FROM metrics").fetchone()
    print(json.dumps({"rows": count, "wall_s": wall, "sqlite_version": sqlite3.sqlite_version}))


if __name__ == "__main__":
    main()
