"""The report card: one row per variant (size, latency, quality), as JSON + Markdown + a Pareto PNG."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

log = logging.getLogger(__name__)

CARD_COLUMNS = ("name", "params", "bytes", "latency_p50_ms", "latency_p99_ms", "served_p50_ms", "served_p99_ms",
                "HR@10", "NDCG@10", "vs_teacher")
WITH_INTERVALS = ("HR@10", "NDCG@10")  # shown as "mean [low, high]" when the row has "<metric>_ci"


def format_cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)


def row_cell(row: dict, column: str) -> str:
    if column == "vs_teacher":  # NDCG@10 / teacher's, paired interval
        ratio = row.get(column)
        return "" if not ratio else f"{ratio[0]:.3f} [{ratio[1]:.3f}, {ratio[2]:.3f}]"
    interval = row.get(f"{column}_ci") if column in WITH_INTERVALS else None
    if interval:
        return f"{row[column]:.4f} [{interval[0]:.4f}, {interval[1]:.4f}]"
    return format_cell(row.get(column))


def gate_lines(card: dict) -> list[str]:
    gate = card["gate"]
    verdict = "PASSED" if gate["passed"] else "REFUSED"
    if "decision" not in gate:  # a card from before paired decisions
        return [f"Quality gate: NDCG@10 {gate['compressed_ndcg']:.4f} vs teacher {gate['teacher_ndcg']:.4f} "
                f"(threshold {gate['threshold']:.2f} x teacher) -> **{verdict}**"]
    lines = [f"Quality gate: {gate['decision']} -> **{verdict}**" +
             (f" ({gate['outcome']})" if gate.get("outcome") else ""), "", f"Rule: {gate['rule']}."]
    for name, control in (card.get("controls") or {}).items():
        lines.append(f"Control `{name}` (never published): {control['decision']} -> "
                     f"{'refused' if control['refused'] else 'NOT refused'}.")
    return lines


def distillation_line(card: dict) -> str | None:
    record = card.get("distillation")
    if not record:
        return None
    low, high = record["interval"]
    closed = ("no gap to close: the student alone is not below the teacher" if record["gap_closed"] is None
              else f"share of the teacher - student gap closed {record['gap_closed']:.2f} "
                   f"(teacher - alone = {record['gap']:.4f})")
    return (f"Distillation: student-fp32 (distilled) {record['distilled']:.4f} vs student-fp32-nokd (trained alone) "
            f"{record['alone']:.4f}, ratio {record['ratio']:.3f} [{low:.3f}, {high:.3f}] (paired 95 %); {closed}.")


def variant_table(rows: list[dict], columns) -> list[str]:
    """The card's variants as Markdown table lines (``vs_teacher``: NDCG@10 / teacher's, paired)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(row_cell(row, c) for c in columns) + " |" for row in rows]


def card_markdown(card: dict, title: str) -> str:
    lines = [f"# {title}", ""]
    if card.get("scored_on"):
        lines += [f"Quality (NDCG@10, HR@10 with 95 % intervals) on {card['scored_on']}.", ""]
    lines += variant_table(card["variants"], [*CARD_COLUMNS, "notes"])
    published = card.get("published_variant", "compressed")
    lines += ["", *gate_lines(card)]
    if distillation_line(card):
        lines += ["", distillation_line(card)]
    if card.get("techniques"):
        lines += ["", f"Served as the compressed bundle: `{published}`. Techniques against plain `compressed`:",
                  *[f"- `{name}`: {why}" for name, why in card["techniques"].items()]]
    if card.get("ratios"):
        lines += ["", f"Ratios ({published} / teacher, same run): " +
                  ", ".join(f"{k} {v:.3f}" for k, v in card["ratios"].items())]
    if card.get("notes"):
        lines += ["", *[f"- {note}" for note in card["notes"]]]
    if card.get("search"):
        lines += ["", *search_lines(card["search"])]
    return "\n".join(lines) + "\n"


