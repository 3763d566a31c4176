"""Students with and without the content-overlap ranker features, compressed back to back.

    python -m benchmarks.bench_student_features --model artifacts/ml-100k/model --dataset ml-100k \
        --data-dir data --out reports/compression/ml-100k

Runs ``python -m compression`` twice on the same model directory, nothing published (bundles
and both cards under ``--work``, default ``artifacts/DATASET/student_features``): once with
``--student-disabled-features ''`` (the students keep every feature the teacher has) and once
with ``auto`` (the default: they do without the content-overlap features). Writes
``student_features.md`` / ``.json`` under ``--out``: quality and cold / served latency of the
undistilled, distilled and compressed students of both runs, each against the teacher measured
in the same run. Nothing is asserted; the numbers are what
`compression.compress.resolve_disabled`'s default rests on.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from compression.__main__ import main as compress_main

SETTINGS = {"all features": "", "without content overlap (auto)": "auto"}
ROWS = ("teacher-fp32", "student-fp32-nokd", "student-fp32", "compressed")
COLUMNS = ("NDCG@10", "NDCG@10_se", "HR@10", "latency_p50_ms", "served_p50_ms")


def run(args: argparse.Namespace, label: str, disabled: str) -> dict:
    out = Path(args.work or f"artifacts/{args.dataset}/student_features") / label.split(" ")[0]
    argv = ["--model", args.model, "--dataset", args.dataset, "--data-dir", args.data_dir, "--out", str(out),
            "--no-publish", "--reports-dir", "", "--student-disabled-features", disabled]
    code = compress_main(argv)
    if code != 0:
        raise SystemExit(f"compression with --student-disabled-features {disabled!r} exited {code}")
    return json.loads((out / "card.json").read_text())


def table(cards: dict[str, dict]) -> list[str]:
    lines = ["| students | variant | " + " | ".join(COLUMNS) + " | compressed / teacher p50 |",
             "|---|---|" + "--:|" * (len(COLUMNS) + 1)]
    for label, card in cards.items():
        rows = {row["name"]: row for row in card["variants"]}
        ratio = rows["compressed"]["latency_p50_ms"] / rows["teacher-fp32"]["latency_p50_ms"]
        for name in ROWS:
            cells = [f"{rows[name][column]:.4f}" for column in COLUMNS]
            last = f"{ratio:.3f}" if name == "compressed" else ""
            lines.append(f"| {label} | {name} | " + " | ".join(cells) + f" | {last} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_student_features",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--out", required=True, help="directory for student_features.{md,json}")
    parser.add_argument("--work", help="where the two runs write bundles and cards")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cards = {label: run(args, label, disabled) for label, disabled in SETTINGS.items()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    disabled = cards["without content overlap (auto)"]["config"]["compress"]["student"]["disabled_features"]
    lines = [f"# Students with and without the content-overlap ranker features: {args.dataset}", "",
             f"Command: `python -m benchmarks.bench_student_features --model {args.model} --dataset {args.dataset} "
             f"--data-dir {args.data_dir} --out {args.out}`", "",
             f"`auto` drops: {disabled.replace(',', ', ')}. Each run measures its own teacher; latency is "
             "the card's (cold: user tower and features' user side per request; served: as the server "
             "answers a known user).", "", *table(cards), ""]
    (out / "student_features.md").write_text("\n".join(lines))
    summary = {label: {row["name"]: {c: row[c] for c in COLUMNS} for row in card["variants"] if row["name"] in ROWS}
               for label, card in cards.items()}
    (out / "student_features.json").write_text(json.dumps(summary, indent=2) + "\n")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
