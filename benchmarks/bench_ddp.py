"""Data-parallel tower training against one process: `torchrun --nproc_per_node=P -m recsys.train`
vs `python -m recsys.train`, same global batch, paired by seed.

    python -m benchmarks.bench_ddp --out reports/bench/ddp [--seeds 0 1 2] [--processes 2] [--epochs 3]

Each seed trains the towers once per arm (ml-100k, `--skip-ranker`); the table pairs the best
epoch's validation NDCG@10 (all users, the trainer's own `tower_result`) and the training
throughput, with a t interval of the mean paired difference. Speed on a shared 2-core box is what
it gave then: compare the arms within one run only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from scipy import stats

from loadtest.harness import free_port

log = logging.getLogger(__name__)


def train_command(arm: str, processes: int, common: list[str], seed: int, out: Path) -> list[str]:
    args = ["-m", "recsys.train", *common, "--seed", str(seed), "--out", str(out)]
    if arm == "single":
        return [sys.executable, *args]
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    return [torchrun, f"--nproc_per_node={processes}", "--master_addr", "127.0.0.1", "--master_port",
            str(free_port()), *args]


def tower_result(model_dir: Path) -> dict:
    result = json.loads((model_dir / "config.json").read_text())["tower_result"]
    examples = sum(epoch["examples"] for epoch in result["throughput"])
    seconds = sum(epoch["train_seconds"] for epoch in result["throughput"])
    processes = result["throughput"][0]["processes"]
    return {"ndcg": result["valid_NDCG@10"], "examples_per_s": examples / seconds,
            "examples_per_s_per_process": examples / seconds / processes, "processes": processes}


def paired_interval(differences: list[float]) -> tuple[float, float, float]:
    mean = statistics.fmean(differences)
    if len(differences) < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf(0.975, len(differences) - 1) * statistics.stdev(differences) / len(differences) ** 0.5
    return mean, mean - half, mean + half


def markdown(record: dict) -> str:
    rows = record["rows"]
    mean, low, high = record["difference"]
    lines = ["# Data-parallel tower training: torchrun vs one process (ml-100k)", "",
             f"`{record['command']}`: towers only, global batch "
             f"{record['batch_size']}, {record['epochs']} epochs, seeds {record['seeds']}; {record['processes']} gloo "
             "ranks split each global batch and gather the in-batch negatives across ranks. Layer dropout draws "
             "masks per rank, so the arms match in distribution, not bit for bit (bit-level checks: "
             "tests/recsys/test_distributed.py). Shared 2-core machine: speed compares within this run only.", "",
             "| seed | valid NDCG@10, 1 process | valid NDCG@10, DDP | DDP − 1 | examples/s, 1 process | "
             "examples/s per process, DDP | examples/s total, DDP |", "|--:|--:|--:|--:|--:|--:|--:|"]
    for row in rows:
        single, ddp = row["single"], row["ddp"]
        difference = ddp["ndcg"] - single["ndcg"]
        lines.append(f"| {row['seed']} | {single['ndcg']:.4f} | {ddp['ndcg']:.4f} | {difference:+.4f} | "
                     f"{single['examples_per_s']:,.0f} | {ddp['examples_per_s_per_process']:,.0f} | "
                     f"{ddp['examples_per_s']:,.0f} |")
    speed = statistics.fmean(row["ddp"]["examples_per_s"] / row["single"]["examples_per_s"] for row in rows)
    lines += ["", f"Mean paired difference (DDP − 1 process) {mean:+.4f}, 95 % t interval [{low:+.4f}, {high:+.4f}] "
              f"over {len(rows)} seeds; total throughput DDP / 1 process {speed:.2f}×."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--data-dir", default="data")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    common = ["--dataset", "ml-100k", "--data-dir", args.data_dir, "--skip-ranker", "--epochs", str(args.epochs),
              "--patience", str(args.epochs), "--batch-size", str(args.batch_size)]
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # what torchrun sets per rank: the same for both arms
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as scratch:
        for seed in args.seeds:
            row = {"seed": seed}
            for arm in ("single", "ddp"):
                out = Path(scratch) / f"{arm}-{seed}"
                command = train_command(arm, args.processes, common, seed, out)
                log.info("seed %d, %s: %s", seed, arm, " ".join(command))
                subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
                row[arm] = tower_result(out)
            rows.append(row)
    record = {"command": " ".join(["python -m benchmarks.bench_ddp", *(argv or sys.argv[1:])]), "rows": rows,
              "seeds": args.seeds, "processes": args.processes, "epochs": args.epochs, "batch_size": args.batch_size,
              "difference": paired_interval([row["ddp"]["ndcg"] - row["single"]["ndcg"] for row in rows]),
              "examples_per_s_per_process": statistics.median(row["ddp"]["examples_per_s_per_process"]
                                                              for row in rows)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "README.md").write_text(markdown(record))
    log.info("wrote %s", out / "README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