def pareto_png(card: dict, path: Path, title: str) -> None:
    """Left: quality (with its 95 % interval) vs latency, marker area proportional to served bytes.
    Right: each variant's NDCG@10 over the teacher's with the paired interval the gate decides on
    (much narrower: the same users' noise cancels), and the threshold. Variants are named in a
    legend and on the right's axis, so no two labels can overlap."""
    rows = [r for r in card["variants"] if r.get("latency_p50_ms") is not None and r.get("NDCG@10") is not None]
    paired = [r for r in rows if r.get("vs_teacher")]
    fig, axes = plt.subplots(1, 2 if paired else 1, figsize=(13 if paired else 9, 4.8), squeeze=False,
                             gridspec_kw={"width_ratios": [1.4, 1] if paired else [1]})
    ax = axes[0][0]
    biggest = max((r["bytes"] for r in rows), default=1)
    colors = plt.get_cmap("tab10")
    for i, row in enumerate(rows):
        color = colors(i % 10)
        x, y = row["latency_p50_ms"], row["NDCG@10"]
        if row.get("NDCG@10_ci"):
            low, high = row["NDCG@10_ci"]
            ax.errorbar(x, y, yerr=[[y - low], [high - y]], color=color, capsize=4, lw=1.2, zorder=1)
        ax.scatter(x, y, s=40 + 600 * row["bytes"] / biggest, alpha=0.55, color=color, zorder=2,
                   label=f"{row['name']} ({row['bytes'] / 1e6:.1f} MB)")
    ax.set_xlabel("single-request latency p50 (ms): user tower + ANN + ranker")
    ax.set_ylabel(f"NDCG@10 ({'gate events' if card.get('scored_on') else 'protocol, test'}), 95 % interval")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, markerscale=0.5, frameon=False)
    if paired:
        _paired_panel(axes[0][1], paired, card, [colors(rows.index(r) % 10) for r in paired])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _paired_panel(ax, rows: list[dict], card: dict, colors: list) -> None:
    ys = list(range(len(rows)))[::-1]
    for y, row, color in zip(ys, rows, colors, strict=True):
        ratio, low, high = row["vs_teacher"]
        ax.errorbar(ratio, y, xerr=[[ratio - low], [high - ratio]], fmt="o", color=color, capsize=4)
    threshold = card["gate"]["threshold"]
    ax.axvline(threshold, color="grey", ls="--", lw=1, label=f"gate threshold {threshold:.2f}")
    ax.axvline(1.0, color="black", lw=0.6)
    ax.set_yticks(ys, [row["name"] for row in rows], fontsize=8)
    ax.set_xlabel("NDCG@10 / teacher's, paired 95 % interval")
    ax.set_title("what the gate decides on")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=8, loc="lower left")


def write_card(card: dict, out_dir: Path, title: str) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "card.json", "md": out_dir / "card.md", "png": out_dir / "card.png"}
    paths["json"].write_text(json.dumps(card, indent=2, default=str))
    paths["md"].write_text(card_markdown(card, title))
    pareto_png(card, paths["png"], title)
    if card.get("search"):
        paths["search_png"] = out_dir / "search.png"
        search_png(card["search"], paths["search_png"], f"search: {title}")
    log.info("report card written to %s", out_dir)
    return paths


def _mean_ci(cell: dict) -> str:
    low, high = cell["interval"]
    return f"{cell['mean']:.3f} [{low:.3f}, {high:.3f}]"


def _ratio_ci(cell: dict) -> str:
    ratio = cell["vs_teacher"]
    return f"{ratio['ratio']:.3f} [{ratio['interval'][0]:.3f}, {ratio['interval'][1]:.3f}]"


def _delta_ci(cell: dict) -> str:
    delta = cell["vs_bm25"]
    return f"{delta['delta']:+.3f} [{delta['interval'][0]:+.3f}, {delta['interval'][1]:+.3f}]"


