"""What is a teacher lever worth? Models scored on the same users, paired against a reference.

    python -m benchmarks.bench_levers --dataset ml-100k --reference pool=artifacts/levers/pool \\
        causal=artifacts/levers/causal [--stage retrieval] [--split test]

Each ``name=DIR`` (a model dir or a baseline name) is scored under the protocol (`recsys.evaluate`
code path: seen excluded, full ranking) on ``--split``; the table gives every model's NDCG@10
with its 95 % bootstrap interval over users and its ratio to the reference with the paired 95 %
interval (the same users in every draw): a lever counts only where that interval clears 1.
Appends a section to reports/compression/distill/levers.md (and .json).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from recsys.data.datasets import DEFAULT_DATA_DIR, load_dataset
from recsys.evaluate.models import load_model
from recsys.evaluate.paired import Resampler, UserScores, event_scores
from recsys.evaluate.scoring import recommend_for_stage
from recsys.split import temporal_split

log = logging.getLogger("benchmarks.bench_levers")

OUT = Path("reports/compression/distill")


def scored(spec: str, split, split_name: str, stage: str) -> UserScores:
    model = load_model(spec, split, stage)
    topk = recommend_for_stage(model, split, split_name)
    users, targets = split.targets(split_name)
    return UserScores.of(event_scores(topk, targets)["NDCG@10"], users)


def lever_rows(models: dict[str, str], reference: str, split, split_name: str, stage: str) -> list[dict]:
    scores = {name: scored(spec, split, split_name, stage) for name, spec in models.items()}
    resampler = Resampler.over(len(scores[reference].sums))
    rows = []
    for name, score in scores.items():
        rows.append({"name": name, "model": models[name], "NDCG@10": score.mean,
                     "NDCG@10_ci": list(resampler.interval(score)),
                     "vs_reference": [score.mean / max(scores[reference].mean, 1e-12),
                                      *resampler.ratio_interval(score, scores[reference])]})
    return rows


def section(title: str, rows: list[dict], reference: str, command: str, note: str = "") -> str:
    lines = [f"## {title}", "", f"`{command}`", "", *([note, ""] if note else []),
             f"| model | NDCG@10 [95 %] | / {reference} [paired 95 %] | dir |", "|---|---|---|---|"]
    for row in rows:
        low, high = row["NDCG@10_ci"]
        ratio, r_low, r_high = row["vs_reference"]
        lines.append(f"| {row['name']} | {row['NDCG@10']:.4f} [{low:.4f}, {high:.4f}] | "
                     f"{ratio:.3f} [{r_low:.3f}, {r_high:.3f}] | `{row['model']}` |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_levers", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--reference", required=True, metavar="NAME=DIR", help="the model the others are paired with")
    parser.add_argument("models", nargs="+", metavar="NAME=DIR")
    parser.add_argument("--stage", choices=("full", "retrieval"), default="full")
    parser.add_argument("--split", choices=("test", "valid"), default="test")
    parser.add_argument("--title", help="section title (default: dataset, stage, split)")
    parser.add_argument("--note", default="", help="how the models were trained (printed under the command)")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    for spec in (args.reference, *args.models):
        if "=" not in spec:
            parser.error(f"models are NAME=DIR, got {spec!r}")
    return args


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    models = dict(spec.split("=", 1) for spec in (args.reference, *args.models))
    reference = args.reference.split("=", 1)[0]
    split = temporal_split(load_dataset(args.dataset, args.data_dir))
    rows = lever_rows(models, reference, split, args.split, args.stage)
    title = args.title or f"{args.dataset}: {args.stage} pipeline, protocol {args.split}"
    command = "python -m benchmarks.bench_levers " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / "levers.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    record[title] = {"command": command, "reference": reference, "rows": rows, "note": args.note}
    record_path.write_text(json.dumps(record, indent=2))
    text = "# Teacher levers, paired\n\n" + __doc__.split("\n\n")[1].replace("\n", " ") + "\n\n" + "\n".join(
        section(name, entry["rows"], entry["reference"], entry["command"], entry.get("note", ""))
        for name, entry in record.items())
    (out / "levers.md").write_text(text)
    sys.stdout.write(section(title, rows, reference, command, args.note))
    return 0


if __name__ == "__main__":
    sys.exit(main())
