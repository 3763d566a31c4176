"""Training at scale: time, throughput and peak memory of `python -m recsys.train`.

One dataset:

    python -m benchmarks.bench_train --dataset synthetic-1m --out reports/bench/train -- --epochs 2 ...

The interaction ladder (1M items; 1M, 3M and 10M interactions, users growing with them), each
trained for a fixed number of tower steps plus a small ranker run, so the table shows how the
cost per example and the memory grow with the log, and what a full epoch would take:

    python -m benchmarks.bench_train --ladder --out reports/bench/train

Extra arguments after ``--`` go to recsys.train. Writes train_<name>.json/.md. Peak memory is
the whole process tree's RSS, sampled (`benchmarks.memory_profile`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

from benchmarks.memory_profile import profile

log = logging.getLogger(__name__)

LADDER = (1_000_000, 3_000_000, 10_000_000)
INTERACTIONS_PER_USER = 20  # the synthetic-1m preset's ratio
# Enough steps for a stable rate, few enough for the ladder to run in ~20 minutes here.
LADDER_ARGS = ["--dim", "64", "--hidden", "128", "--depth", "1", "--epochs", "1", "--batch-size", "1024",
               "--max-steps-per-epoch", "300", "--eval-users", "1000", "--ranker-examples", "retriever",
               "--ranker-max-users", "5000", "--ranker-positives-per-user", "5", "--ranker-epochs", "1",
               "--ranker-eval-users", "1000"]


def run_training(dataset_args: list[str], model_dir: Path, extra: list[str], log_path: Path) -> dict:
    command = [sys.executable, "-m", "recsys.train", *dataset_args, "--out", str(model_dir), *extra]
    profiled = profile(command, log_path)
    if profiled["returncode"] != 0:
        raise SystemExit(f"training failed (exit {profiled['returncode']}): see {log_path}")
    config = json.loads((model_dir / "config.json").read_text())
    towers = config.get("tower_result", {})
    first = (towers.get("throughput") or [{}])[0]
    ranker = config.get("ranker_result", {})
    result = {"command": " ".join(command[1:]), "wall_seconds": profiled["wall_seconds"],
              "peak_rss_mb": profiled["peak"]["rss_mb"], "peak_phase": profiled["peak"]["phase"],
              "tower_result": {k: v for k, v in towers.items() if k not in ("curve", "throughput")},
              "curve": towers.get("curve", [])}
    if "examples_per_s" in first:
        epoch_examples = first["examples"] / max(first["of_epoch"], 1e-9)
        result["towers"] = {"examples_per_s": first["examples_per_s"], "epoch_examples": round(epoch_examples),
                            "full_epoch_minutes": round(epoch_examples / first["examples_per_s"] / 60, 1)}
    if "examples_seconds" in ranker:  # kept or not, the ranker stage built its lists
        result["ranker"] = {"lists": ranker["examples"], "kept": ranker["kept"], "lists_per_s": round(
            ranker["examples"] / max(ranker["examples_seconds"], 1e-3), 1), "seconds": ranker["seconds"]}
    return result


def ladder_log(n_interactions: int, data_dir: Path, n_items: int | None = None):
    """A synthetic-1m-shaped log with ``n_interactions`` rows (and ``n_items`` items instead of
    1M, for a quick run), generated into ``data_dir`` once and reused while its config matches."""
    from recsys.data.synthetic import PRESETS, ensure_generated

    preset = PRESETS["synthetic-1m"]
    n_items = n_items or preset.n_items
    cfg = replace(preset, n_interactions=n_interactions, n_users=n_interactions // INTERACTIONS_PER_USER,
                  n_items=n_items, n_categories=min(preset.n_categories, n_items))
    return ensure_generated(cfg, data_dir / f"ladder-{n_items}-{n_interactions}")


def ladder_dataset(n_interactions: int, data_dir: Path, n_items: int | None = None) -> list[str]:
    """recsys.train's dataset flags for `ladder_log`'s log."""
    paths = ladder_log(n_interactions, data_dir, n_items)
    return ["--dataset", str(paths.interactions), "--items", str(paths.items)]


def ladder_markdown(rows: list[dict], n_items: int) -> str:
    lines = [f"# Training time against log size ({n_items:,} items)", "",
             f"Each run: `python -m recsys.train {' '.join(LADDER_ARGS)}` on a synthetic-1m-shaped log with "
             f"{INTERACTIONS_PER_USER} interactions per user. Towers: examples/s over the 300 timed steps and the "
             "full epoch it implies; ranker: candidate lists (with features) built per second from an IVF search. "
             "Peak: RSS of the process tree, sampled.", "",
             "| interactions | users | tower examples/s | full tower epoch (min) | ranker lists/s | "
             "wall s (whole run) | peak RSS MB | phase at peak |", "|--:|--:|--:|--:|--:|--:|--:|---|"]
    for row in rows:
        towers, ranker = row.get("towers", {}), row.get("ranker", {})
        lines.append(f"| {row['interactions']:,} | {row['interactions'] // INTERACTIONS_PER_USER:,} | "
                     f"{towers.get('examples_per_s', '-'):,} | {towers.get('full_epoch_minutes', '-')} | "
                     f"{ranker.get('lists_per_s', '-')} | {row['wall_seconds']:,.0f} | {row['peak_rss_mb']:,.0f} | "
                     f"`{row['peak_phase'][:80]}` |")
    return "\n".join(lines) + "\n"


def single_markdown(name: str, result: dict) -> str:
    towers = result.get("towers", {})
    return "\n".join([f"# Training benchmark: {name}", "", f"`{result['command']}`", "",
                      "| wall s | peak RSS MB | best epoch | valid NDCG@10 | tower examples/s |",
                      "|---|---|---|---|---|",
                      f"| {result['wall_seconds']} | {result['peak_rss_mb']:.0f} | "
                      f"{result['tower_result'].get('best_epoch')} | "
                      f"{result['tower_result'].get('valid_NDCG@10', float('nan')):.4f} | "
                      f"{towers.get('examples_per_s', '-')} |"]) + "\n"


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="synthetic-1m")
    parser.add_argument("--ladder", action="store_true", help="the 1M / 3M / 10M interaction ladder")
    parser.add_argument("--interactions", type=lambda text: [int(n) for n in text.split(",")], default=list(LADDER),
                        help="the ladder's log sizes, comma-separated")
    parser.add_argument("--items", type=int, default=None, help="catalogue size of the ladder (default 1M)")
    parser.add_argument("--data-dir", default="data", type=Path)
    parser.add_argument("--model-dir", default="artifacts/bench/train-model")
    parser.add_argument("--out", default="reports/bench/train", type=Path)
    parser.add_argument("extra", nargs="*", help="arguments for recsys.train (after --)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.ladder:
        rows = []
        for n in args.interactions:
            result = run_training(ladder_dataset(n, args.data_dir / "synthetic", args.items),
                                  Path(args.model_dir) / str(n),
                                  [*LADDER_ARGS, *args.extra], args.out / f"train_ladder_{n}.log")
            rows.append({"interactions": n, **result})
            log.info("ladder %d interactions: %s", n, result.get("towers"))
        (args.out / "train_ladder.json").write_text(json.dumps(rows, indent=2) + "\n")
        (args.out / "train_ladder.md").write_text(ladder_markdown(rows, args.items or 1_000_000))
        return 0
    result = run_training(["--dataset", args.dataset], Path(args.model_dir), args.extra,
                          args.out / f"train_{args.dataset}.log")
    (args.out / f"train_{args.dataset}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"train_{args.dataset}.md").write_text(single_markdown(args.dataset, result))
    log.info("training %s: %.0f s, peak RSS %.0f MB", args.dataset, result["wall_seconds"], result["peak_rss_mb"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