def _ms(row: dict, key: str) -> str:
    return f"{row[key]:.3f}" if row.get(key) is not None else ""


def _mb(row: dict, key: str) -> str:
    return f"{row[key] / 1e6:.2f}" if row.get(key) is not None else ""


def search_lines(section: dict) -> list[str]:
    """The card's search section: quality per variant with paired intervals, costs, the gate."""
    counts = section["queries"]
    lines = [f"## Search (teacher encoder: {section['teacher']})", "",
             f"{counts['known_item']} known-item queries (MRR@10) and {counts['attribute']} attribute queries "
             "(NDCG@10), through the served search path; 95 % bootstrap intervals over queries, paired.", "",
             "| variant | known-item MRR@10 | / teacher hybrid | − BM25 | attribute NDCG@10 | / teacher hybrid "
             "| − BM25 | encode p50 ms | encode p99 ms | search p50 ms | encoder MB | search index MB |",
             "|---|---|---|---|---|---|---|--:|--:|--:|--:|--:|"]
    for row in section["rows"]:
        known, attribute = row["known_item"], row["attribute"]
        lines.append(f"| {row['name']} | {_mean_ci(known)} | {_ratio_ci(known)} | {_delta_ci(known)} | "
                     f"{_mean_ci(attribute)} | {_ratio_ci(attribute)} | {_delta_ci(attribute)} | "
                     f"{_ms(row, 'encode_p50_ms')} | {_ms(row, 'encode_p99_ms')} | {_ms(row, 'search_p50_ms')} | "
                     f"{_mb(row, 'encoder_bytes')} | {_mb(row, 'search_bytes')} |")
    tuning = section.get("fusion_tuning") or {}
    if tuning:
        dev = next(iter(tuning.values()))["dev_queries"]
        lines += ["", f"Fusion weight w of BM25 (1 − w for the encoder's cosine), chosen per encoder on {dev} "
                      "development queries (the generator's next seed): " +
                  ", ".join(f"{name} {record['lexical_weight']}" for name, record in tuning.items()) + "."]
    gate = section["gate"]
    lines += ["", f"Search gate: serves **{gate['served']}** (threshold {gate['threshold']:.2f}). "
              f"Rule: {gate['rule']}."]
    for name, decisions in gate["decisions"].items():
        lines.append(f"- {name}: " + "; ".join(
            f"{kind} {d['ratio']:.3f} [{d['interval'][0]:.3f}, {d['interval'][1]:.3f}]"
            f"{' shown worse' if d['shown_worse'] else ''}" for kind, d in decisions.items()))
    return lines


def search_png(section: dict, path: Path, title: str) -> None:
    """Left: each variant's quality (both metrics, 95 % intervals). Right: query encoding p50 (log)."""
    rows = section["rows"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1.4, 1]})
    ys = np.arange(len(rows))[::-1]
    for offset, kind, color in ((0.15, "known_item", "tab:blue"), (-0.15, "attribute", "tab:orange")):
        means = np.array([row[kind]["mean"] for row in rows])
        lows = means - np.array([row[kind]["interval"][0] for row in rows])
        highs = np.array([row[kind]["interval"][1] for row in rows]) - means
        left.errorbar(means, ys + offset, xerr=[lows, highs], fmt="o", color=color, capsize=3,
                      label=f"{kind.replace('_', '-')} {rows[0][kind]['metric']}")
    left.set_yticks(ys, [row["name"] for row in rows], fontsize=8)
    left.set_xlabel("quality, 95 % interval over queries")
    left.set_title(title)
    left.grid(alpha=0.3, axis="x")
    left.legend(fontsize=8, loc="lower left")
    timed = [row for row in rows if row.get("encode_p50_ms")]
    right.barh([row["name"] for row in timed][::-1], [row["encode_p50_ms"] for row in timed][::-1], color="tab:green")
    right.set_xscale("log")
    right.set_xlabel("query encoding p50 (ms, one query per call, log scale)")
    right.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
