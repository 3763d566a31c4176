"""In-process latency of ``ServingModel.recommend`` (what one /recommend costs the server, minus HTTP).

    python -m benchmarks.bench_recommend --bundle artifacts/ml-100k/bundles/teacher \
        --bundle artifacts/ml-100k/bundles/compressed [--users 300] [--reps 3]

Each bundle is loaded the way serving loads it (known users' tower vectors precomputed, one
thread), every sampled user is asked once to warm the per-user caches, then ``--reps`` passes over
the same users are timed. Prints p50 / p99 per bundle; nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from compression.variants import time_requests
from recsys.bundle.load import load_serving_model


def time_bundle(path: str, n_users: int, reps: int) -> dict[str, float]:
    model = load_serving_model(path)
    users = list(model.content.users.ids[:n_users])
    ms = time_requests(model, users * reps, warm=users)
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "n": len(ms)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_recommend", description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", action="append", required=True, help="bundle directory or root (repeatable)")
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    for path in args.bundle:
        result = time_bundle(path, args.users, args.reps)
        sys.stdout.write(f"{path}: p50 {result['p50_ms']:.3f} ms, p99 {result['p99_ms']:.3f} ms (n={result['n']})\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
