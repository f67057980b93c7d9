#!/usr/bin/env python3
"""The parse + dedupe phases of the Python baseline (baseline.py), on one ib_calls export.

Imports baseline.py from --baseline and uses its own read options and dedupe function, so the
figures are the baseline's, not a re-implementation. Prints one JSON object: best and median of
--reps repetitions (parse, dedupe, total) and the process's peak RSS.
"""
import argparse
import json
import resource
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", required=True, help="folder holding baseline.py")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("file")
    args = ap.parse_args()
    sys.path.insert(0, args.baseline)
    import baseline  # noqa: E402  (the reference pipeline)
    import pandas as pd

    common = dict(encoding="utf-8-sig", keep_default_na=False, na_values=[""],
                  date_format=baseline.TS_FORMAT)
    runs = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        ib = pd.read_csv(args.file, dtype=baseline.IB_DTYPES, parse_dates=baseline.IB_DATES, **common)
        t1 = time.perf_counter()
        unique = baseline.dedupe(ib, ["call_id"])
        t2 = time.perf_counter()
        runs.append((t2 - t0, t1 - t0, t2 - t1, len(ib), len(unique)))
        del ib, unique
    runs.sort()
    best = runs[0]
    print(json.dumps({
        "engine": "pandas-baseline", "file": args.file, "rows_total": best[3], "rows_unique": best[4],
        "reps": args.reps, "best_s": best[0], "median_s": runs[len(runs) // 2][0],
        "parse_s": best[1], "dedupe_s": best[2], "rows_per_s": best[3] / best[0],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()
