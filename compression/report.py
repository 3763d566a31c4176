"""The report card: one row per variant (size, latency, quality), as JSON + Markdown + a Pareto PNG."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import matplotlib

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
    log.info("report card written to %s", out_dir)
    return paths
