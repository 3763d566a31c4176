"""Training at scale: wall time and peak RSS of `python -m recsys.train` (towers) on a dataset.

    python -m benchmarks.bench_train --dataset synthetic-1m --out reports/bench/train -- --epochs 2 ...

Extra arguments after ``--`` go to recsys.train. Writes train_<dataset>.json/.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)


def run_training(dataset: str, model_dir: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "recsys.train", "--dataset", dataset, "--out", str(model_dir), *extra]
    started = time.perf_counter()
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    config = json.loads((model_dir / "config.json").read_text())
    return {"dataset": dataset, "command": " ".join(cmd[1:]), "wall_seconds": round(seconds, 1),
            "peak_rss_mb": round(peak_kb / 1024, 1), "tower_result": {
                k: v for k, v in config.get("tower_result", {}).items() if k != "curve"},
            "curve": config.get("tower_result", {}).get("curve", [])}


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="synthetic-1m")
    parser.add_argument("--model-dir", default="artifacts/bench/train-model")
    parser.add_argument("--out", default="reports/bench/train")
    parser.add_argument("extra", nargs="*", help="arguments for recsys.train (after --)")
    args = parser.parse_args(argv)
    result = run_training(args.dataset, Path(args.model_dir), args.extra)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"train_{args.dataset}.json").write_text(json.dumps(result, indent=2))
    lines = [f"# Training benchmark: {args.dataset}", "", f"`{result['command']}`", "",
             "| wall s | peak RSS MB | best epoch | valid NDCG@10 |", "|---|---|---|---|",
             f"| {result['wall_seconds']} | {result['peak_rss_mb']} | {result['tower_result'].get('best_epoch')} | "
             f"{result['tower_result'].get('valid_NDCG@10', float('nan')):.4f} |"]
    (out / f"train_{args.dataset}.md").write_text("\n".join(lines) + "\n")
    log.info("training %s: %.0f s, peak RSS %.0f MB", args.dataset, result["wall_seconds"], result["peak_rss_mb"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
