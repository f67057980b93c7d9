#!/usr/bin/env python3
"""The same work as Charlie's ingest parse, in polars or DuckDB, on one ib_calls export: a typed
parse (the baseline's column types: text, int64, and the three timestamps) and a keep-first dedup
by call_id. Prints one JSON object: best and median of --reps, unique rows, peak RSS.

The thread count is fixed before the engine loads (POLARS_MAX_THREADS; DuckDB's `threads`), so
run one process per engine and thread count.
"""
import argparse
import json
import os
import resource
import sys
import time

TIMESTAMPS = ["started_at", "answered_at", "ended_at"]
INTEGERS = ["duration_seconds", "wait_seconds"]
TEXT = ["call_id", "agent_id", "agent_name", "queue", "disposition", "caller_number", "notes"]


def polars_run(path):
    import polars as pl

    schema = {c: pl.Utf8 for c in TEXT}
    schema.update({c: pl.Int64 for c in INTEGERS})
    df = pl.read_csv(path, schema_overrides=schema, encoding="utf8")
    df = df.with_columns(
        [pl.col(c).str.strptime(pl.Datetime, "%Y-%m-%dT%H:%M:%S", strict=False) for c in TIMESTAMPS]
    )
    unique = df.unique(subset=["call_id"], keep="first", maintain_order=True)
    return len(df), len(unique)


def duckdb_run(path, con):
    types = {c: "VARCHAR" for c in TEXT}
    types.update({c: "BIGINT" for c in INTEGERS})
    types.update({c: "TIMESTAMP" for c in TIMESTAMPS})
    cols = "{" + ", ".join(f"'{k}': '{v}'" for k, v in types.items()) + "}"
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE t AS SELECT *, row_number() OVER () AS rn "
        f"FROM read_csv('{path}', header = true, types = {cols}, timestampformat = '%Y-%m-%dT%H:%M:%S')"
    )
    total = con.execute("SELECT count(*) FROM t").fetchone()[0]
    con.execute(
        "CREATE OR REPLACE TEMP TABLE u AS SELECT * FROM t "
        "QUALIFY row_number() OVER (PARTITION BY call_id ORDER BY rn) = 1"
    )
    unique = con.execute("SELECT count(*) FROM u").fetchone()[0]
    return total, unique


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", choices=["polars", "duckdb"], required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("file")
    args = ap.parse_args()
    if args.engine == "polars":
        os.environ["POLARS_MAX_THREADS"] = str(args.threads)
        import polars  # noqa: F401  (loads with that many threads)

        run = lambda: polars_run(args.file)  # noqa: E731
    else:
        import duckdb

        con = duckdb.connect()
        con.execute(f"SET threads = {args.threads}")
        run = lambda: duckdb_run(args.file, con)  # noqa: E731
    times = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        total, unique = run()
        times.append(time.perf_counter() - t0)
    times.sort()
    print(json.dumps({
        "engine": f"{args.engine}-{args.threads}t", "file": args.file, "rows_total": total,
        "rows_unique": unique, "reps": args.reps, "best_s": times[0],
        "median_s": times[len(times) // 2], "rows_per_s": total / times[0],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    sys.exit(main())
