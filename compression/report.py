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
                "HR@10", "NDCG@10")


def format_cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)


def card_markdown(card: dict, title: str) -> str:
    columns = [*CARD_COLUMNS, "notes"]
    lines = [f"# {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in card["variants"]:
        lines.append("| " + " | ".join(format_cell(row.get(c)) for c in columns) + " |")
    gate = card["gate"]
    verdict = "PASSED" if gate["passed"] else "FAILED"
    published = card.get("published_variant", "compressed")
    lines += ["", f"Quality gate: {published} NDCG@10 {gate['compressed_ndcg']:.4f} vs teacher "
              f"{gate['teacher_ndcg']:.4f} (threshold {gate['threshold']:.2f} x teacher) -> **{verdict}**"]
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
    """Quality vs latency; marker area proportional to served bytes."""
    rows = [r for r in card["variants"] if r.get("latency_p50_ms") is not None and r.get("NDCG@10") is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    biggest = max((r["bytes"] for r in rows), default=1)
    for row in rows:
        size = 40 + 900 * row["bytes"] / biggest
        ax.scatter(row["latency_p50_ms"], row["NDCG@10"], s=size, alpha=0.6)
        ax.annotate(f"{row['name']}\n{row['bytes'] / 1e6:.1f} MB", (row["latency_p50_ms"], row["NDCG@10"]),
                    fontsize=7, xytext=(5, 5), textcoords="offset points")
    ax.set_xlabel("single-request latency p50 (ms): user tower + ANN + ranker")
    ax.set_ylabel("NDCG@10 (protocol, test)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_card(card: dict, out_dir: Path, title: str) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "card.json", "md": out_dir / "card.md", "png": out_dir / "card.png"}
    paths["json"].write_text(json.dumps(card, indent=2, default=str))
    paths["md"].write_text(card_markdown(card, title))
    pareto_png(card, paths["png"], title)
    log.info("report card written to %s", out_dir)
    return paths
