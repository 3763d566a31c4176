"""Does the quality gate decide on evidence? Its power, and its decisions over seeds.

    python -m benchmarks.bench_gate power --dataset ml-100k --bundles artifacts/ml-100k/bundles
    python -m benchmarks.bench_gate seeds --flow ml-100k --model artifacts/ml-100k/model
    python -m benchmarks.bench_gate seeds --flow own-log

``power``: the measured (hold-out) teacher and compressed bundles, scored on the gate's events
(each user's last K interactions, one step at a time), using each user's first j = 1..K of them:
how wide the paired interval of compressed / teacher is with j events per user, which loss the
gate refuses with 95 % probability in one run, and how often it would refuse an equal model.
That is the calculation behind `recsys.split.GATE_EVENTS`.

``seeds``: `python -m compression` over 5 seeds (``--seed``) of one flow, each run also
measuring a deliberately damaged student (``--control-noise``): the gate should publish the
compressed bundle 5 / 5 and refuse the damaged one 5 / 5. Flows: ``ml-100k`` (the dataset) and
``own-log`` (ml-100k's rows without each user's last one, with its item and user tables, as the
README's own-data flow builds it). One teacher per flow (trained here unless ``--model``).
Writes reports/compression/gate/{power,seeds}.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import norm  # noqa: E402

from benchmarks.plots import finish_axes, save_figure  # noqa: E402
from recsys.data.datasets import DEFAULT_DATA_DIR, load_dataset  # noqa: E402
from recsys.evaluate.backtest import backtest, split_rows_as_log  # noqa: E402
from recsys.evaluate.paired import CONFIDENCE, Resampler, UserScores, event_scores, percentiles  # noqa: E402
from recsys.split import GATE_EVENTS, temporal_split  # noqa: E402

log = logging.getLogger("benchmarks.bench_gate")

OUT = Path("reports/compression/gate")
THRESHOLD = 0.97
CONTROL_NOISE = 2.0  # 1.0 cost the ml-100k student 8 % of its NDCG@10; the bar asks for >= 10 %
REFUSE_PROBABILITY = 0.95  # per run: 0.95 ** 5 = 0.77 for five refusals out of five


# ---- power ---------------------------------------------------------------------------------------

def power_rows(dataset: str, bundles: Path, held_out: int, data_dir: Path, seed: int = 0) -> list[dict]:
    from recsys.bundle.load import load_serving_model

    split = temporal_split(load_dataset(dataset, data_dir), held_out)
    frame = split.gate_events()
    later = split_rows_as_log(split, frame)
    step = frame.groupby("u", sort=False).cumcount().to_numpy()  # 0: a user's first gate event
    per_event, seconds = {}, {}
    for name in ("teacher", "compressed"):
        served = load_serving_model(bundles / "holdout" / name, precompute_users=False)
        started = time.perf_counter()
        result = backtest(served, later, source=f"gate events ({name})")
        seconds[name] = time.perf_counter() - started
        per_event[name] = event_scores(result.topk, frame["i"].to_numpy())["NDCG@10"]
    users = frame["u"].to_numpy()
    rows = []
    z_refuse = norm.ppf(REFUSE_PROBABILITY)
    z_interval = norm.ppf(1 - (1 - CONFIDENCE) / 2)
    for j in range(1, held_out + 1):
        keep = step < j
        scores = {name: UserScores.of(values[keep], users[keep]) for name, values in per_event.items()}
        resampler = Resampler.over(len(scores["teacher"].sums), seed=seed)
        ratios = resampler.ratios(scores["compressed"], scores["teacher"])
        se = float(ratios.std(ddof=1))
        low, high = percentiles(ratios)
        rows.append({"events_per_user": j, "events": int(keep.sum()), "teacher_NDCG@10": scores["teacher"].mean,
                     "compressed_NDCG@10": scores["compressed"].mean,
                     "ratio": scores["compressed"].mean / scores["teacher"].mean, "ratio_se": se,
                     "interval": [float(low), float(high)],
                     # refused with REFUSE_PROBABILITY when the true ratio is at most this
                     "refused_at_or_below": THRESHOLD - (z_interval + z_refuse) * se,
                     "false_refusal_if_equal": float(norm.cdf((THRESHOLD - 1 - z_interval * se) / se)),
                     "scoring_seconds_per_variant": (seconds["teacher"] + seconds["compressed"]) / 2 * j / held_out})
    return rows


def power_markdown(rows: list[dict], dataset: str, held_out: int) -> str:
    lines = [f"# Gate power: {dataset}", "",
             f"The measured teacher and compressed bundles on the gate's events (each user's last {held_out} "
             "interactions, held out of training, scored one step at a time), using each user's first j of "
             f"them. Refusal rule: the 95 % paired bootstrap interval of compressed / teacher NDCG@10 lies "
             f"below {THRESHOLD}. `refused at or below`: a compressed model whose true ratio is at most this "
             f"is refused with probability {REFUSE_PROBABILITY} in one run (normal approximation, "
             f"{THRESHOLD} - (1.96 + {norm.ppf(REFUSE_PROBABILITY):.2f}) x se); `false refusal`: the chance "
             "an equal model (ratio 1) is refused.", "",
             "| events per user | events | teacher NDCG@10 | compressed NDCG@10 | ratio [95 % interval] | se of ratio "
             "| refused at or below | false refusal if equal | scoring s / variant |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        low, high = row["interval"]
        lines.append(f"| {row['events_per_user']} | {row['events']:,} | {row['teacher_NDCG@10']:.4f} | "
                     f"{row['compressed_NDCG@10']:.4f} | {row['ratio']:.3f} [{low:.3f}, {high:.3f}] | "
                     f"{row['ratio_se']:.4f} | {row['refused_at_or_below']:.3f} | "
                     f"{row['false_refusal_if_equal']:.1e} | {row['scoring_seconds_per_variant']:.1f} |")
    return "\n".join(lines) + "\n"


def run_power(args: argparse.Namespace) -> None:
    rows = power_rows(args.dataset, Path(args.bundles), args.held_out, Path(args.data_dir))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "power.json").write_text(json.dumps({"dataset": args.dataset, "bundles": args.bundles, "rows": rows},
                                               indent=2))
    (out / "power.md").write_text(power_markdown(rows, args.dataset, args.held_out))
    fig, ax = plt.subplots(figsize=(6, 3.8))
    js = [row["events_per_user"] for row in rows]
    ax.plot(js, [row["refused_at_or_below"] for row in rows], marker="o", label="refused (p=0.95) at or below")
    ax.axhline(THRESHOLD, color="grey", ls="--", lw=1, label=f"threshold {THRESHOLD}")
    finish_axes(ax, "gate events per user", "compressed / teacher NDCG@10", f"Gate power: {args.dataset}", 8)
    save_figure(fig, out / "power.png")
    sys.stdout.write((out / "power.md").read_text())


# ---- seeds ---------------------------------------------------------------------------------------

def flow_data(flow: str, work: Path, data_dir: Path) -> list[str]:
    """The --dataset/--items/--users/--data-dir arguments of a flow."""
    if flow == "ml-100k":
        return ["--dataset", "ml-100k", "--data-dir", str(data_dir)]
    from benchmarks.http_quality import prepare

    files = work / "own-log-files"
    if not (files / "log.csv").exists():
        prepare(files, data_dir)
    return ["--dataset", str(files / "log.csv"), "--items", str(files / "items.csv"), "--users",
            str(files / "users.csv"), "--data-dir", str(data_dir)]


def seed_row(card: dict, seed: int) -> dict:
    by_name = {row["name"]: row for row in card["variants"]}
    gate, control = card["gate"], card["controls"]["compressed-damaged"]
    return {"seed": seed, "published_variant": gate["variant"], "published": gate["passed"],
            "ratio": gate["ratio"], "interval": gate["interval"],
            "teacher": [by_name["teacher-fp32"]["NDCG@10"], *by_name["teacher-fp32"]["NDCG@10_ci"]],
            "compressed": [by_name[gate["variant"]]["NDCG@10"], *by_name[gate["variant"]]["NDCG@10_ci"]],
            "damaged": [by_name["compressed-damaged"]["NDCG@10"], *by_name["compressed-damaged"]["NDCG@10_ci"]],
            "damaged_ratio": control["ratio"], "damaged_interval": control["interval"],
            "damaged_refused": control["refused"], "scored_on": card.get("scored_on")}


def compress_seeds(model: Path, data: list[str], seeds: list[int], work: Path,
                   compress_args: list[str]) -> list[tuple[int, dict, float]]:
    """(seed, card, seconds) of one measuring (unpublished) `python -m compression` run per seed."""
    from compression.__main__ import main as compress_main

    runs = []
    for seed in seeds:
        out = work / f"seed-{seed}"
        started = time.perf_counter()
        code = compress_main(["--model", str(model), *data, "--out", str(out), "--seed", str(seed),
                              "--no-publish", "--reports-dir", "", *compress_args])
        if code not in (0, 1):
            raise SystemExit(f"compression failed (exit {code}) for seed {seed}")
        runs.append((seed, json.loads((out / "card.json").read_text()), round(time.perf_counter() - started, 1)))
        log.info("seed %d done in %.0f s", seed, runs[-1][2])
    return runs


def run_seeds(args: argparse.Namespace) -> None:
    from recsys.train.cli import main as train_main

    work = Path(args.work) / args.flow
    data = flow_data(args.flow, work, Path(args.data_dir))
    model = Path(args.model) if args.model else work / "model"
    if not (model / "config.json").exists() and train_main([*data, "--out", str(model)]) != 0:
        raise SystemExit(f"training the {args.flow} teacher failed")
    rows = [{**seed_row(card, seed), "seconds": seconds} for seed, card, seconds in
            compress_seeds(model, data, args.seeds, work, ["--control-noise", str(args.control_noise),
                                                           *args.compress_args])]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "seeds.json"
    flows = json.loads(path.read_text()) if path.exists() else {}
    flows[args.flow] = {"model": str(model), "control_noise": args.control_noise, "threshold": THRESHOLD,
                        "compress_args": args.compress_args, "rows": rows}
    path.write_text(json.dumps(flows, indent=2))
    (out / "seeds.md").write_text(seeds_markdown(flows))
    seeds_png(flows, out / "seeds.png")
    sys.stdout.write((out / "seeds.md").read_text())


def _interval(values: list[float]) -> str:
    return f"{values[0]:.4f} [{values[1]:.4f}, {values[2]:.4f}]"


def seeds_markdown(flows: dict) -> str:
    lines = ["# Gate decisions over seeds", "",
             "Each row: one `python -m compression --seed S --control-noise X` run on one teacher. NDCG@10 with its "
             "95 % bootstrap interval over users, on the gate's events; the gate refuses when the upper end of "
             "the paired interval of variant / teacher is below the threshold. `compressed-damaged` is the "
             "distilled student with Gaussian noise of X x each layer's weight std on its ranker: a control "
             "that must be refused.", ""]
    for flow, record in flows.items():
        rows = record["rows"]
        published = sum(row["published"] for row in rows)
        refused = sum(row["damaged_refused"] for row in rows)
        lines += [f"## {flow}", "", f"Scored on {rows[0]['scored_on']}." if rows else "", "",
                  f"Compressed published **{published} / {len(rows)}**; damaged student refused "
                  f"**{refused} / {len(rows)}** (threshold {record['threshold']}, control noise "
                  f"{record['control_noise']}, teacher `{record['model']}`).", "",
                  "| seed | teacher NDCG@10 | compressed NDCG@10 | compressed / teacher [95 %] | decision | "
                  "damaged NDCG@10 | damaged / teacher [95 %] | decision | seconds |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for row in rows:
            lines.append(
                f"| {row['seed']} | {_interval(row['teacher'])} | {_interval(row['compressed'])} "
                f"({row['published_variant']}) | {row['ratio']:.3f} [{row['interval'][0]:.3f}, "
                f"{row['interval'][1]:.3f}] | {'published' if row['published'] else 'refused'} | "
                f"{_interval(row['damaged'])} | {row['damaged_ratio']:.3f} [{row['damaged_interval'][0]:.3f}, "
                f"{row['damaged_interval'][1]:.3f}] | {'refused' if row['damaged_refused'] else 'NOT refused'} | "
                f"{row['seconds']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def seeds_png(flows: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, len(flows), figsize=(5 * len(flows), 3.8), squeeze=False)
    for ax, (flow, record) in zip(axes[0], flows.items(), strict=True):
        for offset, key, label, color in ((-0.12, "", "compressed / teacher", "tab:blue"),
                                          (0.12, "damaged_", "damaged / teacher", "tab:red")):
            seeds = np.array([row["seed"] for row in record["rows"]], dtype=float) + offset
            ratios = np.array([row[f"{key}ratio"] for row in record["rows"]])
            intervals = np.array([row[f"{key}interval"] for row in record["rows"]])
            ax.errorbar(seeds, ratios, yerr=[ratios - intervals[:, 0], intervals[:, 1] - ratios], fmt="o",
                        capsize=4, color=color, label=label)
        ax.axhline(record["threshold"], color="grey", ls="--", lw=1, label=f"threshold {record['threshold']}")
        finish_axes(ax, "seed", "NDCG@10 ratio, 95 % interval", f"Gate decisions: {flow}", loc="lower left")
    save_figure(fig, path)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_gate", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    power = sub.add_parser("power", help="interval width and refusal power against events per user")
    power.add_argument("--dataset", default="ml-100k")
    power.add_argument("--bundles", default="artifacts/ml-100k/bundles", help="compression output (OUT)")
    power.add_argument("--held-out", type=int, default=GATE_EVENTS)
    seeds = sub.add_parser("seeds", help="the gate's decisions over seeds, with a damaged control")
    seeds.add_argument("--flow", choices=("ml-100k", "own-log"), required=True)
    seeds.add_argument("--model", help="the flow's trained teacher (default: trained into --work)")
    seeds.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    seeds.add_argument("--control-noise", type=float, default=CONTROL_NOISE)
    seeds.add_argument("--work", default="artifacts/bench_gate")
    seeds.add_argument("--compress-args", nargs=argparse.REMAINDER, default=[],
                       help="more `python -m compression` flags (last)")
    for sub_parser in (power, seeds):
        sub_parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
        sub_parser.add_argument("--out", default=str(OUT))
    return parser.parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    run_power(args) if args.command == "power" else run_seeds(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
