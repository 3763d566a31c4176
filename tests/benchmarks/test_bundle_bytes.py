"""The byte breakdown covers every file of both bundles and matches the card's total."""

from __future__ import annotations

import json

from benchmarks.bundle_bytes import OTHER, bytes_by_part, main
from recsys.bundle.content import BundleFiles
from recsys.bundle.publish import resolve_bundle


def test_parts_add_up_to_every_file_and_name_the_big_ones(tiny, tmp_path):
    teacher, compressed = tiny.bundles / "teacher", tiny.bundles / "compressed"
    for bundle in (teacher, compressed):
        parts = bytes_by_part(bundle)
        assert sum(parts.values()) == BundleFiles(resolve_bundle(bundle)).total_bytes()
        assert parts["user tower (ONNX, with its item and user tables)"] > 0 and parts["index"] > 0
        assert parts[OTHER] < sum(parts.values()) / 2  # the named parts hold most of it
    assert main(["--teacher", str(teacher), "--compressed", str(compressed), "--out", str(tmp_path / "b")]) == 0
    report = json.loads((tmp_path / "b.json").read_text())
    total = sum(report["compressed"].values()) / sum(report["teacher"].values())
    assert f"**{total:.3f}**" in (tmp_path / "b.md").read_text()
