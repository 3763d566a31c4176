"""Does distillation transfer? Teacher, student alone, distilled student and compressed, over seeds.

    python -m benchmarks.bench_distill --dataset ml-100k --model artifacts/ml-100k/model --seeds 0 1 2

Each seed is one measuring `python -m compression --seed S` run on one teacher: the student
trained alone (``student-fp32-nokd``) and the distilled one (``student-fp32``) share the seed, so
their difference is paired twice, over seeds and over the gate's events within a run. The bar:
the mean of the per-seed differences (distilled - alone) is positive and larger than their
standard deviation. Each run also reports the share of the teacher-student gap closed,
``(distilled - alone) / (teacher - alone)``. Writes reports/compression/distill/seeds.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.bench_gate import compress_seeds  # noqa: E402
from benchmarks.plots import finish_axes, save_figure  # noqa: E402
from recsys.data.datasets import DEFAULT_DATA_DIR  # noqa: E402

log = logging.getLogger("benchmarks.bench_distill")

OUT = Path("reports/compression/distill")
COLUMNS = ("teacher", "alone", "distilled", "compressed")
NAMES = {"teacher": "teacher-fp32", "alone": "student-fp32-nokd", "distilled": "student-fp32"}


def seed_row(card: dict, seed: int, seconds: float) -> dict:
    """One run's NDCG@10 per role (compressed = the variant the gate would publish)."""
    by_name = {row["name"]: row["NDCG@10"] for row in card["variants"]}
    record = card["distillation"]
    students = card["students"]
    return {"seed": seed, **{role: by_name[name] for role, name in NAMES.items()},
            "compressed": by_name[card["published_variant"]], "published_variant": card["published_variant"],
            "published": card["gate"]["passed"], "difference": record["difference"],
            "ratio": record["ratio"], "interval": record["interval"], "gap_closed": record["gap_closed"],
            "student_seconds": {kind: round(sum(students[kind].get(key, 0.0) for key in
                                                ("tower_seconds", "ranker_seconds")), 1)
                                for kind in ("nokd", "kd")},
            "seconds": seconds, "scored_on": card.get("scored_on")}


def summary(rows: list[dict]) -> dict:
    """Mean and s.d. over seeds of each role and of the paired difference; whether the bar holds."""
    stats = {key: [float(np.mean([row[key] for row in rows])), float(np.std([row[key] for row in rows], ddof=1))]
             for key in (*COLUMNS, "difference")}
    closed = [row["gap_closed"] for row in rows if row["gap_closed"] is not None]
    mean_diff, sd_diff = stats["difference"]
    return {**stats, "gap_closed": [float(np.mean(closed)), float(np.std(closed, ddof=1))] if len(closed) > 1 else None,
            "transfers": bool(mean_diff > 0 and mean_diff > sd_diff),
            "teacher_above_alone": [row["teacher"] - row["alone"] for row in rows]}


def _mean_sd(values: list[float]) -> str:
    return f"{values[0]:.4f} ± {values[1]:.4f}"


def markdown(datasets: dict) -> str:
    lines = ["# Does distillation transfer? Seeds", "", __doc__.split("\n\n")[2].replace("\n", " "), ""]
    for name, record in datasets.items():
        rows, stats = record["rows"], record["summary"]
        extra = f" --compress-args {' '.join(record['compress_args'])}" if record["compress_args"] else ""
        command = (f"python -m benchmarks.bench_distill --dataset {name} --model {record['model']} --seeds "
                   f"{' '.join(str(row['seed']) for row in rows)}{extra}")
        lines += [f"## {name}", "", f"`{command}`; scored on {rows[0]['scored_on']}.", "",
                  "| seed | teacher | alone | distilled | compressed | distilled - alone | distilled / alone [95 %] "
                  "| gap closed | published | student s (alone / distilled) | run s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in rows:
            closed = "n/a" if row["gap_closed"] is None else f"{row['gap_closed']:.2f}"
            lines.append(f"| {row['seed']} | {row['teacher']:.4f} | {row['alone']:.4f} | {row['distilled']:.4f} | "
                         f"{row['compressed']:.4f} ({row['published_variant']}) | {row['difference']:+.4f} | "
                         f"{row['ratio']:.3f} [{row['interval'][0]:.3f}, {row['interval'][1]:.3f}] | {closed} | "
                         f"{'yes' if row['published'] else 'no'} | {row['student_seconds']['nokd']:.0f} / "
                         f"{row['student_seconds']['kd']:.0f} | {row['seconds']:.0f} |")
        closed = "n/a" if stats["gap_closed"] is None else _mean_sd(stats["gap_closed"])
        lines += [f"| mean ± s.d. | {_mean_sd(stats['teacher'])} | {_mean_sd(stats['alone'])} | "
                  f"{_mean_sd(stats['distilled'])} | {_mean_sd(stats['compressed'])} | "
                  f"{stats['difference'][0]:+.4f} ± {stats['difference'][1]:.4f} | | {closed} | | | |", "",
                  "Distillation transfers (mean difference > 0 and > its s.d.): "
                  f"**{'yes' if stats['transfers'] else 'no'}**. "
                  f"Teacher - alone per seed: {', '.join(f'{gap:+.4f}' for gap in stats['teacher_above_alone'])}.", ""]
    return "\n".join(lines)


def plot(datasets: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.8), squeeze=False)
    for ax, (name, record) in zip(axes[0], datasets.items(), strict=True):
        seeds = np.array([row["seed"] for row in record["rows"]], dtype=float)
        for offset, role, color in ((-0.15, "teacher", "black"), (-0.05, "alone", "tab:orange"),
                                    (0.05, "distilled", "tab:blue"), (0.15, "compressed", "tab:green")):
            ax.plot(seeds + offset, [row[role] for row in record["rows"]], "o", color=color, label=role)
        finish_axes(ax, "seed", "NDCG@10 (gate events)", f"Distillation over seeds: {name}")
    save_figure(fig, path)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_distill", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="a built-in dataset the teacher was trained on")
    parser.add_argument("--model", required=True, help="the teacher's model dir (`python -m recsys.train`)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--work", default="artifacts/bench_distill")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--compress-args", nargs=argparse.REMAINDER, default=[],
                        help="more `python -m compression` flags (last)")
    args = parser.parse_args(argv)
    if len(args.seeds) < 2:
        parser.error("--seeds: give at least 2 seeds (a standard deviation needs them)")
    return args


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    data = ["--dataset", args.dataset, "--data-dir", args.data_dir]
    runs = compress_seeds(Path(args.model), data, args.seeds, Path(args.work) / args.dataset,
                          ["--latency-requests", "50", *args.compress_args])
    rows = [seed_row(card, seed, seconds) for seed, card, seconds in runs]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "seeds.json"
    datasets = json.loads(path.read_text()) if path.exists() else {}
    datasets[args.dataset] = {"model": args.model, "compress_args": args.compress_args, "rows": rows,
                              "summary": summary(rows)}
    path.write_text(json.dumps(datasets, indent=2))
    (out / "seeds.md").write_text(markdown(datasets))
    plot(datasets, out / "seeds.png")
    sys.stdout.write((out / "seeds.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
