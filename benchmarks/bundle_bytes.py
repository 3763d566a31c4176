"""Where a bundle's bytes go: every file of the teacher and compressed bundles, side by side.

    python -m benchmarks.bundle_bytes --teacher artifacts/synthetic-1m/bundles/teacher \\
        --compressed artifacts/synthetic-1m/bundles/compressed --out reports/compression/synthetic-1m/bytes

The card's ``bytes`` is the total of every file; this splits it by part (models, index, item
rows, per-user state, histories, ranking tables, catalogue and ids), so a ratio that will not
shrink says which part holds it. Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from recsys.bundle.publish import resolve_bundle

# First matching prefix names the part a file belongs to (paths relative to the bundle root).
PARTS = (
    ("user_tower", "user tower (ONNX, with its item and user tables)"),
    ("ranker", "ranker (ONNX)"),
    ("index/", "index"),
    ("item_vectors", "item rows beside the index"),
    ("item_scales", "item rows beside the index"),
    ("user_vectors", "per-user tower outputs (precomputed)"),
    ("history", "histories (recent items, seen sets, last times)"),
    ("ranking_features", "ranking feature tables"),
    ("catalog", "catalogue titles"),
    ("search/", "search (encoder, text vectors, BM25)"),
    ("users.json", "id maps"),
    ("items.json", "id maps"),
)
OTHER = "manifest, runtime, popularity"


def part_of(relative: str) -> str:
    return next((part for prefix, part in PARTS if relative.startswith(prefix)), OTHER)


def bytes_by_part(bundle: Path) -> dict[str, int]:
    root = resolve_bundle(bundle)
    parts: dict[str, int] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            part = part_of(path.relative_to(root).as_posix())
            parts[part] = parts.get(part, 0) + path.stat().st_size
    return parts


def markdown(teacher: dict[str, int], compressed: dict[str, int], names: tuple[str, str]) -> str:
    order = list(dict.fromkeys([part for _, part in PARTS] + [OTHER]))
    total_t, total_c = sum(teacher.values()), sum(compressed.values())
    lines = ["# Bundle bytes by part", "", f"teacher: `{names[0]}`; compressed: `{names[1]}`", "",
             "| part | teacher MB | compressed MB | compressed / teacher | share of compressed |",
             "|---|--:|--:|--:|--:|"]
    for part in order:
        t, c = teacher.get(part, 0), compressed.get(part, 0)
        if t == 0 and c == 0:
            continue
        ratio = f"{c / t:.3f}" if t else "-"
        lines.append(f"| {part} | {t / 1e6:,.1f} | {c / 1e6:,.1f} | {ratio} | {c / max(total_c, 1):.1%} |")
    lines.append(f"| **all files** | **{total_t / 1e6:,.1f}** | **{total_c / 1e6:,.1f}** | "
                 f"**{total_c / max(total_t, 1):.3f}** | 100% |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bundle_bytes", description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, type=Path)
    parser.add_argument("--compressed", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path, help="output prefix: OUT.json, OUT.md")
    args = parser.parse_args(argv)
    teacher, compressed = bytes_by_part(args.teacher), bytes_by_part(args.compressed)
    names = (str(resolve_bundle(args.teacher)), str(resolve_bundle(args.compressed)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"teacher": teacher, "compressed": compressed,
                                                         "bundles": names}, indent=1) + "\n")
    text = markdown(teacher, compressed, names)
    args.out.with_suffix(".md").write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
